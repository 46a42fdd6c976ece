"""Quality ladder: the (size, fps) rungs the client may stream at, with their bitrate ranges.

Shared by the start choice (``probe.choose_start``) and the rate controller
(``controller.RateController``). Rung 0 is the requested quality; each following rung costs
fewer bits. The default ladder lowers the frame rate before the resolution: for detection on
shelves a sharp picture matters more than a fluid one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# The bitrate floor of 1280x720@30 (the usual H.264/H.265 streaming ladders put 720p30 at
# 1.5-4 Mbit/s); other rungs scale from it with the pixel rate.
REFERENCE_PIXEL_RATE = 1280 * 720 * 30
REFERENCE_FLOOR_KBPS = 1500.0
# Bits needed grow slower than the pixel rate (more pixels are more alike); 0.9 reproduces the
# common ladders 720p30 1500, 540p30 ~900, 360p30 ~430, 240p15 ~110 kbit/s.
PIXEL_RATE_EXPONENT = 0.9
# A rung's ceiling: above it the encoder has no use for more bits at that size.
CEILING_FACTOR = 8 / 3  # 1500 → 4000 kbit/s at 720p30
# (scale of width and height, divisor of the fps), best first: fps goes down before size.
DEFAULT_STEPS: tuple[tuple[float, int], ...] = (
    (1.0, 1),
    (1.0, 2),
    (0.75, 2),
    (0.5, 2),
    (1 / 3, 2),
    (1 / 3, 3),
    (0.25, 3),
)
MIN_FPS = 5.0
MIN_SIDE = 64


@dataclass(frozen=True, slots=True)
class Rung:
    """One quality level: encode ``width``x``height`` at ``fps`` with min..max kbit/s."""

    width: int
    height: int
    fps: float
    min_kbps: float
    max_kbps: float

    def __str__(self) -> str:
        return f"{self.width}x{self.height}@{self.fps:g}"


def floor_kbps(width: int, height: int, fps: float) -> float:
    """The lowest useful bitrate for this size and rate (see ``PIXEL_RATE_EXPONENT``)."""
    ratio = width * height * fps / REFERENCE_PIXEL_RATE
    return _nice(REFERENCE_FLOOR_KBPS * ratio**PIXEL_RATE_EXPONENT)


def default_ladder(width: int, height: int, fps: float) -> tuple[Rung, ...]:
    """Rungs relative to the requested size and rate (its aspect ratio kept, sizes even).

    For 1280x720@30: 720p30, 720p15, 960x540@15, 640x360@15, 426x240@15, 426x240@10,
    320x180@10. Rungs that would be smaller than ``MIN_SIDE`` pixels or slower than
    ``MIN_FPS`` (unless the request already is) are left out.
    """
    sizes: list[tuple[int, int, float]] = []
    for scale, divisor in DEFAULT_STEPS:
        w, h = _even(width * scale), _even(height * scale)
        rate = max(fps / divisor, min(fps, MIN_FPS))
        if (scale < 1 and min(w, h) < MIN_SIDE) or (w, h, rate) in sizes:
            continue
        sizes.append((w, h, rate))
    floors = [floor_kbps(w, h, rate) for w, h, rate in sizes]
    rungs = []
    for i, ((w, h, rate), low) in enumerate(zip(sizes, floors, strict=True)):
        # The controller climbs a rung once its estimate passes 1.2 x the next rung's floor,
        # and the estimate may run at most 1.5 x what is received: keep the ceiling high
        # enough for that to be reachable (see controller.RateController).
        above = floors[i - 1] if i else 0.0
        rungs.append(Rung(w, h, rate, low, _nice(max(low * CEILING_FACTOR, above))))
    return tuple(rungs)


def rung_index(ladder: Sequence[Rung], width: int, height: int, fps: float) -> int:
    """The rung matching (width, height, fps), else the best rung not above that quality."""
    for i, rung in enumerate(ladder):
        if (rung.width, rung.height) == (width, height) and abs(rung.fps - fps) < 1e-6:
            return i
    pixel_rate = width * height * fps
    for i, rung in enumerate(ladder):
        if rung.width * rung.height * rung.fps <= pixel_rate * (1 + 1e-9):
            return i
    return len(ladder) - 1


def _even(value: float) -> int:
    return max(2, 2 * round(value / 2))


def _nice(kbps: float) -> float:
    """Round to two significant figures: ladders are heuristics, not measurements."""
    if kbps <= 0:
        return 0.0
    digits = len(str(int(kbps))) - 2
    step = 10.0**digits if digits > 0 else 1.0
    return round(kbps / step) * step
