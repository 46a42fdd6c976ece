"""Model path resolution: explicit, environment, then the packaged model (sha256 checked)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from shelf_stream.engine.models import (
    DEFAULT_MODEL_SHA256,
    MODEL_ENV_VAR,
    checked_default_model,
    default_cache_dir,
    packaged_model_path,
    resolve_model,
    sha256_of,
)
from shelf_stream.errors import EngineError


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_explicit_path_wins(tmp_path: Path) -> None:
    explicit = _touch(tmp_path / "mine.onnx")
    env = {MODEL_ENV_VAR: str(_touch(tmp_path / "env.onnx"))}
    assert resolve_model(explicit, env=env) == explicit
    assert resolve_model(str(explicit), env=env) == explicit


def test_missing_explicit_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match=r"model file not found: .*nope\.onnx"):
        resolve_model(tmp_path / "nope.onnx", env={})


def test_env_var_next(tmp_path: Path) -> None:
    env_model = _touch(tmp_path / "env.onnx")
    assert resolve_model(None, env={MODEL_ENV_VAR: str(env_model)}) == env_model
    with pytest.raises(EngineError, match=MODEL_ENV_VAR):
        resolve_model(None, env={MODEL_ENV_VAR: str(tmp_path / "gone.onnx")})


def test_the_packaged_model_is_the_default_and_intact() -> None:
    path = resolve_model(None, env={})
    assert path == packaged_model_path() and path.name == "yolox_nano.onnx"
    assert sha256_of(path) == DEFAULT_MODEL_SHA256
    assert resolve_model("", env={MODEL_ENV_VAR: ""}) == path
    here = path.parent
    assert (here / "LICENSE").is_file() and "Apache License" in (here / "LICENSE").read_text()
    assert "sha256" in (here / "README.md").read_text()


def test_a_damaged_or_missing_packaged_model_is_refused(tmp_path: Path) -> None:
    damaged = tmp_path / "yolox_nano.onnx"
    shutil.copyfile(packaged_model_path(), damaged)
    with damaged.open("r+b") as file:
        file.seek(1000)
        file.write(b"\0\0\0\0")
    with pytest.raises(EngineError, match=r"damaged .*reinstall"):
        checked_default_model(damaged)
    with pytest.raises(EngineError, match="missing"):
        checked_default_model(tmp_path / "gone.onnx")


def test_default_cache_dir_follows_xdg(tmp_path: Path) -> None:
    assert default_cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == (
        tmp_path / "shelf-stream" / "models"
    )
    assert default_cache_dir({}) == Path.home() / ".cache" / "shelf-stream" / "models"
