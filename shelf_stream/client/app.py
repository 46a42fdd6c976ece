"""The streaming client: the wiring of its parts, one owner each (docs/design.md, "Client").

- capture thread (``capture.CaptureThread``): owns the source; publishes the newest
  frame into a ``LatestSlot`` and reports the frames it replaced as skipped;
- encoder worker (``encoder_worker.EncoderWorker``): owns the encoder; the event loop
  talks to it only through its inbox (settings, keyframe requests, send permits) and
  reads its bounded outbox;
- event loop (this module): owns the connection (``connection``), the adaptation
  (``adaptation.Adaptation``, sans-I/O), the matcher, the statistics and the sinks'
  queues. Its tasks: the pump (outbox → socket), the receiver (socket → matcher and
  adaptation), the ticker (the adaptation's timer, answer expiry, status line, timeline)
  and the connection supervisor (``_serve``: reconnects with backoff);
- sink threads (``sinks``): the results file and the annotated video;
- ROI planner (``roi.RoiPlanner``, sans-I/O, on the loop): the answers' boxes in, region
  quality offsets out, handed to the encoder worker (``SetRegions``) when they change.

Every captured pts ends as exactly one record, handed to the statistics, the sinks and
``on_record``. The end of a stream (its duration, the source's end, ``request_stop``)
always reaches the summary within ``end_answer_timeout_s`` + ``shutdown_timeout_s``
plus the sinks' close, and so does a lost server once the reconnect limit is reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import av
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK

from shelf_stream import __version__
from shelf_stream import protocol as p
from shelf_stream.client.adaptation import (
    Adaptation,
    AdaptationConfig,
    AdaptationEvent,
    EncoderPlan,
    EncoderSpeedChanged,
    EncoderSwitch,
)
from shelf_stream.client.capture import CapturedFrame, CaptureThread, LatestSlot
from shelf_stream.client.connection import (
    Backoff,
    ConnectionConfig,
    ConnectionFailed,
    FatalRefusal,
    StreamConnection,
    open_connection,
    run_probe,
)
from shelf_stream.client.controller import Target
from shelf_stream.client.encoder_worker import (
    Configure,
    EncodedUnit,
    EncoderWorker,
    EncodeSettings,
    ForceKeyframe,
    FrameNotEncoded,
    GrantSends,
    Outbox,
    SetRegions,
    SourceChanged,
    WorkerEnded,
)
from shelf_stream.client.ladder import Rung, default_ladder
from shelf_stream.client.matcher import (
    ClientReason,
    FrameRecord,
    ResultMatcher,
    Settled,
    skipped,
)
from shelf_stream.client.passthrough import PassthroughWorker, passthrough_camera
from shelf_stream.client.probe import BandwidthProbe, ProbeConfig, ProbeResult, choose_start
from shelf_stream.client.roi import RoiConfig, RoiPlan, RoiPlanner
from shelf_stream.client.rtsp import CameraInfo, RtspSource
from shelf_stream.client.sinks import AnnotatedVideoSink, JsonlSink
from shelf_stream.client.sources import FrameSource, SourceSpec, open_source
from shelf_stream.client.stats import StreamStats
from shelf_stream.codec import faster_preset
from shelf_stream.codec.base import EncoderConfig
from shelf_stream.errors import ConfigError, RemoteProtocolError, ShelfStreamError

log = logging.getLogger("shelf_stream.client")

T = TypeVar("T")

DEFAULT_BITRATE_KBPS = 1500
DEFAULT_FPS = 30.0


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
    # Encoded frames waiting for the socket; more only adds latency (``encoder_worker``).
    outbox_units: int = 2
    # A camera passed through: this long of its frames may wait for the socket. Its
    # frames come in bursts (at the start, after a stall) and cannot be thinned: one
    # left out costs every frame until its next keyframe.
    camera_outbox_s: float = 0.5
    # Stop-and-wait like the seed system (1: the next frame only after the answer);
    # None streams without waiting for answers.
    max_in_flight: int | None = None
    # A frame unanswered this long is recorded lost (a server that stopped answering).
    answer_timeout_s: float = 5.0
    # At the end: how long to wait for the answers to the last frames sent.
    end_answer_timeout_s: float = 1.0
    # At the end: how long the encoder may take to hand over its last frames.
    shutdown_timeout_s: float = 0.5
    max_pending: int = 1024  # frames in flight the matcher holds (more: lost)
    status: bool = True
    # Measure RTT and throughput before streaming and start from what the link holds.
    probe: bool = True
    # Follow the server's arrival feedback: bitrate, then frame rate, then size; and open
    # the encoder for the frame rate it really reaches on this machine.
    adaptation: AdaptationConfig = field(default_factory=AdaptationConfig)
    connection: ConnectionConfig = field(default_factory=ConnectionConfig)
    # Record the adaptation's state this often (``StreamClient.timeline``); None: never.
    timeline_period_s: float | None = None
    timeline_max_entries: int = 3000
    # An RTSP camera's H.265/H.264 goes to the server as it is (``passthrough``); True
    # decodes and re-encodes it instead, with the adaptation to the link.
    reencode: bool = False
    # Detection-guided regions of interest (``client.roi``): finer quantisation where the
    # server's boxes are. Not for a camera passed through (its stream is its own).
    roi: RoiConfig = field(default_factory=RoiConfig)


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
        self.ready: p.Ready | None = None
        self.probe_result: ProbeResult | None = None
        #: The adaptation's state every ``timeline_period_s`` (bounded).
        self.timeline: deque[dict[str, Any]] = deque(maxlen=config.timeline_max_entries)
        self._on_record = on_record
        self._matcher: ResultMatcher[av.VideoFrame] = ResultMatcher(max_pending=config.max_pending)
        self._results: JsonlSink | None = None
        self._video: AnnotatedVideoSink | None = None
        self._conn: StreamConnection | None = None
        self._adaptation: Adaptation | None = None
        self._worker: EncoderWorker | PassthroughWorker | None = None
        self._capture: CaptureThread | None = None
        self._camera: CameraInfo | None = None  # a camera passed through, if any
        self._next_hello: p.Hello | None = None  # as the next connection sends it
        self._new_hello = asyncio.Event()  # set by the pump: the source changed
        self._renegotiated = asyncio.Event()  # set by _serve: a new connection, or none
        self._serving = False
        self._geometry_wanted: _Geometry | None = None
        self._settings: EncodeSettings | None = None  # as last sent to the worker
        self._roi: RoiPlanner | None = None
        self._roi_sent: RoiPlan | None = None  # as last sent to the worker
        self._roi_plans_sent = 0
        self._capture_fps = 0.0  # as last asked of the capture thread
        self._ladder: tuple[Rung, ...] = ()
        self._stop_requested = False
        self._finishing = False
        self._await_keyframe = False  # after a reconnect: nothing goes before a keyframe
        self._keyframe_forced_at = -math.inf
        self._started_at = time.monotonic()
        self._capture_started_unix_s: float | None = None
        self._status_printed = False

    def request_stop(self) -> None:
        """Finish gracefully: stop capturing, send what is encoded, wait for answers.

        Call on the event loop (e.g. from a SIGINT handler).
        """
        self._stop_requested = True
        if self._capture is not None:
            self._capture.stop()
        if isinstance(self._worker, PassthroughWorker):
            self._worker.stop()

    # ------------------------------------------------------------------------ set-up

    async def run(self) -> dict[str, Any]:
        """Stream until the source ends, the duration passes or the task is cancelled."""
        loop = asyncio.get_running_loop()
        source = await loop.run_in_executor(None, open_source, self.config.source)
        try:
            self._camera = self._passthrough_camera(source)
            geometry = self._geometry(source)
            # The first connection fails fast: a wrong URL or token is the user's to fix.
            conn = await self._connect_first(geometry)
            try:
                start = await self._choose_start(conn, geometry)
            except BaseException:
                await conn.close()
                raise
            self._open_sinks(geometry)
            try:
                await self._stream(conn, source, geometry, start)
            finally:
                await loop.run_in_executor(None, self._close_sinks)
        finally:
            if self._capture is None or not self._capture.is_alive():
                source.close()  # a capture thread still reading keeps it (a hung camera)
        summary = self.stats.summary()
        summary["encoder_switches"] = self._adaptation.switches if self._adaptation else 0
        summary["unmatched_answers"] = self._matcher.unmatched
        summary["roi"] = {
            "enabled": self._roi is not None,
            "plans_sent": self._roi_plans_sent,
            "refreshes": self._roi.refreshes if self._roi is not None else 0,
        }
        # Wall clock when capture began (--duration counts from there), for scripts.
        summary["capture_started_unix_s"] = self._capture_started_unix_s
        return summary

    def _geometry(self, source: FrameSource) -> _Geometry:
        cfg = self.config
        width = cfg.width or source.width
        height = cfg.height or source.height
        if not width or not height:
            raise ConfigError("the source does not report its size; pass --size WxH")
        fps = cfg.fps or source.fps or DEFAULT_FPS
        return _Geometry(width - width % 2, height - height % 2, fps)

    def _passthrough_camera(self, source: FrameSource) -> CameraInfo | None:
        cfg = self.config
        fixed = {
            "--size": cfg.width is not None,
            "--fps": cfg.fps is not None,
            "--bitrate": cfg.bitrate_kbps is not None,
            "--encoder": cfg.encoder is not None,
            "--preset": cfg.preset is not None,
            "stop-and-wait": cfg.max_in_flight is not None,
        }
        return passthrough_camera(source, reencode=cfg.reencode, codec=cfg.codec, fixed=fixed)

    async def _connect_first(self, geometry: _Geometry) -> StreamConnection:
        """The first connection; a camera whose codec the server refuses is re-encoded."""
        hello = self._next_hello = self._hello(geometry)
        try:
            return await self._open_connection(hello)
        except FatalRefusal as exc:
            if self._camera is None or exc.code is not p.ErrorCode.UNSUPPORTED_CODEC:
                raise
        log.warning(
            "the server does not take the camera's %s as it is: re-encoding it as %s",
            self._camera.codec, self.config.codec,
        )  # fmt: skip
        self._camera = None
        hello = self._next_hello = self._hello(geometry)
        return await self._open_connection(hello)

    def _hello(self, geometry: _Geometry) -> p.Hello:
        return p.Hello(
            codec=self._camera.codec if self._camera is not None else self.config.codec,
            width=geometry.width,
            height=geometry.height,
            fps=geometry.fps,
            token=self.config.token,
            client=f"shelf-stream/{__version__}",
        )

    async def _choose_start(self, conn: StreamConnection, geometry: _Geometry) -> Target:
        """Where the stream starts: the probe's pick, unless the user fixed the bitrate."""
        cfg = self.config
        self.ready = conn.ready
        camera = self._camera
        log.info(
            "connected to %s: model %s, streaming %s %dx%d @ %.3g fps%s",
            cfg.url, conn.ready.model, camera.codec if camera else cfg.codec, geometry.width,
            geometry.height, geometry.fps, " as the camera sends it" if camera else "",
        )  # fmt: skip
        self._ladder = default_ladder(geometry.width, geometry.height, geometry.fps)
        bitrate = cfg.bitrate_kbps or DEFAULT_BITRATE_KBPS
        start = Target(bitrate, geometry.fps, geometry.width, geometry.height)
        if not cfg.probe or camera is not None:
            return start  # a camera's bitrate is its own: nothing to choose
        probe = BandwidthProbe(ProbeConfig(), time.monotonic())
        result = await run_probe(conn, probe, time.monotonic)
        self.probe_result = result
        if cfg.bitrate_kbps is not None:
            log.info("link probe: %s; --bitrate %d kbit/s wins", _describe(result), bitrate)
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
            "link probe: %s; starting at %d kbit/s, %dx%d @ %.3g fps",
            _describe(result), choice.bitrate_kbps, choice.width, choice.height, choice.fps,
        )  # fmt: skip
        return Target(choice.bitrate_kbps, choice.fps, choice.width, choice.height)

    def _open_sinks(self, geometry: _Geometry) -> None:
        if self.config.results_path is not None:
            self._results = JsonlSink(self.config.results_path)
        if self.config.save_path is not None:
            self._video = AnnotatedVideoSink(
                self.config.save_path, width=geometry.width, height=geometry.height,
                fps=geometry.fps,
            )  # fmt: skip

    def _close_sinks(self) -> None:
        """In a worker thread: each close waits for its file to be finished (bounded)."""
        for sink in (self._results, self._video):
            if sink is not None:
                sink.close()
        if self._video is not None:
            log.info("%s: %d annotated frames", self._video.path, self._video.frames_written)

    # ----------------------------------------------------------------------- stream

    async def _stream(
        self, conn: StreamConnection, source: FrameSource, geometry: _Geometry, start: Target
    ) -> None:
        loop = asyncio.get_running_loop()
        self._geometry_wanted = geometry
        # The first look at the encoder may probe the hardware ones (``--encoder auto``,
        # once per process): off the event loop. Later looks read the cached choice.
        start_config = self._encoder_config(
            EncoderPlan(start, round(start.bitrate_kbps)), probe=False
        )
        faster = await loop.run_in_executor(None, faster_preset, start_config)
        now = time.monotonic()
        adaptation = self._adaptation = self._make_adaptation(
            start, now, can_go_faster=faster is not None
        )
        adaptation.on_connected(now, rtt_ms=self._probe_rtt_ms())
        units = self.config.outbox_units
        if self._camera is not None:
            units = max(units, math.ceil(self.config.camera_outbox_s * geometry.fps))
        outbox = Outbox(loop, units)
        slot: LatestSlot[CapturedFrame] | None = None
        worker: EncoderWorker | PassthroughWorker
        if self._camera is not None:
            worker = self._worker = self._passthrough_worker(source, outbox)
            if self._stop_requested:
                worker.stop()
        else:
            slot = LatestSlot()
            if self.config.roi.enabled and self.config.codec != "jpeg_zlib":
                self._roi = RoiPlanner(
                    self.config.roi, width_px=geometry.width, height_px=geometry.height,
                    frame_interval_s=1.0 / geometry.fps, now=now,
                )  # fmt: skip
                log.info(
                    "regions of interest: on (objects %+g, background %+g, qoffset)",
                    -self.config.roi.strength, self.config.roi.background_qoffset,
                )  # fmt: skip
            self._settings = self._encode_settings(adaptation.plan, geometry)
            worker = self._worker = EncoderWorker(
                slot, self._settings, outbox, max_in_flight=self.config.max_in_flight
            )
            capture = self._capture = CaptureThread(
                source,
                slot,
                fps=start.fps,
                max_frames=self.config.max_frames,
                duration_s=self.config.duration_s,
                on_skipped=lambda captured: _call_soon(loop, self._on_skipped, captured),
            )
            self._capture_fps = start.fps
            if self._stop_requested:
                capture.stop()
        self._capture_started_unix_s = time.time()
        if self._capture is not None:
            self._capture.start()
        worker.start()
        pump = asyncio.create_task(self._pump(outbox), name="pump")
        ticker = asyncio.create_task(self._ticker(), name="ticker")
        try:
            await self._serve(conn, pump)
        finally:
            await self._shut_down(self._capture, worker, slot, pump, ticker)

    def _passthrough_worker(self, source: FrameSource, outbox: Outbox) -> PassthroughWorker:
        """The camera's own access units, in place of capture and encoder (``passthrough``)."""
        assert isinstance(source, RtspSource)
        loop = asyncio.get_running_loop()
        return PassthroughWorker(
            source.config,
            source.take_session(),
            outbox,
            on_not_sent=lambda item: _call_soon(loop, self._on_not_sent, item),
            max_frames=self.config.max_frames,
            duration_s=self.config.duration_s,
            decode_frames=self._video is not None,  # --save draws on the pictures
        )

    def _make_adaptation(self, start: Target, now: float, *, can_go_faster: bool) -> Adaptation:
        config = self.config.adaptation
        if self._camera is not None:
            config = replace(config, enabled=False)  # nothing can change a camera's stream
        control = replace(config.control, max_bitrate_kbps=self.config.max_bitrate_kbps)
        return Adaptation(
            replace(config, control=control),
            start=start,
            now=now,
            ladder=self._ladder,
            can_go_faster=can_go_faster,
        )

    def _probe_rtt_ms(self) -> float | None:
        return self.probe_result.rtt_ms if self.probe_result is not None else None

    def _encoder_config(self, plan: EncoderPlan, *, probe: bool = True) -> EncoderConfig:
        """The encoder's settings for ``plan``; ``probe=False`` leaves the faster preset
        unresolved (it needs the encoder's name, which may mean a hardware probe)."""
        cfg, target = self.config, plan.target
        config = EncoderConfig(
            codec=cfg.codec,
            encoder=cfg.encoder,
            width=target.width,
            height=target.height,
            fps=target.encode_fps or target.fps,
            bitrate_kbps=plan.encoder_kbps,
            keyframe_interval_s=cfg.keyframe_interval_s,
            preset=cfg.preset,
            jpeg_quality=cfg.jpeg_quality,
            roi=cfg.roi.enabled and cfg.codec != "jpeg_zlib" and self._camera is None,
        )
        if target.fast_preset and probe:
            config = replace(config, preset=faster_preset(config))
        return config

    def _encode_settings(self, plan: EncoderPlan, geometry: _Geometry) -> EncodeSettings:
        target = plan.target
        scale = (geometry.width / target.width, geometry.height / target.height)
        return EncodeSettings(self._encoder_config(plan), plan.frame_share, scale)

    async def _shut_down(
        self,
        capture: CaptureThread | None,
        worker: EncoderWorker | PassthroughWorker,
        slot: LatestSlot[CapturedFrame] | None,
        pump: asyncio.Task[str | None],
        ticker: asyncio.Task[None],
    ) -> None:
        """Stop the threads and settle every frame still on its way (bounded in time)."""
        loop = asyncio.get_running_loop()
        producer = "the encoder" if capture is not None else "the camera"
        if capture is not None:
            capture.stop()
        if isinstance(worker, PassthroughWorker):
            worker.stop()
        self._conn = None  # what the pump still gets is recorded unsent
        try:
            await asyncio.wait_for(asyncio.shield(pump), self.config.shutdown_timeout_s)
        except TimeoutError:
            log.warning("%s did not finish in time; its last frames are lost", producer)
            worker.abort()
            pump.cancel()
        except Exception:  # the pump's own failure was logged where it happened
            worker.abort()
        await asyncio.gather(pump, return_exceptions=True)
        for thread in (capture, worker):
            if thread is not None:
                await loop.run_in_executor(None, thread.join, self.config.shutdown_timeout_s)
        while slot is not None and (captured := slot.get(timeout=0)) is not None:
            self._emit(skipped(captured.pts, captured.captured_at, ClientReason.UNSENT))
        for settled in self._matcher.abandon(ClientReason.NO_ANSWER):
            self._settle(settled)
        ticker.cancel()
        await asyncio.gather(ticker, return_exceptions=True)
        self._end_status()
        if capture is not None and capture.error is not None:
            raise ShelfStreamError(f"capture failed: {capture.error}") from capture.error

    # ----------------------------------------------------------------- connection

    async def _serve(self, conn: StreamConnection, pump: asyncio.Task[str | None]) -> None:
        """Stream on ``conn``, and on the ones that replace it, until the stream ends."""
        self._serving = True
        try:
            await self._serve_connections(conn, pump)
        finally:
            self._serving = False
            self._renegotiated.set()  # a pump waiting for a new connection gets none

    async def _serve_connections(
        self, conn: StreamConnection, pump: asyncio.Task[str | None]
    ) -> None:
        current: StreamConnection | None = conn
        while current is not None:
            self._conn = current
            receiver = asyncio.create_task(self._receive(current), name="receiver")
            new_hello = asyncio.create_task(self._new_hello.wait(), name="new-hello")
            await asyncio.wait({pump, receiver, new_hello}, return_when=asyncio.FIRST_COMPLETED)
            new_hello.cancel()
            await asyncio.gather(new_hello, return_exceptions=True)
            if pump.done():  # the stream ended: every frame went to the socket or is settled
                await self._finish(current, receiver)
                return
            if self._new_hello.is_set():
                current = await self._renegotiate_connection(current, receiver, pump)
                continue
            self._conn = None
            await current.close()
            self._connection_lost()
            if self.config.connection.reconnect is None or self._stop_requested:
                return
            assert self._next_hello is not None
            current = await self._reconnect(self._next_hello, pump)

    async def _renegotiate_connection(
        self, conn: StreamConnection, receiver: asyncio.Task[None], pump: asyncio.Task[str | None]
    ) -> StreamConnection | None:
        """The source changed (``SourceChanged``): finish ``conn``, answers included, and
        open a connection with the new Hello."""
        self._new_hello.clear()
        try:
            await self._finish(conn, receiver)
            self._finishing = False
            self._connection_lost()  # anything not answered by now; the next AU is a keyframe
            assert self._next_hello is not None
            try:
                replacement = await self._open_connection(self._next_hello)
            except ConnectionFailed as exc:
                if self.config.connection.reconnect is None or self._stop_requested:
                    log.error("%s", exc)
                    return None
                return await self._reconnect(self._next_hello, pump)
            self._on_new_connection(replacement)
            return replacement
        finally:
            self._renegotiated.set()

    async def _finish(self, conn: StreamConnection, receiver: asyncio.Task[None]) -> None:
        """Say Bye, wait for the last answers (bounded), close."""
        self._finishing = True
        try:
            await asyncio.wait_for(conn.send(p.Bye()), self.config.end_answer_timeout_s)
            done, _ = await asyncio.wait({receiver}, timeout=self.config.end_answer_timeout_s)
            if not done and len(self._matcher):
                log.warning(
                    "%d frames unanswered %.1f s after the last one was sent",
                    len(self._matcher), self.config.end_answer_timeout_s,
                )  # fmt: skip
        except (ConnectionClosed, TimeoutError):
            pass  # the server went first; what it did not answer is settled as lost
        finally:
            receiver.cancel()
            await asyncio.gather(receiver, return_exceptions=True)
            self._conn = None
            await conn.close()

    def _connection_lost(self) -> None:
        """Frames in flight are lost; the next connection starts with a keyframe."""
        for settled in self._matcher.abandon(ClientReason.CONNECTION_CLOSED):
            self._settle(settled)
        self._await_keyframe = True

    async def _reconnect(
        self, hello: p.Hello, pump: asyncio.Task[str | None]
    ) -> StreamConnection | None:
        """Retry with backoff; None once stopped, the stream ended, or the limit passed."""
        policy = self.config.connection.reconnect
        assert policy is not None
        backoff = Backoff(policy, time.monotonic())
        log.warning("reconnecting (for up to %.0f s)", policy.give_up_s)
        while not self._stop_requested:
            delay = backoff.next_delay(time.monotonic())
            if delay is None:
                log.error("the server stayed unreachable for %.0f s; giving up", policy.give_up_s)
                return None
            if await _ends_within(pump, delay):
                return None  # stopped while disconnected: nothing more will be sent
            attempt = asyncio.ensure_future(
                self._open_connection(hello, max(0.1, backoff.time_left(time.monotonic())))
            )
            await asyncio.wait({attempt, pump}, return_when=asyncio.FIRST_COMPLETED)
            if not attempt.done():
                attempt.cancel()
                await asyncio.gather(attempt, return_exceptions=True)
                return None
            try:
                conn = attempt.result()
            except ConnectionFailed as exc:
                log.debug("reconnect attempt %d failed: %s", backoff.attempts, exc)
                continue
            self.stats.reconnects += 1
            log.info("reconnected after %d attempt(s); resuming with a keyframe", backoff.attempts)
            self._on_new_connection(conn)
            return conn
        return None

    async def _open_connection(
        self, hello: p.Hello, timeout_s: float | None = None
    ) -> StreamConnection:
        cfg = self.config
        return await open_connection(
            cfg.url, cfg.connection, hello, cafile=cfg.cafile, timeout_s=timeout_s
        )

    def _on_new_connection(self, conn: StreamConnection) -> None:
        now = time.monotonic()
        self.ready = conn.ready
        if self._adaptation is not None:
            self._adaptation.on_connected(now, rtt_ms=self._probe_rtt_ms())
        if self._worker is not None:
            self._worker.send(ForceKeyframe())

    # ---------------------------------------------------------------- outbox → socket

    async def _pump(self, outbox: Outbox) -> str | None:
        """Forward the encoder's output until its last item; returns its error, if any."""
        while True:
            item = await outbox.get()
            if isinstance(item, WorkerEnded):
                return item.error
            if isinstance(item, FrameNotEncoded):
                self._on_not_sent(item)
                continue
            if isinstance(item, SourceChanged):
                await self._renegotiate(item)
                continue
            await self._forward(item)

    async def _renegotiate(self, changed: SourceChanged) -> None:
        """Wait until ``_serve`` has a connection with the new Hello (or has none)."""
        if not self._serving or self._next_hello is None:
            return
        self._next_hello = replace(
            self._next_hello, codec=changed.codec, width=changed.width,
            height=changed.height, fps=changed.fps,
        )  # fmt: skip
        self._conn = None  # nothing more on the old stream
        self._renegotiated.clear()
        self._new_hello.set()
        await self._renegotiated.wait()

    async def _forward(self, unit: EncodedUnit) -> None:
        conn = self._conn
        if conn is None or (self._await_keyframe and not unit.encoded.keyframe):
            self._unsent(unit)
            return
        self._await_keyframe = False
        encoded, captured = unit.encoded, unit.captured
        now = time.monotonic()
        seq, conn.seq = conn.seq, conn.seq + 1
        capture_us = round(captured.captured_at * 1e6)
        message = conn.proto.send(
            p.Video(seq, encoded.pts, capture_us, encoded.keyframe, encoded.data)
        )
        # Registered before the send: the answer may come before ``send`` returns.
        for settled in self._matcher.sent(
            encoded.pts,
            captured.captured_at,
            encode_ms=unit.encode_ms,
            size_bytes=len(encoded.data),
            keyframe=encoded.keyframe,
            scale=unit.scale,
            payload=captured.frame if self._video is not None else None,
        ):
            self._settle(settled)
        self.stats.on_sent(now, len(encoded.data), encoded.keyframe)
        adaptation = self._adaptation
        if adaptation is not None:
            adaptation.on_encoded(
                len(encoded.data), unit.encode_ms, now,
                encoder_kbps=unit.config.bitrate_kbps, fps=unit.config.fps,
            )  # fmt: skip
            adaptation.on_sent(seq, len(message), now, keyframe=encoded.keyframe)
            self._apply_adaptation()
        with contextlib.suppress(ConnectionClosed):  # the receiver sees it and says why
            await conn.ws.send(message)

    def _unsent(self, unit: EncodedUnit) -> None:
        captured = unit.captured
        self._grant_send()
        self._emit(skipped(captured.pts, captured.captured_at, ClientReason.UNSENT))

    # ------------------------------------------------------------------ socket → us

    async def _receive(self, conn: StreamConnection) -> None:
        try:
            async for event in conn.events():
                self._handle(event)
        except ConnectionClosedOK:
            if not self._finishing:
                log.warning("the server closed the connection")
        except ConnectionClosed as exc:
            log.warning("connection lost: %s", exc)
        except RemoteProtocolError as exc:
            log.error("the server broke the protocol: %s", exc)

    def _handle(self, event: p.Event) -> None:
        now = time.monotonic()
        if isinstance(event, p.Result):
            settled = self._matcher.on_result(event, now)
            self._settle(settled)
            if settled is not None and self._roi is not None:
                record = settled.record  # boxes in the frame size the user asked for
                self._roi.on_result(record.detections, record.captured_at, now)
                self._apply_roi(now)
        elif isinstance(event, p.Dropped):
            self._settle(self._matcher.on_dropped(event, now))
        elif isinstance(event, p.Feedback):
            if self._adaptation is not None:
                self._adaptation.on_feedback(event.arrivals, now)
                self._apply_adaptation()
        elif isinstance(event, p.KeyframeRequest):
            self._on_keyframe_request(event, now)
        elif isinstance(event, p.Error):
            log.error("server error: %s", event.message)

    def _on_keyframe_request(self, event: p.KeyframeRequest, now: float) -> None:
        self.stats.keyframe_requests += 1
        # Rate-limited: a keyframe costs several frames' bytes, and one already on its
        # way answers every request made before it arrives.
        if now - self._keyframe_forced_at < self.config.keyframe_min_interval_s:
            return
        # A camera passed through cannot make one: its worker says so, once.
        level = logging.DEBUG if self._camera is not None else logging.INFO
        log.log(level, "server asked for a keyframe (%s)", event.reason.name.lower())
        self._keyframe_forced_at = now
        if self._worker is not None:
            self._worker.send(ForceKeyframe())

    def _settle(self, settled: Settled[av.VideoFrame] | None) -> None:
        """A sent frame's fate is known: its permit goes back, its record out."""
        if settled is None:
            return
        self._grant_send()
        self._emit(settled.record, settled.payload)

    def _grant_send(self) -> None:
        if self.config.max_in_flight is not None and self._worker is not None:
            self._worker.send(GrantSends(1))

    def _on_skipped(self, captured: CapturedFrame) -> None:
        self._emit(skipped(captured.pts, captured.captured_at, ClientReason.SKIPPED_AT_CAPTURE))

    def _on_not_sent(self, item: FrameNotEncoded) -> None:
        captured = item.captured
        self._emit(skipped(captured.pts, captured.captured_at, item.reason))

    def _emit(self, record: FrameRecord, frame: av.VideoFrame | None = None) -> None:
        self.stats.on_record(time.monotonic(), record)
        if self._results is not None:
            self._results.write(record)
        if self._video is not None and frame is not None:
            self._video.write(record, frame)
        if self._on_record is not None:
            self._on_record(record)

    # ------------------------------------------------------------------- adaptation

    def _apply_adaptation(self) -> None:
        """Hand the adaptation's plan to the encoder worker and the capture thread."""
        adaptation, geometry = self._adaptation, self._geometry_wanted
        if adaptation is None or geometry is None:
            return
        while (event := adaptation.next_event()) is not None:
            _log_adaptation(event)
        plan = adaptation.plan
        settings = self._encode_settings(plan, geometry)
        if settings != self._settings and self._worker is not None:
            self._settings = settings
            self._worker.send(Configure(settings))
        if plan.target.fps != self._capture_fps and self._capture is not None:
            self._capture_fps = plan.target.fps
            self._capture.set_fps(plan.target.fps)

    def _apply_roi(self, now: float) -> None:
        """Hand the ROI planner's plan to the encoder worker when it changed."""
        if self._roi is None or self._worker is None:
            return
        plan = self._roi.plan(now)
        if plan != self._roi_sent:
            self._roi_sent = plan
            self._roi_plans_sent += 1
            self._worker.send(SetRegions(plan))

    # ------------------------------------------------------------------------ timers

    async def _ticker(self) -> None:
        """The event loop's timers: the adaptation's, answer expiry, status, timeline."""
        status_period = 0.5 if self.config.status else None
        timeline_period = self.config.timeline_period_s
        now = time.monotonic()
        next_status = now + status_period if status_period else math.inf
        next_timeline = now + timeline_period if timeline_period else math.inf
        while True:
            now = time.monotonic()
            adaptation = self._adaptation
            due = adaptation.get_timer() if adaptation is not None else None
            if adaptation is not None and due is not None and now >= due:
                adaptation.handle_timer(now)
                self._apply_adaptation()
            roi = self._roi
            if roi is not None and (roi_due := roi.get_timer()) is not None and now >= roi_due:
                roi.handle_timer(now)
                self._apply_roi(now)
            for settled in self._matcher.expire(now, self.config.answer_timeout_s):
                self._settle(settled)
            if now >= next_status and status_period:
                self._print_status()
                next_status = now + status_period
            if now >= next_timeline and timeline_period:
                self._record_timeline(now)
                next_timeline = now + timeline_period
            wake = min(next_status, next_timeline, now + 0.5)
            if adaptation is not None and (due := adaptation.get_timer()) is not None:
                wake = min(wake, due)
            if roi is not None and (roi_due := roi.get_timer()) is not None:
                wake = min(wake, roi_due)
            if (oldest := self._matcher.oldest_captured_at()) is not None:
                wake = min(wake, oldest + self.config.answer_timeout_s)
            await asyncio.sleep(max(0.005, wake - time.monotonic()))

    def _record_timeline(self, now: float) -> None:
        if self._adaptation is None:
            return
        entry = {"t": round(now - self._started_at, 3), "at": now}
        self.timeline.append(entry | self._adaptation.snapshot())

    def _print_status(self) -> None:
        sys.stderr.write("\r" + self.stats.status_line() + "\033[K")
        sys.stderr.flush()
        self._status_printed = True

    def _end_status(self) -> None:
        if self._status_printed:
            sys.stderr.write("\n")


def _log_adaptation(event: AdaptationEvent) -> None:
    if isinstance(event, EncoderSwitch):
        target = event.plan.target
        log.info(
            "adapting: %d kbit/s, %dx%d @ %.3g fps",
            target.bitrate_kbps, target.width, target.height, target.fps,
        )  # fmt: skip
    elif isinstance(event, EncoderSpeedChanged):
        change, capture_fps = event.change, event.capture_fps
        if change.faster and change.fps is None:
            log.info(
                "the encoder reaches %.3g of %.3g fps on this machine: switching to its "
                "faster preset", change.measured_fps, capture_fps,
            )  # fmt: skip
        elif change.fps is None:
            log.info("the encoder keeps up with the capture rate again")
        else:
            log.info(
                "the encoder reaches %.3g of %.3g fps on this machine: its rate control "
                "now budgets for %g fps", change.measured_fps, capture_fps, change.fps,
            )  # fmt: skip


def _describe(result: ProbeResult) -> str:
    """The probe's reading, in words a user can act on."""
    rtt = "?" if result.rtt_ms is None else f"{result.rtt_ms:.0f} ms"
    if result.beyond_kbps is not None:
        return (
            f"RTT {rtt}; the link is faster than the probe can measure "
            f"(over {result.beyond_kbps / 1000:.0f} Mbit/s)"
        )
    if result.throughput_kbps is None:
        return f"RTT {rtt}, throughput not measured (too few answers)"
    if not result.reliable:
        kbps = result.throughput_kbps
        return f"RTT {rtt}, throughput about {kbps / 1000:.1f} Mbit/s (few answers)"
    return f"RTT {rtt}, throughput {result.throughput_kbps / 1000:.1f} Mbit/s"


async def _ends_within(task: asyncio.Task[Any], seconds: float) -> bool:
    """Wait up to ``seconds``; True if ``task`` finished meanwhile."""
    done, _ = await asyncio.wait({task}, timeout=seconds)
    return bool(done)


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[[T], None], arg: T) -> None:
    with contextlib.suppress(RuntimeError):  # the loop is closed: the run is over
        loop.call_soon_threadsafe(callback, arg)


async def run_client(config: ClientConfig) -> dict[str, Any]:
    return await StreamClient(config).run()
