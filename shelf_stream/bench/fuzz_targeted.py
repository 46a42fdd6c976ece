"""The targeted cases of ``shelf-bench fuzz``: the outside attack of issue 15, replayed.

They run against a server with the shipped defaults (``ServerConfig()`` with only the
address set), each beside the healthy stream, after that stream ran alone on the same
server in the same invocation:

* ``geometry_lie``: clients whose pictures are larger than their Hello (the real clip
  under a 64x64 Hello; its SPS forged to 7680x4320 and to 4096x2304, over the server's
  limit; a 7680x4320 coded picture cropped to the announced 64x64), one after another
  for the whole run, and a control that sends pictures smaller than its Hello. A liar
  must get only Dropped(SIZE_MISMATCH), then Error(LIMIT_EXCEEDED), and nothing of it
  may be inferred (inferences during the case = Results received by its clients);
* ``idle_crowd``: many addresses hold many upgraded connections that never say hello,
  reconnecting as soon as they are closed; meanwhile fresh clients from new addresses
  connect, say hello and time their Ready (it must come within ``ADMISSION_DEADLINE_S``);
* ``starved_flood``: with a spinning process on every core, reading clients flood
  probes, some within the message-rate burst (all answered) and some three times over
  it (cut off with LIMIT_EXCEEDED after about the burst, counted on arrival, never
  called "not reading"). Its healthy stream alone runs under the same spinning;
* ``big_streams``: a crowd of legitimate 1280x720 streams comes and goes, for memory.

"Alone" is two runs bracketing the cases (one before, one after; under the same CPU
hogs for the starved case): on a shared machine two runs alone can differ by more than
an attack costs. A case's "lost to the attack" counts the Results short of the worse
run alone, and may not exceed how much the two runs alone differ. The bench's own
legitimate streams (the geometry control, the fresh clients) run outside the healthy
stream's run or send no frame: they would take their fair share of inference.

The process's RSS is sampled before the cases, during them (the peak) and after every
attacker left; it must come back within ``RSS_MARGIN_MIB``. Warnings are counted per
stream and cause: each must be said at most once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any

from shelf_stream import protocol as p
from shelf_stream.allocator import rss_bytes
from shelf_stream.bench.fuzz import (
    CLIP_FPS,
    CLIP_HEIGHT,
    CLIP_WIDTH,
    PTS_STEP,
    HealthyRun,
    HealthyStream,
    check_healthy,
    encode_scene,
    session_open,
)
from shelf_stream.bench.fuzz_cases import ClipUnit
from shelf_stream.bench.fuzz_geometry import resize_sps
from shelf_stream.bench.rawws import OP_BINARY, HandshakeRefused, RawWebSocket, Reply, frame
from shelf_stream.engine.base import Detector
from shelf_stream.server import Server, ServerConfig

DEFAULT_FRAMES = 60  # healthy frames per run: 4 s at the clip's 15 fps
ADMISSION_DEADLINE_S = 1.0
RSS_MARGIN_MIB = 20.0
#: The idle crowd: this many addresses, each holding this many connections: 48, more
#: than the server's 32 pending places, so newcomers must evict.
CROWD_ADDRESSES = 16
CROWD_PER_ADDRESS = 3
FRESH_CLIENT_INTERVAL_S = 0.4
#: A crowd connection refused or evicted (SERVER_BUSY) tries again after this long: the
#: crowd holds connections open; knocking every 0.5 s made it ~50 handshakes a second.
CROWD_RETRY_S = 2.0
LIAR_ADDRESSES = 16
#: A new liar every this many seconds: lies, not a connection flood (each liar is cut
#: off after ``max_size_mismatches`` pictures, so back to back they were ~75 connections
#: a second, whose handshakes alone cost the healthy stream frames on a loaded machine).
LIAR_INTERVAL_S = 0.05
FLOOD_INTERVAL_S = 0.8
#: The server stamps a message when it reads it off the socket, which a starved server
#: does a little after the client sent it: the rate-limit bound allows this much more
#: refill (8 messages at 400/s; counting when processed let hundreds more through).
ARRIVAL_SLACK_S = 0.02
BIG_STREAMS = 8
BIG_WIDTH, BIG_HEIGHT, BIG_FRAMES = 1280, 720, 6
MIB = 1024 * 1024


def targeted_config() -> ServerConfig:
    """The shipped defaults: the cases must hold with what users run."""
    return ServerConfig(host="127.0.0.1", port=0)


@dataclass(frozen=True, slots=True)
class Clips:
    healthy: tuple[ClipUnit, ...]
    big: tuple[ClipUnit, ...]  # BIG_WIDTH x BIG_HEIGHT, keyframe first


def encode_big_clip() -> tuple[ClipUnit, ...]:
    return encode_scene(BIG_WIDTH, BIG_HEIGHT, BIG_FRAMES, bitrate_kbps=1500, preset="ultrafast")


# ------------------------------------------------------------------ measurements


class RssSampler:
    """The process's RSS now and then, keeping the peak (MiB)."""

    def __init__(self, period_s: float = 0.05) -> None:
        self.period_s = period_s
        self.peak = self.now()
        self._task: asyncio.Task[None] | None = None

    @staticmethod
    def now() -> float:
        rss = rss_bytes()
        return rss / MIB if rss is not None else 0.0

    def start(self) -> None:
        self.peak = self.now()
        self._task = asyncio.create_task(self._run(), name="rss-sampler")

    async def stop(self) -> float:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        return self.peak

    async def _run(self) -> None:
        while True:
            self.peak = max(self.peak, self.now())
            await asyncio.sleep(self.period_s)


class WarningCensus(logging.Handler):
    """Server warnings by (template, stream): each must be said once per stream."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.by_stream: Counter[tuple[str, int]] = Counter()
        self.templates: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno != logging.WARNING:
            return
        template = str(record.msg)
        self.templates[template] += 1
        args = record.args if isinstance(record.args, tuple) else ()
        if template.startswith("stream %d") and args and isinstance(args[0], int):
            self.by_stream[(template, args[0])] += 1

    def count(self, fragment: str) -> int:
        return sum(n for template, n in self.templates.items() if fragment in template)

    def most_repeated(self) -> tuple[int, str]:
        if not self.by_stream:
            return 0, ""
        (template, _), count = self.by_stream.most_common(1)[0]
        return count, template


@contextlib.contextmanager
def census(logger_name: str = "shelf_stream") -> Iterator[WarningCensus]:
    handler = WarningCensus()
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


class CpuHogs:
    """One spinning process per core while the block runs: a CPU-starved server."""

    def __init__(self, count: int | None = None) -> None:
        self.count = count or os.cpu_count() or 2
        self._processes: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> CpuHogs:
        command = [sys.executable, "-c", "while True: pass"]
        self._processes = [
            subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for _ in range(self.count)
        ]
        return self

    def __exit__(self, *exc_info: object) -> None:
        for process in self._processes:
            process.kill()
        for process in self._processes:
            process.wait()
        self._processes = []


# --------------------------------------------------------------------- helpers


async def _raw_from(port: int, host: str, seed: int) -> RawWebSocket:
    """An upgraded raw connection whose source address is ``host`` (any 127.x.y.z)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(host, 0))
    ws = RawWebSocket(reader, writer, random.Random(seed))
    try:
        await asyncio.wait_for(ws.handshake(port), 5.0)
    except BaseException:
        ws.abort()
        raise
    return ws


def _hello(width: int, height: int, client: str) -> bytes:
    return p.encode_event(p.Hello("hevc", width, height, CLIP_FPS, client=client))


def _frames(ws: RawWebSocket, messages: list[bytes]) -> bytes:
    return b"".join(frame(OP_BINARY, message, key=ws.key()) for message in messages)


async def _until_stopped(work: Awaitable[Reply], stop: asyncio.Event) -> Reply | None:
    """``work``'s reply, or None if ``stop`` came first (``work`` is cancelled)."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if task.done():
        return task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return None


def _dropped_reasons(reply: Reply) -> Counter[str]:
    reasons: Counter[str] = Counter()
    for kind, body in reply.records:
        if kind == p.MessageType.DROPPED and len(body) == p.DROPPED.size:
            reasons[p.DropReason(p.DROPPED.unpack(body)[2]).name] += 1
    return reasons


Attack = Callable[[asyncio.Event], Coroutine[Any, Any, dict[str, Any]]]


async def beside_healthy(
    server: Server, clip: tuple[ClipUnit, ...], frames: int, attack: Attack | None
) -> tuple[HealthyRun, dict[str, Any]]:
    """The healthy stream for ``frames`` frames, with ``attack`` running until it ends."""
    stream = HealthyStream(server.port, clip, frames=frames)
    await stream.start()
    stop = asyncio.Event()
    task = asyncio.create_task(attack(stop)) if attack is not None else None
    run = await stream.finish()
    stop.set()
    return run, (await task if task is not None else {})


async def wait_server_idle(server: Server, timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while (server.sessions or server.pending) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return not server.sessions and not server.pending


_FIGURES = ("frames_sent", "results", "dropped", "lost")


def compare(alone: list[HealthyRun], beside: HealthyRun) -> dict[str, Any]:
    """The healthy stream beside an attack against the same stream alone (two runs)."""
    runs, b = [check_healthy(run) for run in alone], check_healthy(beside)
    worst_alone = min(run["results"] for run in runs)
    best_alone = max(run["results"] for run in runs)
    return {
        "alone": [{key: run[key] for key in _FIGURES} for run in runs],
        "beside": {key: b[key] for key in _FIGURES},
        "lost": b["lost"],
        "answered_twice": b["answered_twice"],
        "drops_not_from_load": b["drops_not_from_load"],
        "errors": b["errors"],
        # Results the stream had in both runs alone but not beside the attack; it may
        # be as large as the two runs alone differ (the machine's noise), no larger.
        "frames_lost_to_attack": max(0, worst_alone - b["results"]),
        "alone_spread": best_alone - worst_alone,
    }


# ------------------------------------------------------------------ geometry lie


@dataclass(frozen=True, slots=True)
class Lie:
    name: str
    hello: tuple[int, int]
    units: tuple[bytes, ...]
    honest: bool = False  # smaller than its Hello: must be served


def geometry_lies(clip: tuple[ClipUnit, ...]) -> tuple[Lie, ...]:
    real = tuple(unit.data for unit in clip[:8])

    def forged(width: int, height: int, crop: tuple[int, int, int, int] = (0, 0, 0, 0)):
        return (resize_sps(real[0], width, height, crop=crop), *real[1:])

    cropped = (0, (7680 - 64) // 2, 0, (4320 - 64) // 2)
    return (
        Lie("real 320x240 under a 64x64 hello", (64, 64), real),
        Lie("SPS 7680x4320 under 64x64", (64, 64), forged(7680, 4320)),
        Lie("SPS 4096x2304 (over the server limit) under 320x240", (320, 240), forged(4096, 2304)),
        Lie("SPS coded 7680x4320 cropped to 64x64", (64, 64), forged(7680, 4320, cropped)),
        Lie("control: 320x240 under a 640x480 hello", (640, 480), real, honest=True),
    )


async def _tell_lie(server: Server, lie: Lie, seed: int) -> dict[str, Any]:
    """One liar from its own address; returns once the server released its session."""
    ws = await _raw_from(server.port, f"127.0.5.{1 + seed % LIAR_ADDRESSES}", seed)
    try:
        hello = _hello(*lie.hello, client="fuzz-liar")
        videos = [
            p.encode_event(p.Video(seq, seq * PTS_STEP, seq, seq == 0, data))
            for seq, data in enumerate(lie.units)
        ]
        with contextlib.suppress(ConnectionError):
            await ws.send_raw(_frames(ws, [hello, *videos, p.encode_event(p.Bye())]))
        reply = await ws.read_reply(10.0)
    finally:
        ws.abort()
    deadline = time.monotonic() + 5.0
    while session_open(server, ws.local_port) and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    error = reply.first_error()
    return {
        "results": reply.count(p.MessageType.RESULT),
        "dropped": _dropped_reasons(reply),
        "error": error.code.name if error is not None else None,
        "close": reply.close_code,
    }


def _as_specified(lie: Lie, outcome: dict[str, Any], mismatches: int) -> bool:
    """A liar: only SIZE_MISMATCH drops, ``mismatches`` of them, then Error(LIMIT_EXCEEDED)
    and close 1008, no Result. The control: served, with no size complaint."""
    if lie.honest:
        return (
            outcome["results"] > 0
            and "SIZE_MISMATCH" not in outcome["dropped"]
            and outcome["error"] is None
            and outcome["close"] == 1000
        )
    return (
        outcome["results"] == 0
        and outcome["dropped"] == Counter({"SIZE_MISMATCH": mismatches})
        and outcome["error"] == "LIMIT_EXCEEDED"
        and outcome["close"] == 1008
    )


async def geometry_lie(server: Server, clip: tuple[ClipUnit, ...], stop: asyncio.Event) -> dict:
    """Every liar at least once, then one after another until ``stop``; then the control
    once (a legitimate stream beside the healthy one would take its share of inference)."""
    lies = geometry_lies(clip)
    liars = [lie for lie in lies if not lie.honest]
    control = next(lie for lie in lies if lie.honest)
    mismatches = server.config.max_size_mismatches
    outcomes: dict[str, Counter[str]] = {lie.name: Counter() for lie in lies}
    not_as_specified = results_to_liars = results_to_control = 0
    inferred_before = server.scheduler.frames_run

    async def tell(lie: Lie, seed: int) -> int:
        nonlocal not_as_specified
        outcome = await _tell_lie(server, lie, seed)
        label = (
            f"{dict(outcome['dropped']) or 'no drops'}, {outcome['results']} results, "
            f"{outcome['error'] or 'no error'}, close {outcome['close']}"
        )
        outcomes[lie.name][label] += 1
        not_as_specified += not _as_specified(lie, outcome, mismatches)
        return int(outcome["results"])

    index = 0
    while not stop.is_set() or index < len(liars):
        results_to_liars += await tell(liars[index % len(liars)], index)
        index += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), LIAR_INTERVAL_S)
    results_to_control = await tell(control, index)
    return {
        "liars": index,
        "not_as_specified": not_as_specified,
        "every_kind_ran": all(outcomes.values()),
        "outcomes": {name: dict(labels) for name, labels in outcomes.items()},
        "results_to_liars": results_to_liars,
        "results_to_control": results_to_control,
        "inferred_during_case": server.scheduler.frames_run - inferred_before,
    }


# -------------------------------------------------------------------- idle crowd


@dataclass(slots=True)
class CrowdTally:
    opened: int = 0
    connect_failed: int = 0
    endings: Counter[str] = field(default_factory=Counter)
    held_to_the_end: int = 0


async def _crowd_slot(port: int, host: str, stop: asyncio.Event, tally: CrowdTally) -> None:
    """One idle connection from ``host``, reopened whenever the server closes it."""
    seed = 0
    while not stop.is_set():
        seed += 1
        try:
            ws = await _raw_from(port, host, seed)
        except (OSError, HandshakeRefused, TimeoutError, asyncio.IncompleteReadError):
            tally.connect_failed += 1
            await asyncio.sleep(0.05)
            continue
        tally.opened += 1
        reply = await _until_stopped(ws.read_reply(3600.0), stop)
        ws.abort()
        if reply is None:
            tally.held_to_the_end += 1
            continue
        tally.endings[reply.label()] += 1
        error = reply.first_error()
        busy = error is not None and error.code == p.ErrorCode.SERVER_BUSY
        # Refused or evicted: a crowd that holds connections, not one that floods connects.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), CROWD_RETRY_S if busy else 0.01)


async def _fresh_client(port: int, host: str) -> dict[str, Any]:
    """Connect from ``host``, say hello, time the Ready, say Bye (no frame: it would take
    the healthy stream's share of inference)."""
    started = time.monotonic()
    try:
        ws = await _raw_from(port, host, seed=7)
    except (OSError, HandshakeRefused, TimeoutError, asyncio.IncompleteReadError) as exc:
        return {"ready": False, "label": f"connect failed: {exc!r}", "seconds": None}
    try:
        await ws.send_binary(_hello(CLIP_WIDTH, CLIP_HEIGHT, client="fuzz-fresh"))
        reply = await ws.read_reply(5.0, stop_after=p.MessageType.READY)
        seconds = time.monotonic() - started
        ready = bool(reply.count(p.MessageType.READY))
        if ready:
            await ws.send_binary(p.encode_event(p.Bye()))
            await ws.read_reply(5.0)
    finally:
        ws.abort()
    return {"ready": ready, "label": reply.label(), "seconds": seconds}


async def idle_crowd(server: Server, stop: asyncio.Event) -> dict:
    tally = CrowdTally()
    hosts = [f"127.0.2.{i}" for i in range(1, CROWD_ADDRESSES + 1)]
    slots = [
        asyncio.create_task(_crowd_slot(server.port, host, stop, tally))
        for host in hosts
        for _ in range(CROWD_PER_ADDRESS)
    ]
    peak_pending = 0
    fresh: list[dict[str, Any]] = []
    await asyncio.sleep(FRESH_CLIENT_INTERVAL_S)  # let the crowd fill the pending table
    index = 0
    while not stop.is_set():
        peak_pending = max(peak_pending, len(server.pending))
        index += 1
        fresh.append(await _fresh_client(server.port, f"127.0.3.{index}"))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), FRESH_CLIENT_INTERVAL_S)
    await asyncio.gather(*slots)
    times = sorted(f["seconds"] for f in fresh if f["ready"])
    return {
        "crowd": f"{CROWD_ADDRESSES} addresses x {CROWD_PER_ADDRESS} connections",
        "crowd_connections_opened": tally.opened,
        "crowd_connect_failed": tally.connect_failed,
        "crowd_endings": dict(tally.endings.most_common()),
        "crowd_held_to_the_end": tally.held_to_the_end,
        "peak_pending_on_server": peak_pending,
        "fresh_clients": len(fresh),
        "fresh_admitted": len(times),
        "fresh_not_admitted": [f["label"] for f in fresh if not f["ready"]][:5],
        "admission_s_max": round(times[-1], 3) if times else None,
        "admission_s_median": round(times[len(times) // 2], 3) if times else None,
    }


# -------------------------------------------------------------- starved flood


async def _flood(port: int, probes: int, seed: int) -> dict[str, Any]:
    """A client that reads its answers and sends ``probes`` probes in one burst."""
    ws = await RawWebSocket.connect(port, random.Random(seed))
    try:
        burst = _frames(ws, [p.encode_event(p.Probe(i, i)) for i in range(probes)])
        hello_at = time.monotonic()
        await ws.send_binary(_hello(CLIP_WIDTH, CLIP_HEIGHT, client="fuzz-flood"))
        ready = await ws.read_reply(5.0, stop_after=p.MessageType.READY)
        if not ready.count(p.MessageType.READY):
            return {"probes": probes, "acks": 0, "error": f"no ready: {ready.label()}"}
        with contextlib.suppress(ConnectionError):
            await ws.send_raw(burst)
        # From the hello (the first message the bucket counts) to the burst's last byte.
        sent_s = time.monotonic() - hello_at
        reply = await ws.read_reply(30.0, stop_after=p.MessageType.PROBE_ACK, count=probes)
    finally:
        ws.abort()
    error = reply.first_error()
    return {
        "probes": probes,
        "acks": reply.count(p.MessageType.PROBE_ACK),
        "send_s": sent_s,
        "error": error.code.name if error is not None else None,
        "error_text": error.message if error is not None else None,
    }


async def starved_flood(server: Server, stop: asyncio.Event) -> dict[str, Any]:
    rate = server.config.max_messages_per_s
    burst = int(2 * rate)
    within, over = burst // 2, 3 * burst
    floods: list[dict[str, Any]] = []
    index = 0
    while not stop.is_set():
        index += 1
        floods.append(await _flood(server.port, over if index % 2 else within, seed=index))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), FLOOD_INTERVAL_S)
    over_limit = [f for f in floods if f["probes"] == over]
    under_limit = [f for f in floods if f["probes"] == within]
    # The bucket holds ``burst`` tokens and refills at ``rate``: from the hello's arrival
    # to the burst's, ``rate`` times the span in which the client sent them (and the
    # server's read lag), less the hello's own token.
    allowed = [burst - 1 + rate * (f["send_s"] + ARRIVAL_SLACK_S) for f in over_limit]
    return {
        "rate_limit": f"{rate:g}/s, burst {burst}",
        "floods_over_limit": len(over_limit),
        "over_limit_probes": over,
        "over_limit_acks": [f["acks"] for f in over_limit],
        "over_limit_allowed": [int(bound) for bound in allowed],
        "over_limit_errors": dict(Counter(str(f["error"]) for f in over_limit)),
        "over_limit_within_bound": all(
            f["acks"] <= bound for f, bound in zip(over_limit, allowed, strict=True)
        ),
        "floods_within_limit": len(under_limit),
        "within_limit_probes": within,
        "within_limit_all_answered": all(
            f["acks"] == within and f["error"] is None for f in under_limit
        ),
    }


# ------------------------------------------------------------------ big streams


async def _big_stream(port: int, host: str, clip: tuple[ClipUnit, ...], seed: int) -> str:
    ws = await _raw_from(port, host, seed)
    try:
        hello = _hello(BIG_WIDTH, BIG_HEIGHT, client="fuzz-big")
        videos = [
            p.encode_event(p.Video(seq, seq * PTS_STEP, seq, unit.keyframe, unit.data))
            for seq, unit in enumerate(clip)
        ]
        await ws.send_raw(_frames(ws, [hello, *videos, p.encode_event(p.Bye())]))
        reply = await ws.read_reply(30.0)
    finally:
        ws.abort()
    answered = reply.count(p.MessageType.RESULT) + reply.count(p.MessageType.DROPPED)
    return f"{answered}/{len(clip)} answered, close {reply.close_code}"


async def big_streams(server: Server, clip: tuple[ClipUnit, ...], stop: asyncio.Event) -> dict:
    rounds: Counter[str] = Counter()
    count = 0
    while not stop.is_set():
        hosts = [f"127.0.4.{1 + i % 2}" for i in range(BIG_STREAMS)]
        outcomes = await asyncio.gather(
            *(_big_stream(server.port, host, clip, count + i) for i, host in enumerate(hosts))
        )
        count += len(outcomes)
        rounds.update(outcomes)
    return {"streams": count, "size": f"{BIG_WIDTH}x{BIG_HEIGHT}", "outcomes": dict(rounds)}


# ----------------------------------------------------------------- the phase


async def run_targeted(detector: Detector, clips: Clips, frames: int) -> dict[str, Any]:
    clip = clips.healthy
    config = targeted_config()
    report: dict[str, Any] = {"frames_per_run": frames, "config": "ServerConfig() defaults"}
    with census() as warnings:
        async with Server(config, detector) as server:
            sampler = RssSampler()
            sampler.start()
            alone = [(await beside_healthy(server, clip, frames, None))[0]]
            alone_peak = await sampler.stop()
            await wait_server_idle(server)
            await asyncio.sleep(2.0)  # the server trims memory after streams close
            rss_before = RssSampler.now()
            sampler.start()

            geometry_run, geometry = await beside_healthy(
                server, clip, frames, lambda stop: geometry_lie(server, clip, stop)
            )
            geometry["rss_peak_mib"] = round(sampler.peak, 1)
            await wait_server_idle(server)
            crowd_run, crowd = await beside_healthy(
                server, clip, frames, lambda stop: idle_crowd(server, stop)
            )
            await wait_server_idle(server)
            alone.append((await beside_healthy(server, clip, frames, None))[0])
            report["geometry_lie"] = geometry | {"healthy": compare(alone, geometry_run)}
            report["idle_crowd"] = crowd | {"healthy": compare(alone, crowd_run)}

            with CpuHogs() as hogs:
                starved = [(await beside_healthy(server, clip, frames, None))[0]]
                flood_run, flood = await beside_healthy(
                    server, clip, frames, lambda stop: starved_flood(server, stop)
                )
                await wait_server_idle(server)
                starved.append((await beside_healthy(server, clip, frames, None))[0])
            report["starved_flood"] = flood | {
                "cpu_hogs": hogs.count,
                "healthy": compare(starved, flood_run),
                "not_reading_warnings": warnings.count("has not read its results"),
            }
            await wait_server_idle(server)

            run, big = await beside_healthy(
                server, clip, frames, lambda stop: big_streams(server, clips.big, stop)
            )
            report["big_streams"] = big | {"healthy": check_healthy(run)["lost"]}
            idle = await wait_server_idle(server)
            await asyncio.sleep(2.0)  # the trim after the last streams closed
            peak = await sampler.stop()
            rss_after = RssSampler.now()
    repeated, template = warnings.most_repeated()
    report["memory"] = {
        "rss_peak_healthy_alone_mib": round(alone_peak, 1),
        "rss_before_mib": round(rss_before, 1),
        "rss_peak_mib": round(peak, 1),
        "rss_after_mib": round(rss_after, 1),
        "after_minus_before_mib": round(rss_after - rss_before, 1),
        "server_idle_after": idle,
    }
    report["warnings"] = {
        "most_repeated_for_one_stream": repeated,
        "template": template,
        "by_template": dict(warnings.templates.most_common(12)),
    }
    report["ok"] = targeted_verdict(report)
    return report


def _healthy_ok(healthy: dict[str, Any]) -> bool:
    return (
        healthy["lost"] == 0
        and healthy["answered_twice"] == 0
        and healthy["drops_not_from_load"] == 0
        and healthy["frames_lost_to_attack"] <= healthy["alone_spread"]
        and not healthy["errors"]
    )


def targeted_verdict(report: dict[str, Any]) -> dict[str, bool]:
    geometry, crowd, flood = report["geometry_lie"], report["idle_crowd"], report["starved_flood"]
    memory = report["memory"]
    return {
        "geometry_lie": (
            geometry["every_kind_ran"]
            and geometry["not_as_specified"] == 0
            and geometry["results_to_liars"] == 0
            and _healthy_ok(geometry["healthy"])
        ),
        "idle_crowd": (
            crowd["fresh_clients"] > 0
            and crowd["fresh_admitted"] == crowd["fresh_clients"]
            and crowd["admission_s_max"] is not None
            and crowd["admission_s_max"] <= ADMISSION_DEADLINE_S
            and _healthy_ok(crowd["healthy"])
        ),
        "starved_flood": (
            flood["floods_over_limit"] > 0
            and flood["over_limit_within_bound"]
            and set(flood["over_limit_errors"]) == {"LIMIT_EXCEEDED"}
            and flood["within_limit_all_answered"]
            and flood["not_reading_warnings"] == 0
            and _healthy_ok(flood["healthy"])
        ),
        "memory": (
            memory["server_idle_after"] and memory["after_minus_before_mib"] <= RSS_MARGIN_MIB
        ),
        "one_warning_per_stream_and_cause": report["warnings"]["most_repeated_for_one_stream"] <= 1,
    }


def format_targeted(report: dict[str, Any]) -> list[str]:
    verdict = report["ok"]
    geometry, crowd, flood = report["geometry_lie"], report["idle_crowd"], report["starved_flood"]
    memory, warnings = report["memory"], report["warnings"]

    def mark(key: str) -> str:
        return "ok" if verdict[key] else "FAIL"

    def healthy(entry: dict[str, Any]) -> str:
        alone = " and ".join(
            f"{run['results']}/{run['frames_sent']} ({run['dropped'] or 'no drops'})"
            for run in entry["alone"]
        )
        beside = entry["beside"]
        return (
            f"healthy: results alone {alone}; beside {beside['results']}/"
            f"{beside['frames_sent']} ({beside['dropped'] or 'no drops'}); lost "
            f"{entry['lost']}, lost to the attack {entry['frames_lost_to_attack']} (runs "
            f"alone differ by {entry['alone_spread']})"
        )

    lines = [
        f"  targeted cases (server with the shipped defaults, {report['frames_per_run']} "
        "healthy frames per run):",
        f"    geometry lie      [{mark('geometry_lie')}] {geometry['liars']} connections, "
        f"{geometry['not_as_specified']} not answered as specified; results to "
        f"liars {geometry['results_to_liars']}, to the control "
        f"{geometry['results_to_control']}; inferences during the case "
        f"{geometry['inferred_during_case']}",
    ]
    for name, labels in geometry["outcomes"].items():
        lines.append(f"      {name}: {', '.join(f'{n}x {label}' for label, n in labels.items())}")
    lines += [
        f"      {healthy(geometry['healthy'])}",
        f"    idle crowd        [{mark('idle_crowd')}] {crowd['crowd']} "
        f"({crowd['crowd_connections_opened']} opened, peak {crowd['peak_pending_on_server']} "
        f"pending on the server); fresh clients admitted {crowd['fresh_admitted']}/"
        f"{crowd['fresh_clients']}, Ready in median {crowd['admission_s_median']} s, max "
        f"{crowd['admission_s_max']} s (deadline {ADMISSION_DEADLINE_S:g} s)",
        f"      crowd endings: {crowd['crowd_endings']}",
        f"      {healthy(crowd['healthy'])}",
        f"    starved flood     [{mark('starved_flood')}] {flood['cpu_hogs']} CPU hogs; rate "
        f"{flood['rate_limit']}: {flood['floods_over_limit']} floods of "
        f"{flood['over_limit_probes']} probes got {flood['over_limit_acks']} acks (at most "
        f"{flood['over_limit_allowed']} counted on arrival) then "
        f"{flood['over_limit_errors']}; {flood['floods_within_limit']} floods of "
        f"{flood['within_limit_probes']} all answered: {flood['within_limit_all_answered']}; "
        f"'not reading' warnings {flood['not_reading_warnings']}",
        f"      {healthy(flood['healthy'])} (both runs starved)",
        f"    big streams       {report['big_streams']['streams']} streams of "
        f"{report['big_streams']['size']}: {report['big_streams']['outcomes']}",
        f"    memory            [{mark('memory')}] RSS before {memory['rss_before_mib']} MiB, "
        f"peak {memory['rss_peak_mib']} MiB, after {memory['rss_after_mib']} MiB "
        f"(after - before {memory['after_minus_before_mib']} MiB, margin "
        f"{RSS_MARGIN_MIB:g}); peak with the healthy stream alone "
        f"{memory['rss_peak_healthy_alone_mib']} MiB, in the geometry case "
        f"{geometry['rss_peak_mib']} MiB",
        f"    warnings          [{mark('one_warning_per_stream_and_cause')}] most repeated "
        f"for one stream: {warnings['most_repeated_for_one_stream']}",
    ]
    return lines
