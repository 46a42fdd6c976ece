"""Network link emulator for ``shelf-bench e2e``: a userspace TCP relay with a modelled link.

A real server and client on loopback see a perfect link (microseconds of RTT, gigabytes per
second), so the bench puts this relay between them::

    client ──► 127.0.0.1:relay.port ──[uplink model]──► upstream (the server)
           ◄──                      ◄─[downlink model]──

Each direction is one bottleneck link shared by every connection through the relay:

* **serialisation**: bytes leave at most at ``mbit_per_s``; a chunk of n bytes occupies the
  link for n·8/R seconds after the previous one finished, less a small burst allowance
  (``burst_bytes``, a token bucket) so that a lone small message is not held back;
* **delay**: every chunk then takes ``rtt_ms / 2`` to reach the far end, plus optional
  ``jitter_ms`` (uniform 0..jitter per chunk) that never reorders bytes;
* **bottleneck queue**: at most ``queue_bytes`` wait for the link (a router buffer). When it
  is full the relay stops reading from the sender, so the sender's TCP sees backpressure.
  Nothing is ever dropped: this is TCP, and loss would only show up as retransmission delay.

Why a relay and not Linux netem: netem needs root, a network namespace and the ``sch_netem``
kernel module, which containers and CI machines usually lack (see ``netem_available``).

The timing is a sans-I/O core (``LinkModel``: chunk sizes and ``now`` in, departure and
delivery times out; ``LinkStats``: counters), tested with a fake clock. The asyncio layer
(``LinkRelay``) only moves bytes and schedules callbacks at the model's times; it never blocks
the event loop and never reads more than it is allowed to hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import shutil
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, cast

from shelf_stream.errors import ConfigError

log = logging.getLogger(__name__)

MTU_BYTES = 1500
# Reads are split into chunks of at most this size so that serialisation is smooth: a chunk is
# delivered whole, so it should take only a few milliseconds on the emulated link.
MAX_CHUNK_BYTES = 16 * 1024
CHUNK_SERIALISATION_S = 0.005
DEFAULT_QUEUE_BYTES = 256 * 1024
DEFAULT_BURST_BYTES = 4 * 1024
# Bytes past the bottleneck but not yet delivered are "on the wire"; a healthy receiver keeps
# them near the bandwidth-delay product. This floor only matters when the receiver stalls.
MIN_IN_FLIGHT_BYTES = 256 * 1024
DEFAULT_BUCKET_S = 0.1


class LinkSpecError(ConfigError, ValueError):
    """A link description (config, ``35:10`` string or schedule) is invalid."""


# ---------------------------------------------------------------------------------------------
# Configuration and parsing
# ---------------------------------------------------------------------------------------------


def _check_number(name: str, value: float, *, positive: bool = False) -> None:
    # bool is an int; "True Mbit/s" is always a mistake.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise LinkSpecError(f"{name} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise LinkSpecError(f"{name} must be > 0, got {value!r}")
    if value < 0:
        raise LinkSpecError(f"{name} must be >= 0, got {value!r}")


@dataclass(frozen=True)
class LinkConfig:
    """One emulated link; both directions get the same figures.

    ``rtt_ms`` is the round trip: each direction adds ``rtt_ms / 2``. ``mbit_per_s`` is the
    bottleneck rate of each direction (1 Mbit = 10⁶ bit). ``jitter_ms`` is the most extra
    one-way delay a chunk can get. ``queue_bytes`` is the bottleneck buffer; ``burst_bytes``
    how much may leave at once after the link was idle.
    """

    rtt_ms: float
    mbit_per_s: float
    jitter_ms: float = 0.0
    queue_bytes: int = DEFAULT_QUEUE_BYTES
    burst_bytes: int = DEFAULT_BURST_BYTES

    def __post_init__(self) -> None:
        _check_number("rtt_ms", self.rtt_ms)
        _check_number("mbit_per_s", self.mbit_per_s, positive=True)
        _check_number("jitter_ms", self.jitter_ms)
        for name in ("queue_bytes", "burst_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise LinkSpecError(f"{name} must be an integer, got {value!r}")
        if self.queue_bytes < 1:
            raise LinkSpecError(f"queue_bytes must be >= 1, got {self.queue_bytes}")
        if self.burst_bytes < 0:
            raise LinkSpecError(f"burst_bytes must be >= 0, got {self.burst_bytes}")

    @property
    def one_way_delay_s(self) -> float:
        return self.rtt_ms / 2000.0

    @property
    def jitter_s(self) -> float:
        return self.jitter_ms / 1000.0

    @property
    def bytes_per_s(self) -> float:
        return self.mbit_per_s * 1e6 / 8.0

    @property
    def chunk_bytes(self) -> int:
        """Largest chunk the relay hands to the model: ~5 ms of link time, 1 MTU..16 KB."""
        return int(min(MAX_CHUNK_BYTES, max(MTU_BYTES, self.bytes_per_s * CHUNK_SERIALISATION_S)))

    @property
    def hold_limit_bytes(self) -> int:
        """Most bytes one connection's direction may hold: the queue plus what is in flight."""
        in_flight = self.bytes_per_s * (self.one_way_delay_s + self.jitter_s) + self.burst_bytes
        return self.queue_bytes + max(MIN_IN_FLIGHT_BYTES, 2 * math.ceil(in_flight))

    def __str__(self) -> str:
        text = f"{self.rtt_ms:g} ms RTT, {self.mbit_per_s:g} Mbit/s"
        return text + (f", jitter {self.jitter_ms:g} ms" if self.jitter_ms else "")


LINK_FORMAT = "RTT_MS:MBIT_PER_S[:JITTER_MS] (e.g. '35:10' or '35:10:5')"
SCHEDULE_FORMAT = "T_S:RTT_MS:MBIT_PER_S[:JITTER_MS],... (e.g. '0:35:10,10:35:2,20:35:10')"


def _parse_fields(fields: list[str]) -> list[float]:
    numbers = []
    for field in fields:
        try:
            numbers.append(float(field))
        except ValueError:
            raise LinkSpecError(f"{field.strip()!r} is not a number") from None
    return numbers


def parse_link(text: str) -> LinkConfig:
    """``"35:10"`` → 35 ms RTT at 10 Mbit/s; ``"35:10:5"`` adds 5 ms jitter."""
    fields = text.split(":")
    if len(fields) not in (2, 3):
        raise LinkSpecError(f"bad link {text!r}: expected {LINK_FORMAT}")
    try:
        rtt_ms, mbit_per_s, *jitter = _parse_fields(fields)
        return LinkConfig(rtt_ms, mbit_per_s, jitter[0] if jitter else 0.0)
    except LinkSpecError as exc:
        raise LinkSpecError(f"bad link {text!r}: {exc}; expected {LINK_FORMAT}") from None


def parse_schedule(text: str) -> list[tuple[float, LinkConfig]]:
    """``"0:35:10,10:35:2"`` → [(0.0, 35 ms/10 Mbit/s), (10.0, 35 ms/2 Mbit/s)].

    Times are seconds from the start of the run and must increase strictly.
    """
    if not text.strip():
        raise LinkSpecError(f"empty link schedule: expected {SCHEDULE_FORMAT}")
    schedule: list[tuple[float, LinkConfig]] = []
    for number, item in enumerate(text.split(","), start=1):
        where = f"link schedule item {number} {item.strip()!r}"
        at_s, _, link_text = item.partition(":")
        if not link_text:
            raise LinkSpecError(f"{where}: expected {SCHEDULE_FORMAT}")
        try:
            (at,) = _parse_fields([at_s])
            _check_number("the time", at)
            link = parse_link(link_text)
        except LinkSpecError as exc:
            raise LinkSpecError(f"{where}: {exc}") from None
        if schedule and at <= schedule[-1][0]:
            raise LinkSpecError(
                f"{where}: time {at:g} s is not after the previous item's {schedule[-1][0]:g} s"
            )
        schedule.append((at, link))
    return schedule


# ---------------------------------------------------------------------------------------------
# Sans-I/O core
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Slot:
    """When an accepted chunk leaves the bottleneck (its last byte) and reaches the far end."""

    departure: float
    delivery: float


class LinkModel:
    """Timing of one link direction: chunk sizes and ``now`` (seconds) in, times out.

    The bottleneck is a virtual-finish-time token bucket: ``_finish`` is when the link would
    be idle if it sent everything accepted so far at the configured rate; a chunk may leave
    ``burst_bytes`` worth of link time earlier than that. Departures and deliveries are kept
    in acceptance order, so neither jitter nor a rate/delay change can reorder bytes.
    """

    def __init__(self, config: LinkConfig, rng: random.Random | None = None) -> None:
        self._config = config
        self._rng = rng or random.Random()
        self._finish = -math.inf
        self._last_departure = -math.inf
        self._last_delivery = -math.inf
        # (departure, size) of chunks still waiting for the bottleneck, oldest first.
        self._waiting: deque[tuple[float, int]] = deque()
        self._queued = 0

    @property
    def config(self) -> LinkConfig:
        return self._config

    def set_config(self, now: float, config: LinkConfig) -> None:
        """Use ``config`` for chunks accepted from ``now`` on; accepted ones keep their times."""
        self._release(now)
        self._config = config

    def queued_bytes(self, now: float) -> int:
        """Bytes accepted that have not yet fully left the bottleneck at ``now``."""
        self._release(now)
        return self._queued

    def room(self, now: float) -> int:
        """How many more bytes the bottleneck queue takes now; 0 means stop reading."""
        return max(0, self._config.queue_bytes - self.queued_bytes(now))

    def next_release(self) -> float | None:
        """When the oldest queued chunk leaves (room grows then); None if nothing is queued."""
        return self._waiting[0][0] if self._waiting else None

    def accept(self, now: float, size: int) -> Slot:
        """Queue a chunk of ``size`` bytes that arrived at ``now``; the caller respects ``room``."""
        if size <= 0:
            raise ValueError(f"chunk size must be > 0, got {size}")
        config = self._config
        self._release(now)
        self._finish = max(self._finish, now) + size / config.bytes_per_s
        burst_s = config.burst_bytes / config.bytes_per_s
        departure = max(now, self._finish - burst_s, self._last_departure)
        jitter = self._rng.uniform(0.0, config.jitter_s) if config.jitter_s > 0 else 0.0
        delivery = max(departure + config.one_way_delay_s + jitter, self._last_delivery)
        self._last_departure, self._last_delivery = departure, delivery
        if departure > now:
            self._waiting.append((departure, size))
            self._queued += size
        return Slot(departure, delivery)

    def _release(self, now: float) -> None:
        while self._waiting and self._waiting[0][0] <= now:
            self._queued -= self._waiting.popleft()[1]


class LinkStats:
    """Delivered-bytes counters of one direction, and the link rate they are measured against.

    Times are absolute on the caller's clock; reported times are seconds since ``start``.
    The series holds one integer per bucket (10 a second by default), so it grows with the
    length of the run, not with traffic.
    """

    def __init__(
        self, start: float, config: LinkConfig, bucket_s: float = DEFAULT_BUCKET_S
    ) -> None:
        if not bucket_s > 0:
            raise ValueError(f"bucket_s must be > 0, got {bucket_s}")
        self.start = start
        self.bucket_s = bucket_s
        self.bytes_delivered = 0
        self._buckets: list[int] = []
        self._rates: list[tuple[float, float]] = [(0.0, config.bytes_per_s)]

    def record(self, now: float, size: int) -> None:
        """``size`` bytes reached the far end at ``now``."""
        self.bytes_delivered += size
        index = max(0, int((now - self.start) / self.bucket_s))
        if index >= len(self._buckets):
            self._buckets.extend([0] * (index + 1 - len(self._buckets)))
        self._buckets[index] += size

    def rate_changed(self, now: float, config: LinkConfig) -> None:
        self._rates.append((max(0.0, now - self.start), config.bytes_per_s))

    def throughput_series(self) -> list[tuple[float, float]]:
        """(bucket start in s since start, Mbit/s delivered in that bucket), for plotting."""
        scale = 8 / (self.bucket_s * 1e6)
        return [(i * self.bucket_s, n * scale) for i, n in enumerate(self._buckets)]

    def utilisation(self, now: float, since_s: float = 0.0) -> float:
        """Delivered bits / link capacity from ``since_s`` (rounded down to a bucket) to ``now``.

        Deliveries lag departures by the one-way delay and the burst allowance lets a little
        more through, so short windows can read slightly off (even above 1).
        """
        first = max(0, int(since_s / self.bucket_s))
        begin, end = first * self.bucket_s, now - self.start
        capacity = self._capacity_bytes(begin, end)
        return sum(self._buckets[first:]) / capacity if capacity > 0 else 0.0

    def _capacity_bytes(self, begin: float, end: float) -> float:
        total = 0.0
        for i, (at, rate) in enumerate(self._rates):
            until = self._rates[i + 1][0] if i + 1 < len(self._rates) else math.inf
            total += rate * max(0.0, min(end, until) - max(begin, at))
        return total


# ---------------------------------------------------------------------------------------------
# asyncio relay
# ---------------------------------------------------------------------------------------------


class LinkDirection:
    """One direction of the relay (uplink: client → upstream, downlink: back).

    Shared by every connection through the relay, like a real bottleneck: one model, one
    queue, one set of counters. Connections whose reading is paused because the queue is
    full wait here and are woken when the oldest queued chunk has left.
    """

    def __init__(
        self, name: str, config: LinkConfig, loop: asyncio.AbstractEventLoop, rng: random.Random
    ) -> None:
        self.name = name
        self._loop = loop
        self.model = LinkModel(config, rng)
        self.stats = LinkStats(loop.time(), config)
        self._waiting: set[_Pump] = set()
        self._wake: asyncio.Handle | None = None

    @property
    def bytes_delivered(self) -> int:
        return self.stats.bytes_delivered

    @property
    def queued_bytes(self) -> int:
        return self.model.queued_bytes(self._loop.time())

    def utilisation(self, since_s: float = 0.0) -> float:
        """Delivered bits over link capacity since ``since_s`` s after the relay started."""
        return self.stats.utilisation(self._loop.time(), since_s)

    def throughput_series(self) -> list[tuple[float, float]]:
        return self.stats.throughput_series()

    def set_config(self, config: LinkConfig) -> None:
        now = self._loop.time()
        self.model.set_config(now, config)
        self.stats.rate_changed(now, config)
        self._wake_waiting()  # a bigger queue may have room right away

    def wait_for_room(self, pump: _Pump) -> None:
        """``pump`` found the queue full: resume it once the oldest queued chunk has left."""
        self._waiting.add(pump)
        if self._wake is None:
            at = self.model.next_release()
            self._wake = (
                self._loop.call_soon(self._wake_waiting)
                if at is None
                else self._loop.call_at(at, self._wake_waiting)
            )

    def forget(self, pump: _Pump) -> None:
        self._waiting.discard(pump)

    def _wake_waiting(self) -> None:
        if self._wake is not None:
            self._wake.cancel()
            self._wake = None
        waiting, self._waiting = self._waiting, set()
        for pump in waiting:
            pump.maybe_resume()  # re-registers itself if there is still no room


class _Side(asyncio.BufferedProtocol):
    """One socket of a relayed connection (the client's or the upstream's).

    A BufferedProtocol so that the relay decides how many bytes each recv may take: never
    more than the bottleneck queue has room for, so no hidden buffer grows in userspace.
    """

    def __init__(self, connection: _Connection) -> None:
        self.connection = connection
        self.transport: asyncio.Transport | None = None
        self.reader: _Pump | None = None  # carries bytes read from this socket
        self.writer: _Pump | None = None  # writes bytes into this socket

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.pause_reading()  # until both sockets exist; then the pumps decide
        self.connection.side_made(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        assert self.reader is not None, "reading is only resumed once the pumps exist"
        return self.reader.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        assert self.reader is not None
        self.reader.data_received(nbytes)

    def eof_received(self) -> bool:
        if self.reader is not None:
            self.reader.eof_received()
        return True  # keep the socket open: the other direction may still have bytes for it

    def pause_writing(self) -> None:
        if self.writer is not None:
            self.writer.pause_writing()

    def resume_writing(self) -> None:
        if self.writer is not None:
            self.writer.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.connection.side_lost(self, exc)


class _Pump:
    """Bytes of one connection in one direction: src socket → link model → dst socket."""

    def __init__(
        self,
        direction: LinkDirection,
        src: asyncio.Transport,
        dst: asyncio.Transport,
        loop: asyncio.AbstractEventLoop,
        on_done: Callable[[], None],
    ) -> None:
        self._direction = direction
        self._src, self._dst = src, dst
        self._loop = loop
        self._on_done = on_done
        self._buffer = bytearray(MAX_CHUNK_BYTES)
        self._pending: deque[tuple[float, bytes]] = deque()  # (delivery time, chunk)
        self._held = 0
        self._timer: asyncio.TimerHandle | None = None
        self._write_paused = False
        self._eof = False
        self._done = False
        self._stopped = False

    @property
    def held_bytes(self) -> int:
        return self._held

    def _read_limit(self, now: float) -> int:
        config = self._direction.model.config
        room = self._direction.model.room(now)
        return min(room, config.chunk_bytes, config.hold_limit_bytes - self._held)

    # -- reading side ----------------------------------------------------------------------

    def get_buffer(self) -> memoryview:
        # Never empty (asyncio forbids it): if another connection just filled the shared
        # queue, take one byte and pause right after.
        size = max(1, self._read_limit(self._loop.time()))
        return memoryview(self._buffer)[:size]

    def data_received(self, nbytes: int) -> None:
        now = self._loop.time()
        slot = self._direction.model.accept(now, nbytes)
        self._pending.append((slot.delivery, bytes(self._buffer[:nbytes])))
        self._held += nbytes
        self._arm()
        if self._read_limit(now) <= 0:
            self._pause_reading(now)

    def eof_received(self) -> None:
        self._eof = True
        self._direction.forget(self)
        self._finish_if_drained()

    def maybe_resume(self) -> None:
        if self._stopped or self._eof:
            return  # after EOF asyncio has dropped the reader; resuming would re-read EOF
        now = self._loop.time()
        if self._read_limit(now) > 0:
            self._src.resume_reading()
        else:
            self._pause_reading(now)

    def _pause_reading(self, now: float) -> None:
        self._src.pause_reading()
        # A full queue resumes by time; a full hold (slow receiver) resumes on delivery.
        if self._direction.model.room(now) <= 0:
            self._direction.wait_for_room(self)

    # -- writing side ----------------------------------------------------------------------

    def pause_writing(self) -> None:
        self._write_paused = True
        self._cancel_timer()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._deliver()

    def _arm(self) -> None:
        if self._pending and self._timer is None and not self._write_paused and not self._stopped:
            self._timer = self._loop.call_at(self._pending[0][0], self._deliver)

    def _deliver(self) -> None:
        self._timer = None
        if self._stopped or self._dst.is_closing():
            return  # the connection is being torn down; connection_lost stops this pump
        now = self._loop.time()
        while self._pending and not self._write_paused and self._pending[0][0] <= now:
            _, chunk = self._pending.popleft()
            self._held -= len(chunk)
            self._dst.write(chunk)  # may call pause_writing() synchronously
            self._direction.stats.record(now, len(chunk))
        self._arm()
        self.maybe_resume()
        self._finish_if_drained()

    def _finish_if_drained(self) -> None:
        if self._eof and not self._pending and not self._done and not self._stopped:
            self._done = True
            if self._dst.can_write_eof() and not self._dst.is_closing():
                self._dst.write_eof()  # half-close, like the sender did
            self._on_done()

    def stop(self) -> None:
        self._stopped = True
        self._cancel_timer()
        self._direction.forget(self)
        self._pending.clear()
        self._held = 0

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class _Connection:
    """A client connection and its upstream connection, wired through two pumps."""

    def __init__(self, relay: LinkRelay) -> None:
        self._relay = relay
        self._loop = asyncio.get_running_loop()
        self.client = _Side(self)
        self.upstream = _Side(self)
        self.pumps: list[_Pump] = []
        self._connect_task: asyncio.Task[None] | None = None
        self._finished = 0
        self._closed = False

    def side_made(self, side: _Side) -> None:
        if side is self.client:
            self._relay._connections.add(self)
            self._connect_task = self._loop.create_task(self._connect())

    async def _connect(self) -> None:
        try:
            await self._loop.create_connection(
                lambda: self.upstream, self._relay.upstream_host, self._relay.upstream_port
            )
        except OSError as exc:
            log.warning("link relay: cannot reach upstream: %s", exc)
            self.close()
            return
        if self._closed:  # the client left while we were connecting
            self.close()
            return
        self._wire()

    def _wire(self) -> None:
        client, upstream = self.client.transport, self.upstream.transport
        assert client is not None and upstream is not None
        up = _Pump(self._relay.uplink, client, upstream, self._loop, self._direction_done)
        down = _Pump(self._relay.downlink, upstream, client, self._loop, self._direction_done)
        self.client.reader = self.upstream.writer = up
        self.upstream.reader = self.client.writer = down
        self.pumps = [up, down]
        up.maybe_resume()
        down.maybe_resume()

    def _direction_done(self) -> None:
        # Both peers have sent EOF and everything has been delivered: close (flushes writes).
        self._finished += 1
        if self._finished == 2:
            self.close()

    def side_lost(self, side: _Side, exc: Exception | None) -> None:
        # A socket error (reset, broken pipe) on one side: the other side must not linger.
        if exc is not None:
            log.debug("link relay: connection lost: %r", exc)
        self.close(abort=exc is not None)

    def close(self, *, abort: bool = False) -> None:
        self._closed = True
        for pump in self.pumps:
            pump.stop()
        task = self._connect_task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
        for side in (self.client, self.upstream):
            if side.transport is not None and not side.transport.is_closing():
                if abort:
                    side.transport.abort()
                else:
                    side.transport.close()
        self._relay._connections.discard(self)

    @property
    def held_bytes(self) -> int:
        return sum(pump.held_bytes for pump in self.pumps)


class LinkRelay:
    """A TCP relay on ``host:port`` (0 = any free port) that emulates ``link`` to upstream.

    ``async with LinkRelay("127.0.0.1", server_port, LinkConfig(35, 10)) as relay:`` then
    connect the client to ``relay.port``. ``set_link`` changes the link for new bytes.
    ``seed`` makes jitter reproducible.
    """

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        link: LinkConfig,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        seed: int | None = None,
    ) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self._link = link
        self._host, self._port = host, port
        self._rng = random.Random(seed)
        self._server: asyncio.Server | None = None
        self._uplink: LinkDirection | None = None
        self._downlink: LinkDirection | None = None
        self._connections: set[_Connection] = set()

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("the link relay is already started")
        loop = asyncio.get_running_loop()
        self._uplink = LinkDirection("uplink", self._link, loop, random.Random(self._rng.random()))
        self._downlink = LinkDirection(
            "downlink", self._link, loop, random.Random(self._rng.random())
        )
        self._server = await loop.create_server(
            lambda: _Connection(self).client, self._host, self._port
        )

    async def aclose(self) -> None:
        """Stop listening and close every relayed connection (both of its sockets)."""
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            connection.close()
        if self._server is not None:
            await self._server.wait_closed()
        await asyncio.sleep(0)  # let the transports run connection_lost

    async def __aenter__(self) -> LinkRelay:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the link relay is not started")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def link(self) -> LinkConfig:
        return self._link

    @property
    def uplink(self) -> LinkDirection:
        """Client → upstream."""
        if self._uplink is None:
            raise RuntimeError("the link relay is not started")
        return self._uplink

    @property
    def downlink(self) -> LinkDirection:
        """Upstream → client."""
        if self._downlink is None:
            raise RuntimeError("the link relay is not started")
        return self._downlink

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    @property
    def held_bytes(self) -> int:
        """Bytes the relay holds in userspace right now, all connections and directions."""
        return sum(connection.held_bytes for connection in self._connections)

    def set_link(self, link: LinkConfig) -> None:
        """Use ``link`` in both directions for bytes read from now on."""
        self._link = link
        if self._uplink is not None and self._downlink is not None:
            self._uplink.set_config(link)
            self._downlink.set_config(link)
        log.info("link: %s", link)


class SupportsSetLink(Protocol):
    def set_link(self, link: LinkConfig) -> None: ...


async def run_schedule(
    relay: SupportsSetLink, schedule: Sequence[tuple[float, LinkConfig]]
) -> None:
    """Apply each (t_s, link) of ``schedule`` at t_s seconds after this coroutine starts."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    for at_s, link in schedule:
        wait = start + at_s - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        relay.set_link(link)


# ---------------------------------------------------------------------------------------------
# Optional: Linux netem
# ---------------------------------------------------------------------------------------------


def netem_available(timeout_s: float = 5.0) -> bool:
    """Whether this process could emulate links with netem in a network namespace.

    Needs Linux, root, ``ip``/``tc`` and the ``sch_netem`` module. It creates and deletes a
    scratch namespace, so it blocks for a moment: call it before starting an event loop (or
    in a thread). The relay stays the default either way.
    """
    if (
        sys.platform != "linux"
        or os.geteuid() != 0
        or not (shutil.which("ip") and shutil.which("tc"))
    ):
        return False
    namespace = f"shelf-probe-{os.getpid()}"

    def run(*command: str) -> bool:
        try:
            done = subprocess.run(command, capture_output=True, timeout=timeout_s, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return done.returncode == 0

    if not run("ip", "netns", "add", namespace):
        return False
    try:
        return run("ip", "netns", "exec", namespace, "ip", "link", "set", "lo", "up") and run(
            "ip", "netns", "exec", namespace, "tc", "qdisc", "add", "dev", "lo", "root",
            "netem", "delay", "1ms",
        )  # fmt: skip
    finally:
        with contextlib.suppress(Exception):
            run("ip", "netns", "del", namespace)
