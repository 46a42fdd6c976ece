"""Frame sources for the client's capture thread.

Every source hands out ``av.VideoFrame`` objects that the caller owns (a fresh frame per
``read()``, never a shared buffer) with ``pict_type`` set to ``NONE``: decoded frames
often carry ``I``, which would make a downstream encoder emit a keyframe for every frame.
Frame ``pts`` are whatever the source had; the capture thread stamps its own.

``live`` and ``timed`` tell the capture thread how to pace: a live source (a camera)
delivers frames on its own clock, so the thread just keeps the latest; a timed source (a
file) is paced by its frames' timestamps (``frame.time``, continuous across ``loop``
restarts); any other (the demo scene, a test pattern) is read as fast as asked and paced
at the stream's rate.
"""

from __future__ import annotations

import glob
import importlib.util
import logging
import math
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Literal, Self

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from shelf_stream.errors import ConfigError, ShelfStreamError

if TYPE_CHECKING:
    from shelf_stream.client.rtsp import RtspConfig

log = logging.getLogger("shelf_stream.client")

SourceKind = Literal["camera", "file", "scene", "testsrc", "rtsp"]
SOURCE_KINDS: tuple[str, ...] = ("camera", "file", "scene", "testsrc", "rtsp")

#: Above this many pixels a V4L2 camera is asked for MJPEG: raw YUYV over USB 2 tops out
#: around 10 fps at 1280x720, MJPEG reaches the camera's full rate.
_MJPEG_ABOVE_PIXELS = 640 * 480

#: How long a camera may keep answering EAGAIN before we call it stalled.
_CAMERA_STALL_S = 5.0

#: A frame rate outside (0, this] read from a file is not believed (frames muxed without
#: timestamps have shown an average rate of 2500).
MAX_PLAUSIBLE_FPS = 240.0


def _own(frame: av.VideoFrame) -> av.VideoFrame:
    """Mark ``frame`` as carrying no picture-type request before handing it out."""
    frame.pict_type = av.video.frame.PictureType.NONE
    return frame


class FrameSource(ABC):
    """A source of video frames, read by one thread.

    ``width``/``height`` are the native frame size, ``fps`` the native rate when known,
    ``live`` whether the source runs on its own clock, ``timed`` whether its frames'
    timestamps pace it (see the module docstring).
    """

    width: int
    height: int
    fps: float | None
    live: bool
    timed: bool = False

    @abstractmethod
    def read(self) -> av.VideoFrame | None:
        """Block until the next frame; ``None`` at the end of a finite source."""

    @abstractmethod
    def close(self) -> None:
        """Release the source; safe to call more than once."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# --------------------------------------------------------------------------- containers


class _ContainerReader:
    """Decodes the first video stream of an open input container, frame by frame."""

    def __init__(self, container: av.container.InputContainer, what: str) -> None:
        if not container.streams.video:
            container.close()
            raise ConfigError(f"{what} has no video stream")
        self.container = container
        self.stream = container.streams.video[0]
        self._frames: Iterator[av.VideoFrame] | None = None

    @property
    def fps(self) -> float | None:
        rate = self.stream.average_rate or self.stream.guessed_rate
        return float(rate) if rate else None

    def next_frame(self, *, stall_s: float = _CAMERA_STALL_S) -> av.VideoFrame | None:
        """The next decoded frame, or ``None`` at the end of the input."""
        deadline: float | None = None
        while True:
            if self._frames is None:
                self._frames = self.container.decode(self.stream)
            try:
                return next(self._frames)
            except StopIteration:
                return None
            except BlockingIOError:
                # Capture devices (avfoundation notably) answer EAGAIN while no frame is
                # ready; the generator is dead after raising, so start a new one.
                self._frames = None
                now = time.monotonic()
                deadline = deadline or now + stall_s
                if now > deadline:
                    raise
                time.sleep(0.002)

    def close(self) -> None:
        self._frames = None
        self.container.close()


# ------------------------------------------------------------------------------ camera


def _camera_index(device: str | int) -> int | None:
    if isinstance(device, int):
        return device
    return int(device) if device.strip().isdigit() else None


def _size_rate_options(width: int | None, height: int | None, fps: float | None) -> dict[str, str]:
    if (width is None) != (height is None):
        raise ConfigError("give both camera width and height, or neither")
    options: dict[str, str] = {}
    if width is not None and height is not None:
        if width <= 0 or height <= 0:
            raise ConfigError(f"bad camera size {width}x{height}")
        options["video_size"] = f"{width}x{height}"
    if fps is not None:
        if not 0 < fps <= 1000:
            raise ConfigError(f"bad camera frame rate {fps}")
        options["framerate"] = _rate_text(fps)
    return options


def _rate_text(fps: float) -> str:
    """``30`` for 30.0, ``30000/1001`` for 29.97: FFmpeg parses both exactly."""
    rate = Fraction(fps).limit_denominator(1001)
    return str(rate.numerator) if rate.denominator == 1 else f"{rate.numerator}/{rate.denominator}"


def camera_open_args(
    device: str | int,
    *,
    width: int | None = None,
    height: int | None = None,
    fps: float | None = None,
    platform: str | None = None,
) -> tuple[str, str, dict[str, str]]:
    """Map a camera choice to ``(format, file, options)`` for ``av.open``.

    ``device`` is an index (``0``, ``"1"``) or a platform name: a ``/dev/videoN`` path on
    Linux, an AVFoundation device name on macOS, a DirectShow device name on Windows.
    ``platform`` defaults to ``sys.platform``. Raises ``ConfigError`` for choices the
    platform cannot express.
    """
    platform = platform or sys.platform
    options = _size_rate_options(width, height, fps)
    index = _camera_index(device)
    name = str(device).strip()
    if not name:
        raise ConfigError("empty camera name")
    if platform.startswith("linux"):
        if index is not None:
            name = f"/dev/video{index}"
        elif not name.startswith("/"):
            raise ConfigError(f"camera {name!r}: give an index or a /dev/videoN path")
        if width is not None and height is not None and width * height > _MJPEG_ABOVE_PIXELS:
            options["input_format"] = "mjpeg"
        return "v4l2", name, options
    if platform == "darwin":
        # AVFoundation's default rate (29.97) is refused by most built-in cameras, which
        # offer exactly 30 or 15: always ask for a rate. ":none" opens no audio device.
        options.setdefault("framerate", "30")
        file = f"{index}:none" if index is not None else name
        if ":" not in file:
            file = f"{file}:none"
        return "avfoundation", file, options
    if platform in ("win32", "cygwin"):
        if index is not None:
            raise ConfigError(
                "DirectShow cameras are opened by name, not index: list them with "
                "`ffmpeg -list_devices true -f dshow -i dummy` and pass the name"
            )
        file = name if name.startswith("video=") else f"video={name}"
        return "dshow", file, options
    raise ConfigError(f"no camera support on platform {platform!r}")


def list_cameras(platform: str | None = None) -> list[str]:
    """Camera names when they are cheap to know (``/dev/video*`` on Linux), else ``[]``."""
    if (platform or sys.platform).startswith("linux"):
        return sorted(glob.glob("/dev/video*"), key=lambda p: (len(p), p))
    return []


def _camera_hint(platform: str) -> str:
    if platform.startswith("linux"):
        found = list_cameras(platform)
        return f"cameras present: {', '.join(found)}" if found else "no /dev/video* devices"
    if platform == "darwin":
        return "list cameras with `ffmpeg -f avfoundation -list_devices true -i ''`"
    return "list cameras with `ffmpeg -list_devices true -f dshow -i dummy`"


def _camera_error(fmt: str, file: str, options: dict[str, str], exc: Exception) -> ConfigError:
    hint = _camera_hint(sys.platform)
    if isinstance(exc, FileNotFoundError):
        why = "no such device"
    elif isinstance(exc, PermissionError):
        why = (
            "permission denied (Linux: add yourself to the 'video' group; macOS: allow "
            "camera access for this terminal in System Settings > Privacy)"
        )
    elif isinstance(exc, ValueError) and "container format" in str(exc):
        why = f"this PyAV build has no {fmt!r} input device"
    else:
        why = f"the device refused {options or 'the default mode'} ({exc})"
    return ConfigError(f"cannot open camera {file!r} via {fmt}: {why}; {hint}")


class CameraSource(FrameSource):
    """A capture device through PyAV/libavdevice (v4l2, avfoundation or dshow)."""

    live = True

    def __init__(
        self,
        index_or_name: str | int = 0,
        *,
        width: int | None = None,
        height: int | None = None,
        fps: float | None = None,
    ) -> None:
        fmt, file, options = camera_open_args(index_or_name, width=width, height=height, fps=fps)
        try:
            container = av.open(file, format=fmt, options=options)
        except (av.FFmpegError, OSError, ValueError) as exc:
            raise _camera_error(fmt, file, options, exc) from exc
        self._reader = _ContainerReader(container, f"camera {file!r}")
        ctx = self._reader.stream.codec_context
        self.width, self.height = ctx.width, ctx.height
        self.fps = self._reader.fps
        self._name = file

    def read(self) -> av.VideoFrame | None:
        """The next frame; raises ``ShelfStreamError`` if the camera stops (unplugged)."""
        try:
            frame = self._reader.next_frame()
        except (av.FFmpegError, OSError) as exc:
            raise ShelfStreamError(f"camera {self._name!r} stopped: {exc}") from exc
        return None if frame is None else _own(frame)

    def close(self) -> None:
        self._reader.close()


# -------------------------------------------------------------------------------- file


def _open_file(path: Path) -> _ContainerReader:
    if not path.exists():
        raise ConfigError(f"video file not found: {path}")
    if path.is_dir():
        raise ConfigError(f"cannot read video file {path}: it is a directory")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise ConfigError(f"cannot read video file {path}: {exc}") from exc
    reader = _ContainerReader(container, f"file {path}")
    # Frame threads raise throughput; a file has no latency to protect.
    reader.stream.thread_type = "AUTO"
    return reader


def _plausible_rate(rate: Fraction | float | None) -> float | None:
    value = float(rate) if rate else 0.0
    return value if 0 < value <= MAX_PLAUSIBLE_FPS else None


def file_rate(stream: av.video.stream.VideoStream, what: str) -> float | None:
    """A file's frame rate: the container's, else the codec's, else None (the caller's
    ``--fps``, then 30). Warns once when the container's rate is not believed."""
    container_rate = stream.average_rate or stream.guessed_rate
    if (rate := _plausible_rate(container_rate)) is not None:
        return rate
    shown = f"{float(container_rate):g}" if container_rate else "none"
    codec_rate = _plausible_rate(stream.codec_context.framerate)
    instead = f"the codec's {codec_rate:g} fps" if codec_rate is not None else "--fps, or 30 fps"
    log.warning(
        "%s: the container's frame rate (%s) is not plausible; streaming at %s, paced by "
        "the frames' timestamps", what, shown, instead,
    )  # fmt: skip
    return codec_rate


class FileSource(FrameSource):
    """Any file PyAV can read, decoded in order; ``loop=True`` restarts it at the end.

    Frames keep their own timestamps; after a restart they continue one frame interval
    after the last frame of the previous pass, so ``frame.time`` never goes back.
    """

    live = False
    timed = True

    def __init__(self, path: str | Path, *, loop: bool = False) -> None:
        self.path = Path(path)
        self.loop = loop
        self._reader = _open_file(self.path)
        stream = self._reader.stream
        ctx = stream.codec_context
        self.width, self.height = ctx.width, ctx.height
        self.fps = file_rate(stream, f"file {self.path}")
        self._frames_this_pass = 0
        self._pts_offset = 0  # added to every pts of this pass
        self._last_pts: int | None = None
        self._step_pts = 1  # the last gap between frames, in the stream's time base

    def read(self) -> av.VideoFrame | None:
        frame = self._reader.next_frame()
        if frame is None and self.loop and self._frames_this_pass > 0:
            # Reopening is slower than seeking by a few ms per loop but works for every
            # format, including ones that cannot seek back to frame 0 exactly.
            self._reader.close()
            self._reader = _open_file(self.path)
            self._frames_this_pass = 0
            frame = self._reader.next_frame()
            if frame is not None and frame.pts is not None and self._last_pts is not None:
                self._pts_offset = self._last_pts + self._step_pts - frame.pts
        if frame is None:
            return None
        self._frames_this_pass += 1
        if frame.pts is not None:
            frame.pts += self._pts_offset
            if self._last_pts is not None and frame.pts > self._last_pts:
                self._step_pts = frame.pts - self._last_pts
            self._last_pts = frame.pts
        return _own(frame)

    def close(self) -> None:
        self._reader.close()


# ------------------------------------------------------------------------ test pattern


def _frame_budget(seconds: float | None, fps: float) -> int | None:
    return None if seconds is None else round(seconds * fps)


class TestPatternSource(FrameSource):
    """One of FFmpeg's lavfi video sources (``testsrc2``, ``smptebars``, ``mandelbrot``...)."""

    __test__ = False  # not a pytest test class, despite the name
    live = False

    def __init__(
        self,
        width: int,
        height: int,
        fps: float,
        *,
        pattern: str = "testsrc2",
        seconds: float | None = None,
    ) -> None:
        _check_generated(width, height, fps, seconds)
        graph = f"{pattern}=size={width}x{height}:rate={_rate_text(fps)}"
        try:
            container = av.open(graph, format="lavfi")
        except (av.FFmpegError, OSError, ValueError) as exc:
            raise ConfigError(f"bad test pattern {graph!r}: {exc}") from exc
        self._reader = _ContainerReader(container, f"pattern {pattern!r}")
        self.width, self.height, self.fps = width, height, float(fps)
        self._left = _frame_budget(seconds, fps)

    def read(self) -> av.VideoFrame | None:
        if self._left is not None:
            if self._left <= 0:
                return None
            self._left -= 1
        frame = self._reader.next_frame()
        return None if frame is None else _own(frame)

    def close(self) -> None:
        self._reader.close()


def _check_generated(width: int, height: int, fps: float, seconds: float | None) -> None:
    # Even sizes: 4:2:0 encoders (x264, x265) refuse odd ones, better to say so here.
    if width < 16 or height < 16 or width % 2 or height % 2:
        raise ConfigError(f"bad frame size {width}x{height}: need even sizes of at least 16")
    if width > 7680 or height > 4320:
        raise ConfigError(f"frame size {width}x{height} is larger than 8K")
    if not 0 < fps <= 240:
        raise ConfigError(f"bad frame rate {fps}: need 0 < fps <= 240")
    if seconds is not None and not seconds > 0:
        raise ConfigError(f"bad duration {seconds}: need seconds > 0")


# ------------------------------------------------------------------------ demo scene

#: Photos shipped with scikit-image that hold objects a COCO detector knows, placed on a
#: 2x2 grid as (column, row), in the order the virtual camera visits them (clockwise).
SCENE_PHOTOS: tuple[tuple[str, str, int, int], ...] = (
    ("astronaut.png", "person", 0, 0),
    ("chelsea.png", "cat", 1, 0),
    ("motorcycle_left.png", "motorcycle", 1, 1),
    ("coffee.png", "cup", 0, 1),
)
_CELL_W, _CELL_H = 640, 480  # one grid cell; each photo is fitted into 94% of it
_MARGIN = 240  # background around the grid, so the window rarely hits the canvas edge
_CANVAS_W, _CANVAS_H = 2 * _CELL_W + 2 * _MARGIN, 2 * _CELL_H + 2 * _MARGIN
_BACKGROUND = (118, 112, 104)  # a neutral warm grey, like a table top

# The virtual camera (all functions of t = frame index / fps, so every frame is
# reproducible from its index alone):
# - its centre runs clockwise round an ellipse through the four cell centres
#   (astronaut -> cat -> motorcycle -> coffee cup -> ...), one lap per _LAP_S seconds,
#   slowing to a quarter of its mean speed over each photo (a dwell of ~1 s) and
#   swinging a little past the grid between them;
# - its window is ~1.1 cells high (1 to 1.5 photos across, so each object fills most of
#   a 416x416 model input), breathing +-10% on a _ZOOM_S period;
# - a few pixels of two-tone shake are added like a hand-held camera.
_LAP_S = 12.0
_DWELL = 0.75  # 0: constant speed; towards 1: the camera stops over each photo
_ZOOM_S = 7.0
_ZOOM_STEPS = 100  # the zoom is quantised to 1% steps; see SceneSource._reformatter
_BASE_WINDOW_H = 1.1 * _CELL_H
_SHAKE = 0.006  # shake amplitude as a fraction of the window height


def _skimage_data_dir() -> Path:
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the demo scene needs scikit-image: pip install 'shelf-stream[demo]'")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _read_photo(path: Path, max_w: int, max_h: int) -> np.ndarray:
    """The photo at ``path`` as RGB, scaled to fit ``max_w`` x ``max_h``."""
    try:
        with av.open(str(path)) as container:
            frame = next(container.decode(video=0))
    except (av.FFmpegError, OSError, StopIteration) as exc:
        raise ConfigError(f"cannot read demo photo {path}: {exc}") from exc
    scale = min(max_w / frame.width, max_h / frame.height)
    w, h = round(frame.width * scale), round(frame.height * scale)
    fitted = frame.reformat(w, h, format="rgb24", interpolation="BICUBIC")
    return fitted.to_ndarray()


@lru_cache(maxsize=1)
def scene_canvas() -> np.ndarray:
    """The demo's mosaic (read-only, HxWx3 RGB), built once per process."""
    data = _skimage_data_dir()
    canvas = np.empty((_CANVAS_H, _CANVAS_W, 3), np.uint8)
    canvas[:] = _BACKGROUND
    # A faint vertical light falloff so the background is not a flat colour.
    shade = np.linspace(1.06, 0.92, _CANVAS_H, dtype=np.float32)[:, None, None]
    canvas[:] = np.clip(canvas * shade, 0, 255).astype(np.uint8)
    for name, _, col, row in SCENE_PHOTOS:
        photo = _read_photo(data / name, int(_CELL_W * 0.94), int(_CELL_H * 0.94))
        h, w = photo.shape[:2]
        x = _MARGIN + col * _CELL_W + (_CELL_W - w) // 2
        y = _MARGIN + row * _CELL_H + (_CELL_H - h) // 2
        canvas[y : y + h, x : x + w] = photo
    canvas.flags.writeable = False
    return canvas


def _cell_centre(col: int, row: int) -> tuple[float, float]:
    return _MARGIN + (col + 0.5) * _CELL_W, _MARGIN + (row + 0.5) * _CELL_H


def scene_window(t: float, out_w: int, out_h: int) -> tuple[int, int, int, int]:
    """The camera's window ``(x, y, w, h)`` on the canvas at ``t`` seconds."""
    u = 2 * math.pi * t / _LAP_S
    theta = 1.25 * math.pi + u - _DWELL / 4 * math.sin(4 * u)  # starts on the astronaut
    cx0, cy0 = _CANVAS_W / 2, _CANVAS_H / 2
    cx = cx0 + math.sqrt(2) * _CELL_W / 2 * math.cos(theta)
    cy = cy0 + math.sqrt(2) * _CELL_H / 2 * math.sin(theta)
    zoom = 1 + 0.1 * math.sin(2 * math.pi * t / _ZOOM_S + 0.5)
    zoom = round(zoom * _ZOOM_STEPS) / _ZOOM_STEPS
    h = min(round(_BASE_WINDOW_H / zoom), _CANVAS_H)
    w = min(round(h * out_w / out_h), _CANVAS_W)
    shake = _SHAKE * h
    cx += shake * (math.sin(2 * math.pi * 1.7 * t) + 0.6 * math.sin(2 * math.pi * 3.1 * t + 1.3))
    cy += shake * (math.sin(2 * math.pi * 1.3 * t + 0.7) + 0.6 * math.sin(2 * math.pi * 2.3 * t))
    x = min(max(round(cx - w / 2), 0), _CANVAS_W - w)
    y = min(max(round(cy - h / 2), 0), _CANVAS_H - h)
    return x, y, w, h


def scene_subject(t: float, out_w: int, out_h: int) -> str:
    """The COCO class of the photo nearest the centre of the window at ``t`` seconds."""
    x, y, w, h = scene_window(t, out_w, out_h)
    cx, cy = x + w / 2, y + h / 2

    def distance(photo: tuple[str, str, int, int]) -> float:
        px, py = _cell_centre(photo[2], photo[3])
        return math.hypot(px - cx, py - cy)

    return min(SCENE_PHOTOS, key=distance)[1]


class SceneSource(FrameSource):
    """The demo's moving scene: a hand-held-looking camera over real photographs."""

    live = False

    def __init__(
        self,
        width: int = 640,
        height: int = 480,
        fps: float = 30.0,
        *,
        seconds: float | None = None,
    ) -> None:
        _check_generated(width, height, fps, seconds)
        self._canvas = scene_canvas()
        self.width, self.height = width, height
        self.fps = self._rate = float(fps)
        self._total = _frame_budget(seconds, fps)
        self._index = 0
        # One reformatter per window size: each keeps its swscale context, whose setup
        # (~2 ms) would otherwise dominate the ~1 ms a frame costs. The zoom is quantised
        # so there are at most ~21 sizes.
        self._reformatters: dict[tuple[int, int], VideoReformatter] = {}

    def window(self, index: int) -> tuple[int, int, int, int]:
        """The canvas window ``(x, y, w, h)`` shown by frame ``index``."""
        return scene_window(index / self._rate, self.width, self.height)

    def render(self, index: int) -> av.VideoFrame:
        """Frame ``index`` (yuv420p); the same index always gives the same picture."""
        x, y, w, h = self.window(index)
        crop = av.VideoFrame.from_ndarray(self._canvas[y : y + h, x : x + w], "rgb24")
        reformatter = self._reformatters.get((w, h))
        if reformatter is None:
            reformatter = self._reformatters[(w, h)] = VideoReformatter()
        # One scaler thread: the capture thread shares the CPU with the encoder.
        frame = reformatter.reformat(
            crop, self.width, self.height, "yuv420p", interpolation="BILINEAR", threads=1
        )
        return _own(frame)

    def read(self) -> av.VideoFrame | None:
        if self._total is not None and self._index >= self._total:
            return None
        frame = self.render(self._index)
        self._index += 1
        return frame

    def close(self) -> None:
        self._reformatters.clear()


# ------------------------------------------------------------------------------ factory


@dataclass(frozen=True, slots=True)
class SourceSpec:
    """What to capture, as the CLI parsed it.

    ``camera``: index or device name (``kind="camera"``; ``None`` means ``0``).
    ``path``: the video file (``kind="file"``), replayed from the start if ``loop``.
    ``width``/``height``/``fps``: the mode asked of a camera, or the size and rate of a
    generated source (``scene``: 640x480 at 30 by default); a file keeps its own.
    ``seconds``: length of a generated source; ``None`` runs forever.
    ``pattern``: the lavfi source for ``kind="testsrc"``.
    ``rtsp``: the IP camera for ``kind="rtsp"`` (``client.rtsp``).
    """

    kind: SourceKind
    camera: str | None = None
    path: Path | None = None
    loop: bool = False
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    seconds: float | None = None
    pattern: str = "testsrc2"
    rtsp: RtspConfig | None = None


def open_source(spec: SourceSpec) -> FrameSource:
    """Open the source ``spec`` describes; raises ``ConfigError`` for a bad spec."""
    if spec.kind == "camera":
        camera: str | int = spec.camera if spec.camera is not None else 0
        return CameraSource(camera, width=spec.width, height=spec.height, fps=spec.fps)
    if spec.kind == "rtsp":
        from shelf_stream.client.rtsp import RtspSource  # it builds on this module

        if spec.rtsp is None:
            raise ConfigError("an RTSP source needs its camera's URL")
        return RtspSource(spec.rtsp)
    if spec.kind == "file":
        if spec.path is None:
            raise ConfigError("a file source needs a path")
        return FileSource(spec.path, loop=spec.loop)
    width = spec.width if spec.width is not None else 640
    height = spec.height if spec.height is not None else 480
    fps = spec.fps if spec.fps is not None else 30.0
    if spec.kind == "scene":
        return SceneSource(width, height, fps, seconds=spec.seconds)
    if spec.kind == "testsrc":
        return TestPatternSource(width, height, fps, pattern=spec.pattern, seconds=spec.seconds)
    raise ConfigError(f"unknown source kind {spec.kind!r}; choose one of {SOURCE_KINDS}")
