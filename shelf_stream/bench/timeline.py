"""``shelf-bench e2e --link-schedule``: the H.265 stream while the link changes under it.

It measures what the network-adaptation issue asks of the stream after each change,
and draws a PNG timeline of target bitrate, achieved throughput, latency and FPS.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shelf_stream import protocol as p
from shelf_stream.bench.link import LinkConfig
from shelf_stream.client.matcher import FrameRecord, Outcome


@dataclass(frozen=True, slots=True)
class Run:
    """What one scheduled run left behind, all times in seconds since the relay started."""

    schedule: Sequence[tuple[float, LinkConfig]]
    records: Sequence[tuple[float, FrameRecord]]  # (capture time, record)
    targets: Sequence[tuple[float, float]]  # (time, encoder target kbit/s)
    throughput: Sequence[tuple[float, float]]  # (bucket start, Mbit/s delivered)
    compute_ms: float  # mean encode + decode + inference
    bytes_per_frame_at: Sequence[tuple[float, float]]  # (capture time, bytes) of sent frames
    duration_s: float


def floor_ms(link: LinkConfig, bytes_per_frame: float, compute_ms: float) -> float:
    return link.rtt_ms + bytes_per_frame * 8 / (link.mbit_per_s * 1e6) * 1000 + compute_ms


def _window(values: Sequence[tuple[float, float]], start: float, end: float) -> list[float]:
    return [v for t, v in values if start <= t < end]


def _rolling_p95(
    latencies: Sequence[tuple[float, float]], start: float, end: float, width_s: float = 1.0
) -> list[tuple[float, float]]:
    """p95 of the latencies captured in each [t - width, t), stepping 100 ms."""
    out = []
    t = start + width_s
    while t <= end:
        window = _window(latencies, t - width_s, t)
        if window:
            out.append((t, float(np.percentile(window, 95))))
        t += 0.1
    return out


def analyse(run: Run) -> dict[str, Any]:
    """The figures of each link change: settling time, ages, recovery, utilisation."""
    latencies = [
        (t, r.latency_ms) for t, r in run.records if r.latency_ms is not None and not r.dropped
    ]
    changes = []
    for index, (at, link) in enumerate(run.schedule):
        until = run.schedule[index + 1][0] if index + 1 < len(run.schedule) else run.duration_s
        sizes = _window(run.bytes_per_frame_at, at, until)
        floor = floor_ms(link, float(np.mean(sizes)) if sizes else 0.0, run.compute_ms)
        change: dict[str, Any] = {
            "at_s": at,
            "link": str(link),
            "floor_ms": round(floor, 1),
            "latency_p95_ms": _p(_window(latencies, at + 2, until), 95),
        }
        p95 = _rolling_p95(latencies, at, until)
        change["back_within_100ms_of_floor_after_s"] = _first_time(p95, at, floor + 100.0)
        change["settled_within_100ms_of_floor_after_s"] = _settling_time(p95, at, floor + 100.0)
        change["utilisation"] = _utilisation(run.throughput, link, at + 2, until)
        drop = _last_drop_before(run.schedule, index)
        if drop is not None:
            # Recovery is measured against the level before the link got slower.
            before = _window(run.targets, max(0.0, drop - 3), drop)
            level = float(np.mean(before)) if before else None
            change["target_before_drop_kbps"] = round(level, 1) if level else None
            change["recovered_to_70pct_after_s"] = _reach_time(run.targets, at, until, level)
        changes.append(change)
    server_age = [r.decode_ms + r.queue_ms for _, r in run.records if r.status is Outcome.RESULT]
    return {
        "changes": changes,
        "max_server_age_at_inference_ms": round(max(server_age), 1) if server_age else None,
        "too_old_drops": sum(r.reason is p.DropReason.TOO_OLD for _, r in run.records),
        "results": sum(r.status is Outcome.RESULT for _, r in run.records),
        "frames": len(run.records),
    }


def _p(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


def _last_drop_before(schedule: Sequence[tuple[float, LinkConfig]], index: int) -> float | None:
    """When the link last got slower, if change ``index`` makes it faster again."""
    if index == 0 or schedule[index][1].mbit_per_s <= schedule[index - 1][1].mbit_per_s:
        return None
    for earlier in range(index - 1, 0, -1):
        if schedule[earlier][1].mbit_per_s < schedule[earlier - 1][1].mbit_per_s:
            return schedule[earlier][0]
    return None


def _first_time(p95: list[tuple[float, float]], start: float, limit: float) -> float | None:
    """Time from ``start`` until the rolling p95 is first under ``limit``."""
    for t, value in p95:
        if value <= limit:
            return round(t - start, 2)
    return None


def _settling_time(p95: list[tuple[float, float]], start: float, limit: float) -> float | None:
    """Time from ``start`` until the rolling p95 is under ``limit`` and stays there."""
    settled_at = None
    for t, value in p95:
        if value > limit:
            settled_at = None
        elif settled_at is None:
            settled_at = t
    return None if settled_at is None else round(settled_at - start, 2)


def _reach_time(
    targets: Sequence[tuple[float, float]], start: float, end: float, level: float | None
) -> float | None:
    if not level:
        return None
    for t, kbps in targets:
        if start <= t < end and kbps >= 0.7 * level:
            return round(t - start, 2)
    return None


def _utilisation(
    throughput: Sequence[tuple[float, float]], link: LinkConfig, start: float, end: float
) -> float | None:
    window = _window(throughput, start, end)
    return round(float(np.mean(window)) / link.mbit_per_s, 3) if window else None


def plot(run: Run, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(11, 9), sharex=True)
    _plot_rates(axes[0], run)
    _plot_latency(axes[1], run)
    _plot_fps(axes[2], run)
    axes[2].set_xlabel("seconds")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _link_steps(run: Run) -> tuple[list[float], list[float]]:
    times = [t for t, _ in run.schedule] + [run.duration_s]
    rates = [link.mbit_per_s * 1000 for _, link in run.schedule]
    return times, [*rates, rates[-1]]


def _plot_rates(ax: Any, run: Run) -> None:
    times, rates = _link_steps(run)
    ax.step(times, rates, where="post", color="black", lw=1, label="link capacity")
    if run.targets:
        t, v = zip(*run.targets, strict=True)
        ax.plot(t, v, color="tab:blue", label="encoder target")
    if run.throughput:
        t, v = zip(*run.throughput, strict=True)
        ax.plot(t, [x * 1000 for x in v], color="tab:orange", alpha=0.6, label="delivered (100 ms)")
    ax.set_ylabel("kbit/s")
    ax.legend(loc="upper right", fontsize=8)


def _plot_latency(ax: Any, run: Run) -> None:
    points = [
        (t, r.latency_ms) for t, r in run.records if r.latency_ms is not None and not r.dropped
    ]
    if points:
        t, v = zip(*points, strict=True)
        ax.scatter(t, v, s=3, color="tab:green", label="capture → result")
    ax.set_yscale("log")
    ax.set_ylabel("latency ms")
    ax.legend(loc="upper right", fontsize=8)


def _plot_fps(ax: Any, run: Run) -> None:
    results = [t for t, r in run.records if r.status is Outcome.RESULT]
    if results:
        edges = np.arange(0, math.ceil(run.duration_s) + 1, 1.0)
        counts, _ = np.histogram(results, bins=edges)
        ax.step(edges[:-1], counts, where="post", color="tab:purple", label="results per second")
    ax.set_ylabel("fps")
    ax.legend(loc="upper right", fontsize=8)
