"""Picture quality metrics in plain NumPy: PSNR and SSIM (Wang et al. 2004).

SSIM follows the reference definition as scikit-image computes it with
``gaussian_weights=True, sigma=1.5, use_sample_covariance=False``: an 11-tap Gaussian
window (sigma 1.5), K1=0.01, K2=0.03, symmetric edge padding, and the mean taken over
the image minus a 5-pixel border (where the window would leave the image).
"""

from __future__ import annotations

import math

import av
import numpy as np
import numpy.typing as npt

_SSIM_SIGMA = 1.5
_SSIM_RADIUS = 5  # int(3.5 * sigma + 0.5): scipy's truncate=3.5 -> 11 taps
_SSIM_K1 = 0.01
_SSIM_K2 = 0.03

_Y_PLANE_FORMATS = ("yuv420p", "yuvj420p", "yuv422p", "yuv444p", "nv12", "gray")

Image = npt.NDArray[np.generic]


def _same_shape(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")


def psnr(a: Image, b: Image, max_value: float = 255) -> float:
    """Peak signal-to-noise ratio in dB over all samples; ``inf`` if identical."""
    a64 = np.asarray(a, dtype=np.float64)
    b64 = np.asarray(b, dtype=np.float64)
    _same_shape(a64, b64)
    mse = float(np.mean((a64 - b64) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(max_value * max_value / mse)


def luma(image: av.VideoFrame | Image) -> Image:
    """The Y plane of a frame (converted to yuv420p first if it has none), or a 2-D array."""
    if isinstance(image, av.VideoFrame):
        frame = image
        if frame.format.name not in _Y_PLANE_FORMATS:
            frame = frame.reformat(format="yuv420p")
        plane = frame.planes[0]
        # Rows may be padded beyond the width (line_size), so crop after reshaping.
        rows = np.frombuffer(memoryview(plane), dtype=np.uint8).reshape(-1, plane.line_size)
        return rows[: frame.height, : frame.width]
    array = np.asarray(image)
    if array.ndim != 2:
        raise ValueError(f"expected a 2-D luma array, got shape {array.shape}")
    return array


def psnr_y(a: av.VideoFrame | Image, b: av.VideoFrame | Image) -> float:
    """PSNR of the Y planes of two frames (or 2-D luma arrays)."""
    return psnr(luma(a), luma(b))


def _gaussian_kernel() -> npt.NDArray[np.float64]:
    x = np.arange(-_SSIM_RADIUS, _SSIM_RADIUS + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / _SSIM_SIGMA) ** 2)
    return kernel / kernel.sum()


def _filter_axis(
    image: npt.NDArray[np.float64], kernel: npt.NDArray[np.float64], axis: int
) -> npt.NDArray[np.float64]:
    r = len(kernel) // 2
    pad = [(0, 0), (0, 0)]
    pad[axis] = (r, r)
    # 'symmetric' (edge sample repeated) is scipy.ndimage's 'reflect', which skimage uses.
    padded = np.pad(image, pad, mode="symmetric")
    n = image.shape[axis]
    out = np.zeros_like(image)
    for tap, weight in enumerate(kernel):
        out += weight * (padded[tap : tap + n] if axis == 0 else padded[:, tap : tap + n])
    return out


def _gaussian_filter(image: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    kernel = _gaussian_kernel()
    return _filter_axis(_filter_axis(image, kernel, 0), kernel, 1)


def ssim(a: Image, b: Image, data_range: float = 255) -> float:
    """Mean structural similarity of two grayscale images (1.0 for identical images)."""
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    _same_shape(x, y)
    if x.ndim != 2:
        raise ValueError(f"ssim expects 2-D grayscale images, got shape {x.shape}")
    if min(x.shape) < 2 * _SSIM_RADIUS + 1:
        raise ValueError(f"ssim needs images of at least 11x11 pixels, got {x.shape}")
    c1 = (_SSIM_K1 * data_range) ** 2
    c2 = (_SSIM_K2 * data_range) ** 2
    mu_x, mu_y = _gaussian_filter(x), _gaussian_filter(y)
    var_x = _gaussian_filter(x * x) - mu_x * mu_x
    var_y = _gaussian_filter(y * y) - mu_y * mu_y
    cov = _gaussian_filter(x * y) - mu_x * mu_y
    numerator = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    denominator = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    ssim_map = numerator / denominator
    r = _SSIM_RADIUS
    return float(ssim_map[r:-r, r:-r].mean())
