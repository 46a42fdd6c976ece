"""shelf-stream wire protocol, version 1. Sans-I/O: bytes in, events out.

Every message, in both directions, is one binary record::

    offset  size  field
    0       1     type     (MessageType)
    1       1     flags    (bit 0 of a Video message: keyframe; others: 0)
    2       4     length   (big-endian u32: bytes of body that follow)
    6       n     body

Over a WebSocket each record is one binary message (``receive_message``); over a plain
byte stream records simply follow each other (``receive_data``), which is also how
the parser is tested byte by byte. All integers are big-endian.

Bodies:

* Hello (client → server), Ready (server → client): a UTF-8 JSON object.
* Video (client → server): ``seq u32, pts i64, capture_us i64`` then the access unit
  (Annex-B bytes). ``seq`` counts access units from 0, so the server sees a missing one;
  ``pts`` is in a 1/90000 s time base (``TIME_BASE_HZ``); ``capture_us`` is the client's
  own clock and is echoed back untouched.
* Result (server → client): ``pts i64, capture_us i64, decode_us u32, queue_us u32,
  infer_us u32, total_us u32, count u16`` then ``count`` detections of
  ``class_id u16, score f32, x1 f32, y1 f32, x2 f32, y2 f32`` in source-frame pixels.
  Stage durations are measured on the server's clock, never absolute times, so no
  clock sync is needed.
* Dropped (server → client): ``pts i64, capture_us i64, reason u8`` (DropReason). A
  stream may send pictures smaller than its Hello's size (a client adapting to its
  link), never larger: those are answered SIZE_MISMATCH, and a stream that keeps
  sending them gets an Error (LIMIT_EXCEEDED).
* KeyframeRequest (server → client): ``reason u8`` (KeyframeReason).
* Error (both ways): ``code u16`` (ErrorCode) then UTF-8 text.
* Bye (client → server): empty; the client sends no more video, the server answers
  every pending pts and then closes normally.
* Feedback (server → client), every ``feedback_interval_ms`` while video flows:
  ``count u16`` then ``count`` pairs of ``seq u32, arrival_us i64``: when each Video
  message arrived, on the server's clock. The client compares arrival spacing with its
  own send spacing (one-way delay variation, as WebRTC's GCC does), so no clock sync
  is needed.
* Probe (client → server), before streaming: ``probe_id u32, send_us i64`` then
  padding; the server answers each at once with ProbeAck (server → client):
  ``probe_id u32, send_us i64 (echoed), arrival_us i64 (server clock), size u32``.
  RTT comes from the echo, throughput from the arrival spread of a burst.

Every pts the client sends gets exactly one Result or Dropped.
"""

from __future__ import annotations

import enum
import json
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

from shelf_stream.errors import LocalProtocolError, RemoteProtocolError

PROTOCOL_VERSION = 1
#: Denominator of the only time base protocol version 1 knows (90 kHz).
TIME_BASE_HZ = 90_000

HEADER = struct.Struct("!BBI")
VIDEO_HEADER = struct.Struct("!Iqq")
RESULT_HEADER = struct.Struct("!qqIIIIH")
DETECTION = struct.Struct("!Hfffff")
DROPPED = struct.Struct("!qqB")
REASON = struct.Struct("!B")
ERROR_CODE = struct.Struct("!H")
FEEDBACK_COUNT = struct.Struct("!H")
FEEDBACK_ENTRY = struct.Struct("!Iq")
PROBE = struct.Struct("!Iq")
PROBE_ACK = struct.Struct("!IqqI")
MAX_FEEDBACK_ENTRIES = 1024

FLAG_KEYFRAME = 0x01

DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
MAX_JSON_BYTES = 64 * 1024
MAX_ERROR_TEXT_BYTES = 1024
MAX_TOKEN_CHARS = 512
MAX_CLIENT_CHARS = 100
_U32 = 2**32 - 1


class MessageType(enum.IntEnum):
    HELLO = 1
    READY = 2
    VIDEO = 3
    RESULT = 4
    DROPPED = 5
    KEYFRAME_REQUEST = 6
    ERROR = 7
    FEEDBACK = 8
    BYE = 9
    PROBE = 10
    PROBE_ACK = 11


class ErrorCode(enum.IntEnum):
    """Error codes of the Error message, each with the WebSocket close code that follows."""

    PROTOCOL = 1  # malformed message
    UNSUPPORTED_VERSION = 2
    UNSUPPORTED_CODEC = 3
    BAD_HELLO = 4
    MESSAGE_TOO_LARGE = 5
    UNAUTHORIZED = 6
    UNEXPECTED_MESSAGE = 7
    LIMIT_EXCEEDED = 8
    SERVER_BUSY = 9
    INTERNAL = 10

    @property
    def close_code(self) -> int:
        return _CLOSE_CODES.get(self, 1002)


_CLOSE_CODES = {
    ErrorCode.UNSUPPORTED_CODEC: 1003,
    ErrorCode.MESSAGE_TOO_LARGE: 1009,
    ErrorCode.UNAUTHORIZED: 1008,
    ErrorCode.LIMIT_EXCEEDED: 1008,
    ErrorCode.SERVER_BUSY: 1013,
    ErrorCode.INTERNAL: 1011,
}


class DropReason(enum.IntEnum):
    """Why the server answered a pts with Dropped instead of a Result."""

    DECODE_ERROR = 1  # the access unit failed to decode
    AWAITING_KEYFRAME = 2  # after an error or gap, frames until the next keyframe
    SUPERSEDED = 3  # a newer decoded frame of the stream replaced it before inference
    TOO_OLD = 4  # it waited longer than the server's max frame age
    SHUTDOWN = 5  # the server or stream stopped before it was processed
    GAP = 6  # an earlier access unit is missing
    INVALID = 7  # the access unit is not valid Annex-B for the codec
    NO_FRAME = 8  # the decoder produced no picture for it
    INFERENCE_ERROR = 9  # the detector failed on it
    SIZE_MISMATCH = 10  # its picture is larger than the size the Hello announced


class KeyframeReason(enum.IntEnum):
    DECODE_ERROR = 1
    GAP = 2
    STREAM_START = 3
    STILL_WAITING = 4


# ---------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class Hello:
    codec: str
    width: int
    height: int
    fps: float
    token: str | None = None
    client: str = ""
    version: int = PROTOCOL_VERSION


@dataclass(frozen=True, slots=True)
class Ready:
    session: str
    model: str
    class_names: tuple[str, ...]
    max_message_bytes: int
    max_width: int
    max_height: int
    max_fps: float
    version: int = PROTOCOL_VERSION


@dataclass(frozen=True, slots=True)
class Video:
    seq: int
    pts: int
    capture_us: int
    keyframe: bool
    data: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Detection:
    class_id: int
    score: float
    x1: float
    y1: float
    x2: float
    y2: float
    label: str = ""


@dataclass(frozen=True, slots=True)
class Result:
    pts: int
    capture_us: int
    decode_us: int  # received → decoded
    queue_us: int  # decoded → inference start
    infer_us: int  # inference (incl. pre/post-processing)
    total_us: int  # received → sent
    detections: tuple[Detection, ...] = ()


@dataclass(frozen=True, slots=True)
class Dropped:
    pts: int
    capture_us: int
    reason: DropReason


@dataclass(frozen=True, slots=True)
class KeyframeRequest:
    reason: KeyframeReason


@dataclass(frozen=True, slots=True)
class Error:
    code: ErrorCode
    message: str


@dataclass(frozen=True, slots=True)
class Bye:
    pass


@dataclass(frozen=True, slots=True)
class Feedback:
    """Arrival times (server clock, µs) of Video messages, by their seq."""

    arrivals: tuple[tuple[int, int], ...]  # (seq, arrival_us)


@dataclass(frozen=True, slots=True)
class Probe:
    probe_id: int
    send_us: int  # client clock
    padding: int = 0  # bytes of padding after the header


@dataclass(frozen=True, slots=True)
class ProbeAck:
    probe_id: int
    send_us: int  # echoed from the Probe
    arrival_us: int  # server clock
    size: int  # bytes of the Probe message as received


Event = (
    Hello
    | Ready
    | Video
    | Result
    | Dropped
    | KeyframeRequest
    | Error
    | Bye
    | Feedback
    | Probe
    | ProbeAck
)


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerLimits:
    """What a server accepts in a Hello; sent back to the client in Ready."""

    codecs: tuple[str, ...] = ("hevc", "h264")
    max_width: int = 3840
    max_height: int = 2160
    max_fps: float = 120.0
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES


# --------------------------------------------------------------------------- encoding


def _record(kind: MessageType, body: bytes, flags: int = 0) -> bytes:
    return HEADER.pack(kind, flags, len(body)) + body


def _json_body(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()


def encode_event(event: Event) -> bytes:
    """Serialise one event (no state checks; see the connection classes for those)."""
    match event:
        case Hello():
            hello: dict[str, Any] = {
                "protocol": event.version,
                "codec": event.codec,
                "width": event.width,
                "height": event.height,
                "fps": event.fps,
                "time_base": [1, TIME_BASE_HZ],
                "client": event.client[:MAX_CLIENT_CHARS],
            }
            if event.token is not None:
                hello["token"] = event.token
            return _record(MessageType.HELLO, _json_body(hello))
        case Ready():
            ready = {
                "protocol": event.version,
                "session": event.session,
                "model": event.model,
                "class_names": list(event.class_names),
                "max_message_bytes": event.max_message_bytes,
                "max_width": event.max_width,
                "max_height": event.max_height,
                "max_fps": event.max_fps,
            }
            return _record(MessageType.READY, _json_body(ready))
        case Video():
            head = VIDEO_HEADER.pack(event.seq, event.pts, event.capture_us)
            flags = FLAG_KEYFRAME if event.keyframe else 0
            return (
                HEADER.pack(MessageType.VIDEO, flags, len(head) + len(event.data))
                + head
                + (event.data)
            )
        case Result():
            return encode_result(event)
        case Dropped():
            body = DROPPED.pack(event.pts, event.capture_us, event.reason)
            return _record(MessageType.DROPPED, body)
        case KeyframeRequest():
            return _record(MessageType.KEYFRAME_REQUEST, REASON.pack(event.reason))
        case Error():
            text = event.message.encode()[:MAX_ERROR_TEXT_BYTES].decode(errors="ignore")
            return _record(MessageType.ERROR, ERROR_CODE.pack(event.code) + text.encode())
        case Bye():
            return _record(MessageType.BYE, b"")
        case Feedback():
            body = FEEDBACK_COUNT.pack(len(event.arrivals)) + b"".join(
                FEEDBACK_ENTRY.pack(seq, arrival) for seq, arrival in event.arrivals
            )
            return _record(MessageType.FEEDBACK, body)
        case Probe():
            head = PROBE.pack(event.probe_id, event.send_us)
            return _record(MessageType.PROBE, head + bytes(event.padding))
        case ProbeAck():
            body = PROBE_ACK.pack(event.probe_id, event.send_us, event.arrival_us, event.size)
            return _record(MessageType.PROBE_ACK, body)
    raise LocalProtocolError(f"not a protocol event: {event!r}")


def encode_result(event: Result) -> bytes:
    parts = [
        RESULT_HEADER.pack(
            event.pts,
            event.capture_us,
            _clamp_u32(event.decode_us),
            _clamp_u32(event.queue_us),
            _clamp_u32(event.infer_us),
            _clamp_u32(event.total_us),
            len(event.detections),
        )
    ]
    parts.extend(
        DETECTION.pack(d.class_id, d.score, d.x1, d.y1, d.x2, d.y2) for d in event.detections
    )
    return _record(MessageType.RESULT, b"".join(parts))


def _clamp_u32(value: int) -> int:
    return min(max(int(value), 0), _U32)


# --------------------------------------------------------------------------- decoding


def _fail(message: str, code: ErrorCode = ErrorCode.PROTOCOL) -> RemoteProtocolError:
    return RemoteProtocolError(message, code=int(code), close_code=code.close_code)


def _parse_json(body: bytes, what: str) -> dict[str, Any]:
    if len(body) > MAX_JSON_BYTES:
        raise _fail(f"{what} is {len(body)} bytes; at most {MAX_JSON_BYTES} allowed")
    try:
        obj = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _fail(f"{what} is not valid UTF-8 JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise _fail(f"{what} must be a JSON object")
    return obj


def _field(obj: dict[str, Any], name: str, kind: type | tuple[type, ...], what: str) -> Any:
    value = obj.get(name)
    # bool is an int subclass; a JSON true is never a valid number here.
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
        expected = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise _fail(f"{what}: field {name!r} must be {expected}, got {value!r:.40}")
    return value


def _float_field(obj: dict[str, Any], name: str, what: str) -> float:
    value = _field(obj, name, (int, float), what)
    try:
        return float(value)
    except OverflowError:  # an integer beyond any float: as far out as it gets
        return math.inf if value > 0 else -math.inf


def parse_hello(body: bytes, limits: ServerLimits) -> Hello:
    obj = _parse_json(body, "hello")
    version = _field(obj, "protocol", int, "hello")
    if version != PROTOCOL_VERSION:
        raise _fail(
            f"protocol version {version} is not supported; this server speaks {PROTOCOL_VERSION}",
            ErrorCode.UNSUPPORTED_VERSION,
        )
    codec = _field(obj, "codec", str, "hello")
    if codec not in limits.codecs:
        raise _fail(
            f"codec {codec!r:.40} is not supported; use one of {', '.join(limits.codecs)}",
            ErrorCode.UNSUPPORTED_CODEC,
        )
    width = _field(obj, "width", int, "hello")
    height = _field(obj, "height", int, "hello")
    fps = _float_field(obj, "fps", "hello")
    _check_geometry(width, height, fps, limits)
    time_base = obj.get("time_base", [1, TIME_BASE_HZ])
    # type() and not ==: JSON true would compare equal to 1.
    if (
        not isinstance(time_base, list)
        or [type(v) for v in time_base] != [int, int]
        or (time_base != [1, TIME_BASE_HZ])
    ):
        raise _fail(
            f"hello: time_base must be [1, {TIME_BASE_HZ}] in protocol {PROTOCOL_VERSION}",
            ErrorCode.BAD_HELLO,
        )
    token = obj.get("token")
    if token is not None and (not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS):
        raise _fail("hello: token must be a string of at most 512 characters", ErrorCode.BAD_HELLO)
    client = obj.get("client", "")
    if not isinstance(client, str):
        raise _fail("hello: client must be a string", ErrorCode.BAD_HELLO)
    return Hello(codec, width, height, fps, token=token, client=client[:MAX_CLIENT_CHARS])


def _check_geometry(width: int, height: int, fps: float, limits: ServerLimits) -> None:
    if width <= 0 or height <= 0 or width % 2 or height % 2:
        raise _fail(
            f"hello: {width}x{height} is not a valid 4:2:0 frame size (positive, even)",
            ErrorCode.BAD_HELLO,
        )
    if width > limits.max_width or height > limits.max_height:
        raise _fail(
            f"hello: {width}x{height} exceeds this server's limit of "
            f"{limits.max_width}x{limits.max_height}",
            ErrorCode.LIMIT_EXCEEDED,
        )
    if not (math.isfinite(fps) and 0 < fps <= limits.max_fps):
        raise _fail(
            f"hello: frame rate {fps} must be above 0 and at most {limits.max_fps}",
            ErrorCode.LIMIT_EXCEEDED,
        )


def parse_ready(body: bytes) -> Ready:
    obj = _parse_json(body, "ready")
    version = _field(obj, "protocol", int, "ready")
    if version != PROTOCOL_VERSION:
        raise _fail(f"server speaks protocol {version}, we speak {PROTOCOL_VERSION}")
    names = _field(obj, "class_names", list, "ready")
    if not all(isinstance(name, str) for name in names):
        raise _fail("ready: class_names must be strings")
    max_fps = _float_field(obj, "max_fps", "ready")
    if not math.isfinite(max_fps):
        raise _fail(f"ready: max_fps must be finite, got {max_fps}")
    return Ready(
        session=str(_field(obj, "session", str, "ready")),
        model=str(_field(obj, "model", str, "ready")),
        class_names=tuple(names),
        max_message_bytes=_field(obj, "max_message_bytes", int, "ready"),
        max_width=_field(obj, "max_width", int, "ready"),
        max_height=_field(obj, "max_height", int, "ready"),
        max_fps=max_fps,
    )


def parse_video(flags: int, body: bytes) -> Video:
    if len(body) <= VIDEO_HEADER.size:
        raise _fail(f"video message of {len(body)} bytes carries no access unit")
    if flags & ~FLAG_KEYFRAME:
        raise _fail(f"video message has unknown flags 0x{flags:02x}")
    seq, pts, capture_us = VIDEO_HEADER.unpack_from(body)
    if pts < 0:
        raise _fail(f"video pts must not be negative, got {pts}")
    return Video(seq, pts, capture_us, bool(flags & FLAG_KEYFRAME), body[VIDEO_HEADER.size :])


def parse_result(body: bytes, class_names: Sequence[str]) -> Result:
    if len(body) < RESULT_HEADER.size:
        raise _fail("result message is truncated")
    pts, capture_us, decode_us, queue_us, infer_us, total_us, count = RESULT_HEADER.unpack_from(
        body
    )
    if len(body) != RESULT_HEADER.size + count * DETECTION.size:
        raise _fail(f"result message length does not match its {count} detections")
    detections = []
    for offset in range(RESULT_HEADER.size, len(body), DETECTION.size):
        class_id, score, x1, y1, x2, y2 = DETECTION.unpack_from(body, offset)
        label = class_names[class_id] if class_id < len(class_names) else f"class_{class_id}"
        detections.append(Detection(class_id, score, x1, y1, x2, y2, label))
    return Result(pts, capture_us, decode_us, queue_us, infer_us, total_us, tuple(detections))


def _parse_enum(enum_type: type[enum.IntEnum], value: int, what: str) -> Any:
    try:
        return enum_type(value)
    except ValueError:
        raise _fail(f"unknown {what} {value}") from None


def parse_dropped(body: bytes) -> Dropped:
    if len(body) != DROPPED.size:
        raise _fail("dropped message has the wrong length")
    pts, capture_us, reason = DROPPED.unpack(body)
    return Dropped(pts, capture_us, _parse_enum(DropReason, reason, "drop reason"))


def parse_keyframe_request(body: bytes) -> KeyframeRequest:
    if len(body) != REASON.size:
        raise _fail("keyframe request has the wrong length")
    return KeyframeRequest(_parse_enum(KeyframeReason, body[0], "keyframe reason"))


def parse_error(body: bytes) -> Error:
    if len(body) < ERROR_CODE.size or len(body) > ERROR_CODE.size + MAX_ERROR_TEXT_BYTES:
        raise _fail("error message has the wrong length")
    (code,) = ERROR_CODE.unpack_from(body)
    text = body[ERROR_CODE.size :].decode("utf-8", errors="replace")
    try:
        error_code = ErrorCode(code)
    except ValueError:
        error_code = ErrorCode.INTERNAL  # a newer peer's code: keep its text, not the stream
    return Error(error_code, text)


def parse_feedback(body: bytes) -> Feedback:
    if len(body) < FEEDBACK_COUNT.size:
        raise _fail("feedback message is truncated")
    (count,) = FEEDBACK_COUNT.unpack_from(body)
    if count > MAX_FEEDBACK_ENTRIES or len(body) != FEEDBACK_COUNT.size + count * (
        FEEDBACK_ENTRY.size
    ):
        raise _fail(f"feedback message length does not match its {count} entries")
    arrivals = tuple(
        FEEDBACK_ENTRY.unpack_from(body, FEEDBACK_COUNT.size + i * FEEDBACK_ENTRY.size)
        for i in range(count)
    )
    return Feedback(arrivals)


def parse_probe(body: bytes) -> Probe:
    if len(body) < PROBE.size:
        raise _fail("probe message is truncated")
    probe_id, send_us = PROBE.unpack_from(body)
    return Probe(probe_id, send_us, len(body) - PROBE.size)


def parse_probe_ack(body: bytes) -> ProbeAck:
    if len(body) != PROBE_ACK.size:
        raise _fail("probe ack has the wrong length")
    return ProbeAck(*PROBE_ACK.unpack(body))


# ------------------------------------------------------------------------ connections


class _State(enum.Enum):
    HANDSHAKE = "handshake"
    STREAMING = "streaming"
    CLOSED = "closed"
    FAILED = "failed"


class _Connection:
    """Framing, size limits and the event queue common to both ends."""

    def __init__(self, *, max_message_bytes: int) -> None:
        self.max_message_bytes = max_message_bytes
        self._buffer = bytearray()
        self._events: list[Event] = []
        self._state = _State.HANDSHAKE

    @property
    def state(self) -> str:
        return self._state.value

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from a byte stream; complete records become events."""
        self._ensure_usable()
        self._buffer += data
        while len(self._buffer) >= HEADER.size:
            kind, flags, length = HEADER.unpack_from(self._buffer)
            self._check_length(length)
            end = HEADER.size + length
            if len(self._buffer) < end:
                return
            body = bytes(self._buffer[HEADER.size : end])
            del self._buffer[:end]
            self._dispatch(kind, flags, body)

    def receive_message(self, message: bytes | str) -> None:
        """Feed one whole WebSocket message: exactly one record, nothing more or less."""
        self._ensure_usable()
        if isinstance(message, str):
            self._failed(_fail("text messages are not part of the protocol; send binary"))
        if len(message) < HEADER.size:
            self._failed(_fail(f"message of {len(message)} bytes is shorter than a header"))
        kind, flags, length = HEADER.unpack_from(message)
        self._check_length(length)
        if len(message) != HEADER.size + length:
            self._failed(
                _fail(f"message is {len(message)} bytes but its header says {HEADER.size + length}")
            )
        self._dispatch(kind, flags, bytes(memoryview(message)[HEADER.size :]))

    def events_received(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    def _ensure_usable(self) -> None:
        if self._state is _State.FAILED:
            raise _fail("the connection already failed; close it")

    def _check_length(self, length: int) -> None:
        if length > self.max_message_bytes:
            self._failed(
                _fail(
                    f"message of {length} bytes exceeds the limit of {self.max_message_bytes}",
                    ErrorCode.MESSAGE_TOO_LARGE,
                )
            )

    def _failed(self, error: RemoteProtocolError) -> NoReturn:
        self._state = _State.FAILED
        self._buffer.clear()
        raise error

    def _dispatch(self, kind: int, flags: int, body: bytes) -> None:
        try:
            event = self._parse(kind, flags, body)
        except RemoteProtocolError as error:
            self._failed(error)
        self._events.append(event)

    def _parse(self, kind: int, flags: int, body: bytes) -> Event:
        raise NotImplementedError

    @staticmethod
    def _no_flags(kind: int, flags: int) -> None:
        if flags:
            raise _fail(f"message type {kind} has unexpected flags 0x{flags:02x}")


class ServerConnection(_Connection):
    """The server's end: expects Hello, then Video until Bye."""

    def __init__(self, limits: ServerLimits | None = None) -> None:
        self.limits = limits or ServerLimits()
        super().__init__(max_message_bytes=self.limits.max_message_bytes)
        self._hello_received = False
        self._ready_sent = False

    def _parse(self, kind: int, flags: int, body: bytes) -> Event:
        if self._state is _State.CLOSED and kind != MessageType.ERROR:
            raise _fail(
                f"message type {kind} after the connection closed", ErrorCode.UNEXPECTED_MESSAGE
            )
        if kind == MessageType.PROBE:
            self._no_flags(kind, flags)
            if self._state is not _State.STREAMING:
                raise _fail("probe before ready", ErrorCode.UNEXPECTED_MESSAGE)
            return parse_probe(body)
        if kind == MessageType.VIDEO:
            if self._state is not _State.STREAMING:
                raise _fail(
                    f"video is not valid in state {self._state.value}", ErrorCode.UNEXPECTED_MESSAGE
                )
            return parse_video(flags, body)
        self._no_flags(kind, flags)
        if kind == MessageType.HELLO:
            if self._hello_received:
                raise _fail("a second hello on one connection", ErrorCode.UNEXPECTED_MESSAGE)
            self._hello_received = True
            return parse_hello(body, self.limits)
        if kind == MessageType.BYE:
            if body:
                raise _fail("bye carries no body")
            self._state = _State.CLOSED
            return Bye()
        if kind == MessageType.ERROR:
            self._state = _State.CLOSED
            return parse_error(body)
        raise _fail(f"message type {kind} is not valid from a client", ErrorCode.UNEXPECTED_MESSAGE)

    def send(self, event: Event) -> bytes:
        """Serialise an event for the client, checking that it is valid now."""
        if isinstance(event, Ready):
            if not self._hello_received or self._state is not _State.HANDSHAKE:
                raise LocalProtocolError("ready is only valid once, after the client's hello")
            self._state = _State.STREAMING
            self._ready_sent = True
        elif isinstance(event, Error):
            self._state = _State.CLOSED
        elif isinstance(event, Result | Dropped | KeyframeRequest | Feedback | ProbeAck):
            if not self._ready_sent:
                raise LocalProtocolError(f"{type(event).__name__} before ready")
        else:
            raise LocalProtocolError(f"a server does not send {type(event).__name__}")
        return encode_event(event)


class ClientConnection(_Connection):
    """The client's end: sends Hello, expects Ready, then streams."""

    def __init__(self, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        super().__init__(max_message_bytes=max_message_bytes)
        self._hello_sent = False
        self._bye_sent = False
        self.ready: Ready | None = None

    def _parse(self, kind: int, flags: int, body: bytes) -> Event:
        self._no_flags(kind, flags)
        if kind == MessageType.ERROR:
            self._state = _State.CLOSED
            return parse_error(body)
        if kind == MessageType.READY:
            if self._state is not _State.HANDSHAKE or not self._hello_sent:
                raise _fail("unexpected ready", ErrorCode.UNEXPECTED_MESSAGE)
            self.ready = parse_ready(body)
            self._state = _State.STREAMING
            return self.ready
        if self.ready is None:
            raise _fail(f"message type {kind} before ready", ErrorCode.UNEXPECTED_MESSAGE)
        if kind == MessageType.RESULT:
            return parse_result(body, self.ready.class_names)
        if kind == MessageType.DROPPED:
            return parse_dropped(body)
        if kind == MessageType.KEYFRAME_REQUEST:
            return parse_keyframe_request(body)
        if kind == MessageType.FEEDBACK:
            return parse_feedback(body)
        if kind == MessageType.PROBE_ACK:
            return parse_probe_ack(body)
        raise _fail(f"message type {kind} is not valid from a server", ErrorCode.UNEXPECTED_MESSAGE)

    def send(self, event: Event) -> bytes:
        """Serialise an event for the server, checking that it is valid now."""
        if isinstance(event, Hello):
            if self._hello_sent:
                raise LocalProtocolError("hello was already sent")
            self._hello_sent = True
        elif isinstance(event, Video):
            if self._state is not _State.STREAMING or self._bye_sent:
                raise LocalProtocolError("video is only valid after ready and before bye")
            if not event.data:
                raise LocalProtocolError("a video message must carry an access unit")
            if not (0 <= event.seq <= _U32 and 0 <= event.pts < 2**63):
                raise LocalProtocolError(
                    f"video seq {event.seq} or pts {event.pts} is out of range (u32, i64 >= 0)"
                )
            if not -(2**63) <= event.capture_us < 2**63:
                raise LocalProtocolError(f"video capture_us {event.capture_us} is not an i64")
            limit = self.ready.max_message_bytes if self.ready else self.max_message_bytes
            if len(event.data) + VIDEO_HEADER.size > limit:
                raise LocalProtocolError(
                    f"access unit of {len(event.data)} bytes exceeds the message limit"
                )
        elif isinstance(event, Probe):
            if self._state is not _State.STREAMING or self._bye_sent:
                raise LocalProtocolError("probes are only valid after ready and before bye")
            if not (0 <= event.probe_id <= _U32 and 0 <= event.padding <= self.max_message_bytes):
                raise LocalProtocolError("probe id or padding out of range")
        elif isinstance(event, Bye):
            self._bye_sent = True
        elif not isinstance(event, Error):
            raise LocalProtocolError(f"a client does not send {type(event).__name__}")
        return encode_event(event)
