"""Glue between the sans-I/O adaptation cores and the running client.

- ``run_probe``: drives a ``BandwidthProbe`` over the connection before streaming.
- ``Retarget``: hands new encoder targets from the event loop to the encoder thread.
  Each encoder switch costs a keyframe (libx265 cannot change its rate in place through
  FFmpeg), so the policy here keeps switches rare: a decrease switches once it has held
  ``min_down_hold_s``, increases at most every ``min_up_interval_s``, and changes under
  ``min_change`` wait. Meanwhile a target below the encoder's rate is met by encoding
  fewer frames (``frame_share``): the encoder's rate control budgets bits per frame, so
  95 % of the frames carry 95 % of the bits, at once and without a keyframe. The policy
  is sans-I/O (``now`` passed in).
- ``FrameThinner``: the encoder thread's side of ``frame_share``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass

from websockets.asyncio.client import ClientConnection as WebSocket

from shelf_stream import protocol as p
from shelf_stream.client.controller import Target
from shelf_stream.client.probe import BandwidthProbe, ProbeResult


async def run_probe(
    ws: WebSocket,
    proto: p.ClientConnection,
    probe: BandwidthProbe,
    clock: Callable[[], float],
) -> ProbeResult:
    """Send the probe's bursts and feed it the acknowledgements until it is done."""
    while not probe.done:
        now = clock()
        for probe_id, padding in probe.next_probes(now):
            await ws.send(proto.send(p.Probe(probe_id, round(now * 1_000_000), padding)))
        due = probe.get_timer()
        timeout = max(0.0, due - clock()) if due is not None else 0.05
        try:
            message = await asyncio.wait_for(ws.recv(), timeout)
        except TimeoutError:
            probe.handle_timer(clock())
            continue
        proto.receive_message(message)
        for event in proto.events_received():
            if isinstance(event, p.ProbeAck):
                probe.on_ack(event, clock())
    return probe.result()


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
    """The encoder's target: offered on the event loop, taken by the encoder thread."""

    def __init__(self, current: Target, now: float, policy: RetargetPolicy | None = None) -> None:
        self.policy = policy or RetargetPolicy()
        self.current = current
        self.switches = 0
        self._last_switch = now
        self._pending: Target | None = None
        self._share = 1.0
        self._down_since: float | None = None
        self._lock = threading.Lock()

    @property
    def frame_share(self) -> float:
        """Share of the frames to encode (1: all): the target over the encoder's rate."""
        with self._lock:
            return self._share

    def offer(self, target: Target, now: float) -> bool:
        """Consider ``target``; True if the encoder will switch to it."""
        if not self._worth_switching(target, now):
            share = target.bitrate_kbps / self.current.bitrate_kbps
            if share > 1 - self.policy.min_settled_change:
                share = 1.0  # a gap never worth a switch is not worth a stutter either
            with self._lock:
                self._share = share
            return False
        with self._lock:
            self._pending = target
            self._share = 1.0
        self._down_since = None
        self.current = target
        self._last_switch = now
        self.switches += 1
        return True

    def take(self) -> Target | None:
        """Encoder thread: the target to switch to before the next frame, if any."""
        with self._lock:
            target, self._pending = self._pending, None
        return target

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
    """Encoder thread: which frames to encode for a ``frame_share`` below 1.

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
