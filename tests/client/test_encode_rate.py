"""The encoder's rate control follows the frame rate the encoder really reaches."""

from __future__ import annotations

import pytest

from shelf_stream.client.encode_rate import EncodeRate, EncodeRateChange, EncodeRateConfig


def _encode(rate: EncodeRate, fps: float, start: float, end: float) -> list[EncodeRateChange]:
    """An encoder flat out at ``fps`` from ``start`` to ``end``, polling after each frame
    (capture at 30 fps)."""
    changes = []
    t = start
    while t < end:
        rate.on_encoded(1000 / fps, t)
        change = rate.poll(t, capture_fps=30.0)
        if change is not None:
            changes.append(change)
        t += 1 / fps
    return changes


def test_an_encoder_keeping_up_is_left_alone() -> None:
    rate = EncodeRate(EncodeRateConfig(), now=0.0)
    assert _encode(rate, 29.0, 0.0, 20.0) == []  # within 10 % of the capture rate
    assert rate.fps is None


def test_a_slow_encoder_is_reopened_for_the_rate_it_reaches() -> None:
    rate = EncodeRate(EncodeRateConfig(min_interval_s=3.0), now=0.0)
    changes = _encode(rate, 14.6, 0.0, 10.0)
    assert [c.fps for c in changes] == [15.0], "one change, to the measured rate"
    assert changes[0].measured_fps == pytest.approx(14.6, abs=0.1)
    assert rate.fps == 15.0
    # At about the same rate nothing changes again (a switch costs a keyframe).
    assert _encode(rate, 16.0, 10.0, 30.0) == []


def test_it_takes_two_full_windows() -> None:
    rate = EncodeRate(EncodeRateConfig(window_s=2.0, min_interval_s=0.0), now=0.0)
    # A window counts as full at 90 % of its length: the first ends at 1.8 s, the
    # second (measured afresh) at 3.6 s.
    changes = _encode(rate, 10.0, 0.0, 3.55)
    assert changes == [], "no verdict before a second window confirms the first"
    assert [c.fps for c in _encode(rate, 10.0, 3.55, 4.5)] == [10.0]


def test_the_cap_is_lifted_when_the_encoder_catches_up() -> None:
    rate = EncodeRate(EncodeRateConfig(min_interval_s=3.0), now=0.0)
    assert [c.fps for c in _encode(rate, 12.0, 0.0, 10.0)] == [12.0]
    changes = _encode(rate, 30.0, 10.0, 20.0)
    assert [c.fps for c in changes] == [None]
    assert rate.fps is None and rate.changes == 2


def test_changes_are_rate_limited() -> None:
    config = EncodeRateConfig(window_s=1.0, min_interval_s=8.0)
    rate = EncodeRate(config, now=0.0)
    first = _encode(rate, 10.0, 0.0, 3.0)
    assert [c.fps for c in first] == [10.0], "the first change needs two windows only"
    changed_at = rate._changed_at
    second = _encode(rate, 20.0, 10.0, changed_at + 8.0 - 0.01)
    assert second == [], "not within min_interval_s of the last change"
    assert [c.fps for c in _encode(rate, 20.0, changed_at + 8.0, changed_at + 11.0)] == [20.0]


def test_an_encoder_waiting_for_the_socket_is_not_slow() -> None:
    rate = EncodeRate(EncodeRateConfig(), now=0.0)
    t = 0.0
    while t < 20.0:  # 10 ms per frame, but only 3 frames a second get out
        rate.on_encoded(10.0, t)
        assert rate.poll(t, capture_fps=30.0) is None
        t += 1 / 3
    assert rate.measured(t) == pytest.approx(100.0), "measured, and fast"
    assert rate.fps is None


def test_a_very_slow_encoder_is_measured_too() -> None:
    rate = EncodeRate(EncodeRateConfig(min_interval_s=3.0), now=0.0)
    assert [c.fps for c in _encode(rate, 3.0, 0.0, 12.0)] == [3.0]


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="tolerance"):
        EncodeRateConfig(tolerance=1.5)
    with pytest.raises(ValueError, match="min_frames"):
        EncodeRateConfig(min_frames=1)


def test_a_faster_preset_comes_before_fewer_frames() -> None:
    rate = EncodeRate(EncodeRateConfig(min_interval_s=3.0), now=0.0, can_go_faster=True)
    changes = _encode(rate, 15.0, 0.0, 5.0)
    assert [(c.faster, c.fps) for c in changes] == [(True, None)]
    # Faster, but still short of 30 fps: now the rate control budgets for what it reaches.
    changes = _encode(rate, 21.0, 5.0, 15.0)
    assert [(c.faster, c.fps) for c in changes] == [(True, 21.0)]
    # The faster preset stays, even once the encoder keeps up.
    changes = _encode(rate, 30.0, 15.0, 25.0)
    assert [(c.faster, c.fps) for c in changes] == [(True, None)]
