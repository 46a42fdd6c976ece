"""Rebuild the RTSP test clips from ../shared/footage (see README.md here).

    .venv/bin/python tests/data/rtsp/make_clips.py ../shared/footage/bottle-detection.mp4

Each clip is the first seconds of the footage, every second frame (29.83 -> 14.9 fps),
encoded the way an IP camera streams: one keyframe a second, parameter sets in band,
constant frame rate. ``bottles-bframes.hevc.mkv`` keeps B-frames on purpose (the
pass-through refuses them; ``--reencode`` takes them); ``bottles-small.hevc.mkv`` is the
same scene at half the size (a camera that comes back at another resolution).
"""

from __future__ import annotations

import sys
from fractions import Fraction
from pathlib import Path

import av

HERE = Path(__file__).resolve().parent
FPS = 15
_CAMERA = "keyint=15:min-keyint=15:scenecut=0:bframes={bframes}:repeat-headers=1"
X265 = _CAMERA + ":log-level=error"

CLIPS = (
    # name, encoder, seconds, size, kbit/s, encoder options
    ("bottles.hevc.mkv", "libx265", 6.0, (640, 360), 300,
     {"x265-params": X265.format(bframes=0)}),
    # One slice a frame: GStreamer's h264parse repeats SPS/PPS before every IDR slice,
    # which splits a multi-slice keyframe into two access units.
    ("bottles.h264.mkv", "libx264", 3.0, (640, 360), 300,
     {"x264-params": _CAMERA.format(bframes=0) + ":slices=1:sliced-threads=0"}),
    ("bottles-small.hevc.mkv", "libx265", 4.0, (320, 180), 120,
     {"x265-params": X265.format(bframes=0)}),
    ("bottles-bframes.hevc.mkv", "libx265", 2.0, (320, 180), 150,
     {"x265-params": X265.format(bframes=3)}),
)  # fmt: skip


def make(
    source: Path,
    path: Path,
    encoder: str,
    seconds: float,
    size: tuple[int, int],
    kbps: int,
    options: dict[str, str],
) -> int:
    """Write ``seconds`` of ``source`` (every second frame) to ``path``; returns frames."""
    frames = round(seconds * FPS)
    written = 0
    with av.open(str(source)) as src, av.open(str(path), "w") as out:
        stream = out.add_stream(encoder, rate=Fraction(FPS))
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = kbps * 1000
        stream.options = {"preset": "medium", **options}
        for index, frame in enumerate(src.decode(video=0)):
            if index % 2:
                continue
            picture = frame.reformat(*size, format="yuv420p", interpolation="BICUBIC")
            picture.pts, picture.time_base = written, Fraction(1, FPS)
            picture.pict_type = av.video.frame.PictureType.NONE
            out.mux(stream.encode(picture))
            written += 1
            if written >= frames:
                break
        out.mux(stream.encode(None))
    return written


def main() -> None:
    source = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/footage/bottle-detection.mp4")
    for name, *settings in CLIPS:
        frames = make(source, HERE / name, *settings)  # type: ignore[arg-type]
        print(f"{name}: {frames} frames, {(HERE / name).stat().st_size / 1000:.0f} kB")


if __name__ == "__main__":
    main()
