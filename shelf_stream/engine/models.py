"""Where the model file comes from.

``resolve_model`` is the one place below the CLI that reads the environment (see the
README, "Choosing a model"): an explicit path wins, then ``SHELF_STREAM_MODEL``, then the
default model that ships inside the package (YOLOX-Nano, Apache-2.0; provenance and
license in ``shelf_stream/models/``), checked against its sha256 before first use.
Nothing is ever downloaded.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from functools import cache
from importlib import resources
from pathlib import Path

from shelf_stream.errors import EngineError

MODEL_ENV_VAR = "SHELF_STREAM_MODEL"

#: The packaged default: YOLOX-Nano, COCO, 416x416 (``shelf_stream/models/README.md``).
DEFAULT_MODEL_NAME = "yolox_nano.onnx"
DEFAULT_MODEL_SHA256 = "d39bee73564e338080378b0ad567fbb40e818b55bbfaf971de82a0267ed16b8a"

_CHUNK_BYTES = 1 << 20


def default_cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """The per-user cache (built TensorRT engines): ``$XDG_CACHE_HOME/shelf-stream/models``,
    else ``~/.cache/shelf-stream/models``."""
    env = os.environ if env is None else env
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "shelf-stream" / "models"


def packaged_model_path() -> Path:
    """The default model's file inside the installed package (not yet checked)."""
    return Path(str(resources.files("shelf_stream").joinpath("models", DEFAULT_MODEL_NAME)))


def resolve_model(
    path: str | os.PathLike[str] | None, *, env: Mapping[str, str] | None = None
) -> Path:
    """The model file to load.

    Order: ``path`` (must exist), ``env["SHELF_STREAM_MODEL"]`` (must exist; ``env``
    defaults to ``os.environ``), then the packaged default model, checked against its
    sha256. Raises ``EngineError`` saying how to fix it otherwise.
    """
    env = os.environ if env is None else env
    if path is not None and str(path) != "":
        return _existing(Path(path).expanduser(), "the model path given")
    from_env = env.get(MODEL_ENV_VAR, "")
    if from_env:
        return _existing(Path(from_env).expanduser(), f"{MODEL_ENV_VAR}")
    return checked_default_model(packaged_model_path())


@cache
def checked_default_model(path: Path, sha256: str = DEFAULT_MODEL_SHA256) -> Path:
    """``path`` if it holds the packaged model byte for byte (hashed once per process)."""
    if not path.is_file():
        raise EngineError(
            f"the packaged default model is missing ({path}): reinstall shelf-stream, or "
            f"pass --model PATH or set {MODEL_ENV_VAR}=PATH"
        )
    digest = sha256_of(path)
    if digest != sha256:
        raise EngineError(
            f"the packaged default model {path} is damaged (sha256 {digest}, expected "
            f"{sha256}): reinstall shelf-stream, or pass --model PATH"
        )
    return path


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _existing(path: Path, origin: str) -> Path:
    if not path.is_file():
        raise EngineError(
            f"model file not found: {path} (from {origin}); pass --model PATH or set "
            f"{MODEL_ENV_VAR}=PATH to an existing .onnx file, or neither for the "
            f"packaged YOLOX-Nano"
        )
    return path
