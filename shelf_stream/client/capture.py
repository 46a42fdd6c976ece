"""Capture on a steady clock into a latest-frame slot; encode in a worker thread.

Threads and hand-offs (DESIGN.md):
- the capture thread reads the source on its own clock at the chosen frame rate and
  puts each frame in a ``LatestSlot`` (size 1): when the encoder has not taken the
  previous frame yet, the newer one replaces it and the older is reported skipped;
- the encoder thread takes from the slot, encodes one access unit and hands it to the
  asyncio sender, blocking while the sender's small queue is full, so a slow link
  shows up as frames skipped at capture, never as a burst of queued packets.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import av

from shelf_stream.client.sources import FrameSource
from shelf_stream.codec.base import TIME_BASE

log = logging.getLogger("shelf_stream.client")

T = TypeVar("T")


class LatestSlot(Generic[T]):
    """A thread-safe slot of size one: ``put`` replaces, ``get`` waits."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: T | None = None
        self._closed = False

    def put(self, item: T) -> T | None:
        """Store ``item``; returns the unconsumed item it replaced, if any."""
        with self._cond:
            replaced, self._item = self._item, item
            self._cond.notify()
            return replaced

    def get(self, timeout: float | None = None) -> T | None:
        """Take the item, waiting up to ``timeout``; None when empty (or closed and empty)."""
        with self._cond:
            if self._item is None and not self._closed:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            return item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed and self._item is None


@dataclass(slots=True)
class CapturedFrame:
    """A frame as captured, with its pts on the stream's clock and the local capture time."""

    frame: av.VideoFrame
    pts: int
    captured_at: float  # time.monotonic() seconds


class CaptureThread(threading.Thread):
    """Reads ``source`` on a steady clock and publishes frames into ``slot``.

    For files and generated sources the thread paces itself: each frame is published at
    its due time, one frame interval after the previous one; if reading fell behind,
    the missed ticks are skipped (their pts never exist) instead of catching up in a
    burst. For live cameras the device sets the pace, and frames that come before the
    stream's next tick are dropped (a 30 fps camera streamed at 15). Either way the pts is
    the due (or capture) time on the stream's clock, so ``set_fps`` can change the rate
    mid-stream.
    """

    def __init__(
        self,
        source: FrameSource,
        slot: LatestSlot[CapturedFrame],
        *,
        fps: float,
        max_frames: int | None = None,
        duration_s: float | None = None,
        on_skipped: Callable[[CapturedFrame], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(name="capture", daemon=True)
        self.source = source
        self.slot = slot
        self.fps = fps
        self.max_frames = max_frames
        self.duration_s = duration_s
        self.on_skipped = on_skipped
        self._clock = clock
        self._stop_event = threading.Event()
        self.frames_captured = 0
        self.ticks_missed = 0
        self.frames_decimated = 0  # live sources faster than ``fps``
        self.error: BaseException | None = None

    def stop(self) -> None:
        self._stop_event.set()

    def set_fps(self, fps: float) -> None:
        """Change the capture rate from the next frame on (any thread)."""
        self.fps = fps

    def run(self) -> None:
        try:
            self._capture()
        except BaseException as exc:  # reported by the client, not lost in the thread
            self.error = exc
            log.error("capture failed: %s", exc)
        finally:
            self.slot.close()

    def _capture(self) -> None:
        start = due = self._clock()
        live_due: float | None = None  # live sources: when the next frame is wanted
        while not self._stop_event.is_set():
            if self.max_frames is not None and self.frames_captured >= self.max_frames:
                return
            if self.duration_s is not None and self._clock() - start >= self.duration_s:
                return
            frame = self.source.read()
            if frame is None:
                return  # end of a finite source
            if self.source.live:
                now = self._clock()
                if live_due is not None and self._decimate(live_due, now):
                    continue
                interval = 1 / self.fps
                # Ticks accumulate (a 30 fps camera at 20 gives 20), but never run more
                # than half an interval behind a slower camera.
                live_due = (
                    now + interval
                    if live_due is None
                    else max(live_due + interval, now + interval / 2)
                )
                self._publish(CapturedFrame(frame, round((now - start) / TIME_BASE), now))
                continue
            due = self._skip_missed_ticks(due, self._clock())
            if self._stop_event.wait(max(0.0, due - self._clock())):
                return
            self._publish(CapturedFrame(frame, round((due - start) / TIME_BASE), self._clock()))
            due += 1 / self.fps

    def _decimate(self, due: float, now: float) -> bool:
        """A camera faster than the stream's rate: drop frames that come before their tick.

        The encoder budgets its bitrate per frame at the stream's rate, so every extra frame
        would add bits the rate controller never asked for. A fifth of an interval of slack
        absorbs the camera's jitter.
        """
        camera_fps = self.source.fps
        if camera_fps is not None and self.fps >= 0.9 * camera_fps:
            return False  # not faster than the stream: jitter must not cost frames
        if now >= due - 0.2 / self.fps:
            return False
        self.frames_decimated += 1
        return True

    def _skip_missed_ticks(self, due: float, now: float) -> float:
        """If ``due`` is more than an interval past, move it to the latest tick."""
        interval = 1 / self.fps
        late_ticks = int((now - due) / interval)
        if late_ticks > 0:
            self.ticks_missed += late_ticks
            due += late_ticks * interval
        return due

    def _publish(self, captured: CapturedFrame) -> None:
        self.frames_captured += 1
        replaced = self.slot.put(captured)
        if replaced is not None:
            self.on_skipped(replaced)
