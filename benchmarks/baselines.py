"""Classical baselines for benchmarks/quality.py (scikit-image), and the degradations it makes itself.

Every baseline returns a list of :class:`Candidate` (one per method, each at the
setting that scored best against the clean image when the method has a grid:
an *oracle-tuned* baseline, generous to it); the benchmark row's baseline is
the best candidate. Pixels are float ``(H, W, C)`` arrays in [0, 1].
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

RL_ITERATIONS: tuple[int, ...] = (5, 10, 20, 30, 50, 100)
WIENER_BALANCES: tuple[float, ...] = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)
TV_WEIGHTS: tuple[float, ...] = (0.005, 0.01, 0.02, 0.03, 0.05, 0.08, 0.12, 0.2)


@dataclass(frozen=True)
class Candidate:
    """One baseline method at its chosen setting.

    Attributes:
        name: method (``rl``, ``wiener``, ``input``...).
        psnr: dB against the clean image.
        setting: the chosen grid value, as text ("" when the method has none).
        seconds: wall time of one run at that setting.
        output: the restored image.
    """

    name: str
    psnr: float
    setting: str
    seconds: float
    output: np.ndarray

    def label(self) -> str:
        return f"{self.name} {self.psnr:.2f}" + (f" ({self.setting})" if self.setting else "")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)))


def best(candidates: Sequence[Candidate]) -> Candidate:
    return max(candidates, key=lambda c: c.psnr)


def _timed(fn: Callable[[], np.ndarray]) -> tuple[np.ndarray, float]:
    started = time.perf_counter()
    out = fn()
    return np.clip(out, 0.0, 1.0), time.perf_counter() - started


def _grid(name: str, clean: np.ndarray, values: Sequence, run: Callable[[object], np.ndarray],
          fmt: Callable[[object], str]) -> Candidate:
    """Run ``run(value)`` for every grid value; keep the one closest to ``clean`` (oracle)."""
    chosen = None
    for value in values:
        out, seconds = _timed(lambda: run(value))
        score = psnr(out, clean)
        if chosen is None or score > chosen.psnr:
            chosen = Candidate(name, score, fmt(value), seconds, out)
    assert chosen is not None
    return chosen


def identity(name: str, degraded: np.ndarray, clean: np.ndarray) -> Candidate:
    """The degraded input itself, as a baseline."""
    return Candidate(name, psnr(degraded, clean), "", 0.0, degraded)


# -- degradations made by the benchmark itself, independently of the engine's operators ------------


def blur_valid(pixels: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """True convolution of each channel with ``kernel``, only where the kernel fits ("valid").

    The result is ``kernel - 1`` px smaller than ``pixels`` on each axis: every
    output pixel is blurred from real image content, with no boundary model.
    """
    from scipy.signal import convolve2d

    k = kernel.astype(np.float64)
    return np.stack([convolve2d(pixels[..., c].astype(np.float64), k, mode="valid")
                     for c in range(pixels.shape[-1])], axis=-1)


def jpeg_bytes(pixels: np.ndarray, quality: int) -> bytes:
    """Baseline JPEG (PIL, 4:2:0 for colour) of 8-bit-exact pixels."""
    array = np.round(np.clip(pixels, 0, 1) * 255).astype(np.uint8)
    image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


# -- baselines per task ------------------------------------------------------------------------


def nlm(degraded: np.ndarray, clean: np.ndarray, sigma: float) -> list[Candidate]:
    """Non-local means at the textbook setting for a known sigma (not oracle-tuned)."""
    from skimage.restoration import denoise_nl_means

    s = sigma / 255.0
    colour = degraded.shape[-1] == 3
    img = degraded if colour else degraded[..., 0]
    out, seconds = _timed(lambda: denoise_nl_means(img, h=0.8 * s, sigma=s, fast_mode=False, patch_size=5,
                                                   patch_distance=6, channel_axis=-1 if colour else None))
    out = out.reshape(clean.shape)
    return [Candidate("nlm", psnr(out, clean), "", seconds, out)]


def biharmonic(degraded: np.ndarray, clean: np.ndarray, known: np.ndarray) -> list[Candidate]:
    from skimage.restoration import inpaint_biharmonic

    out, seconds = _timed(lambda: inpaint_biharmonic(degraded, ~known, channel_axis=-1))
    return [Candidate("biharmonic", psnr(out, clean), "", seconds, out)]


def _per_channel_padded(image: np.ndarray, kernel: np.ndarray, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``fn`` on each channel, symmetric-padded by twice the kernel size and cropped back.

    Both deconvolutions assume something at the border (RL: zeros, Wiener: a periodic image);
    padding with the mirrored image is the usual remedy and is worth several dB at the edges.
    """
    pad = 2 * max(kernel.shape)
    planes = []
    for c in range(image.shape[-1]):
        padded = np.pad(image[..., c].astype(np.float64), pad, mode="symmetric")
        planes.append(fn(padded)[pad:-pad, pad:-pad])
    return np.stack(planes, axis=-1)


def deconvolution(degraded: np.ndarray, clean: np.ndarray, kernel: np.ndarray) -> list[Candidate]:
    """Richardson-Lucy and Wiener with the true PSF, each oracle-tuned, and the blurred input."""
    from skimage.restoration import richardson_lucy, wiener

    psf = kernel.astype(np.float64)
    rl = _grid("rl", clean, RL_ITERATIONS, lambda n: _per_channel_padded(
        degraded, psf, lambda x: richardson_lucy(x, psf, num_iter=n, clip=False)), lambda n: f"{n} it")
    wn = _grid("wiener", clean, WIENER_BALANCES, lambda b: _per_channel_padded(
        degraded, psf, lambda x: wiener(x, psf, b, clip=False)), lambda b: f"balance {b:g}")
    return [rl, wn, identity("blurred", degraded, clean)]


def dejpeg(degraded: np.ndarray, clean: np.ndarray) -> list[Candidate]:
    """Total-variation denoising (Chambolle), oracle-tuned weight, and the JPEG itself."""
    from skimage.restoration import denoise_tv_chambolle

    colour = degraded.shape[-1] == 3
    img = degraded if colour else degraded[..., 0]
    tv = _grid("tv", clean, TV_WEIGHTS, lambda w: denoise_tv_chambolle(
        img, weight=w, channel_axis=-1 if colour else None).reshape(clean.shape), lambda w: f"weight {w:g}")
    return [tv, identity("jpeg", degraded, clean)]


def kernel_radius(kernel: np.ndarray) -> int:
    return math.ceil((max(kernel.shape) - 1) / 2)
