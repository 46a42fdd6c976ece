"""``shelf-bench codec --roi``: its helpers on literal values, and a tiny real replay."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shelf_stream.bench import roi as roi_bench
from shelf_stream.bench.codec import run_codec_bench
from shelf_stream.cli import build_bench_parser
from shelf_stream.engine.base import Detections

#: 4 s of real footage, 384x216 at 10 fps: a person walks in (tests/data/README.md).
PERSON_CLIP = Path(__file__).resolve().parent.parent / "data" / "person-enters-384x216.mp4"

#: The fields ``summary.roi[]`` promises scripts (issue 19).
ROI_FIELDS = (
    "codec", "target_f1", "bytes_ratio", "new_object_recall_uniform", "new_object_recall_roi",
)  # fmt: skip


def dets(*boxes: tuple[float, float, float, float], class_id: int = 0) -> Detections:
    return Detections(
        np.array(boxes, np.float32).reshape(-1, 4),
        np.full(len(boxes), 0.9, np.float32),
        np.full(len(boxes), class_id, np.int32),
    )


def test_the_default_delay_is_what_a_150_ms_round_trip_covers() -> None:
    assert roi_bench.delay_frames(29.83, None) == 5  # 4.47 frames
    assert roi_bench.delay_frames(10.0, None) == 2  # exactly 1.5
    assert roi_bench.delay_frames(12.5, None) == 2
    assert roi_bench.delay_frames(30.0, 0) == 0  # as asked


def test_the_planner_settings_come_from_the_command_line() -> None:
    parser = build_bench_parser()
    default = roi_bench.roi_config(parser.parse_args(["codec", "--roi"]))
    assert default.enabled and default.refresh_interval_s == 2.0 and default.strength == 0.2
    args = parser.parse_args(
        ["codec", "--roi", "--roi-strength", "0.3", "--roi-refresh-interval", "0"]
    )
    config = roi_bench.roi_config(args)
    assert config.strength == 0.3 and config.refresh_interval_s == 0.0  # 0: never
    assert "no refresh" in roi_bench.format_report(
        {"inputs": [], "roi_config": dataclasses.asdict(config), "per_input": [],
         "points": [], "roi": [], "runtime_s": 0.0}
    )  # fmt: skip
    with pytest.raises(SystemExit):
        parser.parse_args(["codec", "--roi", "--roi-refresh-interval", "-1"])


def test_new_objects_are_tracks_that_begin_after_the_first_frame() -> None:
    a = (10, 10, 50, 50)
    moved = (14, 10, 54, 50)  # IoU 0.82 with a
    b = (200, 10, 240, 50)
    truth = [
        dets(a),  # frame 0: a is there from the start: not new
        dets(moved),
        dets(moved, b),  # b comes in at frame 2
        dets(moved, b),
        dets(moved),  # b flickers out ...
        dets(moved, b),  # ... and back: the same object, within the gap
        dets(moved, b),
    ]
    fresh = roi_bench.new_object_boxes(truth, fps=4.0, classes={0})
    # b's first second at 4 fps: frames 2..5 (its boxes there); frame 6 is past it.
    assert fresh == {2: [1], 3: [1], 5: [1]}
    # Another class than the headline ones is not counted.
    assert roi_bench.new_object_boxes(truth, fps=4.0, classes={1}) == {}


def test_new_object_hits_match_by_the_f1_rule() -> None:
    truth = dets((10, 10, 50, 50), (200, 10, 240, 50))
    found = dets((12, 10, 52, 50))  # matches the first only
    assert roi_bench.new_object_hits(truth, found, [0, 1], min_score=0.3) == 1
    assert roi_bench.new_object_hits(truth, found, [1], min_score=0.3) == 0
    assert roi_bench.new_object_hits(truth, found, [0], min_score=0.95) == 0  # below


def point(roi: bool, kbps: float, f1: float, recall: float, inside: float) -> dict[str, Any]:
    return {
        "codec": "hevc", "size": "640x360", "roi": roi, "setting": round(kbps), "kbps": kbps,
        "f1": f1, "new_object_recall": recall, "psnr_in_boxes": inside,
        "psnr_out_boxes": inside + 2.0,
    }  # fmt: skip


def test_box_share_is_the_picture_inside_the_boxes_over_all_frames() -> None:
    two = Detections(
        boxes=np.array([[0, 0, 10, 10], [5, 0, 15, 10]], dtype=np.float32),  # overlapping
        scores=np.array([0.9, 0.9], dtype=np.float32),
        class_ids=np.array([0, 1], dtype=np.int32),
    )
    none = Detections.empty()
    # 15 x 10 of 20 x 10 in one frame, none in the other.
    assert roi_bench.box_share({0: two, 1: none}, (20, 10)) == pytest.approx(0.375)
    assert roi_bench.box_share({}, (20, 10)) == 0.0


def test_readings_are_the_rates_at_equal_f1_and_what_each_curve_has_there() -> None:
    points = [
        point(False, 100, 0.90, 0.80, 35.0),
        point(False, 400, 1.00, 1.00, 41.0),
        point(True, 50, 0.90, 0.70, 37.0),
        point(True, 200, 1.00, 0.90, 43.0),
    ]
    entries = roi_bench.readings(points, targets=(0.95, 0.995))
    first = entries[0]
    assert tuple(first)[:5] == ROI_FIELDS
    # Uniform reaches 0.95 halfway (in log rate) from 100 to 400: 200 kbit/s; ROI halfway
    # from 50 to 200: 100 kbit/s. Each curve's recall and PSNR are read at its own rate.
    assert first["uniform_kbps"] == pytest.approx(200.0)
    assert first["roi_kbps"] == pytest.approx(100.0)
    assert first["bytes_ratio"] == pytest.approx(2.0)
    assert first["bytes_ratio_monotone"] == pytest.approx(2.0)  # monotone already
    assert first["new_object_recall_uniform"] == pytest.approx(0.90)
    assert first["new_object_recall_roi"] == pytest.approx(0.80)
    assert first["psnr_in_boxes_uniform"] == pytest.approx(38.0)
    assert first["psnr_in_boxes_roi"] == pytest.approx(40.0)
    # 0.995: ROI gets there between its points, uniform too; at 0.85 both are below.
    assert entries[1]["bytes_ratio"] is not None
    low = roi_bench.readings(points, targets=(0.85,))[0]
    assert low["uniform_outside"] == "below" and low["roi_outside"] == "below"
    assert low["bytes_ratio"] is None and low["new_object_recall_roi"] is None
    never = roi_bench.readings(points[:3], targets=(0.95,))[0]  # ROI: one point, 0.90
    assert never["roi_outside"] == "above" and never["bytes_ratio"] is None


@pytest.mark.timeout(120)
def test_a_short_replay_of_a_person_coming_in_reports_both_codings(
    model_path: Path, tmp_path: Path
) -> None:
    """4 s of real footage: a person walks in from the bottom edge at frame 9."""
    out = tmp_path / "roi.json"
    args = build_bench_parser().parse_args(
        ["codec", "--roi", "--input", str(PERSON_CLIP), "--bitrates", "100",
         "--model", str(model_path), "--json", str(out)]
    )  # fmt: skip
    summary = run_codec_bench(args, print_fn=lambda _: None)
    assert json.loads(out.read_text())["summary"]["roi"] == summary["roi"]
    assert summary["mode"] == "roi"
    assert summary["encoder_threads"] == 1  # both codings repeat bit for bit
    assert summary["inputs"][0]["frames"] == 40
    assert summary["inputs"][0]["delay_frames"] == 2  # 150 ms at 10 fps
    assert 0.0 < summary["inputs"][0]["box_share"] < 0.5  # a person and a tv, mostly wall
    points = summary["points"]
    assert [(q["codec"], q["roi"]) for q in points] == [
        ("hevc", False), ("hevc", True), ("h264", False), ("h264", True),
    ]  # fmt: skip
    for q in points:
        assert q["f1"] is not None
        # The person's first second (the tv in the corner is there from frame 0).
        assert q["new_object_boxes"] == 10 and q["new_object_recall"] is not None
        # Answers steer from frame 2 on, except while nothing is tracked; a refresh at 1 s
        # and at 3 s.
        assert (q["roi_frames"] > 20) == q["roi"] and q["refreshes"] == (2 if q["roi"] else 0)
        assert (q["region_graphs_built"] > 2) == q["roi"]
    for uniform, roi in zip(points[::2], points[1::2], strict=True):
        assert abs(uniform["kbps"] - roi["kbps"]) < 0.1 * uniform["kbps"]  # same target
        assert roi["psnr_out_boxes"] < uniform["psnr_out_boxes"] - 1.0  # the background paid
    # ... for finer objects with libx265 (libx264's rate control pays the regions' extra
    # bits back from the next frames while the person comes in: no finer on average here).
    assert points[1]["psnr_in_boxes"] > points[0]["psnr_in_boxes"] + 0.5
    assert [(e["codec"], e["target_f1"]) for e in summary["roi"]] == [
        ("hevc", 0.95), ("hevc", 0.97), ("h264", 0.95), ("h264", 0.97),
    ]  # fmt: skip
    assert all(set(ROI_FIELDS) <= set(e) for e in summary["roi"])
