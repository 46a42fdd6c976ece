"""Fakes of cuda-python's runtime and of the ``tensorrt`` module, for testing the
TensorRT backend's orchestration on a machine without a GPU.

``FakeCudart`` hands out host memory as "device" memory (so copies are ``memmove``s);
the fake TensorRT "engine" runs the ONNX graph it was built from (for a strongly typed
build, the converted FP16 or INT8 Q/DQ graph) with onnxruntime on the CPU, reading its
input from and writing its output to those addresses, one image at a time (the test
model has a fixed batch of 1).

The fake parser reports every symbolic dimension of the graph as -1, and the engine
keeps the -1s the way TensorRT does (NVIDIA/TensorRT#4120): for a graph like the
project's own Ultralytics export (``dynamic=True``: batch, height and width dynamic;
``dynamic_onnx.make_dynamic_copy``), ``get_tensor_shape`` says (-1, 3, -1, -1) for the
input and (-1, 84, -1) for the output, whatever the profile pins. Only
``get_tensor_profile_shape`` and the execution context, once an input shape is set,
give real sizes.

``FakeTensorRT`` is TensorRT 10 (builder flags, the INT8 calibrator); ``FakeTensorRT11``
has neither, like TensorRT 11 (strongly typed networks only). The fakes follow the real
APIs' calling conventions: cuda-python's ``(err, value)`` tuples, named tensors.
"""

from __future__ import annotations

import base64
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
        driver_version: int = 12080,
        runtime_version: int = 12090,
    ) -> None:
        self.devices = list(devices)
        #: As cudaDriverGetVersion/cudaRuntimeGetVersion say them: 1000 * major + 10 * minor
        #: (12080: a CUDA 12.8 driver such as R570; 0: no driver).
        self.driver_version = driver_version
        self.runtime_version = runtime_version
        self.blocks: dict[int, Any] = {}
        self.freed: list[int] = []
        self.streams: set[int] = set()
        self.events: dict[int, float] = {}
        self.copies: list[tuple[int, int]] = []  # (kind, nbytes)
        self._mallocs_left = fail_malloc_after

    # versions (neither needs a usable driver: a CUDA 13 runtime on a CUDA 12 driver
    # still answers both, and only then fails everything else)
    def cudaDriverGetVersion(self) -> tuple[CudaError, int]:
        return CudaError.cudaSuccess, self.driver_version

    def cudaRuntimeGetVersion(self) -> tuple[CudaError, int]:
        return CudaError.cudaSuccess, self.runtime_version

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

    def cudaDeviceSynchronize(self) -> tuple[CudaError]:
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
Shape = tuple[int, ...]


def _view(address: int, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    dtype = np.dtype(dtype)
    count = int(np.prod(shape)) * dtype.itemsize
    raw = (ctypes.c_ubyte * count).from_address(address)
    return np.frombuffer(raw, dtype).reshape(shape)


def _declared(shape: Sequence[Any]) -> Shape:
    """A graph's declared shape as TensorRT reports it: -1 for every symbolic dimension."""
    return tuple(d if isinstance(d, int) and d > 0 else -1 for d in shape)


def _runtime_shape(rows: int, reference: Sequence[int]) -> Shape:
    """The output's real shape for ``rows`` images: the batch, and every other dimension
    as one image at the profile's size gives it."""
    return (rows, *(int(r) for r in reference[1:]))


class FakeEngine:
    """A deserialized engine: the ONNX graph it was built from, and profile 0."""

    def __init__(self, onnx_bytes: bytes, profile: Sequence[Shape], log: list[str]) -> None:
        self.session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
        self.inp = self.session.get_inputs()[0]
        self.out = self.session.get_outputs()[0]
        self.profile = [tuple(int(d) for d in shape) for shape in profile]
        self.log = log
        self.num_io_tensors = 2
        # The output of one image at the profile's size, for the context's shapes.
        probe = np.zeros((1, *self.profile[1][1:]), np.float32)
        self.sample_output_shape = self.session.run(None, {self.inp.name: probe})[0].shape

    @property
    def batch(self) -> tuple[int, int, int]:
        lo, opt, hi = (shape[0] for shape in self.profile)
        return lo, opt, hi

    def get_tensor_name(self, index: int) -> str:
        return [self.inp.name, self.out.name][index]

    def get_tensor_mode(self, name: str) -> str:
        return "INPUT" if name == self.inp.name else "OUTPUT"

    def get_tensor_shape(self, name: str) -> Shape:
        return _declared(self.inp.shape if name == self.inp.name else self.out.shape)

    def get_tensor_dtype(self, name: str) -> Any:
        return np.float32

    def get_tensor_profile_shape(self, name: str, profile: int) -> list[Shape]:
        if name != self.inp.name or profile != 0:
            raise ValueError(f"no profile {profile} for {name}")  # TensorRT raises too
        return list(self.profile)

    def create_execution_context(self) -> FakeContext:
        return FakeContext(self)


class FakeContext:
    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine
        self.addresses: dict[str, int] = {}
        self.input_shape: Shape | None = None

    def set_input_shape(self, name: str, shape: Sequence[int]) -> bool:
        lo, _, hi = self.engine.profile
        dims = tuple(int(d) for d in shape)
        within = len(dims) == len(lo) and all(
            a <= d <= b for a, d, b in zip(lo, dims, hi, strict=True)
        )
        if name != self.engine.inp.name or not within:
            return False
        self.input_shape = dims
        self.engine.log.append(f"set_input_shape {dims}")
        return True

    def get_tensor_shape(self, name: str) -> Shape:
        """-1s until an input shape is set, as TensorRT's context says them."""
        if name == self.engine.inp.name:
            return self.input_shape or self.engine.get_tensor_shape(name)
        if self.input_shape is None:
            return self.engine.get_tensor_shape(name)
        engine = self.engine
        return _runtime_shape(self.input_shape[0], engine.sample_output_shape)

    def set_tensor_address(self, name: str, address: int) -> bool:
        self.addresses[name] = address
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        engine = self.engine
        assert self.input_shape is not None, "execute before set_input_shape"
        rows = self.input_shape[0]
        inp = _view(self.addresses[engine.inp.name], self.input_shape, np.float32)
        out = _view(
            self.addresses[engine.out.name], self.get_tensor_shape(engine.out.name), np.float32
        )
        for row in range(rows):  # the test model's batch is fixed at 1
            out[row] = engine.session.run(None, {engine.inp.name: inp[row : row + 1]})[0][0]
        engine.log.append(f"execute rows={rows} stream={stream_handle}")
        return True


class FakeLogger:
    WARNING = "warning"

    def __init__(self, level: str) -> None:
        self.level = level


def _serialize(onnx_bytes: bytes, profile: Sequence[Shape]) -> bytes:
    info = {"onnx": base64.b64encode(onnx_bytes).decode(), "profile": [list(p) for p in profile]}
    return _MAGIC + json.dumps(info).encode()


class FakeRuntime:
    def __init__(self, trt: FakeTensorRT) -> None:
        self.trt = trt

    def deserialize_cuda_engine(self, data: bytes) -> FakeEngine | None:
        if not data.startswith(_MAGIC):
            return None  # what TensorRT returns for a foreign or corrupt engine
        info = json.loads(data[len(_MAGIC) :])
        return FakeEngine(base64.b64decode(info["onnx"]), info["profile"], self.trt.log)


class FakeNetwork:
    def __init__(self, flags: int) -> None:
        self.flags = flags
        self.inputs: list[Any] = []
        self.onnx_bytes = b""
        self.onnx_path = ""

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    def get_input(self, index: int) -> Any:
        return self.inputs[index]


class FakeParser:
    def __init__(self, network: FakeNetwork, logger: Any) -> None:
        self.network = network
        self.num_errors = 0

    def parse_from_file(self, path: str) -> bool:
        try:
            session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        except Exception:
            self.num_errors = 1
            return False
        inp = session.get_inputs()[0]
        self.network.inputs.append(SimpleNamespace(name=inp.name, shape=_declared(inp.shape)))
        self.network.onnx_bytes = Path(path).read_bytes()
        self.network.onnx_path = path
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


class FakeBuilderConfig11:
    """TensorRT 11's builder config: no precision flags, no calibrator (setting
    ``int8_calibrator`` is an AttributeError, as on the real bindings)."""

    __slots__ = ("flags", "pools", "profiles")

    def __init__(self) -> None:
        self.flags: set[str] = set()
        self.pools: dict[str, int] = {}
        self.profiles: list[FakeProfile] = []

    def set_memory_pool_limit(self, pool: str, nbytes: int) -> None:
        self.pools[pool] = nbytes

    def set_flag(self, flag: str) -> None:
        self.flags.add(flag)

    def add_optimization_profile(self, profile: FakeProfile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1


class FakeBuilder:
    def __init__(self, trt: FakeTensorRT, logger: Any) -> None:
        self.trt = trt

    def create_network(self, flags: int) -> FakeNetwork:
        network = FakeNetwork(flags)
        self.trt.networks.append(network)
        return network

    def create_builder_config(self) -> Any:
        return self.trt.config_class()

    def create_optimization_profile(self) -> FakeProfile:
        return FakeProfile()

    def build_serialized_network(self, network: FakeNetwork, config: Any) -> bytes:
        self.trt.builds.append(config)
        calibrator = getattr(config, "int8_calibrator", None)
        if calibrator is not None:  # calibration: pull batches until None
            names = [network.get_input(0).name]
            while calibrator.get_batch(names) is not None:
                pass
            calibrator.write_calibration_cache(b"calibration-table")
        inp = network.get_input(0)
        # A fully static input needs no profile: its one shape is min, opt and max.
        profile = config.profiles[0].shapes[inp.name] if config.profiles else [inp.shape] * 3
        return _serialize(network.onnx_bytes, profile)


class FakeCalibratorBase:
    def __init__(self) -> None:
        self.base_initialised = True


class FakeTensorRT:
    """The parts of TensorRT 10's ``tensorrt`` module the backend and builder use."""

    __version__ = "10.3.0.26"
    Logger = FakeLogger
    TensorIOMode = SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
    MemoryPoolType = SimpleNamespace(WORKSPACE="WORKSPACE")
    BuilderFlag: Any = SimpleNamespace(FP16="FP16", BF16="BF16", INT8="INT8", TF32="TF32")
    NetworkDefinitionCreationFlag = SimpleNamespace(STRONGLY_TYPED=1)
    IInt8EntropyCalibrator2 = FakeCalibratorBase
    OnnxParser = FakeParser
    config_class: Any = FakeBuilderConfig

    def __init__(self) -> None:
        self.builds: list[Any] = []
        self.networks: list[FakeNetwork] = []
        self.log: list[str] = []

    def Builder(self, logger: Any) -> FakeBuilder:
        return FakeBuilder(self, logger)

    def Runtime(self, logger: Any) -> FakeRuntime:
        return FakeRuntime(self)

    @staticmethod
    def nptype(dtype: Any) -> Any:
        return dtype


class FakeTensorRT11(FakeTensorRT):
    """TensorRT 11: strongly typed only. The precision flags, the calibrator classes
    and the calibration profile are gone (NVIDIA's 10.x to 11.x migration guide,
    "Removed Python APIs"); STRONGLY_TYPED remains, deprecated and ignored."""

    __version__ = "11.4.0.106"
    BuilderFlag = SimpleNamespace(TF32="TF32")
    NetworkDefinitionCreationFlag = SimpleNamespace(STRONGLY_TYPED=0)
    IInt8EntropyCalibrator2 = None
    config_class = FakeBuilderConfig11


def fake_profile(
    onnx_path: Path, batch: tuple[int, int, int], size: tuple[int, int] = (416, 416)
) -> list[Shape]:
    """Profile 0 of an engine built from ``onnx_path`` for ``batch``: channels from the
    graph, height and width from the graph or, where they are symbolic, ``size``."""
    inp = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).get_inputs()[0]
    channels, height, width = (d if isinstance(d, int) else None for d in inp.shape[1:])
    rest = (int(channels or 3), int(height or size[1]), int(width or size[0]))
    return [(b, *rest) for b in batch]


def write_fake_engine(path: Path, onnx_path: Path, batch: tuple[int, int, int]) -> None:
    path.write_bytes(_serialize(onnx_path.read_bytes(), fake_profile(onnx_path, batch)))
