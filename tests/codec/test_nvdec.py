"""NVDEC decoding: on this machine (no GPU) every path falls back to software decoding
and says so exactly once per process; a fake NVDEC that opens and then fails its first
frame stands in for FFmpeg's CUDA hwaccel without libnvcuvid."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import av
import pytest

from shelf_stream.codec import Decoder, EncoderConfig, RecoveringDecoder, get_encoder
from shelf_stream.codec.jpeg_zlib import JpegZlibDecoder
from shelf_stream.codec.nvdec import (
    FALLBACK_NOTICE,
    FallbackDecoder,
    NvdecDecoder,
    NvdecUnavailable,
    _default_hwaccel,
    make_decoder_factory,
)
from shelf_stream.codec.pyav import PyAVDecoder
from shelf_stream.errors import CodecError, ConfigError

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


# ------------------------------------------------- NVDEC that fails its first frame


class FirstFrameFailingNvdec(Decoder):
    """What FFmpeg's CUDA hwaccel does without libnvcuvid (a container without the
    ``video`` driver capability) or for a profile the GPU lacks: the decoder opens,
    then the first decode fails, because the hwaccel is initialised on the first frame.
    With ``fail_first=False`` it decodes (in software, standing in for NVDEC)."""

    def __init__(self, codec: str, *, fail_first: bool = True) -> None:
        self._inner = PyAVDecoder(codec)
        self._fail_first = fail_first
        self.closed = False

    def decode(self, data: bytes, pts: int) -> list[av.VideoFrame]:
        if self._fail_first:
            self._fail_first = False
            raise CodecError(f"hevc failed to decode pts {pts}: [Errno 1] Operation not permitted")
        return self._inner.decode(data, pts)

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def failing_nvdec() -> Iterator[list[FirstFrameFailingNvdec]]:
    yield []


def _opener(made: list[FirstFrameFailingNvdec], **kwargs: Any) -> Any:
    def open_nvdec(codec: str, threads: int, make_hwaccel: Any) -> Decoder:
        decoder = FirstFrameFailingNvdec(codec, **kwargs)
        made.append(decoder)
        return decoder

    return open_nvdec


@pytest.mark.parametrize(("choice", "level"), [("nvdec", logging.WARNING), ("auto", logging.INFO)])
def test_nvdec_failing_its_first_frame_falls_back_without_losing_a_frame(
    hevc_aus: list[Any],
    caplog: pytest.LogCaptureFixture,
    failing_nvdec: list[FirstFrameFailingNvdec],
    choice: str,
    level: int,
) -> None:
    factory = make_decoder_factory("hevc", choice, open_nvdec=_opener(failing_nvdec))
    decoder = RecoveringDecoder("hevc", make_decoder=factory)
    with caplog.at_level(logging.DEBUG, logger="shelf_stream.codec"):
        results = [decoder.decode(au.data, pts=au.pts, seq=i) for i, au in enumerate(hevc_aus)]
        # A keyframe after trouble reopens a decoder: software now, not NVDEC again.
        later = factory()
        later.decode(hevc_aus[0].data, hevc_aus[0].pts)
    assert all(r.dropped_reason is None and len(r.frames) == 1 for r in results)
    assert [r.frames[0].pts for r in results] == [au.pts for au in hevc_aus]
    assert len(failing_nvdec) == 1 and failing_nvdec[0].closed
    assert type(later) is PyAVDecoder
    (record,) = _fallback_records(caplog)
    assert record.levelno == level
    message = record.getMessage()
    assert message.startswith("NVDEC opened but failed the first hevc frame (hevc failed")
    assert "decoding hevc in software" in message and "NVIDIA_DRIVER_CAPABILITIES" in message


def test_fallback_is_said_once_per_process_and_remembered_per_stream(
    hevc_aus: list[Any],
    caplog: pytest.LogCaptureFixture,
    failing_nvdec: list[FirstFrameFailingNvdec],
) -> None:
    with caplog.at_level(logging.DEBUG, logger="shelf_stream.codec"):
        for stream in range(3):  # three streams, each with its own factory
            factory = make_decoder_factory("hevc", "nvdec", open_nvdec=_opener(failing_nvdec))
            for _ in range(2):  # two decoders per stream: NVDEC is tried by the first only
                # Each stream starts at its own pts, so each error message differs.
                factory().decode(hevc_aus[0].data, 90_000 * stream)
    assert len(failing_nvdec) == 3
    assert len(_fallback_records(caplog)) == 1


def test_a_bad_first_access_unit_is_not_blamed_on_nvdec(
    hevc_aus: list[Any],
    caplog: pytest.LogCaptureFixture,
    failing_nvdec: list[FirstFrameFailingNvdec],
) -> None:
    factory = make_decoder_factory("hevc", "nvdec", open_nvdec=_opener(failing_nvdec))
    decoder = factory()
    with pytest.raises(CodecError, match="Operation not permitted"):
        decoder.decode(hevc_aus[0].data[:8], 0)  # software fails on it too
    assert isinstance(decoder, FallbackDecoder) and decoder.on_nvdec
    nvdec_again = factory()  # the stream's next keyframe still tries NVDEC
    assert isinstance(nvdec_again, FallbackDecoder) and len(failing_nvdec) == 2
    assert not _fallback_records(caplog)


def test_errors_after_nvdec_decoded_are_stream_errors(
    hevc_aus: list[Any], failing_nvdec: list[FirstFrameFailingNvdec]
) -> None:
    factory = make_decoder_factory(
        "hevc", "nvdec", open_nvdec=_opener(failing_nvdec, fail_first=False)
    )
    decoder = factory()
    assert len(decoder.decode(hevc_aus[0].data, hevc_aus[0].pts)) == 1
    with pytest.raises(CodecError):
        decoder.decode(hevc_aus[1].data[:8], hevc_aus[1].pts)  # truncated: no fallback
    assert isinstance(decoder, FallbackDecoder) and decoder.on_nvdec


def test_nvdec_uses_the_primary_cuda_context() -> None:
    # One CUDA context for every decoder a RecoveringDecoder reopens, not one each.
    hwaccel = _default_hwaccel()
    assert hwaccel.options == {"primary_ctx": "1"} and not hwaccel.allow_software_fallback
