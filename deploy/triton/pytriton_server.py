"""A real Triton Inference Server on CPU for tests and laptops, through PyTriton.

The ``nvidia-pytriton`` wheel ships the ``tritonserver`` binary (Triton 2.5x core,
gRPC/HTTP front ends, system shared memory) with only the Python backend; this script
binds an ONNX Runtime session to it as the model ``NAME`` with dynamic batching. It is
what ``tests/engine/test_triton_backend.py`` starts; production uses the official
Triton image with the model repository in ``deploy/triton/model_repository``.

Run it with an interpreter that has ``deploy/triton/test-server-requirements.txt``::

    python deploy/triton/pytriton_server.py MODEL.onnx --name yolox_nano \
        --grpc-port 8001 --http-port 8000 --metrics-port 8002

The process prints ``READY`` on stdout once the model is loaded and serves until
SIGINT/SIGTERM. Standalone on purpose: it imports neither shelf_stream nor anything
but PyTriton, NumPy and ONNX Runtime, so it runs in its own virtual environment
(PyTriton pins numpy<2).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Any

import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

_NUMPY = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def _session(path: str, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])


def _run_function(session: ort.InferenceSession) -> Any:
    model_input, model_output = session.get_inputs()[0], session.get_outputs()[0]
    fixed = model_input.shape[0] if isinstance(model_input.shape[0], int) else None

    @batch
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        images = inputs[model_input.name]
        if fixed is None:  # dynamic batch: the whole request in one run
            out = session.run([model_output.name], {model_input.name: images})[0]
        else:  # a batch-1 export: one run per row
            out = np.concatenate(
                [
                    session.run([model_output.name], {model_input.name: images[i : i + fixed]})[0]
                    for i in range(0, len(images), fixed)
                ]
            )
        return {model_output.name: out}

    return infer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--name", default="yolox_nano")
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--queue-delay-us", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    session = _session(args.model, args.threads)
    model_input, model_output = session.get_inputs()[0], session.get_outputs()[0]
    config = TritonConfig(
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        metrics_port=args.metrics_port,
        grpc_address="127.0.0.1",
        http_address="127.0.0.1",
        metrics_address="127.0.0.1",
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    # PyTriton puts shared-memory registration behind an access token by default; the
    # gateway's --triton-shm (like Triton's own clients) sends none. Everything here
    # listens on loopback only, so keep only the repository/trace/logging APIs locked.
    security = TritonSecurityConfig(
        restricted_endpoints=["model-repository", "statistics", "trace", "logging"]
    )
    with Triton(config=config, security_config=security) as triton:
        triton.bind(
            model_name=args.name,
            infer_func=_run_function(session),
            inputs=[Tensor(name=model_input.name, dtype=_NUMPY[model_input.type],
                           shape=tuple(model_input.shape[1:]))],
            outputs=[Tensor(name=model_output.name, dtype=np.float32,
                            shape=tuple(model_output.shape[1:]))],
            config=ModelConfig(
                max_batch_size=args.max_batch,
                batcher=DynamicBatcher(max_queue_delay_microseconds=args.queue_delay_us),
            ),
            strict=False,
        )  # fmt: skip
        triton.run()  # serve in the background; bind() has loaded the model
        print("READY", flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
