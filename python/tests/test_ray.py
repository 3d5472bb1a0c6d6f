"""The Ray examples on a local Ray cluster of 2 CPUs: examples/ray_batch.py scores every shared
image plus repeats (over 1,000 rows) as `headclip predict` does, and examples/ray_serve.py
answers as `headclip serve`'s /v1/detect does."""

from __future__ import annotations

import collections
import json
import os
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from conftest import PARAMS, REPO, TOLERANCE, WEIGHTS, cli_predict, headclip_bin

EXAMPLES = REPO / "examples"
# Ray's workers import the examples by name: they inherit this from the cluster's start.
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(EXAMPLES), *filter(None, [os.environ.get("PYTHONPATH")])]
)
sys.path.insert(0, str(EXAMPLES))
SCORES = ("score", "global_score", "pixel_score", "map_max")


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def corrupt(tmp_path_factory) -> Path:
    """A PNG cut short: its header is fine, its pixels are missing."""
    path = tmp_path_factory.mktemp("corrupt") / "cut.png"
    path.write_bytes((REPO / "examples" / "images" / "bottle_good_000.png").read_bytes()[:3000])
    return path


def test_ray_data_scores_every_row_as_the_cli_does(ray_cluster, images, cli_scores, corrupt):
    import ray_batch

    repeats = images[:160]
    rows_wanted = len(images) + 1 + len(repeats)
    assert rows_wanted >= 1000
    first = ray_batch.read_images([str(p) for p in [*images, corrupt]], id_prefix="first:")
    second = ray_batch.read_images([str(p) for p in repeats], id_prefix="again:")
    scored = ray_batch.score(
        first.union(second), str(WEIGHTS), str(PARAMS), actors=2, threads_per_actor=1
    )
    rows = scored.take_all()

    ids = collections.Counter(row["id"] for row in rows)
    assert len(rows) == rows_wanted and len(ids) == rows_wanted, (len(rows), len(ids))
    assert max(ids.values()) == 1
    corrupt_error = cli_predict([corrupt])[str(corrupt)]["error"]
    for row in rows:
        path = "/" + row["path"].lstrip("/")
        assert row["id"] in (f"first:{row['path']}", f"again:{row['path']}")
        if path == str(corrupt):
            assert row["error"] == corrupt_error, row
            assert row["score"] != row["score"]  # NaN
            continue
        assert row["error"] is None, row
        want = cli_scores[path]
        for key in SCORES:
            assert abs(row[key] - want[key]) <= TOLERANCE, (path, key, row[key], want[key])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def headclip_serve():
    """`headclip serve` on 127.0.0.1, an ephemeral port; yields its base URL."""
    command = [
        str(headclip_bin()), "serve", "--weights", str(WEIGHTS), "--params", str(PARAMS),
        "--threads", "1", "--addr", "127.0.0.1:0",
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("HEADCLIP_TOKEN", "HEADCLIP_WEIGHTS")}
    server = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        text=True, env=env,
    )
    try:
        address = None
        timer = threading.Timer(120, server.kill)
        timer.start()
        for line in server.stdout:
            if line.startswith("listening on http://"):
                address = line.strip().removeprefix("listening on ")
                break
        timer.cancel()
        assert address, f"headclip serve did not start (exit {server.poll()})"
        yield address
    finally:
        server.terminate()
        server.wait(timeout=60)


def test_ray_serve_answers_as_v1_detect(ray_cluster, headclip_serve, images, corrupt):
    from ray import serve

    import ray_serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(
            ray_serve.HeadclipDetector.bind(str(WEIGHTS), params=str(PARAMS), threshold=0.5),
            route_prefix="/detect",
        )
        sample = [*images[::53], corrupt]
        bodies = [p.read_bytes() for p in sample]
        # Concurrent requests, so that the deployment batches them.
        with ThreadPoolExecutor(8) as pool:
            replies = list(
                pool.map(lambda b: requests.post(f"http://127.0.0.1:{port}/detect", data=b, timeout=120), bodies)
            )
        for path, body, reply in zip(sample, bodies, replies):
            want = requests.post(
                f"{headclip_serve}/v1/detect?threshold=0.5", data=body,
                headers={"Content-Type": "application/octet-stream"}, timeout=120,
            )
            if path == corrupt:
                assert reply.status_code == 422 and want.status_code == 422
                assert reply.json()["error"] in want.json()["error"], want.text
                continue
            assert reply.status_code == 200 and want.status_code == 200, (reply.text, want.text)
            got, want = reply.json(), want.json()
            for key in ("score", "global_score", "pixel_score", "map_max", "map_mean"):
                assert abs(got[key] - want[key]) <= TOLERANCE, (path, key)
            assert (got["anomalous"], got["width"], got["height"]) == (
                want["anomalous"], want["width"], want["height"]
            )
    finally:
        serve.shutdown()
