"""One WebSocket connection = one stream: I/O around the stream's ledger.

Every decision about a pts (decode it, refuse it, offer it for inference, answer it)
is the ``StreamLedger``'s (``server.stream``, sans-I/O). The session only moves data
and runs the ledger's actions:

- the receive loop (event loop) parses messages and feeds them to the ledger with
  their arrival stamps (``StampedConnection``); it reads only while the decode inbox
  and the outbox have room, so a slow decoder or writer pushes back on the client
  through TCP: compressed packets are never dropped;
- the decode task hands each access unit, one at a time, to this stream's own decoder
  thread (the decoder, its size check and the letterbox run there, off the loop);
- decoded frames go to the shared ``InferenceScheduler`` (latest frame wins), whose
  callback reports every frame leaving it back to the ledger;
- every message for the client goes through one outbox drained by the writer task,
  which stamps the "sent" time of Results.

The Hello is read by ``handshake`` before the stream has a slot (the server's
admission decides, ``server.admission``); ``run`` then serves the stream to its close.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, Generic, TypeVar

import av
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK

from shelf_stream import protocol as p
from shelf_stream.codec.base import Decoder
from shelf_stream.codec.nvdec import make_decoder_factory
from shelf_stream.codec.recovery import DecodeDrop, DecodeResult, RecoveringDecoder
from shelf_stream.engine.base import Detector
from shelf_stream.errors import RemoteProtocolError, ShelfStreamError
from shelf_stream.server.config import ServerConfig
from shelf_stream.server.geometry import PictureBudget
from shelf_stream.server.limits import TokenBucket
from shelf_stream.server.metrics import ServerMetrics
from shelf_stream.server.scheduler import InferenceDone, InferenceScheduler
from shelf_stream.server.stream import (
    Decode,
    Decoded,
    Infer,
    LedgerConfig,
    LedgerStats,
    Message,
    Picture,
    ResultReady,
    Send,
    StreamLedger,
    Warn,
)
from shelf_stream.server.wsconn import StampedConnection

log = logging.getLogger("shelf_stream.server")

_session_ids = itertools.count(1)
T = TypeVar("T")


class Inbox(Generic[T]):
    """A FIFO between two tasks of one stream, on the event loop.

    ``put`` never waits: the producers that cannot wait (callbacks, timers) only add
    what the stream already owes, which the frames in flight bound. The producer that
    can wait (the receive loop) waits for ``room`` below ``limit`` before it reads
    more from the client.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._items: deque[T] = deque()
        self._not_empty = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: T) -> None:
        self._items.append(item)
        self._not_empty.set()
        if len(self._items) >= self.limit:
            self._room.clear()

    async def get(self) -> T:
        while not self._items:
            self._not_empty.clear()
            await self._not_empty.wait()
        item = self._items.popleft()
        if len(self._items) < self.limit:
            self._room.set()
        return item

    async def room(self) -> None:
        await self._room.wait()

    def discard(self) -> None:
        """The consumer is gone: drop what is queued and never make a producer wait."""
        self._items.clear()
        self._room.set()


class Session:
    """Serves one client connection from its hello to its close."""

    def __init__(
        self,
        websocket: StampedConnection,
        *,
        config: ServerConfig,
        detector: Detector,
        scheduler: InferenceScheduler,
        metrics: ServerMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.id = next(_session_ids)
        self.ws = websocket
        self.config = config
        self.detector = detector
        self.scheduler = scheduler
        self.metrics = metrics or ServerMetrics()
        self._clock = clock
        self.peer, self.peer_host = _peer_name(websocket)
        self._message_rate = TokenBucket(
            config.max_messages_per_s, 2 * config.max_messages_per_s, clock()
        )
        self._proto = p.ServerConnection(config.limits)
        self._ledger: StreamLedger | None = None
        self._make_decoder: Callable[[], Decoder] | None = None
        self._budget: PictureBudget | None = None  # immutable: shared with the decoder thread
        self._decoder: RecoveringDecoder | None = None  # owned by the decoder thread
        self._executor: ThreadPoolExecutor | None = None
        self._decoder_thread_started = False  # its thread starts with the first access unit
        self._decode_inbox: Inbox[Decode | None] = Inbox(config.decode_queue_packets)
        # None stops the writer.
        self._outbox: Inbox[Message | p.Error | None] = Inbox(config.outbox_messages)
        self._outbox_done = asyncio.Event()
        self._shutting_down = asyncio.Event()
        self._failed = asyncio.Event()
        self._failure: RemoteProtocolError | None = None
        self._pumping = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due: float | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._warned: set[str] = set()

    @property
    def stats(self) -> LedgerStats:
        """What the stream received and answered (all zero before its hello)."""
        return self._ledger.stats if self._ledger is not None else LedgerStats()

    # ------------------------------------------------------------------ lifecycle

    def shutdown(self) -> None:
        """Ask the stream to finish: in-flight frames are answered, then it closes (1001)."""
        self._shutting_down.set()

    def abort(self) -> None:
        """Drop the connection now (a stream that did not finish in time)."""
        self.ws.transport.abort()

    async def handshake(self) -> p.Hello:
        """Read and check the Hello (the caller bounds the wait). ``RemoteProtocolError``
        if it is not a valid hello for this server."""
        message, arrived_at = await self.ws.recv_stamped()
        self._message_rate.allow(arrived_at)  # counted; a full bucket always has room
        self._proto.receive_message(message)
        events = self._proto.events_received()
        if len(events) != 1 or not isinstance(events[0], p.Hello):
            raise RemoteProtocolError(
                "the first message must be a hello", code=p.ErrorCode.UNEXPECTED_MESSAGE
            )
        hello = events[0]
        self._check_token(hello)
        try:
            self._make_decoder = make_decoder_factory(hello.codec, self.config.decoder)
        except ShelfStreamError as exc:
            raise RemoteProtocolError(
                f"codec {hello.codec} cannot be decoded here: {exc}",
                code=p.ErrorCode.UNSUPPORTED_CODEC,
                close_code=p.ErrorCode.UNSUPPORTED_CODEC.close_code,
            ) from exc
        return hello

    async def refuse(self, code: p.ErrorCode, message: str, close_code: int) -> None:
        """Before the stream started: say why, then close."""
        await self._fail(code, message, close_code)

    async def run(self, hello: p.Hello) -> None:
        """Serve the stream (its slot is taken) from Ready to its close."""
        try:
            await self._serve(hello)
        except ConnectionClosed:
            log.info("stream %d from %s: client went away", self.id, self.peer)
        except TimeoutError:
            log.warning(
                "stream %d from %s: could not answer every frame within %g s; closing",
                self.id, self.peer, self.config.drain_timeout_s,
            )  # fmt: skip
            await self._fail(p.ErrorCode.INTERNAL, "timed out answering frames", 1011)
        finally:
            await self._release()

    async def _serve(self, hello: p.Hello) -> None:
        await self._start(hello)
        writer = self._spawn(self._write_loop(), "writer")
        decoder = self._spawn(self._decode_loop(), "decode")
        receiver = self._spawn(self._receive_loop(), "receive")
        shutdown = self._spawn(self._shutting_down.wait(), "shutdown")
        failed = self._spawn(self._failed.wait(), "failed")
        try:
            await asyncio.wait(
                {receiver, shutdown, failed, writer, decoder}, return_when=asyncio.FIRST_COMPLETED
            )
            if failed.done() and self._failure is not None:
                raise self._failure
            if receiver.done():
                if receiver.result():  # Bye: answer everything, then a normal close
                    await self._drain(decoder)
                    await self._close(1000, "bye")
            elif shutdown.done():
                # Server shutdown: stop reading, answer what is in flight, then go away.
                receiver.cancel()
                await asyncio.gather(receiver, return_exceptions=True)
                await self._drain(decoder)
                await self._close(1001, "server shutting down")
            else:
                # The writer lost the connection (ConnectionClosed), or a bug ended the
                # decode task: its exception ends the stream.
                (writer if writer.done() else decoder).result()
        except RemoteProtocolError as error:
            receiver.cancel()  # read no more: the close discards what is left
            await asyncio.gather(receiver, return_exceptions=True)
            await self._refuse_stream(error)
        finally:
            for task in (receiver, shutdown, failed, decoder):
                task.cancel()
            await asyncio.gather(receiver, shutdown, failed, decoder, return_exceptions=True)
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)

    def _spawn(self, coroutine: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
        return asyncio.create_task(coroutine, name=f"{name}-{self.id}")

    async def _start(self, hello: p.Hello) -> None:
        config = self.config
        self._ledger = StreamLedger(
            self.id,
            hello,
            LedgerConfig(
                feedback_interval_s=config.feedback_interval_ms / 1000,
                keyframe_request_interval_s=config.keyframe_request_interval_ms / 1000,
                max_size_mismatches=config.max_size_mismatches,
            ),
        )
        self._budget = self._ledger.budget
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"decode-{self.id}")
        self.scheduler.register(self.id, self._on_inferred)
        ready = p.Ready(
            session=str(self.id),
            model=self.detector.model_name,
            class_names=self.detector.class_names,
            max_message_bytes=config.limits.max_message_bytes,
            max_width=config.limits.max_width,
            max_height=config.limits.max_height,
            max_fps=config.limits.max_fps,
        )
        await self.ws.send(self._proto.send(ready))
        log.info(
            "stream %d from %s: %s %dx%d @ %.3g fps (%s)",
            self.id, self.peer, hello.codec, hello.width, hello.height, hello.fps,
            hello.client or "unknown client",
        )  # fmt: skip

    def _check_token(self, hello: p.Hello) -> None:
        expected = self.config.token
        if expected is None:
            return
        given = (hello.token or "").encode()
        # Constant-time comparison: the time taken must not reveal how much matched.
        if not hmac.compare_digest(given, expected.encode()):
            raise RemoteProtocolError(
                "a valid token is required (client: --token)",
                code=p.ErrorCode.UNAUTHORIZED,
                close_code=p.ErrorCode.UNAUTHORIZED.close_code,
            )

    # ------------------------------------------------------------------ receiving

    async def _receive_loop(self) -> bool:
        """Read until Bye (True) or the connection closes (False)."""
        ledger = self._require_ledger()
        while True:
            await self._outbox.room()  # the writer is behind: stop reading for now
            # recv() does not suspend while messages are queued: without this, a burst on
            # one connection would hold the event loop from every other stream.
            await asyncio.sleep(0)
            try:
                message, arrived_at = await self.ws.recv_stamped()
            except ConnectionClosedOK:
                return False
            # Counted by arrival: a server slow to get here lets no more through.
            if not self._message_rate.allow(arrived_at):
                raise RemoteProtocolError(
                    f"more than {self.config.max_messages_per_s:g} messages per second",
                    code=p.ErrorCode.LIMIT_EXCEEDED,
                    close_code=p.ErrorCode.LIMIT_EXCEEDED.close_code,
                )
            self._proto.receive_message(message)
            for event in self._proto.events_received():
                if isinstance(event, p.Video):
                    await self._decode_inbox.room()  # the decoder is behind: TCP pushes back
                    self.metrics.frames_in.inc()
                    self.metrics.bytes_in.inc(len(event.data))
                    ledger.on_video(event, self._clock())
                elif isinstance(event, p.Probe):
                    ledger.on_probe(event, len(message), self._clock())
                elif isinstance(event, p.Bye):
                    return True
                elif isinstance(event, p.Error):
                    self._warn_once(
                        "client_error", "stream %d: client reported error: %s", self.id,
                        event.message,
                    )  # fmt: skip
                    return False
                self._pump()

    # ---------------------------------------------------------- the ledger's actions

    def _require_ledger(self) -> StreamLedger:
        assert self._ledger is not None, "the stream has not started"
        return self._ledger

    def _pump(self) -> None:
        """Carry out what the ledger asked for, in order."""
        if self._pumping:
            return  # a scheduler callback during an Infer: the outer loop takes it
        ledger = self._require_ledger()
        self._pumping = True
        try:
            while (action := ledger.next_action()) is not None:
                if isinstance(action, Decode):
                    self._decode_inbox.put(action)
                elif isinstance(action, Infer):
                    self.scheduler.offer(action.frame)
                elif isinstance(action, Send):
                    self._post(action.message)
                elif isinstance(action, Warn):
                    self._warn_once(
                        action.cause.value, "stream %d from %s: %s", self.id, self.peer,
                        action.message,
                    )  # fmt: skip
        finally:
            self._pumping = False
        self._arm_timer()

    def _post(self, message: Message) -> None:
        if isinstance(message, p.Dropped):
            self.metrics.frames_dropped.labels(message.reason.name.lower()).inc()
            if message.reason is p.DropReason.DECODE_ERROR:
                self.metrics.decoder_errors.inc()
        elif isinstance(message, p.KeyframeRequest):
            self.metrics.keyframe_requests.inc()
            log.info(
                "stream %d: asking the client for a keyframe (%s)",
                self.id, message.reason.name.lower(),
            )  # fmt: skip
        self._outbox.put(message)

    def _arm_timer(self) -> None:
        due = self._require_ledger().get_timer()
        if due == self._timer_due:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_due = due
        if due is not None:
            delay = max(0.0, due - self._clock())
            self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer, self._timer_due = None, None
        self._feed(partial(self._require_ledger().on_timer, self._clock()))

    def _on_inferred(self, done: InferenceDone) -> None:
        """Scheduler callback (event loop): a frame of ours left the scheduler."""
        self._feed(partial(self._require_ledger().on_inferred, done))

    def _feed(self, step: Callable[[], None]) -> None:
        """Give the ledger one input outside the receive loop; a fatal one ends the stream."""
        if self._failure is not None:
            return  # the stream is ending with an Error; nothing more is owed
        try:
            step()
        except RemoteProtocolError as error:
            self._failure = error
            self._failed.set()
        self._pump()

    # -------------------------------------------------------------------- decoding

    async def _decode_loop(self) -> None:
        loop = asyncio.get_running_loop()
        ledger = self._require_ledger()
        while (work := await self._decode_inbox.get()) is not None:
            self._decoder_thread_started = True
            decoded = await loop.run_in_executor(self._executor, self._decode_one, work)
            self._feed(partial(ledger.on_decoded, decoded))
        if not self._decoder_thread_started:
            return  # nothing was ever decoded: nothing to flush
        flushed = await loop.run_in_executor(self._executor, self._flush)
        if flushed is not None:
            self._feed(partial(ledger.on_decoded, flushed))

    def _decode_one(self, work: Decode) -> Decoded:
        """Decoder thread: decode one access unit and letterbox what comes out."""
        video = work.video
        try:
            if work.fresh_decoder or self._decoder is None:
                self._new_decoder()
            assert self._decoder is not None
            result = self._decoder.decode(video.data, pts=video.pts, seq=video.seq)
            return self._decoded(video.pts, result)
        except Exception:
            # A bug or an unforeseen library error must cost this frame, not the stream.
            log.exception("stream %d: decoding pts %d failed", self.id, video.pts)
            return Decoded(video.pts, DecodeDrop.DECODE_ERROR, True, (), self._clock())

    def _new_decoder(self) -> None:
        """Decoder thread: a fresh decoder (the first, or after refused access units)."""
        assert self._make_decoder is not None
        if self._decoder is not None:
            self._decoder.close()
        self._decoder = RecoveringDecoder(
            self._require_ledger().codec, self._make_decoder, label=f"stream {self.id}"
        )

    def _flush(self) -> Decoded | None:
        if self._decoder is None:
            return None
        frames = self._decoder.flush()
        if not frames:
            return None
        return self._decoded(None, DecodeResult(tuple(frames), None, False))

    def _decoded(self, pts: int | None, result: DecodeResult) -> Decoded:
        pictures = tuple(self._picture(frame) for frame in result.frames)
        return Decoded(pts, result.dropped_reason, result.request_keyframe, pictures, self._clock())

    def _picture(self, frame: av.VideoFrame) -> Picture:
        """Decoder thread: letterbox the picture, unless it is larger than announced."""
        assert self._budget is not None
        width, height = frame.width, frame.height
        admitted = self._budget.admits(width, height)
        prepared = self.detector.prepare(frame) if admitted else None
        return Picture(_frame_pts(frame), width, height, prepared)

    # ------------------------------------------------------------------- answering

    async def _write_loop(self) -> None:
        try:
            while (item := await self._outbox.get()) is not None:
                message = self._finish_result(item) if isinstance(item, ResultReady) else item
                data = self._proto.send(message)
                self._arm_watchdog()
                try:
                    await self.ws.send(data)
                finally:
                    if self._watchdog is not None:
                        self._watchdog.cancel()
                        self._watchdog = None
        finally:
            self._outbox_done.set()
            self._outbox.discard()  # never leave the receive loop waiting for room

    def _arm_watchdog(self) -> None:
        loop = asyncio.get_running_loop()
        self._watchdog = loop.call_later(self.config.stalled_reader_timeout_s, self._check_reader)

    def _check_reader(self) -> None:
        """A send has waited ``stalled_reader_timeout_s``: cut off a client whose
        receive window is closed; a slow server (the buffer is not full) waits on."""
        if not self.ws.writing_paused:
            self._arm_watchdog()
            return
        self._watchdog = None
        self._warn_once(
            "not_reading",
            "stream %d from %s: the client has not read its results for %g s (its receive "
            "window is closed); closing",
            self.id, self.peer, self.config.stalled_reader_timeout_s,
        )  # fmt: skip
        self.metrics.connections_refused.labels("not_reading").inc()
        self.ws.transport.abort()  # an Error could not get through a closed window either

    def _finish_result(self, pending: ResultReady) -> p.Result:
        now = self._clock()
        result = pending.finish(now)
        self.metrics.frames_processed.inc()
        self.metrics.observe_stages(
            decode=result.decode_us / 1e6,
            queue=result.queue_us / 1e6,
            inference=result.infer_us / 1e6,
            send=max(0.0, now - pending.ready_at),
            total=result.total_us / 1e6,
        )
        return result

    async def _drain(self, decoder: asyncio.Task[None]) -> None:
        """After Bye: decode what is queued, wait for inference, answer every pts."""
        self._decode_inbox.put(None)
        await asyncio.wait_for(asyncio.shield(decoder), self.config.drain_timeout_s)
        await asyncio.wait_for(
            self.scheduler.wait_stream_idle(self.id), self.config.drain_timeout_s
        )
        if self._failure is not None:
            raise self._failure
        self._require_ledger().on_end()
        self._pump()
        self._outbox.put(None)
        await asyncio.wait_for(self._outbox_done.wait(), self.config.drain_timeout_s)

    async def _refuse_stream(self, error: RemoteProtocolError) -> None:
        """A fatal message while streaming: the answers owed so far, then the Error."""
        self._pump()  # what the ledger queued before it raised
        code = p.ErrorCode(error.code)
        self._warn_once(code.name, "stream %d from %s: %s; closing", self.id, self.peer, error)
        self.metrics.connections_refused.labels(code.name.lower()).inc()
        if not self._outbox_done.is_set():
            self._outbox.put(p.Error(code, str(error)))
            self._outbox.put(None)
            try:
                await asyncio.wait_for(self._outbox_done.wait(), self.config.close_timeout_s)
            except TimeoutError:
                self.ws.transport.abort()
                return
        await self._close(error.close_code, str(error)[:120])

    async def _fail(self, code: p.ErrorCode, message: str, close_code: int) -> None:
        try:
            await self.ws.send(p.encode_event(p.Error(code, message)))
        except ConnectionClosed:
            return
        await self._close(close_code, message[:120])

    async def _close(self, code: int, reason: str) -> None:
        """Close, waiting at most ``close_timeout_s`` for the peer's close frame.

        Messages the peer sent before it saw our close are read and dropped meanwhile:
        left queued, they would keep websockets from reading (max_queue), so the peer's
        close frame or EOF would never be seen. A peer that stopped reading cannot
        complete the handshake: after ``close_timeout_s`` the connection is dropped
        rather than held for websockets' own 10 s.
        """
        discard = asyncio.create_task(self._discard_incoming(), name=f"discard-{self.id}")
        try:
            await asyncio.wait_for(self.ws.close(code, reason), self.config.close_timeout_s)
        except TimeoutError:
            self.ws.transport.abort()
        finally:
            discard.cancel()
            await asyncio.gather(discard, return_exceptions=True)

    async def _discard_incoming(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                await self.ws.recv_stamped()

    async def _release(self) -> None:
        """Free everything this stream holds, whatever way it ended."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        # A frame still waiting can no longer be answered (or was drained already).
        self.scheduler.unregister(self.id)
        executor, self._executor = self._executor, None
        if executor is not None:
            loop = asyncio.get_running_loop()
            if self._decoder_thread_started:  # else no thread: nothing to close on it
                await loop.run_in_executor(executor, self._close_decoder)
            await loop.run_in_executor(None, executor.shutdown, True)
        if self._ledger is not None:
            stats = self._ledger.stats
            log.info(
                "stream %d closed: %d frames in (%.1f kB), %d results, %d dropped, "
                "%d decode errors",
                self.id, stats.frames_in, stats.bytes_in / 1000, stats.results,
                stats.dropped, stats.decode_errors,
            )  # fmt: skip

    def _close_decoder(self) -> None:
        """Decoder thread: the decoder goes with its thread."""
        if self._decoder is not None:
            self._decoder.close()
            self._decoder = None

    def _warn_once(self, cause: str, message: str, *args: object) -> None:
        """A warning a user can act on, said once per stream and cause."""
        if cause not in self._warned:
            self._warned.add(cause)
            log.warning(message, *args)


def _frame_pts(frame: av.VideoFrame) -> int:
    return int(frame.pts) if frame.pts is not None else -1


def _peer_name(websocket: StampedConnection) -> tuple[str, str]:
    """("host:port", "host") of the peer, for logs and per-address limits."""
    try:
        host, port = websocket.remote_address[:2]
    except (TypeError, ValueError, AttributeError):
        return "unknown peer", "unknown"
    return f"{host}:{port}", str(host)
