"""``shelf-bench soak``: a few seconds of one stream give a well-formed report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shelf_stream.bench.soak import rss_flatness, run_soak, verdict
from shelf_stream.cli import build_bench_parser


def test_flatness_compares_thirds_after_the_warm_up() -> None:
    flat = [(float(t), 100.0 + (50.0 if t < 2 else 0.0)) for t in range(12)]
    result = rss_flatness(flat, warmup_s=2.0)
    assert result["growth_mb"] == 0.0 and result["from_s"] == 2.0
    growing = [(float(t), 100.0 + 10 * t) for t in range(12)]
    assert rss_flatness(growing, warmup_s=0.0)["growth_pct"] > 5
    latency = {"p99_first_window_ms": 100.0, "p99_last_window_ms": 110.0}
    assert verdict(rss_flatness(flat, warmup_s=2.0), latency) == "flat"
    assert verdict(rss_flatness(growing, warmup_s=0.0), latency).startswith("rising")


@pytest.mark.timeout(120)
def test_short_soak_reports_series(model_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    args = build_bench_parser().parse_args(
        ["soak", "--duration", "4", "--streams", "1", "--size", "320x240", "--fps", "10",
         "--window", "1", "--model", str(model_path), "--json", str(out)]
    )  # fmt: skip
    report = run_soak(args)
    assert json.loads(out.read_text()) == report
    assert report["server_alive_at_end"]
    assert report["rss_samples_mb"], "the server's RSS was sampled"
    assert all(mb > 0 for _, mb in report["rss_samples_mb"])
    assert report["windows"] and sum(w["results"] for w in report["windows"]) > 0
    for key in ("first_third_mb", "last_third_mb", "growth_mb", "growth_pct"):
        assert key in report["rss"]
    assert {"p99_first_window_ms", "p99_last_window_ms"} <= set(report["latency"])
    assert isinstance(report["verdict"], str)
    assert len(report["clients"]) == 1 and report["clients"][0]["results"] > 0
