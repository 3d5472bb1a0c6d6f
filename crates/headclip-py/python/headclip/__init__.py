"""HeadCLIP zero-shot anomaly detection on libtorch, from Python.

>>> import headclip
>>> headclip.set_threads(2)
>>> detector = headclip.Detector("ViT-L-14-336px.pt", params="headclip-params.safetensors")
>>> p = detector.predict("part.png", threshold=0.5)
>>> p.score, p.anomalous, p.anomaly_map.shape

The engine is the Rust library behind the ``headclip`` CLI: images decode, pre-process and
score exactly as ``headclip predict`` does them.

libtorch
--------
The extension module is linked against libtorch 2.11.0 (the only version its ``tch`` 0.24
binding fits) and looks for it, before it loads, in this order:

1. an installed ``torch`` package: it must be ``torch==2.11.0``; its own libraries are used, so
   ``import torch`` before or after ``import headclip`` share one libtorch. Any other torch
   version raises ``ImportError``: install headclip in a separate virtual environment.
2. the folder named by ``HEADCLIP_LIBTORCH`` (a ``torch`` folder holding ``lib/``, or that
   ``lib/`` folder itself);
3. the folder named by ``LIBTORCH`` (as when the package was built);
4. the repository's ``.libtorch/site/torch`` above this package (editable installs).
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import os
from pathlib import Path
from typing import Any, Sequence

#: The libtorch version the extension is built for.
LIBTORCH_VERSION = "2.11.0"

# What the extension module needs by name (its DT_NEEDED entries), in dependency order.
_LIBRARIES = ("libc10.so", "libtorch_cpu.so")


def _torch_lib_dir() -> Path | None:
    """The installed torch's ``lib`` folder, after checking its version; None without torch."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return None
    try:
        version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    if version.split("+")[0] != LIBTORCH_VERSION:
        raise ImportError(
            f"headclip needs libtorch {LIBTORCH_VERSION} (its tch 0.24 binding fits torch "
            f"{LIBTORCH_VERSION} only), but this environment has torch {version}. Install "
            f"headclip in a separate virtual environment (python -m venv), with no torch or "
            f"with torch=={LIBTORCH_VERSION}."
        )
    return Path(next(iter(spec.submodule_search_locations))) / "lib"


def _as_lib_dir(folder: str) -> Path:
    path = Path(folder)
    return path / "lib" if (path / "lib" / _LIBRARIES[-1]).exists() else path


def _repo_lib_dir() -> Path | None:
    for parent in Path(__file__).resolve().parents:
        candidate = parent / ".libtorch" / "site" / "torch" / "lib"
        if (candidate / _LIBRARIES[-1]).exists():
            return candidate
    return None


def _find_libtorch() -> tuple[Path, str]:
    """The folder holding libtorch's libraries, and where it was found."""
    torch_dir = _torch_lib_dir()
    if torch_dir is not None:
        return torch_dir, "the installed torch package"
    for variable in ("HEADCLIP_LIBTORCH", "LIBTORCH"):
        if os.environ.get(variable):
            return _as_lib_dir(os.environ[variable]), variable
    repo = _repo_lib_dir()
    if repo is not None:
        return repo, "the repository's .libtorch"
    raise ImportError(
        f"headclip needs libtorch {LIBTORCH_VERSION}: install torch=={LIBTORCH_VERSION}, or set "
        "HEADCLIP_LIBTORCH to a folder holding libtorch_cpu.so (scripts/setup-libtorch.sh "
        "installs one into .libtorch/site/torch)"
    )


def _load_libtorch() -> Path:
    """Loads libtorch globally so that the extension module's needs resolve to this copy."""
    lib_dir, origin = _find_libtorch()
    for name in _LIBRARIES:
        path = lib_dir / name
        if not path.exists():
            raise ImportError(f"{path} not found (libtorch from {origin})")
        ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
    return lib_dir


#: The folder libtorch was loaded from.
LIBTORCH_LIB = _load_libtorch()

from . import _headclip  # noqa: E402  (libtorch must be loaded first)
from ._headclip import (  # noqa: E402
    EvaluationError,
    HeadclipError,
    ImageError,
    ModelLoadError,
    Prediction,
    __version__,
    get_threads,
    set_threads,
)

__all__ = [
    "Detector",
    "EvaluationError",
    "HeadclipError",
    "ImageError",
    "ModelLoadError",
    "Prediction",
    "get_threads",
    "set_threads",
    "LIBTORCH_VERSION",
    "LIBTORCH_LIB",
    "__version__",
]


def _pil_to_array(image: Any) -> Any:
    """A PIL image's pixels as the decoder would give them for the same file: 16-bit grey
    keeps its high byte; every other mode the decoder knows goes through ``convert("RGB")``
    (grey replicated, palette expanded, alpha dropped without compositing, CMYK converted)."""
    import numpy as np

    mode = image.mode
    if mode.startswith("I;16"):
        return (np.asarray(image).astype(np.uint16) >> 8).astype(np.uint8)
    if mode in ("I", "F"):
        raise ValueError(
            f"PIL mode {mode} (32-bit) is not one the decoder produces; convert the image "
            "to L, RGB or I;16 first"
        )
    if mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image)


def _is_pil_image(x: Any) -> bool:
    module = type(x).__module__
    return module.startswith("PIL.") and hasattr(x, "mode") and hasattr(x, "convert")


class Detector:
    """A loaded HeadCLIP model with its pre-processing.

    Args:
        weights: the CLIP checkpoint (OpenAI .pt, OpenAI/OpenCLIP or Hugging Face
            safetensors, or a folder holding OpenCLIP's or Hugging Face's weights and config).
        params: HeadCLIP's learned parameters (from ``headclip train``); None runs the
            training-free prompt ensemble.
        image_size: the input side S; None takes the parameters file's or the backbone's.
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (CUDA only) for CLIP's towers.
        clip_config: the backbone's config file, overriding the one paired with the weights.
        max_pixels: refuse images with more pixels than this, checked before decoding.
        references: few-shot references: a folder of normal images of the part, or a bank
            saved by ``headclip bank``; built once here.
        class_name: the object's name in the training-free prompt ensemble (learned prompts
            ignore it).
        beta: the weight of the few-shot map in the fused map.

    Raises:
        ModelLoadError: with the message ``headclip predict`` prints for the same arguments.

    Thread-safe: several Python threads may call ``predict`` at once; the GIL is released while
    images decode and score. Threads of computation are a process-wide setting:
    :func:`set_threads`.
    """

    def __init__(
        self,
        weights: str | os.PathLike[str],
        params: str | os.PathLike[str] | None = None,
        image_size: int | None = None,
        device: str = "cpu",
        precision: str = "fp32",
        *,
        clip_config: str | os.PathLike[str] | None = None,
        max_pixels: int | None = None,
        references: str | os.PathLike[str] | None = None,
        class_name: str | None = None,
        beta: float = 0.5,
    ) -> None:
        self._inner = _headclip.Detector(
            weights,
            params,
            image_size,
            device,
            precision,
            clip_config,
            max_pixels,
            references,
            class_name,
            beta,
        )

    @property
    def image_size(self) -> int:
        """The side S of the anomaly maps."""
        return self._inner.image_size

    @property
    def info(self) -> dict[str, Any]:
        """What the model is: architecture, mode, side, device, precision."""
        return self._inner.info

    def __repr__(self) -> str:
        return repr(self._inner)

    def predict(
        self,
        x: Any,
        threshold: float | None = None,
        map_size: str = "model",
        batch_size: int = 1,
    ) -> Any:
        """Scores one image, or a list of images.

        Args:
            x: a path (``str`` or ``os.PathLike``), encoded bytes (PNG, JPEG, TIFF, BMP, GIF,
                WebP; the format comes from the bytes), a NumPy ``uint8`` array (H×W grey, or
                H×W×C with C in 1, 3, 4; a fourth channel, alpha, is dropped), a PIL image, or
                a ``list``/``tuple`` of these.
            threshold: when given, each result's ``anomalous`` is ``score >= threshold``.
            map_size: ``"model"`` for S×S maps, ``"image"`` for maps stretched to the image's
                own H×W (bilinear, as overlays are).
            batch_size: images scored together in one forward pass (1 gives exactly
                ``headclip predict``'s default results).

        Returns:
            One :class:`Prediction` for a single image. For a list, a list in the same order
            holding a :class:`Prediction` per image, or an :class:`ImageError` instance (not
            raised) for an image that could not be read, decoded or scored: one bad image
            never loses the others.

        Raises:
            ImageError: for a single image that cannot be read, decoded or scored.
            TypeError: for an item that is none of the types above.
        """
        if isinstance(x, (list, tuple)):
            return self._predict_list(list(x), threshold, map_size, batch_size)
        result = self._predict_list([x], threshold, map_size, batch_size)[0]
        if isinstance(result, ImageError):
            raise result
        return result

    def _predict_list(
        self, items: list[Any], threshold: float | None, map_size: str, batch_size: int
    ) -> list[Any]:
        results: list[Any] = [None] * len(items)
        sources: list[Any] = []
        positions: list[int] = []
        for i, item in enumerate(items):
            if _is_pil_image(item):
                try:
                    item = _pil_to_array(item)
                except ValueError as e:
                    error = ImageError(f"<PIL image>: {e}")
                    error.index, error.source, error.reason = i, "<PIL image>", str(e)
                    results[i] = error
                    continue
            sources.append(item)
            positions.append(i)
        scored = self._inner.predict_many(sources, threshold, map_size, batch_size)
        for position, result in zip(positions, scored):
            if isinstance(result, ImageError):
                result.index = position
            results[position] = result
        return results

    def evaluate(
        self,
        data_specs: str | Sequence[str],
        batch_size: int = 1,
        decode_threads: int = 1,
        allow_missing_masks: bool = False,
    ) -> dict[str, Any]:
        """Evaluates data sets with the published protocol, as ``headclip test`` does.

        Args:
            data_specs: ``headclip test``'s ``--data`` strings, ``KIND:ROOT[,key=value...]``
                (e.g. ``"mvtec:/data/mvtec_ad"``, ``"folder:/data/kvasir,name=kvasir"``).
            batch_size: images per forward pass.
            decode_threads: threads decoding ahead of the model.
            allow_missing_masks: evaluate categories where an anomalous image lacks its mask at
                image level only, instead of refusing them.

        Returns:
            ``headclip test --json``'s report as dicts: ``model``, ``datasets`` (per data set
            its categories' metrics and their means; a metric the protocol leaves undefined is
            None), ``timing``.

        Raises:
            EvaluationError: a data set that cannot be loaded, or an image or mask that cannot
                be decoded (evaluation stops at the first; no partial figures).
        """
        import json

        specs = [data_specs] if isinstance(data_specs, str) else list(data_specs)
        text = self._inner.evaluate_json(specs, batch_size, decode_threads, allow_missing_masks)
        return json.loads(text)
