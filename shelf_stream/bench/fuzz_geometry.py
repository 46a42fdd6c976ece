"""HEVC access units whose SPS lies about the picture size, for the geometry-lie case.

``resize_sps`` rewrites the size fields of a real access unit's SPS (the coded size and
the conformance window) and keeps every other bit, so a decoder that trusted it would
allocate pictures of the forged size for the real slice data behind it, which is what
an attacker does cheaply: the 7680x4320 access units of the outside attack were 10 KB
each. ``hevc_sps`` builds a minimal SPS from nothing, for tests.
"""

from __future__ import annotations

from shelf_stream.codec import nal
from shelf_stream.errors import CodecError
from shelf_stream.server.geometry import BitReader, rbsp, skip_hevc_profile_tier_level

_START_CODE = b"\x00\x00\x00\x01"
#: HEVC NAL unit headers (type << 1, then nuh_layer_id 0 and temporal id 1).
SPS_HEADER = bytes((nal.HEVC_SPS << 1, 1))
IDR_HEADER = bytes((19 << 1, 1))  # IDR_W_RADL
TRAIL_HEADER = bytes((1 << 1, 1))  # TRAIL_R: a P picture


class BitWriter:
    """Big-endian bits, then ``rbsp()`` with the trailing stop bit and alignment."""

    def __init__(self) -> None:
        self._value = 0
        self._size = 0

    def u(self, bits: int, value: int) -> None:
        self._value = (self._value << bits) | (value & ((1 << bits) - 1))
        self._size += bits

    def ue(self, value: int) -> None:
        code = value + 1
        length = code.bit_length()
        self.u(length - 1, 0)
        self.u(length, code)

    def rbsp(self) -> bytes:
        """The bits with rbsp_trailing_bits (a 1, then zeros to a byte boundary)."""
        self.u(1, 1)
        pad = -self._size % 8
        return (self._value << pad).to_bytes((self._size + pad) // 8, "big")


def emulation_prevention(payload: bytes) -> bytes:
    """Insert 0x03 after two zero bytes followed by a byte <= 3 (H.265 7.4.2)."""
    out = bytearray()
    zeros = 0
    for byte in payload:
        if zeros >= 2 and byte <= 3:
            out.append(3)
            zeros = 0
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(out)


def hevc_sps(width: int, height: int, *, crop: tuple[int, int, int, int] = (0, 0, 0, 0)) -> bytes:
    """A minimal Main-profile 4:2:0 SPS NAL unit (header included, no start code):
    ``width``x``height`` coded, cropped by ``crop`` (left, right, top, bottom, in
    chroma samples). Enough for the size check; no decoder would accept it."""
    bits = BitWriter()
    bits.u(4, 0)  # sps_video_parameter_set_id
    bits.u(3, 0)  # sps_max_sub_layers_minus1
    bits.u(1, 1)  # sps_temporal_id_nesting_flag
    bits.u(8, 1)  # profile space, tier, profile_idc 1 (Main)
    bits.u(32, 0x60000000)  # profile compatibility flags 1 and 2
    bits.u(48, 0)  # source flags and constraint flags
    bits.u(8, 93)  # general_level_idc (3.1)
    bits.ue(0)  # sps_seq_parameter_set_id
    bits.ue(1)  # chroma_format_idc: 4:2:0
    _size_fields(bits, width, height, crop)
    bits.ue(0)  # bit_depth_luma_minus8
    bits.ue(0)  # bit_depth_chroma_minus8
    return SPS_HEADER + emulation_prevention(bits.rbsp())


def _size_fields(bits: BitWriter, width: int, height: int, crop: tuple[int, int, int, int]) -> None:
    bits.ue(width)
    bits.ue(height)
    bits.u(1, int(any(crop)))  # conformance_window_flag
    if any(crop):
        for offset in crop:
            bits.ue(offset)


def resize_sps(
    access_unit: bytes,
    width: int,
    height: int,
    *,
    crop: tuple[int, int, int, int] = (0, 0, 0, 0),
) -> bytes:
    """``access_unit`` with its HEVC SPS declaring ``width``x``height`` (coded) and the
    conformance window ``crop``; every other NAL unit and bit is kept."""
    units = nal.split_nal_units(access_unit)
    if not any(nal.nal_type("hevc", unit) == nal.HEVC_SPS for unit in units):
        raise CodecError("the access unit has no SPS to resize")
    return b"".join(
        _START_CODE
        + (
            _resized(unit, width, height, crop)
            if nal.nal_type("hevc", unit) == nal.HEVC_SPS
            else unit
        )
        for unit in units
    )


def _resized(unit: bytes, width: int, height: int, crop: tuple[int, int, int, int]) -> bytes:
    payload = rbsp(unit[2:])
    reader = BitReader(payload)
    reader.skip(4)
    sub_layers = reader.u(3)
    reader.skip(1)
    skip_hevc_profile_tier_level(reader, sub_layers)
    reader.ue()  # sps_seq_parameter_set_id
    chroma_format = reader.ue()
    if chroma_format == 3:
        reader.skip(1)
    start = reader.position
    reader.ue()
    reader.ue()
    if reader.u(1):
        for _ in range(4):
            reader.ue()
    end = reader.position
    total = len(payload) * 8
    value = int.from_bytes(payload, "big")
    rest_bits = total - end
    rest = value & ((1 << rest_bits) - 1)
    # Drop the old trailing bits (the last 1 and the zeros after it): new ones follow.
    trailing = (rest & -rest).bit_length()
    rest, rest_bits = rest >> trailing, rest_bits - trailing
    bits = BitWriter()
    bits.u(start, value >> (total - start))
    _size_fields(bits, width, height, crop)
    bits.u(rest_bits, rest)
    return unit[:2] + emulation_prevention(bits.rbsp())


def access_unit(*units: bytes) -> bytes:
    """NAL units (headers included) as one Annex-B access unit."""
    return b"".join(_START_CODE + unit for unit in units)
