"""Drawing detections: exact box pixels, labels beside them, never out of bounds."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from shelf_stream.client import drawing
from shelf_stream.client.drawing import (
    PALETTE,
    bitmap_text_mask,
    color_for,
    draw_box,
    draw_detections,
    label_text,
)

BACKGROUND = 77  # a value no palette colour or text colour uses in all three channels
FONTS = ["bitmap", *(["cv2"] if drawing._cv2() is not None else [])]


def _image(height: int = 120, width: int = 160) -> np.ndarray:
    return np.full((height, width, 3), BACKGROUND, np.uint8)


def _changed(image: np.ndarray) -> np.ndarray:
    return np.any(image != BACKGROUND, axis=2)


def _border(shape: tuple[int, int], x1: int, y1: int, x2: int, y2: int) -> np.ndarray:
    inside = np.zeros(shape, bool)
    inside[y1 : y2 + 1, x1 : x2 + 1] = True
    inner = np.zeros(shape, bool)
    inner[y1 + 2 : y2 - 1, x1 + 2 : x2 - 1] = True
    return inside & ~inner


def test_draw_box_sets_exactly_the_border() -> None:
    image = _image()
    draw_box(image, (10, 20, 50, 60), (255, 0, 0))
    expected = _border((120, 160), 10, 20, 50, 60)
    np.testing.assert_array_equal(_changed(image), expected)
    assert np.all(image[expected] == (255, 0, 0))


@pytest.mark.parametrize("font", FONTS)
def test_detection_draws_box_and_label_above_it(font: drawing.Font) -> None:
    image = _image()
    boxes = np.array([[10.2, 40.0, 49.6, 99.8]], np.float32)
    draw_detections(
        image, boxes, np.array([0.873]), np.array([3]), ["a", "b", "c", "cat"], font=font
    )
    border = _border((120, 160), 10, 40, 50, 100)
    assert np.all(image[border] == color_for(3))
    changed = _changed(image)
    # Nothing inside the box or below/right of it changes...
    assert not changed[101:].any() and not changed[40:, 51:].any()
    assert not changed[42:99, 12:49].any()
    # ...and the label sits in a band right above the box, starting at its left edge.
    above = changed[:40]
    rows, cols = np.nonzero(above)
    assert rows.min() >= 40 - 25 and rows.max() == 39
    assert cols.min() == 10
    assert np.all(image[39, 10] == color_for(3))  # label background touches the box
    extra = changed & ~border
    extra[:40] = False
    assert not extra.any()


def test_bitmap_label_is_the_expected_text() -> None:
    image = _image()
    labels = ["person", "bicycle", "dog"]
    draw_detections(
        image, np.array([[20, 30, 80, 70]]), np.array([0.5]), np.array([2]), labels, font="bitmap"
    )
    mask = bitmap_text_mask("dog 0.50")
    height, width = mask.shape[0] + 4, mask.shape[1] + 4
    label = image[30 - height : 30, 20 : 20 + width]
    assert np.all(label[~np.pad(mask, 2)] == PALETTE[2])
    assert np.all(label[np.pad(mask, 2)] == (0, 0, 0))  # dark text on yellow
    assert label_text("dog", 0.5) == "dog 0.50"


def test_label_goes_inside_a_box_at_the_top_edge() -> None:
    image = _image()
    draw_detections(
        image, np.array([[30, 0, 100, 60]]), np.array([0.9]), np.array([1]), ["x"], font="bitmap"
    )
    changed = _changed(image)
    assert not changed[61:].any()
    assert changed[5, 35]  # the label background fills the box's top inside
    assert not changed[:, :30].any()


def test_unknown_class_ids_and_empty_input() -> None:
    image = _image()
    draw_detections(image, np.zeros((0, 4)), np.zeros(0), np.zeros(0, int), [])
    assert not _changed(image).any()
    draw_detections(image, np.array([[5, 30, 40, 60]]), np.array([1.0]), np.array([95]), ["a"])
    assert np.all(image[30, 5] == color_for(95))


def test_rejects_a_non_image() -> None:
    with pytest.raises(ValueError, match="HxWx3"):
        draw_detections(
            np.zeros((10, 10), np.uint8), np.zeros((0, 4)), np.zeros(0), np.zeros(0), []
        )


def test_strided_view_is_drawn_in_place() -> None:
    big = _image(120, 320)
    view = big[:, ::2]  # not contiguous: the cv2 path must fall back, not draw on a copy
    draw_detections(view, np.array([[10, 40, 50, 80]]), np.array([0.7]), np.array([2]), ["z"])
    assert np.all(big[40, 20] == color_for(2))


coordinates = st.floats(-1e4, 1e4) | st.sampled_from([np.nan, np.inf, -np.inf])


@settings(max_examples=150, deadline=None)
@given(
    height=st.integers(1, 64),
    width=st.integers(1, 64),
    boxes=arrays(np.float64, st.tuples(st.integers(0, 5), st.just(4)), elements=coordinates),
    font=st.sampled_from(FONTS),
)
def test_never_raises_out_of_bounds(
    height: int, width: int, boxes: np.ndarray, font: drawing.Font
) -> None:
    image = _image(height, width)
    n = boxes.shape[0]
    draw_detections(image, boxes, np.linspace(0, 1, n), np.arange(n) * 7, ["person"], font=font)
    assert image.shape == (height, width, 3)
    visible = [
        np.all(np.isfinite(b))
        and max(b[0], b[2]) >= 0
        and max(b[1], b[3]) >= 0
        and min(b[0], b[2]) <= width - 1
        and min(b[1], b[3]) <= height - 1
        for b in boxes
    ]
    if not any(visible):
        assert not _changed(image).any()


def test_without_opencv_auto_uses_the_bitmap_font(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(drawing, "_cv2", lambda: None)
    auto, bitmap = _image(), _image()
    args = (np.array([[20, 30, 80, 70]]), np.array([0.5]), np.array([2]), ["a", "b", "dog"])
    draw_detections(auto, *args)
    draw_detections(bitmap, *args, font="bitmap")
    np.testing.assert_array_equal(auto, bitmap)
    with pytest.raises(ValueError, match="OpenCV"):
        draw_detections(auto, *args, font="cv2")
