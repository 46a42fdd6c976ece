"""PtsRebaser: a camera's timestamps onto the stream's 90 kHz clock, with literal values."""

from __future__ import annotations

from fractions import Fraction

import pytest

from shelf_stream.client.pts_rebase import PtsRebaser, RebaseConfig, Step

RTP = Fraction(1, 90_000)


def _rebase(rebaser: PtsRebaser, stamps: list[int | None]) -> list[tuple[int, Step]]:
    return [(r.pts, r.step) for r in map(rebaser.rebase, stamps)]


def test_regular_timestamps_count_from_the_first() -> None:
    rebaser = PtsRebaser(RTP, RebaseConfig(fallback_fps=15))
    assert _rebase(rebaser, [1_000_000, 1_006_000, 1_012_030, 1_017_970]) == [
        (0, Step.FIRST),
        (6000, Step.REGULAR),
        (12030, Step.REGULAR),
        (17970, Step.REGULAR),
    ]


def test_a_missing_first_timestamp_takes_one_interval() -> None:
    # FFmpeg's RTSP demuxer gives the first packet no pts.
    rebaser = PtsRebaser(RTP, RebaseConfig(fallback_fps=15))
    assert _rebase(rebaser, [None, 6030, 11970, None, 24030]) == [
        (0, Step.FIRST),
        (6000, Step.IRREGULAR),  # the first usable stamp anchors the timing here
        (11940, Step.REGULAR),
        (17940, Step.IRREGULAR),
        (23940, Step.IRREGULAR),  # after a gap in the stamps, anchored again
    ]


def test_a_repeated_timestamp_still_gets_its_own_pts() -> None:
    rebaser = PtsRebaser(RTP, RebaseConfig(fallback_fps=30))
    assert _rebase(rebaser, [500, 3500, 3500, 6500]) == [
        (0, Step.FIRST),
        (3000, Step.REGULAR),
        (6000, Step.IRREGULAR),
        (9000, Step.REGULAR),
    ]


@pytest.mark.parametrize("bits", [32, 33])
def test_a_wrapping_counter_keeps_counting(bits: int) -> None:
    top = 1 << bits
    rebaser = PtsRebaser(RTP, RebaseConfig(fallback_fps=30))
    assert _rebase(rebaser, [top - 4500, top - 1500, 1500, 4500]) == [
        (0, Step.FIRST),
        (3000, Step.REGULAR),
        (6000, Step.WRAPPED),
        (9000, Step.REGULAR),
    ]


def test_jumps_continue_one_interval_later_in_both_directions() -> None:
    rebaser = PtsRebaser(RTP, RebaseConfig(fallback_fps=30, max_gap_s=2.0))
    # +10 s (a clock step), then -100 s (a reset), each followed by regular frames.
    stamps = [0, 3000, 903_000, 906_000, 6000, 9000]
    assert _rebase(rebaser, stamps) == [
        (0, Step.FIRST),
        (3000, Step.REGULAR),
        (6000, Step.JUMPED),
        (9000, Step.REGULAR),
        (12000, Step.JUMPED),
        (15000, Step.REGULAR),
    ]


def test_a_small_step_back_is_reported_as_reordering() -> None:
    rebaser = PtsRebaser(RTP, RebaseConfig(fallback_fps=30))
    # Decode order of I P B B with B-frames: 0, 9000, 3000, 6000.
    steps = _rebase(rebaser, [0, 9000, 3000])
    assert steps[2] == (12000, Step.REORDERED)
    assert rebaser.counts[Step.REORDERED] == 1


def test_a_new_session_resumes_after_the_outage_in_wall_time() -> None:
    rebaser = PtsRebaser(RTP, RebaseConfig(fallback_fps=15))
    _rebase(rebaser, [10, 6010, 12010])
    rebaser.resume(3.5)  # the camera was away 3.5 s; its new session starts anywhere
    assert _rebase(rebaser, [77_777_777, 77_783_777]) == [
        (12000 + 315_000, Step.RESUMED),
        (12000 + 315_000 + 6000, Step.REGULAR),
    ]


def test_a_short_outage_still_advances_by_one_interval() -> None:
    rebaser = PtsRebaser(RTP, RebaseConfig(fallback_fps=10))
    _rebase(rebaser, [0])
    rebaser.resume(0.0)
    assert rebaser.rebase(123).pts == 9000


def test_ntsc_rates_do_not_drift() -> None:
    # 29.97 fps in a 1/1000 time base (Matroska): 33 or 34 ms steps; 90 kHz from the anchor.
    rebaser = PtsRebaser(Fraction(1, 1000), RebaseConfig(fallback_fps=30000 / 1001))
    stamps = [round(i * 1001 / 30) for i in range(3001)]
    last = [rebaser.rebase(stamp) for stamp in stamps][-1]
    assert last.pts == 100_100 * 90  # stamp 100 100 ms exactly, whatever the steps were
    assert rebaser.counts[Step.REGULAR] == 3000


def test_pts_always_increase_even_when_rounding_would_repeat_one() -> None:
    # A 100 ns time base: stamps less than one 90 kHz tick apart still get their own pts.
    rebaser = PtsRebaser(Fraction(1, 10_000_000), RebaseConfig(fallback_fps=30, min_gap_s=0))
    out = [r.pts for r in map(rebaser.rebase, [0, 1, 2, 3])]
    assert out == [0, 1, 2, 3]


def test_a_new_time_base_on_resume() -> None:
    rebaser = PtsRebaser(RTP, RebaseConfig(fallback_fps=25))
    _rebase(rebaser, [0, 3600])
    rebaser.resume(1.0, Fraction(1, 1000))
    assert _rebase(rebaser, [5000, 5040]) == [(93_600, Step.RESUMED), (97_200, Step.REGULAR)]


def test_fallback_rate_must_be_positive() -> None:
    with pytest.raises(ValueError, match="fallback_fps"):
        PtsRebaser(RTP, RebaseConfig(fallback_fps=0))
