"""Pass-through: a camera's own H.265/H.264 access units, forwarded without re-encoding.

The ``PassthroughWorker`` takes the encoder worker's place (capture thread and encoder
both): one thread that alone owns the camera (``rtsp.CameraReader``) and puts the same
``EncodedUnit`` items into the same bounded ``Outbox``, so the pump, the matcher, the
sinks, the reconnects and the exactly-once accounting are the ones every stream uses.
The event loop talks to it through its inbox like to the encoder worker.

What a camera cannot do, and what the worker does instead:

- it cannot wait: while the outbox is full (the link is slower than the camera) an
  access unit is left out (``LINK_BEHIND``), and with it every one until the camera's
  next keyframe (``AWAITING_CAMERA_KEYFRAME``): they would not decode without it;
- it cannot be asked for a keyframe: a server's request (``ForceKeyframe``) is logged
  once, and the server resumes at the camera's next one;
- it cannot change its bitrate: the adaptation is off, and the first time the link
  falls behind the user is told to lower the camera's rate or use ``--reencode``;
- it streams in its own timing: ``pts_rebase.PtsRebaser`` puts the camera's timestamps
  on the stream's 90 kHz clock (jumps and wraps included); frames out of order
  (B-frames) are refused, since the server's decoder runs with zero delay;
- it may drop and come back: the reader reconnects with backoff, and a camera that
  comes back with another size or codec is announced with ``SourceChanged`` (the
  wiring starts a new connection with a new Hello). Boxes stay in the first size's
  pixels, like those of a re-encoded stream.

Every access unit read from the camera ends as exactly one item or one ``on_not_sent``
call, unless the worker is aborted.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import av

from shelf_stream.client.capture import CapturedFrame
from shelf_stream.client.encoder_worker import (
    Command,
    EncodedUnit,
    ForceKeyframe,
    FrameNotEncoded,
    Outbox,
    Output,
    SourceChanged,
    WorkerEnded,
)
from shelf_stream.client.matcher import ClientReason
from shelf_stream.client.pts_rebase import PtsRebaser, RebaseConfig, Step
from shelf_stream.client.rtsp import (
    PASSTHROUGH_CODECS,
    CameraInfo,
    CameraReader,
    CameraSession,
    Reopened,
    RtspConfig,
    RtspSource,
)
from shelf_stream.client.sources import FrameSource
from shelf_stream.codec import nal
from shelf_stream.codec.base import TIME_BASE, EncodedFrame, EncoderConfig
from shelf_stream.errors import CodecError, ConfigError, ShelfStreamError

log = logging.getLogger("shelf_stream.client")

DEFAULT_FPS = 30.0

#: Parameter-set NAL unit types, in the order a decoder needs them.
_PARAMETER_SETS = {
    "hevc": (nal.HEVC_VPS, nal.HEVC_SPS, nal.HEVC_PPS),
    "h264": (nal.H264_SPS, nal.H264_PPS),
}
_AUD = {"hevc": nal.HEVC_AUD, "h264": nal.H264_AUD}
_START_CODE = b"\x00\x00\x00\x01"


# ---------------------------------------------------------------------------- choice


def passthrough_camera(
    source: FrameSource, *, reencode: bool, codec: str, fixed: dict[str, bool]
) -> CameraInfo | None:
    """The camera whose stream goes to the server as it is, or None to re-encode.

    None for anything but an RTSP camera, with ``reencode``, or for a stream the server
    cannot take as is (another codec, B-frames: said why). ``fixed`` names the options
    given that would change the stream (``ConfigError``: they need ``--reencode``).
    """
    if not isinstance(source, RtspSource) or reencode:
        return None
    info = source.info
    if info.codec not in PASSTHROUGH_CODECS:
        log.info("the camera streams %s: re-encoding it as %s", info.codec, codec)
        return None
    if info.b_frames:
        log.warning(
            "the camera sends B-frames (frames out of order), which the server's zero-delay "
            "decoder cannot take: re-encoding it as %s; turn B-frames off in the camera's "
            "encoder settings to pass its stream through", codec,
        )  # fmt: skip
        return None
    given = [name for name, set_ in fixed.items() if set_]
    if given:
        raise ConfigError(
            f"{', '.join(given)}: the camera's {info.codec} goes to the server as it is; "
            "add --reencode to change it"
        )
    return info


# ------------------------------------------------------------------- access units (pure)


@dataclass(frozen=True, slots=True)
class ShapedUnit:
    data: bytes
    keyframe: bool
    parameter_sets_added: bool = False
    parameter_sets_missing: bool = False  # a keyframe no fresh decoder can start from


class AccessUnitShaper:
    """Camera packets into access units the server takes (sans-I/O).

    The server starts a fresh decoder at every keyframe after trouble and needs the
    parameter sets in band (``codec.recovery``); it tells keyframes by NAL type, never
    by a flag (``codec.nal``). Many cameras send their parameter sets only in the SDP
    (FFmpeg's extradata) or only now and then, so the latest ones seen, in band or in
    the SDP, are put before every keyframe that lacks them.
    """

    def __init__(self, codec: str, extradata: bytes = b"") -> None:
        if codec not in _PARAMETER_SETS:
            raise CodecError(f"no pass-through for codec {codec!r}")
        self.codec = codec
        self._types = _PARAMETER_SETS[codec]
        self._latest: dict[int, bytes] = {}
        if extradata.startswith((b"\x00\x00\x01", b"\x00\x00\x00\x01")):
            self._remember(nal.split_nal_units(extradata))

    def shape(self, data: bytes) -> ShapedUnit:
        """``CodecError`` for a packet that is not an Annex-B access unit."""
        if not data.startswith((b"\x00\x00\x01", b"\x00\x00\x00\x01")):
            raise CodecError(
                f"the camera's {self.codec} packet is not Annex-B (first bytes {data[:6].hex(' ')})"
            )
        units = nal.split_nal_units(data)
        types = [nal.nal_type(self.codec, unit) for unit in units]
        self._remember(units)
        keyframe = nal.is_keyframe(self.codec, data)
        missing = [t for t in self._types if t not in types]
        if not keyframe or not missing:
            return ShapedUnit(data, keyframe)
        if any(t not in self._latest for t in self._types):
            return ShapedUnit(data, keyframe, parameter_sets_missing=True)
        head = b"".join(_START_CODE + self._latest[t] for t in self._types)
        if types and types[0] == _AUD[self.codec]:
            # An access unit delimiter must stay first: the sets go right after it.
            aud = _START_CODE + units[0]
            rest = b"".join(_START_CODE + unit for unit in units[1:])
            return ShapedUnit(aud + head + rest, keyframe, parameter_sets_added=True)
        return ShapedUnit(head + data, keyframe, parameter_sets_added=True)

    def _remember(self, units: list[bytes]) -> None:
        for unit in units:
            kind = nal.nal_type(self.codec, unit)
            if kind in self._types:
                self._latest[kind] = unit


# ------------------------------------------------------------------------- the worker


class PassthroughRefused(ShelfStreamError):
    """The camera's stream cannot go to the server as it is (``--reencode`` can)."""


@dataclass(slots=True)
class _Stream:
    """The current camera session's stream, as the worker forwards it."""

    info: CameraInfo
    shaper: AccessUnitShaper
    config: EncoderConfig  # what the units carry (the camera's codec, size and rate)
    scale: tuple[float, float]  # to the first session's size, the boxes' frame


class PassthroughWorker:
    """Owns the camera and its thread; see the module docstring.

    ``on_not_sent`` is called from the worker thread for an access unit that is not
    put in the outbox (it must hand the item to the event loop thread-safely).
    """

    def __init__(
        self,
        config: RtspConfig,
        session: CameraSession,
        outbox: Outbox,
        *,
        on_not_sent: Callable[[FrameNotEncoded], None],
        max_frames: int | None = None,
        duration_s: float | None = None,
        decode_frames: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._outbox = outbox
        self._on_not_sent = on_not_sent
        self._inbox: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self._stop = threading.Event()  # finish: no more units; then WorkerEnded
        self._abort = threading.Event()  # tear down without waiting for the outbox
        self._thread = threading.Thread(target=self._run, name="passthrough", daemon=True)
        self.error: str | None = None
        # Everything below belongs to the worker thread alone.
        self._reader = CameraReader(config, session, self._stop, clock=clock)
        self._clock = clock
        self._max_frames, self._duration_s = max_frames, duration_s
        self._decode = decode_frames
        self._first = session.info
        self._stream = self._new_stream(session.info)
        self._rebaser = PtsRebaser(session.info.time_base, _rebase_config(session.info))
        self._await_keyframe = True  # a fresh decoder starts at a keyframe
        self._said: set[str] = set()  # notices already logged (each is said once)
        self.units_read = 0
        self.units_sent = 0
        self.bytes_read = 0
        self._started_at: float | None = None
        self._keyframe_pts: list[int] = []  # the last two, for the camera's keyframe interval

    # -- the event loop's side ------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def send(self, command: Command) -> None:
        self._inbox.put(command)

    def stop(self) -> None:
        """Finish: read no more, then end with ``WorkerEnded`` (any thread)."""
        self._stop.set()

    def abort(self) -> None:
        self._stop.set()
        self._abort.set()

    def join(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    # -- the worker thread ----------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
            if self._reader.gave_up:
                self.error = "the camera is gone"
        except ShelfStreamError as exc:
            self.error = str(exc)
            log.error("%s", exc)
        except Exception as exc:  # a bug: say so, and still end the stream cleanly
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("pass-through worker crashed")
        finally:
            self._reader.close()
            self._put(WorkerEnded(self.error))

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._take_commands()
            if self._max_frames is not None and self.units_read >= self._max_frames:
                return
            if self._duration_over():
                return
            item = self._reader.read()
            if item is None:
                return
            if isinstance(item, Reopened):
                self._reopened(item)
            else:
                self._started_at = self._started_at or self._clock()
                self._process(item, self._clock())

    def _duration_over(self) -> bool:
        if self._started_at is None or self._duration_s is None:
            return False
        return self._clock() - self._started_at >= self._duration_s

    def _take_commands(self) -> None:
        while True:
            try:
                command = self._inbox.get_nowait()
            except queue.Empty:
                return
            if isinstance(command, ForceKeyframe):
                self._say_once(
                    "keyframe",
                    logging.INFO,
                    "a camera cannot be asked for a keyframe: the server resumes at its next one%s",
                    self._keyframe_interval_text(),
                )
            # Configure: the camera's bitrate is its own (the adaptation is off).
            # GrantSends: no stop-and-wait for a camera (the wiring refuses it).

    def _process(self, packet: av.Packet, now: float) -> None:
        rebased = self._rebaser.rebase(packet.pts)
        if rebased.step is Step.REORDERED:
            raise PassthroughRefused(
                "the camera sends frames out of order (B-frames), which the server's "
                "zero-delay decoder cannot take: turn B-frames off in the camera's "
                "encoder settings, or use --reencode"
            )
        data = bytes(packet)
        self.units_read += 1
        self.bytes_read += len(data)
        frame = self._decoded(packet)
        captured = CapturedFrame(frame, rebased.pts, now)
        if packet.is_corrupt:
            self._skip(captured, ClientReason.CAMERA_DAMAGED)
            return
        try:
            shaped = self._stream.shaper.shape(data)
        except CodecError as exc:
            self._say_once("not-annex-b", logging.WARNING, "%s; leaving it out", exc)
            self._skip(captured, ClientReason.CAMERA_DAMAGED)
            return
        if shaped.keyframe:
            self._keyframe_pts = [*self._keyframe_pts[-1:], rebased.pts]
        if shaped.parameter_sets_missing:
            self._say_once(
                "no-parameter-sets",
                logging.WARNING,
                "the camera's keyframes carry no parameter sets and its SDP gave none: "
                "the server cannot decode them; enable in-band parameter sets on the "
                "camera, or use --reencode",
            )
        if self._await_keyframe and not shaped.keyframe:
            self._skip(captured, ClientReason.AWAITING_CAMERA_KEYFRAME)
            return
        encoded = EncodedFrame(rebased.pts, shaped.keyframe, shaped.data)
        unit = EncodedUnit(encoded, captured, 0.0, self._stream.config, self._stream.scale)
        if not self._outbox.put_nowait(unit):
            self._link_behind(captured)
            return
        self._await_keyframe = False
        self.units_sent += 1

    def _decoded(self, packet: av.Packet) -> av.VideoFrame | None:
        """``--save`` only: the picture, decoded here (the one cost a pass-through has)."""
        session = self._reader.session
        if not self._decode or session is None:
            return None
        frames = session.decode(packet)
        return frames[-1] if frames else None

    def _skip(self, captured: CapturedFrame, reason: ClientReason) -> None:
        if reason is not ClientReason.AWAITING_CAMERA_KEYFRAME:
            self._await_keyframe = True  # what follows refers to what was left out
        self._on_not_sent(FrameNotEncoded(captured, reason))

    def _link_behind(self, captured: CapturedFrame) -> None:
        self._say_once(
            "link-behind",
            logging.WARNING,
            "the link is slower than the camera's stream (%s): its frames are left out "
            "until its next keyframe each time; lower the camera's bitrate or frame rate, "
            "or use --reencode to adapt to the link",
            self._camera_rate_text(),
        )
        self._skip(captured, ClientReason.LINK_BEHIND)

    def _reopened(self, reopened: Reopened) -> None:
        info = reopened.info
        if not info.passthrough:
            raise PassthroughRefused(
                f"the camera came back streaming {info.codec}"
                f"{' with B-frames' if info.b_frames else ''}, which cannot pass through; "
                "restart with --reencode"
            )
        previous = self._stream.info
        self._stream = self._new_stream(info)
        self._rebaser.resume(reopened.outage_s, info.time_base)
        self._await_keyframe = True
        if (info.codec, info.width, info.height) != (
            previous.codec,
            previous.width,
            previous.height,
        ):
            log.info(
                "the camera now streams %s %dx%d (was %s %dx%d): starting a new stream "
                "with the server", info.codec, info.width, info.height, previous.codec,
                previous.width, previous.height,
            )  # fmt: skip
            fps = info.fps or DEFAULT_FPS
            self._put(SourceChanged(info.codec, info.width, info.height, fps))

    def _new_stream(self, info: CameraInfo) -> _Stream:
        config = EncoderConfig(
            codec=info.codec,
            width=info.width,
            height=info.height,
            fps=info.fps or DEFAULT_FPS,
            bitrate_kbps=0,  # the camera's own; nothing here sets it
        )
        scale = (self._first.width / info.width, self._first.height / info.height)
        return _Stream(info, AccessUnitShaper(info.codec, info.extradata), config, scale)

    def _put(self, item: Output) -> bool:
        return self._outbox.put(item, self._abort)

    # -- notices --------------------------------------------------------------------------

    def _say_once(self, key: str, level: int, message: str, *args: object) -> None:
        if key not in self._said:
            self._said.add(key)
            log.log(level, message, *args)

    def _keyframe_interval_text(self) -> str:
        if len(self._keyframe_pts) < 2:
            return ""
        seconds = (self._keyframe_pts[1] - self._keyframe_pts[0]) * float(TIME_BASE)
        return f" (every {seconds:.1f} s)"

    def _camera_rate_text(self) -> str:
        if self._started_at is None:
            return "rate unknown"
        elapsed = self._clock() - self._started_at
        if elapsed <= 0:
            return "rate unknown"
        return f"about {self.bytes_read * 8 / elapsed / 1000:.0f} kbit/s"


def _rebase_config(info: CameraInfo) -> RebaseConfig:
    return RebaseConfig(fallback_fps=info.fps or DEFAULT_FPS)
