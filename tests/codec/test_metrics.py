"""PSNR and SSIM against hand-computed values and scikit-image's reference."""

from __future__ import annotations

import math

import av
import numpy as np
import pytest

from shelf_stream.codec.metrics import luma, psnr, psnr_y, ssim


def test_psnr_hand_computed() -> None:
    a = np.zeros((4, 4), dtype=np.uint8)
    b = a.copy()
    b[0, 0] = 16  # squared error 256 over 16 samples: MSE = 16
    # 10 * log10(255**2 / 16) = 10 * log10(4064.0625) = 36.08960...
    assert psnr(a, b) == pytest.approx(36.089604, abs=1e-6)
    assert psnr(a, b, max_value=1023) == pytest.approx(10 * math.log10(1023**2 / 16))


def test_psnr_identical_is_infinite_and_symmetric() -> None:
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (8, 8), dtype=np.uint8)
    b = rng.integers(0, 256, (8, 8), dtype=np.uint8)
    assert psnr(a, a) == math.inf
    assert psnr(a, b) == psnr(b, a)


def test_psnr_does_not_wrap_uint8() -> None:
    a = np.zeros((2, 2), dtype=np.uint8)
    b = np.full((2, 2), 255, dtype=np.uint8)  # uint8 a - b would wrap to 1
    assert psnr(a, b) == pytest.approx(0.0)


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="shape"):
        psnr(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="shape"):
        ssim(np.zeros((20, 20)), np.zeros((20, 21)))


def test_psnr_y_reads_the_y_plane_of_frames() -> None:
    y = np.tile(np.arange(0, 160, 2, dtype=np.uint8), (48, 1))  # 48x80 ramp
    yuv = np.concatenate([y, np.full((24, 80), 128, dtype=np.uint8)])  # + U and V
    frame_a = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
    shifted = yuv.copy()
    shifted[:48] += 4  # Y only: MSE 16
    shifted[48:] = 0  # chroma differences must not count
    frame_b = av.VideoFrame.from_ndarray(shifted, format="yuv420p")
    np.testing.assert_array_equal(luma(frame_a), y)
    assert psnr_y(frame_a, frame_b) == pytest.approx(10 * math.log10(255**2 / 16))
    assert psnr_y(frame_a, y) == math.inf  # a frame against a bare Y plane


def test_psnr_y_converts_rgb_frames() -> None:
    gray = np.full((16, 16, 3), 100, dtype=np.uint8)
    frame = av.VideoFrame.from_ndarray(gray, format="rgb24")
    assert luma(frame).shape == (16, 16)
    assert psnr_y(frame, frame) == math.inf


def _skimage_ssim(a: np.ndarray, b: np.ndarray) -> float:
    metrics = pytest.importorskip("skimage.metrics")
    return float(
        metrics.structural_similarity(
            a,
            b,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=255,
        )
    )


@pytest.mark.parametrize("noise", [2.0, 10.0, 40.0])
def test_ssim_matches_scikit_image_on_a_photo(noise: float) -> None:
    data = pytest.importorskip("skimage.data")
    photo = data.camera()[100:260, 150:350]
    rng = np.random.default_rng(7)
    noisy = np.clip(photo + rng.normal(0, noise, photo.shape), 0, 255).astype(np.uint8)
    expected = _skimage_ssim(photo, noisy)
    assert ssim(photo, noisy) == pytest.approx(expected, abs=1e-3)
    assert ssim(noisy, photo) == pytest.approx(expected, abs=1e-3)


def test_ssim_matches_scikit_image_on_random_images() -> None:
    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, (37, 53), dtype=np.uint8)
    b = rng.integers(0, 256, (37, 53), dtype=np.uint8)
    assert ssim(a, b) == pytest.approx(_skimage_ssim(a, b), abs=1e-3)


def test_ssim_identical_is_one_and_orders_distortions() -> None:
    rng = np.random.default_rng(5)
    a = rng.integers(0, 256, (32, 32), dtype=np.uint8)
    mild = np.clip(a + rng.normal(0, 5, a.shape), 0, 255)
    strong = np.clip(a + rng.normal(0, 50, a.shape), 0, 255)
    assert ssim(a, a) == pytest.approx(1.0)
    assert 1.0 > ssim(a, mild) > ssim(a, strong)


def test_ssim_rejects_colour_and_tiny_images() -> None:
    with pytest.raises(ValueError, match="2-D"):
        ssim(np.zeros((20, 20, 3)), np.zeros((20, 20, 3)))
    with pytest.raises(ValueError, match="11x11"):
        ssim(np.zeros((10, 20)), np.zeros((10, 20)))
