"""The scheduling policy, driven with a fake clock and literal frames (no threads)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from shelf_stream import protocol as p
from shelf_stream.engine.base import Detections, Detector, PreparedImage
from shelf_stream.server.scheduler import (
    InferenceDone,
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
    """Through the real runner: each frame leaves once, inferred or superseded."""

    async def run() -> list[tuple[int, object]]:
        detector = _CountingDetector()
        scheduler = InferenceScheduler(detector, SchedulerConfig(max_batch_size=2))
        done: list[tuple[int, object]] = []

        def on_done(leaving: InferenceDone) -> None:
            outcome = leaving.outcome
            pts = leaving.frame.pts + (leaving.frame.stream_id == 2)
            done.append((pts, outcome if isinstance(outcome, p.DropReason) else "inferred"))

        scheduler.register(1, on_done)
        scheduler.register(2, on_done)
        scheduler.start()
        loop = asyncio.get_running_loop()
        for pts in range(0, 20, 2):
            for stream in (1, 2):
                now = loop.time()
                scheduler.offer(frame(stream, pts, received=now, decoded=now))
            await asyncio.sleep(0)
        await scheduler.wait_stream_idle(1)
        await scheduler.wait_stream_idle(2)
        await scheduler.close()
        return done

    done = asyncio.run(run())
    assert sorted(pts for pts, _ in done) == sorted([*range(0, 20, 2), *range(1, 21, 2)])
    assert {outcome for _, outcome in done} <= {"inferred", p.DropReason.SUPERSEDED}
    assert any(outcome == "inferred" for _, outcome in done)


def test_an_inference_failure_drops_its_batch_with_the_wire_reason() -> None:
    class _Failing(_CountingDetector):
        def infer(self, batch: object) -> list[Detections]:
            raise RuntimeError("the model broke")

    async def run() -> list[InferenceDone]:
        scheduler = InferenceScheduler(_Failing(), SchedulerConfig())
        done: list[InferenceDone] = []
        scheduler.register(1, done.append)
        scheduler.start()
        now = asyncio.get_running_loop().time()
        scheduler.offer(frame(1, 0, received=now, decoded=now))
        await scheduler.wait_stream_idle(1)
        await scheduler.close()
        return done

    (done,) = asyncio.run(run())
    assert done.outcome is p.DropReason.INFERENCE_ERROR


# ------------------------------------------------------------------ fairness


def _simulate(
    periods_s: dict[int, float], *, infer_s: float, max_batch_size: int, duration_s: float
) -> tuple[dict[int, int], dict[int, int], int]:
    """Drive ``SchedulerPolicy`` with a fake clock the way ``InferenceScheduler`` does:
    offer every frame that arrived by ``now``, wait for the timer, take a batch, then
    hold the detector busy for ``infer_s``. Returns (frames inferred per stream, frames
    offered per stream, batches run)."""
    policy = SchedulerPolicy(
        max_batch_size=max_batch_size, max_batch_wait_s=0.002, max_frame_age_s=1.0
    )
    # Stagger the starts so that no two streams are in lock-step by accident.
    next_at = {stream: 0.001 * stream for stream in periods_s}
    offered = dict.fromkeys(periods_s, 0)
    inferred = dict.fromkeys(periods_s, 0)
    batches, now = 0, 0.0

    def arrivals_until(t: float) -> None:
        # In time order across streams, as the decoders would hand them over.
        while (stream := min(next_at, key=next_at.__getitem__)) and next_at[stream] <= t:
            at = next_at[stream]
            policy.offer(frame(stream, offered[stream], received=at, decoded=at))
            offered[stream] += 1
            next_at[stream] += periods_s[stream]

    while now < duration_s:
        arrivals_until(now)
        due = policy.get_timer()
        if due is None or due > now:
            # Idle: jump to the next arrival or the batch timer, whichever is first.
            now = min([*next_at.values(), *([due] if due is not None else [])])
            continue
        batch = policy.take_batch(now)
        assert not batch.too_old, "the detector keeps up: nothing should age out"
        for f in batch.frames:
            inferred[f.stream_id] += 1
        batches += 1
        now += infer_s
    return inferred, offered, batches


def _max_min_shares(demand: dict[int, int], capacity: int) -> dict[int, float]:
    """Max-min fair shares: streams wanting less than an equal split get all they
    want; the rest is split evenly among the others (water filling)."""
    shares: dict[int, float] = {}
    left, remaining = dict(demand), float(capacity)
    while left:
        equal = remaining / len(left)
        small = {s: d for s, d in left.items() if d <= equal}
        if not small:
            shares.update(dict.fromkeys(left, equal))
            break
        for stream, wanted in small.items():
            shares[stream] = wanted
            remaining -= wanted
            del left[stream]
    return shares


@pytest.mark.parametrize("max_batch_size", [1, 2])
@pytest.mark.parametrize(
    "fps",
    [(100, 30, 10), (100, 30, 30), (60, 30, 30)],
    ids=["100-30-10", "100-30-30", "60-30-30"],
)
def test_no_stream_is_starved_whatever_its_rate(
    fps: tuple[int, int, int], max_batch_size: int
) -> None:
    """Three streams at different rates share a detector that runs ~33 batches/s for
    60 s of fake time. Each stream gets at least 75 % of its max-min fair share
    (offering more frames buys no more than the others' share). Before the
    least-recently-served rule, (60, 30, 30) gave the third stream 0 of its 1800
    frames: its frames always arrived just after the second's."""
    periods = {stream: 1 / rate for stream, rate in enumerate(fps, start=1)}
    inferred, offered, batches = _simulate(
        periods, infer_s=0.030, max_batch_size=max_batch_size, duration_s=60.0
    )
    served = sum(inferred.values())
    assert served >= 0.95 * min(sum(offered.values()), batches * max_batch_size)
    shares = _max_min_shares(offered, served)
    for stream, share in shares.items():
        assert inferred[stream] >= 0.75 * share, (stream, inferred, offered, shares)
    assert all(inferred[s] <= offered[s] for s in offered)
