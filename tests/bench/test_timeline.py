"""The link-schedule analysis on a hand-made run (no sockets, no clock)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shelf_stream import protocol as p
from shelf_stream.bench.link import LinkConfig
from shelf_stream.bench.timeline import Run, analyse, floor_ms, plot
from shelf_stream.client.matcher import FrameRecord, Outcome


def _result(t: float, latency_ms: float, *, queue_ms: float = 1.0) -> tuple[float, FrameRecord]:
    record = FrameRecord(
        round(t * 90_000), t, Outcome.RESULT, latency_ms=latency_ms, size_bytes=5000,
        decode_ms=2.0, queue_ms=queue_ms, infer_ms=10.0,
    )  # fmt: skip
    return t, record


def _run() -> Run:
    schedule = [(0.0, LinkConfig(40, 10)), (10.0, LinkConfig(40, 2)), (20.0, LinkConfig(40, 10))]
    records = []
    for i in range(300):
        t = i / 10
        # Latency jumps at the drop and settles 1.5 s later.
        latency = 400.0 if 10.0 <= t < 11.5 else 80.0
        records.append(_result(t, latency, queue_ms=30.0 if t == 10.0 else 1.0))
    records.append((12.0, FrameRecord(1, 12.0, Outcome.DROPPED, p.DropReason.TOO_OLD)))
    targets = [
        (i / 5, 4000.0 if i / 5 < 10 else (1500.0 if i / 5 < 23 else 3500.0)) for i in range(150)
    ]
    throughput = [(i / 10, 4.0 if i < 100 else (1.8 if i < 200 else 3.9)) for i in range(300)]
    return Run(
        schedule=schedule,
        records=records,
        targets=targets,
        throughput=throughput,
        compute_ms=15.0,
        bytes_per_frame_at=[(t, 5000.0) for t, _ in records],
        duration_s=30.0,
    )


def test_floor_adds_delay_serialisation_and_compute() -> None:
    assert floor_ms(LinkConfig(40, 2), 5000, 15.0) == pytest.approx(40 + 20 + 15)


def test_analysis_finds_settling_recovery_and_utilisation(tmp_path: Path) -> None:
    figures = analyse(_run())
    drop, recovery = figures["changes"][1], figures["changes"][2]
    assert drop["floor_ms"] == pytest.approx(75.0)
    # The 1 s rolling p95 is under floor + 100 ms once the 400 ms frames leave the window.
    assert drop["settled_within_100ms_of_floor_after_s"] == pytest.approx(2.5, abs=0.15)
    assert drop["back_within_100ms_of_floor_after_s"] == pytest.approx(2.5, abs=0.15)
    assert drop["utilisation"] == pytest.approx(0.9)
    assert "recovered_to_70pct_after_s" not in drop, "recovery is only asked after a rise"
    # Against the 4000 kbit/s before the drop: 3500 at 23 s is the first >= 2800.
    assert recovery["target_before_drop_kbps"] == pytest.approx(4000.0)
    assert recovery["recovered_to_70pct_after_s"] == pytest.approx(3.0, abs=0.2)
    assert figures["too_old_drops"] == 1
    assert figures["max_server_age_at_inference_ms"] == pytest.approx(32.0)
    png = plot(_run(), tmp_path / "timeline.png", "test")
    assert png.stat().st_size > 10_000


def test_detection_labels_survive_in_records() -> None:
    record = FrameRecord(
        0, 0.0, Outcome.RESULT, detections=(p.Detection(0, 0.9, 0, 0, 1, 1, "person"),)
    )
    assert record.detections[0].label == "person"
