"""x265 presets and thread settings, each alone and beside a busy process.

On loopback (and on any sender that is also the server) the detector's inference shares
the cores with the encoder, so an encoder setting is judged by how it does beside it: the
busy process here is the same detector, run in a loop in its own process with the
server's default threads (half the cores), on one of the clip's frames. Each setting
encodes the same frames at the same target twice with a fresh encoder, first with the
busy process idle, then with it running, in several interleaved rounds; the figures are
the median over rounds of the mean encode ms a frame in both, the busy process's ms per
inference meanwhile (what the setting costs the server), and the kbit/s and SSIM that
came out (what it buys).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np

from shelf_stream.codec import EncoderConfig, get_decoder, get_encoder
from shelf_stream.codec.base import TIME_BASE
from shelf_stream.codec.metrics import luma
from shelf_stream.errors import ConfigError

X265_PRESETS = ("ultrafast", "superfast", "veryfast")
#: Frames each setting encodes (fewer if the clip is shorter).
SWEEP_FRAMES = 60
#: Rounds over all settings; each figure is the median of its rounds.
SWEEP_ROUNDS = 3
#: The busy process gets this long to reach full speed before a timed pass.
RAMP_S = 0.3
#: How long each round times the busy process on its own.
IDLE_S = 1.0
#: Each pass encodes for at least this long (looping the frames), a few inferences' worth.
MIN_PASS_S = 0.5


@dataclass(frozen=True, slots=True)
class SweepSetting:
    """One encoder setting: ``threads`` is x265's worker pool (``pools``), x264's
    ``threads``; 0 leaves the encoder's own default."""

    codec: str
    encoder: str
    preset: str
    threads: int


@dataclass(frozen=True, slots=True)
class SweepResult:
    setting: SweepSetting
    kbps: float
    ssim: float
    encode_ms_alone: float
    encode_ms_busy: float
    inference_ms_busy: float  # the busy process's ms per inference while this one encoded

    def to_json(self) -> dict[str, Any]:
        return {
            "codec": self.setting.codec,
            "encoder": self.setting.encoder,
            "preset": self.setting.preset,
            "threads": self.setting.threads,
            "kbps": self.kbps,
            "ssim": self.ssim,
            "encode_ms_alone": self.encode_ms_alone,
            "encode_ms_busy": self.encode_ms_busy,
            "inference_ms_busy": self.inference_ms_busy,
        }


def thread_counts(cores: int | None = None) -> tuple[int, ...]:
    """1, 2 and every core (x265's own default), without repeats."""
    cores = cores or os.cpu_count() or 2
    return tuple(sorted({1, min(2, cores), cores}))


def default_settings(cores: int | None = None) -> tuple[SweepSetting, ...]:
    """Every x265 preset at every thread count, and x264 superfast for comparison."""
    x265 = tuple(
        SweepSetting("hevc", "libx265", preset, threads)
        for preset in X265_PRESETS
        for threads in thread_counts(cores)
    )
    return (*x265, SweepSetting("h264", "libx264", "superfast", 0))


# ------------------------------------------------------------------- busy process
#
# A separate interpreter (``python -m shelf_stream.bench.encoder_sweep MODEL THREADS
# IMAGE.npy``) rather than multiprocessing: spawn would re-import the caller's main
# module, fork would copy the parent's ONNX Runtime threads. It answers lines on stdin:
# ``run`` / ``idle`` start and stop the loop, ``count`` prints the inferences so far.


def _serve_busy(model_path: Path, threads: int, image_path: Path) -> None:
    """The child's side: infer in a loop while running, until stdin closes."""
    import sys
    import threading

    from shelf_stream.engine import EngineConfig, create_detector

    detector = create_detector(EngineConfig(model_path=model_path, intra_op_threads=threads))
    image = np.load(image_path)
    detector.detect([image])  # warm-up: the first run allocates
    running, done = threading.Event(), threading.Event()
    count = 0

    def commands() -> None:
        for line in sys.stdin:
            command = line.strip()
            if command == "run":
                running.set()
            elif command == "idle":
                running.clear()
            elif command == "count":
                print(count, flush=True)
        done.set()
        running.set()  # wake the loop to see done

    threading.Thread(target=commands, daemon=True).start()
    print("ready", flush=True)
    while not done.is_set():
        if running.wait(0.05) and not done.is_set():
            detector.detect([image])
            count += 1


class BusyInference:
    """The detector in a loop in its own process, started idle; ``busy()`` runs it."""

    def __init__(self, model_path: Path, image: np.ndarray, threads: int) -> None:
        self._args = (model_path, image, threads)
        self._process: subprocess.Popen[str] | None = None
        self._folder: tempfile.TemporaryDirectory[str] | None = None

    def __enter__(self) -> BusyInference:
        model_path, image, threads = self._args
        self._folder = tempfile.TemporaryDirectory(prefix="shelf-busy-")
        image_path = Path(self._folder.name) / "image.npy"
        np.save(image_path, image)
        command = [sys.executable, "-m", __name__, str(model_path), str(threads), str(image_path)]
        self._process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        if self._read_line() != "ready":
            self.close()
            raise ConfigError("the busy inference process did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, command: str) -> None:
        assert self._process is not None and self._process.stdin is not None
        self._process.stdin.write(command + "\n")
        self._process.stdin.flush()

    def _read_line(self) -> str:
        assert self._process is not None and self._process.stdout is not None
        return self._process.stdout.readline().strip()

    def _count(self) -> int:
        self._send("count")
        return int(self._read_line())

    def close(self) -> None:
        if self._process is not None:
            if self._process.stdin is not None:
                self._process.stdin.close()  # the child's cue to end
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            if self._process.stdout is not None:
                self._process.stdout.close()
            self._process = None
        if self._folder is not None:
            self._folder.cleanup()
            self._folder = None

    @contextmanager
    def busy(self) -> Iterator[list[float]]:
        """Run while the block runs; the list gets the ms per inference it took meanwhile."""
        self._send("run")
        time.sleep(RAMP_S)
        result: list[float] = []
        start_count, start = self._count(), time.perf_counter()
        try:
            yield result
        finally:
            done = self._count() - start_count
            elapsed_ms = (time.perf_counter() - start) * 1000.0
            self._send("idle")
            result.append(elapsed_ms / done if done else math.nan)

    def idle_ms_per_inference(self, seconds: float) -> float:
        """ms per inference with nothing else of ours running."""
        with self.busy() as result:
            time.sleep(seconds)
        return result[0]


# ---------------------------------------------------------------------- one pass


def _encode_pass(
    setting: SweepSetting, frames: Sequence[av.VideoFrame], fps: float, kbps: int
) -> tuple[list[bytes], float]:
    """The frames through a fresh encoder, looped until ``MIN_PASS_S`` has passed (so the
    busy process completes inferences meanwhile): the first loop's access units and the
    mean ms a frame over all of them."""
    config = EncoderConfig(
        codec=setting.codec, encoder=setting.encoder, preset=setting.preset,
        threads=setting.threads, width=frames[0].width, height=frames[0].height, fps=fps,
        bitrate_kbps=kbps,
    )  # fmt: skip
    encoder = get_encoder(config)
    data: list[bytes] = []
    elapsed, index = 0.0, 0
    try:
        while index < len(frames) or elapsed < MIN_PASS_S:
            pts = round(index / fps / TIME_BASE)
            frame = frames[index % len(frames)]
            start = time.perf_counter()
            au = encoder.encode(frame, pts, keyframe=index == 0)
            elapsed += time.perf_counter() - start
            if index < len(frames):
                data.append(au.data)
            index += 1
    finally:
        encoder.close()
    return data, elapsed * 1000.0 / index


def _mean_ssim(codec: str, data: Sequence[bytes], frames: Sequence[av.VideoFrame]) -> float:
    from shelf_stream.bench.codec import fast_ssim  # codec imports this module

    decoder = get_decoder(codec)
    try:
        values = []
        for index, (au, frame) in enumerate(zip(data, frames, strict=True)):
            decoded = decoder.decode(au, index)
            values.append(fast_ssim(luma(frame), luma(decoded[-1])))
    finally:
        decoder.close()
    return float(np.mean(values))


@dataclass(frozen=True, slots=True)
class Sweep:
    results: list[SweepResult]
    inference_ms_idle: float  # the busy process alone (no encoder of ours running)
    rounds: int


def run_sweep(
    frames: Sequence[av.VideoFrame],
    fps: float,
    kbps: int,
    busy: BusyInference,
    settings: Sequence[SweepSetting],
    rounds: int = SWEEP_ROUNDS,
) -> Sweep:
    """Each setting alone, then beside ``busy``, in ``rounds`` interleaved rounds.

    Interleaved and summarised by the median, so a burst of load from elsewhere on a
    shared machine lands on one round of every setting rather than on all rounds of one.
    Each round starts by timing the busy process alone.
    """
    frames = list(frames[:SWEEP_FRAMES])
    seconds = len(frames) / fps
    alone: dict[SweepSetting, list[float]] = {s: [] for s in settings}
    beside: dict[SweepSetting, list[float]] = {s: [] for s in settings}
    inference: dict[SweepSetting, list[float]] = {s: [] for s in settings}
    idle: list[float] = []
    first_pass: dict[SweepSetting, list[bytes]] = {}
    for _ in range(rounds):
        idle.append(busy.idle_ms_per_inference(IDLE_S))
        for setting in settings:
            data, alone_ms = _encode_pass(setting, frames, fps, kbps)
            first_pass.setdefault(setting, data)
            with busy.busy() as inference_ms:
                _, busy_ms = _encode_pass(setting, frames, fps, kbps)
            alone[setting].append(alone_ms)
            beside[setting].append(busy_ms)
            inference[setting].append(inference_ms[0])
    results = [
        SweepResult(
            setting=setting,
            kbps=sum(len(d) for d in first_pass[setting]) * 8 / seconds / 1000,
            ssim=_mean_ssim(setting.codec, first_pass[setting], frames),
            encode_ms_alone=float(np.median(alone[setting])),
            encode_ms_busy=float(np.median(beside[setting])),
            inference_ms_busy=float(np.median(inference[setting])),
        )
        for setting in settings
    ]
    return Sweep(results, float(np.median(idle)), rounds)


def format_sweep(sweep: Sweep, fps: float, kbps: int, size: str) -> str:
    budget_ms = 1000.0 / fps
    lines = [
        f"encoder settings at {size}, {kbps} kbit/s target, {fps:g} fps (a frame every "
        f"{budget_ms:.1f} ms), medians of {sweep.rounds} interleaved rounds; beside: with "
        f"the detector looping in another process ({sweep.inference_ms_idle:.1f} ms an "
        "inference with no encoder running)",
        f"{'encoder':<8} {'preset':<10} {'threads':>7} {'kbit/s':>7} {'SSIM':>7} "
        f"{'enc ms alone':>12} {'enc ms beside':>13} {'inference ms':>12}",
    ]
    for r in sweep.results:
        threads = str(r.setting.threads) if r.setting.threads else "default"
        late = "  (slower than the frame rate)" if r.encode_ms_busy > budget_ms else ""
        lines.append(
            f"{r.setting.encoder:<8} {r.setting.preset:<10} {threads:>7} {r.kbps:7.0f} "
            f"{r.ssim:7.4f} {r.encode_ms_alone:12.1f} {r.encode_ms_busy:13.1f} "
            f"{r.inference_ms_busy:12.1f}{late}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    _serve_busy(Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
