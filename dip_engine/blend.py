"""Weigh the net's answer against a classical one on measured pixels held out of the fit (torch-free).

A few of the measured pixels are kept from the net. Where their values are independent of
the answers scored on them (exact, as inpainting's known pixels, or with noise of their own,
as denoising's white noise), the least-squares weight of the two answers there estimates the
weight on the clean image without one: the noise adds the same to every candidate's error.
The answer is ``alpha * net + (1 - alpha) * classical``, the classical answer made from all
the measured pixels. Inpainting weighs the net's fill against biharmonic interpolation
(fingerprint at 256 px: alpha 0.38, barbara: 1.00), denoising the net's output against
NL-means; the blend beats both where their errors differ (docs/benchmarks.md, "Inpainting:
the net's fill weighed against biharmonic", and "Denoising: the net weighed against NL-means").

With noisy measurements one estimate is not enough. The classical answer made *without* the
held-out pixels is worse on them than the one the blend uses, more so than the net is (it
never fitted them either), so its weight leans to the net; the classical answer made *with*
them, its dependence on their noise taken out by Stein's unbiased risk estimate (a
Monte-Carlo divergence), is scored against a net that never saw them, so its weight leans
to the classical answer. The two bracket the clean image's weight, and their mean is the
weight taken (:func:`weigh`, ``noisy``). :func:`classical_answers` makes what both need.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .noise import NOISE_FREE_SIGMA

__all__ = ["Answers", "Blend", "Stein", "blend_weight", "classical_answers", "hold_out", "stein", "weigh"]


def hold_out(known: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """(H, W) bool: about ``fraction`` of the ``known`` pixels, drawn independently of each other."""
    return known & (rng.random(known.shape) < fraction)


def blend_weight(net: np.ndarray, fill: np.ndarray, truth: np.ndarray, *, correction: float = 0.0) -> float:
    """The ``alpha`` in [0, 1] that minimises ``‖alpha * net + (1 - alpha) * fill - truth‖²``.

    ``correction`` is added to ``(net - fill) · (truth - fill)``: Stein's term for a ``fill``
    that depends on the noise in ``truth``. Where the two answers agree everywhere, the net's
    is taken (``1.0``)."""
    difference, residual = (net - fill).ravel(), (truth - fill).ravel()
    denominator = float(difference @ difference)
    if denominator == 0.0:
        return 1.0
    return float(np.clip((difference @ residual + correction) / denominator, 0.0, 1.0))


@dataclass(frozen=True)
class Stein:
    """The classical answer made from every pixel, and how much of its value on the held-out
    pixels follows their own measured values.

    Attributes:
        answer: the classical answer (H, W, C) made from all the measured pixels.
        divergence: the sum over the held-out entries of d answer_i / d y_i.
        noise_sigma: the noise level of the measured values (0-1 scale).
    """

    answer: np.ndarray
    divergence: float
    noise_sigma: float

    @property
    def correction(self) -> float:
        # E[(answer - y) · e] = -sigma² · divergence on the held entries: add it back.
        return self.noise_sigma**2 * self.divergence


def stein(classical: Callable[[np.ndarray], np.ndarray], y: np.ndarray, held: np.ndarray, noise_sigma: float,
          rng: np.random.Generator, *, answer: np.ndarray | None = None, epsilon: float = 0.01) -> Stein:
    """``classical(y)`` with its divergence on the ``held`` pixels, from one probe: ``y`` moved by
    ``epsilon`` times random signs on those pixels only (Ramani et al. 2008, Monte-Carlo SURE).

    Args:
        classical: y -> the classical answer from every pixel.
        y: (H, W, C) measurement.
        held: (H, W) bool, where the divergence is summed.
        noise_sigma: the noise level (0-1 scale).
        rng: the probe's signs.
        answer: ``classical(y)``, when already made.
        epsilon: the probe's step (0-1 scale).
    """
    base = classical(y) if answer is None else answer
    probe = np.where(held[..., None], rng.choice([-1.0, 1.0], size=y.shape), 0.0)
    moved = classical((y + epsilon * probe).astype(y.dtype))
    divergence = float((probe * (moved.astype(np.float64) - base)).sum() / epsilon)
    return Stein(answer=base, divergence=divergence, noise_sigma=noise_sigma)


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
        psnr_blend: the blend with ``alpha``, made without them.
        alpha_without: the weight against the classical answer made without them.
        alpha_stein: the weight against the one made with them, Stein-corrected (``None``: exact
            measurements, where ``alpha`` is ``alpha_without``).
    """

    alpha: float
    held_pixels: int
    psnr_net: float | None
    psnr_fill: float | None
    psnr_blend: float | None
    alpha_without: float
    alpha_stein: float | None = None

    def apply(self, net: np.ndarray, fill: np.ndarray) -> np.ndarray:
        return self.alpha * net + (1.0 - self.alpha) * fill


def weigh(net: np.ndarray, fill: np.ndarray, truth: np.ndarray, held: np.ndarray, *,
          noisy: Stein | None = None) -> Blend:
    """Choose ``alpha`` on the ``held`` pixels of (H, W, C) images.

    Args:
        net: the net's output.
        fill: the classical answer made without the held-out pixels.
        truth: the measurement (on the held-out pixels: exact, or with noise independent of the net).
        held: (H, W) bool, the held-out pixels.
        noisy: for noisy measurements, the classical answer from every pixel with its divergence:
            ``alpha`` is then the mean of the two weights (the module's docstring says why).
    """
    net_h, fill_h, truth_h = net[held].astype(np.float64), fill[held].astype(np.float64), truth[held].astype(np.float64)
    without = blend_weight(net_h, fill_h, truth_h)
    with_stein = None
    if noisy is not None:
        with_stein = blend_weight(net_h, noisy.answer[held].astype(np.float64), truth_h, correction=noisy.correction)
    alpha = without if with_stein is None else (without + with_stein) / 2
    return Blend(alpha=alpha, held_pixels=int(held.sum()), psnr_net=_psnr(net_h, truth_h),
                 psnr_fill=_psnr(fill_h, truth_h), psnr_blend=_psnr(alpha * net_h + (1 - alpha) * fill_h, truth_h),
                 alpha_without=without, alpha_stein=with_stein)


@dataclass(frozen=True)
class Answers:
    """The classical answers a net's output is weighed against and blended with.

    Attributes:
        without: made without the held-out pixels (scored on them).
        everything: made from every measured pixel (the one the blend uses).
        noisy: ``everything`` with its divergence on the held-out pixels, for noisy measurements
            (``None``: exact ones).
    """

    without: np.ndarray
    everything: np.ndarray
    noisy: Stein | None = None

    def weigh(self, net: np.ndarray, truth: np.ndarray, held: np.ndarray) -> Blend:
        return weigh(net, self.without, truth, held, noisy=self.noisy)

    def blend(self, net: np.ndarray, chosen: Blend) -> np.ndarray:
        return np.clip(chosen.apply(net, self.everything), 0.0, 1.0).astype(np.float32)


def classical_answers(classical: Callable[[np.ndarray, np.ndarray, float], np.ndarray], y: np.ndarray,
                      known: np.ndarray, held: np.ndarray, noise_sigma: float, rng: np.random.Generator) -> Answers:
    """The classical answers for a measurement whose ``held`` pixels were kept from the net.

    Args:
        classical: ``(y, known, noise_sigma) -> image`` from the ``known`` pixels only
            (``Problem.classical_answer``).
        y: (H, W, C) measurement.
        known: (H, W) bool, its measured pixels.
        held: (H, W) bool, the held-out ones among them.
        noise_sigma: the noise level of the measured values (0-1 scale): above
            ``NOISE_FREE_SIGMA`` the Stein-corrected weight is made too.
        rng: the Stein probe's signs.
    """
    kept = known & ~held
    without = classical(y * kept[..., None], kept, noise_sigma)
    everything = classical(y, known, noise_sigma)
    noisy = None
    if noise_sigma > NOISE_FREE_SIGMA:
        noisy = stein(lambda values: classical(values, known, noise_sigma), y, held, noise_sigma, rng,
                      answer=everything)
    return Answers(without=without, everything=everything, noisy=noisy)
