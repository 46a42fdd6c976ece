"""Regions of interest on frames for the encoder: FFmpeg's ROI side data through ``addroi``.

FFmpeg's encoders take per-frame quantiser offsets as ``AV_FRAME_DATA_REGIONS_OF_INTEREST``
side data (``AVRegionOfInterest``: a rectangle and a ``qoffset`` in -1..+1). PyAV 18 reads
frame side data but cannot add any, so the regions are added the way FFmpeg's own tools
add them: a filter graph ``buffer -> addroi x N -> buffersink`` that the frame passes
through (metadata only: the pictures are not copied). ``addroi`` evaluates its rectangle
once, when the graph is configured, so another set of regions is another graph (about 1-2
ms for ten regions on the 2-core box); the same set reuses the graph.

Which encoders read the side data (FFmpeg 8): libx264 (``setup_roi``; only with adaptive
quantisation on), libx265 (``libx265_encode_set_roi``; only with ``aq-mode`` > 0 and
``aq-strength`` > 0: x265 turns AQ off when its strength is 0 and cu-tree is off, as
superfast with zerolatency has it, and the regions are then ignored without a word),
Quick Sync's h264_qsv / hevc_qsv (``set_roi_encode_ctrl``) and VA-API's h264_vaapi /
hevc_vaapi (``vaapi_encode_issue``, where the driver has ROI). FFmpeg's NVENC, VideoToolbox,
AMF and MediaCodec wrappers do not read it: those code uniformly (said once per encoder).

libx265 needs the side data on every frame once it is on: x265 allocates a picture's
quant-offset buffer only for pictures that came with offsets and recycles pictures, so
a frame with offsets after frames without them made it write through a null pointer
(a segfault in ``x265::Encoder::encode``, libx265 216 in PyAV 18). A ``RegionTagger``
therefore always attaches at least one region: the whole picture at offset 0 when there
are none to apply.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from fractions import Fraction

import av
import av.error
import av.filter

from shelf_stream.codec.base import TIME_BASE, RoiRegion
from shelf_stream.errors import CodecError

log = logging.getLogger(__name__)

#: The libavcodec encoders whose FFmpeg wrapper reads ROI side data (see the docstring).
ROI_ENCODERS = frozenset({"libx264", "libx265", "h264_qsv", "hevc_qsv", "h264_vaapi", "hevc_vaapi"})
#: The most regions one frame carries (the first ones: a list is ordered most important
#: first). Bounds the graph a frame goes through.
MAX_REGIONS = 32

_said_unsupported: set[str] = set()


def takes_regions(encoder_name: str) -> bool:
    return encoder_name in ROI_ENCODERS


def say_unsupported_once(encoder_name: str) -> None:
    """Log, once per process and encoder, that it codes uniformly despite ``roi``."""
    if encoder_name in _said_unsupported:
        return
    _said_unsupported.add(encoder_name)
    log.warning(
        "regions of interest: FFmpeg's %s does not take them (only %s do); coding uniformly",
        encoder_name, ", ".join(sorted(ROI_ENCODERS)),
    )  # fmt: skip


def clip_regions(regions: Sequence[RoiRegion], width: int, height: int) -> tuple[RoiRegion, ...]:
    """``regions`` inside a ``width`` x ``height`` picture, empty ones dropped, offsets in
    -1..1, at most ``MAX_REGIONS``; the whole picture at offset 0 when none is left."""
    kept: list[RoiRegion] = []
    for r in regions:
        clipped = RoiRegion(
            min(max(r.left_px, 0), width),
            min(max(r.top_px, 0), height),
            min(max(r.right_px, 0), width),
            min(max(r.bottom_px, 0), height),
            min(max(r.qoffset, -1.0), 1.0),
        )
        if not clipped.empty:
            kept.append(clipped)
        if len(kept) == MAX_REGIONS:
            break
    return tuple(kept) or (RoiRegion(0, 0, width, height, 0.0),)


def _qoffset_text(qoffset: float) -> str:
    ratio = Fraction(qoffset).limit_denominator(1000)
    return f"{ratio.numerator}/{ratio.denominator}"


class RegionTagger:
    """Adds the current regions to each frame (owned by the encoder that uses it).

    Frames must be ``width`` x ``height`` in ``pix_fmt`` (the encoder's own format).
    """

    def __init__(self, width: int, height: int, pix_fmt: str) -> None:
        self.width = width
        self.height = height
        self.pix_fmt = pix_fmt
        self.graphs_built = 0  # for tests and benchmarks: how often the regions changed
        self._regions = clip_regions((), width, height)
        self._graph: av.filter.Graph | None = None

    @property
    def regions(self) -> tuple[RoiRegion, ...]:
        """What the next frames carry (clipped; never empty)."""
        return self._regions

    def set(self, regions: Sequence[RoiRegion]) -> None:
        clipped = clip_regions(regions, self.width, self.height)
        if clipped != self._regions:
            self._regions = clipped
            self._graph = None  # built for the next frame

    def tag(self, frame: av.VideoFrame) -> av.VideoFrame:
        """``frame`` with the regions as side data (a new frame sharing its pictures)."""
        graph = self._graph or self._build()
        try:
            graph.push(frame)
            tagged = graph.pull()
        except (av.error.FFmpegError, ValueError) as exc:
            raise CodecError(f"adding regions of interest: {exc}") from exc
        assert isinstance(tagged, av.VideoFrame)
        return tagged

    def _build(self) -> av.filter.Graph:
        try:
            graph = av.filter.Graph()
            last = graph.add_buffer(
                width=self.width,
                height=self.height,
                format=av.VideoFormat(self.pix_fmt),
                time_base=TIME_BASE,
            )
            for index, r in enumerate(self._regions):
                # The first addroi drops what the frame carried; each appends its region,
                # so the list keeps this order (the first region wins where they overlap).
                args = (
                    f"x={r.left_px}:y={r.top_px}:w={r.right_px - r.left_px}:"
                    f"h={r.bottom_px - r.top_px}:qoffset={_qoffset_text(r.qoffset)}"
                    f":clear={1 if index == 0 else 0}"
                )
                node = graph.add("addroi", args)
                last.link_to(node)
                last = node
            sink = graph.add("buffersink")
            last.link_to(sink)
            graph.configure()
        except (av.error.FFmpegError, ValueError) as exc:
            raise CodecError(f"building the regions-of-interest filter graph: {exc}") from exc
        self._graph = graph
        self.graphs_built += 1
        return graph


def read_regions(frame: av.VideoFrame) -> list[tuple[int, int, int, int, float]]:
    """The ROI side data ``frame`` carries, as (left, top, right, bottom, qoffset) (tests)."""
    import struct

    side = frame.side_data.get("REGIONS_OF_INTEREST")
    if side is None:
        return []
    data = bytes(memoryview(side))  # type: ignore[arg-type]  # SideData is a buffer
    # AVRegionOfInterest: uint32 self_size, int top, bottom, left, right, AVRational qoffset.
    size = struct.unpack_from("I", data)[0]
    out = []
    for offset in range(0, len(data), size):
        _, top, bottom, left, right, num, den = struct.unpack_from("I4i2i", data, offset)
        out.append((left, top, right, bottom, num / den))
    return out
