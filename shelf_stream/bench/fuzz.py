"""``shelf-bench fuzz``: hostile clients against a live server, beside a healthy stream.

One in-process server with the real detector. A healthy client streams a pre-encoded
clip (320x240, 15 fps, one keyframe per loop of the clip) for the whole campaign,
while up to ``--concurrency`` attackers at a time run ``--cases`` hostile cases
(``fuzz_cases``: random bytes, broken hellos, WebSocket protocol violations, oversized
and fragmented messages, damaged access units in valid Video messages, abrupt
disconnects, silent connections...), all generated from ``--seed``.

Checks:

* no server crash: after the campaign a fresh client still gets hello → Ready →
  keyframe → Result;
* no unhandled exception: ERROR records with a traceback from the ``shelf_stream``,
  ``websockets`` and ``asyncio`` loggers, and calls of the loop's exception handler
  (a hostile case legitimately logs a WARNING, never an ERROR with a traceback);
* no lost healthy frame: every pts the healthy stream sent got exactly one Result or
  Dropped, and Dropped only for SUPERSEDED or TOO_OLD (load, not damage);
* the same detections: the healthy clip is first streamed alone (the baseline); every
  frame with a Result in both runs must have the same classes and boxes (IoU > 0.99):
  the decoder is deterministic for the same access units after the loop's keyframe;
* no leaked threads: once every session is released, no decoder thread is left.

Then the targeted cases (``fuzz_targeted``, ``--targeted-frames``), against a server
with the shipped defaults: a geometry lie, an idle crowd before Hello, a flood while
the CPU is starved, each beside the healthy stream and compared with it alone; fresh
clients timed to Ready during the crowd; RSS before, during and after.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection as WebSocket
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from shelf_stream import protocol as p
from shelf_stream.bench.fuzz_cases import CASES, CaseContext, ClipUnit, run_case
from shelf_stream.bench.report import progress, publish
from shelf_stream.engine.base import Detector
from shelf_stream.server import Server, ServerConfig

DEFAULT_CASES = 10_000
DEFAULT_SEED = 1
DEFAULT_CONCURRENCY = 8
DEFAULT_TARGETED_FRAMES = 60
CLIP_WIDTH, CLIP_HEIGHT, CLIP_FPS = 320, 240, 15.0
CLIP_FRAMES = 30  # 2 s loop, one keyframe at its start
PTS_STEP = round(p.TIME_BASE_HZ / CLIP_FPS)
#: Small enough that a real oversized message costs little to send.
CAMPAIGN_MAX_MESSAGE_BYTES = 256 * 1024
#: Short, so that connections that never say hello cost the campaign little.
CAMPAIGN_HELLO_TIMEOUT_S = 0.5
CASE_TIMEOUT_S = 10.0
MIN_IOU = 0.99
#: Drops the healthy stream may get under the attackers' load: frames replaced or aged
#: in the inference slot. Anything else (decode errors, gaps) means damage.
LOAD_DROPS = {p.DropReason.SUPERSEDED, p.DropReason.TOO_OLD}
AUDITED_LOGGERS = ("shelf_stream", "websockets", "asyncio")


# --------------------------------------------------------------------------- CLI


def add_fuzz_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "fuzz",
        help="hostile clients against a live server beside a healthy stream",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    parser.add_argument("--cases", type=int, default=DEFAULT_CASES, help="hostile cases to run")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="campaign seed")
    parser.add_argument(
        "--concurrency", type=int, default=DEFAULT_CONCURRENCY, help="attackers at a time"
    )
    parser.add_argument(
        "--targeted-frames", type=int, default=DEFAULT_TARGETED_FRAMES,
        help="healthy frames per run of the targeted cases (0 skips them)",
    )  # fmt: skip
    parser.add_argument("--model", help="ONNX model (default: the usual lookup)")
    parser.add_argument("--json", type=Path, help="write the report here")
    return parser


def run_fuzz(args: argparse.Namespace) -> dict[str, Any]:
    """Run the campaign; prints a readable report and returns (and writes) the JSON one."""
    from shelf_stream.engine import EngineConfig, create_detector
    from shelf_stream.engine.models import resolve_model

    _progress("loading the model and encoding the healthy clip")
    detector = create_detector(EngineConfig(model_path=resolve_model(args.model)))
    try:
        clip = encode_clip()
        targeted = None
        if args.targeted_frames > 0:
            from shelf_stream.bench.fuzz_targeted import Clips, encode_big_clip

            targeted = (Clips(clip, encode_big_clip()), args.targeted_frames)
        report = asyncio.run(
            _campaign(detector, clip, args.cases, args.seed, args.concurrency, targeted)
        )
    finally:
        detector.close()
    return publish(format_report(report), report, args.json)


def _progress(text: str) -> None:
    progress("fuzz:", text)


# ------------------------------------------------------------------ healthy clip


def encode_clip(frames: int = CLIP_FRAMES) -> tuple[ClipUnit, ...]:
    """The healthy stream's clip: the demo scene, keyframe first, no other keyframe."""
    return encode_scene(CLIP_WIDTH, CLIP_HEIGHT, frames, bitrate_kbps=400)


def encode_scene(
    width: int, height: int, frames: int, *, bitrate_kbps: int, preset: str | None = None
) -> tuple[ClipUnit, ...]:
    """``frames`` of the demo scene as H.265 access units, keyframe first, no other."""
    from shelf_stream.client.sources import SceneSource
    from shelf_stream.codec import EncoderConfig, get_encoder

    # One encoder thread and a keyframe interval beyond the clip: the same bytes every
    # run, and every loop of the clip decodes to the same pictures after its keyframe.
    config = EncoderConfig(
        codec="hevc", width=width, height=height, fps=CLIP_FPS, bitrate_kbps=bitrate_kbps,
        keyframe_interval_s=3600.0, threads=1, preset=preset,
    )  # fmt: skip
    source = SceneSource(width, height, CLIP_FPS)
    encoder = get_encoder(config)
    try:
        units = []
        for index in range(frames):
            out = encoder.encode(source.render(index), index * PTS_STEP, keyframe=index == 0)
            units.append(ClipUnit(out.keyframe, out.data))
    finally:
        encoder.close()
        source.close()
    return tuple(units)


# --------------------------------------------------------------- healthy stream


@dataclass(slots=True)
class HealthyRun:
    """What the healthy stream sent and got back."""

    sent: list[int] = field(default_factory=list)  # pts in send order
    answers: dict[int, list[p.Result | p.Dropped]] = field(default_factory=dict)
    keyframe_requests: int = 0
    errors: list[str] = field(default_factory=list)


class HealthyStream:
    """A well-behaved client looping the clip at its frame rate on one connection.

    Every access unit is sent, late rather than never: skipping one would be a gap,
    and the server would rightly drop frames until the next keyframe.
    """

    def __init__(self, port: int, clip: tuple[ClipUnit, ...], *, frames: int | None = None):
        self.port = port
        self.clip = clip
        self.frames = frames
        self.run = HealthyRun()
        self._stop = asyncio.Event()
        self._proto = p.ClientConnection()
        self._ws: WebSocket | None = None
        self._sender: asyncio.Task[None] | None = None
        self._receiver: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._ws = await connect(f"ws://127.0.0.1:{self.port}", compression=None, proxy=None)
        hello = p.Hello("hevc", CLIP_WIDTH, CLIP_HEIGHT, CLIP_FPS, client="fuzz-healthy")
        await self._ws.send(self._proto.send(hello))
        self._proto.receive_message(await asyncio.wait_for(self._ws.recv(), 10.0))
        events = self._proto.events_received()
        if not events or not isinstance(events[0], p.Ready):
            raise RuntimeError(f"healthy stream refused: {events}")
        self._sender = asyncio.create_task(self._send_loop(), name="healthy-send")
        self._receiver = asyncio.create_task(self._receive_loop(), name="healthy-receive")

    async def finish(self, timeout_s: float = 30.0) -> HealthyRun:
        """Stop sending (or wait for ``frames``), say Bye, collect every answer."""
        assert self._ws is not None and self._sender is not None and self._receiver is not None
        if self.frames is None:
            self._stop.set()
        await self._sender
        try:
            await self._ws.send(self._proto.send(p.Bye()))
            await asyncio.wait_for(self._receiver, timeout_s)
        except (ConnectionClosed, TimeoutError) as exc:
            self.run.errors.append(f"finishing: {exc!r}")
            self._receiver.cancel()
        await self._ws.close()
        return self.run

    async def _send_loop(self) -> None:
        assert self._ws is not None
        loop = asyncio.get_running_loop()
        started = loop.time()
        index = 0
        while not self._stop.is_set() and (self.frames is None or index < self.frames):
            unit = self.clip[index % len(self.clip)]
            pts = index * PTS_STEP
            video = p.Video(index, pts, index, unit.keyframe, unit.data)
            await self._ws.send(self._proto.send(video))
            self.run.sent.append(pts)
            index += 1
            await asyncio.sleep(max(0.0, started + index / CLIP_FPS - loop.time()))

    async def _receive_loop(self) -> None:
        assert self._ws is not None
        try:
            async for message in self._ws:
                self._proto.receive_message(message)
                for event in self._proto.events_received():
                    self._on_event(event)
        except ConnectionClosed as exc:
            self.run.errors.append(f"connection closed: {exc}")

    def _on_event(self, event: p.Event) -> None:
        if isinstance(event, p.Result | p.Dropped):
            self.run.answers.setdefault(event.pts, []).append(event)
        elif isinstance(event, p.KeyframeRequest):
            self.run.keyframe_requests += 1
        elif isinstance(event, p.Error):
            self.run.errors.append(f"server error {event.code.name}: {event.message}")


def check_healthy(run: HealthyRun) -> dict[str, Any]:
    """Every pts answered exactly once, and dropped only for load."""
    lost = [pts for pts in run.sent if pts not in run.answers]
    duplicated = [pts for pts, answers in run.answers.items() if len(answers) > 1]
    sent = set(run.sent)
    unexpected = [pts for pts in run.answers if pts not in sent]
    drops: Counter[str] = Counter()
    bad_drops = 0
    for answers in run.answers.values():
        for answer in answers:
            if isinstance(answer, p.Dropped):
                drops[answer.reason.name] += 1
                bad_drops += answer.reason not in LOAD_DROPS
    results = sum(isinstance(a[0], p.Result) for a in run.answers.values())
    return {
        "frames_sent": len(run.sent),
        "results": results,
        "dropped": dict(drops),
        "lost": len(lost),
        "answered_twice": len(duplicated),
        "answers_for_unsent_pts": len(unexpected),
        "drops_not_from_load": bad_drops,
        "keyframe_requests": run.keyframe_requests,
        "errors": run.errors,
    }


# ------------------------------------------------------------ detection compare


def _iou(a: p.Detection, b: p.Detection) -> float:
    ix = max(0.0, min(a.x2, b.x2) - max(a.x1, b.x1))
    iy = max(0.0, min(a.y2, b.y2) - max(a.y1, b.y1))
    inter = ix * iy
    union = (a.x2 - a.x1) * (a.y2 - a.y1) + (b.x2 - b.x1) * (b.y2 - b.y1) - inter
    return inter / union if union > 0 else 1.0


def match_detections(
    a: tuple[p.Detection, ...], b: tuple[p.Detection, ...]
) -> tuple[bool, float, float]:
    """(same, lowest IoU of a matched pair, largest score difference): same count, and
    each box of ``a`` pairs greedily with an unused box of ``b`` of its class."""
    if len(a) != len(b):
        return False, 0.0, 1.0
    unused = list(b)
    lowest, score_diff = 1.0, 0.0
    for det in a:
        candidates = [d for d in unused if d.class_id == det.class_id]
        if not candidates:
            return False, 0.0, 1.0
        best = max(candidates, key=lambda d: _iou(det, d))
        unused.remove(best)
        lowest = min(lowest, _iou(det, best))
        score_diff = max(score_diff, abs(det.score - best.score))
    return lowest > MIN_IOU, lowest, score_diff


def results_by_clip_index(run: HealthyRun, clip_len: int) -> dict[int, list[p.Result]]:
    by_index: dict[int, list[p.Result]] = {}
    for pts, answers in run.answers.items():
        if isinstance(answers[0], p.Result):
            by_index.setdefault((pts // PTS_STEP) % clip_len, []).append(answers[0])
    return by_index


def compare_detections(baseline: HealthyRun, attacked: HealthyRun, clip_len: int) -> dict[str, Any]:
    """Per frame with a Result in both runs (clip loops line up on the keyframe)."""
    reference = {
        index: results[0].detections
        for index, results in results_by_clip_index(baseline, clip_len).items()
    }
    compared = mismatched = 0
    lowest_iou, score_diff = 1.0, 0.0
    examples: list[str] = []
    for pts, answers in sorted(attacked.answers.items()):
        expected = reference.get((pts // PTS_STEP) % clip_len)
        if expected is None or not isinstance(answers[0], p.Result):
            continue  # superseded (or aged) in one of the runs: nothing to compare
        compared += 1
        same, iou, diff = match_detections(expected, answers[0].detections)
        score_diff = max(score_diff, diff)
        lowest_iou = min(lowest_iou, iou)
        if not same:
            mismatched += 1
            if len(examples) < 5:
                examples.append(f"pts {pts}: {expected} vs {answers[0].detections}")
    return {
        "compared_frames": compared,
        "mismatched_frames": mismatched,
        "lowest_iou": round(lowest_iou, 6),
        "largest_score_diff": round(score_diff, 6),
        "examples": examples,
    }


def baseline_consistency(run: HealthyRun, clip_len: int) -> dict[str, Any]:
    """The baseline's loops against each other: proof the comparison is meaningful."""
    frames = same = 0
    for results in results_by_clip_index(run, clip_len).values():
        for other in results[1:]:
            frames += 1
            same += match_detections(results[0].detections, other.detections)[0]
    return {"frames_compared_across_loops": frames, "identical": same}


# ------------------------------------------------------------------- log audit


class LogAudit(logging.Handler):
    """Counts what the server logs; ERROR with a traceback means an unhandled exception."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.levels: Counter[str] = Counter()
        self.warnings: Counter[str] = Counter()  # by message template
        self.tracebacks: list[str] = []
        self.errors_with_traceback = 0
        self.errors_without_traceback: list[str] = []
        self.loop_exceptions: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.levels[record.levelname] += 1
        if record.levelno < logging.ERROR:
            self.warnings[f"{record.name}: {record.msg}"] += 1
        elif record.exc_info:
            self.errors_with_traceback += 1
            if len(self.tracebacks) < 10:
                self.tracebacks.append(self.format(record))
        elif len(self.errors_without_traceback) < 10:
            self.errors_without_traceback.append(self.format(record))

    def loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        self.loop_exceptions.append(f"{context.get('message')}: {exc!r}")

    @property
    def unhandled(self) -> int:
        return self.errors_with_traceback + len(self.loop_exceptions)


@contextmanager
def audit_logs(audit: LogAudit) -> Iterator[None]:
    """Route the server's loggers into ``audit`` only: thousands of expected WARNINGs
    would drown the console, and the audit keeps what matters for the report."""
    saved = []
    for name in AUDITED_LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, logger.level, logger.propagate))
        logger.setLevel(logging.WARNING)
        logger.propagate = False
        logger.addHandler(audit)
    try:
        yield
    finally:
        for logger, level, propagate in saved:
            logger.removeHandler(audit)
            logger.setLevel(level)
            logger.propagate = propagate


# ------------------------------------------------------------------- campaign


def campaign_config() -> ServerConfig:
    return ServerConfig(
        host="127.0.0.1",
        port=0,
        limits=p.ServerLimits(max_message_bytes=CAMPAIGN_MAX_MESSAGE_BYTES),
        hello_timeout_s=CAMPAIGN_HELLO_TIMEOUT_S,
        max_streams=64,  # attackers + the healthy stream + sessions still closing
        # Every attacker comes from 127.0.0.1: the per-address limits (tested on their
        # own in tests/server, and by the targeted cases) would refuse the campaign's
        # own concurrency.
        max_streams_per_address=64,
        max_pending_hellos=64,
        max_pending_hellos_per_address=64,
    )


def plan_cases(cases: int, seed: int) -> list[str]:
    """The kind of every case, drawn by weight from ``seed``."""
    kinds = list(CASES)
    weights = [CASES[kind][0] for kind in kinds]
    return random.Random(seed).choices(kinds, weights, k=cases)


def case_rng(seed: int, index: int) -> random.Random:
    """Each case's own generator: a single case replays alone, in any order."""
    return random.Random(seed * 1_000_003 + index)


@dataclass(slots=True)
class CaseTally:
    outcomes: dict[str, Counter[str]] = field(default_factory=dict)
    anomalies: list[str] = field(default_factory=list)
    anomaly_count: int = 0
    anomaly_kinds: Counter[str] = field(default_factory=Counter)  # by what went wrong

    def add(self, index: int, kind: str, label: str, anomaly: str | None) -> None:
        self.outcomes.setdefault(kind, Counter())[label] += 1
        if anomaly is not None:
            self.anomaly_count += 1
            # "stream (truncate): 1 of 3 pts unanswered" -> "stream_damaged: pts unanswered"
            what = anomaly.split(": ", 1)[-1].split(" (")[0]
            self.anomaly_kinds[f"{kind}: {re.sub(r'[0-9]+', 'N', what)}"] += 1
            if len(self.anomalies) < 20:
                self.anomalies.append(f"case {index}: {anomaly}")


async def run_attackers(
    ctx: CaseContext, kinds: list[str], seed: int, concurrency: int
) -> CaseTally:
    tally = CaseTally()
    pending = iter(enumerate(kinds))  # shared by the workers: each takes the next case
    started = time.monotonic()
    last_report = [started]

    async def worker() -> None:
        for index, kind in pending:
            label, anomaly = await run_case(ctx, kind, case_rng(seed, index), CASE_TIMEOUT_S)
            tally.add(index, kind, label, anomaly)
            now = time.monotonic()
            if now - last_report[0] >= 5.0:
                last_report[0] = now
                done = sum(sum(c.values()) for c in tally.outcomes.values())
                _progress(f"{done}/{len(kinds)} cases, {now - started:.0f} s")

    await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    return tally


async def _wait_sessions_released(server: Server, timeout_s: float = 15.0) -> int:
    deadline = time.monotonic() + timeout_s
    while server.sessions and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    # A released session's decoder thread exits right after its executor's shutdown.
    await asyncio.sleep(0.2)
    return len(server.sessions)


def thread_census() -> dict[str, int]:
    """Live threads by name prefix (``decode-12_0`` → ``decode``)."""
    return dict(Counter(t.name.split("-")[0].split("_")[0] for t in threading.enumerate()))


async def probe_round_trip(port: int, clip: tuple[ClipUnit, ...]) -> bool:
    """hello → Ready → keyframe → Result: the server is alive and serving."""
    stream = HealthyStream(port, clip, frames=1)
    try:
        await stream.start()
        run = await stream.finish(timeout_s=10.0)
    except (OSError, ConnectionClosed, RuntimeError, TimeoutError):
        return False
    answers = run.answers.get(0, [])
    return len(answers) == 1 and isinstance(answers[0], p.Result)


async def _campaign(
    detector: Detector,
    clip: tuple[ClipUnit, ...],
    cases: int,
    seed: int,
    concurrency: int,
    targeted: tuple[Any, int] | None = None,
) -> dict[str, Any]:
    audit = LogAudit()
    loop = asyncio.get_running_loop()
    previous_handler = loop.get_exception_handler()
    loop.set_exception_handler(audit.loop_exception)
    try:
        with audit_logs(audit):
            async with Server(campaign_config(), detector) as server:
                report = await _run_phases(server, clip, cases, seed, concurrency, audit)
            if targeted is not None:
                from shelf_stream.bench.fuzz_targeted import run_targeted

                clips, frames = targeted
                _progress(f"targeted cases: {frames} healthy frames per run")
                report["targeted"] = await run_targeted(detector, clips, frames)
    finally:
        loop.set_exception_handler(previous_handler)
    report["log"] = {
        "levels": dict(audit.levels),
        "unhandled_exceptions": audit.unhandled,
        "tracebacks": audit.tracebacks,
        "errors_without_traceback": audit.errors_without_traceback,
        "loop_exception_handler_calls": audit.loop_exceptions[:10],
        "warning_kinds": dict(audit.warnings.most_common(15)),
    }
    report["unhandled_exceptions"] = audit.unhandled
    report["ok"] = _verdict(report)
    return report


async def _run_phases(
    server: Server,
    clip: tuple[ClipUnit, ...],
    cases: int,
    seed: int,
    concurrency: int,
    audit: LogAudit,
) -> dict[str, Any]:
    _progress(f"baseline: the healthy clip alone ({2 * len(clip)} frames)")
    baseline_stream = HealthyStream(server.port, clip, frames=2 * len(clip))
    await baseline_stream.start()
    baseline = await baseline_stream.finish()
    await _wait_sessions_released(server)
    threads_before = thread_census()

    config = server.config
    ctx = CaseContext(
        port=server.port, clip=clip, width=CLIP_WIDTH, height=CLIP_HEIGHT, fps=CLIP_FPS,
        max_message_bytes=config.limits.max_message_bytes,
        hello_timeout_s=config.hello_timeout_s,
        max_messages_per_s=config.max_messages_per_s,
        session_open=lambda port: session_open(server, port),
    )  # fmt: skip
    _progress(f"campaign: {cases} cases, {concurrency} attackers at a time, seed {seed}")
    healthy = HealthyStream(server.port, clip)
    await healthy.start()
    started = time.monotonic()
    tally = await run_attackers(ctx, plan_cases(cases, seed), seed, concurrency)
    campaign_s = time.monotonic() - started
    attacked = await healthy.finish()

    sessions_left = await _wait_sessions_released(server)
    threads_after = thread_census()
    alive = await probe_round_trip(server.port, clip)
    return {
        "cases": cases,
        "seed": seed,
        "concurrency": concurrency,
        "duration_s": round(campaign_s, 1),
        "cases_per_s": round(cases / campaign_s, 1) if campaign_s else None,
        "server_crashes": 0 if alive else 1,
        "probe_round_trip": alive,
        "healthy": check_healthy(attacked)
        | {"baseline": check_healthy(baseline) | baseline_consistency(baseline, len(clip))},
        "detections": compare_detections(baseline, attacked, len(clip)),
        "threads": {
            "before": threads_before,
            "after": threads_after,
            "leaked_decoder_threads": threads_after.get("decode", 0),
            "sessions_left": sessions_left,
        },
        "anomalies": tally.anomaly_count,
        "anomaly_examples": tally.anomalies,
        "anomalies_by_kind": dict(tally.anomaly_kinds.most_common()),
        "kinds": {
            kind: {"cases": sum(c.values()), "outcomes": dict(c.most_common())}
            for kind, c in sorted(tally.outcomes.items())
        },
    }


def session_open(server: Server, port: int) -> bool:
    """Whether the server still holds a connection from our local ``port`` (streaming,
    or still waiting for its hello)."""
    waiting = (pending.session for pending in server.pending.values())
    return any(s.peer.endswith(f":{port}") for s in (*server.sessions, *waiting))


def _verdict(report: dict[str, Any]) -> bool:
    healthy = report["healthy"]
    return (
        report["server_crashes"] == 0
        and report["unhandled_exceptions"] == 0
        and healthy["lost"] == 0
        and healthy["answered_twice"] == 0
        and healthy["drops_not_from_load"] == 0
        and report["detections"]["mismatched_frames"] == 0
        and report["detections"]["compared_frames"] > 0
        and report["threads"]["leaked_decoder_threads"] == 0
        and report["threads"]["sessions_left"] == 0
        and report["anomalies"] == 0
        and all(report.get("targeted", {}).get("ok", {}).values())
    )


# --------------------------------------------------------------------- report


def format_report(report: dict[str, Any]) -> str:
    healthy, det, threads = report["healthy"], report["detections"], report["threads"]
    lines = [
        f"shelf-bench fuzz: {report['cases']} cases (seed {report['seed']}, "
        f"{report['concurrency']} at a time) in {report['duration_s']} s "
        f"({report['cases_per_s']} cases/s)",
        f"  server crashes        {report['server_crashes']}  (probe round trip after the "
        f"campaign: {'ok' if report['probe_round_trip'] else 'FAILED'})",
        f"  unhandled exceptions  {report['unhandled_exceptions']}",
        f"  healthy stream        {healthy['frames_sent']} frames sent, {healthy['results']} "
        f"results, dropped {healthy['dropped'] or 'none'}, lost {healthy['lost']}, "
        f"answered twice {healthy['answered_twice']}, "
        f"drops not from load {healthy['drops_not_from_load']}",
        f"  same detections       {det['compared_frames'] - det['mismatched_frames']}/"
        f"{det['compared_frames']} frames compared with the baseline "
        f"(lowest IoU {det['lowest_iou']}, largest score diff {det['largest_score_diff']})",
        f"  threads               leaked decoder threads {threads['leaked_decoder_threads']}, "
        f"sessions left {threads['sessions_left']}; before {threads['before']}, "
        f"after {threads['after']}",
        f"  protocol anomalies    {report['anomalies']}",
    ]
    lines += [f"    {n:>5}  {what}" for what, n in report["anomalies_by_kind"].items()]
    lines += [f"    e.g. {example}" for example in report["anomaly_examples"][:5]]
    lines += [f"    traceback: {tb.splitlines()[0]}" for tb in report["log"]["tracebacks"]]
    if "targeted" in report:
        from shelf_stream.bench.fuzz_targeted import format_targeted

        lines += format_targeted(report["targeted"])
    lines.append("  outcomes by kind:")
    for kind, entry in report["kinds"].items():
        outcomes = ", ".join(f"{label}: {n}" for label, n in list(entry["outcomes"].items())[:4])
        lines.append(f"    {kind:<20} {entry['cases']:>5}  {outcomes}")
    lines.append(f"verdict: {'PASS' if report['ok'] else 'FAIL'}")
    return "\n".join(lines)
