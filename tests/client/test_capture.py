"""The capture thread: steady pacing, newest frame wins, live and timed sources decimated,
files paced by their timestamps."""

from __future__ import annotations

import itertools
import time
from fractions import Fraction

import av
import numpy as np
import pytest

from shelf_stream.client.capture import CapturedFrame, CaptureThread, LatestSlot, MediaClock
from shelf_stream.client.sources import FrameSource


class _FakeCamera(FrameSource):
    """A live source on a fake clock: every read is one camera interval later."""

    def __init__(
        self, clock: list[float], fps: float, frames: int, jitter_s: float = 0.002
    ) -> None:
        self.width, self.height, self.fps, self.live = 64, 48, fps, True
        self._clock = clock
        self._jitter_s = jitter_s
        self._left = frames
        self._frame = av.VideoFrame.from_ndarray(
            np.zeros((48, 64, 3), dtype=np.uint8), format="rgb24"
        )

    def read(self) -> av.VideoFrame | None:
        if self._left == 0:
            return None
        self._left -= 1
        # A little jitter, as cameras have.
        self._clock[0] += 1 / self.fps + (self._jitter_s if self._left % 2 else -self._jitter_s)
        return self._frame

    def close(self) -> None:
        pass


class _RecordingSlot(LatestSlot[CapturedFrame]):
    """A slot that remembers every frame published into it."""

    def __init__(self) -> None:
        super().__init__()
        self.published: list[CapturedFrame] = []

    def put(self, item: CapturedFrame) -> CapturedFrame | None:
        self.published.append(item)
        return super().put(item)


def _capture(
    camera_fps: float, stream_fps: float, frames: int, jitter_s: float = 0.002
) -> list[CapturedFrame]:
    clock = [100.0]
    slot = _RecordingSlot()
    thread = CaptureThread(
        _FakeCamera(clock, camera_fps, frames, jitter_s),
        slot,
        fps=stream_fps,
        on_skipped=lambda _: None,
        clock=lambda: clock[0],
    )
    thread.run()  # in this thread: the fake camera never blocks
    assert thread.error is None
    return slot.published


def test_a_camera_at_the_stream_rate_passes_every_frame() -> None:
    assert len(_capture(30.0, 30.0, 90)) == 90


def test_a_faster_camera_is_decimated_to_the_stream_rate() -> None:
    published = _capture(30.0, 15.0, 90)
    assert 44 <= len(published) <= 46
    times = [f.captured_at for f in published]
    gaps = np.diff(times)
    assert gaps.min() > 1 / 15 - 0.01, "evenly spaced, never two camera frames in a row"


def test_an_uneven_ratio_keeps_the_average_rate() -> None:
    published = _capture(30.0, 20.0, 300)  # 10 s of camera
    assert 195 <= len(published) <= 205


def test_a_slower_camera_is_never_held_back() -> None:
    assert len(_capture(15.0, 30.0, 60)) == 60


def test_a_jittery_camera_at_the_stream_rate_loses_nothing() -> None:
    assert len(_capture(30.0, 30.0, 300, jitter_s=0.008)) == 300


def test_set_fps_reaches_the_capture_thread_through_its_queue() -> None:
    clock = [100.0]

    class Slot(_RecordingSlot):
        def put(self, item: CapturedFrame) -> CapturedFrame | None:
            if len(self.published) == 30:
                thread.set_fps(15.0)  # as the event loop does, mid-stream
            return super().put(item)

    slot = Slot()
    thread = CaptureThread(
        _FakeCamera(clock, 30.0, 90), slot, fps=30.0, on_skipped=lambda _: None,
        clock=lambda: clock[0],
    )  # fmt: skip
    thread.run()
    assert 30 + 28 <= len(slot.published) <= 30 + 32, "30 frames at 30 fps, then 2 s at 15"


# --------------------------------------------------------------------- timed sources


def test_media_clock_follows_plausible_timestamps() -> None:
    media = MediaClock(25.0)
    stamps = [10.0, 10.04, 10.1, 10.2, 10.21]  # a variable-rate phone video
    assert [round(media.next(t), 3) for t in stamps] == [0.0, 0.04, 0.1, 0.2, 0.21]
    assert media.irregular == 0


def test_media_clock_replaces_implausible_timestamps_by_the_rate() -> None:
    media = MediaClock(25.0)
    # None, repeated, backwards, denser than 240 fps, a 5 s jump: one interval each.
    stamps = [0.0, None, 0.04, 0.04, 0.01, 0.0104, 5.2, 5.24]
    times = [round(media.next(t), 3) for t in stamps]
    assert times == [0.0, 0.04, 0.08, 0.12, 0.16, 0.2, 0.24, 0.28]
    assert media.irregular == 6
    assert all(b > a for a, b in itertools.pairwise(times)), "strictly increasing"


class _TimedFile(FrameSource):
    """A timed source with the given frame timestamps (seconds), read as fast as asked."""

    def __init__(self, stamps: list[float | None], fps: float | None) -> None:
        self.width, self.height, self.fps, self.live, self.timed = 64, 48, fps, False, True
        self._stamps = list(stamps)

    def read(self) -> av.VideoFrame | None:
        if not self._stamps:
            return None
        stamp = self._stamps.pop(0)
        frame = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
        if stamp is not None:
            frame.pts, frame.time_base = round(stamp * 1000), Fraction(1, 1000)
        return frame

    def close(self) -> None:
        pass


def _capture_timed(source: FrameSource, stream_fps: float) -> tuple[list[CapturedFrame], float]:
    slot = _RecordingSlot()
    thread = CaptureThread(source, slot, fps=stream_fps, on_skipped=lambda _: None)
    started = time.monotonic()
    thread.run()
    assert thread.error is None
    return slot.published, time.monotonic() - started


def test_a_file_is_paced_by_its_timestamps() -> None:
    stamps = [0.0, 0.02, 0.1, 0.12, 0.3, 0.32]  # variable rate, 0.32 s in all
    published, took = _capture_timed(_TimedFile(stamps, fps=50.0), stream_fps=50.0)
    assert [f.pts for f in published] == [round(t * 90_000) for t in stamps]
    assert 0.3 <= took < 0.6, "real time, not as fast as it decodes"
    gaps = np.diff([f.captured_at for f in published])
    assert gaps[3] == pytest.approx(0.18, abs=0.05)


def test_a_file_with_bogus_timestamps_is_paced_at_its_rate() -> None:
    # Frames muxed without timestamps: 0.4 ms apart (2500 fps) or none at all.
    stamps: list[float | None] = [i * 0.0004 for i in range(6)] + [None] * 4
    published, took = _capture_timed(_TimedFile(stamps, fps=None), stream_fps=20.0)
    assert [f.pts for f in published] == [i * 4500 for i in range(10)], "1/20 s apart"
    assert 0.4 <= took < 0.8


def test_a_file_faster_than_the_stream_is_decimated() -> None:
    stamps = [i / 60 for i in range(30)]  # 0.5 s of a 60 fps file streamed at 30
    published, _ = _capture_timed(_TimedFile(stamps, fps=60.0), stream_fps=30.0)
    assert 14 <= len(published) <= 16
    assert all(b.pts - a.pts >= 2900 for a, b in itertools.pairwise(published))
