"""Batch anomaly scoring with Ray Data: files read as bytes, scored by a pool of actors that
each hold one headclip.Detector.

    python examples/ray_batch.py --weights ViT-L-14-336px.pt --params params.safetensors \
        --actors 2 --threads-per-actor 1 --output scores.parquet /data/images

Files are read with ``read_binary_files`` rather than Ray's image reader: that one stops the
job at the first corrupt file and converts modes its own way, while headclip decodes the bytes
exactly as ``headclip predict`` does and reports a bad file in its own row (``error`` set,
scores NaN) without stopping the job. Each actor sets libtorch's threads for its own process.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import ray


class Scorer:
    """Scores a batch of encoded images; one instance (and one model) per actor."""

    def __init__(
        self,
        weights: str,
        params: str | None = None,
        threads: int = 1,
        image_size: int | None = None,
        batch_size: int = 1,
    ) -> None:
        import headclip

        headclip.set_threads(threads)
        self.detector = headclip.Detector(weights, params=params, image_size=image_size)
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import headclip

        results = self.detector.predict(list(batch["bytes"]), batch_size=self.batch_size)
        ok = [not isinstance(r, headclip.ImageError) for r in results]

        def column(name: str) -> np.ndarray:
            nan = float("nan")
            return np.array([getattr(r, name) if good else nan for r, good in zip(results, ok)])

        return {
            "id": batch["id"],
            "path": batch["path"],
            "score": column("score"),
            "global_score": column("global_score"),
            "pixel_score": column("pixel_score"),
            "map_max": column("map_max"),
            "error": np.array([None if good else r.reason for r, good in zip(results, ok)]),
        }


def read_images(paths: list[str], id_prefix: str = "") -> ray.data.Dataset:
    """The files (or folders, searched recursively) as rows of ``id``, ``path``, ``bytes``;
    a row's id is its path after ``id_prefix``. Reading takes no CPU slot: the actors need
    them all, and reading bytes is I/O."""

    def with_ids(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch["id"] = np.array([id_prefix + p for p in batch["path"]])
        return batch

    files = ray.data.read_binary_files(paths, include_paths=True, ray_remote_args={"num_cpus": 0})
    return files.map_batches(with_ids, num_cpus=0)


def score(
    images: ray.data.Dataset,
    weights: str,
    params: str | None = None,
    actors: int = 1,
    threads_per_actor: int = 1,
    rows_per_batch: int = 16,
    image_size: int | None = None,
) -> ray.data.Dataset:
    """``images`` scored by ``actors`` actors of ``threads_per_actor`` libtorch threads each."""
    return images.map_batches(
        Scorer,
        fn_constructor_kwargs={
            "weights": weights,
            "params": params,
            "threads": threads_per_actor,
            "image_size": image_size,
        },
        concurrency=actors,
        num_cpus=threads_per_actor,
        batch_size=rows_per_batch,
    )


def main(argv: list[str] | None = None) -> Any:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", help="image files or folders")
    parser.add_argument("--weights", required=True, help="CLIP checkpoint")
    parser.add_argument("--params", help="HeadCLIP parameters (default: training-free)")
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--actors", type=int, default=1)
    parser.add_argument("--threads-per-actor", type=int, default=1)
    parser.add_argument("--output", help="write the rows here as Parquet (default: print them)")
    args = parser.parse_args(argv)
    ray.init(ignore_reinit_error=True)
    inputs = [str(Path(p).resolve()) for p in args.inputs]
    scored = score(
        read_images(inputs),
        str(Path(args.weights).resolve()),
        str(Path(args.params).resolve()) if args.params else None,
        actors=args.actors,
        threads_per_actor=args.threads_per_actor,
        image_size=args.image_size,
    )
    if args.output:
        scored.write_parquet(args.output)
    else:
        for row in scored.iter_rows():
            print({k: row[k] for k in ("path", "score", "error")})


if __name__ == "__main__":
    main()
