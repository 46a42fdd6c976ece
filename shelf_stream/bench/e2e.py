"""``shelf-bench e2e``: the seed's baseline against the H.265 stream over an emulated link.

One real ``shelf-stream serve`` process; for each link, both clients run in turn through
the same ``LinkRelay`` settings:

(a) the seed system: each frame JPEG at OpenCV's default quality (95) + zlib, and the
    next frame only after the answer (stop-and-wait);
(b) shelf-stream: one continuous H.265 stream, frames pipelined, answers by pts.

For each it reports achieved vs offered FPS, frames skipped, capture→result latency
percentiles, bytes per frame, link utilisation, and the physical floor of that link:
one-way delay out and back + the frame's serialisation time + encode, decode and
inference compute, so the overhead above the floor is visible.

``--roi`` compares instead, over the same links, the H.265 stream coded uniformly and
with detection-guided regions of interest (``client.roi``), both at the same fixed
``--bitrate`` (no probe, no adaptation, so that the bytes compare): bytes per frame,
latency, and F1 of the server's answers against the detector's boxes on the pristine
frames (``--input``: each answered pts mapped back to its frame of the file, scaled to
``--size`` as the encoder scales it; the detector given it as the server is).
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from shelf_stream.bench.link import LinkConfig, LinkRelay, parse_link, parse_schedule, run_schedule
from shelf_stream.bench.loopback import running_server
from shelf_stream.bench.report import progress, publish
from shelf_stream.bench.timeline import Run, analyse, plot
from shelf_stream.cli import parse_size
from shelf_stream.client.adaptation import AdaptationConfig
from shelf_stream.client.app import ClientConfig, StreamClient
from shelf_stream.client.matcher import FrameRecord
from shelf_stream.client.sources import SourceSpec

DEFAULT_LINK = "35:10"  # the seed's situation: 35 ms RTT, 10 Mbit/s
DEFAULT_ROI_BITRATE_KBPS = 200
#: The server's default score threshold: what the answers and the pristine truth keep.
DEFAULT_GT_SCORE_THRESHOLD = 0.3


@dataclass(frozen=True, slots=True)
class Contender:
    name: str
    codec: str
    max_in_flight: int | None
    bitrate_kbps: int | None  # None: the probe picks the start and the stream adapts


# The seed: fixed JPEG quality, no probe, no adaptation, the next frame after the answer.
BASELINE = Contender("baseline", "jpeg_zlib", 1, None)
_CODEC_NAMES = {"hevc": "H.265", "h264": "H.264"}


def add_e2e_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "e2e", help="the seed's JPEG+zlib stop-and-wait vs the H.265 stream over an emulated link"
    )
    parser.add_argument(
        "--link",
        action="append",
        type=parse_link,
        help=f"RTT_MS:MBITPS[:JITTER_MS] (repeat for a sweep; default {DEFAULT_LINK})",
    )
    parser.add_argument(
        "--size", type=parse_size, default=(640, 480), help="frame size WxH (default 640x480)"
    )
    parser.add_argument("--fps", type=float, default=30.0, help="offered frame rate (default 30)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per contender")
    parser.add_argument("--input", type=Path, help="a video file (default: the demo scene)")
    parser.add_argument(
        "--bitrate", type=int, help="H.265 start kbit/s (default: probed, then adaptive)"
    )
    parser.add_argument("--model", help="ONNX model (default: the usual lookup)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument(
        "--link-schedule",
        type=parse_schedule,
        help="T_S:RTT_MS:MBITPS,... change the link during one H.265 run (e.g. "
        '"0:35:10,10:35:2,20:35:10") and draw a timeline',
    )
    parser.add_argument(
        "--out", type=Path, default=Path("bench-out/e2e"), help="where the timeline PNG goes"
    )
    parser.add_argument(
        "--roi",
        action="store_true",
        help="H.265 uniform against H.265 with regions of interest, at the same fixed "
        f"--bitrate (default {DEFAULT_ROI_BITRATE_KBPS}): bytes per frame, latency, F1 "
        "against the pristine frames (needs --input)",
    )
    parser.add_argument(
        "--codec",
        choices=sorted(_CODEC_NAMES),
        default="hevc",
        help="the stream's codec for --link-schedule (default hevc; h264 where the machine "
        "cannot encode H.265 at the size and rate in real time)",
    )


def run_e2e_bench(args: argparse.Namespace) -> dict[str, Any]:
    if getattr(args, "roi", False):
        return run_roi_bench(args)
    if args.link_schedule:
        return run_scheduled_bench(args)
    width, height = args.size
    links: list[LinkConfig] = args.link or [parse_link(DEFAULT_LINK)]
    contenders = [BASELINE, Contender("hevc", "hevc", None, args.bitrate)]
    runs = []
    with running_server(args.model, ["--codecs", "hevc,h264,jpeg_zlib"]) as port:
        for link in links:
            results = {}
            for contender in contenders:
                _progress(f"{contender.name} over {link} for {args.duration:g} s")
                config = _client_config(args, contender, width, height)
                results[contender.name] = asyncio.run(_run_through_link(port, link, config))
            runs.append(_compare(link, args.fps, results))
    return publish(format_report(runs), {"summary": runs[0], "links": runs}, args.json)


def _progress(text: str) -> None:
    progress("...", text)


def _client_config(
    args: argparse.Namespace, contender: Contender, width: int, height: int
) -> ClientConfig:
    if args.input is not None:
        source = SourceSpec(kind="file", path=args.input, loop=True)
    else:
        source = SourceSpec(kind="scene", width=width, height=height, fps=args.fps)
    seed = contender is BASELINE
    return ClientConfig(
        url="",  # set per run: the relay's port
        source=source,
        codec=contender.codec,
        width=width,
        height=height,
        fps=args.fps,
        bitrate_kbps=contender.bitrate_kbps,
        max_in_flight=contender.max_in_flight,
        probe=not seed,
        adaptation=AdaptationConfig(enabled=not seed),
        duration_s=args.duration,
        status=False,
    )


async def _run_through_link(
    server_port: int,
    link: LinkConfig,
    config: ClientConfig,
    on_record: Callable[[FrameRecord], None] | None = None,
) -> dict[str, Any]:
    async with LinkRelay("127.0.0.1", server_port, link) as relay:
        client = StreamClient(
            replace(config, url=f"ws://127.0.0.1:{relay.port}"), on_record=on_record
        )
        summary = await client.run()
        summary["link_utilisation"] = round(relay.uplink.utilisation(), 3)
        return summary


def physical_floor_ms(link: LinkConfig, summary: dict[str, Any]) -> float:
    """The least latency this link allows one frame: delay both ways, its serialisation
    on the link, and the compute it needs (encode, decode, inference)."""
    serialisation_ms = summary["bytes_per_frame"] * 8 / (link.mbit_per_s * 1e6) * 1000
    compute_ms = sum(
        summary[key] or 0.0 for key in ("encode_ms_mean", "decode_ms_mean", "infer_ms_mean")
    )
    return link.rtt_ms + serialisation_ms + compute_ms


def _block(link: LinkConfig, offered_fps: float, summary: dict[str, Any]) -> dict[str, Any]:
    latency = summary["latency_ms"]
    floor = physical_floor_ms(link, summary)
    return {
        "fps": summary["fps"],
        "offered_fps": offered_fps,
        "frames_skipped": summary["skipped_at_capture"],
        "frames_dropped_by_server": summary["dropped_by_server"],
        "latency_ms_p50": latency["p50"],
        "latency_ms_p95": latency["p95"],
        "latency_ms_p99": latency["p99"],
        "bytes_per_frame": summary["bytes_per_frame"],
        "kbit_per_s": summary["kbit_per_s"],
        "link_utilisation": summary["link_utilisation"],
        "floor_ms": round(floor, 1),
        "overhead_above_floor_ms_p50": (
            round(latency["p50"] - floor, 1) if latency["p50"] is not None else None
        ),
        "encode_ms_mean": summary["encode_ms_mean"],
        "decode_ms_mean": summary["decode_ms_mean"],
        "infer_ms_mean": summary["infer_ms_mean"],
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def _compare(link: LinkConfig, fps: float, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    baseline = _block(link, fps, results["baseline"])
    hevc = _block(link, fps, results["hevc"])
    return {
        "link": {"rtt_ms": link.rtt_ms, "mbit_per_s": link.mbit_per_s, "jitter_ms": link.jitter_ms},
        "baseline": baseline,
        "hevc": hevc,
        "fps_ratio": _ratio(hevc["fps"], baseline["fps"]),
        "latency_ratio_p50": _ratio(baseline["latency_ms_p50"], hevc["latency_ms_p50"]),
        "bytes_ratio": _ratio(baseline["bytes_per_frame"], hevc["bytes_per_frame"]),
    }


def format_report(runs: list[dict[str, Any]]) -> str:
    rows = [
        ("achieved / offered fps", "fps", "offered_fps"),
        ("frames never sent", "frames_skipped", None),
        ("latency p50 / p95 / p99 ms", "latency_ms_p50", "latency_ms_p95", "latency_ms_p99"),
        ("bytes per frame", "bytes_per_frame", None),
        ("link utilisation", "link_utilisation", None),
        ("physical floor ms", "floor_ms", None),
        ("p50 above the floor ms", "overhead_above_floor_ms_p50", None),
    ]
    lines = []
    for run in runs:
        link = run["link"]
        lines.append(
            f"\nlink: {link['rtt_ms']:g} ms RTT, {link['mbit_per_s']:g} Mbit/s"
            + (f", {link['jitter_ms']:g} ms jitter" if link["jitter_ms"] else "")
        )
        lines.append(f"{'':30}{'seed JPEG+zlib':>22}{'shelf-stream H.265':>22}")
        for label, *keys in rows:
            cells = [
                " / ".join(_fmt(run[side][k]) for k in keys if k is not None)
                for side in ("baseline", "hevc")
            ]
            lines.append(f"{label:30}{cells[0]:>22}{cells[1]:>22}")
        lines.append(
            f"ratios seed/H.265: frame rate x{run['fps_ratio']} (H.265/seed), "
            f"p50 latency x{run['latency_ratio_p50']} (seed/H.265), "
            f"bytes per frame x{run['bytes_ratio']} (seed/H.265)"
        )
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"
    return str(value)


def run_scheduled_bench(args: argparse.Namespace) -> dict[str, Any]:
    """One run (``--codec``) while the link follows ``--link-schedule``; figures and a PNG."""
    width, height = args.size
    schedule: list[tuple[float, LinkConfig]] = args.link_schedule
    duration = max(args.duration, schedule[-1][0] + 10.0)
    codec = getattr(args, "codec", "hevc")
    name = _CODEC_NAMES[codec]
    contender = Contender(codec, codec, None, args.bitrate)
    config = replace(_client_config(args, contender, width, height), duration_s=duration)
    with running_server(args.model) as port:
        _progress(f"{name} for {duration:g} s over the schedule {_describe(schedule)}")
        run, summary = asyncio.run(_run_with_schedule(port, schedule, config, duration))
    figures = analyse(run)
    args.out.mkdir(parents=True, exist_ok=True)
    png = plot(
        run,
        args.out / "timeline.png",
        f"{name} {width}x{height}@{args.fps:g}: " + _describe(schedule),
    )
    report = {
        "summary": {
            "codec": codec,
            "schedule": figures,
            "stream": summary,
            "timeline_png": str(png),
        }
    }
    return publish(format_schedule_report(figures, png, name), report, args.json)


def _describe(schedule: list[tuple[float, LinkConfig]]) -> str:
    return ", ".join(f"{t:g}s {link}" for t, link in schedule)


async def _run_with_schedule(
    server_port: int,
    schedule: list[tuple[float, LinkConfig]],
    config: ClientConfig,
    duration: float,
) -> tuple[Run, dict[str, Any]]:
    records: list[FrameRecord] = []
    async with LinkRelay("127.0.0.1", server_port, schedule[0][1]) as relay:
        start = relay.uplink.stats.start  # the loop's clock is time.monotonic
        changes = asyncio.create_task(run_schedule(relay, schedule))
        client = StreamClient(
            replace(config, url=f"ws://127.0.0.1:{relay.port}", timeline_period_s=0.2),
            on_record=records.append,
        )
        try:
            summary = await client.run()
        finally:
            changes.cancel()
        throughput = relay.uplink.throughput_series()
    # Controller snapshots every 200 ms, for the JSON report (the PNG plots the targets).
    summary["adaptation_timeline"] = [_relative(entry, start) for entry in client.timeline]
    compute = sum(summary[k] or 0.0 for k in ("encode_ms_mean", "decode_ms_mean", "infer_ms_mean"))
    run = Run(
        schedule=schedule,
        records=[(r.captured_at - start, r) for r in records],
        targets=[
            (e["at"] - start, e["target_kbps"]) for e in client.timeline if "target_kbps" in e
        ],
        throughput=throughput,
        compute_ms=compute,
        bytes_per_frame_at=[(r.captured_at - start, r.size_bytes) for r in records if r.size_bytes],
        duration_s=duration,
    )
    return run, summary


def _relative(entry: dict[str, Any], start: float) -> dict[str, Any]:
    """A client timeline entry with its times in seconds from the run's start."""
    return {k: v for k, v in entry.items() if k != "at"} | {"t": round(entry["at"] - start, 3)}


def format_schedule_report(figures: dict[str, Any], png: Path, codec_name: str = "H.265") -> str:
    lines = ["", f"link schedule, {codec_name} with probe and adaptive bitrate:"]
    for change in figures["changes"]:
        lines.append(
            f"  at {change['at_s']:>5g} s  {change['link']:<28} floor {change['floor_ms']} ms, "
            f"p95 (from +2 s) {change['latency_p95_ms']} ms, "
            f"p95 within floor+100 ms after {change['back_within_100ms_of_floor_after_s']} s "
            f"(for good after {change['settled_within_100ms_of_floor_after_s']} s), "
            f"utilisation {change['utilisation']}"
            + (
                f", target back to 70 % of the pre-drop {change['target_before_drop_kbps']} "
                f"kbit/s after {change['recovered_to_70pct_after_s']} s"
                if "recovered_to_70pct_after_s" in change
                else ""
            )
        )
    lines.append(
        f"  oldest frame at inference (server, receive -> start): "
        f"{figures['max_server_age_at_inference_ms']} ms; dropped as too old: "
        f"{figures['too_old_drops']}; results {figures['results']} of {figures['frames']} frames"
    )
    lines.append(f"  timeline: {png}")
    return "\n".join(lines)


# ---------------------------------------------------------------------- --roi


def run_roi_bench(args: argparse.Namespace) -> dict[str, Any]:
    """Uniform against ROI H.265 over each link, same fixed bitrate: bytes, latency, F1."""
    from shelf_stream.errors import ConfigError

    if args.input is None:
        raise ConfigError("shelf-bench e2e --roi needs --input: F1 needs the pristine frames")
    width, height = args.size
    links: list[LinkConfig] = args.link or [parse_link(DEFAULT_LINK)]
    bitrate = args.bitrate or DEFAULT_ROI_BITRATE_KBPS
    truth = _PristineTruth(args.input, width, height, args.model)
    try:
        with running_server(args.model, ["--codecs", "hevc"]) as port:
            runs = [_roi_link_run(args, port, link, bitrate, truth) for link in links]
    finally:
        truth.close()
    return publish(format_roi_report(runs), {"summary": runs[0], "links": runs}, args.json)


def _roi_link_run(
    args: argparse.Namespace, port: int, link: LinkConfig, bitrate: int, truth: _PristineTruth
) -> dict[str, Any]:
    """H.265 uniform, then with ROI, over ``link`` at ``bitrate``: one entry of the report."""
    from shelf_stream.client.roi import RoiConfig

    width, height = args.size
    results = {}
    for name, enabled in (("uniform", False), ("roi", True)):
        _progress(f"H.265 {name} at {bitrate} kbit/s over {link} for {args.duration:g} s")
        config = replace(
            _client_config(args, Contender("hevc", "hevc", None, bitrate), width, height),
            probe=False,
            adaptation=AdaptationConfig(enabled=False),
            roi=replace(RoiConfig(), enabled=enabled),
        )
        records: list[FrameRecord] = []
        summary = asyncio.run(_run_through_link(port, link, config, records.append))
        results[name] = _roi_block(link, args.fps, summary, truth.score(records))
    return {"link": _link_json(link), "bitrate_kbps": bitrate, **results,
            "bytes_ratio": _ratio(results["uniform"]["bytes_per_frame"],
                                  results["roi"]["bytes_per_frame"])}  # fmt: skip


def _link_json(link: LinkConfig) -> dict[str, float]:
    return {"rtt_ms": link.rtt_ms, "mbit_per_s": link.mbit_per_s, "jitter_ms": link.jitter_ms}


def _roi_block(
    link: LinkConfig, fps: float, summary: dict[str, Any], agreement: dict[str, Any]
) -> dict[str, Any]:
    block = _block(link, fps, summary)
    return block | agreement | {"roi": summary.get("roi")}


class _PristineTruth:
    """The detector's boxes on the input's frames at the stream's size, by frame index."""

    def __init__(self, path: Path, width: int, height: int, model: str | None) -> None:
        from shelf_stream.client.sources import FileSource
        from shelf_stream.engine import EngineConfig, create_detector
        from shelf_stream.engine.models import resolve_model

        # The server's default threshold, as the answers have it.
        self._detector = create_detector(EngineConfig(model_path=resolve_model(model)))
        self.score_threshold = DEFAULT_GT_SCORE_THRESHOLD
        with FileSource(path) as source:
            self.fps = source.fps or 30.0
            self._frames = []
            while (frame := source.read()) is not None:
                self._frames.append(frame.reformat(width=width, height=height, format="yuv420p"))
        self._truth: dict[int, Any] = {}

    def index(self, pts: int) -> int:
        """The frame of the file an answered pts was (the file loops)."""
        from shelf_stream.codec.base import TIME_BASE

        return round(pts * TIME_BASE * self.fps) % len(self._frames)

    def truth(self, index: int) -> Any:
        if index not in self._truth:
            self._truth[index] = self._detector.detect([self._frames[index]])[0]
        return self._truth[index]

    def score(self, records: list[FrameRecord]) -> dict[str, Any]:
        """F1 (IoU 0.5, headline classes) of the answers against the pristine boxes."""
        import numpy as np

        from shelf_stream.bench.codec import score_agreement
        from shelf_stream.client.matcher import Outcome
        from shelf_stream.engine.base import Detections

        truth, found = [], []
        for record in records:
            if record.status is not Outcome.RESULT:
                continue
            truth.append(self.truth(self.index(record.pts)))
            dets = record.detections
            found.append(
                Detections(
                    np.array([[d.x1, d.y1, d.x2, d.y2] for d in dets], np.float32).reshape(-1, 4),
                    np.array([d.score for d in dets], np.float32),
                    np.array([d.class_id for d in dets], np.int32),
                )
            )
        if not truth:
            return {"answered_frames": 0, "f1": None, "precision": None, "recall": None}
        agreement = score_agreement(truth, found, self.score_threshold)
        counts = agreement.at_iou50
        return {
            "answered_frames": len(truth),
            "truth_boxes": counts.truth_boxes,
            "f1": counts.f1,
            "precision": counts.precision,
            "recall": counts.recall,
        }

    def close(self) -> None:
        self._detector.close()


def format_roi_report(runs: list[dict[str, Any]]) -> str:
    rows = [
        ("achieved / offered fps", "fps", "offered_fps"),
        ("latency p50 / p95 ms", "latency_ms_p50", "latency_ms_p95"),
        ("bytes per frame", "bytes_per_frame"),
        ("kbit/s", "kbit_per_s"),
        ("answered frames", "answered_frames"),
        ("F1 / P / R vs pristine", "f1", "precision", "recall"),
    ]
    lines = []
    for run in runs:
        link = run["link"]
        lines.append(
            f"\nlink: {link['rtt_ms']:g} ms RTT, {link['mbit_per_s']:g} Mbit/s; H.265 at "
            f"{run['bitrate_kbps']} kbit/s, fixed"
        )
        lines.append(f"{'':30}{'uniform':>22}{'ROI':>22}")
        for label, *keys in rows:
            cells = [
                " / ".join(_fmt(run[side].get(k)) for k in keys) for side in ("uniform", "roi")
            ]
            lines.append(f"{label:30}{cells[0]:>22}{cells[1]:>22}")
        lines.append(f"bytes per frame uniform / ROI: x{run['bytes_ratio']}")
    return "\n".join(lines)
