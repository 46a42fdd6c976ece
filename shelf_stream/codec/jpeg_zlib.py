"""The seed system's baseline, JPEG then zlib per frame, behind the codec interfaces.

Kept byte-for-byte with the seed's recipe (``cv2.imencode('.jpg', ...)`` at a quality,
then ``zlib.compress`` at the default level) so that benchmarks compare against what
was really shipped. Every frame is a keyframe. OpenCV is an optional dependency.
"""

from __future__ import annotations

import zlib
from types import ModuleType

import av
import av.error
import numpy as np

from shelf_stream.codec.base import TIME_BASE, Decoder, EncodedFrame, Encoder, EncoderConfig
from shelf_stream.errors import CodecError, ConfigError

#: Refuse to inflate more than this per frame (a zlib bomb would otherwise exhaust
#: memory); 64 MiB is far above any JPEG of an 8K frame.
MAX_DECOMPRESSED_BYTES = 64 * 1024 * 1024


def _import_cv2() -> ModuleType:
    try:
        import cv2
    except ImportError as exc:
        raise ConfigError(
            "the jpeg_zlib codec needs OpenCV: pip install shelf-stream[bench]"
        ) from exc
    return cv2


class JpegZlibEncoder(Encoder):
    """JPEG at ``config.jpeg_quality``, then zlib; frames are scaled to the config size."""

    def __init__(self, config: EncoderConfig) -> None:
        if not 0 <= config.jpeg_quality <= 100:
            raise ConfigError(f"jpeg_quality must be 0..100, got {config.jpeg_quality}")
        self.config = config
        self._cv2: ModuleType | None = _import_cv2()

    def _to_bgr(self, frame: av.VideoFrame) -> np.ndarray:
        cfg = self.config
        try:
            if frame.format.name != "bgr24" or (frame.width, frame.height) != (
                cfg.width,
                cfg.height,
            ):
                frame = frame.reformat(width=cfg.width, height=cfg.height, format="bgr24")
            return frame.to_ndarray()
        except (av.error.FFmpegError, ValueError) as exc:
            raise CodecError(f"converting the frame to bgr24: {exc}") from exc

    def encode(self, frame: av.VideoFrame, pts: int, *, keyframe: bool = False) -> EncodedFrame:
        if self._cv2 is None:
            raise CodecError("encoder is closed")
        cv2 = self._cv2
        bgr = self._to_bgr(frame)
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, self.config.jpeg_quality])
        if not ok:
            raise CodecError(f"cv2.imencode failed for pts {pts}")
        return EncodedFrame(pts=pts, keyframe=True, data=zlib.compress(buf.tobytes()))

    def close(self) -> None:
        self._cv2 = None


def _inflate(data: bytes) -> bytes:
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, MAX_DECOMPRESSED_BYTES)
    except zlib.error as exc:
        raise CodecError(f"jpeg_zlib: zlib data is corrupt: {exc}") from exc
    if inflater.unconsumed_tail:
        raise CodecError(f"jpeg_zlib: frame inflates to more than {MAX_DECOMPRESSED_BYTES} bytes")
    if not inflater.eof:
        raise CodecError("jpeg_zlib: zlib data is truncated")
    return out


class JpegZlibDecoder(Decoder):
    """zlib.decompress + cv2.imdecode; returns bgr24 frames."""

    def __init__(self) -> None:
        self._cv2: ModuleType | None = _import_cv2()

    def decode(self, data: bytes, pts: int) -> list[av.VideoFrame]:
        if self._cv2 is None:
            raise CodecError("decoder is closed")
        cv2 = self._cv2
        jpeg = np.frombuffer(_inflate(data), dtype=np.uint8)
        bgr = cv2.imdecode(jpeg, cv2.IMREAD_COLOR) if jpeg.size else None
        if bgr is None:
            raise CodecError(f"jpeg_zlib: cv2.imdecode could not decode pts {pts}")
        frame = av.VideoFrame.from_ndarray(bgr, format="bgr24")
        frame.pts = pts
        frame.time_base = TIME_BASE
        return [frame]

    def close(self) -> None:
        self._cv2 = None
