"""Copies of the test models with symbolic dimensions, like real dynamic exports.

``export_cli.export_ultralytics`` exports with ``dynamic=True``: batch, height and width
of the input are symbolic, and so are the output's batch and anchor count. TensorRT
reports every such dimension as -1 (NVIDIA/TensorRT#4120); the fake TensorRT reads them
from these graphs. The weights and the computation are untouched: onnxruntime runs the
copies at the original 416x416 and batch 1, which is all the fake engine feeds them.
"""

from __future__ import annotations

from pathlib import Path

import onnx


def _set_dims(value_info: onnx.ValueInfoProto, names: dict[int, str]) -> None:
    dims = value_info.type.tensor_type.shape.dim
    for index, name in names.items():
        dims[index].ClearField("dim_value")
        dims[index].dim_param = name


def make_dynamic_copy(src: Path, dst: Path, *, dynamic_size: bool) -> Path:
    """``src`` with a symbolic batch (and, with ``dynamic_size``, symbolic height, width
    and anchor count) written to ``dst``."""
    model = onnx.load(str(src))
    (inp,) = model.graph.input
    (out,) = model.graph.output
    _set_dims(inp, {0: "batch", 2: "height", 3: "width"} if dynamic_size else {0: "batch"})
    out_dims = [d.dim_value for d in out.type.tensor_type.shape.dim]
    anchors = out_dims.index(max(out_dims[1:]), 1)  # (1, N, 85) or (1, 84, N)
    _set_dims(out, {0: "batch", anchors: "anchors"} if dynamic_size else {0: "batch"})
    onnx.save(model, str(dst))
    return dst
