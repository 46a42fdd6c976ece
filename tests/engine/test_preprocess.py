from __future__ import annotations

import av
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shelf_stream.engine.base import PreparedImage
from shelf_stream.engine.postprocess import map_boxes_to_model, map_boxes_to_source
from shelf_stream.engine.preprocess import LetterboxSpec, letterbox, letterbox_geometry

YOLOX = LetterboxSpec(416, 416, "bgr", 1.0, "top_left", 114)
ULTRA = LetterboxSpec(416, 416, "rgb", 1 / 255, "center", 114)


def _gradient(width: int, height: int) -> np.ndarray:
    """A BGR test image whose three channels differ everywhere."""
    ys, xs = np.mgrid[0:height, 0:width]
    return np.stack(
        [xs * 255 // max(1, width - 1), ys * 255 // max(1, height - 1), np.full_like(xs, 40)],
        axis=-1,
    ).astype(np.uint8)


def test_geometry_top_left_landscape() -> None:
    g = letterbox_geometry(640, 480, YOLOX)
    assert (g.resized_width, g.resized_height, g.pad_x, g.pad_y) == (416, 312, 0, 0)
    assert g.scale == pytest.approx(0.65)


def test_geometry_centred_puts_odd_pixel_right_and_bottom() -> None:
    g = letterbox_geometry(1280, 720, ULTRA)
    assert (g.resized_width, g.resized_height) == (416, 234)
    assert (g.pad_x, g.pad_y) == (0, 91)
    g = letterbox_geometry(300, 451, ULTRA)  # portrait: pads left/right
    assert g.resized_height == 416 and g.pad_y == 0
    assert g.pad_x == (416 - g.resized_width) // 2


def test_upscales_small_frames() -> None:
    g = letterbox_geometry(208, 104, YOLOX)
    assert (g.resized_width, g.resized_height, g.scale) == (416, 208, 2.0)


def test_yolox_layout_padding_and_values() -> None:
    image = _gradient(640, 480)
    prepared = letterbox(image, YOLOX)
    t = prepared.tensor
    assert t.shape == (3, 416, 416) and t.dtype == np.float32
    assert (prepared.scale, prepared.pad_x, prepared.pad_y) == (0.65, 0.0, 0.0)
    assert (prepared.source_width, prepared.source_height) == (640, 480)
    assert np.all(t[:, 312:, :] == 114.0)  # bottom padding, raw 0-255 units
    # Channel 2 (R in BGR) is the constant 40; channel 0 (B) grows left to right.
    assert np.allclose(t[2, :312], 40.0, atol=1.0)
    assert t[0, 100, 400] > t[0, 100, 10] + 200
    assert t[1, 300, 100] > t[1, 5, 100] + 200


def test_ultralytics_layout_is_rgb_scaled_and_centred() -> None:
    image = _gradient(640, 480)
    prepared = letterbox(image, ULTRA)
    t = prepared.tensor
    assert (prepared.pad_x, prepared.pad_y) == (0.0, 52.0)
    assert np.allclose(t[:, :52], 114 / 255) and np.allclose(t[:, 364:], 114 / 255)
    assert np.allclose(t[0, 52:364], 40 / 255, atol=1 / 255)  # R first now
    assert t.min() >= 0.0 and t.max() <= 1.0
    bgr = letterbox(image, LetterboxSpec(416, 416, "bgr", 1 / 255, "center", 114)).tensor
    assert np.array_equal(t, bgr[::-1])


def test_ndarray_and_frame_inputs_agree() -> None:
    image = _gradient(320, 240)
    from_array = letterbox(image, YOLOX).tensor
    bgr_frame = av.VideoFrame.from_ndarray(image, format="bgr24")
    assert np.array_equal(letterbox(bgr_frame, YOLOX).tensor, from_array)
    yuv_frame = bgr_frame.reformat(format="yuv420p")
    from_yuv = letterbox(yuv_frame, YOLOX).tensor
    # 4:2:0 chroma and limited-range YUV cost a few levels, not more.
    assert np.mean(np.abs(from_yuv - from_array)) < 4.0


def test_non_contiguous_and_odd_sized_arrays() -> None:
    image = _gradient(641, 481)[::-1, 1:]  # a flipped view with an odd width
    prepared = letterbox(image, YOLOX)
    expected = letterbox(np.ascontiguousarray(image), YOLOX)
    assert np.array_equal(prepared.tensor, expected.tensor)
    assert (prepared.source_width, prepared.source_height) == (640, 481)


@pytest.mark.parametrize(
    "bad",
    [np.zeros((10, 10), np.uint8), np.zeros((10, 10, 4), np.uint8), np.zeros((10, 10, 3))],
)
def test_rejects_wrong_arrays(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        letterbox(bad, YOLOX)


def test_rejects_other_types() -> None:
    with pytest.raises(TypeError):
        letterbox([[1, 2, 3]], YOLOX)  # type: ignore[arg-type]


@settings(max_examples=60, deadline=None)
@given(
    width=st.integers(16, 1920),
    height=st.integers(16, 1080),
    placement=st.sampled_from(["top_left", "center"]),
    fractions=st.lists(st.floats(0.0, 1.0), min_size=4, max_size=4),
)
def test_box_mapping_round_trip(
    width: int, height: int, placement: str, fractions: list[float]
) -> None:
    spec = LetterboxSpec(416, 320, "bgr", 1.0, placement, 114)  # type: ignore[arg-type]
    g = letterbox_geometry(width, height, spec)

    prepared = PreparedImage(
        np.zeros((3, 1, 1), np.float32), g.scale, g.pad_x, g.pad_y, width, height
    )
    x1, x2 = sorted((fractions[0] * width, fractions[1] * width))
    y1, y2 = sorted((fractions[2] * height, fractions[3] * height))
    source = np.array([[x1, y1, x2, y2]], np.float32)
    model = map_boxes_to_model(source, prepared)
    # The content lands inside the letterboxed region of the model input.
    assert model[0, 0] >= g.pad_x - 1e-3 and model[0, 2] <= g.pad_x + g.resized_width + 0.5
    assert model[0, 1] >= g.pad_y - 1e-3 and model[0, 3] <= g.pad_y + g.resized_height + 0.5
    back = map_boxes_to_source(model, prepared)
    assert np.allclose(back, source, atol=1e-2 * max(width, height) / 416 + 1e-3)


def test_box_mapping_clips_to_the_source() -> None:

    prepared = PreparedImage(np.zeros((3, 1, 1), np.float32), 0.65, 0.0, 52.0, 640, 480)
    boxes = np.array([[-10.0, 0.0, 500.0, 416.0]], np.float32)  # reaches into the padding
    out = map_boxes_to_source(boxes, prepared)
    assert np.allclose(out, [[0.0, 0.0, 640.0, 480.0]])
