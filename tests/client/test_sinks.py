"""The results file and the annotated video."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np

from shelf_stream import protocol as p
from shelf_stream.client.matcher import FrameRecord
from shelf_stream.client.sinks import AnnotatedVideoSink, JsonlSink, record_to_json


def _record(pts: int, *detections: p.Detection, status: str = "result") -> FrameRecord:
    return FrameRecord(pts, 0.0, status, latency_ms=12.3456, detections=detections)


def test_results_lines_carry_pts_latency_flag_and_boxes(tmp_path: Path) -> None:
    sink = JsonlSink(tmp_path / "r.jsonl")
    sink.write(_record(9000, p.Detection(15, 0.81234, 1.04, 2.0, 30.0, 40.0, "cat")))
    sink.write(FrameRecord(12000, 0.0, "skipped", reason="skipped_at_capture"))
    sink.close()
    first, second = (json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines())
    assert first["pts"] == 9000 and first["time_s"] == 0.1
    assert first["latency_ms"] == 12.346 and first["dropped"] is False
    assert first["detections"] == [
        {"class_id": 15, "label": "cat", "score": 0.8123, "box": [1.0, 2.0, 30.0, 40.0]}
    ]
    assert second == record_to_json(FrameRecord(12000, 0.0, "skipped", reason="skipped_at_capture"))
    assert second["dropped"] is True and second["reason"] == "skipped_at_capture"
    assert second["latency_ms"] is None


def test_annotated_video_has_the_boxes_drawn(tmp_path: Path) -> None:
    path = tmp_path / "out.mp4"
    sink = AnnotatedVideoSink(path, fps=10.0)
    grey = np.full((96, 128, 3), 128, np.uint8)
    box = p.Detection(15, 0.9, 20.0, 20.0, 100.0, 80.0, "cat")
    for index in range(5):
        frame = av.VideoFrame.from_ndarray(grey, format="rgb24").reformat(format="yuv420p")
        sink.write(_record(index * 9000, box), frame)
    sink.close()
    assert sink.frames_written == 5
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 5
    image = frames[-1].astype(int)
    edge = image[50, 19:23]  # the box's left edge, mid-height
    inside = image[50, 60]
    assert np.abs(edge - 128).max() > 40, "the box outline is drawn"
    assert np.abs(inside - 128).max() < 12, "the inside is left alone"
