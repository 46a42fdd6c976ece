"""``shelf-bench e2e``: the floor arithmetic, and one tiny real run through the relay."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shelf_stream.bench.e2e import physical_floor_ms, run_e2e_bench
from shelf_stream.bench.link import LinkConfig
from shelf_stream.cli import build_bench_parser


def test_floor_is_delay_both_ways_plus_serialisation_plus_compute() -> None:
    summary = {"bytes_per_frame": 12_500, "encode_ms_mean": 5.0, "decode_ms_mean": 2.0,
               "infer_ms_mean": 10.0}  # fmt: skip
    # 35 ms RTT + 12 500 B at 10 Mbit/s (10 ms) + 17 ms compute
    assert physical_floor_ms(LinkConfig(35, 10), summary) == pytest.approx(62.0)


@pytest.mark.timeout(120)
def test_tiny_run_reports_both_contenders(model_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "e2e.json"
    args = build_bench_parser().parse_args(
        ["e2e", "--link", "20:20", "--size", "320x240", "--fps", "10", "--duration", "2",
         "--model", str(model_path), "--json", str(out)]
    )  # fmt: skip
    report = run_e2e_bench(args)
    assert json.loads(out.read_text()) == report
    summary = report["summary"]
    for side in ("baseline", "hevc"):
        block = summary[side]
        assert block["fps"] > 0
        assert block["bytes_per_frame"] > 0
        assert block["latency_ms_p50"] >= 20.0, "no answer can beat the emulated RTT"
        assert block["floor_ms"] >= 20.0
    assert summary["baseline"]["bytes_per_frame"] > summary["hevc"]["bytes_per_frame"]
    assert summary["fps_ratio"] is not None and summary["latency_ratio_p50"] is not None


@pytest.mark.timeout(120)
def test_tiny_roi_run_compares_uniform_and_roi(model_path: Path, tmp_path: Path) -> None:
    clip = Path(__file__).resolve().parent.parent / "data" / "bottles-640x360.mp4"
    out = tmp_path / "roi.json"
    args = build_bench_parser().parse_args(
        ["e2e", "--roi", "--input", str(clip), "--link", "20:20", "--size", "320x180",
         "--fps", "10", "--duration", "2", "--bitrate", "150", "--model", str(model_path),
         "--json", str(out)]
    )  # fmt: skip
    report = run_e2e_bench(args)
    summary = report["summary"]
    assert json.loads(out.read_text())["summary"] == summary
    assert summary["bitrate_kbps"] == 150
    for side, enabled in (("uniform", False), ("roi", True)):
        block = summary[side]
        assert block["roi"]["enabled"] is enabled
        assert block["bytes_per_frame"] > 0 and block["answered_frames"] > 5
        assert block["f1"] is not None and block["f1"] > 0.5  # three bottles, a person
        assert block["latency_ms_p50"] >= 20.0
    assert summary["roi"]["roi"]["plans_sent"] >= 1
    assert summary["bytes_ratio"] is not None


def test_roi_needs_the_pristine_frames() -> None:
    from shelf_stream.errors import ConfigError

    args = build_bench_parser().parse_args(["e2e", "--roi"])
    with pytest.raises(ConfigError, match="--input"):
        run_e2e_bench(args)


@pytest.mark.timeout(120)
def test_tiny_link_schedule_run_draws_its_timeline(model_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "schedule.json"
    args = build_bench_parser().parse_args(
        ["e2e", "--link-schedule", "0:20:5,2:20:1", "--size", "320x240", "--fps", "10",
         "--duration", "4", "--codec", "h264", "--model", str(model_path),
         "--out", str(tmp_path), "--json", str(out)]
    )  # fmt: skip
    report = run_e2e_bench(args)
    summary = report["summary"]
    assert summary["codec"] == "h264"
    assert Path(summary["timeline_png"]).stat().st_size > 10_000
    changes = summary["schedule"]["changes"]
    assert [c["at_s"] for c in changes] == [0.0, 2.0]
    assert summary["schedule"]["results"] > 0
    timeline = summary["stream"]["adaptation_timeline"]
    assert timeline and all("controller" in entry for entry in timeline)
    assert {"target_kbps", "fps", "encode_fps", "fast_preset"} <= set(timeline[-1])
    assert json.loads(out.read_text())["summary"]["codec"] == "h264"
