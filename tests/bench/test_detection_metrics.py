"""VOC-style mAP on hand-made detections with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from shelf_stream.bench.detection_metrics import (
    average_precision_per_class,
    box_iou,
    class_average_precision,
    mean_average_precision,
    voc_average_precision,
)
from shelf_stream.engine.base import Detections

BOX_A = [10.0, 10.0, 50.0, 50.0]
BOX_B = [100.0, 100.0, 140.0, 160.0]
BOX_C = [200.0, 20.0, 260.0, 80.0]


def dets(*items: tuple[list[float], float, int]) -> Detections:
    """Detections from (box, score, class id) triples."""
    if not items:
        return Detections.empty()
    boxes, scores, classes = zip(*items, strict=True)
    return Detections(
        np.array(boxes, np.float32), np.array(scores, np.float32), np.array(classes, np.int32)
    )


def shifted(box: list[float], dx: float) -> list[float]:
    return [box[0] + dx, box[1], box[2] + dx, box[3]]


def test_box_iou_known_values() -> None:
    # Half-overlapping 40x40 squares: intersection 20x40 = 800, union 2400.
    iou = box_iou([BOX_A], [shifted(BOX_A, 20), BOX_B, BOX_A])
    assert iou.shape == (1, 3)
    assert iou[0] == pytest.approx([1 / 3, 0.0, 1.0])


def test_box_iou_degenerate_boxes_are_zero_not_nan() -> None:
    assert box_iou([[5, 5, 5, 5]], [[5, 5, 5, 5]])[0, 0] == 0.0


def test_voc_ap_envelope_on_a_literal_curve() -> None:
    # TP, FP, TP of two ground-truth boxes: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1.
    ap = voc_average_precision([0.5, 0.5, 1.0], [1.0, 0.5, 2 / 3])
    assert ap == pytest.approx(0.5 * 1.0 + 0.5 * 2 / 3)


def test_perfect_match_is_one() -> None:
    truth = [dets((BOX_A, 0.9, 0), (BOX_B, 0.8, 2)), dets((BOX_C, 0.7, 0))]
    assert mean_average_precision(truth, truth) == pytest.approx(1.0)


def test_small_shifts_within_iou_threshold_still_match() -> None:
    truth = [dets((BOX_A, 0.9, 0))]
    moved = [dets((shifted(BOX_A, 5), 0.6, 0))]  # IoU 35/45 = 0.78
    assert mean_average_precision(truth, moved) == pytest.approx(1.0)


def test_one_missed_of_two_is_one_half() -> None:
    truth = [dets((BOX_A, 0.9, 0), (BOX_B, 0.8, 0))]
    found = [dets((BOX_A, 0.9, 0))]
    assert mean_average_precision(truth, found) == pytest.approx(0.5)


def test_higher_scored_false_positive_halves_ap() -> None:
    truth = [dets((BOX_A, 0.9, 0))]
    # The false positive ranks first: precision 0 then 1/2 at recall 1 -> AP 0.5.
    found = [dets((BOX_C, 0.95, 0), (BOX_A, 0.8, 0))]
    assert mean_average_precision(truth, found) == pytest.approx(0.5)


def test_lower_scored_false_positive_costs_nothing() -> None:
    truth = [dets((BOX_A, 0.9, 0))]
    found = [dets((BOX_A, 0.8, 0), (BOX_C, 0.4, 0))]
    assert mean_average_precision(truth, found) == pytest.approx(1.0)


def test_false_positive_between_two_hits() -> None:
    truth = [dets((BOX_A, 0.9, 0)), dets((BOX_B, 0.9, 0))]
    found = [dets((BOX_A, 0.9, 0), (BOX_C, 0.8, 0)), dets((BOX_B, 0.7, 0))]
    assert mean_average_precision(truth, found) == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_duplicate_detection_is_a_false_positive() -> None:
    truth = [dets((BOX_A, 0.9, 0))]
    found = [dets((BOX_A, 0.9, 0), (shifted(BOX_A, 2), 0.95, 0))]
    # Both overlap the one box; the higher-scored one takes it, the other is an FP
    # ranked last, which leaves AP at 1.
    assert class_average_precision(truth, found, 0) == pytest.approx(1.0)


def test_class_mismatch_does_not_count() -> None:
    truth = [dets((BOX_A, 0.9, 0))]
    wrong_class = [dets((BOX_A, 0.9, 1))]
    # Class 0 is never found; class 1 is absent from the ground truth and ignored.
    assert average_precision_per_class(truth, wrong_class) == {0: 0.0}
    assert mean_average_precision(truth, wrong_class) == 0.0


def test_map_is_the_mean_over_ground_truth_classes() -> None:
    truth = [dets((BOX_A, 0.9, 0), (BOX_B, 0.9, 3))]
    found = [dets((BOX_A, 0.9, 0))]
    assert average_precision_per_class(truth, found) == {0: 1.0, 3: 0.0}
    assert mean_average_precision(truth, found) == pytest.approx(0.5)


def test_detections_in_the_wrong_frame_do_not_match() -> None:
    truth = [dets((BOX_A, 0.9, 0)), dets()]
    found = [dets(), dets((BOX_A, 0.9, 0))]
    assert mean_average_precision(truth, found) == 0.0


def test_no_ground_truth_gives_none() -> None:
    assert mean_average_precision([dets()], [dets((BOX_A, 0.9, 0))]) is None


def test_frame_counts_must_agree() -> None:
    with pytest.raises(ValueError, match="one prediction per ground-truth frame"):
        mean_average_precision([dets()], [])
