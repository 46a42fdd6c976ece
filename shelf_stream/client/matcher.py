"""Match the server's answers to sent frames by pts (sans-I/O: ``now`` is passed in).

Every captured pts ends as exactly one ``FrameRecord``: a result, a drop reported by
the server, a skip at capture, or ``lost`` if no answer came within the timeout.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any

from shelf_stream import protocol as p


@dataclass(slots=True)
class _Sent:
    captured_at: float
    encode_ms: float
    size_bytes: int
    keyframe: bool
    scale: tuple[float, float]  # streamed frame → requested frame (the stream may be scaled)
    payload: Any  # kept for the caller (e.g. the frame to annotate), else None


@dataclass(frozen=True, slots=True)
class FrameRecord:
    """The fate of one frame."""

    pts: int
    captured_at: float
    status: str  # "result", "dropped", "skipped" (at capture) or "lost"
    reason: str = ""  # drop reason, lower case
    latency_ms: float | None = None  # capture → answer, on the client's clock
    encode_ms: float = 0.0
    size_bytes: int = 0
    keyframe: bool = False
    decode_ms: float = 0.0  # server stages
    queue_ms: float = 0.0
    infer_ms: float = 0.0
    server_ms: float = 0.0
    detections: tuple[p.Detection, ...] = ()
    payload: Any = field(default=None, repr=False, compare=False)

    @property
    def dropped(self) -> bool:
        return self.status != "result"

    @property
    def overhead_ms(self) -> float | None:
        """Latency not spent computing: transport, queues, scheduling, Python."""
        if self.latency_ms is None or self.status != "result":
            return None
        return self.latency_ms - self.encode_ms - self.decode_ms - self.infer_ms


def _scaled(
    detections: tuple[p.Detection, ...], scale: tuple[float, float]
) -> tuple[p.Detection, ...]:
    sx, sy = scale
    if sx == 1.0 and sy == 1.0:
        return detections
    return tuple(
        replace(d, x1=d.x1 * sx, y1=d.y1 * sy, x2=d.x2 * sx, y2=d.y2 * sy) for d in detections
    )


class ResultMatcher:
    """Remembers sent frames until their answer arrives."""

    def __init__(self, *, max_pending: int = 4096) -> None:
        self.max_pending = max_pending
        self._pending: OrderedDict[int, _Sent] = OrderedDict()
        self.unmatched = 0  # answers for pts we never sent (or already answered)

    def __len__(self) -> int:
        return len(self._pending)

    def sent(
        self,
        pts: int,
        captured_at: float,
        *,
        encode_ms: float,
        size_bytes: int,
        keyframe: bool,
        scale: tuple[float, float] = (1.0, 1.0),
        payload: Any = None,
    ) -> list[FrameRecord]:
        """Record a sent frame. Returns frames evicted as lost if too many are pending.

        ``scale`` maps the streamed frame's pixels to the frame size the user asked for,
        so boxes stay in one coordinate system while adaptation changes the stream's size.
        """
        self._pending[pts] = _Sent(captured_at, encode_ms, size_bytes, keyframe, scale, payload)
        evicted = []
        while len(self._pending) > self.max_pending:
            old_pts, old = self._pending.popitem(last=False)
            evicted.append(self._record(old_pts, old, "lost", reason="too_many_pending"))
        return evicted

    def skipped(
        self, pts: int, captured_at: float, reason: str = "skipped_at_capture"
    ) -> FrameRecord:
        """A frame never sent: skipped at capture, or ``thinned`` to meet a lower bitrate."""
        return FrameRecord(pts, captured_at, "skipped", reason=reason)

    def on_result(self, result: p.Result, now: float) -> FrameRecord | None:
        sent = self._pending.pop(result.pts, None)
        if sent is None:
            self.unmatched += 1
            return None
        return self._record(
            result.pts,
            sent,
            "result",
            latency_ms=(now - sent.captured_at) * 1000,
            decode_ms=result.decode_us / 1000,
            queue_ms=result.queue_us / 1000,
            infer_ms=result.infer_us / 1000,
            server_ms=result.total_us / 1000,
            detections=_scaled(result.detections, sent.scale),
        )

    def on_dropped(self, dropped: p.Dropped, now: float) -> FrameRecord | None:
        sent = self._pending.pop(dropped.pts, None)
        if sent is None:
            self.unmatched += 1
            return None
        return self._record(
            dropped.pts,
            sent,
            "dropped",
            reason=dropped.reason.name.lower(),
            latency_ms=(now - sent.captured_at) * 1000,
        )

    def expire(self, now: float, timeout_s: float) -> list[FrameRecord]:
        """Give up on frames unanswered for longer than ``timeout_s``."""
        expired = []
        while self._pending:
            pts, sent = next(iter(self._pending.items()))
            if now - sent.captured_at <= timeout_s:
                break
            del self._pending[pts]
            expired.append(self._record(pts, sent, "lost", reason="no_answer"))
        return expired

    def abandon(self) -> list[FrameRecord]:
        """Everything still pending, as lost (the connection ended)."""
        records = [
            self._record(pts, sent, "lost", reason="connection_closed")
            for pts, sent in self._pending.items()
        ]
        self._pending.clear()
        return records

    @staticmethod
    def _record(pts: int, sent: _Sent, status: str, **fields: Any) -> FrameRecord:
        return FrameRecord(
            pts,
            sent.captured_at,
            status,
            encode_ms=sent.encode_ms,
            size_bytes=sent.size_bytes,
            keyframe=sent.keyframe,
            payload=sent.payload,
            **fields,
        )
