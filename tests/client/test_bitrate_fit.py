"""The correction for an encoder that misses its configured bitrate."""

from __future__ import annotations

import pytest

from shelf_stream.client.bitrate_fit import BitrateFit, BitrateFitConfig


def _stream(fit: BitrateFit, target_kbps: float, output_share: float, seconds: float) -> None:
    """30 fps from an encoder that always gives ``output_share`` of what it is opened with,
    re-opened (as the client does at each switch) with the current factor."""
    t = 0.0
    while t < seconds:
        opened_kbps = fit.encoder_kbps(target_kbps)
        size = opened_kbps * 1000 / 30 * output_share / 8
        fit.on_encoded(round(size), opened_kbps, 30.0, t)
        t += 1 / 30


def test_an_encoder_that_undershoots_is_opened_higher_until_the_output_fits() -> None:
    fit = BitrateFit()
    _stream(fit, 2000, 0.85, 30.0)
    assert fit.factor == pytest.approx(1 / 0.85, rel=0.02)
    assert fit.encoder_kbps(2000) * 0.85 == pytest.approx(2000, rel=0.02)


def test_an_encoder_that_overshoots_is_opened_lower() -> None:
    fit = BitrateFit()
    _stream(fit, 1000, 1.1, 30.0)
    assert fit.factor == pytest.approx(1 / 1.1, rel=0.02)


def test_a_still_scene_teaches_nothing() -> None:
    fit = BitrateFit()
    _stream(fit, 1000, 0.2, 30.0)  # the scene needs no more bits: no factor would help
    assert fit.factor == 1.0, "a raised factor would also raise the VBV cap"


def test_the_factor_is_bounded() -> None:
    fit = BitrateFit(BitrateFitConfig(max_factor=1.3))
    _stream(fit, 1000, 0.72, 30.0)
    assert fit.factor == 1.3
    fit = BitrateFit(BitrateFitConfig(min_factor=0.8))
    _stream(fit, 1000, 3.0, 30.0)
    assert fit.factor == 0.8


def test_nothing_is_learnt_from_too_few_frames() -> None:
    fit = BitrateFit(BitrateFitConfig(window_s=3.0, min_frames=15))
    for i in range(10):  # 10 frames over 5 s
        fit.on_encoded(100, 1000, 30.0, i * 0.5)
    assert fit.factor == 1.0


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="min_factor"):
        BitrateFitConfig(min_factor=1.2)
    with pytest.raises(ValueError, match="smoothing"):
        BitrateFitConfig(smoothing=0.0)
