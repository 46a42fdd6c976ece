"""Encoder and decoder on bare PyAV codec contexts (no container: one packet = one AU)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from fractions import Fraction

import av
import av.error
from av.video.frame import PictureType

from shelf_stream.codec import roi
from shelf_stream.codec.base import (
    TIME_BASE,
    Decoder,
    EncodedFrame,
    Encoder,
    EncoderConfig,
    RoiRegion,
)
from shelf_stream.errors import CodecError, ConfigError

#: Measured real-time presets. superfast took ~35 % fewer bytes than ultrafast at equal
#: quality for ~3 ms more per 480p frame (libx265 on a 2-core box: ~9.5 ms at 640x480).
#:
#: ``shelf-bench codec``'s encoder sweep (``bench/encoder_sweep.py``; the commands are in
#: ``benchmarks/README.md``, "Codec") on the three real clips at 400 kbit/s, each setting
#: alone and beside the detector looping in another process (as on loopback), medians of
#: 5 and of 3 interleaved rounds, 2-core box shared with other jobs (load average 4-8, so
#: times are inflated: compare within a run):
#:
#:   libx265 ms/frame alone / beside, SSIM    ultrafast       superfast       veryfast
#:   shelf 640x360 30 fps (33.5 ms budget)    6.2-8.6 / 11-29  9.3-13 / 21-43   13-21 / 23-62
#:                                            SSIM 0.9961      0.9973           0.9976 (+11 % bytes)
#:   people 768x432 10 fps                    8.8-18 / 16-55   13-28 / 19-126   18-32 / 27-83
#:                                            0.9908-0.9911    0.9931-0.9935    0.9941-0.9943
#:   cars 768x432 12.5 fps                    13-16 / 23-60    19-29 / 59-137   16-29 / 26-88
#:                                            0.9871-0.9873    0.9884           0.9898
#:   (libx264 superfast: 1.7-3.1 ms alone, 1.9-3.7 beside; SSIM 0.9959 / 0.9929-0.9930 /
#:   0.9889)
#:
#: So superfast stays: +0.0012-0.0026 SSIM over ultrafast at the same target for 1.3-2.0x
#: the time; veryfast adds at most 0.0014 more (and on the shelf clip spent 11 % more of
#: the target) for up to 1.9x superfast's time. At 30 fps beside the detector superfast
#: missed the 33.5 ms budget in the busier run (41-43 ms; veryfast on one thread 62): that
#: is what the client's own switch to ``FASTER_PRESETS`` is for.
DEFAULT_PRESETS = {"libx265": "superfast", "libx264": "superfast"}
#: libx265's worker threads (x265 ``pools``) when ``EncoderConfig.threads`` is 0: 0 keeps
#: x265's own default, one per core. In the same sweep, superfast beside the detector
#: took 43 / 24, 66 / 19 and 59 / 67 ms a frame with 2 threads (every core here) against
#: 41 / 21, 126 / 30 and 137 / 68 with 1 (shelf, people, cars; 5-round / 3-round runs):
#: at most about a tenth slower and up to 2.3x as fast, and the detector's ms per
#: inference meanwhile showed no consistent difference (22-44 against 28-43).
DEFAULT_X265_THREADS = 0
#: Where the default cannot keep up: libx265 at 720p here took 20.7 vs 27.7 ms a frame
#: alone and 34.1 vs 55.7 beside a busy process (``benchmarks/encoder_rate.py``), for about
#: a third more bytes at equal quality.
FASTER_PRESETS = {"libx265": "ultrafast", "libx264": "ultrafast"}

#: Zero-delay options for other encoders, applied only where the encoder declares them.
#: (NVENC: ``zerolatency``/``delay``; VideoToolbox: ``realtime``.)
_LOW_LATENCY_OPTIONS = {"zerolatency": "1", "delay": "0", "realtime": "1", "forced-idr": "1"}

_PIX_FMT = "yuv420p"
#: The same 4:2:0 samples with interleaved chroma: what Quick Sync (``*_qsv``) takes.
_NV12 = "nv12"


def input_format(encoder_name: str) -> str:
    """The 4:2:0 pixel format the encoder is fed: yuv420p, or nv12 where it takes only that."""
    try:
        formats = {f.name for f in av.Codec(encoder_name, "w").video_formats or ()}
    except ValueError:  # unknown encoder: opening it will say so
        return _PIX_FMT
    return _NV12 if formats and _PIX_FMT not in formats and _NV12 in formats else _PIX_FMT


def _wrap(exc: Exception, what: str) -> CodecError:
    return CodecError(f"{what}: {exc}")


def gop_size(config: EncoderConfig) -> int:
    """Frames between scheduled keyframes (at least 1)."""
    return max(1, round(config.fps * config.keyframe_interval_s))


#: libx265's ABR without lookahead (zerolatency) undershoots its target on moving scenes:
#: output / target was 0.71-1.00 (median 0.80) over 640x480 and 1280x720, 10 and 30 fps,
#: 600 and 2000 kbit/s, which leaves a link the rate controller measured a fifth empty.
#: So its ABR aims this much higher while the VBV (``maxrate``) stays at the target: x265
#: then warns "max bitrate less than average bitrate, assuming CBR" (hidden by
#: log-level=error) and runs its CBR mode, whose frame budgets still come from the ABR
#: rate: 0.87-1.05 over the same grid (PyAV 18's libx265). This leans on how that x265
#: build treats the clamp; ``tests/codec/test_pyav.py`` checks it holds. A scene that
#: needs fewer bits still gets fewer.
X265_ABR_HEADROOM = 1.2


def abr_kbps(encoder_name: str, config: EncoderConfig) -> int:
    """The bitrate the encoder's ABR aims at for ``config`` (its VBV caps at the target)."""
    if encoder_name == "libx265":
        return round(config.bitrate_kbps * X265_ABR_HEADROOM)
    return config.bitrate_kbps


def _vbv_options(config: EncoderConfig) -> dict[str, str]:
    # Generic AVCodecContext options (rc_max_rate / rc_buffer_size), which both
    # libx264 and libx265 map to their VBV. They must not go in x264-params: FFmpeg's
    # libx264 wrapper re-applies rc_max_rate on every frame and would reset them to 0.
    # A buffer of half a second bounds any single frame to ~0.5 s of link time.
    kbps = config.bitrate_kbps
    return {"maxrate": f"{kbps}k", "bufsize": f"{max(1, kbps // 2)}k"}


#: Presets whose adaptive quantisation is off (with zerolatency, i.e. without cu-tree):
#: there libx264 and libx265 ignore regions of interest (``codec.roi``), so with
#: ``EncoderConfig.roi`` AQ is turned on at a strength so small that, without regions,
#: the stream is the preset's own (libx265 superfast, 640x360 shelf clip at 300 kbit/s:
#: 24,790 against 24,735 bytes a second, the same PSNR to 0.1 dB), and only the regions
#: move the quantiser. Presets with AQ on (libx264 superfast, at strength 1.0) keep it as
#: it is, so ROI changes nothing but the regions there either.
AQ_OFF_PRESETS = {
    "libx265": frozenset({"ultrafast", "superfast"}),
    "libx264": frozenset({"ultrafast"}),
}
ROI_AQ_PARAMS = "aq-mode=1:aq-strength=0.01"


def _roi_aq(encoder_name: str, config: EncoderConfig) -> str:
    """``:aq-mode=1:...`` for x264/x265-params where ``config.roi`` needs AQ turned on."""
    preset = config.preset or DEFAULT_PRESETS[encoder_name]
    return f":{ROI_AQ_PARAMS}" if config.roi and preset in AQ_OFF_PRESETS[encoder_name] else ""


def _x265_options(config: EncoderConfig) -> dict[str, str]:
    g = gop_size(config)
    params = (
        f"keyint={g}:min-keyint={g}:scenecut=0:repeat-headers=1:bframes=0:open-gop=0"
        # frame-threads>1 delays output by frames; FFmpeg overrides zerolatency's
        # frame-threads=1 with the context's thread count, so pin it here.
        ":frame-threads=1:log-level=error"
    )
    threads = config.threads or DEFAULT_X265_THREADS
    if threads > 0:
        # With one frame thread, x265's parallelism is its worker pool (wavefront rows).
        params += f":pools={threads}"
    params += _roi_aq("libx265", config)
    return {
        "preset": config.preset or DEFAULT_PRESETS["libx265"],
        "tune": "zerolatency",
        "forced-idr": "1",
        "x265-params": params,
        **_vbv_options(config),
    }


def _x264_options(config: EncoderConfig) -> dict[str, str]:
    g = gop_size(config)
    return {
        "preset": config.preset or DEFAULT_PRESETS["libx264"],
        "tune": "zerolatency",
        "forced-idr": "1",
        # x264 emits SPS/PPS before every IDR by default (repeat-headers is x265-only).
        "x264-params": f"keyint={g}:min-keyint={g}:scenecut=0" + _roi_aq("libx264", config),
        **_vbv_options(config),
    }


def _generic_options(ctx: av.CodecContext, config: EncoderConfig) -> dict[str, str]:
    declared = {opt.name for opt in ctx.supported_options.private}
    options = {k: v for k, v in _LOW_LATENCY_OPTIONS.items() if k in declared}
    if ctx.name.endswith("_nvenc"):
        options["tune"] = "ull"  # NVENC's documented ultra-low-latency tuning
    if config.preset is not None and "preset" in declared:
        options["preset"] = config.preset
    options.update(_vbv_options(config))
    return options


def encoder_options(ctx: av.CodecContext, config: EncoderConfig) -> dict[str, str]:
    """The AVOptions this module opens ``ctx`` with for ``config``."""
    if ctx.name == "libx265":
        return _x265_options(config)
    if ctx.name == "libx264":
        return _x264_options(config)
    return _generic_options(ctx, config)


class PyAVEncoder(Encoder):
    """libavcodec encoder (libx265, libx264, hevc_nvenc, ...) producing Annex-B AUs.

    One AU comes out per frame in: no B-frames, zero-latency tuning, and keyframes carry
    their parameter sets in band, so a decoder can join at any keyframe.
    ``last_encode_ms`` is the wall time of the latest ``encode`` call. With
    ``config.roi`` and an encoder that reads regions of interest (``codec.roi``), every
    frame carries the regions of the latest ``set_regions`` (none: the whole picture at
    offset 0); other encoders code uniformly, and that is said once.
    """

    def __init__(self, config: EncoderConfig, encoder_name: str) -> None:
        self.config = config
        self.encoder_name = encoder_name
        self.last_encode_ms = 0.0
        self._force_keyframe = False
        self._pix_fmt = input_format(encoder_name)
        self._tagger: roi.RegionTagger | None = None
        try:
            self._ctx: av.VideoCodecContext | None = self._open(config)
        except CodecError as exc:
            # At construction this is a bad option or an unusable encoder: a user error.
            raise ConfigError(f"cannot open encoder {encoder_name!r}: {exc}") from exc
        if config.roi and roi.takes_regions(encoder_name):
            self._tagger = roi.RegionTagger(config.width, config.height, self._pix_fmt)
        elif config.roi:  # said once the encoder opened (not for each one --encoder auto tries)
            roi.say_unsupported_once(encoder_name)

    def _open(self, config: EncoderConfig) -> av.VideoCodecContext:
        try:
            ctx = av.CodecContext.create(self.encoder_name, "w")
            if not isinstance(ctx, av.VideoCodecContext):
                raise CodecError(f"{self.encoder_name} is not a video encoder")
            ctx.width = config.width
            ctx.height = config.height
            ctx.pix_fmt = self._pix_fmt
            ctx.time_base = TIME_BASE
            ctx.framerate = Fraction(config.fps).limit_denominator(1001)
            ctx.bit_rate = abr_kbps(self.encoder_name, config) * 1000
            ctx.gop_size = gop_size(config)
            ctx.max_b_frames = 0
            ctx.thread_count = config.threads
            ctx.options = encoder_options(ctx, config)
            ctx.open()
        except (av.error.FFmpegError, ValueError, TypeError) as exc:
            raise _wrap(exc, f"opening {self.encoder_name}") from exc
        return ctx

    def _prepare(self, frame: av.VideoFrame) -> av.VideoFrame:
        cfg = self.config
        if frame.format.name == self._pix_fmt and (frame.width, frame.height) == (
            cfg.width,
            cfg.height,
        ):
            return frame
        try:
            return frame.reformat(width=cfg.width, height=cfg.height, format=self._pix_fmt)
        except (av.error.FFmpegError, ValueError) as exc:
            raise _wrap(exc, f"converting the frame to {self._pix_fmt}") from exc

    def encode(self, frame: av.VideoFrame, pts: int, *, keyframe: bool = False) -> EncodedFrame:
        """Encode one frame; see ``Encoder.encode``.

        A frame already in the encoder's format (yuv420p; nv12 for Quick Sync) at the
        configured size is used as is, and its ``pts``, ``time_base`` and ``pict_type``
        are overwritten.
        """
        if self._ctx is None:
            raise CodecError("encoder is closed")
        start = time.perf_counter()
        frame = self._prepare(frame)
        # Decoded frames often carry pict_type I, which x264/x265 honour as "force an
        # IDR": without resetting it every frame would be a keyframe.
        force = keyframe or self._force_keyframe
        frame.pict_type = PictureType.I if force else PictureType.NONE
        frame.pts = pts
        frame.time_base = TIME_BASE
        if self._tagger is not None:
            frame = self._tagger.tag(frame)
        try:
            packets = self._ctx.encode(frame)
        except (av.error.FFmpegError, ValueError) as exc:
            raise _wrap(exc, f"{self.encoder_name} failed to encode pts {pts}") from exc
        if len(packets) != 1:
            raise CodecError(
                f"{self.encoder_name} returned {len(packets)} packets for pts {pts}; "
                "expected exactly one (is a lookahead or B-frame option enabled?)"
            )
        self._force_keyframe = False
        self.last_encode_ms = (time.perf_counter() - start) * 1000.0
        packet = packets[0]
        return EncodedFrame(pts=pts, keyframe=bool(packet.is_keyframe), data=bytes(packet))

    @property
    def takes_regions(self) -> bool:
        return self._tagger is not None

    @property
    def regions(self) -> tuple[RoiRegion, ...]:
        """The regions the next frames carry (clipped; () where regions are not taken)."""
        return self._tagger.regions if self._tagger is not None else ()

    @property
    def region_graphs_built(self) -> int:
        """How many region sets were built into filter graphs (each change costs one)."""
        return self._tagger.graphs_built if self._tagger is not None else 0

    def set_regions(self, regions: Sequence[RoiRegion]) -> None:
        """Code the following frames with ``regions`` (encoder pixels; first one wins)."""
        if self._tagger is not None:
            self._tagger.set(regions)

    def set_bitrate(self, kbps: int) -> None:
        """Change the target bitrate by re-creating the encoder; the next frame is a keyframe.

        A clean switch rather than a live reconfiguration, because neither live path
        works well (measured with PyAV 18 / FFmpeg 8): FFmpeg's libx265 wrapper has no
        reconfig path (a live ``bit_rate`` change has no effect), and libx264's takes
        ~1 s to converge, then undershoots by ~50 % for seconds while its ABR pays back
        the earlier spending; PyAV also cannot change the VBV cap (``rc_max_rate``) of
        an open context. The keyframe is sized by the new VBV (half a second of the new
        rate at most). ``CodecError`` if the new encoder cannot be opened.
        """
        if kbps <= 0:
            raise ConfigError(f"bitrate must be positive, got {kbps} kbps")
        if self._ctx is None:
            raise CodecError("encoder is closed")
        if kbps == self.config.bitrate_kbps:
            return
        new_config = dataclasses.replace(self.config, bitrate_kbps=kbps)
        self._ctx = self._open(new_config)
        self.config = new_config
        self._force_keyframe = True  # a new encoder starts with an IDR anyway; be explicit

    def close(self) -> None:
        self._ctx = None  # PyAV frees the AVCodecContext when the last reference goes


class PyAVDecoder(Decoder):
    """libavcodec decoder for one stream, zero frame delay.

    Slice threading only: frame threading adds a frame of delay per thread. With
    ``err_detect=explode`` a truncated AU raises instead of silently decoding garbage.
    """

    def __init__(self, codec: str, *, decoder: str | None = None, threads: int = 1) -> None:
        self.codec = codec
        self.decoder_name = decoder or codec
        try:
            ctx = av.CodecContext.create(self.decoder_name, "r")
            if not isinstance(ctx, av.VideoCodecContext):
                raise ConfigError(f"{self.decoder_name} is not a video decoder")
            ctx.thread_type = "SLICE"
            ctx.thread_count = threads
            ctx.options = {"err_detect": "explode"}
            ctx.open()
        except (av.error.FFmpegError, ValueError, TypeError) as exc:
            raise ConfigError(f"cannot open decoder {self.decoder_name!r}: {exc}") from exc
        self._ctx: av.VideoCodecContext | None = ctx

    def _require_open(self) -> av.VideoCodecContext:
        if self._ctx is None:
            raise CodecError("decoder is closed")
        return self._ctx

    def decode(self, data: bytes, pts: int) -> list[av.VideoFrame]:
        ctx = self._require_open()
        packet = av.Packet(data)
        packet.pts = pts
        packet.time_base = TIME_BASE
        try:
            frames = ctx.decode(packet)
        except (av.error.FFmpegError, ValueError) as exc:
            raise _wrap(exc, f"{self.decoder_name} failed to decode pts {pts}") from exc
        return [f for f in frames if isinstance(f, av.VideoFrame)]

    def flush(self) -> list[av.VideoFrame]:
        ctx = self._require_open()
        try:
            frames = ctx.decode(None)
            ctx.flush_buffers()  # leave EOF state: decoding can resume at a keyframe
        except (av.error.FFmpegError, ValueError) as exc:
            raise _wrap(exc, f"{self.decoder_name} failed to flush") from exc
        return [f for f in frames if isinstance(f, av.VideoFrame)]

    def close(self) -> None:
        self._ctx = None
