"""What every backend does the same way around its runtime: reading the model's input
layout and class names, batching prepared images, and decoding one image's output.

Backends differ only in how a stacked batch becomes an output array; everything here
is shared so that ONNX Runtime and TensorRT give the same detections on the same frame.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shelf_stream.engine.adapters import ModelAdapter, Shape, select_adapter
from shelf_stream.engine.base import Detections, Detector, EngineConfig, Image, PreparedImage
from shelf_stream.engine.coco import COCO_CLASSES
from shelf_stream.engine.postprocess import postprocess
from shelf_stream.engine.preprocess import LetterboxSpec, letterbox
from shelf_stream.errors import ConfigError, EngineError


def normalise_shape(shape: Sequence[Any]) -> list[int | str | None]:
    """A runtime's shape with dynamic dimensions as ``None`` (TensorRT says -1)."""
    return [d if isinstance(d, str) else (int(d) if int(d) >= 0 else None) for d in shape]


def check_input_shape(path: Path, shape: Sequence[Any]) -> None:
    """The model input must be (batch, 3, height, width)."""
    channels = shape[1] if len(shape) == 4 else None
    if len(shape) != 4 or (isinstance(channels, int) and channels != 3):
        raise EngineError(
            f"{path.name}: input shape {list(shape)} is not (batch, 3, height, width); "
            "expected an image detection model (YOLOX or Ultralytics YOLOv8/YOLO11)"
        )


def input_size(
    path: Path, shape: Sequence[Any], adapter: ModelAdapter, metadata: Mapping[str, str]
) -> tuple[int, int]:
    """(width, height) from a fixed input shape, else from the model's metadata."""
    height, width = shape[2], shape[3]
    if isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0:
        return width, height
    from_metadata = adapter.input_size(metadata)
    if from_metadata is None:
        raise EngineError(
            f"{path.name} has a dynamic input size {list(shape)} and no 'imgsz' metadata; "
            "export it with a fixed input size"
        )
    return from_metadata


def class_names(
    configured: tuple[str, ...] | None,
    from_metadata: tuple[str, ...] | None,
    num_classes: int | None,
) -> tuple[str, ...]:
    """Configured names, else the model's, else COCO for 80 classes, else class_<i>."""
    if num_classes is None:
        num_classes = len(configured or from_metadata or ())
    if num_classes <= 0:
        raise EngineError("cannot tell the number of classes from the model's output")
    if configured is not None:
        if len(configured) != num_classes:
            raise ConfigError(
                f"{len(configured)} class names given, but the model has {num_classes} classes"
            )
        return configured
    if from_metadata is not None and len(from_metadata) == num_classes:
        return from_metadata
    if num_classes == len(COCO_CLASSES):
        return COCO_CLASSES
    return tuple(f"class_{i}" for i in range(num_classes))


@dataclass(frozen=True, slots=True)
class ModelLayout:
    """What a backend learns from a model's I/O description, the same for every runtime."""

    adapter: ModelAdapter
    input_size: tuple[int, int]  # (width, height)
    letterbox: LetterboxSpec
    class_names: tuple[str, ...]


class LayoutDetector(Detector):
    """A detector whose model is described by a ``ModelLayout`` (every backend here):
    input size, class names and letterbox come from it, and so does ``prepare``."""

    _layout: ModelLayout
    _config: EngineConfig

    def _infer_in_chunks(
        self,
        batch: Sequence[PreparedImage],
        chunk_size: int,
        run: Callable[[Sequence[PreparedImage]], np.ndarray],
    ) -> list[Detections]:
        """Run ``batch`` in chunks the model accepts (``run`` returns one output row per
        image, padded rows last) and decode each image's output."""
        results: list[Detections] = []
        for chunk in chunks(batch, chunk_size):
            outputs = run(chunk)
            # strict=False: a padded fixed-size batch has more outputs than images.
            results.extend(
                decode_output(self._layout, self._config, out, prepared)
                for out, prepared in zip(outputs, chunk, strict=False)
            )
        return results

    @property
    def input_size(self) -> tuple[int, int]:
        return self._layout.input_size

    @property
    def class_names(self) -> tuple[str, ...]:
        return self._layout.class_names

    @property
    def adapter(self) -> ModelAdapter:
        return self._layout.adapter

    @property
    def letterbox_spec(self) -> LetterboxSpec:
        return self._layout.letterbox

    def prepare(self, image: Image) -> PreparedImage:
        return letterbox(image, self._layout.letterbox)


def model_layout(
    path: Path,
    config: EngineConfig,
    input_shape: Sequence[Any],
    output_shapes: Sequence[Shape],
    metadata: Mapping[str, str],
) -> ModelLayout:
    """Adapter, input size, letterbox and class names from shapes and metadata."""
    check_input_shape(path, input_shape)
    adapter = select_adapter(output_shapes, metadata, config.adapter)
    size = input_size(path, input_shape, adapter, metadata)
    names = class_names(
        config.class_names, adapter.class_names(metadata), adapter.num_classes(output_shapes[0])
    )
    return ModelLayout(adapter, size, adapter.letterbox_spec(size), names)


def chunks(batch: Sequence[PreparedImage], size: int) -> Iterator[Sequence[PreparedImage]]:
    """Consecutive slices of at most ``size`` images."""
    size = max(1, size)
    for start in range(0, len(batch), size):
        yield batch[start : start + size]


def stack_batch(
    chunk: Sequence[PreparedImage], dtype: Any, pad_to: int | None = None
) -> np.ndarray:
    """(N, 3, H, W) input of ``dtype``; zero rows appended up to ``pad_to`` for models
    that need a full batch (their outputs are ignored)."""
    tensor = np.stack([prepared.tensor for prepared in chunk]).astype(dtype, copy=False)
    if pad_to is not None and tensor.shape[0] < pad_to:
        filler = np.zeros((pad_to - tensor.shape[0], *tensor.shape[1:]), tensor.dtype)
        tensor = np.concatenate([tensor, filler])
    return tensor


def decode_output(
    layout: ModelLayout, config: EngineConfig, output: np.ndarray, prepared: PreparedImage
) -> Detections:
    """One image's raw output (batch dimension removed) to detections in source pixels."""
    candidates = layout.adapter.decode(output, layout.input_size, config.score_threshold)
    return postprocess(
        candidates,
        prepared,
        score_threshold=config.score_threshold,
        iou_threshold=config.nms_iou_threshold,
        max_detections=config.max_detections,
    )
