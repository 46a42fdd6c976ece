"""Reduced precision written into the ONNX graph, for TensorRT 11's strongly typed builds.

TensorRT 11 removed the precision builder flags (``BuilderFlag.FP16``/``INT8``) and the
implicit INT8 calibrator: every network is strongly typed and takes each tensor's type
from the graph (NVIDIA, "Migrating from TensorRT 10.x to 11.x": strong typing with
ModelOpt AutoCast replaces ``BuilderFlag.FP16``; explicit quantization with Q/DQ nodes
replaces ``BuilderFlag.INT8`` and ``IBuilderConfig.int8_calibrator``). So before such a
build the FP32 model is rewritten here, on the CPU:

* **FP16**: onnxconverter-common's ``convert_float_to_float16`` with ``keep_io_types``
  (graph inputs and outputs stay float32, so the engine's buffers, the letterbox and the
  decoding are unchanged). The migration guide names ModelOpt AutoCast; onnxconverter-
  common is the light alternative the issue allows (no PyTorch, pure Python).
* **INT8**: ONNX Runtime's ``quantize_static`` in QDQ format, calibrated on real frames
  letterboxed exactly as at inference. The options follow what TensorRT accepts:
  symmetric signed INT8 for activations and weights (ORT's ``quantize_static``
  docstring: "use symmetric QuantType.QInt8 for both activations and weights when
  targeting GPU/TRT"; TensorRT quantization is symmetric, zero point 0), per-channel
  weights, INT8 weights behind a DequantizeLinear (TensorRT "Explicit Quantization":
  "When using pre-quantized weights, an IDequantizeLayer is required between the weights
  and the linear operator"), float biases (``QuantizeBias=False``: TensorRT fuses the
  bias in float and rejects an INT32 bias DequantizeLinear, microsoft/onnxruntime#17738
  and #14229), a dedicated Q/DQ pair per consumer (Hugging Face Optimum's TensorRT
  quantization config) and only convolutions quantized: those are what TensorRT runs
  in INT8 and what Q/DQ placement is for.

Every conversion is verified before TensorRT sees it: a graph with no FP16 weights, or no
INT8 convolution, is an ``EngineError``, never an FP32 engine under a reduced-precision
cache key. ``converter_identity`` names the tool, its version and this module's recipe;
the engine cache key records it, so changing any of them builds a new engine.

Measured on YOLOX-Nano (``benchmarks/precision_agreement.py``, eight real frames, FP32
detections at score 0.3 as the reference, the INT8 graph's at 0.1): quantizing every
convolution (``--float-leading 0 --quantize-outputs``) leaves mAP@0.5 0.05, 14 % of the
FP32 detections found, because errors of 20-27 dB per activation tensor compound
through the depthwise backbone (published INT8 results for YOLOX-Nano fare as badly:
PINTO0309/PINTO_model_zoo#115). Keeping the first 30 % of the convolutions (the
high-resolution layers) and the prediction convolutions in float gives mAP@0.5 0.98
with every FP32 detection found; that is the default (``Int8Settings``), a choice for
this family of models that other models may tune.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import logging
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shelf_stream.errors import ConfigError, EngineError

log = logging.getLogger(__name__)

FP16 = "fp16"
INT8 = "int8"
GRAPH_PRECISIONS = (FP16, INT8)

#: Bumped whenever the conversion recipe below changes what it writes: it is part of the
#: engine cache key (through ``converter_identity``), so old engines are rebuilt.
RECIPE_VERSION = 1
#: Per-channel Q/DQ (the ``axis`` attribute of QuantizeLinear/DequantizeLinear) needs
#: opset 13; older graphs are upgraded first.
MIN_QDQ_OPSET = 13
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")

PRECISION_INSTALL_HINT = (
    "install the graph-conversion tools with: pip install 'shelf-stream[precision]' "
    "(onnxconverter-common and onnx; the gpu-cu12/gpu-cu13 extras include them)"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Int8Settings:
    """How the INT8 Q/DQ graph is calibrated and which convolutions stay in float.

    ``float_leading_conv_fraction``: the share of convolutions, in graph order from the
    input, kept in float (the high-resolution layers, where per-tensor activation
    scales lose the most; see the module docstring for the measurement).
    ``float_output_convs``: keep the convolutions that produce the model's outputs
    (boxes, objectness, class logits) in float.
    ``max_calibration_images``: calibration stops after this many frames.
    """

    calibration_method: str = "minmax"
    float_leading_conv_fraction: float = 0.3
    float_output_convs: bool = True
    max_calibration_images: int = 500

    def validate(self) -> None:
        if self.calibration_method not in CALIBRATION_METHODS:
            raise ConfigError(
                f"unknown calibration method {self.calibration_method!r}; choose one of "
                f"{', '.join(CALIBRATION_METHODS)}"
            )
        if not 0.0 <= self.float_leading_conv_fraction < 1.0:
            raise ConfigError(
                "float_leading_conv_fraction must be in [0, 1), got "
                f"{self.float_leading_conv_fraction}"
            )
        if self.max_calibration_images <= 0:
            raise ConfigError(
                f"max_calibration_images must be positive, got {self.max_calibration_images}"
            )

    def describe(self) -> str:
        """The settings as they enter the cache key."""
        return (
            f"{self.calibration_method},float-leading={self.float_leading_conv_fraction:g},"
            f"float-outputs={int(self.float_output_convs)}"
        )


DEFAULT_INT8 = Int8Settings()


@dataclass(frozen=True, slots=True)
class ConvertedGraph:
    """An ONNX graph rewritten for a strongly typed build, and what was checked in it."""

    path: Path
    precision: str
    sha256: str
    tool: str
    summary: dict[str, int] = field(default_factory=dict)


# ------------------------------------------------------------------------ identity


def _version_of(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise EngineError(
            f"{distribution} is not installed, so the graph cannot be converted for a "
            f"strongly typed TensorRT build; {PRECISION_INSTALL_HINT}"
        ) from None


def converter_identity(precision: str, int8: Int8Settings = DEFAULT_INT8) -> str:
    """Tool, version and recipe of the conversion to ``precision`` (for the cache key);
    ``EngineError`` if the tool is not installed: the precision cannot be honoured."""
    if precision == FP16:
        version = _version_of("onnxconverter-common")
        return f"onnxconverter-common {version} keep-io r{RECIPE_VERSION}"
    if precision == INT8:
        return (
            f"onnxruntime {_version_of('onnxruntime')} quantize_static QDQ s8s8 "
            f"per-channel {int8.describe()} r{RECIPE_VERSION}"
        )
    raise ConfigError(f"no graph conversion for precision {precision!r}")


# ----------------------------------------------------------------------- helpers


def _load_onnx() -> Any:
    try:
        import onnx
    except ImportError as exc:
        raise EngineError(f"onnx is not installed ({exc}); {PRECISION_INSTALL_HINT}") from exc
    return onnx


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _default_opset(model: Any) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def _initializers(model: Any) -> dict[str, Any]:
    return {init.name: init for init in model.graph.initializer}


def _io_types(model: Any) -> list[int]:
    return [v.type.tensor_type.elem_type for v in (*model.graph.input, *model.graph.output)]


# --------------------------------------------------------------------------- FP16


def convert_to_fp16(src: Path, dst: Path) -> ConvertedGraph:
    """Write ``src`` as a mixed FP16 graph with float32 inputs and outputs to ``dst``."""
    onnx = _load_onnx()
    tool = converter_identity(FP16)
    try:
        from onnxconverter_common import float16
    except ImportError as exc:
        raise EngineError(f"onnxconverter-common does not import ({exc})") from exc
    model = onnx.load(str(src))
    with warnings.catch_warnings(record=True) as caught:
        # It warns once per weight it clamps to FP16's range; one summary line is enough.
        warnings.simplefilter("always")
        converted = float16.convert_float_to_float16(model, keep_io_types=True)
    clamped = sum(1 for w in caught if "truncated" in str(w.message))
    if clamped:
        log.info("FP16 conversion of %s clamped %d values to FP16's range", src.name, clamped)
    onnx.save(converted, str(dst))
    summary = verify_fp16(converted)
    summary["clamped_values"] = clamped
    return ConvertedGraph(dst, FP16, _sha256(dst), tool, summary)


def verify_fp16(model: Any) -> dict[str, int]:
    """Counts of FP16 and FP32 weights; ``EngineError`` unless the weights are FP16 and
    the graph's inputs and outputs are still float32."""
    from onnx import TensorProto

    inits = model.graph.initializer
    fp16 = sum(1 for i in inits if i.data_type == TensorProto.FLOAT16)
    fp32 = sum(1 for i in inits if i.data_type == TensorProto.FLOAT)
    if fp16 == 0:
        raise EngineError(
            "the FP16 conversion produced no FP16 weights; refusing to build an FP32 engine "
            "for an fp16 request"
        )
    if any(t != TensorProto.FLOAT for t in _io_types(model)):
        raise EngineError("the FP16 conversion changed the graph's input or output types")
    return {"fp16_initializers": fp16, "fp32_initializers": fp32}


# --------------------------------------------------------------------------- INT8


class _Calibration:
    """ONNX Runtime's ``CalibrationDataReader`` protocol over letterboxed batches."""

    def __init__(self, input_name: str, batches: Iterator[np.ndarray], limit: int) -> None:
        self._input_name = input_name
        self._batches = batches
        self._left = limit
        self.frames_seen = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._left <= 0:
            return None
        batch = next(self._batches, None)
        if batch is None:
            return None
        self._left -= len(batch)
        self.frames_seen += len(batch)
        return {self._input_name: batch}


def conv_names(model: Any) -> list[str]:
    """Convolution node names in graph (topological) order, unnamed ones named."""
    names = []
    for index, node in enumerate(model.graph.node):
        if node.op_type == "Conv":
            if not node.name:
                node.name = f"Conv_{index}"
            names.append(node.name)
    return names


def output_conv_names(model: Any) -> set[str]:
    """Convolutions whose result reaches a graph output without passing another
    convolution: the prediction layers, whose outputs are the boxes and scores."""
    producers = {out: node for node in model.graph.node for out in node.output}
    found: set[str] = set()
    seen: set[str] = set()
    stack = [o.name for o in model.graph.output]
    while stack:
        tensor = stack.pop()
        if tensor in seen:
            continue
        seen.add(tensor)
        node = producers.get(tensor)
        if node is None:
            continue
        if node.op_type == "Conv":
            found.add(node.name)
            continue  # stop: what feeds this convolution is not an output layer
        stack.extend(node.input)
    return found


def float_convs(model: Any, settings: Int8Settings) -> list[str]:
    """The convolutions ``settings`` keep in float, in graph order."""
    names = conv_names(model)
    keep = set(names[: int(len(names) * settings.float_leading_conv_fraction)])
    if settings.float_output_convs:
        keep |= output_conv_names(model)
    return [n for n in names if n in keep]


def _upgraded_for_qdq(onnx: Any, src: Path, dst: Path) -> Path:
    model = onnx.load(str(src))
    if _default_opset(model) >= MIN_QDQ_OPSET:
        return src
    from onnx import version_converter

    log.info("upgrading %s from opset %d to %d for Q/DQ", src.name, _default_opset(model), 13)
    onnx.save(version_converter.convert_version(model, MIN_QDQ_OPSET), str(dst))
    return dst


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """ONNX Runtime's quantizer logs on the root logger (a pre-processing suggestion,
    histogram progress); keep it out of the server's log unless debugging."""
    root = logging.getLogger()
    previous = root.level
    if not log.isEnabledFor(logging.DEBUG):
        root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(previous)


def quantize_to_int8(
    src: Path,
    dst: Path,
    *,
    input_name: str,
    batches: Iterable[np.ndarray],
    settings: Int8Settings = DEFAULT_INT8,
) -> ConvertedGraph:
    """Write ``src`` as an INT8 Q/DQ graph calibrated on ``batches`` (float32 model
    inputs, letterboxed as at inference) to ``dst``."""
    settings.validate()
    onnx = _load_onnx()
    tool = converter_identity(INT8, settings)
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    staged = _upgraded_for_qdq(onnx, src, dst.with_name(dst.stem + ".opset13.onnx"))
    model = onnx.load(str(staged))
    names = conv_names(model)
    onnx.save(model, str(staged))  # with every convolution named, as ``names`` says
    excluded = float_convs(model, settings)
    reader = _Calibration(input_name, iter(batches), settings.max_calibration_images)
    methods = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }
    with _quiet_quantizer():
        quantize_static(
            str(staged),
            str(dst),
            reader,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["Conv"],
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded,
            calibrate_method=methods[settings.calibration_method],
            extra_options={
                "ActivationSymmetric": True,
                "WeightSymmetric": True,
                "QuantizeBias": False,
                "DedicatedQDQPair": True,
            },
        )
    if staged != src:
        staged.unlink(missing_ok=True)
    if reader.frames_seen == 0:
        raise ConfigError("INT8 calibration got no frames; pass calibration images")
    summary = verify_int8(onnx.load(str(dst)))
    summary.update(calibration_frames=reader.frames_seen, float_convs=len(excluded))
    summary["convs"] = len(names)
    return ConvertedGraph(dst, INT8, _sha256(dst), tool, summary)


def verify_int8(model: Any) -> dict[str, int]:
    """Counts of INT8 convolutions; ``EngineError`` unless some convolution takes INT8
    weights through a DequantizeLinear and every zero point is 0 (TensorRT's
    quantization is symmetric)."""
    from onnx import TensorProto, numpy_helper

    inits = _initializers(model)
    dq_outputs = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    int8_convs = 0
    for node in model.graph.node:
        if node.op_type != "Conv" or len(node.input) < 2:
            continue
        dq = dq_outputs.get(node.input[1])
        weight = inits.get(dq.input[0]) if dq is not None else None
        if weight is not None and weight.data_type == TensorProto.INT8:
            int8_convs += 1
    if int8_convs == 0:
        raise EngineError(
            "the INT8 quantization produced no INT8 convolution; refusing to build an FP32 "
            "engine for an int8 request"
        )
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2:
            zero_point = inits.get(node.input[2])
            if zero_point is not None and np.any(numpy_helper.to_array(zero_point) != 0):
                raise EngineError(f"{node.name} has a non-zero zero point; TensorRT needs 0")
    qdq = sum(1 for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear"))
    return {"int8_convs": int8_convs, "qdq_nodes": qdq}


def convert(
    precision: str,
    src: Path,
    dst: Path,
    *,
    input_name: str = "",
    batches: Iterable[np.ndarray] = (),
    int8: Int8Settings = DEFAULT_INT8,
) -> ConvertedGraph:
    """``convert_to_fp16`` or ``quantize_to_int8`` by name."""
    if precision == FP16:
        return convert_to_fp16(src, dst)
    if precision == INT8:
        return quantize_to_int8(src, dst, input_name=input_name, batches=batches, settings=int8)
    raise ConfigError(f"no graph conversion for precision {precision!r}")


def describe(graph: ConvertedGraph) -> str:
    """One line for the log."""
    counts = ", ".join(f"{k} {v}" for k, v in sorted(graph.summary.items()))
    return f"{graph.precision} graph by {graph.tool} ({counts})"
