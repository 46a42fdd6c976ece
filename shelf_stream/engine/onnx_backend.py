"""The ONNX Runtime backend: CPU everywhere, the CUDA execution provider where present."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from shelf_stream.engine.base import Detections, EngineConfig, PreparedImage
from shelf_stream.engine.common import (
    LayoutDetector,
    model_layout,
    stack_batch,
)
from shelf_stream.errors import EngineError

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


class OnnxRuntimeDetector(LayoutDetector):
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
        outputs = session.get_outputs()
        self._layout = model_layout(
            self._path, config, model_input.shape, [o.shape for o in outputs], metadata
        )
        if model_input.type not in _INPUT_DTYPES:
            raise EngineError(
                f"{self._path.name}: input type {model_input.type} is not supported "
                "(float32/float16)"
            )
        self._input_name: str = model_input.name
        self._input_dtype = _INPUT_DTYPES[model_input.type]
        self._output_name: str = outputs[0].name
        batch = model_input.shape[0]
        self._fixed_batch: int | None = batch if isinstance(batch, int) and batch > 0 else None
        log.info(
            "loaded %s (%s format, %dx%d input, %d classes) on %s",
            self._path,
            self._layout.adapter.name,
            *self._layout.input_size,
            len(self._layout.class_names),
            ", ".join(session.get_providers()),
        )

    # ---------------------------------------------------------------- properties

    @property
    def model_name(self) -> str:
        return self._path.stem

    @property
    def providers(self) -> tuple[str, ...]:
        """The execution providers the session actually uses, best first."""
        return tuple(self._live_session().get_providers())

    # ------------------------------------------------------------------ running

    def infer(self, batch: Sequence[PreparedImage]) -> list[Detections]:
        return self._infer_in_chunks(batch, self._fixed_batch or len(batch), self._run)

    def close(self) -> None:
        self._session = None

    def _run(self, chunk: Sequence[PreparedImage]) -> np.ndarray:
        # A fixed-batch model needs a full batch; the padding rows' outputs are ignored.
        tensor = stack_batch(chunk, self._input_dtype, pad_to=self._fixed_batch)
        try:
            output = self._live_session().run([self._output_name], {self._input_name: tensor})[0]
        except Exception as exc:  # onnxruntime's errors share no base class but Exception
            raise EngineError(f"inference with {self._path.name} failed: {exc}") from exc
        return np.asarray(output)

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
