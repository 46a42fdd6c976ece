"""What can be checked of the deployment files without Docker: the entrypoint script
run by bash with a stand-in CLI, the Dockerfile's security/health lines, the compose
file's wiring, and the Triton model configs parsed by Triton's own protobuf schema."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ENTRYPOINT = REPO / "docker" / "entrypoint.sh"

# ------------------------------------------------------------------ entrypoint


@pytest.fixture
def fake_cli(tmp_path: Path) -> Path:
    """A stand-in for ``shelf-stream`` that prints its arguments, one per line."""
    cli = tmp_path / "bin" / "fake-shelf-stream"
    cli.parent.mkdir()
    cli.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@"\n')
    cli.chmod(0o755)
    return cli


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    bash = shutil.which("bash")
    assert bash is not None
    base = {"PATH": os.environ["PATH"], "HOME": env.get("HOME", "/nonexistent")}
    return subprocess.run(
        [bash, str(ENTRYPOINT), *args], env={**base, **env},
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip


def test_serves_the_one_model_in_the_model_dir(tmp_path: Path, fake_cli: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "yolox.onnx").write_bytes(b"onnx")
    env = {"SHELF_STREAM_BIN": str(fake_cli), "SHELF_STREAM_MODEL_DIR": str(models),
           "SHELF_STREAM_MAX_BATCH": "4", "SHELF_STREAM_BATCH_WAIT_MS": "3"}  # fmt: skip
    result = _run(env, "--max-streams", "8")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "serve", "--host", "0.0.0.0", "--port", "8765", "--backend", "onnxruntime",
        "--model", str(models / "yolox.onnx"), "--max-batch", "4", "--batch-wait-ms", "3",
        "--max-streams", "8",
    ]  # fmt: skip


def test_explicit_model_the_packaged_one_and_a_missing_one(tmp_path: Path, fake_cli: Path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"onnx")
    ok = _run({"SHELF_STREAM_BIN": str(fake_cli), "SHELF_STREAM_MODEL": str(model)}, "serve")
    assert ok.returncode == 0 and f"--model\n{model}\n" in ok.stdout
    empty = tmp_path / "empty"
    empty.mkdir()
    packaged = _run({"SHELF_STREAM_BIN": str(fake_cli), "SHELF_STREAM_MODEL_DIR": str(empty)})
    assert packaged.returncode == 0 and "--model" not in packaged.stdout
    assert "packaged YOLOX-Nano" in packaged.stderr
    gone = _run({"SHELF_STREAM_BIN": str(fake_cli), "SHELF_STREAM_MODEL": str(tmp_path / "x")})
    assert gone.returncode == 2 and "does not exist" in gone.stderr


def test_several_models_are_ambiguous(tmp_path: Path, fake_cli: Path) -> None:
    for name in ("a.onnx", "b.onnx"):
        (tmp_path / name).write_bytes(b"onnx")
    result = _run({"SHELF_STREAM_BIN": str(fake_cli), "SHELF_STREAM_MODEL_DIR": str(tmp_path)})
    assert result.returncode == 2 and "several .onnx" in result.stderr


def test_tensorrt_prepares_a_writable_engine_cache(tmp_path: Path, fake_cli: Path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"onnx")
    cache = tmp_path / "cache"
    env = {"SHELF_STREAM_BIN": str(fake_cli), "SHELF_STREAM_MODEL": str(model),
           "SHELF_STREAM_BACKEND": "tensorrt", "XDG_CACHE_HOME": str(cache)}  # fmt: skip
    result = _run(env)
    assert result.returncode == 0, result.stderr
    assert (cache / "shelf-stream" / "models" / "engines").is_dir()
    assert "--backend\ntensorrt\n" in result.stdout


def test_an_unusable_engine_cache_is_refused(tmp_path: Path, fake_cli: Path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"onnx")
    # A file where the cache directory should be: mkdir fails even for root (CI).
    cache = tmp_path / "not-a-directory"
    cache.write_text("")
    env = {"SHELF_STREAM_BIN": str(fake_cli), "SHELF_STREAM_MODEL": str(model),
           "SHELF_STREAM_BACKEND": "tensorrt", "XDG_CACHE_HOME": str(cache)}  # fmt: skip
    result = _run(env)
    assert result.returncode == 2 and "engine cache" in result.stderr


def test_triton_gateway_needs_no_local_model(tmp_path: Path, fake_cli: Path) -> None:
    env = {"SHELF_STREAM_BIN": str(fake_cli), "SHELF_STREAM_MODEL_DIR": str(tmp_path),
           "SHELF_STREAM_BACKEND": "triton", "SHELF_STREAM_TRITON_URL": "triton:8001",
           "SHELF_STREAM_TRITON_MODEL": "yolox_nano", "SHELF_STREAM_TRITON_SHM": "1"}  # fmt: skip
    result = _run(env)
    assert result.returncode == 0, result.stderr
    args = result.stdout.split()
    assert "--model" not in args
    assert args[-5:] == ["--triton-url", "triton:8001", "--triton-model", "yolox_nano",
                         "--triton-shm"]  # fmt: skip
    no_url = _run({**env, "SHELF_STREAM_TRITON_URL": ""})
    assert no_url.returncode == 2 and "SHELF_STREAM_TRITON_URL" in no_url.stderr


def test_other_commands_run_as_given(fake_cli: Path) -> None:
    result = _run({}, "echo", "hello")
    assert result.returncode == 0 and result.stdout == "hello\n"


# ------------------------------------------------------------------ Dockerfile


def _stages(text: str) -> dict[str, list[str]]:
    """Instructions (continuation lines joined) per ``FROM ... AS name`` stage."""
    joined = re.sub(r"\\\n", " ", text)
    stages: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"FROM\s+\S+\s+AS\s+(\w+)", line, re.IGNORECASE)
        if match:
            current = stages.setdefault(match.group(1), [])
        elif current is not None:
            current.append(line)
    return stages


@pytest.mark.parametrize("target", ["cpu", "gpu"])
def test_dockerfile_targets_are_non_root_healthy_and_expose_the_port(target: str) -> None:
    stage = _stages((REPO / "Dockerfile").read_text())[target]
    users = [line.split()[1] for line in stage if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0"), "the last USER must not be root"
    health = [line for line in stage if line.startswith("HEALTHCHECK ")]
    assert len(health) == 1 and "/healthz" in health[0]
    assert any(line.split()[:2] == ["EXPOSE", "8765"] for line in stage)
    assert any(
        line.startswith("ENTRYPOINT") and "shelf-stream-entrypoint" in line for line in stage
    )
    assert any("docker/entrypoint.sh" in line for line in stage if line.startswith("COPY"))
    assert any(line.startswith("VOLUME") and "/cache" in line for line in stage)


def test_gpu_image_is_a_tensorrt_base_with_python_3_11_or_later() -> None:
    text = (REPO / "Dockerfile").read_text()
    match = re.search(r"ARG TENSORRT_IMAGE=nvcr\.io/nvidia/tensorrt:(\d+)\.(\d+)-py3", text)
    assert match, "the gpu target builds on an NVIDIA TensorRT image"
    # Releases before 24.10 are Ubuntu 22.04 with Python 3.10; shelf-stream needs 3.11.
    assert (int(match.group(1)), int(match.group(2))) >= (24, 10)


def test_entrypoint_is_executable_and_valid_bash() -> None:
    assert os.access(ENTRYPOINT, os.X_OK)
    bash = shutil.which("bash")
    assert bash is not None
    subprocess.run([bash, "-n", str(ENTRYPOINT)], check=True, timeout=30)


# ------------------------------------------------------------------ Triton configs


@pytest.mark.parametrize("repository", ["onnx", "tensorrt"])
def test_triton_model_configs_parse_with_tritons_schema(repository: str) -> None:
    # Triton's own schema, shipped with tritonclient (the triton extra).
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    path = REPO / "deploy" / "triton" / repository / "yolox_nano" / "config.pbtxt"
    config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    assert config.name == "yolox_nano" and config.max_batch_size == 8
    assert config.HasField("dynamic_batching")
    assert [(i.name, list(i.dims)) for i in config.input] == [("images", [3, 416, 416])]
    assert [(o.name, list(o.dims)) for o in config.output] == [("output", [3549, 85])]
    assert (path.parent / "1").is_dir()
