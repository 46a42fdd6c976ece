"""The seed system's JPEG+zlib baseline behind the codec interfaces."""

from __future__ import annotations

import sys
import zlib

import av
import numpy as np
import pytest

from shelf_stream.codec import EncoderConfig, get_decoder, get_encoder, jpeg_zlib
from shelf_stream.codec.metrics import psnr
from shelf_stream.errors import CodecError, ConfigError

cv2 = pytest.importorskip("cv2")


def gradient_bgr(width: int = 96, height: int = 64) -> np.ndarray:
    x = np.linspace(0, 255, width, dtype=np.float64)
    y = np.linspace(0, 255, height, dtype=np.float64)[:, None]
    bgr = np.stack([np.broadcast_to(x, (height, width)), np.broadcast_to(y, (height, width)),
                    (x + y) / 2], axis=-1)  # fmt: skip
    return np.ascontiguousarray(bgr.astype(np.uint8))


def test_bytes_are_exactly_the_seed_recipe() -> None:
    bgr = gradient_bgr()
    encoder = get_encoder(EncoderConfig(codec="jpeg_zlib", width=96, height=64, jpeg_quality=80))
    au = encoder.encode(av.VideoFrame.from_ndarray(bgr, format="bgr24"), 1234)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 80])
    assert ok
    assert au.data == zlib.compress(buf.tobytes())
    assert au.keyframe
    assert au.pts == 1234


def test_round_trip_returns_bgr24_frames_with_pts() -> None:
    bgr = gradient_bgr()
    encoder = get_encoder(EncoderConfig(codec="jpeg_zlib", width=96, height=64))
    decoder = get_decoder("jpeg_zlib")
    au = encoder.encode(av.VideoFrame.from_ndarray(bgr, format="bgr24"), 7)
    (frame,) = decoder.decode(au.data, 7)
    assert frame.format.name == "bgr24"
    assert frame.pts == 7
    assert psnr(bgr, frame.to_ndarray()) > 35.0
    assert decoder.flush() == []


def test_other_formats_and_sizes_are_converted() -> None:
    source = av.VideoFrame.from_ndarray(gradient_bgr(), format="bgr24").reformat(format="yuv420p")
    encoder = get_encoder(EncoderConfig(codec="jpeg_zlib", width=48, height=32))
    (frame,) = get_decoder("jpeg_zlib").decode(encoder.encode(source, 0).data, 0)
    assert (frame.width, frame.height) == (48, 32)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not zlib at all", "corrupt"),
        (zlib.compress(b"not a jpeg"), "imdecode"),
        (zlib.compress(b"")[:-3], "truncated"),
        (b"", "truncated"),
    ],
)
def test_bad_input_is_a_codec_error(data: bytes, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        get_decoder("jpeg_zlib").decode(data, 0)


def test_decompression_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jpeg_zlib, "MAX_DECOMPRESSED_BYTES", 1000)
    with pytest.raises(CodecError, match="more than 1000 bytes"):
        get_decoder("jpeg_zlib").decode(zlib.compress(b"\0" * 5000), 0)


def test_missing_opencv_is_a_config_error_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cv2", None)  # makes `import cv2` raise ImportError
    with pytest.raises(ConfigError, match=r"pip install shelf-stream\[bench\]"):
        get_decoder("jpeg_zlib")
    with pytest.raises(ConfigError, match=r"pip install shelf-stream\[bench\]"):
        get_encoder(EncoderConfig(codec="jpeg_zlib"))


def test_bad_quality_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="jpeg_quality"):
        get_encoder(EncoderConfig(codec="jpeg_zlib", jpeg_quality=101))


def test_closed_encoder_raises() -> None:
    encoder = get_encoder(EncoderConfig(codec="jpeg_zlib", width=96, height=64))
    encoder.close()
    with pytest.raises(CodecError, match="closed"):
        encoder.encode(av.VideoFrame.from_ndarray(gradient_bgr(), format="bgr24"), 0)
