"""Reading rates off measured curves: interpolated inside, never extrapolated outside."""

from __future__ import annotations

import math

import pytest

from shelf_stream.bench.curves import (
    SEED_TARGET,
    Against,
    Curve,
    Fall,
    Measure,
    Outside,
    Reading,
    largest_fall,
    monotone,
    monotone_rate_at,
    rate_at,
    ratios_for,
)


def test_interpolates_linearly_in_log_rate() -> None:
    # Halfway in quality is halfway in log(kbit/s): the geometric mean.
    reading = rate_at(0.925, [100, 1000], [0.90, 0.95])
    assert reading.outside is None
    assert reading.kbps == pytest.approx(math.sqrt(100 * 1000))


def test_a_measured_point_gives_its_own_rate_and_order_does_not_matter() -> None:
    assert rate_at(0.95, [400, 100, 200], [0.97, 0.90, 0.95]) == Reading(200.0)


def test_the_first_crossing_counts_after_a_dip() -> None:
    # 400 kbit/s measured worse than 200; 0.945 is first reached between 100 and 200.
    reading = rate_at(0.945, [100, 200, 400, 800], [0.90, 0.95, 0.94, 0.96])
    assert reading.kbps == pytest.approx(100 * 2**0.9)


def test_the_monotone_fit_pools_each_dip_with_what_came_before() -> None:
    assert monotone([0.90, 0.95, 0.94, 0.96]) == pytest.approx([0.90, 0.945, 0.945, 0.96])
    # A dip below two earlier points pools all three.
    assert monotone([0.5, 0.9, 0.8, 0.4, 1.0]) == pytest.approx([0.5, 0.7, 0.7, 0.7, 1.0])
    assert monotone([0.1, 0.2, 0.2]) == [0.1, 0.2, 0.2]
    assert monotone([]) == []


def test_the_monotone_reading_does_not_let_one_lucky_point_decide() -> None:
    # The raw curve first reaches 0.95 between 400 and 500 (0.959 there), then falls back
    # to 0.94 at 630: on the fit 500 and 630 are both 0.9495, so 0.95 is first reached
    # just above 630 (the people clip, uniform H.265, issue 19).
    kbps, f1 = [310, 409, 508, 637, 804], [0.897, 0.929, 0.959, 0.940, 0.964]
    assert rate_at(0.95, kbps, f1).kbps == pytest.approx(409 * (508 / 409) ** (21 / 30))
    share = 0.0005 / 0.0145
    assert monotone_rate_at(0.95, kbps, f1).kbps == pytest.approx(637 * (804 / 637) ** share)
    # Order and missing values as rate_at; a curve that is monotone already reads the same.
    assert monotone_rate_at(0.95, [400, 200, 100], [0.97, None, 0.90]) == rate_at(
        0.95, [400, 100], [0.97, 0.90]
    )
    assert monotone_rate_at(0.99, [100, 200], [0.90, 0.92]) == Reading(None, Outside.ABOVE, 200.0)


def test_a_target_above_the_curve_is_beyond_the_measured_range() -> None:
    # A straight line through the top two points would say ~283 kbit/s: not taken.
    assert rate_at(0.93, [100, 200], [0.90, 0.92]) == Reading(None, Outside.ABOVE, 200.0)


def test_a_target_the_lowest_rate_already_reaches_is_beyond_the_measured_range() -> None:
    # The curve may reach 0.85 at any rate under 100: no rate, not "100".
    assert rate_at(0.85, [100, 200], [0.90, 0.92]) == Reading(None, Outside.BELOW, 100.0)
    # Reaching it exactly at the lowest rate says no more.
    assert rate_at(1.0, [250, 500], [1.0, 1.0]) == Reading(None, Outside.BELOW, 250.0)


def test_a_perfect_score_first_reached_inside_is_interpolated() -> None:
    reading = rate_at(1.0, [250, 500, 1000], [0.98, 1.0, 1.0])
    assert reading == Reading(500.0)


def test_missing_values_are_skipped_and_nothing_usable_is_no_data() -> None:
    reading = rate_at(0.5, [100, 200, 400], [None, 0.4, 0.6])
    assert reading.kbps == pytest.approx(200 * math.sqrt(2))
    assert rate_at(0.5, [100, 200], [None, None]) == Reading(None, Outside.NO_DATA)
    assert rate_at(float("nan"), [100, 200], [0.4, 0.6]).outside is Outside.NO_DATA


# --------------------------------------------------------------------------- ratios


def curve(codec: str, kbps: tuple[float, ...], f1: tuple[float, ...], ssim: tuple[float, ...]):
    return Curve(codec, "640x360", kbps, f1, ssim)


HEVC = curve("hevc", (250, 1000), (0.94, 0.98), (0.95, 0.99))
JPEG = curve("jpeg_zlib", (2000, 4000, 8000), (0.96, 0.98, 0.99), (0.96, 0.98, 0.995))
SEED = {Measure.F1: 0.99, Measure.SSIM: 0.995}


def by_key(ratios):
    return {(r.measure, r.target, r.against): r for r in ratios}


def test_ratios_against_the_seed_and_against_jpeg_at_the_same_quality() -> None:
    ratios = by_key(ratios_for(HEVC, JPEG, 8000.0, SEED, (0.95, 0.97)))
    # F1 0.95 is a quarter of the way from 0.94 to 0.98: 250 * 4**0.25 kbit/s.
    at_95 = ratios[(Measure.F1, 0.95, Against.SEED_Q95)]
    assert at_95.codec_kbps.kbps == pytest.approx(250 * 4**0.25)
    assert at_95.ratio == pytest.approx(8000 / (250 * 4**0.25))
    # JPEG's own curve starts at 0.96: it may reach 0.95 anywhere below 2000 kbit/s.
    same_95 = ratios[(Measure.F1, 0.95, Against.JPEG_SAME_QUALITY)]
    assert same_95.jpeg_kbps == Reading(None, Outside.BELOW, 2000.0)
    assert same_95.ratio is None
    # F1 0.97: JPEG halfway from 2000 to 4000 in log rate; H.265 three quarters up.
    same_97 = ratios[(Measure.F1, 0.97, Against.JPEG_SAME_QUALITY)]
    assert same_97.ratio == pytest.approx((2000 * 2**0.5) / (250 * 4**0.75))


def test_the_seeds_own_quality_beyond_the_codecs_curve_has_no_ratio() -> None:
    ratios = by_key(ratios_for(HEVC, JPEG, 8000.0, SEED, ()))
    for against in Against:
        entry = ratios[(Measure.F1, SEED_TARGET, against)]
        assert entry.codec_kbps == Reading(None, Outside.ABOVE, 1000.0)
        assert entry.ratio is None
        assert entry.to_json() == {
            "codec": "hevc", "size": "640x360", "measure": "f1", "target": "seed",
            "against": against.value, "ratio": None,
        }  # fmt: skip


def test_ratio_at_the_seeds_ssim() -> None:
    seed = {Measure.F1: None, Measure.SSIM: 0.97}
    ratios = by_key(ratios_for(HEVC, JPEG, 8000.0, seed, ()))
    ssim = ratios[(Measure.SSIM, SEED_TARGET, Against.SEED_Q95)]
    assert ssim.codec_kbps.kbps == pytest.approx(250 * 4**0.5)
    assert ssim.ratio == pytest.approx(8000 / 500)
    assert ratios[(Measure.SSIM, SEED_TARGET, Against.JPEG_SAME_QUALITY)].ratio == (
        pytest.approx(2000 * 2**0.5 / 500)
    )
    # No seed F1 (nothing detected): no reading at all, not a made-up one.
    assert ratios[(Measure.F1, SEED_TARGET, Against.SEED_Q95)].codec_kbps.outside is (
        Outside.NO_DATA
    )


# --------------------------------------------------------------------- monotonicity


def test_largest_fall_over_every_pair_not_only_neighbours() -> None:
    # A slow slide: 0.006 a step, 0.012 over the three points.
    assert largest_fall([250, 500, 1000], [0.990, 0.984, 0.978]) == Fall(pytest.approx(0.012), 0, 2)
    assert largest_fall([1000, 250, 500], [0.99, 0.95, 0.97]) == Fall(0.0)  # order by setting
    assert largest_fall([250, 500], [None, 0.9]) == Fall(0.0)
