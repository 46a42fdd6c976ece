"""benchmarks/gpu_check.py without a GPU: what it carries and runs (--dry-run), the carry
manifest, the install step failing loudly, and the JSON verdict."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from shelf_stream.engine import EngineConfig
from shelf_stream.engine.agreement import agreement
from shelf_stream.engine.base import Detector
from shelf_stream.engine.tensorrt_backend import TensorRTDetector
from shelf_stream.engine.trt_build import load_image

from .fake_gpu import FakeCudart

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gpu_check() -> Iterator[ModuleType]:
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules["gpu_check"]


def test_dry_run_lists_what_it_carries_and_runs(
    gpu_check: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    carry = tmp_path / "gpucheck"
    carry.mkdir()
    (carry / "yolox_nano.onnx").write_bytes(b"x" * (3 << 20))
    (carry / "av-18.1.0-cp311-abi3-manylinux_2_28_x86_64.whl").write_bytes(b"w" * (1 << 20))
    before = set(sys.modules)
    assert gpu_check.main(["--dry-run", "--carry", str(carry), "--no-gpu-letterbox"]) == 0
    out = capsys.readouterr().out
    assert f"carry: {carry} (limit 64 MiB)" in out
    assert "av-18.1.0-cp311-abi3-manylinux_2_28_x86_64.whl" in out and "1.0 MiB" in out
    assert "yolox_nano.onnx" in out and "3.0 MiB" in out
    for missing in ("yolox_nano.fp16.onnx", "yolox_nano.int8.onnx", "manifest.json"):
        assert f"{missing}" in out
    assert out.count("missing (run --prepare)") == 4  # converter wheel, two graphs, manifest
    assert "16 frames in tests/data/precision-frames travel with the working tree" in out
    assert "total carried: 4.0 MiB" in out
    assert "pip install --no-index --no-deps" in out and "NVIDIA_TF32_OVERRIDE=0" in out
    for name, _, _ in gpu_check.CHECKS:
        assert f"\n  {name} " in out
    assert "--install --no-gpu-letterbox --carry" in out and "timeout_s=420" in out
    # Listing touches no GPU library.
    assert not {"cupy", "tensorrt", "cuda"} & (set(sys.modules) - before)


def test_the_ort_engine_stand_in_drives_the_tensorrt_detector(
    gpu_check: ModuleType,
    yolox_model_path: Path,
    yolox_detector: Detector,
    precision_frames: Path,
    tmp_path: Path,
) -> None:
    # The device's "detector" check without TensorRT: onnxruntime executes the engine on
    # the detector's own buffers through IOBinding. Here on host memory (FakeCudart),
    # there on CUDA: same calls, so the device run does not meet them first.
    engine = tmp_path / "shim.engine"
    engine.write_bytes(yolox_model_path.read_bytes())
    cudart = gpu_check._CountingCudart(FakeCudart())
    detector = TensorRTDetector(
        EngineConfig(model_path=engine, backend="tensorrt", score_threshold=0.25),
        trt=gpu_check.OrtCudaTensorRT(cudart, device="cpu"),
        cudart=cudart,
    )
    images = [load_image(p) for p in sorted(precision_frames.glob("eval-*.jpg"))]
    result = agreement(yolox_detector.detect(images), detector.detect(images))
    assert result.matched_fraction == 1.0 and result.mean_matched_iou > 0.999
    assert len(cudart.uploads) == len(images)  # one input upload per frame (batch 1)
    detector.close()


def test_carried_files_are_verified_against_the_manifest(
    gpu_check: ModuleType, tmp_path: Path
) -> None:
    (tmp_path / "a.onnx").write_bytes(b"model")
    files = {"a.onnx": {"sha256": gpu_check._sha256(tmp_path / "a.onnx"), "bytes": 5}}
    (tmp_path / "manifest.json").write_text(json.dumps({"files": files}))
    assert gpu_check.verify_carry(tmp_path)["files"] == files
    (tmp_path / "a.onnx").write_bytes(b"other")
    with pytest.raises(ValueError, match=r"differs from manifest\.json"):
        gpu_check.verify_carry(tmp_path)


def test_a_failed_install_fails_loudly(gpu_check: ModuleType, tmp_path: Path) -> None:
    assert gpu_check.install(tmp_path).status == "FAIL"  # no wheels at all
    (tmp_path / "av-18.1.0-cp311-abi3-manylinux_2_28_x86_64.whl").write_bytes(b"not a zip")
    result = gpu_check.install(tmp_path)
    assert result.status == "FAIL" and result.detail.startswith("pip install failed")
    assert result.lines  # pip's own words come with it


def test_a_missing_carry_still_writes_a_failing_verdict(
    gpu_check: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The checks themselves run (here: no GPU); this only checks the verdict's shape.
    monkeypatch.setattr(gpu_check, "CHECKS", gpu_check.CHECKS[:2])
    monkeypatch.setenv("NVIDIA_TF32_OVERRIDE", "")  # main() sets it; restored afterwards
    out = tmp_path / "verdict.json"
    status = gpu_check.main(["--carry", str(tmp_path / "none"), "--json", str(out)])
    verdict = json.loads(out.read_text())
    assert status == 2 and verdict["verdict"] == "fail" and "carry" in verdict["failed"]
    assert [c["name"] for c in verdict["checks"]] == ["carry", "environment", "cuda_mem"]
    assert verdict["tf32"] == "off" and verdict["gpu_letterbox"] is True
    assert gpu_check.os.environ["NVIDIA_TF32_OVERRIDE"] == "0"
