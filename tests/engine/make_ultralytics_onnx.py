"""Build an Ultralytics-format detection model from the YOLOX test model (graph surgery).

Ultralytics weights can't be downloaded in tests, so this wraps YOLOX-Nano in the exact
contract an Ultralytics YOLOv8/YOLO11 ONNX export has: input ``images`` RGB 0-1,
output ``output0`` float32 (1, 4 + 80, N) with ``cx, cy, w, h`` in input pixels and
per-class scores (obj * cls, as there is no separate objectness), and the metadata
Ultralytics writes. The box decoding is done in the graph with constant grids, written
here independently of ``shelf_stream.engine.adapters`` so the two check each other.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from shelf_stream.engine.coco import COCO_CLASSES

_STRIDES = (8, 16, 32)


def _grid(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    cells: list[tuple[int, int]] = []
    strides: list[int] = []
    for stride in _STRIDES:
        for y in range(height // stride):
            for x in range(width // stride):
                cells.append((x, y))
                strides.append(stride)
    grid = np.asarray(cells, np.float32)[None]  # (1, N, 2)
    stride_col = np.asarray(strides, np.float32)[None, :, None]  # (1, N, 1)
    return grid, stride_col


def _const(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(value, name)


def _slice(src: str, out: str) -> list[onnx.NodeProto]:
    return [
        helper.make_node(
            "Slice", [src, f"{out}_starts", f"{out}_ends", "u_axis2"], [out], name=f"u_{out}"
        )
    ]


def make_ultralytics_onnx(yolox_path: Path, out_path: Path) -> Path:
    """Write the Ultralytics-format wrapper of the YOLOX model at ``yolox_path``."""
    model = onnx.load(str(yolox_path))
    graph = model.graph
    (old_input,) = graph.input
    (old_output,) = graph.output
    dims = [d.dim_value for d in old_input.type.tensor_type.shape.dim]  # 1, 3, H, W
    height, width = dims[2], dims[3]
    rows = [d.dim_value for d in old_output.type.tensor_type.shape.dim][1]
    num_classes = [d.dim_value for d in old_output.type.tensor_type.shape.dim][2] - 5
    grid, strides = _grid(width, height)
    assert grid.shape[1] == rows

    # Input: RGB 0-1 -> BGR 0-255, which YOLOX wants.
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old_input.name:
                node.input[i] = "u_bgr"
    head = [
        helper.make_node("Mul", ["images", "u_255"], ["u_scaled"], name="u_mul255"),
        helper.make_node("Gather", ["u_scaled", "u_rev"], ["u_bgr"], axis=1, name="u_rev"),
    ]
    # Output: decode the grid and fold objectness into the class scores.
    parts = {"u_raw_xy": (0, 2), "u_raw_wh": (2, 4), "u_obj": (4, 5), "u_cls": (5, 5 + num_classes)}
    consts = [
        _const("u_255", np.asarray(255.0, np.float32)),
        _const("u_rev", np.asarray([2, 1, 0], np.int64)),
        _const("u_axis2", np.asarray([2], np.int64)),
        _const("u_grid", grid),
        _const("u_strides", strides),
    ]
    tail: list[onnx.NodeProto] = []
    for out, (start, end) in parts.items():
        consts += [
            _const(f"{out}_starts", np.asarray([start], np.int64)),
            _const(f"{out}_ends", np.asarray([end], np.int64)),
        ]
        tail += _slice(old_output.name, out)
    tail += [
        helper.make_node("Add", ["u_raw_xy", "u_grid"], ["u_cell_xy"]),
        helper.make_node("Mul", ["u_cell_xy", "u_strides"], ["u_xy"]),
        helper.make_node("Exp", ["u_raw_wh"], ["u_exp_wh"]),
        helper.make_node("Mul", ["u_exp_wh", "u_strides"], ["u_wh"]),
        helper.make_node("Mul", ["u_cls", "u_obj"], ["u_scores"]),
        helper.make_node("Concat", ["u_xy", "u_wh", "u_scores"], ["u_rows"], axis=2),
        helper.make_node("Transpose", ["u_rows"], ["output0"], perm=[0, 2, 1]),
    ]

    new_graph = helper.make_graph(
        head + list(graph.node) + tail,
        "yolox_nano_as_ultralytics",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, height, width])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 4 + num_classes, rows])],
        initializer=list(graph.initializer) + consts,
    )
    new_model = helper.make_model(new_graph, opset_imports=list(model.opset_import))
    new_model.ir_version = model.ir_version
    names = {i: name for i, name in enumerate(COCO_CLASSES[:num_classes])}
    metadata = {
        "description": "YOLOX-Nano wrapped in the Ultralytics YOLO export format (tests)",
        "stride": "32",
        "task": "detect",
        "batch": "1",
        "imgsz": str([height, width]),
        "names": str(names),
    }
    for key, value in metadata.items():
        new_model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    onnx.checker.check_model(new_model)
    onnx.save(new_model, str(out_path))
    return out_path
