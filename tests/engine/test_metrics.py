"""Tests of dip_engine.metrics against known values and scikit-image."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage import data as skdata
from skimage.metrics import structural_similarity

from dip_engine.metrics import psnr, psnr_y, rgb_to_y, ssim


def _skimage_ssim(x: torch.Tensor, y: torch.Tensor) -> float:
    a = x.permute(1, 2, 0).double().numpy()
    b = y.permute(1, 2, 0).double().numpy()
    return structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                 data_range=1, channel_axis=-1)


def _natural_image() -> torch.Tensor:
    """A 96x128 crop of scikit-image's bundled astronaut photo, (3, H, W) in [0, 1]."""
    image = skdata.astronaut()[100:196, 150:278]
    return torch.from_numpy(image.astype(np.float32) / 255).permute(2, 0, 1)


# --------------------------------------------------------------------------- psnr


def test_psnr_of_a_constant_difference_of_0_1_is_20_db() -> None:
    x = torch.full((3, 8, 8), 0.25, dtype=torch.float64)
    assert psnr(x, x + 0.1).item() == pytest.approx(20.0, abs=1e-9)


def test_psnr_uses_data_range() -> None:
    x = torch.full((1, 4, 4), 100.0)
    assert psnr(x, x + 25.5, data_range=255.0).item() == pytest.approx(20.0, abs=1e-4)


def test_psnr_matches_mse_formula() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 16, 16, generator=gen)
    y = torch.rand(2, 3, 16, 16, generator=gen)
    mse = float(np.mean((x.numpy().astype(np.float64) - y.numpy()) ** 2))
    assert psnr(x, y).item() == pytest.approx(10 * math.log10(1 / mse), abs=1e-4)


def test_psnr_returns_a_0d_tensor_and_inf_for_identical_images() -> None:
    x = torch.rand(3, 8, 8)
    out = psnr(x, x.clone())
    assert isinstance(out, torch.Tensor) and out.dim() == 0
    assert out.item() == math.inf


def test_psnr_of_half_inputs_is_computed_in_float32() -> None:
    x = torch.full((1, 4, 4), 0.25, dtype=torch.float16)
    out = psnr(x, x + 0.125)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(20 * math.log10(8), abs=1e-4)


@pytest.mark.parametrize(
    ("x", "y", "kwargs", "match"),
    [
        (torch.zeros(3, 4, 4), torch.zeros(3, 4, 5), {}, r"same shape, got \(3, 4, 4\) and \(3, 4, 5\)"),
        (torch.zeros(4, 4), torch.zeros(4, 4), {}, r"got shape \(4, 4\)"),
        (torch.zeros(1, 4, 4), torch.zeros(1, 4, 4), {"data_range": 0.0}, "data_range .* got 0.0"),
    ],
)
def test_psnr_rejects_bad_input(x: torch.Tensor, y: torch.Tensor, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        psnr(x, y, **kwargs)


# --------------------------------------------------------------------------- ssim


@pytest.mark.parametrize("seed", [0, 1])
def test_ssim_matches_skimage_on_random_images(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(3, 40, 52, generator=gen)
    y = (x + 0.2 * torch.randn(3, 40, 52, generator=gen)).clamp(0, 1)
    assert ssim(x, y).item() == pytest.approx(_skimage_ssim(x, y), abs=1e-3)


@pytest.mark.parametrize("sigma", [0.02, 0.1, 0.3])
def test_ssim_matches_skimage_on_a_natural_image(sigma: float) -> None:
    x = _natural_image()
    gen = torch.Generator().manual_seed(0)
    y = (x + sigma * torch.randn(x.shape, generator=gen)).clamp(0, 1)
    expected = _skimage_ssim(x, y)
    assert 0 < expected < 1
    assert ssim(x, y).item() == pytest.approx(expected, abs=1e-3)


def test_ssim_of_a_batch_is_the_mean_over_images() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 24, 24, generator=gen)
    y = torch.rand(2, 3, 24, 24, generator=gen)
    per_image = [ssim(x[i], y[i]).item() for i in range(2)]
    assert ssim(x, y).item() == pytest.approx(sum(per_image) / 2, abs=1e-6)


def test_ssim_is_one_for_identical_images() -> None:
    x = _natural_image()
    out = ssim(x, x)
    assert out.dim() == 0 and out.item() == pytest.approx(1.0, abs=1e-6)


def test_ssim_rejects_images_smaller_than_the_window() -> None:
    with pytest.raises(ValueError, match=r"at least 11x11, got shape \(1, 10, 20\)"):
        ssim(torch.zeros(1, 10, 20), torch.zeros(1, 10, 20))


# --------------------------------------------------------------------------- luma


def test_rgb_to_y_uses_studio_range_bt601() -> None:
    black = torch.zeros(3, 1, 1)
    white = torch.ones(3, 1, 1)
    red = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)
    assert rgb_to_y(black).item() == pytest.approx(16 / 255)
    assert rgb_to_y(white).item() == pytest.approx(235 / 255, abs=1e-6)
    assert rgb_to_y(red).item() == pytest.approx((16 + 65.481) / 255)
    assert rgb_to_y(torch.zeros(2, 3, 5, 6)).shape == (2, 1, 5, 6)


def test_rgb_to_y_rejects_non_rgb() -> None:
    with pytest.raises(ValueError, match=r"got shape \(4, 5, 5\)"):
        rgb_to_y(torch.zeros(4, 5, 5))


def test_psnr_y_compares_luma() -> None:
    x = torch.full((3, 8, 8), 0.5)
    # A change of the chroma only, with zero luma weight sum, leaves Y unchanged.
    delta = torch.tensor([128.553, -65.481, 0.0]).view(3, 1, 1) * 1e-3
    assert psnr_y(x, x + delta).item() == math.inf
    # A grey shift of d moves Y by d * 219 / 255.
    expected = -20 * math.log10(0.1 * 219 / 255)
    assert psnr_y(x, x + 0.1).item() == pytest.approx(expected, abs=1e-3)


def test_psnr_y_shave_removes_the_border() -> None:
    x = torch.full((1, 3, 20, 20), 0.5)
    y = x.clone()
    y[..., :2, :] = 0.0
    y[..., :, -2:] = 1.0
    assert math.isfinite(psnr_y(x, y).item())
    assert math.isfinite(psnr_y(x, y, shave=1).item())
    assert psnr_y(x, y, shave=2).item() == math.inf


def test_psnr_y_shave_matches_manual_crop() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(3, 20, 24, generator=gen)
    y = torch.rand(3, 20, 24, generator=gen)
    expected = psnr(rgb_to_y(x)[:, 4:-4, 4:-4], rgb_to_y(y)[:, 4:-4, 4:-4])
    assert psnr_y(x, y, shave=4).item() == pytest.approx(expected.item())


def test_psnr_y_takes_one_channel_images_as_luma() -> None:
    x = torch.full((1, 8, 8), 0.5)
    assert psnr_y(x, x + 0.1).item() == pytest.approx(20.0, abs=1e-4)


@pytest.mark.parametrize(
    ("shave", "match"), [(-1, "got -1"), (4, "shave=4 leaves nothing"), (True, "True")])
def test_psnr_y_rejects_bad_shave(shave: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        psnr_y(torch.zeros(3, 8, 8), torch.zeros(3, 8, 8), shave=shave)
