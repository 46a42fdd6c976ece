"""``make_dynamic_batch``: the YOLOX export gets a symbolic batch and runs a real batch
in one ONNX Runtime call with the same detections as frame-by-frame."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from shelf_stream.engine import EngineConfig
from shelf_stream.engine.onnx_backend import OnnxRuntimeDetector
from shelf_stream.engine.onnx_batch import (
    BATCH_DIM,
    add_dynamic_batch_args,
    make_dynamic_batch,
    run_dynamic_batch,
)
from shelf_stream.errors import ConfigError, EngineError


@pytest.fixture(scope="module")
def dynamic_model(yolox_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dyn") / "yolox_nano_dyn.onnx"
    # YOLOX computes its head's Reshape targets from Shape: nothing to rewrite.
    assert make_dynamic_batch(yolox_model_path, out) == []
    return out


def test_io_batch_dimension_becomes_symbolic(dynamic_model: Path) -> None:
    session = ort.InferenceSession(str(dynamic_model), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [BATCH_DIM, 3, 416, 416]
    assert session.get_outputs()[0].shape == [BATCH_DIM, 3549, 85]


def test_batch_runs_in_one_call_with_the_same_detections(
    dynamic_model: Path, yolox_model_path: Path, photos: dict[str, np.ndarray]
) -> None:
    images = [photos["astronaut"], photos["coffee"], photos["chelsea"]]
    fixed = OnnxRuntimeDetector(EngineConfig(model_path=yolox_model_path), prefer_cuda=False)
    dynamic = OnnxRuntimeDetector(EngineConfig(model_path=dynamic_model), prefer_cuda=False)
    runs: list[int] = []
    original_run = dynamic._run
    dynamic._run = lambda chunk: (runs.append(len(chunk)), original_run(chunk))[1]  # type: ignore[method-assign]
    expected, got = fixed.detect(images), dynamic.detect(images)
    assert runs == [3]  # one session.run for the whole batch
    for want, have in zip(expected, got, strict=True):
        assert have.class_ids.tolist() == want.class_ids.tolist()
        np.testing.assert_allclose(have.boxes, want.boxes, atol=0.05)
        np.testing.assert_allclose(have.scores, want.scores, atol=1e-4)


def _reshape_model(path: Path, *, constant_batch: bool) -> Path:
    """(1, 4) -> Reshape to a constant (1, 2, 2) [or (1, 2, 2) built from -1] -> out."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 2])
    shape = [1, 2, 2] if constant_batch else [-1, 2, 2]
    nodes = [
        helper.make_node("Constant", [], ["shape"],
                         value=helper.make_tensor("s", TensorProto.INT64, [3], shape)),
        helper.make_node("Reshape", ["x", "shape"], ["y"], name="head_reshape"),
    ]  # fmt: skip
    graph = helper.make_graph(nodes, "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_a_reshape_that_hard_codes_batch_one_is_rewritten(tmp_path: Path) -> None:
    source = _reshape_model(tmp_path / "in.onnx", constant_batch=True)
    out = tmp_path / "out.onnx"
    assert make_dynamic_batch(source, out) == ["head_reshape"]
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    (y,) = session.run(None, {"x": x})
    np.testing.assert_array_equal(y, x.reshape(3, 2, 2))


def test_a_graph_pinning_the_batch_elsewhere_is_refused(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    nodes = [
        helper.make_node("Constant", [], ["shape"],
                         value=helper.make_tensor("s", TensorProto.INT64, [2], [1, 4])),
        helper.make_node("Expand", ["x", "shape"], ["y"], name="pin"),
    ]  # fmt: skip
    model = helper.make_model(
        helper.make_graph(nodes, "g", [x], [y]), opset_imports=[helper.make_opsetid("", 13)]
    )
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "in.onnx"))
    with pytest.raises(EngineError, match="Expand 'pin'"):
        make_dynamic_batch(tmp_path / "in.onnx", tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


def test_cli_hook(tmp_path: Path, yolox_model_path: Path) -> None:
    import argparse

    parser = argparse.ArgumentParser()
    add_dynamic_batch_args(parser)
    assert parser.parse_args(["--dynamic-batch"]).dynamic_batch is True
    with pytest.raises(ConfigError, match="--out"):
        run_dynamic_batch(yolox_model_path, None)
    with pytest.raises(ConfigError, match="not found"):
        run_dynamic_batch(tmp_path / "missing.onnx", tmp_path / "out.onnx")
