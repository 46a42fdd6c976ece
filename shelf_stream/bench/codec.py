"""``shelf-bench codec``: H.265 and H.264 against the seed's JPEG+zlib, on the same frames.

For each input (a video file, or without ``--input`` the built-in moving scene of real
photographs rendered at ``--size``, 30 fps) the first ``--frames`` frames are scaled to
``--size`` in yuv420p: these are the *pristine* frames every codec is given. Each
operating point (H.265 and H.264 at every ``--bitrates`` target, JPEG+zlib at every
``--jpeg-qualities`` quality) encodes them all with a fresh encoder, decodes them, and
measures bytes per frame, kbit/s at the clip's frame rate, PSNR (Y) and SSIM of the Y
plane against the pristine frames, encode and decode ms per frame, and the detection
agreement: mAP@0.5 of the detector on decoded frames against its own output on the
pristine frames (see ``detection_metrics``). With several inputs every figure is
pooled over all their frames.

The video encoders run with the live stream's settings (``EncoderConfig`` defaults:
superfast, zero latency, no B-frames, a keyframe every 2 s, VBV capped at the target).
JPEG+zlib is the seed's recipe (``codec.jpeg_zlib``); it is given the pristine frames
converted to BGR once (exactly, see ``to_bgr``), outside the timing, as the seed got BGR
from its camera.

Headlines: the bytes of the JPEG+zlib reference point (quality 95, OpenCV's default that
the seed used) over the bytes H.265 (and H.264) need for the same SSIM, and for the same
detection agreement, read off each codec's curve by linear interpolation of quality
against log(kbit/s); and what zlib adds on top of JPEG.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

import av
import numpy as np

from shelf_stream.bench.detection_metrics import (
    average_precision_per_class,
    mean_average_precision,
)
from shelf_stream.bench.report import write_json
from shelf_stream.codec import EncoderConfig, get_decoder, get_encoder
from shelf_stream.codec.base import TIME_BASE
from shelf_stream.codec.metrics import luma, psnr
from shelf_stream.codec.metrics import ssim as reference_ssim
from shelf_stream.engine.base import Detections, Detector
from shelf_stream.errors import CodecError, ConfigError

DEFAULT_SIZE = (640, 480)
DEFAULT_FRAMES = 90
DEFAULT_BITRATES_KBPS = (250, 500, 1000, 2000, 4000)
DEFAULT_JPEG_QUALITIES = (50, 70, 80, 90, 95)
#: The seed called ``cv2.imencode('.jpg', frame)`` bare, i.e. at OpenCV's default 95.
SEED_JPEG_QUALITY = 95
#: Frame rate of the generated scene (a file uses its own rate).
SCENE_FPS = 30.0
DEFAULT_OUT_DIR = Path("bench-out/codec")
#: Detector on every frame: measured ~20 ms/frame at 640x480 on the 2-core box, so the
#: default run stays within a few minutes without thinning (see benchmarks/README.md).
DEFAULT_DETECT_EVERY = 1
#: Ground truth is the pristine detections at the server's score threshold; predictions
#: are kept down to this low score, as mAP evaluations do, so that a box whose score
#: slips just under the threshold after compression still counts (ranked by its score)
#: instead of flipping its class's AP from 1 to 0.
DEFAULT_GT_SCORE_THRESHOLD = 0.3
DEFAULT_PREDICTION_SCORE_THRESHOLD = 0.05
#: Per-frame PSNR of identical planes is infinite; cap it so means and JSON stay finite.
MAX_PSNR_DB = 100.0
#: How far (in kbit/s, as a factor beyond the measured end) an equal-quality rate may be
#: extrapolated along the curve's end segment before we clamp and report a bound instead.
MAX_EXTRAPOLATION_FACTOR = 2.0

DESCRIPTION = (
    "Encode the same frames with H.265 and H.264 at several bitrates and with the seed's "
    "JPEG+zlib at several qualities; report bytes/frame, kbit/s, PSNR-Y, SSIM, encode/decode "
    "ms and detection agreement (mAP@0.5 of the detector on decoded frames vs on the "
    "pristine ones), and the bytes ratio JPEG+zlib / H.265 at equal SSIM and at equal "
    "agreement. Without --input the built-in moving scene of real photos (30 fps) is used."
)

VIDEO_CODEC_NAMES = ("hevc", "h264")
CODEC_LABELS = {"hevc": "H.265", "h264": "H.264", "jpeg_zlib": "JPEG+zlib"}


# ------------------------------------------------------------------------------ clips


@dataclass(slots=True)
class Clip:
    """The pristine frames of one input at the bench size."""

    name: str
    fps: float
    frames: list[av.VideoFrame]  # yuv420p at the bench size: what the encoders get
    bgr: list[av.VideoFrame] = field(default_factory=list)  # the same, bgr24, for JPEG

    @property
    def seconds(self) -> float:
        return len(self.frames) / self.fps


def _pristine(frame: av.VideoFrame, width: int, height: int) -> av.VideoFrame:
    if frame.format.name != "yuv420p" or (frame.width, frame.height) != (width, height):
        frame = frame.reformat(width=width, height=height, format="yuv420p")
    frame.pict_type = av.video.frame.PictureType.NONE
    return frame


def load_clip(path: Path | None, size: tuple[int, int], max_frames: int) -> Clip:
    """The first ``max_frames`` frames of ``path`` (or of the generated scene) at ``size``.

    A file is scaled to ``size`` without keeping its aspect ratio: every codec sees the
    same pixels, which is all the comparison needs.
    """
    from shelf_stream.client.sources import FileSource, FrameSource, SceneSource

    width, height = size
    source: FrameSource
    if path is None:
        source, name = SceneSource(width, height, SCENE_FPS), "scene (generated)"
    else:
        try:
            source, name = FileSource(path), str(path)
        except (OSError, av.error.FFmpegError) as exc:
            raise ConfigError(f"cannot read input {path}: {exc}") from exc
    with source:
        fps = source.fps or SCENE_FPS
        frames: list[av.VideoFrame] = []
        while len(frames) < max_frames:
            frame = source.read()
            if frame is None:
                break
            frames.append(_pristine(frame, width, height))
    if not frames:
        raise ConfigError(f"input {name} has no video frames")
    bgr = [to_bgr(frame) for frame in frames]
    return Clip(name=name, fps=fps, frames=frames, bgr=bgr)


# ------------------------------------------------------------------ colour for JPEG
#
# JPEG works on BGR, the video codecs on yuv420p. swscale's default conversions (what
# ``frame.reformat`` uses) are fast approximations: yuv420p -> bgr24 -> yuv420p alone
# costs ~43 dB PSNR-Y and ~0.001 SSIM on the scene, which would be charged to JPEG. The
# seed had no such step (its camera gave BGR), so the bench converts exactly instead:
# OpenCV's BT.601 limited-range I420 -> BGR, and back to Y with the inverse matrix
# (round trip ~69 dB, i.e. rounding only).


def to_bgr(frame: av.VideoFrame) -> av.VideoFrame:
    """A yuv420p frame as bgr24, converted with OpenCV's exact BT.601 matrix."""
    import cv2

    planar = frame.to_ndarray()  # yuv420p: (height * 3 / 2, width), the I420 layout
    bgr = cv2.cvtColor(planar, cv2.COLOR_YUV2BGR_I420)
    return av.VideoFrame.from_ndarray(np.ascontiguousarray(bgr, dtype=np.uint8), format="bgr24")


def bgr_luma(bgr: np.ndarray) -> np.ndarray:
    """The BT.601 limited-range Y (16..235) of a BGR image: the inverse of ``to_bgr``."""
    b, g, r = (bgr[..., i].astype(np.float64) for i in range(3))
    y = 16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0
    return np.clip(np.rint(y), 0, 255).astype(np.uint8)


def colour_round_trip(clips: Sequence[Clip]) -> dict[str, float]:
    """PSNR-Y and SSIM of pristine -> BGR -> Y without any codec: JPEG's ceiling."""
    pairs = [
        (luma(frame), bgr_luma(bgr.to_ndarray()))
        for clip in clips
        for frame, bgr in zip(clip.frames, clip.bgr, strict=True)
    ]
    return {
        "psnr_y": float(np.mean([min(psnr(a, b), MAX_PSNR_DB) for a, b in pairs])),
        "ssim": float(np.mean([fast_ssim(a, b) for a, b in pairs])),
    }


def decoded_luma(frame: av.VideoFrame) -> np.ndarray:
    """The Y plane to compare with the pristine frame's, whatever the decoder returned."""
    if frame.format.name == "bgr24":
        return bgr_luma(frame.to_ndarray())
    return np.asarray(luma(frame))


# ---------------------------------------------------------------------------- metrics


def fast_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """``codec.metrics.ssim`` computed with OpenCV's Gaussian filter (~20x faster).

    Same definition (11-tap Gaussian, sigma 1.5, symmetric edges, 5-pixel border
    dropped); the tests check it agrees with the reference to 1e-9. Falls back to the
    reference without OpenCV.
    """
    try:
        import cv2
    except ImportError:
        return reference_ssim(a, b)
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 2 or min(x.shape) < 11:
        return reference_ssim(a, b)  # let the reference raise its precise error

    def blur(image: np.ndarray) -> np.ndarray:
        # BORDER_REFLECT repeats the edge sample, as the reference's 'symmetric' pad does.
        return cv2.GaussianBlur(image, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x * mu_x
    var_y = blur(y * y) - mu_y * mu_y
    cov = blur(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    )
    return float(ssim_map[5:-5, 5:-5].mean())


@dataclass(slots=True)
class PointStats:
    """Per-frame measurements of one operating point on one clip."""

    codec: str
    setting: int  # bitrate in kbit/s for the video codecs, JPEG quality for jpeg_zlib
    seconds: float  # clip duration: frames / fps
    bytes: list[int] = field(default_factory=list)
    encode_ms: list[float] = field(default_factory=list)
    decode_ms: list[float] = field(default_factory=list)
    psnr_y: list[float] = field(default_factory=list)
    ssim: list[float] = field(default_factory=list)
    ground_truth: list[Detections] = field(default_factory=list)
    predictions: list[Detections] = field(default_factory=list)


def _p95(values: Sequence[float]) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), 95))


def _class_name(class_id: int, class_names: Sequence[str]) -> str:
    return class_names[class_id] if 0 <= class_id < len(class_names) else str(class_id)


def summarize_point(parts: Sequence[PointStats], class_names: Sequence[str] = ()) -> dict[str, Any]:
    """One operating point's figures, pooled over the clips' frames."""
    first = parts[0]
    sizes = [b for p in parts for b in p.bytes]
    seconds = sum(p.seconds for p in parts)
    truth = [d for p in parts for d in p.ground_truth]
    predictions = [d for p in parts for d in p.predictions]
    per_class = average_precision_per_class(truth, predictions)
    setting_key = "jpeg_quality" if first.codec == "jpeg_zlib" else "bitrate_kbps"
    return {
        "codec": first.codec,
        setting_key: first.setting,
        "frames": len(sizes),
        "mean_bytes": float(np.mean(sizes)),
        "p95_bytes": _p95(sizes),
        "kbps": sum(sizes) * 8 / seconds / 1000,
        "psnr_y": float(np.mean([v for p in parts for v in p.psnr_y])),
        "ssim": float(np.mean([v for p in parts for v in p.ssim])),
        "encode_ms": float(np.mean([v for p in parts for v in p.encode_ms])),
        "decode_ms": float(np.mean([v for p in parts for v in p.decode_ms])),
        "agreement_map50": mean_average_precision(truth, predictions),
        "agreement_frames": len(predictions),
        # The mean weighs every class alike: a class seen once can move it by 1/classes.
        "agreement_ap_per_class": {_class_name(c, class_names): ap for c, ap in per_class.items()},
    }


# ------------------------------------------------------------------ running one point


def _encoder_config(codec: str, setting: int, clip: Clip) -> EncoderConfig:
    width, height = clip.frames[0].width, clip.frames[0].height
    if codec == "jpeg_zlib":
        return EncoderConfig(
            codec=codec, width=width, height=height, fps=clip.fps, jpeg_quality=setting
        )
    return EncoderConfig(
        codec=codec, width=width, height=height, fps=clip.fps, bitrate_kbps=setting
    )


def _encode_all(codec: str, setting: int, clip: Clip) -> tuple[list[bytes], list[float]]:
    encoder = get_encoder(_encoder_config(codec, setting, clip))
    inputs = clip.bgr if codec == "jpeg_zlib" else clip.frames
    data, times = [], []
    try:
        for index, frame in enumerate(inputs):
            pts = round(index / clip.fps / TIME_BASE)
            start = time.perf_counter()
            au = encoder.encode(frame, pts, keyframe=index == 0)
            times.append((time.perf_counter() - start) * 1000.0)
            data.append(au.data)
    finally:
        encoder.close()
    return data, times


def _decode_one(decoder: Any, data: bytes, pts: int) -> tuple[av.VideoFrame, float]:
    start = time.perf_counter()
    frames = decoder.decode(data, pts)
    elapsed = (time.perf_counter() - start) * 1000.0
    if len(frames) != 1:
        # The live decoders are zero-delay: one AU in, one frame out. Anything else would
        # misalign decoded and pristine frames.
        raise CodecError(f"decoder returned {len(frames)} frames for pts {pts}, expected 1")
    return frames[0], elapsed


def run_point(
    codec: str,
    setting: int,
    clip: Clip,
    detector: Detector,
    pristine_detections: dict[int, Detections],
) -> PointStats:
    """Encode, decode and measure every frame of ``clip`` at one operating point.

    ``pristine_detections`` maps frame index -> the detector's output on the pristine
    frame; the detector runs on the decoded frames with the same indices.
    """
    stats = PointStats(codec=codec, setting=setting, seconds=clip.seconds)
    data, stats.encode_ms = _encode_all(codec, setting, clip)
    decoder = get_decoder(codec)
    try:
        for index, (au, pristine) in enumerate(zip(data, clip.frames, strict=True)):
            decoded, ms = _decode_one(decoder, au, round(index / clip.fps / TIME_BASE))
            stats.decode_ms.append(ms)
            stats.bytes.append(len(au))
            # JPEG decodes to BGR: its Y is recomputed exactly (see to_bgr), so every
            # codec is compared on the Y plane of the same pristine frames.
            original, received = luma(pristine), decoded_luma(decoded)
            stats.psnr_y.append(min(psnr(original, received), MAX_PSNR_DB))
            stats.ssim.append(fast_ssim(original, received))
            if index in pristine_detections:
                stats.ground_truth.append(pristine_detections[index])
                stats.predictions.append(detector.detect([decoded])[0])
    finally:
        decoder.close()
    return stats


def above_score(detections: Detections, min_score: float) -> Detections:
    """Only the detections scoring at least ``min_score``."""
    keep = detections.scores >= min_score
    return Detections(detections.boxes[keep], detections.scores[keep], detections.class_ids[keep])


def detect_pristine(
    clip: Clip, detector: Detector, every: int, min_score: float
) -> dict[int, Detections]:
    """The detector's output (scores >= ``min_score``) on every ``every``-th pristine
    frame: the ground truth."""
    return {
        i: above_score(detector.detect([clip.frames[i]])[0], min_score)
        for i in range(0, len(clip.frames), every)
    }


def ground_truth_counts(
    per_clip: Sequence[dict[tuple[str, int], PointStats]], class_names: Sequence[str]
) -> dict[str, int]:
    """Ground-truth boxes per class over all clips (every point shares the same truth)."""
    counts: dict[str, int] = {}
    for stats in per_clip:
        truth = next(iter(stats.values())).ground_truth
        for detections in truth:
            for class_id in detections.class_ids:
                name = _class_name(int(class_id), class_names)
                counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: -item[1]))


# ------------------------------------------------------------------- zlib on JPEG


@dataclass(frozen=True, slots=True)
class ZlibOnJpeg:
    """JPEG alone vs JPEG then zlib (the seed's step) for one frame at one quality."""

    quality: int
    jpeg_bytes: int
    zlib_bytes: int
    jpeg_ms: float
    compress_ms: float
    decompress_ms: float

    @property
    def saved_pct(self) -> float:
        """Bytes zlib saves, in % of the JPEG (negative when it inflates)."""
        return 100.0 * (1.0 - self.zlib_bytes / self.jpeg_bytes)


def measure_zlib_on_jpeg(bgr: np.ndarray, quality: int) -> ZlibOnJpeg:
    """Encode ``bgr`` as the seed did and time the JPEG and the zlib steps separately."""
    import cv2

    start = time.perf_counter()
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    jpeg_done = time.perf_counter()
    if not ok:
        raise CodecError(f"cv2.imencode failed at quality {quality}")
    jpeg = buf.tobytes()
    compress_start = time.perf_counter()
    packed = zlib.compress(jpeg)  # default level, exactly as codec.jpeg_zlib (the seed)
    compress_done = time.perf_counter()
    zlib.decompress(packed)
    decompress_done = time.perf_counter()
    return ZlibOnJpeg(
        quality=quality,
        jpeg_bytes=len(jpeg),
        zlib_bytes=len(packed),
        jpeg_ms=(jpeg_done - start) * 1000.0,
        compress_ms=(compress_done - compress_start) * 1000.0,
        decompress_ms=(decompress_done - compress_done) * 1000.0,
    )


def summarize_zlib(samples: Sequence[ZlibOnJpeg]) -> dict[str, Any]:
    """Means over frames of one quality; saved % is of the total bytes."""
    jpeg = sum(s.jpeg_bytes for s in samples)
    packed = sum(s.zlib_bytes for s in samples)
    return {
        "jpeg_quality": samples[0].quality,
        "frames": len(samples),
        "jpeg_mean_bytes": jpeg / len(samples),
        "jpeg_zlib_mean_bytes": packed / len(samples),
        "saved_pct": 100.0 * (1.0 - packed / jpeg),
        "jpeg_ms": float(np.mean([s.jpeg_ms for s in samples])),
        "zlib_compress_ms": float(np.mean([s.compress_ms for s in samples])),
        "zlib_decompress_ms": float(np.mean([s.decompress_ms for s in samples])),
    }


# ------------------------------------------------------------ equal-quality ratios

MatchMethod = Literal["interpolated", "extrapolated", "clamped", "saturated"]
#: Both SSIM and detection agreement top out at 1.0.
QUALITY_CEILING = 1.0


@dataclass(frozen=True, slots=True)
class RateMatch:
    """The kbit/s at which a codec's curve reaches a target quality.

    ``method``: ``interpolated`` inside the measured range; ``extrapolated`` along the
    end segment, at most ``MAX_EXTRAPOLATION_FACTOR`` beyond it; ``clamped`` to the
    measured end when further out, when the curve is flat, when the target is a perfect
    score the curve never reaches, or when the lowest rate already reaches the target;
    then the true rate is at least
    ``kbps`` (``above`` the range) or at most ``kbps`` (``below``). ``saturated``: the
    target is the metric's maximum (a perfect agreement of 1.0), first reached at
    ``kbps``; the true rate lies between the previous point and ``kbps``, so ``kbps`` is
    an upper limit.
    """

    kbps: float
    method: MatchMethod
    side: Literal["inside", "above", "below"]

    @property
    def in_range(self) -> bool:
        return self.side == "inside"


def _log_rate_at(target: float, x: tuple[float, float], y: tuple[float, float]) -> float:
    """Linear in (log kbit/s, quality) through two points, solved for the log rate."""
    return x[0] + (target - y[0]) * (x[1] - x[0]) / (y[1] - y[0])


def _extrapolate(
    target: float, rates: np.ndarray, values: np.ndarray, side: Literal["above", "below"]
) -> RateMatch:
    logs = np.log(rates)
    # The end segment that still rises (the curve is non-decreasing by construction).
    rising = np.flatnonzero(np.diff(values) > 0)
    end = float(rates[-1] if side == "above" else rates[0])
    if rising.size == 0:
        return RateMatch(end, "clamped", side)
    i = int(rising[-1] if side == "above" else rising[0])
    log_rate = _log_rate_at(target, (logs[i], logs[i + 1]), (values[i], values[i + 1]))
    factor = math.exp(abs(log_rate - math.log(end)))
    if factor > MAX_EXTRAPOLATION_FACTOR:
        return RateMatch(end, "clamped", side)
    return RateMatch(math.exp(log_rate), "extrapolated", side)


def rate_for_quality(
    target: float,
    kbps: Sequence[float],
    quality: Sequence[float | None],
    ceiling: float | None = QUALITY_CEILING,
) -> RateMatch | None:
    """The kbit/s at which quality (SSIM, agreement, ...) reaches ``target`` on a curve.

    Quality is interpolated linearly against log(kbit/s). Measured curves wobble (rate
    control on a short clip), so the curve is first made non-decreasing in rate (a
    running maximum): more bits never buy less quality. A ``target`` at ``ceiling``
    (the metric's maximum) cannot be interpolated to: see ``RateMatch``'s
    ``saturated``. ``None`` when the target or the curve has no usable value.
    """
    pairs = sorted(
        (k, q) for k, q in zip(kbps, quality, strict=True) if q is not None and math.isfinite(q)
    )
    if not pairs or target is None or not math.isfinite(target):
        return None
    rates = np.array([k for k, _ in pairs], dtype=np.float64)
    values = np.maximum.accumulate(np.array([q for _, q in pairs], dtype=np.float64))
    if target > values[-1]:
        if ceiling is not None and target >= ceiling:
            # A perfect score is approached asymptotically: a straight line through the
            # last two points says nothing about where the curve reaches it.
            return RateMatch(float(rates[-1]), "clamped", "above")
        return _extrapolate(target, rates, values, "above")
    if target < values[0]:
        return _extrapolate(target, rates, values, "below")
    logs = np.log(rates)
    # First measured point reaching the target; interpolate from the one before it.
    j = int(np.argmax(values >= target))
    if j == 0:
        # Already reached at the lowest rate measured (typical of a saturated agreement
        # of 1.0): fewer bits may do as well, so this rate is only an upper limit.
        return RateMatch(float(rates[0]), "clamped", "below")
    if ceiling is not None and target >= ceiling:
        return RateMatch(float(rates[j]), "saturated", "inside")
    if values[j] == target:
        return RateMatch(float(rates[j]), "interpolated", "inside")
    log_rate = _log_rate_at(target, (logs[j - 1], logs[j]), (values[j - 1], values[j]))
    return RateMatch(float(math.exp(log_rate)), "interpolated", "inside")


def bytes_ratio(reference_kbps: float, match: RateMatch | None) -> dict[str, Any]:
    """Reference bytes over the matched codec's bytes at equal quality, with its caveat.

    Bytes per frame are proportional to kbit/s at the clip's frame rate, so the ratio of
    rates is the ratio of bytes. ``bound``: ``=`` for an interpolated or extrapolated
    match; for a clamped one the true ratio is at most (``<=``, the codec needs more bits
    than measured) or at least (``>=``, fewer) the value; ``>=`` for a saturated one.
    """
    if match is None or match.kbps <= 0:
        return {"ratio": None, "kbps": None, "method": None, "in_range": False, "bound": None}
    bound = "="
    if match.method == "clamped":
        bound = "<=" if match.side == "above" else ">="
    elif match.method == "saturated":
        bound = ">="
    return {
        "ratio": reference_kbps / match.kbps,
        "kbps": match.kbps,
        "method": match.method,
        "in_range": match.in_range,
        "bound": bound,
    }


def reference_quality(qualities: Sequence[int]) -> int:
    """The seed's quality 95 when measured, else the highest quality measured."""
    return SEED_JPEG_QUALITY if SEED_JPEG_QUALITY in qualities else max(qualities)


def equal_quality_ratios(
    reference: dict[str, Any], curves: dict[str, list[dict[str, Any]]], metric: str
) -> dict[str, Any]:
    """For each video codec, reference bytes / its bytes at the reference's ``metric``."""
    target = reference[metric]
    result: dict[str, Any] = {"metric": metric, "target": target}
    for codec, points in curves.items():
        match = None
        if target is not None:
            match = rate_for_quality(
                target, [p["kbps"] for p in points], [p[metric] for p in points]
            )
        result[codec] = bytes_ratio(reference["kbps"], match)
    return result


# ----------------------------------------------------------------------- progress


class ProgressBar:
    """A one-line progress bar on stderr (redrawn in place on a terminal, else a line per step)."""

    def __init__(self, total: int, stream: TextIO | None = None, width: int = 30) -> None:
        self.total = max(1, total)
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.start = time.monotonic()
        self.tty = self.stream.isatty()

    def _line(self, label: str) -> str:
        filled = round(self.width * self.done / self.total)
        bar = "#" * filled + "." * (self.width - filled)
        elapsed = time.monotonic() - self.start
        return f"[{bar}] {self.done}/{self.total} {elapsed:5.0f} s  {label}"

    def show(self, label: str) -> None:
        """Show what is being done now (without advancing)."""
        if self.tty:
            self.stream.write("\r\033[K" + self._line(label))
            self.stream.flush()

    def advance(self, label: str) -> None:
        """Count one step as done."""
        self.done = min(self.total, self.done + 1)
        if self.tty:
            self.show(label)
        else:
            self.stream.write(self._line(label) + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


# ------------------------------------------------------------------------ outputs

CSV_COLUMNS = (
    "input", "codec", "bitrate_kbps", "jpeg_quality", "frames", "mean_bytes", "p95_bytes",
    "kbps", "psnr_y", "ssim", "encode_ms", "decode_ms", "agreement_map50", "agreement_frames",
)  # fmt: skip


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """All operating points, one row each (``input`` is ``all`` for the pooled rows)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in CSV_COLUMNS})


def write_plots(out_dir: Path, curves: dict[str, list[dict[str, Any]]]) -> list[Path]:
    """SSIM and agreement against kbit/s (log x), one line per codec; [] without matplotlib."""
    try:
        from matplotlib.figure import Figure  # the "bench" extra; pyplot's state not needed
    except ImportError:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for metric, label, name in (
        ("ssim", "SSIM (Y) vs pristine", "ssim_vs_kbps.png"),
        ("agreement_map50", "detection agreement (mAP@0.5 vs pristine)", "agreement_vs_kbps.png"),
    ):
        figure = Figure(figsize=(7, 4.5))
        axes = figure.subplots()
        plotted = False
        for codec, points in curves.items():
            pairs = [(p["kbps"], p[metric]) for p in points if p[metric] is not None]
            if not pairs:
                continue
            plotted = True
            pairs.sort()
            axes.plot(*zip(*pairs, strict=True), marker="o", label=CODEC_LABELS[codec])
            if codec == "jpeg_zlib":
                for p in points:
                    if p[metric] is not None:
                        axes.annotate(f"q{p['jpeg_quality']}", (p["kbps"], p[metric]), fontsize=7)
        axes.set_xscale("log")
        axes.set_xlabel("kbit/s")
        axes.set_ylabel(label)
        axes.grid(True, which="both", alpha=0.3)
        if plotted:
            axes.legend()
        else:  # agreement is undefined when the detector found nothing in the pristine frames
            axes.text(0.5, 0.5, "no data", ha="center", va="center", transform=axes.transAxes)
        figure.tight_layout()
        path = out_dir / name
        figure.savefig(path, dpi=120)
        written.append(path)
    return written


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(curves: dict[str, list[dict[str, Any]]]) -> str:
    header = (
        f"{'codec':<10} {'setting':>8} {'kbit/s':>8} {'B/frame':>8} {'p95 B':>8} "
        f"{'PSNR-Y':>7} {'SSIM':>7} {'enc ms':>7} {'dec ms':>7} {'mAP50':>6}"
    )
    lines = [header, "-" * len(header)]
    for codec, points in curves.items():
        for p in points:
            setting = f"q{p['jpeg_quality']}" if codec == "jpeg_zlib" else f"{p['bitrate_kbps']}k"
            lines.append(
                f"{CODEC_LABELS[codec]:<10} {setting:>8} {p['kbps']:8.0f} {p['mean_bytes']:8.0f} "
                f"{p['p95_bytes']:8.0f} {p['psnr_y']:7.2f} {p['ssim']:7.4f} "
                f"{p['encode_ms']:7.1f} {p['decode_ms']:7.1f} {_fmt(p['agreement_map50'], '6.3f')}"
            )
    return "\n".join(lines)


def _ratio_text(entry: dict[str, Any]) -> str:
    if entry["ratio"] is None:
        return "n/a"
    bound = "" if entry["bound"] == "=" else entry["bound"] + " "
    notes = {
        "extrapolated": " (extrapolated beyond the measured rates)",
        "clamped": " (clamped: the target is at or past the end of the measured rates)",
        "saturated": " (the target is the maximum, 1.0: reached at this rate or lower)",
    }
    note = notes.get(entry["method"], "")
    return f"{bound}{entry['ratio']:.2f}x (at {entry['kbps']:.0f} kbit/s){note}"


def format_headlines(summary: dict[str, Any]) -> str:
    ref = summary["reference"]
    lines = [
        f"reference: JPEG+zlib q{ref['jpeg_quality']} = {ref['kbps']:.0f} kbit/s, "
        f"SSIM {ref['ssim']:.4f}, mAP50 {_fmt(ref['agreement_map50'], '.3f')}"
    ]
    for key, what in (("equal_ssim", "SSIM"), ("equal_agreement", "detection agreement")):
        block = summary[key]
        for codec in VIDEO_CODEC_NAMES:
            lines.append(
                f"bytes JPEG+zlib / {CODEC_LABELS[codec]} at equal {what}: "
                f"{_ratio_text(block[codec])}"
            )
    floor = summary["jpeg_colour_round_trip"]
    lines.append(
        f"JPEG's colour round trip alone (yuv420p -> BGR -> Y, no codec): PSNR-Y "
        f"{floor['psnr_y']:.1f} dB, SSIM {floor['ssim']:.5f}"
    )
    z = summary["zlib_on_jpeg"]["reference"]
    lines.append(
        f"zlib on JPEG q{z['jpeg_quality']}: saves {z['saved_pct']:.2f} % of the bytes for "
        f"{z['zlib_compress_ms']:.2f} ms compress + {z['zlib_decompress_ms']:.2f} ms "
        f"decompress per frame (JPEG itself {z['jpeg_ms']:.2f} ms)"
    )
    return "\n".join(lines)


# ---------------------------------------------------------------------- the bench


def _quality_arg(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"JPEG quality must be 0..100, not {text}")
    return value


def add_codec_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``codec`` to ``shelf-bench``'s subparsers (``argparse`` ``add_subparsers()``)."""
    # Imported here: cli imports this module, so a top-level import would be circular.
    from shelf_stream.cli import _positive_int, parse_size

    parser: argparse.ArgumentParser = subparsers.add_parser(
        "codec",
        help="H.265 and H.264 vs the seed's JPEG+zlib: bytes, quality, detection agreement",
        description=DESCRIPTION,
    )
    parser.add_argument(
        "--input", type=Path, action="append", metavar="FILE",
        help="a video file (repeatable; default: the generated scene of real photos, 30 fps)",
    )  # fmt: skip
    parser.add_argument(
        "--size", type=parse_size, default=DEFAULT_SIZE, metavar="WxH", help="(default 640x480)"
    )
    parser.add_argument(
        "--frames", type=_positive_int, default=DEFAULT_FRAMES,
        help=f"frames per input (default {DEFAULT_FRAMES})",
    )  # fmt: skip
    parser.add_argument(
        "--bitrates", type=_positive_int, nargs="+", default=list(DEFAULT_BITRATES_KBPS),
        metavar="KBPS", help="H.265/H.264 targets in kbit/s (default 250 500 1000 2000 4000)",
    )  # fmt: skip
    parser.add_argument(
        "--jpeg-qualities", type=_quality_arg, nargs="+", default=list(DEFAULT_JPEG_QUALITIES),
        metavar="Q", help="JPEG+zlib qualities (default 50 70 80 90 95; 95 is the seed's)",
    )  # fmt: skip
    parser.add_argument("--model", help="ONNX model path (default: as shelf-stream serve)")
    parser.add_argument(
        "--score-threshold", type=float, default=DEFAULT_GT_SCORE_THRESHOLD, metavar="S",
        help="pristine detections at or above this are the ground truth (default 0.3, "
        "as the server)",
    )  # fmt: skip
    parser.add_argument(
        "--prediction-score-threshold", type=float, metavar="S",
        default=DEFAULT_PREDICTION_SCORE_THRESHOLD,
        help="detections on decoded frames are kept down to this score for mAP (default 0.05)",
    )  # fmt: skip
    parser.add_argument(
        "--detect-every", type=_positive_int, default=DEFAULT_DETECT_EVERY, metavar="K",
        help="detection agreement on every K-th frame (default 1: every frame)",
    )  # fmt: skip
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT_DIR, metavar="DIR",
        help=f"CSV of all points and PNG plots go here (default {DEFAULT_OUT_DIR})",
    )  # fmt: skip
    parser.add_argument(
        "--json", type=Path, metavar="FILE", help="also write {'summary': ...} as JSON here"
    )
    return parser


def _create_detector(args: argparse.Namespace) -> Detector:
    from shelf_stream.engine import EngineConfig, create_detector
    from shelf_stream.engine.models import resolve_model

    # One detector for both sides, at the lower threshold; the ground truth is filtered.
    threshold = min(args.score_threshold, args.prediction_score_threshold)
    config = EngineConfig(model_path=resolve_model(args.model), score_threshold=threshold)
    return create_detector(config)


def _operating_points(args: argparse.Namespace) -> list[tuple[str, int]]:
    points = [(codec, kbps) for codec in VIDEO_CODEC_NAMES for kbps in sorted(set(args.bitrates))]
    return points + [("jpeg_zlib", q) for q in sorted(set(args.jpeg_qualities))]


def _setting_label(codec: str, setting: int) -> str:
    return (
        f"{CODEC_LABELS[codec]} q{setting}"
        if codec == "jpeg_zlib"
        else f"{CODEC_LABELS[codec]} {setting}k"
    )


def _measure_clip(
    clip: Clip,
    detector: Detector,
    args: argparse.Namespace,
    progress: ProgressBar,
) -> tuple[dict[tuple[str, int], PointStats], dict[int, list[ZlibOnJpeg]]]:
    progress.show(f"{clip.name}: detections on pristine frames")
    truth = detect_pristine(clip, detector, args.detect_every, args.score_threshold)
    progress.advance(f"{clip.name}: pristine detections")
    stats = {}
    for codec, setting in _operating_points(args):
        progress.show(f"{clip.name}: {_setting_label(codec, setting)}")
        stats[(codec, setting)] = run_point(codec, setting, clip, detector, truth)
        progress.advance(f"{clip.name}: {_setting_label(codec, setting)}")
    bgr_arrays = [frame.to_ndarray() for frame in clip.bgr]
    zlib_samples = {
        q: [measure_zlib_on_jpeg(bgr, q) for bgr in bgr_arrays]
        for q in sorted(set(args.jpeg_qualities))
    }
    progress.advance(f"{clip.name}: zlib on JPEG")
    return stats, zlib_samples


def _curves(
    per_clip: Sequence[dict[tuple[str, int], PointStats]],
    keys: Sequence[tuple[str, int]],
    class_names: Sequence[str],
) -> dict[str, list[dict[str, Any]]]:
    curves: dict[str, list[dict[str, Any]]] = {
        codec: [] for codec in (*VIDEO_CODEC_NAMES, "jpeg_zlib")
    }
    for key in keys:
        curves[key[0]].append(summarize_point([stats[key] for stats in per_clip], class_names))
    return curves


def build_summary(
    args: argparse.Namespace,
    clips: Sequence[Clip],
    per_clip: Sequence[dict[tuple[str, int], PointStats]],
    zlib_samples: dict[int, list[ZlibOnJpeg]],
    class_names: Sequence[str] = (),
) -> dict[str, Any]:
    """The JSON summary: pooled curves, the equal-quality ratios and zlib's share."""
    keys = _operating_points(args)
    curves = _curves(per_clip, keys, class_names)
    ref_q = reference_quality(args.jpeg_qualities)
    reference = next(p for p in curves["jpeg_zlib"] if p["jpeg_quality"] == ref_q)
    video = {codec: curves[codec] for codec in VIDEO_CODEC_NAMES}
    equal_ssim = equal_quality_ratios(reference, video, "ssim")
    equal_agreement = equal_quality_ratios(reference, video, "agreement_map50")
    zlib_points = [summarize_zlib(samples) for _, samples in sorted(zlib_samples.items())]
    width, height = args.size
    return {
        "bench": "codec",
        "size": f"{width}x{height}",
        "inputs": [{"name": c.name, "frames": len(c.frames), "fps": c.fps} for c in clips],
        "detect_every": args.detect_every,
        "score_threshold": args.score_threshold,
        "prediction_score_threshold": args.prediction_score_threshold,
        "ground_truth_boxes": ground_truth_counts(per_clip, class_names),
        "reference": reference,
        "bytes_ratio_at_equal_ssim": equal_ssim["hevc"]["ratio"],
        "bytes_ratio_at_equal_agreement": equal_agreement["hevc"]["ratio"],
        "equal_ssim": equal_ssim,
        "equal_agreement": equal_agreement,
        "zlib_on_jpeg": {
            "reference": next(z for z in zlib_points if z["jpeg_quality"] == ref_q),
            "points": zlib_points,
        },
        **{codec: {"points": points} for codec, points in curves.items()},
        "jpeg_colour_round_trip": colour_round_trip(clips),
        "per_input": [
            {
                "name": clip.name,
                **{c: {"points": pts} for c, pts in _curves([stats], keys, class_names).items()},
            }
            for clip, stats in zip(clips, per_clip, strict=True)
        ]
        if len(clips) > 1
        else [],
    }


def _csv_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    blocks = [("all", summary), *((entry["name"], entry) for entry in summary["per_input"])]
    for name, block in blocks:
        for codec in (*VIDEO_CODEC_NAMES, "jpeg_zlib"):
            rows.extend({"input": name, **point} for point in block[codec]["points"])
    return rows


def run_codec_bench(
    args: argparse.Namespace, *, print_fn: Callable[[str], None] = print
) -> dict[str, Any]:
    """Run ``shelf-bench codec``: print the table, write CSV/plots/JSON, return the summary."""
    started = time.monotonic()
    inputs: list[Path | None] = list(args.input) if args.input else [None]
    detector = _create_detector(args)
    class_names, model = detector.class_names, detector.model_name
    steps = len(inputs) * (len(_operating_points(args)) + 2)
    progress = ProgressBar(steps)
    per_clip, clips = [], []
    zlib_samples: dict[int, list[ZlibOnJpeg]] = {}
    try:
        for path in inputs:
            progress.show(f"reading {path or 'the generated scene'}")
            clip = load_clip(path, args.size, args.frames)
            clips.append(clip)
            stats, samples = _measure_clip(clip, detector, args, progress)
            per_clip.append(stats)
            for quality, values in samples.items():
                zlib_samples.setdefault(quality, []).extend(values)
    finally:
        progress.close()
        detector.close()
    summary = build_summary(args, clips, per_clip, zlib_samples, class_names)
    summary["model"] = model
    csv_path = args.out / "codec_points.csv"
    write_csv(csv_path, _csv_rows(summary))
    plots = write_plots(
        args.out, {c: summary[c]["points"] for c in (*VIDEO_CODEC_NAMES, "jpeg_zlib")}
    )
    summary["outputs"] = {"csv": str(csv_path), "plots": [str(p) for p in plots]}
    summary["runtime_s"] = time.monotonic() - started
    print_fn(_report(summary, plots))
    write_json(args.json, {"summary": summary})
    return summary


def _report(summary: dict[str, Any], plots: Sequence[Path]) -> str:
    inputs = ", ".join(
        f"{i['name']} ({i['frames']} frames @ {i['fps']:g} fps)" for i in summary["inputs"]
    )
    curves = {c: summary[c]["points"] for c in (*VIDEO_CODEC_NAMES, "jpeg_zlib")}
    plot_note = ", ".join(str(p) for p in plots) or "none (pip install shelf-stream[bench])"
    every = summary["detect_every"]
    frames = "every frame" if every == 1 else f"every {every}th frame"
    truth = ", ".join(f"{n} {c}" for n, c in summary["ground_truth_boxes"].items()) or "none"
    return "\n".join(
        [
            f"codec bench at {summary['size']}: {inputs}",
            f"detection agreement ({summary['model']}) on {frames}: ground truth = pristine "
            f"detections with score >= {summary['score_threshold']:g} ({truth}); "
            f"predictions kept down to {summary['prediction_score_threshold']:g}",
            "",
            format_table(curves),
            "",
            format_headlines(summary),
            "",
            f"CSV: {summary['outputs']['csv']}   plots: {plot_note}",
            f"runtime: {summary['runtime_s']:.0f} s",
        ]
    )
