"""Type stubs of the rtdetr package (the native module ``rtdetr._rtdetr``)."""

import os
from typing import Any, Dict, Iterator, List, Literal, Optional, Sequence, Tuple, Union, final, overload

import numpy as np
import numpy.typing as npt
import PIL.Image

__all__ = ["DEFAULT_MODEL", "Detection", "Detections", "Detector", "__version__"]

__version__: str
DEFAULT_MODEL: str
"""The model loaded when none is given: ``"PekingU/rtdetr_r50vd"``."""

# A single image: a file path, the bytes of an encoded image (JPEG, PNG, WebP, BMP, GIF),
# a PIL image (EXIF orientation applied, converted with ``convert("RGB")``), or an
# ``(H, W, 3)`` uint8 array in RGB order (BGR with ``bgr=True``).
_ImageInput = Union[str, os.PathLike[str], bytes, bytearray, PIL.Image.Image, npt.NDArray[np.uint8]]

@final
class Detection:
    """One detected object."""

    @property
    def label(self) -> str:
        """Class name (the checkpoint's ``id2label``)."""
    @property
    def class_id(self) -> int:
        """Class index."""
    @property
    def score(self) -> float:
        """Confidence, above the call's threshold."""
    @property
    def box(self) -> Tuple[float, float, float, float]:
        """``(xmin, ymin, xmax, ymax)`` in pixels of the original image."""
    def to_dict(self) -> Dict[str, Any]:
        """``{"label", "class_id", "score", "box": {"xmin", "ymin", "xmax", "ymax"}}``."""

@final
class Detections:
    """The detections of one image, highest score first."""

    @property
    def boxes(self) -> npt.NDArray[np.float32]:
        """``(N, 4)`` float32 array of ``xmin, ymin, xmax, ymax`` pixels."""
    @property
    def scores(self) -> npt.NDArray[np.float32]:
        """``(N,)`` float32 array."""
    @property
    def class_ids(self) -> npt.NDArray[np.int64]:
        """``(N,)`` int64 array."""
    @property
    def labels(self) -> List[str]:
        """Class names, one per detection."""
    @property
    def width(self) -> int:
        """Image width in pixels (after EXIF orientation)."""
    @property
    def height(self) -> int:
        """Image height in pixels (after EXIF orientation)."""
    def __len__(self) -> int: ...
    def __getitem__(self, index: int, /) -> Detection: ...
    def __iter__(self) -> Iterator[Detection]: ...
    def __bool__(self) -> bool: ...
    def to_list(self, integer_boxes: bool = False) -> List[Dict[str, Any]]:
        """The Hugging Face object-detection pipeline's output:
        ``[{"score", "label", "box": {"xmin", "ymin", "xmax", "ymax"}}]``.

        Boxes are float pixels; ``integer_boxes=True`` truncates them to ``int`` as the
        pipeline does."""
    def to_dict(self) -> Dict[str, Any]:
        """``{"width", "height", "detections": [{"label", "class_id", "score", "box"}]}``:
        one line of ``rtdetr detect --json`` without the file name."""
    def to_supervision(self) -> Any:
        """A ``supervision.Detections`` with ``xyxy``, ``confidence``, ``class_id`` and
        ``data["class_name"]``. Raises ``ImportError`` without the ``supervision`` package."""

@final
class Detector:
    """A loaded RT-DETR checkpoint. Safe to share between threads."""

    def __new__(
        cls,
        model: Union[str, os.PathLike[str], None] = None,
        *,
        precision: Literal["f32", "bf16"] = "f32",
        size: Union[int, Tuple[int, int], None] = None,
        decoder_layers: Optional[int] = None,
    ) -> "Detector":
        """Loads a checkpoint directory (``config.json``, ``model.safetensors``,
        ``preprocessor_config.json``) or a Hugging Face Hub id (downloaded into the standard
        cache; ``HF_HOME`` and ``HF_ENDPOINT`` honoured). ``None`` loads
        :data:`DEFAULT_MODEL`.

        ``precision="bf16"`` needs AVX512-BF16 (otherwise a ``RuntimeWarning`` and f32);
        ``size`` is the input size, one multiple of 32 or ``(height, width)`` (default: the
        checkpoint's preprocessor config); ``decoder_layers`` runs only the first N decoder
        layers.

        Raises ``FileNotFoundError`` for a missing directory or file, ``ValueError`` for a
        malformed checkpoint or bad arguments, ``RuntimeError`` when a download fails."""
    # One image -> Detections; a list or tuple of images (one forward pass) -> a list; an
    # (H, W, 3) array -> Detections, an (N, H, W, 3) array -> a list. `threshold` keeps scores
    # above it (0..1); `classes` keeps the named labels; `bgr=True` reads arrays as BGR.
    @overload
    def __call__(
        self,
        images: Union[str, os.PathLike[str], bytes, bytearray, PIL.Image.Image],
        *,
        threshold: float = 0.5,
        max_detections: int = 100,
        classes: Union[str, Sequence[str], None] = None,
        bgr: bool = False,
    ) -> Detections: ...
    @overload
    def __call__(
        self,
        images: Union[List[_ImageInput], Tuple[_ImageInput, ...]],
        *,
        threshold: float = 0.5,
        max_detections: int = 100,
        classes: Union[str, Sequence[str], None] = None,
        bgr: bool = False,
    ) -> List[Detections]: ...
    @overload
    def __call__(
        self,
        images: npt.NDArray[np.uint8],
        *,
        threshold: float = 0.5,
        max_detections: int = 100,
        classes: Union[str, Sequence[str], None] = None,
        bgr: bool = False,
    ) -> Union[Detections, List[Detections]]: ...
    # Same as calling the detector.
    @overload
    def detect(
        self,
        images: Union[str, os.PathLike[str], bytes, bytearray, PIL.Image.Image],
        *,
        threshold: float = 0.5,
        max_detections: int = 100,
        classes: Union[str, Sequence[str], None] = None,
        bgr: bool = False,
    ) -> Detections: ...
    @overload
    def detect(
        self,
        images: Union[List[_ImageInput], Tuple[_ImageInput, ...]],
        *,
        threshold: float = 0.5,
        max_detections: int = 100,
        classes: Union[str, Sequence[str], None] = None,
        bgr: bool = False,
    ) -> List[Detections]: ...
    @overload
    def detect(
        self,
        images: npt.NDArray[np.uint8],
        *,
        threshold: float = 0.5,
        max_detections: int = 100,
        classes: Union[str, Sequence[str], None] = None,
        bgr: bool = False,
    ) -> Union[Detections, List[Detections]]: ...
    def eval(
        self,
        images_dir: Union[str, os.PathLike[str]],
        annotations: Union[str, os.PathLike[str]],
        *,
        batch_size: int = 1,
        limit: Optional[int] = None,
        out: Union[str, os.PathLike[str], None] = None,
    ) -> Dict[str, float]:
        """COCO bbox evaluation as ``rtdetr eval``: returns ``AP, AP50, AP75, APs, APm, APl,
        AR1, AR10, AR100, ARs, ARm, ARl`` (-1 where undefined). ``limit`` evaluates the
        first N images by id; ``out`` writes the detections as a COCO results file."""
    @property
    def labels(self) -> List[str]:
        """Class names, indexed by class id."""
    @property
    def input_size(self) -> Optional[Tuple[int, int]]:
        """The network input ``(height, width)``; ``None`` when each image keeps its size."""
    @property
    def precision(self) -> Literal["f32", "bf16"]:
        """The arithmetic in effect."""
    @property
    def decoder_layers(self) -> int:
        """Decoder layers each forward pass runs."""
    @property
    def model(self) -> str:
        """The model as given (directory or Hub id)."""
