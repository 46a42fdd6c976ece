"""Regions of interest reach the encoder, and libx264 and libx265 honour them."""

from __future__ import annotations

import logging
from pathlib import Path

import av
import numpy as np
import pytest

from shelf_stream.codec import EncoderConfig, get_decoder, get_encoder
from shelf_stream.codec import roi as codec_roi
from shelf_stream.codec.base import RoiRegion
from shelf_stream.codec.metrics import psnr
from shelf_stream.codec.pyav import PyAVEncoder, encoder_options
from shelf_stream.codec.roi import RegionTagger, clip_regions, read_regions

#: 10 frames of real camera footage, 640x360 (tests/data/README.md).
CLIP = Path(__file__).resolve().parent.parent / "data" / "bottles-640x360.mp4"
W, H = 640, 360
LEFT = (slice(0, H), slice(0, W // 2))
RIGHT = (slice(0, H), slice(W // 2, W))


@pytest.fixture(scope="module")
def frames() -> list[av.VideoFrame]:
    with av.open(str(CLIP)) as container:
        return [f.reformat(format="yuv420p") for f in container.decode(video=0)]


def half_psnr(
    codec: str,
    frames: list[av.VideoFrame],
    left_qoffset: float | None,
    *,
    preset: str | None = None,
) -> tuple[float, float, int]:
    """PSNR-Y of the left and right halves, and the bytes, with ``left_qoffset`` on the
    left half (None: an encoder without ROI)."""
    config = EncoderConfig(
        codec=codec, width=W, height=H, fps=30.0, bitrate_kbps=300, preset=preset,
        roi=left_qoffset is not None,
    )  # fmt: skip
    encoder = get_encoder(config)
    decoder = get_decoder(codec)
    if left_qoffset is not None:
        encoder.set_regions([RoiRegion(0, 0, W // 2, H, left_qoffset)])
    left, right, size = [], [], 0
    for index, frame in enumerate(frames * 2):  # 20 frames: past the first keyframe
        au = encoder.encode(frame, index * 3000)
        size += len(au.data)
        decoded = decoder.decode(au.data, au.pts)[0]
        a = frame.to_ndarray()[:H]
        b = decoded.to_ndarray()[:H]
        left.append(psnr(a[LEFT], b[LEFT]))
        right.append(psnr(a[RIGHT], b[RIGHT]))
    encoder.close()
    return float(np.mean(left)), float(np.mean(right)), size


@pytest.mark.parametrize(
    ("codec", "preset"),
    [("hevc", None), ("hevc", "ultrafast"), ("h264", None), ("h264", "ultrafast")],
)
def test_a_lower_offset_raises_the_regions_psnr(
    codec: str, preset: str | None, frames: list[av.VideoFrame]
) -> None:
    """On real encodes (the presets the client uses: superfast, and its faster one)."""
    plain_left, plain_right, _ = half_psnr(codec, frames, 0.0, preset=preset)
    finer_left, finer_right, _ = half_psnr(codec, frames, -0.3, preset=preset)
    # About +3 to +4 dB where the offset is lower, and the rest pays for it.
    assert finer_left > plain_left + 2.0
    assert finer_right < plain_right - 2.0


def test_roi_at_offset_zero_codes_like_the_encoder_without_roi(
    frames: list[av.VideoFrame],
) -> None:
    """The AQ that makes libx265 honour regions is too weak to change the stream alone."""
    plain = half_psnr("hevc", frames, None)
    zero = half_psnr("hevc", frames, 0.0)
    assert zero[0] == pytest.approx(plain[0], abs=0.3)
    assert zero[1] == pytest.approx(plain[1], abs=0.3)
    assert zero[2] == pytest.approx(plain[2], rel=0.05)


def test_roi_turns_on_the_aq_that_the_fast_presets_leave_off() -> None:
    def params(codec: str, preset: str | None, roi: bool) -> str:
        config = EncoderConfig(codec=codec, preset=preset, roi=roi)
        name = "libx265" if codec == "hevc" else "libx264"
        ctx = av.CodecContext.create(name, "w")
        return encoder_options(ctx, config)[f"{name[3:]}-params"]

    assert "aq-mode=1:aq-strength=0.01" in params("hevc", None, roi=True)  # superfast
    assert "aq-mode" not in params("hevc", None, roi=False)
    assert "aq-mode=1" in params("h264", "ultrafast", roi=True)
    # x264 superfast already has AQ (strength 1.0): left as it is.
    assert "aq-mode" not in params("h264", None, roi=True)
    assert "aq-mode" not in params("hevc", "veryfast", roi=True)


def test_libx265_takes_regions_that_start_after_frames_without_them(
    frames: list[av.VideoFrame],
) -> None:
    """x265 recycles pictures and gives a quant-offset buffer only to pictures that came
    with offsets: regions first set after some frames wrote through a null pointer. The
    encoder attaches regions to every frame, so this runs (a crash fails the session)."""
    encoder = get_encoder(EncoderConfig(codec="hevc", width=W, height=H, roi=True))
    assert isinstance(encoder, PyAVEncoder) and encoder.takes_regions
    for index, frame in enumerate(frames * 2):
        if index == 6:
            encoder.set_regions([RoiRegion(0, 0, 320, 180, -0.3), RoiRegion(0, 0, W, H, 0.1)])
        encoder.encode(frame, index * 3000)
    assert encoder.regions == (RoiRegion(0, 0, 320, 180, -0.3), RoiRegion(0, 0, W, H, 0.1))
    assert encoder.region_graphs_built == 2  # the empty set, then this one


def test_an_encoder_without_roi_ignores_regions() -> None:
    encoder = get_encoder(EncoderConfig(codec="h264", width=160, height=120))
    assert not encoder.takes_regions
    encoder.set_regions([RoiRegion(0, 0, 80, 60, -0.5)])  # no effect, no error
    assert isinstance(encoder, PyAVEncoder) and encoder.regions == ()


def test_the_tagger_adds_the_regions_in_order_and_reuses_its_graph() -> None:
    tagger = RegionTagger(64, 48, "yuv420p")
    frame = av.VideoFrame(64, 48, "yuv420p")
    assert read_regions(frame) == []
    assert read_regions(tagger.tag(frame)) == [(0, 0, 64, 48, 0.0)]  # never without
    tagger.set([RoiRegion(0, 0, 32, 48, -0.2), RoiRegion(0, 0, 64, 48, 0.1)])
    tagged = [tagger.tag(frame) for _ in range(3)]
    assert all(read_regions(t) == [(0, 0, 32, 48, -0.2), (0, 0, 64, 48, 0.1)] for t in tagged)
    assert tagger.graphs_built == 2
    tagger.set([RoiRegion(0, 0, 32, 48, -0.2), RoiRegion(0, 0, 64, 48, 0.1)])  # the same
    tagger.tag(frame)
    assert tagger.graphs_built == 2
    assert read_regions(frame) == []  # the caller's frame is left as it was


def test_regions_are_clipped_bounded_and_never_empty() -> None:
    assert clip_regions([], 64, 48) == (RoiRegion(0, 0, 64, 48, 0.0),)
    assert clip_regions(
        [RoiRegion(-8, -8, 80, 20, -2.0), RoiRegion(70, 0, 90, 10, 0.1)], 64, 48
    ) == (RoiRegion(0, 0, 64, 20, -1.0),)
    many = [RoiRegion(i, 0, i + 1, 1, 0.0) for i in range(60)]
    assert len(clip_regions(many, 64, 48)) == codec_roi.MAX_REGIONS


def test_an_encoder_without_roi_support_says_so_once(caplog: pytest.LogCaptureFixture) -> None:
    codec_roi._said_unsupported.discard("hevc_nvenc")
    with caplog.at_level(logging.WARNING, logger="shelf_stream.codec.roi"):
        codec_roi.say_unsupported_once("hevc_nvenc")
        codec_roi.say_unsupported_once("hevc_nvenc")
    said = [r for r in caplog.records if "hevc_nvenc" in r.getMessage()]
    assert len(said) == 1 and "coding uniformly" in said[0].getMessage()
    assert codec_roi.takes_regions("hevc_qsv") and not codec_roi.takes_regions("hevc_nvenc")
