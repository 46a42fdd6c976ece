"""NVDEC decoding: on this machine (no GPU) every path falls back to software decoding
and says so exactly once per process."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import av
import pytest

from shelf_stream.codec import EncoderConfig, RecoveringDecoder, get_encoder
from shelf_stream.codec.jpeg_zlib import JpegZlibDecoder
from shelf_stream.codec.nvdec import (
    FALLBACK_NOTICE,
    NvdecDecoder,
    NvdecUnavailable,
    make_decoder_factory,
)
from shelf_stream.codec.pyav import PyAVDecoder
from shelf_stream.errors import ConfigError

FRAME_TICKS = 3000


@pytest.fixture(autouse=True)
def _fresh_notice() -> Iterator[None]:
    FALLBACK_NOTICE.reset()
    yield
    FALLBACK_NOTICE.reset()


@pytest.fixture(scope="module")
def hevc_aus() -> list[Any]:
    with av.open("testsrc2=size=320x240:rate=30", format="lavfi") as src:
        frames = [f for _, f in zip(range(6), src.decode(video=0), strict=False)]
    encoder = get_encoder(EncoderConfig(codec="hevc", width=320, height=240))
    return [encoder.encode(f, i * FRAME_TICKS) for i, f in enumerate(frames)]


def _fallback_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "NVDEC" in r.getMessage()]


def test_nvdec_falls_back_to_software_and_says_so_once(
    hevc_aus: list[Any], caplog: pytest.LogCaptureFixture
) -> None:
    factory = make_decoder_factory("hevc", "nvdec")
    with caplog.at_level(logging.DEBUG, logger="shelf_stream.codec"):
        decoders = [factory() for _ in range(3)]
        # Another session's factory: still the same single line.
        decoders.append(make_decoder_factory("hevc", "nvdec")())
    assert all(type(d) is PyAVDecoder for d in decoders)
    (record,) = _fallback_records(caplog)
    assert record.levelno == logging.WARNING
    assert record.getMessage().startswith("NVDEC unavailable (cannot open hevc with the CUDA")
    assert record.getMessage().endswith("decoding hevc in software")
    # ... and the fallback decodes the stream.
    decoder = RecoveringDecoder("hevc", make_decoder=factory)
    results = [decoder.decode(au.data, pts=au.pts, seq=i) for i, au in enumerate(hevc_aus)]
    assert all(r.dropped_reason is None and len(r.frames) == 1 for r in results)
    assert len(_fallback_records(caplog)) == 1


def test_auto_falls_back_at_info_level(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="shelf_stream.codec"):
        make_decoder_factory("h264", "auto")()
        make_decoder_factory("h264", "auto")()
    (record,) = _fallback_records(caplog)
    assert record.levelno == logging.INFO and "decoding h264 in software" in record.getMessage()


def test_software_never_tries_the_gpu(caplog: pytest.LogCaptureFixture) -> None:
    def no_gpu_please() -> Any:
        raise AssertionError("software decoding must not open a CUDA device")

    with caplog.at_level(logging.DEBUG, logger="shelf_stream.codec"):
        decoder = make_decoder_factory("hevc", "software", make_hwaccel=no_gpu_please)()
    assert type(decoder) is PyAVDecoder and not _fallback_records(caplog)


def test_intra_codec_and_bad_choice() -> None:
    assert isinstance(make_decoder_factory("jpeg_zlib", "nvdec")(), JpegZlibDecoder)
    with pytest.raises(ConfigError, match="unknown decoder 'cuvid'; choose one of auto"):
        make_decoder_factory("hevc", "cuvid")
    with pytest.raises(ConfigError, match="NVDEC decodes hevc, h264"):
        NvdecDecoder("jpeg_zlib")


def test_nvdec_decoder_raises_unavailable_here() -> None:
    with pytest.raises(NvdecUnavailable, match="CUDA hwaccel"):
        NvdecDecoder("hevc")


def test_software_frames_from_the_hw_decoder_are_reported_once(
    hevc_aus: list[Any], caplog: pytest.LogCaptureFixture
) -> None:
    # FFmpeg may decode in software behind an open hwaccel (an unsupported profile);
    # the frames then arrive as yuv420p instead of NV12. Simulated with no hwaccel.
    decoder = NvdecDecoder("hevc", make_hwaccel=lambda: None)
    with caplog.at_level(logging.DEBUG, logger="shelf_stream.codec"):
        frames = [f for au in hevc_aus for f in decoder.decode(au.data, au.pts)]
        NvdecDecoder("hevc", make_hwaccel=lambda: None).decode(hevc_aus[0].data, 0)
    assert len(frames) == len(hevc_aus) and frames[0].format.name == "yuv420p"
    (record,) = _fallback_records(caplog)
    assert (
        record.levelno == logging.WARNING and "arrive as yuv420p, not NV12" in record.getMessage()
    )
    assert [f.pts for f in frames] == [au.pts for au in hevc_aus]
    decoder.close()
