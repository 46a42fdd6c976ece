"""Model-independent post-processing: NMS, top-k, and mapping boxes back to the source.

Adapters turn a model's raw output into ``Candidates`` (boxes in model pixels, one best
class per box); everything after that is shared by every model format.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shelf_stream.engine.base import Detections, PreparedImage

#: Candidates kept (by score) before NMS. Greedy NMS costs O(candidates x kept); a very
#: low score threshold on a 640 model (8400 rows) would otherwise make it slow.
MAX_NMS_CANDIDATES = 3000


@dataclass(frozen=True, slots=True)
class Candidates:
    """Scored boxes of one image before NMS, in model-input pixels."""

    boxes: np.ndarray  # (N, 4) float32, x1 y1 x2 y2
    scores: np.ndarray  # (N,) float32
    class_ids: np.ndarray  # (N,) int32

    @staticmethod
    def empty() -> Candidates:
        return Candidates(
            np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0,), np.int32)
        )


def cxcywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) centre/size boxes to corner boxes, as float32."""
    out = np.empty(boxes.shape, np.float32)
    half_w = boxes[:, 2] * 0.5
    half_h = boxes[:, 3] * 0.5
    out[:, 0] = boxes[:, 0] - half_w
    out[:, 1] = boxes[:, 1] - half_h
    out[:, 2] = boxes[:, 0] + half_w
    out[:, 3] = boxes[:, 1] + half_h
    return out


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one x1 y1 x2 y2 box against (N, 4) boxes."""
    ix1 = np.maximum(box[0], boxes[:, 0])
    iy1 = np.maximum(box[1], boxes[:, 1])
    ix2 = np.minimum(box[2], boxes[:, 2])
    iy2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(ix2 - ix1, 0.0, None) * np.clip(iy2 - iy1, 0.0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.where(union > 0.0, inter / np.maximum(union, 1e-12), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS over all boxes (class-agnostic); kept indices, best score first.

    A box is suppressed when its IoU with a kept, higher-scoring box is above
    ``iou_threshold``.
    """
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        best = int(order[0])
        keep.append(best)
        rest = order[1:]
        order = rest[box_iou(boxes[best], boxes[rest]) <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def batched_nms(
    boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, iou_threshold: float
) -> np.ndarray:
    """Per-class NMS in one pass: boxes of different classes are shifted apart (the
    class-offset trick) so they never overlap; kept indices, best score first."""
    if boxes.shape[0] == 0:
        return np.zeros((0,), np.int64)
    # Shift relative to the smallest coordinate, so that negative boxes also separate.
    low = float(boxes.min())
    span = float(boxes.max()) - low + 1.0
    shifted = boxes - low + (class_ids.astype(np.float64) * span)[:, None]
    return nms(shifted, scores, iou_threshold)


def select(
    candidates: Candidates,
    *,
    score_threshold: float,
    iou_threshold: float,
    max_detections: int,
) -> Candidates:
    """Score filter, per-class NMS and top-k, still in model pixels."""
    mask = candidates.scores >= score_threshold
    boxes = candidates.boxes[mask]
    scores = candidates.scores[mask]
    class_ids = candidates.class_ids[mask]
    if scores.shape[0] > MAX_NMS_CANDIDATES:
        top = np.argpartition(-scores, MAX_NMS_CANDIDATES - 1)[:MAX_NMS_CANDIDATES]
        boxes, scores, class_ids = boxes[top], scores[top], class_ids[top]
    keep = batched_nms(boxes, scores, class_ids, iou_threshold)[: max(0, max_detections)]
    return Candidates(
        boxes[keep].astype(np.float32, copy=False),
        scores[keep].astype(np.float32, copy=False),
        class_ids[keep].astype(np.int32, copy=False),
    )


def map_boxes_to_source(boxes: np.ndarray, prepared: PreparedImage) -> np.ndarray:
    """Map (N, 4) x1 y1 x2 y2 boxes from model pixels to source pixels, clipped to it."""
    out = np.empty(boxes.shape, np.float32)
    out[:, 0::2] = (boxes[:, 0::2] - prepared.pad_x) / prepared.scale
    out[:, 1::2] = (boxes[:, 1::2] - prepared.pad_y) / prepared.scale
    out[:, 0::2] = np.clip(out[:, 0::2], 0.0, float(prepared.source_width))
    out[:, 1::2] = np.clip(out[:, 1::2], 0.0, float(prepared.source_height))
    return out


def map_boxes_to_model(boxes: np.ndarray, prepared: PreparedImage) -> np.ndarray:
    """The inverse of ``map_boxes_to_source`` (without clipping): source → model pixels."""
    out = np.empty(boxes.shape, np.float32)
    out[:, 0::2] = boxes[:, 0::2] * prepared.scale + prepared.pad_x
    out[:, 1::2] = boxes[:, 1::2] * prepared.scale + prepared.pad_y
    return out


def postprocess(
    candidates: Candidates,
    prepared: PreparedImage,
    *,
    score_threshold: float,
    iou_threshold: float,
    max_detections: int,
) -> Detections:
    """Everything after the adapter's decode: NMS, top-k, boxes back in source pixels."""
    kept = select(
        candidates,
        score_threshold=score_threshold,
        iou_threshold=iou_threshold,
        max_detections=max_detections,
    )
    if len(kept.scores) == 0:
        return Detections.empty()
    return Detections(map_boxes_to_source(kept.boxes, prepared), kept.scores, kept.class_ids)
