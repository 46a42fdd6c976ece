"""Capture into a latest-frame slot, paced by the source's clock.

Threads and hand-offs (docs/design.md):
- the capture thread alone owns the source: it reads frames, paces them (below) and
  puts each in a ``LatestSlot`` (size 1): when the encoder worker has not taken the
  previous frame yet, the newer one replaces it and the older is reported skipped;
- the encoder worker (``encoder_worker``) takes from the slot.

Pacing, by the source's kind:
- a live source (a camera) delivers frames on its own clock; frames that come before
  the stream's next tick are dropped (a 30 fps camera streamed at 15);
- a timed source (a file) is paced by its frames' timestamps (``MediaClock``: where a
  timestamp is missing or implausible, one frame interval of the file's rate after the
  previous frame), and decimated to the stream's rate like a camera;
- any other source (the demo scene, a test pattern) on a steady clock at the stream's
  rate, skipping the ticks it missed rather than catching up in a burst.

The pts is the frame's time on the stream's clock (90 kHz from the start), so the
stream's rate can change (``set_fps``) mid-stream.
"""

from __future__ import annotations

import logging
import queue
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
        """Closed and empty: nothing more will come out."""
        with self._cond:
            return self._closed and self._item is None

    @property
    def closing(self) -> bool:
        """Closed: nothing more will go in (an item may still be left)."""
        with self._cond:
            return self._closed


@dataclass(slots=True)
class CapturedFrame:
    """A frame as captured, with its pts on the stream's clock and the local capture time.

    ``frame`` is None for a camera's access unit passed through undecoded (``passthrough``).
    """

    frame: av.VideoFrame | None
    pts: int
    captured_at: float  # time.monotonic() seconds


class MediaClock:
    """The media time of each frame of a timed source, from 0, strictly increasing (sans-I/O).

    A frame's timestamp counts when it lies ``min_gap_s`` to ``max_gap_s`` after the
    previous frame's; otherwise (missing, repeated, backwards, a jump, or denser than any
    real camera: frames muxed without timestamps) the frame comes one interval of
    ``fallback_fps`` after the previous one. ``irregular`` counts those frames.
    """

    def __init__(
        self, fallback_fps: float, *, min_gap_s: float = 1 / 240, max_gap_s: float = 1.0
    ) -> None:
        if not fallback_fps > 0:
            raise ValueError("fallback_fps must be positive")
        self.fallback_s = 1 / fallback_fps
        self.min_gap_s, self.max_gap_s = min_gap_s, max_gap_s
        self.irregular = 0
        self._last_stamp: float | None = None
        self._media_s: float | None = None

    def next(self, timestamp_s: float | None) -> float:
        """The media time (seconds from the first frame) of the next frame."""
        previous_stamp, self._last_stamp = self._last_stamp, timestamp_s
        if self._media_s is None:
            self._media_s = 0.0
            return 0.0
        gap = None
        if timestamp_s is not None and previous_stamp is not None:
            gap = timestamp_s - previous_stamp
        if gap is None or not self.min_gap_s <= gap <= self.max_gap_s:
            self.irregular += 1
            gap = self.fallback_s
        self._media_s += gap
        return self._media_s


class CaptureThread(threading.Thread):
    """Reads ``source`` and publishes its frames into ``slot`` (see the module docstring).

    ``set_fps`` is the one way in from other threads (a queue); everything else belongs
    to the thread.
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
        self.max_frames = max_frames
        self.duration_s = duration_s
        self.on_skipped = on_skipped
        self._fps = fps
        self._fps_requests: queue.SimpleQueue[float] = queue.SimpleQueue()
        self._clock = clock
        self._stop_event = threading.Event()
        self.frames_captured = 0
        self.ticks_missed = 0
        self.frames_decimated = 0  # live and timed sources faster than the stream's rate
        self.error: BaseException | None = None
        self._warned_irregular = False

    def stop(self) -> None:
        self._stop_event.set()

    def set_fps(self, fps: float) -> None:
        """Change the capture rate from the next frame on (any thread)."""
        self._fps_requests.put(fps)

    def run(self) -> None:
        try:
            self._capture()
        except BaseException as exc:  # reported by the client, not lost in the thread
            self.error = exc
            log.error("capture failed: %s", exc)
        finally:
            self.slot.close()

    def _take_fps_requests(self) -> None:
        while True:
            try:
                self._fps = self._fps_requests.get_nowait()
            except queue.Empty:
                return

    def _capture(self) -> None:
        start = due = self._clock()
        # Live and timed sources: when the next frame is wanted, on the stream's clock (so a
        # file read late is not decimated for it: only its own timestamps count).
        tick: float | None = None
        media = MediaClock(self.source.fps or self._fps) if self.source.timed else None
        lag_s = 0.0  # timed sources: how far reading fell behind the file's pace, in all
        while not self._stop_event.is_set():
            if self.max_frames is not None and self.frames_captured >= self.max_frames:
                return
            if self.duration_s is not None and self._clock() - start >= self.duration_s:
                return
            frame = self.source.read()
            if frame is None:
                return  # end of a finite source
            self._take_fps_requests()
            if self.source.live:
                pts_s = self._clock() - start
            elif media is not None:
                pts_s = media.next(frame.time)
                self._warn_once_if_irregular(media)
                # Late (reading is slower than the file): the file's pace resumes from now.
                lag_s = max(lag_s, self._clock() - start - pts_s)
                if self._stop_event.wait(max(0.0, start + lag_s + pts_s - self._clock())):
                    return
            else:
                due = self._skip_missed_ticks(due, self._clock())
                if self._stop_event.wait(max(0.0, due - self._clock())):
                    return
                self._publish(CapturedFrame(frame, round((due - start) / TIME_BASE), self._clock()))
                due += 1 / self._fps
                continue
            if tick is not None and self._decimate(tick, pts_s):
                continue
            tick = self._next_tick(tick, pts_s)
            self._publish(CapturedFrame(frame, round(pts_s / TIME_BASE), self._clock()))

    def _next_tick(self, tick: float | None, at_s: float) -> float:
        """Ticks accumulate (a 30 fps camera at 20 gives 20), but never run more than
        half an interval behind a slower camera."""
        interval = 1 / self._fps
        return at_s + interval if tick is None else max(tick + interval, at_s + interval / 2)

    def _warn_once_if_irregular(self, media: MediaClock) -> None:
        if media.irregular and not self._warned_irregular:
            self._warned_irregular = True
            log.warning(
                "the input has frames without a usable timestamp; those are paced at "
                "%.3g fps", 1 / media.fallback_s,
            )  # fmt: skip

    def _decimate(self, tick: float, at_s: float) -> bool:
        """A source faster than the stream's rate: drop frames that come before their tick
        (``tick`` and ``at_s``, the frame's time, on the stream's clock).

        The encoder budgets its bitrate per frame at the stream's rate, so every extra frame
        would add bits the rate controller never asked for. A fifth of an interval of slack
        absorbs the camera's jitter.
        """
        source_fps = self.source.fps
        if source_fps is not None and self._fps >= 0.9 * source_fps:
            return False  # not faster than the stream: jitter must not cost frames
        if at_s >= tick - 0.2 / self._fps:
            return False
        self.frames_decimated += 1
        return True

    def _skip_missed_ticks(self, due: float, now: float) -> float:
        """If ``due`` is more than an interval past, move it to the latest tick."""
        interval = 1 / self._fps
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
