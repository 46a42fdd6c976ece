"""The Triton backend: pre-processed batches sent to a Triton Inference Server over gRPC.

The gateway (this process) decodes, letterboxes and post-processes exactly as the local
backends do (``engine.common``: same adapter, letterbox, decoding and NMS), so a frame
gives the same boxes whichever backend ran the network. Only the stacked input tensor
goes to Triton and only the raw output comes back; Triton's dynamic batcher merges the
batches of several gateways on the GPU.

What the model wants is read from the server, not from a local file: input name,
datatype and shape from the model metadata; ``max_batch_size`` and the ``parameters``
(used like ONNX metadata, e.g. ``names``/``imgsz`` of an Ultralytics export) from the
model configuration.

Why the synchronous gRPC client: ``Detector.infer`` runs on the scheduler's single
inference thread and is expected to block until the batch is done (like
``session.run``). The sync client is thread-safe and does exactly that, with no event
loop of its own; ``tritonclient.grpc.aio`` would need a loop in that worker thread (or
to borrow the server's loop, which the detector must not know about) for no gain, since
the scheduler has only one batch in flight per gateway by design. Concurrency across
gateways is Triton's job (instances and the dynamic batcher).

With ``triton_shm`` the tensors travel through POSIX shared memory regions registered
with the server (``tritonclient.utils.shared_memory``) instead of the gRPC message: for
a Triton on the same host (or a container sharing ``/dev/shm``/IPC), it saves
serialising ~2 MB per 416x416 frame each way.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shelf_stream.engine.base import Detections, EngineConfig, PreparedImage
from shelf_stream.engine.common import (
    LayoutDetector,
    ModelLayout,
    model_layout,
    normalise_shape,
    stack_batch,
)
from shelf_stream.errors import ConfigError, EngineError

log = logging.getLogger(__name__)

TRITON_INSTALL_HINT = "install the triton extra: pip install 'shelf-stream[triton]'"
_DTYPES = {"FP32": np.float32, "FP16": np.float16}


@dataclass(frozen=True, slots=True)
class TritonModelInfo:
    """What the gateway needs to know about a model served by Triton."""

    input_name: str
    input_datatype: str  # Triton's name: FP32, FP16
    input_shape: list[int | str | None]  # with the batch dimension (None: dynamic)
    output_name: str
    output_shape: list[int | str | None]  # with the batch dimension
    output_datatype: str
    max_batch_size: int  # 0: the model does not batch; its shapes are the full shapes
    parameters: dict[str, str]  # config parameters, read like ONNX metadata

    @property
    def fixed_batch(self) -> int | None:
        """Rows per request the model insists on (padded), None when it takes any."""
        if self.max_batch_size > 0:
            return None
        batch = self.input_shape[0]
        return batch if isinstance(batch, int) and batch > 0 else 1

    @property
    def chunk_size(self) -> int:
        return self.max_batch_size or self.fixed_batch or 1


def parse_model_info(
    metadata: Mapping[str, Any], config: Mapping[str, Any], model: str
) -> TritonModelInfo:
    """``TritonModelInfo`` from the JSON of ``get_model_metadata`` and
    ``get_model_config`` (``as_json=True``; gRPC JSON writes int64 as strings)."""
    inputs, outputs = metadata.get("inputs") or [], metadata.get("outputs") or []
    if len(inputs) != 1 or not outputs:
        raise EngineError(
            f"Triton model {model!r} has {len(inputs)} inputs and {len(outputs)} outputs; "
            "expected one image input and a detection output"
        )
    body = config.get("config", config)
    max_batch = int(body.get("max_batch_size", 0) or 0)
    datatype = str(inputs[0].get("datatype", ""))
    if datatype not in _DTYPES:
        raise EngineError(
            f"Triton model {model!r}: input datatype {datatype} is not supported (FP32/FP16)"
        )
    return TritonModelInfo(
        input_name=str(inputs[0]["name"]),
        input_datatype=datatype,
        input_shape=_shape(inputs[0].get("shape", [])),
        output_name=str(outputs[0]["name"]),
        output_shape=_shape(outputs[0].get("shape", [])),
        output_datatype=str(outputs[0].get("datatype", "FP32")),
        max_batch_size=max_batch,
        parameters={
            str(key): str(value.get("string_value", ""))
            for key, value in (body.get("parameters") or {}).items()
        },
    )


def _shape(shape: Sequence[Any]) -> list[int | str | None]:
    # Model metadata gives full shapes: a batching model's start with -1 (dynamic).
    return normalise_shape([int(d) for d in shape])


def _client_module() -> Any:
    try:
        import tritonclient.grpc as grpcclient
    except ImportError as exc:
        raise EngineError(
            f"the triton backend needs tritonclient ({exc}); {TRITON_INSTALL_HINT}"
        ) from exc
    return grpcclient


class TritonDetector(LayoutDetector):
    """Runs a YOLOX or Ultralytics model served by Triton (KServe V2 gRPC protocol)."""

    def __init__(self, config: EngineConfig, *, client: Any | None = None) -> None:
        self._config = config
        self._model = config.triton_model or Path(config.model_path).stem
        grpcclient = _client_module()
        self._grpc = grpcclient
        self._client: Any | None = client or grpcclient.InferenceServerClient(config.triton_url)
        try:
            self._info = self._read_model_info()
            self._layout: ModelLayout = model_layout(
                Path(self._model),
                config,
                self._info.input_shape,
                [self._info.output_shape],
                self._info.parameters,
            )
            self._dtype = _DTYPES[self._info.input_datatype]
            self._shm: _SharedMemory | None = (
                _SharedMemory.open(self._client, self._info, self._layout, self._dtype)
                if config.triton_shm
                else None
            )
        except BaseException:
            self.close()
            raise
        log.info(
            "using Triton model %r at %s (%s format, %dx%d input, max batch %d%s)",
            self._model,
            config.triton_url,
            self._layout.adapter.name,
            *self._layout.input_size,
            self._info.chunk_size,
            ", shared memory" if self._shm else "",
        )

    # ---------------------------------------------------------------- properties

    @property
    def model_name(self) -> str:
        return self._model

    @property
    def model_info(self) -> TritonModelInfo:
        return self._info

    # ------------------------------------------------------------------ running

    def infer(self, batch: Sequence[PreparedImage]) -> list[Detections]:
        return self._infer_in_chunks(batch, self._info.chunk_size, self._run)

    def close(self) -> None:
        shm, self._shm = getattr(self, "_shm", None), None
        client, self._client = self._client, None
        if shm is not None and client is not None:
            shm.close(client)
        if client is not None:
            try:
                client.close()
            except Exception:  # closing a broken channel must not hide the real error
                log.debug("closing the Triton client failed", exc_info=True)

    # ------------------------------------------------------------------ helpers

    def _live_client(self) -> Any:
        if self._client is None:
            raise EngineError(f"the Triton detector for {self._model!r} is closed")
        return self._client

    def _read_model_info(self) -> TritonModelInfo:
        from tritonclient.utils import InferenceServerException

        client, url, timeout = self._live_client(), self._config.triton_url, 10.0
        try:
            if not client.is_server_live(client_timeout=timeout):
                raise EngineError(f"the Triton server at {url} is not live")
            if not client.is_model_ready(self._model, client_timeout=timeout):
                raise EngineError(
                    f"model {self._model!r} is not ready on the Triton server at {url} "
                    f"({self._repository_models()}); pass --triton-model NAME"
                )
            metadata = client.get_model_metadata(self._model, as_json=True, client_timeout=timeout)
            config = client.get_model_config(self._model, as_json=True, client_timeout=timeout)
        except InferenceServerException as exc:
            raise EngineError(
                f"cannot reach the Triton server at {url} ({exc.message()}); start it or "
                "pass --triton-url HOST:PORT (its gRPC port, 8001 by default)"
            ) from exc
        return parse_model_info(metadata, config, self._model)

    def _repository_models(self) -> str:
        """What the server has, for the error message (the repository API may be
        restricted, e.g. behind an access token)."""
        try:
            index = self._live_client().get_model_repository_index(as_json=True)
        except Exception:
            return "its model list is not readable"
        names = [str(model.get("name")) for model in index.get("models", [])]
        return f"models there: {', '.join(names) or 'none'}"

    def _run(self, chunk: Sequence[PreparedImage]) -> np.ndarray:
        from tritonclient.utils import InferenceServerException

        tensor = stack_batch(chunk, self._dtype, pad_to=self._info.fixed_batch)
        request = self._grpc.InferInput(
            self._info.input_name, list(tensor.shape), self._info.input_datatype
        )
        wanted = self._grpc.InferRequestedOutput(self._info.output_name)
        if self._shm is not None:
            self._shm.attach(tensor, request, wanted)
        else:
            request.set_data_from_numpy(tensor)
        try:
            result = self._live_client().infer(
                self._model,
                [request],
                outputs=[wanted],
                client_timeout=self._config.triton_timeout_s,
            )
        except InferenceServerException as exc:
            raise EngineError(
                f"Triton inference with {self._model!r} at {self._config.triton_url} "
                f"failed: {exc.message()}"
            ) from exc
        if self._shm is not None:
            return self._shm.output(result, self._info.output_name, tensor.shape[0])
        return np.asarray(result.as_numpy(self._info.output_name))


@dataclass(slots=True)
class _SharedMemory:
    """One input and one output system shared-memory region, registered with the
    server and sized for the largest request; reused for every batch."""

    input_name: str
    output_name: str
    input_handle: Any
    output_handle: Any
    output_row_shape: tuple[int, ...]
    output_dtype: Any

    @staticmethod
    def open(client: Any, info: TritonModelInfo, layout: ModelLayout, dtype: Any) -> _SharedMemory:
        import tritonclient.utils.shared_memory as shm

        row_shape = tuple(d for d in info.output_shape[1:] if isinstance(d, int))
        if len(row_shape) != len(info.output_shape) - 1:
            raise ConfigError(
                f"--triton-shm needs a fixed output shape; {info.output_name} is "
                f"{info.output_shape}: run without --triton-shm"
            )
        width, height = layout.input_size
        rows = info.chunk_size
        in_bytes = rows * 3 * height * width * np.dtype(dtype).itemsize
        out_dtype = _DTYPES.get(info.output_datatype, np.float32)
        out_bytes = rows * int(np.prod(row_shape)) * np.dtype(out_dtype).itemsize
        # Unique per detector: several gateways may share one Triton (and one host).
        tag = f"shelf_stream_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        handles: list[tuple[str, Any]] = []
        try:
            for suffix, size in (("in", in_bytes), ("out", out_bytes)):
                name = f"{tag}_{suffix}"
                handle = shm.create_shared_memory_region(name, f"/{name}", size)
                handles.append((name, handle))
                client.register_system_shared_memory(name, f"/{name}", size)
        except Exception as exc:
            for name, handle in handles:
                _release(client, name, handle)
            raise EngineError(
                f"cannot set up shared memory with the Triton server ({exc}); it must run "
                "on this host (or share /dev/shm and IPC with this container), or run "
                "without --triton-shm"
            ) from exc
        (in_name, in_handle), (out_name, out_handle) = handles
        return _SharedMemory(in_name, out_name, in_handle, out_handle, row_shape, out_dtype)

    def attach(self, tensor: np.ndarray, request: Any, wanted: Any) -> None:
        import tritonclient.utils.shared_memory as shm

        shm.set_shared_memory_region(self.input_handle, [np.ascontiguousarray(tensor)])
        request.set_shared_memory(self.input_name, tensor.nbytes)
        rows = tensor.shape[0]
        out_bytes = (
            rows * int(np.prod(self.output_row_shape)) * np.dtype(self.output_dtype).itemsize
        )
        wanted.set_shared_memory(self.output_name, out_bytes)

    def output(self, result: Any, name: str, rows: int) -> np.ndarray:
        import tritonclient.utils.shared_memory as shm

        described = result.get_output(name)
        shape = [int(d) for d in described.shape] if described is not None else []
        view = shm.get_contents_as_numpy(
            self.output_handle, self.output_dtype, shape or [rows, *self.output_row_shape]
        )
        # Copy: the region is overwritten by the next batch.
        return np.array(view, copy=True)

    def close(self, client: Any) -> None:
        _release(client, self.input_name, self.input_handle)
        _release(client, self.output_name, self.output_handle)


def _release(client: Any, name: str, handle: Any) -> None:
    import tritonclient.utils.shared_memory as shm

    try:
        client.unregister_system_shared_memory(name)
    except Exception:  # the server may be gone; the local region must still go
        log.debug("unregistering %s failed", name, exc_info=True)
    try:
        shm.destroy_shared_memory_region(handle)
    except Exception:
        log.debug("destroying %s failed", name, exc_info=True)
