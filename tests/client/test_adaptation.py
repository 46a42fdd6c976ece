"""The adaptation object, and when a controller target is worth an encoder switch (each
costs a keyframe); all with literal inputs and a fake clock."""

from __future__ import annotations

import math

import pytest

from shelf_stream.client.adaptation import (
    Adaptation,
    AdaptationConfig,
    EncoderSpeedChanged,
    EncoderSwitch,
    FrameShareChanged,
    FrameThinner,
    Retarget,
)
from shelf_stream.client.controller import RateControlConfig, Target
from shelf_stream.client.encode_rate import EncodeRateConfig
from shelf_stream.client.ladder import Rung


def target(kbps: float, width: int = 640, height: int = 480, fps: float = 30.0) -> Target:
    return Target(kbps, fps, width, height)


def test_small_changes_are_ignored_and_decreases_that_hold_pass() -> None:
    retarget = Retarget(target(1000), now=0.0)
    assert not retarget.offer(target(950), now=4.0)  # 5 %: not worth a keyframe
    assert not retarget.offer(target(800), now=4.0)  # down: thinned until it holds...
    assert retarget.offer(target(800), now=4.5)  # ...0.5 s
    assert retarget.current == target(800)
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
    assert retarget.current == slower
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


# ---------------------------------------------------------------------------- Adaptation

FLAT = (Rung(640, 480, 30, 100, 20_000),)


def _adaptation(**config: object) -> Adaptation:
    adaptation = Adaptation(
        AdaptationConfig(**config),  # type: ignore[arg-type]
        start=target(1000),
        now=0.0,
        ladder=FLAT,
        can_go_faster=True,
    )
    adaptation.on_connected(0.0, rtt_ms=40.0)
    return adaptation


def _events(adaptation: Adaptation) -> list[object]:
    events = []
    while (event := adaptation.next_event()) is not None:
        events.append(event)
    return events


def _stream(
    adaptation: Adaptation,
    start: float,
    end: float,
    *,
    encode_ms: float,
    seq: int = 0,
    delay_s: float = 0.0,
) -> int:
    """Frames every 1/30 s from ``start`` to ``end``: encoded, sent, and fed back after
    ``delay_s`` of one-way delay each 100 ms (arrival = send + delay)."""
    arrivals: list[tuple[int, int]] = []
    t = start
    next_feedback = start + 0.1
    while t < end:
        adaptation.on_encoded(4000, encode_ms, t, encoder_kbps=1000, fps=30.0)
        adaptation.on_sent(seq, 4100, t, keyframe=False)
        arrivals.append((seq, round((t + delay_s) * 1e6)))
        seq += 1
        t += 1 / 30
        if t >= next_feedback:
            adaptation.on_feedback(arrivals, t)
            arrivals = []
            next_feedback += 0.1
        timer = adaptation.get_timer()
        if timer is not None and t >= timer:
            adaptation.handle_timer(t)
    return seq


def test_the_start_plan_is_the_start_target() -> None:
    adaptation = _adaptation()
    assert adaptation.plan.target == target(1000)
    assert adaptation.plan.encoder_kbps == 1000 and adaptation.plan.frame_share == 1.0
    assert _events(adaptation) == []


def test_disabled_keeps_the_start_plan_whatever_comes_in() -> None:
    adaptation = _adaptation(enabled=False)
    _stream(adaptation, 0.0, 5.0, encode_ms=200.0, delay_s=0.5)
    assert adaptation.get_timer() is None
    assert adaptation.plan.target == target(1000) and _events(adaptation) == []


def test_queries_never_change_state() -> None:
    adaptation = _adaptation()
    _stream(adaptation, 0.0, 2.0, encode_ms=5.0)
    before = (adaptation.plan, adaptation.snapshot(), adaptation.get_timer())
    for _ in range(3):
        assert (adaptation.plan, adaptation.snapshot(), adaptation.get_timer()) == before


def test_a_slow_encoder_switches_to_its_faster_preset_first() -> None:
    # 100 ms a frame: 10 fps of 30. First the faster preset (one switch), never fewer
    # frames before that.
    adaptation = _adaptation(encode_rate=EncodeRateConfig(min_interval_s=1.0))
    _stream(adaptation, 0.0, 4.0, encode_ms=100.0)
    events = _events(adaptation)
    speed = [e for e in events if isinstance(e, EncoderSpeedChanged)]
    assert speed and speed[0].change.faster and speed[0].change.fps is None
    switches = [e.plan.target for e in events if isinstance(e, EncoderSwitch)]
    fast = [t for t in switches if t.fast_preset]
    assert fast, "the encoder re-opens with its faster preset"
    assert all(t.encode_fps is None for t in switches), "not yet fewer frames"
    assert adaptation.plan.target.fast_preset


def test_a_growing_queue_lowers_the_plan_at_once_by_thinning_then_switches() -> None:
    adaptation = _adaptation(control=RateControlConfig(max_bitrate_kbps=20_000))
    seq = _stream(adaptation, 0.0, 3.0, encode_ms=5.0)
    _events(adaptation)
    # The link backs up: every frame waits 150 ms more than the one before... until the
    # queue is far above the drain threshold.
    arrivals, t = [], 3.0
    shares, switched_at = [], None
    while t < 5.0:
        adaptation.on_encoded(4000, 5.0, t, encoder_kbps=1000, fps=30.0)
        adaptation.on_sent(seq, 4100, t, keyframe=False)
        arrivals.append((seq, round((t + 0.15 * (t - 3.0) * 30 / 4) * 1e6)))
        seq += 1
        t += 1 / 30
        if len(arrivals) == 3:
            adaptation.on_feedback(arrivals, t)
            arrivals = []
        for event in _events(adaptation):
            if isinstance(event, FrameShareChanged):
                shares.append(event.plan.frame_share)
            elif isinstance(event, EncoderSwitch) and switched_at is None:
                switched_at = t
    assert shares and min(shares) < 1.0, "fewer frames at once, no keyframe"
    assert switched_at is not None, "then a switch, once the decrease held"
    assert adaptation.plan.target.bitrate_kbps < 1000


def test_a_reconnect_keeps_the_encoder_and_its_speed() -> None:
    adaptation = _adaptation(encode_rate=EncodeRateConfig(min_interval_s=1.0))
    _stream(adaptation, 0.0, 4.0, encode_ms=100.0)
    plan = adaptation.plan
    adaptation.on_connected(4.0, rtt_ms=40.0)
    assert adaptation.plan == plan, "the encoder runs on; only the estimate starts afresh"
    controller = adaptation.controller
    assert controller is not None and controller.target().bitrate_kbps == plan.target.bitrate_kbps
