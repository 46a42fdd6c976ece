"""``shelf-bench codec``'s outputs: the printed report, the CSV and the plots."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shelf_stream.bench.curves import SEED_TARGET, Against, Measure, Outside, Ratio, Reading

CODEC_LABELS = {"hevc": "H.265", "h264": "H.264", "jpeg_zlib": "JPEG+zlib"}
JPEG = "jpeg_zlib"

CSV_COLUMNS = (
    "input", "codec", "setting", "size", "size_asked", "frames", "kbps", "bytes_per_frame",
    "p95_bytes", "psnr_y", "ssim", "encode_ms", "decode_ms", "precision", "recall", "f1",
    "precision_iou75", "recall_iou75", "f1_iou75", "ap50_weighted", "true_positives",
    "false_positives", "false_negatives",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Outputs:
    csv: Path
    plots: list[Path]


def write_outputs(out_dir: Path, summary: dict[str, Any]) -> Outputs:
    """The CSV of every point and the two plots, in ``out_dir``."""
    csv_path = out_dir / "codec_points.csv"
    write_csv(csv_path, _csv_rows(summary))
    return Outputs(csv_path, write_plots(out_dir, summary["points"], summary["seed"]))


def _csv_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    blocks = [("all", summary), *((block["name"], block) for block in summary["per_input"])]
    return [{"input": name, **point} for name, block in blocks for point in block["points"]]


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """All operating points, one row each (``input`` is ``all`` for the pooled rows)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in CSV_COLUMNS})


# --------------------------------------------------------------------------- plots

PLOTS = (
    ("f1", "detection F1 vs pristine (IoU 0.5, score >= threshold)", "f1_vs_kbps.png"),
    ("ssim", "SSIM (Y) vs pristine", "ssim_vs_kbps.png"),
)


def _curve_label(codec: str, size: str) -> str:
    return f"{CODEC_LABELS[codec]} {size}"


def write_plots(
    out_dir: Path, points: Sequence[dict[str, Any]], seed: dict[str, Any]
) -> list[Path]:
    """F1 and SSIM against kbit/s (log x), a line per codec and size, the seed's point
    marked; [] without matplotlib."""
    try:
        from matplotlib.figure import Figure  # the "bench" extra; pyplot's state not needed
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    except ImportError:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for p in points:
        groups.setdefault((p["codec"], p["size"]), []).append(p)
    written = []
    for metric, label, name in PLOTS:
        figure = Figure(figsize=(7.5, 4.8))
        axes = figure.subplots()
        plotted = False
        for (codec, size), group in groups.items():
            pairs = sorted((p["kbps"], p[metric]) for p in group if p[metric] is not None)
            if not pairs:
                continue
            plotted = True
            style = "--" if codec == JPEG else "-"
            axes.plot(*zip(*pairs, strict=True), style, marker="o", label=_curve_label(codec, size))
            if codec == JPEG:
                for p in group:
                    if p[metric] is not None:
                        axes.annotate(f"q{p['setting']}", (p["kbps"], p[metric]), fontsize=7)
        if seed[metric] is not None:
            axes.plot(
                [seed["kbps"]], [seed[metric]], "*", markersize=16, color="black", zorder=5,
                label=f"seed: JPEG+zlib q{seed['setting']}",
            )  # fmt: skip
        axes.set_xscale("log")
        # Plain numbers at 1, 2 and 5 of each decade; no labels on the minor ticks, which
        # overlap.
        axes.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        axes.xaxis.set_minor_formatter(NullFormatter())
        axes.set_xlabel("kbit/s")
        axes.set_ylabel(label)
        axes.grid(True, which="both", alpha=0.3)
        if plotted:
            axes.legend(fontsize=8)
        else:  # F1 is undefined when the detector found nothing in the pristine frames
            axes.text(0.5, 0.5, "no data", ha="center", va="center", transform=axes.transAxes)
        figure.tight_layout()
        path = out_dir / name
        figure.savefig(path, dpi=120)
        written.append(path)
    return written


# -------------------------------------------------------------------------- tables


def _fmt(value: float | None, spec: str, width: int) -> str:
    return f"{'-':>{width}}" if value is None else format(value, f"{width}{spec}")


def format_points(points: Sequence[dict[str, Any]]) -> str:
    header = (
        f"{'codec':<10} {'size':>9} {'setting':>7} {'kbit/s':>7} {'B/frame':>8} {'p95 B':>7} "
        f"{'PSNR-Y':>6} {'SSIM':>6} {'enc ms':>6} {'dec ms':>6} {'P':>5} {'R':>5} "
        f"{'F1':>5} {'F1@.75':>6} {'AP50w':>5}"
    )
    lines = [header, "-" * len(header)]
    for p in points:
        setting = f"q{p['setting']}" if p["codec"] == JPEG else f"{p['setting']}k"
        lines.append(
            f"{CODEC_LABELS[p['codec']]:<10} {p['size']:>9} {setting:>7} {p['kbps']:7.0f} "
            f"{p['bytes_per_frame']:8.0f} {p['p95_bytes']:7.0f} {p['psnr_y']:6.2f} "
            f"{p['ssim']:6.4f} {p['encode_ms']:6.1f} {p['decode_ms']:6.1f} "
            f"{_fmt(p['precision'], '.3f', 5)} {_fmt(p['recall'], '.3f', 5)} "
            f"{_fmt(p['f1'], '.3f', 5)} {_fmt(p['f1_iou75'], '.3f', 6)} "
            f"{_fmt(p['ap50_weighted'], '.3f', 5)}"
        )
    return "\n".join(lines)


BEYOND = "beyond the measured range"
MEASURE_LABELS = {Measure.F1: "F1", Measure.SSIM: "SSIM"}


def _reading_text(reading: Reading) -> str:
    if reading.kbps is not None:
        return f"{reading.kbps:.0f} kbit/s"
    if reading.outside is None or reading.outside is Outside.NO_DATA:
        return "no data"
    return f"{BEYOND} ({reading.outside.value} {reading.edge_kbps:.0f} kbit/s)"


def _target_text(ratio: Ratio) -> str:
    value = "-" if ratio.target_value is None else f"{ratio.target_value:.4g}"
    return f"seed {value}" if ratio.target == SEED_TARGET else value


def format_ratios(readings: Sequence[Ratio], seed: dict[str, Any]) -> str:
    """One line per codec, size, measure and target: the codec's rate and both ratios."""
    lines = [
        "bytes of JPEG+zlib / bytes of the codec at the same quality, read off the measured "
        f"curves (never extrapolated); the seed: q{seed['setting']} at {seed['kbps']:.0f} "
        "kbit/s",
        f"{'codec':<6} {'size':>9} {'measure':<7} {'target':<12} {'codec at':<52} "
        f"{'/ seed q95':>10}  / JPEG at the same quality",
    ]
    pairs: dict[tuple[str, str, Measure, object], dict[Against, Ratio]] = {}
    for r in readings:
        pairs.setdefault((r.codec, r.size, r.measure, r.target), {})[r.against] = r
    for (codec, size, measure, _), by_against in pairs.items():
        seed_side = by_against[Against.SEED_Q95]
        same = by_against[Against.JPEG_SAME_QUALITY]
        vs_seed = "-" if seed_side.ratio is None else f"{seed_side.ratio:.2f}x"
        if same.ratio is not None:
            vs_same = f"{same.ratio:.2f}x (JPEG at {_reading_text(same.jpeg_kbps)})"
        elif same.codec_kbps.kbps is None:
            vs_same = "-"
        else:
            vs_same = f"- (JPEG: {_reading_text(same.jpeg_kbps)})"
        lines.append(
            f"{CODEC_LABELS[codec]:<6} {size:>9} {MEASURE_LABELS[measure]:<7} "
            f"{_target_text(same):<12} "
            f"{_reading_text(seed_side.codec_kbps):<52} {vs_seed:>10}  {vs_same}"
        )
    return "\n".join(lines)


def format_monotonicity(checks: Sequence[dict[str, Any]], tolerance: float) -> str:
    lines = [
        f"F1 as the bitrate (JPEG: quality) rises: the largest fall ({tolerance:g} allowed), "
        "what one headline box is worth, and AP50w's largest fall"
    ]
    for check in checks:
        where = ""
        if check["between_settings"]:
            unit = "q" if check["codec"] == JPEG else ""
            suffix = "" if check["codec"] == JPEG else "k"
            low, high = check["between_settings"]
            where = f" ({unit}{low}{suffix} -> {unit}{high}{suffix})"
        verdict = "ok" if check["ok"] else "FALLS"
        box = "" if check["one_box"] is None else f"; one box {check['one_box']:.4f}"
        lines.append(
            f"  {_curve_label(check['codec'], check['size']):<22} "
            f"{check['largest_fall']:.4f}{where} {verdict}{box}; "
            f"AP50w {check['ap50w_largest_fall']:.4f}"
        )
    return "\n".join(lines)


def _classes_line(summary: dict[str, Any]) -> str:
    boxes = summary["ground_truth_boxes"]
    counts = ", ".join(f"{name} {n}" for name, n in boxes.items()) or "none"
    apart = ", ".join(summary["classes_apart"]) or "none"
    return (
        f"ground truth ({summary['model']}, pristine detections with score >= "
        f"{summary['score_threshold']:g}), boxes per class: {counts}\n"
        f"headline classes (>= {summary['min_headline_boxes']} boxes): "
        f"{', '.join(summary['headline_classes']) or 'none'}; counted apart: {apart}"
    )


def _jpeg_lines(summary: dict[str, Any]) -> list[str]:
    floor = summary["jpeg_colour_round_trip"]
    z = summary["zlib_on_jpeg"]["reference"]
    return [
        f"JPEG's colour round trip alone (yuv420p -> BGR -> Y, no codec): PSNR-Y "
        f"{floor['psnr_y']:.1f} dB, SSIM {floor['ssim']:.5f}",
        f"zlib on JPEG q{z['jpeg_quality']}: saves {z['saved_pct']:.2f} % of the bytes for "
        f"{z['zlib_compress_ms']:.2f} ms compress + {z['zlib_decompress_ms']:.2f} ms "
        f"decompress per frame (JPEG itself {z['jpeg_ms']:.2f} ms)",
    ]


def format_report(summary: dict[str, Any], readings: Sequence[Ratio]) -> str:
    """The human report: points, ratios, the F1 check, the sweep, JPEG's notes."""
    inputs = ", ".join(
        f"{i['name']} ({i['size']}, {i['frames']} frames @ {i['fps']:g} fps)"
        for i in summary["inputs"]
    )
    every = summary["detect_every"]
    frames = "every frame" if every == 1 else f"every {every}th frame"
    encoders = ", ".join(f"{CODEC_LABELS[c]} {name}" for c, name in summary["encoders"].items())
    plots = ", ".join(summary["outputs"]["plots"]) or "none (pip install shelf-stream[bench])"
    sections = [
        f"codec bench: {inputs}; sizes {', '.join(summary['sizes'])}; encoders {encoders}",
        _classes_line(summary) + f"; detection on {frames}",
        "precision/recall/F1: headline classes' boxes, IoU 0.5 (F1@.75: IoU 0.75), decoded "
        f"detections at score >= {summary['score_threshold']:g}; AP50w: AP@0.5 weighted by "
        f"boxes, detections kept down to {summary['prediction_score_threshold']:g}",
        "",
        format_points(summary["points"]),
        "",
        format_ratios(readings, summary["seed"]),
        "",
        format_monotonicity(summary["f1_monotonicity"], summary["f1_fall_tolerance"]),
    ]
    if summary.get("encoder_sweep"):
        sections += ["", summary["encoder_sweep"]["table"]]
    sections += [
        "",
        *_jpeg_lines(summary),
        "",
        f"CSV: {summary['outputs']['csv']}   plots: {plots}",
        f"runtime: {summary['runtime_s']:.0f} s",
    ]
    return "\n".join(sections)
