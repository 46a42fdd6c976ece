"""Detection agreement on hand-made detections with known answers: AP and micro counts."""

from __future__ import annotations

import numpy as np
import pytest

from shelf_stream.bench.detection_metrics import (
    MatchCounts,
    average_precision_per_class,
    box_iou,
    class_average_precision,
    greedy_hits,
    match_counts,
    mean_average_precision,
    total_counts,
    voc_average_precision,
    weighted_average_precision,
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


# ------------------------------------------------- micro counts at the server's threshold


def test_counts_on_literal_boxes() -> None:
    truth = [dets((BOX_A, 0.9, 0), (BOX_B, 0.8, 0)), dets((BOX_C, 0.9, 0))]
    found = [
        # BOX_A found (IoU 0.78), BOX_B missed, one box where there is nothing.
        dets((shifted(BOX_A, 5), 0.7, 0), ([300, 300, 340, 340], 0.6, 0)),
        dets((BOX_C, 0.9, 0)),
    ]
    counts = match_counts(truth, found)
    assert counts == {0: MatchCounts(true_positives=2, false_positives=1, false_negatives=1)}
    total = counts[0]
    assert total.precision == pytest.approx(2 / 3)
    assert total.recall == pytest.approx(2 / 3)
    assert total.f1 == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert total.truth_boxes == 3


def test_a_box_below_the_score_threshold_is_not_reported() -> None:
    truth = [dets((BOX_A, 0.9, 0))]
    slipped = [dets((BOX_A, 0.29, 0))]
    assert match_counts(truth, slipped, min_score=0.3) == {0: MatchCounts(0, 0, 1)}
    assert match_counts(truth, slipped, min_score=0.25) == {0: MatchCounts(1, 0, 0)}


def test_iou_075_is_stricter_than_050() -> None:
    truth = [dets((BOX_A, 0.9, 0))]
    moved = [dets((shifted(BOX_A, 8), 0.9, 0))]  # IoU 32/48 = 0.667
    assert match_counts(truth, moved, iou_threshold=0.5)[0] == MatchCounts(1, 0, 0)
    assert match_counts(truth, moved, iou_threshold=0.75)[0] == MatchCounts(0, 1, 1)


def test_a_crowd_matches_each_box_to_its_own() -> None:
    # Two people overlapping heavily. The better-scored prediction is exactly the right
    # one; the other overlaps the right one most (36/44) but the left one too (34/46).
    # VOC lets it try only its best overlap, already taken, and calls it a false
    # positive; here it takes the box still free.
    left, right = [0.0, 0.0, 40.0, 100.0], [10.0, 0.0, 50.0, 100.0]
    truth = [dets((left, 0.9, 0), (right, 0.9, 0))]
    found = [dets((right, 0.9, 0), ([6.0, 0.0, 46.0, 100.0], 0.8, 0))]
    assert match_counts(truth, found)[0] == MatchCounts(2, 0, 0)
    assert class_average_precision(truth, found, 0) == pytest.approx(1.0)


def test_wrong_class_is_a_false_positive_and_a_miss() -> None:
    truth = [dets((BOX_A, 0.9, 0))]
    found = [dets((BOX_A, 0.9, 16))]
    assert match_counts(truth, found) == {0: MatchCounts(0, 0, 1), 16: MatchCounts(0, 1, 0)}
    assert total_counts(match_counts(truth, found), [0]) == MatchCounts(0, 0, 1)


def test_undefined_ratios_are_none() -> None:
    assert MatchCounts().f1 is None
    assert MatchCounts(0, 0, 3).precision is None and MatchCounts(0, 0, 3).f1 == 0.0
    assert MatchCounts(0, 2, 0).recall is None


def test_weighted_ap_weighs_classes_by_their_boxes() -> None:
    # Class 0: 3 boxes all found (AP 1); class 5: 1 box missed (AP 0).
    truth = [dets((BOX_A, 0.9, 0), (BOX_B, 0.9, 0), (BOX_C, 0.9, 0), ([0, 0, 5, 5], 0.9, 5))]
    found = [dets((BOX_A, 0.9, 0), (BOX_B, 0.8, 0), (BOX_C, 0.7, 0))]
    assert mean_average_precision(truth, found) == pytest.approx(0.5)  # classes alike
    assert weighted_average_precision(truth, found, [0, 5]) == pytest.approx(3 / 4)
    assert weighted_average_precision(truth, found, [0]) == pytest.approx(1.0)
    assert weighted_average_precision(truth, found, [7]) is None


def test_greedy_hits_take_the_best_free_box() -> None:
    hits = greedy_hits([BOX_A], [BOX_A, shifted(BOX_A, 1)], 0.5)
    assert hits.tolist() == [True, False]  # the duplicate finds its box taken
    assert greedy_hits([], [BOX_A], 0.5).tolist() == [False]
    assert greedy_hits([BOX_A], [], 0.5).tolist() == []
