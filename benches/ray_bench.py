"""Images per second of `headclip predict` and of examples/ray_batch.py on the same files, side
by side in one run: the CLI with 2 threads, one Ray actor with 2 threads, two actors with 1
thread each; and each actor's peak resident memory (VmHWM).

    .venv-test/bin/python benches/ray_bench.py --weights W --params P [--image-size S] \
        [--images N] [--rounds R]

Prints one JSON line per configuration and round. Run it with scripts/setup-python.sh's
environment (HEADCLIP_LIBTORCH set, or an editable install).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples"))
sys.path.insert(0, str(REPO / "benches"))
os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO / "examples"), str(REPO / "benches")])
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HEADCLIP_LIBTORCH", str(REPO / ".libtorch" / "site" / "torch"))

import ray  # noqa: E402
import ray_batch  # noqa: E402


def peak_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


class MeasuredScorer(ray_batch.Scorer):
    """The example's scorer, also reporting its process and that process's peak memory."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = super().__call__(batch)
        n = len(out["id"])
        out["pid"] = np.full(n, os.getpid())
        out["peak_rss"] = np.full(n, peak_rss_bytes())
        return out


def images(n: int) -> list[str]:
    root = REPO.parent / "shared" / "data"
    found = sorted(
        p for p in root.rglob("*")
        if p.suffix.lower() in {".png", ".jpg", ".jpeg"}
        and not {"ground_truth", "masks"} & set(p.relative_to(root).parts)
    )
    return [str(p) for p in found[:: max(1, len(found) // n)][:n]]


def run_cli(binary: str, files: list[str], model: list[str]) -> dict:
    started = time.perf_counter()
    run = subprocess.run(
        [binary, "predict", *model, "--threads", "2", *files],
        capture_output=True, text=True, check=False,
    )
    seconds = time.perf_counter() - started
    assert run.returncode == 0, run.stderr[-2000:]
    return {"config": "cli, 2 threads", "seconds": seconds, "images_per_s": len(files) / seconds}


def run_ray(files: list[str], args, actors: int, threads: int) -> dict:
    data = ray_batch.read_images(files).materialize()
    started = time.perf_counter()
    rows = data.map_batches(
        MeasuredScorer,
        fn_constructor_kwargs={
            "weights": args.weights, "params": args.params, "threads": threads,
            "image_size": args.image_size,
        },
        concurrency=actors, num_cpus=threads, batch_size=8,
    ).take_all()
    seconds = time.perf_counter() - started
    assert len(rows) == len(files) and all(r["error"] is None for r in rows)
    peaks = {}
    for r in rows:
        peaks[r["pid"]] = max(peaks.get(r["pid"], 0), int(r["peak_rss"]))
    return {
        "config": f"ray, {actors} actor(s) x {threads} thread(s)",
        "seconds": seconds,  # includes starting the actors and loading the model in each
        "images_per_s": len(files) / seconds,
        "peak_rss_mib_per_actor": sorted(round(v / 2**20) for v in peaks.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--weights", required=True)
    parser.add_argument("--params")
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--bin", default=str(REPO / "target" / "release" / "headclip"))
    args = parser.parse_args()
    files = images(args.images)
    model = ["--weights", args.weights]
    if args.params:
        model += ["--params", args.params]
    if args.image_size:
        model += ["--image-size", str(args.image_size)]
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    for round_ in range(args.rounds):
        for measure in (
            lambda: run_cli(args.bin, files, model),
            lambda: run_ray(files, args, actors=1, threads=2),
            lambda: run_ray(files, args, actors=2, threads=1),
        ):
            print(json.dumps({"round": round_, "images": len(files), **measure()}), flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main()
