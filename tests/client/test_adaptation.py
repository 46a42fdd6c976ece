"""When a controller target is worth an encoder switch (each costs a keyframe)."""

from __future__ import annotations

from shelf_stream.client.adaptation import Retarget
from shelf_stream.client.controller import Target


def target(kbps: float, width: int = 640, height: int = 480, fps: float = 30.0) -> Target:
    return Target(kbps, fps, width, height)


def test_small_changes_are_ignored_and_decreases_pass_quickly() -> None:
    retarget = Retarget(target(1000), now=0.0)
    assert not retarget.offer(target(950), now=4.0)  # 5 %: not worth a keyframe
    assert retarget.offer(target(800), now=4.0)
    assert retarget.take() == target(800)
    assert retarget.take() is None, "taken once"
    assert not retarget.offer(target(600), now=4.2)  # within 0.25 s of the last switch
    assert retarget.offer(target(600), now=4.3)


def test_increases_wait_longer_than_decreases() -> None:
    retarget = Retarget(target(1000), now=0.0)
    assert retarget.offer(target(700), now=1.0)
    assert not retarget.offer(target(900), now=1.5)  # up: at most every second
    assert retarget.offer(target(900), now=2.1)
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
