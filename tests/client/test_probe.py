"""The pre-stream probe and the start choice, through a simulated link with a fake clock."""

from __future__ import annotations

import itertools

import pytest

from shelf_stream import protocol as p
from shelf_stream.bench.link import LinkConfig
from shelf_stream.client.ladder import Rung, default_ladder, floor_kbps
from shelf_stream.client.probe import (
    PROBE_OVERHEAD_BYTES,
    BandwidthProbe,
    ProbeConfig,
    ProbeResult,
    choose_start,
)
from tests.client.sim import run_probe

RTT_MS = 35.0


def _link(mbit: float, jitter_ms: float = 1.0) -> LinkConfig:
    return LinkConfig(RTT_MS, mbit, jitter_ms)


# ------------------------------------------------------------------------------------ probe


@pytest.mark.parametrize("mbit", [5.0, 50.0])
def test_probe_measures_throughput_and_rtt(mbit: float) -> None:
    run = run_probe(_link(mbit))
    result = run.probe.result()
    assert result.reliable
    assert result.throughput_kbps == pytest.approx(mbit * 1000, rel=0.2)
    assert result.rtt_ms == pytest.approx(RTT_MS, abs=3.0)
    assert result.bytes_sent <= ProbeConfig().max_total_bytes
    assert result.duration_ms <= 1500


def test_fast_link_gets_a_second_bigger_burst() -> None:
    slow = run_probe(_link(5.0)).probe.result()
    fast = run_probe(_link(50.0)).probe.result()
    assert slow.bytes_sent == PROBE_OVERHEAD_BYTES + 10 * (PROBE_OVERHEAD_BYTES + 6_000)
    # 60 ms at 50 Mbit/s ≈ 375 kB on top of the first burst.
    assert 300_000 < fast.bytes_sent < 500_000


def test_gigabit_link_stays_within_the_byte_budget() -> None:
    result = run_probe(LinkConfig(RTT_MS, 1000.0)).probe.result()
    assert result.bytes_sent <= 2_000_000
    assert result.throughput_kbps == pytest.approx(1e6, rel=0.2)


def test_slow_link_ends_at_the_deadline_with_a_partial_train() -> None:
    result = run_probe(_link(0.3, jitter_ms=0.0)).probe.result()
    assert result.duration_ms == pytest.approx(1500)
    assert result.throughput_kbps == pytest.approx(300, rel=0.2)
    assert result.reliable  # enough of the burst arrived in time


def test_lost_acks_time_out_and_are_unreliable() -> None:
    # Only the RTT probe's ack comes back: the deadline ends the probe.
    run = run_probe(_link(5.0), lose_ack=lambda probe_id: probe_id > 0)
    result = run.probe.result()
    assert result.duration_ms == pytest.approx(1500)
    assert result.rtt_ms == pytest.approx(RTT_MS, abs=3.0)
    assert result.throughput_kbps is None
    assert not result.reliable


def test_too_few_acks_give_an_unreliable_estimate() -> None:
    run = run_probe(_link(5.0, jitter_ms=0.0), lose_ack=lambda probe_id: probe_id > 3)
    result = run.probe.result()
    assert not result.reliable
    assert result.throughput_kbps == pytest.approx(5000, rel=0.2)


def test_no_answer_at_all() -> None:
    result = run_probe(_link(5.0), lose_ack=lambda _id: True).probe.result()
    assert result == ProbeResult(None, None, PROBE_OVERHEAD_BYTES, 1500.0, False)


def test_a_lost_ack_inside_the_burst_still_counts_its_bytes() -> None:
    result = run_probe(_link(5.0, jitter_ms=0.0), lose_ack=lambda i: i in (3, 6)).probe.result()
    assert result.reliable
    assert result.throughput_kbps == pytest.approx(5000, rel=0.02)


def test_unknown_duplicate_and_late_acks_are_ignored() -> None:
    probe = BandwidthProbe(ProbeConfig(), now=10.0)
    [(rtt_id, padding)] = probe.next_probes(10.0)
    assert padding == 0
    probe.on_ack(p.ProbeAck(999, 10_000_000, 5, 18), 10.03)  # never sent
    assert probe.next_probes(10.03) == []
    ack = p.ProbeAck(rtt_id, 10_000_000, 123, PROBE_OVERHEAD_BYTES)
    probe.on_ack(ack, 10.04)
    burst = probe.next_probes(10.04)
    assert len(burst) == 10 and all(pad == 6_000 for _, pad in burst)
    probe.on_ack(ack, 10.05)  # duplicate: nothing new to send
    assert probe.next_probes(10.05) == []
    assert probe.get_timer() == pytest.approx(11.5)
    probe.handle_timer(11.0)  # early: nothing happens
    assert not probe.done
    probe.handle_timer(11.5)
    assert probe.done and probe.get_timer() is None
    assert probe.result().rtt_ms == pytest.approx(40.0)
    probe.on_ack(ack, 12.0)  # after the end: harmless


def test_result_before_done_raises() -> None:
    with pytest.raises(RuntimeError):
        BandwidthProbe(ProbeConfig(), 0.0).result()


def test_config_is_validated() -> None:
    with pytest.raises(ValueError):
        ProbeConfig(burst_count=1)
    with pytest.raises(ValueError):
        ProbeConfig(min_acks=1)


# ------------------------------------------------------------------------------------ ladder


def test_default_ladder_lowers_fps_before_size() -> None:
    ladder = default_ladder(1280, 720, 30)
    assert [(r.width, r.height, r.fps) for r in ladder] == [
        (1280, 720, 30),
        (1280, 720, 15),
        (960, 540, 15),
        (640, 360, 15),
        (426, 240, 15),
        (426, 240, 10),
        (320, 180, 10),
    ]
    assert [r.min_kbps for r in ladder] == [1500, 800, 480, 230, 110, 77, 46]
    for upper, lower in itertools.pairwise(ladder):
        assert lower.min_kbps < upper.min_kbps
        assert lower.max_kbps >= upper.min_kbps  # the controller can climb (see LadderPolicy)


@pytest.mark.parametrize(
    ("width", "height", "fps"), [(1920, 1080, 30), (640, 480, 10), (720, 1280, 25)]
)
def test_default_ladder_keeps_the_aspect_ratio(width: int, height: int, fps: float) -> None:
    ladder = default_ladder(width, height, fps)
    assert (ladder[0].width, ladder[0].height, ladder[0].fps) == (width, height, fps)
    for rung in ladder:
        assert rung.width % 2 == 0 and rung.height % 2 == 0
        assert rung.width / rung.height == pytest.approx(width / height, rel=0.02)
        assert rung.fps >= min(fps, 5)
    assert len({(r.width, r.height, r.fps) for r in ladder}) == len(ladder)


def test_floor_scales_with_the_pixel_rate() -> None:
    assert floor_kbps(1280, 720, 30) == 1500
    assert floor_kbps(1920, 1080, 30) == pytest.approx(1500 * 2.25**0.9, rel=0.02)


# ------------------------------------------------------------------------------ start choice


def _result(kbps: float | None, reliable: bool = True) -> ProbeResult:
    return ProbeResult(35.0, kbps, 60_000, 120.0, reliable)


@pytest.mark.parametrize(
    ("kbps", "reliable", "max_kbps", "expected"),
    [
        # 0.5 x throughput (the serialisation budget binds before the 0.7 utilisation)
        (10_000, True, 4000, (4000, 1280, 720, 30)),  # capped by the user's maximum
        (6_000, True, 8000, (3000, 1280, 720, 30)),
        (2_000, True, 4000, (1000, 1280, 720, 15)),  # fps first
        (1_000, True, 4000, (500, 960, 540, 15)),
        (300, True, 4000, (150, 426, 240, 15)),
        (100, True, 4000, (50, 320, 180, 10)),
        (60, True, 4000, (30, 320, 180, 10)),  # below every floor: the bottom rung
        (2_000, False, 4000, (500, 960, 540, 15)),  # unreliable: trusted half
        (None, False, 4000, (46, 320, 180, 10)),  # nothing measured: bottom rung's floor
        (10_000, True, 1000, (1000, 1280, 720, 30)),  # a low cap is not a slow link
    ],
)
def test_choose_start(
    kbps: float | None, reliable: bool, max_kbps: float, expected: tuple[float, int, int, float]
) -> None:
    choice = choose_start(
        _result(kbps, reliable), max_bitrate_kbps=max_kbps, fps=30, width=1280, height=720
    )
    assert (choice.bitrate_kbps, choice.width, choice.height, choice.fps) == expected
    assert choice.reason


def test_choose_start_with_a_custom_ladder_and_budgets() -> None:
    ladder = [Rung(800, 600, 20, 1000, 3000), Rung(400, 300, 10, 200, 900)]
    pick = choose_start(
        _result(2000),
        ladder=ladder,
        max_bitrate_kbps=5000,
        fps=20,
        width=800,
        height=600,
        utilisation=0.7,
        serialisation_budget=1.0,
    )
    assert (pick.bitrate_kbps, pick.width, pick.fps) == (1400, 800, 20)
    low = choose_start(
        _result(1000), ladder=ladder, max_bitrate_kbps=5000, fps=20, width=800, height=600
    )
    assert (low.bitrate_kbps, low.width) == (500, 400)
    with pytest.raises(ValueError):
        choose_start(_result(1000), ladder=[], max_bitrate_kbps=1, fps=1, width=2, height=2)
