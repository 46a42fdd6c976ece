"""Match the server's answers to sent frames by pts (sans-I/O: ``now`` is passed in).

Every captured pts ends as exactly one ``FrameRecord``: a result, a drop reported by the
server, a frame never sent (skipped at capture, thinned, unsent), or ``lost`` when no
answer came: the connection closed, it timed out (``expire``), or more frames were
pending than ``max_pending`` allows. The matcher holds only the frames in flight.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar

from shelf_stream import protocol as p

P = TypeVar("P")


class Outcome(enum.Enum):
    """The fate of a captured frame."""

    RESULT = "result"  # the server answered with detections
    DROPPED = "dropped"  # the server answered Dropped (``reason``: a ``p.DropReason``)
    SKIPPED = "skipped"  # never sent (``reason``: a ``ClientReason``)
    LOST = "lost"  # sent, but no answer will come (``reason``: a ``ClientReason``)


class ClientReason(enum.Enum):
    """Why the client recorded a frame without the server's answer."""

    SKIPPED_AT_CAPTURE = enum.auto()  # a newer frame replaced it before the encoder took it
    THINNED = enum.auto()  # left out to meet a lower bitrate without an encoder switch
    UNSENT = enum.auto()  # encoded, but the connection was down or the stream ended
    NO_ANSWER = enum.auto()  # unanswered for longer than the answer timeout
    CONNECTION_CLOSED = enum.auto()  # in flight when the connection ended
    TOO_MANY_PENDING = enum.auto()  # evicted: more frames in flight than the matcher holds
    # Pass-through (a camera's own access units, ``passthrough``):
    LINK_BEHIND = enum.auto()  # the socket had no room; a camera's frames cannot wait
    AWAITING_CAMERA_KEYFRAME = enum.auto()  # would not decode: the stream resumes at a keyframe
    CAMERA_DAMAGED = enum.auto()  # arrived damaged from the camera (packets lost on the way)


#: Every reason a record may carry; ``reason.name.lower()`` is its name in files and logs.
Reason = p.DropReason | ClientReason


def reason_name(reason: Reason) -> str:
    return reason.name.lower()


@dataclass(frozen=True, slots=True)
class FrameRecord:
    """The fate of one frame."""

    pts: int
    captured_at: float
    status: Outcome
    reason: Reason | None = None  # None for a result
    latency_ms: float | None = None  # capture → answer, on the client's clock
    encode_ms: float = 0.0
    size_bytes: int = 0
    keyframe: bool = False
    decode_ms: float = 0.0  # server stages
    queue_ms: float = 0.0
    infer_ms: float = 0.0
    server_ms: float = 0.0
    detections: tuple[p.Detection, ...] = ()

    @property
    def dropped(self) -> bool:
        return self.status is not Outcome.RESULT

    @property
    def overhead_ms(self) -> float | None:
        """Latency not spent computing: transport, queues, scheduling, Python."""
        if self.latency_ms is None or self.status is not Outcome.RESULT:
            return None
        return self.latency_ms - self.encode_ms - self.decode_ms - self.infer_ms


@dataclass(frozen=True, slots=True)
class Settled(Generic[P]):
    """A pending frame's record, with the payload the caller gave ``sent`` (or None)."""

    record: FrameRecord
    payload: P | None


@dataclass(slots=True)
class _Sent(Generic[P]):
    captured_at: float
    encode_ms: float
    size_bytes: int
    keyframe: bool
    scale: tuple[float, float]  # streamed frame → requested frame (the stream may be scaled)
    payload: P | None  # kept for the caller (e.g. the frame to annotate), else None


def _scaled(
    detections: tuple[p.Detection, ...], scale: tuple[float, float]
) -> tuple[p.Detection, ...]:
    sx, sy = scale
    if sx == 1.0 and sy == 1.0:
        return detections
    return tuple(
        replace(d, x1=d.x1 * sx, y1=d.y1 * sy, x2=d.x2 * sx, y2=d.y2 * sy) for d in detections
    )


def skipped(pts: int, captured_at: float, reason: ClientReason) -> FrameRecord:
    """A frame never sent: skipped at capture, thinned, or encoded but unsent."""
    return FrameRecord(pts, captured_at, Outcome.SKIPPED, reason=reason)


class ResultMatcher(Generic[P]):
    """Remembers sent frames (and their payloads) until their answer arrives."""

    def __init__(self, *, max_pending: int = 1024) -> None:
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        self.max_pending = max_pending
        self._pending: OrderedDict[int, _Sent[P]] = OrderedDict()
        self.unmatched = 0  # answers for pts we never sent (or already settled)

    def __len__(self) -> int:
        return len(self._pending)

    def oldest_captured_at(self) -> float | None:
        """Capture time of the oldest frame in flight (for the caller's expiry timer)."""
        if not self._pending:
            return None
        return next(iter(self._pending.values())).captured_at

    def sent(
        self,
        pts: int,
        captured_at: float,
        *,
        encode_ms: float,
        size_bytes: int,
        keyframe: bool,
        scale: tuple[float, float] = (1.0, 1.0),
        payload: P | None = None,
    ) -> list[Settled[P]]:
        """Record a sent frame. Returns the frames evicted as lost to keep the bound.

        ``scale`` maps the streamed frame's pixels to the frame size the user asked for,
        so boxes stay in one coordinate system while adaptation changes the stream's size.
        A pts sent again (a bug upstream) settles the earlier one as lost.
        """
        evicted = []
        earlier = self._pending.pop(pts, None)
        if earlier is not None:
            evicted.append(self._settle(pts, earlier, Outcome.LOST, ClientReason.NO_ANSWER))
        self._pending[pts] = _Sent(captured_at, encode_ms, size_bytes, keyframe, scale, payload)
        while len(self._pending) > self.max_pending:
            old_pts, old = self._pending.popitem(last=False)
            evicted.append(self._settle(old_pts, old, Outcome.LOST, ClientReason.TOO_MANY_PENDING))
        return evicted

    def on_result(self, result: p.Result, now: float) -> Settled[P] | None:
        sent = self._pending.pop(result.pts, None)
        if sent is None:
            self.unmatched += 1
            return None
        return self._settle(
            result.pts,
            sent,
            Outcome.RESULT,
            latency_ms=(now - sent.captured_at) * 1000,
            decode_ms=result.decode_us / 1000,
            queue_ms=result.queue_us / 1000,
            infer_ms=result.infer_us / 1000,
            server_ms=result.total_us / 1000,
            detections=_scaled(result.detections, sent.scale),
        )

    def on_dropped(self, dropped: p.Dropped, now: float) -> Settled[P] | None:
        sent = self._pending.pop(dropped.pts, None)
        if sent is None:
            self.unmatched += 1
            return None
        return self._settle(
            dropped.pts,
            sent,
            Outcome.DROPPED,
            dropped.reason,
            latency_ms=(now - sent.captured_at) * 1000,
        )

    def expire(self, now: float, timeout_s: float) -> list[Settled[P]]:
        """Give up on frames unanswered for longer than ``timeout_s``."""
        expired = []
        while self._pending:
            pts, sent = next(iter(self._pending.items()))
            if now - sent.captured_at <= timeout_s:
                break
            del self._pending[pts]
            expired.append(self._settle(pts, sent, Outcome.LOST, ClientReason.NO_ANSWER))
        return expired

    def abandon(self, reason: ClientReason = ClientReason.CONNECTION_CLOSED) -> list[Settled[P]]:
        """Everything still pending, as lost (the connection ended)."""
        settled = [
            self._settle(pts, sent, Outcome.LOST, reason) for pts, sent in self._pending.items()
        ]
        self._pending.clear()
        return settled

    @staticmethod
    def _settle(
        pts: int, sent: _Sent[P], status: Outcome, reason: Reason | None = None, **fields: Any
    ) -> Settled[P]:
        record = FrameRecord(
            pts,
            sent.captured_at,
            status,
            reason,
            encode_ms=sent.encode_ms,
            size_bytes=sent.size_bytes,
            keyframe=sent.keyframe,
            **fields,
        )
        return Settled(record, sent.payload)
