"""The headclip package against `headclip predict`: same scores on the shared images, every
kind of input giving the same result, per-item errors in lists, threads, errors' messages,
and how libtorch is loaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import headclip
from conftest import (
    PARAMS, REPO, SHARED_DATA, TOLERANCE, WEIGHTS, cli_predict, headclip_bin,
)

SCORES = ("score", "global_score", "pixel_score", "map_max", "map_mean")
BOTTLE = REPO / "examples" / "images" / "bottle_good_000.png"


def assert_same(prediction, expected: dict, what: str) -> None:
    for key in SCORES:
        got, want = getattr(prediction, key), expected[key]
        assert abs(got - want) <= TOLERANCE, f"{what}: {key} {got} vs {want}"
    assert (prediction.width, prediction.height) == (expected["width"], expected["height"]), what


def test_predict_equals_the_cli_on_every_shared_image(detector, images, cli_scores):
    results = detector.predict(images)
    assert len(results) == len(images) == len(cli_scores)
    for path, result in zip(images, results):
        assert isinstance(result, headclip.Prediction), f"{path}: {result}"
        assert_same(result, cli_scores[str(path)], str(path))
        assert result.anomaly_map.shape == (result.image_size, result.image_size)
        assert result.anomaly_map.dtype == np.float32
        assert abs(float(result.anomaly_map.max()) - result.map_max) <= TOLERANCE


def test_paths_bytes_arrays_and_pil_images_give_the_same_result(detector, images):
    # One image per PIL mode the shared sets hold: RGB, L (grey), RGBA and P (palette).
    by_mode = {}
    for path in images:
        by_mode.setdefault(Image.open(path).mode, path)
    assert set(by_mode) == {"RGB", "L", "RGBA", "P"}, by_mode
    for mode, path in by_mode.items():
        want = detector.predict(path)
        image = Image.open(path)
        image.load()
        forms = {
            "str path": str(path),
            "bytes": path.read_bytes(),
            "bytearray": bytearray(path.read_bytes()),
            "PIL image": image,
            "array": np.asarray(image.convert("RGB")),
        }
        if mode == "L":
            forms["H×W array"] = np.asarray(image)
            forms["H×W×1 array"] = np.asarray(image)[:, :, None]
        if mode == "RGBA":
            forms["H×W×4 array"] = np.asarray(image)
            forms["non-contiguous array"] = np.asarray(image)[:, :, :3]
        for form, x in forms.items():
            got = detector.predict(x)
            assert got.score == want.score, f"{path.name} ({mode}) as {form}"
            assert np.array_equal(got.anomaly_map, want.anomaly_map), f"{path.name} as {form}"


def test_sixteen_bit_grey_keeps_its_high_byte_as_the_decoder_does(detector, tmp_path):
    values = (np.arange(80 * 64, dtype=np.uint32).reshape(80, 64) * 12).astype(np.uint16)
    path = tmp_path / "grey16.png"
    Image.fromarray(values).save(path)
    image = Image.open(path)
    assert image.mode == "I;16"
    want = detector.predict(path)
    assert detector.predict(image).score == want.score
    assert detector.predict((values >> 8).astype(np.uint8)).score == want.score


def test_a_corrupt_item_gets_its_error_and_the_others_their_results(detector, tmp_path):
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(BOTTLE.read_bytes()[:5000])
    missing = tmp_path / "missing.png"
    items = [BOTTLE, truncated, b"not an image", missing, np.zeros((4, 4, 2), np.uint8), BOTTLE]
    results = detector.predict(items)
    want = detector.predict(BOTTLE)
    assert [type(r).__name__ for r in results] == [
        "Prediction", "ImageError", "ImageError", "ImageError", "ImageError", "Prediction"
    ]
    assert results[0].score == results[5].score == want.score
    for index in (1, 2, 3, 4):
        assert isinstance(results[index], headclip.HeadclipError)
        assert results[index].index == index
    # The CLI's own message for the same files.
    cli = cli_predict([BOTTLE, truncated])
    assert str(results[1]) == f"{truncated}: {cli[str(truncated)]['error']}"
    assert results[1].source == str(truncated)
    assert "cannot read" in str(results[3]) and str(missing) in str(results[3])
    assert "shape" in str(results[4])
    with pytest.raises(headclip.ImageError, match="not an image"):
        detector.predict(b"not an image")


def test_two_threads_at_once_give_the_same_results(detector, images):
    sample = images[::20]
    want = [r.score for r in detector.predict(sample)]
    got: dict[int, list[float]] = {}

    def work(k: int) -> None:
        got[k] = [r.score for r in detector.predict(sample)]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == {0: want, 1: want}


def test_threshold_map_size_and_batches(detector):
    p = detector.predict(BOTTLE, threshold=0.0, map_size="image")
    assert p.anomalous is True and p.threshold == 0.0
    assert p.anomaly_map.shape == (p.height, p.width)
    assert detector.predict(BOTTLE).anomalous is None
    assert detector.predict(BOTTLE, threshold=1.0).anomalous is False
    batched = detector.predict([BOTTLE] * 3, batch_size=2)
    assert all(abs(b.score - p.score) <= TOLERANCE for b in batched)
    with pytest.raises(ValueError, match="threshold"):
        detector.predict(BOTTLE, threshold=1.5)
    with pytest.raises(ValueError, match="map_size"):
        detector.predict(BOTTLE, map_size="large")
    with pytest.raises(TypeError, match="uint8"):
        detector.predict(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(TypeError, match="cannot score"):
        detector.predict(3.5)


def test_load_errors_carry_the_clis_messages(tmp_path):
    with pytest.raises(headclip.ModelLoadError, match="not found"):
        headclip.Detector(tmp_path / "missing.safetensors")
    with pytest.raises(headclip.ModelLoadError, match="fp16 needs a CUDA device"):
        headclip.Detector(WEIGHTS, precision="fp16")
    with pytest.raises(headclip.ModelLoadError, match="unknown device"):
        headclip.Detector(WEIGHTS, device="tpu")
    with pytest.raises(headclip.ModelLoadError):
        headclip.Detector(WEIGHTS, params=BOTTLE)


def test_evaluate_returns_the_clis_report_as_dicts(detector, tmp_path):
    spec = f"mvtec:{SHARED_DATA / 'mvtec_bottle'}"
    report = detector.evaluate([spec])
    (dataset,) = report["datasets"]
    assert (dataset["spec"], dataset["images"], dataset["normal"]) == (spec, 83, 20)
    assert report["model"]["mode"] == "learned" and report["timing"]["images"] == 83
    json_path = tmp_path / "report.json"
    command = [
        str(headclip_bin()), "test", "--weights", str(WEIGHTS), "--params", str(PARAMS),
        "--data", spec, "--json", str(json_path),
    ]
    run = subprocess.run(command, capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    cli = json.loads(json_path.read_text())["datasets"][0]
    # Every figure equal; only the categories' timings differ.
    metrics = [(c["name"], c["images"], c["metrics"]) for c in dataset["categories"]]
    assert metrics == [(c["name"], c["images"], c["metrics"]) for c in cli["categories"]]
    assert dataset["mean"] == cli["mean"] and dataset["mean"]["pixel_auroc"] is not None
    with pytest.raises(headclip.EvaluationError, match="nonsense"):
        detector.evaluate("nonsense")
    with pytest.raises(headclip.EvaluationError, match="missing"):
        detector.evaluate(f"mvtec:{tmp_path / 'missing'}")


def test_set_threads_is_process_wide():
    before = headclip.get_threads()
    headclip.set_threads(1)
    assert headclip.get_threads() == 1
    headclip.set_threads(before)
    with pytest.raises(ValueError):
        headclip.set_threads(0)


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True,
        env={**os.environ, **env}, check=False, cwd="/",
    )


def test_one_libtorch_in_the_process():
    code = (
        "import headclip\n"
        "d = headclip.Detector(%r, params=%r)\n"
        "d.predict(%r)\n"
        "paths = {l.split()[-1] for l in open('/proc/self/maps') if 'libtorch_cpu.so' in l}\n"
        "print('\\n'.join(sorted(paths)))\n"
    ) % (str(WEIGHTS), str(PARAMS), str(BOTTLE))
    run = run_python(code)
    assert run.returncode == 0, run.stderr
    paths = run.stdout.split()
    assert len(paths) == 1, paths
    assert Path(paths[0]).resolve() == (Path(headclip.LIBTORCH_LIB) / "libtorch_cpu.so").resolve()


def fake_torch(root: Path, version: str, lib: Path | None) -> Path:
    """A `torch` distribution of the given version (its lib/ linking to `lib`), on a path."""
    package = root / "torch"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    if lib is not None:
        (package / "lib").symlink_to(lib)
    info = root / f"torch-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n")
    return root


def test_another_torch_version_is_refused_with_advice(tmp_path):
    site = fake_torch(tmp_path, "2.12.0", None)
    run = run_python("import headclip", PYTHONPATH=str(site))
    assert run.returncode != 0
    assert "torch 2.11.0 only" in run.stderr and "2.12.0" in run.stderr, run.stderr
    assert "separate virtual environment" in run.stderr


def test_an_installed_torch_2_11_provides_libtorch(tmp_path):
    lib = Path(headclip.LIBTORCH_LIB).resolve()
    site = fake_torch(tmp_path, "2.11.0+cpu", lib)
    code = (
        "import headclip\n"
        "paths = {l.split()[-1] for l in open('/proc/self/maps') if 'libtorch_cpu.so' in l}\n"
        "print(headclip.LIBTORCH_LIB, len(paths))\n"
    )
    run = run_python(code, PYTHONPATH=str(site), HEADCLIP_LIBTORCH="/nonexistent")
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == [str(site / "torch" / "lib"), "1"]


def test_few_shot_references_and_class_name_equal_the_cli():
    """References (a folder of normal images) and a class name give `headclip predict`'s
    scores with the same options, and differ from the zero-shot ones."""
    references = SHARED_DATA / "mvtec_bottle" / "bottle" / "train" / "good"
    tests = sorted((SHARED_DATA / "mvtec_bottle" / "bottle" / "test" / "broken_large").glob("*.png"))[:4]
    assert len(tests) == 4
    detector = headclip.Detector(
        WEIGHTS, params=None, image_size=64, references=references, class_name="bottle", beta=0.7
    )
    expected = cli_predict_training_free(
        tests, "--image-size", "64", "--references", str(references),
        "--class-name", "bottle", "--beta", "0.7",
    )
    zero_shot = cli_predict_training_free(tests, "--image-size", "64")
    for path, result in zip(tests, detector.predict(tests)):
        assert isinstance(result, headclip.Prediction), f"{path}: {result}"
        assert_same(result, expected[str(path)], str(path))
        assert abs(result.score - zero_shot[str(path)]["score"]) > 1e-4, path


def cli_predict_training_free(paths: list[Path], *extra: str) -> dict[str, dict]:
    """`headclip predict` without learned parameters: the prompt ensemble reads class names."""
    command = [str(headclip_bin()), "predict", "--weights", str(WEIGHTS), *extra, *map(str, paths)]
    env = {k: v for k, v in os.environ.items() if k != "HEADCLIP_WEIGHTS"}
    run = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    assert len(lines) == len(paths), run.stderr[-2000:]
    return {line["path"]: line for line in lines}
