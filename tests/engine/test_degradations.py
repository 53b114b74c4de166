"""Tests of dip_engine.degradations: the synthetic degradations made from a clean image."""

from __future__ import annotations

import numpy as np
import pytest

from dip_engine.degradations import add_gaussian_noise, convolve, gaussian_kernel, jpeg_roundtrip


def _image(seed: int = 0, size: int = 48) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:size, 0:size] / size
    base = np.stack([xs, ys, 0.5 + 0.4 * np.sin(8 * xs)], axis=-1)
    return np.clip(base + 0.01 * rng.standard_normal(base.shape), 0, 1).astype(np.float32)


def test_noise_has_the_asked_sigma_and_is_seeded() -> None:
    clean = np.full((128, 128, 3), 0.5, np.float32)
    noisy = add_gaussian_noise(clean, 25.0, rng=np.random.default_rng(1))
    assert float((noisy - clean).std()) == pytest.approx(25 / 255, rel=0.02)
    assert np.array_equal(noisy, add_gaussian_noise(clean, 25.0, rng=np.random.default_rng(1)))


@pytest.mark.parametrize("sigma", [0.5, 1.6, 3.0])
def test_gaussian_kernel_is_normalised_symmetric_and_wide_enough(sigma: float) -> None:
    kernel = gaussian_kernel(sigma)
    assert kernel.shape[0] == kernel.shape[1] == 2 * int(np.ceil(3 * sigma)) + 1
    assert float(kernel.sum()) == pytest.approx(1.0, abs=1e-6)
    assert np.allclose(kernel, kernel.T) and np.allclose(kernel, kernel[::-1, ::-1])


def test_gaussian_kernel_refuses_a_non_positive_sigma() -> None:
    with pytest.raises(ValueError, match="got 0"):
        gaussian_kernel(0)


def test_convolution_keeps_the_size_and_the_mean_and_smooths() -> None:
    image = np.random.default_rng(0).random((48, 40, 3), dtype=np.float32)
    blurred = convolve(image, gaussian_kernel(1.6))
    assert blurred.shape == image.shape and blurred.dtype == np.float32
    assert float(blurred.mean()) == pytest.approx(float(image.mean()), abs=0.01)
    assert float(np.abs(np.diff(blurred, axis=1)).mean()) < 0.5 * float(np.abs(np.diff(image, axis=1)).mean())


def test_jpeg_roundtrip_loses_detail_at_low_quality_and_keeps_the_layout() -> None:
    image = _image()
    low, high = jpeg_roundtrip(image, 10), jpeg_roundtrip(image, 95)
    assert low.shape == image.shape and low.dtype == np.float32
    assert np.abs(low - image).mean() > 2 * np.abs(high - image).mean()
    grey = jpeg_roundtrip(image[..., :1], 50)
    assert grey.shape == (48, 48, 1)
    with pytest.raises(ValueError, match="got 0"):
        jpeg_roundtrip(image, 0)
