"""IP cameras over RTSP (and RTSPS), through PyAV: open, read, reconnect, never leak a password.

- ``open_camera`` opens one RTSP session (TCP by default: RTP over UDP loses packets on
  any busy network, and a lost packet breaks every frame until the next keyframe) and
  says what the camera streams (``CameraInfo``). The stream info is read from the SDP
  and the first packets only (``analyzeduration`` 0), so opening takes one round of
  RTSP requests rather than FFmpeg's default five seconds of buffered video, which the
  stream would otherwise start that far behind.
- ``CameraReader`` owns a camera for one thread: it hands out packets and, when the
  camera drops (an error, the end of its stream, or ``read_timeout_s`` without a
  packet), re-opens it with backoff (``connection.Backoff``), then says so once with
  ``Reopened``.
- ``RtspSource`` is the ``--reencode`` path: a live ``FrameSource`` that decodes the
  camera's packets for the capture thread and encoder.

Credentials: FFmpeg's error messages repeat the URL they were given, user name and
password included, so no message from it is ever shown as is: every message here names
the camera by ``redact_url`` and keeps only the error's own text.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from urllib.parse import urlsplit

import av

from shelf_stream.client.connection import Backoff, ReconnectPolicy
from shelf_stream.client.sources import FrameSource
from shelf_stream.errors import ConfigError, ShelfStreamError

log = logging.getLogger("shelf_stream.client")

RTSP_SCHEMES = ("rtsp", "rtsps")

#: FFmpeg codec names a pass-through can forward (Annex-B; the server decodes them).
PASSTHROUGH_CODECS = ("hevc", "h264")


class RtspTransport(enum.Enum):
    TCP = "tcp"
    UDP = "udp"


@dataclass(frozen=True, slots=True, kw_only=True)
class RtspConfig:
    """Which camera and how to reach it; ``reconnect`` None: a drop ends the stream."""

    url: str = field(repr=False)  # it holds the password: never in a repr or a log
    transport: RtspTransport = RtspTransport.TCP
    open_timeout_s: float = 10.0  # connect, RTSP requests and the first packets
    read_timeout_s: float = 5.0  # no packet for this long: the camera is gone
    reconnect: ReconnectPolicy | None = field(default_factory=ReconnectPolicy)


def is_rtsp_url(text: str) -> bool:
    return urlsplit(text).scheme.lower() in RTSP_SCHEMES


def redact_url(url: str) -> str:
    """``url`` without its credentials: user and password, and any query (tokens).

    ``rtsp://admin:secret@10.0.0.5:554/stream1?token=x`` -> ``rtsp://***@10.0.0.5:554/stream1?***``
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<camera URL>"
    host = parts.netloc.rpartition("@")
    netloc = f"***@{host[2]}" if host[1] else parts.netloc
    query = "?***" if parts.query else ""
    return f"{parts.scheme}://{netloc}{parts.path}{query}"


class CameraError(ShelfStreamError):
    """The camera cannot be opened or read (retrying may help)."""


@dataclass(frozen=True, slots=True)
class CameraInfo:
    """What the camera streams, as its SDP and first packets say."""

    codec: str  # FFmpeg's codec name: hevc, h264, mjpeg, ...
    width: int
    height: int
    fps: float | None
    time_base: Fraction
    b_frames: bool  # frames out of presentation order (the SPS says it reorders)
    extradata: bytes  # parameter sets from the SDP (Annex-B), if any

    @property
    def passthrough(self) -> bool:
        """Whether its access units can go to the server as they are."""
        return self.codec in PASSTHROUGH_CODECS and not self.b_frames


class CameraSession:
    """One open RTSP session (one PyAV input container), read by one thread."""

    def __init__(self, container: av.container.InputContainer, name: str) -> None:
        self.name = name
        self._container = container
        self._stream = container.streams.video[0]
        self._packets = container.demux(self._stream)
        ctx = self._stream.codec_context
        # Slice threads only: frame threads would delay every decoded frame (--reencode).
        ctx.thread_type = "SLICE"
        rate = self._stream.average_rate or self._stream.guessed_rate
        self.info = CameraInfo(
            codec=ctx.name,
            width=ctx.width,
            height=ctx.height,
            fps=float(rate) if rate and 0 < rate <= 240 else None,
            time_base=self._stream.time_base or Fraction(1, 90_000),
            b_frames=bool(ctx.has_b_frames),
            extradata=bytes(ctx.extradata or b""),
        )

    def read(self) -> av.Packet | None:
        """The next packet of the video stream; None at the end of the camera's stream."""
        try:
            for packet in self._packets:
                if packet.size:  # PyAV ends with an empty packet (a decoder flush)
                    return packet
            return None
        except av.FFmpegError as exc:
            raise CameraError(f"camera {self.name}: {_describe(exc)}") from None

    def decode(self, packet: av.Packet) -> list[av.VideoFrame]:
        try:
            return [f for f in self._stream.codec_context.decode(packet) if f is not None]
        except av.FFmpegError as exc:
            log.debug("camera %s: a packet did not decode: %s", self.name, _describe(exc))
            return []

    def close(self) -> None:
        self._container.close()


def open_camera(config: RtspConfig) -> CameraSession:
    """Open the camera; ``ConfigError`` for what the user must fix (a bad URL, a wrong
    password, no video), ``CameraError`` when it may just be down."""
    name = redact_url(config.url)
    options = {
        "rtsp_transport": config.transport.value,
        "allowed_media_types": "video",  # no audio: nothing here would read it
        "analyzeduration": "0",
        "probesize": "32",
    }
    container = _open(config, name, options)
    if container.streams.video and not container.streams.video[0].codec_context.width:
        # Neither the SDP nor the first packet said the size (no sprop parameter sets,
        # and the stream joined between keyframes): read until a keyframe says it.
        container.close()
        container = _open(config, name, {**options, "analyzeduration": "5000000"})
    if not container.streams.video:
        container.close()
        raise ConfigError(f"camera {name} offers no video stream")
    session = CameraSession(container, name)
    if not session.info.width or not session.info.height:
        session.close()
        raise CameraError(f"camera {name} did not say its frame size")
    return session


def _open(config: RtspConfig, name: str, options: dict[str, str]) -> av.container.InputContainer:
    try:
        return av.open(
            config.url, options=options, timeout=(config.open_timeout_s, config.read_timeout_s)
        )
    except av.HTTPUnauthorizedError:
        raise ConfigError(
            f"camera {name} refused the credentials: check the user and password in the URL"
        ) from None
    except (av.HTTPNotFoundError, av.HTTPClientError) as exc:
        raise ConfigError(f"camera {name}: {_describe(exc)}: check the URL's path") from None
    except (av.FFmpegError, OSError) as exc:
        raise CameraError(f"cannot open camera {name}: {_describe(exc)}") from None


def _describe(exc: BaseException) -> str:
    """The error's own words, never the URL FFmpeg attaches (it holds the password)."""
    if isinstance(exc, av.FFmpegError | OSError) and exc.strerror:
        return str(exc.strerror)
    return type(exc).__name__


# ------------------------------------------------------------------------ reconnects


@dataclass(frozen=True, slots=True)
class Reopened:
    """The camera was re-opened after ``outage_s`` without packets."""

    info: CameraInfo
    outage_s: float


class CameraReader:
    """Packets from one camera, re-opening it with backoff when it drops (one thread).

    ``read`` returns a packet, a ``Reopened`` after a reconnect, or None once ``stop``
    was set or the camera stayed away past the reconnect limit (``gave_up``). A stop is
    seen between packets, during backoff at once, and within ``open_timeout_s`` while an
    open is in progress (FFmpeg's open cannot be interrupted from outside).
    """

    def __init__(
        self,
        config: RtspConfig,
        session: CameraSession,
        stop: threading.Event,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.session: CameraSession | None = session
        self.gave_up = False
        self.reopens = 0
        self._stop = stop
        self._clock = clock
        self._last_packet_at = clock()

    def read(self) -> av.Packet | Reopened | None:
        while not self._stop.is_set():
            if self.session is None:
                return self._reopen()
            try:
                packet = self.session.read()
            except CameraError as exc:
                self._lost(str(exc))
                continue
            if packet is None:
                self._lost(f"camera {self.session.name} ended its stream")
                continue
            self._last_packet_at = self._clock()
            return packet
        return None

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None

    def _lost(self, why: str) -> None:
        self.close()
        if self.config.reconnect is None:
            log.error("%s", why)
            self.gave_up = True
            self._stop.set()
            return
        log.warning("%s; reconnecting (for up to %.0f s)", why, self.config.reconnect.give_up_s)

    def _reopen(self) -> Reopened | None:
        policy = self.config.reconnect
        assert policy is not None
        lost_at = self._clock()
        backoff = Backoff(policy, lost_at)
        last_error = ""
        while not self._stop.is_set():
            delay = backoff.next_delay(self._clock())
            if delay is None:
                log.error(
                    "the camera stayed unreachable for %.0f s (%s); giving up",
                    policy.give_up_s, last_error,
                )  # fmt: skip
                self.gave_up = True
                self._stop.set()
                return None
            if self._stop.wait(delay):
                return None
            try:
                self.session = open_camera(self.config)
            except ShelfStreamError as exc:  # a camera rebooting may refuse for a while
                last_error = str(exc)
                log.debug("camera reconnect attempt %d failed: %s", backoff.attempts, exc)
                continue
            self.reopens += 1
            outage = self._clock() - self._last_packet_at
            log.info(
                "camera %s is back after %.1f s (%d attempt(s))",
                self.session.name, outage, backoff.attempts,
            )  # fmt: skip
            return Reopened(self.session.info, outage)
        return None


# ------------------------------------------------------------------------- --reencode


class RtspSource(FrameSource):
    """A camera decoded for the capture thread (``--reencode``, or a codec the server
    cannot take as is). Live: the capture thread stamps each frame as it comes.

    Opened by ``open_source``; the wiring may take its session for a pass-through
    instead (``take_session``), and then this source is never read.
    """

    live = True

    def __init__(self, config: RtspConfig) -> None:
        self.config = config
        self._session: CameraSession | None = open_camera(config)
        self.info = self._session.info
        self.width, self.height, self.fps = self.info.width, self.info.height, self.info.fps
        self._stop = threading.Event()
        self._reader: CameraReader | None = None
        self._frames: list[av.VideoFrame] = []

    def take_session(self) -> CameraSession:
        """Hand the open session over (to a pass-through worker); this source is spent."""
        session, self._session = self._session, None
        if session is None:
            raise ShelfStreamError("the camera's session was already taken")
        return session

    def read(self) -> av.VideoFrame | None:
        reader = self._reader
        if reader is None:
            reader = self._reader = CameraReader(self.config, self.take_session(), self._stop)
        while not self._frames:
            item = reader.read()
            if item is None:
                if reader.gave_up:
                    raise CameraError("the camera is gone")
                return None
            if isinstance(item, Reopened):
                if (item.info.width, item.info.height) != (self.width, self.height):
                    log.info(
                        "the camera now streams %dx%d; re-encoding it at %dx%d",
                        item.info.width, item.info.height, self.width, self.height,
                    )  # fmt: skip
                continue
            assert reader.session is not None
            self._frames = reader.session.decode(item)
        frame = self._frames.pop(0)
        frame.pict_type = av.video.frame.PictureType.NONE  # see ``sources``: no forced I
        return frame

    def close(self) -> None:
        self._stop.set()
        if self._reader is not None:
            self._reader.close()
        elif self._session is not None:
            self._session.close()
            self._session = None
