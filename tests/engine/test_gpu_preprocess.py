"""The GPU letterbox's NumPy reference against libswscale's (``preprocess.letterbox``).

Measured differences (levels of 0-255, YOLOX spec 416x416, yuv420p frames made from
scikit-image photos; see gpu_preprocess's docstring for why):

==================  ==========  =====  ======  ==========
photo               frame size  max    mean    > 8 levels
==================  ==========  =====  ======  ==========
astronaut           512x512     38     0.71    0.8 %
astronaut           1920x1080   63     1.08
coffee              600x400     67     0.85    1.7 %
motorcycle_left     740x500     63     1.61    4.5 %
motorcycle_left     1920x1080   62     1.82
chelsea             450x300     7      0.19    0.0 %
==================  ==========  =====  ======  ==========

Flat colours: identical. Smooth gradients: at most 1 level (rounding; 2 at 1080p). So colour
matrix, chroma siting and sampling coordinates match libswscale; the large values are
single pixels on sharp edges, where libswscale's downscaling filter averages over the
scale factor and bilinear sampling reads four pixels. Detections agree (IoU > 0.96 for
every detection scoring 0.3 or more).
"""

from __future__ import annotations

import re
from typing import Any

import av
import numpy as np
import pytest

from shelf_stream.engine import gpu_preprocess as gp
from shelf_stream.engine.base import Detector
from shelf_stream.engine.postprocess import box_iou
from shelf_stream.engine.preprocess import LetterboxSpec, letterbox

YOLOX = LetterboxSpec(416, 416, "bgr", 1.0, "top_left", 114)
ULTRA = LetterboxSpec(416, 416, "rgb", 1 / 255, "center", 114)


def _yuv(bgr: np.ndarray, size: tuple[int, int] | None = None) -> av.VideoFrame:
    h, w = bgr.shape[:2]
    even = np.ascontiguousarray(bgr[: h // 2 * 2, : w // 2 * 2])
    frame = av.VideoFrame.from_ndarray(even, format="bgr24").reformat(format="yuv420p")
    return frame if size is None else frame.reformat(width=size[0], height=size[1])


def _set_planes(frame: av.VideoFrame, *planes: np.ndarray) -> av.VideoFrame:
    for plane, values in zip(frame.planes, planes, strict=True):
        rows = np.frombuffer(memoryview(plane), np.uint8).reshape(-1, plane.line_size)
        rows[: values.shape[0], : values.shape[1]] = values
    return frame


def _diff(frame: av.VideoFrame, spec: LetterboxSpec) -> np.ndarray:
    cpu = letterbox(frame, spec)
    ref = gp.letterbox_frame_reference(frame, spec)
    assert (ref.scale, ref.pad_x, ref.pad_y) == (cpu.scale, cpu.pad_x, cpu.pad_y)
    assert (ref.source_width, ref.source_height) == (cpu.source_width, cpu.source_height)
    assert ref.tensor.shape == cpu.tensor.shape and ref.tensor.dtype == np.float32
    return np.abs(ref.tensor - cpu.tensor) / np.float32(spec.value_scale)  # in levels


@pytest.mark.parametrize("yuv", [(235, 128, 128), (16, 128, 128), (81, 90, 240), (145, 54, 34)])
def test_flat_colours_are_identical(yuv: tuple[int, int, int]) -> None:
    frame = av.VideoFrame(640, 480, "yuv420p")
    for plane, value in zip(frame.planes, yuv, strict=True):
        np.frombuffer(memoryview(plane), np.uint8)[:] = value
    assert _diff(frame, YOLOX).max() == 0.0


@pytest.mark.parametrize("size", [(1280, 720), (640, 480), (300, 200), (1920, 1080)])
def test_smooth_content_within_a_level_or_two(size: tuple[int, int]) -> None:
    w, h = size
    ys, xs = np.mgrid[0:h, 0:w]
    cys, cxs = np.mgrid[0 : h // 2, 0 : w // 2]
    frame = _set_planes(
        av.VideoFrame(w, h, "yuv420p"),
        (16 + xs * 200 // w + ys * 10 // h).astype(np.uint8),
        (40 + cxs * 150 // (w // 2)).astype(np.uint8),
        (40 + cys * 150 // (h // 2)).astype(np.uint8),
    )
    for spec in (YOLOX, ULTRA):
        # One level of rounding; two at 1080p, where the 4.6x downscale makes libswscale
        # average the staircase of this integer gradient over ~9 pixels.
        assert _diff(frame, spec).max() <= (2.0 if w > 1280 else 1.0) + 1e-3


def test_photos_differ_little_from_swscale(photos: dict[str, np.ndarray]) -> None:
    for name, bgr in photos.items():
        for size in (None, (1920, 1080), (640, 480)):
            d = _diff(_yuv(bgr, size), YOLOX)
            assert d.mean() < 2.5, (name, size, d.mean())
            assert d.max() < 96, (name, size, d.max())
            assert (d > 8).mean() < 0.08, (name, size, (d > 8).mean())


def test_ultralytics_layout_and_padding(photos: dict[str, np.ndarray]) -> None:
    frame = _yuv(photos["coffee"], (1280, 720))
    ref = gp.letterbox_frame_reference(frame, ULTRA)
    assert (ref.pad_x, ref.pad_y) == (0.0, 91.0)
    assert np.all(ref.tensor[:, :91] == np.float32(114 / 255))
    assert np.all(ref.tensor[:, 91 + 234 :] == np.float32(114 / 255))
    assert ref.tensor.min() >= 0.0 and ref.tensor.max() <= 1.0
    bgr = gp.letterbox_frame_reference(frame, LetterboxSpec(416, 416, "bgr", 1 / 255, "center"))
    assert np.array_equal(ref.tensor, bgr.tensor[::-1])


def test_nv12_and_yuv420p_give_the_same_tensor(photos: dict[str, np.ndarray]) -> None:
    frame = _yuv(photos["astronaut"], (640, 480))
    nv12 = frame.reformat(format="nv12")
    assert nv12.format.name == "nv12"
    a = gp.letterbox_frame_reference(frame, YOLOX).tensor
    b = gp.letterbox_frame_reference(nv12, YOLOX).tensor
    assert np.array_equal(a, b)


def test_matrix_follows_the_frame_tags() -> None:
    frame = av.VideoFrame(64, 48, "yuv420p")
    assert gp.frame_planes(frame).matrix is gp.BT601  # unspecified: BT.601 limited
    assert gp.matrix_for(1, 0) is gp.BT709
    assert gp.matrix_for(1, 2) is gp.BT709_FULL
    assert gp.matrix_for(5, 2) is gp.BT601_FULL
    assert gp.frame_planes(frame.reformat(format="yuvj420p")).matrix.name.endswith("full")
    # The textbook BT.601 limited-range coefficients.
    assert (gp.BT601.y_gain, gp.BT601.rv, gp.BT601.bu) == pytest.approx(
        (1.16438, 1.402, 1.772), abs=1e-4
    )
    assert (gp.BT601.gu, gp.BT601.gv) == pytest.approx((0.344136, 0.714136), abs=1e-5)
    with pytest.raises(ValueError, match="expected a yuv420p or nv12 frame"):
        gp.frame_planes(av.VideoFrame(64, 48, "rgb24"))


def test_detections_from_the_reference_match_the_cpu_path(
    photos: dict[str, np.ndarray], yolox_detector: Detector
) -> None:
    spec = yolox_detector.letterbox_spec  # type: ignore[attr-defined]
    confident = 0
    for bgr in photos.values():
        for size in (None, (1280, 720)):
            frame = _yuv(bgr, size)
            cpu = yolox_detector.detect([frame])[0]
            ref = yolox_detector.infer([gp.letterbox_frame_reference(frame, spec)])[0]
            for box, cls, score in zip(cpu.boxes, cpu.class_ids, cpu.scores, strict=True):
                if score < 0.3:
                    continue  # near the 0.25 threshold a detection may flip either way
                same = ref.class_ids == cls
                assert same.any() and box_iou(box, ref.boxes[same]).max() > 0.9
                confident += 1
    assert confident >= 10


class _FakeKernel:
    def __init__(self, source: str, name: str, options: tuple[str, ...]) -> None:
        self.source, self.name, self.options = source, name, options
        self.calls: list[tuple[Any, ...]] = []

    def __call__(self, grid: Any, block: Any, args: tuple[Any, ...]) -> None:
        self.calls.append((grid, block, args))


class _FakeCupy:
    RawKernel = _FakeKernel


class _Plane:
    def __init__(self, pitch: int) -> None:
        self.strides = (pitch, 1)


def test_kernel_launch_matches_its_signature() -> None:
    """The CUDA kernel only runs on a GPU (benchmarks/gpu_check.py); here its launch
    arguments are checked against its C signature, count and types."""
    letterbox_gpu = gp.CupyLetterbox(_FakeCupy())
    kernel = letterbox_gpu._kernel
    assert kernel.name == "letterbox_yuv420" and "--fmad=false" in kernel.options
    params = gp.sampling_params(1280, 720, YOLOX)
    out = object()
    letterbox_gpu(
        _Plane(1280), _Plane(640), _Plane(640), c_step=1, matrix=gp.BT601, params=params, out=out
    )
    ((grid, block, args),) = kernel.calls
    signature = re.search(r"letterbox_yuv420\((.*?)\)\s*{", gp.KERNEL_SOURCE, re.S)
    assert signature is not None
    declared = [p.strip().rsplit(" ", 1)[0] for p in signature.group(1).split(",")]
    assert len(args) == len(declared)
    for arg, ctype in zip(args, declared, strict=True):
        if ctype == "int":
            assert isinstance(arg, np.int32)
        elif ctype == "float":
            assert isinstance(arg, np.float32)
    assert grid[0] * block[0] >= 416 and grid[1] * block[1] >= 416
