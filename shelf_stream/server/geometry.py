"""How large a stream's pictures may be, checked on the SPS before anything is decoded.

A Hello announces the stream's size; a client may send smaller pictures (the client's
quality ladder shrinks the picture on a slow link, in the same stream) but never larger
ones. The decoder allocates its picture buffers from the sequence parameter set (SPS),
so the SPS is read here, on the compressed bytes, before the access unit reaches the
decoder: a Hello of 64x64 followed by 7680x4320 access units never allocates a 7680x4320
frame. The decoded picture is checked again after decoding (``PictureBudget.admits``),
so nothing larger than announced is ever letterboxed or inferred, whatever the parser
missed.

Two sizes are read from each SPS: the coded size (what the decoder allocates: a whole
number of coding blocks) and the cropped size (the conformance window / frame
cropping: what comes out). The cropped size must fit the Hello's; the coded size may
exceed it only by the block alignment (``CODED_ALIGNMENT``), so a huge coded picture
cropped down to a small window is refused too.

Pure Python on ``bytes``; on arbitrary input the only exception that escapes is
``CodecError``.
"""

from __future__ import annotations

from dataclasses import dataclass

from shelf_stream.codec import nal
from shelf_stream.errors import CodecError

#: HEVC codes pictures in units of the minimum coding block (8 to 64 luma samples);
#: H.264 in 16x16 macroblocks (32 rows for field coding). 64 covers every encoder.
CODED_ALIGNMENT = 64
#: An Exp-Golomb code with more leading zeros than this is not a valid SPS field.
_MAX_GOLOMB_ZEROS = 31
#: H.264 profiles whose SPS carries chroma format, bit depths and scaling lists.
_H264_HIGH_PROFILES = frozenset((100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135))
_START_CODE = b"\x00\x00\x01"


@dataclass(frozen=True, slots=True)
class SpsSize:
    """The picture size one SPS declares, in luma samples."""

    coded_width: int
    coded_height: int
    width: int  # after the conformance window (HEVC) or frame cropping (H.264)
    height: int

    def __str__(self) -> str:
        if (self.coded_width, self.coded_height) == (self.width, self.height):
            return f"{self.width}x{self.height}"
        return f"{self.width}x{self.height} (coded {self.coded_width}x{self.coded_height})"


@dataclass(frozen=True, slots=True)
class PictureBudget:
    """The largest picture a stream may send: the size its Hello announced.

    Immutable, so the event loop (SPS checks) and the decoder thread (decoded
    pictures) can both hold it.
    """

    width: int
    height: int

    def __str__(self) -> str:
        return f"{self.width}x{self.height}"

    def admits(self, width: int, height: int) -> bool:
        """A decoded (cropped) picture of this size may be inferred."""
        return 0 < width <= self.width and 0 < height <= self.height

    def admits_sps(self, size: SpsSize) -> bool:
        """The decoder may allocate what this SPS asks for."""
        return self.admits(size.width, size.height) and (
            size.coded_width <= _align(self.width) and size.coded_height <= _align(self.height)
        )


def _align(value: int) -> int:
    return -(-value // CODED_ALIGNMENT) * CODED_ALIGNMENT


def access_unit_sps(codec: str, data: bytes) -> list[SpsSize]:
    """The sizes of the SPS NAL units in an access unit (usually none or one).

    Only the parameter sets before the first slice are looked at, without copying the
    slice data. ``CodecError`` if an SPS cannot be read (truncated, absurd fields).
    """
    sps_type = nal.HEVC_SPS if codec == "hevc" else nal.H264_SPS
    sizes = []
    for unit_type, unit in _leading_nal_units(codec, data):
        if unit_type == sps_type:
            sizes.append(parse_sps(codec, unit))
    return sizes


def _leading_nal_units(codec: str, data: bytes) -> list[tuple[int, bytes]]:
    """(type, NAL unit) for the NAL units before the first VCL one."""
    units = []
    start = data.find(_START_CODE)
    while start != -1 and start + 3 < len(data):
        begin = start + 3
        unit_type = nal.nal_type(codec, data[begin : begin + 1])
        if _is_vcl(codec, unit_type):
            break
        end = data.find(_START_CODE, begin)
        units.append((unit_type, data[begin : len(data) if end == -1 else end].rstrip(b"\x00")))
        start = end
    return units


def _is_vcl(codec: str, unit_type: int) -> bool:
    if codec == "hevc":
        return 0 <= unit_type <= 31
    return 1 <= unit_type <= 5


def parse_sps(codec: str, unit: bytes) -> SpsSize:
    """The picture size declared by one SPS NAL unit (with its header, no start code)."""
    if codec == "hevc":
        return _hevc_sps(BitReader(rbsp(unit[2:])))
    if codec == "h264":
        return _h264_sps(BitReader(rbsp(unit[1:])))
    raise CodecError(f"no SPS parser for codec {codec!r}")


def rbsp(payload: bytes) -> bytes:
    """Remove the emulation prevention bytes (00 00 03 → 00 00)."""
    return payload.replace(b"\x00\x00\x03", b"\x00\x00")


class BitReader:
    """A big-endian bit reader over an RBSP (``rbsp``); reading past the end is a
    ``CodecError``. ``position`` is the next bit's offset."""

    def __init__(self, data: bytes) -> None:
        self._value = int.from_bytes(data, "big")
        self._size = len(data) * 8
        self.position = 0

    def u(self, bits: int) -> int:
        if self.position + bits > self._size:
            raise CodecError(f"SPS is truncated (needed bit {self.position + bits})")
        shift = self._size - self.position - bits
        self.position += bits
        return (self._value >> shift) & ((1 << bits) - 1)

    def skip(self, bits: int) -> None:
        self.u(bits)

    def ue(self) -> int:
        zeros = 0
        while self.u(1) == 0:
            zeros += 1
            if zeros > _MAX_GOLOMB_ZEROS:
                raise CodecError("SPS has an Exp-Golomb code longer than 32 bits")
        return (1 << zeros) - 1 + self.u(zeros)

    def se(self) -> int:
        code = self.ue()
        return (code + 1) // 2 if code % 2 else -(code // 2)


def _bounded(value: int, maximum: int, what: str) -> int:
    if value > maximum:
        raise CodecError(f"SPS {what} is {value}; at most {maximum} is valid")
    return value


def _hevc_sps(bits: BitReader) -> SpsSize:
    """ITU-T H.265 7.3.2.2, up to the conformance window."""
    bits.skip(4)  # sps_video_parameter_set_id
    sub_layers = _bounded(bits.u(3), 6, "sps_max_sub_layers_minus1")
    bits.skip(1)  # sps_temporal_id_nesting_flag
    skip_hevc_profile_tier_level(bits, sub_layers)
    _bounded(bits.ue(), 15, "sps_seq_parameter_set_id")
    chroma_format = _bounded(bits.ue(), 3, "chroma_format_idc")
    separate_planes = chroma_format == 3 and bits.u(1) == 1
    coded_width = bits.ue()
    coded_height = bits.ue()
    left = right = top = bottom = 0
    if bits.u(1):  # conformance_window_flag
        left, right, top, bottom = bits.ue(), bits.ue(), bits.ue(), bits.ue()
    sub_width, sub_height = _chroma_subsampling(0 if separate_planes else chroma_format)
    return _cropped(
        coded_width,
        coded_height,
        sub_width * (left + right),
        sub_height * (top + bottom),
    )


def skip_hevc_profile_tier_level(bits: BitReader, sub_layers: int) -> None:
    """Skip profile_tier_level(1, sps_max_sub_layers_minus1), checking its length."""
    bits.skip(88)  # general profile space, tier, idc, compatibility and constraint flags
    bits.skip(8)  # general_level_idc
    present = [(bits.u(1), bits.u(1)) for _ in range(sub_layers)]
    if sub_layers > 0:
        bits.skip(2 * (8 - sub_layers))  # reserved_zero_2bits
    for profile_present, level_present in present:
        bits.skip(88 * profile_present + 8 * level_present)


def _chroma_subsampling(chroma_array_type: int) -> tuple[int, int]:
    """(SubWidthC, SubHeightC) as the cropping units use them (1, 1 for monochrome)."""
    return {0: (1, 1), 1: (2, 2), 2: (2, 1), 3: (1, 1)}[chroma_array_type]


def _h264_sps(bits: BitReader) -> SpsSize:
    """ITU-T H.264 7.3.2.1.1, up to the frame cropping."""
    profile_idc = bits.u(8)
    bits.skip(16)  # constraint flags, level_idc
    _bounded(bits.ue(), 31, "seq_parameter_set_id")
    chroma_format = 1
    separate_planes = False
    if profile_idc in _H264_HIGH_PROFILES:
        chroma_format = _bounded(bits.ue(), 3, "chroma_format_idc")
        if chroma_format == 3:
            separate_planes = bits.u(1) == 1
        _bounded(bits.ue(), 6, "bit_depth_luma_minus8")
        _bounded(bits.ue(), 6, "bit_depth_chroma_minus8")
        bits.skip(1)  # qpprime_y_zero_transform_bypass_flag
        if bits.u(1):  # seq_scaling_matrix_present_flag
            for index in range(8 if chroma_format != 3 else 12):
                if bits.u(1):
                    _h264_scaling_list(bits, 16 if index < 6 else 64)
    _bounded(bits.ue(), 12, "log2_max_frame_num_minus4")
    poc_type = _bounded(bits.ue(), 2, "pic_order_cnt_type")
    if poc_type == 0:
        _bounded(bits.ue(), 12, "log2_max_pic_order_cnt_lsb_minus4")
    elif poc_type == 1:
        bits.skip(1)  # delta_pic_order_always_zero_flag
        bits.se()  # offset_for_non_ref_pic
        bits.se()  # offset_for_top_to_bottom_field
        for _ in range(_bounded(bits.ue(), 255, "num_ref_frames_in_pic_order_cnt_cycle")):
            bits.se()
    bits.ue()  # max_num_ref_frames
    bits.skip(1)  # gaps_in_frame_num_value_allowed_flag
    width_mbs = bits.ue() + 1
    height_map_units = bits.ue() + 1
    frame_mbs_only = bits.u(1)
    if not frame_mbs_only:
        bits.skip(1)  # mb_adaptive_frame_field_flag
    bits.skip(1)  # direct_8x8_inference_flag
    left = right = top = bottom = 0
    if bits.u(1):  # frame_cropping_flag
        left, right, top, bottom = bits.ue(), bits.ue(), bits.ue(), bits.ue()
    chroma_array_type = 0 if separate_planes else chroma_format
    crop_x, crop_y = _chroma_subsampling(chroma_array_type)
    crop_y *= 2 - frame_mbs_only
    return _cropped(
        width_mbs * 16,
        (2 - frame_mbs_only) * height_map_units * 16,
        crop_x * (left + right),
        crop_y * (top + bottom),
    )


def _h264_scaling_list(bits: BitReader, size: int) -> None:
    last = next_scale = 8
    for _ in range(size):
        if next_scale:
            next_scale = (last + bits.se() + 256) % 256
        last = next_scale or last


def _cropped(coded_width: int, coded_height: int, crop_x: int, crop_y: int) -> SpsSize:
    width, height = coded_width - crop_x, coded_height - crop_y
    if coded_width <= 0 or coded_height <= 0 or width <= 0 or height <= 0:
        raise CodecError(
            f"SPS declares an empty picture ({coded_width}x{coded_height} "
            f"cropped by {crop_x}x{crop_y})"
        )
    return SpsSize(coded_width, coded_height, width, height)
