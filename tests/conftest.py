"""Shared fixtures: the real test model (never downloaded) and small generated footage."""

from __future__ import annotations

import os
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
