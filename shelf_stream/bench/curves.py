"""Reading a rate off a measured quality curve, and the bytes ratios built on it.

A curve is a codec's operating points: kbit/s against a quality (F1, SSIM). The rate at
which it reaches a target is interpolated linearly in (log kbit/s, quality) between the
two measured points around its first crossing, never extrapolated: a target the curve
does not reach, or already beats at its lowest rate, is *beyond the measured range* and
has no rate (so no ratio). Crossing first, because a dip later on a measured curve (rate
control on a short clip) cannot make the lower rate that already reached the target worse.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum, StrEnum


class Outside(Enum):
    """Why a curve gives no rate for a target."""

    BELOW = "reached at or below"  # the lowest rate measured already does as well
    ABOVE = "not reached at"  # not even the highest rate measured does
    NO_DATA = "no measured value"


@dataclass(frozen=True, slots=True)
class Reading:
    """The kbit/s at which a curve reaches a target, or why there is none (and the
    measured rate at that end of the curve)."""

    kbps: float | None
    outside: Outside | None = None
    edge_kbps: float | None = None


def rate_at(target: float, kbps: Sequence[float], values: Sequence[float | None]) -> Reading:
    """The interpolated kbit/s at which ``values`` first reach ``target``.

    A curve whose lowest rate already reaches the target gives none: it may reach it at
    any lower rate. Points without a value (``None``, NaN) are skipped; order does not
    matter.
    """
    pairs = sorted(
        (k, v)
        for k, v in zip(kbps, values, strict=True)
        if v is not None and math.isfinite(v) and k > 0
    )
    if not pairs or not math.isfinite(target):
        return Reading(None, Outside.NO_DATA)
    if pairs[0][1] >= target:
        return Reading(None, Outside.BELOW, pairs[0][0])
    for (k0, v0), (k1, v1) in itertools.pairwise(pairs):
        if v1 == target:
            return Reading(k1)  # a measured point: its own rate, exactly
        if v0 < target < v1:
            share = (target - v0) / (v1 - v0)
            return Reading(math.exp(math.log(k0) + share * (math.log(k1) - math.log(k0))))
    return Reading(None, Outside.ABOVE, pairs[-1][0])


def monotone(values: Sequence[float]) -> list[float]:
    """The non-decreasing sequence nearest ``values`` in least squares (pool adjacent
    violators): each run that dips is replaced by its mean.

    Detection quality does not fall with more bits; a measured dip is noise (a few boxes
    on a short clip), and so is the peak before it. ``rate_at`` on the raw curve takes the
    first crossing, so a lucky point below a dip can decide a reading on its own; on the
    monotone curve the dip and the peak are averaged first.
    """
    blocks: list[tuple[float, int]] = []  # (mean, points pooled)
    for value in values:
        mean, count = value, 1
        while blocks and blocks[-1][0] > mean:
            last, n = blocks.pop()
            mean, count = (last * n + mean * count) / (n + count), n + count
        blocks.append((mean, count))
    return [mean for mean, count in blocks for _ in range(count)]


def monotone_rate_at(
    target: float, kbps: Sequence[float], values: Sequence[float | None]
) -> Reading:
    """``rate_at`` on the monotone fit (``monotone``) of the curve, in order of rate."""
    pairs = sorted(
        (k, v)
        for k, v in zip(kbps, values, strict=True)
        if v is not None and math.isfinite(v) and k > 0
    )
    fitted = monotone([v for _, v in pairs])
    return rate_at(target, [k for k, _ in pairs], fitted)


def value_at(kbps: float, rates: Sequence[float], values: Sequence[float | None]) -> float | None:
    """``values`` read at ``kbps``, interpolated linearly in log(kbit/s) between the two
    measured points around it, never extrapolated (None outside, or without values)."""
    pairs = sorted(
        (k, v)
        for k, v in zip(rates, values, strict=True)
        if v is not None and math.isfinite(v) and k > 0
    )
    if not pairs or not pairs[0][0] <= kbps <= pairs[-1][0] or kbps <= 0:
        return None
    for (k0, v0), (k1, v1) in itertools.pairwise([pairs[0], *pairs]):
        if k1 == kbps:
            return v1
        if k0 < kbps < k1:
            share = (math.log(kbps) - math.log(k0)) / (math.log(k1) - math.log(k0))
            return v0 + share * (v1 - v0)
    return None


# --------------------------------------------------------------------------- ratios


class Measure(StrEnum):
    F1 = "f1"
    SSIM = "ssim"


class Against(StrEnum):
    """Which JPEG+zlib bytes a ratio divides."""

    SEED_Q95 = "seed_q95"  # the seed's own operating point
    JPEG_SAME_QUALITY = "jpeg_same_quality"  # JPEG's curve read at the same target


#: ``Ratio.target`` for the value the seed's own q95 reaches.
SEED_TARGET = "seed"


@dataclass(frozen=True, slots=True)
class Ratio:
    """Bytes of JPEG+zlib over bytes of ``codec`` at ``size``, at one target quality.

    ``ratio`` is None when either side's rate is beyond its measured range.
    """

    codec: str
    size: str
    measure: Measure
    target: float | str  # a quality, or SEED_TARGET
    target_value: float | None  # the quality the target stands for
    against: Against
    codec_kbps: Reading
    jpeg_kbps: Reading

    @property
    def ratio(self) -> float | None:
        if self.codec_kbps.kbps is None or self.jpeg_kbps.kbps is None:
            return None
        return self.jpeg_kbps.kbps / self.codec_kbps.kbps

    def to_json(self) -> dict[str, object]:
        """The fields ``summary.ratios[]`` documents."""
        return {
            "codec": self.codec,
            "size": self.size,
            "measure": self.measure.value,
            "target": self.target,
            "against": self.against.value,
            "ratio": self.ratio,
        }


@dataclass(frozen=True, slots=True)
class Curve:
    """Measured points of one codec at one size: kbit/s and the qualities, in step."""

    codec: str
    size: str
    kbps: tuple[float, ...]
    f1: tuple[float | None, ...]
    ssim: tuple[float, ...]

    def values(self, measure: Measure) -> tuple[float | None, ...]:
        return self.f1 if measure is Measure.F1 else self.ssim


def ratios_for(
    curve: Curve,
    jpeg: Curve,
    seed_kbps: float,
    seed_quality: dict[Measure, float | None],
    f1_targets: Sequence[float],
) -> list[Ratio]:
    """Every ratio of one codec curve: per measure and target, against both references.

    F1: at the seed's own F1 and at each of ``f1_targets``; SSIM: at the seed's. The
    JPEG side is the seed's measured rate (``seed_q95``: what the seed sends, whatever
    the target) or JPEG's own curve read at the same target (``jpeg_same_quality``: the
    cheapest JPEG quality that does as well).
    """
    targets: list[tuple[Measure, float | str, float | None]] = [
        (Measure.F1, SEED_TARGET, seed_quality[Measure.F1]),
        *((Measure.F1, t, t) for t in f1_targets),
        (Measure.SSIM, SEED_TARGET, seed_quality[Measure.SSIM]),
    ]
    ratios = []
    for measure, target, value in targets:
        if value is None:
            codec_reading = jpeg_reading = Reading(None, Outside.NO_DATA)
        else:
            codec_reading = rate_at(value, curve.kbps, curve.values(measure))
            jpeg_reading = rate_at(value, jpeg.kbps, jpeg.values(measure))
        for against, reference in (
            (Against.SEED_Q95, Reading(seed_kbps)),
            (Against.JPEG_SAME_QUALITY, jpeg_reading),
        ):
            ratios.append(
                Ratio(curve.codec, curve.size, measure, target, value, against, codec_reading,
                      reference)
            )  # fmt: skip
    return ratios


@dataclass(frozen=True, slots=True)
class Fall:
    """The most a quality drops as the setting rises, and between which points."""

    amount: float
    from_index: int | None = None
    to_index: int | None = None


def largest_fall(settings: Sequence[float], values: Sequence[float | None]) -> Fall:
    """The largest drop from any point to one at a higher setting (not only neighbours,
    so a slow slide counts in full). Points without a value are skipped."""
    known = sorted((settings[i], v, i) for i, v in enumerate(values) if v is not None)
    fall = Fall(0.0)
    peak: tuple[float, int] | None = None  # the best value so far, and where
    for _, value, index in known:
        if peak is not None and peak[0] - value > fall.amount:
            fall = Fall(peak[0] - value, peak[1], index)
        if peak is None or value > peak[0]:
            peak = (value, index)
    return fall
