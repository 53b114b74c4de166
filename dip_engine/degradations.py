"""Synthetic degradations of a clean image, for benchmarks and trials (torch-free).

Each takes an explicit numpy generator from :mod:`dip_engine.seeding`, a
stream of its own, so nothing the network is given (its input code, its
weights, its jitter) shares random numbers with the degradation it undoes.
Pixels are float32 ``(H, W, C)`` arrays in [0, 1].
"""

from __future__ import annotations

import io
import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image


def add_gaussian_noise(pixels: np.ndarray, sigma: float, *, rng: np.random.Generator) -> np.ndarray:
    """``clip(x + n)`` with ``n ~ N(0, (sigma / 255)^2)`` per pixel and channel."""
    noise = rng.standard_normal(pixels.shape, dtype=np.float32) * np.float32(sigma / 255.0)
    return np.clip(pixels + noise, 0.0, 1.0).astype(np.float32)


def bernoulli_mask(height: int, width: int, drop_fraction: float, *, rng: np.random.Generator) -> np.ndarray:
    """A random bool ``(H, W)`` mask, True = known, dropping ``drop_fraction`` of pixels.

    The same mask applies to every channel, as in the paper's 50%-missing-pixels experiment.
    """
    if not 0.0 < drop_fraction < 1.0:
        raise ValueError(f"drop_fraction must be in (0, 1), got {drop_fraction}")
    return rng.random((height, width)) >= drop_fraction


def gaussian_kernel(sigma: float) -> np.ndarray:
    """A normalised 2-D Gaussian, ``2 * ceil(3 sigma) + 1`` px square."""
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be > 0, got {sigma!r}")
    radius = max(1, math.ceil(3 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1, dtype=np.float64) / sigma) ** 2)
    kernel = np.outer(taps, taps)
    return (kernel / kernel.sum()).astype(np.float32)


def convolve(pixels: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """``k * x`` per channel (a true convolution), reflect-padded to keep the size.

    The same model as :class:`dip_engine.physics.Blur`, computed independently.
    """
    kh, kw = kernel.shape
    top, left = (kh - 1) // 2, (kw - 1) // 2
    padded = np.pad(pixels, ((kh - 1 - top, top), (kw - 1 - left, left), (0, 0)), mode="reflect")
    windows = sliding_window_view(padded, (kh, kw), axis=(0, 1))  # (H, W, C, kh, kw)
    flipped = kernel[::-1, ::-1].astype(np.float32)
    return np.einsum("hwcij,ij->hwc", windows, flipped, optimize=True).astype(np.float32)


def jpeg_roundtrip(pixels: np.ndarray, quality: int) -> np.ndarray:
    """Encode as a baseline JPEG at ``quality`` (1-95) and decode again."""
    if not 1 <= quality <= 95:
        raise ValueError(f"quality must be in 1..95, got {quality!r}")
    grey = pixels.shape[-1] == 1
    array = np.round(np.clip(pixels, 0, 1) * 255).astype(np.uint8)
    image = Image.fromarray(array[..., 0] if grey else array)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())), dtype=np.float32) / 255.0
    return decoded[..., None] if grey else decoded
