"""The GPU image and the GPU extras fit together (read without Docker or a GPU): one
CUDA major from the base image to cuda-python and TensorRT, and the driver capability
NVDEC needs."""

from __future__ import annotations

import re
import tomllib

import pytest

from .test_docker import REPO, _stages

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
EXTRAS: dict[str, list[str]] = PYPROJECT["project"]["optional-dependencies"]


def _requirement(extra: str, package: str) -> str:
    (spec,) = [r for r in EXTRAS[extra] if re.match(rf"{re.escape(package)}\b", r)]
    return spec


@pytest.mark.parametrize("major", [12, 13])
def test_gpu_extras_pin_one_cuda_major(major: int) -> None:
    assert _requirement(f"gpu-cu{major}", f"tensorrt-cu{major}").endswith(",<12")
    assert f"shelf-stream[cuda-cu{major}]" in EXTRAS[f"gpu-cu{major}"]
    cuda_python = _requirement(f"cuda-cu{major}", "cuda-python")
    assert f"<{major + 1}" in cuda_python and f">={major}" in cuda_python
    assert "shelf-stream[precision]" in EXTRAS[f"cuda-cu{major}"]
    # Nothing unpinned: a bare tensorrt / cuda-python resolves to the newest CUDA major.
    assert EXTRAS["gpu"] == ["shelf-stream[gpu-cu12]"]


def test_precision_tools_are_in_dev_and_pyav_is_18_or_later() -> None:
    assert any("onnxconverter-common" in r for r in EXTRAS["precision"])
    assert any("precision" in r for r in EXTRAS["dev"] if r.startswith("shelf-stream["))
    assert "av>=18" in PYPROJECT["project"]["dependencies"]


def _gpu_stage() -> list[str]:
    return _stages((REPO / "Dockerfile").read_text())["gpu"]


def test_gpu_image_sets_the_video_driver_capability() -> None:
    env = " ".join(line for line in _gpu_stage() if line.startswith("ENV "))
    match = re.search(r"NVIDIA_DRIVER_CAPABILITIES=(\S+)", env)
    assert match and set(match.group(1).split(",")) >= {"compute", "utility", "video"}


def test_gpu_image_installs_the_extra_of_its_base_cuda_major() -> None:
    text = (REPO / "Dockerfile").read_text()
    major = re.search(r"^ARG CUDA_MAJOR=(\d+)$", text, re.MULTILINE)
    assert major and f"cuda-cu{major.group(1)}" in EXTRAS
    # 24.12 is CUDA 12.6 (NVIDIA's TensorRT container release notes).
    assert "ARG TENSORRT_IMAGE=nvcr.io/nvidia/tensorrt:24.12-py3" in text and major.group(1) == "12"
    run = " ".join(line for line in _gpu_stage() if line.startswith("RUN ") and "pip" in line)
    assert '".[cuda-cu${CUDA_MAJOR},triton]"' in run
    assert 'shelf_stream.engine.cuda_compat --installed-for-cuda "${CUDA_MAJOR}"' in run
    assert "2>/dev/null" not in run  # a failed install fails the build


def test_compose_standalone_gpu_service_can_use_nvdec() -> None:
    text = (REPO / "deploy" / "docker-compose.yml").read_text()
    service = text[text.index("\n  standalone:") :]
    assert "target: gpu" in service
    assert re.search(r"NVIDIA_DRIVER_CAPABILITIES: compute,utility,video", service)
    assert "capabilities: [gpu, compute, utility, video]" in service
    assert "\nvolumes:\n  shelf-engines:" in text


def test_the_guard_module_runs_as_a_command() -> None:
    # The Dockerfile runs it with python3 -m.
    path = REPO / "shelf_stream" / "engine" / "cuda_compat.py"
    assert 'if __name__ == "__main__":' in path.read_text()
