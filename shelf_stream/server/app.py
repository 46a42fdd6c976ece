"""The WebSocket server: admits streams, owns the detector and the scheduler.

A connection first waits for its Hello as a *pending* connection (its own limits and a
short deadline, ``server.admission``); only a valid Hello takes a stream slot, and only
then does the session send Ready and start decoding.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import signal
import ssl
import time
from collections.abc import Callable

from websockets.asyncio.server import Server as WsServer
from websockets.asyncio.server import ServerConnection as WebSocket
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed
from websockets.typing import Origin

from shelf_stream import allocator
from shelf_stream import protocol as p
from shelf_stream.engine.base import Detector
from shelf_stream.errors import ConfigError, RemoteProtocolError
from shelf_stream.server.admission import Admission, AdmissionLimits, Refused
from shelf_stream.server.config import ServerConfig
from shelf_stream.server.limits import LogThrottle
from shelf_stream.server.metrics import ServerMetrics, http_endpoints
from shelf_stream.server.scheduler import InferenceScheduler
from shelf_stream.server.session import Session
from shelf_stream.server.web import first_response, web_endpoints
from shelf_stream.server.wsconn import StampedConnection

log = logging.getLogger("shelf_stream.server")

_connection_ids = itertools.count(1)
#: A refusal of connections that never streamed is logged once per address, cause and
#: this many seconds, with the count of those held back.
REFUSAL_LOG_INTERVAL_S = 60.0


class _PendingHello:
    """A connection waiting for its Hello: its deadline, which eviction can bring forward."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.refusal: RemoteProtocolError | None = None
        self._deadline: asyncio.Timeout | None = None
        self._waiting = False

    async def hello(self, timeout_s: float) -> p.Hello:
        self._waiting = True
        try:
            async with asyncio.timeout(timeout_s) as self._deadline:
                return await self.session.handshake()
        except TimeoutError:
            raise self.refusal or RemoteProtocolError(
                f"no hello within {timeout_s:g} s",
                code=p.ErrorCode.UNEXPECTED_MESSAGE,
                close_code=1002,
            ) from None
        finally:
            self._waiting = False

    def evict(self, message: str, close_code: int) -> None:
        """End the wait now; the connection is refused with SERVER_BUSY and ``message``."""
        if self.refusal is None:
            self.refusal = RemoteProtocolError(
                message, code=p.ErrorCode.SERVER_BUSY, close_code=close_code
            )
        if self._waiting and self._deadline is not None and not self._deadline.expired():
            self._deadline.reschedule(asyncio.get_running_loop().time())


class Server:
    """Serves detection streams with one shared detector.

    ``async with Server(config, detector) as server:`` starts listening (``server.port``
    is the bound port, useful with port 0) and shuts down cleanly on exit.
    """

    def __init__(self, config: ServerConfig, detector: Detector) -> None:
        self.config = config
        self.detector = detector
        self.scheduler = InferenceScheduler(detector, config.scheduler)
        self.sessions: set[Session] = set()  # streaming: past their Hello
        self.pending: dict[int, _PendingHello] = {}  # connection id → waiting for its Hello
        self.metrics = ServerMetrics()
        self.admission = Admission(
            AdmissionLimits(
                max_streams=config.max_streams,
                max_streams_per_address=config.max_streams_per_address,
                max_pending=config.max_pending_hellos,
                max_pending_per_address=config.max_pending_hellos_per_address,
            )
        )
        self._ws_server: WsServer | None = None
        self._trim_timer: asyncio.TimerHandle | None = None
        self._trimming = False  # a trim is running on a worker thread
        self._trim_wanted = False  # a stream closed since the last trim started
        self._refusal_log = LogThrottle(REFUSAL_LOG_INTERVAL_S)

    @property
    def port(self) -> int:
        assert self._ws_server is not None, "server not started"
        return int(next(iter(self._ws_server.sockets)).getsockname()[1])

    async def start(self) -> None:
        allocator.bound_allocator(
            self.config.malloc_arenas, self.config.malloc_mmap_threshold_bytes
        )
        self.scheduler.start()
        self._ws_server = await serve(
            self._handle,
            self.config.host,
            self.config.port,
            compression=None,  # H.265 does not deflate; compression only costs CPU
            max_size=self.config.limits.max_message_bytes + p.HEADER.size,
            max_queue=4,  # few messages buffered in websockets: our own queue bounds the rest
            ping_interval=self.config.ping_interval_s,
            create_connection=StampedConnection,
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
            "pending_hellos": len(self.pending),
            "model": self.detector.model_name,
            "frames_inferred": self.scheduler.frames_run,
        }

    async def stop(self) -> None:
        """Stop accepting, let every stream answer its in-flight frames and close
        (going away), then stop inference."""
        if self._ws_server is not None:
            self._ws_server.close(close_connections=False)
            for waiting in list(self.pending.values()):
                waiting.evict("server shutting down", 1001)
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
        if self._trim_timer is not None:
            self._trim_timer.cancel()
        await self.scheduler.close()
        log.info("server stopped")

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _handle(self, websocket: WebSocket) -> None:
        assert isinstance(websocket, StampedConnection)
        connection = next(_connection_ids)
        session = Session(
            websocket,
            config=self.config,
            detector=self.detector,
            scheduler=self.scheduler,
            metrics=self.metrics,
        )
        try:
            hello = await self._admit(connection, session)
            if hello is None:
                return
            self.sessions.add(session)
            self.metrics.active_streams.inc()
            try:
                await session.run(hello)
            finally:
                self.sessions.discard(session)
                self.metrics.active_streams.dec()
                self._schedule_trim()
        finally:
            self.admission.on_close(connection)

    async def _admit(self, connection: int, session: Session) -> p.Hello | None:
        """Wait for the connection's Hello as a pending connection, then give it a
        stream slot. None: refused (and told why), or gone."""
        decision = self.admission.on_connect(connection, session.peer_host)
        if isinstance(decision, Refused):
            await self._refuse(session, decision)
            return None
        for victim in decision.evicted:
            evicted = self.pending[victim]
            reason = "too many connections are waiting for their hello; yours waited longest"
            self._log_refusal(evicted.session, "evicted", reason)
            self.metrics.connections_refused.labels("evicted").inc()
            evicted.evict(reason, p.ErrorCode.SERVER_BUSY.close_code)
        waiting = self.pending[connection] = _PendingHello(session)
        try:
            hello = await waiting.hello(self.config.hello_timeout_s)
        except RemoteProtocolError as error:
            self.admission.on_close(connection)  # no longer waiting: make room at once
            await self._refuse_hello(waiting, error)
            return None
        except ConnectionClosed:
            return None
        finally:
            del self.pending[connection]
        decision = self.admission.on_hello(connection)
        if isinstance(decision, Refused):
            await self._refuse(session, decision)
            return None
        return hello

    async def _refuse_hello(self, waiting: _PendingHello, error: RemoteProtocolError) -> None:
        code = p.ErrorCode(error.code)
        if waiting.refusal is None:  # evictions were counted and said already
            self._log_refusal(waiting.session, code.name.lower(), str(error))
            self.metrics.connections_refused.labels(code.name.lower()).inc()
        await waiting.session.refuse(code, str(error), error.close_code)

    async def _refuse(self, session: Session, refusal: Refused) -> None:
        self._log_refusal(session, refusal.label, refusal.reason)
        self.metrics.connections_refused.labels(refusal.label).inc()
        code = p.ErrorCode.SERVER_BUSY
        await session.refuse(code, refusal.reason, code.close_code)

    def _log_refusal(self, session: Session, cause: str, reason: str) -> None:
        held_back = self._refusal_log.allow((session.peer_host, cause), time.monotonic())
        if held_back is None:
            return
        more = f" ({held_back} more from {session.peer_host} since)" if held_back else ""
        log.warning("refusing %s: %s%s", session.peer, reason, more)

    def _schedule_trim(self) -> None:
        """After streams close, give their memory back (on a worker thread): at most once
        per ``allocator.TRIM_INTERVAL_S``, and always once after the last close."""
        self._trim_wanted = True
        if self._trim_timer is None and not self._trimming:
            loop = asyncio.get_running_loop()
            self._trim_timer = loop.call_later(allocator.TRIM_INTERVAL_S, self._start_trim)

    def _start_trim(self) -> None:
        self._trim_timer = None
        self._trim_wanted = False
        self._trimming = True
        loop = asyncio.get_running_loop()
        loop.run_in_executor(None, allocator.trim).add_done_callback(self._trimmed)

    def _trimmed(self, _: asyncio.Future[bool]) -> None:
        self._trimming = False
        if self._trim_wanted:  # streams closed while it ran: once more after them
            self._schedule_trim()


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
