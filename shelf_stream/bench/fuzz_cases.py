"""The hostile cases of ``shelf-bench fuzz``: one function per kind of attack.

Each case gets its own ``random.Random`` (derived from the campaign seed and the case
number, so a case replays alone) and returns ``(label, anomaly)``: a short outcome label
for the report ("Error(BAD_HELLO) close 1002", "Ready", "aborted") and, when the server
did something it should not (stayed silent on a fatal message, left a pts unanswered),
a one-line description of it. Most cases are one small message before the hello; only
the ``stream_*`` kinds make the server decode.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from shelf_stream import protocol as p
from shelf_stream.bench.rawws import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_TEXT,
    RawWebSocket,
    frame,
)


@dataclass(frozen=True, slots=True)
class ClipUnit:
    """One pre-encoded access unit of the campaign's clip."""

    keyframe: bool
    data: bytes


@dataclass(frozen=True, slots=True)
class CaseContext:
    """What every case needs to know about the server under test."""

    port: int
    clip: tuple[ClipUnit, ...]
    width: int
    height: int
    fps: float
    max_message_bytes: int
    hello_timeout_s: float
    max_messages_per_s: float
    #: Whether the server still has a session for the client at this local port.
    session_open: Callable[[int], bool] = lambda port: False
    reply_timeout_s: float = 2.0  # a fatal message must be answered (Error/close) by then
    #: A session must be gone this long after its client closed or vanished.
    release_timeout_s: float = 2.0
    stream_timeout_s: float = 6.0  # a stream case's answers after Bye must be in by then


Outcome = tuple[str, str | None]
CaseFn = Callable[[CaseContext, random.Random], Awaitable[Outcome]]

#: Numbers a careless or malicious client might put in a hello.
ABSURD_NUMBERS: tuple[Any, ...] = (
    0, -2, 1, 3, 319, 2**31, 2**63, 10**40, -(10**40), 1e308, -0.0, 0.5, 319.5,
    math.nan, math.inf, -math.inf, True, False, None, "320", [320], {"w": 320},
    3840, 3842, 2160, 2162, 1e-300, 120, 120.0001, 1000,
)  # fmt: skip
BAD_CODECS: tuple[Any, ...] = (
    "vp9", "av1", "jpeg_zlib", "HEVC", "hevc ", "", "h265", "\x00", "x" * 5000,
    "hévc", 265, None, ["hevc"],
)  # fmt: skip
BAD_VERSIONS: tuple[Any, ...] = (0, 2, -1, 2**64, "1", 1.0, True, None, [1])


def hello_obj(ctx: CaseContext) -> dict[str, Any]:
    return {
        "protocol": p.PROTOCOL_VERSION,
        "codec": "hevc",
        "width": ctx.width,
        "height": ctx.height,
        "fps": ctx.fps,
        "time_base": [1, p.TIME_BASE_HZ],
        "client": "fuzz",
    }


def record(kind: int, body: bytes, flags: int = 0, length: int | None = None) -> bytes:
    """A protocol record whose header may lie about its length."""
    return p.HEADER.pack(kind, flags, len(body) if length is None else length) + body


def hello_record(obj: dict[str, Any]) -> bytes:
    # allow_nan: a hostile client sends NaN/Infinity literals, which Python's json reads.
    return record(p.MessageType.HELLO, json.dumps(obj, allow_nan=True).encode())


def video_record(seq: int, pts: int, unit: ClipUnit, *, data: bytes | None = None) -> bytes:
    body = data if data is not None else unit.data
    return p.encode_event(p.Video(seq, pts, seq, unit.keyframe, body))


def fatal(reply_label: str, timed_out: bool, what: str) -> Outcome:
    """The outcome of a message the server must refuse: silence is an anomaly."""
    return reply_label, (
        f"{what}: no Error and no close within the deadline" if timed_out else None
    )


async def expect_refusal(ws: RawWebSocket, ctx: CaseContext, what: str) -> Outcome:
    reply = await ws.read_reply(ctx.reply_timeout_s)
    return fatal(reply.label(), reply.timed_out and not reply.records, what)


async def open_stream(ctx: CaseContext, rng: random.Random) -> RawWebSocket:
    """A connection that said a valid hello and got Ready (or raises)."""
    ws = await _connect(ctx, rng)
    await ws.send_raw(_binary(ws, hello_record(hello_obj(ctx))))
    reply = await ws.read_reply(ctx.reply_timeout_s, stop_after=p.MessageType.READY)
    if not reply.count(p.MessageType.READY):
        ws.abort()
        raise _NoReady(reply.label())
    return ws


class _NoReady(Exception):
    """A valid hello was not answered with Ready: reported as an anomaly."""


#: The connections the running case opened, so that ``run_case`` closes every one of them.
_opened: contextvars.ContextVar[list[RawWebSocket]] = contextvars.ContextVar("fuzz_opened")


async def _connect(ctx: CaseContext, rng: random.Random) -> RawWebSocket:
    ws = await RawWebSocket.connect(ctx.port, rng)
    _opened.get().append(ws)
    return ws


async def _tcp(ctx: CaseContext, rng: random.Random) -> RawWebSocket:
    ws = await RawWebSocket.open_tcp(ctx.port, rng)
    _opened.get().append(ws)
    return ws


def _binary(ws: RawWebSocket, payload: bytes) -> bytes:
    return frame(OP_BINARY, payload, key=ws.key())


# ---------------------------------------------------------------- before the hello


async def random_bytes(ctx: CaseContext, rng: random.Random) -> Outcome:
    ws = await _connect(ctx, rng)
    await ws.send_binary(rng.randbytes(rng.choice((0, 1, 5, 6, 7, 20, 100, 1000))))
    return await expect_refusal(ws, ctx, "random bytes")


async def random_record(ctx: CaseContext, rng: random.Random) -> Outcome:
    ws = await _connect(ctx, rng)
    flags = rng.choice((0, 1, rng.randrange(256)))
    await ws.send_binary(record(rng.randrange(256), rng.randbytes(rng.randrange(200)), flags))
    return await expect_refusal(ws, ctx, "random record")


async def lying_header(ctx: CaseContext, rng: random.Random) -> Outcome:
    ws = await _connect(ctx, rng)
    body = json.dumps(hello_obj(ctx)).encode()
    length = rng.choice(
        (len(body) + 1, len(body) - 1, 0, 2**32 - 1, ctx.max_message_bytes + 1, len(body) * 2)
    )
    kind = rng.choice((p.MessageType.HELLO, p.MessageType.VIDEO))
    await ws.send_binary(record(kind, body, length=length))
    return await expect_refusal(ws, ctx, "length field that lies")


async def video_before_hello(ctx: CaseContext, rng: random.Random) -> Outcome:
    ws = await _connect(ctx, rng)
    await ws.send_binary(video_record(0, 0, ctx.clip[0]))
    return await expect_refusal(ws, ctx, "video before hello")


def _bad_json(ctx: CaseContext, rng: random.Random) -> bytes:
    good = json.dumps(hello_obj(ctx)).encode()
    choices: list[Callable[[], bytes]] = [
        lambda: b"\xff\xfe" + good,  # not UTF-8
        lambda: good[: rng.randrange(len(good))],  # cut short
        lambda: b"[" * rng.choice((10, 1000, 50_000)),  # deep nesting
        lambda: b"[1, 2, 3]",
        lambda: b'"hello"',
        lambda: b"null",
        lambda: b"",
        lambda: good.replace(b"{", b"{\x00", 1),
        lambda: b"\xef\xbb\xbf" + good,  # a byte-order mark
        lambda: good[:-1] + b',"pad":"' + b"x" * (p.MAX_JSON_BYTES + 10) + b'"}',
        lambda: good[:-1] + b',"width":"dup"}',  # duplicate key: the last one wins
        lambda: rng.randbytes(rng.randrange(1, 300)),
    ]
    return rng.choice(choices)()


async def bad_json_hello(ctx: CaseContext, rng: random.Random) -> Outcome:
    ws = await _connect(ctx, rng)
    await ws.send_binary(record(p.MessageType.HELLO, _bad_json(ctx, rng)))
    return await expect_refusal(ws, ctx, "hello that is not valid JSON")


async def absurd_hello(ctx: CaseContext, rng: random.Random) -> Outcome:
    """Absurd sizes and rates; some happen to be valid (3840x2160), which is fine."""
    obj = hello_obj(ctx)
    for name in rng.sample(("width", "height", "fps", "time_base", "token", "client"), 2):
        obj[name] = rng.choice(ABSURD_NUMBERS)
    if rng.random() < 0.2:
        del obj[rng.choice(list(obj))]
    ws = await _connect(ctx, rng)
    await ws.send_binary(hello_record(obj))
    reply = await ws.read_reply(ctx.reply_timeout_s, stop_after=p.MessageType.READY)
    if reply.count(p.MessageType.READY) and rng.random() < 0.3:
        # Accepted: a real keyframe under a hello that lied about the size.
        await ws.send_binary(video_record(0, 0, ctx.clip[0]))
        await asyncio.sleep(0.05)
    ws.abort()
    return fatal(reply.label(), reply.timed_out and not reply.records, "absurd hello")


async def unsupported_codec(ctx: CaseContext, rng: random.Random) -> Outcome:
    obj = hello_obj(ctx) | {"codec": rng.choice(BAD_CODECS)}
    ws = await _connect(ctx, rng)
    await ws.send_binary(hello_record(obj))
    return await expect_refusal(ws, ctx, "unsupported codec")


async def bad_version(ctx: CaseContext, rng: random.Random) -> Outcome:
    obj = hello_obj(ctx)
    version = rng.choice((*BAD_VERSIONS, "missing"))
    if version == "missing":
        del obj["protocol"]
    else:
        obj["protocol"] = version
    ws = await _connect(ctx, rng)
    await ws.send_binary(hello_record(obj))
    return await expect_refusal(ws, ctx, "wrong protocol version")


async def text_frame(ctx: CaseContext, rng: random.Random) -> Outcome:
    ws = await _connect(ctx, rng)
    text = rng.choice(
        (json.dumps(hello_obj(ctx)).encode(), b"hello", b"\xff\xc0\x80 not UTF-8", b"")
    )
    await ws.send_frame(OP_TEXT, text)
    return await expect_refusal(ws, ctx, "text frame")


def _ws_violation(ws: RawWebSocket, rng: random.Random, ctx: CaseContext) -> bytes:
    hello = hello_record(hello_obj(ctx))
    key = ws.key()
    choices: list[Callable[[], bytes]] = [
        lambda: frame(OP_BINARY, hello, key=None),  # unmasked
        lambda: frame(OP_BINARY, hello, key=key, rsv=rng.randrange(1, 8)),
        lambda: frame(rng.choice((3, 4, 5, 6, 7, 11, 12, 13, 14, 15)), hello, key=key),
        lambda: frame(OP_PING, bytes(200), key=key),  # control frame over 125 bytes
        lambda: frame(OP_PING, b"x", key=key, fin=False),  # fragmented control frame
        lambda: frame(OP_CONTINUATION, hello, key=key),  # continuation of nothing
        lambda: frame(OP_CLOSE, b"\x03", key=key),  # close with a 1-byte body
        lambda: frame(OP_CLOSE, rng.choice((b"\x03\xe7", b"\x03\xed", b"\x0b\xb8")), key=key),
        lambda: frame(OP_CLOSE, b"\x03\xe8\xff\xfe", key=key),  # reason not UTF-8
        lambda: (
            frame(OP_BINARY, hello[:5], key=key, fin=False) + frame(OP_BINARY, hello[5:], key=key)
        ),  # a new message inside a fragmented one
        lambda: frame(OP_BINARY, b"", key=key, declared_length=2**63 + 5),
    ]
    return rng.choice(choices)()


async def ws_violation(ctx: CaseContext, rng: random.Random) -> Outcome:
    ws = await _connect(ctx, rng)
    await ws.send_raw(_ws_violation(ws, rng, ctx))
    return await expect_refusal(ws, ctx, "WebSocket protocol violation")


async def oversize_declared(ctx: CaseContext, rng: random.Random) -> Outcome:
    """A frame header announcing more than the server accepts: refused before the body."""
    ws = await _connect(ctx, rng)
    declared = rng.choice((ctx.max_message_bytes + p.HEADER.size + 1, 2**31, 2**62))
    await ws.send_raw(frame(OP_BINARY, rng.randbytes(16), key=ws.key(), declared_length=declared))
    return await expect_refusal(ws, ctx, "oversized frame header")


async def oversize_real(ctx: CaseContext, rng: random.Random) -> Outcome:
    ws = await _connect(ctx, rng)
    size = ctx.max_message_bytes + p.HEADER.size + rng.randrange(1, 4096)
    body = bytes(size - p.HEADER.size)
    # The server may cut us off mid-send: that is the expected answer.
    with contextlib.suppress(ConnectionError):
        await ws.send_binary(record(p.MessageType.HELLO, body))
    return await expect_refusal(ws, ctx, "oversized message")


async def fragment_flood(ctx: CaseContext, rng: random.Random) -> Outcome:
    """One message in many tiny fragments: a valid hello (Ready) or garbage (Error)."""
    payload = (
        hello_record(hello_obj(ctx)) if rng.random() < 0.5 else rng.randbytes(rng.randrange(300))
    )
    ws = await _connect(ctx, rng)
    pieces = [payload[i : i + rng.randint(1, 3)] for i in range(0, len(payload), 3)] or [b""]
    data = b"".join(
        frame(OP_BINARY if i == 0 else OP_CONTINUATION, piece, key=ws.key(), fin=False)
        for i, piece in enumerate(pieces)
    ) + frame(OP_CONTINUATION, b"", key=ws.key())
    await ws.send_raw(data)
    reply = await ws.read_reply(ctx.reply_timeout_s, stop_after=p.MessageType.READY)
    ws.abort()
    return fatal(reply.label(), reply.timed_out and not reply.records, "fragmented message")


async def ping_flood(ctx: CaseContext, rng: random.Random) -> Outcome:
    """Many pings, then a valid hello: the pings cost pongs, the hello still gets Ready."""
    ws = await _connect(ctx, rng)
    pings = b"".join(
        frame(OP_PING, rng.randbytes(rng.randrange(126)), key=ws.key())
        for _ in range(rng.randint(20, 200))
    )
    await ws.send_raw(pings + _binary(ws, hello_record(hello_obj(ctx))))
    reply = await ws.read_reply(ctx.reply_timeout_s, stop_after=p.MessageType.READY)
    ws.abort()
    if not reply.count(p.MessageType.READY):
        return reply.label(), f"ping flood: hello after pings got {reply.label()}, not Ready"
    return f"Ready after {reply.pongs} pongs" if reply.pongs else "Ready", None


async def silent(ctx: CaseContext, rng: random.Random) -> Outcome:
    """Upgrade, then never say hello (optionally half a frame): the hello timeout ends it."""
    ws = await _connect(ctx, rng)
    if rng.random() < 0.5:
        await ws.send_raw(frame(OP_BINARY, hello_record(hello_obj(ctx)), key=ws.key())[:9])
    reply = await ws.read_reply(ctx.hello_timeout_s + ctx.reply_timeout_s)
    return fatal(reply.label(), reply.timed_out, "connection without a hello")


async def abort_mid_message(ctx: CaseContext, rng: random.Random) -> Outcome:
    ws = await _connect(ctx, rng)
    data = frame(OP_BINARY, hello_record(hello_obj(ctx)), key=ws.key())
    await ws.send_raw(data[: rng.randrange(1, len(data))])
    await asyncio.sleep(rng.choice((0.0, 0.01)))
    ws.abort()
    return "aborted", None


async def abort_mid_handshake(ctx: CaseContext, rng: random.Random) -> Outcome:
    ws = await _tcp(ctx, rng)
    request = ws.upgrade_request(ctx.port)
    await ws.send_raw(request[: rng.randrange(len(request))])
    await asyncio.sleep(rng.choice((0.0, 0.01)))
    ws.abort()
    return "aborted", None


async def http_garbage(ctx: CaseContext, rng: random.Random) -> Outcome:
    """Not a WebSocket upgrade at all: the server answers HTTP 4xx or hangs up."""
    ws = await _tcp(ctx, rng)
    choices: list[bytes] = [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
        b"GET / HTTP/1.0\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /metrics?" + rng.randbytes(8).hex().encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n",
        ws.upgrade_request(ctx.port).replace(b"GET / ", b"GET /healthz "),
        ws.upgrade_request(ctx.port).replace(b"Host:", b"Origin: http://evil.example\r\nHost:"),
        b"GET / HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n",
        ws.upgrade_request(ctx.port).replace(b"Version: 13", b"Version: 8"),
        rng.randbytes(rng.randrange(1, 200)) + b"\r\n\r\n",
    ]
    await ws.send_raw(rng.choice(choices))
    try:
        head = await asyncio.wait_for(ws.read_http_head(), ctx.reply_timeout_s)
    except TimeoutError:
        ws.abort()
        return "no answer", "HTTP garbage: no answer and no close"
    except (asyncio.IncompleteReadError, ConnectionError):
        return "eof", None
    ws.abort()
    return f"http {head[9:12].decode('latin-1')}", None


async def never_upgrade(ctx: CaseContext, rng: random.Random) -> Outcome:
    """A TCP connection that says nothing; we give up first (the server's open timeout
    is websockets' 10 s, too long for a campaign)."""
    ws = await _tcp(ctx, rng)
    await asyncio.sleep(rng.uniform(0.05, 0.3))
    ws.abort()
    return "gave up", None


# ----------------------------------------------------------------- after the hello


async def second_hello(ctx: CaseContext, rng: random.Random) -> Outcome:
    ws = await open_stream(ctx, rng)
    await ws.send_binary(hello_record(hello_obj(ctx)))
    return await expect_refusal(ws, ctx, "second hello")


async def server_only_message(ctx: CaseContext, rng: random.Random) -> Outcome:
    ws = await open_stream(ctx, rng)
    kinds = (
        p.MessageType.READY, p.MessageType.RESULT, p.MessageType.DROPPED,
        p.MessageType.KEYFRAME_REQUEST, p.MessageType.FEEDBACK, p.MessageType.PROBE_ACK,
        0, 12, 255,
    )  # fmt: skip
    await ws.send_binary(record(rng.choice(kinds), rng.randbytes(rng.randrange(40))))
    return await expect_refusal(ws, ctx, "server-only message from a client")


def _bad_video(ctx: CaseContext, rng: random.Random) -> bytes:
    unit = ctx.clip[0]
    head = p.VIDEO_HEADER.pack(0, 0, 0)
    choices: list[Callable[[], bytes]] = [
        lambda: record(p.MessageType.VIDEO, head + unit.data, flags=rng.randrange(2, 256)),
        lambda: record(p.MessageType.VIDEO, p.VIDEO_HEADER.pack(0, -5, 0) + unit.data, 1),
        lambda: record(p.MessageType.VIDEO, head, 1),  # no access unit
        lambda: record(p.MessageType.VIDEO, head[: rng.randrange(len(head))], 1),
        lambda: record(p.MessageType.BYE, b"x"),  # bye with a body
        lambda: record(p.MessageType.PROBE, b"\x00\x01"),  # truncated probe
    ]
    return rng.choice(choices)()


async def bad_video_fields(ctx: CaseContext, rng: random.Random) -> Outcome:
    ws = await open_stream(ctx, rng)
    await ws.send_binary(_bad_video(ctx, rng))
    return await expect_refusal(ws, ctx, "malformed video/bye/probe")


async def duplicate_pts(ctx: CaseContext, rng: random.Random) -> Outcome:
    ws = await open_stream(ctx, rng)
    await ws.send_raw(
        _binary(ws, video_record(0, 6000, ctx.clip[0]))
        + _binary(ws, video_record(1, 6000, ctx.clip[1]))
    )
    return await expect_refusal(ws, ctx, "duplicate pts")


async def fatal_then_burst(ctx: CaseContext, rng: random.Random) -> Outcome:
    """A fatal message followed by more messages already on the wire, as a pipelining
    client sends them: refused, and the session must still be released promptly."""
    ws = await open_stream(ctx, rng)
    fatal_message = _bad_video(ctx, rng)
    more = [p.encode_event(p.Probe(i, 0)) for i in range(rng.randint(2, 12))]
    await ws.send_raw(b"".join(_binary(ws, m) for m in [fatal_message, *more]))
    return await expect_refusal(ws, ctx, "fatal message followed by a burst")


async def client_error(ctx: CaseContext, rng: random.Random) -> Outcome:
    ws = await open_stream(ctx, rng)
    body = rng.choice((b"\x00\x01oops", b"\xff\xff" + rng.randbytes(30), b"\x00"))
    await ws.send_binary(record(p.MessageType.ERROR, body))
    reply = await ws.read_reply(ctx.reply_timeout_s)
    return fatal(reply.label(), reply.timed_out, "client error")


async def after_bye(ctx: CaseContext, rng: random.Random) -> Outcome:
    """Bye, then more video: the server finishes the stream, the rest is ignored or refused."""
    ws = await open_stream(ctx, rng)
    await ws.send_raw(
        _binary(ws, p.encode_event(p.Bye())) + _binary(ws, video_record(0, 0, ctx.clip[0]))
    )
    reply = await ws.read_reply(ctx.reply_timeout_s)
    return fatal(reply.label(), reply.timed_out, "messages after bye")


async def probe_flood(ctx: CaseContext, rng: random.Random) -> Outcome:
    """Many tiny valid messages in one burst: within the server's message-rate burst
    every probe is answered; beyond it the flood is cut off with LIMIT_EXCEEDED."""
    ws = await open_stream(ctx, rng)
    burst_limit = int(2 * ctx.max_messages_per_s)  # the server's token bucket depth
    count = rng.randint(50, burst_limit + 400)
    burst = b"".join(
        _binary(ws, p.encode_event(p.Probe(i, i, rng.randrange(8)))) for i in range(count)
    )
    with contextlib.suppress(ConnectionError):  # cut off mid-burst: read what came back
        await ws.send_raw(burst)
    reply = await ws.read_reply(
        ctx.stream_timeout_s, stop_after=p.MessageType.PROBE_ACK, count=count
    )
    ws.abort()
    acks, error = reply.count(p.MessageType.PROBE_ACK), reply.first_error()
    if acks == count:
        return "all probes answered", None
    if error is not None and error.code == p.ErrorCode.LIMIT_EXCEEDED and count > burst_limit / 2:
        return "cut off: Error(LIMIT_EXCEEDED)", None
    return f"{acks}/{count} acks, {reply.label()}", f"probe flood of {count}: {reply.label()}"


# ------------------------------------------------------- streams that make it decode


def mutate(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    """A damaged access unit and the name of the damage."""
    how = rng.choice(("truncate", "bitflip", "extend", "random", "zeros", "startcodes", "nal"))
    if how == "truncate":
        return how, data[: rng.randrange(1, len(data))]
    if how == "bitflip":
        out = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
        return how, bytes(out)
    if how == "extend":
        return how, data + rng.randbytes(rng.randint(1, 2000))
    if how == "random":
        return how, b"\x00\x00\x00\x01" + rng.randbytes(rng.randint(1, 3000))
    if how == "zeros":
        start = rng.randrange(len(data))
        return how, data[:start] + bytes(rng.randint(1, 200)) + data[start + 1 :]
    if how == "startcodes":
        return how, b"\x00\x00\x01" * rng.randint(1, 50)
    # A NAL header of a random type glued onto the payload.
    return how, b"\x00\x00\x00\x01" + bytes((rng.randrange(256), 1)) + data[6:]


def _stream_plan(ctx: CaseContext, rng: random.Random) -> list[tuple[int, bool, bytes, str]]:
    """(seq, keyframe flag, access unit, damage) for one hostile stream."""
    frames = rng.randint(2, 8)
    plan = []
    seq = 0
    for index in range(frames):
        unit = ctx.clip[index]
        data, damage, flag = unit.data, "", unit.keyframe
        roll = rng.random()
        if roll < 0.35:
            damage, data = mutate(data, rng)
        elif roll < 0.45:
            damage, flag = "flag", not flag  # the flag lies; the NAL types decide
        elif roll < 0.5:
            damage, seq = "gap", seq + rng.randint(1, 5)
        plan.append((seq, flag, data, damage))
        seq += 1
    if rng.random() < 0.5:  # and recover: a keyframe and what follows it
        plan += [(seq + i, ctx.clip[i].keyframe, ctx.clip[i].data, "recover") for i in range(3)]
    return plan


async def stream_damaged(ctx: CaseContext, rng: random.Random) -> Outcome:
    """Damaged access units in valid Video messages, then Bye: every pts answered once."""
    ws = await open_stream(ctx, rng)
    plan = _stream_plan(ctx, rng)
    base = rng.randrange(2**40)
    sent = [base + i * 6000 for i in range(len(plan))]
    messages = [
        _binary(ws, p.encode_event(p.Video(seq, pts, seq, flag, data)))
        for (seq, flag, data, _), pts in zip(plan, sent, strict=True)
    ]
    await ws.send_raw(b"".join(messages) + _binary(ws, p.encode_event(p.Bye())))
    reply = await ws.read_reply(ctx.stream_timeout_s)
    answered = _answered_pts(reply.records)
    damages = "+".join(sorted({d for *_, d in plan if d})) or "clean"
    problems = _answer_problems(sent, answered)
    recovery = [pts for (*_, damage), pts in zip(plan, sent, strict=True) if damage == "recover"]
    if recovery and _damage_drops(reply.records, recovery[0]):
        problems.append("the clean keyframe after the damage was not decoded")
    if reply.timed_out or reply.close_code != 1000:
        problems.append(f"ended with {reply.label()}, not close 1000")
    return (
        "all answered, close 1000" if not problems else "incomplete",
        f"stream ({damages}): {'; '.join(problems)}" if problems else None,
    )


def _answered_pts(records: list[tuple[int, bytes]]) -> list[int]:
    pts = []
    for kind, body in records:
        if kind in (p.MessageType.RESULT, p.MessageType.DROPPED) and len(body) >= 8:
            pts.append(int.from_bytes(body[:8], "big", signed=True))
    return pts


#: Drops that mean the frame was not decoded (as opposed to dropped under load).
_DAMAGE_DROPS = {
    p.DropReason.DECODE_ERROR, p.DropReason.AWAITING_KEYFRAME, p.DropReason.GAP,
    p.DropReason.INVALID, p.DropReason.NO_FRAME,
}  # fmt: skip


def _damage_drops(records: list[tuple[int, bytes]], pts: int) -> bool:
    """Was ``pts`` answered Dropped for a decoding reason?"""
    for kind, body in records:
        if kind == p.MessageType.DROPPED and len(body) == p.DROPPED.size:
            dropped_pts, _, reason = p.DROPPED.unpack(body)
            if dropped_pts == pts and reason in _DAMAGE_DROPS:
                return True
    return False


def _answer_problems(sent: list[int], answered: list[int]) -> list[str]:
    problems = []
    missing = set(sent) - set(answered)
    if missing:
        problems.append(f"{len(missing)} of {len(sent)} pts unanswered")
    if len(answered) != len(set(answered)):
        problems.append("a pts answered twice")
    if set(answered) - set(sent):
        problems.append("answers for pts never sent")
    return problems


async def stream_abort(ctx: CaseContext, rng: random.Random) -> Outcome:
    """Video in flight, then the client vanishes: the session must release everything."""
    ws = await open_stream(ctx, rng)
    count = rng.randint(1, 5)
    await ws.send_raw(
        b"".join(_binary(ws, video_record(i, i * 6000, ctx.clip[i])) for i in range(count))
    )
    await asyncio.sleep(rng.choice((0.0, 0.005, 0.03)))
    ws.abort()
    return "aborted", None


async def stream_stalled_reader(ctx: CaseContext, rng: random.Random) -> Outcome:
    """Valid video, then garbage mid-stream: Error and close, whatever was in flight."""
    ws = await open_stream(ctx, rng)
    await ws.send_raw(
        _binary(ws, video_record(0, 0, ctx.clip[0])) + _binary(ws, rng.randbytes(rng.randrange(30)))
    )
    return await expect_refusal(ws, ctx, "garbage mid-stream")


#: kind → (weight, case). Weights keep the campaign cheap: about one case in ten decodes.
CASES: dict[str, tuple[int, CaseFn]] = {
    "random_bytes": (8, random_bytes),
    "random_record": (8, random_record),
    "lying_header": (5, lying_header),
    "video_before_hello": (4, video_before_hello),
    "bad_json_hello": (8, bad_json_hello),
    "absurd_hello": (8, absurd_hello),
    "unsupported_codec": (4, unsupported_codec),
    "bad_version": (4, bad_version),
    "text_frame": (4, text_frame),
    "ws_violation": (8, ws_violation),
    "oversize_declared": (3, oversize_declared),
    "oversize_real": (1, oversize_real),
    "fragment_flood": (3, fragment_flood),
    "ping_flood": (2, ping_flood),
    "silent": (1, silent),
    "abort_mid_message": (4, abort_mid_message),
    "abort_mid_handshake": (3, abort_mid_handshake),
    "http_garbage": (3, http_garbage),
    "never_upgrade": (1, never_upgrade),
    "second_hello": (3, second_hello),
    "server_only_message": (3, server_only_message),
    "bad_video_fields": (4, bad_video_fields),
    "duplicate_pts": (1, duplicate_pts),
    "fatal_then_burst": (1, fatal_then_burst),
    "client_error": (2, client_error),
    "after_bye": (2, after_bye),
    "probe_flood": (1, probe_flood),
    "stream_damaged": (6, stream_damaged),
    "stream_abort": (2, stream_abort),
    "stream_garbage": (2, stream_stalled_reader),
}


async def run_case(ctx: CaseContext, kind: str, rng: random.Random, timeout_s: float) -> Outcome:
    """Run one case within ``timeout_s``; connection trouble is an outcome, not a failure.
    Then check that the server released the case's sessions once their client left."""
    opened: list[RawWebSocket] = []
    token = _opened.set(opened)
    try:
        label, anomaly = await _run_bounded(ctx, kind, rng, timeout_s)
    finally:
        _opened.reset(token)
        for ws in opened:
            ws.writer.close()  # FIN after what is buffered; a no-op after abort()
    lingering = await _lingering_sessions(ctx, opened)
    if lingering and anomaly is None:
        anomaly = (
            f"{kind}: the session outlived its client by more than "
            f"{ctx.release_timeout_s:g} s ({lingering} still open)"
        )
    return label, anomaly


async def _run_bounded(
    ctx: CaseContext, kind: str, rng: random.Random, timeout_s: float
) -> Outcome:
    try:
        async with asyncio.timeout(timeout_s):
            return await CASES[kind][1](ctx, rng)
    except TimeoutError:
        return "attacker timeout", f"{kind}: the case did not finish within {timeout_s:g} s"
    except _NoReady as exc:
        return f"no Ready ({exc})", f"{kind}: a valid hello got {exc}, not Ready"
    except (ConnectionError, asyncio.IncompleteReadError):
        return "reset", None
    except OSError as exc:  # e.g. connect refused: the server is gone
        return f"os error {exc.errno}", f"{kind}: {exc}"


async def _lingering_sessions(ctx: CaseContext, opened: list[RawWebSocket]) -> int:
    """Sessions of ``opened`` connections still on the server after the release timeout."""
    ports = [ws.local_port for ws in opened]
    deadline = asyncio.get_running_loop().time() + ctx.release_timeout_s
    while True:
        open_now = sum(ctx.session_open(port) for port in ports)
        if not open_now or asyncio.get_running_loop().time() >= deadline:
            return open_now
        await asyncio.sleep(0.005)
