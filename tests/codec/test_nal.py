"""Annex-B helpers on literal bytes and on random bytes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shelf_stream.codec import nal
from shelf_stream.errors import CodecError


def hevc_nal(nal_type: int, payload: bytes = b"\xaf\x01") -> bytes:
    """A 2-byte HEVC header (layer 0, temporal id 0 -> tid_plus1 = 1) and a payload."""
    return bytes([nal_type << 1, 0x01]) + payload


def h264_nal(nal_type: int, payload: bytes = b"\x88\x80", ref_idc: int = 3) -> bytes:
    return bytes([(ref_idc << 5) | nal_type]) + payload


SC4 = b"\x00\x00\x00\x01"
SC3 = b"\x00\x00\x01"

HEVC_IDR_AU = (
    SC4 + hevc_nal(nal.HEVC_VPS)
    + SC4 + hevc_nal(nal.HEVC_SPS)
    + SC4 + hevc_nal(nal.HEVC_PPS)
    + SC3 + hevc_nal(19, b"\xaf\x00\x00\x03\x01")  # IDR_W_RADL, emulation-prevented payload
)  # fmt: skip
HEVC_P_AU = SC4 + hevc_nal(1)  # TRAIL_R
H264_IDR_AU = SC4 + h264_nal(nal.H264_SPS) + SC4 + h264_nal(nal.H264_PPS) + SC3 + h264_nal(5)
H264_P_AU = SC4 + h264_nal(1, ref_idc=2)


class TestSplit:
    def test_three_and_four_byte_start_codes(self) -> None:
        units = nal.split_nal_units(HEVC_IDR_AU)
        assert units == [
            hevc_nal(nal.HEVC_VPS),
            hevc_nal(nal.HEVC_SPS),
            hevc_nal(nal.HEVC_PPS),
            hevc_nal(19, b"\xaf\x00\x00\x03\x01"),
        ]

    def test_leading_bytes_before_first_start_code_are_ignored(self) -> None:
        assert nal.split_nal_units(b"\x12\x34" + SC3 + b"\x40\x01") == [b"\x40\x01"]

    def test_trailing_zero_bytes_are_stripped(self) -> None:
        assert nal.split_nal_units(SC3 + b"\x26\x01\xaa\x00\x00") == [b"\x26\x01\xaa"]

    def test_no_start_code_gives_nothing(self) -> None:
        assert nal.split_nal_units(b"\x26\x01\xaa") == []
        assert nal.split_nal_units(b"") == []

    def test_empty_nal_units_are_reported(self) -> None:
        assert nal.split_nal_units(SC3 + SC3 + b"\x26\x01") == [b"", b"\x26\x01"]


class TestTypes:
    def test_hevc_type_is_six_bits_after_forbidden_bit(self) -> None:
        assert nal.nal_type("hevc", b"\x40\x01") == nal.HEVC_VPS
        assert nal.nal_type("hevc", b"\x26\x01") == 19
        assert nal.nal_type("hevc", b"\x7e\x01") == 63

    def test_h264_type_is_low_five_bits(self) -> None:
        assert nal.nal_type("h264", b"\x67") == nal.H264_SPS
        assert nal.nal_type("h264", b"\x65") == nal.H264_IDR
        assert nal.nal_type("h264", b"\x41") == 1

    def test_types_of_an_access_unit(self) -> None:
        assert nal.nal_types("hevc", HEVC_IDR_AU) == [32, 33, 34, 19]
        assert nal.nal_types("h264", H264_IDR_AU) == [7, 8, 5]

    def test_unknown_codec_is_a_codec_error(self) -> None:
        with pytest.raises(CodecError, match="jpeg_zlib"):
            nal.nal_types("jpeg_zlib", HEVC_IDR_AU)


class TestKeyframe:
    @pytest.mark.parametrize("irap", range(16, 22))
    def test_every_hevc_irap_type_is_a_keyframe(self, irap: int) -> None:
        assert nal.is_keyframe("hevc", SC4 + hevc_nal(irap))

    @pytest.mark.parametrize("not_irap", [0, 1, 9, 15, 22, 32, 33, 34, 39])
    def test_other_hevc_types_are_not(self, not_irap: int) -> None:
        assert not nal.is_keyframe("hevc", SC4 + hevc_nal(not_irap))

    def test_literal_access_units(self) -> None:
        assert nal.is_keyframe("hevc", HEVC_IDR_AU)
        assert not nal.is_keyframe("hevc", HEVC_P_AU)
        assert nal.is_keyframe("h264", H264_IDR_AU)
        assert not nal.is_keyframe("h264", H264_P_AU)

    def test_parameter_sets(self) -> None:
        assert nal.has_parameter_sets("hevc", HEVC_IDR_AU)
        assert not nal.has_parameter_sets("hevc", SC4 + hevc_nal(19))
        assert nal.has_parameter_sets("h264", H264_IDR_AU)
        assert not nal.has_parameter_sets("h264", H264_P_AU)

    def test_garbage_is_not_a_keyframe(self) -> None:
        assert not nal.is_keyframe("hevc", b"")
        assert not nal.is_keyframe("hevc", b"\x26\x01" * 10)  # IDR header, no start code


class TestValidate:
    def test_valid_access_units_return_their_nal_units(self) -> None:
        assert len(nal.validate_access_unit("hevc", HEVC_IDR_AU)) == 4
        assert len(nal.validate_access_unit("hevc", HEVC_P_AU)) == 1
        assert len(nal.validate_access_unit("h264", H264_IDR_AU)) == 3

    def test_leading_zero_bytes_are_allowed(self) -> None:
        assert nal.validate_access_unit("hevc", b"\x00\x00" + HEVC_P_AU)

    @pytest.mark.parametrize(
        ("codec", "data", "message"),
        [
            ("hevc", b"", "empty"),
            ("hevc", hevc_nal(1), "start code"),
            ("hevc", b"\x00\x01" + hevc_nal(1), "start code"),
            ("hevc", b"\xff" + HEVC_P_AU, "start code"),
            ("hevc", SC4 + SC3 + hevc_nal(1), "NAL unit 0 is empty"),
            ("hevc", SC4 + b"\x82\x01\xaa", "forbidden_zero_bit"),
            ("hevc", SC4 + b"\x02", "2-byte header"),
            ("hevc", SC4 + b"\x02\x00\xaa", "nuh_temporal_id_plus1"),
            ("hevc", SC4 + hevc_nal(nal.HEVC_VPS) + SC4 + hevc_nal(nal.HEVC_SPS), "no picture"),
            ("h264", SC4 + b"\xe5\x88", "forbidden_zero_bit"),
            ("h264", SC4 + h264_nal(nal.H264_SPS), "no picture"),
        ],
    )
    def test_malformed_access_units(self, codec: str, data: bytes, message: str) -> None:
        with pytest.raises(CodecError, match=message):
            nal.validate_access_unit(codec, data)


_annex_b_like = st.lists(
    st.tuples(st.sampled_from([SC3, SC4, b"", b"\x00"]), st.binary(max_size=12)),
    max_size=6,
).map(lambda parts: b"".join(sc + body for sc, body in parts))


@settings(max_examples=300, deadline=None)
@given(codec=st.sampled_from(nal.ANNEX_B_CODECS), data=st.binary(max_size=64) | _annex_b_like)
def test_random_bytes_never_raise_anything_but_codec_error(codec: str, data: bytes) -> None:
    units = nal.split_nal_units(data)
    assert all(isinstance(u, bytes) for u in units)
    assert isinstance(nal.is_keyframe(codec, data), bool)
    assert isinstance(nal.has_parameter_sets(codec, data), bool)
    try:
        validated = nal.validate_access_unit(codec, data)
    except CodecError:
        return
    # Whatever passes validation has a start code and non-empty, well-formed headers.
    assert validated == units
    assert all(u and not u[0] & 0x80 for u in validated)
