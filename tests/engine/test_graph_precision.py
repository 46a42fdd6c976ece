"""FP16 and INT8 Q/DQ graphs for TensorRT 11's strongly typed builds, converted and run
here with ONNX Runtime on real frames: their detections must follow the FP32 model's.

Tolerances (the candidate runs at score 0.1, the FP32 reference at 0.3; see
``engine.agreement``), with what ``benchmarks/precision_agreement.py`` measured on these
eight frames in brackets:

* FP16: every FP32 detection matched, mean IoU >= 0.98 [0.997], score delta <= 0.03
  [0.011], mAP@0.5 >= 0.99 [1.000];
* INT8 Q/DQ: >= 90 % of FP32 detections matched [100 %], mean IoU >= 0.85 [0.93],
  mAP@0.5 >= 0.90 [0.98].

ONNX Runtime's CPU kernels are not TensorRT's: FP16 ops without a CPU kernel run in
FP32 between casts, and INT8 convolutions run as ORT's QLinearConv. What this checks is
the converted graph itself (weights, scales, which layers are quantized); the same
comparison on TensorRT engines is in ``benchmarks/gpu_check.py``.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from shelf_stream.engine import EngineConfig, create_detector
from shelf_stream.engine import graph_precision as gp
from shelf_stream.engine.agreement import agreement
from shelf_stream.engine.base import Detections, Detector
from shelf_stream.engine.trt_build import load_image
from shelf_stream.errors import ConfigError, EngineError

CANDIDATE_SCORE = 0.1


def _frames(directory: Path, prefix: str) -> list[Path]:
    return sorted(directory.glob(f"{prefix}-*.jpg"))


@pytest.fixture(scope="module")
def fp32_reference(
    yolox_detector: Detector, precision_frames: Path
) -> tuple[list[object], list[Detections]]:
    images = [load_image(p) for p in _frames(precision_frames, "eval")]
    return images, yolox_detector.detect(images)


@pytest.fixture(scope="module")
def fp16_graph(
    yolox_model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> gp.ConvertedGraph:
    out = tmp_path_factory.mktemp("graphs") / "yolox.fp16.onnx"
    return gp.convert_to_fp16(yolox_model_path, out)


@pytest.fixture(scope="module")
def int8_graph(
    yolox_model_path: Path,
    yolox_detector: Detector,
    precision_frames: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> gp.ConvertedGraph:
    out = tmp_path_factory.mktemp("graphs") / "yolox.int8.onnx"
    batches = (
        yolox_detector.prepare(load_image(p)).tensor[None]
        for p in _frames(precision_frames, "calib")
    )
    return gp.quantize_to_int8(yolox_model_path, out, input_name="images", batches=batches)


def _detect(path: Path, images: list[object]) -> Iterator[Detections]:
    detector = create_detector(EngineConfig(model_path=path, score_threshold=CANDIDATE_SCORE))
    try:
        yield from detector.detect(images)  # type: ignore[arg-type]
    finally:
        detector.close()


def test_fp16_graph_has_fp16_weights_and_float32_io(fp16_graph: gp.ConvertedGraph) -> None:
    model = onnx.load(str(fp16_graph.path))
    weights = [i for i in model.graph.initializer if i.dims]
    assert weights and all(i.data_type == TensorProto.FLOAT16 for i in weights)
    io = [*model.graph.input, *model.graph.output]
    assert all(v.type.tensor_type.elem_type == TensorProto.FLOAT for v in io)
    assert fp16_graph.summary["fp16_initializers"] == len(
        [i for i in model.graph.initializer if i.data_type == TensorProto.FLOAT16]
    )
    version = importlib.metadata.version("onnxconverter-common")
    assert fp16_graph.tool == f"onnxconverter-common {version} keep-io r{gp.RECIPE_VERSION}"


def test_fp16_detections_follow_fp32_on_real_frames(
    fp16_graph: gp.ConvertedGraph, fp32_reference: tuple[list[object], list[Detections]]
) -> None:
    images, reference = fp32_reference
    assert sum(len(d) for d in reference) >= 20  # the frames hold real detections
    result = agreement(reference, list(_detect(fp16_graph.path, images)))
    assert result.matched_fraction == 1.0, result.describe()
    assert result.mean_matched_iou >= 0.98, result.describe()
    assert result.max_score_delta <= 0.03, result.describe()
    assert result.map50 >= 0.99, result.describe()


def test_int8_graph_is_symmetric_qdq_with_the_chosen_layers_in_float(
    int8_graph: gp.ConvertedGraph, yolox_model_path: Path
) -> None:
    model = onnx.load(str(int8_graph.path))
    summary = int8_graph.summary
    assert summary["calibration_frames"] == 8
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert summary["convs"] == len(convs) == 113
    # The first 30 % of the convolutions and the 9 prediction convolutions stay float.
    original = onnx.load(str(yolox_model_path))
    float_names = set(gp.float_convs(original, gp.DEFAULT_INT8))
    assert len(float_names) == int(113 * 0.3) + 9 == summary["float_convs"]
    assert summary["int8_convs"] == 113 - len(float_names)
    dq = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    weights = {i.name: i for i in model.graph.initializer}
    for conv in convs:
        quantized = conv.input[1] in dq
        assert quantized == (conv.name not in float_names), conv.name
        if quantized:
            assert weights[dq[conv.input[1]].input[0]].data_type == TensorProto.INT8
            assert conv.input[0] in dq  # the activation is quantized too
            assert len(conv.input) < 3 or conv.input[2] not in dq  # bias stays float
    assert max(o.version for o in model.opset_import if o.domain == "") >= gp.MIN_QDQ_OPSET


def test_int8_detections_follow_fp32_on_real_frames(
    int8_graph: gp.ConvertedGraph, fp32_reference: tuple[list[object], list[Detections]]
) -> None:
    images, reference = fp32_reference
    result = agreement(reference, list(_detect(int8_graph.path, images)))
    assert result.matched_fraction >= 0.9, result.describe()
    assert result.mean_matched_iou >= 0.85, result.describe()
    assert result.map50 >= 0.90, result.describe()


def test_unconverted_graphs_are_refused(yolox_model_path: Path) -> None:
    fp32 = onnx.load(str(yolox_model_path))
    with pytest.raises(EngineError, match="no FP16 weights; refusing to build an FP32 engine"):
        gp.verify_fp16(fp32)
    with pytest.raises(EngineError, match="no INT8 convolution; refusing to build an FP32"):
        gp.verify_int8(fp32)


def test_a_missing_converter_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.metadata.version

    def version(name: str) -> str:
        if name == "onnxconverter-common":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    with pytest.raises(
        EngineError, match=r"onnxconverter-common is not installed, .*\[precision\]"
    ):
        gp.converter_identity(gp.FP16)
    assert gp.converter_identity(gp.INT8).startswith("onnxruntime ")


def test_int8_settings_are_checked_and_named() -> None:
    with pytest.raises(ConfigError, match="unknown calibration method 'kl'"):
        gp.Int8Settings(calibration_method="kl").validate()
    with pytest.raises(ConfigError, match=r"float_leading_conv_fraction must be in \[0, 1\)"):
        gp.Int8Settings(float_leading_conv_fraction=1.0).validate()
    assert gp.DEFAULT_INT8.describe() == "minmax,float-leading=0.3,float-outputs=1"
    assert np.isclose(gp.DEFAULT_INT8.float_leading_conv_fraction, 0.3)
