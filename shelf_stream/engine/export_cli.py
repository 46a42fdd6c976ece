"""``shelf-stream export``: ONNX -> TensorRT engine, or Ultralytics checkpoint -> ONNX.

::

    shelf-stream export --onnx model.onnx [--fp16] [--int8 --calib DIR] [--best]
                        [--batch MIN:OPT:MAX] [--workspace-mb N] --engine out.engine
    shelf-stream export --onnx model.onnx (--fp16 | --int8 --calib DIR) --out graph.onnx
    shelf-stream export --weights model.pt [--imgsz N] [--out model.onnx]

Precision rules (see ``trt_build.BuildOptions`` and ``trt_build.plan_precisions``):
``--int8`` needs ``--calib``; ``--calib`` alone is an error. TensorRT 10 enables the
precisions as builder flags: ``--best`` is FP16, BF16 and (with ``--calib``) INT8.
TensorRT 11 builds strongly typed from the graph converted first (``graph_precision``):
``--fp16`` an FP16 graph, ``--int8`` an INT8 Q/DQ graph calibrated on ``--calib``,
``--best`` INT8 with ``--calib`` else FP16, and ``--fp16 --int8`` together is an error.
A precision that cannot be honoured is an error, never an FP32 engine.

``--onnx`` with ``--out`` instead of ``--engine`` writes that converted graph (FP16, or
INT8 Q/DQ calibrated on ``--calib``) for a build elsewhere: TensorRT 11's trtexec has
no precision flags, so a Triton plan is built from such a graph.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path
from typing import Any

from shelf_stream.errors import ConfigError, EngineError

log = logging.getLogger(__name__)

EXPORT_INSTALL_HINT = "install the export extra: pip install 'shelf-stream[export]'"


def add_export_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``export`` sub-command to ``subparsers`` (from ``add_subparsers``)."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "export",
        help="build a TensorRT engine from ONNX, or export an Ultralytics checkpoint to ONNX",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--onnx", type=Path, help="ONNX model to build a TensorRT engine from")
    source.add_argument("--weights", type=Path, help="Ultralytics .pt checkpoint to export")
    trt = parser.add_argument_group("TensorRT engine (with --onnx)")
    trt.add_argument("--engine", type=Path, help="where to write the engine (a .json sidecar too)")
    trt.add_argument(
        "--fp16", action="store_true",
        help="FP16 (TensorRT 10: builder flag; 11: the graph converted to FP16)",
    )  # fmt: skip
    trt.add_argument(
        "--int8", action="store_true",
        help="INT8, needs --calib (TensorRT 10: calibrator; 11: a Q/DQ graph)",
    )  # fmt: skip
    trt.add_argument("--calib", type=Path, help="directory of calibration images for INT8")
    trt.add_argument(
        "--best", action="store_true",
        help="TensorRT 10: every reduced precision, like trtexec --best (INT8 only with "
        "--calib); 11: INT8 with --calib, else FP16",
    )  # fmt: skip
    trt.add_argument(
        "--batch", default=None,
        help="optimisation profile batch sizes MIN:OPT:MAX (default 1:1:8)",
    )  # fmt: skip
    trt.add_argument("--workspace-mb", type=int, default=None, help="builder workspace (MB)")
    onnx = parser.add_argument_group("ONNX export (with --weights)")
    onnx.add_argument("--imgsz", type=int, default=640, help="input size in pixels (default 640)")
    onnx.add_argument(
        "--out", type=Path,
        help="ONNX path (default: next to the weights); with --onnx: write the --fp16 or "
        "--int8 graph there instead of building an engine",
    )  # fmt: skip
    from shelf_stream.engine.onnx_batch import add_dynamic_batch_args

    add_dynamic_batch_args(parser)
    return parser


def build_options_from_args(args: argparse.Namespace) -> Any:
    """``BuildOptions`` from the parsed ``--onnx`` arguments; ``ConfigError`` if bad."""
    from shelf_stream.engine.trt_build import (
        DEFAULT_BATCH,
        DEFAULT_WORKSPACE_MB,
        BuildOptions,
        parse_batch,
    )

    options = BuildOptions(
        fp16=args.fp16,
        int8=args.int8,
        best=args.best,
        calib_dir=args.calib,
        batch=parse_batch(args.batch) if args.batch else DEFAULT_BATCH,
        workspace_mb=DEFAULT_WORKSPACE_MB if args.workspace_mb is None else args.workspace_mb,
    )
    options.validate()
    return options


def _check_onnx_args(args: argparse.Namespace) -> None:
    if args.engine is None and args.out is None:
        raise ConfigError(
            "--onnx needs --engine OUT.engine (where to write the engine), or --out "
            "GRAPH.onnx with --fp16 or --int8 (a converted graph)"
        )
    if not args.onnx.is_file():
        raise ConfigError(f"ONNX model not found: {args.onnx}")
    if args.out is not None and args.engine is not None:
        raise ConfigError("give --engine (an engine) or --out (a converted graph), not both")


def _graph_precision(args: argparse.Namespace) -> str:
    """The one precision ``--onnx M --out G`` converts to; ``ConfigError`` otherwise."""
    misused = [
        flag
        for flag, given in (
            ("--best", args.best),
            ("--batch", args.batch is not None),
            ("--workspace-mb", args.workspace_mb is not None),
        )
        if given
    ]
    if misused:
        raise ConfigError(f"{', '.join(misused)} only apply to an engine build (--engine)")
    if args.fp16 == args.int8:
        raise ConfigError("--out writes one converted graph: give --fp16 or --int8 --calib DIR")
    if args.int8 and args.calib is None:
        raise ConfigError("--int8 needs calibration images: add --calib DIR")
    if args.fp16 and args.calib is not None:
        raise ConfigError("--calib is only used with --int8")
    if args.calib is not None and not args.calib.is_dir():
        raise ConfigError(f"calibration directory not found: {args.calib}")
    return "fp16" if args.fp16 else "int8"


def _write_graph(args: argparse.Namespace) -> int:
    from shelf_stream.engine import graph_precision
    from shelf_stream.engine.trt_build import calibration_images, convert_graph

    precision = _graph_precision(args)
    images = calibration_images(args.calib) if args.calib is not None else []
    graph = convert_graph(args.onnx, precision, args.out, images=images)
    print(f"wrote {args.out}: {graph_precision.describe(graph)}")
    return 0


def _check_weights_args(args: argparse.Namespace) -> None:
    trt_only = {
        "--engine": args.engine is not None,
        "--fp16": args.fp16,
        "--int8": args.int8,
        "--calib": args.calib is not None,
        "--best": args.best,
        "--batch": args.batch is not None,
        "--workspace-mb": args.workspace_mb is not None,
    }
    misused = [flag for flag, given in trt_only.items() if given]
    if misused:
        raise ConfigError(
            f"{', '.join(misused)} only apply to --onnx; export the checkpoint to ONNX first, "
            "then build the engine from it"
        )
    if not args.weights.is_file():
        raise ConfigError(f"weights not found: {args.weights}")
    if args.imgsz <= 0 or args.imgsz % 32:
        raise ConfigError(f"--imgsz must be a positive multiple of 32, got {args.imgsz}")


def run_export(args: argparse.Namespace) -> int:
    """Run ``export``; 0 on success. Raises ``ConfigError``/``EngineError`` (the CLI
    prints them)."""
    if args.dynamic_batch:
        from shelf_stream.engine.onnx_batch import run_dynamic_batch

        return run_dynamic_batch(args.onnx, args.out)
    if args.onnx is not None:
        _check_onnx_args(args)
        if args.out is not None:
            return _write_graph(args)
        options = build_options_from_args(args)
        from shelf_stream.engine.trt_build import build_with_options

        sidecar = build_with_options(args.onnx, args.engine, options)
        mode = sidecar.key.precision_mode.replace("_", " ")
        print(
            f"wrote {args.engine} ({', '.join(sidecar.key.precisions) or 'fp32/tf32'}, {mode}, "
            f"batch {':'.join(map(str, sidecar.key.batch))}) for {sidecar.key.gpu_name} "
            f"(compute capability {sidecar.key.compute_capability}), TensorRT "
            f"{sidecar.key.tensorrt_version}, in {sidecar.build_seconds:.0f} s"
        )
        return 0
    _check_weights_args(args)
    out = export_ultralytics(args.weights, imgsz=args.imgsz, out=args.out)
    print(f"wrote {out}")
    return 0


def _load_yolo() -> Any:
    try:
        from ultralytics import YOLO
    except ImportError as exc:
        raise ConfigError(
            f"exporting .pt weights needs ultralytics ({exc}); {EXPORT_INSTALL_HINT}"
        ) from exc
    return YOLO


def export_ultralytics(
    weights: Path, *, imgsz: int = 640, out: Path | None = None, yolo: Any | None = None
) -> Path:
    """Export an Ultralytics detection checkpoint to ONNX with a dynamic batch.

    Ultralytics writes the class names (``names``) and ``imgsz`` into the ONNX metadata,
    which the adapters read; the export is checked for them. ``yolo`` (the ``YOLO``
    class) is injectable for tests.
    """
    yolo = yolo if yolo is not None else _load_yolo()
    model = yolo(str(weights))
    task = getattr(model, "task", "detect")
    if task != "detect":
        raise ConfigError(f"{weights} is a {task!r} model; shelf-stream serves detection models")
    # dynamic=True: a dynamic batch for TensorRT profiles (height/width become dynamic
    # too; the adapters take them from the imgsz metadata). No NMS in the graph: the
    # shared post-processing does it for every backend alike.
    exported = Path(model.export(format="onnx", imgsz=imgsz, dynamic=True, simplify=True))
    if out is not None and exported.resolve() != out.resolve():
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(exported), out)
        exported = out
    _check_metadata(exported)
    return exported


def _check_metadata(path: Path) -> None:
    from shelf_stream.engine.trt_build import onnx_metadata

    try:
        metadata = onnx_metadata(path)
    except EngineError as exc:
        raise EngineError(f"the exported model cannot be read back: {exc}") from exc
    missing = [key for key in ("names", "imgsz") if key not in metadata]
    if missing:
        log.warning(
            "%s has no %s metadata; pass class names with the serve options",
            path,
            " or ".join(missing),
        )
