"""``shelf-bench soak``: the analysis on literal series, and a short real run of both
processes with ``--save`` and ``--results``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from shelf_stream.bench.soak import (
    ProcessSample,
    exactly_once,
    latency_creep,
    latency_windows,
    memory_trend,
    run_soak,
    sample_process,
)
from shelf_stream.cli import build_bench_parser


def _samples(rss: list[float], period_s: float = 5.0) -> list[ProcessSample]:
    return [ProcessSample(i * period_s, mb, 12, 20) for i, mb in enumerate(rss)]


def test_memory_trend_after_the_warm_up() -> None:
    flat = _samples([300.0] * 6 + [150.0] * 120)  # the first 30 s allocate once
    trend = memory_trend(flat, warmup_s=30.0)
    assert trend["growth_mb"] == 0.0 and trend["slope_mb_per_min"] == 0.0
    assert trend["threads"] == [12, 12] and trend["fds"] == [20, 20]
    leaking = _samples([150.0 + 0.2 * i for i in range(126)])  # 2.4 MB a minute
    trend = memory_trend(leaking, warmup_s=30.0)
    assert trend["slope_mb_per_min"] == pytest.approx(2.4, rel=0.01)
    assert trend["growth_mb"] > 20
    assert memory_trend(_samples([1.0, 2.0]), warmup_s=0.0)["slope_mb_per_min"] is None


def test_threads_that_come_and_go_are_flat_a_count_that_stays_up_is_not() -> None:
    blips = [ProcessSample(i * 5.0, 100.0, 22 if i % 17 == 0 else 20, 10) for i in range(126)]
    trend = memory_trend(blips, warmup_s=30.0)
    assert trend["threads"] == [20, 22] and trend["threads_growth"] == 0.0
    leak = [ProcessSample(i * 5.0, 100.0, 20 + i // 20, 10 + i // 10) for i in range(126)]
    trend = memory_trend(leak, warmup_s=30.0)
    assert trend["threads_growth"] > 0 and trend["fds_growth"] > 0


def test_latency_windows_and_creep() -> None:
    lines = [
        {"pts": i, "time_s": i / 10, "dropped": False, "latency_ms": 50.0 + (i >= 100) * 10}
        for i in range(200)
    ] + [{"pts": 999, "time_s": 19.95, "dropped": True, "latency_ms": None}]
    series = latency_windows(lines, window_s=10.0)
    assert [w["frames"] for w in series] == [100, 101]
    assert [w["results"] for w in series] == [100, 100]
    creep = latency_creep(series)
    assert (creep["p95_first_ms"], creep["p95_last_ms"]) == (50.0, 60.0)
    assert creep["p95_change"] == pytest.approx(0.2)
    # A warm-up of its own: the windows proper start after it, and creep ignores it.
    slow_start = [{**line, "latency_ms": 500.0} if line["time_s"] < 2 else line for line in lines]
    series = latency_windows(slow_start, window_s=10.0, warmup_s=2.0)
    assert series[0]["warmup"] and series[0]["frames"] == 20 and series[0]["p95_ms"] == 500.0
    assert [w["start_s"] for w in series[1:]] == [2.0, 12.0]
    assert latency_creep(series)["p95_first_ms"] == 60.0, "the 500 ms warm-up is left out"


def test_exactly_once_counts_duplicates_and_missing() -> None:
    lines = [{"pts": pts} for pts in (0, 3000, 6000)]
    assert exactly_once(lines, captured=3)["ok"]
    assert not exactly_once(lines, captured=4)["ok"], "a captured pts is missing"
    twice = exactly_once([*lines, {"pts": 3000}], captured=3)
    assert twice["duplicates"] == 1 and not twice["ok"]


def test_sampling_reads_this_process() -> None:
    sample = sample_process(os.getpid(), 1.0)
    assert sample is not None and sample.rss_mb > 10 and sample.threads >= 1 and sample.fds >= 3
    assert sample_process(2**22 + 12345, 1.0) is None


@pytest.mark.timeout(180)
def test_short_soak_of_both_processes(model_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    args = build_bench_parser().parse_args(
        ["soak", "--duration", "6", "--size", "320x240", "--fps", "10", "--window", "2",
         "--sample-period", "1", "--warmup", "1", "--model", str(model_path),
         "--out", str(tmp_path / "files"), "--json", str(out)]
    )  # fmt: skip
    report = run_soak(args)
    assert json.loads(out.read_text()) == report
    assert report["server"]["alive_at_end"]
    assert report["server"]["samples"], "the server was sampled"
    (client,) = report["clients"]
    assert client["exit_code"] == 0
    assert client["samples"] and all(row[1] > 0 and row[2] > 0 for row in client["samples"])
    assert client["exactly_once"]["ok"], client["exactly_once"]
    # The writer may skip frames when it is behind (a loaded machine), never add any.
    video = client["video"]
    assert video["plays"] and 0 < video["frames"] <= video["results"]
    assert client["exit_delay_s"] is not None and client["exit_delay_s"] < 10
    assert client["latency_windows"] and sum(w["results"] for w in client["latency_windows"])
    verdict = report["verdict"]
    assert verdict["client 0 every pts once"] and verdict["client 0 MP4 plays to the end"]
    assert "server RSS growth < 10 MB" in verdict
