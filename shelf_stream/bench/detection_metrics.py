"""Detection agreement: how much of what the detector saw on pristine frames it still sees.

Used by ``shelf-bench codec``: the detector's output on pristine frames is the ground
truth and its output on decoded frames the prediction (score = detection score).

Matching (one rule for every figure here): in each frame and class, predictions are taken
best score first (ties keep input order), and each takes the unmatched ground-truth box it
overlaps most, if that IoU reaches the threshold (a true positive); else it is a false
positive. Ground-truth boxes left unmatched are false negatives. (VOC instead lets a
prediction try only its single best-overlapping box, so in a crowd a correct box whose
neighbour was taken first counts as wrong; in a crowd of people that is common.)

* ``match_counts``: micro counts over all boxes (true/false positives, false negatives)
  at one score threshold, per class; ``MatchCounts`` gives precision, recall and F1.
  Summed over classes they weigh every box alike, so a class with 2 boxes moves the
  total by at most 2 boxes.
* ``class_average_precision`` (PASCAL VOC 2010+ "all-point interpolation"): predictions
  of all frames ranked by score; AP is the area under the precision/recall curve after
  making precision non-increasing (the "precision envelope"). It integrates over the
  score, so a box that slips just under a fixed threshold costs little.
* ``mean_average_precision``: the mean AP over the classes present (every class weighs
  the same, however few its boxes); ``weighted_average_precision``: weighted by each
  class's ground-truth boxes.

Boxes are continuous ``x1 y1 x2 y2`` pixel coordinates (no VOC "+1" pixel convention).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

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


def greedy_hits(
    truth_boxes: npt.ArrayLike, predicted_boxes: npt.ArrayLike, iou_threshold: float
) -> npt.NDArray[np.bool_]:
    """Which predictions (taken in the order given: best score first) match a truth box.

    Each takes the unmatched truth box it overlaps most, if that IoU reaches
    ``iou_threshold``; one frame and one class at a time.
    """
    predicted = np.asarray(predicted_boxes, dtype=np.float64).reshape(-1, 4)
    hits = np.zeros(len(predicted), dtype=bool)
    for index, _ in greedy_pairs(truth_boxes, predicted, iou_threshold):
        hits[index] = True
    return hits


def matched_truth(
    truth_boxes: npt.ArrayLike, predicted_boxes: npt.ArrayLike, iou_threshold: float
) -> npt.NDArray[np.bool_]:
    """Which truth boxes a prediction matched, by the same rule as ``greedy_hits``."""
    truth = np.asarray(truth_boxes, dtype=np.float64).reshape(-1, 4)
    found = np.zeros(len(truth), dtype=bool)
    for _, truth_index in greedy_pairs(truth, predicted_boxes, iou_threshold):
        found[truth_index] = True
    return found


def greedy_pairs(
    truth_boxes: npt.ArrayLike, predicted_boxes: npt.ArrayLike, iou_threshold: float
) -> list[tuple[int, int]]:
    """(prediction, truth box) index pairs matched by the rule ``greedy_hits`` describes."""
    predicted = np.asarray(predicted_boxes, dtype=np.float64).reshape(-1, 4)
    truth = np.asarray(truth_boxes, dtype=np.float64).reshape(-1, 4)
    if len(truth) == 0 or len(predicted) == 0:
        return []
    overlaps = box_iou(predicted, truth)
    pairs = []
    for index in range(len(predicted)):
        best = int(np.argmax(overlaps[index]))
        if overlaps[index, best] >= iou_threshold:
            pairs.append((index, best))
            overlaps[:, best] = -1.0  # taken: no later prediction can match it
    return pairs


def _ranked(detections: Detections, class_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores and boxes of one class, best score first (a stable sort: ties keep order)."""
    mask = detections.class_ids == class_id
    scores, boxes = detections.scores[mask], detections.boxes[mask]
    order = np.argsort(-scores, kind="stable")
    return scores[order], boxes[order]


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
    n_gt = sum(int(np.sum(gt.class_ids == class_id)) for gt in ground_truth)
    if n_gt == 0:
        return 0.0
    scores: list[np.ndarray] = []
    hits: list[np.ndarray] = []
    for gt, pred in zip(ground_truth, predictions, strict=True):
        frame_scores, frame_boxes = _ranked(pred, class_id)
        scores.append(frame_scores)
        hits.append(greedy_hits(gt.boxes[gt.class_ids == class_id], frame_boxes, iou_threshold))
    all_scores = np.concatenate(scores) if scores else np.zeros(0)
    order = np.argsort(-all_scores, kind="stable")  # frame order breaks ties
    ranked_hits = (np.concatenate(hits) if hits else np.zeros(0, dtype=bool))[order]
    true_positives = np.cumsum(ranked_hits)
    recall = true_positives / n_gt
    precision = true_positives / np.arange(1, len(ranked_hits) + 1)
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


def weighted_average_precision(
    ground_truth: Sequence[Detections],
    predictions: Sequence[Detections],
    classes: Iterable[int],
    iou_threshold: float = 0.5,
) -> float | None:
    """AP of ``classes`` averaged with each class weighted by its ground-truth boxes.

    The same weight per box as the micro counts, so a class seen twice moves it by its two
    boxes' worth, not by a class's. ``None`` when those classes have no ground truth.
    """
    _check_aligned(ground_truth, predictions)
    weights = {c: sum(int(np.sum(gt.class_ids == c)) for gt in ground_truth) for c in classes}
    total = sum(weights.values())
    if total == 0:
        return None
    weighted = sum(
        n * class_average_precision(ground_truth, predictions, c, iou_threshold)
        for c, n in weights.items()
        if n
    )
    return float(weighted / total)


# ------------------------------------------------------------- counts at a threshold


@dataclass(frozen=True, slots=True)
class MatchCounts:
    """Boxes matched (true positives), predicted but not in the truth, and missed."""

    true_positives: int = 0
    false_positives: int = 0
    false_negatives: int = 0

    def __add__(self, other: MatchCounts) -> MatchCounts:
        return MatchCounts(
            self.true_positives + other.true_positives,
            self.false_positives + other.false_positives,
            self.false_negatives + other.false_negatives,
        )

    @property
    def truth_boxes(self) -> int:
        return self.true_positives + self.false_negatives

    @property
    def precision(self) -> float | None:
        """None without predictions."""
        predicted = self.true_positives + self.false_positives
        return self.true_positives / predicted if predicted else None

    @property
    def recall(self) -> float | None:
        """None without ground truth."""
        return self.true_positives / self.truth_boxes if self.truth_boxes else None

    @property
    def f1(self) -> float | None:
        """2 TP / (2 TP + FP + FN): the harmonic mean of precision and recall; None
        with neither predictions nor ground truth."""
        denominator = 2 * self.true_positives + self.false_positives + self.false_negatives
        return 2 * self.true_positives / denominator if denominator else None


def match_counts(
    ground_truth: Sequence[Detections],
    predictions: Sequence[Detections],
    *,
    iou_threshold: float = 0.5,
    min_score: float = 0.0,
) -> dict[int, MatchCounts]:
    """Micro counts per class (every class in either side) over all frames.

    Predictions below ``min_score`` are left out first: the counts are those of a
    detector that reports only what reaches that score (the server's threshold).
    """
    _check_aligned(ground_truth, predictions)
    counts: dict[int, MatchCounts] = {}
    for gt, pred in zip(ground_truth, predictions, strict=True):
        kept = pred.scores >= min_score
        pred = Detections(pred.boxes[kept], pred.scores[kept], pred.class_ids[kept])
        for class_id in sorted({int(c) for c in gt.class_ids} | {int(c) for c in pred.class_ids}):
            _, boxes = _ranked(pred, class_id)
            truth = gt.boxes[gt.class_ids == class_id]
            tp = int(np.sum(greedy_hits(truth, boxes, iou_threshold)))
            frame = MatchCounts(tp, len(boxes) - tp, len(truth) - tp)
            counts[class_id] = counts.get(class_id, MatchCounts()) + frame
    return dict(sorted(counts.items()))


def total_counts(counts: dict[int, MatchCounts], classes: Iterable[int]) -> MatchCounts:
    """The counts of ``classes`` summed (classes without counts add nothing)."""
    return sum((counts.get(c, MatchCounts()) for c in classes), MatchCounts())
