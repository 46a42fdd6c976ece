"""``shelf-bench soak``: a long run of several streams; does anything creep?

One real ``shelf-stream serve`` process (as a user runs it) and ``--streams`` clients
streaming the generated scene for ``--duration`` seconds. Sampled along the way:

* the server's resident memory (RSS) every second;
* per window of ``--window`` seconds (by the frames' capture time, on the clients'
  clock): results, drops and the capture→result latency p50/p99 over all streams.

The verdict is about flatness, not speed: RSS growth between the first and the last
third of the run (MB and %), and the latency p99 of the first against the last full
window. Nothing is asserted; it is a report.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shelf_stream.bench.loopback import free_port, rss_mb, start_server
from shelf_stream.bench.report import progress, publish
from shelf_stream.client.matcher import FrameRecord

DEFAULT_DURATION_S = 300.0
DEFAULT_STREAMS = 2
DEFAULT_SIZE = (640, 480)
DEFAULT_FPS = 10.0
DEFAULT_WINDOW_S = 10.0
RSS_PERIOD_S = 1.0
#: Flat enough: RSS grows by less than this between the first and last third...
FLAT_RSS_GROWTH_PCT = 5.0
#: ...and the last full window's p99 is at most this factor of the first one's.
FLAT_P99_FACTOR = 1.5
#: A window counts as full with at least this share of the median window's frames
#: (the first fills while the clients connect, the last while they finish).
FULL_WINDOW_SHARE = 0.8


def add_soak_parser(subparsers: Any) -> argparse.ArgumentParser:
    from shelf_stream.cli import parse_size

    parser = subparsers.add_parser(
        "soak", help="several streams for a long time: server RSS and latency p99 over time"
    )
    parser.add_argument(
        "--duration", type=float, default=DEFAULT_DURATION_S, help="seconds (default 300)"
    )
    parser.add_argument("--streams", type=int, default=DEFAULT_STREAMS, help="clients (default 2)")
    parser.add_argument(
        "--size", type=parse_size, default=DEFAULT_SIZE, help="frame size WxH (default 640x480)"
    )
    parser.add_argument("--fps", type=float, default=DEFAULT_FPS, help="per stream (default 10)")
    parser.add_argument(
        "--window", type=float, default=DEFAULT_WINDOW_S, help="seconds per window (default 10)"
    )
    parser.add_argument("--model", help="ONNX model (default: the usual lookup)")
    parser.add_argument("--json", type=Path, help="write the report here")
    return parser


@dataclass(slots=True)
class Window:
    """Frames captured within one window, all streams together."""

    latencies_ms: list[float] = field(default_factory=list)
    dropped: int = 0

    @property
    def frames(self) -> int:
        return len(self.latencies_ms) + self.dropped


@dataclass(slots=True)
class SoakRecorder:
    """Buckets every stream's records by capture time; samples the server's RSS."""

    started_at: float
    window_s: float
    windows: dict[int, Window] = field(default_factory=dict)
    rss: list[tuple[float, float]] = field(default_factory=list)  # (seconds in, MB)

    def on_record(self, record: FrameRecord) -> None:
        index = int(max(0.0, record.captured_at - self.started_at) // self.window_s)
        window = self.windows.setdefault(index, Window())
        if record.status == "result" and record.latency_ms is not None:
            window.latencies_ms.append(record.latency_ms)
        else:
            window.dropped += 1

    async def sample_rss(self, pid: int) -> None:
        while True:
            value = rss_mb(pid)
            if value is not None:
                self.rss.append((time.monotonic() - self.started_at, value))
            await asyncio.sleep(RSS_PERIOD_S)


def run_soak(args: argparse.Namespace) -> dict[str, Any]:
    """Run the soak; prints a readable report and returns (and writes) the JSON one."""
    width, height = args.size
    port = free_port()
    _progress(f"starting the server; {args.streams} streams of {width}x{height} @ {args.fps:g}")
    server = start_server(port, args.model)
    try:
        recorder = SoakRecorder(time.monotonic(), args.window)
        summaries = asyncio.run(_run_clients(args, port, server.pid, recorder))
        exit_code = server.poll()  # None: still running, as it should be
    finally:
        server.terminate()
        server.wait(timeout=15)
    report = build_report(args, recorder, summaries, exit_code)
    return publish(format_report(report), report, args.json)


def _progress(text: str) -> None:
    progress("soak:", text)


async def _run_clients(
    args: argparse.Namespace, port: int, pid: int, recorder: SoakRecorder
) -> list[dict[str, Any]]:
    from shelf_stream.client.app import ClientConfig, StreamClient
    from shelf_stream.client.sources import SourceSpec

    width, height = args.size
    config = ClientConfig(
        url=f"ws://127.0.0.1:{port}",
        source=SourceSpec(kind="scene", width=width, height=height, fps=args.fps),
        width=width,
        height=height,
        fps=args.fps,
        duration_s=args.duration,
        status=False,
    )
    sampler = asyncio.create_task(recorder.sample_rss(pid), name="rss")
    progress = asyncio.create_task(_report_progress(recorder, args.duration), name="progress")
    try:
        clients = [StreamClient(config, on_record=recorder.on_record) for _ in range(args.streams)]
        return list(await asyncio.gather(*(client.run() for client in clients)))
    finally:
        for task in (sampler, progress):
            task.cancel()
        await asyncio.gather(sampler, progress, return_exceptions=True)


async def _report_progress(recorder: SoakRecorder, duration_s: float) -> None:
    while True:
        await asyncio.sleep(max(5.0, recorder.window_s))
        elapsed = time.monotonic() - recorder.started_at
        rss = f"{recorder.rss[-1][1]:.0f} MB" if recorder.rss else "?"
        _progress(f"{elapsed:.0f}/{duration_s:g} s, server RSS {rss}")


# --------------------------------------------------------------------- report


def _percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


def window_series(recorder: SoakRecorder) -> list[dict[str, Any]]:
    series = []
    for index in sorted(recorder.windows):
        window = recorder.windows[index]
        start = index * recorder.window_s
        rss = [mb for t, mb in recorder.rss if start <= t < start + recorder.window_s]
        series.append(
            {
                "start_s": round(start, 1),
                "frames": window.frames,
                "results": len(window.latencies_ms),
                "dropped": window.dropped,
                "p50_ms": _percentile(window.latencies_ms, 50),
                "p99_ms": _percentile(window.latencies_ms, 99),
                "rss_mb": round(max(rss), 1) if rss else None,
            }
        )
    return series


def full_windows(series: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Windows with (nearly) as many frames as a typical one, and some results."""
    if not series:
        return []
    median = float(np.median([w["frames"] for w in series]))
    return [w for w in series if w["frames"] >= FULL_WINDOW_SHARE * median and w["results"]]


def rss_flatness(rss: list[tuple[float, float]], warmup_s: float) -> dict[str, Any]:
    """Mean RSS of the first third of the run against the last third, after a warm-up
    (the first frames allocate the decoder's and the runtime's buffers once)."""
    warm = [(t, mb) for t, mb in rss if t >= warmup_s]
    rss = warm if len(warm) >= 3 else rss
    if len(rss) < 3:
        return {
            "first_third_mb": None,
            "last_third_mb": None,
            "growth_mb": None,
            "growth_pct": None,
        }
    third = len(rss) // 3
    first = float(np.mean([mb for _, mb in rss[:third]]))
    last = float(np.mean([mb for _, mb in rss[-third:]]))
    return {
        "first_third_mb": round(first, 1),
        "last_third_mb": round(last, 1),
        "growth_mb": round(last - first, 1),
        "growth_pct": round(100 * (last - first) / first, 2) if first else None,
        "max_mb": round(max(mb for _, mb in rss), 1),
        "from_s": round(rss[0][0], 1),
    }


def latency_flatness(series: list[dict[str, Any]]) -> dict[str, Any]:
    full = full_windows(series)
    if not full:
        return {"p99_first_window_ms": None, "p99_last_window_ms": None, "full_windows": 0}
    first, last = full[0]["p99_ms"], full[-1]["p99_ms"]
    return {
        "p99_first_window_ms": first,
        "p99_last_window_ms": last,
        "p99_change_pct": round(100 * (last - first) / first, 1) if first else None,
        "full_windows": len(full),
    }


def verdict(rss: dict[str, Any], latency: dict[str, Any]) -> str:
    if rss["growth_pct"] is None or latency["p99_first_window_ms"] is None:
        return "too short to tell"
    rising = []
    if rss["growth_pct"] >= FLAT_RSS_GROWTH_PCT:
        rising.append(f"server RSS +{rss['growth_pct']:g} %")
    if latency["p99_last_window_ms"] > FLAT_P99_FACTOR * latency["p99_first_window_ms"]:
        rising.append("latency p99")
    return "flat" if not rising else "rising: " + ", ".join(rising)


def build_report(
    args: argparse.Namespace,
    recorder: SoakRecorder,
    summaries: list[dict[str, Any]],
    server_exit_code: int | None,
) -> dict[str, Any]:
    width, height = args.size
    series = window_series(recorder)
    rss, latency = rss_flatness(recorder.rss, warmup_s=args.window), latency_flatness(series)
    keys = ("frames", "results", "dropped_by_server", "skipped_at_capture", "lost", "fps")
    return {
        "duration_s": args.duration,
        "streams": args.streams,
        "size": f"{width}x{height}",
        "fps": args.fps,
        "window_s": args.window,
        "server_alive_at_end": server_exit_code is None,
        "rss": rss,
        "latency": latency,
        "verdict": verdict(rss, latency),
        "windows": series,
        "rss_samples_mb": [[round(t, 1), round(mb, 1)] for t, mb in recorder.rss],
        "clients": [
            {key: summary.get(key) for key in keys} | {"latency_ms": summary.get("latency_ms")}
            for summary in summaries
        ],
    }


def format_report(report: dict[str, Any]) -> str:
    rss, latency = report["rss"], report["latency"]
    lines = [
        f"shelf-bench soak: {report['streams']} streams of {report['size']} @ {report['fps']:g} "
        f"fps for {report['duration_s']:g} s (windows of {report['window_s']:g} s)",
        f"  {'window':>8} {'frames':>7} {'results':>8} {'dropped':>8} {'p50 ms':>8} "
        f"{'p99 ms':>8} {'RSS MB':>8}",
    ]
    for w in report["windows"]:
        lines.append(
            f"  {w['start_s']:>7g}s {w['frames']:>7} {w['results']:>8} {w['dropped']:>8} "
            f"{_text(w['p50_ms']):>8} {_text(w['p99_ms']):>8} {_text(w['rss_mb']):>8}"
        )
    lines += [
        f"  server RSS (after {_text(rss.get('from_s'))} s): first third "
        f"{_text(rss['first_third_mb'])} MB, last third "
        f"{_text(rss['last_third_mb'])} MB (growth {_text(rss['growth_mb'])} MB, "
        f"{_text(rss['growth_pct'])} %)",
        f"  latency p99: first full window {_text(latency['p99_first_window_ms'])} ms, last "
        f"{_text(latency['p99_last_window_ms'])} ms",
        f"  server alive at the end: {'yes' if report['server_alive_at_end'] else 'NO'}",
        f"verdict: {report['verdict']}",
    ]
    return "\n".join(lines)


def _text(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"
