"""The scheduling policy, driven with a fake clock and literal frames (no threads)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from shelf_stream.engine.base import Detections, Detector, PreparedImage
from shelf_stream.server.scheduler import (
    InferenceScheduler,
    PendingFrame,
    SchedulerConfig,
    SchedulerPolicy,
)

PREPARED = PreparedImage(np.zeros((3, 4, 4), np.float32), 1.0, 0.0, 0.0, 4, 4)


def frame(stream: int, pts: int, *, received: float = 0.0, decoded: float = 0.0) -> PendingFrame:
    return PendingFrame(stream, pts, 0, received, decoded, PREPARED)


def test_newest_frame_of_a_stream_replaces_the_waiting_one() -> None:
    policy = SchedulerPolicy(max_frame_age_s=1.0)
    assert policy.offer(frame(1, 0)) is None
    replaced = policy.offer(frame(1, 3000))
    assert replaced is not None and replaced.pts == 0
    batch = policy.take_batch(now=0.0)
    assert [f.pts for f in batch.frames] == [3000]
    assert policy.get_timer() is None


def test_frames_older_than_the_limit_are_returned_as_too_old() -> None:
    policy = SchedulerPolicy(max_frame_age_s=0.5)
    policy.offer(frame(1, 0, received=0.0))
    policy.offer(frame(2, 0, received=0.4))
    batch = policy.take_batch(now=0.6)
    assert [f.stream_id for f in batch.too_old] == [1]
    assert [f.stream_id for f in batch.frames] == [2]


def test_batches_take_the_longest_waiting_streams_first() -> None:
    policy = SchedulerPolicy(max_batch_size=2, max_frame_age_s=1.0)
    policy.offer(frame(1, 0))
    policy.offer(frame(2, 0))
    policy.offer(frame(3, 0))
    policy.offer(frame(1, 3000))  # stream 1 refilled: it goes to the back
    first = policy.take_batch(now=0.0)
    assert [f.stream_id for f in first.frames] == [2, 3]
    second = policy.take_batch(now=0.0)
    assert [(f.stream_id, f.pts) for f in second.frames] == [(1, 3000)]


def test_timer_waits_for_a_fuller_batch_at_most_the_batch_wait() -> None:
    policy = SchedulerPolicy(max_batch_size=4, max_batch_wait_s=0.002, max_frame_age_s=1.0)
    assert policy.get_timer() is None
    policy.offer(frame(1, 0, decoded=10.0))
    assert policy.get_timer() == pytest.approx(10.002)
    for stream in (2, 3, 4):
        policy.offer(frame(stream, 0, decoded=10.001))
    assert policy.get_timer() == 0.0  # full batch: due now


def test_removing_a_stream_returns_its_waiting_frame() -> None:
    policy = SchedulerPolicy(max_frame_age_s=1.0)
    policy.offer(frame(7, 42))
    removed = policy.remove_stream(7)
    assert removed is not None and removed.pts == 42
    assert len(policy) == 0 and policy.remove_stream(7) is None


class _CountingDetector(Detector):
    """A stand-in model: one box per frame whose score encodes the batch size."""

    def __init__(self) -> None:
        self.batch_sizes: list[int] = []

    model_name = "counting"  # type: ignore[assignment]
    input_size = (4, 4)  # type: ignore[assignment]
    class_names = ("thing",)  # type: ignore[assignment]

    def prepare(self, image: object) -> PreparedImage:
        return PREPARED

    def infer(self, batch: object) -> list[Detections]:
        frames = list(batch)  # type: ignore[call-overload]
        self.batch_sizes.append(len(frames))
        return [Detections.empty() for _ in frames]


def test_scheduler_answers_every_offered_frame_once() -> None:
    """Through the real runner: each frame ends inferred or superseded, never both."""

    async def run() -> tuple[list[tuple[int, str | None]], list[int]]:
        detector = _CountingDetector()
        scheduler = InferenceScheduler(detector, SchedulerConfig(max_batch_size=2))
        done: list[tuple[int, str | None]] = []
        superseded: list[int] = []
        scheduler.register(1, lambda f, d, s, e, reason: done.append((f.pts, reason)))
        scheduler.register(2, lambda f, d, s, e, reason: done.append((f.pts + 1, reason)))
        scheduler.start()
        loop = asyncio.get_running_loop()
        for pts in range(0, 20, 2):
            for stream in (1, 2):
                now = loop.time()
                old = scheduler.offer(frame(stream, pts, received=now, decoded=now))
                if old is not None:
                    superseded.append(old.pts + (stream == 2))
            await asyncio.sleep(0)
        await scheduler.wait_stream_idle(1)
        await scheduler.wait_stream_idle(2)
        await scheduler.close()
        return done, superseded

    done, superseded = asyncio.run(run())
    answered = [pts for pts, _ in done] + superseded
    assert sorted(answered) == sorted(list(range(0, 20, 2)) + list(range(1, 21, 2)))
    assert all(reason is None for _, reason in done)
