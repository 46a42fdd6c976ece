"""A camera's timestamps onto the stream's 90 kHz clock (sans-I/O).

A pass-through stream keeps the camera's own timing: each access unit's pts on the
stream's clock is its distance from the first one, from the camera's timestamps. What
cameras do to those timestamps, and what becomes of it:

- a missing timestamp (FFmpeg's RTSP demuxer gives the first packet none), a repeated
  one, or a step shorter than ``min_gap_s``: one frame interval (``fallback_fps``)
  after the previous access unit (``Step.IRREGULAR``);
- a wrap of the camera's counter (32 bits for RTP, 33 for MPEG-TS, ``wrap_moduli``):
  the timing goes on as if it had not wrapped (``Step.WRAPPED``);
- a jump forwards or backwards by more than ``max_gap_s`` (the camera's clock was
  reset, or it restarted): one frame interval after the previous one, and the camera's
  timing goes on from there (``Step.JUMPED``);
- a step back by less than ``max_gap_s``: access units out of presentation order, i.e.
  B-frames (``Step.REORDERED``). The caller refuses those: the server's decoder runs
  with zero delay and answers by pts in the order it decodes.
- a new camera session (``resume``, after a reconnect): its first access unit comes
  ``outage`` after the previous one, so the stream's pts keep counting wall time.

The stream's pts always increase strictly (the server refuses a pts sent twice), and
are computed from an anchor rather than summed step by step, so they do not drift.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from fractions import Fraction

from shelf_stream.codec.base import TIME_BASE


class Step(enum.Enum):
    """How a timestamp was taken (see the module docstring)."""

    FIRST = enum.auto()
    REGULAR = enum.auto()
    IRREGULAR = enum.auto()
    WRAPPED = enum.auto()
    JUMPED = enum.auto()
    REORDERED = enum.auto()
    RESUMED = enum.auto()


@dataclass(frozen=True, slots=True)
class Rebased:
    """A stream pts (90 kHz) and how the camera's timestamp was taken."""

    pts: int
    step: Step


@dataclass(frozen=True, slots=True, kw_only=True)
class RebaseConfig:
    fallback_fps: float = 30.0
    min_gap_s: float = 1 / 240
    max_gap_s: float = 2.0
    wrap_moduli: tuple[int, ...] = (1 << 32, 1 << 33)  # in the camera's ticks


class PtsRebaser:
    """Camera pts (in ``time_base``) in, strictly increasing 90 kHz stream pts out."""

    def __init__(self, time_base: Fraction, config: RebaseConfig | None = None) -> None:
        self.config = config or RebaseConfig()
        if not self.config.fallback_fps > 0:
            raise ValueError("fallback_fps must be positive")
        self.counts: dict[Step, int] = dict.fromkeys(Step, 0)
        self._time_base = time_base
        self._interval = max(1, round(1 / (self.config.fallback_fps * TIME_BASE)))
        self._min_gap = self._camera_ticks(self.config.min_gap_s)
        self._max_gap = self._camera_ticks(self.config.max_gap_s)
        self._last_out: int | None = None
        self._last_in: int | None = None  # the previous usable camera timestamp
        # Stream pts = anchor_out + (camera pts - anchor_in), converted to 90 kHz.
        self._anchor_in: int | None = None
        self._anchor_out = 0
        self._resume_at: int | None = None  # set by ``resume``: the next pts

    @property
    def last_pts(self) -> int | None:
        return self._last_out

    def rebase(self, pts: int | None) -> Rebased:
        """The stream pts of the next access unit, whose camera pts is ``pts``."""
        if self._last_out is None or self._resume_at is not None:
            return self._start(pts)
        if pts is None or self._last_in is None:
            return self._irregular(pts)
        step = pts - self._last_in
        unwrapped = self._unwrap(step)
        if unwrapped is not None:
            assert self._anchor_in is not None
            self._anchor_in -= unwrapped - step  # the counter wrapped: shift the anchor
            self._last_in = pts
            return self._emit(self._from_anchor(pts), Step.WRAPPED)
        if step > self._max_gap or step < -self._max_gap:
            self._anchor(pts, self._last_out + self._interval)
            return self._emit(self._last_out + self._interval, Step.JUMPED)
        if step < 0:
            return self._emit(self._last_out + self._interval, Step.REORDERED)
        if step < self._min_gap:
            return self._irregular(pts)
        self._last_in = pts
        return self._emit(self._from_anchor(pts), Step.REGULAR)

    def resume(self, outage_s: float, time_base: Fraction | None = None) -> None:
        """A new camera session (in ``time_base``, if it changed): its first access unit
        comes ``outage_s`` after the last."""
        if time_base is not None and time_base != self._time_base:
            self._time_base = time_base
            self._min_gap = self._camera_ticks(self.config.min_gap_s)
            self._max_gap = self._camera_ticks(self.config.max_gap_s)
        if self._last_out is None:
            return
        gap = max(self._interval, round(outage_s / TIME_BASE))
        self._resume_at = self._last_out + gap

    # -- internals ------------------------------------------------------------------------

    def _start(self, pts: int | None) -> Rebased:
        first = self._last_out is None
        out = 0 if first else self._resume_at
        assert out is not None
        self._resume_at = None
        self._anchor(pts, out)
        return self._emit(out, Step.FIRST if first else Step.RESUMED)

    def _irregular(self, pts: int | None) -> Rebased:
        assert self._last_out is not None
        out = self._last_out + self._interval
        # A usable timestamp re-anchors the timing here: the next step counts from it.
        self._anchor(pts, out)
        return self._emit(out, Step.IRREGULAR)

    def _anchor(self, pts: int | None, out: int) -> None:
        self._anchor_in, self._anchor_out, self._last_in = pts, out, pts

    def _from_anchor(self, pts: int) -> int:
        assert self._anchor_in is not None and self._last_out is not None
        out = self._anchor_out + round((pts - self._anchor_in) * self._time_base / TIME_BASE)
        return max(out, self._last_out + 1)  # rounding must never repeat a pts

    def _unwrap(self, step: int) -> int | None:
        """``step`` as a plausible forward step if the counter wrapped; else None."""
        if step >= 0:
            return None
        for modulus in self.config.wrap_moduli:
            forward = step + modulus
            if self._min_gap <= forward <= self._max_gap:
                return forward
        return None

    def _emit(self, out: int, step: Step) -> Rebased:
        self._last_out = out
        self.counts[step] += 1
        return Rebased(out, step)

    def _camera_ticks(self, seconds: float) -> int:
        return round(Fraction(seconds) / self._time_base)
