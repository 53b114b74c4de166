"""Weigh the net's answer against a classical one on measured pixels held out of the fit (torch-free).

A few of the measured pixels are kept from the net. Where their values are independent of
both answers there (exact, as inpainting's known pixels, or with noise of their own, as
denoising's white noise), the least-squares weight of the two answers on them is an
unbiased estimate of the weight on the clean image: the noise adds the same to every
candidate's error. The answer is ``alpha * net + (1 - alpha) * classical``, the classical
answer made from all the measured pixels. Inpainting weighs the net's fill against
biharmonic interpolation (fingerprint at 256 px: alpha 0.38, barbara: 1.00), denoising the
net's output against NL-means; the blend beats both where their errors differ
(docs/benchmarks.md, "Inpainting: the net's fill weighed against biharmonic", and
"Denoising: the net weighed against NL-means").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Blend", "blend_weight", "hold_out", "weigh"]


def hold_out(known: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """(H, W) bool: about ``fraction`` of the ``known`` pixels, drawn independently of each other."""
    return known & (rng.random(known.shape) < fraction)


def blend_weight(net: np.ndarray, fill: np.ndarray, truth: np.ndarray) -> float:
    """The ``alpha`` in [0, 1] that minimises ``‖alpha * net + (1 - alpha) * fill - truth‖²``.

    Where the two fills agree everywhere, the net's is taken (``1.0``)."""
    difference, residual = (net - fill).ravel(), (truth - fill).ravel()
    denominator = float(difference @ difference)
    if denominator == 0.0:
        return 1.0
    return float(np.clip((difference @ residual) / denominator, 0.0, 1.0))


def _psnr(estimate: np.ndarray, truth: np.ndarray) -> float | None:
    # None for an exact match: metrics.json stays strict JSON (no Infinity).
    mse = float(np.mean((estimate.astype(np.float64) - truth) ** 2))
    return None if mse == 0 else 10 * math.log10(1.0 / mse)


@dataclass(frozen=True)
class Blend:
    """The weight chosen on the held-out pixels, and how each answer scored against their measured
    values (dB, no reference; ``None``: exact; with noisy measurements, the noise counts in).

    Attributes:
        alpha: the net's weight.
        held_pixels: how many pixels were held out.
        psnr_net: the net's answer on them.
        psnr_fill: the classical answer made without them.
        psnr_blend: the blend with ``alpha``.
    """

    alpha: float
    held_pixels: int
    psnr_net: float | None
    psnr_fill: float | None
    psnr_blend: float | None

    def apply(self, net: np.ndarray, fill: np.ndarray) -> np.ndarray:
        return self.alpha * net + (1.0 - self.alpha) * fill


def weigh(net: np.ndarray, fill: np.ndarray, truth: np.ndarray, held: np.ndarray) -> Blend:
    """Choose ``alpha`` on the ``held`` pixels of (H, W, C) images.

    Args:
        net: the net's output.
        fill: the classical answer made without the held-out pixels.
        truth: the measurement (on the held-out pixels: exact, or with noise independent of both answers).
        held: (H, W) bool, the held-out pixels.
    """
    net_h, fill_h, truth_h = net[held].astype(np.float64), fill[held].astype(np.float64), truth[held].astype(np.float64)
    alpha = blend_weight(net_h, fill_h, truth_h)
    return Blend(alpha=alpha, held_pixels=int(held.sum()), psnr_net=_psnr(net_h, truth_h),
                 psnr_fill=_psnr(fill_h, truth_h), psnr_blend=_psnr(alpha * net_h + (1 - alpha) * fill_h, truth_h))
