"""Detection engine: model backends behind one ``Detector`` interface.

``create_detector(config)`` picks the backend by name from ``BACKENDS``; adding a
backend is one registry entry. Model formats (YOLOX, Ultralytics) are handled by
adapters chosen from the model itself (see ``adapters``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from shelf_stream.engine.adapters import ADAPTERS, ModelAdapter, select_adapter
from shelf_stream.engine.base import (
    Detections,
    Detector,
    EngineConfig,
    Image,
    PreparedImage,
)
from shelf_stream.engine.coco import COCO_CLASSES
from shelf_stream.engine.models import (
    DEFAULT_MODEL_SHA256,
    MODEL_ENV_VAR,
    default_cache_dir,
    resolve_model,
)
from shelf_stream.engine.preprocess import LetterboxSpec, letterbox
from shelf_stream.engine.selection import auto_detector, tensorrt_detector
from shelf_stream.errors import ConfigError

log = logging.getLogger(__name__)

BackendFactory = Callable[[EngineConfig], Detector]


def _onnxruntime(config: EngineConfig) -> Detector:
    # Imported here so that importing the package never loads a runtime it won't use.
    from shelf_stream.engine.onnx_backend import OnnxRuntimeDetector

    return OnnxRuntimeDetector(config, prefer_cuda=True)


def _triton(config: EngineConfig) -> Detector:
    from shelf_stream.engine.triton_backend import TritonDetector

    return TritonDetector(config)


#: Backend name -> factory. ``auto`` picks the best one this machine can run.
BACKENDS: dict[str, BackendFactory] = {
    "auto": auto_detector,
    "onnxruntime": _onnxruntime,
    "tensorrt": tensorrt_detector,
    "triton": _triton,
}


def create_detector(config: EngineConfig) -> Detector:
    """Build the detector for ``config.backend``; ``ConfigError`` for unknown names,
    ``EngineError`` when the backend or model cannot be loaded."""
    factory = BACKENDS.get(config.backend)
    if factory is None:
        raise ConfigError(
            f"unknown engine backend {config.backend!r}; choose one of {sorted(BACKENDS)}"
        )
    return factory(config)


__all__ = [
    "ADAPTERS",
    "BACKENDS",
    "COCO_CLASSES",
    "DEFAULT_MODEL_SHA256",
    "MODEL_ENV_VAR",
    "Detections",
    "Detector",
    "EngineConfig",
    "Image",
    "LetterboxSpec",
    "ModelAdapter",
    "PreparedImage",
    "create_detector",
    "default_cache_dir",
    "letterbox",
    "resolve_model",
    "select_adapter",
]
