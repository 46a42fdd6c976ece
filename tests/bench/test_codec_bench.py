"""shelf-bench codec: the helpers on literal values and end-to-end runs on real footage."""

from __future__ import annotations

import argparse
import csv
import io
import json
import zlib
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from shelf_stream.bench import codec as bench
from shelf_stream.bench import encoder_sweep
from shelf_stream.bench.codec import (
    NATIVE,
    PointKey,
    PointStats,
    SizeKind,
    SizeSpec,
    ZlibOnJpeg,
    fast_ssim,
    measure_zlib_on_jpeg,
    model_size,
    parse_size_spec,
    reference_quality,
    scale_boxes,
    score_agreement,
    summarize_point,
    summarize_zlib,
)
from shelf_stream.bench.detection_metrics import MatchCounts
from shelf_stream.cli import bench_main, build_bench_parser
from shelf_stream.codec import EncoderConfig, get_encoder
from shelf_stream.codec.metrics import ssim as reference_ssim
from shelf_stream.engine.base import Detections

cv2 = pytest.importorskip("cv2")

#: 10 frames of real footage at its own 640x360 (see tests/data/README.md).
BOTTLES_CLIP = Path(__file__).resolve().parent.parent / "data" / "bottles-640x360.mp4"

#: The fields ``summary.points[]`` and ``summary.ratios[]`` promise scripts.
POINT_FIELDS = (
    "codec", "setting", "size", "kbps", "bytes_per_frame", "ssim", "psnr_y", "f1",
    "precision", "recall", "encode_ms", "decode_ms",
)  # fmt: skip
RATIO_FIELDS = ("codec", "size", "measure", "target", "against", "ratio")


def parse(argv: list[str]) -> argparse.Namespace:
    return build_bench_parser().parse_args(["codec", *argv])


# -------------------------------------------------------------------------- sizes


def test_size_options() -> None:
    assert parse_size_spec("native") == NATIVE
    assert parse_size_spec("MODEL") == SizeSpec(SizeKind.MODEL)
    assert parse_size_spec("320x180") == SizeSpec(SizeKind.FIXED, 320, 180)
    with pytest.raises(argparse.ArgumentTypeError):
        parse_size_spec("321x180")  # 4:2:0 needs even sides
    with pytest.raises(SystemExit):
        parse(["--size", "big"])


def test_model_size_keeps_the_aspect_with_even_sides() -> None:
    assert model_size((854, 480), (416, 416)) == (416, 234)
    assert model_size((768, 432), (416, 416)) == (416, 234)
    assert model_size((480, 854), (416, 416)) == (234, 416)
    assert model_size((640, 480), (640, 640)) == (640, 480)
    assert model_size((160, 120), (416, 416)) == (160, 120)  # never enlarged
    assert SizeSpec(SizeKind.MODEL).resolve((854, 480), (416, 416)) == (416, 234)
    assert NATIVE.resolve((854, 480), (416, 416)) == (854, 480)
    assert SizeSpec(SizeKind.FIXED, 320, 240).resolve((854, 480), (416, 416)) == (320, 240)


def test_boxes_from_a_smaller_frame_are_mapped_to_source_pixels() -> None:
    found = Detections(
        np.array([[10, 20, 30, 40]], np.float32), np.array([0.9], np.float32),
        np.array([0], np.int32),
    )  # fmt: skip
    scaled = scale_boxes(found, 2.0, 1.5)
    assert scaled.boxes.tolist() == [[20, 30, 60, 60]]
    assert scaled.scores.tolist() == found.scores.tolist()


def test_parser_defaults() -> None:
    args = parse([])
    assert args.input is None
    assert args.size == [NATIVE]  # the input's own size
    assert args.frames == 90
    assert bench.bitrates(args) == list(bench.DEFAULT_BITRATES_KBPS)
    assert bench.bitrates(parse(["--roi"])) == list(bench.DEFAULT_ROI_BITRATES_KBPS)
    assert bench.bitrates(parse(["--roi", "--bitrates", "90", "30"])) == [30, 90]
    assert args.jpeg_qualities == list(bench.DEFAULT_JPEG_QUALITIES)
    assert SEED_Q in args.jpeg_qualities
    assert args.encoder_sweep is True
    assert args.encoder_threads == 1, "points that repeat bit for bit"
    assert args.out == Path("bench-out/codec")
    assert parse(["--size", "native", "model", "--no-encoder-sweep"]).size == [
        NATIVE, SizeSpec(SizeKind.MODEL),
    ]  # fmt: skip


SEED_Q = bench.SEED_JPEG_QUALITY


@pytest.mark.parametrize("codec", ["hevc", "h264"])
def test_a_point_with_one_encoder_thread_repeats_bit_for_bit(codec: str) -> None:
    with av.open(str(BOTTLES_CLIP)) as container:
        frames = [f.reformat(format="yuv420p") for f in container.decode(video=0)]
    key = bench.PointKey(codec, 200, NATIVE)
    first, _ = bench._encode_all(key, frames, 15.0, threads=1)
    second, _ = bench._encode_all(key, frames, 15.0, threads=1)
    assert first == second


def test_reference_quality_is_the_seeds_95_when_measured() -> None:
    assert reference_quality([50, 95, 100]) == 95
    assert reference_quality([50, 80]) == 80


# --------------------------------------------------------------- agreement figures


PERSON, DOG, CAT = 0, 16, 15


def boxes_of(items: list[tuple[list[float], int]], score: float = 0.9) -> Detections:
    if not items:
        return Detections.empty()
    return Detections(
        np.array([b for b, _ in items], np.float32),
        np.full(len(items), score, np.float32),
        np.array([c for _, c in items], np.int32),
    )


def person_box(i: int) -> list[float]:
    return [10.0 * i, 0.0, 10.0 * i + 8, 20.0]


#: 25 frames, one person each (25 boxes: a headline class); a dog in two of them.
TRUTH = [
    boxes_of([(person_box(i), PERSON)] + ([([300, 300, 340, 340], DOG)] if i < 2 else []))
    for i in range(25)
]


def test_precision_recall_f1_on_literal_boxes() -> None:
    # 20 persons found, 5 missed; 2 boxes where there is nothing.
    found = [boxes_of([(person_box(i), PERSON)] if i < 20 else []) for i in range(25)]
    found[0] = boxes_of([(person_box(0), PERSON), ([500, 0, 520, 20], PERSON)])
    found[1] = boxes_of([(person_box(1), PERSON), ([500, 0, 520, 20], PERSON)])
    agreement = score_agreement(TRUTH, found, score_threshold=0.3)
    assert agreement.at_iou50 == MatchCounts(20, 2, 5)
    assert agreement.at_iou50.precision == pytest.approx(20 / 22)
    assert agreement.at_iou50.recall == pytest.approx(20 / 25)
    assert agreement.at_iou50.f1 == pytest.approx(40 / 47)


def test_a_rare_class_does_not_move_the_headline() -> None:
    every_person = [boxes_of([(person_box(i), PERSON)]) for i in range(25)]
    with_dogs = [
        boxes_of([(person_box(i), PERSON)] + ([([300, 300, 340, 340], DOG)] if i < 2 else []))
        for i in range(25)
    ]
    # Both dogs missed and a cat seen where there is none: only the rare classes change.
    with_cat = [*every_person]
    with_cat[3] = boxes_of([(person_box(3), PERSON), ([0, 100, 40, 140], CAT)])
    figures = [score_agreement(TRUTH, found, 0.3) for found in (with_dogs, every_person, with_cat)]
    assert {f.at_iou50 for f in figures} == {MatchCounts(25, 0, 0)}
    assert {f.ap50_weighted for f in figures} == {1.0}
    assert figures[0].apart == {DOG: MatchCounts(2, 0, 0)}
    assert figures[1].apart == {DOG: MatchCounts(0, 0, 2)}
    assert figures[2].apart == {DOG: MatchCounts(0, 0, 2), CAT: MatchCounts(0, 1, 0)}


def test_a_detection_under_the_servers_threshold_is_a_miss() -> None:
    slipped = [
        boxes_of([(person_box(i), PERSON)], score=0.29 if i == 0 else 0.9) for i in range(25)
    ]
    agreement = score_agreement(TRUTH, slipped, score_threshold=0.3)
    assert agreement.at_iou50 == MatchCounts(24, 0, 1)
    assert agreement.ap50_weighted == pytest.approx(1.0)  # AP still ranks it: score 0.29


def test_summarize_point_on_literal_stats() -> None:
    key = PointKey("hevc", 500, NATIVE)
    stats = PointStats(key=key, size=(640, 360), seconds=2.0)
    stats.bytes = [1000, 3000]
    stats.encode_ms, stats.decode_ms = [4.0, 6.0], [1.0, 2.0]
    stats.psnr_y, stats.ssim = [40.0, 42.0], [0.98, 0.99]
    stats.ground_truth, stats.predictions = TRUTH[:2], TRUTH[:2]
    point = summarize_point([stats], class_names=["person"] + ["x"] * 20)
    assert tuple(point)[: len(POINT_FIELDS)] == POINT_FIELDS
    assert point["size"] == "640x360" and point["setting"] == 500
    assert point["kbps"] == pytest.approx(4000 * 8 / 2.0 / 1000)
    assert point["bytes_per_frame"] == 2000.0
    assert point["ssim"] == pytest.approx(0.985) and point["psnr_y"] == 41.0
    assert (point["encode_ms"], point["decode_ms"]) == (5.0, 1.5)
    # Two frames: 2 persons and 2 dogs, each under 20 boxes, so no headline class.
    assert point["f1"] is None and point["precision"] is None and point["recall"] is None
    assert set(point["classes_apart"]) == {"person", "x"}


# ------------------------------------------------------------------ encoder sweep


def test_sweep_settings_cover_x265_presets_and_threads() -> None:
    settings = encoder_sweep.default_settings(cores=8)
    x265 = [(s.preset, s.threads) for s in settings if s.encoder == "libx265"]
    assert x265 == [(p, t) for p in ("ultrafast", "superfast", "veryfast") for t in (1, 2, 8)]
    assert encoder_sweep.thread_counts(1) == (1,)
    assert encoder_sweep.thread_counts(2) == (1, 2)


def test_x265_threads_become_its_worker_pool() -> None:
    from shelf_stream.codec.pyav import _x265_options

    params = _x265_options(EncoderConfig(codec="hevc", threads=2))["x265-params"]
    assert ":pools=2" in params and "frame-threads=1" in params


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


# ---------------------------------------------------------------------- end to end


def check_points(points: list[dict[str, Any]]) -> None:
    for p in points:
        assert tuple(p)[: len(POINT_FIELDS)] == POINT_FIELDS
        assert p["frames"] > 0 and p["bytes_per_frame"] > 0 and p["kbps"] > 0
        assert 0 < p["ssim"] <= 1 and p["psnr_y"] > 20
        assert p["encode_ms"] > 0 and p["decode_ms"] > 0
        for name in ("f1", "precision", "recall", "f1_iou75", "ap50_weighted"):
            assert p[name] is None or 0 <= p[name] <= 1


def test_real_footage_at_its_own_size_and_the_models(model_path: Path, tmp_path: Path) -> None:
    args = parse([
        "--input", str(BOTTLES_CLIP), "--frames", "10", "--size", "native", "model",
        "--bitrates", "150", "1200", "--jpeg-qualities", "50", "95", "--no-encoder-sweep",
        "--model", str(model_path), "--out", str(tmp_path / "out"),
        "--json", str(tmp_path / "summary.json"),
    ])  # fmt: skip
    printed: list[str] = []
    summary = bench.run_codec_bench(args, print_fn=printed.append)

    written = json.loads((tmp_path / "summary.json").read_text())["summary"]
    assert written["points"] == summary["points"]
    assert summary["inputs"] == [
        {"name": str(BOTTLES_CLIP), "frames": 10, "fps": pytest.approx(179 / 6), "size": "640x360"}
    ]
    points = summary["points"]
    check_points(points)
    # Native by default; "model" is the detector's 416 wide, aspect kept; JPEG native.
    assert [(p["codec"], p["size"], p["setting"]) for p in points] == [
        *((c, s, k) for c in ("hevc", "h264") for s in ("640x360", "416x234")
          for k in (150, 1200)),
        ("jpeg_zlib", "640x360", 50), ("jpeg_zlib", "640x360", 95),
    ]  # fmt: skip
    # Three bottles a frame make the headline; the person (10 boxes) and the dining
    # table (near the threshold) are counted apart.
    boxes = summary["ground_truth_boxes"]
    assert (boxes["bottle"], boxes["person"]) == (30, 10)
    assert summary["headline_classes"] == ["bottle"]
    assert set(summary["classes_apart"]) == set(boxes) - {"bottle"}
    for p in points:
        counts = MatchCounts(p["true_positives"], p["false_positives"], p["false_negatives"])
        assert counts.truth_boxes == 30
        assert p["f1"] == pytest.approx(counts.f1)
        assert p["classes_apart"]["person"]["truth_boxes"] == 10
    seed = summary["seed"]
    assert (seed["codec"], seed["setting"]) == ("jpeg_zlib", 95)
    assert seed["f1"] > 0.9  # the seed's q95 sees nearly what the pristine frames show

    ratios = summary["ratios"]
    assert all(tuple(r) == RATIO_FIELDS for r in ratios)
    assert {(r["codec"], r["size"]) for r in ratios} == {
        (c, s) for c in ("hevc", "h264") for s in ("640x360", "416x234")
    }
    targets = [r["target"] for r in ratios if r["codec"] == "hevc" and r["size"] == "640x360"]
    assert targets == ["seed", "seed", 0.95, 0.95, 0.97, 0.97, 0.99, 0.99, "seed", "seed"]
    assert {r["against"] for r in ratios} == {"seed_q95", "jpeg_same_quality"}
    for r in ratios:
        assert r["ratio"] is None or r["ratio"] > 0
    # Equal SSIM at native size is within the measured H.265 rates here: a real number.
    ssim = next(
        r for r in ratios
        if (r["codec"], r["size"], r["measure"], r["against"])
        == ("hevc", "640x360", "ssim", "seed_q95")
    )  # fmt: skip
    hevc = [p for p in points if p["codec"] == "hevc" and p["size"] == "640x360"]
    if hevc[0]["ssim"] < seed["ssim"] <= hevc[-1]["ssim"]:
        assert ssim["ratio"] == pytest.approx(
            seed["kbps"] / bench.curves.rate_at(
                seed["ssim"], [p["kbps"] for p in hevc], [p["ssim"] for p in hevc]
            ).kbps
        )  # fmt: skip
    else:
        assert ssim["ratio"] is None
    assert [(c["codec"], c["size"]) for c in summary["f1_monotonicity"]] == [
        ("hevc", "640x360"), ("hevc", "416x234"), ("h264", "640x360"), ("h264", "416x234"),
        ("jpeg_zlib", "640x360"),
    ]  # fmt: skip
    for check in summary["f1_monotonicity"]:
        assert check["headline_boxes"] == 30
        assert check["one_box"] == pytest.approx(1 / 59)  # F1 of 29 of 30 found: 58/59
        assert check["ok"] == (check["largest_fall"] <= 0.01)

    assert [Path(p).name for p in summary["outputs"]["plots"]] == [
        "f1_vs_kbps.png", "ssim_vs_kbps.png",
    ]  # fmt: skip
    assert all(Path(p).stat().st_size > 0 for p in summary["outputs"]["plots"])
    with open(summary["outputs"]["csv"], newline="") as handle:
        assert len(list(csv.DictReader(handle))) == len(points)
    report = printed[0]
    assert "boxes per class: bottle 30, person 10" in report
    assert "bytes of JPEG+zlib / bytes of the codec" in report
    assert "F1 as the bitrate" in report


def test_scene_stretched_to_a_given_size_with_the_encoder_sweep(
    model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One short round of two settings: the sweep's plumbing, not its figures.
    monkeypatch.setattr(encoder_sweep, "SWEEP_ROUNDS", 1)
    monkeypatch.setattr(encoder_sweep, "RAMP_S", 0.05)
    monkeypatch.setattr(encoder_sweep, "IDLE_S", 0.2)
    monkeypatch.setattr(encoder_sweep, "MIN_PASS_S", 0.1)
    two = (
        encoder_sweep.SweepSetting("hevc", "libx265", "ultrafast", 1),
        encoder_sweep.SweepSetting("h264", "libx264", "superfast", 0),
    )
    monkeypatch.setattr(encoder_sweep, "default_settings", lambda cores=None: two)
    args = parse([
        "--frames", "4", "--size", "160x120", "--bitrates", "300", "--jpeg-qualities", "95",
        "--model", str(model_path), "--out", str(tmp_path),
    ])  # fmt: skip
    summary = bench.run_codec_bench(args, print_fn=lambda _: None)
    assert summary["inputs"][0]["size"] == "640x480"  # the scene's own size
    assert {p["size"] for p in summary["points"]} == {"160x120", "640x480"}
    assert summary["sizes"] == ["160x120"]
    assert sum(summary["ground_truth_boxes"].values()) > 0
    sweep = summary["encoder_sweep"]
    assert (sweep["size"], sweep["bitrate_kbps"], sweep["frames"]) == ("160x120", 300, 4)
    assert [(r["encoder"], r["preset"]) for r in sweep["results"]] == [
        ("libx265", "ultrafast"), ("libx264", "superfast"),
    ]  # fmt: skip
    for row in sweep["results"]:
        assert row["encode_ms_alone"] > 0 and row["encode_ms_busy"] > 0
        assert row["inference_ms_busy"] > 0  # the busy detector really ran meanwhile
        assert 0 < row["ssim"] <= 1
    assert sweep["inference_ms_idle"] > 0
    assert summary["encoders"]["hevc"] and summary["encoders"]["h264"]


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
        "--bitrates", "200", "--jpeg-qualities", "95", "--no-encoder-sweep",
        "--model", str(model_path), "--out", str(tmp_path / "out"),
        "--json", str(tmp_path / "s.json"),
    ])  # fmt: skip
    assert code == 0
    summary = json.loads((tmp_path / "s.json").read_text())["summary"]
    assert [(i["frames"], i["size"]) for i in summary["inputs"]] == [(4, "128x96")] * 2
    assert summary["inputs"][0]["fps"] == pytest.approx(25.0)
    assert summary["points"][0]["frames"] == 8
    assert [entry["name"] for entry in summary["per_input"]] == [str(c) for c in clips]
    assert summary["per_input"][1]["points"][2]["frames"] == 4
    # Gradients: nothing to detect, so no F1 and no F1 ratio, and nothing made up.
    assert all(p["f1"] is None for p in summary["points"])
    assert all(r["ratio"] is None for r in summary["ratios"] if r["measure"] == "f1")
    with open(tmp_path / "out" / "codec_points.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 3 * 3  # pooled + one block per input
