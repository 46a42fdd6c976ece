"""Where the model file comes from.

``resolve_model`` is the one place below the CLI that reads the environment (see the
README, "Choosing a model"): an explicit path wins, then ``SHELF_STREAM_MODEL``, then
the per-user cache, and only then a one-time download of YOLOX-Nano into that cache.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from shelf_stream.errors import EngineError

log = logging.getLogger(__name__)

MODEL_ENV_VAR = "SHELF_STREAM_MODEL"

#: YOLOX-Nano from the official YOLOX release 0.1.1rc0 (Apache-2.0), 416x416, COCO.
DEFAULT_MODEL_URL = (
    "https://github.com/Megvii-BaseDetection/YOLOX/releases/download/0.1.1rc0/yolox_nano.onnx"
)
DEFAULT_MODEL_SHA256 = "c789161ed43c8269fcd4e67c67eeeb4e80c622da2eb296a20bc6007bd18a0b7d"

_DOWNLOAD_TIMEOUT_S = 60.0
_CHUNK_BYTES = 1 << 20


def default_cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CACHE_HOME/shelf-stream/models``, else ``~/.cache/shelf-stream/models``."""
    env = os.environ if env is None else env
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "shelf-stream" / "models"


def resolve_model(
    path: str | os.PathLike[str] | None,
    *,
    env: Mapping[str, str] | None = None,
    cache_dir: Path | None = None,
    download: bool = True,
    url: str = DEFAULT_MODEL_URL,
    sha256: str = DEFAULT_MODEL_SHA256,
) -> Path:
    """The model file to load.

    Order: ``path`` (must exist), ``env["SHELF_STREAM_MODEL"]`` (must exist; ``env``
    defaults to ``os.environ``), the cached default model, and finally (if
    ``download``) the default model fetched from ``url`` into the cache, checked
    against ``sha256``. Raises ``EngineError`` saying how to supply a model otherwise.
    """
    env = os.environ if env is None else env
    if path is not None and str(path) != "":
        return _existing(Path(path).expanduser(), "the model path given")
    from_env = env.get(MODEL_ENV_VAR, "")
    if from_env:
        return _existing(Path(from_env).expanduser(), f"{MODEL_ENV_VAR}")
    cache = cache_dir if cache_dir is not None else default_cache_dir(env)
    cached = cache / _file_name(url)
    if cached.is_file():
        return cached
    if not download:
        raise EngineError(f"no model found and downloading is off; {_how_to_supply(cached)}")
    return download_model(url, cached, sha256)


def download_model(url: str, target: Path, sha256: str) -> Path:
    """Fetch ``url`` into ``target`` atomically: written to a temporary file next to it,
    checked against ``sha256``, then renamed, so that an interrupted or concurrent
    download never leaves a partial model where ``resolve_model`` would trust it."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EngineError(
            f"cannot create the model cache {target.parent}: {exc}; {_how_to_supply(target)}"
        ) from exc
    log.info("downloading the default model from %s to %s", url, target)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            digest = _fetch(url, out, target)
        if digest != sha256.lower():
            raise EngineError(
                f"the model downloaded from {url} has sha256 {digest}, expected {sha256}; "
                f"it was deleted. {_how_to_supply(target)}"
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _fetch(url: str, out: BinaryIO, target: Path) -> str:
    """Stream ``url`` into the open binary file ``out``; the hex sha256 of the bytes."""
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response:
            while chunk := response.read(_CHUNK_BYTES):
                digest.update(chunk)
                out.write(chunk)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise EngineError(
            f"cannot download the default model from {url} ({exc}). {_how_to_supply(target)}"
        ) from exc
    return digest.hexdigest()


def _existing(path: Path, origin: str) -> Path:
    if not path.is_file():
        raise EngineError(
            f"model file not found: {path} (from {origin}); pass --model PATH or set "
            f"{MODEL_ENV_VAR}=PATH to an existing .onnx file"
        )
    return path


def _file_name(url: str) -> str:
    name = PurePosixPath(urllib.parse.urlparse(url).path).name
    return name or "model.onnx"


def _how_to_supply(cached: Path) -> str:
    return (
        f"Supply a model with --model PATH or {MODEL_ENV_VAR}=PATH, or put YOLOX-Nano "
        f"(yolox_nano.onnx from {DEFAULT_MODEL_URL}) at {cached}"
    )
