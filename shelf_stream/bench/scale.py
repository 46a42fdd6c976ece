"""``shelf-bench scale``: how many concurrent streams one server holds, batched or not.

For N = 1, 2, ... up to ``--streams``, one ``shelf-stream serve`` process is started and
N clients stream the built-in scene to it at the same time. A step *holds* when every
stream gets at least 95 % of the offered frame rate back as results and its latency
p95 (capture → result, client clock) stays under ``--budget-ms``. The largest N is the
last one up to which every step held; the sweep stops after two failing steps in a
row (more streams only get worse; one failure alone may be noise on a shared box).

It runs twice in one invocation, so both figures come from the same machine state:

- ``batching``: the model rewritten with a dynamic batch (``engine.onnx_batch``, into
  a temporary directory) and ``--max-batch`` = N (or the given value) with a short
  ``--batch-wait-ms``: the newest frames of all streams go through one ONNX Runtime run;
- ``no_batching``: the model as it is, ``--max-batch 1``: one run per frame.

On a small CPU the clients' encoders share the cores with the server, so the figures
are those of a loaded box, not of an inference server alone: say so when quoting them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shelf_stream.bench.loopback import free_port, start_server
from shelf_stream.bench.report import publish

MIN_FPS_SHARE = 0.95  # a stream "holds" at this share of the offered frame rate


@dataclass(frozen=True, slots=True)
class ScaleMode:
    """One side of the comparison."""

    name: str
    model: Path
    max_batch: int | None  # None: the number of streams of the step
    batch_wait_ms: float


def add_scale_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``scale`` to ``shelf-bench``'s sub-commands."""
    from shelf_stream.cli import parse_size

    parser: argparse.ArgumentParser = subparsers.add_parser(
        "scale", help="largest number of concurrent streams one server holds, batched or not"
    )
    parser.add_argument("--streams", type=int, default=4, help="sweep N = 1 .. this (default 4)")
    parser.add_argument(
        "--max-batch", type=int, help="batching side: max batch (default: N of each step)"
    )
    parser.add_argument(
        "--batch-wait-ms", type=float, default=5.0,
        help="batching side: wait this long for a fuller batch (default 5)",
    )  # fmt: skip
    parser.add_argument("--fps", type=float, default=10.0, help="per stream (default 10)")
    parser.add_argument(
        "--size", type=parse_size, default=(320, 240), help="frame size (default 320x240)"
    )
    parser.add_argument(
        "--duration", type=float, default=10.0, help="seconds per step (default 10)"
    )
    parser.add_argument(
        "--budget-ms", type=float, default=150.0, help="latency p95 budget (default 150)"
    )
    parser.add_argument(
        "--codec", choices=["hevc", "h264"], default="h264",
        help="client codec (default h264: cheaper to encode for N clients on one box)",
    )  # fmt: skip
    parser.add_argument("--bitrate", type=int, default=600, help="kbit/s per stream")
    parser.add_argument(
        "--threads", type=int, default=0, help="server inference threads (default: its own)"
    )
    parser.add_argument("--model", help="ONNX model (default: the usual lookup)")
    parser.add_argument("--json", type=Path, help="write the results here")
    return parser


def stream_holds(summary: dict[str, Any], offered_fps: float, budget_ms: float) -> bool:
    """Whether one stream got its frame rate back within the latency budget."""
    p95 = summary["latency_ms"]["p95"]
    return summary["fps"] >= MIN_FPS_SHARE * offered_fps and p95 is not None and p95 <= budget_ms


def largest_holding(steps: list[dict[str, Any]]) -> int:
    """The largest N such that every step up to N held (0 if even one stream did not)."""
    best = 0
    for step in sorted(steps, key=lambda s: s["streams"]):
        if not step["holds"]:
            break
        best = step["streams"]
    return best


def _stream_row(summary: dict[str, Any], offered_fps: float, budget_ms: float) -> dict[str, Any]:
    return {
        "fps": summary["fps"],
        "latency_p50_ms": summary["latency_ms"]["p50"],
        "latency_p95_ms": summary["latency_ms"]["p95"],
        "results": summary["results"],
        "dropped_by_server": summary["dropped_by_server"],
        "skipped_at_capture": summary["skipped_at_capture"],
        "infer_ms_mean": summary["infer_ms_mean"],
        "queue_ms_mean": summary["queue_ms_mean"],
        "holds": stream_holds(summary, offered_fps, budget_ms),
    }


async def _run_clients(args: argparse.Namespace, port: int, n: int) -> list[dict[str, Any]]:
    from shelf_stream.client.adaptation import AdaptationConfig
    from shelf_stream.client.app import ClientConfig, StreamClient
    from shelf_stream.client.connection import ConnectionConfig
    from shelf_stream.client.sources import SourceSpec

    width, height = args.size
    configs = [
        ClientConfig(
            url=f"ws://127.0.0.1:{port}",
            source=SourceSpec(kind="scene", width=width, height=height, fps=args.fps),
            codec=args.codec,
            width=width,
            height=height,
            fps=args.fps,
            bitrate_kbps=args.bitrate,
            duration_s=args.duration,
            status=False,
            probe=False,  # loopback: nothing to learn, and N probes would skew the start
            # Fixed load: the question is what the server holds.
            adaptation=AdaptationConfig(enabled=False),
            connection=ConnectionConfig(reconnect=None),
        )
        for _ in range(n)
    ]
    return list(await asyncio.gather(*(StreamClient(config).run() for config in configs)))


def run_step(args: argparse.Namespace, mode: ScaleMode, n: int) -> dict[str, Any]:
    """One server, ``n`` concurrent streams; per-stream rates and latencies."""
    max_batch = mode.max_batch or n
    extra = ["--max-batch", str(max_batch), "--batch-wait-ms", str(mode.batch_wait_ms)]
    extra += ["--max-streams-per-address", str(max(8, n))]
    if args.threads:
        extra += ["--threads", str(args.threads)]
    port = free_port()
    server = start_server(port, str(mode.model), extra)
    try:
        summaries = asyncio.run(_run_clients(args, port, n))
    finally:
        server.terminate()
        with contextlib.suppress(Exception):
            server.wait(timeout=15)
    streams = [_stream_row(s, args.fps, args.budget_ms) for s in summaries]
    return {
        "streams": n,
        "max_batch": max_batch,
        "batch_wait_ms": mode.batch_wait_ms,
        "holds": all(row["holds"] for row in streams),
        "total_fps": round(sum(row["fps"] for row in streams), 2),
        "worst_fps": min(row["fps"] for row in streams),
        "worst_p95_ms": _worst_p95([row["latency_p95_ms"] for row in streams]),
        "per_stream": streams,
    }


def _worst_p95(values: list[float | None]) -> float | None:
    """The highest p95; None when a stream got no result at all (nothing to measure)."""
    return None if any(v is None for v in values) else max(v for v in values if v is not None)


def sweep(args: argparse.Namespace, mode: ScaleMode) -> dict[str, Any]:
    steps: list[dict[str, Any]] = []
    for n in range(1, args.streams + 1):
        step = run_step(args, mode, n)
        steps.append(step)
        print(
            f"{mode.name:<12} N={n}: {'holds' if step['holds'] else 'FAILS'}  "
            f"worst {step['worst_fps']} fps, worst p95 {step['worst_p95_ms']} ms, "
            f"total {step['total_fps']} fps",
            flush=True,
        )
        # Two failures in a row end the sweep: more streams on the same box only do
        # worse, and one failure alone may be another process's burst on a small box.
        if len(steps) >= 2 and not steps[-1]["holds"] and not steps[-2]["holds"]:
            break
    return {"max_streams": largest_holding(steps), "steps": steps}


def run_scale(args: argparse.Namespace) -> dict[str, Any]:
    """The whole comparison; prints one line per step and returns the report."""
    from shelf_stream.engine.models import resolve_model
    from shelf_stream.engine.onnx_batch import make_dynamic_batch

    model = resolve_model(args.model)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="shelf-scale-") as tmp:
        dynamic = Path(tmp) / f"{model.stem}_dynamic_batch.onnx"
        make_dynamic_batch(model, dynamic)
        modes = [
            ScaleMode("batching", dynamic, args.max_batch, args.batch_wait_ms),
            ScaleMode("no_batching", model, 1, 0.0),
        ]
        results = {mode.name: sweep(args, mode) for mode in modes}
    width, height = args.size
    report = {
        "offered": {"fps": args.fps, "size": f"{width}x{height}", "codec": args.codec},
        "budget_ms": args.budget_ms,
        "duration_s": args.duration,
        "model": str(model),
        **results,
        "wall_s": round(time.monotonic() - started, 1),
    }
    verdict = (
        f"largest N holding {args.fps:g} fps (>= {MIN_FPS_SHARE:.0%}) with p95 <= "
        f"{args.budget_ms:g} ms: batching {results['batching']['max_streams']}, "
        f"no batching {results['no_batching']['max_streams']}"
    )
    return publish(verdict, report, args.json)
