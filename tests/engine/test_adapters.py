from __future__ import annotations

import numpy as np
import pytest

from shelf_stream.engine.adapters import (
    UltralyticsAdapter,
    YoloxAdapter,
    parse_imgsz,
    parse_names,
    select_adapter,
    yolox_grid,
)
from shelf_stream.errors import ConfigError, EngineError

ULTRA_META = {"names": "{0: 'a', 1: 'b'}", "task": "detect", "imgsz": "[640, 640]"}


@pytest.mark.parametrize(
    ("shape", "metadata", "expected"),
    [
        ((1, 3549, 85), {}, "yolox"),
        ((1, 8400, 85), {}, "yolox"),
        ((1, 84, 8400), {}, "ultralytics"),
        ((1, 84, 8400), ULTRA_META, "ultralytics"),
        ((1, 5, 8400), {}, "ultralytics"),  # one-class Ultralytics model
        (("batch", 84, "anchors"), {}, "ultralytics"),
        (("batch", "anchors", 85), {}, "yolox"),
        (("batch", "a", "b"), {"task": "detect"}, "ultralytics"),
        ((None, 3549, 85), {}, "yolox"),
    ],
)
def test_select_by_shape_and_metadata(shape: tuple, metadata: dict, expected: str) -> None:
    assert select_adapter([shape], metadata).name == expected


def test_forced_adapter_wins() -> None:
    assert select_adapter([(1, 84, 8400)], ULTRA_META, "yolox").name == "yolox"
    assert select_adapter([(1, 3549, 85)], {}, "ultralytics").name == "ultralytics"


def test_unknown_forced_adapter_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown model adapter 'yolov5'"):
        select_adapter([(1, 3549, 85)], {}, "yolov5")


@pytest.mark.parametrize(
    ("shapes", "metadata", "match"),
    [
        ([(1, 300, 6)], {"task": "detect"}, "end-to-end"),
        ([("b", "x", "y")], {}, "--adapter"),
        ([(1, 85)], {}, "unsupported output shape"),
        ([], {}, "no outputs"),
    ],
)
def test_unsupported_outputs(shapes: list, metadata: dict, match: str) -> None:
    with pytest.raises(EngineError, match=match):
        select_adapter(shapes, metadata)


def test_num_classes_from_shapes() -> None:
    assert YoloxAdapter().num_classes((1, 3549, 85)) == 80
    assert UltralyticsAdapter().num_classes((1, 84, 8400)) == 80
    assert UltralyticsAdapter().num_classes(("b", "c", "n")) is None


def test_parse_names() -> None:
    assert parse_names("{0: 'person', 1: 'bicycle'}") == ("person", "bicycle")
    assert parse_names("{1: 'b', 0: 'a'}") == ("a", "b")
    assert parse_names("['x', 'y']") == ("x", "y")
    assert parse_names(None) is None and parse_names("") is None


@pytest.mark.parametrize(
    "bad",
    [
        "__import__('os').system('false')",  # never evaluated
        "{0: 'a', 2: 'c'}",  # a hole in the indices
        "{'0': 'a'}",
        "{0: 1}",
        "{0: 'a',",
        "42",
    ],
)
def test_parse_names_rejects_malformed(bad: str) -> None:
    assert parse_names(bad) is None


def test_parse_imgsz_is_height_width() -> None:
    assert parse_imgsz("[384, 640]") == (640, 384)
    assert parse_imgsz("416") == (416, 416)
    assert parse_imgsz("(480, 640)") == (640, 480)
    for bad in (None, "", "[0, 640]", "[1, 2, 3]", "big", "[1.5, 2]"):
        assert parse_imgsz(bad) is None


def test_yolox_grid_order_and_cache() -> None:
    grid, strides = yolox_grid((416, 416))
    assert grid.shape == (3549, 2) and strides.shape == (3549, 1)
    assert grid[:3].tolist() == [[0, 0], [1, 0], [2, 0]]  # x varies fastest
    assert grid[52].tolist() == [0, 1]
    assert grid[52 * 52].tolist() == [0, 0] and strides[52 * 52, 0] == 16
    assert grid[-1].tolist() == [12, 12] and strides[-1, 0] == 32
    assert yolox_grid((416, 416))[0] is grid  # computed once per input size
    wide, _ = yolox_grid((640, 384))
    assert wide.shape[0] == 80 * 48 + 40 * 24 + 20 * 12


def _yolox_rows(input_size: tuple[int, int]) -> np.ndarray:
    grid, _ = yolox_grid(input_size)
    rows = np.zeros((grid.shape[0], 85), np.float32)
    rows[:, :2] = 0.5  # raw offsets, as a raw model would give
    return rows


def test_yolox_decodes_raw_grid_offsets() -> None:
    rows = _yolox_rows((416, 416))
    # Row 52*52 + 26*3 + 5 is stride 16, cell (5, 3).
    i = 52 * 52 + 26 * 3 + 5
    rows[i, :5] = [0.25, 0.5, np.log(2.0), np.log(4.0), 0.9]
    rows[i, 5 + 41] = 0.8  # cup
    rows[i, 5 + 40] = 0.3
    cands = YoloxAdapter().decode(rows, (416, 416), 0.3)
    assert cands.class_ids.tolist() == [41]
    assert cands.scores[0] == pytest.approx(0.72)
    cx, cy, w, h = (5.25 * 16, 3.5 * 16, 32.0, 64.0)
    assert cands.boxes[0] == pytest.approx([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


def test_yolox_recognises_decoded_exports() -> None:
    rows = _yolox_rows((416, 416))
    grid, strides = yolox_grid((416, 416))
    rows[:, :2] = (grid + 0.5) * strides  # decode_in_inference=True: pixel centres
    rows[:, 2:4] = strides * 2
    rows[10, 4], rows[10, 5] = 0.9, 0.9
    cands = YoloxAdapter().decode(rows, (416, 416), 0.5)
    cx, cy = rows[10, :2]
    assert cands.boxes[0] == pytest.approx([cx - 8, cy - 8, cx + 8, cy + 8])
    # Metadata overrides the guess.
    raw = _yolox_rows((416, 416))
    raw[10, 2:6] = [1.0, 1.0, 0.9, 0.9]  # taken as pixels: a 1x1 box at (0.5, 0.5)
    forced = YoloxAdapter({"decode_in_inference": "true"}).decode(raw, (416, 416), 0.5)
    assert forced.boxes[0] == pytest.approx([0.0, 0.0, 1.0, 1.0])


def test_yolox_row_count_mismatch_is_explained() -> None:
    with pytest.raises(EngineError, match="3549 rows"):
        YoloxAdapter().decode(_yolox_rows((416, 416)), (640, 640), 0.5)


def test_ultralytics_decode() -> None:
    out = np.zeros((4 + 3, 100), np.float32)
    out[:4, 7] = [100, 50, 20, 10]
    out[4:, 7] = [0.1, 0.6, 0.2]
    out[4:, 8] = [0.2, 0.1, 0.0]  # below the threshold
    cands = UltralyticsAdapter().decode(out, (640, 640), 0.25)
    assert cands.class_ids.tolist() == [1]
    assert cands.scores.tolist() == pytest.approx([0.6])
    assert cands.boxes.tolist() == [[90, 45, 110, 55]]


def test_letterbox_specs() -> None:
    yolox = YoloxAdapter().letterbox_spec((416, 416))
    assert (yolox.channel_order, yolox.value_scale, yolox.placement) == ("bgr", 1.0, "top_left")
    ultra = UltralyticsAdapter().letterbox_spec((640, 384))
    assert (ultra.width, ultra.height, ultra.channel_order) == (640, 384, "rgb")
    assert (ultra.value_scale, ultra.placement, ultra.pad_value) == (1 / 255, "center", 114)


def test_adapter_metadata_helpers() -> None:
    adapter = select_adapter([(1, 84, 8400)], ULTRA_META)
    assert adapter.class_names(ULTRA_META) == ("a", "b")
    assert adapter.input_size(ULTRA_META) == (640, 640)
