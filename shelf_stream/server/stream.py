"""The stream ledger: every pts of one stream, from its arrival to its one answer.

Sans-I/O, like ``protocol.py`` (and aioquic's connection for its timers): the session
tells the ledger what happened, with the time passed in, and carries out what the
ledger asks for. Nothing here waits, reads a clock or touches a socket, so tests drive
it with literal events and a fake clock through every drop path.

In: ``on_video``, ``on_probe`` (from the receiver), ``on_decoded`` (the decoder
worker's answer for one access unit, or for the end-of-stream flush), ``on_inferred``
(a frame leaving the scheduler), ``on_timer(now)`` (when ``get_timer()`` is due) and
``on_end()`` (the stream is over: the decoder and the scheduler are drained).

Out: actions, taken in order with ``next_action()``: ``Decode`` (hand an access unit
to the decoder worker), ``Infer`` (offer a decoded frame to the scheduler), ``Send``
(a message for the client) and ``Warn`` (something the operator should read, at most
once per stream and cause).

The ledger is the only place that answers a pts, and it answers each exactly once:
an answer pops the pts from the unanswered table, and nothing else emits a Result or
a Dropped. Every drop reason is a ``protocol.DropReason`` by the time it gets here,
or a ``DecodeDrop`` mapped by an exhaustive match (``wire_reason``).

Peer input that ends the stream raises ``RemoteProtocolError`` from the input method
(h11's rule): a pts sent twice, or pictures larger than the Hello announced, again and
again. The actions queued before the error (the answers so far) are still valid.
"""

from __future__ import annotations

import enum
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import assert_never

from shelf_stream import protocol as p
from shelf_stream.codec import nal
from shelf_stream.codec.recovery import DecodeDrop
from shelf_stream.engine.base import Detections, PreparedImage
from shelf_stream.errors import CodecError, RemoteProtocolError
from shelf_stream.server.geometry import PictureBudget, access_unit_sps
from shelf_stream.server.scheduler import InferenceDone, PendingFrame

#: Access units decoded without a picture yet. A zero-delay decoder gives each one its
#: picture at once (a camera's B-frames a few later); after this many (H.265's largest
#: picture buffer) without any, the oldest will get none: answered NO_FRAME, so the
#: table stays bounded.
MAX_DECODER_DELAY = 16


@dataclass(frozen=True, slots=True, kw_only=True)
class LedgerConfig:
    feedback_interval_s: float = 0.1  # arrival reports for the client's rate control
    keyframe_request_interval_s: float = 0.3  # at most one keyframe request per interval
    #: Pictures larger than the Hello's size before the stream is closed with an Error.
    max_size_mismatches: int = 5


class Cause(enum.Enum):
    """What a ``Warn`` is about; each is said at most once per stream."""

    SIZE_MISMATCH = "size_mismatch"
    UNREADABLE_SPS = "unreadable_sps"


# ------------------------------------------------------------------------- inputs


@dataclass(frozen=True, slots=True)
class Picture:
    """One picture out of the decoder, letterboxed unless it is larger than the budget."""

    pts: int
    width: int
    height: int
    prepared: PreparedImage | None = field(repr=False)  # None: too large, not prepared


@dataclass(frozen=True, slots=True)
class Decoded:
    """The decoder worker's answer for one access unit (``pts``) or the flush (None)."""

    pts: int | None
    drop: DecodeDrop | None
    request_keyframe: bool
    pictures: tuple[Picture, ...]
    decoded_at: float


# ------------------------------------------------------------------------ actions


@dataclass(frozen=True, slots=True)
class Decode:
    """Hand ``video`` to the decoder worker. ``fresh_decoder``: the ledger refused the
    access units before it, so decode it with a new decoder (no gap, no old state)."""

    video: p.Video
    fresh_decoder: bool = False


@dataclass(frozen=True, slots=True)
class Infer:
    """Offer a decoded frame to the scheduler."""

    frame: PendingFrame


@dataclass(frozen=True, slots=True)
class ResultReady:
    """A Result waiting to be sent; its total time is stamped when it is written."""

    pts: int
    capture_us: int
    decode_us: int
    queue_us: int
    infer_us: int
    received_at: float
    ready_at: float  # inference finished: the send stage starts here
    detections: tuple[p.Detection, ...]

    def finish(self, now: float) -> p.Result:
        return p.Result(
            self.pts,
            self.capture_us,
            self.decode_us,
            self.queue_us,
            self.infer_us,
            _us(now - self.received_at),
            self.detections,
        )


Message = ResultReady | p.Dropped | p.KeyframeRequest | p.Feedback | p.ProbeAck


@dataclass(frozen=True, slots=True)
class Send:
    """A message for the client, in this order."""

    message: Message


@dataclass(frozen=True, slots=True)
class Warn:
    cause: Cause
    message: str


Action = Decode | Infer | Send | Warn


@dataclass(slots=True)
class LedgerStats:
    frames_in: int = 0
    bytes_in: int = 0
    results: int = 0
    dropped_by_reason: Counter[p.DropReason] = field(default_factory=Counter)
    decode_errors: int = 0
    keyframe_requests: int = 0
    size_mismatches: int = 0

    @property
    def dropped(self) -> int:
        return sum(self.dropped_by_reason.values())


@dataclass(frozen=True, slots=True)
class _Entry:
    capture_us: int
    received_at: float


# --------------------------------------------------------------------- the ledger


class StreamLedger:
    """Every pts of one stream, unanswered until its one Result or Dropped."""

    def __init__(self, stream_id: int, hello: p.Hello, config: LedgerConfig) -> None:
        self.stream_id = stream_id
        self.codec = hello.codec
        self.budget = PictureBudget(hello.width, hello.height)
        self.config = config
        self.stats = LedgerStats()
        self._unanswered: dict[int, _Entry] = {}
        # pts decoded without a picture yet, in decode order (a dict: ordered, and a
        # picture leaves it wherever it is: B-frames come out in another order).
        self._decoder_pending: dict[int, None] = {}
        self._last_keyframe_request: float | None = None
        self._arrivals: list[tuple[int, int]] = []  # (seq, arrival µs) for the next Feedback
        self._feedback_due: float | None = None
        # While set, access units are refused here (answered with this reason) until a
        # keyframe whose SPS fits: what follows a refused SPS cannot be decoded.
        self._refusing: p.DropReason | None = None
        self._fresh_decoder = False
        self._warned: set[Cause] = set()
        self._actions: deque[Action] = deque()

    # ----------------------------------------------------------------- queries

    def get_timer(self) -> float | None:
        """When ``on_timer`` is next due (the clock of the times passed in), or None."""
        return self._feedback_due

    @property
    def unanswered(self) -> int:
        return len(self._unanswered)

    def is_unanswered(self, pts: int) -> bool:
        return pts in self._unanswered

    def next_action(self) -> Action | None:
        """The oldest action not taken yet (each is returned once)."""
        return self._actions.popleft() if self._actions else None

    # ------------------------------------------------------------------ inputs

    def on_video(self, video: p.Video, now: float) -> None:
        """A Video message arrived at ``now``."""
        if video.pts in self._unanswered:
            raise RemoteProtocolError(
                f"pts {video.pts} was sent twice; every frame needs its own pts"
            )
        self.stats.frames_in += 1
        self.stats.bytes_in += len(video.data)
        self._unanswered[video.pts] = _Entry(video.capture_us, now)
        self._note_arrival(video.seq, now)
        refusal = self._check_parameter_sets(video)
        if refusal is None:
            self._emit(Decode(video, self._fresh_decoder))
            self._fresh_decoder = False
            return
        self._answer(video.pts, refusal)
        if refusal is p.DropReason.SIZE_MISMATCH:
            self._count_size_mismatch()
        elif refusal is p.DropReason.INVALID:
            self._request_keyframe(p.KeyframeReason.DECODE_ERROR, now)

    def on_probe(self, probe: p.Probe, size: int, now: float) -> None:
        """Echo a probe at once, with its arrival on our clock (the client uses the
        spread of arrivals in a burst, never our absolute time)."""
        self._emit(Send(p.ProbeAck(probe.probe_id, probe.send_us, _us(now), size)))

    def on_decoded(self, decoded: Decoded) -> None:
        if decoded.pts is not None:
            if decoded.drop is not None:
                if decoded.drop is DecodeDrop.DECODE_ERROR:
                    self.stats.decode_errors += 1
                self._answer(decoded.pts, wire_reason(decoded.drop))
                if decoded.request_keyframe:
                    self._request_keyframe(keyframe_reason(decoded.drop), decoded.decoded_at)
            elif decoded.pts in self._unanswered:
                self._decoder_pending[decoded.pts] = None
        for picture in decoded.pictures:
            self._on_picture(picture, decoded.decoded_at)
        while len(self._decoder_pending) > MAX_DECODER_DELAY:
            oldest = next(iter(self._decoder_pending))
            del self._decoder_pending[oldest]
            self._answer(oldest, p.DropReason.NO_FRAME)

    def on_inferred(self, done: InferenceDone) -> None:
        """A frame left the scheduler: inferred, or dropped there."""
        frame = done.frame
        entry = self._unanswered.get(frame.pts)
        if entry is None:
            return
        if isinstance(done.outcome, p.DropReason):
            self._answer(frame.pts, done.outcome)
            return
        del self._unanswered[frame.pts]
        self.stats.results += 1
        result = ResultReady(
            frame.pts,
            entry.capture_us,
            decode_us=_us(frame.decoded_at - frame.received_at),
            queue_us=_us(done.started - frame.decoded_at),
            infer_us=_us(done.finished - done.started),
            received_at=frame.received_at,
            ready_at=done.finished,
            detections=_wire_detections(done.outcome),
        )
        self._emit(Send(result))

    def on_timer(self, now: float) -> None:
        if self._feedback_due is not None and now >= self._feedback_due:
            self._send_feedback()

    def on_end(self) -> None:
        """The stream is over and drained: what is still unanswered got no picture."""
        for pts in list(self._unanswered):
            self._answer(pts, p.DropReason.NO_FRAME)
        self._decoder_pending.clear()
        self._arrivals.clear()
        self._feedback_due = None

    # ---------------------------------------------------------------- geometry

    def _check_parameter_sets(self, video: p.Video) -> p.DropReason | None:
        """Refuse an access unit whose SPS asks for more than the Hello's size (before
        the decoder allocates it), and what follows it until a keyframe that fits."""
        if self.codec not in nal.ANNEX_B_CODECS:
            return None  # intra-only codecs: the decoded size is checked instead
        try:
            sizes = access_unit_sps(self.codec, video.data)
        except CodecError as exc:
            self._warn(Cause.UNREADABLE_SPS, f"an access unit has an unreadable SPS ({exc})")
            self._start_refusing(p.DropReason.AWAITING_KEYFRAME)
            return p.DropReason.INVALID
        too_large = [size for size in sizes if not self.budget.admits_sps(size)]
        if too_large:
            self._warn(
                Cause.SIZE_MISMATCH,
                f"its SPS asks for {too_large[0]} pictures, larger than the "
                f"{self.budget} its hello announced; answering them size_mismatch",
            )
            self._start_refusing(p.DropReason.SIZE_MISMATCH)
            return p.DropReason.SIZE_MISMATCH
        if self._refusing is not None:
            if sizes and nal.is_keyframe(self.codec, video.data):
                self._refusing = None  # a keyframe that fits: decoding starts afresh
                return None
            return self._refusing
        return None

    def _start_refusing(self, reason: p.DropReason) -> None:
        self._refusing = reason
        self._fresh_decoder = True

    def _on_picture(self, picture: Picture, decoded_at: float) -> None:
        self._settle_decoder_pending(picture.pts)
        entry = self._unanswered.get(picture.pts)
        if entry is None:
            return  # a decoder-invented pts: nobody asked for it
        if picture.prepared is None or not self.budget.admits(picture.width, picture.height):
            self._warn(
                Cause.SIZE_MISMATCH,
                f"it sent {picture.width}x{picture.height} pictures, larger than the "
                f"{self.budget} its hello announced; answering them size_mismatch",
            )
            self._answer(picture.pts, p.DropReason.SIZE_MISMATCH)
            self._count_size_mismatch()
            return
        frame = PendingFrame(
            stream_id=self.stream_id,
            pts=picture.pts,
            capture_us=entry.capture_us,
            received_at=entry.received_at,
            decoded_at=decoded_at,
            prepared=picture.prepared,
        )
        self._emit(Infer(frame))

    def _count_size_mismatch(self) -> None:
        self.stats.size_mismatches += 1
        if self.stats.size_mismatches >= self.config.max_size_mismatches:
            raise RemoteProtocolError(
                f"{self.stats.size_mismatches} pictures were larger than the {self.budget} "
                "the hello announced; announce the size you send",
                code=p.ErrorCode.LIMIT_EXCEEDED,
                close_code=p.ErrorCode.LIMIT_EXCEEDED.close_code,
            )

    # --------------------------------------------------------------- answering

    def _settle_decoder_pending(self, pts: int) -> None:
        """Pictures come out in display order, by pts: a pts below this picture's still
        without a picture will get none, wherever it was in decode order."""
        self._decoder_pending.pop(pts, None)
        for missing in [waiting for waiting in self._decoder_pending if waiting < pts]:
            del self._decoder_pending[missing]
            self._answer(missing, p.DropReason.NO_FRAME)

    def _answer(self, pts: int, reason: p.DropReason) -> None:
        entry = self._unanswered.pop(pts, None)
        if entry is None:
            return
        self.stats.dropped_by_reason[reason] += 1
        self._emit(Send(p.Dropped(pts, entry.capture_us, reason)))

    def _request_keyframe(self, reason: p.KeyframeReason, now: float) -> None:
        last = self._last_keyframe_request
        if last is not None and now - last < self.config.keyframe_request_interval_s:
            return
        self._last_keyframe_request = now
        self.stats.keyframe_requests += 1
        self._emit(Send(p.KeyframeRequest(reason)))

    def _note_arrival(self, seq: int, now: float) -> None:
        self._arrivals.append((seq, _us(now)))
        if len(self._arrivals) >= p.MAX_FEEDBACK_ENTRIES:
            self._send_feedback()
        elif self._feedback_due is None:
            self._feedback_due = now + self.config.feedback_interval_s

    def _send_feedback(self) -> None:
        if self._arrivals:
            self._emit(Send(p.Feedback(tuple(self._arrivals))))
        self._arrivals = []
        self._feedback_due = None

    def _warn(self, cause: Cause, message: str) -> None:
        if cause not in self._warned:
            self._warned.add(cause)
            self._emit(Warn(cause, message))

    def _emit(self, action: Action) -> None:
        self._actions.append(action)


def wire_reason(drop: DecodeDrop) -> p.DropReason:
    """The Dropped reason of an access unit the decoder dropped."""
    match drop:
        case DecodeDrop.DECODE_ERROR:
            return p.DropReason.DECODE_ERROR
        case DecodeDrop.GAP:
            return p.DropReason.GAP
        case DecodeDrop.INVALID:
            return p.DropReason.INVALID
        case DecodeDrop.AWAITING_KEYFRAME:
            return p.DropReason.AWAITING_KEYFRAME
    assert_never(drop)


def keyframe_reason(drop: DecodeDrop) -> p.KeyframeReason:
    """Why we ask for a keyframe after the decoder dropped an access unit."""
    match drop:
        case DecodeDrop.DECODE_ERROR | DecodeDrop.INVALID:
            return p.KeyframeReason.DECODE_ERROR
        case DecodeDrop.GAP:
            return p.KeyframeReason.GAP
        case DecodeDrop.AWAITING_KEYFRAME:
            return p.KeyframeReason.STILL_WAITING
    assert_never(drop)


def _wire_detections(detections: Detections) -> tuple[p.Detection, ...]:
    return tuple(
        p.Detection(int(class_id), float(score), x1, y1, x2, y2)
        for (x1, y1, x2, y2), score, class_id in zip(
            detections.boxes.tolist(),
            detections.scores.tolist(),
            detections.class_ids.tolist(),
            strict=True,
        )
    )


def _us(seconds: float) -> int:
    return max(0, round(seconds * 1_000_000))
