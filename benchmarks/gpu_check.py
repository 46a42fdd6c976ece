"""Device check for the GPU path (issue #5): what the CPU tests cannot run.

Checks whatever this machine has and prints PASS / FAIL / SKIP with reasons; it never
crashes on a missing piece. Under five minutes on one H100/H200.

  1. cuda_mem: device/pinned allocation, pinned round trip on a stream, event timing,
     cudaError -> EngineError                                   (needs cuda-python)
  2. GPU letterbox (CuPy kernel) vs its NumPy reference, yuv420p and NV12, at
     640x480 / 1280x720 / 1920x1080, with kernel timings         (needs CuPy)
  3. onnxruntime CUDA provider vs CPU on the YOLOX model, timings (needs the CUDA EP)
  4. TensorRT: build FP16 engine + cache + refusal + inference vs onnxruntime
                                                                  (needs tensorrt)
  5. NVDEC decode of a generated HEVC clip through PyAV           (needs PyAV + libx265)

Running it with the device tool (from the repository root; paths are inside the repo
because ../shared does not travel):

  # once, here:
  mkdir -p .gpucheck && echo /.gpucheck/ >> .git/info/exclude
  cp ../shared/models/yolox_nano.onnx .gpucheck/
  # optional, for the NVDEC check (PyAV's wheel bundles FFmpeg with CUDA hwaccel):
  /work/venv/bin/pip download av==18.1.0 --only-binary=:all: --no-deps -d .gpucheck
  # optional, for the TensorRT check (~1 GB, may exceed the 64 MiB carry limit; then
  # skip it): pip download tensorrt-cu12 ... -d .gpucheck

  run(command="pip install --no-index --no-deps .gpucheck/*.whl 2>/dev/null; "
              "python benchmarks/gpu_check.py --model .gpucheck/yolox_nano.onnx",
      carry=[".gpucheck"], timeout_s=420)

Exit status: 0 when nothing FAILed (SKIPs are fine), 1 otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import sys
import tempfile
import time
import traceback
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SIZES = ((640, 480), (1280, 720), (1920, 1080))


@dataclass
class Result:
    name: str
    status: str  # PASS | FAIL | SKIP
    detail: str
    lines: list[str] = field(default_factory=list)


class Skip(Exception):
    """A check that cannot run here; the message says why."""


def _ensure_av_importable() -> bool:
    """shelf_stream's engine package imports PyAV at module level (for type aliases);
    without PyAV on the device, a stub lets the PyAV-free parts load. True if real."""
    try:
        importlib.import_module("av")
        return True
    except ImportError:
        stub = types.ModuleType("av")

        class VideoFrame:  # only used in isinstance checks and type aliases
            pass

        stub.VideoFrame = VideoFrame  # type: ignore[attr-defined]
        sys.modules["av"] = stub
        return False


def _version(module: str) -> str:
    try:
        return str(getattr(importlib.import_module(module), "__version__", "present"))
    except Exception as exc:  # any import failure is just "absent" here
        return f"absent ({type(exc).__name__})"


# ------------------------------------------------------------------------ checks


def check_environment(ctx: dict[str, Any]) -> Result:
    lines = [
        f"python {sys.version.split()[0]}",
        *(
            f"{m}: {_version(m)}"
            for m in ("numpy", "cupy", "torch", "onnxruntime", "tensorrt", "av", "cuda.bindings")
        ),
    ]
    from shelf_stream.engine.cuda_mem import device_info, load_cudart

    try:
        ctx["cudart"] = load_cudart()
        ctx["device"] = device_info(ctx["cudart"])
    except Exception as exc:
        return Result("environment", "FAIL", f"no CUDA device via cuda-python: {exc}", lines)
    dev = ctx["device"]
    return Result(
        "environment", "PASS", f"{dev.name}, compute capability {dev.compute_capability}", lines
    )


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
    return Result(
        "cuda_mem",
        "PASS" if ok else "FAIL",
        f"round trip equal={same}, error mapped={mapped}",
        lines,
    )


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
        t0 = time.perf_counter()
        for _ in range(20):
            cp.asarray(y), cp.asarray(u), cp.asarray(v)
        cp.cuda.Stream.null.synchronize()
        lines.append(
            f"{width}x{height}: plane upload "
            f"{(time.perf_counter() - t0) / 20 * 1000:.2f} ms (pageable memory)"
        )
    # float32 on both sides, FMA contraction off: at most one level where a value lands
    # within rounding error of a .5 boundary.
    ok = worst <= 1.0
    return Result(
        "gpu_preprocess", "PASS" if ok else "FAIL", f"max difference {worst:.0f} level(s)", lines
    )


def _time_cupy(cp: Any, fn: Callable[[], Any], repeats: int = 100) -> float:
    fn()
    start, end = cp.cuda.Event(), cp.cuda.Event()
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    end.synchronize()
    return float(cp.cuda.get_elapsed_time(start, end)) / repeats


def _reference_batch(spec: Any, count: int = 4) -> list[Any]:
    from shelf_stream.engine import gpu_preprocess as gp

    batch = []
    for i in range(count):
        y, u, v = _synthetic_planes(1280, 720, i)
        batch.append(gp.letterbox_yuv_reference(gp.YuvPlanes(y, u, v), spec))
    return batch


def check_ort_cuda(ctx: dict[str, Any]) -> Result:
    import onnxruntime as ort

    model = ctx.get("model") or _skip("no --model given")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise Skip(f"onnxruntime has no CUDA EP (providers: {ort.get_available_providers()})")
    from shelf_stream.engine import EngineConfig
    from shelf_stream.engine.onnx_backend import OnnxRuntimeDetector

    config = EngineConfig(model_path=model, score_threshold=0.05)
    gpu = OnnxRuntimeDetector(config, prefer_cuda=True)
    cpu = OnnxRuntimeDetector(config, prefer_cuda=False)
    if gpu.providers[0] != "CUDAExecutionProvider":
        return Result("ort_cuda", "FAIL", f"session fell back to {gpu.providers}")
    batch = _reference_batch(gpu.letterbox_spec)
    tensor = np.stack([p.tensor for p in batch[:1]])
    name = gpu._input_name
    a = gpu._live_session().run(None, {name: tensor})[0]
    b = cpu._live_session().run(None, {name: tensor})[0]
    diff = float(np.abs(a - b).max())
    ms = _time_host(lambda: gpu.infer(batch[:1]))
    ms_cpu = _time_host(lambda: cpu.infer(batch[:1]), repeats=10)
    ctx["ort_gpu"] = gpu
    lines = [
        f"raw output max |cuda-cpu| {diff:.4f}",
        f"infer 1 image: CUDA {ms:.2f} ms, CPU {ms_cpu:.2f} ms",
    ]
    return Result(
        "ort_cuda", "PASS" if diff < 0.05 else "FAIL", f"providers {gpu.providers}", lines
    )


def _time_host(fn: Callable[[], Any], repeats: int = 50) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats * 1000


def check_tensorrt(ctx: dict[str, Any]) -> Result:
    try:
        import tensorrt
    except ImportError as exc:
        raise Skip(f"tensorrt not installed ({exc})") from exc
    model = ctx.get("model") or _skip("no --model given")
    from shelf_stream.engine import EngineConfig
    from shelf_stream.engine import trt_build as tb
    from shelf_stream.engine.onnx_backend import OnnxRuntimeDetector
    from shelf_stream.engine.tensorrt_backend import TensorRTDetector
    from shelf_stream.errors import EngineError

    lines = [f"TensorRT {tensorrt.__version__}"]
    cache = Path(tempfile.mkdtemp(prefix="trt-cache-"))
    config = EngineConfig(model_path=model, backend="tensorrt", score_threshold=0.05)
    t0 = time.perf_counter()
    fp32 = TensorRTDetector(config, cache_dir=cache, build_options=tb.BuildOptions())
    lines.append(f"FP32 build+load {time.perf_counter() - t0:.1f} s -> {fp32.engine_path.name}")
    t0 = time.perf_counter()
    TensorRTDetector(config, cache_dir=cache, build_options=tb.BuildOptions()).close()
    reuse_s = time.perf_counter() - t0
    lines.append(f"second load (cache) {reuse_s:.2f} s")
    reference = ctx.get("ort_gpu") or OnnxRuntimeDetector(config, prefer_cuda=False)
    batch = _reference_batch(fp32.letterbox_spec)
    ours, theirs = fp32.infer(batch), reference.infer(batch)
    same_counts = [len(a) for a in ours] == [len(b) for b in theirs]
    ms = _time_host(lambda: fp32.infer(batch[:1]))
    lines.append(
        f"FP32 infer 1 image {ms:.2f} ms host, {fp32.last_infer_ms:.2f} ms GPU; "
        f"detection counts equal ORT's: {same_counts}"
    )
    engine = fp32.engine_path
    fp32.close()
    sidecar = tb.read_sidecar(engine)
    assert sidecar is not None
    foreign = Path(cache) / "foreign.engine"
    foreign.write_bytes(engine.read_bytes())
    bad_key = dataclasses.replace(sidecar.key, compute_capability="7.5")
    tb.sidecar_path(foreign).write_text(tb.Sidecar(bad_key, sidecar.onnx_path).to_json())
    try:
        TensorRTDetector(EngineConfig(model_path=foreign, backend="tensorrt"))
        refused = False
    except EngineError as exc:
        refused = "refusing" in str(exc)
    lines.append(f"foreign sidecar refused: {refused}")
    fp16 = TensorRTDetector(
        config, cache_dir=cache, build_options=tb.BuildOptions(fp16=True, batch=(1, 4, 8))
    )
    out16 = fp16.infer(batch)
    lines.append(
        f"FP16 batch 4: {fp16.last_infer_ms:.2f} ms GPU; detections {[len(d) for d in out16]} "
        f"vs ORT {[len(d) for d in theirs]}"
    )
    fp16.close()
    ok = same_counts and refused and reuse_s < 30
    return Result("tensorrt", "PASS" if ok else "FAIL", f"engines in {cache}", lines)


def check_nvdec(ctx: dict[str, Any]) -> Result:
    if not ctx.get("real_av"):
        raise Skip("PyAV not installed (carry its wheel, see the top of this file)")
    import av
    from av.codec.hwaccel import hwdevices_available

    if "cuda" not in hwdevices_available():
        raise Skip(f"this FFmpeg has no CUDA hwaccel ({hwdevices_available()})")
    from shelf_stream.codec import EncoderConfig, get_decoder, get_encoder
    from shelf_stream.codec.nvdec import NvdecDecoder

    try:
        encoder = get_encoder(
            EncoderConfig(codec="hevc", width=1280, height=720, bitrate_kbps=4000)
        )
    except Exception as exc:
        raise Skip(f"libx265 unavailable to generate the clip ({exc})") from exc
    with av.open("testsrc2=size=1280x720:rate=30", format="lavfi") as src:
        frames = [f for _, f in zip(range(60), src.decode(video=0), strict=False)]
    aus = [encoder.encode(f, i * 3000) for i, f in enumerate(frames)]
    hw = NvdecDecoder("hevc")
    t0 = time.perf_counter()
    decoded = [f for au in aus for f in hw.decode(au.data, au.pts)]
    hw_ms = (time.perf_counter() - t0) / len(aus) * 1000
    sw = get_decoder("hevc")
    t0 = time.perf_counter()
    soft = [f for au in aus for f in sw.decode(au.data, au.pts)]
    sw_ms = (time.perf_counter() - t0) / len(aus) * 1000
    fmt = decoded[0].format.name if decoded else "none"
    y_hw = np.asarray(decoded[-1].reformat(format="yuv420p").planes[0]) if decoded else None
    y_sw = np.asarray(soft[-1].planes[0])
    same = y_hw is not None and int(np.abs(y_hw.astype(int) - y_sw.astype(int)).max()) <= 2
    lines = [
        f"{len(decoded)}/{len(aus)} frames, format {fmt}; NVDEC {hw_ms:.2f} ms/frame "
        f"(with download), software {sw_ms:.2f} ms/frame; last Y plane matches: {same}"
    ]
    ok = len(decoded) == len(aus) and fmt == "nv12" and same
    return Result("nvdec", "PASS" if ok else "FAIL", f"frames as {fmt}", lines)


def _skip(reason: str) -> Any:
    raise Skip(reason)


CHECKS: list[tuple[str, Callable[[dict[str, Any]], Result]]] = [
    ("environment", check_environment),
    ("cuda_mem", check_cuda_mem),
    ("gpu_preprocess", check_gpu_preprocess),
    ("ort_cuda", check_ort_cuda),
    ("tensorrt", check_tensorrt),
    ("nvdec", check_nvdec),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="YOLOX ONNX model (e.g. yolox_nano.onnx)")
    args = parser.parse_args(argv)
    ctx: dict[str, Any] = {"real_av": _ensure_av_importable()}
    if args.model is not None and args.model.is_file():
        ctx["model"] = args.model
    results = []
    for name, check in CHECKS:
        t0 = time.perf_counter()
        try:
            result = check(ctx)
        except Skip as skip:
            result = Result(name, "SKIP", str(skip))
        except Exception as exc:
            tail = traceback.format_exc().strip().splitlines()[-3:]
            result = Result(name, "FAIL", f"{type(exc).__name__}: {exc}", tail)
        result.detail += f"  [{time.perf_counter() - t0:.1f} s]"
        results.append(result)
        print(f"{result.status:4}  {result.name:15} {result.detail}", flush=True)
        for line in result.lines:
            print(f"      {line}", flush=True)
    failed = [r.name for r in results if r.status == "FAIL"]
    print(
        f"\n{len(results) - len(failed)} of {len(results)} not failed; failed: {failed or 'none'}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
