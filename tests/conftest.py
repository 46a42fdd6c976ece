"""Shared fixtures: the real test model (never downloaded) and small generated footage."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _test_model_path() -> Path:
    configured = os.environ.get("SHELF_STREAM_TEST_MODEL") or os.environ.get("SHELF_STREAM_MODEL")
    return Path(configured) if configured else REPO.parent / "shared" / "models" / "yolox_nano.onnx"


@pytest.fixture(scope="session")
def model_path() -> Path:
    """The YOLOX-Nano ONNX model from ../shared/models (or $SHELF_STREAM_TEST_MODEL)."""
    path = _test_model_path()
    if not path.is_file():
        pytest.fail(
            f"test model not found at {path}; set SHELF_STREAM_TEST_MODEL to a YOLOX-Nano ONNX file"
        )
    return path


@pytest.fixture(scope="module")
def serve_port(model_path: Path) -> Iterator[int]:
    """A real ``shelf-stream serve`` process for the module's tests; yields its port."""
    from shelf_stream.bench.loopback import free_port, wait_for_port

    port = free_port()
    serve = subprocess.Popen(
        [sys.executable, "-m", "shelf_stream", "--log-level", "WARNING", "serve",
         "--host", "127.0.0.1", "--port", str(port), "--model", str(model_path)],
    )  # fmt: skip
    try:
        wait_for_port(port, serve)
        yield port
    finally:
        serve.terminate()
        serve.wait(timeout=15)
