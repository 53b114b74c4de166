"""How noisy is a measurement? A wavelet estimate of the noise level (torch-free).

Donoho and Johnstone's robust estimator: the finest diagonal Haar detail
coefficients of a natural image are mostly noise, and their median absolute
value divided by 0.6745 estimates the noise's standard deviation. Only 2x2
blocks whose four pixels are all measured count, so the holes of an
inpainting mask do not pass for structure. Clean images give a small but
non-zero value (their own fine texture); the stopping rules use it to tell a
noisy measurement from a clean one.
"""

from __future__ import annotations

import numpy as np

# The median of |N(0, 1)|: turns a median absolute deviation into a standard deviation.
_MAD_TO_SIGMA = 0.6744897501960817
# At or below this noise level (given, assumed by the task, or the wavelet estimate: 0.005-0.02 on clean photos) a
# measurement counts as exact: inpainting keeps its known pixels, and the ETA expects no early stop.
NOISE_FREE_SIGMA = 5 / 255


def estimate_noise_sigma(y: np.ndarray, *, known: np.ndarray | None = None) -> float:
    """The noise standard deviation of ``y`` (float, same scale as ``y``).

    Args:
        y: ``(H, W)`` or ``(H, W, C)`` image.
        known: optional ``(H, W)`` bool mask of measured pixels (inpainting).

    Returns:
        The mean over channels of the per-channel estimates; 0.0 when fewer
        than 16 fully measured 2x2 blocks exist.
    """
    array = np.asarray(y, dtype=np.float64)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3:
        raise ValueError(f"y must be (H, W) or (H, W, C), got shape {np.shape(y)}")
    height, width = (array.shape[0] // 2) * 2, (array.shape[1] // 2) * 2
    blocks = array[:height, :width].reshape(height // 2, 2, width // 2, 2, -1)
    # Orthonormal Haar HH: (a - b - c + d) / 2 over each 2x2 block.
    diagonal = (blocks[:, 0, :, 0] - blocks[:, 0, :, 1] - blocks[:, 1, :, 0] + blocks[:, 1, :, 1]) / 2.0
    usable = np.ones(diagonal.shape[:2], dtype=bool)
    if known is not None:
        mask = np.asarray(known, dtype=bool)[:height, :width].reshape(height // 2, 2, width // 2, 2)
        usable = mask.all(axis=(1, 3))
    if usable.sum() < 16:
        return 0.0
    per_channel = [float(np.median(np.abs(diagonal[..., c][usable]))) / _MAD_TO_SIGMA for c in range(diagonal.shape[-1])]
    return float(np.mean(per_channel))
