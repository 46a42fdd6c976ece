from __future__ import annotations

import numpy as np
import pytest

from shelf_stream.engine.base import PreparedImage
from shelf_stream.engine.postprocess import (
    MAX_NMS_CANDIDATES,
    Candidates,
    batched_nms,
    box_iou,
    cxcywh_to_xyxy,
    nms,
    postprocess,
    select,
)

BOXES = np.array(
    [
        [0, 0, 10, 10],  # 0
        [1, 1, 11, 11],  # 1: IoU with 0 = 81/119 = 0.68
        [20, 20, 30, 30],  # 2: disjoint
        [0, 0, 10, 5],  # 3: IoU with 0 = 0.5
    ],
    np.float32,
)
SCORES = np.array([0.9, 0.8, 0.7, 0.95], np.float32)


def test_cxcywh_to_xyxy() -> None:
    out = cxcywh_to_xyxy(np.array([[10, 20, 4, 6]], np.float32))
    assert out.tolist() == [[8, 17, 12, 23]]


def test_box_iou() -> None:
    ious = box_iou(BOXES[0], BOXES)
    assert ious == pytest.approx([1.0, 81 / 119, 0.0, 0.5])
    degenerate = np.array([[5, 5, 5, 5]], np.float32)
    assert box_iou(degenerate[0], degenerate).tolist() == [0.0]


def test_nms_keeps_best_and_suppresses_overlaps() -> None:
    # 3 (0.95) first; 0 overlaps it by exactly 0.5, which is not above 0.5: kept.
    assert nms(BOXES, SCORES, 0.5).tolist() == [3, 0, 2]
    # At 0.45: 0 goes (IoU 0.5 with 3); 1 has IoU 36/114 = 0.32 with 3 and stays.
    assert nms(BOXES, SCORES, 0.45).tolist() == [3, 1, 2]
    assert nms(BOXES, SCORES, 0.3).tolist() == [3, 2]
    assert nms(BOXES, SCORES, 1.0).tolist() == [3, 0, 1, 2]


def test_nms_empty() -> None:
    assert nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.5).size == 0
    empty = batched_nms(np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int32), 0.5)
    assert empty.size == 0


def test_batched_nms_is_per_class() -> None:
    same = batched_nms(BOXES, SCORES, np.zeros(4, np.int32), 0.3)
    assert same.tolist() == [3, 2]
    # Box 1 in another class survives even though it overlaps box 3.
    classes = np.array([0, 1, 0, 0], np.int32)
    assert batched_nms(BOXES, SCORES, classes, 0.3).tolist() == [3, 1, 2]


def test_batched_nms_separates_negative_coordinates() -> None:
    boxes = np.array([[-50, -50, -40, -40], [-50, -50, -40, -40]], np.float32)
    keep = batched_nms(boxes, np.array([0.9, 0.8], np.float32), np.array([0, 1]), 0.5)
    assert keep.tolist() == [0, 1]


def _candidates(n: int, seed: int = 0) -> Candidates:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 400, (n, 2))
    wh = rng.uniform(5, 60, (n, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    return Candidates(
        boxes, rng.uniform(0, 1, n).astype(np.float32), rng.integers(0, 5, n).astype(np.int32)
    )


def test_select_threshold_and_top_k() -> None:
    cands = _candidates(500)
    kept = select(cands, score_threshold=0.5, iou_threshold=0.45, max_detections=10)
    assert len(kept.scores) == 10
    assert np.all(kept.scores >= 0.5)
    assert np.all(np.diff(kept.scores) <= 0)  # best first
    assert kept.boxes.dtype == np.float32 and kept.class_ids.dtype == np.int32
    none = select(cands, score_threshold=1.5, iou_threshold=0.45, max_detections=10)
    assert len(none.scores) == 0


def test_select_caps_candidates_before_nms() -> None:
    cands = _candidates(MAX_NMS_CANDIDATES + 2000, seed=1)
    kept = select(cands, score_threshold=0.0, iou_threshold=1.0, max_detections=10**6)
    assert len(kept.scores) == MAX_NMS_CANDIDATES
    assert kept.scores.min() >= np.sort(cands.scores)[-MAX_NMS_CANDIDATES]


def test_postprocess_maps_to_source_pixels() -> None:
    prepared = PreparedImage(np.zeros((3, 1, 1), np.float32), 0.5, 0.0, 8.0, 800, 600)
    cands = Candidates(
        np.array([[10, 18, 110, 208], [12, 20, 112, 210]], np.float32),
        np.array([0.9, 0.6], np.float32),
        np.array([2, 2], np.int32),
    )
    dets = postprocess(cands, prepared, score_threshold=0.3, iou_threshold=0.45, max_detections=100)
    assert len(dets) == 1
    assert dets.boxes.tolist() == [[20.0, 20.0, 220.0, 400.0]]
    assert dets.class_ids.tolist() == [2]
    empty = postprocess(
        cands, prepared, score_threshold=0.95, iou_threshold=0.45, max_detections=100
    )
    assert len(empty) == 0 and empty.boxes.shape == (0, 4)
