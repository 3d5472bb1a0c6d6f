"""Type stubs of the headclip package (see __init__.py and the README's "Python" section)."""

import os
from pathlib import Path
from typing import Any, Literal, Sequence, overload

import numpy as np
import numpy.typing as npt

LIBTORCH_VERSION: str
LIBTORCH_LIB: Path
__version__: str

class HeadclipError(Exception):
    """Base class of headclip's errors."""

class ModelLoadError(HeadclipError):
    """The model could not be built (weights, parameters, device or precision)."""

class ImageError(HeadclipError):
    """An image could not be read, decoded or scored."""

    #: The item's position in the list given to ``predict``.
    index: int
    #: The item's path, or what it was (``<N bytes>``, ``<W×H array>``, ``<PIL image>``).
    source: str
    #: Why, as ``headclip predict`` says it (the message is ``"<source>: <reason>"``).
    reason: str

class EvaluationError(HeadclipError):
    """A data set could not be loaded or evaluated."""

class Prediction:
    """One image's scores and anomaly map."""

    score: float
    global_score: float
    pixel_score: float
    #: float32, S×S (map_size="model") or the image's H×W (map_size="image"), values in [0, 1].
    anomaly_map: npt.NDArray[np.float32]
    map_max: float
    map_mean: float
    width: int
    height: int
    image_size: int
    format: str | None
    threshold: float | None
    #: The verdict, ``score >= threshold``; None when no threshold was given.
    anomalous: bool | None

PathLike = str | os.PathLike[str]
#: A path, encoded bytes, a uint8 array (H×W or H×W×C, C in 1, 3, 4), or a PIL image.
ImageInput = PathLike | bytes | bytearray | memoryview | npt.NDArray[np.uint8] | Any

def set_threads(n: int) -> None:
    """Sets libtorch's compute threads for the whole process."""

def get_threads() -> int:
    """libtorch's compute threads."""

class Detector:
    def __init__(
        self,
        weights: PathLike,
        params: PathLike | None = None,
        image_size: int | None = None,
        device: str = "cpu",
        precision: Literal["fp32", "bf16", "fp16"] = "fp32",
        *,
        clip_config: PathLike | None = None,
        max_pixels: int | None = None,
        references: PathLike | None = None,
        class_name: str | None = None,
        beta: float = 0.5,
    ) -> None: ...
    @property
    def image_size(self) -> int: ...
    @property
    def info(self) -> dict[str, Any]: ...
    @overload
    def predict(
        self,
        x: list[ImageInput] | tuple[ImageInput, ...],
        threshold: float | None = None,
        map_size: Literal["model", "image"] = "model",
        batch_size: int = 1,
    ) -> list[Prediction | ImageError]: ...
    @overload
    def predict(
        self,
        x: ImageInput,
        threshold: float | None = None,
        map_size: Literal["model", "image"] = "model",
        batch_size: int = 1,
    ) -> Prediction: ...
    def evaluate(
        self,
        data_specs: str | Sequence[str],
        batch_size: int = 1,
        decode_threads: int = 1,
        allow_missing_masks: bool = False,
    ) -> dict[str, Any]: ...
