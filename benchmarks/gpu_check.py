"""Device check for the GPU path: what the CPU tests cannot run, as one JSON verdict.

Meant for a GPU machine with CUDA, cuda-python, CuPy and onnxruntime-gpu but possibly
without TensorRT or PyAV. Each check PASSes, FAILs or SKIPs with a reason; a missing
piece is a SKIP, never a crash. Sized for the 420 s run limit (three TensorRT builds of
YOLOX-Nano at most); not yet timed on a GPU.

  environment       CUDA driver vs cuda-python/TensorRT CUDA majors (the start-up guard)
  cuda_mem          device/pinned memory, a stream round trip, events, error mapping
  gpu_preprocess    the CuPy letterbox kernel vs its NumPy reference, yuv420p and NV12
  ort_cuda          onnxruntime's CUDA provider vs CPU: raw outputs and detections
  precision_graphs  the FP16 and INT8 Q/DQ graphs (converted here, on the CPU, by
                    graph_precision) run by the CUDA provider vs FP32 on the CPU
  detector          the TensorRT detector's own path (real cuda-python memory and
                    streams, gpu_preprocess letterboxing into the input buffer) with
                    TensorRT, or with onnxruntime CUDA standing in for the engine
  tensorrt          FP32, FP16 and INT8 builds of the batch-1 model, cache, refusal,
                    detections vs FP32                                (needs tensorrt)
  nvdec             NVDEC through the decoder factory: NV12 frames, reformat, no
                    fallback, vs software                             (needs PyAV)

TF32 is off (NVIDIA_TF32_OVERRIDE=0, set before any CUDA library loads; Hopper uses
TF32 for FP32 convolutions by default), so FP32 comparisons use tight relative
tolerances; reduced precisions are compared by their detections (``engine.agreement``)
with the tolerances of tests/engine/test_graph_precision.py.

Running it (``--dry-run`` prints all of this for the current checkout):

  # here, once: PyAV's wheel (bundles FFmpeg with the CUDA hwaccel), onnxconverter-
  # common's, the model and its converted graphs into bench-out/gpucheck (ignored)
  .venv/bin/python benchmarks/gpu_check.py --prepare   # the packaged model, or --model PATH
  # on the device:
  run(command="python benchmarks/gpu_check.py --install --json $OUT/gpu_check.json",
      carry=["bench-out/gpucheck"], timeout_s=420)

``--install`` installs the carried wheels with pip (no index, no dependencies) and
fails loudly, with pip's output, if that fails. Exit status: 0 when nothing FAILed
(SKIPs are fine), 1 when something did, 2 when the carried files are missing or broken.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import importlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SIZES = ((640, 480), (1280, 720), (1920, 1080))
DEFAULT_CARRY = REPO / "bench-out" / "gpucheck"
CARRY_LIMIT_MIB = 64
MANIFEST = "manifest.json"
FRAMES = REPO / "tests" / "data" / "precision-frames"
MODEL_NAME = "yolox_nano.onnx"
RUN_TIMEOUT_S = 420
#: Detection tolerances: tests/engine/test_graph_precision.py (same frames, CPU).
FP16_TOLERANCE = {"matched_fraction": 1.0, "mean_matched_iou": 0.98, "map50": 0.99}
INT8_TOLERANCE = {"matched_fraction": 0.9, "mean_matched_iou": 0.85, "map50": 0.90}
FP32_TOLERANCE = {"matched_fraction": 1.0, "mean_matched_iou": 0.99, "map50": 0.99}
#: Raw FP32 outputs, TF32 off: cuDNN's and MLAS's summation orders differ, nothing more.
RAW_RTOL, RAW_ATOL = 1e-3, 1e-3
REFERENCE_SCORE, CANDIDATE_SCORE = 0.3, 0.1


@dataclass
class Result:
    name: str
    status: str  # PASS | FAIL | SKIP
    detail: str
    lines: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


class Skip(Exception):
    """A check that cannot run here; the message says why."""


def _skip(reason: str) -> Any:
    raise Skip(reason)


# ---------------------------------------------------------------- carried files


@dataclass(frozen=True)
class Carried:
    """One file in the carry directory and why it is there."""

    name: str
    role: str


def _wheel_name(distribution: str, directory: Path) -> str | None:
    stem = distribution.replace("-", "_")
    found = sorted(directory.glob(f"{stem}-*.whl")) if directory.is_dir() else []
    return found[-1].name if found else None


def planned_files(carry: Path) -> list[Carried]:
    """What ``--prepare`` writes and the device run uses."""
    return [
        Carried(_wheel_name("av", carry) or "av-<version>-*.whl", "PyAV wheel (FFmpeg with NVDEC)"),
        Carried(
            _wheel_name("onnxconverter-common", carry) or "onnxconverter_common-*.whl",
            "FP16 converter, for a TensorRT 11 build on the device",
        ),
        Carried(MODEL_NAME, "YOLOX-Nano, batch fixed at 1"),
        Carried("yolox_nano.fp16.onnx", "FP16 graph (graph_precision, converted here)"),
        Carried("yolox_nano.int8.onnx", "INT8 Q/DQ graph calibrated on the calib-* frames"),
        Carried(MANIFEST, "sha256 and size of each file"),
    ]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _download_wheel(distribution: str, version: str, carry: Path) -> None:
    command = [
        sys.executable, "-m", "pip", "download", f"{distribution}=={version}",
        "--only-binary=:all:", "--no-deps", "-d", str(carry),
    ]  # fmt: skip
    subprocess.run(command, check=True)


def _calibration_batches(detector: Any) -> Any:
    from shelf_stream.engine.trt_build import load_image

    for path in sorted(FRAMES.glob("calib-*.jpg")):
        yield detector.prepare(load_image(path)).tensor[None]


def prepare(carry: Path, model: Path) -> int:
    """Fill ``carry`` for the device; 0 when it fits the carry limit."""
    from shelf_stream.engine import EngineConfig
    from shelf_stream.engine import graph_precision as gp
    from shelf_stream.engine.onnx_backend import OnnxRuntimeDetector

    carry.mkdir(parents=True, exist_ok=True)
    for distribution in ("av", "onnxconverter-common"):
        if _wheel_name(distribution, carry) is None:
            _download_wheel(distribution, importlib.metadata.version(distribution), carry)
    shutil.copy(model, carry / MODEL_NAME)
    gp.convert_to_fp16(carry / MODEL_NAME, carry / "yolox_nano.fp16.onnx")
    reference = OnnxRuntimeDetector(EngineConfig(model_path=carry / MODEL_NAME), prefer_cuda=False)
    gp.quantize_to_int8(
        carry / MODEL_NAME,
        carry / "yolox_nano.int8.onnx",
        input_name="images",
        batches=_calibration_batches(reference),
    )
    files = {
        p.name: {"sha256": _sha256(p), "bytes": p.stat().st_size}
        for p in sorted(carry.iterdir())
        if p.is_file() and p.name != MANIFEST
    }
    (carry / MANIFEST).write_text(json.dumps({"files": files}, indent=2) + "\n")
    total = sum(f["bytes"] for f in files.values()) / 2**20
    print(f"prepared {carry}: {len(files)} files, {total:.1f} MiB (limit {CARRY_LIMIT_MIB} MiB)")
    return 0 if total <= CARRY_LIMIT_MIB else 1


def verify_carry(carry: Path) -> dict[str, Any]:
    """The manifest, after checking every file against it (``ValueError`` if not)."""
    manifest = json.loads((carry / MANIFEST).read_text())
    for name, entry in manifest["files"].items():
        path = carry / name
        if not path.is_file() or _sha256(path) != entry["sha256"]:
            raise ValueError(f"{path} is missing or differs from {MANIFEST}")
    return dict(manifest)


def install(carry: Path) -> Result:
    """pip-install the carried wheels; FAIL with pip's output if it fails."""
    wheels = sorted(str(p) for p in carry.glob("*.whl"))
    if not wheels:
        return Result("install", "FAIL", f"no wheels in {carry}: run --prepare here first")
    command = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", *wheels]
    done = subprocess.run(command, capture_output=True, text=True)
    tail = (done.stdout + done.stderr).strip().splitlines()[-8:]
    if done.returncode != 0:
        return Result("install", "FAIL", f"pip install failed ({done.returncode})", tail)
    importlib.invalidate_caches()
    version = importlib.metadata.version("av")
    return Result("install", "PASS", f"installed {len(wheels)} wheels; PyAV {version}", tail[-2:])


# ------------------------------------------------------------------ environment


def _real_av() -> bool:
    """shelf_stream's engine package imports PyAV at module level (type aliases); without
    PyAV a stub lets the PyAV-free parts load. True if PyAV is real."""
    try:
        importlib.import_module("av")
        return True
    except ImportError:
        stub = types.ModuleType("av")

        class VideoFrame:  # only used in isinstance checks and type aliases
            pass

        stub.VideoFrame = VideoFrame  # type: ignore[attr-defined]
        stub.__shelf_stream_stub__ = True  # type: ignore[attr-defined]
        sys.modules["av"] = stub
        return False


def _version(module: str) -> str:
    if module == "av" and getattr(sys.modules.get("av"), "__shelf_stream_stub__", False):
        return "absent (an import stub stands in)"
    try:
        return str(getattr(importlib.import_module(module), "__version__", "present"))
    except Exception as exc:  # any import failure is just "absent" here
        return f"absent ({type(exc).__name__})"


def check_environment(ctx: dict[str, Any]) -> Result:
    from shelf_stream.engine import cuda_compat
    from shelf_stream.engine.cuda_mem import device_info, load_cudart

    modules = ("numpy", "cupy", "torch", "onnxruntime", "tensorrt", "av", "cuda.bindings")
    lines = [f"python {sys.version.split()[0]}", *(f"{m}: {_version(m)}" for m in modules)]
    lines.append(f"NVIDIA_TF32_OVERRIDE={os.environ.get('NVIDIA_TF32_OVERRIDE', '(unset)')}")
    try:
        ctx["cudart"] = load_cudart()
        versions = cuda_compat.read_versions(ctx["cudart"])
    except Exception as exc:
        return Result("environment", "FAIL", f"cuda-python cannot answer: {exc}", lines)
    problems = cuda_compat.compatibility_problems(versions)
    lines.append(versions.describe())
    metrics = {"cuda": versions.describe(), "problems": problems}
    if problems:
        return Result("environment", "FAIL", "; ".join(problems), lines, metrics)
    ctx["device"] = device = device_info(ctx["cudart"])
    metrics.update(gpu=device.name, compute_capability=device.compute_capability)
    detail = f"{device.name}, compute capability {device.compute_capability}; guard passes"
    return Result("environment", "PASS", detail, lines, metrics)


# ------------------------------------------------------------------- cuda_mem


def check_cuda_mem(ctx: dict[str, Any]) -> Result:
    from shelf_stream.engine import cuda_mem as cm
    from shelf_stream.errors import EngineError

    cudart = ctx.get("cudart") or _skip("cuda-python not available")
    nbytes = 64 << 20
    lines = []
    with (
        cm.PinnedBuffer(cudart, nbytes) as src,
        cm.DeviceBuffer(cudart, nbytes) as dev,
        cm.PinnedBuffer(cudart, nbytes) as dst,
        cm.CudaStream(cudart) as stream,
        cm.CudaEvent(cudart) as e0,
        cm.CudaEvent(cudart) as e1,
        cm.CudaEvent(cudart) as e2,
    ):
        data = np.random.default_rng(0).integers(0, 255, nbytes, dtype=np.uint8)
        src.array((nbytes,), np.uint8)[:] = data
        e0.record(stream)
        cm.copy_to_device(cudart, dev, src, nbytes, stream)
        e1.record(stream)
        cm.copy_to_host(cudart, dst, dev, nbytes, stream)
        e2.record(stream)
        stream.synchronize()
        same = np.array_equal(dst.array((nbytes,), np.uint8), data)
        h2d, d2h = e1.elapsed_ms(e0), e2.elapsed_ms(e1)
        lines.append(f"64 MiB H2D {h2d:.2f} ms ({nbytes / h2d / 1e6:.1f} GB/s), D2H {d2h:.2f} ms")
    try:
        cm.DeviceBuffer(cudart, 1 << 52)  # 4 PiB: must fail cleanly
        mapped = False
    except EngineError as exc:
        mapped = "cudaErrorMemoryAllocation" in str(exc)
        lines.append(f"oversized cudaMalloc -> EngineError: {str(exc)[:90]}")
    ok = same and mapped
    detail = f"round trip equal={same}, error mapped={mapped}"
    return Result("cuda_mem", "PASS" if ok else "FAIL", detail, lines, {"h2d_ms": h2d})


# ------------------------------------------------------------- gpu_preprocess


def _synthetic_planes(width: int, height: int, seed: int) -> tuple[np.ndarray, ...]:
    """Smooth gradients plus noise and sharp blocks: every interpolation path matters."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    y = (16 + (xs * 180 // width + ys * 30 // height) + rng.integers(0, 30, (height, width))) % 256
    y[height // 4 : height // 2, width // 4 : width // 2] = 235
    ch, cw = height // 2, width // 2
    u = rng.integers(16, 240, (ch, cw))
    v = np.clip(128 + (np.mgrid[0:ch, 0:cw][1] * 100 // cw) - 50, 0, 255)
    return y.astype(np.uint8), u.astype(np.uint8), v.astype(np.uint8)


def _time_cupy(cp: Any, fn: Callable[[], Any], repeats: int = 100) -> float:
    fn()
    start, end = cp.cuda.Event(), cp.cuda.Event()
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    end.synchronize()
    return float(cp.cuda.get_elapsed_time(start, end)) / repeats


def check_gpu_preprocess(ctx: dict[str, Any]) -> Result:
    try:
        import cupy as cp
    except ImportError as exc:
        raise Skip(f"CuPy not installed ({exc})") from exc
    from shelf_stream.engine import gpu_preprocess as gp
    from shelf_stream.engine.preprocess import LetterboxSpec

    specs = {
        "yolox416": LetterboxSpec(416, 416, "bgr", 1.0, "top_left", 114),
        "ultra640": LetterboxSpec(640, 640, "rgb", 1 / 255, "center", 114),
    }
    kernel = gp.CupyLetterbox(cp)
    worst, lines = 0.0, []
    for width, height in SIZES:
        y, u, v = _synthetic_planes(width, height, width)
        planes = gp.YuvPlanes(y, u, v, gp.BT601)
        dy, du, dv = cp.asarray(y), cp.asarray(u), cp.asarray(v)
        uv = cp.asarray(np.stack([u, v], axis=-1).reshape(u.shape[0], -1))
        for name, spec in specs.items():
            ref = gp.letterbox_yuv_reference(planes, spec).tensor
            params = gp.sampling_params(width, height, spec)
            out = cp.empty((3, spec.height, spec.width), cp.float32)
            kernel(dy, du, dv, c_step=1, matrix=gp.BT601, params=params, out=out)
            planar = float(cp.abs(out - cp.asarray(ref)).max()) / spec.value_scale
            kernel(dy, uv, uv[:, 1:], c_step=2, matrix=gp.BT601, params=params, out=out)
            nv12 = float(cp.abs(out - cp.asarray(ref)).max()) / spec.value_scale
            launch = functools.partial(
                kernel, dy, du, dv, c_step=1, matrix=gp.BT601, params=params, out=out
            )
            ms = _time_cupy(cp, launch)
            worst = max(worst, planar, nv12)
            lines.append(
                f"{width}x{height} -> {name}: max |gpu-ref| yuv420p {planar:.0f} / nv12 "
                f"{nv12:.0f} levels; kernel {ms * 1000:.1f} us"
            )
    # float32 on both sides, FMA contraction off: at most one level where a value lands
    # within rounding error of a .5 boundary.
    ok = worst <= 1.0
    detail = f"max difference {worst:.0f} level(s)"
    return Result("gpu_preprocess", "PASS" if ok else "FAIL", detail, lines, {"worst": worst})


# -------------------------------------------------------------- ORT, graphs


def _eval_images() -> list[Any]:
    from shelf_stream.engine.trt_build import load_image

    if not FRAMES.is_dir():
        raise Skip(f"{FRAMES} is missing")
    return [load_image(p) for p in sorted(FRAMES.glob("eval-*.jpg"))]


def _reference(ctx: dict[str, Any]) -> tuple[list[Any], list[Any]]:
    """The eval frames and the FP32 model's detections on the CPU (computed once)."""
    if "reference" not in ctx:
        from shelf_stream.engine import EngineConfig
        from shelf_stream.engine.onnx_backend import OnnxRuntimeDetector

        model = ctx.get("model") or _skip("no model (run --prepare, or pass --model)")
        if not ctx.get("real_av"):
            raise Skip("the eval frames are JPEGs read with PyAV, which is not installed")
        cpu = OnnxRuntimeDetector(
            EngineConfig(model_path=model, score_threshold=REFERENCE_SCORE), prefer_cuda=False
        )
        images = _eval_images()
        ctx["reference"] = (images, cpu.detect(images))
        ctx["cpu_detector"] = cpu
    result: tuple[list[Any], list[Any]] = ctx["reference"]
    return result


def _within(agreement: Any, tolerance: dict[str, float]) -> bool:
    return all(getattr(agreement, key) >= value for key, value in tolerance.items())


def _require_ort_cuda() -> Any:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise Skip(f"onnxruntime has no CUDA EP (providers: {ort.get_available_providers()})")
    return ort


def check_ort_cuda(ctx: dict[str, Any]) -> Result:
    ort = _require_ort_cuda()
    from shelf_stream.engine import EngineConfig
    from shelf_stream.engine.agreement import agreement
    from shelf_stream.engine.onnx_backend import OnnxRuntimeDetector

    images, reference = _reference(ctx)
    model = ctx["model"]
    gpu = OnnxRuntimeDetector(
        EngineConfig(model_path=model, score_threshold=REFERENCE_SCORE), prefer_cuda=True
    )
    if gpu.providers[0] != "CUDAExecutionProvider":
        return Result("ort_cuda", "FAIL", f"session fell back to {gpu.providers}")
    tensor = ctx["cpu_detector"].prepare(images[0]).tensor[None]
    cpu_session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    a = gpu._live_session().run(None, {"images": tensor})[0]
    b = cpu_session.run(None, {"images": tensor})[0]
    close = bool(np.allclose(a, b, rtol=RAW_RTOL, atol=RAW_ATOL))
    diff = float(np.max(np.abs(a - b) / (np.abs(b) + 1.0)))
    result = agreement(reference, gpu.detect(images))
    ms = _time_host(lambda: gpu.detect(images[:1]))
    ok = close and _within(result, FP32_TOLERANCE)
    lines = [
        f"raw output allclose(rtol={RAW_RTOL}, atol={RAW_ATOL}): {close} "
        f"(max |cuda-cpu|/(|cpu|+1) {diff:.2e})",
        f"detections vs CPU: {result.describe()}",
        f"detect 1 frame: {ms:.2f} ms",
    ]
    metrics = {"raw_rel_diff": diff, "agreement": result.to_json(), "detect_ms": ms}
    return Result(
        "ort_cuda", "PASS" if ok else "FAIL", f"providers {gpu.providers}", lines, metrics
    )


def _time_host(fn: Callable[[], Any], repeats: int = 30) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats * 1000


def check_precision_graphs(ctx: dict[str, Any]) -> Result:
    _require_ort_cuda()
    from shelf_stream.engine import EngineConfig
    from shelf_stream.engine.agreement import agreement
    from shelf_stream.engine.onnx_backend import OnnxRuntimeDetector

    carry: Path = ctx["carry"]
    images, reference = _reference(ctx)
    lines, metrics, ok = [], {}, True
    for precision, tolerance in (("fp16", FP16_TOLERANCE), ("int8", INT8_TOLERANCE)):
        graph = carry / f"yolox_nano.{precision}.onnx"
        if not graph.is_file():
            raise Skip(f"{graph} is missing: run --prepare here first")
        detector = OnnxRuntimeDetector(
            EngineConfig(model_path=graph, score_threshold=CANDIDATE_SCORE), prefer_cuda=True
        )
        result = agreement(reference, detector.detect(images))
        passed = _within(result, tolerance) and detector.providers[0] == "CUDAExecutionProvider"
        ok &= passed
        ms = _time_host(lambda d=detector: d.detect(images[:1]))
        lines.append(f"{precision} on {detector.providers[0]}: {result.describe()}; {ms:.2f} ms")
        metrics[precision] = {**result.to_json(), "detect_ms": ms, "tolerance": tolerance}
    status = "PASS" if ok else "FAIL"
    return Result("precision_graphs", status, "FP16 and INT8 graphs vs FP32", lines, metrics)


# ------------------------------------------------------------------- detector


class OrtCudaTensorRT:
    """Just enough of the ``tensorrt`` module for TensorRTDetector, with onnxruntime's
    CUDA provider executing the "engine" on the detector's own device buffers (IOBinding
    on raw device pointers). Everything else in the detector is real: cuda-python
    memory and streams, the profile-sized I/O, the GPU letterbox writing the input.
    ``device="cpu"`` runs the same on host memory (tests/engine/test_gpu_check.py)."""

    __version__ = "ort-cuda-shim"
    TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")

    class Logger:
        WARNING = 2

        def __init__(self, level: int) -> None:
            self.level = level

    def __init__(self, cudart: Any, device: str = "cuda") -> None:
        self.cudart = cudart
        self.device = device

    def Runtime(self, logger: Any) -> Any:
        return types.SimpleNamespace(deserialize_cuda_engine=self._engine)

    @staticmethod
    def nptype(dtype: Any) -> Any:
        return dtype

    def _engine(self, data: bytes) -> Any:
        import onnxruntime as ort

        providers = ["CPUExecutionProvider"]
        if self.device == "cuda":
            providers.insert(0, "CUDAExecutionProvider")
        return _OrtCudaEngine(ort.InferenceSession(data, providers=providers), self)


class _OrtCudaEngine:
    def __init__(self, session: Any, shim: OrtCudaTensorRT) -> None:
        self.session, self.cudart, self.device = session, shim.cudart, shim.device
        self.inp, self.out = session.get_inputs()[0], session.get_outputs()[0]
        self.num_io_tensors = 2

    def get_tensor_name(self, index: int) -> str:
        return str([self.inp.name, self.out.name][index])

    def get_tensor_mode(self, name: str) -> str:
        return "INPUT" if name == self.inp.name else "OUTPUT"

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        shape = self.inp.shape if name == self.inp.name else self.out.shape
        return tuple(d if isinstance(d, int) else -1 for d in shape)

    def get_tensor_dtype(self, name: str) -> Any:
        return np.float32

    def create_execution_context(self) -> Any:
        return _OrtCudaContext(self)


class _OrtCudaContext:
    def __init__(self, engine: _OrtCudaEngine) -> None:
        self.engine = engine
        self.addresses: dict[str, int] = {}
        self.shape: tuple[int, ...] = engine.get_tensor_shape(engine.inp.name)

    def set_input_shape(self, name: str, shape: Sequence[int]) -> bool:
        self.shape = tuple(int(d) for d in shape)
        return self.shape == self.engine.get_tensor_shape(name)  # the batch-1 model

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self.engine.get_tensor_shape(name)

    def set_tensor_address(self, name: str, address: int) -> bool:
        self.addresses[name] = address
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        from shelf_stream.engine.cuda_mem import check

        engine, cudart = self.engine, self.engine.cudart
        # ORT runs on its own stream: wait for the letterbox/upload on the detector's
        # stream first, and for ORT's writes before the detector copies them back.
        check(cudart, cudart.cudaDeviceSynchronize(), "device sync")
        binding = engine.session.io_binding()
        inp, out = engine.inp.name, engine.out.name
        out_shape = list(engine.get_tensor_shape(out))
        binding.bind_input(inp, engine.device, 0, np.float32, list(self.shape), self.addresses[inp])
        binding.bind_output(out, engine.device, 0, np.float32, out_shape, self.addresses[out])
        engine.session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        check(cudart, cudart.cudaDeviceSynchronize(), "device sync")
        return True


class _CountingCudart:
    """cuda-python's runtime with host-to-device copies counted (bytes per call)."""

    def __init__(self, cudart: Any) -> None:
        self._cudart = cudart
        self.uploads: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cudart, name)

    def cudaMemcpyAsync(self, dst: Any, src: Any, nbytes: int, kind: Any, stream: Any) -> Any:
        if kind == self._cudart.cudaMemcpyKind.cudaMemcpyHostToDevice:
            self.uploads.append(int(nbytes))
        return self._cudart.cudaMemcpyAsync(dst, src, nbytes, kind, stream)


def _yuv_frames(images: Sequence[Any], fmt: str) -> list[Any]:
    return [image.reformat(format=fmt) for image in images]


def _detector(ctx: dict[str, Any], engine_or_onnx: Path, cudart: Any, gpu: bool) -> Any:
    from shelf_stream.engine import EngineConfig
    from shelf_stream.engine import trt_build as tb
    from shelf_stream.engine.tensorrt_backend import TensorRTDetector

    return TensorRTDetector(
        EngineConfig(model_path=engine_or_onnx, backend="tensorrt", score_threshold=0.3),
        build_options=tb.BuildOptions(),
        cache_dir=ctx["workdir"] / "engines",
        gpu_preprocess=gpu,
        trt=ctx.get("trt") or OrtCudaTensorRT(cudart),
        cudart=cudart,
    )


def check_detector(ctx: dict[str, Any]) -> Result:
    cudart = ctx.get("cudart") or _skip("cuda-python not available")
    if not ctx["gpu_letterbox"]:
        raise Skip("disabled with --no-gpu-letterbox")
    try:
        importlib.import_module("cupy")
    except ImportError as exc:
        raise Skip(f"CuPy not installed ({exc})") from exc
    from shelf_stream.engine.agreement import agreement

    images, reference = _reference(ctx)
    if ctx.get("trt") is None:
        _require_ort_cuda()
        engine = ctx["workdir"] / "ort-shim.engine"  # the ONNX bytes, "deserialized" by ORT
        engine.write_bytes(ctx["model"].read_bytes())
        runner = "onnxruntime CUDA in place of the TensorRT engine"
    else:
        engine = ctx["model"]  # built (FP32) and cached by the detector itself
        runner = f"TensorRT {ctx['trt'].__version__} (FP32 engine)"
    lines, metrics, ok = [runner], {}, True
    for fmt in ("yuv420p", "nv12"):
        frames = _yuv_frames(images, fmt)
        counts: dict[bool, int] = {}
        found: dict[bool, list[Any]] = {}
        kernel_used = False
        for gpu in (False, True):
            counting = _CountingCudart(cudart)
            detector = _detector(ctx, engine, counting, gpu)
            found[gpu] = detector.detect(frames)
            counts[gpu] = len(counting.uploads)
            kernel_used |= gpu and detector._gpu_letterbox is not None
            detector.close()
        versus_cpu = agreement(found[False], found[True])
        versus_fp32 = agreement(reference, found[True])
        passed = (
            kernel_used
            and counts[True] == 0
            and counts[False] == len(frames)
            and _within(versus_cpu, FP32_TOLERANCE)
        )
        ok &= passed
        lines += [
            f"{fmt}: GPU letterbox vs CPU letterbox in the detector: {versus_cpu.describe()}",
            f"{fmt}: input uploads through cudart: {counts[False]} with the CPU letterbox, "
            f"{counts[True]} with the GPU one (planes go up through CuPy)",
            f"{fmt}: GPU-letterboxed detections vs FP32 on the JPEGs: mAP@0.5 "
            f"{versus_fp32.map50:.3f}",
        ]
        metrics[fmt] = {"vs_cpu_letterbox": versus_cpu.to_json(), "uploads": counts}
    status = "PASS" if ok else "FAIL"
    return Result("detector", status, "gpu_preprocess inside TensorRTDetector", lines, metrics)


# ------------------------------------------------------------------- TensorRT


def _layer_precisions(engine_path: Path, trt: Any) -> str:
    """Best effort: which data types the engine inspector reports (needs a detailed
    profiling verbosity, which shelf-stream does not set: reported when present)."""
    try:
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
        info = engine.create_engine_inspector().get_engine_information(
            trt.LayerInformationFormat.JSON
        )
    except Exception as exc:  # informational only
        return f"inspector unavailable ({type(exc).__name__})"
    return ", ".join(
        f"{word} x{info.count(word)}" for word in ("Half", "Int8", "Float") if word in info
    )


def check_tensorrt(ctx: dict[str, Any]) -> Result:
    trt = ctx.get("trt") or _skip("tensorrt not installed")
    from shelf_stream.engine import EngineConfig
    from shelf_stream.engine import trt_build as tb
    from shelf_stream.engine.agreement import agreement
    from shelf_stream.engine.tensorrt_backend import TensorRTDetector
    from shelf_stream.errors import EngineError

    images, reference = _reference(ctx)
    model: Path = ctx["model"]
    cache = ctx["workdir"] / "trt-cache"
    calib = ctx["workdir"] / "calib"
    calib.mkdir(exist_ok=True)
    for frame in sorted(FRAMES.glob("calib-*.jpg")):
        shutil.copy(frame, calib / frame.name)
    lines = [f"TensorRT {trt.__version__}"]
    metrics: dict[str, Any] = {}
    ok = True
    builds = {
        "fp32": (tb.BuildOptions(), FP32_TOLERANCE, REFERENCE_SCORE),
        # The official model's batch is fixed at 1: the default batch, no profile.
        "fp16": (tb.BuildOptions(fp16=True), FP16_TOLERANCE, CANDIDATE_SCORE),
        "int8": (tb.BuildOptions(int8=True, calib_dir=calib), INT8_TOLERANCE, CANDIDATE_SCORE),
    }
    engines: dict[str, Path] = {}
    for name, (options, tolerance, score) in builds.items():
        config = EngineConfig(model_path=model, backend="tensorrt", score_threshold=score)
        t0 = time.perf_counter()
        # The CPU letterbox on the same frames as the reference: this compares precision
        # only (the GPU letterbox inside this detector is the "detector" check's).
        detector = TensorRTDetector(config, cache_dir=cache, build_options=options)
        build_s = time.perf_counter() - t0
        sidecar = tb.read_sidecar(detector.engine_path)
        assert sidecar is not None
        found = detector.detect(images)
        result = agreement(reference, found)
        ms = _time_host(lambda d=detector: d.detect(images[:1]))
        gpu_ms = detector.last_infer_ms
        passed = _within(result, tolerance)
        ok &= passed
        engines[name] = detector.engine_path
        detector.close()
        lines.append(
            f"{name}: built in {build_s:.1f} s ({sidecar.key.precision_mode}, "
            f"{sidecar.key.precisions or 'fp32'}); {result.describe()}; {ms:.2f} ms host, "
            f"{gpu_ms:.2f} ms GPU; layers: {_layer_precisions(detector.engine_path, trt)}"
        )
        metrics[name] = {
            **result.to_json(),
            "build_s": build_s,
            "host_ms": ms,
            "gpu_ms": gpu_ms,
            "key": sidecar.key.to_json(),
            "built_graph": sidecar.built_graph,
        }
    t0 = time.perf_counter()
    TensorRTDetector(
        EngineConfig(model_path=model, backend="tensorrt"), cache_dir=cache,
        build_options=tb.BuildOptions(),
    ).close()  # fmt: skip
    reuse_s = time.perf_counter() - t0
    sidecar = tb.read_sidecar(engines["fp32"])
    assert sidecar is not None
    foreign = cache / "foreign.engine"
    foreign.write_bytes(engines["fp32"].read_bytes())
    bad_key = dataclasses.replace(sidecar.key, compute_capability="7.5")
    tb.sidecar_path(foreign).write_text(tb.Sidecar(bad_key, sidecar.onnx_path).to_json())
    try:
        TensorRTDetector(EngineConfig(model_path=foreign, backend="tensorrt"))
        refused = False
    except EngineError as exc:
        refused = "refusing" in str(exc)
    lines.append(f"cached load {reuse_s:.2f} s; foreign sidecar refused: {refused}")
    ok &= refused and reuse_s < 30
    metrics.update(reuse_s=reuse_s, refused=refused)
    return Result("tensorrt", "PASS" if ok else "FAIL", f"engines in {cache}", lines, metrics)


# ----------------------------------------------------------------------- NVDEC


def check_nvdec(ctx: dict[str, Any]) -> Result:
    if not ctx.get("real_av"):
        raise Skip("PyAV not installed (carry its wheel: --prepare here, --install there)")
    import av
    from av.codec.hwaccel import hwdevices_available

    if "cuda" not in hwdevices_available():
        raise Skip(f"this FFmpeg has no CUDA hwaccel ({hwdevices_available()})")
    from shelf_stream.codec import EncoderConfig, get_decoder, get_encoder
    from shelf_stream.codec.nvdec import FallbackDecoder, make_decoder_factory

    try:
        encoder = get_encoder(
            EncoderConfig(codec="hevc", width=1280, height=720, bitrate_kbps=4000)
        )
    except Exception as exc:
        raise Skip(f"libx265 unavailable to generate the clip ({exc})") from exc
    with av.open("testsrc2=size=1280x720:rate=30", format="lavfi") as src:
        frames = [f for _, f in zip(range(60), src.decode(video=0), strict=False)]
    aus = [encoder.encode(f, i * 3000) for i, f in enumerate(frames)]
    factory = make_decoder_factory("hevc", "nvdec")
    hw = factory()
    t0 = time.perf_counter()
    decoded = [f for au in aus for f in hw.decode(au.data, au.pts)]
    hw_ms = (time.perf_counter() - t0) / len(aus) * 1000
    on_nvdec = isinstance(hw, FallbackDecoder) and hw.on_nvdec
    sw = get_decoder("hevc")
    t0 = time.perf_counter()
    soft = [f for au in aus for f in sw.decode(au.data, au.pts)]
    sw_ms = (time.perf_counter() - t0) / len(aus) * 1000
    fmt = decoded[0].format.name if decoded else "none"
    # PyAV 17 raised "Operation not supported" here on NVDEC frames (PR #2336).
    y_hw = np.asarray(decoded[-1].reformat(format="yuv420p").planes[0]) if decoded else None
    y_sw = np.asarray(soft[-1].planes[0])
    same = y_hw is not None and int(np.abs(y_hw.astype(int) - y_sw.astype(int)).max()) <= 2
    reopened = factory()  # the next keyframe's decoder: NVDEC again, same primary context
    again = len(reopened.decode(aus[0].data, aus[0].pts)) == 1
    lines = [
        f"{len(decoded)}/{len(aus)} frames, format {fmt}, still on NVDEC: {on_nvdec}; NVDEC "
        f"{hw_ms:.2f} ms/frame (with download), software {sw_ms:.2f} ms/frame",
        f"reformat to yuv420p works, last Y plane matches: {same}; reopened decoder decodes: "
        f"{again}",
    ]
    ok = len(decoded) == len(aus) and fmt == "nv12" and same and on_nvdec and again
    metrics = {"nvdec_ms": hw_ms, "software_ms": sw_ms, "format": fmt, "on_nvdec": on_nvdec}
    return Result("nvdec", "PASS" if ok else "FAIL", f"frames as {fmt}", lines, metrics)


# ------------------------------------------------------------------------ main

CHECKS: list[tuple[str, Callable[[dict[str, Any]], Result], str]] = [
    ("environment", check_environment, "cuda-python"),
    ("cuda_mem", check_cuda_mem, "cuda-python"),
    ("gpu_preprocess", check_gpu_preprocess, "CuPy"),
    ("ort_cuda", check_ort_cuda, "onnxruntime-gpu, PyAV, the model"),
    ("precision_graphs", check_precision_graphs, "onnxruntime-gpu, PyAV, carried graphs"),
    ("detector", check_detector, "cuda-python, CuPy, PyAV, TensorRT or onnxruntime-gpu"),
    ("tensorrt", check_tensorrt, "tensorrt, PyAV, the model"),
    ("nvdec", check_nvdec, "PyAV with the CUDA hwaccel, libx265"),
]


def run_command(carry: Path, gpu_letterbox: bool) -> str:
    relative = carry.relative_to(REPO) if carry.is_relative_to(REPO) else carry
    flag = "" if gpu_letterbox else " --no-gpu-letterbox"
    return (
        f'run(command="python benchmarks/gpu_check.py --install{flag} '
        f'--carry {relative} --json $OUT/gpu_check.json", carry=["{relative}"], '
        f"timeout_s={RUN_TIMEOUT_S})"
    )


def dry_run(carry: Path, gpu_letterbox: bool) -> int:
    """Print what would be carried and run; touches no GPU library."""
    print(f"carry: {carry} (limit {CARRY_LIMIT_MIB} MiB)")
    total = 0
    for item in planned_files(carry):
        path = carry / item.name
        if path.is_file():
            size = path.stat().st_size
            total += size
            state = f"{size / 2**20:6.1f} MiB"
        else:
            state = "   missing (run --prepare)"
        print(f"  {item.name:55} {state}  {item.role}")
    frames = sorted(FRAMES.glob("*.jpg"))
    print(f"  {len(frames)} frames in {FRAMES.relative_to(REPO)} travel with the working tree")
    print(f"  total carried: {total / 2**20:.1f} MiB")
    print("install: pip install --no-index --no-deps <carried wheels> (fails the run loudly)")
    print(f"TF32: off (NVIDIA_TF32_OVERRIDE=0); GPU letterbox in the detector: {gpu_letterbox}")
    print("checks:")
    for name, _, needs in CHECKS:
        print(f"  {name:17} needs {needs}")
    print(f"command: {run_command(carry, gpu_letterbox)}")
    return 0


def _run_checks(ctx: dict[str, Any]) -> list[Result]:
    results = []
    for name, check, _ in CHECKS:
        t0 = time.perf_counter()
        try:
            result = check(ctx)
        except Skip as skip:
            result = Result(name, "SKIP", str(skip))
        except Exception as exc:
            tail = traceback.format_exc().strip().splitlines()[-3:]
            result = Result(name, "FAIL", f"{type(exc).__name__}: {exc}", tail)
        result.seconds = round(time.perf_counter() - t0, 1)
        results.append(result)
        print(f"{result.status:4}  {result.name:17} {result.detail}  [{result.seconds} s]")
        for line in result.lines:
            print(f"      {line}", flush=True)
    return results


def _context(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    ctx: dict[str, Any] = {
        "real_av": _real_av(),
        "carry": args.carry,
        "gpu_letterbox": args.gpu_letterbox,
        "workdir": workdir,
    }
    model = args.model or args.carry / MODEL_NAME
    if model.is_file():
        ctx["model"] = model
    try:
        ctx["trt"] = importlib.import_module("tensorrt")
    except Exception:  # absent or broken: the TensorRT check says so
        ctx["trt"] = None
    return ctx


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--carry", type=Path, default=DEFAULT_CARRY, help="carried files")
    parser.add_argument("--model", type=Path, help="YOLOX ONNX model (default: the carried one)")
    parser.add_argument("--prepare", action="store_true", help="fill --carry here, then stop")
    parser.add_argument("--dry-run", action="store_true", help="list what is carried and run")
    parser.add_argument("--install", action="store_true", help="pip-install the carried wheels")
    parser.add_argument("--json", type=Path, help="write the verdict here")
    parser.add_argument(
        "--gpu-letterbox", action=argparse.BooleanOptionalAction, default=True,
        help="letterbox on the GPU inside the detector checks (default: on)",
    )  # fmt: skip
    parser.add_argument("--allow-tf32", action="store_true", help="leave TF32 as CUDA sets it")
    args = parser.parse_args(argv)
    if args.dry_run:
        return dry_run(args.carry, args.gpu_letterbox)
    if args.prepare:
        if args.model is None:
            from shelf_stream.engine.models import resolve_model

            args.model = resolve_model(None)  # the packaged YOLOX-Nano
        return prepare(args.carry, args.model)
    if not args.allow_tf32:
        os.environ["NVIDIA_TF32_OVERRIDE"] = "0"  # before any CUDA library loads
    started = time.perf_counter()
    results: list[Result] = []
    manifest: dict[str, Any] = {}
    broken = False
    try:
        manifest = verify_carry(args.carry)
    except (OSError, ValueError, KeyError) as exc:
        results.append(Result("carry", "FAIL", f"{exc}; run --prepare here first"))
        broken = True
    if args.install and not broken:
        results.append(install(args.carry))
        broken = results[-1].status == "FAIL"
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as workdir:
        results += _run_checks(_context(args, Path(workdir)))
    failed = [r.name for r in results if r.status == "FAIL"]
    verdict = {
        "verdict": "fail" if failed else "pass",
        "failed": failed,
        "skipped": {r.name: r.detail for r in results if r.status == "SKIP"},
        "tf32": "allowed" if args.allow_tf32 else "off",
        "gpu_letterbox": args.gpu_letterbox,
        "carried": manifest.get("files", {}),
        "seconds": round(time.perf_counter() - started, 1),
        "checks": [dataclasses.asdict(r) for r in results],
    }
    out = args.json or Path(os.environ.get("OUT", REPO / "bench-out")) / "gpu_check.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(verdict, indent=2, default=str) + "\n")
    print(
        f"\n{len(results) - len(failed)} of {len(results)} not failed; failed: {failed or 'none'}"
    )
    print(f"verdict written to {out}")
    if broken:
        return 2
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
