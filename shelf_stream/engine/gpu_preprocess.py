"""Letterboxing straight from YUV planes: a CuPy kernel and its NumPy reference.

The CPU path (``preprocess.letterbox``) hands a decoded yuv420p frame to libswscale,
which converts and scales in one call. On a GPU the same job is one kernel: each
output pixel samples Y, U and V bilinearly at its source position, converts to RGB and
writes the scaled value into the CHW float32 model input, padding included. Only the
compressed frame's planes go to the GPU and only the detector's output comes back.

``letterbox_yuv_reference`` is the same maths in NumPy (float32, same coordinates, same
coefficients, same rounding), so the kernel can be checked pixel for pixel on a GPU
(``benchmarks/gpu_check.py``) and the maths against libswscale here (tests).

Colour: BT.601 limited range unless the frame says BT.709 or full range, as libswscale
does for an unspecified yuv420p frame. Chroma siting: centred on each 2x2 luma block,
as libswscale assumes when scaling (measured: on smooth content this reference matches
``preprocess.letterbox`` within one level; with H.264/HEVC's "left" siting the same
test differed by up to 69 levels). Remaining differences from libswscale (measured in
tests/engine/test_gpu_preprocess.py): its "bilinear" downscale widens the filter to the
scale factor (an area-like average) where this kernel samples four pixels, so sharp
edges differ by tens of levels on a few pixels while the mean stays near one level;
and at exactly 1:1 size libswscale takes an unscaled path that repeats chroma samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import av
import numpy as np

from shelf_stream.engine.base import PreparedImage
from shelf_stream.engine.preprocess import LetterboxGeometry, LetterboxSpec, letterbox_geometry

#: ``av.VideoFrame.colorspace`` value of BT.709 (AVCOL_SPC_BT709).
_AVCOL_SPC_BT709 = 1
#: ``av.VideoFrame.color_range`` value of full ("JPEG") range (AVCOL_RANGE_JPEG).
_AVCOL_RANGE_JPEG = 2


@dataclass(frozen=True, slots=True)
class YuvMatrix:
    """Y'CbCr -> R'G'B' coefficients: ``r = y + rv*v``, ``g = y - gu*u - gv*v``,
    ``b = y + bu*u`` after ``y = (Y - y_offset) * y_gain`` and
    ``u, v = (U, V - 128) * c_gain``."""

    name: str
    y_offset: float
    y_gain: float
    c_gain: float
    rv: float
    gu: float
    gv: float
    bu: float

    @staticmethod
    def from_kr_kb(name: str, kr: float, kb: float, *, full_range: bool) -> YuvMatrix:
        kg = 1.0 - kr - kb
        y_gain = 1.0 if full_range else 255.0 / 219.0
        c_gain = 1.0 if full_range else 255.0 / 224.0
        return YuvMatrix(
            name=name,
            y_offset=0.0 if full_range else 16.0,
            y_gain=y_gain,
            c_gain=c_gain,
            rv=2.0 * (1.0 - kr),
            gu=2.0 * kb * (1.0 - kb) / kg,
            gv=2.0 * kr * (1.0 - kr) / kg,
            bu=2.0 * (1.0 - kb),
        )


BT601 = YuvMatrix.from_kr_kb("bt601", 0.299, 0.114, full_range=False)
BT709 = YuvMatrix.from_kr_kb("bt709", 0.2126, 0.0722, full_range=False)
BT601_FULL = YuvMatrix.from_kr_kb("bt601-full", 0.299, 0.114, full_range=True)
BT709_FULL = YuvMatrix.from_kr_kb("bt709-full", 0.2126, 0.0722, full_range=True)


def matrix_for(colorspace: int, color_range: int) -> YuvMatrix:
    """The matrix libswscale uses for a frame's tags: BT.709 only when tagged so
    (unspecified means BT.601), full range only when tagged JPEG range."""
    full = color_range == _AVCOL_RANGE_JPEG
    if colorspace == _AVCOL_SPC_BT709:
        return BT709_FULL if full else BT709
    return BT601_FULL if full else BT601


@dataclass(frozen=True, slots=True)
class YuvPlanes:
    """One 4:2:0 frame as host arrays: ``y`` (h, w); ``u``/``v`` (h/2, w/2) views
    (for NV12 they are strided views into the interleaved UV plane)."""

    y: np.ndarray
    u: np.ndarray
    v: np.ndarray
    matrix: YuvMatrix = BT601

    @property
    def width(self) -> int:
        return int(self.y.shape[1])

    @property
    def height(self) -> int:
        return int(self.y.shape[0])


def _plane(frame: av.VideoFrame, index: int, width: int, height: int) -> np.ndarray:
    plane = frame.planes[index]
    rows = np.frombuffer(memoryview(plane), np.uint8)[: plane.line_size * height]
    return rows.reshape(height, plane.line_size)[:, :width]


def frame_planes(frame: av.VideoFrame) -> YuvPlanes:
    """Zero-copy views of a yuv420p / yuvj420p / nv12 frame's planes."""
    fmt = frame.format.name
    w, h = frame.width, frame.height
    cw, ch = (w + 1) // 2, (h + 1) // 2
    matrix = matrix_for(int(frame.colorspace), int(frame.color_range))
    if fmt == "yuvj420p":
        matrix = matrix_for(int(frame.colorspace), _AVCOL_RANGE_JPEG)
    if fmt in ("yuv420p", "yuvj420p"):
        return YuvPlanes(
            _plane(frame, 0, w, h), _plane(frame, 1, cw, ch), _plane(frame, 2, cw, ch), matrix
        )
    if fmt == "nv12":
        uv = _plane(frame, 1, 2 * cw, ch)
        return YuvPlanes(_plane(frame, 0, w, h), uv[:, 0::2], uv[:, 1::2], matrix)
    raise ValueError(f"expected a yuv420p or nv12 frame, got {fmt}")


# ------------------------------------------------------------------ sampling maths


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """Every number the kernel needs, computed once per (source size, spec).

    Output pixel ``(x, y)`` inside the resized area maps to luma position
    ``sx = (x - pad_x + 0.5) * step_x - 0.5`` (pixel centres aligned, as libswscale and
    OpenCV do); chroma position ``cx = (sx - 0.5) / 2``, ``cy = (sy - 0.5) / 2`` (each
    chroma sample centred on its 2x2 luma block, which is what libswscale assumes when
    it scales, whatever the stream's chroma location).
    """

    src_width: int
    src_height: int
    out_width: int
    out_height: int
    geometry: LetterboxGeometry
    step_x: float  # source pixels per output pixel
    step_y: float
    rgb_order: bool  # channel 0 is R (else B)
    value_scale: float
    pad_value: float  # already scaled


def sampling_params(src_width: int, src_height: int, spec: LetterboxSpec) -> SamplingParams:
    geometry = letterbox_geometry(src_width, src_height, spec)
    return SamplingParams(
        src_width=src_width,
        src_height=src_height,
        out_width=spec.width,
        out_height=spec.height,
        geometry=geometry,
        step_x=src_width / geometry.resized_width,
        step_y=src_height / geometry.resized_height,
        rgb_order=spec.channel_order == "rgb",
        value_scale=spec.value_scale,
        pad_value=spec.pad_value * spec.value_scale,
    )


def _taps(positions: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear taps along one axis, clamped at the edges: (i0, i1, weight of i1)."""
    pos = np.clip(positions, np.float32(0.0), np.float32(size - 1))
    i0 = np.floor(pos).astype(np.int64)
    i1 = np.minimum(i0 + 1, size - 1)
    return i0, i1, (pos - i0).astype(np.float32)


def _bilinear(plane: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    x0, x1, wx = _taps(xs, plane.shape[1])
    y0, y1, wy = _taps(ys, plane.shape[0])
    p = plane.astype(np.float32, copy=False)
    top = p[y0][:, x0] * (1 - wx) + p[y0][:, x1] * wx
    bottom = p[y1][:, x0] * (1 - wx) + p[y1][:, x1] * wx
    return top * (1 - wy)[:, None] + bottom * wy[:, None]


def letterbox_yuv_reference(planes: YuvPlanes, spec: LetterboxSpec) -> PreparedImage:
    """The GPU kernel's maths in NumPy: a letterboxed CHW float32 tensor from 4:2:0 planes."""
    p = sampling_params(planes.width, planes.height, spec)
    g = p.geometry
    f32 = np.float32
    sx = (np.arange(g.resized_width, dtype=f32) + f32(0.5)) * f32(p.step_x) - f32(0.5)
    sy = (np.arange(g.resized_height, dtype=f32) + f32(0.5)) * f32(p.step_y) - f32(0.5)
    luma = _bilinear(planes.y, sx, sy)
    cx, cy = (sx - f32(0.5)) * f32(0.5), (sy - f32(0.5)) * f32(0.5)
    cb = _bilinear(planes.u, cx, cy)
    cr = _bilinear(planes.v, cx, cy)
    red, green, blue = _to_rgb(luma, cb, cr, planes.matrix)
    channels = (red, green, blue) if p.rgb_order else (blue, green, red)
    tensor = np.full((3, spec.height, spec.width), f32(p.pad_value), f32)
    for index, channel in enumerate(channels):
        quantised = np.clip(np.floor(channel + f32(0.5)), f32(0.0), f32(255.0))
        tensor[index, g.pad_y : g.pad_y + g.resized_height, g.pad_x : g.pad_x + g.resized_width] = (
            quantised * f32(p.value_scale)
        )
    return PreparedImage(tensor, g.scale, float(g.pad_x), float(g.pad_y), p.src_width, p.src_height)


def _to_rgb(
    luma: np.ndarray, cb: np.ndarray, cr: np.ndarray, m: YuvMatrix
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    f32 = np.float32
    y = (luma - f32(m.y_offset)) * f32(m.y_gain)
    u = (cb - f32(128.0)) * f32(m.c_gain)
    v = (cr - f32(128.0)) * f32(m.c_gain)
    return y + f32(m.rv) * v, y - f32(m.gu) * u - f32(m.gv) * v, y + f32(m.bu) * u


def letterbox_frame_reference(frame: av.VideoFrame, spec: LetterboxSpec) -> PreparedImage:
    """``letterbox_yuv_reference`` on a decoded yuv420p / nv12 frame."""
    return letterbox_yuv_reference(frame_planes(frame), spec)


# ---------------------------------------------------------------------- the kernel

#: One thread per output pixel of one frame; writes all three channels. Mirrors
#: ``letterbox_yuv_reference`` operation by operation (float32, clamp, floor(x+0.5)).
#: ``c_step`` is 1 for planar U/V and 2 for NV12's interleaved UV (v = u + 1).
KERNEL_SOURCE = r"""
__device__ __forceinline__ float tap(const unsigned char* p, int pitch, int w, int h,
                                     float x, float y) {
    x = fminf(fmaxf(x, 0.0f), (float)(w - 1));
    y = fminf(fmaxf(y, 0.0f), (float)(h - 1));
    int x0 = (int)floorf(x), y0 = (int)floorf(y);
    int x1 = min(x0 + 1, w - 1), y1 = min(y0 + 1, h - 1);
    float wx = x - (float)x0, wy = y - (float)y0;
    float top = (float)p[y0 * pitch + x0] * (1.0f - wx) + (float)p[y0 * pitch + x1] * wx;
    float bot = (float)p[y1 * pitch + x0] * (1.0f - wx) + (float)p[y1 * pitch + x1] * wx;
    return top * (1.0f - wy) + bot * wy;
}

__device__ __forceinline__ float tap_c(const unsigned char* p, int pitch, int step, int w,
                                       int h, float x, float y) {
    x = fminf(fmaxf(x, 0.0f), (float)(w - 1));
    y = fminf(fmaxf(y, 0.0f), (float)(h - 1));
    int x0 = (int)floorf(x), y0 = (int)floorf(y);
    int x1 = min(x0 + 1, w - 1), y1 = min(y0 + 1, h - 1);
    float wx = x - (float)x0, wy = y - (float)y0;
    float top = (float)p[y0 * pitch + x0 * step] * (1.0f - wx)
              + (float)p[y0 * pitch + x1 * step] * wx;
    float bot = (float)p[y1 * pitch + x0 * step] * (1.0f - wx)
              + (float)p[y1 * pitch + x1 * step] * wx;
    return top * (1.0f - wy) + bot * wy;
}

__device__ __forceinline__ float quant(float v, float scale) {
    return fminf(fmaxf(floorf(v + 0.5f), 0.0f), 255.0f) * scale;
}

extern "C" __global__ void letterbox_yuv420(
    const unsigned char* y_plane, int y_pitch,
    const unsigned char* u_plane, const unsigned char* v_plane, int c_pitch, int c_step,
    int src_w, int src_h,
    float* out, int out_w, int out_h,
    int pad_x, int pad_y, int res_w, int res_h,
    float step_x, float step_y,
    float y_offset, float y_gain, float c_gain, float rv, float gu, float gv, float bu,
    int rgb_order, float value_scale, float pad_value)
{
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= out_w || y >= out_h) return;
    int plane = out_w * out_h;
    int idx = y * out_w + x;
    int rx = x - pad_x, ry = y - pad_y;
    if (rx < 0 || ry < 0 || rx >= res_w || ry >= res_h) {
        out[idx] = pad_value; out[plane + idx] = pad_value; out[2 * plane + idx] = pad_value;
        return;
    }
    float sx = ((float)rx + 0.5f) * step_x - 0.5f;
    float sy = ((float)ry + 0.5f) * step_y - 0.5f;
    int cw = (src_w + 1) / 2, ch = (src_h + 1) / 2;
    float cx = (sx - 0.5f) * 0.5f, cy = (sy - 0.5f) * 0.5f;
    float lum = tap(y_plane, y_pitch, src_w, src_h, sx, sy);
    float cb = tap_c(u_plane, c_pitch, c_step, cw, ch, cx, cy);
    float cr = tap_c(v_plane, c_pitch, c_step, cw, ch, cx, cy);
    float yy = (lum - y_offset) * y_gain;
    float u = (cb - 128.0f) * c_gain;
    float v = (cr - 128.0f) * c_gain;
    float r = yy + rv * v;
    float g = yy - gu * u - gv * v;
    float b = yy + bu * u;
    float c0 = rgb_order ? r : b;
    float c2 = rgb_order ? b : r;
    out[idx] = quant(c0, value_scale);
    out[plane + idx] = quant(g, value_scale);
    out[2 * plane + idx] = quant(c2, value_scale);
}
"""

_BLOCK = (32, 8, 1)


def _import_cupy() -> Any:
    import cupy  # optional GPU dependency: only where the kernel runs

    return cupy


class CupyLetterbox:
    """Runs ``KERNEL_SOURCE`` with CuPy. Construct once (compiles the kernel); call per
    frame with device planes. ``cupy`` is passed in or imported here, never at module
    import, so this module loads on machines without a GPU.

    The kernel is compiled with ``--fmad=false``: fused multiply-adds would round
    differently from NumPy and move a few pixels across a quantisation step.
    """

    def __init__(self, cupy: Any | None = None) -> None:
        self._cp: Any = cupy if cupy is not None else _import_cupy()
        self._kernel = self._cp.RawKernel(
            KERNEL_SOURCE, "letterbox_yuv420", options=("--fmad=false",)
        )

    def __call__(
        self,
        y_plane: Any,
        u_plane: Any,
        v_plane: Any,
        *,
        c_step: int,
        matrix: YuvMatrix,
        params: SamplingParams,
        out: Any,
        stream: Any | None = None,
    ) -> PreparedImage:
        """Letterbox one frame into ``out`` (a (3, H, W) float32 CuPy array, possibly a
        slice of a batch). Planes are 2-D uint8 CuPy arrays whose rows may be padded
        (their ``strides[0]`` is the pitch); for NV12 pass the UV plane as ``u_plane``,
        its view shifted by one byte as ``v_plane`` and ``c_step=2``."""
        cp, g, m, p = self._cp, params.geometry, matrix, params
        f32, i32 = np.float32, np.int32
        grid = (math.ceil(p.out_width / _BLOCK[0]), math.ceil(p.out_height / _BLOCK[1]), 1)
        args = (
            y_plane, i32(y_plane.strides[0]),
            u_plane, v_plane, i32(u_plane.strides[0]), i32(c_step),
            i32(p.src_width), i32(p.src_height),
            out, i32(p.out_width), i32(p.out_height),
            i32(g.pad_x), i32(g.pad_y), i32(g.resized_width), i32(g.resized_height),
            f32(p.step_x), f32(p.step_y),
            f32(m.y_offset), f32(m.y_gain), f32(m.c_gain),
            f32(m.rv), f32(m.gu), f32(m.gv), f32(m.bu),
            i32(1 if p.rgb_order else 0), f32(p.value_scale), f32(p.pad_value),
        )  # fmt: skip
        if stream is None:
            self._kernel(grid, _BLOCK, args)
        else:
            with cp.cuda.ExternalStream(int(stream)):
                self._kernel(grid, _BLOCK, args)
        return PreparedImage(
            np.empty((0,), np.float32),  # the tensor lives on the device, in ``out``
            g.scale,
            float(g.pad_x),
            float(g.pad_y),
            p.src_width,
            p.src_height,
        )

    def letterbox_frame(self, frame: av.VideoFrame, spec: LetterboxSpec, out: Any) -> PreparedImage:
        """Upload a host yuv420p / nv12 frame's planes and letterbox it into ``out``."""
        cp = self._cp
        planes = frame_planes(frame)
        params = sampling_params(frame.width, frame.height, spec)
        y = cp.asarray(planes.y)
        if frame.format.name == "nv12":
            # Interleaved UV: V is the same plane one byte on, read every second byte.
            uv = cp.asarray(np.stack([planes.u, planes.v], axis=-1).reshape(planes.u.shape[0], -1))
            return self(y, uv, uv[:, 1:], c_step=2, matrix=planes.matrix, params=params, out=out)
        u, v = cp.asarray(planes.u), cp.asarray(planes.v)
        return self(y, u, v, c_step=1, matrix=planes.matrix, params=params, out=out)
