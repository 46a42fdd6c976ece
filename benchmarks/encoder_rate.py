"""How the software encoders meet their bitrate and how fast they run on this machine.

The figures behind the encoder side of the network adaptation (issue 4):

  1. output / target: libx265 without and with ``X265_ABR_HEADROOM``, and libx264, on the
     demo scene at 640x480 and 1280x720, 10/15 and 30 fps, 600 and 2000 kbit/s (one fresh
     encoder per point, as after every switch; 3 s of footage);
  2. ms per 1280x720 frame, superfast and ultrafast, alone and beside one busy process
     (a stand-in for the server sharing the cores), and the nice value of the encoder's
     threads (x265 lowers its worker threads to nice 10);
  3. ms per 1280x720 frame when the frames lie 1/30 or 1/10 s apart (more motion each).

Usage, from the repository root (about a minute on two cores):

  python benchmarks/encoder_rate.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import av

from shelf_stream.client.sources import SceneSource
from shelf_stream.codec import get_encoder, pyav
from shelf_stream.codec.base import EncoderConfig

SECONDS = 3


def scene(width: int, height: int, frames: int) -> list[av.VideoFrame]:
    source = SceneSource(width, height, 30.0)
    return [source.read() for _ in range(frames)]


def output_share(codec: str, frames: list[av.VideoFrame], fps: int, kbps: int) -> float:
    width, height = frames[0].width, frames[0].height
    config = EncoderConfig(
        codec=codec, width=width, height=height, fps=fps, bitrate_kbps=kbps,
        keyframe_interval_s=100.0,
    )  # fmt: skip
    encoder = get_encoder(config)
    step = 30 // fps
    sizes = [len(encoder.encode(f, i * 3000).data) for i, f in enumerate(frames[::step])]
    return sum(sizes) * 8 * fps / len(sizes) / 1000 / kbps


def rate_grid() -> None:
    print("output / target bitrate (a fresh encoder, 3 s of the demo scene)")
    headroom = pyav.X265_ABR_HEADROOM
    print(
        f"{'size':>9} {'fps':>4} {'kbit/s':>7} {'x265 1.0':>9} "
        f"{'x265 ' + str(headroom):>9} {'x264':>6}"
    )
    for width, height in ((640, 480), (1280, 720)):
        frames = scene(width, height, 30 * SECONDS)
        for fps in (30, 10):
            for kbps in (600, 2000):
                shares = []
                for trial in (1.0, headroom):
                    pyav.X265_ABR_HEADROOM = trial
                    shares.append(output_share("hevc", frames, fps, kbps))
                pyav.X265_ABR_HEADROOM = headroom
                shares.append(output_share("h264", frames, fps, kbps))
                row = " ".join(f"{s:>9.2f}" for s in shares[:2]) + f" {shares[2]:>6.2f}"
                print(f"{width}x{height:<4} {fps:>4} {kbps:>7} {row}")


def thread_nice() -> dict[str, int]:
    counts: dict[str, int] = {}
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        counts[fields[16]] = counts.get(fields[16], 0) + 1
    return counts


def speed() -> None:
    frames = scene(1280, 720, 40)
    print("\nms per 1280x720 frame (libx265, 2000 kbit/s), alone and beside one busy process")
    for preset in ("superfast", "ultrafast"):
        config = EncoderConfig(
            codec="hevc", width=1280, height=720, bitrate_kbps=2000, preset=preset
        )
        encoder = get_encoder(config)
        encoder.encode(frames[0], 0)
        nice = thread_nice()
        timings = []
        for busy in (False, True):
            hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
            time.sleep(0.2)
            started = time.perf_counter()
            for i, frame in enumerate(frames[1:], 1):
                encoder.encode(frame, i * 3000)
            timings.append((time.perf_counter() - started) * 1000 / (len(frames) - 1))
            if hog is not None:
                hog.kill()
                hog.wait()
        print(
            f"{preset:>10}: alone {timings[0]:.1f} ms, beside a busy process {timings[1]:.1f} "
            f"ms; threads by nice value {nice}"
        )


def spacing() -> None:
    frames = scene(1280, 720, 90)
    print("\nms per 1280x720 frame (libx265 superfast, 2000 kbit/s) by frame spacing")
    for fps in (30, 10):
        config = EncoderConfig(codec="hevc", width=1280, height=720, fps=fps, bitrate_kbps=2000)
        encoder = get_encoder(config)
        chosen = frames[:: 30 // fps]
        started = time.perf_counter()
        for i, frame in enumerate(chosen):
            encoder.encode(frame, i * 3000)
        print(f"{fps:>3} fps: {(time.perf_counter() - started) * 1000 / len(chosen):.1f} ms")


if __name__ == "__main__":
    rate_grid()
    speed()
    spacing()
