"""The result matcher and statistics, with literal events and a fake clock."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from shelf_stream import protocol as p
from shelf_stream.client.matcher import ClientReason, Outcome, ResultMatcher, skipped
from shelf_stream.client.stats import QuantileSketch, StreamStats, format_summary

PERSON = p.Detection(0, 0.9, 1.0, 2.0, 3.0, 4.0, "person")


def _sent(matcher: ResultMatcher[str], pts: int, at: float = 0.0, payload: str | None = None):
    return matcher.sent(pts, at, encode_ms=1.0, size_bytes=10, keyframe=False, payload=payload)


def test_result_is_matched_by_pts_with_latency_on_the_client_clock() -> None:
    matcher: ResultMatcher[str] = ResultMatcher()
    matcher.sent(3000, captured_at=10.0, encode_ms=5.0, size_bytes=1200, keyframe=True,
                 payload="frame")  # fmt: skip
    result = p.Result(3000, 0, decode_us=2000, queue_us=500, infer_us=8000, total_us=11000,
                      detections=(PERSON,))  # fmt: skip
    settled = matcher.on_result(result, now=10.030)
    assert settled is not None and settled.payload == "frame"
    record = settled.record
    assert record.status is Outcome.RESULT and record.reason is None and not record.dropped
    assert record.latency_ms == pytest.approx(30.0)
    assert (record.decode_ms, record.queue_ms, record.infer_ms) == (2.0, 0.5, 8.0)
    assert record.overhead_ms == pytest.approx(30.0 - 5.0 - 2.0 - 8.0)
    assert record.detections == (PERSON,)
    assert len(matcher) == 0


def test_boxes_come_back_in_the_requested_frame_size() -> None:
    matcher: ResultMatcher[str] = ResultMatcher()
    matcher.sent(0, 0.0, encode_ms=0, size_bytes=0, keyframe=False, scale=(2.0, 1.5))
    settled = matcher.on_result(p.Result(0, 0, 0, 0, 0, 0, detections=(PERSON,)), now=0.1)
    assert settled is not None
    box = settled.record.detections[0]
    assert (box.x1, box.y1, box.x2, box.y2) == (2.0, 3.0, 6.0, 6.0)


def test_each_pts_is_answered_once_and_strangers_are_counted() -> None:
    matcher: ResultMatcher[str] = ResultMatcher()
    _sent(matcher, 0)
    dropped = p.Dropped(0, 0, p.DropReason.SUPERSEDED)
    first = matcher.on_dropped(dropped, now=0.01)
    assert first is not None and first.record.reason is p.DropReason.SUPERSEDED
    assert first.record.status is Outcome.DROPPED and first.record.dropped
    assert matcher.on_dropped(dropped, now=0.02) is None
    assert matcher.on_result(p.Result(99, 0, 0, 0, 0, 0), now=0.02) is None
    assert matcher.unmatched == 2


def test_unanswered_frames_expire_as_lost_in_order() -> None:
    matcher: ResultMatcher[str] = ResultMatcher()
    for index in range(3):
        _sent(matcher, index, at=float(index))
    assert matcher.oldest_captured_at() == 0.0
    lost = matcher.expire(now=2.5, timeout_s=1.0)
    assert [s.record.pts for s in lost] == [0, 1]
    assert all(s.record.status is Outcome.LOST for s in lost)
    assert all(s.record.reason is ClientReason.NO_ANSWER for s in lost)
    abandoned = matcher.abandon()
    assert [s.record.pts for s in abandoned] == [2]
    assert abandoned[0].record.reason is ClientReason.CONNECTION_CLOSED
    assert matcher.oldest_captured_at() is None


def test_pending_is_bounded_and_every_evicted_frame_is_returned() -> None:
    matcher: ResultMatcher[str] = ResultMatcher(max_pending=2)
    evicted = []
    for index in range(4):
        evicted += _sent(matcher, index, payload=f"frame {index}")
    assert [s.record.pts for s in evicted] == [0, 1]
    assert all(s.record.reason is ClientReason.TOO_MANY_PENDING for s in evicted)
    assert [s.payload for s in evicted] == ["frame 0", "frame 1"], "payloads go with them"
    assert len(matcher) == 2


def test_summary_counts_every_fate_and_percentiles() -> None:
    matcher: ResultMatcher[str] = ResultMatcher()
    stats = StreamStats()
    for index in range(10):
        stats.on_sent(now=index * 0.1, size_bytes=1000, keyframe=index == 0)
        matcher.sent(index, captured_at=index * 0.1, encode_ms=1.0, size_bytes=1000, keyframe=False)
    for index in range(8):
        settled = matcher.on_result(p.Result(index, 0, 1000, 0, 2000, 3000), now=index * 0.1 + 0.02)
        assert settled is not None
        stats.on_record(index * 0.1 + 0.02, settled.record)
    settled = matcher.on_dropped(p.Dropped(8, 0, p.DropReason.TOO_OLD), now=1.0)
    assert settled is not None
    stats.on_record(1.0, settled.record)
    stats.on_record(1.0, skipped(27000, 0.9, ClientReason.SKIPPED_AT_CAPTURE))
    summary = stats.summary()
    assert summary["frames"] == 10
    assert summary["results"] == 8
    assert summary["dropped_by_server"] == 1
    assert summary["skipped_at_capture"] == 1
    assert summary["drop_reasons"] == {"too_old": 1, "skipped_at_capture": 1}
    assert summary["latency_ms"]["p50"] == pytest.approx(20.0, rel=0.01)
    assert summary["overhead_ms"]["p50"] == pytest.approx(20.0 - 1.0 - 1.0 - 2.0, rel=0.01)
    assert summary["bytes_per_frame"] == 1000
    assert summary["kbit_per_s"] == pytest.approx(10 * 1000 * 8 / 1.0 / 1000)
    text = format_summary(summary)
    assert f"p50 {summary['latency_ms']['p50']:5.1f} ms" in text and "too_old 1" in text


def test_a_thinned_frame_says_so() -> None:
    record = skipped(3000, 1.0, ClientReason.THINNED)
    assert (record.status, record.reason, record.pts) == (
        Outcome.SKIPPED,
        ClientReason.THINNED,
        3000,
    )


# --------------------------------------------------------------------- bounded statistics


def test_quantile_sketch_stays_within_its_relative_error() -> None:
    rng = np.random.default_rng(7)
    values = rng.lognormal(mean=math.log(60), sigma=0.6, size=10_000)  # latencies, ms
    sketch = QuantileSketch(0.01)
    for value in values:
        sketch.add(float(value))
    assert len(sketch) == 10_000
    for q in (0.01, 0.25, 0.5, 0.9, 0.95, 0.99, 1.0):
        true = float(np.quantile(values, q, method="lower"))
        estimate = sketch.quantile(q)
        assert estimate is not None
        assert abs(estimate - true) <= 0.01 * true, (q, estimate, true)


def test_quantile_sketch_memory_is_fixed_and_values_are_clamped() -> None:
    sketch = QuantileSketch(0.01, min_value=0.01, max_value=1e5)
    buckets = sketch.buckets
    for value in (-5.0, 0.0, 1e-9, 1e12, float("1e300")):
        sketch.add(value)
    assert sketch.buckets == buckets
    assert sketch.quantile(0.0) == pytest.approx(0.01, rel=0.01)
    assert sketch.quantile(1.0) == pytest.approx(1e5, rel=0.01)
    assert QuantileSketch().quantile(0.5) is None


def test_stats_memory_does_not_grow_with_the_records() -> None:
    """10,000 records in: the state is a few fixed-size structures, nothing per frame."""
    stats = StreamStats()
    rng = random.Random(3)
    labels = [f"label{i}" for i in range(1000)]  # a server naming many classes
    for index in range(10_000):
        now = index / 30
        stats.on_sent(now, 5000, keyframe=index % 300 == 0)
        detections = tuple(p.Detection(i, 0.5, 0, 0, 1, 1, rng.choice(labels)) for i in range(3))
        matcher: ResultMatcher[str] = ResultMatcher()
        matcher.sent(index, now, encode_ms=2.0, size_bytes=5000, keyframe=False)
        settled = matcher.on_result(
            p.Result(index, 0, 1000, 100, 9000, 10100, detections=detections),
            now=now + 0.04 + rng.random() * 0.02,
        )
        assert settled is not None
        stats.on_record(now + 0.05, settled.record)
    summary = stats.summary()
    assert summary["frames"] == 10_000 and summary["results"] == 10_000
    assert 40.0 * 0.99 <= summary["latency_ms"]["p50"] <= 60.0 * 1.01
    # The status window holds the last 2 s (60 frames at 30 fps), the labels their cap.
    assert len(stats._recent) <= 61
    assert len(stats._labels) <= stats.config.max_labels + 1
    assert stats.latency.buckets == QuantileSketch().buckets
    assert "fps" in stats.status_line()
