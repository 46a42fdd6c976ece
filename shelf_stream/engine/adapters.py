"""Model adapters: what a model format wants as input and how to read its output.

An adapter owns the format-specific parts (letterbox spec, output decoding, metadata);
``postprocess`` does the rest. ``select_adapter`` picks one from the model's output
shape and metadata so that users can bring either format without saying which.
"""

from __future__ import annotations

import ast
import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import ClassVar

import numpy as np

from shelf_stream.engine.postprocess import Candidates, cxcywh_to_xyxy
from shelf_stream.engine.preprocess import LetterboxSpec
from shelf_stream.errors import ConfigError, EngineError

log = logging.getLogger(__name__)

#: An ONNX dimension: a size, a symbolic name ("batch") or unknown.
Dim = int | str | None
Shape = Sequence[Dim]

#: Metadata keys an Ultralytics export writes; any of them marks the format.
_ULTRALYTICS_KEYS = ("names", "task", "imgsz", "stride")


class ModelAdapter(ABC):
    """Format-specific pre- and post-processing of one model family."""

    name: ClassVar[str]

    @abstractmethod
    def letterbox_spec(self, input_size: tuple[int, int]) -> LetterboxSpec:
        """The letterbox the model was trained with, for a (width, height) input."""

    @abstractmethod
    def num_classes(self, output_shape: Shape) -> int | None:
        """Number of classes read from the output shape; ``None`` if it is dynamic."""

    @abstractmethod
    def decode(
        self, output: np.ndarray, input_size: tuple[int, int], score_threshold: float
    ) -> Candidates:
        """One image's output (batch dimension removed) to candidates in model pixels.

        Rows scoring below ``score_threshold`` may be dropped early (they would be
        anyway) so that boxes are only decoded for the few that matter.
        """

    def class_names(self, metadata: Mapping[str, str]) -> tuple[str, ...] | None:
        """Class names stored in the model's metadata, if any."""
        return parse_names(metadata.get("names"))

    def input_size(self, metadata: Mapping[str, str]) -> tuple[int, int] | None:
        """(width, height) from metadata, for models whose input size is dynamic."""
        return parse_imgsz(metadata.get("imgsz"))


# --------------------------------------------------------------------------- YOLOX


class YoloxAdapter(ModelAdapter):
    """Megvii YOLOX exports: output (1, N, 5 + nc), rows ``[cx, cy, w, h, obj, cls...]``.

    The official export (``tools/export_onnx.py``) leaves ``decode_in_inference`` off, so
    boxes are raw grid offsets: ``xy = (raw_xy + cell_xy) * stride``,
    ``wh = exp(raw_wh) * stride`` over strides 8, 16, 32. Exports made with decoding on
    already hold pixels; ``_is_decoded`` tells them apart (metadata, else the values).
    Input: BGR, raw 0-255, letterboxed top-left, padded with 114 (YOLOX >= 0.1.1; older
    0.1.0 exports wanted RGB normalised by ImageNet mean/std and are not supported).
    """

    name = "yolox"
    strides: ClassVar[tuple[int, ...]] = (8, 16, 32)

    def __init__(self, metadata: Mapping[str, str] | None = None) -> None:
        flag = (metadata or {}).get("decode_in_inference", "").strip().lower()
        self._decoded_by_metadata: bool | None = flag in ("1", "true", "yes") if flag else None

    def letterbox_spec(self, input_size: tuple[int, int]) -> LetterboxSpec:
        width, height = input_size
        return LetterboxSpec(width, height, "bgr", 1.0, "top_left", 114)

    def num_classes(self, output_shape: Shape) -> int | None:
        last = output_shape[-1]
        return last - 5 if isinstance(last, int) else None

    def decode(
        self, output: np.ndarray, input_size: tuple[int, int], score_threshold: float
    ) -> Candidates:
        rows = np.asarray(output, dtype=np.float32)
        # Class scores are <= 1, so obj * cls >= t implies obj >= t: filter on obj first
        # and run the 80-wide argmax only on the survivors.
        idx = np.flatnonzero(rows[:, 4] >= score_threshold)
        cls = rows[idx, 5:]
        class_ids = cls.argmax(axis=1)
        scores = rows[idx, 4] * cls[np.arange(idx.size), class_ids]
        keep = scores >= score_threshold
        idx, scores, class_ids = idx[keep], scores[keep], class_ids[keep]
        if self._is_decoded(rows):
            boxes = rows[idx, :4]
        else:
            grid, strides = yolox_grid(input_size, self.strides)
            if grid.shape[0] != rows.shape[0]:
                raise EngineError(
                    f"YOLOX output has {rows.shape[0]} rows, but a {input_size[0]}x"
                    f"{input_size[1]} input with strides {self.strides} gives "
                    f"{grid.shape[0]}; is this a YOLOX model? Force the adapter with "
                    "--adapter ultralytics if it is an Ultralytics export."
                )
            boxes = np.concatenate(
                [
                    (rows[idx, :2] + grid[idx]) * strides[idx],
                    np.exp(rows[idx, 2:4]) * strides[idx],
                ],
                axis=1,
            )
        return Candidates(
            cxcywh_to_xyxy(boxes), scores.astype(np.float32), class_ids.astype(np.int32)
        )

    def _is_decoded(self, rows: np.ndarray) -> bool:
        if self._decoded_by_metadata is not None:
            return self._decoded_by_metadata
        # Raw xy are offsets within a cell (about -1..2, whatever the image); decoded xy
        # are pixel centres spread over the whole input (median ~ half its size). A
        # median above one stride-8 cell can only be pixels.
        return bool(np.median(np.abs(rows[:, :2])) > float(self.strides[0]))


@lru_cache(maxsize=8)
def yolox_grid(
    input_size: tuple[int, int], strides: tuple[int, ...] = (8, 16, 32)
) -> tuple[np.ndarray, np.ndarray]:
    """Cell coordinates (N, 2) and strides (N, 1) of YOLOX's outputs, cached per size.

    Rows go stride by stride, each row-major over its (height/s, width/s) cells with
    coordinates (x, y), the order YOLOX's head flattens its feature maps in.
    """
    width, height = input_size
    grids: list[np.ndarray] = []
    stride_cols: list[np.ndarray] = []
    for stride in strides:
        ys, xs = np.meshgrid(np.arange(height // stride), np.arange(width // stride), indexing="ij")
        grids.append(np.stack([xs, ys], axis=-1).reshape(-1, 2))
        stride_cols.append(np.full((grids[-1].shape[0], 1), stride))
    grid = np.concatenate(grids).astype(np.float32)
    stride_col = np.concatenate(stride_cols).astype(np.float32)
    grid.setflags(write=False)  # shared through the cache
    stride_col.setflags(write=False)
    return grid, stride_col


# --------------------------------------------------------------------- Ultralytics


class UltralyticsAdapter(ModelAdapter):
    """Ultralytics YOLOv8 / YOLO11 detect exports: output (1, 4 + nc, N), boxes
    ``cx, cy, w, h`` in input pixels, then one score per class (no objectness).
    Input: RGB scaled to 0-1, letterboxed centred, padded with 114/255."""

    name = "ultralytics"

    def letterbox_spec(self, input_size: tuple[int, int]) -> LetterboxSpec:
        width, height = input_size
        return LetterboxSpec(width, height, "rgb", 1.0 / 255.0, "center", 114)

    def num_classes(self, output_shape: Shape) -> int | None:
        channels = output_shape[-2]
        return channels - 4 if isinstance(channels, int) else None

    def decode(
        self, output: np.ndarray, input_size: tuple[int, int], score_threshold: float
    ) -> Candidates:
        channels = np.asarray(output, dtype=np.float32)  # (4 + nc, N)
        cls = channels[4:]
        class_ids = cls.argmax(axis=0)
        scores = np.take_along_axis(cls, class_ids[None, :], axis=0)[0]
        idx = np.flatnonzero(scores >= score_threshold)
        boxes = channels[:4, idx].T
        return Candidates(
            cxcywh_to_xyxy(boxes),
            scores[idx].astype(np.float32),
            class_ids[idx].astype(np.int32),
        )


# ---------------------------------------------------------------------- selection

#: Adapter names accepted by ``EngineConfig.adapter`` / ``--adapter``.
ADAPTERS: dict[str, type[ModelAdapter]] = {
    YoloxAdapter.name: YoloxAdapter,
    UltralyticsAdapter.name: UltralyticsAdapter,
}


def select_adapter(
    output_shapes: Sequence[Shape], metadata: Mapping[str, str], forced: str | None = None
) -> ModelAdapter:
    """Pick the adapter for a model from its output shapes and metadata.

    ``forced`` (the user's choice) wins; otherwise the first output's layout decides:
    (1, N, 5 + nc) with N large is YOLOX, (1, 4 + nc, N) is Ultralytics. Ultralytics
    metadata (``names``, ``task``, ...) settles dynamic shapes.
    """
    if forced is not None:
        return _make_adapter(forced, metadata)
    if not output_shapes:
        raise EngineError("the model has no outputs; is it a detection model?")
    name = _guess_format(output_shapes[0], metadata)
    log.debug("model output %s -> %s adapter", list(output_shapes[0]), name)
    return _make_adapter(name, metadata)


def _make_adapter(name: str, metadata: Mapping[str, str]) -> ModelAdapter:
    if name == YoloxAdapter.name:
        return YoloxAdapter(metadata)
    if name == UltralyticsAdapter.name:
        return UltralyticsAdapter()
    raise ConfigError(f"unknown model adapter {name!r}; choose one of {sorted(ADAPTERS)}")


def _guess_format(shape: Shape, metadata: Mapping[str, str]) -> str:
    if len(shape) != 3:
        raise EngineError(
            f"unsupported output shape {list(shape)}: expected (batch, N, 5 + classes) "
            "(YOLOX) or (batch, 4 + classes, N) (Ultralytics YOLOv8/YOLO11)"
        )
    middle, last = shape[1], shape[2]
    ultralytics_meta = any(key in metadata for key in _ULTRALYTICS_KEYS)
    if isinstance(middle, int) and isinstance(last, int):
        if middle < last:
            return UltralyticsAdapter.name
        if ultralytics_meta:
            # e.g. YOLOv10 / YOLO26 end-to-end exports: (1, 300, 6) after built-in NMS.
            raise EngineError(
                f"output shape {list(shape)} with Ultralytics metadata looks like an "
                "end-to-end (NMS-free) export, which is not supported; re-export with "
                "end2end=False (or a YOLOv8/YOLO11 model)"
            )
        return YoloxAdapter.name
    if ultralytics_meta or isinstance(middle, int):
        return UltralyticsAdapter.name
    if isinstance(last, int):
        return YoloxAdapter.name
    raise EngineError(
        f"cannot tell the model format from output shape {list(shape)}; "
        "choose it with --adapter yolox or --adapter ultralytics"
    )


# ----------------------------------------------------------------------- metadata


def parse_names(value: str | None) -> tuple[str, ...] | None:
    """Class names from metadata: Ultralytics' ``"{0: 'person', 1: 'bicycle'}"`` or a
    list literal. Parsed with ``ast.literal_eval`` (the model file is untrusted input,
    so never ``eval``); anything malformed is ignored with a warning."""
    if not value:
        return None
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        log.warning("ignoring unreadable 'names' metadata: %.80r", value)
        return None
    if isinstance(parsed, dict):
        keys = sorted(k for k in parsed if isinstance(k, int))
        if keys == list(range(len(parsed))) and all(isinstance(v, str) for v in parsed.values()):
            return tuple(parsed[k] for k in keys)
    elif isinstance(parsed, list | tuple) and all(isinstance(v, str) for v in parsed):
        return tuple(parsed)
    log.warning("ignoring 'names' metadata that is not {index: name}: %.80r", value)
    return None


def parse_imgsz(value: str | None) -> tuple[int, int] | None:
    """(width, height) from Ultralytics' ``imgsz`` metadata, which is ``[height, width]``
    (or one int for a square input)."""
    if not value:
        return None
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        parsed = None
    if isinstance(parsed, int) and parsed > 0:
        return parsed, parsed
    if (
        isinstance(parsed, list | tuple)
        and len(parsed) == 2
        and all(isinstance(v, int) and v > 0 for v in parsed)
    ):
        return int(parsed[1]), int(parsed[0])
    log.warning("ignoring unreadable 'imgsz' metadata: %.80r", value)
    return None
