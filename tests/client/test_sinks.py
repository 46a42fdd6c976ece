"""The results file and the annotated video: contents, timing, failures, bounded close."""

from __future__ import annotations

import json
import time
from pathlib import Path

import av
import numpy as np

from shelf_stream import protocol as p
from shelf_stream.client.matcher import ClientReason, FrameRecord, Outcome, skipped
from shelf_stream.client.sinks import AnnotatedVideoSink, JsonlSink, record_to_json

CAT = p.Detection(15, 0.9, 20.0, 20.0, 100.0, 80.0, "cat")


def _record(pts: int, *detections: p.Detection) -> FrameRecord:
    return FrameRecord(pts, 0.0, Outcome.RESULT, latency_ms=12.3456, detections=detections)


def _grey(width: int = 128, height: int = 96) -> av.VideoFrame:
    grey = np.full((height, width, 3), 128, np.uint8)
    return av.VideoFrame.from_ndarray(grey, format="rgb24").reformat(format="yuv420p")


def test_results_lines_carry_pts_latency_flag_and_boxes(tmp_path: Path) -> None:
    sink = JsonlSink(tmp_path / "r.jsonl")
    sink.write(_record(9000, p.Detection(15, 0.81234, 1.04, 2.0, 30.0, 40.0, "cat")))
    sink.write(skipped(12000, 0.0, ClientReason.SKIPPED_AT_CAPTURE))
    sink.write(FrameRecord(15000, 0.0, Outcome.DROPPED, p.DropReason.TOO_OLD, latency_ms=1.0))
    sink.close()
    assert sink.lines == 3
    first, second, third = (json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines())
    assert first["pts"] == 9000 and first["time_s"] == 0.1
    assert first["latency_ms"] == 12.346 and first["dropped"] is False
    assert first["detections"] == [
        {"class_id": 15, "label": "cat", "score": 0.8123, "box": [1.0, 2.0, 30.0, 40.0]}
    ]
    assert second == record_to_json(skipped(12000, 0.0, ClientReason.SKIPPED_AT_CAPTURE))
    assert second["dropped"] is True and second["reason"] == "skipped_at_capture"
    assert second["status"] == "skipped" and second["latency_ms"] is None
    assert (third["status"], third["reason"]) == ("dropped", "too_old")


def test_annotated_video_has_the_boxes_drawn_at_the_stream_timing(tmp_path: Path) -> None:
    path = tmp_path / "out.mp4"
    sink = AnnotatedVideoSink(path, width=128, height=96, fps=10.0)
    # Uneven capture times and a gap (frames answered Dropped are not in the file).
    pts = [0, 9000, 17990, 27010, 54000]
    for value in pts:
        sink.write(_record(value, CAT), _grey())
    sink.write(skipped(60000, 0.0, ClientReason.THINNED), _grey())  # not a result: ignored
    sink.close()
    assert sink.frames_written == 5 and not sink.failed
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        decoded = list(container.decode(stream))
        times = [round(f.time, 3) for f in decoded]
        frames = [f.to_ndarray(format="rgb24") for f in decoded]
    assert times == [round(v / 90000, 3) for v in pts]
    image = frames[-1].astype(int)
    edge = image[50, 19:23]  # the box's left edge, mid-height
    inside = image[50, 60]
    assert np.abs(edge - 128).max() > 40, "the box outline is drawn"
    assert np.abs(inside - 128).max() < 12, "the inside is left alone"


def test_frames_of_another_size_are_scaled_to_the_boxes_frame(tmp_path: Path) -> None:
    path = tmp_path / "scaled.mp4"
    sink = AnnotatedVideoSink(path, width=128, height=96, fps=10.0)
    sink.write(_record(0, CAT), _grey(256, 192))  # the camera's size; boxes in 128x96
    sink.close()
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
    assert (frame.width, frame.height) == (128, 96)


def test_out_of_order_frames_are_skipped_not_fatal(tmp_path: Path) -> None:
    sink = AnnotatedVideoSink(tmp_path / "o.mp4", width=64, height=48, fps=10.0)
    for value in (0, 9000, 4500, 18000):
        sink.write(_record(value), _grey(64, 48))
    sink.close()
    assert (sink.frames_written, sink.frames_out_of_order, sink.failed) == (3, 1, False)


def test_a_failing_writer_is_logged_once_and_never_blocks(tmp_path: Path, caplog) -> None:
    # The file cannot be created: the sink says so once, then swallows everything.
    sink = AnnotatedVideoSink(tmp_path / "missing" / "x.mp4", width=64, height=48, fps=10.0,
                              max_queued=4)  # fmt: skip
    started = time.monotonic()
    for value in range(200):
        sink.write(_record(value * 3000), _grey(64, 48))
    sink.close(timeout_s=1.0)
    assert time.monotonic() - started < 3.0
    assert sink.failed and sink.frames_written == 0
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "writing failed" in errors[0].getMessage()


def test_close_returns_in_time_when_the_writer_is_behind(tmp_path: Path) -> None:
    path = tmp_path / "behind.mp4"
    sink = AnnotatedVideoSink(path, width=1280, height=720, fps=30.0, max_queued=32)
    frame = _grey(1280, 720)
    for value in range(32):
        sink.write(_record(value * 3000, CAT), frame)
    started = time.monotonic()
    sink.close(timeout_s=0.2)
    assert time.monotonic() - started < 1.5
    assert sink.frames_written + sink.items_dropped == 32
    with av.open(str(path)) as container:  # finished and playable with what was written
        assert sum(1 for _ in container.decode(video=0)) == sink.frames_written
