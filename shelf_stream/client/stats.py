"""Client-side statistics: a live status line and the final summary, in bounded memory.

A stream may run for a week, so nothing here keeps a record per frame:

- counts and sums for every figure of the summary;
- latency percentiles from a ``QuantileSketch`` (DDSketch, Masson, Rim and Lee, VLDB 2019):
  logarithmic buckets whose width is a fixed share of their value, so every quantile it
  returns lies within ``relative_accuracy`` (1 %) of the true one; 807 buckets cover
  0.01 ms to 100 s whatever the number of frames;
- the status line's last ``window_s`` seconds as small tuples (no frames, no boxes),
  capped at ``max_window_records``;
- detection labels counted up to ``max_labels`` distinct names (a server sends the
  names: beyond that they count as ``other``).
"""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any, NamedTuple

from shelf_stream.client.matcher import FrameRecord, Outcome, reason_name


class QuantileSketch:
    """Streaming quantiles with a bounded relative error, in fixed memory (DDSketch).

    A value ``v`` in ``[min_value, max_value]`` lands in bucket ``ceil(log_gamma(v))`` with
    ``gamma = (1 + a) / (1 - a)``; the bucket's representative ``2 gamma^i / (gamma + 1)``
    is within ``a`` of every value in it. Values below ``min_value`` count as
    ``min_value``, above ``max_value`` as ``max_value`` (outside a latency's plausible
    range).
    """

    def __init__(
        self,
        relative_accuracy: float = 0.01,
        *,
        min_value: float = 0.01,
        max_value: float = 1e5,
    ) -> None:
        if not 0 < relative_accuracy < 1:
            raise ValueError("relative_accuracy must be in (0, 1)")
        if not 0 < min_value < max_value:
            raise ValueError("need 0 < min_value < max_value")
        self.relative_accuracy = relative_accuracy
        self.min_value, self.max_value = min_value, max_value
        self._gamma = (1 + relative_accuracy) / (1 - relative_accuracy)
        self._log_gamma = math.log(self._gamma)
        self._offset = self._key(min_value)
        self._counts = [0] * (self._key(max_value) - self._offset + 1)
        self.count = 0

    def __len__(self) -> int:
        return self.count

    @property
    def buckets(self) -> int:
        """Memory in use: the number of buckets (fixed at construction)."""
        return len(self._counts)

    def add(self, value: float) -> None:
        clamped = min(max(value, self.min_value), self.max_value)
        self._counts[self._key(clamped) - self._offset] += 1
        self.count += 1

    def quantile(self, q: float) -> float | None:
        """The value at rank ``floor(q (n - 1))`` within the relative accuracy; None if empty."""
        if not 0 <= q <= 1:
            raise ValueError("q must be in [0, 1]")
        if self.count == 0:
            return None
        rank = math.floor(q * (self.count - 1))
        seen = 0
        for index, count in enumerate(self._counts):
            seen += count
            if seen > rank:
                return self._value(index + self._offset)
        raise AssertionError("counts do not add up")  # unreachable: rank < count

    def _key(self, value: float) -> int:
        return math.ceil(math.log(value) / self._log_gamma)

    def _value(self, key: int) -> float:
        return 2 * self._gamma**key / (self._gamma + 1)


class _Mean:
    __slots__ = ("count", "total")

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value

    @property
    def value(self) -> float | None:
        return round(self.total / self.count, 2) if self.count else None


class _Recent(NamedTuple):
    at: float
    result: bool
    latency_ms: float | None
    size_bytes: int
    boxes: int


@dataclass(frozen=True, slots=True, kw_only=True)
class StatsConfig:
    """Settings of ``StreamStats``."""

    window_s: float = 2.0  # the status line's window
    max_window_records: int = 4096
    relative_accuracy: float = 0.01  # of the latency percentiles
    max_labels: int = 256


class StreamStats:
    """Accumulates every frame's fate in bounded memory; ``summary()`` gives the figures."""

    OTHER_LABEL = "other"

    def __init__(self, config: StatsConfig | None = None) -> None:
        self.config = config or StatsConfig()
        accuracy = self.config.relative_accuracy
        self.latency = QuantileSketch(accuracy)
        self.overhead = QuantileSketch(accuracy)
        self._recent: deque[_Recent] = deque(maxlen=self.config.max_window_records)
        self._outcomes: Counter[Outcome] = Counter()
        self._reasons: Counter[str] = Counter()
        self._labels: Counter[str] = Counter()
        self._stages = {stage: _Mean() for stage in ("encode", "decode", "queue", "infer")}
        self._boxes = 0
        self.frames = 0
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self.bytes_sent = 0
        self.frames_sent = 0
        self.keyframes_sent = 0
        self.keyframe_requests = 0
        self.reconnects = 0

    def on_sent(self, now: float, size_bytes: int, keyframe: bool) -> None:
        if self.started_at is None:
            self.started_at = now
        self.frames_sent += 1
        self.bytes_sent += size_bytes
        self.keyframes_sent += keyframe

    def on_record(self, now: float, record: FrameRecord) -> None:
        self.frames += 1
        self.ended_at = now
        self._outcomes[record.status] += 1
        if record.reason is not None:
            self._reasons[reason_name(record.reason)] += 1
        is_result = record.status is Outcome.RESULT
        if is_result:
            self._on_result(record)
        self._recent.append(
            _Recent(now, is_result, record.latency_ms, record.size_bytes, len(record.detections))
        )
        horizon = now - self.config.window_s
        while self._recent and self._recent[0].at < horizon:
            self._recent.popleft()

    def _on_result(self, record: FrameRecord) -> None:
        if record.latency_ms is not None:
            self.latency.add(record.latency_ms)
        if (overhead := record.overhead_ms) is not None:
            self.overhead.add(overhead)
        for stage, value in (
            ("encode", record.encode_ms),
            ("decode", record.decode_ms),
            ("queue", record.queue_ms),
            ("infer", record.infer_ms),
        ):
            self._stages[stage].add(value)
        self._boxes += len(record.detections)
        for detection in record.detections:
            label = detection.label or str(detection.class_id)
            if label not in self._labels and len(self._labels) >= self.config.max_labels:
                label = self.OTHER_LABEL
            self._labels[label] += 1

    def status_line(self) -> str:
        recent = self._recent
        if not recent:
            return "waiting for results..."
        span = max(recent[-1].at - recent[0].at, 1e-3)
        results = [r for r in recent if r.result]
        latencies = sorted(r.latency_ms for r in results if r.latency_ms is not None)
        kbps = sum(r.size_bytes for r in recent) * 8 / span / 1000
        boxes = results[-1].boxes if results else 0
        return (
            f"{len(results) / span:5.1f} fps  {kbps:7.0f} kbit/s  "
            f"latency p50 {_ms(_rank(latencies, 0.5))} p95 {_ms(_rank(latencies, 0.95))}  "
            f"dropped {len(recent) - len(results)}  objects {boxes}"
        )

    def summary(self) -> dict[str, Any]:
        results = self._outcomes[Outcome.RESULT]
        duration = (
            (self.ended_at - self.started_at)
            if self.started_at is not None and self.ended_at is not None
            else 0.0
        )
        return {
            "duration_s": round(duration, 3),
            "frames": self.frames,
            "frames_sent": self.frames_sent,
            "results": results,
            "dropped_by_server": self._outcomes[Outcome.DROPPED],
            # Every frame never sent (skipped at capture, thinned, unsent); see drop_reasons.
            "skipped_at_capture": self._outcomes[Outcome.SKIPPED],
            "lost": self._outcomes[Outcome.LOST],
            "drop_reasons": dict(self._reasons),
            "fps": round(results / duration, 2) if duration > 0 else 0.0,
            "kbit_per_s": round(self.bytes_sent * 8 / duration / 1000, 1) if duration > 0 else 0.0,
            "bytes_per_frame": round(self.bytes_sent / self.frames_sent) if self.frames_sent else 0,
            "keyframes_sent": self.keyframes_sent,
            "keyframe_requests": self.keyframe_requests,
            "reconnects": self.reconnects,
            "latency_ms": _percentiles(self.latency),
            "encode_ms_mean": self._stages["encode"].value,
            "decode_ms_mean": self._stages["decode"].value,
            "queue_ms_mean": self._stages["queue"].value,
            "infer_ms_mean": self._stages["infer"].value,
            "overhead_ms": _percentiles(self.overhead),
            "detections_per_frame": round(self._boxes / results, 2) if results else 0.0,
            "top_labels": dict(self._labels.most_common(5)),
        }


def format_summary(summary: dict[str, Any]) -> str:
    lat, ovh = summary["latency_ms"], summary["overhead_ms"]
    lines = [
        f"frames      {summary['frames']} captured, {summary['frames_sent']} sent, "
        f"{summary['results']} results, {summary['dropped_by_server']} dropped by the server, "
        f"{summary['skipped_at_capture']} never sent, {summary['lost']} lost",
        f"rate        {summary['fps']} fps over {summary['duration_s']} s, "
        f"{summary['kbit_per_s']} kbit/s, {summary['bytes_per_frame']} bytes/frame",
        f"latency     p50 {_ms(lat['p50'])}  p95 {_ms(lat['p95'])}  p99 {_ms(lat['p99'])}  "
        f"(capture -> result, client clock)",
        f"stages      encode {_ms(summary['encode_ms_mean'])}"
        f"  decode {_ms(summary['decode_ms_mean'])}"
        f"  queue {_ms(summary['queue_ms_mean'])}  inference {_ms(summary['infer_ms_mean'])}"
        f"  (means); overhead p50 {_ms(ovh['p50'])}",
        f"detections  {summary['detections_per_frame']} per frame; top: "
        + (", ".join(f"{k} x{v}" for k, v in summary["top_labels"].items()) or "none"),
    ]
    if summary["drop_reasons"]:
        reasons = ", ".join(f"{k} {v}" for k, v in summary["drop_reasons"].items())
        lines.append(f"drops       {reasons}")
    return "\n".join(lines)


def _percentiles(sketch: QuantileSketch) -> dict[str, float | None]:
    return {
        f"p{q}": (round(v, 2) if (v := sketch.quantile(q / 100)) is not None else None)
        for q in (50, 95, 99)
    }


def _rank(ordered: list[float], q: float) -> float | None:
    return ordered[math.floor(q * (len(ordered) - 1))] if ordered else None


def _ms(value: float | None) -> str:
    return "   -  " if value is None else f"{value:5.1f} ms"
