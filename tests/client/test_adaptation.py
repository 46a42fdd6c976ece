"""When a controller target is worth an encoder switch (each costs a keyframe)."""

from __future__ import annotations

import math

import pytest

from shelf_stream.client.adaptation import FrameThinner, Retarget
from shelf_stream.client.controller import Target


def target(kbps: float, width: int = 640, height: int = 480, fps: float = 30.0) -> Target:
    return Target(kbps, fps, width, height)


def test_small_changes_are_ignored_and_decreases_that_hold_pass() -> None:
    retarget = Retarget(target(1000), now=0.0)
    assert not retarget.offer(target(950), now=4.0)  # 5 %: not worth a keyframe
    assert not retarget.offer(target(800), now=4.0)  # down: thinned until it holds...
    assert retarget.offer(target(800), now=4.5)  # ...0.5 s
    assert retarget.take() == target(800)
    assert retarget.take() is None, "taken once"
    assert not retarget.offer(target(600), now=4.6)
    assert retarget.offer(target(600), now=5.1)


def test_a_dip_shorter_than_the_hold_never_switches() -> None:
    retarget = Retarget(target(1000), now=0.0)
    assert not retarget.offer(target(500), now=2.0)
    assert retarget.frame_share == 0.5, "half the frames at once"
    assert not retarget.offer(target(1000), now=2.3)
    assert retarget.frame_share == 1.0
    assert not retarget.offer(target(500), now=2.6), "the hold starts again"
    assert retarget.switches == 0


def test_increases_wait_a_second_after_a_switch() -> None:
    retarget = Retarget(target(1000), now=0.0)
    retarget.offer(target(700), now=1.0)
    assert retarget.offer(target(700), now=1.5)
    assert not retarget.offer(target(900), now=2.0)  # up: at most every second
    assert retarget.offer(target(900), now=2.6)
    assert retarget.switches == 2


def test_rung_changes_always_pass() -> None:
    retarget = Retarget(target(1000), now=0.0)
    assert retarget.offer(target(1000, 640, 360, 15.0), now=0.1)
    assert retarget.current == target(1000, 640, 360, 15.0)


def test_a_small_change_passes_once_the_encoder_has_settled() -> None:
    retarget = Retarget(target(1388), now=0.0)
    assert not retarget.offer(target(1500), now=3.0)  # +8 %: not yet worth a keyframe
    assert retarget.offer(target(1500), now=5.5)  # ...but after 5 s at 1388 it is
    assert not retarget.offer(target(1520), now=11.0)  # +1.3 %: never


def test_a_new_encoding_rate_is_a_switch() -> None:
    retarget = Retarget(target(1000), now=0.0)
    slower = Target(1000, 30.0, 640, 480, encode_fps=14.0)
    assert retarget.offer(slower, now=0.1), "the encoder must re-open for the rate it reaches"
    assert retarget.take() == slower
    assert not retarget.offer(slower, now=5.0)


def test_a_decrease_that_must_wait_is_met_by_thinning_frames() -> None:
    retarget = Retarget(target(1000), now=0.0)
    assert not retarget.offer(target(950), now=4.0)  # 5 %: not worth a keyframe...
    assert retarget.frame_share == 0.95  # ...but 95 % of the frames carry 95 % of the bits
    assert not retarget.offer(target(800), now=4.1)
    assert retarget.frame_share == 0.8
    assert retarget.offer(target(800), now=4.6)
    assert retarget.frame_share == 1.0, "a switch gives the frames back"
    assert not retarget.offer(target(1200), now=4.7)  # up: wait, never more than all frames
    assert retarget.frame_share == 1.0


@pytest.mark.parametrize(("share", "kept"), [(1.0, 120), (0.75, 90), (0.5, 60), (1 / 3, 40)])
def test_thinner_keeps_the_share_evenly(share: float, kept: int) -> None:
    thinner = FrameThinner()
    admitted = [thinner.admit(share) for _ in range(120)]
    assert sum(admitted) == kept
    runs = "".join("x" if a else "." for a in admitted).split("x")
    longest_gap = math.ceil(1 / share - 1e-9) - 1
    assert max(len(r) for r in runs) <= longest_gap, "dropped evenly, never in a run"
