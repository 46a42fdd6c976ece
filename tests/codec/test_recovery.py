"""RecoveringDecoder: drop from an error to the next keyframe, ask for keyframes sparingly."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import av
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shelf_stream.codec import (
    Decoder,
    DecodeResult,
    EncodedFrame,
    EncoderConfig,
    RecoveringDecoder,
    get_decoder,
    get_encoder,
)
from shelf_stream.codec.metrics import psnr_y
from shelf_stream.codec.recovery import KEYFRAME_RETRY_AUS
from shelf_stream.errors import CodecError

FRAME_TICKS = 3000
GOP = 15  # keyframes at AU 0, 15, 30


@dataclass
class Stream:
    codec: str
    frames: list[av.VideoFrame]
    aus: list[EncodedFrame]


@dataclass
class CountingFactory:
    codec: str
    made: list[Decoder] = field(default_factory=list)

    def __call__(self) -> Decoder:
        decoder = get_decoder(self.codec)
        self.made.append(decoder)
        return decoder


def make_stream(codec: str, count: int = 32) -> Stream:
    with av.open("testsrc2=size=320x240:rate=30", format="lavfi") as src:
        frames = [f for _, f in zip(range(count), src.decode(video=0), strict=False)]
    # One thread: x265's threaded rate control is not bit-exact run to run.
    config = EncoderConfig(
        codec=codec, width=320, height=240, keyframe_interval_s=GOP / 30, threads=1
    )
    encoder = get_encoder(config)
    aus = [encoder.encode(f, i * FRAME_TICKS) for i, f in enumerate(frames)]
    encoder.close()
    return Stream(codec, frames, aus)


@pytest.fixture(scope="module", params=["hevc", "h264"])
def stream(request: pytest.FixtureRequest) -> Stream:
    made = make_stream(request.param)
    assert [i for i, au in enumerate(made.aus) if au.keyframe] == [0, 15, 30]
    return made


def feed(
    rd: RecoveringDecoder, stream: Stream, index: int, data: bytes | None = None
) -> DecodeResult:
    au = stream.aus[index]
    return rd.decode(au.data if data is None else data, pts=au.pts, seq=index)


def assert_decoded(result: DecodeResult, stream: Stream, index: int) -> None:
    assert result.dropped_reason is None
    assert not result.request_keyframe
    (frame,) = result.frames
    assert frame.pts == stream.aus[index].pts
    assert psnr_y(stream.frames[index], frame) > 35.0


def test_clean_stream_decodes_every_au(stream: Stream) -> None:
    rd = RecoveringDecoder(stream.codec)
    for i in range(len(stream.aus)):
        assert_decoded(feed(rd, stream, i), stream, i)
    assert rd.flush() == ()
    assert rd.dropped_total == 0


def test_truncated_au_drops_until_next_keyframe(
    stream: Stream, caplog: pytest.LogCaptureFixture
) -> None:
    factory = CountingFactory(stream.codec)
    rd = RecoveringDecoder(stream.codec, factory)
    for i in range(5):
        assert_decoded(feed(rd, stream, i), stream, i)
    # Cut inside the slice header (start code, NAL header, 2 bytes), which every decoder
    # reports. A slice cut halfway is not always detected: its entropy coding may end
    # cleanly (measured: ~5 % of halved HEVC access units decode without an error), and
    # which bytes x265 writes varies with its threads and rate control.
    truncated = stream.aus[5].data[:8]
    with caplog.at_level(logging.DEBUG, logger="shelf_stream.codec"):
        result = feed(rd, stream, 5, truncated)
        assert result == DecodeResult((), "decode_error", True)
        assert rd.waiting_for_keyframe
        for i in range(6, 15):
            # Not decoded, and no new request for every AU of the same burst.
            assert feed(rd, stream, i) == DecodeResult((), "awaiting_keyframe", False)
        for i in range(15, 20):
            assert_decoded(feed(rd, stream, i), stream, i)
    assert not rd.waiting_for_keyframe
    assert rd.dropped_total == 10
    # The keyframe went to a fresh decoder, not the one that saw the error.
    assert len(factory.made) == 2
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert "decode_error" in warnings[0].getMessage()
    assert any("after dropping 10" in r.getMessage() for r in caplog.records)


def test_invalid_au_is_dropped_without_decoding(stream: Stream) -> None:
    rd = RecoveringDecoder(stream.codec)
    assert_decoded(feed(rd, stream, 0), stream, 0)
    without_start_code = stream.aus[1].data.lstrip(b"\x00")[1:]
    assert feed(rd, stream, 1, without_start_code) == DecodeResult((), "invalid", True)
    assert feed(rd, stream, 2, b"") == DecodeResult((), "invalid", False)  # same wait
    assert feed(rd, stream, 3) == DecodeResult((), "awaiting_keyframe", False)
    assert_decoded(feed(rd, stream, 15), stream, 15)  # seq jumps, but it is a keyframe


def test_seq_gap_drops_and_requests_a_keyframe(stream: Stream) -> None:
    rd = RecoveringDecoder(stream.codec)
    for i in range(4):
        assert_decoded(feed(rd, stream, i), stream, i)
    # AU 4 is lost on the way: AU 5 references it, so it cannot be decoded.
    assert feed(rd, stream, 5) == DecodeResult((), "gap", True)
    assert feed(rd, stream, 6) == DecodeResult((), "awaiting_keyframe", False)
    assert feed(rd, stream, 8) == DecodeResult((), "gap", False)
    assert_decoded(feed(rd, stream, 15), stream, 15)
    assert_decoded(feed(rd, stream, 16), stream, 16)


def test_gap_right_before_a_keyframe_loses_nothing_more(stream: Stream) -> None:
    rd = RecoveringDecoder(stream.codec)
    for i in range(14):
        assert_decoded(feed(rd, stream, i), stream, i)
    assert_decoded(feed(rd, stream, 15), stream, 15)  # AU 14 lost
    assert_decoded(feed(rd, stream, 16), stream, 16)


def test_first_au_must_be_a_keyframe(stream: Stream) -> None:
    rd = RecoveringDecoder(stream.codec)
    assert rd.waiting_for_keyframe
    assert feed(rd, stream, 3) == DecodeResult((), "awaiting_keyframe", True)
    assert feed(rd, stream, 4) == DecodeResult((), "awaiting_keyframe", False)
    assert_decoded(feed(rd, stream, 15), stream, 15)


def test_keyframe_request_repeats_every_n_aus_while_waiting(stream: Stream) -> None:
    rd = RecoveringDecoder(stream.codec)
    p_frame = stream.aus[1]
    requests = [
        rd.decode(p_frame.data, pts=seq * FRAME_TICKS, seq=seq).request_keyframe
        for seq in range(2 * KEYFRAME_RETRY_AUS + 1)
    ]
    assert [i for i, asked in enumerate(requests) if asked] == [
        0,
        KEYFRAME_RETRY_AUS,
        2 * KEYFRAME_RETRY_AUS,
    ]


def test_closed_decoder_raises(stream: Stream) -> None:
    rd = RecoveringDecoder(stream.codec)
    rd.close()
    with pytest.raises(CodecError, match="closed"):
        feed(rd, stream, 0)
    assert rd.flush() == ()


def test_jpeg_zlib_never_waits_and_never_requests() -> None:
    pytest.importorskip("cv2")
    encoder = get_encoder(EncoderConfig(codec="jpeg_zlib", width=64, height=48))
    with av.open("testsrc2=size=64x48:rate=30", format="lavfi") as src:
        frames = [f for _, f in zip(range(3), src.decode(video=0), strict=False)]
    aus = [encoder.encode(f, i * FRAME_TICKS) for i, f in enumerate(frames)]
    rd = RecoveringDecoder("jpeg_zlib")
    assert len(rd.decode(aus[0].data, pts=0, seq=0).frames) == 1
    assert rd.decode(b"garbage", pts=1, seq=1) == DecodeResult((), "decode_error", False)
    assert len(rd.decode(aus[2].data, pts=2, seq=2).frames) == 1


@pytest.fixture(scope="module")
def hevc_stream() -> Stream:
    return make_stream("hevc", count=2)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    junk=st.lists(
        st.binary(max_size=200).map(lambda b: b"\x00\x00\x01" + b)
        | st.binary(min_size=1, max_size=8).map(lambda b: b"\x00\x00\x01\x26\x01" + b * 20),
        min_size=1,
        max_size=4,
    )
)
def test_arbitrary_bytes_never_escape_as_other_errors(
    hevc_stream: Stream, junk: list[bytes]
) -> None:
    rd = RecoveringDecoder("hevc")
    first = rd.decode(hevc_stream.aus[0].data, pts=0, seq=0)
    assert len(first.frames) == 1
    for seq, data in enumerate(junk, start=1):
        result = rd.decode(data, pts=seq * FRAME_TICKS, seq=seq)
        assert isinstance(result, DecodeResult)
        if result.dropped_reason is not None:
            assert result.frames == ()
    rd.close()
