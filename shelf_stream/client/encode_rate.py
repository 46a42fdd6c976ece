"""The frame rate the encoder really reaches, for its rate control.

x264's and x265's rate control (ABR and the VBV) budget ``bitrate / fps`` bits per frame
from the frame rate they were opened with; timestamps play no part. When the machine
cannot encode every captured frame, the newest frame wins and the rest are skipped (as it
should be for latency), but at half the frames the stream then carries half the bitrate
the rate controller asked for. Measured at 1280x720 H.265 on two cores shared with the
server: 15 of 30 frames encoded, 49 % of a 2 Mbit/s link used.

Lowering the capture rate instead does not help: the per-frame cost grows as frames lie
further apart (more motion to search, more bits to code; 30 ms at 30 fps, 52 ms at 10 fps
for the same 720p scene at 2 Mbit/s here, ``benchmarks/encoder_rate.py``), so the encoder
falls behind again. So capture keeps its rate, the encoder keeps taking the newest frame,
and the encoder is re-opened for the rate it reaches when that differs from the one it
was opened with by more than ``tolerance`` over two windows in a row (the second measured
afresh, so that it holds only the new regime, not a mix of the old and the new).

The rate it reaches is measured from the encode time per frame (1 / its mean), not by
counting frames: when the link backs up, the encoder waits for the socket and encodes
fewer frames, which says nothing about the machine.

Before budgeting for fewer frames, an encoder with a faster real-time preset (libx265 and
libx264: ultrafast instead of superfast, 1.3x faster at 720p alone and 1.6x beside a busy
process here, for about a third more bytes at equal quality) switches to it once, as
WebRTC lowers an encoder's complexity under CPU load before its frame rate; it keeps it
for the rest of the stream (the machine seldom gets faster, and every flip costs a
keyframe).

Sans-I/O: ``on_encoded(encode_ms, now)`` per encoded frame, ``poll(now, capture_fps)``
returns a change (``fps`` None: the encoder keeps up with the capture rate).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class EncodeRateConfig:
    """Settings of ``EncodeRate``."""

    window_s: float = 1.5
    min_frames: int = 8
    # Relative difference between the reached and the configured rate worth a re-open
    # (each costs a keyframe).
    tolerance: float = 0.25
    # After a change: the new encoder's rate needs a full window to show.
    min_interval_s: float = 10.0
    # Reaching this share of the capture rate counts as keeping up.
    keeps_up: float = 0.9

    def __post_init__(self) -> None:
        if self.window_s <= 0 or self.min_frames < 2:
            raise ValueError("window_s must be positive and min_frames at least 2")
        if not 0 < self.tolerance < 1 or not 0 < self.keeps_up <= 1:
            raise ValueError("tolerance must be in (0, 1) and keeps_up in (0, 1]")


@dataclass(frozen=True, slots=True)
class EncodeRateChange:
    """The encoder's new settings: the rate its rate control budgets for (None: the capture
    rate) and whether it runs its faster preset."""

    fps: float | None
    measured_fps: float
    faster: bool = False


class EncodeRate:
    """Measures encoded frames per second and decides when the encoder should follow."""

    def __init__(
        self, config: EncodeRateConfig, *, now: float, can_go_faster: bool = False
    ) -> None:
        self.config = config
        self.fps: float | None = None
        self.faster = False
        self.changes = 0
        self._can_go_faster = can_go_faster
        self._samples: deque[tuple[float, float]] = deque()  # (time, encode ms)
        self._changed_at = now - config.min_interval_s  # the first change need not wait
        self._since = now  # start of the current measurement
        self._suspect = False  # the last full window differed: measuring a second one

    def on_encoded(self, encode_ms: float, now: float) -> None:
        self._samples.append((now, encode_ms))
        # The window, but never fewer than min_frames: an encoder at 3 fps is measured too.
        horizon = now - self.config.window_s
        while len(self._samples) > self.config.min_frames and self._samples[0][0] < horizon:
            self._samples.popleft()

    def measured(self, now: float) -> float | None:
        """Frames per second the encoder manages (1 / mean encode time) over a full
        window, else None."""
        cfg = self.config
        if len(self._samples) < cfg.min_frames or now - self._since < 0.9 * cfg.window_s:
            return None
        mean_ms = sum(ms for _, ms in self._samples) / len(self._samples)
        return 1000 / max(mean_ms, 1e-3)

    def poll(self, now: float, capture_fps: float) -> EncodeRateChange | None:
        cfg = self.config
        measured = self.measured(now)
        if measured is None:
            return None
        faster, wanted = self._wanted(measured, capture_fps)
        current = self.fps or capture_fps
        differs = (
            faster != self.faster or abs((wanted or capture_fps) / current - 1) > cfg.tolerance
        )
        if not differs:
            self._suspect = False
            return None
        if now - self._changed_at < cfg.min_interval_s:
            return None
        if not self._suspect:
            self._suspect = True
            self._restart(now)
            return None
        self.fps, self.faster = wanted, faster
        self.changes += 1
        self._changed_at = now
        self._suspect = False
        self._restart(now)
        return EncodeRateChange(wanted, round(measured, 2), faster)

    def _wanted(self, measured: float, capture_fps: float) -> tuple[bool, float | None]:
        """(faster preset, rate to budget for) for an encoder managing ``measured`` fps."""
        if measured >= self.config.keeps_up * capture_fps:
            return self.faster, None
        if self._can_go_faster and not self.faster:
            return True, None  # first a faster preset; measure again
        return self.faster, float(max(1, round(measured)))

    def _restart(self, now: float) -> None:
        self._samples.clear()
        self._since = now
