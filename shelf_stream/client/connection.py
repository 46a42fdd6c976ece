"""The client's connection: connect (TLS), handshake, probe, and reconnect with backoff.

One ``StreamConnection`` per WebSocket connection: the socket, its protocol state and
the server's Ready. Message numbers (``seq``) start at 0 on every connection. The
reconnect policy (``Backoff``) is sans-I/O: exponential backoff with full jitter, until
``give_up_s`` after the connection was lost (the documented reconnect limit).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import ssl
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

from websockets.asyncio.client import ClientConnection as WebSocket
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from shelf_stream import protocol as p
from shelf_stream.client.probe import BandwidthProbe, ProbeResult
from shelf_stream.errors import ConfigError, ShelfStreamError

log = logging.getLogger("shelf_stream.client")


class ConnectionFailed(ShelfStreamError):
    """Connecting or the handshake failed; retrying may help."""


class FatalRefusal(ShelfStreamError):
    """The server refused the stream for a reason retrying cannot fix (``code``)."""

    def __init__(self, message: str, code: p.ErrorCode) -> None:
        super().__init__(message)
        self.code = code


_FATAL_ERRORS = {
    p.ErrorCode.UNAUTHORIZED,
    p.ErrorCode.UNSUPPORTED_CODEC,
    p.ErrorCode.UNSUPPORTED_VERSION,
    p.ErrorCode.BAD_HELLO,
    p.ErrorCode.LIMIT_EXCEEDED,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class ReconnectPolicy:
    """After a lost connection (never the first connect): when to retry, and when to stop."""

    initial_delay_s: float = 0.5
    max_delay_s: float = 10.0
    # The reconnect limit: the client ends this long after the connection was lost.
    give_up_s: float = 300.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionConfig:
    """How the client talks to the server: timeouts, buffers and the reconnect policy.

    Where (the URL) and who (the token, in the Hello) come from ``ClientConfig``.
    """

    connect_timeout_s: float = 10.0  # TCP, TLS, WebSocket upgrade and Hello each
    # Waiting for the server's close frame: short, since the client's exit waits on it.
    close_timeout_s: float = 0.5
    write_limit_bytes: int = 64 * 1024
    # Linux: unsent bytes the kernel may hold per socket (TCP_NOTSENT_LOWAT). Without it a
    # send buffer of megabytes hides a slow link from the pacing for seconds.
    socket_unsent_limit_bytes: int = 16 * 1024
    reconnect: ReconnectPolicy | None = field(default_factory=ReconnectPolicy)


@dataclass(slots=True)
class StreamConnection:
    """One WebSocket connection with its protocol state (owned by the event loop)."""

    ws: WebSocket
    proto: p.ClientConnection
    ready: p.Ready
    seq: int = 0  # the next Video message's number

    async def send(self, event: p.Event) -> int:
        """Send ``event``; returns the message's size in bytes."""
        message = self.proto.send(event)
        await self.ws.send(message)
        return len(message)

    async def events(self) -> AsyncIterator[p.Event]:
        """The server's events until the connection closes (``ConnectionClosed``)."""
        async for message in self.ws:
            self.proto.receive_message(message)
            for event in self.proto.events_received():
                yield event

    async def close(self) -> None:
        await self.ws.close()


async def open_connection(
    url: str,
    config: ConnectionConfig,
    hello: p.Hello,
    *,
    cafile: Path | None = None,
    timeout_s: float | None = None,
) -> StreamConnection:
    """Connect to ``url`` and complete the handshake.

    ``cafile`` (wss://) adds a trusted CA to the system's. ``ConfigError`` for what the
    user must fix (a bad URL, an unverifiable certificate), ``FatalRefusal`` when the
    server refuses the stream for good, ``ConnectionFailed`` otherwise.
    """
    timeout = min(config.connect_timeout_s, timeout_s or config.connect_timeout_s)
    ws = await _connect(url, config, cafile, timeout)
    proto = p.ClientConnection()
    try:
        ready = await _handshake(ws, proto, hello, timeout)
    except BaseException:
        await ws.close()
        raise
    return StreamConnection(ws, proto, ready)


async def _connect(
    url: str, config: ConnectionConfig, cafile: Path | None, timeout_s: float
) -> WebSocket:
    try:
        ws = await connect(
            url,
            ssl=_client_tls(url, cafile),
            compression=None,
            max_size=p.DEFAULT_MAX_MESSAGE_BYTES + p.HEADER.size,
            write_limit=config.write_limit_bytes,
            open_timeout=timeout_s,
            close_timeout=config.close_timeout_s,
            proxy=None,
        )
    except ssl.SSLCertVerificationError as exc:
        raise ConfigError(
            f"cannot verify the server's TLS certificate at {url}: "
            f"{exc.verify_message}; pass --cafile with the CA that signed it"
        ) from exc
    except InvalidURI as exc:
        raise ConfigError(f"bad server URL {url!r}: {exc}") from exc
    except (OSError, InvalidHandshake, TimeoutError) as exc:
        raise ConnectionFailed(f"cannot connect to {url}: {exc}") from exc
    _limit_unsent_bytes(ws, config.socket_unsent_limit_bytes)
    return ws


async def _handshake(
    ws: WebSocket, proto: p.ClientConnection, hello: p.Hello, timeout_s: float
) -> p.Ready:
    try:
        await ws.send(proto.send(hello))
        message = await asyncio.wait_for(ws.recv(), timeout_s)
    except (ConnectionClosed, TimeoutError) as exc:
        raise ConnectionFailed(f"the server did not complete the handshake: {exc}") from exc
    proto.receive_message(message)
    for event in proto.events_received():
        if isinstance(event, p.Error):
            message = f"server refused the stream: {event.message}"
            if event.code in _FATAL_ERRORS:
                raise FatalRefusal(message, event.code)
            raise ConnectionFailed(message)
        if isinstance(event, p.Ready):
            return event
    raise ConnectionFailed("server did not answer the hello with ready")


async def run_probe(
    connection: StreamConnection, probe: BandwidthProbe, clock: Callable[[], float]
) -> ProbeResult:
    """Send the probe's bursts and feed it the acknowledgements until it is done."""
    ws, proto = connection.ws, connection.proto
    while not probe.done:
        now = clock()
        for probe_id, padding in probe.next_probes(now):
            await ws.send(proto.send(p.Probe(probe_id, round(now * 1_000_000), padding)))
        due = probe.get_timer()
        timeout = max(0.0, due - clock()) if due is not None else 0.05
        try:
            message = await asyncio.wait_for(ws.recv(), timeout)
        except TimeoutError:
            probe.handle_timer(clock())
            continue
        proto.receive_message(message)
        for event in proto.events_received():
            if isinstance(event, p.ProbeAck):
                probe.on_ack(event, clock())
    return probe.result()


class Backoff:
    """Delays between reconnect attempts (sans-I/O): exponential, with full jitter.

    Each delay is drawn from [0.5, 1] x the current step, which doubles up to
    ``max_delay_s``; ``next_delay`` returns None once ``give_up_s`` has passed since
    ``lost_at``, and never a delay that ends past that limit.
    """

    def __init__(
        self, policy: ReconnectPolicy, lost_at: float, rng: random.Random | None = None
    ) -> None:
        self.policy = policy
        self.give_up_at = lost_at + policy.give_up_s
        self.attempts = 0
        self._step = policy.initial_delay_s
        self._rng = rng or random.Random()

    def next_delay(self, now: float) -> float | None:
        left = self.give_up_at - now
        if left <= 0:
            return None
        delay = min(self._rng.uniform(0.5, 1.0) * self._step, left)
        self._step = min(self._step * 2, self.policy.max_delay_s)
        self.attempts += 1
        return delay

    def time_left(self, now: float) -> float:
        return max(0.0, self.give_up_at - now)


def _client_tls(url: str, cafile: Path | None) -> ssl.SSLContext | None:
    if not url.startswith("wss://"):
        return None
    # Certificate and host name are always verified; --cafile only adds a trusted CA.
    return ssl.create_default_context(cafile=str(cafile) if cafile else None)


_TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)  # Linux's value


def _limit_unsent_bytes(ws: WebSocket, limit: int) -> None:
    sock = ws.transport.get_extra_info("socket")
    if sock is None or not sys.platform.startswith("linux") or limit <= 0:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, _TCP_NOTSENT_LOWAT, limit)
