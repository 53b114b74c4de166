"""Tests of dip_engine.noise: the wavelet estimate of a measurement's noise level."""

from __future__ import annotations

import numpy as np
import pytest

from dip_engine.noise import estimate_noise_sigma


def _smooth(size: int = 128) -> np.ndarray:
    ys, xs = np.mgrid[0:size, 0:size] / size
    return np.stack([0.2 + 0.6 * xs, 0.3 + 0.4 * (ys > 0.5), 0.5 + 0.3 * np.sin(6 * xs + 3 * ys)], axis=-1)


@pytest.mark.parametrize("sigma", [5.0, 15.0, 25.0, 50.0])
def test_recovers_the_sigma_of_added_gaussian_noise(sigma: float) -> None:
    rng = np.random.default_rng(0)
    noisy = _smooth() + rng.standard_normal((128, 128, 3)) * sigma / 255
    assert estimate_noise_sigma(noisy) * 255 == pytest.approx(sigma, rel=0.1)


def test_a_clean_smooth_image_reads_as_nearly_noise_free() -> None:
    assert estimate_noise_sigma(_smooth()) * 255 < 0.5


def test_holes_of_a_mask_do_not_pass_for_noise() -> None:
    rng = np.random.default_rng(1)
    known = rng.random((128, 128)) >= 0.5
    holed = _smooth() * known[..., None]
    assert estimate_noise_sigma(holed) * 255 > 5  # the holes look like strong noise...
    assert estimate_noise_sigma(holed, known=known) * 255 < 0.5  # ...unless they are left out


def test_grayscale_and_too_few_blocks() -> None:
    noisy = _smooth()[..., 0] + np.random.default_rng(2).standard_normal((128, 128)) * 0.1
    assert estimate_noise_sigma(noisy) == pytest.approx(0.1, rel=0.1)
    assert estimate_noise_sigma(np.zeros((4, 4))) == 0.0
    with pytest.raises(ValueError, match="shape"):
        estimate_noise_sigma(np.zeros((2, 2, 2, 2)))
