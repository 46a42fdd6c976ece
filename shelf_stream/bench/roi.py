"""``shelf-bench codec --roi``: detection-guided ROI coding against uniform coding.

Each input is replayed twice per video codec, size and ``--bitrates`` target, with the
client's encoder at the live settings (``bench.codec``; ``--encoder-threads``, default
one, so that reruns are bit-exact): **uniform** (the encoder as it ships,
``--roi off``) and **ROI** (``EncoderConfig.roi`` and the client's own
``client.roi.RoiPlanner``). In the ROI run the planner gets, before frame ``m`` is
encoded, the detector's boxes (at the server's score threshold) on the *decoded* frames
up to ``m - delay``, each at the time the frame was captured, exactly as the live client
gets its answers a round trip later; ``--roi-delay-frames`` defaults to the frames a
150 ms round trip covers (``ceil(0.15 s x fps)``). Time is the frames' own (``m / fps``).

Per point, beside ``bench.codec``'s figures: PSNR-Y inside and outside the ground-truth
boxes (the pristine detections of every class; squared errors pooled over the pixels of
all frames), and the **recall of new objects in their first second**: the pristine
detections of the headline classes are linked into tracks frame to frame (same class,
IoU >= 0.3, gaps of up to half a second bridged); a track that begins after the first
frame is an object coming on screen, and its boxes within one second of its first are
the ones counted (matched by the F1's own rule).

Readings, per codec and size and F1 target (0.95, 0.97): the kbit/s at which each curve
reaches the target, interpolated in log(kbit/s) and never extrapolated (``curves``), their
ratio (uniform / ROI: how many times fewer bytes ROI needs), and the new-object recall
and the PSNRs read off each curve at its own rate there (between the same two points).
Beside it, ``bytes_ratio_monotone``: the same reading on each curve's non-decreasing
least-squares fit (``curves.monotone``). F1 against the pristine detections moves by a
few boxes from point to point on a short clip (a static object whose score hovers at the
threshold, the stream's rate control), and where a curve is flat around the target one
such point decides the first crossing: the monotone reading pools a dip with the peak
before it.
``summary.roi[]`` has one entry per codec, size and target, pooled over the inputs;
``summary.per_input[].roi`` the same for each input.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from shelf_stream import protocol as p
from shelf_stream.bench import codec as codec_bench
from shelf_stream.bench import curves
from shelf_stream.bench.detection_metrics import box_iou, matched_truth
from shelf_stream.client.roi import RoiConfig, RoiPlanner
from shelf_stream.codec import get_decoder, get_encoder
from shelf_stream.codec.base import TIME_BASE
from shelf_stream.codec.metrics import luma, psnr
from shelf_stream.engine.base import Detections, Detector

#: The round trip the default delay stands for.
DEFAULT_ROUND_TRIP_S = 0.15
F1_TARGETS = (0.95, 0.97)
#: New-object tracks: linked at this IoU, across gaps of up to this long.
TRACK_IOU = 0.3
TRACK_GAP_S = 0.5
NEW_OBJECT_WINDOW_S = 1.0


def delay_frames(fps: float, requested: int | None) -> int:
    """Frames between a frame and the first one its answer can steer."""
    if requested is not None:
        return requested
    return max(1, math.ceil(DEFAULT_ROUND_TRIP_S * fps - 1e-9))


# ------------------------------------------------------------------ new objects


def new_object_boxes(
    truth: Sequence[Detections], fps: float, classes: set[int]
) -> dict[int, list[int]]:
    """Frame index -> indices of its truth boxes that are objects in their first second.

    Tracks link boxes of ``classes`` frame to frame (best IoU first, at least
    ``TRACK_IOU`` with the track's last box, across gaps up to ``TRACK_GAP_S``); a track
    that begins after frame 0 is a new object.
    """
    gap = max(1, round(TRACK_GAP_S * fps))
    window = max(1, round(NEW_OBJECT_WINDOW_S * fps))
    tracks: list[dict[str, Any]] = []  # last box, class, last frame, first frame
    out: dict[int, list[int]] = {}
    for index, frame in enumerate(truth):
        live = [t for t in tracks if index - t["last"] <= gap]
        pairs = []
        for bi, (box, cls) in enumerate(zip(frame.boxes, frame.class_ids, strict=True)):
            if int(cls) not in classes:
                continue
            for ti, track in enumerate(live):
                if track["class"] == int(cls):
                    overlap = float(box_iou(box[None], track["box"][None])[0, 0])
                    if overlap >= TRACK_IOU:
                        pairs.append((overlap, ti, bi))
        pairs.sort(reverse=True)
        used_t, used_b = set(), set()
        for _, ti, bi in pairs:
            if ti in used_t or bi in used_b:
                continue
            used_t.add(ti)
            used_b.add(bi)
            live[ti].update(box=frame.boxes[bi], last=index)
            if live[ti]["first"] > 0 and index - live[ti]["first"] < window:
                out.setdefault(index, []).append(bi)
        for bi, cls in enumerate(frame.class_ids):
            if int(cls) in classes and bi not in used_b:
                live.append(
                    {"box": frame.boxes[bi], "class": int(cls), "last": index, "first": index}
                )
                if index > 0:
                    out.setdefault(index, []).append(bi)
        tracks = live
    return out


def new_object_hits(
    truth: Detections, predictions: Detections, boxes: Sequence[int], min_score: float
) -> int:
    """How many of ``truth``'s boxes ``boxes`` a prediction matched (F1's rule, per class)."""
    kept = predictions.scores >= min_score
    found = 0
    wanted = set(boxes)
    for cls in {int(truth.class_ids[i]) for i in boxes}:
        truth_idx = np.flatnonzero(truth.class_ids == cls)
        mask = kept & (predictions.class_ids == cls)
        order = np.argsort(-predictions.scores[mask], kind="stable")
        hit = matched_truth(truth.boxes[truth_idx], predictions.boxes[mask][order], 0.5)
        found += sum(1 for j, i in enumerate(truth_idx) if hit[j] and int(i) in wanted)
    return found


# ------------------------------------------------------------------------ replay


@dataclass(slots=True)
class RoiPointStats:
    """One replay: ``bench.codec``'s per-frame figures plus ROI's own."""

    base: codec_bench.PointStats
    roi: bool
    sse_in: float = 0.0
    pixels_in: int = 0
    sse_out: float = 0.0
    pixels_out: int = 0
    new_boxes: int = 0
    new_found: int = 0
    graphs_built: int = 0
    refreshes: int = 0
    roi_frames: int = 0  # frames coded with a non-uniform plan
    notes: list[str] = field(default_factory=list)


def _detections_as_boxes(found: Detections, min_score: float) -> list[p.Detection]:
    return [
        p.Detection(int(c), float(s), float(b[0]), float(b[1]), float(b[2]), float(b[3]))
        for b, s, c in zip(found.boxes, found.scores, found.class_ids, strict=True)
        if s >= min_score
    ]


def _inside_mask(truth: Detections, width: int, height: int) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    for x1, y1, x2, y2 in truth.boxes:
        left, top = max(0, math.floor(x1)), max(0, math.floor(y1))
        mask[top : min(height, math.ceil(y2)), left : min(width, math.ceil(x2))] = True
    return mask


def box_share(truth: dict[int, Detections], size: tuple[int, int]) -> float:
    """The share of the picture inside the ground-truth boxes, over all frames.

    What ROI coding has to spend on: where the boxes cover most of the picture, the rest
    has too few bits to give.
    """
    if not truth:
        return 0.0
    width, height = size
    inside = sum(int(_inside_mask(t, width, height).sum()) for t in truth.values())
    return inside / (len(truth) * width * height)


def replay(
    key: codec_bench.PointKey,
    clip: codec_bench.Clip,
    detector: Detector,
    truth: dict[int, Detections],
    size: tuple[int, int],
    *,
    roi: RoiConfig | None,
    delay: int,
    score_threshold: float,
    new_boxes: dict[int, list[int]],
    threads: int = codec_bench.DEFAULT_ENCODER_THREADS,
) -> RoiPointStats:
    """Encode, decode and detect every frame of ``clip`` once, live-like.

    ``roi`` None is the uniform run; else the planner steers the encoder with the
    detections on the decoded frames ``delay`` frames back. ``threads``: the encoder's
    (one, the default, repeats bit for bit, so a difference between the two codings is
    the coding's and not the threads' timing).
    """
    stats = RoiPointStats(
        codec_bench.PointStats(key=key, size=size, seconds=clip.seconds), roi is not None
    )
    base = stats.base
    frames = clip.at(size)
    native_w, native_h = clip.size
    sx, sy = native_w / size[0], native_h / size[1]
    config = replace(codec_bench._encoder_config(key, size, clip.fps, threads), roi=roi is not None)
    encoder = get_encoder(config)
    decoder = get_decoder(key.codec)
    dt = 1.0 / clip.fps
    planner = (
        RoiPlanner(roi, width_px=native_w, height_px=native_h, frame_interval_s=dt, now=0.0)
        if roi is not None
        else None
    )
    waiting: deque[tuple[int, list[p.Detection]]] = deque()
    try:
        if roi is not None and not encoder.takes_regions:
            stats.notes.append(f"{type(encoder).__name__} does not take regions: uniform")
        for index, frame in enumerate(frames):
            now = index * dt
            pts = round(now / TIME_BASE)
            if planner is not None:
                while waiting and waiting[0][0] <= index - delay:
                    done, boxes = waiting.popleft()
                    planner.on_result(boxes, done * dt, now)
                due = planner.get_timer()
                if due is not None and due <= now + 1e-9:
                    planner.handle_timer(now)
                plan = planner.plan(now)
                stats.roi_frames += not plan.uniform
                encoder.set_regions(plan.for_encoder(*size))
            started = time.perf_counter()
            au = encoder.encode(frame, pts, keyframe=index == 0)
            base.encode_ms.append((time.perf_counter() - started) * 1000.0)
            decoded, ms = codec_bench._decode_one(decoder, au.data, pts)
            base.decode_ms.append(ms)
            base.bytes.append(len(au.data))
            seen = decoded
            if (decoded.width, decoded.height) != clip.size:
                seen = decoded.reformat(width=native_w, height=native_h, format="yuv420p")
            original = luma(clip.frames[index]).astype(np.float64)
            received = np.asarray(codec_bench.decoded_luma(seen), dtype=np.float64)
            base.psnr_y.append(min(psnr(original, received), codec_bench.MAX_PSNR_DB))
            base.ssim.append(codec_bench.fast_ssim(original, received))
            squared = (original - received) ** 2
            inside = _inside_mask(truth[index], native_w, native_h)
            stats.sse_in += float(squared[inside].sum())
            stats.pixels_in += int(inside.sum())
            stats.sse_out += float(squared[~inside].sum())
            stats.pixels_out += int((~inside).sum())
            found = codec_bench.scale_boxes(
                detector.detect([codec_bench.detector_input(decoded)])[0], sx, sy
            )
            base.ground_truth.append(truth[index])
            base.predictions.append(found)
            if index in new_boxes:
                stats.new_boxes += len(new_boxes[index])
                stats.new_found += new_object_hits(
                    truth[index], found, new_boxes[index], score_threshold
                )
            waiting.append((index, _detections_as_boxes(found, score_threshold)))
        stats.graphs_built = getattr(encoder, "region_graphs_built", 0)
        stats.refreshes = planner.refreshes if planner is not None else 0
    finally:
        encoder.close()
        decoder.close()
    return stats


# ------------------------------------------------------------------------ summary


def _psnr_of(sse: float, pixels: int) -> float | None:
    if pixels == 0:
        return None
    mse = sse / pixels
    return codec_bench.MAX_PSNR_DB if mse == 0 else min(10 * math.log10(255**2 / mse), 100.0)


def summarize(
    parts: Sequence[RoiPointStats], class_names: Sequence[str], score_threshold: float
) -> dict[str, Any]:
    """One operating point pooled over inputs: ``bench.codec``'s fields and ROI's."""
    point = codec_bench.summarize_point([s.base for s in parts], class_names, score_threshold)
    new_boxes = sum(s.new_boxes for s in parts)
    point.update(
        roi=parts[0].roi,
        psnr_in_boxes=_psnr_of(sum(s.sse_in for s in parts), sum(s.pixels_in for s in parts)),
        psnr_out_boxes=_psnr_of(sum(s.sse_out for s in parts), sum(s.pixels_out for s in parts)),
        new_object_boxes=new_boxes,
        new_object_recall=sum(s.new_found for s in parts) / new_boxes if new_boxes else None,
        roi_frames=sum(s.roi_frames for s in parts),
        region_graphs_built=sum(s.graphs_built for s in parts),
        refreshes=sum(s.refreshes for s in parts),
    )
    return point


def _curve_points(
    points: Sequence[dict[str, Any]], codec: str, size: str, roi: bool
) -> list[dict[str, Any]]:
    return sorted(
        (q for q in points if q["codec"] == codec and q["size"] == size and q["roi"] == roi),
        key=lambda q: q["setting"],
    )


def readings(
    points: Sequence[dict[str, Any]], targets: Sequence[float] = F1_TARGETS
) -> list[dict[str, Any]]:
    """``summary.roi[]``: per codec, size and F1 target, both curves read at the target."""
    out = []
    for codec, size in dict.fromkeys((q["codec"], q["size"]) for q in points):
        sides = {roi: _curve_points(points, codec, size, roi) for roi in (False, True)}
        for target in targets:
            entry: dict[str, Any] = {"codec": codec, "size": size, "target_f1": target}
            for roi, curve in sides.items():
                label = "roi" if roi else "uniform"
                rates = [q["kbps"] for q in curve]
                reading = curves.rate_at(target, rates, [q["f1"] for q in curve])
                entry[f"{label}_kbps"] = reading.kbps
                entry[f"{label}_outside"] = (
                    None if reading.outside is None else reading.outside.name.lower()
                )
                for name in ("new_object_recall", "psnr_in_boxes", "psnr_out_boxes"):
                    entry[f"{name}_{label}"] = (
                        None
                        if reading.kbps is None
                        else curves.value_at(reading.kbps, rates, [q[name] for q in curve])
                    )
            u, r = entry["uniform_kbps"], entry["roi_kbps"]
            entry["bytes_ratio"] = u / r if u is not None and r is not None else None
            entry.update(_monotone_reading(sides, target))
            out.append(entry)
    # The names the issue promises first, the rest after.
    keys = (
        "codec",
        "target_f1",
        "bytes_ratio",
        "new_object_recall_uniform",
        "new_object_recall_roi",
    )
    return [{k: e[k] for k in keys} | {k: v for k, v in e.items() if k not in keys} for e in out]


def _monotone_reading(
    sides: dict[bool, list[dict[str, Any]]], target: float
) -> dict[str, float | None]:
    """The same reading on each curve's monotone fit (``curves.monotone_rate_at``): a
    check on ``bytes_ratio``, which one noisy point can move (a few boxes on a short clip)."""
    kbps = {
        roi: curves.monotone_rate_at(target, [q["kbps"] for q in c], [q["f1"] for q in c]).kbps
        for roi, c in sides.items()
    }
    u, r = kbps[False], kbps[True]
    return {
        "uniform_kbps_monotone": u,
        "roi_kbps_monotone": r,
        "bytes_ratio_monotone": u / r if u is not None and r is not None else None,
    }


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_points(points: Sequence[dict[str, Any]]) -> str:
    header = (
        f"{'codec':<6} {'size':>9} {'coding':<7} {'target':>6} {'kbit/s':>7} {'B/frame':>8} "
        f"{'PSNR':>5} {'in':>5} {'out':>5} {'P':>5} {'R':>5} {'F1':>5} {'new R':>5}"
    )
    lines = [header, "-" * len(header)]
    for q in points:
        lines.append(
            f"{codec_bench.CODEC_LABELS[q['codec']]:<6} {q['size']:>9} "
            f"{'ROI' if q['roi'] else 'uniform':<7} {q['setting']:>5}k {q['kbps']:7.1f} "
            f"{q['bytes_per_frame']:8.0f} {q['psnr_y']:5.1f} {_fmt(q['psnr_in_boxes'], '5.1f')} "
            f"{_fmt(q['psnr_out_boxes'], '5.1f')} {_fmt(q['precision'], '5.3f')} "
            f"{_fmt(q['recall'], '5.3f')} {_fmt(q['f1'], '5.3f')} "
            f"{_fmt(q['new_object_recall'], '5.3f')}"
        )
    return "\n".join(lines)


def _pair(entry: dict[str, Any], name: str, spec: str) -> str:
    return f"{_fmt(entry[name + '_uniform'], spec)}/{_fmt(entry[name + '_roi'], spec)}"


def format_readings(entries: Sequence[dict[str, Any]]) -> str:
    lines = [
        "at equal F1 (read off each curve, never extrapolated): kbit/s, bytes uniform / ROI,"
        " new-object recall (first second) and PSNR in / out of the boxes at that rate",
        f"{'codec':<6} {'size':>9} {'F1':>4} {'uniform':>8} {'ROI':>8} {'ratio':>6}  "
        f"{'new R uni/ROI':>13}  {'PSNR in uni/ROI':>15}  {'PSNR out uni/ROI':>16}  "
        f"{'monotone':>8}",
    ]
    for e in entries:
        uniform = _fmt(e["uniform_kbps"], ".0f") if e["uniform_kbps"] else e["uniform_outside"]
        roi = _fmt(e["roi_kbps"], ".0f") if e["roi_kbps"] else e["roi_outside"]
        lines.append(
            f"{codec_bench.CODEC_LABELS[e['codec']]:<6} {e['size']:>9} {e['target_f1']:>4} "
            f"{uniform:>8} {roi:>8} {_fmt(e['bytes_ratio'], '.2f'):>5}x  "
            f"{_pair(e, 'new_object_recall', '.3f'):>13}  "
            f"{_pair(e, 'psnr_in_boxes', '.1f'):>15}  {_pair(e, 'psnr_out_boxes', '.1f'):>16}  "
            f"{_fmt(e.get('bytes_ratio_monotone'), '.2f'):>7}x"
        )
    lines.append(
        "(below: the curve already reaches the target at its lowest rate; above: not even "
        "at its highest; either way no ratio. monotone: the ratio read off each curve's "
        "non-decreasing least-squares fit, a check on one noisy point deciding the reading)"
    )
    return "\n".join(lines)


# ---------------------------------------------------------------------- the bench


def roi_config(args: argparse.Namespace) -> RoiConfig:
    config = RoiConfig(enabled=True)
    if args.roi_strength is not None:
        config = replace(config, strength=args.roi_strength)
    if args.roi_refresh_interval is not None:
        config = replace(config, refresh_interval_s=args.roi_refresh_interval)
    config.check()
    return config


def run_roi_bench(
    args: argparse.Namespace, *, print_fn: Callable[[str], None] = print
) -> dict[str, Any]:
    """Run ``shelf-bench codec --roi``: print the tables, write JSON, return the summary."""
    from shelf_stream.bench.report import write_json
    from shelf_stream.engine.models import resolve_model

    started = time.monotonic()
    config = roi_config(args)
    inputs = list(args.input) if args.input else [None]
    detector = codec_bench._create_detector(resolve_model(args.model), args)
    class_names = detector.class_names
    bitrates = codec_bench.bitrates(args)
    sizes = list(dict.fromkeys(args.size))
    keys = [
        codec_bench.PointKey(codec, kbps, size)
        for codec in codec_bench.VIDEO_CODEC_NAMES
        for size in sizes
        for kbps in bitrates
    ]
    progress = codec_bench.ProgressBar(len(inputs) * (2 * len(keys) + 1))
    per_clip: list[list[RoiPointStats]] = []
    box_shares: list[float] = []
    clips = []
    try:
        for path in inputs:
            progress.show(f"reading {path or 'the generated scene'}")
            clip = codec_bench.load_clip(path, args.frames)
            clips.append(clip)
            truth = codec_bench.detect_pristine(clip, detector, 1, args.score_threshold)
            headline = codec_bench.headline_classes(
                codec_bench.class_box_counts(list(truth.values()))
            )
            fresh = new_object_boxes(
                [truth[i] for i in range(len(clip.frames))], clip.fps, headline
            )
            delay = delay_frames(clip.fps, args.roi_delay_frames)
            progress.advance(f"{clip.name}: pristine detections, answers {delay} frames late")
            runs = []
            for key in keys:
                size = key.size.resolve(clip.size, detector.input_size)
                for plan in (None, config):
                    coding = "ROI" if plan else "uniform"
                    label = f"{clip.name}: {codec_bench._setting_label(key)} {coding}"
                    progress.show(label)
                    runs.append(
                        replay(key, clip, detector, truth, size, roi=plan, delay=delay,
                               score_threshold=args.score_threshold, new_boxes=fresh,
                               threads=args.encoder_threads)
                    )  # fmt: skip
                    progress.advance(label)
            per_clip.append(runs)
            box_shares.append(box_share(truth, clip.size))
    finally:
        progress.close()
        detector.close()

    def block(runs_per_clip: Sequence[Sequence[RoiPointStats]]) -> dict[str, Any]:
        points = [
            summarize([runs[i] for runs in runs_per_clip], class_names, args.score_threshold)
            for i in range(len(runs_per_clip[0]))
        ]
        return {"points": points, "roi": readings(points)}

    summary: dict[str, Any] = {
        "bench": "codec",
        "mode": "roi",
        "inputs": [
            {
                "name": c.name,
                "frames": len(c.frames),
                "fps": c.fps,
                "size": codec_bench.size_text(c.size),
                "delay_frames": delay_frames(c.fps, args.roi_delay_frames),
                "box_share": share,
            }
            for c, share in zip(clips, box_shares, strict=True)
        ],
        "roi_config": dataclasses.asdict(config),
        "score_threshold": args.score_threshold,
        "encoder_threads": args.encoder_threads,
        "encoders": codec_bench._encoders_used(clips),
        **block(per_clip),
        "per_input": [
            {"name": clip.name, **block([runs])} for clip, runs in zip(clips, per_clip, strict=True)
        ]
        if len(clips) > 1
        else [],
    }
    summary["runtime_s"] = time.monotonic() - started
    print_fn(format_report(summary))
    write_json(args.json, {"summary": summary})
    return summary


def format_report(summary: dict[str, Any]) -> str:
    inputs = ", ".join(
        f"{i['name']} ({i['size']}, {i['frames']} frames @ {i['fps']:g} fps, answers "
        f"{i['delay_frames']} frames late; the boxes cover {i['box_share']:.0%} of the picture)"
        for i in summary["inputs"]
    )
    cfg = summary["roi_config"]
    background = min(cfg["strength"] * cfg["background_share"], cfg["max_background_qoffset"])
    sections = [
        f"ROI bench: {inputs}",
        f"ROI: objects {-cfg['strength']:+g}, background {background:+g}, edges "
        f"{cfg['edge_qoffset']:+g} (qoffset; x264/x265: x51 QP), hold {cfg['hold_s']:g} s, "
        + (
            f"refresh every {cfg['refresh_interval_s']:g} s"
            if cfg["refresh_interval_s"] > 0
            else "no refresh"
        ),
    ]
    blocks = [("all inputs" if summary["per_input"] else None, summary)]
    blocks += [(b["name"], b) for b in summary["per_input"]]
    for name, b in blocks:
        if name:
            sections += ["", f"== {name}"]
        sections += ["", format_points(b["points"]), "", format_readings(b["roi"])]
    sections.append(f"\nruntime: {summary['runtime_s']:.0f} s")
    return "\n".join(sections)
