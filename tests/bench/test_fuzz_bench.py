"""``shelf-bench fuzz``: a small campaign against the real model must come out clean."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from shelf_stream import protocol as p
from shelf_stream.bench.fuzz import match_detections, plan_cases, run_fuzz
from shelf_stream.cli import build_bench_parser


def _args(*argv: str) -> argparse.Namespace:
    return build_bench_parser().parse_args(["fuzz", *argv])


def test_default_campaign_is_ten_thousand_cases() -> None:
    assert _args().cases == 10_000
    assert _args().targeted_frames == 60


def test_case_plan_is_deterministic_per_seed() -> None:
    assert plan_cases(500, seed=7) == plan_cases(500, seed=7)
    assert plan_cases(500, seed=7) != plan_cases(500, seed=8)


def test_detections_match_by_class_and_overlap_not_order() -> None:
    a = (p.Detection(1, 0.9, 0, 0, 10, 10), p.Detection(2, 0.8, 20, 20, 40, 40))
    assert match_detections(a, a[::-1])[0]
    moved = (p.Detection(1, 0.9, 0, 0, 10, 10), p.Detection(2, 0.8, 21, 20, 41, 40))
    assert not match_detections(a, moved)[0]
    assert not match_detections(a, a[:1])[0]


@pytest.mark.timeout(300)
def test_small_campaign_is_clean(model_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "fuzz.json"
    report = run_fuzz(_args("--cases", "200", "--seed", "3", "--model", str(model_path),
                            "--targeted-frames", "30", "--json", str(out)))  # fmt: skip
    assert json.loads(out.read_text()) == report
    assert report["server_crashes"] == 0 and report["probe_round_trip"]
    assert report["unhandled_exceptions"] == 0, report["log"]["tracebacks"]
    healthy = report["healthy"]
    assert healthy["lost"] == 0 and healthy["answered_twice"] == 0
    assert healthy["drops_not_from_load"] == 0, healthy["dropped"]
    assert report["detections"]["compared_frames"] > 0
    assert report["detections"]["mismatched_frames"] == 0, report["detections"]["examples"]
    assert report["threads"]["leaked_decoder_threads"] == 0
    assert report["threads"]["sessions_left"] == 0
    assert report["anomalies"] == 0, report["anomaly_examples"]
    assert sum(kind["cases"] for kind in report["kinds"].values()) == 200

    # The targeted cases: what they must get, not how fast (the bench's verdict also
    # holds the deadlines and the RSS margin, which a loaded CI machine may miss).
    targeted = report["targeted"]
    geometry, crowd, flood = (targeted[k] for k in ("geometry_lie", "idle_crowd", "starved_flood"))
    assert geometry["every_kind_ran"] and geometry["not_as_specified"] == 0
    assert geometry["results_to_liars"] == 0 and geometry["results_to_control"] > 0
    assert crowd["fresh_clients"] > 0 and crowd["fresh_admitted"] == crowd["fresh_clients"]
    assert crowd["peak_pending_on_server"] <= 32  # the pending limit, never stream slots
    assert flood["floods_over_limit"] > 0 and flood["over_limit_within_bound"]
    assert set(flood["over_limit_errors"]) == {"LIMIT_EXCEEDED"}
    assert flood["within_limit_all_answered"] and flood["not_reading_warnings"] == 0
    for case in (geometry, crowd, flood):
        healthy = case["healthy"]
        assert healthy["lost"] == 0 and healthy["answered_twice"] == 0, healthy
        assert healthy["drops_not_from_load"] == 0 and not healthy["errors"], healthy
    assert targeted["memory"]["server_idle_after"]
    assert targeted["warnings"]["most_repeated_for_one_stream"] <= 1, targeted["warnings"]
