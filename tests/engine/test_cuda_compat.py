"""The start-up guard comparing the driver's CUDA with cuda-python's and TensorRT's."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from shelf_stream.engine import cuda_compat as cc
from shelf_stream.engine import trt_build as tb
from shelf_stream.engine.base import EngineConfig
from shelf_stream.engine.tensorrt_backend import TensorRTDetector
from shelf_stream.errors import EngineError

from .fake_gpu import FakeCudart, FakeTensorRT


def test_versions_decode_as_cuda_writes_them() -> None:
    assert cc.decode_cuda_version(12080) == (12, 8)
    assert cc.decode_cuda_version(13010) == (13, 1)
    assert cc.decode_cuda_version(0) is None  # no driver


def test_tensorrt_cuda_major_comes_from_the_installed_wheel() -> None:
    assert cc.tensorrt_cuda_major(["numpy", "tensorrt_cu12", "tensorrt-cu12-libs"]) == 12
    assert cc.tensorrt_cuda_major(["tensorrt-cu13-bindings", "cuda-python"]) == 13
    # An NGC image's own TensorRT is the plain "tensorrt" distribution: unknown.
    assert cc.tensorrt_cuda_major(["tensorrt", "cuda-bindings"]) is None
    with pytest.raises(EngineError, match=r"several CUDA majors are installed \(\[12, 13\]\)"):
        cc.tensorrt_cuda_major(["tensorrt-cu12", "tensorrt-cu13-libs"])


def _versions(driver: int, runtime: int, trt: list[str]) -> cc.CudaVersions:
    return cc.read_versions(
        FakeCudart(driver_version=driver, runtime_version=runtime), distributions=lambda: trt
    )


def test_matching_stacks_pass() -> None:
    cc.check_cuda_compatibility(_versions(12080, 12090, ["tensorrt-cu12"]))  # minor ahead: fine
    cc.check_cuda_compatibility(_versions(13000, 12090, ["tensorrt-cu12"]))  # newer driver
    cc.check_cuda_compatibility(_versions(13010, 13000, ["tensorrt-cu13"]))
    cc.check_cuda_compatibility(_versions(12040, 12060, []))  # NGC image: TensorRT unknown


def test_cuda13_packages_on_a_cuda12_driver_say_what_to_install() -> None:
    # The case: bare `pip install tensorrt cuda-python` on an R570 host.
    versions = _versions(12080, 13000, ["tensorrt-cu13", "tensorrt-cu13-libs"])
    with pytest.raises(EngineError) as info:
        cc.check_cuda_compatibility(versions)
    text = str(info.value)
    assert "CUDA driver supports 12.8, cuda-python runtime 13.0, TensorRT built for CUDA 13" in text
    assert "cuda-python is built for CUDA 13.0 but the driver supports CUDA 12.8 at most" in text
    assert "cudaErrorInsufficientDriver" in text
    assert "TensorRT is the CUDA 13 build but the driver supports CUDA 12.8" in text
    assert "pip install 'shelf-stream[gpu-cu12]'" in text
    assert "upgrade the NVIDIA driver to R580 or later" in text


def test_mixed_and_missing_stacks_are_refused() -> None:
    with pytest.raises(
        EngineError, match=r"TensorRT is the CUDA 12 build but cuda-python is built"
    ):
        cc.check_cuda_compatibility(_versions(13000, 13000, ["tensorrt-cu12"]))
    with pytest.raises(EngineError, match=r"no NVIDIA driver answers .*nvidia-smi"):
        cc.check_cuda_compatibility(_versions(0, 12090, []))
    with pytest.raises(EngineError, match=r"only supports CUDA 11 .*R525 or later"):
        cc.check_cuda_compatibility(_versions(11080, 12090, []))


def test_the_tensorrt_backend_checks_before_allocating(
    yolox_dynamic_batch_path: Path, tmp_path: Path
) -> None:
    cudart = FakeCudart(driver_version=12080, runtime_version=13000)
    with pytest.raises(EngineError, match=r"gpu-cu12"):
        TensorRTDetector(
            EngineConfig(model_path=yolox_dynamic_batch_path, backend="tensorrt"),
            cache_dir=tmp_path,
            trt=FakeTensorRT(),
            cudart=cudart,
        )
    assert not cudart.blocks and not list(tmp_path.iterdir())  # nothing built or allocated
    with pytest.raises(EngineError, match=r"gpu-cu12"):
        tb.build_engine(
            yolox_dynamic_batch_path, tmp_path / "m.engine", trt=FakeTensorRT(), cudart=cudart
        )


def test_installed_packages_are_checked_without_a_gpu() -> None:
    # What the GPU image build runs (no driver there): the packages' CUDA majors.
    def majors(table: dict[str, int]) -> Callable[[str], int | None]:
        return lambda name: table.get(name)

    ok = cc.installed_problems(12, lambda: ["tensorrt"], majors({"cuda-bindings": 12}))
    assert ok == []
    wrong = cc.installed_problems(
        12, lambda: ["tensorrt-cu13"], majors({"cuda-bindings": 13, "cuda-python": 13})
    )
    assert wrong == [
        "cuda-python is the CUDA 13 build, not CUDA 12",
        "TensorRT is the tensorrt-cu13 wheel, not CUDA 12",
    ]
    assert cc.installed_problems(12, list, majors({})) == ["cuda-python is not installed"]
    # Here: no cuda-python at all, and the command says so with exit status 1.
    assert cc.main(["--installed-for-cuda", "12"]) == 1
