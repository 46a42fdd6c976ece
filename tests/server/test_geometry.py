"""The SPS size check: real encoders' SPS, forged ones, and arbitrary bytes."""

from __future__ import annotations

import contextlib

import av
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shelf_stream.bench.fuzz_geometry import (
    IDR_HEADER,
    access_unit,
    hevc_sps,
    resize_sps,
)
from shelf_stream.codec import EncoderConfig, get_encoder, nal
from shelf_stream.codec.pyav import PyAVDecoder
from shelf_stream.errors import CodecError
from shelf_stream.server.geometry import PictureBudget, SpsSize, access_unit_sps, parse_sps

SLICE = IDR_HEADER + b"\xaf\x01"


def keyframe(codec: str, width: int, height: int) -> bytes:
    config = EncoderConfig(
        codec=codec, width=width, height=height, fps=15, bitrate_kbps=300, threads=1
    )
    encoder = get_encoder(config)
    source = av.open(f"testsrc2=size={width}x{height}:rate=15", format="lavfi")
    try:
        return encoder.encode(next(source.decode(video=0)), 0, keyframe=True).data
    finally:
        source.close()
        encoder.close()


# (size, coded size the encoder pads to): 426 and 322 are not whole coding blocks.
SIZES = [(320, 240), (426, 240), (322, 242), (64, 64), (1280, 720)]


@pytest.mark.parametrize("codec", ["hevc", "h264"])
@pytest.mark.parametrize(("width", "height"), SIZES)
def test_the_sps_size_is_what_the_decoder_outputs(codec: str, width: int, height: int) -> None:
    unit = keyframe(codec, width, height)
    (size,) = access_unit_sps(codec, unit)
    (picture,) = PyAVDecoder(codec).decode(unit, 0)
    assert (size.width, size.height) == (picture.width, picture.height) == (width, height)
    assert size.coded_width >= width and size.coded_height >= height
    assert PictureBudget(width, height).admits_sps(size)
    assert not PictureBudget(width - 2, height).admits_sps(size)


def test_a_resized_sps_keeps_every_other_bit() -> None:
    unit = keyframe("hevc", 320, 240)
    same = resize_sps(unit, 320, 240)
    sps = [u for u in nal.split_nal_units(unit) if nal.nal_type("hevc", u) == nal.HEVC_SPS]
    assert [u for u in nal.split_nal_units(same) if u in sps] == sps
    lie = resize_sps(unit, 7680, 4320)
    assert access_unit_sps("hevc", lie) == [SpsSize(7680, 4320, 7680, 4320)]
    # The forged size is what an unguarded decoder allocates and outputs.
    (picture,) = PyAVDecoder("hevc").decode(lie, 0)
    assert (picture.width, picture.height) == (7680, 4320)


def test_a_huge_coded_picture_cropped_small_is_over_budget() -> None:
    sps = hevc_sps(7680, 4320, crop=(0, (7680 - 64) // 2, 0, (4320 - 64) // 2))
    (size,) = access_unit_sps("hevc", access_unit(sps, SLICE))
    assert (size.width, size.height) == (64, 64)
    assert not PictureBudget(64, 64).admits_sps(size)
    assert PictureBudget(64, 64).admits(size.width, size.height)  # the picture alone fits


def test_coded_sizes_may_exceed_the_budget_by_the_block_alignment_only() -> None:
    budget = PictureBudget(322, 242)
    assert budget.admits_sps(SpsSize(384, 256, 322, 242))
    assert not budget.admits_sps(SpsSize(448, 256, 322, 242))


def test_smaller_pictures_than_announced_fit() -> None:
    budget = PictureBudget(640, 480)
    assert budget.admits(320, 240) and budget.admits_sps(SpsSize(320, 240, 320, 240))
    assert not budget.admits(642, 480) and not budget.admits(0, 480)


def test_only_parameter_sets_before_the_slices_are_read() -> None:
    # An SPS-looking NAL unit after the slice is slice data, not a parameter set.
    assert access_unit_sps("hevc", access_unit(SLICE, hevc_sps(7680, 4320))) == []
    assert access_unit_sps("hevc", access_unit(hevc_sps(64, 48), SLICE)) == [
        SpsSize(64, 48, 64, 48)
    ]


@pytest.mark.parametrize(
    "sps",
    [
        hevc_sps(64, 64)[:6],  # cut inside the profile
        hevc_sps(64, 64)[:2] + b"\xff" * 40,  # a sub-layer count of 7
        hevc_sps(64, 64)[:16] + b"\x00" * 10,  # an Exp-Golomb code without end
        hevc_sps(64, 64, crop=(40, 0, 0, 0)),  # cropped to nothing
    ],
    ids=["truncated", "sub_layers", "endless_golomb", "empty_picture"],
)
def test_an_unreadable_sps_is_a_codec_error(sps: bytes) -> None:
    with pytest.raises(CodecError):
        parse_sps("hevc", sps)


@settings(max_examples=300, deadline=None)
@given(codec=st.sampled_from(["hevc", "h264"]), data=st.binary(max_size=80))
def test_arbitrary_bytes_raise_nothing_but_a_codec_error(codec: str, data: bytes) -> None:
    header = bytes((nal.HEVC_SPS << 1, 1)) if codec == "hevc" else bytes((nal.H264_SPS,))
    for unit in (data, header + data):
        with contextlib.suppress(CodecError):
            access_unit_sps(codec, b"\x00\x00\x01" + unit)
