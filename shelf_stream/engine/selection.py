"""``--backend auto``: TensorRT where it can run, else ONNX Runtime on CUDA, else CPU.

``choose_backend`` is a pure function of what ``probe_backends`` found, so the policy
is tested without GPUs; ``auto_detector`` logs the choice and, if TensorRT was chosen
but fails to load (no engine can be built, an old driver), falls back to ONNX Runtime
and says why rather than refusing to serve.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

from shelf_stream.engine.base import Detector, EngineConfig
from shelf_stream.errors import EngineError

log = logging.getLogger(__name__)

#: Keys of the ``available`` mapping.
TENSORRT = "tensorrt"  # ``import tensorrt`` works
CUDA_PYTHON = "cuda_python"  # cuda-python's runtime bindings import
GPU = "gpu"  # the CUDA runtime sees at least one GPU
ORT_CUDA = "onnxruntime_cuda"  # onnxruntime has the CUDA execution provider


def choose_backend(available: Mapping[str, bool]) -> tuple[str, str]:
    """(backend name, description) for ``auto``; missing keys count as unavailable.
    The description starts with what runs and says why the better choices were not
    taken, for the log."""
    trt_missing = [
        what
        for key, what in (
            (TENSORRT, "tensorrt does not import"),
            (CUDA_PYTHON, "cuda-python does not import"),
            (GPU, "no GPU is visible"),
        )
        if not available.get(key, False)
    ]
    if not trt_missing:
        return "tensorrt", "tensorrt (TensorRT and cuda-python import and a GPU is visible)"
    why_not = "; ".join(trt_missing)
    if available.get(ORT_CUDA, False):
        return (
            "onnxruntime",
            f"onnxruntime with the CUDA execution provider (not TensorRT: {why_not})",
        )
    return "onnxruntime", (
        f"onnxruntime with the CPU execution provider (not TensorRT: {why_not}; "
        "onnxruntime has no CUDA provider)"
    )


def _imports(module: str, import_module: Callable[[str], Any]) -> bool:
    try:
        import_module(module)
    except Exception:  # ImportError, or a broken install raising anything at import
        return False
    return True


def _gpu_visible(load_cudart: Callable[[], Any]) -> tuple[bool, bool]:
    """(cuda-python imports, the CUDA runtime sees a GPU)."""
    from shelf_stream.engine.cuda_mem import device_count

    try:
        cudart = load_cudart()
    except Exception:  # EngineError when missing; anything from a broken install
        return False, False
    try:
        return True, device_count(cudart) > 0
    except Exception:  # EngineError: no driver / no device
        return True, False


def _ort_has_cuda() -> bool:
    from shelf_stream.engine.onnx_backend import cuda_available

    return cuda_available()


def probe_backends(
    *,
    import_module: Callable[[str], Any] = importlib.import_module,
    load_cudart: Callable[[], Any] | None = None,
    ort_cuda: Callable[[], bool] | None = None,
) -> dict[str, bool]:
    """What this machine can run, for ``choose_backend``; never raises. The loaders
    are parameters so that tests can say what is installed."""
    from shelf_stream.engine import cuda_mem

    cuda_python, gpu = _gpu_visible(load_cudart or cuda_mem.load_cudart)
    try:
        has_ort_cuda = bool((ort_cuda or _ort_has_cuda)())
    except Exception:
        has_ort_cuda = False
    return {
        TENSORRT: _imports("tensorrt", import_module),
        CUDA_PYTHON: cuda_python,
        GPU: gpu,
        ORT_CUDA: has_ort_cuda,
    }


def _tensorrt(config: EngineConfig) -> Detector:
    from shelf_stream.engine.tensorrt_backend import TensorRTDetector

    return TensorRTDetector(config)


def _onnxruntime(config: EngineConfig) -> Detector:
    from shelf_stream.engine.onnx_backend import OnnxRuntimeDetector

    return OnnxRuntimeDetector(config, prefer_cuda=True)


def auto_detector(
    config: EngineConfig,
    *,
    probe: Callable[[], Mapping[str, bool]] = probe_backends,
    factories: Mapping[str, Callable[[EngineConfig], Detector]] | None = None,
) -> Detector:
    """``BACKENDS["auto"]``: the best backend this machine runs, with the choice logged."""
    factories = factories or {"tensorrt": _tensorrt, "onnxruntime": _onnxruntime}
    available = dict(probe())
    name, reason = choose_backend(available)
    log.info("backend auto: %s", reason)
    try:
        return factories[name](config)
    except EngineError as exc:
        if name != "tensorrt":
            raise
        available[TENSORRT] = False
        fallback, reason = choose_backend(available)
        log.warning("backend auto: TensorRT failed (%s); falling back to %s", exc, reason)
        name = fallback
        return factories[name](config)


def tensorrt_detector(config: EngineConfig) -> Detector:
    """``BACKENDS["tensorrt"]``: TensorRT or an ``EngineError`` saying what is missing."""
    return _tensorrt(config)
