"""TensorRT engines: building one from ONNX, caching it, and refusing a foreign one.

A serialized engine only runs on the TensorRT version that built it and, by default,
on GPUs of the compute capability it was built on (its kernels are SASS for that SM;
its tactics were timed on that GPU). So every engine gets a JSON sidecar holding the
key it was built for (GPU name, compute capability, TensorRT version, ONNX sha256,
build options) plus the ONNX model's metadata (class names, ``imgsz``), which a
serialized engine does not keep. Loading compares the sidecar with this machine and
refuses a mismatch with the fix; without a sidecar, a failed deserialisation is
explained instead of surfacing as TensorRT's ``None``.

Precision follows the TensorRT generation (``plan_precisions``). TensorRT 10 builds with
precision builder flags (``BuilderFlag.FP16``/``BF16``/``INT8``, INT8 with the entropy
calibrator). TensorRT 11 removed those flags and the calibrator and builds strongly typed
networks only (NVIDIA's 10.x to 11.x migration guide, "Removed Python APIs"), so the
ONNX graph itself is converted first (``graph_precision``: FP16 weights, or INT8 Q/DQ
calibrated on real frames). Either way a precision that cannot be honoured is an error,
never an FP32 engine, and the key records the precision mode and the converter.

The key, sidecar and refusal logic is pure Python (device and TensorRT version come in
as data); ``tensorrt`` itself is imported only when an engine is built or loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shelf_stream.engine import graph_precision
from shelf_stream.engine.cuda_mem import GPU_INSTALL_HINT, DeviceInfo
from shelf_stream.engine.graph_precision import DEFAULT_INT8, Int8Settings
from shelf_stream.engine.preprocess import LetterboxSpec, letterbox
from shelf_stream.errors import ConfigError, EngineError

log = logging.getLogger(__name__)

#: (min, opt, max) batch of the optimisation profile. opt=1: the scheduler's default
#: batch is one frame, and TensorRT tunes its kernels for ``opt``.
DEFAULT_BATCH = (1, 1, 8)
DEFAULT_WORKSPACE_MB = 2048
#: Bumped when the engine cache's layout or key fields change. 2: the key records the
#: precision mode (builder flags or strongly typed) and the graph converter.
CACHE_FORMAT = 2
#: ``PrecisionPlan.mode``: TensorRT 10's precision builder flags, or TensorRT 11's strongly
#: typed network built from a graph converted to the precision.
BUILDER_FLAGS = "builder_flags"
STRONGLY_TYPED = "strongly_typed"
#: TensorRT majors this module knows how to drive (the gpu extras pin below 12).
SUPPORTED_TENSORRT_MAJORS = (10, 11)
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def load_tensorrt() -> Any:
    """The ``tensorrt`` module, or ``EngineError`` saying how to install it."""
    try:
        import tensorrt
    except ImportError as exc:
        raise EngineError(f"TensorRT is not installed ({exc}); {GPU_INSTALL_HINT}") from exc
    return tensorrt


# ------------------------------------------------------------------- build options


@dataclass(frozen=True, slots=True, kw_only=True)
class BuildOptions:
    """How to build an engine.

    ``best`` is ``trtexec --best`` for a detector: every reduced precision TensorRT
    may pick from (FP16, BF16 where this TensorRT has it, and INT8) but INT8 only with
    calibration images, because uncalibrated INT8 (which trtexec accepts for timing)
    gives meaningless boxes; ``--best`` without ``--calib`` builds FP16/BF16 and says so.
    ``--int8`` without ``--calib`` is an error. ``precisions()`` is what TensorRT 10's
    builder flags enable; ``plan_precisions`` says what a given TensorRT builds.
    ``int8_recipe`` is how TensorRT 11's INT8 Q/DQ graph is calibrated.
    """

    fp16: bool = False
    int8: bool = False
    best: bool = False
    calib_dir: Path | None = None
    batch: tuple[int, int, int] = DEFAULT_BATCH
    workspace_mb: int = DEFAULT_WORKSPACE_MB
    int8_recipe: Int8Settings = DEFAULT_INT8

    def validate(self) -> None:
        """``ConfigError`` for options that cannot build a useful engine."""
        lo, opt, hi = self.batch
        if not 1 <= lo <= opt <= hi:
            raise ConfigError(f"batch must satisfy 1 <= min <= opt <= max, got {lo}:{opt}:{hi}")
        if self.workspace_mb <= 0:
            raise ConfigError(f"workspace must be positive, got {self.workspace_mb} MB")
        if self.int8 and self.calib_dir is None:
            raise ConfigError(
                "--int8 needs calibration images: add --calib DIR (a few hundred frames "
                "like the ones you will serve); or use --fp16"
            )
        if self.calib_dir is not None and not self.calib_dir.is_dir():
            raise ConfigError(f"calibration directory not found: {self.calib_dir}")
        if self.calib_dir is not None and not (self.int8 or self.best):
            raise ConfigError("--calib is only used with --int8 or --best")
        self.int8_recipe.validate()

    def precisions(self) -> tuple[str, ...]:
        """Reduced precisions TensorRT 10's builder flags enable, sorted; TF32 is
        TensorRT's default anyway."""
        chosen = set()
        if self.fp16 or self.best:
            chosen.add("fp16")
        if self.best:
            chosen.add("bf16")
        if (self.int8 or self.best) and self.calib_dir is not None:
            chosen.add("int8")
        return tuple(sorted(chosen))


def parse_batch(text: str) -> tuple[int, int, int]:
    """``"1:4:8"`` (min:opt:max) or ``"8"`` (1:8:8) to a batch triple; ``ConfigError``."""
    parts = text.split(":")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise ConfigError(
            f"--batch must look like MIN:OPT:MAX (e.g. 1:4:8), not {text!r}"
        ) from None
    if len(values) == 1:
        values = [1, values[0], values[0]]
    if len(values) != 3:
        raise ConfigError(f"--batch must look like MIN:OPT:MAX (e.g. 1:4:8), not {text!r}")
    lo, opt, hi = values
    if not 1 <= lo <= opt <= hi:
        raise ConfigError(f"--batch {text}: need 1 <= MIN <= OPT <= MAX")
    return lo, opt, hi


# ---------------------------------------------------------------- precision plan


@dataclass(frozen=True, slots=True)
class PrecisionPlan:
    """What an engine is built in: ``mode`` (``BUILDER_FLAGS`` or ``STRONGLY_TYPED``),
    the reduced ``precisions`` (sorted; empty for FP32/TF32) and, for a strongly typed
    build, the ``converter`` that writes them into the graph."""

    mode: str
    precisions: tuple[str, ...]
    converter: str | None = None

    def describe(self) -> str:
        names = ", ".join(self.precisions) or "fp32/tf32"
        how = "builder flags" if self.mode == BUILDER_FLAGS else f"strongly typed, {self.converter}"
        return f"{names} ({how})"


def tensorrt_major(tensorrt_version: str) -> int:
    """The major version of a ``tensorrt.__version__`` string."""
    try:
        return int(tensorrt_version.split(".", 1)[0])
    except ValueError:
        raise EngineError(f"cannot read TensorRT's version {tensorrt_version!r}") from None


def plan_precisions(options: BuildOptions, tensorrt_version: str) -> PrecisionPlan:
    """What ``options`` build on ``tensorrt_version``; ``ConfigError``/``EngineError`` for a
    precision this TensorRT (or this installation) cannot honour."""
    major = tensorrt_major(tensorrt_version)
    if major not in SUPPORTED_TENSORRT_MAJORS:
        raise EngineError(
            f"TensorRT {tensorrt_version} is not supported: shelf-stream builds with TensorRT "
            f"10 (builder flags) or 11 (strongly typed); {GPU_INSTALL_HINT}"
        )
    if major == 10:
        return PrecisionPlan(BUILDER_FLAGS, options.precisions())
    precision = _strongly_typed_precision(options, tensorrt_version)
    if precision is None:
        return PrecisionPlan(STRONGLY_TYPED, ())
    converter = graph_precision.converter_identity(precision, options.int8_recipe)
    return PrecisionPlan(STRONGLY_TYPED, (precision,), converter)


def _strongly_typed_precision(options: BuildOptions, tensorrt_version: str) -> str | None:
    """The one precision a converted graph carries: FP16 or INT8 Q/DQ (the INT8 graph
    keeps its unquantized layers in FP32)."""
    calibrated = options.calib_dir is not None
    if options.fp16 and options.int8:
        raise ConfigError(
            f"TensorRT {tensorrt_version} takes precision from the graph, and shelf-stream "
            "converts it to FP16 or to INT8 Q/DQ, not both: choose --fp16 or --int8"
        )
    if options.best:
        # --best: the fastest precision a converted graph offers. BF16 would need
        # ModelOpt AutoCast and is no faster than FP16 for inference; not offered.
        chosen = graph_precision.INT8 if calibrated else graph_precision.FP16
        log.info("--best on TensorRT %s builds %s", tensorrt_version, chosen)
        return chosen
    if options.int8:
        return graph_precision.INT8
    if options.fp16:
        return graph_precision.FP16
    return None


# -------------------------------------------------------------------- cache keys


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def calibration_images(calib_dir: Path) -> list[Path]:
    """Image files directly in ``calib_dir``, sorted by name (the order is part of the
    key, and TensorRT's entropy calibration sees batches in this order)."""
    return sorted(
        p for p in calib_dir.iterdir() if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES
    )


def calibration_sha256(images: Sequence[Path]) -> str:
    """One digest over the calibration images' names and contents."""
    digest = hashlib.sha256()
    for image in images:
        digest.update(image.name.encode() + b"\0")
        digest.update(file_sha256(image).encode())
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class EngineKey:
    """Everything a built engine depends on. ``digest`` names the cache entry."""

    gpu_name: str
    compute_capability: str
    tensorrt_version: str
    onnx_sha256: str
    precisions: tuple[str, ...]
    batch: tuple[int, int, int]
    workspace_mb: int
    calib_sha256: str | None = None
    precision_mode: str = BUILDER_FLAGS
    converter: str | None = None
    cache_format: int = CACHE_FORMAT

    @property
    def digest(self) -> str:
        canonical = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["precisions"] = list(self.precisions)
        data["batch"] = list(self.batch)
        return data

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> EngineKey:
        return EngineKey(
            gpu_name=str(data["gpu_name"]),
            compute_capability=str(data["compute_capability"]),
            tensorrt_version=str(data["tensorrt_version"]),
            onnx_sha256=str(data["onnx_sha256"]),
            precisions=tuple(str(p) for p in data["precisions"]),
            batch=_batch_triple(data["batch"]),
            workspace_mb=int(data["workspace_mb"]),
            calib_sha256=None if data.get("calib_sha256") is None else str(data["calib_sha256"]),
            precision_mode=str(data.get("precision_mode", BUILDER_FLAGS)),
            converter=None if data.get("converter") is None else str(data["converter"]),
            # A sidecar without the field predates versioned caches: format 1.
            cache_format=int(data.get("cache_format", 1)),
        )


def _batch_triple(value: Any) -> tuple[int, int, int]:
    lo, opt, hi = (int(v) for v in value)
    return lo, opt, hi


def engine_key(
    onnx_sha256: str,
    device: DeviceInfo,
    tensorrt_version: str,
    options: BuildOptions,
    calib_sha256: str | None = None,
) -> EngineKey:
    """The cache key of an engine built from an ONNX file with ``options`` here: the
    precisions it is built in (``plan_precisions``), not merely those asked for."""
    plan = plan_precisions(options, tensorrt_version)
    return EngineKey(
        gpu_name=device.name,
        compute_capability=device.compute_capability,
        tensorrt_version=tensorrt_version,
        onnx_sha256=onnx_sha256,
        precisions=plan.precisions,
        batch=options.batch,
        workspace_mb=options.workspace_mb,
        calib_sha256=calib_sha256 if "int8" in plan.precisions else None,
        precision_mode=plan.mode,
        converter=plan.converter,
    )


def engine_cache_dir(models_cache_dir: Path) -> Path:
    """Engines live next to the downloaded models (``engine.models.default_cache_dir``)."""
    return models_cache_dir / "engines"


def cached_engine_path(cache_dir: Path, onnx_path: Path, key: EngineKey) -> Path:
    return cache_dir / f"{onnx_path.stem}-{key.digest[:16]}.engine"


# ----------------------------------------------------------------------- sidecar


@dataclass(frozen=True, slots=True)
class Sidecar:
    """The JSON file next to an engine: its key and what the engine forgets of the ONNX
    model (its custom metadata: class names, ``imgsz``, ``decode_in_inference``).

    ``built_graph`` describes the graph TensorRT parsed when it was converted for a
    strongly typed build (its sha256, the tool, and the verified counts: FP16 weights,
    INT8 convolutions); empty when the ONNX file was parsed as it is.
    """

    key: EngineKey
    onnx_path: str
    metadata: dict[str, str] = field(default_factory=dict)
    built_at: float = 0.0
    build_seconds: float = 0.0
    built_graph: dict[str, str | int] = field(default_factory=dict)

    def to_json(self) -> str:
        data = {
            "key": self.key.to_json(),
            "digest": self.key.digest,
            "onnx_path": self.onnx_path,
            "metadata": self.metadata,
            "built_at": self.built_at,
            "build_seconds": self.build_seconds,
            "built_graph": self.built_graph,
        }
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @staticmethod
    def from_json(text: str) -> Sidecar:
        data = json.loads(text)
        return Sidecar(
            key=EngineKey.from_json(data["key"]),
            onnx_path=str(data.get("onnx_path", "")),
            metadata={str(k): str(v) for k, v in dict(data.get("metadata", {})).items()},
            built_at=float(data.get("built_at", 0.0)),
            build_seconds=float(data.get("build_seconds", 0.0)),
            built_graph=dict(data.get("built_graph", {})),
        )


def sidecar_path(engine_path: Path) -> Path:
    return engine_path.with_name(engine_path.name + ".json")


def read_sidecar(engine_path: Path) -> Sidecar | None:
    """The engine's sidecar, ``None`` if it has none; ``EngineError`` if unreadable."""
    path = sidecar_path(engine_path)
    if not path.is_file():
        return None
    try:
        return Sidecar.from_json(path.read_text())
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EngineError(
            f"cannot read {path} ({exc}); delete it and the engine, then rebuild with "
            "`shelf-stream export --onnx MODEL.onnx --engine ...`"
        ) from exc


def _atomic_write(path: Path, data: bytes) -> None:
    """Write next to ``path`` then rename, so that a concurrent reader or an
    interrupted build never sees half an engine."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_engine(engine_path: Path, engine_bytes: bytes, sidecar: Sidecar) -> None:
    """The engine first, then its sidecar: a sidecar always describes a whole engine."""
    _atomic_write(engine_path, engine_bytes)
    _atomic_write(sidecar_path(engine_path), sidecar.to_json().encode())


# ---------------------------------------------------------------------- refusals


def _rebuild_hint(engine_path: Path, sidecar: Sidecar | None) -> str:
    onnx = sidecar.onnx_path if sidecar and sidecar.onnx_path else "MODEL.onnx"
    return (
        f"rebuild it on this machine: `shelf-stream export --onnx {onnx} --engine "
        f"{engine_path}`, or serve the ONNX model (`serve --model {onnx} --backend tensorrt` "
        "builds and caches an engine for this GPU)"
    )


def check_compatible(
    engine_path: Path, sidecar: Sidecar, device: DeviceInfo, tensorrt_version: str
) -> None:
    """``EngineError`` unless the engine was built here: same TensorRT version, same
    compute capability, same GPU model."""
    key = sidecar.key
    problems = []
    if key.tensorrt_version != tensorrt_version:
        problems.append(
            f"it was built with TensorRT {key.tensorrt_version}, this is TensorRT "
            f"{tensorrt_version} (engines only load on the version that built them)"
        )
    if key.compute_capability != device.compute_capability:
        problems.append(
            f"it was built for compute capability {key.compute_capability} "
            f"({key.gpu_name}), this GPU is {device.name} with compute capability "
            f"{device.compute_capability} (its kernels are compiled for one GPU generation)"
        )
    elif key.gpu_name != device.name:
        problems.append(
            f"it was built on a {key.gpu_name}, this GPU is a {device.name} (same compute "
            "capability, so TensorRT might load it, but its kernels were chosen by timing "
            "them on the other GPU)"
        )
    if problems:
        raise EngineError(
            f"refusing to load the TensorRT engine {engine_path}: "
            + "; ".join(problems)
            + f". {_rebuild_hint(engine_path, sidecar)}"
        )


def explain_deserialize_failure(
    engine_path: Path, device: DeviceInfo, tensorrt_version: str, sidecar: Sidecar | None
) -> EngineError:
    """What to tell the user when TensorRT cannot deserialize an engine."""
    if sidecar is None:
        cause = (
            f"it has no {sidecar_path(engine_path).name} sidecar saying where it was built. "
            "The usual cause: the engine was built with another TensorRT version or for "
            "another compute capability (e.g. on an A100, 8.0, and loaded on this "
            f"{device.name}, {device.compute_capability}). Engines are not portable "
            "between TensorRT versions or GPU generations"
        )
    else:
        cause = "its sidecar matches this machine, so the file is probably truncated or corrupt"
    return EngineError(
        f"TensorRT {tensorrt_version} could not deserialize {engine_path}: {cause}; "
        f"{_rebuild_hint(engine_path, sidecar)}"
    )


# ------------------------------------------------------------------ model metadata


def onnx_metadata(onnx_path: Path) -> dict[str, str]:
    """The ONNX model's custom metadata (class names, imgsz, ...), read on the CPU."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's errors share no base class
        raise EngineError(f"cannot read {onnx_path} as an ONNX model: {exc}") from exc
    return dict(session.get_modelmeta().custom_metadata_map)


# ------------------------------------------------------------------- calibration


def load_image(path: Path) -> Any:
    """The first frame of an image file as an ``av.VideoFrame`` (FFmpeg reads JPEG,
    PNG, BMP, WebP and TIFF; no OpenCV needed)."""
    import av

    try:
        with av.open(str(path)) as container:
            for frame in container.decode(video=0):
                return frame
    except (av.error.FFmpegError, OSError) as exc:
        raise ConfigError(f"cannot read calibration image {path}: {exc}") from exc
    raise ConfigError(f"calibration image {path} has no picture")


def calibration_batches(
    images: Sequence[Path], spec: LetterboxSpec, batch_size: int
) -> Iterator[np.ndarray]:
    """(batch_size, 3, H, W) float32 batches letterboxed exactly as at inference; the
    last, partial batch is dropped (TensorRT's calibrator wants full batches)."""
    for start in range(0, len(images) - batch_size + 1, batch_size):
        tensors = [
            letterbox(load_image(p), spec).tensor for p in images[start : start + batch_size]
        ]
        yield np.ascontiguousarray(np.stack(tensors), dtype=np.float32)


def make_calibrator(
    trt: Any,
    cudart: Any,
    batches: Iterator[np.ndarray],
    batch_size: int,
    cache_path: Path | None,
) -> Any:
    """An ``IInt8EntropyCalibrator2`` feeding ``batches`` through one device buffer.

    Defined inside a function because its base class comes from ``tensorrt``, which is
    imported lazily.
    """
    from shelf_stream.engine.cuda_mem import DeviceBuffer, check

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.device: DeviceBuffer | None = None
            self.batches_seen = 0

        def get_batch_size(self) -> int:
            return batch_size

        def get_batch(self, names: Sequence[str]) -> list[int] | None:
            batch = next(batches, None)
            if batch is None:
                return None  # tells TensorRT calibration data is exhausted
            if self.device is None:
                self.device = DeviceBuffer(cudart, batch.nbytes)
            kind = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
            result = cudart.cudaMemcpy(self.device.ptr, batch.ctypes.data, batch.nbytes, kind)
            check(cudart, result, "calibration batch copy")
            self.batches_seen += 1
            return [self.device.ptr]

        def read_calibration_cache(self) -> bytes | None:
            if cache_path is not None and cache_path.is_file():
                return cache_path.read_bytes()
            return None

        def write_calibration_cache(self, cache: Any) -> None:
            if cache_path is not None:
                _atomic_write(cache_path, bytes(cache))

        def close(self) -> None:
            if self.device is not None:
                self.device.close()

    return EntropyCalibrator()


# -------------------------------------------------------------------- the builder


@dataclass(frozen=True, slots=True)
class NetworkInput:
    name: str
    shape: tuple[int, ...]  # -1 for dynamic dimensions


#: Builder flag of each reduced precision (TensorRT 10; TensorRT 11 has none of them).
_PRECISION_FLAGS = {"fp16": "FP16", "bf16": "BF16", "int8": "INT8"}


def _network_flags(trt: Any, plan: PrecisionPlan) -> int:
    """``create_network`` flags. A strongly typed build asks for STRONGLY_TYPED where the
    flag still exists: required on TensorRT 10, "deprecated, ignored, always on" on 11
    (NetworkDefinitionCreationFlag in the TensorRT 11.0 Python API)."""
    if plan.mode != STRONGLY_TYPED:
        return 0  # TensorRT 10: explicit batch is the only mode, weakly typed
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def _parse_onnx(
    trt: Any, builder: Any, logger: Any, onnx_path: Path, flags: int = 0
) -> tuple[Any, Any]:
    """(network, parser): the parser owns the weights the network points to, so the
    caller keeps it alive until the engine is built."""
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT cannot parse {onnx_path}: {errors or 'unknown error'}")
    return network, parser


def _network_input(network: Any) -> NetworkInput:
    if network.num_inputs != 1:
        raise EngineError(f"expected a model with one input, this one has {network.num_inputs}")
    tensor = network.get_input(0)
    return NetworkInput(str(tensor.name), tuple(int(d) for d in tensor.shape))


def profile_shapes(
    model_input: NetworkInput, batch: tuple[int, int, int], input_size: tuple[int, int] | None
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None:
    """(min, opt, max) shapes of the input's optimisation profile; ``None`` for a fully
    static input (no profile needed). Dynamic height/width take ``input_size``."""
    shape = list(model_input.shape)
    if all(d > 0 for d in shape):
        if batch != DEFAULT_BATCH and batch != (shape[0],) * 3:
            raise ConfigError(
                f"the model's batch size is fixed at {shape[0]}; re-export the ONNX model "
                "with a dynamic batch dimension to build for batches "
                f"{batch[0]}:{batch[1]}:{batch[2]}"
            )
        return None
    if shape[2] <= 0 or shape[3] <= 0:
        if input_size is None:
            raise EngineError(
                f"input {model_input.name} has a dynamic size {shape} and no 'imgsz' "
                "metadata; export the model with a fixed input size"
            )
        shape[3], shape[2] = input_size
    if shape[0] > 0:
        return tuple(shape), tuple(shape), tuple(shape)
    lo, opt, hi = ((b, *shape[1:]) for b in batch)
    return lo, opt, hi


def _apply_precisions(trt: Any, config: Any, plan: PrecisionPlan) -> None:
    """Set TensorRT 10's precision flags; ``EngineError`` for one this TensorRT lacks
    (skipping it would build FP32 under a reduced-precision key). A strongly typed
    build sets none: its precision is in the graph."""
    if plan.mode == STRONGLY_TYPED:
        return
    for precision in plan.precisions:
        flag = getattr(trt.BuilderFlag, _PRECISION_FLAGS[precision], None)
        if flag is None:
            raise EngineError(
                f"TensorRT {trt.__version__} has no BuilderFlag.{_PRECISION_FLAGS[precision]}, "
                f"so it cannot build the requested {precision} engine; {GPU_INSTALL_HINT}"
            )
        config.set_flag(flag)


def build_serialized(
    trt: Any,
    onnx_path: Path,
    options: BuildOptions,
    *,
    input_size: tuple[int, int] | None,
    plan: PrecisionPlan | None = None,
    calibrator_factory: Callable[[NetworkInput, tuple[int, ...] | None], Any] | None = None,
) -> bytes:
    """Parse ``onnx_path`` (for a strongly typed plan, the graph already converted to its
    precision) and build a serialized engine with TensorRT's builder API."""
    plan = plan or plan_precisions(options, str(trt.__version__))
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, parser = _parse_onnx(trt, builder, logger, onnx_path, _network_flags(trt, plan))
    model_input = _network_input(network)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mb << 20)
    _apply_precisions(trt, config, plan)
    shapes = profile_shapes(model_input, options.batch, input_size)
    if shapes is not None:
        profile = builder.create_optimization_profile()
        profile.set_shape(model_input.name, *shapes)
        config.add_optimization_profile(profile)
    calibrator = None
    if plan.mode == BUILDER_FLAGS and "int8" in plan.precisions:
        if calibrator_factory is None:
            raise EngineError("INT8 build without a calibrator")
        calibrator = calibrator_factory(model_input, None if shapes is None else shapes[1])
        config.int8_calibrator = calibrator
        if shapes is not None:
            config.set_calibration_profile(profile)
    try:
        serialized = builder.build_serialized_network(network, config)
    finally:
        if calibrator is not None:
            calibrator.close()
        del parser  # only now may the weights it owns go
    if serialized is None:
        raise EngineError(
            f"TensorRT could not build an engine from {onnx_path} (see its log above); "
            "try a larger --workspace-mb or without --int8/--best"
        )
    return bytes(serialized)


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    *,
    fp16: bool = False,
    int8: bool = False,
    calib_dir: Path | None = None,
    best: bool = False,
    batch: tuple[int, int, int] = DEFAULT_BATCH,
    workspace_mb: int = DEFAULT_WORKSPACE_MB,
    trt: Any | None = None,
    cudart: Any | None = None,
) -> Sidecar:
    """Build ``engine_path`` (and its sidecar) from ``onnx_path`` on this GPU."""
    options = BuildOptions(
        fp16=fp16, int8=int8, best=best, calib_dir=calib_dir, batch=batch, workspace_mb=workspace_mb
    )
    return build_with_options(onnx_path, engine_path, options, trt=trt, cudart=cudart)


def build_with_options(
    onnx_path: Path,
    engine_path: Path,
    options: BuildOptions,
    *,
    trt: Any | None = None,
    cudart: Any | None = None,
) -> Sidecar:
    """``build_engine`` taking a ``BuildOptions``; ``trt``/``cudart`` default to the real
    modules (tests pass fakes)."""
    from shelf_stream.engine.adapters import parse_imgsz
    from shelf_stream.engine.cuda_compat import ensure_compatible
    from shelf_stream.engine.cuda_mem import device_info, load_cudart

    options.validate()
    if not onnx_path.is_file():
        raise ConfigError(f"ONNX model not found: {onnx_path}")
    trt = trt if trt is not None else load_tensorrt()
    cudart = cudart if cudart is not None else load_cudart()
    ensure_compatible(cudart)
    plan = plan_precisions(options, str(trt.__version__))
    if options.best and options.calib_dir is None:
        log.warning("--best without --calib: no INT8 (it needs calibration images)")
    device = device_info(cudart)
    metadata = onnx_metadata(onnx_path)
    images = calibration_images(options.calib_dir) if options.calib_dir else []
    if "int8" in plan.precisions and not images:
        raise ConfigError(f"no images in the calibration directory {options.calib_dir}")
    key = engine_key(
        file_sha256(onnx_path),
        device,
        str(trt.__version__),
        options,
        calibration_sha256(images) if images else None,
    )
    input_size = parse_imgsz(metadata.get("imgsz"))
    started = time.monotonic()
    log.info(
        "building a TensorRT engine from %s for %s: %s", onnx_path, device.name, plan.describe()
    )
    with tempfile.TemporaryDirectory(prefix="shelf-stream-graph-") as workdir:
        graph = _typed_graph(plan, onnx_path, Path(workdir), metadata, images, options)
        serialized = build_serialized(
            trt,
            graph.path if graph else onnx_path,
            options,
            input_size=input_size,
            plan=plan,
            calibrator_factory=_calibrator_factory(
                trt, cudart, onnx_path, metadata, images, engine_path
            ),
        )
    sidecar = Sidecar(
        key=key,
        onnx_path=str(onnx_path.resolve()),
        metadata=metadata,
        built_at=time.time(),
        build_seconds=round(time.monotonic() - started, 1),
        built_graph=_graph_record(graph),
    )
    write_engine(engine_path, serialized, sidecar)
    log.info("wrote %s in %.1f s", engine_path, sidecar.build_seconds)
    return sidecar


def _typed_graph(
    plan: PrecisionPlan,
    onnx_path: Path,
    workdir: Path,
    metadata: Mapping[str, str],
    images: Sequence[Path],
    options: BuildOptions,
) -> graph_precision.ConvertedGraph | None:
    """For a strongly typed plan with a reduced precision, ``onnx_path`` converted to it
    (and verified: ``EngineError`` if the conversion did not happen); else ``None``."""
    if plan.mode != STRONGLY_TYPED or not plan.precisions:
        return None
    (precision,) = plan.precisions
    out = workdir / f"{onnx_path.stem}.{precision}.onnx"
    graph = convert_graph(
        onnx_path, precision, out, images=images, metadata=metadata, int8=options.int8_recipe
    )
    log.info("converted %s to a %s", onnx_path.name, graph_precision.describe(graph))
    return graph


def convert_graph(
    onnx_path: Path,
    precision: str,
    out: Path,
    *,
    images: Sequence[Path] = (),
    metadata: Mapping[str, str] | None = None,
    int8: Int8Settings = DEFAULT_INT8,
) -> graph_precision.ConvertedGraph:
    """``onnx_path`` as an FP16 or INT8 Q/DQ graph at ``out``, INT8 calibrated on
    ``images`` letterboxed as the detector will (``export --onnx M --fp16 --out G``
    writes one for a strongly typed trtexec or Triton build)."""
    metadata = onnx_metadata(onnx_path) if metadata is None else metadata
    name, shape = _model_input(onnx_path)
    batches: Iterator[np.ndarray] = iter(())
    if precision == graph_precision.INT8:
        if not images:
            raise ConfigError("an INT8 Q/DQ graph needs calibration images (--calib DIR)")
        spec = _calibration_spec(onnx_path, metadata, _model_size(onnx_path, shape, metadata))
        batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else 1
        batches = calibration_batches(images, spec, batch)
    return graph_precision.convert(
        precision, onnx_path, out, input_name=name, batches=batches, int8=int8
    )


def _graph_record(graph: graph_precision.ConvertedGraph | None) -> dict[str, str | int]:
    if graph is None:
        return {}
    return {"sha256": graph.sha256, "tool": graph.tool, **graph.summary}


def _model_input(onnx_path: Path) -> tuple[str, list[Any]]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    first = session.get_inputs()[0]
    return str(first.name), list(first.shape)


def _model_size(
    onnx_path: Path, shape: Sequence[Any], metadata: Mapping[str, str]
) -> tuple[int, int]:
    """(width, height) the model takes: its fixed input shape, else its imgsz metadata."""
    from shelf_stream.engine.adapters import parse_imgsz

    height, width = (shape[2], shape[3]) if len(shape) == 4 else (None, None)
    if isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0:
        return width, height
    size = parse_imgsz(metadata.get("imgsz"))
    if size is None:
        raise EngineError(
            f"{onnx_path.name} has a dynamic input size {list(shape)} and no 'imgsz' "
            "metadata; export the model with a fixed input size"
        )
    return size


def _calibration_spec(
    onnx_path: Path, metadata: Mapping[str, str], size: tuple[int, int]
) -> LetterboxSpec:
    """The letterbox the detector will use for this model, so that calibration sees
    inference's inputs."""
    from shelf_stream.engine.adapters import select_adapter

    adapter = select_adapter(_output_shapes(onnx_path), metadata)
    return adapter.letterbox_spec(size)


def _calibrator_factory(
    trt: Any,
    cudart: Any,
    onnx_path: Path,
    metadata: Mapping[str, str],
    images: Sequence[Path],
    engine_path: Path,
) -> Callable[[NetworkInput, tuple[int, ...] | None], Any]:
    """Builds TensorRT 10's calibrator once the network's input is known."""

    def factory(model_input: NetworkInput, opt_shape: tuple[int, ...] | None) -> Any:
        shape = opt_shape or model_input.shape
        batch_size, height, width = shape[0], shape[2], shape[3]
        spec = _calibration_spec(onnx_path, metadata, (width, height))
        batches = calibration_batches(images, spec, batch_size)
        cache = engine_path.with_name(engine_path.name + ".calib")
        return make_calibrator(trt, cudart, batches, batch_size, cache)

    return factory


def _output_shapes(onnx_path: Path) -> list[list[int | str | None]]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return [list(o.shape) for o in session.get_outputs()]


# ------------------------------------------------------------------------- cache


def ensure_engine(
    onnx_path: Path,
    options: BuildOptions,
    *,
    cache_dir: Path,
    device: DeviceInfo,
    tensorrt_version: str,
    build: Callable[[Path, Path, BuildOptions], Sidecar],
) -> tuple[Path, Sidecar]:
    """The cached engine for ``onnx_path`` on this device, built by ``build`` first if
    the cache has none (``serve --backend tensorrt`` builds once, then reuses)."""
    options.validate()
    images = calibration_images(options.calib_dir) if options.calib_dir else []
    key = engine_key(
        file_sha256(onnx_path),
        device,
        tensorrt_version,
        options,
        calibration_sha256(images) if images else None,
    )
    path = cached_engine_path(cache_dir, onnx_path, key)
    sidecar = read_sidecar(path) if path.is_file() else None
    if sidecar is not None and sidecar.key == key:
        log.info("using the cached TensorRT engine %s", path)
        return path, sidecar
    log.info(
        "no cached TensorRT engine for %s on %s; building %s", onnx_path.name, device.name, path
    )
    sidecar = build(onnx_path, path, options)
    if sidecar.key != key:
        raise EngineError(f"the engine built at {path} does not match its cache key")
    return path, sidecar
