"""The TensorRT backend: a serialized engine run with the named-tensor API of TensorRT
10 and 11.

Memory and streams come from cuda-python (``cuda_mem``), after ``cuda_compat`` checked
that the driver supports their CUDA major: one pinned host buffer and one device buffer
per I/O tensor, sized for the largest input of optimisation profile 0 (batch, height
and width) and the outputs the execution context resolves for it; one CUDA stream per
detector (the engine runs one batch at a
time, as ``Detector.infer`` promises); two events to time each run on the GPU.

Pre- and post-processing are the ONNX Runtime backend's (``engine.common``: same
adapter, letterbox and decoding), so both give the same detections on the same frame.
``model_path`` may be an ONNX file (an engine is built once and cached per GPU, see
``trt_build``) or a serialized engine with its sidecar.

With ``gpu_preprocess=True`` and CuPy installed, yuv420p/nv12 frames are letterboxed by
a CUDA kernel straight into the engine's input buffer (``gpu_preprocess``): only the
frame's planes go up and only the detector's output comes back.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np

from shelf_stream.engine import trt_build
from shelf_stream.engine.base import Detections, Detector, EngineConfig, Image, PreparedImage
from shelf_stream.engine.common import (
    LayoutDetector,
    ModelLayout,
    chunks,
    decode_output,
    model_layout,
    normalise_shape,
    stack_batch,
)
from shelf_stream.engine.cuda_compat import ensure_compatible
from shelf_stream.engine.cuda_mem import (
    CudaEvent,
    CudaStream,
    DeviceBuffer,
    DeviceInfo,
    PinnedBuffer,
    copy_to_device,
    copy_to_host,
    device_info,
    load_cudart,
)
from shelf_stream.engine.models import default_cache_dir
from shelf_stream.errors import EngineError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One engine I/O tensor: name, shape as the engine declares it (-1 for every
    dimension that was dynamic in the network), NumPy dtype, and for an input with
    dynamic dimensions the (min, opt, max) shapes of optimisation profile 0."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    is_input: bool
    profile: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None = None

    @property
    def max_shape(self) -> tuple[int, ...]:
        """The largest shape this input takes: the profile's max, else its fixed shape."""
        return self.profile[2] if self.profile is not None else self.shape

    @property
    def batch_range(self) -> tuple[int, int]:
        if self.profile is None:
            return self.shape[0], self.shape[0]
        return self.profile[0][0], self.profile[2][0]


def _dims(values: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in values)


def describe_io(trt: Any, engine: Any) -> list[TensorSpec]:
    """The engine's I/O tensors in binding order.

    ``get_tensor_shape`` keeps -1 for every dimension that was dynamic in the network,
    even where the profile pins it (NVIDIA/TensorRT#4120: an Ultralytics export with
    ``dynamic=True`` has batch, height and width dynamic), so an input's real sizes come
    from ``get_tensor_profile_shape(name, 0)`` and the outputs' from the execution
    context once the input shape is set (``plan_io``).
    """
    specs = []
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        shape = _dims(engine.get_tensor_shape(name))
        dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
        profile = None
        if is_input and any(d < 0 for d in shape):
            lo, opt, hi = engine.get_tensor_profile_shape(name, 0)
            profile = (_dims(lo), _dims(opt), _dims(hi))
        specs.append(TensorSpec(name, shape, dtype, is_input, profile))
    return specs


@dataclass(frozen=True, slots=True)
class IOPlan:
    """Shapes the detector runs with: the input at its largest (``input_shape``, batch
    included) and every output at that input (``output_shapes``), as the execution
    context resolved them."""

    input: TensorSpec
    outputs: tuple[TensorSpec, ...]
    input_shape: tuple[int, ...]
    output_shapes: dict[str, tuple[int, ...]]

    def nbytes(self) -> dict[str, int]:
        sizes = {self.input.name: int(np.prod(self.input_shape)) * self.input.dtype.itemsize}
        for out in self.outputs:
            sizes[out.name] = int(np.prod(self.output_shapes[out.name])) * out.dtype.itemsize
        return sizes


def plan_io(path: Path, context: Any, specs: Sequence[TensorSpec]) -> IOPlan:
    """Set the input to its profile's max shape and read back every output's shape;
    ``EngineError`` if TensorRT rejects the shape or leaves an output unresolved."""
    inp, outputs = _split_io(path, specs)
    shape = inp.max_shape
    if any(d < 0 for d in shape):
        raise EngineError(f"{path.name}: input {inp.name} has no size in profile 0 ({shape})")
    if not context.set_input_shape(inp.name, shape):
        raise EngineError(f"TensorRT rejected input shape {shape} for {inp.name}")
    resolved = {o.name: _dims(context.get_tensor_shape(o.name)) for o in outputs}
    unresolved = {name: dims for name, dims in resolved.items() if any(d < 0 for d in dims)}
    if unresolved:
        raise EngineError(
            f"{path.name}: TensorRT left output shapes {unresolved} unresolved for input {shape}"
        )
    return IOPlan(inp, tuple(outputs), shape, resolved)


class _IOBuffers:
    """Pinned host + device memory for every I/O tensor at its largest shape."""

    def __init__(self, cudart: Any, nbytes: dict[str, int]) -> None:
        self.host: dict[str, PinnedBuffer] = {}
        self.device: dict[str, DeviceBuffer] = {}
        try:
            for name, size in nbytes.items():
                self.host[name] = PinnedBuffer(cudart, size)
                self.device[name] = DeviceBuffer(cudart, size)
        except Exception:
            self.close()  # a failed allocation must not leak the ones before it
            raise

    def close(self) -> None:
        for buffer in (*self.host.values(), *self.device.values()):
            buffer.close()


class TensorRTDetector(LayoutDetector):
    """Runs a YOLOX or Ultralytics detector as a TensorRT engine.

    ``trt`` and ``cudart`` default to the real modules (imported here, lazily); tests
    inject fakes. ``build_options`` apply when ``model_path`` is an ONNX file.
    """

    def __init__(
        self,
        config: EngineConfig,
        *,
        build_options: trt_build.BuildOptions | None = None,
        cache_dir: Path | None = None,
        gpu_preprocess: bool = False,
        trt: Any | None = None,
        cudart: Any | None = None,
    ) -> None:
        self._config = config
        self._trt = trt if trt is not None else trt_build.load_tensorrt()
        self._cudart = cudart if cudart is not None else load_cudart()
        # Before the first allocation: a CUDA 13 runtime on a CUDA 12 driver fails every
        # call with cudaErrorInsufficientDriver; this says which extra to install instead.
        ensure_compatible(self._cudart)
        self._device = device_info(self._cudart)
        self._source = Path(config.model_path)
        engine_path, sidecar = self._resolve_engine(build_options, cache_dir)
        self._engine_path = engine_path
        self._engine = self._deserialize(engine_path, sidecar)
        self._context = self._engine.create_execution_context()
        self._io = plan_io(engine_path, self._context, describe_io(self._trt, self._engine))
        self._input, self._outputs = self._io.input, list(self._io.outputs)
        #: (C, H, W) of every run: the profile's height and width, not the engine's -1s.
        self._sample_shape = self._io.input_shape[1:]
        self._layout: ModelLayout = model_layout(
            engine_path,
            config,
            _layout_shape(self._io.input_shape),
            [_layout_shape(self._io.output_shapes[o.name]) for o in self._outputs],
            sidecar.metadata if sidecar else {},
        )
        self._batch_min, self._batch_max = self._input.batch_range
        self._buffers = _IOBuffers(self._cudart, self._io.nbytes())
        try:
            self._stream = CudaStream(self._cudart)
            self._start, self._end = CudaEvent(self._cudart), CudaEvent(self._cudart)
        except EngineError:
            self._buffers.close()  # stream/event creation failed: free the buffers too
            raise
        # The kernel writes float32; an engine with an FP16 input keeps the CPU letterbox.
        use_gpu = gpu_preprocess and self._input.dtype == np.float32
        self._gpu_letterbox = _make_gpu_letterbox() if use_gpu else None
        #: GPU time of the latest ``execute_async_v3`` (ms), from CUDA events.
        self.last_infer_ms = 0.0
        log.info(
            "loaded TensorRT engine %s on %s (%s format, %dx%d input, batch %d..%d)",
            engine_path,
            self._device.name,
            self._layout.adapter.name,
            *self._layout.input_size,
            self._batch_min,
            self._batch_max,
        )

    # ------------------------------------------------------------------- loading

    def _resolve_engine(
        self, options: trt_build.BuildOptions | None, cache_dir: Path | None
    ) -> tuple[Path, trt_build.Sidecar | None]:
        path = self._source
        if not path.is_file():
            raise EngineError(f"model file not found: {path}; pass --model PATH")
        if path.suffix.lower() in trt_build.ENGINE_SUFFIXES:
            return path, trt_build.read_sidecar(path)
        options = options or trt_build.BuildOptions(fp16=True)
        cache = cache_dir or trt_build.engine_cache_dir(default_cache_dir())

        def build(onnx: Path, out: Path, opts: trt_build.BuildOptions) -> trt_build.Sidecar:
            return trt_build.build_with_options(onnx, out, opts, trt=self._trt, cudart=self._cudart)

        engine_path, sidecar = trt_build.ensure_engine(
            path,
            options,
            cache_dir=cache,
            device=self._device,
            tensorrt_version=str(self._trt.__version__),
            build=build,
        )
        return engine_path, sidecar

    def _deserialize(self, engine_path: Path, sidecar: trt_build.Sidecar | None) -> Any:
        version = str(self._trt.__version__)
        if sidecar is not None:
            trt_build.check_compatible(engine_path, sidecar, self._device, version)
        logger = self._trt.Logger(self._trt.Logger.WARNING)
        self._runtime = self._trt.Runtime(logger)  # must outlive the engine
        engine = self._runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if engine is None:
            raise trt_build.explain_deserialize_failure(engine_path, self._device, version, sidecar)
        return engine

    # ---------------------------------------------------------------- properties

    @property
    def model_name(self) -> str:
        return self._source.stem

    @property
    def device(self) -> DeviceInfo:
        return self._device

    @property
    def engine_path(self) -> Path:
        return self._engine_path

    @property
    def batch_range(self) -> tuple[int, int]:
        return self._batch_min, self._batch_max

    # ------------------------------------------------------------------- running

    def infer(self, batch: Sequence[PreparedImage]) -> list[Detections]:
        self._live_context()  # before touching buffers that close() has freed
        results: list[Detections] = []
        for chunk in chunks(batch, self._batch_max):
            host_input = self._host_input(len(chunk))
            np.copyto(host_input, stack_batch(chunk, self._input.dtype, pad_to=len(host_input)))
            output = self._execute(len(host_input), upload=True)
            results.extend(
                decode_output(self._layout, self._config, out, prepared)
                for out, prepared in zip(output, chunk, strict=False)
            )
        return results

    def detect(self, images: Sequence[Image]) -> list[Detections]:
        if self._gpu_letterbox is None or not _all_yuv_frames(images):
            return super().detect(images)
        self._live_context()
        results: list[Detections] = []
        for start in range(0, len(images), self._batch_max):
            frames = images[start : start + self._batch_max]
            rows = self._run_size(len(frames))
            prepared = self._gpu_prepare(frames, rows)  # type: ignore[arg-type]
            output = self._execute(rows, upload=False)
            results.extend(
                decode_output(self._layout, self._config, out, p)
                for out, p in zip(output, prepared, strict=False)
            )
        return results

    def close(self) -> None:
        if self._context is None:
            return
        for resource in (self._start, self._end, self._stream, self._buffers):
            resource.close()
        self._context = None
        self._engine = None

    def _live_context(self) -> Any:
        if self._context is None:
            raise EngineError(f"the detector for {self._source.name} is closed")
        return self._context

    def _run_size(self, count: int) -> int:
        """Rows to run: the chunk, raised to the profile's minimum (padding rows)."""
        return max(count, self._batch_min)

    def _host_input(self, count: int) -> np.ndarray:
        shape = (self._run_size(count), *self._sample_shape)
        return self._buffers.host[self._input.name].array(shape, self._input.dtype)

    def _execute(self, rows: int, *, upload: bool) -> np.ndarray:
        """Run ``rows`` images already in the input buffer (host if ``upload``, else
        device); returns a copy of the first output, (rows, ...)."""
        context = self._live_context()
        cudart, stream, inp = self._cudart, self._stream, self._input
        input_shape = (rows, *self._sample_shape)
        if not context.set_input_shape(inp.name, input_shape):
            raise EngineError(f"TensorRT rejected input shape {input_shape} for {inp.name}")
        nbytes = int(np.prod(input_shape)) * inp.dtype.itemsize
        if upload:
            copy_to_device(
                cudart, self._buffers.device[inp.name], self._buffers.host[inp.name], nbytes, stream
            )
        for spec in (inp, *self._outputs):
            context.set_tensor_address(spec.name, self._buffers.device[spec.name].ptr)
        self._start.record(stream)
        if not context.execute_async_v3(stream.handle):
            raise EngineError(f"TensorRT inference with {self._engine_path.name} failed")
        self._end.record(stream)
        first = self._outputs[0]
        out_shape = tuple(int(d) for d in context.get_tensor_shape(first.name))
        out_bytes = int(np.prod(out_shape)) * first.dtype.itemsize
        copy_to_host(
            cudart,
            self._buffers.host[first.name],
            self._buffers.device[first.name],
            out_bytes,
            stream,
        )
        stream.synchronize()
        self.last_infer_ms = self._end.elapsed_ms(self._start)
        # A copy: the pinned buffer is overwritten by the next batch.
        return self._buffers.host[first.name].array(out_shape, first.dtype).copy()

    def _gpu_prepare(self, frames: Sequence[av.VideoFrame], rows: int) -> list[PreparedImage]:
        """Letterbox frames on the GPU straight into the input buffer, on our stream."""
        import cupy as cp

        assert self._gpu_letterbox is not None
        shape = (rows, *self._sample_shape)
        device = self._buffers.device[self._input.name]
        memory = cp.cuda.UnownedMemory(device.ptr, device.nbytes, self)
        batch = cp.ndarray(shape, cp.float32, cp.cuda.MemoryPointer(memory, 0))
        spec = self._layout.letterbox
        with cp.cuda.ExternalStream(self._stream.handle):
            if rows > len(frames):
                batch[len(frames) :] = 0.0  # padding rows up to the profile minimum
            return [
                self._gpu_letterbox.letterbox_frame(frame, spec, batch[i])
                for i, frame in enumerate(frames)
            ]


def _split_io(path: Path, specs: Sequence[TensorSpec]) -> tuple[TensorSpec, list[TensorSpec]]:
    inputs = [s for s in specs if s.is_input]
    outputs = [s for s in specs if not s.is_input]
    if len(inputs) != 1 or not outputs:
        raise EngineError(
            f"{path.name}: expected one input and at least one output, got "
            f"{[s.name for s in inputs]} -> {[s.name for s in outputs]}"
        )
    return inputs[0], outputs


def _layout_shape(shape: Sequence[int]) -> list[int | str | None]:
    """A resolved shape as the model layout reads it: the batch left open."""
    return [None, *normalise_shape(shape[1:])]


def _all_yuv_frames(images: Sequence[Image]) -> bool:
    return all(
        isinstance(image, av.VideoFrame) and image.format.name in ("yuv420p", "nv12")
        for image in images
    )


def _make_gpu_letterbox() -> Any:
    """The CuPy letterbox kernel, or ``None`` (CPU letterbox) without CuPy."""
    try:
        from shelf_stream.engine.gpu_preprocess import CupyLetterbox

        return CupyLetterbox()
    except ImportError as exc:
        log.warning("GPU pre-processing needs CuPy (%s); letterboxing on the CPU", exc)
        return None


def create_tensorrt_detector(config: EngineConfig) -> Detector:
    """``BACKENDS["tensorrt"]``: FP16 engines built once per GPU from ONNX models."""
    return TensorRTDetector(config)
