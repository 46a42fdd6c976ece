"""The client's adaptation, sans-I/O: what was sent, encoded and fed back in; the plan out.

``Adaptation`` is the one object that decides what the encoder does. It combines:

- ``RateController`` (``controller``): the delay-based target bitrate and quality rung;
- ``EncodeRate`` (``encode_rate``): the frame rate the encoder really reaches here, and
  its faster preset;
- ``BitrateFit`` (``bitrate_fit``): the bitrate to open the encoder with so that its
  output meets the target;
- ``Retarget`` (below): when a new target is worth an encoder switch, and meanwhile
  the share of frames to encode;
- ``FrameThinner`` (below): the encoder worker's side of that share.

Like aioquic's connection, time is passed in (``now``, seconds on the client's clock),
``get_timer()`` says when ``handle_timer(now)`` is due, events come out through
``next_event()``, and queries (``plan``, ``snapshot()``) never change state. The running
client (``client.app``) and the simulated link of the tests drive this same object.

Each encoder switch costs a keyframe (libx265 cannot change its rate in place through
FFmpeg), so ``Retarget`` keeps switches rare: a decrease switches once it has held
``min_down_hold_s``, increases at most every ``min_up_interval_s``, and changes under
``min_change`` wait. Meanwhile a target below the encoder's rate is met by encoding fewer
frames (``frame_share``): the encoder's rate control budgets bits per frame, so 95 % of
the frames carry 95 % of the bits, at once and without a keyframe.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from shelf_stream.client.bitrate_fit import BitrateFit, BitrateFitConfig
from shelf_stream.client.controller import RateControlConfig, RateController, Target
from shelf_stream.client.encode_rate import EncodeRate, EncodeRateChange, EncodeRateConfig
from shelf_stream.client.ladder import Rung

# ------------------------------------------------------------------------------ retarget


@dataclass(frozen=True, slots=True, kw_only=True)
class RetargetPolicy:
    """When a new target from the controller is worth an encoder switch."""

    min_change: float = 0.1  # relative bitrate change
    min_down_interval_s: float = 0.25
    # Short enough to resume soon after a drained queue, long enough that the rate
    # controller has seen the last switch's effect (an RTT plus a feedback period).
    min_up_interval_s: float = 1.0
    # A smaller change still passes once the encoder has kept its target this long, so
    # the stream reaches a target that sits just above it (e.g. at the rung's ceiling).
    settle_s: float = 5.0
    min_settled_change: float = 0.03
    # A decrease switches only once the target has stayed down this long: until then (and
    # for a dip that ends sooner) thinning the frames carries it, at once and without the
    # keyframe a switch down and the switch back up would cost.
    min_down_hold_s: float = 0.5


class Retarget:
    """The encoder's target, and whether a new one is worth a switch (sans-I/O)."""

    def __init__(self, current: Target, now: float, policy: RetargetPolicy | None = None) -> None:
        self.policy = policy or RetargetPolicy()
        self.current = current
        self.switches = 0
        self._last_switch = now
        self._share = 1.0
        self._down_since: float | None = None

    @property
    def frame_share(self) -> float:
        """Share of the frames to encode (1: all): the target over the encoder's rate."""
        return self._share

    def offer(self, target: Target, now: float) -> bool:
        """Consider ``target``; True if the encoder should switch to it."""
        if not self._worth_switching(target, now):
            share = target.bitrate_kbps / self.current.bitrate_kbps
            if share > 1 - self.policy.min_settled_change:
                share = 1.0  # a gap never worth a switch is not worth a stutter either
            self._share = share
            return False
        self._share = 1.0
        self._down_since = None
        self.current = target
        self._last_switch = now
        self.switches += 1
        return True

    def _worth_switching(self, target: Target, now: float) -> bool:
        current = self.current
        if _rung(target) != _rung(current):
            return True  # the controller already holds rung changes for seconds
        policy = self.policy
        change = target.bitrate_kbps / current.bitrate_kbps - 1
        settled = now - self._last_switch >= policy.settle_s
        needed = policy.min_settled_change if settled else policy.min_change
        if change > -needed:
            self._down_since = None
        elif self._down_since is None:
            self._down_since = now
        if abs(change) < needed:
            return False
        if change < 0:
            held = self._down_since is not None and now - self._down_since >= policy.min_down_hold_s
            return held and now - self._last_switch >= policy.min_down_interval_s
        return now - self._last_switch >= policy.min_up_interval_s


class FrameThinner:
    """The encoder's side of ``frame_share``: which frames to encode for a share below 1.

    Credit accrues by the share per frame offered and a frame is encoded when a whole one
    has accrued, so frames are left out evenly (0.75: three of every four), never in runs.
    """

    def __init__(self) -> None:
        self._credit = 0.0  # stays below 1 between calls

    def admit(self, share: float) -> bool:
        self._credit += min(max(share, 0.0), 1.0)
        if self._credit >= 1.0 - 1e-9:
            self._credit -= 1.0
            return True
        return False


def _rung(target: Target) -> tuple[int, int, float, float | None, bool]:
    return target.width, target.height, target.fps, target.encode_fps, target.fast_preset


# ---------------------------------------------------------------------------- adaptation


@dataclass(frozen=True, slots=True)
class EncoderPlan:
    """What the encoder should do: the adaptation's output.

    ``target`` is the rung, bitrate, encoding rate and preset; ``encoder_kbps`` the
    bitrate to open the encoder with for that target's output; ``frame_share`` the share of
    the captured frames to encode.
    """

    target: Target
    encoder_kbps: int
    frame_share: float = 1.0


@dataclass(frozen=True, slots=True)
class EncoderSwitch:
    """Re-open the encoder for ``plan`` (its first frame is a keyframe)."""

    plan: EncoderPlan


@dataclass(frozen=True, slots=True)
class FrameShareChanged:
    """Encode ``plan.frame_share`` of the frames, with the same encoder."""

    plan: EncoderPlan


@dataclass(frozen=True, slots=True)
class EncoderSpeedChanged:
    """The encoder's measured speed changed what it should do (logged by the client)."""

    change: EncodeRateChange
    capture_fps: float


AdaptationEvent = EncoderSwitch | FrameShareChanged | EncoderSpeedChanged


@dataclass(frozen=True, slots=True, kw_only=True)
class AdaptationConfig:
    """Settings of ``Adaptation``; ``enabled=False`` keeps the start plan for the whole run."""

    enabled: bool = True
    control: RateControlConfig = field(default_factory=RateControlConfig)
    retarget: RetargetPolicy = field(default_factory=RetargetPolicy)
    encode_rate: EncodeRateConfig = field(default_factory=EncodeRateConfig)
    bitrate_fit: BitrateFitConfig = field(default_factory=BitrateFitConfig)
    max_events: int = 64  # events not taken by then are dropped oldest first


class Adaptation:
    """The plan for the encoder, from what was sent, encoded and fed back (sans-I/O).

    ``start`` is the first target (the probe's pick); ``ladder`` the rungs the controller
    may move between; ``can_go_faster`` whether the encoder has a faster preset.
    ``on_connected`` starts a fresh rate estimate for each connection (message numbers
    start again at 0); the encoder's speed, its output fit and a pending switch live on.
    """

    def __init__(
        self,
        config: AdaptationConfig,
        *,
        start: Target,
        now: float,
        ladder: Sequence[Rung] = (),
        can_go_faster: bool = False,
    ) -> None:
        self.config = config
        self._ladder = tuple(ladder)
        self._retarget = Retarget(start, now, config.retarget)
        self._encode_rate = EncodeRate(config.encode_rate, now=now, can_go_faster=can_go_faster)
        self._fit = BitrateFit(config.bitrate_fit)
        self._controller: RateController | None = None
        self._plan = EncoderPlan(start, round(start.bitrate_kbps))
        self._events: deque[AdaptationEvent] = deque(maxlen=config.max_events)

    # -- inputs ---------------------------------------------------------------------------

    def on_connected(self, now: float, *, rtt_ms: float | None = None) -> None:
        """A new connection: a fresh rate estimate, from the encoder's current target."""
        if not self.config.enabled:
            return
        control = replace(self.config.control, rtt_ms=rtt_ms or self.config.control.rtt_ms)
        self._controller = RateController(
            control, start=self._retarget.current, now=now, ladder=self._ladder or None
        )

    def on_sent(self, seq: int, message_bytes: int, now: float, *, keyframe: bool) -> None:
        """Video message ``seq`` of ``message_bytes`` went to the socket."""
        if self._controller is not None:
            self._controller.on_sent(seq, message_bytes, now, keyframe=keyframe)

    def on_encoded(
        self, size_bytes: int, encode_ms: float, now: float, *, encoder_kbps: float, fps: float
    ) -> None:
        """The encoder (opened at ``encoder_kbps`` for ``fps``) made an access unit."""
        if not self.config.enabled:
            return
        self._fit.on_encoded(size_bytes, encoder_kbps, fps, now)
        self._encode_rate.on_encoded(encode_ms, now)
        change = self._encode_rate.poll(now, self._retarget.current.fps)
        if change is not None:
            self._events.append(EncoderSpeedChanged(change, self._retarget.current.fps))
            self._offer(now)

    def on_feedback(self, arrivals: Sequence[tuple[int, int]], now: float) -> None:
        """The server's Feedback: (seq, arrival µs on its clock) of Video messages."""
        if self._controller is None:
            return
        self._controller.on_feedback(arrivals, now)
        # Offer the target every time, not only when it changed: one the encoder could
        # not take yet (too soon after a switch) must get through later.
        self._offer(now)

    def get_timer(self) -> float | None:
        """When ``handle_timer`` is next due (None: never)."""
        return None if self._controller is None else self._controller.get_timer()

    def handle_timer(self, now: float) -> None:
        if self._controller is None:
            return
        self._controller.handle_timer(now)
        self._offer(now)

    # -- outputs --------------------------------------------------------------------------

    def next_event(self) -> AdaptationEvent | None:
        """The oldest event not yet taken, if any."""
        return self._events.popleft() if self._events else None

    @property
    def plan(self) -> EncoderPlan:
        return self._plan

    @property
    def switches(self) -> int:
        return self._retarget.switches

    @property
    def controller(self) -> RateController | None:
        """The current connection's rate controller (for the timeline and tests)."""
        return self._controller

    def snapshot(self) -> dict[str, Any]:
        """The plan and the controller's state, for the timeline."""
        target = self._plan.target
        entry: dict[str, Any] = {
            "target_kbps": round(target.bitrate_kbps),
            "encoder_kbps": self._plan.encoder_kbps,
            "frame_share": round(self._plan.frame_share, 3),
            "fps": target.fps,
            "encode_fps": target.encode_fps,
            "fast_preset": target.fast_preset,
            "width": target.width,
            "height": target.height,
        }
        if self._controller is not None:
            entry["controller"] = self._controller.snapshot()
        return entry

    # -- internals ------------------------------------------------------------------------

    def _offer(self, now: float) -> None:
        assert self._controller is not None
        target = self._controller.target()
        rate = self._encode_rate
        if rate.fps is not None and rate.fps < target.fps:
            target = replace(target, encode_fps=rate.fps)
        if rate.faster:
            target = replace(target, fast_preset=True)
        if self._retarget.offer(target, now):
            self._plan = EncoderPlan(target, self._fit.encoder_kbps(target.bitrate_kbps))
            self._events.append(EncoderSwitch(self._plan))
        elif self._retarget.frame_share != self._plan.frame_share:
            self._plan = replace(self._plan, frame_share=self._retarget.frame_share)
            self._events.append(FrameShareChanged(self._plan))
