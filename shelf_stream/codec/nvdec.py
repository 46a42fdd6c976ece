"""Hardware (NVDEC) decoding through PyAV's CUDA hwaccel, with a software fallback.

``NvdecDecoder`` opens libavcodec's ``hevc``/``h264`` decoder with
``HWAccel(device_type="cuda")``: the bitstream is decoded by NVDEC and each frame is
downloaded to system memory as NV12, which the CPU letterbox (libswscale) and the GPU
one (``engine.gpu_preprocess``) both take. Keeping frames on the GPU (``is_hw_owned``)
would save that download but needs DLPack plumbing through the scheduler; not yet.

``make_decoder_factory(codec, choice)`` is what the server hands to
``RecoveringDecoder(make_decoder=...)``. ``auto`` and ``nvdec`` use NVDEC when it works
and software decoding otherwise. "Works" is decided twice:

* at open: no CUDA device, no driver, an FFmpeg without CUDA (``NvdecUnavailable``);
* at the first decode: FFmpeg loads ``libnvcuvid`` and checks the decoder's
  capabilities only when the first frame arrives (``hwaccel`` init in ``get_format``).
  With ``allow_software_fallback=False`` that decode fails, e.g. in a container without
  the ``video`` driver capability (``NVIDIA_DRIVER_CAPABILITIES``; NVIDIA Container
  Toolkit: "video: required for using the Video Codec SDK"), or for a profile the GPU
  lacks. ``FallbackDecoder`` then decodes the same access unit in software and stays
  software; the factory remembers it, so the RecoveringDecoder's next decoders (one per
  keyframe after an error) are software from the start instead of failing again.

Either fallback is logged once per process (a server runs many streams: one line is
enough), as a warning for ``nvdec`` (asked for explicitly) and at info level for
``auto``. Every NVDEC decoder uses the device's primary CUDA context (FFmpeg's
``primary_ctx`` device option, which PyAV itself sets for device-resident frames), so
reopening one at each keyframe no longer creates a CUDA context each time.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import av
import av.error

from shelf_stream.codec.base import VIDEO_CODECS, Decoder
from shelf_stream.codec.pyav import PyAVDecoder
from shelf_stream.errors import CodecError, ConfigError

logger = logging.getLogger("shelf_stream.codec")

DECODER_CHOICES = ("auto", "software", "nvdec")

#: What NVDEC's frames look like once downloaded; a software decoder gives yuv420p.
_HW_DOWNLOAD_FORMATS = ("nv12", "p010le")


class NvdecUnavailable(CodecError):
    """The CUDA hwaccel could not be opened (no GPU, no driver, FFmpeg without CUDA)."""


class _OnceNotice:
    """Logs each distinct message (or ``key``) once per process (thread-safe)."""

    def __init__(self) -> None:
        self._said: set[str] = set()
        self._lock = threading.Lock()

    def say(self, level: int, message: str, *, key: str | None = None) -> None:
        """``key`` names what is being said when the message varies (a pts in it)."""
        with self._lock:
            if (key or message) in self._said:
                return
            self._said.add(key or message)
        logger.log(level, "%s", message)

    def reset(self) -> None:
        """Forget what was said (tests)."""
        with self._lock:
            self._said.clear()


FALLBACK_NOTICE = _OnceNotice()


#: ``av_hwdevice_ctx_create`` options: the device's primary context (retained and shared,
#: by every decoder here and by cuda-python/TensorRT), not a new context per decoder.
HWDEVICE_OPTIONS: dict[str, object] = {"primary_ctx": "1"}


def _default_hwaccel() -> Any:
    from av.codec.hwaccel import HWAccel

    # No silent software fallback inside FFmpeg: we fall back ourselves and say so.
    return HWAccel(
        device_type="cuda", allow_software_fallback=False, options=dict(HWDEVICE_OPTIONS)
    )


class NvdecDecoder(PyAVDecoder):
    """``PyAVDecoder`` with the CUDA hwaccel: same options (slice threads, explode on
    errors), same frames out (system memory, NV12). ``NvdecUnavailable`` if the
    hwaccel cannot be opened. ``make_hwaccel`` is injectable for tests."""

    def __init__(
        self,
        codec: str,
        *,
        threads: int = 1,
        make_hwaccel: Callable[[], Any] = _default_hwaccel,
    ) -> None:
        if codec not in VIDEO_CODECS:
            raise ConfigError(f"NVDEC decodes {', '.join(VIDEO_CODECS)}, not {codec!r}")
        self.codec = codec
        self.decoder_name = codec
        self._ctx = self._open_hw(codec, threads, make_hwaccel)
        self._checked_first_frame = False

    @staticmethod
    def _open_hw(codec: str, threads: int, make_hwaccel: Callable[[], Any]) -> Any:
        try:
            ctx = av.CodecContext.create(codec, "r", hwaccel=make_hwaccel())
            ctx.thread_type = "SLICE"
            ctx.thread_count = threads
            ctx.options = {"err_detect": "explode"}
            ctx.open()
        except (av.error.FFmpegError, ValueError, TypeError, NotImplementedError) as exc:
            raise NvdecUnavailable(f"cannot open {codec} with the CUDA hwaccel: {exc}") from exc
        return ctx

    def decode(self, data: bytes, pts: int) -> list[av.VideoFrame]:
        frames = super().decode(data, pts)
        if frames and not self._checked_first_frame:
            self._checked_first_frame = True
            fmt = frames[0].format.name
            if fmt not in _HW_DOWNLOAD_FORMATS:
                FALLBACK_NOTICE.say(
                    logging.WARNING,
                    f"NVDEC: {self.codec} frames arrive as {fmt}, not NV12: FFmpeg decoded "
                    "them in software (the GPU may not support this stream's profile)",
                )
        return frames


@dataclass(slots=True)
class FallbackState:
    """What one stream's decoder factory learnt: NVDEC failed its first frame."""

    nvdec_failed: bool = False


def _notice_level(choice: str) -> int:
    return logging.WARNING if choice == "nvdec" else logging.INFO


class FallbackDecoder(Decoder):
    """An NVDEC decoder that becomes a software one if NVDEC fails before its first
    frame: the failing access unit is decoded again in software (it is a keyframe: a
    RecoveringDecoder hands a new decoder nothing else), so nothing is dropped.

    If software decoding fails on it too, the data is at fault, not NVDEC: the error
    goes up as usual and the factory keeps trying NVDEC. Errors after NVDEC produced a
    frame are stream errors, left to the RecoveringDecoder.
    """

    def __init__(
        self,
        nvdec: Decoder,
        make_software: Callable[[], Decoder],
        state: FallbackState,
        *,
        codec: str,
        choice: str,
    ) -> None:
        self.codec = codec
        self._nvdec: Decoder | None = nvdec
        self._software: Decoder | None = None
        self._make_software = make_software
        self._state = state
        self._choice = choice
        self._nvdec_frames = 0

    @property
    def on_nvdec(self) -> bool:
        return self._nvdec is not None

    def decode(self, data: bytes, pts: int) -> list[av.VideoFrame]:
        if self._nvdec is None:
            return self._require_software().decode(data, pts)
        try:
            frames = self._nvdec.decode(data, pts)
        except CodecError as exc:
            if self._nvdec_frames:
                raise
            return self._fall_back(data, pts, exc)
        self._nvdec_frames += len(frames)
        return frames

    def _fall_back(self, data: bytes, pts: int, error: CodecError) -> list[av.VideoFrame]:
        software = self._make_software()
        try:
            frames = software.decode(data, pts)
        except CodecError:
            software.close()
            raise error from None  # both fail: a bad access unit, not NVDEC
        assert self._nvdec is not None
        self._nvdec.close()
        self._nvdec, self._software = None, software
        self._state.nvdec_failed = True
        FALLBACK_NOTICE.say(
            _notice_level(self._choice),
            f"NVDEC opened but failed the first {self.codec} frame ({error}); decoding "
            f"{self.codec} in software (in a container, set NVIDIA_DRIVER_CAPABILITIES="
            "compute,utility,video)",
            key=f"first-frame fallback {self.codec}",  # one line, whatever pts failed
        )
        return frames

    def _require_software(self) -> Decoder:
        if self._software is None:
            self._software = self._make_software()
        return self._software

    def flush(self) -> list[av.VideoFrame]:
        active = self._nvdec or self._software
        return active.flush() if active is not None else []

    def close(self) -> None:
        for decoder in (self._nvdec, self._software):
            if decoder is not None:
                decoder.close()
        self._nvdec = self._software = None


def _open_nvdec(codec: str, threads: int, make_hwaccel: Callable[[], Any]) -> Decoder:
    return NvdecDecoder(codec, threads=threads, make_hwaccel=make_hwaccel)


def open_decoder(
    codec: str,
    choice: str,
    *,
    threads: int = 1,
    make_hwaccel: Callable[[], Any] = _default_hwaccel,
    state: FallbackState | None = None,
    open_nvdec: Callable[[str, int, Callable[[], Any]], Decoder] = _open_nvdec,
) -> Decoder:
    """A decoder for ``codec`` as ``choice`` asks, falling back to software at open or at
    the first frame. ``open_nvdec`` is injectable for tests."""
    from shelf_stream.codec import get_decoder

    state = state if state is not None else FallbackState()

    def software() -> Decoder:
        return get_decoder(codec, threads=threads)

    if choice == "software" or codec not in VIDEO_CODECS or state.nvdec_failed:
        return software()
    try:
        nvdec = open_nvdec(codec, threads, make_hwaccel)
    except NvdecUnavailable as exc:
        FALLBACK_NOTICE.say(
            _notice_level(choice), f"NVDEC unavailable ({exc}); decoding {codec} in software"
        )
        return software()
    return FallbackDecoder(nvdec, software, state, codec=codec, choice=choice)


def make_decoder_factory(
    codec: str,
    decoder_choice: str = "auto",
    *,
    threads: int = 1,
    make_hwaccel: Callable[[], Any] = _default_hwaccel,
    open_nvdec: Callable[[str, int, Callable[[], Any]], Decoder] = _open_nvdec,
) -> Callable[[], Decoder]:
    """``make_decoder`` for ``RecoveringDecoder``: ``auto`` | ``software`` | ``nvdec``.
    One factory per stream: once NVDEC failed a first frame, it opens software only."""
    if decoder_choice not in DECODER_CHOICES:
        raise ConfigError(
            f"unknown decoder {decoder_choice!r}; choose one of {', '.join(DECODER_CHOICES)}"
        )
    state = FallbackState()

    def make_decoder() -> Decoder:
        return open_decoder(
            codec,
            decoder_choice,
            threads=threads,
            make_hwaccel=make_hwaccel,
            state=state,
            open_nvdec=open_nvdec,
        )

    return make_decoder
