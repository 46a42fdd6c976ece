"""Model path resolution; downloads use file:// URLs, nothing touches the network."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from shelf_stream.engine.models import (
    DEFAULT_MODEL_URL,
    MODEL_ENV_VAR,
    default_cache_dir,
    resolve_model,
)
from shelf_stream.errors import EngineError

PAYLOAD = b"not really onnx, but bytes with a known hash"
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "remote" / "yolox_nano.onnx"
    path.parent.mkdir()
    path.write_bytes(PAYLOAD)
    return path


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_explicit_path_wins(tmp_path: Path) -> None:
    explicit = _touch(tmp_path / "mine.onnx")
    env = {MODEL_ENV_VAR: str(_touch(tmp_path / "env.onnx"))}
    _touch(tmp_path / "cache" / "yolox_nano.onnx")
    assert resolve_model(explicit, env=env, cache_dir=tmp_path / "cache") == explicit
    assert resolve_model(str(explicit), env=env, download=False) == explicit


def test_missing_explicit_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match=r"model file not found: .*nope\.onnx"):
        resolve_model(tmp_path / "nope.onnx", env={}, download=False)


def test_env_var_next(tmp_path: Path) -> None:
    env_model = _touch(tmp_path / "env.onnx")
    _touch(tmp_path / "cache" / "yolox_nano.onnx")
    env = {MODEL_ENV_VAR: str(env_model)}
    assert resolve_model(None, env=env, cache_dir=tmp_path / "cache") == env_model
    with pytest.raises(EngineError, match=MODEL_ENV_VAR):
        resolve_model(None, env={MODEL_ENV_VAR: str(tmp_path / "gone.onnx")})


def test_cache_next(tmp_path: Path) -> None:
    cached = _touch(tmp_path / "cache" / "yolox_nano.onnx")
    assert resolve_model(None, env={}, cache_dir=tmp_path / "cache", download=False) == cached
    assert resolve_model("", env={MODEL_ENV_VAR: ""}, cache_dir=tmp_path / "cache") == cached


def test_default_cache_dir_follows_xdg(tmp_path: Path) -> None:
    assert default_cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == (
        tmp_path / "shelf-stream" / "models"
    )
    assert default_cache_dir({}) == Path.home() / ".cache" / "shelf-stream" / "models"
    cached = _touch(tmp_path / "shelf-stream" / "models" / "yolox_nano.onnx")
    assert resolve_model(None, env={"XDG_CACHE_HOME": str(tmp_path)}, download=False) == cached


def test_download_once_into_the_cache(tmp_path: Path, source: Path) -> None:
    cache = tmp_path / "cache"
    got = resolve_model(None, env={}, cache_dir=cache, url=source.as_uri(), sha256=PAYLOAD_SHA)
    assert got == cache / "yolox_nano.onnx" and got.read_bytes() == PAYLOAD
    assert sorted(p.name for p in cache.iterdir()) == ["yolox_nano.onnx"]  # no temp left
    source.unlink()  # a second resolve must not download again
    assert resolve_model(None, env={}, cache_dir=cache, url=source.as_uri(), sha256="0") == got


def test_sha256_mismatch_deletes_the_download(tmp_path: Path, source: Path) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(EngineError, match="sha256") as info:
        resolve_model(None, env={}, cache_dir=cache, url=source.as_uri(), sha256="ab" * 32)
    assert "--model PATH" in str(info.value)
    assert list(cache.iterdir()) == []


def test_offline_error_says_how_to_supply_a_model(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    missing = (tmp_path / "offline" / "yolox_nano.onnx").as_uri()
    with pytest.raises(EngineError) as info:
        resolve_model(None, env={}, cache_dir=cache, url=missing)
    message = str(info.value)
    assert "cannot download" in message
    assert "--model PATH" in message and f"{MODEL_ENV_VAR}=PATH" in message
    assert str(cache / "yolox_nano.onnx") in message
    assert DEFAULT_MODEL_URL in message
    assert list(cache.iterdir()) == []


def test_no_download_when_disabled(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="downloading is off"):
        resolve_model(None, env={}, cache_dir=tmp_path / "cache", download=False)
    assert not (tmp_path / "cache").exists()
