"""``shelf-bench soak``: server and clients for a long time, as a user runs them; does
anything creep?

One ``shelf-stream serve`` process and ``--streams`` ``shelf-stream send`` processes,
each with ``--save`` and ``--results`` on (the client's heaviest configuration), streaming
the generated scene or a real clip (``--input``, looped) for ``--duration`` seconds.

Sampled every ``--sample-period`` seconds for every process: resident memory (RSS),
threads and open file descriptors (Linux ``/proc``). Afterwards, from each client's
files:

- the RSS slope (MB per minute, least squares) after ``--warmup`` seconds, and the
  growth between the first and the last minute of the run;
- threads and descriptors after the warm-up: their range (flat: one value);
- latency p50/p95 per ``--window`` of capture time, from the results file, and the
  last full window's p95 against the first one's (creep);
- every captured pts exactly once in the results file (against the client's own count);
- the annotated MP4 decoded to its end: frames and duration against the results;
- how long each client took to exit after its duration.

Nothing is asserted; the report prints the figures and a verdict per criterion.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shelf_stream.bench.loopback import free_port, start_server
from shelf_stream.bench.report import progress, publish

DEFAULT_DURATION_S = 300.0
DEFAULT_STREAMS = 1
DEFAULT_SIZE = (640, 480)
DEFAULT_FPS = 15.0
DEFAULT_WINDOW_S = 60.0
DEFAULT_SAMPLE_PERIOD_S = 5.0
DEFAULT_WARMUP_S = 30.0
#: Flat enough: RSS grows by less than this between the first and the last minute...
MAX_RSS_GROWTH_MB = 10.0
#: ...and the last full window's latency p95 is at most this share above the first one's.
MAX_P95_CHANGE = 0.10
#: A window counts as full with at least this share of the median window's frames.
FULL_WINDOW_SHARE = 0.8
#: A client should exit within this long after its duration.
MAX_EXIT_DELAY_S = 2.0


def add_soak_parser(subparsers: Any) -> argparse.ArgumentParser:
    from shelf_stream.cli import parse_size

    parser = subparsers.add_parser(
        "soak",
        help="server and clients (--save, --results) for a long time: memory, threads, "
        "files and latency over time",
    )
    parser.add_argument(
        "--duration", type=float, default=DEFAULT_DURATION_S, help="seconds (default 300)"
    )
    parser.add_argument("--streams", type=int, default=DEFAULT_STREAMS, help="clients (default 1)")
    parser.add_argument(
        "--size", type=parse_size, default=DEFAULT_SIZE, help="frame size WxH (default 640x480)"
    )
    parser.add_argument("--fps", type=float, default=DEFAULT_FPS, help="per stream (default 15)")
    parser.add_argument("--input", type=Path, help="a video file to loop (default: the scene)")
    parser.add_argument("--codec", choices=["hevc", "h264"], default="hevc")
    parser.add_argument(
        "--window", type=float, default=DEFAULT_WINDOW_S, help="seconds per latency window (60)"
    )
    parser.add_argument(
        "--sample-period", type=float, default=DEFAULT_SAMPLE_PERIOD_S,
        help="seconds between process samples (default 5)",
    )  # fmt: skip
    parser.add_argument(
        "--warmup", type=float, default=DEFAULT_WARMUP_S,
        help="seconds before the memory slope counts (default 30)",
    )  # fmt: skip
    parser.add_argument("--model", help="ONNX model (default: the usual lookup)")
    parser.add_argument(
        "--out", type=Path, default=Path("bench-out/soak"),
        help="folder for each client's results, video and summary (default bench-out/soak)",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, help="write the report here")
    return parser


# ------------------------------------------------------------------------------ sampling


@dataclass(frozen=True, slots=True)
class ProcessSample:
    t_s: float  # since the run started
    rss_mb: float
    threads: int
    fds: int


def sample_process(pid: int, t_s: float) -> ProcessSample | None:
    """RSS, threads and open descriptors of ``pid`` (Linux ``/proc``); None if gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    try:
        rss_kb = int(fields["VmRSS"].split()[0])
        threads = int(fields["Threads"])
    except (KeyError, ValueError):
        return None
    return ProcessSample(t_s, rss_kb / 1024, threads, fds)


@dataclass(slots=True)
class Watched:
    """One process of the soak and its samples."""

    name: str
    process: subprocess.Popen[bytes]
    samples: list[ProcessSample] = field(default_factory=list)
    ended_at_s: float | None = None  # since the run started
    ended_unix_s: float | None = None


# -------------------------------------------------------------------------------- run


def run_soak(args: argparse.Namespace) -> dict[str, Any]:
    """Run the soak; prints a readable report and returns (and writes) the JSON one."""
    width, height = args.size
    args.out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    source = f"{args.input}" if args.input else "the scene"
    _progress(f"server + {args.streams} clients of {width}x{height} @ {args.fps:g} fps, {source}")
    server = Watched("server", start_server(port, args.model))
    clients: list[Watched] = []
    started = time.monotonic()
    try:
        clients = [
            Watched(f"client {index}", _start_client(args, port, index))
            for index in range(args.streams)
        ]
        _watch([server, *clients], clients, started, args)
        server_alive = server.process.poll() is None
    finally:
        for watched in [*clients, server]:
            if watched.process.poll() is None:
                watched.process.terminate()
        for watched in [*clients, server]:
            try:
                watched.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                watched.process.kill()
    report = build_report(args, server, clients, server_alive)
    return publish(format_report(report), report, args.json)


def _client_files(args: argparse.Namespace, index: int) -> dict[str, Path]:
    return {
        kind: args.out / f"stream-{index}.{ext}"
        for kind, ext in (
            ("results", "jsonl"),
            ("video", "mp4"),
            ("summary", "json"),
            ("log", "log"),
        )
    }


def _start_client(args: argparse.Namespace, port: int, index: int) -> subprocess.Popen[bytes]:
    width, height = args.size
    files = _client_files(args, index)
    source = ["--input", str(args.input), "--loop"] if args.input else ["--source", "scene"]
    command = [
        sys.executable, "-m", "shelf_stream", "--log-level", "WARNING", "send",
        "--url", f"ws://127.0.0.1:{port}", *source, "--size", f"{width}x{height}",
        "--fps", f"{args.fps:g}", "--codec", args.codec, "--duration", f"{args.duration:g}",
        "--results", str(files["results"]), "--save", str(files["video"]),
        "--json", str(files["summary"]), "--no-status",
    ]  # fmt: skip
    with files["log"].open("wb") as log:  # its summary and warnings, apart from the report
        return subprocess.Popen(command, env=os.environ.copy(), stdout=log, stderr=log)


def _watch(
    processes: list[Watched], clients: list[Watched], started: float, args: argparse.Namespace
) -> None:
    """Sample until every client ended (or its time is well past)."""
    give_up = started + args.duration + 60.0
    # Not at once: a process sampled the instant after exec is the loader's first pages
    # (RSS 0.0 MB, 1 thread), not the program.
    next_sample = started + args.sample_period
    next_progress = started + max(30.0, args.sample_period)
    while time.monotonic() < give_up:
        now = time.monotonic()
        for watched in clients:
            if watched.ended_at_s is None and watched.process.poll() is not None:
                watched.ended_at_s, watched.ended_unix_s = now - started, time.time()
        if all(w.ended_at_s is not None for w in clients):
            return
        if now >= next_sample:
            for watched in processes:
                if watched.ended_at_s is None:
                    sample = sample_process(watched.process.pid, now - started)
                    if sample is not None:
                        watched.samples.append(sample)
            next_sample += args.sample_period
        if now >= next_progress:
            rss = ", ".join(
                f"{w.name} {w.samples[-1].rss_mb:.0f} MB" for w in processes if w.samples
            )
            _progress(f"{now - started:.0f}/{args.duration:g} s: {rss}")
            next_progress += max(30.0, args.sample_period)
        time.sleep(0.05)  # sees a client's exit within 50 ms


def _progress(text: str) -> None:
    progress("soak:", text)


# ----------------------------------------------------------------------------- analysis


def memory_trend(samples: list[ProcessSample], warmup_s: float) -> dict[str, Any]:
    """RSS slope (MB/min, least squares) after the warm-up, growth from the first to the
    last minute (mean of each), and threads and descriptors: their range, and their
    median in the first and the last minute (a thread that comes and goes, as an
    encoder's pool does when it re-opens, is no leak; a count that stays up is)."""
    warm = [s for s in samples if s.t_s >= warmup_s]
    if len(warm) < 3:
        return {"samples": len(warm), "slope_mb_per_min": None, "growth_mb": None}
    t = np.array([s.t_s for s in warm])
    rss = np.array([s.rss_mb for s in warm])
    slope = float(np.polyfit(t / 60, rss, 1)[0])
    first_minute, last_minute = t <= t[0] + 60, t >= t[-1] - 60
    first, last = rss[first_minute].mean(), rss[last_minute].mean()
    threads = np.array([s.threads for s in warm])
    fds = np.array([s.fds for s in warm])
    return {
        "samples": len(warm),
        "from_s": round(float(t[0]), 1),
        "rss_first_minute_mb": round(float(first), 1),
        "rss_last_minute_mb": round(float(last), 1),
        "growth_mb": round(float(last - first), 1),
        "slope_mb_per_min": round(slope, 3),
        "rss_max_mb": round(float(rss.max()), 1),
        "threads": [int(threads.min()), int(threads.max())],
        "fds": [int(fds.min()), int(fds.max())],
        "threads_growth": float(np.median(threads[last_minute]) - np.median(threads[first_minute])),
        "fds_growth": float(np.median(fds[last_minute]) - np.median(fds[first_minute])),
    }


def read_results(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with path.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def latency_windows(
    lines: list[dict[str, Any]], window_s: float, warmup_s: float = 0.0
) -> list[dict[str, Any]]:
    """Per window of capture time (the pts): frames, results, latency p50 and p95. The
    first ``warmup_s`` (the probe's start, the encoder settling) are a window of their
    own, marked ``warmup``; the windows proper start after it."""
    buckets: dict[int, list[dict[str, Any]]] = {}
    for line in lines:
        after = line["time_s"] - warmup_s
        buckets.setdefault(-1 if after < 0 else int(after // window_s), []).append(line)
    series = []
    for index in sorted(buckets):
        bucket = buckets[index]
        latencies = [x["latency_ms"] for x in bucket if not x["dropped"] and x["latency_ms"]]
        series.append(
            {
                "start_s": 0.0 if index < 0 else round(warmup_s + index * window_s, 1),
                "warmup": index < 0,
                "frames": len(bucket),
                "results": len(latencies),
                "p50_ms": _percentile(latencies, 50),
                "p95_ms": _percentile(latencies, 95),
            }
        )
    return series


def latency_creep(series: list[dict[str, Any]]) -> dict[str, Any]:
    """The first and the last full window's p95 after the warm-up (a window the run only
    began or ended in has fewer frames, and says little)."""
    series = [w for w in series if not w.get("warmup")]
    if not series:
        return {"full_windows": 0, "p95_first_ms": None, "p95_last_ms": None}
    median = float(np.median([w["frames"] for w in series]))
    full = [w for w in series if w["frames"] >= FULL_WINDOW_SHARE * median and w["results"]]
    if not full:
        return {"full_windows": 0, "p95_first_ms": None, "p95_last_ms": None}
    first, last = full[0]["p95_ms"], full[-1]["p95_ms"]
    return {
        "full_windows": len(full),
        "p95_first_ms": first,
        "p95_last_ms": last,
        "p95_change": round((last - first) / first, 3) if first else None,
    }


def exactly_once(lines: list[dict[str, Any]], captured: int | None) -> dict[str, Any]:
    counts = Counter(line["pts"] for line in lines)
    duplicates = sum(n - 1 for n in counts.values() if n > 1)
    return {
        "lines": len(lines),
        "distinct_pts": len(counts),
        "duplicates": duplicates,
        "captured": captured,
        "ok": duplicates == 0 and captured is not None and len(counts) == captured,
    }


def check_video(path: Path, lines: list[dict[str, Any]]) -> dict[str, Any]:
    """Decode the MP4 to its end: frames and duration against the results file."""
    import av

    results = [line for line in lines if not line["dropped"]]
    report: dict[str, Any] = {"path": str(path), "results": len(results)}
    if not path.is_file():
        return report | {"plays": False, "error": "missing"}
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            times = [frame.time for frame in container.decode(stream) if frame.time is not None]
    except Exception as exc:  # any failure to play is the finding
        return report | {"plays": False, "error": f"{type(exc).__name__}: {exc}"}
    span = (times[-1] - times[0]) if times else 0.0
    expected = (results[-1]["time_s"] - results[0]["time_s"]) if results else 0.0
    return report | {
        "plays": bool(times),
        "frames": len(times),
        "duration_s": round(span, 3),
        "results_span_s": round(expected, 3),
        "bytes": path.stat().st_size,
    }


def build_report(
    args: argparse.Namespace, server: Watched, clients: list[Watched], server_alive: bool
) -> dict[str, Any]:
    width, height = args.size
    report: dict[str, Any] = {
        "duration_s": args.duration,
        "streams": args.streams,
        "size": f"{width}x{height}",
        "fps": args.fps,
        "source": str(args.input) if args.input else "scene",
        "window_s": args.window,
        "warmup_s": args.warmup,
        "server": {"alive_at_end": server_alive}
        | {"memory": memory_trend(server.samples, args.warmup)}
        | {"samples": [_sample_row(s) for s in server.samples]},
        "clients": [],
    }
    for index, client in enumerate(clients):
        files = _client_files(args, index)
        lines = read_results(files["results"])
        summary = _read_summary(files["summary"])
        series = latency_windows(lines, args.window, args.warmup)
        report["clients"].append(
            {
                "name": client.name,
                "exit_code": client.process.returncode,
                "exit_delay_s": _exit_delay_s(client, summary, args.duration),
                "memory": memory_trend(client.samples, args.warmup),
                "latency_windows": series,
                "latency": latency_creep(series),
                "exactly_once": exactly_once(lines, summary.get("frames")),
                "video": check_video(files["video"], lines),
                "summary": {k: summary.get(k) for k in ("frames", "results", "fps", "lost")},
                "samples": [_sample_row(s) for s in client.samples],
            }
        )
    report["verdict"] = verdicts(report)
    return report


def verdicts(report: dict[str, Any]) -> dict[str, bool | None]:
    """Each criterion of a healthy soak: True, False, or None (too short to tell)."""
    out: dict[str, bool | None] = {"server alive": report["server"]["alive_at_end"]}
    for name, memory in [("server", report["server"]["memory"])] + [
        (c["name"], c["memory"]) for c in report["clients"]
    ]:
        growth = memory.get("growth_mb")
        out[f"{name} RSS growth < {MAX_RSS_GROWTH_MB:g} MB"] = (
            None if growth is None else growth < MAX_RSS_GROWTH_MB
        )
        threads, fds = memory.get("threads_growth"), memory.get("fds_growth")
        out[f"{name} threads and fds flat"] = (
            None if threads is None or fds is None else threads <= 0 and fds <= 0
        )
    for client in report["clients"]:
        change = client["latency"].get("p95_change")
        full = client["latency"]["full_windows"]
        # Creep is the last window slower than the first; on a shared machine a window
        # can also come out faster, which is no fault (both figures are printed).
        out[f"{client['name']} latency p95 no creep (last <= first + {MAX_P95_CHANGE:.0%})"] = (
            None if change is None or full < 2 else change <= MAX_P95_CHANGE
        )
        out[f"{client['name']} every pts once"] = client["exactly_once"]["ok"]
        video = client["video"]
        out[f"{client['name']} MP4 plays to the end"] = bool(video.get("plays")) and (
            video.get("frames", 0) > 0
            and abs(video.get("duration_s", 0) - video.get("results_span_s", 0)) < 1.0
        )
        delay = client["exit_delay_s"]
        out[f"{client['name']} exits within {MAX_EXIT_DELAY_S:g} s"] = (
            delay is not None and delay <= MAX_EXIT_DELAY_S and client["exit_code"] == 0
        )
    return out


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"shelf-bench soak: server + {report['streams']} client(s) (--save, --results), "
        f"{report['size']} @ {report['fps']:g} fps, {report['source']}, "
        f"{report['duration_s']:g} s",
        f"  {'process':<10} {'RSS 1st min':>11} {'last min':>9} {'growth':>7} "
        f"{'slope/min':>10} {'threads':>8} {'fds':>8}",
    ]
    memories = [("server", report["server"]["memory"])]
    memories += [(c["name"], c["memory"]) for c in report["clients"]]
    for name, memory in memories:
        lines.append(
            f"  {name:<10} {_text(memory.get('rss_first_minute_mb')):>11} "
            f"{_text(memory.get('rss_last_minute_mb')):>9} {_text(memory.get('growth_mb')):>7} "
            f"{_text(memory.get('slope_mb_per_min')):>10} {_range(memory.get('threads')):>8} "
            f"{_range(memory.get('fds')):>8}"
        )
    for client in report["clients"]:
        lines.append(
            f"  {client['name']}: latency per {report['window_s']:g} s of capture time, after "
            f"{report['warmup_s']:g} s of warm-up"
        )
        for w in client["latency_windows"]:
            start = "warm-up " if w.get("warmup") else f"{w['start_s']:>7g}s"
            lines.append(
                f"    {start}  frames {w['frames']:>6}  results {w['results']:>6}  "
                f"p50 {_text(w['p50_ms']):>6} ms  p95 {_text(w['p95_ms']):>6} ms"
            )
        once, video = client["exactly_once"], client["video"]
        lines.append(
            f"    results file: {once['lines']} lines, {once['distinct_pts']} distinct pts, "
            f"{once['duplicates']} duplicates, {_text(once['captured'])} captured"
        )
        lines.append(
            f"    video: {_text(video.get('frames'))} frames over "
            f"{_text(video.get('duration_s'))} s (results span {_text(video.get('results_span_s'))}"
            f" s, {video['results']} results){'' if video.get('plays') else ' DOES NOT PLAY'}"
        )
        lines.append(
            f"    exit: code {client['exit_code']}, "
            f"{_text(client['exit_delay_s'])} s after its duration"
        )
    lines.append("verdict:")
    for criterion, ok in report["verdict"].items():
        lines.append(f"  {'ok  ' if ok else ('?   ' if ok is None else 'FAIL')} {criterion}")
    return "\n".join(lines)


def _exit_delay_s(client: Watched, summary: dict[str, Any], duration_s: float) -> float | None:
    """From the end of the client's --duration (counted from its first capture) to its exit."""
    started = summary.get("capture_started_unix_s")
    if client.ended_unix_s is None or started is None:
        return None
    return round(client.ended_unix_s - (started + duration_s), 2)


def _read_summary(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text())["summary"])
    except (OSError, ValueError, KeyError):
        return {}


def _sample_row(sample: ProcessSample) -> list[float]:
    return [round(sample.t_s, 1), round(sample.rss_mb, 1), sample.threads, sample.fds]


def _percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


def _range(values: list[int] | None) -> str:
    if not values:
        return "-"
    low, high = values
    return f"{low}" if low == high else f"{low}-{high}"


def _text(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"
