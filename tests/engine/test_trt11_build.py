"""Precision on TensorRT 10 (builder flags) and TensorRT 11 (strongly typed, from a
converted graph), with the fakes: what is asked, what is built, what the key records,
and the errors for what cannot be honoured."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from types import SimpleNamespace

import onnx
import pytest
from onnx import TensorProto

from shelf_stream.engine import EngineConfig
from shelf_stream.engine import graph_precision as gp
from shelf_stream.engine import trt_build as tb
from shelf_stream.engine.agreement import agreement
from shelf_stream.engine.base import Detector
from shelf_stream.engine.tensorrt_backend import TensorRTDetector
from shelf_stream.engine.trt_build import load_image
from shelf_stream.errors import ConfigError, EngineError

from .fake_gpu import FakeCudart, FakeTensorRT, FakeTensorRT11

TRT10, TRT11 = FakeTensorRT.__version__, FakeTensorRT11.__version__


# ------------------------------------------------------------------- the plans


def test_tensorrt10_plans_builder_flags(tmp_path: Path) -> None:
    plan = tb.plan_precisions(tb.BuildOptions(best=True, calib_dir=tmp_path), TRT10)
    assert plan == tb.PrecisionPlan(tb.BUILDER_FLAGS, ("bf16", "fp16", "int8"), None)
    assert tb.plan_precisions(tb.BuildOptions(), TRT10).precisions == ()


def test_tensorrt11_plans_one_graph_precision(tmp_path: Path) -> None:
    fp16 = tb.plan_precisions(tb.BuildOptions(fp16=True), TRT11)
    assert fp16.mode == tb.STRONGLY_TYPED and fp16.precisions == ("fp16",)
    assert fp16.converter == gp.converter_identity(gp.FP16)
    int8 = tb.plan_precisions(tb.BuildOptions(int8=True, calib_dir=tmp_path), TRT11)
    assert int8.precisions == ("int8",) and int8.converter == gp.converter_identity(gp.INT8)
    # --best: INT8 Q/DQ with calibration images, FP16 without; never BF16 (no converter).
    best = tb.plan_precisions(tb.BuildOptions(best=True), TRT11)
    assert best.precisions == ("fp16",)
    best_calibrated = tb.plan_precisions(tb.BuildOptions(best=True, calib_dir=tmp_path), TRT11)
    assert best_calibrated.precisions == ("int8",)
    assert tb.plan_precisions(tb.BuildOptions(), TRT11) == tb.PrecisionPlan(tb.STRONGLY_TYPED, ())


def test_what_cannot_be_honoured_is_an_error(tmp_path: Path) -> None:
    both = tb.BuildOptions(fp16=True, int8=True, calib_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"takes precision from the graph.*--fp16 or --int8"):
        tb.plan_precisions(both, TRT11)
    for version in ("9.3.0", "12.0.0"):
        with pytest.raises(EngineError, match=rf"TensorRT {version} is not supported"):
            tb.plan_precisions(tb.BuildOptions(fp16=True), version)


def test_the_key_records_the_mode_and_the_converter() -> None:
    device = tb.DeviceInfo("NVIDIA H200", 9, 0)
    ten = tb.engine_key("ab" * 32, device, TRT10, tb.BuildOptions(fp16=True))
    eleven = tb.engine_key("ab" * 32, device, TRT11, tb.BuildOptions(fp16=True))
    assert (ten.precision_mode, ten.converter) == (tb.BUILDER_FLAGS, None)
    assert eleven.precision_mode == tb.STRONGLY_TYPED and eleven.precisions == ("fp16",)
    assert eleven.converter is not None and "onnxconverter-common" in eleven.converter
    assert tb.EngineKey.from_json(eleven.to_json()) == eleven


# ------------------------------------------------------------- TensorRT 10 flags


class _TensorRTWithoutFP16(FakeTensorRT):
    """A TensorRT 10 build whose bindings lack the FP16 flag."""

    BuilderFlag = SimpleNamespace(BF16="BF16", INT8="INT8", TF32="TF32")


def test_a_missing_builder_flag_is_an_error_not_fp32(
    yolox_dynamic_batch_path: Path, tmp_path: Path
) -> None:
    out = tmp_path / "m.engine"
    trt = _TensorRTWithoutFP16()
    with pytest.raises(EngineError, match=r"has no BuilderFlag\.FP16, so it cannot build"):
        tb.build_engine(yolox_dynamic_batch_path, out, fp16=True, trt=trt, cudart=FakeCudart())
    assert not trt.builds and not out.exists()  # no FP32 engine under an fp16 key


# ------------------------------------------------------------ TensorRT 11 builds


def _parsed_graph(trt: FakeTensorRT) -> onnx.ModelProto:
    (network,) = trt.networks
    return onnx.load_from_string(network.onnx_bytes)


def test_tensorrt11_fp16_build_parses_a_converted_graph(
    yolox_dynamic_batch_path: Path, tmp_path: Path
) -> None:
    trt = FakeTensorRT11()
    out = tmp_path / "fp16.engine"
    sidecar = tb.build_engine(
        yolox_dynamic_batch_path, out, fp16=True, batch=(1, 2, 4), trt=trt, cudart=FakeCudart()
    )
    (config,) = trt.builds
    assert config.flags == set()  # no precision flag exists, none is set
    (network,) = trt.networks
    assert network.flags == 1 << 0  # STRONGLY_TYPED (deprecated and ignored on 11)
    graph = _parsed_graph(trt)
    assert any(i.data_type == TensorProto.FLOAT16 for i in graph.graph.initializer)
    assert network.onnx_path != str(yolox_dynamic_batch_path)
    key = sidecar.key
    assert (key.precision_mode, key.precisions) == (tb.STRONGLY_TYPED, ("fp16",))
    assert key.converter == gp.converter_identity(gp.FP16)
    assert key.onnx_sha256 == tb.file_sha256(yolox_dynamic_batch_path)  # the user's model
    assert sidecar.built_graph["sha256"] == hashlib.sha256(network.onnx_bytes).hexdigest()
    assert int(sidecar.built_graph["fp16_initializers"]) > 0
    assert tb.read_sidecar(out) == sidecar
    assert not Path(network.onnx_path).exists()  # the converted graph was temporary


def test_tensorrt11_int8_build_quantizes_without_a_calibrator(
    yolox_dynamic_batch_path: Path, tmp_path: Path, precision_frames: Path
) -> None:
    calib = tmp_path / "calib"
    calib.mkdir()
    for frame in sorted(precision_frames.glob("calib-*.jpg"))[:2]:
        shutil.copy(frame, calib / frame.name)
    trt = FakeTensorRT11()
    sidecar = tb.build_engine(
        yolox_dynamic_batch_path,
        tmp_path / "int8.engine",
        int8=True,
        calib_dir=calib,
        trt=trt,
        cudart=FakeCudart(),
    )
    (config,) = trt.builds
    assert not hasattr(config, "int8_calibrator")  # TensorRT 11 has none to set
    graph = _parsed_graph(trt)
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in graph.graph.node}
    assert sidecar.key.precisions == ("int8",)
    assert sidecar.key.calib_sha256 == tb.calibration_sha256(tb.calibration_images(calib))
    assert sidecar.built_graph["calibration_frames"] == 2
    assert int(sidecar.built_graph["int8_convs"]) > 0


def test_tensorrt11_fp16_detector_follows_fp32_on_a_fully_dynamic_export(
    ultralytics_dynamic_path: Path,
    ultralytics_detector: Detector,
    tmp_path: Path,
    precision_frames: Path,
) -> None:
    # The whole TensorRT 11 path on the project's own export format: build (FP16 graph,
    # strongly typed), cache, fully dynamic I/O, and the converted graph's detections.
    trt = FakeTensorRT11()
    detector = TensorRTDetector(
        EngineConfig(model_path=ultralytics_dynamic_path, backend="tensorrt", score_threshold=0.1),
        cache_dir=tmp_path,
        build_options=tb.BuildOptions(fp16=True, batch=(1, 2, 3)),
        trt=trt,
        cudart=FakeCudart(),
    )
    images = [load_image(p) for p in sorted(precision_frames.glob("eval-*.jpg"))]
    result = agreement(ultralytics_detector.detect(images), detector.detect(images))
    assert result.reference_detections >= 20
    assert result.matched_fraction == 1.0 and result.mean_matched_iou >= 0.98, result.describe()
    assert detector.input_size == (416, 416) and detector.batch_range == (1, 3)
    detector.close()
