"""``shelf-bench scale``: the pass/fail rules, and one tiny real sweep (a server
process and a client on loopback, batched and unbatched)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from shelf_stream.bench.scale import largest_holding, run_scale, stream_holds
from shelf_stream.cli import build_bench_parser


def _summary(fps: float, p95: float | None) -> dict[str, Any]:
    return {"fps": fps, "latency_ms": {"p50": None, "p95": p95, "p99": None}}


def test_a_stream_holds_at_95_percent_of_its_rate_within_the_budget() -> None:
    assert stream_holds(_summary(9.5, 149.0), offered_fps=10, budget_ms=150)
    assert not stream_holds(_summary(9.4, 20.0), offered_fps=10, budget_ms=150)
    assert not stream_holds(_summary(10.0, 151.0), offered_fps=10, budget_ms=150)
    assert not stream_holds(_summary(10.0, None), offered_fps=10, budget_ms=150)


def test_largest_holding_needs_every_smaller_step_to_hold() -> None:
    steps = [{"streams": 1, "holds": True}, {"streams": 2, "holds": False},
             {"streams": 3, "holds": True}]  # fmt: skip
    assert largest_holding(steps) == 1
    assert largest_holding([{"streams": 1, "holds": False}]) == 0


def _parse(argv: list[str]) -> argparse.Namespace:
    return build_bench_parser().parse_args(["scale", *argv])


def test_defaults_are_small_enough_for_a_small_box() -> None:
    args = _parse([])
    assert (args.size, args.fps, args.budget_ms, args.codec) == ((320, 240), 10.0, 150.0, "h264")


def test_one_stream_sweep_batched_and_not(model_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    args = _parse(
        ["--streams", "1", "--duration", "2", "--fps", "5", "--size", "160x120",
         "--budget-ms", "2000", "--model", str(model_path), "--json", str(out)]
    )  # fmt: skip
    report = run_scale(args)
    assert json.loads(out.read_text()) == report
    for mode in ("batching", "no_batching"):
        (step,) = report[mode]["steps"]
        (stream,) = step["per_stream"]
        assert stream["results"] > 0 and stream["latency_p95_ms"] is not None
    assert report["batching"]["steps"][0]["max_batch"] == 1  # N = 1
    assert report["no_batching"]["steps"][0]["max_batch"] == 1
