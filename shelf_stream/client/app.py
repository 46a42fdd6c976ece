"""The streaming client: capture → encode → send, receive → match → sinks.

Thread and task ownership:
- capture thread: owns the source; publishes into a ``LatestSlot`` (size 1);
- encoder thread: owns the encoder; takes from the slot, hands access units to the
  event loop through ``send_queue`` (``send_queue_units`` deep; it blocks when full);
- sender task: writes Video messages; websockets' ``write_limit`` keeps the socket's
  own buffer small, so a slow link backs up into the slot (skips), not into buffers;
- receiver task: parses answers and feeds the matcher, stats and sinks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection as WebSocket
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from shelf_stream import __version__
from shelf_stream import protocol as p
from shelf_stream.client.adaptation import FrameThinner, Retarget, run_probe
from shelf_stream.client.bitrate_fit import BitrateFit
from shelf_stream.client.capture import CapturedFrame, CaptureThread, LatestSlot
from shelf_stream.client.controller import RateControlConfig, RateController, Target
from shelf_stream.client.encode_rate import EncodeRate, EncodeRateConfig
from shelf_stream.client.ladder import Rung, default_ladder
from shelf_stream.client.matcher import FrameRecord, ResultMatcher
from shelf_stream.client.probe import BandwidthProbe, ProbeConfig, ProbeResult, choose_start
from shelf_stream.client.sinks import AnnotatedVideoSink, JsonlSink
from shelf_stream.client.sources import FrameSource, SourceSpec, open_source
from shelf_stream.client.stats import StreamStats
from shelf_stream.codec import faster_preset, get_encoder
from shelf_stream.codec.base import EncodedFrame, Encoder, EncoderConfig
from shelf_stream.errors import ConfigError, RemoteProtocolError, ShelfStreamError

log = logging.getLogger("shelf_stream.client")

DEFAULT_BITRATE_KBPS = 1500


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientConfig:
    """Settings of ``shelf-stream send``.

    ``width``/``height``/``fps`` of ``None`` take the source's own (rounded to even
    sizes; 30 fps when the source has no rate). ``duration_s``/``max_frames`` of
    ``None`` run until the source ends or the user interrupts.
    """

    url: str
    source: SourceSpec
    codec: str = "hevc"
    encoder: str | None = None
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    bitrate_kbps: int | None = None  # None: the probe's pick (1500 without a probe)
    max_bitrate_kbps: int = 8000
    jpeg_quality: int = 95  # codec jpeg_zlib only (the seed baseline)
    # A safety net only: the server asks for a keyframe after any loss or decode error,
    # and every keyframe costs two to five frames' worth of link time.
    keyframe_interval_s: float = 10.0
    keyframe_min_interval_s: float = 0.5  # honour server requests at most this often
    preset: str | None = None
    token: str | None = None
    cafile: Path | None = None  # wss://: trust this CA (default: the system's)
    duration_s: float | None = None
    max_frames: int | None = None
    results_path: Path | None = None
    save_path: Path | None = None
    send_queue_units: int = 2
    # Stop-and-wait like the seed system (1: the next frame only after the answer);
    # None streams without waiting for answers.
    max_in_flight: int | None = None
    write_limit_bytes: int = 64 * 1024
    # Linux: unsent bytes the kernel may hold per socket (TCP_NOTSENT_LOWAT). Without
    # it a send buffer of megabytes hides a slow link from the pacing for seconds.
    socket_unsent_limit_bytes: int = 16 * 1024
    answer_timeout_s: float = 5.0
    connect_timeout_s: float = 10.0
    status: bool = True
    # Measure RTT and throughput before streaming and start from what the link holds.
    probe: bool = True
    # Follow the server's arrival feedback: bitrate, then frame rate, then size; and open
    # the encoder for the frame rate it really reaches on this machine (``encode_rate``).
    adapt: bool = True
    encode_rate: EncodeRateConfig = field(default_factory=EncodeRateConfig)
    # After a lost connection (not the first connect): retry with exponential backoff
    # and jitter, resume with a keyframe; pts keep counting on the capture clock.
    reconnect: bool = True
    reconnect_initial_delay_s: float = 0.5
    reconnect_max_delay_s: float = 10.0
    reconnect_give_up_s: float = 300.0


class _FatalRefusal(ShelfStreamError):
    """The server refused us for a reason retrying cannot fix."""


_FATAL_ERRORS = {
    p.ErrorCode.UNAUTHORIZED,
    p.ErrorCode.UNSUPPORTED_CODEC,
    p.ErrorCode.UNSUPPORTED_VERSION,
    p.ErrorCode.BAD_HELLO,
    p.ErrorCode.LIMIT_EXCEEDED,
}


@dataclass(slots=True)
class _Unit:
    """An encoded frame on its way to the socket."""

    encoded: EncodedFrame
    captured: CapturedFrame
    encode_ms: float
    encoder_kbps: float  # what the encoder was opened with
    encoder_fps: float
    scale: tuple[float, float]  # streamed frame → requested frame, for the boxes


@dataclass(slots=True)
class _Sinks:
    jsonl: JsonlSink | None = None
    video: AnnotatedVideoSink | None = None
    extra: list[Callable[[FrameRecord], None]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Geometry:
    """What the user asked to stream: boxes are always reported in this frame size."""

    width: int
    height: int
    fps: float


class StreamClient:
    """One streaming run from connect to summary (reconnecting as needed)."""

    def __init__(
        self, config: ClientConfig, *, on_record: Callable[[FrameRecord], None] | None = None
    ) -> None:
        self.config = config
        self.stats = StreamStats()
        self.matcher = ResultMatcher()
        self.ready: p.Ready | None = None
        self.probe_result: ProbeResult | None = None
        #: Adaptation over time (when adapting): controller snapshots every 200 ms.
        self.timeline: list[dict[str, Any]] = []
        self._proto = p.ClientConnection()
        self._sinks = _Sinks(extra=[on_record] if on_record else [])
        self._keyframe_wanted = threading.Event()
        self._seq = 0
        self._status_printed = False
        self._capture: CaptureThread | None = None
        self._in_flight = (
            threading.Semaphore(config.max_in_flight) if config.max_in_flight else None
        )
        self._stop_requested = False
        self._controller: RateController | None = None
        self._retarget: Retarget | None = None
        self._encode_rate: EncodeRate | None = None
        # Written on the event loop, read by the encoder thread when it opens an encoder
        # (one float attribute: the read is atomic).
        self._bitrate_fit = BitrateFit()
        self._ladder: tuple[Rung, ...] = ()
        self._started_at = time.monotonic()
        self._last_keyframe_forced = -1e9

    def request_stop(self) -> None:
        """Finish gracefully: stop capturing, send what is encoded, wait for answers.

        Call on the event loop (e.g. from a SIGINT handler).
        """
        self._stop_requested = True
        if self._capture is not None:
            self._capture.stop()

    # ------------------------------------------------------------------- set-up

    async def run(self) -> dict[str, Any]:
        """Stream until the source ends, the duration passes or the task is cancelled."""
        loop = asyncio.get_running_loop()
        source = await loop.run_in_executor(None, open_source, self.config.source)
        try:
            geometry = self._geometry(source)
            # The first connection fails fast: a wrong URL or token is the user's to fix.
            ws = await self._open_stream(geometry)
            try:
                start = await self._choose_start(ws, geometry)
            except BaseException:
                await ws.close()
                raise
            self._open_sinks(geometry.fps)
            try:
                await self._run_pipeline(ws, source, geometry, start)
            finally:
                self._close_sinks()
        finally:
            source.close()
        summary = self.stats.summary()
        summary["encoder_switches"] = self._retarget.switches if self._retarget else 0
        return summary

    def _geometry(self, source: FrameSource) -> _Geometry:
        cfg = self.config
        width = cfg.width or source.width
        height = cfg.height or source.height
        if not width or not height:
            raise ConfigError("the source does not report its size; pass --size WxH")
        return _Geometry(width - width % 2, height - height % 2, cfg.fps or source.fps or 30.0)

    async def _choose_start(self, ws: WebSocket, geometry: _Geometry) -> Target:
        """Where the stream starts: the probe's pick, unless the user fixed the bitrate."""
        cfg = self.config
        self._ladder = default_ladder(geometry.width, geometry.height, geometry.fps)
        bitrate = cfg.bitrate_kbps or DEFAULT_BITRATE_KBPS
        start = Target(bitrate, geometry.fps, geometry.width, geometry.height)
        if not cfg.probe:
            return start
        probe = BandwidthProbe(ProbeConfig(), time.monotonic())
        result = await run_probe(ws, self._proto, probe, time.monotonic)
        self.probe_result = result
        log.info(
            "link probe: RTT %s ms, throughput %s kbit/s%s",
            _num(result.rtt_ms), _num(result.throughput_kbps),
            "" if result.reliable else " (unreliable: too few answers)",
        )  # fmt: skip
        if cfg.bitrate_kbps is not None:
            return start  # an explicit --bitrate wins over the probe
        choice = choose_start(
            result,
            ladder=self._ladder,
            max_bitrate_kbps=cfg.max_bitrate_kbps,
            fps=geometry.fps,
            width=geometry.width,
            height=geometry.height,
        )
        log.info(
            "starting at %d kbit/s, %dx%d @ %.3g fps (%s)",
            choice.bitrate_kbps, choice.width, choice.height, choice.fps, choice.reason,
        )  # fmt: skip
        return Target(choice.bitrate_kbps, choice.fps, choice.width, choice.height)

    def _encoder_config(self, target: Target) -> EncoderConfig:
        cfg = self.config
        config = EncoderConfig(
            codec=cfg.codec,
            encoder=cfg.encoder,
            width=target.width,
            height=target.height,
            fps=target.encode_fps or target.fps,
            bitrate_kbps=self._bitrate_fit.encoder_kbps(target.bitrate_kbps)
            if self.config.adapt
            else round(target.bitrate_kbps),
            keyframe_interval_s=cfg.keyframe_interval_s,
            preset=cfg.preset,
            jpeg_quality=cfg.jpeg_quality,
        )
        if target.fast_preset:
            config = replace(config, preset=faster_preset(config))
        return config

    def _start_adaptation(self, start: Target) -> None:
        now = time.monotonic()
        if self._retarget is None:  # the encoder (and a switch it has yet to take) lives on
            self._retarget = Retarget(start, now)
        if not self.config.adapt:
            return
        control = RateControlConfig(
            max_bitrate_kbps=self.config.max_bitrate_kbps,
            rtt_ms=(self.probe_result.rtt_ms if self.probe_result else None) or 100.0,
        )
        self._controller = RateController(control, start=start, now=now, ladder=self._ladder)
        if self._encode_rate is None:  # survives reconnects: the machine did not get faster
            can_go_faster = faster_preset(self._encoder_config(start)) is not None
            self._encode_rate = EncodeRate(
                self.config.encode_rate, now=now, can_go_faster=can_go_faster
            )

    # ---------------------------------------------------------------- connection

    async def _open_stream(self, geometry: _Geometry) -> WebSocket:
        """Connect and complete the handshake on a fresh protocol connection."""
        ws = await self._connect()
        self._proto = p.ClientConnection()
        self._seq = 0
        self.ready = None
        try:
            await self._handshake(ws, geometry)
        except BaseException:
            await ws.close()
            raise
        return ws

    async def _reconnect(self, geometry: _Geometry) -> WebSocket | None:
        """Retry with exponential backoff and full jitter; None if stopped or given up."""
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + self.config.reconnect_give_up_s
        delay = self.config.reconnect_initial_delay_s
        attempt = 0
        while not self._stop_requested and loop.time() < give_up_at:
            attempt += 1
            await asyncio.sleep(random.uniform(0.5, 1.0) * delay)
            try:
                ws = await self._open_stream(geometry)
            except _FatalRefusal:
                raise
            except ShelfStreamError as exc:
                log.warning("reconnect attempt %d failed: %s", attempt, exc)
                delay = min(delay * 2, self.config.reconnect_max_delay_s)
                continue
            self.stats.reconnects += 1
            log.info("reconnected after %d attempt(s); resuming with a keyframe", attempt)
            return ws
        return None

    async def _connect(self) -> WebSocket:
        try:
            ws = await connect(
                self.config.url,
                ssl=_client_tls(self.config),
                compression=None,
                max_size=p.DEFAULT_MAX_MESSAGE_BYTES + p.HEADER.size,
                write_limit=self.config.write_limit_bytes,
                open_timeout=self.config.connect_timeout_s,
                proxy=None,
            )
        except ssl.SSLCertVerificationError as exc:
            raise ConfigError(
                f"cannot verify the server's TLS certificate at {self.config.url}: "
                f"{exc.verify_message}; pass --cafile with the CA that signed it"
            ) from exc
        except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as exc:
            raise ConfigError(f"cannot connect to {self.config.url}: {exc}") from exc
        _limit_unsent_bytes(ws, self.config.socket_unsent_limit_bytes)
        return ws

    async def _handshake(self, ws: WebSocket, geometry: _Geometry) -> None:
        hello = p.Hello(
            codec=self.config.codec,
            width=geometry.width,
            height=geometry.height,
            fps=geometry.fps,
            token=self.config.token,
            client=f"shelf-stream/{__version__}",
        )
        try:
            await ws.send(self._proto.send(hello))
            message = await asyncio.wait_for(ws.recv(), self.config.connect_timeout_s)
        except (ConnectionClosed, TimeoutError) as exc:
            raise ShelfStreamError(
                f"server closed the connection during the handshake: {exc}"
            ) from exc
        self._proto.receive_message(message)
        for event in self._proto.events_received():
            if isinstance(event, p.Error):
                error = _FatalRefusal if event.code in _FATAL_ERRORS else ShelfStreamError
                raise error(f"server refused the stream: {event.message}")
            if isinstance(event, p.Ready):
                self.ready = event
        if self.ready is None:
            raise ShelfStreamError("server did not answer the hello with ready")
        log.info(
            "connected to %s: model %s, streaming %s %dx%d @ %.3g fps",
            self.config.url, self.ready.model, self.config.codec, geometry.width,
            geometry.height, geometry.fps,
        )  # fmt: skip

    def _open_sinks(self, fps: float) -> None:
        if self.config.results_path is not None:
            self._sinks.jsonl = JsonlSink(self.config.results_path)
        if self.config.save_path is not None:
            self._sinks.video = AnnotatedVideoSink(self.config.save_path, fps=fps)

    def _close_sinks(self) -> None:
        if self._sinks.jsonl is not None:
            self._sinks.jsonl.close()
        if self._sinks.video is not None:
            self._sinks.video.close()

    # ------------------------------------------------------------------ pipeline

    async def _run_pipeline(
        self, ws: WebSocket, source: FrameSource, geometry: _Geometry, start: Target
    ) -> None:
        loop = asyncio.get_running_loop()
        send_queue: asyncio.Queue[_Unit | None] = asyncio.Queue(self.config.send_queue_units)
        slot: LatestSlot[CapturedFrame] = LatestSlot()
        capture = CaptureThread(
            source,
            slot,
            fps=start.fps,
            max_frames=self.config.max_frames,
            duration_s=self.config.duration_s,
            on_skipped=lambda captured: _call_soon(loop, self._on_skipped, captured),
        )
        self._capture = capture
        if self._stop_requested:
            capture.stop()
        self._start_adaptation(start)
        stop_encoding = threading.Event()
        encoder_thread = threading.Thread(
            target=self._encode_loop,
            args=(self._encoder_config(start), geometry, slot, send_queue, loop, stop_encoding),
            name="encoder",
            daemon=True,
        )
        status = asyncio.create_task(self._status_loop(), name="status")
        timeline = asyncio.create_task(self._timeline_loop(), name="timeline")
        capture.start()
        encoder_thread.start()
        ws_now: WebSocket | None = ws
        try:
            while ws_now is not None:
                finished = await self._serve_connection(ws_now, send_queue)
                await ws_now.close()
                if finished or self._stop_requested or not self.config.reconnect:
                    break
                self._connection_lost(send_queue)
                ws_now = await self._reconnect(geometry)
        finally:
            capture.stop()
            stop_encoding.set()
            slot.close()
            self._skip_unsent(send_queue)
            await loop.run_in_executor(None, capture.join)
            await loop.run_in_executor(None, encoder_thread.join)
            self._skip_unsent(send_queue)
            for task in (status, timeline):
                task.cancel()
            await asyncio.gather(status, timeline, return_exceptions=True)
            for record in self.matcher.abandon():
                self._emit(record)
            self._end_status()
        if capture.error is not None:
            raise ShelfStreamError(f"capture failed: {capture.error}") from capture.error

    async def _serve_connection(
        self, ws: WebSocket, send_queue: asyncio.Queue[_Unit | None]
    ) -> bool:
        """Stream on one connection. True when the stream ended (source done, Bye sent,
        answers in); False when the connection was lost first."""
        receiver = asyncio.create_task(self._receive_loop(ws), name="receiver")
        try:
            if not await self._send_loop(ws, send_queue, receiver):
                return False
            await ws.send(self._proto.send(p.Bye()))
            await self._wait_answers(receiver)
            return True
        except ConnectionClosed as exc:
            log.warning("the server closed the connection: %s", exc)
            return False
        finally:
            receiver.cancel()
            await asyncio.gather(receiver, return_exceptions=True)

    def _connection_lost(self, send_queue: asyncio.Queue[_Unit | None]) -> None:
        """Frames in flight are lost; unsent ones are skipped; the next one is a keyframe."""
        for record in self.matcher.abandon():
            self._emit(record)
        self._skip_unsent(send_queue)
        if self.config.max_in_flight:
            self._in_flight = threading.Semaphore(self.config.max_in_flight)
        self._keyframe_wanted.set()
        if self._controller is not None and self._retarget is not None:
            # A new connection numbers its messages from 0 again: start a fresh estimate.
            self._start_adaptation(self._retarget.current)

    def _skip_unsent(self, send_queue: asyncio.Queue[_Unit | None]) -> None:
        """Record encoded but never sent frames (each pts still ends as one record)."""
        while not send_queue.empty():
            unit = send_queue.get_nowait()
            if unit is None:
                send_queue.put_nowait(None)  # keep the end marker for the next sender
                return
            captured = unit.captured
            self._emit(FrameRecord(captured.pts, captured.captured_at, "skipped", reason="unsent"))

    def _encode_loop(
        self,
        config: EncoderConfig,
        geometry: _Geometry,
        slot: LatestSlot[CapturedFrame],
        send_queue: asyncio.Queue[_Unit | None],
        loop: asyncio.AbstractEventLoop,
        stop: threading.Event,
    ) -> None:
        """Encoder thread: owns the encoder; slot → access unit → send queue."""
        told_sender = False
        encoder: Encoder | None = None
        thinner = FrameThinner()
        try:
            encoder = get_encoder(config)
            while not stop.is_set():
                # The permit goes back to the semaphore it came from (a reconnect
                # replaces ``_in_flight``).
                in_flight = self._in_flight
                if in_flight is not None and not in_flight.acquire(timeout=0.1):
                    continue  # stop-and-wait: the previous frame is not answered yet
                captured = slot.get(timeout=0.1)
                if captured is None:
                    if in_flight is not None:
                        in_flight.release()
                    if slot.closed:
                        # The source ended: every unit is queued, then the end marker.
                        told_sender = _put_blocking(send_queue, None, loop, stop)
                        return
                    continue
                encoder, config = self._maybe_switch_encoder(encoder, config)
                keyframe = self._keyframe_wanted.is_set()
                share = self._retarget.frame_share if self._retarget is not None else 1.0
                if not keyframe and not thinner.admit(share):
                    # Below the encoder's rate: fewer frames, each with its full budget.
                    if in_flight is not None:
                        in_flight.release()
                    _call_soon(loop, self._on_thinned, captured)
                    continue
                self._keyframe_wanted.clear()
                started = time.perf_counter()
                encoded = encoder.encode(captured.frame, captured.pts, keyframe=keyframe)
                unit = _Unit(
                    encoded,
                    captured,
                    (time.perf_counter() - started) * 1000,
                    config.bitrate_kbps,
                    config.fps,
                    scale=(geometry.width / config.width, geometry.height / config.height),
                )
                if not _put_blocking(send_queue, unit, loop, stop):
                    return
        except ShelfStreamError as exc:
            log.error("encoder failed: %s", exc)
        finally:
            if encoder is not None:
                encoder.close()
            if not told_sender:
                loop.call_soon_threadsafe(_put_end, send_queue)

    def _maybe_switch_encoder(
        self, encoder: Encoder, config: EncoderConfig
    ) -> tuple[Encoder, EncoderConfig]:
        """Encoder thread: apply a new target; the new encoder starts with a keyframe."""
        target = self._retarget.take() if self._retarget is not None else None
        if target is None:
            return encoder, config
        new_config = self._encoder_config(target)
        new_encoder = get_encoder(new_config)
        encoder.close()
        return new_encoder, new_config

    async def _send_loop(
        self, ws: WebSocket, send_queue: asyncio.Queue[_Unit | None], receiver: asyncio.Task[None]
    ) -> bool:
        """Send until the end marker (True) or until the connection is gone (False)."""
        while True:
            next_unit = asyncio.ensure_future(send_queue.get())
            await asyncio.wait({next_unit, receiver}, return_when=asyncio.FIRST_COMPLETED)
            if receiver.done():
                if not next_unit.cancel() and next_unit.result() is not None:
                    send_queue.put_nowait(next_unit.result())  # not ours to lose
                return False  # the server went away or refused us; the receiver says why
            unit = next_unit.result()
            if unit is None:
                return True
            await self._send_unit(ws, unit)

    async def _send_unit(self, ws: WebSocket, unit: _Unit) -> None:
        encoded, captured = unit.encoded, unit.captured
        message = self._proto.send(
            p.Video(
                self._seq,
                encoded.pts,
                round(captured.captured_at * 1_000_000),
                encoded.keyframe,
                encoded.data,
            )
        )
        now = time.monotonic()
        self.matcher.sent(
            encoded.pts,
            captured.captured_at,
            encode_ms=unit.encode_ms,
            size_bytes=len(encoded.data),
            keyframe=encoded.keyframe,
            scale=unit.scale,
            payload=captured.frame if self.config.save_path else None,
        )
        self.stats.on_sent(now, len(encoded.data), encoded.keyframe)
        self._bitrate_fit.on_encoded(len(encoded.data), unit.encoder_kbps, unit.encoder_fps, now)
        if self._controller is not None:
            self._controller.on_sent(self._seq, len(message), now, keyframe=encoded.keyframe)
        if self._encode_rate is not None:
            self._encode_rate.on_encoded(unit.encode_ms, now)
            self._check_encode_rate(now)
        self._seq += 1
        await ws.send(message)

    async def _wait_answers(self, receiver: asyncio.Task[None]) -> None:
        """After Bye: wait until every sent pts is answered or the server closes."""
        try:
            await asyncio.wait_for(asyncio.shield(receiver), self.config.answer_timeout_s)
        except TimeoutError:
            log.warning(
                "%d frames unanswered after %.0f s", len(self.matcher), self.config.answer_timeout_s
            )

    # ------------------------------------------------------------------- answers

    async def _receive_loop(self, ws: WebSocket) -> None:
        try:
            async for message in ws:
                self._proto.receive_message(message)
                for event in self._proto.events_received():
                    self._handle(event)
        except ConnectionClosed as exc:
            log.warning("connection lost: %s", exc)
        except RemoteProtocolError as exc:
            log.error("server broke the protocol: %s", exc)

    def _handle(self, event: p.Event) -> None:
        now = time.monotonic()
        if isinstance(event, p.Result):
            self._answered(self.matcher.on_result(event, now))
        elif isinstance(event, p.Dropped):
            self._answered(self.matcher.on_dropped(event, now))
        elif isinstance(event, p.Feedback):
            self._on_feedback(event, now)
        elif isinstance(event, p.KeyframeRequest):
            self.stats.keyframe_requests += 1
            # Rate-limited: a keyframe costs several frames' bytes, and one already on
            # its way answers every request made before it arrives.
            if now - self._last_keyframe_forced >= self.config.keyframe_min_interval_s:
                log.info("server asked for a keyframe (%s)", event.reason.name.lower())
                self._last_keyframe_forced = now
                self._keyframe_wanted.set()
        elif isinstance(event, p.Error):
            log.error("server error: %s", event.message)

    def _answered(self, record: FrameRecord | None) -> None:
        if record is None:
            return
        if self._in_flight is not None:
            self._in_flight.release()
        self._emit(record)

    def _on_feedback(self, feedback: p.Feedback, now: float) -> None:
        if self._controller is None or self._retarget is None:
            return
        self._controller.on_feedback(feedback.arrivals, now)
        # Offer the current target every time, not only when it changed: one the encoder
        # could not take yet (too soon after a switch) must get through later.
        self._offer_target(now)

    def _check_encode_rate(self, now: float) -> None:
        assert self._encode_rate is not None and self._retarget is not None
        change = self._encode_rate.poll(now, self._retarget.current.fps)
        if change is None:
            return
        if change.faster and change.fps is None:
            log.info(
                "the encoder reaches %.3g of %.3g fps on this machine: switching to its "
                "faster preset", change.measured_fps, self._retarget.current.fps,
            )  # fmt: skip
        elif change.fps is None:
            log.info("the encoder keeps up with the capture rate again")
        else:
            log.info(
                "the encoder reaches %.3g of %.3g fps on this machine: its rate control "
                "now budgets for %g fps",
                change.measured_fps, self._retarget.current.fps, change.fps,
            )  # fmt: skip
        self._offer_target(now)

    def _offer_target(self, now: float) -> None:
        """Hand the controller's target to the encoder, at the frame rate it reaches."""
        if self._controller is None or self._retarget is None:
            return
        target = self._controller.target(now)
        rate = self._encode_rate
        if rate is not None and rate.fps is not None and rate.fps < target.fps:
            target = replace(target, encode_fps=rate.fps)
        if rate is not None and rate.faster:
            target = replace(target, fast_preset=True)
        if not self._retarget.offer(target, now):
            return
        log.info(
            "adapting: %d kbit/s, %dx%d @ %.3g fps",
            target.bitrate_kbps, target.width, target.height, target.fps,
        )  # fmt: skip
        if self._capture is not None and target.fps != self._capture.fps:
            self._capture.set_fps(target.fps)

    def _on_skipped(self, captured: CapturedFrame) -> None:
        self._emit(self.matcher.skipped(captured.pts, captured.captured_at))

    def _on_thinned(self, captured: CapturedFrame) -> None:
        self._emit(self.matcher.skipped(captured.pts, captured.captured_at, "thinned"))

    def _emit(self, record: FrameRecord) -> None:
        self.stats.on_record(time.monotonic(), record)
        if self._sinks.jsonl is not None:
            self._sinks.jsonl.write(record)
        if self._sinks.video is not None and record.payload is not None:
            self._sinks.video.write(record, record.payload)
        for sink in self._sinks.extra:
            sink(record)

    # ---------------------------------------------------------------- reporting

    async def _timeline_loop(self, period_s: float = 0.2) -> None:
        while True:
            await asyncio.sleep(period_s)
            now = time.monotonic()
            entry: dict[str, Any] = {"t": round(now - self._started_at, 3), "at": now}
            if self._retarget is not None:
                current = self._retarget.current
                entry.update(
                    target_kbps=round(current.bitrate_kbps),
                    fps=current.fps,
                    encode_fps=current.encode_fps,
                    fast_preset=current.fast_preset,
                    width=current.width,
                    height=current.height,
                )
            if self._controller is not None:
                entry["controller"] = self._controller.snapshot(now)
            self.timeline.append(entry)

    async def _status_loop(self) -> None:
        if not self.config.status:
            return
        while True:
            await asyncio.sleep(0.5)
            sys.stderr.write("\r" + self.stats.status_line() + "\033[K")
            sys.stderr.flush()
            self._status_printed = True

    def _end_status(self) -> None:
        if self._status_printed:
            sys.stderr.write("\n")


def _num(value: float | None) -> str:
    return "?" if value is None else f"{value:.0f}"


def _client_tls(config: ClientConfig) -> ssl.SSLContext | None:
    if not config.url.startswith("wss://"):
        return None
    # Certificate and host name are always verified; --cafile only adds a trusted CA.
    return ssl.create_default_context(cafile=str(config.cafile) if config.cafile else None)


_TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)  # Linux's value


def _limit_unsent_bytes(ws: WebSocket, limit: int) -> None:
    sock = ws.transport.get_extra_info("socket")
    if sock is None or not sys.platform.startswith("linux") or limit <= 0:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, _TCP_NOTSENT_LOWAT, limit)


def _call_soon(
    loop: asyncio.AbstractEventLoop, callback: Callable[[CapturedFrame], None], arg: CapturedFrame
) -> None:
    loop.call_soon_threadsafe(callback, arg)


def _put_blocking(
    send_queue: asyncio.Queue[_Unit | None],
    item: _Unit | None,
    loop: asyncio.AbstractEventLoop,
    stop: threading.Event,
) -> bool:
    """From the encoder thread: wait for room in the sender's queue. False if stopped."""
    future = asyncio.run_coroutine_threadsafe(send_queue.put(item), loop)
    while not stop.is_set():
        try:
            future.result(timeout=0.1)
            return True
        except TimeoutError:
            continue
    future.cancel()
    return False


def _put_end(send_queue: asyncio.Queue[_Unit | None]) -> None:
    """On abort: tell the sender to stop, making room if the queue is full."""
    while True:
        try:
            send_queue.put_nowait(None)
            return
        except asyncio.QueueFull:
            send_queue.get_nowait()  # only at shutdown, after the encoder stopped


async def run_client(config: ClientConfig) -> dict[str, Any]:
    return await StreamClient(config).run()
