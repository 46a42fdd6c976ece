"""Pre-stream bandwidth/RTT probe and the choice of the starting quality. Sans-I/O.

Before the first Video message the client sends Probe messages (see ``protocol``); the
server answers each with a ProbeAck carrying the echoed client send time and the arrival time
on its own clock. ``BandwidthProbe`` decides what to send and when it has seen enough:

1. one small probe: its echo gives the round-trip time;
2. a burst of ``burst_count`` probes back to back: the bottleneck spaces them out, so the
   server's arrival spread gives the throughput (packet-train dispersion, measured at the
   receiver, so only differences of server times are used and no clock sync is needed);
3. if that burst arrived too tightly to measure (a fast link), one bigger burst sized from the
   first estimate to last ``target_spread_ms``, within the byte and time budgets.

The I/O layer calls ``next_probes(now)`` after creating the probe and after every
``on_ack``/``handle_timer``, sends what it returns, and calls ``handle_timer`` at
``get_timer()``. ``choose_start`` turns the result into a starting bitrate and rung.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass

from shelf_stream import protocol as p
from shelf_stream.client.ladder import Rung, default_ladder

#: Bytes of a Probe record besides its padding (record header + probe_id + send_us).
PROBE_OVERHEAD_BYTES = p.HEADER.size + p.PROBE.size


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeConfig:
    """Budgets and burst shapes of the probe.

    The first burst (10 x 6 KB = 0.5 Mbit) takes 48 ms at 10 Mbit/s and 1.6 s at
    300 kbit/s: slow links end at the deadline with a partial but usable train. A first burst
    that spreads less than ``min_spread_ms`` is followed by one burst sized to spread over
    ``target_spread_ms`` at the first estimate.
    """

    burst_count: int = 10
    burst_padding_bytes: int = 6_000
    second_burst_count: int = 20
    min_spread_ms: float = 25.0
    target_spread_ms: float = 60.0
    max_total_bytes: int = 2_000_000
    max_duration_s: float = 1.5
    # A train is trusted from this many answered burst probes spread over at least this long
    # (below ~5 ms, timestamp granularity and TCP coalescing dominate).
    min_acks: int = 4
    min_reliable_spread_ms: float = 5.0

    def __post_init__(self) -> None:
        if self.burst_count < 2 or self.second_burst_count < 2:
            raise ValueError("a burst needs at least 2 probes")
        if self.min_acks < 2:
            raise ValueError("min_acks must be >= 2: a spread needs two arrivals")
        if not (self.max_duration_s > 0 and self.max_total_bytes > 0):
            raise ValueError("the probe budgets must be positive")


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What the probe measured. ``None`` where nothing usable arrived.

    ``reliable`` is False when the throughput comes from too few answers or too short a
    spread (lost acks, the deadline, a link faster than the budget can measure).
    ``beyond_kbps`` is set when enough answers came but the burst crossed too fast to time
    (loopback, a LAN): the link carries more than that, the most the probe can measure.
    """

    rtt_ms: float | None
    throughput_kbps: float | None
    bytes_sent: int
    duration_ms: float
    reliable: bool
    beyond_kbps: float | None = None


@dataclass(frozen=True, slots=True)
class StartChoice:
    """The starting target: bitrate and rung, with a human-readable reason for the log."""

    bitrate_kbps: float
    fps: float
    width: int
    height: int
    reason: str


class _Phase(enum.Enum):
    RTT = "rtt"
    BURST = "burst"
    DONE = "done"


@dataclass(slots=True)
class _Sent:
    burst: int  # 0: the RTT probe; 1, 2: bursts
    size: int  # bytes of the whole record


class BandwidthProbe:
    """The probe's state machine; every method takes the client's clock in seconds."""

    def __init__(self, config: ProbeConfig, now: float) -> None:
        self.config = config
        self._start = now
        self._deadline = now + config.max_duration_s
        self._phase = _Phase.RTT
        self._sent: dict[int, _Sent] = {}
        self._bytes_sent = 0
        self._next_id = 0
        self._bursts = 0
        self._outbox: list[tuple[int, int]] = [self._new_probe(0, 0)]
        self._rtt_s: float | None = None
        # probe_id → server arrival µs, for the probes of bursts.
        self._arrivals: dict[int, int] = {}
        self._end: float | None = None
        self._throughput_kbps: float | None = None
        self._reliable = False
        self._beyond_kbps: float | None = None

    @property
    def done(self) -> bool:
        return self._phase is _Phase.DONE

    def next_probes(self, now: float) -> list[tuple[int, int]]:
        """(probe_id, padding_bytes) of the probes to send now, in order.

        Stamp each Probe's ``send_us`` with the same clock as ``now`` (in µs).
        """
        out, self._outbox = self._outbox, []
        return out

    def on_ack(self, ack: p.ProbeAck, now: float) -> None:
        """A ProbeAck arrived at ``now``; unknown, duplicate and late acks are harmless."""
        sent = self._sent.get(ack.probe_id)
        if sent is None or self.done:
            return
        rtt = now - ack.send_us / 1e6
        if rtt >= 0 and (self._rtt_s is None or rtt < self._rtt_s):
            self._rtt_s = rtt  # the smallest echo has the least queueing in it
        if sent.burst > 0:
            self._arrivals.setdefault(ack.probe_id, ack.arrival_us)
        self._advance(now)

    def get_timer(self) -> float | None:
        """When ``handle_timer`` must be called (the deadline), or None once done."""
        return None if self.done else self._deadline

    def handle_timer(self, now: float) -> None:
        if not self.done and now >= self._deadline:
            self._finish(now)

    def result(self) -> ProbeResult:
        if not self.done:
            raise RuntimeError("the probe is still running")
        assert self._end is not None
        return ProbeResult(
            rtt_ms=None if self._rtt_s is None else self._rtt_s * 1000,
            throughput_kbps=self._throughput_kbps,
            bytes_sent=self._bytes_sent,
            duration_ms=(self._end - self._start) * 1000,
            reliable=self._reliable and self._rtt_s is not None,
            beyond_kbps=self._beyond_kbps,
        )

    # -- internals ---------------------------------------------------------------------------

    def _new_probe(self, burst: int, padding: int) -> tuple[int, int]:
        probe_id = self._next_id
        self._next_id += 1
        size = PROBE_OVERHEAD_BYTES + padding
        self._sent[probe_id] = _Sent(burst, size)
        self._bytes_sent += size
        return probe_id, padding

    def _send_burst(self, count: int, padding: int) -> None:
        self._bursts += 1
        self._phase = _Phase.BURST
        self._outbox.extend(self._new_probe(self._bursts, padding) for _ in range(count))

    def _waiting_for(self, burst: int) -> bool:
        if burst == 0:
            return self._rtt_s is None
        return any(s.burst == burst and i not in self._arrivals for i, s in self._sent.items())

    def _advance(self, now: float) -> None:
        if self._phase is _Phase.RTT and not self._waiting_for(0):
            cfg = self.config
            self._send_burst(cfg.burst_count, cfg.burst_padding_bytes)
        elif self._phase is _Phase.BURST and not self._waiting_for(self._bursts):
            self._measure(self._bursts)
            if self._bursts == 2 or not self._second_burst(now):
                self._finish(now)

    def _second_burst(self, now: float) -> bool:
        """Send a bigger burst if the first spread too little to trust and budgets allow."""
        cfg = self.config
        spread_ms = self._spread_ms(1)
        if self._throughput_kbps is None or spread_ms >= cfg.min_spread_ms:
            return False
        bytes_per_s = self._throughput_kbps * 1000 / 8
        wanted = bytes_per_s * cfg.target_spread_ms / 1000
        budget = cfg.max_total_bytes - self._bytes_sent
        total = min(wanted, budget)
        # Expected time: the burst at the estimated rate, plus an RTT for the last echo.
        expected_s = total / bytes_per_s + 1.5 * (self._rtt_s or 0.0)
        if total <= self._burst_bytes(1) or now + expected_s > self._deadline:
            return False
        count = cfg.second_burst_count
        self._send_burst(count, max(0, int(total / count) - PROBE_OVERHEAD_BYTES))
        return True

    def _burst_bytes(self, burst: int) -> int:
        return sum(s.size for s in self._sent.values() if s.burst == burst)

    def _spread_ms(self, burst: int) -> float:
        times = [t for i, t in self._arrivals.items() if self._sent[i].burst == burst]
        return (max(times) - min(times)) / 1000 if len(times) >= 2 else 0.0

    def _measure(self, burst: int) -> None:
        """Throughput of one burst by receiver-side dispersion.

        The bytes that reached the server between its first and last answered arrival are
        those of every probe sent after the first one up to the last one: with TCP's ordered
        delivery a probe whose ack was lost still crossed the link in between, so sizes come
        from what was sent, not from the acks.
        """
        answered = sorted((t, i) for i, t in self._arrivals.items() if self._sent[i].burst == burst)
        if len(answered) < 2:
            return
        (first_us, first_id), (last_us, last_id) = answered[0], answered[-1]
        span_s = (last_us - first_us) / 1e6
        if span_s <= 0:
            return
        low, high = sorted((first_id, last_id))
        crossed = sum(self._sent[i].size for i in range(low + 1, high + 1))
        self._throughput_kbps = crossed * 8 / span_s / 1000
        cfg = self.config
        enough = len(answered) >= cfg.min_acks
        self._reliable = enough and span_s * 1000 >= cfg.min_reliable_spread_ms
        too_fast = enough and not self._reliable
        self._beyond_kbps = crossed * 8 / cfg.min_reliable_spread_ms if too_fast else None

    def _finish(self, now: float) -> None:
        if self._phase is _Phase.BURST and self._throughput_kbps is None:
            self._measure(self._bursts)  # the deadline: use what arrived
        elif self._phase is _Phase.BURST and self._bursts == 2 and self._waiting_for(2):
            # A partial second burst: keep the first burst's complete measurement unless the
            # partial one is itself trustworthy (it is the longer train).
            first = (self._throughput_kbps, self._reliable)
            self._measure(2)
            if not self._reliable:
                self._throughput_kbps, self._reliable = first
        self._phase = _Phase.DONE
        self._outbox = []
        self._end = now


# ------------------------------------------------------------------------------ start choice


def choose_start(
    result: ProbeResult,
    *,
    ladder: Sequence[Rung] | None = None,
    max_bitrate_kbps: float,
    fps: float,
    width: int,
    height: int,
    utilisation: float = 0.7,
    serialisation_budget: float = 0.5,
) -> StartChoice:
    """The starting bitrate and rung for a stream of ``width``x``height``@``fps``.

    The bitrate stays below ``utilisation`` x throughput (room for keyframes and cross
    traffic) and so that one frame's serialisation, (bitrate / fps) / throughput, stays within
    ``serialisation_budget`` of the frame interval 1 / fps (latency: a frame should not
    occupy the link for most of the interval). The fps cancels: the second rule is
    bitrate <= serialisation_budget x throughput, so at the defaults it is the binding one.

    The first rung of the ladder (default: ``default_ladder(width, height, fps)``) whose
    floor fits under that cap is chosen; a ``max_bitrate_kbps`` below a floor lowers the
    floor rather than the rung (the user's cap is not a bandwidth measurement). An unreliable
    throughput is trusted only half as much; without any, the stream starts at the bottom
    rung (so few answers within the deadline means a very slow or lossy link) and the rate
    controller climbs from there.
    """
    rungs = tuple(ladder) if ladder is not None else default_ladder(width, height, fps)
    if not rungs:
        raise ValueError("the ladder is empty")
    if result.throughput_kbps is None:
        bottom = rungs[-1]
        bitrate = min(bottom.min_kbps, max_bitrate_kbps)
        return _choice(bottom, bitrate, "the probe measured no throughput: bottom rung")
    share = min(utilisation, serialisation_budget)
    trust = 1.0 if result.reliable else 0.5
    cap = share * trust * result.throughput_kbps
    measured = f"probe {result.throughput_kbps:.0f} kbit/s" + (
        "" if result.reliable else " (unreliable, trusted half)"
    )
    for rung in rungs:
        floor = min(rung.min_kbps, max_bitrate_kbps)
        if cap >= floor:
            bitrate = min(cap, max_bitrate_kbps, rung.max_kbps)
            return _choice(rung, bitrate, f"{measured}: {share:g} of it fits {rung}")
    bottom = rungs[-1]
    return _choice(
        bottom, max(cap, 1.0), f"{measured}: below the lowest floor ({bottom.min_kbps:g} kbit/s)"
    )


def _choice(rung: Rung, bitrate_kbps: float, reason: str) -> StartChoice:
    bitrate = math.floor(bitrate_kbps)
    return StartChoice(float(bitrate), rung.fps, rung.width, rung.height, reason)
