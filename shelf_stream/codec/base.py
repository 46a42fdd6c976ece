"""Codec interfaces: one abstract base per kind, chosen by name through ``codec.get_*``.

Frames travel as ``av.VideoFrame`` (yuv420p for the video codecs) so that colour
conversion and scaling stay inside libswscale, which releases the GIL.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import av

#: Every stream's pts are in this time base (the 90 kHz RTP video clock), whatever its
#: frame rate, so that frame rate changes never change the time base.
TIME_BASE = Fraction(1, 90_000)

#: Codec names accepted on the wire and on the command line.
VIDEO_CODECS = ("hevc", "h264")


@dataclass(frozen=True, slots=True, kw_only=True)
class EncoderConfig:
    """Settings of one encoder.

    ``codec`` is ``hevc`` (libx265), ``h264`` (libx264) or ``jpeg_zlib`` (the seed
    system's baseline, for benchmarks). ``encoder`` names the libavcodec encoder
    (``hevc_nvenc``, ``hevc_videotoolbox``, ...); ``None`` or ``"auto"``: the first
    hardware encoder that opens here, else the software one (``codec.auto``). ``preset``
    ``None`` takes the codec's measured real-time default. ``threads`` is the encoder's
    thread count (libx265: its worker pool); 0 takes the encoder's measured default.
    """

    codec: str = "hevc"
    encoder: str | None = None
    width: int = 640
    height: int = 480
    fps: float = 30.0
    bitrate_kbps: int = 1500
    keyframe_interval_s: float = 2.0
    preset: str | None = None
    threads: int = 0  # 0: the encoder's default (``codec.pyav``)
    jpeg_quality: int = 95  # jpeg_zlib only; 95 is OpenCV's default
    # Regions of interest (``Encoder.set_regions``): libx264/libx265 are then opened with
    # the adaptive quantisation that makes them honour the regions (``codec.pyav``).
    roi: bool = False


@dataclass(frozen=True, slots=True)
class RoiRegion:
    """A rectangle of the encoded picture and its quantiser offset.

    Pixels of the encoder's picture, ``right_px``/``bottom_px`` exclusive. ``qoffset`` is
    FFmpeg's ``AVRegionOfInterest.qoffset``: -1 (best) .. +1 (worst), 0 leaves the
    quantiser alone; libx264 and libx265 scale it by their QP range (51 at 8 bits), so
    -0.1 is about 5 QP finer. Where regions overlap, the first in a list applies.
    """

    left_px: int
    top_px: int
    right_px: int
    bottom_px: int
    qoffset: float

    @property
    def empty(self) -> bool:
        return self.right_px <= self.left_px or self.bottom_px <= self.top_px


@dataclass(frozen=True, slots=True)
class EncodedFrame:
    """One access unit (Annex-B bytes) for one input frame."""

    pts: int
    keyframe: bool
    data: bytes


class Encoder(ABC):
    """Turns frames into access units, one out per frame in (zero latency, no B-frames)."""

    config: EncoderConfig

    @abstractmethod
    def encode(self, frame: av.VideoFrame, pts: int, *, keyframe: bool = False) -> EncodedFrame:
        """Encode ``frame`` (any pixel format and size; converted as needed) at ``pts``.

        ``keyframe=True`` forces an IDR frame with in-band parameter sets.
        Raises ``CodecError`` on failure.
        """

    def set_bitrate(self, kbps: int) -> None:
        """Change the target bitrate of a running encoder (see each implementation for how)."""
        raise NotImplementedError(f"{type(self).__name__} cannot change its bitrate")

    @property
    def takes_regions(self) -> bool:
        """Whether ``set_regions`` changes what this encoder does (``config.roi`` and an
        encoder whose FFmpeg wrapper reads regions of interest)."""
        return False

    def set_regions(self, regions: Sequence[RoiRegion]) -> None:
        """Code the following frames with these regions (empty: uniformly).

        Encoders that cannot (``takes_regions`` False) code uniformly and ignore them.
        """
        return None  # the default: uniform coding

    @abstractmethod
    def close(self) -> None:
        """Release the encoder; further calls are errors."""


class Decoder(ABC):
    """A persistent decoder for one stream."""

    @abstractmethod
    def decode(self, data: bytes, pts: int) -> list[av.VideoFrame]:
        """Decode one access unit; returns the frames it completed (pts set).

        Raises ``CodecError`` if the decoder reports an error.
        """

    def flush(self) -> list[av.VideoFrame]:
        """End of stream: return the frames still buffered (none for zero-delay decoders).

        The decoder stays open; decoding may resume from the next keyframe.
        """
        return []

    @abstractmethod
    def close(self) -> None:
        """Release the decoder."""
