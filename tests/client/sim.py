"""Discrete-event simulation of the client's uplink for the probe and rate-controller tests.

One fake clock (seconds, the client's); the server's clock is the same plus
``SERVER_OFFSET_S``, so anything that compares the two clocks directly fails loudly. The
uplink is the bench's ``LinkModel`` behind a client-side socket buffer: the sender writes a
message into the buffer, chunks move into the bottleneck while its queue has room, and a
message reaches the server with its last chunk. The sender skips a frame when its buffer is
above the high-water mark (the client's latest-frame slot replaces frames while
``ws.send`` waits). The downlink (acks, Feedback) is never the bottleneck: it only adds the
one-way delay.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import math
import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from shelf_stream import protocol as p
from shelf_stream.bench.link import LinkConfig, LinkModel, LinkStats
from shelf_stream.client.adaptation import (
    Adaptation,
    AdaptationConfig,
    EncoderPlan,
    EncoderSwitch,
    FrameThinner,
)
from shelf_stream.client.controller import RateControlConfig, RateController, Target
from shelf_stream.client.ladder import Rung
from shelf_stream.client.probe import PROBE_OVERHEAD_BYTES, BandwidthProbe, ProbeConfig

SERVER_OFFSET_S = 12345.678
FEEDBACK_INTERVAL_S = 0.1
# websockets' write_limit (64 KB) plus TCP_NOTSENT_LOWAT (16 KB) in the client.
CLIENT_BUFFER_BYTES = 80 * 1024


class Clock:
    """Event queue with a fake clock: callbacks run in time order (FIFO among equals)."""

    def __init__(self) -> None:
        self.now = 0.0
        self._events: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()

    def at(self, when: float, callback: Callable[[], None]) -> None:
        heapq.heappush(self._events, (max(when, self.now), next(self._order), callback))

    def run_until(self, end: float) -> None:
        while self._events and self._events[0][0] <= end:
            when, _, callback = heapq.heappop(self._events)
            self.now = when
            callback()
        self.now = end


class Uplink:
    """Client socket buffer → bottleneck → server; ``on_delivered(msg_id, t)`` per message."""

    def __init__(
        self,
        clock: Clock,
        config: LinkConfig,
        on_delivered: Callable[[int, float], None],
        buffer_limit: float = math.inf,
        seed: int = 0,
    ) -> None:
        self.clock = clock
        self.model = LinkModel(config, random.Random(seed))  # jitter, reproducibly
        self.stats = LinkStats(0.0, config)
        self.buffer_limit = buffer_limit
        self._on_delivered = on_delivered
        self._backlog: deque[list[int]] = deque()  # [msg_id, bytes not yet in the link]
        self.buffered = 0
        self._pump_at: float | None = None

    @property
    def writable(self) -> bool:
        return self.buffered < self.buffer_limit

    def send(self, msg_id: int, size: int) -> None:
        self._backlog.append([msg_id, size])
        self.buffered += size
        self._pump()

    def set_config(self, config: LinkConfig) -> None:
        now = self.clock.now
        self.model.set_config(now, config)
        self.stats.rate_changed(now, config)
        self._pump()

    def _pump(self) -> None:
        now = self.clock.now
        self._pump_at = None
        config = self.model.config
        while self._backlog and (room := self.model.room(now)) > 0:
            entry = self._backlog[0]
            chunk = min(entry[1], room, config.chunk_bytes)
            slot = self.model.accept(now, chunk)
            entry[1] -= chunk
            self.buffered -= chunk
            self.clock.at(slot.delivery, self._deliver_chunk(chunk))
            if entry[1] == 0:
                self._backlog.popleft()
                self.clock.at(slot.delivery, self._deliver_message(entry[0]))
        if self._backlog:
            release = self.model.next_release()
            wake = release if release is not None else now + 0.001
            if self._pump_at is None or wake < self._pump_at:
                self._pump_at = wake
                self.clock.at(wake, self._pump)

    def _deliver_chunk(self, size: int) -> Callable[[], None]:
        return lambda: self.stats.record(self.clock.now, size)

    def _deliver_message(self, msg_id: int) -> Callable[[], None]:
        return lambda: self._on_delivered(msg_id, self.clock.now)


def server_us(t: float, offset_s: float = SERVER_OFFSET_S) -> int:
    """The server's clock at client time ``t``, in µs (only its differences mean anything)."""
    return round((t + offset_s) * 1e6)


# ------------------------------------------------------------------------------------ probe


@dataclass
class ProbeRun:
    probe: BandwidthProbe
    acks: int


def run_probe(
    link: LinkConfig,
    config: ProbeConfig | None = None,
    *,
    lose_ack: Callable[[int], bool] = lambda _id: False,
    start: float = 100.0,
) -> ProbeRun:
    """Run a BandwidthProbe through the simulated link until it is done."""
    clock = Clock()
    clock.now = start
    probe = BandwidthProbe(config or ProbeConfig(), start)
    sent: dict[int, tuple[int, int]] = {}  # probe_id → (send_us, size)
    acks = 0

    def on_delivered(probe_id: int, t: float) -> None:
        send_us, size = sent[probe_id]
        if lose_ack(probe_id):
            return
        ack = p.ProbeAck(probe_id, send_us, server_us(t), size)
        clock.at(t + uplink.model.config.one_way_delay_s, lambda: on_ack(ack))

    def on_ack(ack: p.ProbeAck) -> None:
        nonlocal acks
        acks += 1
        probe.on_ack(ack, clock.now)
        send_due()

    def on_timer() -> None:
        probe.handle_timer(clock.now)
        send_due()

    def send_due() -> None:
        for probe_id, padding in probe.next_probes(clock.now):
            size = PROBE_OVERHEAD_BYTES + padding
            sent[probe_id] = (round(clock.now * 1e6), size)
            uplink.send(probe_id, size)

    uplink = Uplink(clock, link, on_delivered)
    send_due()
    timer = probe.get_timer()
    assert timer is not None
    clock.at(timer, on_timer)
    clock.run_until(start + 10.0)
    assert probe.done
    return ProbeRun(probe, acks)


# ------------------------------------------------------------------------------- streaming


@dataclass
class FrameLog:
    seq: int
    send: float
    size: int
    keyframe: bool
    link_rate: float  # bytes/s at send time
    one_way_s: float
    delivery: float | None = None

    @property
    def queue_delay_ms(self) -> float:
        """Delay beyond an empty link: client buffer + bottleneck queue."""
        assert self.delivery is not None
        ideal = self.one_way_s + self.size / self.link_rate
        return max(0.0, (self.delivery - self.send - ideal) * 1000)


@dataclass
class StreamRun:
    adaptation: Adaptation
    uplink: Uplink
    frames: list[FrameLog] = field(default_factory=list)
    samples: list[tuple[float, Target]] = field(default_factory=list)  # every 100 ms
    published: list[tuple[float, Target]] = field(default_factory=list)  # encoder switches
    skipped: int = 0
    thinned: int = 0  # frames left out for a frame share below 1

    @property
    def controller(self) -> RateController:
        controller = self.adaptation.controller
        assert controller is not None
        return controller

    def target_at(self, t: float) -> Target:
        return max((s for s in self.samples if s[0] <= t), key=lambda s: s[0])[1]

    def targets(self, start: float, end: float) -> list[float]:
        return [tg.bitrate_kbps for t, tg in self.samples if start <= t < end]

    def queue_delays(self, start: float, end: float) -> list[float]:
        return [
            f.queue_delay_ms
            for f in self.frames
            if start <= f.send < end and f.delivery is not None
        ]

    def utilisation(self, start: float, end: float, mbit_per_s: float) -> float:
        """Bits delivered in [start, end) (whole 100 ms buckets) over what the link carries."""
        series = self.uplink.stats.throughput_series()
        delivered = [mbit for t, mbit in series if start - 1e-9 <= t < end - 1e-9]
        return sum(delivered) / len(delivered) / mbit_per_s

    def rung_changes(self) -> list[tuple[float, Target]]:
        changes, last = [], None
        for t, target in self.published:
            rung = (target.width, target.height, target.fps)
            if last is not None and rung != last:
                changes.append((t, target))
            last = rung
        return changes


@dataclass
class _Encoder:
    plan: EncoderPlan
    last_key: float = -math.inf


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_stream(
    schedule: Sequence[tuple[float, LinkConfig]],
    start: Target,
    duration_s: float,
    *,
    config: RateControlConfig | None = None,
    ladder: Sequence[Rung] | None = None,
    keyframe_interval_s: float = 2.0,
    keyframe_factor: float = 3.0,
    server_offset_s: float = SERVER_OFFSET_S,
    encode_ms: float = 5.0,
    encoder_lag_s: float = 0.0,
) -> StreamRun:
    """Stream for ``duration_s`` over a link that follows ``schedule`` [(t, link), ...].

    The client's own ``Adaptation`` decides, driven as the client drives it: every sent
    and encoded frame, every Feedback and its timer go in; its plan says what the crude
    encoder does. A frame is ``encoder_kbps`` / 8 / fps bytes (it hits its budget; a
    keyframe is ``keyframe_factor`` times that), encoded in ``encode_ms``; a keyframe comes
    every ``keyframe_interval_s`` and after each encoder switch (a re-open, as with
    libx265). Frames are thinned by the plan's share, as the encoder worker does.
    ``encoder_lag_s`` > 0 makes the encoder follow each new plan that much later, as
    Chromium's software H.264 encoder followed a lowered bitrate a second or more late.
    """
    clock = Clock()
    control = config or RateControlConfig()
    adaptation = Adaptation(
        AdaptationConfig(control=control), start=start, now=0.0, ladder=ladder or ()
    )
    adaptation.on_connected(0.0, rtt_ms=control.rtt_ms)
    uplink = Uplink(clock, schedule[0][1], lambda seq, t: on_delivered(seq, t), CLIENT_BUFFER_BYTES)
    run = StreamRun(adaptation, uplink)
    run.published.append((0.0, start))
    encoder = _Encoder(adaptation.plan)
    thinner = FrameThinner()
    arrivals: list[tuple[int, int]] = []
    seqs = itertools.count()

    def on_delivered(seq: int, t: float) -> None:
        run.frames[seq].delivery = t
        arrivals.append((seq, server_us(t, server_offset_s)))

    def switch(plan: EncoderPlan) -> None:
        encoder.plan = plan
        encoder.last_key = -math.inf  # a new encoder starts with a keyframe

    def take_switches() -> None:
        while (event := adaptation.next_event()) is not None:
            if isinstance(event, EncoderSwitch):
                if encoder_lag_s > 0:
                    clock.at(clock.now + encoder_lag_s, functools.partial(switch, event.plan))
                else:
                    switch(event.plan)
                run.published.append((clock.now, event.plan.target))

    def feedback() -> None:
        if arrivals:
            batch = tuple(arrivals)
            arrivals.clear()
            delay = uplink.model.config.one_way_delay_s
            clock.at(clock.now + delay, lambda: adaptation.on_feedback(batch, clock.now))
        clock.at(clock.now + FEEDBACK_INTERVAL_S, feedback)

    def timer() -> None:
        adaptation.handle_timer(clock.now)
        due = adaptation.get_timer()
        assert due is not None and due > clock.now
        clock.at(due, timer)

    def frame_tick() -> None:
        now = clock.now
        take_switches()
        plan = adaptation.plan
        if not thinner.admit(plan.frame_share):
            run.thinned += 1
        elif uplink.writable:
            send_frame(encoder.plan, now)
        else:
            run.skipped += 1
        clock.at(now + 1 / encoder.plan.target.fps, frame_tick)

    def send_frame(plan: EncoderPlan, now: float) -> None:
        fps = plan.target.encode_fps or plan.target.fps
        keyframe = now - encoder.last_key >= keyframe_interval_s - 1e-9
        size = round(plan.encoder_kbps * 1000 / 8 / fps)
        if keyframe:
            size = round(size * keyframe_factor)
            encoder.last_key = now
        seq = next(seqs)
        link = uplink.model.config
        run.frames.append(
            FrameLog(seq, now, size, keyframe, link.bytes_per_s, link.one_way_delay_s)
        )
        adaptation.on_encoded(size, encode_ms, now, encoder_kbps=plan.encoder_kbps, fps=fps)
        adaptation.on_sent(seq, size, now, keyframe=keyframe)
        uplink.send(seq, size)

    def sample() -> None:
        run.samples.append((clock.now, run.controller.target()))
        clock.at(clock.now + 0.1, sample)

    for at, link in schedule[1:]:
        clock.at(at, functools.partial(uplink.set_config, link))
    clock.at(0.0, frame_tick)
    clock.at(FEEDBACK_INTERVAL_S, feedback)
    clock.at(adaptation.get_timer() or 0.0, timer)
    clock.at(0.0, sample)
    clock.run_until(duration_s)
    return run
