"""Tiny Annex-B helpers: split access units into NAL units and classify them.

The server must not trust a client's keyframe flag (a wrong flag would start a fresh
decoder on a P-frame and decode garbage until the next real keyframe), so it reads the
NAL unit types itself. Everything here is pure Python on ``bytes``; on arbitrary input
the only exception that can escape is ``CodecError``.
"""

from __future__ import annotations

from shelf_stream.errors import CodecError

# HEVC (ITU-T H.265, table 7-1): 6-bit type in bits 1..6 of the first header byte.
HEVC_VPS = 32
HEVC_SPS = 33
HEVC_PPS = 34
HEVC_AUD = 35
#: IRAP pictures (BLA_W_LP .. CRA_NUT); a decoder can start at any of them.
HEVC_IRAP_TYPES = frozenset(range(16, 22))
#: Types 0..31 are VCL (slice data); 22..31 are reserved VCL types.
_HEVC_MAX_VCL = 31

# H.264 (ITU-T H.264, table 7-1): 5-bit type in the low bits of the header byte.
H264_IDR = 5
H264_SEI = 6
H264_SPS = 7
H264_PPS = 8
H264_AUD = 9
_H264_VCL_TYPES = frozenset(range(1, 6))

#: Codecs whose access units are Annex-B byte streams.
ANNEX_B_CODECS = ("hevc", "h264")

_START_CODE = b"\x00\x00\x01"


def _check_codec(codec: str) -> None:
    if codec not in ANNEX_B_CODECS:
        raise CodecError(
            f"no NAL unit parser for codec {codec!r}; expected one of {ANNEX_B_CODECS}"
        )


def split_nal_units(data: bytes) -> list[bytes]:
    """Return the NAL units of an Annex-B byte string, without their start codes.

    Both 3-byte (``00 00 01``) and 4-byte (``00 00 00 01``) start codes are accepted;
    the extra zero of a 4-byte code (and any trailing_zero_8bits) is stripped from the
    end of the previous NAL unit. Bytes before the first start code are ignored, so
    input without any start code gives ``[]``. Empty NAL units are kept (as ``b""``)
    so that ``validate_access_unit`` can report them.
    """
    units: list[bytes] = []
    start = data.find(_START_CODE)
    while start != -1:
        begin = start + len(_START_CODE)
        nxt = data.find(_START_CODE, begin)
        end = len(data) if nxt == -1 else nxt
        # A NAL unit never ends in 0x00 (rbsp_trailing_bits end in a 1 bit), so zeros
        # here belong to the next start code or are trailing_zero_8bits.
        units.append(data[begin:end].rstrip(b"\x00"))
        start = nxt
    return units


def nal_type(codec: str, nal: bytes) -> int:
    """The nal_unit_type of one NAL unit (without start code); -1 if it is empty."""
    _check_codec(codec)
    if not nal:
        return -1
    if codec == "hevc":
        return (nal[0] >> 1) & 0x3F
    return nal[0] & 0x1F


def nal_types(codec: str, data: bytes) -> list[int]:
    """The NAL unit types of every NAL unit in an access unit, in order."""
    _check_codec(codec)
    return [nal_type(codec, nal) for nal in split_nal_units(data)]


def is_keyframe(codec: str, data: bytes) -> bool:
    """True if the access unit holds a picture a fresh decoder can start from.

    HEVC: any IRAP NAL unit (types 16..21). H.264: an IDR slice (type 5). Never raises
    on arbitrary bytes (malformed input is simply not a keyframe).
    """
    types = nal_types(codec, data)
    if codec == "hevc":
        return any(t in HEVC_IRAP_TYPES for t in types)
    return H264_IDR in types


def has_parameter_sets(codec: str, data: bytes) -> bool:
    """True if the access unit carries its parameter sets in band (VPS+SPS+PPS / SPS+PPS)."""
    types = set(nal_types(codec, data))
    if codec == "hevc":
        return {HEVC_VPS, HEVC_SPS, HEVC_PPS} <= types
    return {H264_SPS, H264_PPS} <= types


def _first_start_code_at_beginning(data: bytes) -> bool:
    # leading_zero_8bits may precede the first start code (Annex B.2).
    stripped = data.lstrip(b"\x00")
    return len(data) - len(stripped) >= 2 and stripped[:1] == b"\x01"


def _validate_header(codec: str, index: int, nal: bytes) -> None:
    if not nal:
        raise CodecError(f"{codec} access unit: NAL unit {index} is empty")
    if nal[0] & 0x80:
        raise CodecError(f"{codec} access unit: NAL unit {index} has forbidden_zero_bit set")
    if codec == "hevc":
        if len(nal) < 2:
            raise CodecError(
                f"hevc access unit: NAL unit {index} is shorter than its 2-byte header"
            )
        if nal[1] & 0x07 == 0:
            raise CodecError(f"hevc access unit: NAL unit {index} has nuh_temporal_id_plus1 = 0")


def _is_vcl(codec: str, nal: bytes) -> bool:
    t = nal_type(codec, nal)
    if codec == "hevc":
        return 0 <= t <= _HEVC_MAX_VCL
    return t in _H264_VCL_TYPES


def validate_access_unit(codec: str, data: bytes) -> list[bytes]:
    """Check that ``data`` looks like one Annex-B access unit; return its NAL units.

    This is a cheap sanity check before the decoder, not a bitstream validator: it
    catches empty input, missing start codes, empty NAL units, a set forbidden_zero_bit,
    truncated HEVC headers and access units without any picture data. Raises
    ``CodecError`` (and nothing else) with a message saying what is wrong.
    """
    _check_codec(codec)
    if not data:
        raise CodecError(f"{codec} access unit is empty")
    if not _first_start_code_at_beginning(data):
        raise CodecError(
            f"{codec} access unit does not start with an Annex-B start code "
            f"(first bytes: {data[:8].hex(' ')})"
        )
    units = split_nal_units(data)
    for index, nal in enumerate(units):
        _validate_header(codec, index, nal)
    if not any(_is_vcl(codec, nal) for nal in units):
        raise CodecError(
            f"{codec} access unit has no picture data (NAL types {nal_types(codec, data)})"
        )
    return units
