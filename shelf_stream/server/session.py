"""One WebSocket connection = one stream: handshake, decode, hand-off to inference, answers.

Ownership:
- the receive loop (event loop) parses messages and puts access units on a bounded
  queue; when it is full the loop stops reading, so TCP pushes back on the client:
  compressed packets are never dropped;
- the decode task feeds them, one at a time, to this stream's own decoder thread
  (decoder and letterbox run there, off the event loop);
- decoded frames go to the shared ``InferenceScheduler`` (latest frame wins);
- every answer (Result, Dropped, KeyframeRequest) goes through one bounded outbox
  drained by the writer task, which stamps the "sent" time.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import av
from websockets.asyncio.server import ServerConnection as WebSocket
from websockets.exceptions import ConnectionClosed

from shelf_stream import protocol as p
from shelf_stream.codec.nvdec import make_decoder_factory
from shelf_stream.codec.recovery import DecodeResult, RecoveringDecoder
from shelf_stream.engine.base import Detections, Detector, PreparedImage
from shelf_stream.errors import RemoteProtocolError, ShelfStreamError
from shelf_stream.server.config import ServerConfig
from shelf_stream.server.limits import TokenBucket
from shelf_stream.server.metrics import ServerMetrics
from shelf_stream.server.scheduler import InferenceScheduler, PendingFrame

log = logging.getLogger("shelf_stream.server")

_session_ids = itertools.count(1)

_DROP_REASONS = {
    "decode_error": p.DropReason.DECODE_ERROR,
    "awaiting_keyframe": p.DropReason.AWAITING_KEYFRAME,
    "gap": p.DropReason.GAP,
    "invalid": p.DropReason.INVALID,
    "too_old": p.DropReason.TOO_OLD,
    "inference_error": p.DropReason.INFERENCE_ERROR,
}
_KEYFRAME_REASONS = {
    "decode_error": p.KeyframeReason.DECODE_ERROR,
    "gap": p.KeyframeReason.GAP,
    "invalid": p.KeyframeReason.DECODE_ERROR,
    "awaiting_keyframe": p.KeyframeReason.STILL_WAITING,
}


@dataclass(slots=True)
class _Arrival:
    """An access unit on its way to the decoder."""

    video: p.Video
    received_at: float


@dataclass(slots=True)
class _Decoded:
    """What the decoder thread returns for one access unit."""

    result: DecodeResult
    prepared: list[tuple[int, PreparedImage]]  # (pts, letterboxed frame)
    decoded_at: float


@dataclass(slots=True)
class StreamStats:
    frames_in: int = 0
    bytes_in: int = 0
    results: int = 0
    dropped: int = 0
    decode_errors: int = 0


class Session:
    """Serves one client connection from hello to close."""

    def __init__(
        self,
        websocket: WebSocket,
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
        self.stats = StreamStats()
        self.metrics = metrics or ServerMetrics()
        self._clock = clock
        self._message_rate = TokenBucket(
            config.max_messages_per_s, 2 * config.max_messages_per_s, clock()
        )
        self._proto = p.ServerConnection(config.limits)
        self._decode_queue: asyncio.Queue[_Arrival | None] = asyncio.Queue(
            config.decode_queue_packets
        )
        # Answers for the client, stamped and sent by the writer task; None stops it.
        self._outbox: asyncio.Queue[p.Event | _PendingResult | None] = asyncio.Queue(
            config.outbox_messages
        )
        self._outbox_done = asyncio.Event()
        self._shutting_down = asyncio.Event()
        # pts received but not answered yet, with their capture stamps, in arrival order.
        self._unanswered: dict[int, int] = {}
        self._decoder_pending: deque[int] = deque()  # pts fed to the decoder, no frame yet
        self._last_keyframe_request = -1e9
        self._arrivals: list[tuple[int, int]] = []  # (seq, arrival µs) for the next Feedback
        self._decoder: RecoveringDecoder | None = None
        self._executor: ThreadPoolExecutor | None = None
        self.peer, self.peer_host = _peer_name(websocket)

    # ------------------------------------------------------------------ lifecycle

    def shutdown(self) -> None:
        """Ask the stream to finish: in-flight frames are answered, then it closes (1001)."""
        self._shutting_down.set()

    def abort(self) -> None:
        """Drop the connection now (a stream that did not finish in time)."""
        self.ws.transport.abort()

    async def run(self) -> None:
        try:
            await self._serve()
        except RemoteProtocolError as error:
            code = p.ErrorCode(error.code)
            log.warning("stream %d from %s: %s; closing", self.id, self.peer, error)
            self.metrics.connections_refused.labels(code.name.lower()).inc()
            await self._fail(code, str(error), error.close_code)
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

    async def _serve(self) -> None:
        hello = await self._handshake()
        log.info(
            "stream %d from %s: %s %dx%d @ %.3g fps (%s)",
            self.id, self.peer, hello.codec, hello.width, hello.height, hello.fps,
            hello.client or "unknown client",
        )  # fmt: skip
        writer = asyncio.create_task(self._write_loop(), name=f"writer-{self.id}")
        decoder = asyncio.create_task(self._decode_loop(), name=f"decode-{self.id}")
        feedback = asyncio.create_task(self._feedback_loop(), name=f"feedback-{self.id}")
        receiver = asyncio.create_task(self._receive_loop(), name=f"receive-{self.id}")
        shutdown = asyncio.create_task(self._shutting_down.wait(), name=f"shutdown-{self.id}")
        try:
            await asyncio.wait({receiver, shutdown}, return_when=asyncio.FIRST_COMPLETED)
            if receiver.done():
                if receiver.result():  # Bye: answer everything, then a normal close
                    await self._drain(decoder)
                    await self._close(1000, "bye")
            else:
                # Server shutdown: stop reading, answer what is in flight, then go away.
                receiver.cancel()
                await asyncio.gather(receiver, return_exceptions=True)
                await self._drain(decoder)
                await self._close(1001, "server shutting down")
        finally:
            for task in (receiver, shutdown):
                task.cancel()
            await asyncio.gather(receiver, shutdown, return_exceptions=True)
            feedback.cancel()
            decoder.cancel()
            await asyncio.gather(feedback, decoder, return_exceptions=True)
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)

    async def _handshake(self) -> p.Hello:
        try:
            message = await asyncio.wait_for(self.ws.recv(), self.config.hello_timeout_s)
        except TimeoutError:
            raise RemoteProtocolError(
                f"no hello within {self.config.hello_timeout_s:g} s",
                code=p.ErrorCode.UNEXPECTED_MESSAGE,
                close_code=1002,
            ) from None
        self._proto.receive_message(message)
        events = self._proto.events_received()
        if len(events) != 1 or not isinstance(events[0], p.Hello):
            raise RemoteProtocolError(
                "the first message must be a hello", code=p.ErrorCode.UNEXPECTED_MESSAGE
            )
        hello = events[0]
        self._check_token(hello)
        try:
            self._decoder = RecoveringDecoder(
                hello.codec, make_decoder_factory(hello.codec, self.config.decoder)
            )
        except ShelfStreamError as exc:
            raise RemoteProtocolError(
                f"codec {hello.codec} cannot be decoded here: {exc}",
                code=p.ErrorCode.UNSUPPORTED_CODEC,
                close_code=p.ErrorCode.UNSUPPORTED_CODEC.close_code,
            ) from exc
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"decode-{self.id}")
        self.scheduler.register(self.id, self._on_inferred)
        ready = p.Ready(
            session=str(self.id),
            model=self.detector.model_name,
            class_names=self.detector.class_names,
            max_message_bytes=self.config.limits.max_message_bytes,
            max_width=self.config.limits.max_width,
            max_height=self.config.limits.max_height,
            max_fps=self.config.limits.max_fps,
        )
        await self.ws.send(self._proto.send(ready))
        return hello

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

    async def _receive_loop(self) -> bool:
        """Read until Bye (True) or the connection closes (False)."""
        async for message in self.ws:
            if not self._message_rate.allow(self._clock()):
                raise RemoteProtocolError(
                    f"more than {self.config.max_messages_per_s:g} messages per second",
                    code=p.ErrorCode.LIMIT_EXCEEDED,
                    close_code=p.ErrorCode.LIMIT_EXCEEDED.close_code,
                )
            self._proto.receive_message(message)
            for event in self._proto.events_received():
                if isinstance(event, p.Video):
                    await self._accept_video(event)
                elif isinstance(event, p.Probe):
                    self._answer_probe(event, len(message))
                elif isinstance(event, p.Bye):
                    return True
                elif isinstance(event, p.Error):
                    log.warning("stream %d: client reported error: %s", self.id, event.message)
                    return False
        return False

    async def _accept_video(self, video: p.Video) -> None:
        if video.pts in self._unanswered:
            raise RemoteProtocolError(
                f"pts {video.pts} was sent twice; every frame needs its own pts"
            )
        self.stats.frames_in += 1
        self.stats.bytes_in += len(video.data)
        self.metrics.frames_in.inc()
        self.metrics.bytes_in.inc(len(video.data))
        self._unanswered[video.pts] = video.capture_us
        self._arrivals.append((video.seq, _us(self._clock())))
        if len(self._arrivals) >= p.MAX_FEEDBACK_ENTRIES:
            self._send_feedback()
        # Blocks while the decoder is behind: TCP then slows the client down instead
        # of us dropping compressed data.
        await self._decode_queue.put(_Arrival(video, self._clock()))

    def _answer_probe(self, probe: p.Probe, size: int) -> None:
        """Echo a probe at once, with its arrival on our clock (the client's probe uses
        the spread of arrivals in a burst, never our absolute time)."""
        self._post(p.ProbeAck(probe.probe_id, probe.send_us, _us(self._clock()), size))

    async def _feedback_loop(self) -> None:
        """Report arrival times of video messages for the client's rate controller."""
        interval_s = self.config.feedback_interval_ms / 1000
        while True:
            await asyncio.sleep(interval_s)
            self._send_feedback()

    def _send_feedback(self) -> None:
        if self._arrivals:
            arrivals, self._arrivals = tuple(self._arrivals), []
            self._post(p.Feedback(arrivals))

    async def _drain(self, decoder: asyncio.Task[None]) -> None:
        """After Bye: decode what is queued, wait for inference, answer every pts."""
        await self._decode_queue.put(None)
        await asyncio.wait_for(asyncio.shield(decoder), self.config.drain_timeout_s)
        await asyncio.wait_for(
            self.scheduler.wait_stream_idle(self.id), self.config.drain_timeout_s
        )
        for pts in list(self._unanswered):
            self._answer_dropped(pts, p.DropReason.NO_FRAME)
        await self._outbox.put(None)
        await self._wait_outbox_sent()

    async def _wait_outbox_sent(self) -> None:
        await asyncio.wait_for(self._outbox_done.wait(), self.config.drain_timeout_s)

    async def _fail(self, code: p.ErrorCode, message: str, close_code: int) -> None:
        try:
            await self.ws.send(p.encode_event(p.Error(code, message)))
        except ConnectionClosed:
            return
        await self._close(close_code, message[:120])

    async def _close(self, code: int, reason: str) -> None:
        """Close, waiting at most ``close_timeout_s`` for the peer's close frame.

        A peer that still has messages queued (or stopped reading) cannot complete the
        closing handshake while websockets has paused reading (max_queue); waiting for
        websockets' own 10 s timeout would hold this stream's slot, so drop it instead.
        """
        try:
            await asyncio.wait_for(self.ws.close(code, reason), self.config.close_timeout_s)
        except TimeoutError:
            self.ws.transport.abort()

    async def _release(self) -> None:
        """Free everything this stream holds, whatever way it ended."""
        # A frame still waiting can no longer be answered (or was drained already).
        self.scheduler.unregister(self.id)
        decoder, executor = self._decoder, self._executor
        self._decoder = self._executor = None
        if executor is not None:
            loop = asyncio.get_running_loop()
            if decoder is not None:
                await loop.run_in_executor(executor, decoder.close)
            await loop.run_in_executor(None, executor.shutdown, True)
        log.info(
            "stream %d closed: %d frames in (%.1f kB), %d results, %d dropped, %d decode errors",
            self.id, self.stats.frames_in, self.stats.bytes_in / 1000, self.stats.results,
            self.stats.dropped, self.stats.decode_errors,
        )  # fmt: skip

    # -------------------------------------------------------------------- decoding

    async def _decode_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while (arrival := await self._decode_queue.get()) is not None:
            try:
                decoded = await loop.run_in_executor(
                    self._executor, self._decode_one, arrival.video
                )
            except Exception:
                # A bug or an unforeseen library error must cost this frame, not the stream.
                log.exception("stream %d: decoding pts %d failed", self.id, arrival.video.pts)
                decoded = _Decoded(DecodeResult((), "decode_error", True), [], self._clock())
            self._after_decode(arrival, decoded)
        flushed = await loop.run_in_executor(self._executor, self._flush)
        if flushed is not None:
            self._after_decode(None, flushed)

    def _decode_one(self, video: p.Video) -> _Decoded:
        """Decoder thread: decode one access unit and letterbox what comes out."""
        assert self._decoder is not None
        result = self._decoder.decode(video.data, pts=video.pts, seq=video.seq)
        return self._prepare(result)

    def _flush(self) -> _Decoded | None:
        assert self._decoder is not None
        frames = self._decoder.flush()
        if not frames:
            return None
        return self._prepare(DecodeResult(tuple(frames), None, False))

    def _prepare(self, result: DecodeResult) -> _Decoded:
        prepared = [(_frame_pts(frame), self.detector.prepare(frame)) for frame in result.frames]
        return _Decoded(result, prepared, self._clock())

    def _after_decode(self, arrival: _Arrival | None, decoded: _Decoded) -> None:
        result = decoded.result
        if arrival is not None:
            pts = arrival.video.pts
            if result.dropped_reason is not None:
                if result.dropped_reason == "decode_error":
                    self.stats.decode_errors += 1
                    self.metrics.decoder_errors.inc()
                self._answer_dropped(
                    pts, _DROP_REASONS.get(result.dropped_reason, p.DropReason.INVALID)
                )
            else:
                self._decoder_pending.append(pts)
            if result.request_keyframe:
                self._request_keyframe(result.dropped_reason or "decode_error")
        received_at = arrival.received_at if arrival is not None else decoded.decoded_at
        for pts, prepared in decoded.prepared:
            self._settle_decoder_pending(pts)
            if pts not in self._unanswered:
                continue  # a decoder-invented pts: nobody asked for it
            frame = PendingFrame(
                stream_id=self.id,
                pts=pts,
                capture_us=self._unanswered[pts],
                received_at=received_at,
                decoded_at=decoded.decoded_at,
                prepared=prepared,
            )
            replaced = self.scheduler.offer(frame)
            if replaced is not None:
                self._answer_dropped(replaced.pts, p.DropReason.SUPERSEDED)

    def _settle_decoder_pending(self, pts: int) -> None:
        """Frames come out in order: earlier pts still waiting for a picture got none."""
        while self._decoder_pending and self._decoder_pending[0] != pts:
            missing = self._decoder_pending.popleft()
            if missing in self._unanswered and missing < pts:
                self._answer_dropped(missing, p.DropReason.NO_FRAME)
            elif missing > pts:
                self._decoder_pending.appendleft(missing)
                return
        if self._decoder_pending and self._decoder_pending[0] == pts:
            self._decoder_pending.popleft()

    def _request_keyframe(self, reason: str) -> None:
        now = self._clock()
        if now - self._last_keyframe_request < self.config.keyframe_request_interval_ms / 1000:
            return
        self._last_keyframe_request = now
        self.metrics.keyframe_requests.inc()
        kind = _KEYFRAME_REASONS.get(reason, p.KeyframeReason.DECODE_ERROR)
        log.info("stream %d: asking the client for a keyframe (%s)", self.id, kind.name.lower())
        self._post(p.KeyframeRequest(kind))

    # ------------------------------------------------------------------- answering

    def _on_inferred(
        self,
        frame: PendingFrame,
        detections: Detections | None,
        started: float,
        finished: float,
        reason: str | None,
    ) -> None:
        if frame.pts not in self._unanswered:
            return
        if detections is None:
            self._answer_dropped(frame.pts, _DROP_REASONS.get(reason or "", p.DropReason.SHUTDOWN))
            return
        capture_us = self._unanswered.pop(frame.pts)
        self.stats.results += 1
        boxes = tuple(
            p.Detection(int(class_id), float(score), x1, y1, x2, y2)
            for (x1, y1, x2, y2), score, class_id in zip(
                detections.boxes.tolist(),
                detections.scores.tolist(),
                detections.class_ids.tolist(),
                strict=True,
            )
        )
        self._post(
            _PendingResult(
                frame.pts,
                capture_us,
                decode_us=_us(frame.decoded_at - frame.received_at),
                queue_us=_us(started - frame.decoded_at),
                infer_us=_us(finished - started),
                received_at=frame.received_at,
                ready_at=finished,
                detections=boxes,
            )
        )

    def _answer_dropped(self, pts: int, reason: p.DropReason) -> None:
        capture_us = self._unanswered.pop(pts, None)
        if capture_us is None:
            return
        self.stats.dropped += 1
        self.metrics.frames_dropped.labels(reason.name.lower()).inc()
        self._post(p.Dropped(pts, capture_us, reason))

    def _post(self, event: p.Event | _PendingResult) -> None:
        try:
            self._outbox.put_nowait(event)
        except asyncio.QueueFull:
            # Answers are bounded by the frames in flight, so a full outbox means the
            # client stopped reading while it keeps sending: cut it off.
            log.warning("stream %d: client is not reading its results; closing", self.id)
            asyncio.get_running_loop().create_task(
                self._fail(p.ErrorCode.LIMIT_EXCEEDED, "client is not reading results", 1008)
            )

    def _finish_result(self, pending: _PendingResult) -> p.Result:
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

    async def _write_loop(self) -> None:
        try:
            while (item := await self._outbox.get()) is not None:
                if isinstance(item, _PendingResult):
                    item = self._finish_result(item)
                await self.ws.send(self._proto.send(item))
        finally:
            self._outbox_done.set()


@dataclass(slots=True)
class _PendingResult:
    """A result waiting in the outbox; its total time is stamped when it is sent."""

    pts: int
    capture_us: int
    decode_us: int
    queue_us: int
    infer_us: int
    received_at: float
    ready_at: float  # when inference finished: the send stage starts here
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


def _us(seconds: float) -> int:
    return max(0, round(seconds * 1_000_000))


def _frame_pts(frame: av.VideoFrame) -> int:
    return int(frame.pts) if frame.pts is not None else -1


def _peer_name(websocket: WebSocket) -> tuple[str, str]:
    """("host:port", "host") of the peer, for logs and per-address limits."""
    try:
        host, port = websocket.remote_address[:2]
    except (TypeError, ValueError, AttributeError):
        return "unknown peer", "unknown"
    return f"{host}:{port}", str(host)
