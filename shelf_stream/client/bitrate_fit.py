"""How far the encoder's output misses its configured bitrate, and the correction.

Encoders without lookahead rarely hit their target: libx264's ABR and VBV gave 80-96 % of
it on the demo scene (at 600 and 2000 kbit/s, 640x480 and 1280x720, 10 and 30 fps;
``benchmarks/encoder_rate.py``), and libx265's, even with its ABR headroom
(``codec.pyav.X265_ABR_HEADROOM``), 87-105 %. The rate
controller then asks for 2 Mbit/s and gets 1.7, and a link it measured stays a sixth empty.
WebRTC's answer is its EncoderBitrateAdjuster; this is the same idea, sans-I/O:

- ``on_encoded`` per encoded frame: its bits against the per-frame budget the encoder was
  opened with (``kbps / fps``; thinned or skipped frames are not counted, they are not
  encoded at all);
- ``factor``: the budget over the output across the last ``window_s`` (smoothed between
  windows, clamped to ``[min_factor, max_factor]``), by which the next encoder switch
  scales the bitrate it opens the encoder with.

A scene that needs fewer bits than any budget (a still shelf) would drive the factor up
without bringing the output to the target, and the scaled rate is also the encoder's VBV
cap: a window whose output stayed under ``min_output_share`` of its budget (the encoder
was not short of bits, the scene was) teaches nothing, and the clamp bounds the rest.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class BitrateFitConfig:
    """Settings of ``BitrateFit``."""

    window_s: float = 3.0
    min_frames: int = 15
    min_factor: float = 0.8
    max_factor: float = 1.3
    # Weight of the newest window's estimate against the running factor.
    smoothing: float = 0.5
    # Output under this share of the budget: the scene needed no more bits (see above).
    min_output_share: float = 0.7

    def __post_init__(self) -> None:
        if not 0 < self.min_factor <= 1 <= self.max_factor:
            raise ValueError("need 0 < min_factor <= 1 <= max_factor")
        if not 0 < self.smoothing <= 1:
            raise ValueError("smoothing must be in (0, 1]")


class BitrateFit:
    """Learns the encoder's output against its budget; ``factor`` corrects the next switch."""

    def __init__(self, config: BitrateFitConfig | None = None) -> None:
        self.config = config or BitrateFitConfig()
        self.factor = 1.0
        self._frames: deque[tuple[float, float, float]] = deque()  # (t, bits, budget bits)
        self._window_start: float | None = None

    def on_encoded(
        self, size_bytes: int, encoder_kbps: float, encoder_fps: float, now: float
    ) -> None:
        """A frame of ``size_bytes`` from an encoder opened at ``encoder_kbps``/``encoder_fps``."""
        if self._window_start is None:
            self._window_start = now
        self._frames.append((now, size_bytes * 8.0, encoder_kbps * 1000 / encoder_fps))
        if now - self._window_start >= self.config.window_s:
            self._close_window()
            self._window_start = now

    def encoder_kbps(self, target_kbps: float) -> int:
        """The bitrate to open the encoder with for ``target_kbps`` of output."""
        return max(1, round(target_kbps * self.factor))

    def _close_window(self) -> None:
        cfg = self.config
        frames, self._frames = self._frames, deque()
        if len(frames) < cfg.min_frames:
            return
        produced = sum(bits for _, bits, _ in frames)
        budget = sum(budget for _, _, budget in frames)
        if produced < self.config.min_output_share * budget:
            return
        # The encoder gives produced / budget of whatever it is opened with: opening it at
        # target x budget / produced gives the target.
        wanted = budget / produced
        blended = (1 - cfg.smoothing) * self.factor + cfg.smoothing * wanted
        self.factor = min(max(blended, cfg.min_factor), cfg.max_factor)
