"""A deliberately minimal WebSocket client for hostile tests: every byte under our control.

``websockets`` refuses to send malformed frames, which is exactly what a fuzz campaign
needs to send: unmasked frames, reserved bits and opcodes, lying lengths, fragments of
a message cut off mid-way. ``RawWebSocket`` writes frames byte by byte and reads the
server's (unmasked) frames back, so each hostile case costs a handful of syscalls, not
a full client library on the same event loop as the server under test.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import random
import struct
from dataclasses import dataclass, field

from shelf_stream import protocol as p

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

_HANDSHAKE_LIMIT_BYTES = 16 * 1024


class HandshakeRefused(Exception):
    """The server answered the HTTP upgrade with something other than 101."""

    def __init__(self, status_line: str) -> None:
        super().__init__(status_line)
        self.status_line = status_line


def mask(data: bytes, key: bytes) -> bytes:
    """XOR ``data`` with the 4-byte ``key`` repeated (RFC 6455 §5.3), fast for any size."""
    if not data:
        return b""
    size = len(data)
    stream = (key * (size // 4 + 1))[:size]
    return (int.from_bytes(data, "little") ^ int.from_bytes(stream, "little")).to_bytes(
        size, "little"
    )


def frame(
    opcode: int,
    payload: bytes,
    *,
    key: bytes | None,
    fin: bool = True,
    rsv: int = 0,
    declared_length: int | None = None,
) -> bytes:
    """One WebSocket frame. ``key`` None sends it unmasked (illegal from a client);
    ``declared_length`` lets the header lie about the payload that follows."""
    length = len(payload) if declared_length is None else declared_length
    first = (0x80 if fin else 0) | ((rsv & 0x7) << 4) | (opcode & 0xF)
    mask_bit = 0x80 if key is not None else 0
    if length < 126:
        head = bytes((first, mask_bit | length))
    elif length < 1 << 16:
        head = bytes((first, mask_bit | 126)) + struct.pack("!H", length)
    else:
        head = bytes((first, mask_bit | 127)) + struct.pack("!Q", length & (2**64 - 1))
    if key is None:
        return head + payload
    return head + key + mask(payload, key)


@dataclass(slots=True)
class Reply:
    """What the server sent back on one connection, until close, EOF or our deadline."""

    records: list[tuple[int, bytes]] = field(default_factory=list)  # (type, body)
    close_code: int | None = None
    eof: bool = False
    timed_out: bool = False
    pongs: int = 0

    def first_error(self) -> p.Error | None:
        for kind, body in self.records:
            if kind == p.MessageType.ERROR:
                try:
                    return p.parse_error(body)
                except Exception:  # a malformed Error from the server is its own finding
                    return p.Error(p.ErrorCode.INTERNAL, "<unparseable error record>")
        return None

    def count(self, kind: p.MessageType) -> int:
        return sum(1 for k, _ in self.records if k == kind)

    def label(self) -> str:
        """A short outcome label for the report, e.g. ``Error(BAD_HELLO) close 1002``."""
        parts = []
        error = self.first_error()
        if error is not None:
            parts.append(f"Error({error.code.name})")
        elif self.count(p.MessageType.READY):
            parts.append("Ready")
        if self.close_code is not None:
            parts.append(f"close {self.close_code}")
        elif self.eof:
            parts.append("eof")
        elif self.timed_out:
            parts.append("open")
        return " ".join(parts) or "nothing"


class RawWebSocket:
    """One hand-driven client connection to ``ws://127.0.0.1:port/``."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, rng: random.Random
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.rng = rng
        # Our end's port: the server names a session by it ("127.0.0.1:PORT").
        sockname = writer.get_extra_info("sockname")
        self.local_port: int = int(sockname[1]) if sockname else -1

    @classmethod
    async def open_tcp(cls, port: int, rng: random.Random) -> RawWebSocket:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer, rng)

    @classmethod
    async def connect(cls, port: int, rng: random.Random, timeout_s: float = 5.0) -> RawWebSocket:
        ws = await cls.open_tcp(port, rng)
        try:
            await asyncio.wait_for(ws.handshake(port), timeout_s)
        except BaseException:
            ws.abort()
            raise
        return ws

    def upgrade_request(self, port: int) -> bytes:
        key = base64.b64encode(self.rng.randbytes(16)).decode()
        return (
            f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()

    async def handshake(self, port: int) -> None:
        await self.send_raw(self.upgrade_request(port))
        response = await self.read_http_head()
        status = response.split(b"\r\n", 1)[0].decode("latin-1")
        if not status.startswith("HTTP/1.1 101"):
            raise HandshakeRefused(status)

    async def read_http_head(self) -> bytes:
        try:
            return await self.reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            return await self.reader.read(_HANDSHAKE_LIMIT_BYTES)

    # ------------------------------------------------------------------ sending

    def key(self) -> bytes:
        return self.rng.randbytes(4)

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def send_frame(self, opcode: int, payload: bytes, **options: object) -> None:
        key = options.pop("key", self.key())
        await self.send_raw(frame(opcode, payload, key=key, **options))  # type: ignore[arg-type]

    async def send_binary(self, payload: bytes) -> None:
        await self.send_frame(OP_BINARY, payload)

    async def send_event(self, event: p.Event) -> None:
        await self.send_binary(p.encode_event(event))

    # ------------------------------------------------------------------ reading

    async def read_frame(self) -> tuple[int, bytes]:
        head = await self.reader.readexactly(2)
        opcode, length = head[0] & 0x0F, head[1] & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
        key = await self.reader.readexactly(4) if head[1] & 0x80 else None
        payload = await self.reader.readexactly(length)
        return opcode, mask(payload, key) if key else payload

    async def read_reply(
        self, timeout_s: float, *, stop_after: p.MessageType | None = None, count: int = 1
    ) -> Reply:
        """Read until the server closes, ``timeout_s`` passes, or ``count`` records of
        type ``stop_after`` arrived."""
        reply = Reply()
        try:
            async with asyncio.timeout(timeout_s):
                await self._read_into(reply, stop_after, count)
        except TimeoutError:
            reply.timed_out = True
        except (asyncio.IncompleteReadError, ConnectionError):
            reply.eof = True
        return reply

    async def _read_into(self, reply: Reply, stop_after: p.MessageType | None, count: int) -> None:
        while True:
            opcode, payload = await self.read_frame()
            if opcode == OP_CLOSE:
                reply.close_code = (
                    struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                )
                return
            if opcode == OP_PONG:
                reply.pongs += 1
            elif opcode == OP_PING:
                await self.send_frame(OP_PONG, payload)
            elif opcode == OP_BINARY and len(payload) >= p.HEADER.size:
                kind = payload[0]
                reply.records.append((kind, payload[p.HEADER.size :]))
                if kind == stop_after and reply.count(stop_after) >= count:
                    return

    # ------------------------------------------------------------------ ending

    def abort(self) -> None:
        """Drop the connection at once (TCP RST), as a crashed or unplugged peer would."""
        self.writer.transport.abort()

    async def close(self) -> None:
        """Half-close politely (FIN); the server's close handshake ends on our EOF."""
        with contextlib.suppress(OSError, RuntimeError):
            self.writer.close()
            await asyncio.wait_for(self.writer.wait_closed(), 1.0)
