"""``shelf-bench codec``: H.265 and H.264 against the seed's JPEG+zlib, on the same frames.

For each input (a video file, or without ``--input`` the built-in moving scene of real
photographs at 640x480, 30 fps) the first ``--frames`` frames at the input's own size in
yuv420p are the *pristine* frames. Each operating point encodes them all with a fresh
encoder, decodes them and measures bytes per frame, kbit/s at the clip's frame rate, PSNR
(Y) and SSIM of the Y plane against the pristine frames, encode and decode ms per frame,
and how much of what the detector saw on the pristine frames it still sees on the decoded
ones (``detection_metrics``): micro precision, recall and F1 over all boxes at the
server's score threshold, at IoU 0.5 and 0.75, and AP weighted by ground-truth boxes.
The detector is given every picture (pristine or decoded) as BGR converted the same
exact way, the way JPEG+zlib is given the pristine frames (``detector_input``).
Classes with fewer than ``MIN_HEADLINE_BOXES`` ground-truth boxes are counted apart and
left out of those figures: a class seen twice says nothing about a codec. With several
inputs every figure is pooled over all their frames.

Operating points: H.265 and H.264 at every ``--bitrates`` target and every ``--size``
(the input's own size by default; ``model`` is the detector's input size with the aspect
kept), JPEG+zlib (the seed's recipe, ``codec.jpeg_zlib``) at every ``--jpeg-qualities``
quality at the input's own size, as the seed sent it. The video encoders are what the
client uses (``--encoder auto``: a hardware encoder that opens here, else libx265 /
libx264) with the live stream's settings (the measured preset, zero latency, no
B-frames, VBV capped at the target), except for a keyframe every 2 s (``EncoderConfig``'s
default) where the live client makes one every 10 s and on request: on a short clip
that leaves a few keyframes in the figures, not one. Frames encoded at another size
are scaled there before the timing, as the client scales at capture; their boxes are
mapped back to the input's pixels, and their PSNR and SSIM are taken after scaling the
decoded frame back, so every figure compares with the same pristine frames.

Ratios: the bytes of JPEG+zlib over the codec's at the same F1 (the seed's own q95 F1,
and 0.95 / 0.97 / 0.99) and at the same SSIM (the seed's), read off both measured curves
by interpolation and never extrapolated (``curves``). Beside that, the encoder settings
sweep (``encoder_sweep``): x265 presets and thread counts, alone and beside the detector.
"""

from __future__ import annotations

import argparse
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, TextIO

import av
import numpy as np

from shelf_stream.bench import codec_report, curves, encoder_sweep
from shelf_stream.bench.detection_metrics import (
    MatchCounts,
    match_counts,
    total_counts,
    weighted_average_precision,
)
from shelf_stream.bench.report import write_json
from shelf_stream.codec import EncoderConfig, auto_encoder_choice, get_decoder, get_encoder
from shelf_stream.codec.base import TIME_BASE
from shelf_stream.codec.metrics import luma, psnr
from shelf_stream.codec.metrics import ssim as reference_ssim
from shelf_stream.engine.base import Detections, Detector
from shelf_stream.errors import CodecError, ConfigError

DEFAULT_FRAMES = 90
#: Octaves from where detections start to go (H.265 F1 at 50 kbit/s: 0.997 on the
#: 640x360 shelf clip, 0.764 on the 768x432 people clip) to where the output stops
#: growing (the people clip needed only 1.8 Mbit/s of a 3.2 Mbit/s target).
DEFAULT_BITRATES_KBPS = (50, 100, 200, 400, 800, 1600, 3200)
#: With --roi (``bench.roi``): lower too, because the readings need both curves to cross
#: the targets and H.265 keeps F1 0.95 down to 30 kbit/s on the shelf clip (the encoders
#: floor there at about 20-25 kbit/s whatever the target), and up to 3200, because on the
#: first 90 frames of the people clip uniform H.265 was still below F1 0.97 at 1600.
DEFAULT_ROI_BITRATES_KBPS = (12, 25, 50, 100, 200, 400, 800, 1600, 3200)
DEFAULT_JPEG_QUALITIES = (30, 50, 70, 80, 90, 95)
#: The seed called ``cv2.imencode('.jpg', frame)`` bare, i.e. at OpenCV's default 95.
SEED_JPEG_QUALITY = 95
#: The generated scene (without ``--input``): its own size and rate.
SCENE_SIZE = (640, 480)
SCENE_FPS = 30.0
DEFAULT_OUT_DIR = Path("bench-out/codec")
#: Detector on every frame: ~17 ms a frame on the 2-core box.
DEFAULT_DETECT_EVERY = 1
#: Ground truth is the pristine detections at the server's score threshold, and so are
#: the predictions that precision, recall and F1 count. For AP, which ranks by score, the
#: predictions are kept down to this low score, as AP evaluations do, so that a box whose
#: score slips just under the threshold after compression still counts at its rank.
DEFAULT_GT_SCORE_THRESHOLD = 0.3
DEFAULT_PREDICTION_SCORE_THRESHOLD = 0.05
#: Classes with fewer ground-truth boxes than this are counted apart, out of the headline.
MIN_HEADLINE_BOXES = 20
#: F1 values the ratios are read at, beside the seed's own.
F1_TARGETS = (0.95, 0.97, 0.99)
#: "F1 never falls by more than this as the bitrate rises" (the bench checks its curves).
F1_FALL_TOLERANCE = 0.01
#: Per-frame PSNR of identical planes is infinite; cap it so means and JSON stay finite.
MAX_PSNR_DB = 100.0

DESCRIPTION = (
    "Encode the same frames with H.265 and H.264 at several bitrates and sizes and with "
    "the seed's JPEG+zlib at several qualities; report bytes/frame, kbit/s, PSNR-Y, SSIM, "
    "encode/decode ms and how many of the detector's boxes on the pristine frames survive "
    "(precision, recall and F1 at the server's threshold, AP weighted by boxes), the bytes "
    "ratio JPEG+zlib / codec at equal F1 and equal SSIM, and x265 presets and threads "
    "beside a busy detector. Without --input the built-in moving scene of real photos "
    "(640x480, 30 fps) is used."
)

VIDEO_CODEC_NAMES = ("hevc", "h264")
JPEG = codec_report.JPEG
CODEC_LABELS = codec_report.CODEC_LABELS


# ------------------------------------------------------------------------------ sizes


class SizeKind(Enum):
    NATIVE = "native"  # the input's own size
    MODEL = "model"  # the detector's input size, the input's aspect kept
    FIXED = "fixed"  # WxH as given


@dataclass(frozen=True, slots=True)
class SizeSpec:
    """What ``--size`` asked for; ``resolve`` turns it into pixels for one input."""

    kind: SizeKind
    width_px: int = 0
    height_px: int = 0

    @property
    def label(self) -> str:
        if self.kind is SizeKind.FIXED:
            return f"{self.width_px}x{self.height_px}"
        return self.kind.value

    def resolve(self, native: tuple[int, int], model_input: tuple[int, int]) -> tuple[int, int]:
        if self.kind is SizeKind.NATIVE:
            return native
        if self.kind is SizeKind.MODEL:
            return model_size(native, model_input)
        return self.width_px, self.height_px


NATIVE = SizeSpec(SizeKind.NATIVE)


def _even(value: float) -> int:
    return max(2, 2 * round(value / 2))


def model_size(native: tuple[int, int], model_input: tuple[int, int]) -> tuple[int, int]:
    """The input scaled to fit the detector's input, aspect kept, even sides, never larger
    than the input (the detector would scale it down to this anyway)."""
    width, height = native
    scale = min(1.0, model_input[0] / width, model_input[1] / height)
    return _even(width * scale), _even(height * scale)


def parse_size_spec(text: str) -> SizeSpec:
    """``native``, ``model`` or ``WxH`` (positive and even, for 4:2:0)."""
    from shelf_stream.cli import parse_size  # cli imports this module

    lowered = text.lower()
    if lowered in (SizeKind.NATIVE.value, SizeKind.MODEL.value):
        return SizeSpec(SizeKind(lowered))
    width, height = parse_size(text)
    return SizeSpec(SizeKind.FIXED, width, height)


def size_text(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


# ------------------------------------------------------------------------------ clips


@dataclass(slots=True)
class Clip:
    """The pristine frames of one input at its own size, and the same at other sizes."""

    name: str
    fps: float
    frames: list[av.VideoFrame]  # yuv420p at the input's size: what the encoders get
    bgr: list[av.VideoFrame] = field(default_factory=list)  # the same, bgr24, for JPEG
    _scaled: dict[tuple[int, int], list[av.VideoFrame]] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return len(self.frames) / self.fps

    @property
    def size(self) -> tuple[int, int]:
        return self.frames[0].width, self.frames[0].height

    def at(self, size: tuple[int, int]) -> list[av.VideoFrame]:
        """The pristine frames scaled to ``size`` (yuv420p), made once."""
        if size == self.size:
            return self.frames
        if size not in self._scaled:
            width, height = size
            self._scaled[size] = [
                _no_pict_type(f.reformat(width=width, height=height, format="yuv420p"))
                for f in self.frames
            ]
        return self._scaled[size]


def _no_pict_type(frame: av.VideoFrame) -> av.VideoFrame:
    frame.pict_type = av.video.frame.PictureType.NONE
    return frame


def _pristine(frame: av.VideoFrame) -> av.VideoFrame:
    # 4:2:0 needs even sides: an odd one loses its last row or column (scaled, not cut).
    width, height = frame.width - frame.width % 2, frame.height - frame.height % 2
    if frame.format.name != "yuv420p" or (frame.width, frame.height) != (width, height):
        frame = frame.reformat(width=width, height=height, format="yuv420p")
    return _no_pict_type(frame)


def load_clip(path: Path | None, max_frames: int) -> Clip:
    """The first ``max_frames`` frames of ``path`` (or of the generated scene), own size."""
    from shelf_stream.client.sources import FileSource, FrameSource, SceneSource

    source: FrameSource
    if path is None:
        source, name = SceneSource(*SCENE_SIZE, SCENE_FPS), "scene (generated)"
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
            frames.append(_pristine(frame))
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


# ---------------------------------------------------------------- operating points


@dataclass(frozen=True, slots=True)
class PointKey:
    """One operating point: ``setting`` is kbit/s for the video codecs, JPEG's quality
    for jpeg_zlib; ``size`` is what ``--size`` asked for (JPEG: always native)."""

    codec: str
    setting: int
    size: SizeSpec


@dataclass(slots=True)
class PointStats:
    """Per-frame measurements of one operating point on one clip."""

    key: PointKey
    size: tuple[int, int]  # the pixels encoded
    seconds: float  # clip duration: frames / fps
    bytes: list[int] = field(default_factory=list)
    encode_ms: list[float] = field(default_factory=list)
    decode_ms: list[float] = field(default_factory=list)
    psnr_y: list[float] = field(default_factory=list)
    ssim: list[float] = field(default_factory=list)
    ground_truth: list[Detections] = field(default_factory=list)
    predictions: list[Detections] = field(default_factory=list)  # in the input's pixels


#: Threads of the quality points' encoders. With one, a point repeats bit for bit; threaded
#: x264/x265 do not, and on the car clip (75 headline boxes, several near the threshold)
#: that noise alone made F1 fall by up to 0.027 from one bitrate to the next, where one
#: thread gave none (native size, this project's runs). The encoder sweep times the
#: client's threaded encoder; these points' ``encode_ms`` are one thread's.
DEFAULT_ENCODER_THREADS = 1


def _encoder_config(
    key: PointKey, size: tuple[int, int], fps: float, threads: int = DEFAULT_ENCODER_THREADS
) -> EncoderConfig:
    width, height = size
    if key.codec == JPEG:
        return EncoderConfig(
            codec=JPEG, width=width, height=height, fps=fps, jpeg_quality=key.setting
        )
    return EncoderConfig(
        codec=key.codec, width=width, height=height, fps=fps, bitrate_kbps=key.setting,
        threads=threads,
    )  # fmt: skip


def _encode_all(
    key: PointKey, frames: Sequence[av.VideoFrame], fps: float, threads: int
) -> tuple[list[bytes], list[float]]:
    size = (frames[0].width, frames[0].height)
    encoder = get_encoder(_encoder_config(key, size, fps, threads))
    data, times = [], []
    try:
        for index, frame in enumerate(frames):
            pts = round(index / fps / TIME_BASE)
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


def scale_boxes(detections: Detections, sx: float, sy: float) -> Detections:
    """Boxes multiplied by ``sx`` across and ``sy`` down (decoded pixels -> input pixels)."""
    if sx == 1.0 and sy == 1.0:
        return detections
    factors = np.array([sx, sy, sx, sy], dtype=np.float32)
    return Detections(detections.boxes * factors, detections.scores, detections.class_ids)


def run_point(
    key: PointKey,
    clip: Clip,
    detector: Detector,
    pristine_detections: dict[int, Detections],
    size: tuple[int, int],
    encoder_threads: int = DEFAULT_ENCODER_THREADS,
) -> PointStats:
    """Encode, decode and measure every frame of ``clip`` at one operating point.

    ``pristine_detections`` maps frame index -> the detector's output on the pristine
    frame; the detector runs on the decoded frames with the same indices, and its boxes
    are mapped back to the input's pixels.
    """
    stats = PointStats(key=key, size=size, seconds=clip.seconds)
    inputs = clip.bgr if key.codec == JPEG else clip.at(size)
    data, stats.encode_ms = _encode_all(key, inputs, clip.fps, encoder_threads)
    native_w, native_h = clip.size
    sx, sy = native_w / size[0], native_h / size[1]
    decoder = get_decoder(key.codec)
    try:
        for index, (au, pristine) in enumerate(zip(data, clip.frames, strict=True)):
            decoded, ms = _decode_one(decoder, au, round(index / clip.fps / TIME_BASE))
            stats.decode_ms.append(ms)
            stats.bytes.append(len(au))
            # JPEG decodes to BGR: its Y is recomputed exactly (see to_bgr). A frame sent
            # at another size is scaled back first, so every point compares with the
            # same pristine frames.
            seen = decoded
            if (decoded.width, decoded.height) != clip.size:
                seen = decoded.reformat(width=native_w, height=native_h, format="yuv420p")
            original, received = luma(pristine), decoded_luma(seen)
            stats.psnr_y.append(min(psnr(original, received), MAX_PSNR_DB))
            stats.ssim.append(fast_ssim(original, received))
            if index in pristine_detections:
                stats.ground_truth.append(pristine_detections[index])
                # The detector sees what was sent, through the one colour conversion.
                found = detector.detect([detector_input(decoded)])[0]
                stats.predictions.append(scale_boxes(found, sx, sy))
    finally:
        decoder.close()
    return stats


def above_score(detections: Detections, min_score: float) -> Detections:
    """Only the detections scoring at least ``min_score``."""
    keep = detections.scores >= min_score
    return Detections(detections.boxes[keep], detections.scores[keep], detections.class_ids[keep])


def detector_input(frame: av.VideoFrame) -> np.ndarray:
    """The BGR image the detector is given for ``frame``, converted exactly (``to_bgr``).

    One conversion for every picture, pristine or decoded, video or JPEG: the detector's
    own (libswscale's) and OpenCV's differ, and near the score threshold that alone
    flipped boxes (on the people clip, 14 of 193 lost, F1 0.962, with no codec at all),
    which would have been charged to JPEG, the only codec given BGR.
    """
    bgr = frame if frame.format.name == "bgr24" else to_bgr(frame)
    return bgr.to_ndarray()


def detect_pristine(
    clip: Clip, detector: Detector, every: int, min_score: float
) -> dict[int, Detections]:
    """The detector's output (scores >= ``min_score``) on every ``every``-th pristine
    frame, as JPEG+zlib is given it (``clip.bgr``): the ground truth."""
    return {
        i: above_score(detector.detect([detector_input(clip.bgr[i])])[0], min_score)
        for i in range(0, len(clip.frames), every)
    }


# ------------------------------------------------------------ what a point scores


def _p95(values: Sequence[float]) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), 95))


def _class_name(class_id: int, class_names: Sequence[str]) -> str:
    return class_names[class_id] if 0 <= class_id < len(class_names) else str(class_id)


def class_box_counts(truth: Sequence[Detections]) -> dict[int, int]:
    """Ground-truth boxes per class id, most first."""
    counts: dict[int, int] = {}
    for detections in truth:
        for class_id in detections.class_ids:
            counts[int(class_id)] = counts.get(int(class_id), 0) + 1
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def headline_classes(box_counts: dict[int, int], min_boxes: int = MIN_HEADLINE_BOXES) -> set[int]:
    """The classes with at least ``min_boxes`` ground-truth boxes."""
    return {c for c, n in box_counts.items() if n >= min_boxes}


@dataclass(frozen=True, slots=True)
class Agreement:
    """What one point scores against the pristine detections."""

    at_iou50: MatchCounts  # headline classes, predictions at the server's threshold
    at_iou75: MatchCounts
    ap50_weighted: float | None  # headline classes, AP weighted by their boxes
    apart: dict[int, MatchCounts]  # the other classes (IoU 0.5), each on its own


def score_agreement(
    truth: Sequence[Detections],
    predictions: Sequence[Detections],
    score_threshold: float,
    min_boxes: int = MIN_HEADLINE_BOXES,
) -> Agreement:
    """Micro counts over the headline classes' boxes, and the rest apart.

    A class is in the headline with at least ``min_boxes`` ground-truth boxes; predictions
    of any other class (one absent from the ground truth included) are counted apart.
    """
    headline = headline_classes(class_box_counts(truth), min_boxes)
    counts50 = match_counts(truth, predictions, iou_threshold=0.5, min_score=score_threshold)
    counts75 = match_counts(truth, predictions, iou_threshold=0.75, min_score=score_threshold)
    return Agreement(
        at_iou50=total_counts(counts50, headline),
        at_iou75=total_counts(counts75, headline),
        ap50_weighted=weighted_average_precision(truth, predictions, headline, 0.5),
        apart={c: n for c, n in counts50.items() if c not in headline},
    )


def summarize_point(
    parts: Sequence[PointStats],
    class_names: Sequence[str] = (),
    score_threshold: float = DEFAULT_GT_SCORE_THRESHOLD,
) -> dict[str, Any]:
    """One operating point's figures, pooled over the clips' frames.

    The ``summary.points[]`` fields (``codec`` ... ``decode_ms``) come first; precision,
    recall and F1 are at IoU 0.5 over the headline classes, and None where undefined (no
    ground truth).
    """
    first = parts[0]
    sizes = [b for p in parts for b in p.bytes]
    truth = [d for p in parts for d in p.ground_truth]
    predictions = [d for p in parts for d in p.predictions]
    agreement = score_agreement(truth, predictions, score_threshold)
    pixels = {p.size for p in parts}
    return {
        "codec": first.key.codec,
        "setting": first.key.setting,
        # One input (or all at the same size): its pixels; else what --size asked for.
        "size": size_text(first.size) if len(pixels) == 1 else first.key.size.label,
        "kbps": sum(sizes) * 8 / sum(p.seconds for p in parts) / 1000,
        "bytes_per_frame": float(np.mean(sizes)),
        "ssim": float(np.mean([v for p in parts for v in p.ssim])),
        "psnr_y": float(np.mean([v for p in parts for v in p.psnr_y])),
        "f1": agreement.at_iou50.f1,
        "precision": agreement.at_iou50.precision,
        "recall": agreement.at_iou50.recall,
        "encode_ms": float(np.mean([v for p in parts for v in p.encode_ms])),
        "decode_ms": float(np.mean([v for p in parts for v in p.decode_ms])),
        "size_asked": first.key.size.label,
        "frames": len(sizes),
        "p95_bytes": _p95(sizes),
        "f1_iou75": agreement.at_iou75.f1,
        "precision_iou75": agreement.at_iou75.precision,
        "recall_iou75": agreement.at_iou75.recall,
        "ap50_weighted": agreement.ap50_weighted,
        "true_positives": agreement.at_iou50.true_positives,
        "false_positives": agreement.at_iou50.false_positives,
        "false_negatives": agreement.at_iou50.false_negatives,
        "detected_frames": len(predictions),
        "classes_apart": {
            _class_name(c, class_names): {
                "truth_boxes": n.truth_boxes,
                "true_positives": n.true_positives,
                "false_positives": n.false_positives,
                "false_negatives": n.false_negatives,
            }
            for c, n in agreement.apart.items()
        },
    }


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


# ------------------------------------------------------------------ the summary


def reference_quality(qualities: Sequence[int]) -> int:
    """The seed's quality 95 when measured, else the highest quality measured."""
    return SEED_JPEG_QUALITY if SEED_JPEG_QUALITY in qualities else max(qualities)


def _groups(points: Sequence[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Points by (codec, size), in the order measured."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for p in points:
        groups.setdefault((p["codec"], p["size"]), []).append(p)
    return groups


def _curve(codec: str, size: str, points: Sequence[dict[str, Any]]) -> curves.Curve:
    return curves.Curve(
        codec=codec,
        size=size,
        kbps=tuple(p["kbps"] for p in points),
        f1=tuple(p["f1"] for p in points),
        ssim=tuple(p["ssim"] for p in points),
    )


def build_ratios(points: Sequence[dict[str, Any]], seed: dict[str, Any]) -> list[curves.Ratio]:
    """Every video curve's ratios against the seed's point and JPEG's curve."""
    groups = _groups(points)
    jpeg = next(_curve(JPEG, s, pts) for (c, s), pts in groups.items() if c == JPEG)
    seed_quality = {curves.Measure.F1: seed["f1"], curves.Measure.SSIM: seed["ssim"]}
    ratios = []
    for (codec, size), group in groups.items():
        if codec != JPEG:
            curve = _curve(codec, size, group)
            ratios += curves.ratios_for(curve, jpeg, seed["kbps"], seed_quality, F1_TARGETS)
    return ratios


def f1_monotonicity(points: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """For every curve, the most F1 falls as the setting (bitrate, quality) rises.

    Beside it, what one box is worth (a box lost from a perfect score costs
    1 / (2 N - 1) of F1 with N headline boxes), and the same fall of AP50w, which
    integrates over the score and so shrugs off a box flickering across the threshold.
    """
    checks = []
    for (codec, size), group in _groups(points).items():
        settings = [p["setting"] for p in group]
        fall = curves.largest_fall(settings, [p["f1"] for p in group])
        worst = (
            None
            if fall.from_index is None or fall.to_index is None
            else [group[fall.from_index]["setting"], group[fall.to_index]["setting"]]
        )
        boxes = group[0]["true_positives"] + group[0]["false_negatives"]
        checks.append(
            {
                "codec": codec,
                "size": size,
                "largest_fall": fall.amount,
                "between_settings": worst,
                "ok": fall.amount <= F1_FALL_TOLERANCE,
                "headline_boxes": boxes,
                "one_box": 1 / (2 * boxes - 1) if boxes else None,
                "ap50w_largest_fall": curves.largest_fall(
                    settings, [p["ap50_weighted"] for p in group]
                ).amount,
            }
        )
    return checks


def _pooled_points(
    per_clip: Sequence[dict[PointKey, PointStats]],
    keys: Sequence[PointKey],
    class_names: Sequence[str],
    score_threshold: float,
) -> list[dict[str, Any]]:
    return [
        summarize_point([stats[key] for stats in per_clip], class_names, score_threshold)
        for key in keys
    ]


def _block(
    per_clip: Sequence[dict[PointKey, PointStats]],
    keys: Sequence[PointKey],
    class_names: Sequence[str],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Points, seed, ratios and the F1 check over ``per_clip`` (one input or all).

    The ratios come twice: ``ratios`` as JSON, ``ratio_readings`` (``curves.Ratio``, with
    the rates behind each) for the printed table; the latter is not written out.
    """
    points = _pooled_points(per_clip, keys, class_names, args.score_threshold)
    seed_q = reference_quality(args.jpeg_qualities)
    seed = next(p for p in points if p["codec"] == JPEG and p["setting"] == seed_q)
    truth = next(iter(per_clip[0].values())).ground_truth
    for stats in per_clip[1:]:
        truth = [*truth, *next(iter(stats.values())).ground_truth]
    boxes = class_box_counts(truth)
    headline = headline_classes(boxes)
    ratios = build_ratios(points, seed)
    return {
        "ground_truth_boxes": {_class_name(c, class_names): n for c, n in boxes.items()},
        "headline_classes": [_class_name(c, class_names) for c in boxes if c in headline],
        "classes_apart": [_class_name(c, class_names) for c in boxes if c not in headline],
        "seed": seed,
        "points": points,
        "ratios": [r.to_json() for r in ratios],
        "ratio_readings": ratios,
        "f1_monotonicity": f1_monotonicity(points),
    }


def build_summary(
    args: argparse.Namespace,
    clips: Sequence[Clip],
    per_clip: Sequence[dict[PointKey, PointStats]],
    zlib_samples: dict[int, list[ZlibOnJpeg]],
    class_names: Sequence[str] = (),
) -> dict[str, Any]:
    """The JSON summary: pooled points, ratios, the F1 check and zlib's share."""
    keys = list(per_clip[0])
    ref_q = reference_quality(args.jpeg_qualities)
    zlib_points = [summarize_zlib(samples) for _, samples in sorted(zlib_samples.items())]
    return {
        "bench": "codec",
        "inputs": [
            {"name": c.name, "frames": len(c.frames), "fps": c.fps, "size": size_text(c.size)}
            for c in clips
        ],
        "sizes": [spec.label for spec in args.size],
        "detect_every": args.detect_every,
        "score_threshold": args.score_threshold,
        "prediction_score_threshold": args.prediction_score_threshold,
        "min_headline_boxes": MIN_HEADLINE_BOXES,
        "f1_fall_tolerance": F1_FALL_TOLERANCE,
        **_block(per_clip, keys, class_names, args),
        "zlib_on_jpeg": {
            "reference": next(z for z in zlib_points if z["jpeg_quality"] == ref_q),
            "points": zlib_points,
        },
        "jpeg_colour_round_trip": colour_round_trip(clips),
        "per_input": [
            {"name": clip.name, **_block([stats], keys, class_names, args)}
            for clip, stats in zip(clips, per_clip, strict=True)
        ]
        if len(clips) > 1
        else [],
    }


# ---------------------------------------------------------------------- the bench


def _quality_arg(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"JPEG quality must be 0..100, not {text}")
    return value


def _size_arg(text: str) -> SizeSpec:
    try:
        return parse_size_spec(text)
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"{exc}; or native, or model") from None


def add_codec_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``codec`` to ``shelf-bench``'s subparsers (``argparse`` ``add_subparsers()``)."""
    # Imported here: cli imports this module, so a top-level import would be circular.
    from shelf_stream.cli import _positive_int

    parser: argparse.ArgumentParser = subparsers.add_parser(
        "codec",
        help="H.265 and H.264 vs the seed's JPEG+zlib: bytes, quality, detection F1",
        description=DESCRIPTION,
    )
    parser.add_argument(
        "--input", type=Path, action="append", metavar="FILE",
        help="a video file (repeatable; default: the generated scene of real photos, 30 fps)",
    )  # fmt: skip
    parser.add_argument(
        "--size", type=_size_arg, nargs="+", default=[NATIVE], metavar="SIZE",
        help="sizes the video codecs encode at: native (the input's own, the default), "
        "model (the detector's input size, aspect kept) or WxH (stretched to it); "
        "several run side by side. JPEG+zlib always sends the input's own size",
    )  # fmt: skip
    parser.add_argument(
        "--frames", type=_positive_int, default=DEFAULT_FRAMES,
        help=f"frames per input (default {DEFAULT_FRAMES})",
    )  # fmt: skip
    parser.add_argument(
        "--bitrates", type=_positive_int, nargs="+", metavar="KBPS",
        help="H.265/H.264 targets in kbit/s (default "
        + " ".join(map(str, DEFAULT_BITRATES_KBPS)) + "; with --roi "
        + " ".join(map(str, DEFAULT_ROI_BITRATES_KBPS)) + ")",
    )  # fmt: skip
    parser.add_argument(
        "--jpeg-qualities", type=_quality_arg, nargs="+", default=list(DEFAULT_JPEG_QUALITIES),
        metavar="Q",
        help="JPEG+zlib qualities (default " + " ".join(map(str, DEFAULT_JPEG_QUALITIES))
        + "; 95 is the seed's)",
    )  # fmt: skip
    parser.add_argument("--model", help="ONNX model path (default: as shelf-stream serve)")
    parser.add_argument(
        "--score-threshold", type=float, default=DEFAULT_GT_SCORE_THRESHOLD, metavar="S",
        help="the server's threshold: pristine detections at or above it are the ground "
        "truth, and decoded ones at or above it count for precision/recall/F1 (default 0.3)",
    )  # fmt: skip
    parser.add_argument(
        "--prediction-score-threshold", type=float, metavar="S",
        default=DEFAULT_PREDICTION_SCORE_THRESHOLD,
        help="for AP, detections on decoded frames are kept down to this score (default 0.05)",
    )  # fmt: skip
    parser.add_argument(
        "--detect-every", type=_positive_int, default=DEFAULT_DETECT_EVERY, metavar="K",
        help="detection figures on every K-th frame (default 1: every frame)",
    )  # fmt: skip
    parser.add_argument(
        "--encoder-threads", type=int, default=DEFAULT_ENCODER_THREADS, metavar="N",
        help="threads of the H.265/H.264 encoders at each point (default 1: every point "
        "repeats bit for bit; 0: as many as the encoder wants, as the client runs it)",
    )  # fmt: skip
    parser.add_argument(
        "--encoder-sweep", action=argparse.BooleanOptionalAction, default=True,
        help="also time x265 presets and threads alone and beside a busy detector, on the "
        "first input (default: on)",
    )  # fmt: skip
    parser.add_argument(
        "--encoder-sweep-rounds", type=_positive_int, default=encoder_sweep.SWEEP_ROUNDS,
        metavar="N", help="interleaved rounds of the sweep; figures are their medians "
        f"(default {encoder_sweep.SWEEP_ROUNDS})",
    )  # fmt: skip
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT_DIR, metavar="DIR",
        help=f"CSV of all points and PNG plots go here (default {DEFAULT_OUT_DIR})",
    )  # fmt: skip
    parser.add_argument(
        "--json", type=Path, metavar="FILE", help="also write {'summary': ...} as JSON here"
    )
    roi = parser.add_argument_group(
        "regions of interest (--roi: uniform against detection-guided ROI coding instead)"
    )
    roi.add_argument(
        "--roi", action="store_true",
        help="replay each input twice per codec and bitrate, uniform and with the client's "
        "ROI planner fed the detections on earlier decoded frames; report bytes at equal "
        "F1, new objects' first-second recall, PSNR in and out of the boxes (JPEG+zlib and "
        "the encoder sweep are not run)",
    )  # fmt: skip
    roi.add_argument(
        "--roi-delay-frames", type=_non_negative_int, metavar="N",
        help="frames between a frame and the first one its answer steers (default: what a "
        "150 ms round trip covers at the input's rate)",
    )  # fmt: skip
    roi.add_argument(
        "--roi-strength", type=float, metavar="S",
        help="the planner's strength (as shelf-stream send --roi-strength)",
    )  # fmt: skip
    roi.add_argument(
        "--roi-refresh-interval", type=_non_negative_float, metavar="S",
        help="seconds between the planner's uniform refresh frames, 0 for none (default: "
        "the planner's own)",
    )  # fmt: skip
    return parser


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also NaN
        raise argparse.ArgumentTypeError(f"must be >= 0, not {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, not {text}")
    return value


def bitrates(args: argparse.Namespace) -> list[int]:
    """The targets asked for, else the defaults of the mode (``--roi`` or not)."""
    if args.bitrates:
        return sorted(set(args.bitrates))
    return list(DEFAULT_ROI_BITRATES_KBPS if getattr(args, "roi", False) else DEFAULT_BITRATES_KBPS)


def _create_detector(model_path: Path, args: argparse.Namespace) -> Detector:
    from shelf_stream.engine import EngineConfig, create_detector

    # One detector for both sides, at the lower threshold; the ground truth is filtered.
    threshold = min(args.score_threshold, args.prediction_score_threshold)
    return create_detector(EngineConfig(model_path=model_path, score_threshold=threshold))


def _operating_points(args: argparse.Namespace) -> list[PointKey]:
    sizes = list(dict.fromkeys(args.size))  # a size given twice runs once
    video = [
        PointKey(codec, kbps, size)
        for codec in VIDEO_CODEC_NAMES
        for size in sizes
        for kbps in bitrates(args)
    ]
    return video + [PointKey(JPEG, q, NATIVE) for q in sorted(set(args.jpeg_qualities))]


def _setting_label(key: PointKey) -> str:
    setting = f"q{key.setting}" if key.codec == JPEG else f"{key.setting}k"
    return f"{CODEC_LABELS[key.codec]} {setting} {key.size.label}"


def _measure_clip(
    clip: Clip,
    detector: Detector,
    args: argparse.Namespace,
    progress: ProgressBar,
) -> tuple[dict[PointKey, PointStats], dict[int, list[ZlibOnJpeg]]]:
    progress.show(f"{clip.name}: detections on pristine frames")
    truth = detect_pristine(clip, detector, args.detect_every, args.score_threshold)
    progress.advance(f"{clip.name}: pristine detections")
    stats = {}
    for key in _operating_points(args):
        progress.show(f"{clip.name}: {_setting_label(key)}")
        size = key.size.resolve(clip.size, detector.input_size)
        stats[key] = run_point(key, clip, detector, truth, size, args.encoder_threads)
        progress.advance(f"{clip.name}: {_setting_label(key)}")
    bgr_arrays = [frame.to_ndarray() for frame in clip.bgr]
    zlib_samples = {
        q: [measure_zlib_on_jpeg(bgr, q) for bgr in bgr_arrays]
        for q in sorted(set(args.jpeg_qualities))
    }
    progress.advance(f"{clip.name}: zlib on JPEG")
    return stats, zlib_samples


def _sweep(
    clip: Clip, model_path: Path, model_input: tuple[int, int], args: argparse.Namespace
) -> dict[str, Any]:
    """The encoder settings sweep on ``clip`` at the first ``--size``, middle bitrate."""
    from shelf_stream.engine.onnx_backend import default_inference_threads

    size = args.size[0].resolve(clip.size, model_input)
    frames = clip.at(size)
    targets = bitrates(args)
    kbps = targets[len(targets) // 2]
    threads = default_inference_threads()  # the server's default
    with encoder_sweep.BusyInference(model_path, clip.bgr[0].to_ndarray(), threads) as busy:
        sweep = encoder_sweep.run_sweep(
            frames, clip.fps, kbps, busy, encoder_sweep.default_settings(),
            args.encoder_sweep_rounds,
        )  # fmt: skip
    return {
        "input": clip.name,
        "size": size_text(size),
        "fps": clip.fps,
        "bitrate_kbps": kbps,
        "frames": min(len(frames), encoder_sweep.SWEEP_FRAMES),
        "rounds": sweep.rounds,
        "busy_inference_threads": threads,
        "inference_ms_idle": sweep.inference_ms_idle,
        "results": [r.to_json() for r in sweep.results],
        "table": encoder_sweep.format_sweep(sweep, clip.fps, kbps, size_text(size)),
    }


def _encoders_used(clips: Sequence[Clip]) -> dict[str, str]:
    clip = clips[0]
    width, height = clip.size
    return {
        codec: auto_encoder_choice(
            EncoderConfig(codec=codec, width=width, height=height, fps=clip.fps)
        ).name
        for codec in VIDEO_CODEC_NAMES
    }


def run_codec_bench(
    args: argparse.Namespace, *, print_fn: Callable[[str], None] = print
) -> dict[str, Any]:
    """Run ``shelf-bench codec``: print the report, write CSV/plots/JSON, return the summary."""
    from shelf_stream.engine.models import resolve_model

    if getattr(args, "roi", False):
        from shelf_stream.bench.roi import run_roi_bench

        return run_roi_bench(args, print_fn=print_fn)
    started = time.monotonic()
    inputs: list[Path | None] = list(args.input) if args.input else [None]
    model_path = resolve_model(args.model)
    detector = _create_detector(model_path, args)
    class_names, model = detector.class_names, detector.model_name
    steps = len(inputs) * (len(_operating_points(args)) + 2) + int(args.encoder_sweep)
    progress = ProgressBar(steps)
    per_clip, clips = [], []
    zlib_samples: dict[int, list[ZlibOnJpeg]] = {}
    sweep = None
    try:
        for path in inputs:
            progress.show(f"reading {path or 'the generated scene'}")
            clip = load_clip(path, args.frames)
            clips.append(clip)
            stats, samples = _measure_clip(clip, detector, args, progress)
            per_clip.append(stats)
            for quality, values in samples.items():
                zlib_samples.setdefault(quality, []).extend(values)
        if args.encoder_sweep:
            progress.show("encoder settings, alone and beside a busy detector")
            sweep = _sweep(clips[0], model_path, detector.input_size, args)
            progress.advance("encoder settings")
    finally:
        progress.close()
        detector.close()
    summary = build_summary(args, clips, per_clip, zlib_samples, class_names)
    summary["model"] = model
    summary["encoders"] = _encoders_used(clips)
    summary["encoder_sweep"] = sweep
    readings = _pop_readings(summary)
    outputs = codec_report.write_outputs(args.out, summary)
    summary["outputs"] = {"csv": str(outputs.csv), "plots": [str(p) for p in outputs.plots]}
    summary["runtime_s"] = time.monotonic() - started
    print_fn(codec_report.format_report(summary, readings))
    write_json(args.json, {"summary": summary})
    return summary


def _pop_readings(summary: dict[str, Any]) -> list[curves.Ratio]:
    """Take the ``curves.Ratio`` objects out of the summary (JSON has their ``ratios``)."""
    for block in summary["per_input"]:
        block.pop("ratio_readings")
    readings: list[curves.Ratio] = summary.pop("ratio_readings")
    return readings
