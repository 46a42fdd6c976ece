"""Detection agreement: VOC-style mean average precision between two sets of detections.

Used by ``shelf-bench codec`` to ask "does the detector still see what it saw on the
pristine frames?": the detector's output on pristine frames is the ground truth and its
output on decoded frames the prediction (score = detection score).

Definitions (PASCAL VOC 2010+, "all-point interpolation"):

* per class, predictions of all frames are ranked by score (ties keep input order);
  each is a true positive if its best-IoU ground-truth box of the same class in the
  same frame has IoU >= the threshold and was not already matched, else a false positive;
* AP is the area under the precision/recall curve after making precision monotonically
  non-increasing (the "precision envelope"), summed at every recall change;
* mAP is the mean AP over the classes present in the ground truth; predictions of classes
  absent from the ground truth are ignored, as in VOC.

Boxes are continuous ``x1 y1 x2 y2`` pixel coordinates (no VOC "+1" pixel convention).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from shelf_stream.engine.base import Detections

FloatArray = npt.NDArray[np.float64]


def box_iou(boxes_a: npt.ArrayLike, boxes_b: npt.ArrayLike) -> FloatArray:
    """IoU of every box in ``boxes_a`` (N, 4) with every box in ``boxes_b`` (M, 4): (N, M)."""
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    left = np.maximum(a[:, None, 0], b[None, :, 0])
    top = np.maximum(a[:, None, 1], b[None, :, 1])
    right = np.minimum(a[:, None, 2], b[None, :, 2])
    bottom = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(right - left, 0, None) * np.clip(bottom - top, 0, None)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    # Degenerate (zero-area) pairs have IoU 0 rather than NaN.
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def voc_average_precision(recall: npt.ArrayLike, precision: npt.ArrayLike) -> float:
    """All-point interpolated AP of a ranked list's cumulative recall and precision."""
    rec = np.concatenate(([0.0], np.asarray(recall, dtype=np.float64), [1.0]))
    pre = np.concatenate(([0.0], np.asarray(precision, dtype=np.float64), [0.0]))
    # Precision envelope: the best precision reachable at this recall or beyond.
    pre = np.maximum.accumulate(pre[::-1])[::-1]
    changes = np.flatnonzero(rec[1:] != rec[:-1])
    return float(np.sum((rec[changes + 1] - rec[changes]) * pre[changes + 1]))


def _check_aligned(ground_truth: Sequence[Detections], predictions: Sequence[Detections]) -> None:
    if len(ground_truth) != len(predictions):
        raise ValueError(
            f"need one prediction per ground-truth frame: {len(ground_truth)} frames of "
            f"ground truth, {len(predictions)} of predictions"
        )


def class_average_precision(
    ground_truth: Sequence[Detections],
    predictions: Sequence[Detections],
    class_id: int,
    iou_threshold: float = 0.5,
) -> float:
    """VOC AP of one class over all frames (frame ``i`` of both lists is the same picture).

    0.0 when the class has no ground-truth box (recall is undefined; callers average
    only over classes present in the ground truth).
    """
    _check_aligned(ground_truth, predictions)
    gt_boxes = [gt.boxes[gt.class_ids == class_id] for gt in ground_truth]
    n_gt = sum(len(boxes) for boxes in gt_boxes)
    if n_gt == 0:
        return 0.0
    # (score, frame, box) of every prediction of this class, best score first.
    ranked: list[tuple[float, int, FloatArray]] = []
    for frame, pred in enumerate(predictions):
        mask = pred.class_ids == class_id
        for score, box in zip(pred.scores[mask], pred.boxes[mask], strict=True):
            ranked.append((float(score), frame, np.asarray(box, dtype=np.float64)))
    ranked.sort(key=lambda item: -item[0])  # stable: ties keep their input order
    matched = [np.zeros(len(boxes), dtype=bool) for boxes in gt_boxes]
    hits = np.zeros(len(ranked), dtype=bool)
    for rank, (_, frame, box) in enumerate(ranked):
        if len(gt_boxes[frame]) == 0:
            continue
        overlaps = box_iou(box, gt_boxes[frame])[0]
        best = int(np.argmax(overlaps))
        # VOC: the best-overlapping box decides; if it is taken this is a duplicate (FP).
        if overlaps[best] >= iou_threshold and not matched[frame][best]:
            matched[frame][best] = True
            hits[rank] = True
    true_positives = np.cumsum(hits)
    recall = true_positives / n_gt
    precision = true_positives / np.arange(1, len(ranked) + 1)
    return voc_average_precision(recall, precision)


def average_precision_per_class(
    ground_truth: Sequence[Detections],
    predictions: Sequence[Detections],
    iou_threshold: float = 0.5,
) -> dict[int, float]:
    """AP of every class present in the ground truth, keyed by class id."""
    _check_aligned(ground_truth, predictions)
    classes = sorted({int(c) for gt in ground_truth for c in gt.class_ids})
    return {
        c: class_average_precision(ground_truth, predictions, c, iou_threshold) for c in classes
    }


def mean_average_precision(
    ground_truth: Sequence[Detections],
    predictions: Sequence[Detections],
    iou_threshold: float = 0.5,
) -> float | None:
    """mAP over the classes present in the ground truth; ``None`` if it has no boxes."""
    per_class = average_precision_per_class(ground_truth, predictions, iou_threshold)
    if not per_class:
        return None
    return float(np.mean(list(per_class.values())))
