"""`headclip serve`'s Open Inference Protocol (KServe v2) through Triton's own HTTP client.

Self-contained: starts `headclip serve` ($HEADCLIP_BIN, or <repo>/target/release/headclip) on
127.0.0.1 with the tiny random-weight fixture model, and compares what `tritonclient` gets,
with its default binary tensor transfer, against `/v1/detect` on the same images.
Needs pytest, numpy, requests and tritonclient[http]; a missing one fails the run.
"""

import os
import struct
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.http as triton

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "crates/headclip/tests/fixtures/tiny"
EXAMPLES = sorted((REPO / "examples/images").glob("*.png"))
TOLERANCE = 1e-6


def headclip_bin():
    path = Path(os.environ.get("HEADCLIP_BIN", REPO / "target/release/headclip"))
    assert path.is_file(), f"{path} not found: build it (cargo build --release) or set HEADCLIP_BIN"
    return path


@pytest.fixture(scope="module")
def server():
    """The server's host:port; stopped after the module's tests."""
    env = {k: v for k, v in os.environ.items() if k not in ("HEADCLIP_TOKEN", "HEADCLIP_WEIGHTS")}
    proc = subprocess.Popen(
        [headclip_bin(), "serve",
         "--weights", TINY / "clip_openai.safetensors",
         "--params", TINY / "params_learned.safetensors",
         "--threads", "1", "--addr", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        text=True, env=env,
    )
    found = []

    def read_address():
        for line in proc.stdout:
            if line.startswith("listening on http://"):
                found.append(line.strip().removeprefix("listening on http://"))
                return

    reader = threading.Thread(target=read_address, daemon=True)
    reader.start()
    reader.join(timeout=120)
    try:
        assert found, f"headclip serve did not start (exit status {proc.poll()})"
        yield found[0]
    finally:
        proc.terminate()
        proc.wait(timeout=60)


@pytest.fixture(scope="module")
def client(server):
    return triton.InferenceServerClient(url=server)


def v1_detect(server, image_bytes):
    reply = requests.post(f"http://{server}/v1/detect?overlay=none", data=image_bytes, timeout=120)
    assert reply.status_code == 200, reply.text
    return reply.json()


def bmp(pixels):
    """An uncompressed 24-bit BMP of an H×W×3 uint8 array: rows bottom-up, BGR, 4-byte padded."""
    height, width, _ = pixels.shape
    row = width * 3
    pad = (4 - row % 4) % 4
    rows = b"".join(pixels[y, :, ::-1].tobytes() + b"\0" * pad for y in range(height - 1, -1, -1))
    header = struct.pack("<2sIHHI", b"BM", 54 + len(rows), 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, len(rows), 2835, 2835, 0, 0)
    return header + info + rows


def synthetic(height, width, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def test_health_and_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("headclip")
    assert not client.is_model_ready("another")
    meta = client.get_model_metadata("headclip")
    assert meta["name"] == "headclip"
    inputs = {i["name"]: (i["datatype"], i["shape"]) for i in meta["inputs"]}
    assert inputs == {"image": ("BYTES", [-1]), "pixels": ("UINT8", [-1, -1, -1, -1])}
    outputs = {o["name"]: (o["datatype"], o["shape"]) for o in meta["outputs"]}
    side = meta["parameters"]["image_size"]
    assert outputs["anomaly_map"] == ("FP32", [-1, side, side])
    assert outputs["score"] == ("FP32", [-1])


def check_against_v1(server, result, encoded_images):
    scores = result.as_numpy("score")
    assert scores.dtype == np.float32 and scores.shape == (len(encoded_images),)
    maps = result.as_numpy("anomaly_map")
    assert maps.dtype == np.float32 and maps.shape[0] == len(encoded_images)
    assert maps.shape[1] == maps.shape[2]
    for i, encoded in enumerate(encoded_images):
        v1 = v1_detect(server, encoded)
        for name in ("score", "global_score", "pixel_score"):
            assert abs(float(result.as_numpy(name)[i]) - v1[name]) <= TOLERANCE, (name, i)
        assert abs(float(maps[i].max()) - v1["map_max"]) <= TOLERANCE
        assert bool(result.as_numpy("anomalous")[i]) == v1["anomalous"]


def test_bytes_infer_matches_v1_detect(server, client):
    encoded = [p.read_bytes() for p in EXAMPLES]
    assert len(encoded) >= 3, "the example images are missing"
    tensor = triton.InferInput("image", [len(encoded)], "BYTES")
    tensor.set_data_from_numpy(np.array(encoded, dtype=np.object_))  # binary by default
    result = client.infer("headclip", [tensor])
    check_against_v1(server, result, encoded)


def test_uint8_infer_matches_v1_detect(server, client):
    images = [synthetic(120, 90, seed) for seed in (1, 2)]
    batch = triton.InferInput("pixels", [2, 120, 90, 3], "UINT8")
    batch.set_data_from_numpy(np.stack(images))
    check_against_v1(server, client.infer("headclip", [batch]), [bmp(i) for i in images])
    # One image as [H, W, C], the scores alone, as JSON.
    single = triton.InferInput("pixels", [120, 90, 3], "UINT8")
    single.set_data_from_numpy(images[0], binary_data=False)
    wanted = [triton.InferRequestedOutput("score", binary_data=False)]
    result = client.infer("headclip", [single], outputs=wanted)
    assert abs(float(result.as_numpy("score")[0]) - v1_detect(server, bmp(images[0]))["score"]) <= TOLERANCE


def test_errors_reach_the_client(client):
    tensor = triton.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([b"not an image"], dtype=np.object_))
    with pytest.raises(triton.InferenceServerException, match="image 1"):
        client.infer("headclip", [tensor])
    with pytest.raises(triton.InferenceServerException, match="unknown model"):
        client.infer("another", [tensor])
