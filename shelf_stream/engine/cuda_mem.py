"""CUDA memory, streams and events through cuda-python's runtime bindings.

Small owners with ``close()`` and context managers, so that a TensorRT detector frees
what it allocated even when loading fails halfway. Every call's ``cudaError_t`` is
checked and turned into ``EngineError`` with the CUDA error name and a hint.

The bindings module (``cudart``) is loaded lazily by ``load_cudart`` and passed to
each object, which lets tests drive the same code with a fake runtime.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import numpy as np

from shelf_stream.errors import EngineError

GPU_INSTALL_HINT = (
    "install the GPU extra for the CUDA major your driver supports (`nvidia-smi` shows it): "
    "pip install 'shelf-stream[gpu-cu12]' (CUDA 12, driver R525 or later) or "
    "'shelf-stream[gpu-cu13]' (CUDA 13, driver R580 or later), and check that `nvidia-smi` "
    "lists a GPU"
)
_DRIVER_HINT = (
    "the NVIDIA driver is missing, too old for this CUDA runtime, or no GPU is visible "
    "(check `nvidia-smi`, CUDA_VISIBLE_DEVICES, and for containers --gpus all)"
)
#: CUDA errors that mean "no usable GPU / driver" rather than a bug.
_DRIVER_ERRORS = (
    "cudaErrorNoDevice",
    "cudaErrorInsufficientDriver",
    "cudaErrorInitializationError",
    "cudaErrorSystemDriverMismatch",
    "cudaErrorCompatNotSupportedOnDevice",
)


def load_cudart() -> Any:
    """cuda-python's runtime module: ``cuda.bindings.runtime`` (cuda-python >= 12.6),
    else the older ``cuda.cudart``; ``EngineError`` with the install hint if neither."""
    try:
        from cuda.bindings import runtime

        return runtime
    except ImportError:
        pass
    try:
        from cuda import cudart

        return cudart
    except ImportError as exc:
        raise EngineError(f"cuda-python is not installed ({exc}); {GPU_INSTALL_HINT}") from exc


def _error_name(cudart: Any, err: Any) -> str:
    try:
        _, name = cudart.cudaGetErrorName(err)
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:  # the name is only decoration on an error already being raised
        return str(err)


def check(cudart: Any, result: Any, what: str) -> Any:
    """Unwrap a cuda-python result ``(err, *values)``: the value (or tuple of values),
    or ``EngineError`` naming ``what`` failed and why."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        name = _error_name(cudart, err)
        hint = _DRIVER_HINT if name in _DRIVER_ERRORS else "see the CUDA error above"
        raise EngineError(f"CUDA {what} failed: {name}; {hint}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


class _Owned:
    """A CUDA resource freed once by ``close()``, at ``with`` exit, or never twice."""

    def __init__(self, cudart: Any) -> None:
        self._cudart = cudart
        self._closed = False

    def _release(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._release()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class CudaStream(_Owned):
    """A CUDA stream; ``handle`` is the integer TensorRT's ``execute_async_v3`` takes."""

    def __init__(self, cudart: Any) -> None:
        super().__init__(cudart)
        self.stream = check(cudart, cudart.cudaStreamCreate(), "cudaStreamCreate")

    @property
    def handle(self) -> int:
        return int(self.stream)

    def synchronize(self) -> None:
        check(self._cudart, self._cudart.cudaStreamSynchronize(self.stream), "stream sync")

    def _release(self) -> None:
        check(self._cudart, self._cudart.cudaStreamDestroy(self.stream), "cudaStreamDestroy")


class CudaEvent(_Owned):
    """A CUDA event for timing work on a stream."""

    def __init__(self, cudart: Any) -> None:
        super().__init__(cudart)
        self.event = check(cudart, cudart.cudaEventCreate(), "cudaEventCreate")

    def record(self, stream: CudaStream) -> None:
        check(self._cudart, self._cudart.cudaEventRecord(self.event, stream.stream), "event record")

    def synchronize(self) -> None:
        check(self._cudart, self._cudart.cudaEventSynchronize(self.event), "event sync")

    def elapsed_ms(self, start: CudaEvent) -> float:
        """Milliseconds from ``start`` to this event (both recorded; waits for this one)."""
        self.synchronize()
        ms = check(
            self._cudart,
            self._cudart.cudaEventElapsedTime(start.event, self.event),
            "cudaEventElapsedTime",
        )
        return float(ms)

    def _release(self) -> None:
        check(self._cudart, self._cudart.cudaEventDestroy(self.event), "cudaEventDestroy")


class DeviceBuffer(_Owned):
    """``nbytes`` of device memory at the integer address ``ptr``."""

    def __init__(self, cudart: Any, nbytes: int) -> None:
        super().__init__(cudart)
        if nbytes <= 0:
            raise ValueError(f"buffer size must be positive, got {nbytes}")
        self.nbytes = nbytes
        self.ptr = int(check(cudart, cudart.cudaMalloc(nbytes), f"cudaMalloc({nbytes})"))

    def _release(self) -> None:
        check(self._cudart, self._cudart.cudaFree(self.ptr), "cudaFree")


class PinnedBuffer(_Owned):
    """``nbytes`` of page-locked host memory: what makes ``cudaMemcpyAsync`` truly
    asynchronous (from pageable memory it stages through a driver buffer and blocks)."""

    def __init__(self, cudart: Any, nbytes: int) -> None:
        super().__init__(cudart)
        if nbytes <= 0:
            raise ValueError(f"buffer size must be positive, got {nbytes}")
        self.nbytes = nbytes
        self.ptr = int(check(cudart, cudart.cudaMallocHost(nbytes), f"cudaMallocHost({nbytes})"))

    def array(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """A NumPy view of the first bytes, valid until ``close()``."""
        if self.closed:
            raise EngineError("pinned buffer used after close()")  # else: a segfault
        dtype = np.dtype(dtype)
        count = int(np.prod(shape)) * dtype.itemsize
        if count > self.nbytes:
            raise ValueError(f"{shape} {dtype} needs {count} bytes; the buffer has {self.nbytes}")
        raw = (ctypes.c_ubyte * count).from_address(self.ptr)
        return np.frombuffer(raw, dtype=dtype).reshape(shape)

    def _release(self) -> None:
        check(self._cudart, self._cudart.cudaFreeHost(self.ptr), "cudaFreeHost")


def copy_to_device(
    cudart: Any, dst: DeviceBuffer, src: PinnedBuffer, nbytes: int, stream: CudaStream
) -> None:
    _check_size(nbytes, dst.nbytes, src.nbytes)
    kind = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
    result = cudart.cudaMemcpyAsync(dst.ptr, src.ptr, nbytes, kind, stream.stream)
    check(cudart, result, "host-to-device copy")


def copy_to_host(
    cudart: Any, dst: PinnedBuffer, src: DeviceBuffer, nbytes: int, stream: CudaStream
) -> None:
    _check_size(nbytes, dst.nbytes, src.nbytes)
    kind = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
    result = cudart.cudaMemcpyAsync(dst.ptr, src.ptr, nbytes, kind, stream.stream)
    check(cudart, result, "device-to-host copy")


def _check_size(nbytes: int, *capacities: int) -> None:
    if nbytes > min(capacities):
        raise ValueError(f"copy of {nbytes} bytes overflows a {min(capacities)}-byte buffer")


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """What a TensorRT engine is tied to: the GPU model and its compute capability."""

    name: str
    major: int
    minor: int

    @property
    def compute_capability(self) -> str:
        return f"{self.major}.{self.minor}"


def device_count(cudart: Any) -> int:
    return int(check(cudart, cudart.cudaGetDeviceCount(), "cudaGetDeviceCount"))


def device_info(cudart: Any, index: int = 0) -> DeviceInfo:
    """Name and compute capability of GPU ``index`` (``EngineError`` if there is none)."""
    prop = check(cudart, cudart.cudaGetDeviceProperties(index), "cudaGetDeviceProperties")
    name = prop.name
    if isinstance(name, bytes | bytearray):
        name = bytes(name).split(b"\0", 1)[0].decode(errors="replace")
    return DeviceInfo(str(name).strip(), int(prop.major), int(prop.minor))
