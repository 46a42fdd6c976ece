"""The result matcher and statistics, with literal events and a fake clock."""

from __future__ import annotations

import pytest

from shelf_stream import protocol as p
from shelf_stream.client.matcher import ResultMatcher
from shelf_stream.client.stats import StreamStats, format_summary

PERSON = p.Detection(0, 0.9, 1.0, 2.0, 3.0, 4.0, "person")


def test_result_is_matched_by_pts_with_latency_on_the_client_clock() -> None:
    matcher = ResultMatcher()
    matcher.sent(3000, captured_at=10.0, encode_ms=5.0, size_bytes=1200, keyframe=True)
    result = p.Result(3000, 0, decode_us=2000, queue_us=500, infer_us=8000, total_us=11000,
                      detections=(PERSON,))  # fmt: skip
    record = matcher.on_result(result, now=10.030)
    assert record is not None
    assert record.status == "result" and not record.dropped
    assert record.latency_ms == pytest.approx(30.0)
    assert (record.decode_ms, record.queue_ms, record.infer_ms) == (2.0, 0.5, 8.0)
    assert record.overhead_ms == pytest.approx(30.0 - 5.0 - 2.0 - 8.0)
    assert record.detections == (PERSON,)
    assert len(matcher) == 0


def test_each_pts_is_answered_once_and_strangers_are_counted() -> None:
    matcher = ResultMatcher()
    matcher.sent(0, captured_at=0.0, encode_ms=1.0, size_bytes=10, keyframe=False)
    dropped = p.Dropped(0, 0, p.DropReason.SUPERSEDED)
    first = matcher.on_dropped(dropped, now=0.01)
    assert first is not None and first.reason == "superseded" and first.dropped
    assert matcher.on_dropped(dropped, now=0.02) is None
    assert matcher.on_result(p.Result(99, 0, 0, 0, 0, 0), now=0.02) is None
    assert matcher.unmatched == 2


def test_unanswered_frames_expire_as_lost_in_order() -> None:
    matcher = ResultMatcher()
    for index in range(3):
        matcher.sent(index, captured_at=float(index), encode_ms=0, size_bytes=0, keyframe=False)
    lost = matcher.expire(now=2.5, timeout_s=1.0)
    assert [r.pts for r in lost] == [0, 1]
    assert all(r.status == "lost" and r.reason == "no_answer" for r in lost)
    assert [r.pts for r in matcher.abandon()] == [2]


def test_pending_is_bounded() -> None:
    matcher = ResultMatcher(max_pending=2)
    evicted = []
    for index in range(4):
        evicted += matcher.sent(index, captured_at=0.0, encode_ms=0, size_bytes=0, keyframe=False)
    assert [r.pts for r in evicted] == [0, 1]
    assert len(matcher) == 2


def test_summary_counts_every_fate_and_percentiles() -> None:
    matcher, stats = ResultMatcher(), StreamStats()
    for index in range(10):
        stats.on_sent(now=index * 0.1, size_bytes=1000, keyframe=index == 0)
        matcher.sent(index, captured_at=index * 0.1, encode_ms=1.0, size_bytes=1000, keyframe=False)
    for index in range(8):
        record = matcher.on_result(p.Result(index, 0, 1000, 0, 2000, 3000), now=index * 0.1 + 0.02)
        assert record is not None
        stats.on_record(index * 0.1 + 0.02, record)
    record = matcher.on_dropped(p.Dropped(8, 0, p.DropReason.TOO_OLD), now=1.0)
    assert record is not None
    stats.on_record(1.0, record)
    stats.on_record(1.0, matcher.skipped(27000, captured_at=0.9))
    summary = stats.summary()
    assert summary["results"] == 8
    assert summary["dropped_by_server"] == 1
    assert summary["skipped_at_capture"] == 1
    assert summary["drop_reasons"] == {"too_old": 1, "skipped_at_capture": 1}
    assert summary["latency_ms"]["p50"] == pytest.approx(20.0)
    assert summary["overhead_ms"]["p50"] == pytest.approx(20.0 - 1.0 - 1.0 - 2.0)
    assert summary["bytes_per_frame"] == 1000
    assert summary["kbit_per_s"] == pytest.approx(10 * 1000 * 8 / 1.0 / 1000)
    text = format_summary(summary)
    assert "p50  20.0 ms" in text and "too_old 1" in text


def test_a_thinned_frame_says_so() -> None:
    record = ResultMatcher().skipped(3000, 1.0, "thinned")
    assert (record.status, record.reason, record.pts) == ("skipped", "thinned", 3000)
