"""``--backend auto``: the pure choice, the probe, and the fallback when TensorRT fails."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from shelf_stream.engine import BACKENDS, EngineConfig
from shelf_stream.engine import selection as sel
from shelf_stream.engine.base import Detector
from shelf_stream.engine.onnx_backend import OnnxRuntimeDetector
from shelf_stream.errors import ConfigError, EngineError

from .fake_gpu import FakeCudart

ALL = {sel.TENSORRT: True, sel.CUDA_PYTHON: True, sel.GPU: True, sel.ORT_CUDA: True}


def test_tensorrt_first_when_everything_is_there() -> None:
    name, reason = sel.choose_backend(ALL)
    assert name == "tensorrt" and "a GPU is visible" in reason


@pytest.mark.parametrize(
    ("missing", "why"),
    [
        (sel.TENSORRT, "tensorrt does not import"),
        (sel.CUDA_PYTHON, "cuda-python does not import"),
        (sel.GPU, "no GPU is visible"),
    ],
)
def test_cuda_onnxruntime_next(missing: str, why: str) -> None:
    name, reason = sel.choose_backend({**ALL, missing: False})
    assert name == "onnxruntime"
    assert reason.startswith("onnxruntime with the CUDA execution provider") and why in reason


def test_cpu_last_and_missing_keys_count_as_unavailable() -> None:
    name, reason = sel.choose_backend({})
    assert name == "onnxruntime" and reason.startswith("onnxruntime with the CPU execution")
    assert "tensorrt does not import; cuda-python does not import; no GPU" in reason


def _import_only(*present: str) -> Any:
    def import_module(name: str) -> object:
        if name not in present:
            raise ImportError(f"No module named {name!r}")
        return object()

    return import_module


def test_probe_reports_what_imports_and_what_is_visible() -> None:
    found = sel.probe_backends(
        import_module=_import_only("tensorrt"), load_cudart=FakeCudart, ort_cuda=lambda: False
    )
    assert found == {sel.TENSORRT: True, sel.CUDA_PYTHON: True, sel.GPU: True, sel.ORT_CUDA: False}

    def no_cuda_python() -> Any:
        raise EngineError("cuda-python is not installed")

    found = sel.probe_backends(
        import_module=_import_only(), load_cudart=no_cuda_python, ort_cuda=lambda: True
    )
    assert found == {
        sel.TENSORRT: False,
        sel.CUDA_PYTHON: False,
        sel.GPU: False,
        sel.ORT_CUDA: True,
    }
    no_gpu = sel.probe_backends(
        import_module=_import_only("tensorrt"),
        load_cudart=lambda: FakeCudart(devices=()),
        ort_cuda=lambda: False,
    )
    assert no_gpu[sel.CUDA_PYTHON] and not no_gpu[sel.GPU]


def test_probe_on_this_machine_never_raises() -> None:
    found = sel.probe_backends()
    assert set(found) == {sel.TENSORRT, sel.CUDA_PYTHON, sel.GPU, sel.ORT_CUDA}
    assert found[sel.TENSORRT] is False  # no TensorRT on the test machine


def test_auto_on_this_machine_falls_back_and_logs(
    yolox_model_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="shelf_stream.engine"):
        detector = BACKENDS["auto"](EngineConfig(model_path=yolox_model_path, backend="auto"))
    assert isinstance(detector, OnnxRuntimeDetector)
    assert "backend auto: onnxruntime with the" in caplog.text
    assert "not TensorRT: tensorrt does not import" in caplog.text
    detector.close()


class _Marker(Detector):
    """A detector that only says which factory made it."""

    def __init__(self, name: str) -> None:
        self.name = name

    @property
    def model_name(self) -> str:
        return self.name

    @property
    def input_size(self) -> tuple[int, int]:
        return (416, 416)

    @property
    def class_names(self) -> tuple[str, ...]:
        return ("thing",)

    def prepare(self, image: Any) -> Any:
        raise NotImplementedError

    def infer(self, batch: Any) -> Any:
        raise NotImplementedError


def test_auto_falls_back_when_tensorrt_fails_to_load(caplog: pytest.LogCaptureFixture) -> None:
    def broken_trt(config: EngineConfig) -> Detector:
        raise EngineError("TensorRT could not build an engine")

    factories = {"tensorrt": broken_trt, "onnxruntime": lambda config: _Marker("ort")}
    config = EngineConfig(model_path=Path("m.onnx"), backend="auto")
    with caplog.at_level(logging.INFO, logger="shelf_stream.engine"):
        detector = sel.auto_detector(config, probe=lambda: ALL, factories=factories)
    assert isinstance(detector, _Marker) and detector.name == "ort"
    assert "backend auto: tensorrt" in caplog.text
    assert "TensorRT failed (TensorRT could not build an engine); falling back" in caplog.text
    assert "falling back to onnxruntime with the CUDA execution provider" in caplog.text
    chosen = sel.auto_detector(
        config, probe=lambda: ALL, factories={"tensorrt": lambda c: _Marker("trt")}
    )
    assert isinstance(chosen, _Marker) and chosen.name == "trt"


def test_auto_does_not_hide_onnxruntime_errors() -> None:
    def broken(config: EngineConfig) -> Detector:
        raise ConfigError("bad class names")

    with pytest.raises(ConfigError):
        sel.auto_detector(
            EngineConfig(model_path=Path("m.onnx")),
            probe=lambda: {},
            factories={"onnxruntime": broken},
        )
