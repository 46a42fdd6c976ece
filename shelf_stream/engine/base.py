"""Detector interface shared by every backend (onnxruntime, tensorrt, triton)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np

#: What a detector accepts: an HxWx3 uint8 BGR array or a decoded video frame.
Image = np.ndarray | av.VideoFrame


@dataclass(frozen=True, slots=True)
class Detections:
    """Detections of one frame, boxes in source-frame pixels."""

    boxes: np.ndarray  # (N, 4) float32, x1 y1 x2 y2
    scores: np.ndarray  # (N,) float32
    class_ids: np.ndarray  # (N,) int32

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @staticmethod
    def empty() -> Detections:
        return Detections(
            np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0,), np.int32)
        )


@dataclass(frozen=True, slots=True)
class PreparedImage:
    """A letterboxed model input and what is needed to map boxes back to the source."""

    tensor: np.ndarray  # (3, H, W) float32, laid out as the model wants
    scale: float  # model pixels per source pixel
    pad_x: float  # left padding in model pixels
    pad_y: float  # top padding in model pixels
    source_width: int
    source_height: int


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineConfig:
    """Settings of the detection engine.

    ``backend``: ``auto``, ``onnxruntime``, ``tensorrt`` or ``triton``.
    ``adapter``: ``None`` picks the model format from its outputs/metadata;
    ``yolox`` or ``ultralytics`` forces one.
    ``triton_*``: only for the ``triton`` backend (see ``engine.triton_backend``).
    """

    model_path: Path
    backend: str = "onnxruntime"
    adapter: str | None = None
    score_threshold: float = 0.3
    nms_iou_threshold: float = 0.45
    max_detections: int = 100
    intra_op_threads: int = 0  # 0: half the CPU cores, at least 1
    class_names: tuple[str, ...] | None = field(default=None)  # overrides the model's
    # backend "triton": the server's gRPC address, the model's name there (None: the
    # model file's stem), system shared memory for tensors (same host only), and how
    # long one request may take before it counts as failed.
    triton_url: str = "127.0.0.1:8001"
    triton_model: str | None = None
    triton_shm: bool = False
    triton_timeout_s: float = 10.0


class Detector(ABC):
    """Runs one model. ``prepare`` is pure and thread-safe; ``infer`` is called by one
    thread at a time (the engine owns its runtime session)."""

    @property
    @abstractmethod
    def model_name(self) -> str: ...

    @property
    @abstractmethod
    def input_size(self) -> tuple[int, int]:
        """(width, height) of the model's input."""

    @property
    @abstractmethod
    def class_names(self) -> tuple[str, ...]: ...

    @abstractmethod
    def prepare(self, image: Image) -> PreparedImage:
        """Letterbox and lay out one image for the model."""

    @abstractmethod
    def infer(self, batch: Sequence[PreparedImage]) -> list[Detections]:
        """Run the model on prepared images; one ``Detections`` per image, in order."""

    def detect(self, images: Sequence[Image]) -> list[Detections]:
        return self.infer([self.prepare(image) for image in images])

    def close(self) -> None:  # noqa: B027 - optional for backends with nothing to free
        """Release the runtime session."""
