"""Detection-guided regions of interest, sans-I/O: the server's boxes in, quantiser offsets out.

The server answers every frame with boxes tens of milliseconds later. ``RoiPlanner``
turns the latest answers into a ``RoiPlan`` for the frames being encoded now: finer
quantisation (a negative ``qoffset``) where the objects are, a bounded penalty on the
background, and the frame's edges spared the penalty, where new objects come in. The
encoder worker applies the plan (``encoder_worker.SetRegions``); the loop only hands it
over. What ROI coding can miss, and the guard against each:

- **Objects move** between the frame the boxes came from and the frames being encoded
  (a round trip later): each object is tracked from answer to answer (same class,
  IoU), the velocity of each side of its box estimated (so an object that comes in over
  an edge, or nearer, grows as well as moves), and its region covers where it was and
  where it is predicted to be now, grown by a margin that rises with its speed and its
  answer's age.
- **A detection flickers** (a frame or a few below the server's threshold): a tracked
  object keeps its region for ``hold_s`` after the last frame it was seen in, longer
  (half the time it has been tracked, at most ``max_hold_s``) for one seen for long,
  such as a static object whose score hovers at the threshold.
- **Stale results** (no boxes for a while: answers stopped, or nothing is detected):
  once every track's hold has passed the plan is uniform again.
- **New objects enter poorly coded background**: the background penalty is bounded
  (``max_background_qoffset``), the frame's edges keep the uniform quantiser
  (``edge_qoffset``), and every ``refresh_interval_s`` the plan is uniform for
  ``refresh_frames`` frames: a full-quality look at the whole picture.

Like the adaptation (aioquic-style): time is passed in (``now``, seconds on the client's
monotonic clock; ``captured_at`` on the same clock), ``get_timer()`` says when
``handle_timer(now)`` is due (expiry, refresh, re-planning as answers age), and the query
``plan(now)`` changes nothing. Boxes are in the pixels of the frame the user asked for
(``width_px`` x ``height_px``); ``RoiPlan.for_encoder`` maps a plan to the encoder's
picture (a lower rung's size), snapped outward to the 16-pixel blocks x264 and x265 use.
State is bounded: at most ``max_tracks`` objects.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from shelf_stream.codec.base import RoiRegion
from shelf_stream.errors import ConfigError

#: The block the quantiser offsets apply to in libx264 and libx265 (16x16 macroblocks;
#: x265 with qg-size 8 would use 8).
BLOCK_PX = 16


@dataclass(frozen=True, slots=True, kw_only=True)
class RoiConfig:
    """Settings of ``RoiPlanner``; offsets are FFmpeg's ``qoffset`` (-1 best .. +1 worst;
    libx264/libx265: x 51 QP, so 0.1 is about 5 QP)."""

    enabled: bool = False
    # Objects' regions get -strength.
    strength: float = 0.2
    # The background gets +strength x background_share, at most max_background_qoffset.
    background_share: float = 0.5
    max_background_qoffset: float = 0.1
    # Bands along the frame's edges, this share of its width (left, right) and height
    # (top, bottom), get edge_qoffset (0: the uniform quantiser) instead.
    edge_band_share: float = 0.05
    edge_qoffset: float = 0.0
    # Margin on every side of an object: this share of its larger side (at least
    # min_margin_px), plus age_margin_share_per_s of that side per second of its
    # answer's age, plus motion_margin_share of the distance it moved meanwhile; the
    # growth at most max_growth_share of the side.
    margin_share: float = 0.1
    min_margin_px: float = 8.0
    age_margin_share_per_s: float = 0.25
    motion_margin_share: float = 0.5
    max_growth_share: float = 1.0
    # Motion is extrapolated, and the age margin grows, for at most this long after an
    # object's last frame: one held longer (a flicker) stays where it was predicted then.
    max_extrapolation_s: float = 0.5
    # An object not seen again keeps its region for hold_s after its last frame, or for
    # hold_share_of_seen of the time it was tracked until then (that part at most
    # max_hold_s) if longer: a static object whose score hovers at the threshold.
    hold_s: float = 1.0
    hold_share_of_seen: float = 0.5
    max_hold_s: float = 4.0
    # Tracking: same class and at least this IoU with the track's predicted box.
    match_iou: float = 0.3
    velocity_smoothing: float = 0.5  # weight of the newest velocity measurement
    max_speed_share_per_s: float = 2.0  # each side's, of the frame's larger side, per second
    # A uniform plan for refresh_frames frames every refresh_interval_s (0: never).
    refresh_interval_s: float = 2.0
    refresh_frames: int = 1
    # While objects are tracked, the plan is made again this often (margins grow with age).
    replan_interval_s: float = 0.1
    max_tracks: int = 24

    def check(self) -> None:
        """``ConfigError`` for settings that make no sense."""
        problems = []
        if not 0.0 < self.strength <= 1.0:
            problems.append(f"strength must be in (0, 1], got {self.strength}")
        if not 0.0 <= self.max_background_qoffset <= 1.0 or self.background_share < 0:
            problems.append("the background penalty must be in [0, 1]")
        if not -1.0 <= self.edge_qoffset <= 1.0:
            problems.append(f"edge_qoffset must be in [-1, 1], got {self.edge_qoffset}")
        if not 0.0 <= self.edge_band_share < 0.5:
            problems.append(f"edge_band_share must be in [0, 0.5), got {self.edge_band_share}")
        if self.max_extrapolation_s < 0:
            problems.append("max_extrapolation_s must be >= 0")
        if self.hold_s <= 0 or self.replan_interval_s <= 0:
            problems.append("hold_s and replan_interval_s must be positive")
        if self.hold_share_of_seen < 0:
            problems.append("hold_share_of_seen must be >= 0")
        if self.refresh_interval_s < 0 or self.refresh_frames < 1:
            problems.append("refresh_interval_s must be >= 0 and refresh_frames >= 1")
        if self.max_tracks < 1:
            problems.append(f"max_tracks must be >= 1, got {self.max_tracks}")
        if problems:
            raise ConfigError("bad ROI settings: " + "; ".join(problems))

    @property
    def background_qoffset(self) -> float:
        return min(self.strength * self.background_share, self.max_background_qoffset)


class Box(Protocol):
    """A detection as the client gets it (``protocol.Detection`` has these fields)."""

    @property
    def class_id(self) -> int: ...
    @property
    def score(self) -> float: ...
    @property
    def x1(self) -> float: ...
    @property
    def y1(self) -> float: ...
    @property
    def x2(self) -> float: ...
    @property
    def y2(self) -> float: ...


@dataclass(frozen=True, slots=True)
class RoiPlan:
    """Quantiser offsets for the next frames, in the pixels of a ``width_px`` x
    ``height_px`` frame; the first region that contains a block applies; none: uniform."""

    width_px: int
    height_px: int
    regions: tuple[RoiRegion, ...] = ()

    @property
    def uniform(self) -> bool:
        return not self.regions

    def for_encoder(
        self, width_px: int, height_px: int, *, block_px: int = BLOCK_PX
    ) -> tuple[RoiRegion, ...]:
        """The regions in a ``width_px`` x ``height_px`` encoder picture, each grown
        outward to whole ``block_px`` blocks (never shrunk, so no object loses a block)
        and clipped to the picture."""
        sx, sy = width_px / self.width_px, height_px / self.height_px
        mapped = []
        for r in self.regions:
            region = RoiRegion(
                max(0, math.floor(r.left_px * sx / block_px) * block_px),
                max(0, math.floor(r.top_px * sy / block_px) * block_px),
                min(width_px, math.ceil(r.right_px * sx / block_px) * block_px),
                min(height_px, math.ceil(r.bottom_px * sy / block_px) * block_px),
                r.qoffset,
            )
            if not region.empty:
                mapped.append(region)
        return tuple(mapped)


@dataclass(slots=True)
class _Track:
    """One object from answer to answer (the planner's own, mutable)."""

    class_id: int
    score: float
    box: tuple[float, float, float, float]  # x1 y1 x2 y2 in the frame captured at ...
    captured_at: float
    first_seen: float  # captured_at of its first frame
    velocity: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # px/s, each side

    def expires_at(self, config: RoiConfig) -> float:
        """When its region goes if it is not seen again (its frame's capture clock)."""
        seen_s = self.captured_at - self.first_seen
        hold = max(config.hold_s, min(config.max_hold_s, config.hold_share_of_seen * seen_s))
        return self.captured_at + hold

    def predicted(self, at: float) -> tuple[float, float, float, float]:
        dt = at - self.captured_at
        v = self.velocity
        x1, y1, x2, y2 = self.box
        return x1 + v[0] * dt, y1 + v[1] * dt, x2 + v[2] * dt, y2 + v[3] * dt


def _iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class RoiPlanner:
    """The plan for the encoder's quantiser from the server's latest boxes (sans-I/O).

    ``frame_interval_s`` is one frame at the stream's rate (the refresh's length).
    """

    def __init__(
        self,
        config: RoiConfig,
        *,
        width_px: int,
        height_px: int,
        frame_interval_s: float,
        now: float,
    ) -> None:
        config.check()
        self.config = config
        self.width_px = width_px
        self.height_px = height_px
        self.frame_interval_s = frame_interval_s
        self._tracks: list[_Track] = []
        self._latest_captured_at = -math.inf
        self._planned_at = now
        # The first refresh half an interval in: a stream's scheduled keyframes come at whole
        # multiples of its GOP from its start (2 s in shelf-bench codec, 10 s live), and a
        # uniform keyframe would re-spend the bits ROI saves where it saves the most.
        interval = config.refresh_interval_s
        self._next_refresh_at = now + interval / 2 if interval > 0 else math.inf
        self._refresh_until = -math.inf
        self.refreshes = 0  # how many refreshes began (for the summary and tests)

    # -- inputs ---------------------------------------------------------------------------

    def on_result(self, boxes: Sequence[Box], captured_at: float, now: float) -> None:
        """The server's boxes for the frame captured at ``captured_at`` arrived at ``now``.

        An answer older than one already taken (answers can overtake) is ignored: the
        newer one says more about where the objects are.
        """
        if captured_at <= self._latest_captured_at:
            return
        self._latest_captured_at = captured_at
        self._expire(now)
        detections = [b for b in boxes if b.x2 > b.x1 and b.y2 > b.y1]
        pairs = sorted(
            (
                (_iou(track.predicted(captured_at), (d.x1, d.y1, d.x2, d.y2)), ti, di)
                for ti, track in enumerate(self._tracks)
                for di, d in enumerate(detections)
                if d.class_id == track.class_id
            ),
            reverse=True,
        )
        taken_tracks: set[int] = set()
        taken_boxes: set[int] = set()
        for overlap, ti, di in pairs:
            if overlap < self.config.match_iou:
                break
            if ti in taken_tracks or di in taken_boxes:
                continue
            taken_tracks.add(ti)
            taken_boxes.add(di)
            self._update(self._tracks[ti], detections[di], captured_at)
        for di, d in enumerate(detections):
            if di not in taken_boxes:
                box = (d.x1, d.y1, d.x2, d.y2)
                self._tracks.append(_Track(d.class_id, d.score, box, captured_at, captured_at))
        if len(self._tracks) > self.config.max_tracks:
            # Bounded: the most recently seen first, then the surest.
            self._tracks.sort(key=lambda t: (t.captured_at, t.score), reverse=True)
            del self._tracks[self.config.max_tracks :]
        self._planned_at = now

    def get_timer(self) -> float | None:
        """When ``handle_timer`` is next due (None: never)."""
        due = [self._next_refresh_at]
        if self._refresh_until > -math.inf:
            due.append(self._refresh_until)
        if self._tracks:
            due.append(min(t.expires_at(self.config) for t in self._tracks))
            due.append(self._planned_at + self.config.replan_interval_s)
        soonest = min(due)
        return None if soonest == math.inf else soonest

    def handle_timer(self, now: float) -> None:
        """Expire old tracks; begin or end a refresh; re-plan as answers age."""
        self._expire(now)
        if now >= self._refresh_until:
            self._refresh_until = -math.inf
        if now >= self._next_refresh_at:
            config = self.config
            self._refresh_until = now + config.refresh_frames * self.frame_interval_s
            self._next_refresh_at = max(self._next_refresh_at + config.refresh_interval_s, now)
            self.refreshes += 1
        self._planned_at = now

    # -- the output -----------------------------------------------------------------------

    @property
    def tracked(self) -> int:
        """Objects tracked now (expired ones go at the next input or timer)."""
        return len(self._tracks)

    def refreshing(self, now: float) -> bool:
        return now < self._refresh_until

    def plan(self, now: float) -> RoiPlan:
        """The regions for frames encoded from ``now`` on (a query: changes nothing)."""
        uniform = RoiPlan(self.width_px, self.height_px)
        live = [t for t in self._tracks if now <= t.expires_at(self.config)]
        if not live or self.refreshing(now):
            return uniform
        live.sort(key=lambda t: t.score, reverse=True)  # the surest first where they overlap
        config = self.config
        regions = [self._region(t, now) for t in live]
        band_x = round(self.width_px * config.edge_band_share)
        band_y = round(self.height_px * config.edge_band_share)
        background = config.background_qoffset
        if background != config.edge_qoffset and (band_x > 0 or band_y > 0):
            w, h, q = self.width_px, self.height_px, config.edge_qoffset
            edges = [
                RoiRegion(0, 0, band_x, h, q),  # left
                RoiRegion(w - band_x, 0, w, h, q),  # right
                RoiRegion(0, 0, w, band_y, q),  # top
                RoiRegion(0, h - band_y, w, h, q),  # bottom
            ]
            regions += [e for e in edges if not e.empty]
        if background != 0.0:
            regions.append(RoiRegion(0, 0, self.width_px, self.height_px, background))
        return RoiPlan(self.width_px, self.height_px, tuple(regions))

    # -- internals ------------------------------------------------------------------------

    def _expire(self, now: float) -> None:
        self._tracks = [t for t in self._tracks if now <= t.expires_at(self.config)]

    def _update(self, track: _Track, d: Box, captured_at: float) -> None:
        config = self.config
        box = (d.x1, d.y1, d.x2, d.y2)
        dt = captured_at - track.captured_at
        a = config.velocity_smoothing
        limit = config.max_speed_share_per_s * max(self.width_px, self.height_px)
        velocity = tuple(
            min(max(a * (new - old) / dt + (1 - a) * v, -limit), limit)
            for new, old, v in zip(box, track.box, track.velocity, strict=True)
        )
        track.box, track.captured_at, track.score = box, captured_at, d.score
        track.velocity = (velocity[0], velocity[1], velocity[2], velocity[3])

    def _region(self, track: _Track, now: float) -> RoiRegion:
        """Where ``track`` was and is predicted to be now, grown by its margin."""
        config = self.config
        age = min(max(0.0, now - track.captured_at), config.max_extrapolation_s)
        seen, ahead = track.box, track.predicted(track.captured_at + age)
        side = max(seen[2] - seen[0], seen[3] - seen[1])
        moved = max(abs(a - b) for a, b in zip(ahead, seen, strict=True))
        growth = config.age_margin_share_per_s * side * age + config.motion_margin_share * moved
        margin = max(config.min_margin_px, config.margin_share * side)
        margin += min(growth, config.max_growth_share * side)
        return RoiRegion(
            max(0, math.floor(min(seen[0], ahead[0]) - margin)),
            max(0, math.floor(min(seen[1], ahead[1]) - margin)),
            min(self.width_px, math.ceil(max(seen[2], ahead[2]) + margin)),
            min(self.height_px, math.ceil(max(seen[3], ahead[3]) + margin)),
            -config.strength,
        )
