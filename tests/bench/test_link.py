"""The link emulator: its timing core with a fake clock, and the relay on real loopback sockets.

The socket tests measure delay and rate against the configured link. The emulator only ever
adds time, so lower bounds are exact; upper bounds allow for a loaded machine.
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shelf_stream.bench.link import (
    LinkConfig,
    LinkModel,
    LinkRelay,
    LinkSpecError,
    LinkStats,
    parse_link,
    parse_schedule,
    run_schedule,
)
from shelf_stream.errors import ConfigError

# 8 Mbit/s is 10⁶ bytes/s: 1000 bytes take exactly 1 ms, which keeps the literals readable.
MS = 1e-3


def fast_link(**changes: Any) -> LinkConfig:
    options: dict[str, Any] = {"rtt_ms": 0.0, "mbit_per_s": 8.0, "burst_bytes": 0}
    return LinkConfig(**(options | changes))


def run(coro: Coroutine[Any, Any, Any], timeout_s: float = 15.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout_s))


# --- sans-I/O model ------------------------------------------------------------------------


def test_back_to_back_chunks_are_serialised_at_the_link_rate() -> None:
    model = LinkModel(fast_link())
    departures = [model.accept(0.0, 1000).departure for _ in range(3)]
    assert departures == pytest.approx([1 * MS, 2 * MS, 3 * MS])
    # A chunk after an idle gap starts when it arrives, not at the end of the old backlog.
    assert model.accept(1.0, 500).departure == pytest.approx(1.0 + 0.5 * MS)
    # One arriving while the link is busy waits for the previous chunk to finish.
    assert model.accept(1.0002, 1000).departure == pytest.approx(1.0 + 1.5 * MS)


def test_delivery_adds_half_the_rtt() -> None:
    model = LinkModel(fast_link(rtt_ms=60.0))
    slot = model.accept(10.0, 2000)
    assert slot.departure == pytest.approx(10.0 + 2 * MS)
    assert slot.delivery == pytest.approx(10.0 + 2 * MS + 30 * MS)


def test_burst_allowance_lets_a_few_kb_through_at_once_then_holds_the_rate() -> None:
    model = LinkModel(fast_link(burst_bytes=4000))
    departures = [model.accept(0.0, 1000).departure for _ in range(6)]
    assert departures == pytest.approx([0, 0, 0, 0, 1 * MS, 2 * MS])


def test_queue_full_is_signalled_and_frees_up_as_chunks_leave() -> None:
    model = LinkModel(fast_link(queue_bytes=3000))
    assert model.room(0.0) == 3000
    for _ in range(3):
        model.accept(0.0, 1000)
    assert model.room(0.0) == 0
    assert model.queued_bytes(0.0) == 3000
    assert model.next_release() == pytest.approx(1 * MS)
    assert model.room(1 * MS) == 1000
    assert model.room(3 * MS) == 3000
    assert model.next_release() is None


def test_rate_change_applies_to_new_bytes_only() -> None:
    model = LinkModel(fast_link())
    first = model.accept(0.0, 1000)
    model.set_config(0.0, fast_link(mbit_per_s=4.0))  # 1000 bytes now take 2 ms
    second = model.accept(0.0, 1000)
    assert first.departure == pytest.approx(1 * MS)
    assert second.departure == pytest.approx(3 * MS)


def test_a_shorter_delay_never_overtakes_bytes_already_on_the_way() -> None:
    model = LinkModel(fast_link(rtt_ms=200.0))
    slow = model.accept(0.0, 1000)
    model.set_config(0.0, fast_link(rtt_ms=0.0))
    quick = model.accept(0.0, 1000)
    assert quick.delivery >= slow.delivery == pytest.approx(101 * MS)


def test_jitter_delays_chunks_but_never_reorders_them() -> None:
    config = fast_link(rtt_ms=40.0, jitter_ms=30.0)
    model = LinkModel(config, random.Random(7))
    now, previous, extras = 0.0, 0.0, []
    for size in [100, 5000, 1, 1500, 9000, 300] * 50:
        slot = model.accept(now, size)
        extra = slot.delivery - slot.departure - config.one_way_delay_s
        assert -1e-12 <= extra <= config.jitter_s + 1e-12
        assert slot.delivery >= previous
        previous, now = slot.delivery, now + 0.002
        extras.append(extra)
    assert max(extras) - min(extras) > 0.01  # jitter did something


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.floats(0, 0.01), st.integers(1, 20_000)), min_size=1, max_size=60),
    st.integers(0, 8000),
)
def test_the_link_never_beats_its_rate_plus_burst(
    arrivals: list[tuple[float, int]], burst_bytes: int
) -> None:
    config = fast_link(burst_bytes=burst_bytes, rtt_ms=10.0)
    model = LinkModel(config)
    now, times, sizes, slots = 0.0, [], [], []
    for gap, size in arrivals:
        now += gap
        times.append(now)
        sizes.append(size)
        slots.append(model.accept(now, size))
    for j, slot in enumerate(slots):
        assert slot.departure >= times[j]
        assert slot.delivery >= slot.departure + config.one_way_delay_s - 1e-12
        if j:
            assert slot.departure >= slots[j - 1].departure
        # Token bucket conformance: chunks i..j cannot leave faster than rate + burst.
        for i in range(j + 1):
            least = times[i] + (sum(sizes[i : j + 1]) - burst_bytes) / config.bytes_per_s
            assert slot.departure >= least - 1e-9


def test_stats_series_and_utilisation() -> None:
    stats = LinkStats(start=100.0, config=fast_link(), bucket_s=0.1)  # 10⁶ bytes/s
    stats.record(100.05, 50_000)
    stats.record(100.25, 100_000)
    assert stats.bytes_delivered == 150_000
    times, rates = zip(*stats.throughput_series(), strict=True)
    assert times == pytest.approx((0.0, 0.1, 0.2))
    assert rates == pytest.approx((4.0, 0.0, 8.0))
    assert stats.utilisation(100.3) == pytest.approx(0.5)  # 150 kB of 300 kB capacity
    stats.rate_changed(100.3, fast_link(mbit_per_s=4.0))  # 500 kB/s from 0.3 s on
    stats.record(100.35, 50_000)
    assert stats.utilisation(100.4) == pytest.approx(200_000 / 350_000)
    assert stats.utilisation(100.4, since_s=0.3) == pytest.approx(1.0)


# --- parsing --------------------------------------------------------------------------------


def test_parse_link() -> None:
    assert parse_link("35:10") == LinkConfig(35.0, 10.0)
    assert parse_link("35:10:5") == LinkConfig(35.0, 10.0, jitter_ms=5.0)
    assert parse_link("0:0.5") == LinkConfig(0.0, 0.5)
    assert parse_link("35:10").one_way_delay_s == pytest.approx(0.0175)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "expected RTT_MS:MBIT_PER_S"),
        ("35", "expected RTT_MS:MBIT_PER_S"),
        ("35:10:5:1", "expected RTT_MS:MBIT_PER_S"),
        ("fast:10", "'fast' is not a number"),
        ("35:0", "mbit_per_s must be > 0"),
        ("-1:10", "rtt_ms must be >= 0"),
        ("35:inf", "must be a finite number"),
        ("35:10:-2", "jitter_ms must be >= 0"),
    ],
)
def test_parse_link_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        parse_link(text)
    assert isinstance(info.value, ConfigError)
    assert repr(text) in str(info.value)


def test_parse_schedule() -> None:
    assert parse_schedule("0:35:10,10:35:2,20:35:10:4") == [
        (0.0, LinkConfig(35.0, 10.0)),
        (10.0, LinkConfig(35.0, 2.0)),
        (20.0, LinkConfig(35.0, 10.0, jitter_ms=4.0)),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty link schedule"),
        ("0:35:10,", r"item 2 '': expected T_S:RTT_MS"),
        ("0:35", r"item 1 '0:35': bad link '35'"),
        ("x:35:10", "'x' is not a number"),
        ("-1:35:10", "the time must be >= 0"),
        ("0:35:10,10:35:2,5:35:10", "item 3 '5:35:10': time 5 s is not after the previous"),
        ("0:35:10,0:35:2", "time 0 s is not after"),
    ],
)
def test_parse_schedule_errors(text: str, message: str) -> None:
    with pytest.raises(LinkSpecError, match=message):
        parse_schedule(text)


def test_config_validation() -> None:
    with pytest.raises(LinkSpecError, match="queue_bytes must be >= 1"):
        LinkConfig(10, 10, queue_bytes=0)
    with pytest.raises(LinkSpecError, match="burst_bytes must be an integer"):
        LinkConfig(10, 10, burst_bytes=1.5)  # type: ignore[arg-type]
    assert str(LinkConfig(35, 10, 5)) == "35 ms RTT, 10 Mbit/s, jitter 5 ms"


def test_run_schedule_applies_each_link_at_its_time() -> None:
    schedule = parse_schedule("0:10:1,0.05:20:2,0.1:30:3")
    applied: list[tuple[float, LinkConfig]] = []

    class Recorder:
        def __init__(self) -> None:
            self.start = asyncio.get_running_loop().time()

        def set_link(self, link: LinkConfig) -> None:
            applied.append((asyncio.get_running_loop().time() - self.start, link))

    async def scenario() -> None:
        await run_schedule(Recorder(), schedule)

    run(scenario())
    assert [link for _, link in applied] == [link for _, link in schedule]
    for (at, _), (wanted, _) in zip(applied, schedule, strict=True):
        assert wanted - 0.001 <= at <= wanted + 0.5


# --- the relay on real sockets ---------------------------------------------------------------

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


async def serve(handler: Handler) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, int(server.sockets[0].getsockname()[1])


async def wait_until(condition: Callable[[], bool], timeout_s: float = 3.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def test_relay_adds_the_configured_round_trip_time() -> None:
    rtt_ms = 60.0

    async def scenario() -> list[float]:
        server, port = await serve(echo)
        async with server, LinkRelay("127.0.0.1", port, LinkConfig(rtt_ms, 100.0)) as relay:
            reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
            samples = []
            for i in range(20):
                ping = i.to_bytes(2, "big") * 32
                started = time.perf_counter()
                writer.write(ping)
                assert await reader.readexactly(len(ping)) == ping
                samples.append((time.perf_counter() - started) * 1000)
            writer.close()
            return samples

    samples = run(scenario())
    median = statistics.median(samples)
    print(f"RTT over relay: median {median:.2f} ms, min {min(samples):.2f}, max {max(samples):.2f}")
    assert min(samples) >= rtt_ms - 0.1  # the relay never delivers early
    assert median <= rtt_ms * 1.1 + 5.0  # 10 % plus scheduling slack on a loaded machine


def test_relay_limits_the_rate_and_reports_it() -> None:
    mbit_per_s, total = 2.0, 1_000_000
    arrivals: list[tuple[float, int]] = []
    finished = asyncio.Event()  # binds to a loop only when first awaited

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            arrivals.append((time.perf_counter(), len(data)))
        finished.set()
        writer.close()

    async def scenario() -> None:
        server, port = await serve(sink)
        async with server, LinkRelay("127.0.0.1", port, LinkConfig(20, mbit_per_s)) as relay:
            _, writer = await asyncio.open_connection("127.0.0.1", relay.port)
            writer.write(os.urandom(total))
            writer.write_eof()
            await finished.wait()
            writer.close()
            stats = relay.uplink
            assert stats.bytes_delivered == total
            assert relay.uplink.queued_bytes == 0
            assert 0.9 <= stats.utilisation() <= 1.1
            rates = [rate for _, rate in stats.throughput_series()[3:-3]]
            assert 0.85 * mbit_per_s <= statistics.mean(rates) <= 1.1 * mbit_per_s

    run(scenario())
    assert sum(size for _, size in arrivals) == total
    (first, first_size), (last, _) = arrivals[0], arrivals[-1]
    measured = (total - first_size) * 8 / (last - first) / 1e6
    print(f"rate over relay: {measured:.4f} Mbit/s for {mbit_per_s} configured")
    assert abs(measured - mbit_per_s) <= 0.1 * mbit_per_s


def test_connections_share_the_bottleneck() -> None:
    each, mbit_per_s = 200_000, 4.0

    async def count(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(str(len(await reader.read())).encode())  # read() is until EOF
        writer.close()

    async def push(port: int) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(bytes(each))
        writer.write_eof()
        answer = await reader.read()
        writer.close()
        return answer

    async def scenario() -> float:
        server, port = await serve(count)
        async with server, LinkRelay("127.0.0.1", port, LinkConfig(2, mbit_per_s)) as relay:
            started = time.perf_counter()
            answers = await asyncio.gather(push(relay.port), push(relay.port))
            elapsed = time.perf_counter() - started
            assert answers == [str(each).encode()] * 2
            assert relay.uplink.bytes_delivered == 2 * each
            return elapsed

    elapsed = run(scenario())
    # Two connections through one 4 Mbit/s link: together they get 4 Mbit/s, not 8.
    assert elapsed >= (2 * each - 2 * 4096) * 8 / (mbit_per_s * 1e6)


def test_relay_follows_a_rate_schedule() -> None:
    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(65536):
            pass
        writer.close()

    async def push(writer: asyncio.StreamWriter) -> None:
        block = bytes(64 * 1024)
        while True:
            writer.write(block)
            await writer.drain()

    async def scenario() -> list[tuple[float, float]]:
        server, port = await serve(sink)
        link = LinkConfig(10, 8.0, queue_bytes=64 * 1024)
        async with server, LinkRelay("127.0.0.1", port, link) as relay:
            _, writer = await asyncio.open_connection("127.0.0.1", relay.port)
            pusher = asyncio.create_task(push(writer))
            await run_schedule(relay, [(0.6, LinkConfig(10, 2.0, queue_bytes=64 * 1024))])
            await asyncio.sleep(1.0)
            pusher.cancel()
            writer.transport.abort()
            return relay.uplink.throughput_series()

    series = run(scenario())
    fast = statistics.mean(rate for t, rate in series if 0.2 <= t < 0.5)
    slow = statistics.mean(rate for t, rate in series if 1.0 <= t < 1.5)
    print(f"schedule: {fast:.2f} Mbit/s then {slow:.2f} Mbit/s (8 then 2 configured)")
    assert 8.0 * 0.85 <= fast <= 8.0 * 1.1
    assert 2.0 * 0.85 <= slow <= 2.0 * 1.1


def test_relay_carries_bytes_intact_and_forwards_half_close() -> None:
    payload = os.urandom(300_000)

    async def scenario() -> bytes:
        server, port = await serve(echo)
        async with server, LinkRelay("127.0.0.1", port, LinkConfig(4, 100, 2)) as relay:
            reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
            writer.write(payload)
            writer.write_eof()  # the echo server sees EOF, closes, and we see its EOF
            echoed = await reader.read()  # until EOF
            writer.close()
            await wait_until(lambda: relay.connection_count == 0)
            return echoed

    assert run(scenario()) == payload


def test_a_slow_receiver_pushes_back_to_the_sender_without_unbounded_buffering() -> None:
    queue_bytes = 64 * 1024
    go = asyncio.Event()
    received: list[int] = []

    async def lazy_sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await go.wait()
        while data := await reader.read(1 << 20):
            received.append(len(data))
        writer.close()

    async def scenario() -> tuple[int, int]:
        server, port = await serve(lazy_sink)
        link = LinkConfig(2, 200.0, queue_bytes=queue_bytes)
        async with server, LinkRelay("127.0.0.1", port, link) as relay:
            _, writer = await asyncio.open_connection("127.0.0.1", relay.port)
            written, block = 0, bytes(256 * 1024)
            while written < 256 * 1024 * 1024:
                writer.write(block)
                written += len(block)
                try:
                    await asyncio.wait_for(writer.drain(), 0.5)
                except TimeoutError:
                    break
            held = relay.held_bytes
            assert relay.uplink.queued_bytes <= queue_bytes
            assert held <= link.hold_limit_bytes
            go.set()
            writer.write_eof()
            await wait_until(lambda: sum(received) == written, timeout_s=8.0)
            writer.close()
            return written, held

    written, held = run(scenario())
    print(f"backpressure after {written / 1e6:.1f} MB written; relay held {held / 1e3:.0f} kB")
    assert written < 64 * 1024 * 1024  # the sender was stopped long before the 256 MB


def test_upstream_close_reaches_the_client() -> None:
    async def greet_and_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello")
        writer.close()

    async def scenario() -> bytes:
        server, port = await serve(greet_and_close)
        async with server, LinkRelay("127.0.0.1", port, LinkConfig(10, 10)) as relay:
            reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
            data = await reader.read()  # "hello", then EOF
            writer.close()
            await wait_until(lambda: relay.connection_count == 0)
            return data

    assert run(scenario()) == b"hello"


def test_upstream_reset_and_unreachable_upstream_close_the_client() -> None:
    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        writer.transport.abort()  # RST

    async def read_until_closed(port: int) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"x")
        try:
            return await reader.read()
        except ConnectionResetError:
            return b""
        finally:
            writer.close()

    async def scenario() -> None:
        server, port = await serve(reset)
        async with server, LinkRelay("127.0.0.1", port, LinkConfig(10, 10)) as relay:
            assert await read_until_closed(relay.port) == b""
            await wait_until(lambda: relay.connection_count == 0)
        # Nothing listens on the old port once the server is closed.
        async with LinkRelay("127.0.0.1", port, LinkConfig(10, 10)) as relay:
            assert await read_until_closed(relay.port) == b""
            await wait_until(lambda: relay.connection_count == 0)

    run(scenario())


def test_closing_the_relay_closes_its_connections() -> None:
    async def scenario() -> bytes:
        server, port = await serve(echo)
        async with server:
            relay = LinkRelay("127.0.0.1", port, LinkConfig(10, 10))
            await relay.start()
            reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
            writer.write(b"ping")
            assert await reader.readexactly(4) == b"ping"
            assert relay.connection_count == 1
            await relay.aclose()
            data = await reader.read()
            writer.close()
            return data

    assert run(scenario()) == b""
