"""Hardware (NVDEC) decoding through PyAV's CUDA hwaccel, with a software fallback.

``NvdecDecoder`` opens libavcodec's ``hevc``/``h264`` decoder with
``HWAccel(device_type="cuda")``: the bitstream is decoded by NVDEC and each frame is
downloaded to system memory as NV12, which the CPU letterbox (libswscale) and the GPU
one (``engine.gpu_preprocess``) both take. Keeping frames on the GPU (``is_hw_owned``)
would save that download but needs DLPack plumbing through the scheduler; not yet.

``make_decoder_factory(codec, choice)`` is what the server hands to
``RecoveringDecoder(make_decoder=...)``. ``auto`` and ``nvdec`` use NVDEC when it opens
and software decoding otherwise; the fallback is logged once per process (a
RecoveringDecoder opens a new decoder at every keyframe after an error, and a server
runs many streams: one line is enough), as a warning for ``nvdec`` (asked for
explicitly) and at info level for ``auto``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
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
    """Logs each distinct message once per process (thread-safe)."""

    def __init__(self) -> None:
        self._said: set[str] = set()
        self._lock = threading.Lock()

    def say(self, level: int, message: str) -> None:
        with self._lock:
            if message in self._said:
                return
            self._said.add(message)
        logger.log(level, "%s", message)

    def reset(self) -> None:
        """Forget what was said (tests)."""
        with self._lock:
            self._said.clear()


FALLBACK_NOTICE = _OnceNotice()


def _default_hwaccel() -> Any:
    from av.codec.hwaccel import HWAccel

    # No silent software fallback inside FFmpeg: we fall back ourselves and say so.
    return HWAccel(device_type="cuda", allow_software_fallback=False)


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


def open_decoder(
    codec: str,
    choice: str,
    *,
    threads: int = 1,
    make_hwaccel: Callable[[], Any] = _default_hwaccel,
) -> Decoder:
    """A decoder for ``codec`` as ``choice`` asks, falling back to software."""
    from shelf_stream.codec import get_decoder

    if choice == "software" or codec not in VIDEO_CODECS:
        return get_decoder(codec, threads=threads)
    try:
        return NvdecDecoder(codec, threads=threads, make_hwaccel=make_hwaccel)
    except NvdecUnavailable as exc:
        level = logging.WARNING if choice == "nvdec" else logging.INFO
        FALLBACK_NOTICE.say(level, f"NVDEC unavailable ({exc}); decoding {codec} in software")
        return get_decoder(codec, threads=threads)


def make_decoder_factory(
    codec: str,
    decoder_choice: str = "auto",
    *,
    threads: int = 1,
    make_hwaccel: Callable[[], Any] = _default_hwaccel,
) -> Callable[[], Decoder]:
    """``make_decoder`` for ``RecoveringDecoder``: ``auto`` | ``software`` | ``nvdec``."""
    if decoder_choice not in DECODER_CHOICES:
        raise ConfigError(
            f"unknown decoder {decoder_choice!r}; choose one of {', '.join(DECODER_CHOICES)}"
        )

    def make_decoder() -> Decoder:
        return open_decoder(codec, decoder_choice, threads=threads, make_hwaccel=make_hwaccel)

    return make_decoder
