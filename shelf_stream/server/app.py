"""The WebSocket server: accepts streams, owns the detector and the scheduler."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
from collections.abc import Callable

from websockets.asyncio.server import Server as WsServer
from websockets.asyncio.server import ServerConnection as WebSocket
from websockets.asyncio.server import serve
from websockets.typing import Origin

from shelf_stream import protocol as p
from shelf_stream.engine.base import Detector
from shelf_stream.errors import ConfigError
from shelf_stream.server.config import ServerConfig
from shelf_stream.server.metrics import ServerMetrics, http_endpoints
from shelf_stream.server.scheduler import InferenceScheduler
from shelf_stream.server.session import Session
from shelf_stream.server.web import first_response, web_endpoints

log = logging.getLogger("shelf_stream.server")


class Server:
    """Serves detection streams with one shared detector.

    ``async with Server(config, detector) as server:`` starts listening (``server.port``
    is the bound port, useful with port 0) and shuts down cleanly on exit.
    """

    def __init__(self, config: ServerConfig, detector: Detector) -> None:
        self.config = config
        self.detector = detector
        self.scheduler = InferenceScheduler(detector, config.scheduler)
        self.sessions: set[Session] = set()
        self.metrics = ServerMetrics()
        self._ws_server: WsServer | None = None

    @property
    def port(self) -> int:
        assert self._ws_server is not None, "server not started"
        return int(next(iter(self._ws_server.sockets)).getsockname()[1])

    async def start(self) -> None:
        self.scheduler.start()
        self._ws_server = await serve(
            self._handle,
            self.config.host,
            self.config.port,
            compression=None,  # H.265 does not deflate; compression only costs CPU
            max_size=self.config.limits.max_message_bytes + p.HEADER.size,
            max_queue=4,  # few messages buffered in websockets: our own queue bounds the rest
            ping_interval=self.config.ping_interval_s,
            process_request=first_response(
                http_endpoints(self.metrics, self._health), web_endpoints()
            ),
            origins=_origins(self.config.origins),
            ssl=_server_tls(self.config),
        )
        scheme = "wss" if self.config.certfile else "ws"
        log.info(
            "listening on %s://%s:%d (model %s, %d classes; web client at /, /healthz, /metrics)",
            scheme, self.config.host, self.port, self.detector.model_name,
            len(self.detector.class_names),
        )  # fmt: skip

    def _health(self) -> dict[str, object]:
        return {
            "streams": len(self.sessions),
            "model": self.detector.model_name,
            "frames_inferred": self.scheduler.frames_run,
        }

    async def stop(self) -> None:
        """Stop accepting, let every stream answer its in-flight frames and close
        (going away), then stop inference."""
        if self._ws_server is not None:
            self._ws_server.close(close_connections=False)
            for session in list(self.sessions):
                session.shutdown()
            # Each session drains within its own drain timeout; then force what is left.
            try:
                await asyncio.wait_for(
                    asyncio.shield(self._ws_server.wait_closed()),
                    self.config.drain_timeout_s * 2 + 1,
                )
            except TimeoutError:
                log.warning("%d streams did not close in time; aborting them", len(self.sessions))
                for session in list(self.sessions):
                    session.abort()
                await self._ws_server.wait_closed()
        await self.scheduler.close()
        log.info("server stopped")

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _handle(self, websocket: WebSocket) -> None:
        session = Session(
            websocket,
            config=self.config,
            detector=self.detector,
            scheduler=self.scheduler,
            metrics=self.metrics,
        )
        refusal = self._refusal(session)
        if refusal is not None:
            log.warning("refusing %s: %s", session.peer, refusal)
            self.metrics.connections_refused.labels("busy").inc()
            await websocket.send(p.encode_event(p.Error(p.ErrorCode.SERVER_BUSY, refusal)))
            try:
                await asyncio.wait_for(
                    websocket.close(p.ErrorCode.SERVER_BUSY.close_code, "server busy"),
                    self.config.close_timeout_s,
                )
            except TimeoutError:
                websocket.transport.abort()
            return
        self.sessions.add(session)
        self.metrics.active_streams.inc()
        try:
            await session.run()
        finally:
            self.sessions.discard(session)
            self.metrics.active_streams.dec()

    def _refusal(self, session: Session) -> str | None:
        if len(self.sessions) >= self.config.max_streams:
            return f"server is at its limit of {self.config.max_streams} streams"
        same_address = sum(s.peer_host == session.peer_host for s in self.sessions)
        if same_address >= self.config.max_streams_per_address:
            return f"at most {self.config.max_streams_per_address} streams per client address"
        return None


def _origins(allowed: tuple[str, ...] | None) -> list[Origin | None] | None:
    # None in the list admits clients that send no Origin header (non-browsers).
    return [*(Origin(origin) for origin in allowed), None] if allowed else None


def _server_tls(config: ServerConfig) -> ssl.SSLContext | None:
    if config.certfile is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(config.certfile, config.keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot load the TLS certificate {config.certfile} / key {config.keyfile}: {exc}"
        ) from exc
    return context


async def run_server(
    config: ServerConfig,
    load_detector: Callable[[], Detector],
    *,
    started: Callable[[Server], None] | None = None,
) -> None:
    """Load the model (off the event loop), serve until SIGINT/SIGTERM, then shut down."""
    loop = asyncio.get_running_loop()
    detector = await loop.run_in_executor(None, load_detector)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        # Not available on Windows or outside the main thread: Ctrl-C still works there.
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        async with Server(config, detector) as server:
            if started is not None:
                started(server)
            await stop.wait()
            log.info("shutting down: closing %d streams", len(server.sessions))
    finally:
        detector.close()
