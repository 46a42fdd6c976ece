"""The ONNX Runtime backend: CPU everywhere, the CUDA execution provider where present."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from shelf_stream.engine.adapters import ModelAdapter, select_adapter
from shelf_stream.engine.base import Detections, Detector, EngineConfig, Image, PreparedImage
from shelf_stream.engine.coco import COCO_CLASSES
from shelf_stream.engine.postprocess import postprocess
from shelf_stream.engine.preprocess import LetterboxSpec, letterbox
from shelf_stream.errors import ConfigError, EngineError

log = logging.getLogger(__name__)

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"

_SUPPLY_MODEL_HINT = "pass --model PATH or set SHELF_STREAM_MODEL=PATH"
_INPUT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def cuda_available() -> bool:
    """Whether this onnxruntime build has the CUDA execution provider."""
    return CUDA_PROVIDER in ort.get_available_providers()


def choose_providers(prefer_cuda: bool) -> list[str]:
    """Execution providers in order of preference; CPU is always the fallback."""
    if prefer_cuda and cuda_available():
        return [CUDA_PROVIDER, CPU_PROVIDER]
    return [CPU_PROVIDER]


class OnnxRuntimeDetector(Detector):
    """Runs a YOLOX or Ultralytics detection model with onnxruntime.

    ``prefer_cuda`` puts the CUDA provider first when this onnxruntime build has it.
    A model with a fixed batch size is run that many images at a time; one with a
    dynamic batch gets the whole batch in one run.
    """

    def __init__(self, config: EngineConfig, *, prefer_cuda: bool = True) -> None:
        self._config = config
        self._path = Path(config.model_path)
        session = _open_session(self._path, config.intra_op_threads, choose_providers(prefer_cuda))
        self._session: ort.InferenceSession | None = session
        metadata: dict[str, str] = dict(session.get_modelmeta().custom_metadata_map)
        model_input = session.get_inputs()[0]
        output = session.get_outputs()[0]
        _check_input(self._path, model_input.shape, model_input.type)
        self._input_name: str = model_input.name
        self._input_dtype = _INPUT_DTYPES[model_input.type]
        self._output_name: str = output.name
        batch = model_input.shape[0]
        self._fixed_batch: int | None = batch if isinstance(batch, int) and batch > 0 else None
        self._adapter = select_adapter(
            [o.shape for o in session.get_outputs()], metadata, config.adapter
        )
        self._input_size = _input_size(self._path, model_input.shape, self._adapter, metadata)
        self._letterbox = self._adapter.letterbox_spec(self._input_size)
        self._class_names = _class_names(
            config.class_names,
            self._adapter.class_names(metadata),
            self._adapter.num_classes(output.shape),
        )
        log.info(
            "loaded %s (%s format, %dx%d input, %d classes) on %s",
            self._path,
            self._adapter.name,
            *self._input_size,
            len(self._class_names),
            ", ".join(session.get_providers()),
        )

    # ---------------------------------------------------------------- properties

    @property
    def model_name(self) -> str:
        return self._path.stem

    @property
    def input_size(self) -> tuple[int, int]:
        return self._input_size

    @property
    def class_names(self) -> tuple[str, ...]:
        return self._class_names

    @property
    def adapter(self) -> ModelAdapter:
        return self._adapter

    @property
    def letterbox_spec(self) -> LetterboxSpec:
        return self._letterbox

    @property
    def providers(self) -> tuple[str, ...]:
        """The execution providers the session actually uses, best first."""
        return tuple(self._live_session().get_providers())

    # ------------------------------------------------------------------ running

    def prepare(self, image: Image) -> PreparedImage:
        return letterbox(image, self._letterbox)

    def infer(self, batch: Sequence[PreparedImage]) -> list[Detections]:
        results: list[Detections] = []
        for chunk in self._chunks(batch):
            outputs = self._run(chunk)
            # strict=False: a padded fixed-size batch has more outputs than images.
            results.extend(
                self._postprocess(out, prepared)
                for out, prepared in zip(outputs, chunk, strict=False)
            )
        return results

    def close(self) -> None:
        self._session = None

    def _chunks(self, batch: Sequence[PreparedImage]) -> Iterator[Sequence[PreparedImage]]:
        size = self._fixed_batch or max(1, len(batch))
        for start in range(0, len(batch), size):
            yield batch[start : start + size]

    def _run(self, chunk: Sequence[PreparedImage]) -> np.ndarray:
        tensor = np.stack([prepared.tensor for prepared in chunk]).astype(
            self._input_dtype, copy=False
        )
        if self._fixed_batch is not None and tensor.shape[0] < self._fixed_batch:
            # A fixed-batch model needs a full batch; the padding rows' outputs are ignored.
            filler = np.zeros(
                (self._fixed_batch - tensor.shape[0], *tensor.shape[1:]), tensor.dtype
            )
            tensor = np.concatenate([tensor, filler])
        try:
            output = self._live_session().run([self._output_name], {self._input_name: tensor})[0]
        except Exception as exc:  # onnxruntime's errors share no base class but Exception
            raise EngineError(f"inference with {self._path.name} failed: {exc}") from exc
        return np.asarray(output)

    def _postprocess(self, output: np.ndarray, prepared: PreparedImage) -> Detections:
        config = self._config
        candidates = self._adapter.decode(output, self._input_size, config.score_threshold)
        return postprocess(
            candidates,
            prepared,
            score_threshold=config.score_threshold,
            iou_threshold=config.nms_iou_threshold,
            max_detections=config.max_detections,
        )

    def _live_session(self) -> ort.InferenceSession:
        if self._session is None:
            raise EngineError(f"the detector for {self._path.name} is closed")
        return self._session


# ------------------------------------------------------------------ loading helpers


def default_inference_threads() -> int:
    """Half the cores, at least one: the rest decode streams and run the event loop.

    On the 2-core test machine a second inference thread made each frame slower, not
    faster, once a decoder and an encoder shared the cores (p50 latency 52 → 105 ms).
    """
    return max(1, (os.cpu_count() or 2) // 2)


def _open_session(path: Path, intra_op_threads: int, providers: list[str]) -> ort.InferenceSession:
    if not path.is_file():
        raise EngineError(f"model file not found: {path}; {_SUPPLY_MODEL_HINT}")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = intra_op_threads or default_inference_threads()
    # Idle worker threads busy-wait by default; here they would steal the CPU the stream's
    # decoder (and, on one machine, the encoder) needs: measured on 2 cores, spinning
    # doubled the encoder's time and halved the frame rate.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # InvalidProtobuf, Fail, NoSuchFile...: no common base
        raise EngineError(
            f"cannot load {path} as an ONNX model ({exc}); the file may be truncated or "
            f"not ONNX: download or export it again, or {_SUPPLY_MODEL_HINT}"
        ) from exc


def _check_input(path: Path, shape: Sequence[Any], type_name: str) -> None:
    channels = shape[1] if len(shape) == 4 else None
    if len(shape) != 4 or (isinstance(channels, int) and channels != 3):
        raise EngineError(
            f"{path.name}: input shape {list(shape)} is not (batch, 3, height, width); "
            "expected an image detection model (YOLOX or Ultralytics YOLOv8/YOLO11)"
        )
    if type_name not in _INPUT_DTYPES:
        raise EngineError(f"{path.name}: input type {type_name} is not supported (float32/float16)")


def _input_size(
    path: Path, shape: Sequence[Any], adapter: ModelAdapter, metadata: Mapping[str, str]
) -> tuple[int, int]:
    height, width = shape[2], shape[3]
    if isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0:
        return width, height
    from_metadata = adapter.input_size(metadata)
    if from_metadata is None:
        raise EngineError(
            f"{path.name} has a dynamic input size {list(shape)} and no 'imgsz' metadata; "
            "export it with a fixed input size"
        )
    return from_metadata


def _class_names(
    configured: tuple[str, ...] | None,
    from_metadata: tuple[str, ...] | None,
    num_classes: int | None,
) -> tuple[str, ...]:
    """Configured names, else the model's, else COCO for 80 classes, else class_<i>."""
    if num_classes is None:
        num_classes = len(configured or from_metadata or ())
    if num_classes <= 0:
        raise EngineError("cannot tell the number of classes from the model's output")
    if configured is not None:
        if len(configured) != num_classes:
            raise ConfigError(
                f"{len(configured)} class names given, but the model has {num_classes} classes"
            )
        return configured
    if from_metadata is not None and len(from_metadata) == num_classes:
        return from_metadata
    if num_classes == len(COCO_CLASSES):
        return COCO_CLASSES
    return tuple(f"class_{i}" for i in range(num_classes))
