"""Client-side statistics: a live status line and the final summary."""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shelf_stream.client.matcher import FrameRecord


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


@dataclass(slots=True)
class _Window:
    """Records of the last ``seconds`` for the live status line."""

    seconds: float
    records: deque[tuple[float, FrameRecord]] = field(default_factory=deque)

    def add(self, now: float, record: FrameRecord) -> None:
        self.records.append((now, record))
        while self.records and now - self.records[0][0] > self.seconds:
            self.records.popleft()


class StreamStats:
    """Accumulates every frame's fate; ``summary()`` gives the final figures."""

    def __init__(self, *, window_s: float = 2.0) -> None:
        self.records: list[FrameRecord] = []
        self._window = _Window(window_s)
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
        self.records.append(record)
        self._window.add(now, record)
        self.ended_at = now

    def status_line(self) -> str:
        window = [r for _, r in self._window.records]
        if not window:
            return "waiting for results..."
        span = max(self._window.records[-1][0] - self._window.records[0][0], 1e-3)
        results = [r for r in window if r.status == "result"]
        latencies = [r.latency_ms for r in results if r.latency_ms is not None]
        kbps = sum(r.size_bytes for r in window) * 8 / span / 1000
        boxes = sum(len(r.detections) for r in results[-1:])
        p50, p95 = percentile(latencies, 50), percentile(latencies, 95)
        return (
            f"{len(results) / span:5.1f} fps  {kbps:7.0f} kbit/s  "
            f"latency p50 {_ms(p50)} p95 {_ms(p95)}  "
            f"dropped {len(window) - len(results)}  objects {boxes}"
        )

    def summary(self) -> dict[str, Any]:
        results = [r for r in self.records if r.status == "result"]
        latencies = [r.latency_ms for r in results if r.latency_ms is not None]
        overheads = [o for r in results if (o := r.overhead_ms) is not None]
        duration = (
            (self.ended_at - self.started_at)
            if self.started_at is not None and self.ended_at is not None
            else 0.0
        )
        reasons = Counter(r.reason for r in self.records if r.status != "result")
        labels = Counter(d.label or str(d.class_id) for r in results for d in r.detections)
        return {
            "duration_s": round(duration, 3),
            "frames": len(self.records),
            "frames_sent": self.frames_sent,
            "results": len(results),
            "dropped_by_server": sum(r.status == "dropped" for r in self.records),
            # Every frame never sent (skipped at capture, thinned, unsent); see drop_reasons.
            "skipped_at_capture": sum(r.status == "skipped" for r in self.records),
            "lost": sum(r.status == "lost" for r in self.records),
            "drop_reasons": dict(reasons),
            "fps": round(len(results) / duration, 2) if duration > 0 else 0.0,
            "kbit_per_s": round(self.bytes_sent * 8 / duration / 1000, 1) if duration > 0 else 0.0,
            "bytes_per_frame": round(self.bytes_sent / self.frames_sent) if self.frames_sent else 0,
            "keyframes_sent": self.keyframes_sent,
            "keyframe_requests": self.keyframe_requests,
            "reconnects": self.reconnects,
            "latency_ms": _percentiles(latencies),
            "encode_ms_mean": _mean([r.encode_ms for r in results]),
            "decode_ms_mean": _mean([r.decode_ms for r in results]),
            "queue_ms_mean": _mean([r.queue_ms for r in results]),
            "infer_ms_mean": _mean([r.infer_ms for r in results]),
            "overhead_ms": _percentiles(overheads),
            "detections_per_frame": round(sum(len(r.detections) for r in results) / len(results), 2)
            if results
            else 0.0,
            "top_labels": dict(labels.most_common(5)),
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


def _percentiles(values: list[float]) -> dict[str, float | None]:
    return {
        f"p{q}": (round(v, 2) if (v := percentile(values, q)) is not None else None)
        for q in (50, 95, 99)
    }


def _mean(values: list[float]) -> float | None:
    return round(float(np.mean(values)), 2) if values else None


def _ms(value: float | None) -> str:
    return "   -  " if value is None else f"{value:5.1f} ms"
