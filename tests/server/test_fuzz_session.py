"""Hypothesis against a live server session: mixtures of valid and hostile messages.

One server (real sessions, real HEVC decoding, a stub detector for speed: the target is
the session and protocol handling, not the model) runs for the whole module on its own
thread and event loop. Each example opens a raw connection, sends a generated sequence
(after a valid hello or not), says Bye, and reads until the server closes. Properties:

* the server either refuses (Error record, then close) or keeps streaming (answers,
  then a normal close after Bye); it never leaves an Error without a close;
* no pts is answered twice, and no answer names a pts that was not sent;
* nothing is logged as ERROR with a traceback and the loop's exception handler is never
  called (``LogAudit``);
* afterwards a healthy client still gets hello → Ready → video → Result.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import av
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shelf_stream import protocol as p
from shelf_stream.bench.fuzz import LogAudit, audit_logs
from shelf_stream.bench.rawws import OP_BINARY, OP_TEXT, RawWebSocket, Reply, frame
from shelf_stream.codec import EncoderConfig, get_encoder
from shelf_stream.engine.base import Detections, Detector, PreparedImage
from shelf_stream.server import Server, ServerConfig

WIDTH, HEIGHT, FPS = 320, 240, 15.0
PTS_STEP = 6000
READ_TIMEOUT_S = 3.0
PREPARED = PreparedImage(np.zeros((3, 4, 4), np.float32), 1.0, 0.0, 0.0, WIDTH, HEIGHT)


class _StubDetector(Detector):
    """One fixed box per frame, instantly: the session code is what is under test."""

    model_name = "stub"
    input_size = (4, 4)
    class_names = ("thing",)

    def prepare(self, image: object) -> PreparedImage:
        return PREPARED

    def infer(self, batch: object) -> list[Detections]:
        box = Detections(
            np.array([[10, 20, 30, 40]], np.float32),
            np.array([0.9], np.float32),
            np.array([0], np.int32),
        )
        return [box for _ in batch]  # type: ignore[attr-defined]


def _encode_clip(frames: int = 6) -> list[bytes]:
    """A keyframe and P frames of a test pattern (one encoder thread: same bytes each run)."""
    config = EncoderConfig(
        codec="hevc", width=WIDTH, height=HEIGHT, fps=FPS, bitrate_kbps=300, threads=1
    )
    encoder = get_encoder(config)
    source = av.open(f"testsrc2=size={WIDTH}x{HEIGHT}:rate={FPS:g}", format="lavfi")
    try:
        units = []
        for index, picture in enumerate(source.decode(video=0)):
            if index == frames:
                break
            units.append(encoder.encode(picture, index * PTS_STEP, keyframe=index == 0).data)
        return units
    finally:
        source.close()
        encoder.close()


CLIP = _encode_clip()


@dataclass
class LiveServer:
    port: int
    server: Server
    audit: LogAudit

    def wait_idle(self, timeout_s: float = 10.0) -> int:
        """Sessions still open once every connection had ``timeout_s`` to be released."""
        deadline = time.monotonic() + timeout_s
        while self.server.sessions and time.monotonic() < deadline:
            time.sleep(0.02)
        return len(self.server.sessions)


@pytest.fixture(scope="module")
def live_server() -> Iterator[LiveServer]:
    """A server on its own thread and loop, so hypothesis examples stay synchronous."""
    audit = LogAudit()
    started = threading.Event()
    holder: dict[str, Any] = {}

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(audit.loop_exception)
        holder["stop"] = stop = asyncio.Event()
        holder["loop"] = loop
        config = ServerConfig(
            host="127.0.0.1", port=0, hello_timeout_s=1.0, drain_timeout_s=2.0,
            # Every example comes from 127.0.0.1: room for all of them at once.
            max_streams=512,
            max_streams_per_address=512,
            limits=p.ServerLimits(max_message_bytes=64 * 1024),
        )  # fmt: skip
        async with Server(config, _StubDetector()) as server:
            holder["server"] = server
            started.set()
            await stop.wait()

    with audit_logs(audit):
        thread = threading.Thread(target=asyncio.run, args=(serve(),), name="fuzz-server")
        thread.start()
        assert started.wait(30), "the server did not start"
        server: Server = holder["server"]
        yield LiveServer(server.port, server, audit)
        holder["loop"].call_soon_threadsafe(holder["stop"].set)
        thread.join(30)
    assert not thread.is_alive(), "the server did not shut down"


# ------------------------------------------------------------------ strategies


def _record(kind: int, body: bytes, flags: int = 0) -> bytes:
    return p.HEADER.pack(kind, flags, len(body)) + body


def _hello(fields: dict[str, Any] | None = None) -> bytes:
    obj: dict[str, Any] = {
        "protocol": 1, "codec": "hevc", "width": WIDTH, "height": HEIGHT, "fps": FPS,
    }  # fmt: skip
    obj.update(fields or {})
    return _record(p.MessageType.HELLO, json.dumps(obj, allow_nan=True).encode())


json_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.lists(st.integers(-5, 100_000), max_size=3),
)
hello_fields = st.sampled_from(["protocol", "codec", "width", "height", "fps", "time_base"])


@st.composite
def video_messages(draw: st.DrawFn) -> bytes:
    """A Video record from the clip, possibly damaged, with drawn seq/pts/flags."""
    index = draw(st.integers(0, len(CLIP) - 1))
    data = CLIP[index]
    damage = draw(st.sampled_from(["none", "none", "truncate", "flip", "extend", "random"]))
    if damage == "truncate":
        data = data[: draw(st.integers(1, len(data)))]
    elif damage == "flip":
        position = draw(st.integers(0, len(data) - 1))
        data = data[:position] + bytes([data[position] ^ 0xFF]) + data[position + 1 :]
    elif damage == "extend":
        data += draw(st.binary(min_size=1, max_size=64))
    elif damage == "random":
        data = draw(st.binary(min_size=0, max_size=64))
    seq = draw(st.integers(0, 8))
    pts = draw(st.one_of(st.integers(0, 8).map(lambda i: i * PTS_STEP), st.integers(-3, 2**63 - 1)))
    flags = draw(st.sampled_from([0, 1, 1, 2, 0xFF]))
    body = p.VIDEO_HEADER.pack(seq, pts, 0)  # signed on the wire: a negative pts is sendable
    return _record(p.MessageType.VIDEO, body + data, flags)


messages = st.one_of(
    st.just(_hello()),
    st.dictionaries(hello_fields, json_values, max_size=2).map(_hello),
    video_messages(),
    video_messages(),
    st.binary(max_size=48),
    st.builds(_record, st.integers(0, 255), st.binary(max_size=32), st.sampled_from([0, 0, 1, 7])),
    st.just(_record(p.MessageType.BYE, b"")),
    st.builds(lambda i: p.encode_event(p.Probe(i, 0, 4)), st.integers(0, 2**32 - 1)),
    st.text(max_size=16).map(lambda text: ("text", text.encode())),
)


# ----------------------------------------------------------------------- driver


async def _exchange(port: int, sequence: list[Any], seed: int) -> tuple[Reply, list[int]]:
    """Send the sequence then Bye; read until the server closes. Returns the reply and
    the pts of the Video messages that went out."""
    ws = await RawWebSocket.connect(port, random.Random(seed))
    sent: list[int] = []
    try:
        for item in [*sequence, _record(p.MessageType.BYE, b"")]:
            if isinstance(item, tuple):
                data = frame(OP_TEXT, item[1], key=ws.key())
            else:
                data = frame(OP_BINARY, item, key=ws.key())
                if item[:1] == bytes([p.MessageType.VIDEO]) and len(item) >= 18:
                    sent.append(int.from_bytes(item[10:18], "big", signed=True))
            try:
                await ws.send_raw(data)
            except ConnectionError:
                break  # refused and closed already: read what it said
        return await ws.read_reply(READ_TIMEOUT_S), sent
    finally:
        ws.abort()


def _answered(reply: Reply) -> list[int]:
    return [
        int.from_bytes(body[:8], "big", signed=True)
        for kind, body in reply.records
        if kind in (p.MessageType.RESULT, p.MessageType.DROPPED) and len(body) >= 8
    ]


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    with_hello=st.booleans(),
    sequence=st.lists(messages, max_size=6),
    seed=st.integers(0, 2**32),
)
def test_any_message_sequence_is_refused_cleanly_or_served(
    live_server: LiveServer, with_hello: bool, sequence: list[Any], seed: int
) -> None:
    prefix = [_hello()] if with_hello else []
    reply, sent = asyncio.run(_exchange(live_server.port, prefix + sequence, seed))
    error = reply.first_error()
    if error is not None:
        assert not reply.timed_out, f"Error {error} but the connection stayed open"
    else:
        assert not reply.timed_out, "the server neither refused nor finished after Bye"
    answered, sent_count = Counter(_answered(reply)), Counter(sent)
    # A pts may be reused once its first frame was answered; never answered more often.
    assert all(n <= sent_count[pts] for pts, n in answered.items()), (answered, sent_count)
    assert live_server.audit.unhandled == 0, live_server.audit.tracebacks


def test_a_healthy_stream_works_after_the_fuzzing(live_server: LiveServer) -> None:
    async def round_trip() -> Reply:
        ws = await RawWebSocket.connect(live_server.port, random.Random(0))
        try:
            await ws.send_binary(_hello())
            await ws.send_binary(p.encode_event(p.Video(0, 0, 0, True, CLIP[0])))
            await ws.send_binary(p.encode_event(p.Bye()))
            return await ws.read_reply(READ_TIMEOUT_S)
        finally:
            ws.abort()

    reply = asyncio.run(round_trip())
    assert reply.count(p.MessageType.READY) == 1
    assert reply.count(p.MessageType.RESULT) == 1, reply.records
    assert reply.close_code == 1000
    assert live_server.wait_idle(5.0) == 0, "sessions were not released"
    assert live_server.audit.unhandled == 0, live_server.audit.tracebacks
    assert not [t for t in threading.enumerate() if t.name.startswith("decode-")]


def test_a_refused_pipelining_client_is_released_promptly(live_server: LiveServer) -> None:
    """A fatal message followed by a few more (a pipelining client): the session must be
    gone soon after the client, not hold a stream slot for seconds."""

    async def refused() -> Reply:
        ws = await RawWebSocket.connect(live_server.port, random.Random(1))
        try:
            await ws.send_binary(_hello())
            await ws.send_binary(_record(p.MessageType.VIDEO, bytes(21), flags=0xFF))
            for probe_id in range(6):
                await ws.send_binary(p.encode_event(p.Probe(probe_id, 0)))
            return await ws.read_reply(READ_TIMEOUT_S)
        finally:
            ws.abort()

    assert live_server.wait_idle(15.0) == 0  # earlier tests' lingering sessions
    reply = asyncio.run(refused())
    assert reply.first_error() is not None and reply.close_code == 1002
    assert live_server.wait_idle(2.0) == 0, "the refused session outlived its client"
