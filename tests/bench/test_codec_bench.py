"""shelf-bench codec: the helpers on literal values and one tiny end-to-end run."""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import zlib
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from shelf_stream.bench import codec as bench
from shelf_stream.bench.codec import (
    RateMatch,
    ZlibOnJpeg,
    bytes_ratio,
    equal_quality_ratios,
    fast_ssim,
    measure_zlib_on_jpeg,
    rate_for_quality,
    reference_quality,
    summarize_zlib,
)
from shelf_stream.cli import bench_main, build_bench_parser
from shelf_stream.codec import EncoderConfig, get_encoder
from shelf_stream.codec.metrics import ssim as reference_ssim

cv2 = pytest.importorskip("cv2")


def parse(argv: list[str]) -> argparse.Namespace:
    return build_bench_parser().parse_args(["codec", *argv])


# ------------------------------------------------------------------ interpolation


def test_interpolates_linearly_in_log_rate() -> None:
    match = rate_for_quality(0.925, [100, 1000], [0.90, 0.95])
    # Halfway in quality is halfway in log(kbit/s): the geometric mean.
    assert match is not None and match.in_range
    assert match.kbps == pytest.approx(math.sqrt(100 * 1000))
    assert (match.method, match.side) == ("interpolated", "inside")


def test_a_measured_point_returns_its_rate_and_order_does_not_matter() -> None:
    match = rate_for_quality(0.95, [400, 100, 200], [0.97, 0.90, 0.95])
    assert match == RateMatch(200.0, "interpolated", "inside")


def test_a_dip_in_the_curve_is_flattened() -> None:
    # 400 kbit/s measured worse than 200; the running maximum keeps the curve monotonic,
    # so 0.945 is found between 100 and 200 only.
    match = rate_for_quality(0.945, [100, 200, 400], [0.90, 0.95, 0.94])
    assert match is not None
    assert match.kbps == pytest.approx(100 * 2**0.9)
    assert match.method == "interpolated"


def test_extrapolates_a_little_beyond_the_top() -> None:
    match = rate_for_quality(0.93, [100, 200], [0.90, 0.92])
    assert match is not None and not match.in_range
    assert match.kbps == pytest.approx(200 * math.sqrt(2))
    assert (match.method, match.side) == ("extrapolated", "above")


def test_clamps_far_beyond_the_top_and_the_ratio_is_an_upper_bound() -> None:
    match = rate_for_quality(0.96, [100, 200], [0.90, 0.92])  # would need 800 kbit/s
    assert match == RateMatch(200.0, "clamped", "above")
    entry = bytes_ratio(1000.0, match)
    assert entry["ratio"] == pytest.approx(5.0)
    assert entry["bound"] == "<="


def test_clamps_far_below_the_bottom_and_the_ratio_is_a_lower_bound() -> None:
    match = rate_for_quality(0.85, [100, 200], [0.90, 0.92])
    assert match == RateMatch(100.0, "clamped", "below")
    assert bytes_ratio(1000.0, match)["bound"] == ">="


def test_target_reached_at_the_lowest_rate_is_a_bound() -> None:
    # Saturated agreement: 1.0 everywhere, so fewer bits might do as well.
    match = rate_for_quality(1.0, [250, 500, 1000], [1.0, 1.0, 1.0])
    assert match == RateMatch(250.0, "clamped", "below")


def test_a_perfect_target_is_saturated_and_the_ratio_is_a_lower_bound() -> None:
    # Agreement 1.0 is first reached at 500; somewhere in (250, 500] would do.
    match = rate_for_quality(1.0, [250, 500, 1000], [0.99, 1.0, 1.0])
    assert match == RateMatch(500.0, "saturated", "inside")
    assert match is not None and match.in_range
    assert bytes_ratio(2000.0, match)["bound"] == ">="
    # Below the ceiling the same curve interpolates.
    halfway = rate_for_quality(0.995, [250, 500], [0.99, 1.0])
    assert halfway is not None and halfway.method == "interpolated"
    assert halfway.kbps == pytest.approx(250 * math.sqrt(2))


def test_a_perfect_target_beyond_the_curve_is_not_extrapolated() -> None:
    match = rate_for_quality(1.0, [2000, 4000], [0.990, 0.996])
    assert match == RateMatch(4000.0, "clamped", "above")
    assert bytes_ratio(36000.0, match)["bound"] == "<="


def test_flat_curve_below_the_target_is_clamped() -> None:
    assert rate_for_quality(0.95, [100, 200], [0.9, 0.9]) == RateMatch(200.0, "clamped", "above")


def test_missing_values_are_skipped_and_nothing_usable_is_none() -> None:
    match = rate_for_quality(0.5, [100, 200, 400], [None, 0.4, 0.6])
    assert match is not None and match.kbps == pytest.approx(200 * math.sqrt(2))
    assert rate_for_quality(0.5, [100, 200], [None, None]) is None
    assert rate_for_quality(float("nan"), [100, 200], [0.4, 0.6]) is None


# ------------------------------------------------------------------------- ratios


def test_bytes_ratio_is_the_rate_ratio() -> None:
    entry = bytes_ratio(2000.0, RateMatch(500.0, "interpolated", "inside"))
    assert entry == {
        "ratio": 4.0, "kbps": 500.0, "method": "interpolated", "in_range": True, "bound": "=",
    }  # fmt: skip
    assert bytes_ratio(2000.0, None)["ratio"] is None


def point(kbps: float, ssim: float, agreement: float | None) -> dict[str, Any]:
    return {"kbps": kbps, "ssim": ssim, "agreement_map50": agreement}


def test_equal_quality_ratios_for_each_codec() -> None:
    reference = point(3000.0, 0.96, 0.8)
    curves = {
        "hevc": [point(250, 0.90, 0.6), point(1000, 0.98, 1.0)],
        "h264": [point(500, 0.93, 0.7), point(2000, 0.99, 0.9)],
    }
    ssim = equal_quality_ratios(reference, curves, "ssim")
    # HEVC: 0.96 is 3/4 of the way from 0.90 to 0.98 in log rate: 250 * 4**0.75.
    assert ssim["hevc"]["ratio"] == pytest.approx(3000 / (250 * 4**0.75))
    assert ssim["h264"]["ratio"] == pytest.approx(3000 / (500 * 4**0.5))
    agreement = equal_quality_ratios(reference, curves, "agreement_map50")
    assert agreement["hevc"]["ratio"] == pytest.approx(3000 / (250 * 4**0.5))
    unknown = equal_quality_ratios(point(3000.0, 0.96, None), curves, "agreement_map50")
    assert unknown["hevc"]["ratio"] is None


def test_reference_quality_is_the_seeds_95_when_measured() -> None:
    assert reference_quality([50, 95, 100]) == 95
    assert reference_quality([50, 80]) == 80


# -------------------------------------------------------------------- zlib on JPEG


def gradient_bgr(width: int = 96, height: int = 64) -> np.ndarray:
    x = np.linspace(0, 255, width)
    y = np.linspace(0, 255, height)[:, None]
    planes = [np.broadcast_to(x, (height, width)), np.broadcast_to(y, (height, width)), (x + y) / 2]
    return np.ascontiguousarray(np.stack(planes, axis=-1).astype(np.uint8))


def test_zlib_on_jpeg_measures_the_seed_recipe() -> None:
    bgr = gradient_bgr()
    sample = measure_zlib_on_jpeg(bgr, 95)
    ok, jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    assert sample.jpeg_bytes == len(jpeg.tobytes())
    assert sample.zlib_bytes == len(zlib.compress(jpeg.tobytes()))
    # The same bytes the benchmarked jpeg_zlib codec sends.
    encoder = get_encoder(EncoderConfig(codec="jpeg_zlib", width=96, height=64, jpeg_quality=95))
    sent = encoder.encode(av.VideoFrame.from_ndarray(bgr, format="bgr24"), 0)
    assert sample.zlib_bytes == len(sent.data)
    assert sample.saved_pct == pytest.approx(100 * (1 - sample.zlib_bytes / sample.jpeg_bytes))
    assert min(sample.jpeg_ms, sample.compress_ms, sample.decompress_ms) >= 0


def test_zlib_summary_on_literal_samples() -> None:
    samples = [ZlibOnJpeg(95, 1000, 900, 2.0, 1.0, 0.2), ZlibOnJpeg(95, 3000, 3100, 4.0, 3.0, 0.4)]
    assert samples[0].saved_pct == pytest.approx(10.0)
    assert samples[1].saved_pct == pytest.approx(-100 / 30)
    summary = summarize_zlib(samples)
    assert summary == {
        "jpeg_quality": 95, "frames": 2, "jpeg_mean_bytes": 2000.0,
        "jpeg_zlib_mean_bytes": 2000.0, "saved_pct": pytest.approx(0.0),
        "jpeg_ms": pytest.approx(3.0), "zlib_compress_ms": pytest.approx(2.0),
        "zlib_decompress_ms": pytest.approx(0.3),
    }  # fmt: skip


# ------------------------------------------------------------------ colour for JPEG


def test_bgr_luma_known_values() -> None:
    bgr = np.array([[[0, 0, 0], [255, 255, 255], [0, 0, 255], [255, 0, 0]]], np.uint8)
    # BT.601 limited range: black 16, white 235, red 16 + 65.481 = 81, blue 16 + 24.966 = 41.
    assert bench.bgr_luma(bgr).tolist() == [[16, 235, 81, 41]]


def test_yuv_to_bgr_and_back_keeps_the_luma() -> None:
    rng = np.random.default_rng(5)
    y = rng.integers(16, 236, (32, 48), dtype=np.uint8)
    chroma = np.full((16, 48), 128, np.uint8)  # neutral: no RGB clipping
    frame = av.VideoFrame.from_ndarray(np.concatenate([y, chroma]), format="yuv420p")
    bgr = bench.to_bgr(frame)
    assert bgr.format.name == "bgr24"
    assert np.abs(bench.decoded_luma(bgr).astype(int) - y).max() <= 1
    assert np.array_equal(bench.decoded_luma(frame), y)  # yuv frames: their own Y plane


# --------------------------------------------------------------------------- SSIM


def test_fast_ssim_matches_the_reference() -> None:
    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, (48, 64), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-20, 21, a.shape), 0, 255).astype(np.uint8)
    assert fast_ssim(a, b) == pytest.approx(reference_ssim(a, b), abs=1e-9)
    assert fast_ssim(a, a) == pytest.approx(1.0)


# ----------------------------------------------------------------------- plumbing


def test_progress_bar_writes_a_line_per_step_when_not_a_terminal() -> None:
    stream = io.StringIO()
    bar = bench.ProgressBar(2, stream=stream, width=4)
    bar.show("ignored off a terminal")
    bar.advance("first")
    bar.advance("second")
    bar.close()
    lines = stream.getvalue().splitlines()
    assert [line.split("]")[0] for line in lines] == ["[##..", "[####"]
    assert lines[1].endswith("second")


def test_parser_defaults() -> None:
    args = parse([])
    assert args.input is None
    assert args.size == (640, 480)
    assert args.frames == 90
    assert args.bitrates == [250, 500, 1000, 2000, 4000]
    assert args.jpeg_qualities == [50, 70, 80, 90, 95]
    assert args.out == Path("bench-out/codec")


# ---------------------------------------------------------------------- end to end


def check_points(points: list[dict[str, Any]], setting_key: str, settings: list[int]) -> None:
    assert [p[setting_key] for p in points] == settings
    for p in points:
        assert p["frames"] > 0
        assert p["mean_bytes"] > 0 and p["p95_bytes"] >= p["mean_bytes"] * 0.5
        assert p["kbps"] > 0
        assert 0 < p["ssim"] <= 1
        assert p["psnr_y"] > 20
        assert p["encode_ms"] > 0 and p["decode_ms"] > 0
        assert p["agreement_map50"] is None or 0 <= p["agreement_map50"] <= 1


def test_end_to_end_on_the_generated_scene(model_path: Path, tmp_path: Path) -> None:
    args = parse([
        "--frames", "6", "--size", "160x120", "--bitrates", "150", "600",
        "--jpeg-qualities", "60", "95", "--model", str(model_path),
        "--out", str(tmp_path / "out"), "--json", str(tmp_path / "summary.json"),
    ])  # fmt: skip
    printed: list[str] = []
    summary = bench.run_codec_bench(args, print_fn=printed.append)

    assert json.loads((tmp_path / "summary.json").read_text()) == {"summary": summary}
    assert summary["inputs"] == [{"name": "scene (generated)", "frames": 6, "fps": 30.0}]
    check_points(summary["hevc"]["points"], "bitrate_kbps", [150, 600])
    check_points(summary["h264"]["points"], "bitrate_kbps", [150, 600])
    check_points(summary["jpeg_zlib"]["points"], "jpeg_quality", [60, 95])
    assert summary["reference"]["jpeg_quality"] == 95
    assert summary["jpeg_colour_round_trip"]["psnr_y"] > 50
    # The scene shows photographs with people and animals: the detector finds something.
    assert sum(summary["ground_truth_boxes"].values()) > 0
    assert set(summary["hevc"]["points"][0]["agreement_ap_per_class"]) == set(
        summary["ground_truth_boxes"]
    )
    ratio = summary["bytes_ratio_at_equal_ssim"]
    assert ratio is not None and ratio > 0
    assert ratio == summary["equal_ssim"]["hevc"]["ratio"]
    assert summary["equal_ssim"]["h264"]["ratio"] > 0
    assert summary["bytes_ratio_at_equal_agreement"] == summary["equal_agreement"]["hevc"]["ratio"]
    assert [z["jpeg_quality"] for z in summary["zlib_on_jpeg"]["points"]] == [60, 95]
    assert summary["zlib_on_jpeg"]["reference"]["jpeg_zlib_mean_bytes"] == pytest.approx(
        summary["jpeg_zlib"]["points"][1]["mean_bytes"]
    )

    with open(summary["outputs"]["csv"], newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 6 and {row["input"] for row in rows} == {"all"}
    assert [Path(p).name for p in summary["outputs"]["plots"]] == [
        "ssim_vs_kbps.png", "agreement_vs_kbps.png",
    ]  # fmt: skip
    assert all(Path(p).stat().st_size > 0 for p in summary["outputs"]["plots"])
    assert "JPEG+zlib / H.265 at equal SSIM" in printed[0]


def write_clip(path: Path, frames: int = 5) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 128, 96, "yuv420p"
        for i in range(frames):
            bgr = np.roll(gradient_bgr(128, 96), 4 * i, axis=1)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(bgr, format="bgr24")))
        container.mux(stream.encode(None))


def test_cli_pools_several_file_inputs(model_path: Path, tmp_path: Path) -> None:
    clips = [tmp_path / "a.mp4", tmp_path / "b.mp4"]
    for clip in clips:
        write_clip(clip)
    code = bench_main([
        "codec", "--input", str(clips[0]), "--input", str(clips[1]), "--frames", "4",
        "--size", "96x64", "--bitrates", "200", "--jpeg-qualities", "95",
        "--model", str(model_path), "--out", str(tmp_path / "out"),
        "--json", str(tmp_path / "s.json"),
    ])  # fmt: skip
    assert code == 0
    summary = json.loads((tmp_path / "s.json").read_text())["summary"]
    assert [i["frames"] for i in summary["inputs"]] == [4, 4]
    assert summary["inputs"][0]["fps"] == pytest.approx(25.0)
    assert summary["hevc"]["points"][0]["frames"] == 8
    assert [entry["name"] for entry in summary["per_input"]] == [str(c) for c in clips]
    assert summary["per_input"][1]["jpeg_zlib"]["points"][0]["frames"] == 4
    with open(tmp_path / "out" / "codec_points.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 3 * 3  # pooled + one block per input
