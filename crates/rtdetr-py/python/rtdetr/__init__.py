"""RT-DETR object detection with a native Rust engine (no PyTorch).

Loads the Hugging Face checkpoints of the ``PekingU/rtdetr_*`` family unchanged and returns
the same boxes, labels and scores as transformers' ``RTDetrForObjectDetection`` with its
image processor.

>>> import rtdetr
>>> det = rtdetr.Detector("models/shapes-demo")          # or "PekingU/rtdetr_r50vd"
>>> result = det("examples/shapes-1.png", threshold=0.5)
>>> for d in result:
...     print(d.label, round(d.score, 2), d.box)

Images are paths (``str`` / ``os.PathLike``), ``bytes`` of an encoded file, PIL images or
``HxWx3 uint8`` NumPy arrays in RGB order (``bgr=True`` for OpenCV frames); a list of them
runs as one batch and returns a list of results. The GIL is released while images are
decoded and the model runs, and one :class:`Detector` may be shared by several threads.
"""

from ._rtdetr import DEFAULT_MODEL, Detection, Detections, Detector, __version__

__all__ = ["DEFAULT_MODEL", "Detection", "Detections", "Detector", "__version__"]
