"""A scripted stand-in for the server, for what the real one does not do on demand: ask
for a keyframe mid-stream, go silent, or never finish the handshake.

It serves the real page (shelf_stream.server.web) and speaks the real protocol
(protocol.ServerConnection); ``mode`` says how it misbehaves:

- ``"answer"``: Ready, then every Video is answered with an empty Result at once and
  every Probe with its ProbeAck; after ``keyframe_after`` videos one KeyframeRequest;
- ``"silent"``: Ready and ProbeAcks, then no answer to any Video (a stuck server, or a
  half-open socket seen from the page);
- ``"no_ready"``: the WebSocket opens and reads the Hello, and nothing ever comes back.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from shelf_stream import protocol as p
from shelf_stream.server.web import web_endpoints


@dataclass
class Seen:
    """What one connection received, with the server's clock (time.monotonic)."""

    opened: float
    hello: p.Hello | None = None
    videos: list[tuple[float, p.Video]] = field(default_factory=list)
    keyframe_request_at: int | None = None  # index into videos when it was sent
    closed: float | None = None


@dataclass
class FakeServer:
    mode: str
    keyframe_after: int = 20
    connections: list[Seen] = field(default_factory=list)
    port: int = 0

    async def handle(self, ws: ServerConnection) -> None:
        seen = Seen(time.monotonic())
        self.connections.append(seen)
        proto = p.ServerConnection()
        try:
            async for message in ws:
                proto.receive_message(message)
                for event in proto.events_received():
                    await self._on_event(ws, proto, seen, event)
        except ConnectionClosed:
            pass
        finally:
            seen.closed = time.monotonic()

    async def _on_event(
        self, ws: ServerConnection, proto: p.ServerConnection, seen: Seen, event: p.Event
    ) -> None:
        if isinstance(event, p.Hello):
            seen.hello = event
            if self.mode != "no_ready":
                ready = p.Ready(
                    "1", "fake", ("thing",), p.DEFAULT_MAX_MESSAGE_BYTES, 3840, 2160, 60
                )
                await ws.send(proto.send(ready))
        elif isinstance(event, p.Probe):
            ack = p.ProbeAck(event.probe_id, event.send_us, round(time.monotonic() * 1e6), 0)
            await ws.send(proto.send(ack))
        elif isinstance(event, p.Video):
            seen.videos.append((time.monotonic(), event))
            if self.mode != "answer":
                return
            await ws.send(proto.send(p.Result(event.pts, event.capture_us, 0, 0, 0, 0)))
            if len(seen.videos) == self.keyframe_after:
                seen.keyframe_request_at = len(seen.videos)
                await ws.send(proto.send(p.KeyframeRequest(p.KeyframeReason.GAP)))


@contextlib.asynccontextmanager
async def fake_server(mode: str, **options: int) -> AsyncIterator[FakeServer]:
    fake = FakeServer(mode, **options)
    async with serve(fake.handle, "127.0.0.1", 0, process_request=web_endpoints()) as server:
        fake.port = next(iter(server.sockets)).getsockname()[1]
        yield fake
