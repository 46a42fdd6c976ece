"""Fixtures for the engine tests: the YOLOX test model, its Ultralytics-format twin,
detectors for both, and real photographs shipped with scikit-image."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from shelf_stream.engine import EngineConfig, create_detector
from shelf_stream.engine.base import Detector

from .dynamic_onnx import make_dynamic_copy
from .make_ultralytics_onnx import make_ultralytics_onnx


@pytest.fixture(scope="session")
def yolox_model_path(model_path: Path) -> Path:
    """YOLOX-Nano (see shelf_stream/models/README.md), as the package ships it."""
    return model_path


@pytest.fixture(scope="session")
def ultralytics_model_path(
    yolox_model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    out = tmp_path_factory.mktemp("models") / "yolox_nano_ultralytics.onnx"
    return make_ultralytics_onnx(yolox_model_path, out)


@pytest.fixture(scope="session")
def yolox_dynamic_batch_path(
    yolox_model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """YOLOX-Nano with a symbolic batch (the official export's batch is fixed at 1)."""
    out = tmp_path_factory.mktemp("models") / "yolox_nano_dynamic_batch.onnx"
    return make_dynamic_copy(yolox_model_path, out, dynamic_size=False)


@pytest.fixture(scope="session")
def ultralytics_dynamic_path(
    ultralytics_model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The Ultralytics twin as ``export --weights`` writes it (``dynamic=True``): batch,
    height and width symbolic, the size in its ``imgsz`` metadata."""
    out = tmp_path_factory.mktemp("models") / "ultralytics_dynamic.onnx"
    return make_dynamic_copy(ultralytics_model_path, out, dynamic_size=True)


def _detector(path: Path) -> Iterator[Detector]:
    detector = create_detector(
        EngineConfig(model_path=path, backend="onnxruntime", score_threshold=0.25)
    )
    yield detector
    detector.close()


@pytest.fixture(scope="session")
def yolox_detector(yolox_model_path: Path) -> Iterator[Detector]:
    yield from _detector(yolox_model_path)


@pytest.fixture(scope="session")
def ultralytics_detector(ultralytics_model_path: Path) -> Iterator[Detector]:
    yield from _detector(ultralytics_model_path)


@pytest.fixture(scope="session")
def precision_frames() -> Path:
    """Real frames (CC BY 4.0, see the README there): calib-*.jpg and eval-*.jpg."""
    return Path(__file__).resolve().parents[1] / "data" / "precision-frames"


def _skimage_photo(name: str) -> np.ndarray:
    """A photograph from scikit-image's data dir as an HxWx3 uint8 BGR array."""
    import skimage
    import skimage.io

    rgb = skimage.io.imread(Path(skimage.__file__).parent / "data" / name)
    return np.ascontiguousarray(rgb[..., 2::-1])


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    """BGR photos by name: astronaut (512x512), chelsea (451x300), coffee (600x400),
    motorcycle_left (741x500)."""
    return {
        name: _skimage_photo(f"{name}.png")
        for name in ("astronaut", "chelsea", "coffee", "motorcycle_left")
    }
