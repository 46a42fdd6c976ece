"""Inference scheduling: which decoded frames run, in which batch, and which are dropped.

``SchedulerPolicy`` is sans-I/O (frames and ``now`` in, decisions out) so tests drive it
with a fake clock. ``InferenceScheduler`` is the asyncio runner around it: it owns the
detector's worker thread and hands each finished frame back to its stream's callback
on the event loop.

Drop rules (docs/design.md, "Server"): one slot per stream holds its newest decoded frame; a frame
replaced before inference is answered ``SUPERSEDED``; a frame older than
``max_frame_age_s`` when its batch would start is answered ``TOO_OLD``. Every frame
offered leaves through its stream's callback exactly once, as an ``InferenceDone``
carrying detections or the wire's ``DropReason`` (until the stream unregisters).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from shelf_stream import protocol as p
from shelf_stream.engine.base import Detections, Detector, PreparedImage

log = logging.getLogger("shelf_stream.server")


@dataclass(slots=True, eq=False)
class PendingFrame:
    """A decoded, letterboxed frame waiting for inference. Owned by the scheduler."""

    stream_id: int
    pts: int
    capture_us: int
    received_at: float  # monotonic seconds, when its access unit arrived
    decoded_at: float  # monotonic seconds, when it was decoded and letterboxed
    prepared: PreparedImage
    offered_seq: int = field(default=0)  # order of arrival, for fairness


@dataclass(frozen=True, slots=True)
class Batch:
    frames: list[PendingFrame]
    too_old: list[PendingFrame]


class SchedulerPolicy:
    """Latest-frame slot per stream, batching across streams, oldest stream first."""

    def __init__(
        self, *, max_batch_size: int = 1, max_batch_wait_s: float = 0.0, max_frame_age_s: float
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self.max_batch_size = max_batch_size
        self.max_batch_wait_s = max_batch_wait_s
        self.max_frame_age_s = max_frame_age_s
        self._slots: dict[int, PendingFrame] = {}  # stream id → its newest frame
        self._counter = 0
        # stream id → number of the batch that last served it (absent: never served).
        self._last_served: dict[int, int] = {}
        self._batches_taken = 0

    def __len__(self) -> int:
        return len(self._slots)

    def offer(self, frame: PendingFrame) -> PendingFrame | None:
        """Put ``frame`` in its stream's slot; returns the frame it replaced, if any."""
        self._counter += 1
        frame.offered_seq = self._counter
        replaced = self._slots.get(frame.stream_id)
        self._slots[frame.stream_id] = frame
        return replaced

    def remove_stream(self, stream_id: int) -> PendingFrame | None:
        self._last_served.pop(stream_id, None)
        return self._slots.pop(stream_id, None)

    def has_frame(self, stream_id: int) -> bool:
        return stream_id in self._slots

    def get_timer(self) -> float | None:
        """When the next batch is due (monotonic seconds), or None with nothing waiting."""
        if not self._slots:
            return None
        if len(self._slots) >= self.max_batch_size:
            return 0.0
        oldest = min(frame.decoded_at for frame in self._slots.values())
        return oldest + self.max_batch_wait_s

    def take_batch(self, now: float) -> Batch:
        """Take up to ``max_batch_size`` frames, least recently served streams first.

        Frames older than the age limit are removed and returned as ``too_old``.
        """
        too_old = [
            frame
            for frame in self._slots.values()
            if now - frame.received_at > self.max_frame_age_s
        ]
        for frame in too_old:
            del self._slots[frame.stream_id]
        # Fairness: the stream served least recently goes first (round robin among
        # the streams with a frame waiting), then the one whose frame waited longest.
        # Ordering by frame age alone starved periodic streams: a slot refilled just
        # after another stream's always looked newer (a 30 fps stream got 0 of 1800
        # frames beside 60 and 30 fps streams in tests/server/test_scheduler.py).
        ready = sorted(
            self._slots.values(),
            key=lambda frame: (self._last_served.get(frame.stream_id, 0), frame.offered_seq),
        )
        batch = ready[: self.max_batch_size]
        if batch:
            self._batches_taken += 1
        for frame in batch:
            del self._slots[frame.stream_id]
            self._last_served[frame.stream_id] = self._batches_taken
        return Batch(batch, too_old)


@dataclass(frozen=True, slots=True)
class InferenceDone:
    """A frame leaving the scheduler: its detections, or why it was dropped."""

    frame: PendingFrame
    outcome: Detections | p.DropReason
    started: float = 0.0  # inference start and end (monotonic s); 0 when dropped
    finished: float = 0.0


#: Called on the event loop for every frame that leaves the scheduler.
FrameDone = Callable[[InferenceDone], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class SchedulerConfig:
    """Settings of the inference scheduler (shared by all streams of a server)."""

    max_batch_size: int = 1
    max_batch_wait_ms: float = 2.0
    max_frame_age_ms: float = 500.0


class InferenceScheduler:
    """Runs the detector on the newest frame of each stream, one batch at a time.

    The detector belongs to one worker thread; the scheduler task on the event loop
    decides what runs next and delivers results through each stream's callback.
    """

    def __init__(
        self,
        detector: Detector,
        config: SchedulerConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.detector = detector
        self.config = config
        self._clock = clock
        self._policy = SchedulerPolicy(
            max_batch_size=config.max_batch_size,
            max_batch_wait_s=config.max_batch_wait_ms / 1000,
            max_frame_age_s=config.max_frame_age_ms / 1000,
        )
        self._callbacks: dict[int, FrameDone] = {}
        self._in_flight: dict[int, int] = {}  # stream id → frames being inferred now
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Condition()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._task: asyncio.Task[None] | None = None
        self.batches_run = 0
        self.frames_run = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="inference")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        # Wait for a batch still on the worker so the detector is not closed under it.
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown, True)

    def register(self, stream_id: int, on_done: FrameDone) -> None:
        self._callbacks[stream_id] = on_done
        self._in_flight[stream_id] = 0

    def unregister(self, stream_id: int) -> PendingFrame | None:
        """Forget a stream; returns its frame that had not started, for the caller to answer."""
        self._callbacks.pop(stream_id, None)
        self._in_flight.pop(stream_id, None)
        return self._policy.remove_stream(stream_id)

    def offer(self, frame: PendingFrame) -> None:
        """Queue ``frame`` for inference; the frame it replaces is reported SUPERSEDED."""
        replaced = self._policy.offer(frame)
        self._wakeup.set()
        if replaced is not None:
            self._finish(InferenceDone(replaced, p.DropReason.SUPERSEDED))

    async def wait_stream_idle(self, stream_id: int) -> None:
        """Return once the stream has no frame waiting or being inferred."""
        async with self._idle:
            await self._idle.wait_for(
                lambda: (
                    not self._policy.has_frame(stream_id) and not self._in_flight.get(stream_id, 0)
                )
            )

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = self._policy.get_timer()
            if due is None:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            delay = due - self._clock()
            if delay > 0:
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), timeout=delay)
                continue
            batch = self._policy.take_batch(self._clock())
            for frame in batch.too_old:
                self._finish(InferenceDone(frame, p.DropReason.TOO_OLD))
            if batch.frames:
                await self._infer(loop, batch.frames)
            await self._notify_idle()

    async def _infer(self, loop: asyncio.AbstractEventLoop, frames: list[PendingFrame]) -> None:
        for frame in frames:
            self._in_flight[frame.stream_id] = self._in_flight.get(frame.stream_id, 0) + 1
        started = self._clock()
        outcomes: list[Detections | p.DropReason]
        try:
            outcomes = list(
                await loop.run_in_executor(
                    self._executor, self.detector.infer, [f.prepared for f in frames]
                )
            )
        except Exception:
            log.exception(
                "inference failed on a batch of %d frames; answering them dropped", len(frames)
            )
            outcomes = [p.DropReason.INFERENCE_ERROR] * len(frames)
        finished = self._clock()
        self.batches_run += 1
        self.frames_run += len(frames)
        for frame, outcome in zip(frames, outcomes, strict=True):
            if frame.stream_id in self._in_flight:
                self._in_flight[frame.stream_id] -= 1
            self._finish(InferenceDone(frame, outcome, started, finished))

    def _finish(self, done: InferenceDone) -> None:
        callback = self._callbacks.get(done.frame.stream_id)
        if callback is None:
            return  # the stream is gone; nobody is waiting for this answer
        try:
            callback(done)
        except Exception:
            log.exception("stream %d failed to handle a result", done.frame.stream_id)

    async def _notify_idle(self) -> None:
        async with self._idle:
            self._idle.notify_all()
