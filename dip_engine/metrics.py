"""Image quality metrics as plain functions on tensors (as ``torchmetrics.functional``).

Every function returns a 0-d tensor on the inputs' device and never calls
``.item()``: the caller decides when to synchronise with the device.
Images are ``(C, H, W)`` or ``(N, C, H, W)``; a batch is scored as a whole.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["psnr", "psnr_y", "rgb_to_y", "ssim"]

_SSIM_WINDOW = 11
_SSIM_SIGMA = 1.5
_SSIM_K1 = 0.01
_SSIM_K2 = 0.03

# ITU-R BT.601 for 8-bit studio range, as MATLAB's rgb2ycbcr: the SR literature's Y.
_Y_OFFSET = 16.0
_Y_WEIGHTS = (65.481, 128.553, 24.966)


def _check_pair(x: Tensor, y: Tensor) -> None:
    if x.shape != y.shape:
        raise ValueError(f"images must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.dim() not in (3, 4):
        raise ValueError(f"images must be (C, H, W) or (N, C, H, W), got shape {tuple(x.shape)}")


def _check_data_range(data_range: float) -> None:
    if not data_range > 0 or not math.isfinite(data_range):
        raise ValueError(f"data_range must be a finite number > 0, got {data_range!r}")


def _as_float(x: Tensor) -> Tensor:
    # Half precision loses too much in squared errors; float64 stays float64.
    return x.to(torch.promote_types(x.dtype, torch.float32))


def psnr(x: Tensor, y: Tensor, *, data_range: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio ``10 log10(data_range**2 / MSE)`` in dB.

    The MSE is taken over all elements (the whole batch). Identical images
    give ``+inf``.

    Args:
        x: Image, ``(C, H, W)`` or ``(N, C, H, W)``.
        y: Image of the same shape.
        data_range: Difference between the largest and smallest possible value.

    Returns:
        0-d float tensor.
    """
    _check_pair(x, y)
    _check_data_range(data_range)
    mse = (_as_float(x) - _as_float(y)).square().mean()
    return 10.0 * torch.log10(data_range**2 / mse)


def _gaussian_window(dtype: torch.dtype, device: torch.device) -> Tensor:
    coords = torch.arange(_SSIM_WINDOW, dtype=dtype, device=device) - (_SSIM_WINDOW - 1) / 2
    window = torch.exp(-0.5 * (coords / _SSIM_SIGMA) ** 2)
    return window / window.sum()


def _blur_valid(maps: Tensor, window: Tensor) -> Tensor:
    """Separable Gaussian blur of ``(B, 1, H, W)`` maps, 'valid' part only.

    scikit-image blurs with padding and then crops the border the window
    reaches into; keeping only the valid part gives the same values.
    """
    maps = F.conv2d(maps, window.view(1, 1, -1, 1))
    return F.conv2d(maps, window.view(1, 1, 1, -1))


def ssim(x: Tensor, y: Tensor, *, data_range: float = 1.0) -> Tensor:
    """Structural similarity (Wang et al. 2004), mean over pixels, channels and batch.

    Gaussian window of 11 taps with sigma 1.5, ``K1 = 0.01``, ``K2 = 0.03``,
    population covariances: matches ``skimage.metrics.structural_similarity(
    ..., gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
    channel_axis=-1)``.

    Args:
        x: Image, ``(C, H, W)`` or ``(N, C, H, W)``, with H and W at least 11.
        y: Image of the same shape.
        data_range: Difference between the largest and smallest possible value.

    Returns:
        0-d float tensor, 1 for identical images.
    """
    _check_pair(x, y)
    _check_data_range(data_range)
    if min(x.shape[-2:]) < _SSIM_WINDOW:
        raise ValueError(f"ssim needs images of at least {_SSIM_WINDOW}x{_SSIM_WINDOW}, "
                         f"got shape {tuple(x.shape)}")
    x = _as_float(x)
    y = _as_float(y)
    height, width = x.shape[-2:]
    x = x.reshape(-1, 1, height, width)
    y = y.reshape(-1, 1, height, width)
    n = x.shape[0]

    window = _gaussian_window(x.dtype, x.device)
    mu_x, mu_y, e_xx, e_yy, e_xy = _blur_valid(torch.cat([x, y, x * x, y * y, x * y]), window).split(n)
    var_x = e_xx - mu_x.square()
    var_y = e_yy - mu_y.square()
    cov_xy = e_xy - mu_x * mu_y

    c1 = (_SSIM_K1 * data_range) ** 2
    c2 = (_SSIM_K2 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)
                / ((mu_x.square() + mu_y.square() + c1) * (var_x + var_y + c2)))
    return ssim_map.mean()


def rgb_to_y(x: Tensor) -> Tensor:
    """BT.601 luma of RGB images in [0, 1], as MATLAB's ``rgb2ycbcr``.

    ``Y = (16 + 65.481 R + 128.553 G + 24.966 B) / 255``, so Y lies in
    [16/255, 235/255].

    Args:
        x: RGB image, ``(3, H, W)`` or ``(N, 3, H, W)``.

    Returns:
        Luma with one channel, ``(1, H, W)`` or ``(N, 1, H, W)``.
    """
    if x.dim() not in (3, 4) or x.shape[-3] != 3:
        raise ValueError(f"rgb_to_y needs (3, H, W) or (N, 3, H, W) images, got shape {tuple(x.shape)}")
    x = _as_float(x)
    weights = torch.tensor(_Y_WEIGHTS, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return ((x * weights).sum(dim=-3, keepdim=True) + _Y_OFFSET) / 255.0


def psnr_y(x: Tensor, y: Tensor, *, shave: int = 0) -> Tensor:
    """PSNR on the luma channel with a border removed: the super-resolution protocol.

    RGB images are converted with :func:`rgb_to_y`; one-channel images are
    taken as luma already. Values are in [0, 1].

    Args:
        x: Image, ``(C, H, W)`` or ``(N, C, H, W)`` with C = 1 or 3.
        y: Image of the same shape.
        shave: Pixels removed from each border before scoring (usually the
            scale factor).

    Returns:
        0-d float tensor, in dB.
    """
    _check_pair(x, y)
    if isinstance(shave, bool) or not isinstance(shave, int) or shave < 0:
        raise ValueError(f"shave must be an int >= 0, got {shave!r}")
    if 2 * shave >= min(x.shape[-2:]):
        raise ValueError(f"shave={shave} leaves nothing of images of shape {tuple(x.shape)}")
    channels = x.shape[-3]
    if channels not in (1, 3):
        raise ValueError(f"psnr_y needs 1 or 3 channels, got shape {tuple(x.shape)}")
    if channels == 3:
        x, y = rgb_to_y(x), rgb_to_y(y)
    if shave:
        x = x[..., shave:-shave, shave:-shave]
        y = y[..., shave:-shave, shave:-shave]
    return psnr(x, y, data_range=1.0)
