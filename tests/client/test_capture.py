"""The capture thread: steady pacing, newest frame wins, live sources decimated."""

from __future__ import annotations

import av
import numpy as np

from shelf_stream.client.capture import CapturedFrame, CaptureThread, LatestSlot
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


def _capture(
    camera_fps: float, stream_fps: float, frames: int, jitter_s: float = 0.002
) -> list[CapturedFrame]:
    clock = [100.0]
    slot: LatestSlot[CapturedFrame] = LatestSlot()
    published: list[CapturedFrame] = []
    original_put = slot.put

    def put(item: CapturedFrame) -> CapturedFrame | None:
        published.append(item)
        return original_put(item)

    slot.put = put  # type: ignore[method-assign]
    thread = CaptureThread(
        _FakeCamera(clock, camera_fps, frames, jitter_s),
        slot,
        fps=stream_fps,
        on_skipped=lambda _: None,
        clock=lambda: clock[0],
    )
    thread.run()  # in this thread: the fake camera never blocks
    assert thread.error is None
    return published


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
