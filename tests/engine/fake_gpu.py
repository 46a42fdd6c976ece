"""Fakes of cuda-python's runtime and of the ``tensorrt`` module, for testing the
TensorRT backend's orchestration on a machine without a GPU.

``FakeCudart`` hands out host memory as "device" memory (so copies are ``memmove``s);
the fake TensorRT "engine" runs the ONNX model with onnxruntime on the CPU, reading its
input from and writing its output to those addresses, one image at a time (the test
model has a fixed batch of 1; the fake parser reports a dynamic batch, as a model
exported with ``dynamic=True`` would have). The fakes follow the real APIs' calling
conventions: cuda-python's ``(err, value)`` tuples, TensorRT 10's named tensors.
"""

from __future__ import annotations

import ctypes
import enum
import json
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnxruntime as ort


class CudaError(enum.Enum):
    cudaSuccess = 0
    cudaErrorMemoryAllocation = 2
    cudaErrorInvalidValue = 1
    cudaErrorNoDevice = 100


class FakeStream:
    _next = 1

    def __init__(self) -> None:
        self.id = FakeStream._next
        FakeStream._next += 1

    def __int__(self) -> int:
        return 0x1000 + self.id


class FakeCudart:
    """cuda-python's runtime module, backed by host memory."""

    cudaError_t = CudaError
    cudaMemcpyKind = SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)

    def __init__(
        self,
        devices: Sequence[tuple[str, int, int]] = (("NVIDIA H100 80GB HBM3", 9, 0),),
        fail_malloc_after: int | None = None,
    ) -> None:
        self.devices = list(devices)
        self.blocks: dict[int, Any] = {}
        self.freed: list[int] = []
        self.streams: set[int] = set()
        self.events: dict[int, float] = {}
        self.copies: list[tuple[int, int]] = []  # (kind, nbytes)
        self._mallocs_left = fail_malloc_after

    # errors and devices
    def cudaGetErrorName(self, err: CudaError) -> tuple[CudaError, bytes]:
        return CudaError.cudaSuccess, err.name.encode()

    def cudaGetDeviceCount(self) -> tuple[CudaError, int]:
        if not self.devices:
            return CudaError.cudaErrorNoDevice, 0
        return CudaError.cudaSuccess, len(self.devices)

    def cudaGetDeviceProperties(self, index: int) -> tuple[CudaError, Any]:
        if index >= len(self.devices):
            return CudaError.cudaErrorNoDevice, None
        name, major, minor = self.devices[index]
        padded = name.encode() + b"\0" * (256 - len(name))
        return CudaError.cudaSuccess, SimpleNamespace(name=padded, major=major, minor=minor)

    # memory
    def _alloc(self, nbytes: int) -> tuple[CudaError, int]:
        if self._mallocs_left is not None:
            if self._mallocs_left == 0:
                return CudaError.cudaErrorMemoryAllocation, 0
            self._mallocs_left -= 1
        block = ctypes.create_string_buffer(nbytes)
        address = ctypes.addressof(block)
        self.blocks[address] = block
        return CudaError.cudaSuccess, address

    def _free(self, ptr: int) -> tuple[CudaError]:
        if ptr not in self.blocks:
            return (CudaError.cudaErrorInvalidValue,)
        del self.blocks[ptr]
        self.freed.append(ptr)
        return (CudaError.cudaSuccess,)

    cudaMalloc = _alloc
    cudaMallocHost = _alloc
    cudaFree = _free
    cudaFreeHost = _free

    def cudaMemcpyAsync(
        self, dst: int, src: int, nbytes: int, kind: int, stream: Any
    ) -> tuple[CudaError]:
        ctypes.memmove(dst, src, nbytes)
        self.copies.append((kind, nbytes))
        return (CudaError.cudaSuccess,)

    def cudaMemcpy(self, dst: int, src: int, nbytes: int, kind: int) -> tuple[CudaError]:
        return self.cudaMemcpyAsync(dst, src, nbytes, kind, None)

    # streams and events
    def cudaStreamCreate(self) -> tuple[CudaError, FakeStream]:
        stream = FakeStream()
        self.streams.add(stream.id)
        return CudaError.cudaSuccess, stream

    def cudaStreamSynchronize(self, stream: FakeStream) -> tuple[CudaError]:
        return (CudaError.cudaSuccess,)

    def cudaStreamDestroy(self, stream: FakeStream) -> tuple[CudaError]:
        self.streams.discard(stream.id)
        return (CudaError.cudaSuccess,)

    def cudaEventCreate(self) -> tuple[CudaError, int]:
        handle = len(self.events) + 1
        self.events[handle] = 0.0
        return CudaError.cudaSuccess, handle

    def cudaEventRecord(self, event: int, stream: Any) -> tuple[CudaError]:
        self.events[event] = time.perf_counter()
        return (CudaError.cudaSuccess,)

    def cudaEventSynchronize(self, event: int) -> tuple[CudaError]:
        return (CudaError.cudaSuccess,)

    def cudaEventElapsedTime(self, start: int, end: int) -> tuple[CudaError, float]:
        return CudaError.cudaSuccess, (self.events[end] - self.events[start]) * 1000.0

    def cudaEventDestroy(self, event: int) -> tuple[CudaError]:
        del self.events[event]
        return (CudaError.cudaSuccess,)

    @property
    def live_blocks(self) -> int:
        return len(self.blocks)


# ------------------------------------------------------------------------ TensorRT

_MAGIC = b"FAKE-TRT-ENGINE\n"


def _view(address: int, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    dtype = np.dtype(dtype)
    count = int(np.prod(shape)) * dtype.itemsize
    raw = (ctypes.c_ubyte * count).from_address(address)
    return np.frombuffer(raw, dtype).reshape(shape)


class FakeEngine:
    def __init__(self, onnx_path: str, batch: tuple[int, int, int], log: list[str]) -> None:
        self.session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
        self.inp = self.session.get_inputs()[0]
        self.out = self.session.get_outputs()[0]
        self.batch = batch
        self.log = log
        self.num_io_tensors = 2

    def get_tensor_name(self, index: int) -> str:
        return [self.inp.name, self.out.name][index]

    def get_tensor_mode(self, name: str) -> str:
        return "INPUT" if name == self.inp.name else "OUTPUT"

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        shape = self.inp.shape if name == self.inp.name else self.out.shape
        return (-1, *shape[1:])

    def get_tensor_dtype(self, name: str) -> Any:
        return np.float32

    def get_tensor_profile_shape(self, name: str, profile: int) -> list[tuple[int, ...]]:
        rest = tuple(self.inp.shape[1:])
        return [(b, *rest) for b in self.batch]

    def create_execution_context(self) -> FakeContext:
        return FakeContext(self)


class FakeContext:
    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine
        self.addresses: dict[str, int] = {}
        self.rows = 0

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        lo, _, hi = self.engine.batch
        if name != self.engine.inp.name or not lo <= shape[0] <= hi:
            return False
        self.rows = shape[0]
        self.engine.log.append(f"set_input_shape {shape}")
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return (self.rows, *self.engine.out.shape[1:])

    def set_tensor_address(self, name: str, address: int) -> bool:
        self.addresses[name] = address
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        engine = self.engine
        inp = _view(self.addresses[engine.inp.name], (self.rows, *engine.inp.shape[1:]), np.float32)
        out = _view(self.addresses[engine.out.name], self.get_tensor_shape(""), np.float32)
        for row in range(self.rows):  # the test model's batch is fixed at 1
            out[row] = engine.session.run(None, {engine.inp.name: inp[row : row + 1]})[0][0]
        engine.log.append(f"execute rows={self.rows} stream={stream_handle}")
        return True


class FakeLogger:
    WARNING = "warning"

    def __init__(self, level: str) -> None:
        self.level = level


class FakeRuntime:
    def __init__(self, trt: FakeTensorRT) -> None:
        self.trt = trt

    def deserialize_cuda_engine(self, data: bytes) -> FakeEngine | None:
        if not data.startswith(_MAGIC):
            return None  # what TensorRT returns for a foreign or corrupt engine
        info = json.loads(data[len(_MAGIC) :])
        return FakeEngine(info["onnx"], tuple(info["batch"]), self.trt.log)


class FakeNetwork:
    def __init__(self) -> None:
        self.inputs: list[Any] = []

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    def get_input(self, index: int) -> Any:
        return self.inputs[index]


class FakeParser:
    def __init__(self, network: FakeNetwork, logger: Any) -> None:
        self.network = network
        self.num_errors = 0
        self.path = ""

    def parse_from_file(self, path: str) -> bool:
        try:
            session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        except Exception:
            self.num_errors = 1
            return False
        inp = session.get_inputs()[0]
        self.network.inputs.append(SimpleNamespace(name=inp.name, shape=(-1, *inp.shape[1:])))
        self.network.path = path  # type: ignore[attr-defined]
        return True

    def get_error(self, index: int) -> str:
        return "In node 0: not an ONNX model"


class FakeProfile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple[Any, ...]] = {}

    def set_shape(self, name: str, lo: Any, opt: Any, hi: Any) -> None:
        self.shapes[name] = (lo, opt, hi)


class FakeBuilderConfig:
    def __init__(self) -> None:
        self.flags: set[str] = set()
        self.pools: dict[str, int] = {}
        self.profiles: list[FakeProfile] = []
        self.int8_calibrator: Any = None
        self.calibration_profile: FakeProfile | None = None

    def set_memory_pool_limit(self, pool: str, nbytes: int) -> None:
        self.pools[pool] = nbytes

    def set_flag(self, flag: str) -> None:
        self.flags.add(flag)

    def add_optimization_profile(self, profile: FakeProfile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def set_calibration_profile(self, profile: FakeProfile) -> None:
        self.calibration_profile = profile


class FakeBuilder:
    def __init__(self, trt: FakeTensorRT, logger: Any) -> None:
        self.trt = trt

    def create_network(self, flags: int) -> FakeNetwork:
        return FakeNetwork()

    def create_builder_config(self) -> FakeBuilderConfig:
        return FakeBuilderConfig()

    def create_optimization_profile(self) -> FakeProfile:
        return FakeProfile()

    def build_serialized_network(self, network: FakeNetwork, config: FakeBuilderConfig) -> bytes:
        self.trt.builds.append(config)
        if config.int8_calibrator is not None:  # calibration: pull batches until None
            calibrator = config.int8_calibrator
            names = [network.get_input(0).name]
            while calibrator.get_batch(names) is not None:
                pass
            calibrator.write_calibration_cache(b"calibration-table")
        lo, opt, hi = config.profiles[0].shapes[network.get_input(0).name]
        info = {"onnx": network.path, "batch": [lo[0], opt[0], hi[0]]}  # type: ignore[attr-defined]
        return _MAGIC + json.dumps(info).encode()


class FakeCalibratorBase:
    def __init__(self) -> None:
        self.base_initialised = True


class FakeTensorRT:
    """The parts of the ``tensorrt`` module the backend and builder use."""

    __version__ = "10.3.0.26"
    Logger = FakeLogger
    TensorIOMode = SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
    MemoryPoolType = SimpleNamespace(WORKSPACE="WORKSPACE")
    BuilderFlag = SimpleNamespace(FP16="FP16", BF16="BF16", INT8="INT8")
    IInt8EntropyCalibrator2 = FakeCalibratorBase
    OnnxParser = FakeParser

    def __init__(self) -> None:
        self.builds: list[FakeBuilderConfig] = []
        self.log: list[str] = []

    def Builder(self, logger: Any) -> FakeBuilder:
        return FakeBuilder(self, logger)

    def Runtime(self, logger: Any) -> FakeRuntime:
        return FakeRuntime(self)

    @staticmethod
    def nptype(dtype: Any) -> Any:
        return dtype


def write_fake_engine(path: Path, onnx_path: Path, batch: tuple[int, int, int]) -> None:
    info = {"onnx": str(onnx_path), "batch": list(batch)}
    path.write_bytes(_MAGIC + json.dumps(info).encode())
