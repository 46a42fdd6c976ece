"""Give an ONNX detector a dynamic batch dimension, so one run serves several streams.

Official YOLOX exports (and many others) are exported with a fixed batch of 1. ONNX
Runtime then has to run a batch of N frames as N runs; with a symbolic ``batch``
dimension the scheduler's batch goes through in one run (and Triton's dynamic batcher
can merge requests). Rewriting the I/O shapes is only correct when no node inside the
graph has the batch of 1 baked in, so:

- ``Reshape`` nodes whose target shape is a constant starting with the old batch are
  rewritten to copy the batch from their input (``0``); shapes computed from ``Shape``
  (as YOLOX's head does) are left alone, they already follow the batch;
- other constant-shape ops that would pin the batch (``Expand``, ``Tile``,
  ``ConstantOfShape``) are not rewritten: the tool refuses with the node's name;
- finally the rewritten model is run on a batch of two different images and each row
  must equal the single-image run of the original; otherwise nothing is written.

::

    shelf-stream export --dynamic-batch --onnx in.onnx --out out.onnx
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from shelf_stream.errors import ConfigError, EngineError

log = logging.getLogger(__name__)

BATCH_DIM = "batch"
_ONNX_HINT = "rewriting ONNX models needs the onnx package: pip install 'onnx>=1.16'"
# Ops whose constant shape input would keep a batch of 1 inside the graph.
_PINNING_OPS = {"Expand": 1, "Tile": 1, "ConstantOfShape": 0}


def _onnx() -> Any:
    try:
        import onnx
    except ImportError as exc:
        raise EngineError(f"{_ONNX_HINT} ({exc})") from exc
    return onnx


def make_dynamic_batch(onnx_in: Path, onnx_out: Path, *, verify: bool = True) -> list[str]:
    """Write ``onnx_in`` with its batch dimension made symbolic (``batch``) to ``onnx_out``.

    Returns the names of the Reshape nodes whose constant shape was rewritten (empty
    when the graph already derived its shapes from the input). Raises ``EngineError``
    when the graph pins the batch in a way this tool does not rewrite, or when the
    rewritten model does not reproduce the original's single-image outputs.
    """
    onnx = _onnx()
    onnx_in, onnx_out = Path(onnx_in), Path(onnx_out)
    if not onnx_in.is_file():
        raise ConfigError(f"ONNX model not found: {onnx_in}")
    model = onnx.load(str(onnx_in))
    graph = model.graph
    initializer_names = {init.name for init in graph.initializer}
    inputs = [value for value in graph.input if value.name not in initializer_names]
    old_batch = _fixed_batch(inputs[0]) if inputs else None
    for value in [*inputs, *graph.output]:
        _set_batch_dim(value)
    rewritten = _rewrite_reshapes(model, old_batch)
    _refuse_pinning_ops(model)
    # Inferred intermediate shapes still say batch 1; drop them so runtimes re-infer.
    del graph.value_info[:]
    onnx.checker.check_model(model)
    with tempfile.TemporaryDirectory() as tmp:
        candidate = Path(tmp) / onnx_out.name
        onnx.save(model, str(candidate))
        if verify:
            verify_dynamic_batch(onnx_in, candidate)
        onnx_out.parent.mkdir(parents=True, exist_ok=True)
        candidate.replace(onnx_out)
    log.info("wrote %s with a dynamic batch (%d Reshape(s) rewritten)", onnx_out, len(rewritten))
    return rewritten


def _fixed_batch(value: Any) -> int | None:
    dims = value.type.tensor_type.shape.dim
    return int(dims[0].dim_value) if dims and dims[0].HasField("dim_value") else None


def _set_batch_dim(value: Any) -> None:
    dims = value.type.tensor_type.shape.dim
    if not dims:
        raise EngineError(f"{value.name!r} has no shape; cannot give it a batch dimension")
    dims[0].Clear()
    dims[0].dim_param = BATCH_DIM


def _constant_arrays(model: Any) -> dict[str, Any]:
    """Tensor protos of initializers and Constant nodes' outputs, by name (mutable)."""
    tensors: dict[str, Any] = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    tensors[node.output[0]] = attr.t
    return tensors


def _rewrite_reshapes(model: Any, old_batch: int | None) -> list[str]:
    """Constant Reshape targets starting with the old batch copy it from the input
    instead (``0``: "same as the input's dim", which is the batch here)."""
    from onnx import numpy_helper

    if old_batch is None:
        return []
    tensors = _constant_arrays(model)
    rewritten: list[str] = []
    for node in model.graph.node:
        if node.op_type != "Reshape" or node.input[1] not in tensors:
            continue
        if any(a.name == "allowzero" and a.i == 1 for a in node.attribute):
            raise EngineError(
                f"Reshape {node.name!r} has allowzero=1 and a constant shape; "
                "cannot make its batch dynamic"
            )
        proto = tensors[node.input[1]]
        shape = numpy_helper.to_array(proto).copy()
        if shape.size and int(shape[0]) == old_batch:
            shape[0] = 0
            proto.CopyFrom(numpy_helper.from_array(shape.astype(np.int64), proto.name))
            rewritten.append(node.name or node.output[0])
    return rewritten


def _refuse_pinning_ops(model: Any) -> None:
    tensors = _constant_arrays(model)
    for node in model.graph.node:
        index = _PINNING_OPS.get(node.op_type)
        if index is not None and len(node.input) > index and node.input[index] in tensors:
            raise EngineError(
                f"{node.op_type} {node.name!r} takes a constant shape, which may pin the "
                "batch to 1; re-export the model with a dynamic batch instead "
                "(e.g. torch.onnx.export(..., dynamic_axes={'images': {0: 'batch'}}))"
            )


def verify_dynamic_batch(original: Path, dynamic: Path, *, atol: float = 1e-3) -> None:
    """Run two different images as one batch through ``dynamic`` and compare each row
    with ``original`` on that image alone; ``EngineError`` when they differ."""
    import onnxruntime as ort

    try:
        single = ort.InferenceSession(str(original), providers=["CPUExecutionProvider"])
        batched = ort.InferenceSession(str(dynamic), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime errors share no base class
        raise EngineError(f"cannot load the rewritten model: {exc}") from exc
    model_input = single.get_inputs()[0]
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in model_input.shape]
    rng = np.random.default_rng(0)
    images = [rng.uniform(0, 255, shape).astype(np.float32) for _ in range(2)]
    try:
        expected = [single.run(None, {model_input.name: image})[0] for image in images]
        got = batched.run(None, {model_input.name: np.concatenate(images)})[0]
    except Exception as exc:
        raise EngineError(f"the rewritten model does not run on a batch of 2: {exc}") from exc
    for row, want in enumerate(expected):
        if got[row : row + 1].shape != want.shape or not np.allclose(
            got[row : row + 1], want, atol=atol
        ):
            raise EngineError(
                f"batch row {row} of the rewritten model differs from the original's "
                "single-image output: something in the graph still assumes batch 1"
            )


# ------------------------------------------------------------------------ CLI hook


def add_dynamic_batch_args(parser: argparse.ArgumentParser) -> None:
    """``--dynamic-batch`` for ``shelf-stream export`` (with ``--onnx`` and ``--out``)."""
    parser.add_argument(
        "--dynamic-batch",
        action="store_true",
        help="with --onnx and --out: write the ONNX model with a symbolic batch dimension "
        "(for batched ONNX Runtime or Triton dynamic batching) instead of building an engine",
    )


def run_dynamic_batch(onnx_in: Path | None, onnx_out: Path | None) -> int:
    """``export --dynamic-batch``: 0 on success; ``ConfigError``/``EngineError`` otherwise."""
    if onnx_in is None or onnx_out is None:
        raise ConfigError("--dynamic-batch needs --onnx IN.onnx and --out OUT.onnx")
    rewritten = make_dynamic_batch(onnx_in, onnx_out)
    print(f"wrote {onnx_out} (batch dimension {BATCH_DIM!r}; {_describe(rewritten)})")
    return 0


def _describe(rewritten: Iterable[str]) -> str:
    names = list(rewritten)
    if not names:
        return "no Reshape needed rewriting"
    return f"{len(names)} Reshape(s) rewritten: {', '.join(names)}"
