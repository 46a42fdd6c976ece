"""Delay-based adaptive bitrate for the video stream, after WebRTC's Google Congestion Control.

Sans-I/O: the client reports what it sent (``on_sent``) and the server's arrival Feedback
(``on_feedback``), always with its own clock as ``now`` (seconds), and calls
``handle_timer(now)`` by ``get_timer()`` (the stall check and the ladder's hold times run
there); ``target()`` and ``snapshot()`` only read. Whether a new target is worth an encoder
switch is ``adaptation.Retarget``'s business. Section numbers refer to
draft-ietf-rmcat-gcc-02 ("A Google Congestion Control Algorithm for Real-Time
Communication"); where this differs from the draft it says why.

Pipeline per Feedback::

    seq → (send time, size) ┐
    Feedback (seq, arrival) ┴→ packet groups (§5.2) → delay variation d
                                → trendline slope (WebRTC's successor of §5.3's Kalman filter)
                                → over-use detector, adaptive threshold (§5.4)
                                → AIMD rate control with link capacity estimate (§5.5)
                            ┬→ receive rate R over a sliding window of arrivals
                            └→ one-way queueing delay (standing queue) → drain on TCP

Only differences of server times and differences of client times are ever used; the clock
offset between the machines cancels in (arrival - send) - min(arrival - send).

Why the extra queueing-delay signal: the stream runs over TCP, where a full bottleneck
backs up into the socket and the sender's skipped frames, and head-of-line blocking can
hide the gradual trend GCC looks for. A standing queue (the smallest queueing delay over the
last ``standing_window_s``, as CoDel, RFC 8289, measures it) above
``queue_delay_threshold_ms`` is congestion whatever the trend says, and the rate then drops
far enough to drain that queue within ``drain_time_s``.

The quality ladder (fps, then size; see ``ladder``) follows the bitrate with hysteresis,
since every rung change costs a keyframe.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from shelf_stream.client.ladder import Rung, default_ladder, rung_index


@dataclass(frozen=True, slots=True, kw_only=True)
class RateControlConfig:
    """Settings of the rate controller; the defaults follow GCC where it has one."""

    min_bitrate_kbps: float = 50.0
    max_bitrate_kbps: float = 4000.0
    # §5.5: on over-use the rate drops to beta x the receive rate. The draft's 0.85 left
    # the 2 Mbit/s step of ``shelf-bench e2e --link-schedule`` 68-77 % used (H.265 720p,
    # five runs), 0.9 gave 73-78 % (three) with the same recovery: a standing queue is
    # drained separately (``drain``), so the saw-tooth need not cut that deep.
    beta: float = 0.9
    # §5.5: multiplicative increase far from the known link capacity (8 %/s) ...
    increase_per_s: float = 0.08
    # ... and while no capacity is known (start, or the link got faster than the last
    # estimate's 3-sigma bound). WebRTC reaches capacity quickly there by active probing; this
    # client probes only before the stream, so it ramps faster instead.
    ramp_increase_per_s: float = 0.3
    # ... and back up to a known capacity after a large drop (below this share of the
    # estimate): WebRTC probes there (ProbeController's probe after a large drop, to 85 %
    # of the old estimate). At 8 %/s a drain to the 50 kbit/s floor would take 29 s to
    # climb back to a 465 kbit/s estimate (the page in Chromium, congested to 150 kbit/s,
    # where the encoder follows a lower bitrate a second late). Simulated with an encoder
    # 0.5 s late, 4x congestion for 5 s at 35-400 ms RTT: back within 20 % in 11.9-15.0 s,
    # 13.2-22.9 s without this.
    large_drop_share: float = 0.66
    # §5.5: additive increase near capacity, about one packet per response time (RTT +
    # 100 ms); packets are ≤ MTU-sized pieces of a frame, as in WebRTC.
    packet_bytes: int = 1200
    min_additive_kbps_per_s: float = 4.0
    # The rate may not run ahead of what is received (application-limited senders).
    max_rate_over_received: float = 1.5
    rtt_ms: float = 100.0  # from the probe; only used for the additive step
    # Receive rate: bytes that arrived over this window of server time (at least
    # ``rate_window_frames`` frame intervals). Short, so that a drop in capacity shows fast;
    # not shorter, since whole frames (and keyframes) arrive in bunches: over 250 ms it
    # read 2.1-3.1 Mbit/s on a 2 Mbit/s link.
    rate_window_s: float = 0.5
    rate_window_frames: int = 4
    # §5.2: packets sent within this of a group's first form one group.
    burst_time_ms: float = 5.0
    # Trendline (WebRTC's TrendlineEstimator defaults).
    # WebRTC (20 groups, smoothing 0.9) groups packets ~5 ms apart; a group here is a video
    # frame ~33 ms apart, so the window and the smoothing are shortened to react within a
    # few hundred ms as WebRTC does.
    trendline_window: int = 10
    trendline_smoothing: float = 0.6
    trendline_gain: float = 4.0
    # §5.4: adaptive threshold gamma: start, bounds, and the gains K_u (|m| above gamma)
    # and K_d (below); the draft's K_u = 0.01, K_d = 0.00018 are for the Kalman filter's
    # m, WebRTC's trendline uses these.
    initial_threshold_ms: float = 12.5
    # WebRTC's floor is 6; whole frames (and a keyframe 3x their size) vary more than paced
    # 5 ms packet groups, and at 6 a keyframe at half the link's rate already reads as
    # over-use (it then pins the capacity estimate to an application-limited rate).
    min_threshold_ms: float = 10.0
    max_threshold_ms: float = 600.0
    threshold_gain_up: float = 0.0087
    threshold_gain_down: float = 0.039
    overuse_time_ms: float = 10.0
    # Over-use is acted on only with at least this much standing queue (see ``_usage``).
    # 25 rather than 10: five H.265 720p runs of the 2 Mbit/s step used 71-77 % of the link
    # against 68-75 % at 10, with the same settling after the drop.
    overuse_min_queue_ms: float = 25.0
    # Queueing delay (TCP-robust signal).
    base_delay_window_s: float = 10.0
    standing_window_s: float = 0.2
    queue_delay_threshold_ms: float = 60.0
    drain_time_s: float = 0.5
    min_drain_factor: float = 0.15
    # The rate stayed near or above the capacity estimate this long without over-use: the
    # link got faster. Forget the estimate and ramp, instead of creeping up by one packet
    # per response time (WebRTC probes the link for this; the stream here carries no
    # padding).
    capacity_stale_s: float = 2.0
    # Longest a keyframe hides the delay samples after it (see ``_keyframe_shadow_s``).
    keyframe_shadow_max_s: float = 0.25
    # No Feedback for this long while frames are outstanding: halve the rate.
    stall_timeout_s: float = 1.0
    # ``handle_timer`` is due this often (the stall check, the ladder's hold times).
    tick_s: float = 0.1
    # Ladder hysteresis.
    down_hold_s: float = 1.0
    up_factor: float = 1.2
    up_hold_s: float = 4.0
    # ... or this long, when the link has already carried the next rung's climb rate
    # (``LadderPolicy``): a climb after deep congestion then waits 1 s per rung, not 4.
    proven_up_hold_s: float = 1.0
    # What the link carried is read over this much server time: at 7.5 fps the receive
    # rate's 0.5 s window holds 4 frames, and its reading swung 125-281 kbit/s around a
    # steady 150 (a keyframe every 2 s, and one frame more or less in the window).
    carried_window_s: float = 1.5
    min_rung_hold_s: float = 3.0
    history_packets: int = 4096

    def __post_init__(self) -> None:
        if not 0 < self.min_bitrate_kbps <= self.max_bitrate_kbps:
            raise ValueError("need 0 < min_bitrate_kbps <= max_bitrate_kbps")
        if not 0 < self.beta < 1:
            raise ValueError("beta must be in (0, 1)")
        if self.trendline_window < 2:
            raise ValueError("trendline_window must be >= 2")


class TargetLike(Protocol):
    """Anything with the four target fields (``probe.StartChoice``, ``Target``)."""

    @property
    def bitrate_kbps(self) -> float: ...
    @property
    def fps(self) -> float: ...
    @property
    def width(self) -> int: ...
    @property
    def height(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Target:
    """What the encoder should produce.

    ``fps`` is the capture rate; ``encode_fps`` (when set) the lower rate the encoder
    really reaches, which its rate control must budget for, and ``fast_preset`` whether it
    runs its faster preset (see ``encode_rate``).
    """

    bitrate_kbps: float
    fps: float
    width: int
    height: int
    encode_fps: float | None = None
    fast_preset: bool = False


class Usage(enum.Enum):
    """The over-use detector's hypothesis (§5.4)."""

    NORMAL = "normal"
    OVERUSE = "overuse"
    UNDERUSE = "underuse"


class RateState(enum.Enum):
    """The AIMD state machine of §5.5, plus draining a standing queue."""

    HOLD = "hold"
    INCREASE = "increase"
    DECREASE = "decrease"
    DRAIN = "drain"


# ------------------------------------------------------------------------------ delay signal


@dataclass(frozen=True, slots=True)
class _GroupDelta:
    send_delta_ms: float
    arrival_delta_ms: float
    arrival_ms: float  # of the newer group, server clock


@dataclass(slots=True)
class _Group:
    first_send: float
    last_send: float
    last_arrival: float


class InterGroupDelay:
    """§5.2: packets → groups → (send, arrival) deltas between consecutive groups.

    A group is what was sent within ``burst_time_ms`` of its first packet (one Video
    message, or several the socket let out together); a packet that arrives within the burst
    time of the group's last one and earlier than its send spacing predicts is queued behind
    it and joins it as well (the draft's arrival-side rule).
    """

    def __init__(self, burst_time_ms: float) -> None:
        self._burst_s = burst_time_ms / 1000
        self._current: _Group | None = None
        self._previous: _Group | None = None

    def add(self, send_s: float, arrival_s: float) -> _GroupDelta | None:
        group = self._current
        if group is None:
            self._current = _Group(send_s, send_s, arrival_s)
            return None
        if self._joins(group, send_s, arrival_s):
            group.last_send = max(group.last_send, send_s)
            group.last_arrival = max(group.last_arrival, arrival_s)
            return None
        delta = None
        if self._previous is not None:
            prev = self._previous
            delta = _GroupDelta(
                (group.last_send - prev.last_send) * 1000,
                (group.last_arrival - prev.last_arrival) * 1000,
                group.last_arrival * 1000,
            )
        self._previous, self._current = group, _Group(send_s, send_s, arrival_s)
        return delta

    def _joins(self, group: _Group, send_s: float, arrival_s: float) -> bool:
        if send_s - group.first_send <= self._burst_s:
            return True
        arrival_gap = arrival_s - group.last_arrival
        variation = arrival_gap - (send_s - group.last_send)
        return arrival_gap <= self._burst_s and variation < 0


class Trendline:
    """Slope of the smoothed accumulated delay variation over the last ``window`` groups.

    WebRTC replaced §5.3's Kalman filter with this least-squares trendline: it reacts to a
    queue that keeps growing rather than to one delta, which suits bursty video frames.
    """

    def __init__(self, window: int, smoothing: float) -> None:
        self._points: deque[tuple[float, float]] = deque(maxlen=window)
        self._smoothing = smoothing
        self._accumulated = 0.0
        self._smoothed = 0.0
        self._first_arrival_ms: float | None = None
        self.slope = 0.0
        self.samples = 0

    def update(self, delta: _GroupDelta) -> float:
        if self._first_arrival_ms is None:
            self._first_arrival_ms = delta.arrival_ms
        self.samples += 1
        self._accumulated += delta.arrival_delta_ms - delta.send_delta_ms
        s = self._smoothing
        self._smoothed = s * self._smoothed + (1 - s) * self._accumulated
        self._points.append((delta.arrival_ms - self._first_arrival_ms, self._smoothed))
        if len(self._points) == self._points.maxlen:
            slope = _linear_fit_slope(self._points)
            if slope is not None:
                self.slope = slope
        return self.slope


def _linear_fit_slope(points: Sequence[tuple[float, float]]) -> float | None:
    n = len(points)
    x_mean = sum(x for x, _ in points) / n
    y_mean = sum(y for _, y in points) / n
    num = sum((x - x_mean) * (y - y_mean) for x, y in points)
    den = sum((x - x_mean) ** 2 for x, _ in points)
    return num / den if den > 0 else None


class OveruseDetector:
    """§5.4: compare the (scaled) trend m with an adaptive threshold gamma.

    Over-use needs m > gamma for more than ``overuse_time_ms`` over at least two groups and a
    trend that is not falling; gamma follows |m| slowly (K_u) when |m| is above it and faster
    (K_d) below, so that a competing TCP flow's steady queue does not starve the stream and
    small noise does not trigger it (§5.4, "adaptive threshold").
    """

    MAX_DELTAS = 60  # WebRTC's kMinNumDeltas: m scales with the samples seen, up to this
    MAX_ADAPT_OFFSET_MS = 15.0  # §5.4: do not adapt gamma on outliers beyond gamma + 15

    def __init__(self, config: RateControlConfig) -> None:
        self._cfg = config
        self.threshold = config.initial_threshold_ms
        self.usage = Usage.NORMAL
        self.modified_trend = 0.0
        self._overuse_ms = -1.0
        self._overuse_count = 0
        self._previous_trend = 0.0
        self._last_update_ms: float | None = None

    def detect(self, trend: float, samples: int, send_delta_ms: float, now_ms: float) -> Usage:
        if samples < 2:
            self.usage = Usage.NORMAL
            return self.usage
        m = min(samples, self.MAX_DELTAS) * trend * self._cfg.trendline_gain
        self.modified_trend = m
        if m > self.threshold:
            self._overuse_ms = (
                send_delta_ms / 2 if self._overuse_ms < 0 else (self._overuse_ms + send_delta_ms)
            )
            self._overuse_count += 1
            if (
                self._overuse_ms > self._cfg.overuse_time_ms
                and self._overuse_count > 1
                and trend >= self._previous_trend
            ):
                self._overuse_ms, self._overuse_count = 0.0, 0
                self.usage = Usage.OVERUSE
        elif m < -self.threshold:
            self._overuse_ms, self._overuse_count = -1.0, 0
            self.usage = Usage.UNDERUSE
        else:
            self._overuse_ms, self._overuse_count = -1.0, 0
            self.usage = Usage.NORMAL
        self._previous_trend = trend
        self._adapt(m, now_ms)
        return self.usage

    def _adapt(self, m: float, now_ms: float) -> None:
        cfg = self._cfg
        last, self._last_update_ms = self._last_update_ms, now_ms
        if last is None or abs(m) > self.threshold + self.MAX_ADAPT_OFFSET_MS:
            return
        gain = cfg.threshold_gain_down if abs(m) < self.threshold else cfg.threshold_gain_up
        elapsed_ms = min(max(now_ms - last, 0.0), 100.0)
        self.threshold += gain * (abs(m) - self.threshold) * elapsed_ms
        self.threshold = min(max(self.threshold, cfg.min_threshold_ms), cfg.max_threshold_ms)


class SlidingMin:
    """Minimum of (time, value) samples over the last ``window_s`` (monotonic deque)."""

    def __init__(self, window_s: float) -> None:
        self._window_s = window_s
        self._samples: deque[tuple[float, float]] = deque()

    def add(self, t: float, value: float) -> None:
        while self._samples and self._samples[-1][1] >= value:
            self._samples.pop()
        self._samples.append((t, value))
        while self._samples[0][0] < t - self._window_s:
            self._samples.popleft()

    @property
    def value(self) -> float | None:
        return self._samples[0][1] if self._samples else None


class QueueDelay:
    """One-way queueing delay: standing (arrival - send) minus its 10 s minimum.

    The clock offset is in both terms and cancels; clock drift is tracked by the window.
    """

    def __init__(self, base_window_s: float, standing_window_s: float) -> None:
        self._base = SlidingMin(base_window_s)
        self._standing = SlidingMin(standing_window_s)

    def add(self, send_s: float, arrival_s: float) -> None:
        one_way = arrival_s - send_s
        self._base.add(arrival_s, one_way)
        self._standing.add(arrival_s, one_way)

    @property
    def ms(self) -> float:
        base, standing = self._base.value, self._standing.value
        return 0.0 if base is None or standing is None else (standing - base) * 1000


class ReceiveRate:
    """Bytes that arrived over a window of server time (at most ``max_window_s``), kbit/s."""

    def __init__(self, max_window_s: float) -> None:
        self._max_window_s = max_window_s
        self._arrivals: deque[tuple[float, int]] = deque()
        self._first_arrival: float | None = None

    def add(self, arrival_s: float, size: int) -> None:
        if self._first_arrival is None:
            self._first_arrival = arrival_s
        self._arrivals.append((arrival_s, size))
        while self._arrivals[0][0] <= arrival_s - self._max_window_s:
            self._arrivals.popleft()

    def kbps(self, window_s: float) -> float | None:
        if self._first_arrival is None or len(self._arrivals) < 2:
            return None
        last = self._arrivals[-1][0]
        window_s = min(window_s, self._max_window_s)
        in_window = [size for t, size in self._arrivals if t > last - window_s]
        span = last - self._first_arrival
        if span >= window_s:
            return sum(in_window) * 8 / window_s / 1000
        # Less history than a window: the first packet's bytes arrived before the span.
        return (sum(in_window) - self._arrivals[0][1]) * 8 / span / 1000 if span > 0 else None


# ------------------------------------------------------------------------------ rate control


class DeliveryRate:
    """Bytes over the span of their arrivals (the first packet's bytes excluded), kbit/s."""

    MIN_SPAN_S = 0.2

    def __init__(self) -> None:
        self._first: float | None = None
        self._last = 0.0
        self._bytes = 0

    def add(self, arrival_s: float, size: int) -> None:
        if self._first is None:
            self._first = self._last = arrival_s
            return
        self._last = max(self._last, arrival_s)
        self._bytes += size

    def kbps(self) -> float | None:
        if self._first is None or self._last - self._first < self.MIN_SPAN_S:
            return None
        return self._bytes * 8 / (self._last - self._first) / 1000


class LinkCapacity:
    """§5.5's "average max bitrate": an EWMA of the receive rate at over-use, with its
    variance, in kbit/s (as WebRTC's LinkCapacityEstimator, normalised by the estimate)."""

    ALPHA = 0.05

    def __init__(self) -> None:
        self.estimate: float | None = None
        self._deviation = 0.4

    def on_overuse(self, received_kbps: float) -> None:
        if self.estimate is None:
            self.estimate = received_kbps
        else:
            self.estimate += self.ALPHA * (received_kbps - self.estimate)
        error = self.estimate - received_kbps
        norm = max(self.estimate, 1.0)
        self._deviation = (1 - self.ALPHA) * self._deviation + self.ALPHA * error**2 / norm
        self._deviation = min(max(self._deviation, 0.4), 2.5)

    def reset(self) -> None:
        self.estimate = None

    def _spread(self) -> float:
        assert self.estimate is not None
        return 3 * math.sqrt(self._deviation * self.estimate)

    def upper(self) -> float:
        return math.inf if self.estimate is None else self.estimate + self._spread()

    def lower(self) -> float:
        return 0.0 if self.estimate is None else self.estimate - self._spread()

    def near(self, kbps: float) -> bool:
        return self.lower() <= kbps <= self.upper()


class Aimd:
    """§5.5: the target rate A from the detector's signal and the receive rate R."""

    def __init__(self, config: RateControlConfig, start_kbps: float) -> None:
        self._cfg = config
        self.kbps = self._clamp(start_kbps)
        self.state = RateState.HOLD
        self.capacity = LinkCapacity()
        self._last_decrease: float | None = None
        self._at_capacity_since: float | None = None
        self.rtt_s = config.rtt_ms / 1000

    def update(self, usage: Usage, received: float | None, now: float, dt: float) -> None:
        self.state = _next_state(self.state, usage)
        if received is None:
            return
        if self.state is not RateState.INCREASE:
            self._at_capacity_since = None  # "held near capacity" means climbing all along
        if self.state is RateState.DECREASE:
            self._decrease(received, now)
        elif self.state is RateState.INCREASE:
            self._expire_capacity(now)
            self._increase(received, dt)

    def drain(self, received: float, queue_ms: float, now: float) -> None:
        """A standing queue: drop below R by enough to empty it within ``drain_time_s``."""
        cfg = self._cfg
        if self.state is not RateState.DRAIN:
            self._note_overuse(received)
        self.state = RateState.DRAIN
        factor = max(cfg.min_drain_factor, cfg.beta - queue_ms / 1000 / cfg.drain_time_s)
        self.kbps = min(self.kbps, self._clamp(factor * received))
        self._last_decrease = now

    def end_drain(self, received: float | None, ceiling: float) -> None:
        """The queue is gone: R was the link rate while it drained, so resume at beta x R."""
        if received is not None:
            self.kbps = max(self.kbps, self._clamp(min(self._cfg.beta * received, ceiling)))
        self.state = RateState.HOLD

    def limit(self, kbps: float) -> None:
        """No higher than ``kbps`` from here (the AIMD state is kept)."""
        self.kbps = min(self.kbps, self._clamp(kbps))

    def halve(self) -> None:
        """No Feedback for a while: halve the rate. A drain goes on: the stall is its queue,
        too long to report on, and where the drain ends it resumes at its own ceiling (a
        stall that ended it let the next drain take the floor as that ceiling: Chromium's
        page then sat at 50 kbit/s for 2 s after the queue was gone)."""
        self._at_capacity_since = None
        self.kbps = self._clamp(self.kbps / 2)
        if self.state is not RateState.DRAIN:
            self.state = RateState.HOLD

    def _decrease(self, received: float, now: float) -> None:
        # WebRTC reduces at most once per RTT (10..200 ms): the effect of a decrease shows
        # only an RTT later.
        interval = min(max(self.rtt_s, 0.01), 0.2)
        if self._last_decrease is not None and now - self._last_decrease < interval:
            return
        self._note_overuse(received)
        decreased = self._clamp(self._cfg.beta * received)
        if decreased < self.kbps:
            self.kbps = decreased
        self._last_decrease = now

    def _expire_capacity(self, now: float) -> None:
        if self.capacity.estimate is None or self.kbps < self.capacity.lower():
            self._at_capacity_since = None
            return
        if self._at_capacity_since is None:
            self._at_capacity_since = now
        elif now - self._at_capacity_since >= self._cfg.capacity_stale_s:
            self.capacity.reset()
            self._at_capacity_since = None

    def _note_overuse(self, received: float) -> None:
        self._at_capacity_since = None
        if received < self.capacity.lower():
            self.capacity.reset()  # the link got much slower: forget the old average
        self.capacity.on_overuse(received)

    def _increase(self, received: float, dt: float) -> None:
        cfg = self._cfg
        if received > self.capacity.upper():
            self.capacity.reset()  # the link got faster than anything seen: ramp again
        limit = cfg.max_rate_over_received * received + 10
        if self.kbps >= limit:
            return
        estimate = self.capacity.estimate
        # Ramp where no capacity is known, and back up to it after a large drop.
        if estimate is None or self.kbps < cfg.large_drop_share * estimate:
            step = self.kbps * ((1 + cfg.ramp_increase_per_s) ** dt - 1)
        elif self.capacity.near(self.kbps):
            step = self._additive_kbps_per_s() * dt
        else:
            step = self.kbps * ((1 + cfg.increase_per_s) ** dt - 1)
        self.kbps = self._clamp(min(self.kbps + step, limit))

    def _additive_kbps_per_s(self) -> float:
        """One packet per response time (WebRTC's AimdRateControl, §5.5)."""
        cfg = self._cfg
        frame_bits = self.kbps * 1000 / 30  # per frame at a nominal 30 fps, as WebRTC
        packets = max(1, math.ceil(frame_bits / (cfg.packet_bytes * 8)))
        response_s = self.rtt_s + 0.1
        return max(cfg.min_additive_kbps_per_s, frame_bits / packets / response_s / 1000)

    def _clamp(self, kbps: float) -> float:
        return min(max(kbps, self._cfg.min_bitrate_kbps), self._cfg.max_bitrate_kbps)


def _next_state(state: RateState, usage: Usage) -> RateState:
    """§5.5's state transition table (a finished drain counts as a decrease)."""
    if usage is Usage.OVERUSE:
        return RateState.DECREASE
    if usage is Usage.UNDERUSE:
        return RateState.HOLD
    return RateState.HOLD if state in (RateState.DECREASE, RateState.DRAIN) else RateState.INCREASE


# ------------------------------------------------------------------------------ ladder policy


class LadderPolicy:
    """Which rung to encode at, following the bitrate with hysteresis.

    Down: the rate stayed below the rung's floor for ``down_hold_s`` → jump to the best rung
    whose floor fits (one keyframe, not one per rung). Up, one rung at a time: the rate stayed
    above ``up_factor`` x the next rung's floor for ``up_hold_s``, or for ``proven_up_hold_s``
    while what the link *carried* without congestion (``carried_kbps``) was above it too: the
    rate alone may be an extrapolation (it runs up to 1.5 x the receive rate while a rung's
    ceiling holds the encoder back), the receive rate is not. Between changes at least
    ``min_rung_hold_s``. A ``max_bitrate_kbps`` under a floor counts as the floor: the user's
    cap is not a sign of a slow network.
    """

    def __init__(self, config: RateControlConfig, rungs: Sequence[Rung], index: int, now: float):
        self._cfg = config
        self.rungs = tuple(rungs)
        self.index = index
        self.changes = 0
        self._changed_at = now - config.min_rung_hold_s
        self._below_since: float | None = None
        self._above_since: float | None = None
        self._carried_since: float | None = None

    @property
    def rung(self) -> Rung:
        return self.rungs[self.index]

    def floor(self, index: int) -> float:
        return min(self.rungs[index].min_kbps, self._cfg.max_bitrate_kbps)

    def update(self, kbps: float, now: float, carried_kbps: float = 0.0) -> bool:
        """True when the rung changed (``carried_kbps``: what the link carried without
        congestion, 0 when it is congested)."""
        cfg = self._cfg
        settled = now - self._changed_at >= cfg.min_rung_hold_s
        self._below_since = _since(self._below_since, kbps < self.floor(self.index), now)
        if self._below_since is not None and now - self._below_since >= cfg.down_hold_s:
            if settled and self.index < len(self.rungs) - 1:
                fits = [i for i in range(self.index + 1, len(self.rungs)) if self.floor(i) <= kbps]
                return self._move(fits[0] if fits else len(self.rungs) - 1, now)
            return False
        up = self.index - 1
        climb_kbps = cfg.up_factor * self.floor(up) if up >= 0 else math.inf
        self._above_since = _since(self._above_since, kbps >= climb_kbps, now)
        proven = self._above_since is not None and carried_kbps >= climb_kbps
        self._carried_since = _since(self._carried_since, proven, now)
        held = _held(self._above_since, cfg.up_hold_s, now) or _held(
            self._carried_since, cfg.proven_up_hold_s, now
        )
        return held and settled and self._move(up, now)

    def _move(self, index: int, now: float) -> bool:
        self.index = index
        self.changes += 1
        self._changed_at = now
        self._below_since = self._above_since = self._carried_since = None
        return True


def _since(since: float | None, condition: bool, now: float) -> float | None:
    if not condition:
        return None
    return now if since is None else since


def _held(since: float | None, hold_s: float, now: float) -> bool:
    return since is not None and now - since >= hold_s


# ------------------------------------------------------------------------------ controller


@dataclass(slots=True)
class _SentPacket:
    send_s: float
    size: int
    keyframe: bool


class RateController:
    """The sans-I/O rate controller: sends and Feedback in, encoder targets out.

    ``start`` is the starting target (``probe.StartChoice``); ``ladder`` the rungs it may
    move between (default: ``default_ladder`` of the start's size and fps, so the start is
    the top: pass the ladder ``choose_start`` used, so that the stream can climb back above
    a lowered start).
    """

    def __init__(
        self,
        config: RateControlConfig,
        *,
        start: TargetLike,
        now: float,
        ladder: Sequence[Rung] | None = None,
    ) -> None:
        self.config = config
        rungs = tuple(ladder) if ladder else default_ladder(start.width, start.height, start.fps)
        index = rung_index(rungs, start.width, start.height, start.fps)
        self.ladder = LadderPolicy(config, rungs, index, now)
        self.aimd = Aimd(config, start.bitrate_kbps)
        self._groups = InterGroupDelay(config.burst_time_ms)
        self._trendline = Trendline(config.trendline_window, config.trendline_smoothing)
        self.detector = OveruseDetector(config)
        self._queue = QueueDelay(config.base_delay_window_s, config.standing_window_s)
        self._rate = ReceiveRate(max(1.0, config.rate_window_s, config.carried_window_s))
        self._sent: dict[int, _SentPacket] = {}
        self._last_seq = -1
        self._arrival_origin_us: int | None = None
        self._last_update: float | None = None
        self._last_feedback: float | None = None
        self._stall_checked = now
        self._drain_ceiling = self.aimd.kbps
        self._drain_rate = DeliveryRate()
        self._blind_until = -math.inf  # server time: delay samples skipped (a keyframe)
        self._next_tick = now + config.tick_s

    # -- inputs ---------------------------------------------------------------------------

    def on_sent(self, seq: int, size_bytes: int, now: float, *, keyframe: bool = False) -> None:
        """A Video message of ``size_bytes`` went to the socket (``keyframe``: it carries one)."""
        self._sent[seq] = _SentPacket(now, size_bytes, keyframe)
        while len(self._sent) > self.config.history_packets:
            del self._sent[next(iter(self._sent))]

    def on_feedback(self, arrivals: Sequence[tuple[int, int]], now: float) -> None:
        """A Feedback: (seq, arrival µs on the server's clock) of Video messages."""
        for seq, arrival_us in sorted(arrivals):
            if seq <= self._last_seq:
                continue  # duplicate or stale
            packet = self._sent.pop(seq, None)
            if packet is not None:
                # Server times count from its first report, in exact integer µs: the
                # arithmetic is then the same whatever the server clock reads.
                if self._arrival_origin_us is None:
                    self._arrival_origin_us = arrival_us
                self._on_packet(packet, (arrival_us - self._arrival_origin_us) / 1e6)
            self._last_seq = seq
        # In-order transport: anything older than the newest report is never reported.
        for seq in [s for s in self._sent if s <= self._last_seq]:
            del self._sent[seq]
        self._last_feedback = now
        self._update_rate(now)

    def set_rtt_ms(self, rtt_ms: float) -> None:
        self.aimd.rtt_s = rtt_ms / 1000

    def get_timer(self) -> float:
        """When ``handle_timer`` is next due."""
        return self._next_tick

    def handle_timer(self, now: float) -> None:
        """Time passed: check for stalled Feedback and let the ladder's hold times run."""
        self._tick(now)

    # -- outputs (queries: they never change state) ---------------------------------------

    def target(self) -> Target:
        """The current target for the encoder."""
        return self._make_target()

    def snapshot(self) -> dict[str, Any]:
        """State for logs and the timeline plot."""
        target = self.target()
        received = self._received_kbps()
        capacity = self.aimd.capacity.estimate
        return {
            "target_kbps": round(self.aimd.kbps, 1),
            "encoder_kbps": round(target.bitrate_kbps, 1),
            "receive_kbps": None if received is None else round(received, 1),
            "capacity_kbps": None if capacity is None else round(capacity, 1),
            "queue_delay_ms": round(self._queue.ms, 1),
            "trend": round(self.detector.modified_trend, 3),
            "threshold": round(self.detector.threshold, 3),
            "usage": self.detector.usage.value,
            "state": self.aimd.state.value,
            "rung": str(self.ladder.rung),
        }

    # -- internals ------------------------------------------------------------------------

    def _on_packet(self, packet: _SentPacket, arrival_s: float) -> None:
        self._rate.add(arrival_s, packet.size)
        if self.aimd.state is RateState.DRAIN:
            self._drain_rate.add(arrival_s, packet.size)
        if packet.keyframe:
            self._blind_until = arrival_s + self._keyframe_shadow_s(packet.size)
        # A drain needs every sample: it ends when the queue is seen gone.
        shadowed = packet.keyframe or arrival_s <= self._blind_until
        if shadowed and self.aimd.state is not RateState.DRAIN:
            return
        self._queue.add(packet.send_s, arrival_s)
        delta = self._groups.add(packet.send_s, arrival_s)
        if delta is not None:
            trend = self._trendline.update(delta)
            self.detector.detect(
                trend, self._trendline.samples, delta.send_delta_ms, delta.arrival_ms
            )

    def _usage(self, queue_ms: float) -> Usage:
        """The detector's verdict, except that a rising trend with no queue to show for it
        (below ``overuse_min_queue_ms``) is noise: whole frames arriving in bunches tilt the
        trendline too (measured: over-use at 0.2 ms of queue, the rate cut by 15 %)."""
        usage = self.detector.usage
        if usage is Usage.OVERUSE and queue_ms < self.config.overuse_min_queue_ms:
            return Usage.NORMAL
        return usage

    def _keyframe_shadow_s(self, size: int) -> float:
        """How long after a keyframe's arrival the delays still show it, at most.

        A keyframe is a burst the encoder made, not the link: several frames' worth of bytes
        at once (every encoder switch starts with one). Its own serialisation, and the wait of
        the frames queued behind it, would read as a rising queue (measured in simulation:
        over-use after every switch, the rate stuck at 55 % of a 10 Mbit/s link). So those
        samples are skipped; the frames behind it have cleared the queue once the keyframe's
        bytes would have crossed the link (at the receive rate or the capacity estimate,
        whichever is higher; never longer than ``keyframe_shadow_max_s``). A real queue
        still shows in the frames after.
        """
        rates = [r for r in (self._received_kbps(), self.aimd.capacity.estimate) if r]
        if not rates:
            return 0.0
        return min(size * 8 / (max(rates) * 1000), self.config.keyframe_shadow_max_s)

    def _update_rate(self, now: float) -> None:
        dt = 0.0 if self._last_update is None else min(now - self._last_update, 1.0)
        self._last_update = now
        received = self._received_kbps()
        queue_ms = self._queue.ms
        draining = self.aimd.state is RateState.DRAIN
        if received is not None and queue_ms > self.config.queue_delay_threshold_ms:
            if not draining:
                self._drain_ceiling = self.aimd.kbps
                self._drain_rate = DeliveryRate()
            # While the queue drains the link is never idle: what arrived since the drain
            # began is its capacity, steadier than any short window.
            self.aimd.drain(self._drain_rate.kbps() or received, queue_ms, now)
        elif draining:
            self.aimd.end_drain(self._drain_rate.kbps() or received, self._drain_ceiling)
        else:
            self.aimd.update(self._usage(queue_ms), received, now, dt)
        self._tick(now)

    def _received_kbps(self) -> float | None:
        cfg = self.config
        window = max(cfg.rate_window_s, cfg.rate_window_frames / self.ladder.rung.fps)
        return self._rate.kbps(window)

    def _tick(self, now: float) -> None:
        self._next_tick = now + self.config.tick_s
        self._check_stall(now)
        index = self.ladder.index
        carried = self._carried_kbps()
        if self.ladder.update(self._sustainable_kbps(), now, carried) and self.ladder.index < index:
            self._start_rung(carried)

    def _start_rung(self, carried_kbps: float) -> None:
        """A climb starts from what the link has carried, not from the rate: under a rung's
        ceiling the rate runs ahead of what was sent (up to 1.5 x the receive rate), and
        in simulation the new rung opened at 785 kbit/s on a 600 kbit/s link, a 200 ms
        queue to drain at once."""
        climb_kbps = self.config.up_factor * self.ladder.floor(self.ladder.index)
        self.aimd.limit(max(carried_kbps, climb_kbps))

    def _sustainable_kbps(self) -> float:
        """The rate the ladder follows: while a queue drains the rate is briefly far below
        what the link carries (beta x R, where it resumes), which is no reason to give up
        resolution."""
        received = self._received_kbps()
        if self.aimd.state is RateState.DRAIN and received is not None:
            return max(self.aimd.kbps, min(self.config.beta * received, self._drain_ceiling))
        return self.aimd.kbps

    def _carried_kbps(self) -> float:
        """The receive rate while nothing says the link is congested (else 0)."""
        carried = self._rate.kbps(self.config.carried_window_s)
        congested = self.aimd.state in (RateState.DECREASE, RateState.DRAIN)
        if carried is None or congested or self._usage(self._queue.ms) is Usage.OVERUSE:
            return 0.0
        return carried

    def _check_stall(self, now: float) -> None:
        """No Feedback while frames are outstanding: the queue is too long to even report."""
        if self._last_feedback is None or not self._sent:
            self._stall_checked = now
            return
        oldest = next(iter(self._sent.values())).send_s
        since = max(oldest, self._last_feedback, self._stall_checked)
        if now - since >= self.config.stall_timeout_s:
            self.aimd.halve()
            self._stall_checked = now

    def _make_target(self) -> Target:
        rung = self.ladder.rung
        bitrate = min(self.aimd.kbps, rung.max_kbps)
        return Target(round(bitrate, 1), rung.fps, rung.width, rung.height)
