"""FP16 and INT8 Q/DQ graphs against FP32 on the CPU: detection agreement and speed.

The graphs are what a TensorRT 11 build parses (``engine.graph_precision``), converted
from the FP32 model here, and run by ONNX Runtime's CPU provider on the real frames in
tests/data/precision-frames (calib-* calibrate the INT8 graph, eval-* are compared).
Speed: the graphs interleaved round by round in one process, one intra-op thread each,
so that a busy machine slows all of them alike; medians over the rounds.

    .venv/bin/python benchmarks/precision_agreement.py [--model yolox_nano.onnx]

ONNX Runtime's CPU kernels are not TensorRT's: this measures the graphs (weights, scales,
which layers are quantized), not TensorRT's FP16/INT8 speed or accuracy. In particular
ORT's x86 CPU provider does not fuse the TensorRT-oriented Q/DQ pattern (signed,
symmetric INT8 activations) into QLinearConv, so on the CPU the INT8 graph runs as
simulated quantization (Q/DQ around float convolutions) and is slower than FP32; with
unsigned asymmetric activations, which TensorRT does not take, ORT fuses 71 QLinearConv.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

FRAMES = REPO / "tests" / "data" / "precision-frames"
REFERENCE_SCORE, CANDIDATE_SCORE = 0.3, 0.1


def _session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def speeds(graphs: dict[str, Path], tensors: list[Any], rounds: int, threads: int) -> dict:
    """Median and p90 ms per frame of each graph, interleaved round by round."""
    sessions = {name: _session(path, threads) for name, path in graphs.items()}
    times: dict[str, list[float]] = {name: [] for name in graphs}
    for session in sessions.values():  # warm-up
        session.run(None, {"images": tensors[0]})
    for index in range(rounds):
        tensor = tensors[index % len(tensors)]
        for name, session in sessions.items():
            t0 = time.perf_counter()
            session.run(None, {"images": tensor})
            times[name].append((time.perf_counter() - t0) * 1000)
    return {
        name: {
            "median_ms": round(statistics.median(t), 2),
            "p90_ms": round(sorted(t)[int(0.9 * (len(t) - 1))], 2),
        }
        for name, t in times.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument(
        "--model", type=Path, help="FP32 YOLOX ONNX model (default: the packaged YOLOX-Nano)"
    )
    parser.add_argument("--rounds", type=int, default=40, help="speed rounds (default 40)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--float-leading", type=float, default=None,
        help="share of convolutions kept in float (default: graph_precision's)",
    )  # fmt: skip
    parser.add_argument(
        "--quantize-outputs", action="store_true", help="quantize the prediction convolutions too"
    )
    args = parser.parse_args(argv)

    from shelf_stream.engine import EngineConfig
    from shelf_stream.engine import graph_precision as gp
    from shelf_stream.engine.agreement import agreement
    from shelf_stream.engine.onnx_backend import OnnxRuntimeDetector
    from shelf_stream.engine.trt_build import load_image

    def detector(path: Path, score: float) -> OnnxRuntimeDetector:
        return OnnxRuntimeDetector(
            EngineConfig(model_path=path, score_threshold=score), prefer_cuda=False
        )

    settings = gp.Int8Settings(
        float_leading_conv_fraction=(
            gp.DEFAULT_INT8.float_leading_conv_fraction
            if args.float_leading is None
            else args.float_leading
        ),
        float_output_convs=not args.quantize_outputs,
    )
    if args.model is None:
        from shelf_stream.engine.models import resolve_model

        args.model = resolve_model(None)
    reference = detector(args.model, REFERENCE_SCORE)
    calib = [load_image(p) for p in sorted(FRAMES.glob("calib-*.jpg"))]
    images = [load_image(p) for p in sorted(FRAMES.glob("eval-*.jpg"))]
    expected = reference.detect(images)
    report: dict[str, Any] = {"frames": len(images), "calibration_frames": len(calib)}
    with tempfile.TemporaryDirectory() as tmp:
        graphs = {"fp32": args.model}
        fp16 = gp.convert_to_fp16(args.model, Path(tmp) / "fp16.onnx")
        int8 = gp.quantize_to_int8(
            args.model,
            Path(tmp) / "int8.onnx",
            input_name="images",
            batches=(reference.prepare(image).tensor[None] for image in calib),
            settings=settings,
        )
        for graph in (fp16, int8):
            graphs[graph.precision] = graph.path
            result = agreement(expected, detector(graph.path, CANDIDATE_SCORE).detect(images))
            report[graph.precision] = {
                "agreement": result.to_json(),
                "graph": {"tool": graph.tool, **graph.summary},
            }
            print(f"{graph.precision}: {result.describe()}")
            print(f"      {gp.describe(graph)}")
        tensors = [reference.prepare(image).tensor[None] for image in images]
        report["cpu_speed"] = speed = speeds(graphs, tensors, args.rounds, args.threads)
    base = speed["fp32"]["median_ms"]
    print(f"CPU, {args.threads} thread(s), {args.rounds} interleaved rounds:")
    for name, figures in speed.items():
        ratio = figures["median_ms"] / base
        print(
            f"  {name}: median {figures['median_ms']:.2f} ms, p90 {figures['p90_ms']:.2f} ms "
            f"({ratio:.2f}x FP32)"
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
