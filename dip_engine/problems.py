"""Task name -> forward operator, and how a task's measurement is built from its inputs.

The three tasks differ here and nowhere else: ``OPERATORS`` maps a name to an
operator factory and ``build_measurement`` turns the uploaded files into the
measurement ``y`` (plus a reference when the measurement is synthesised from a
clean image).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import InputError
from .io import LoadedImage, load_image, load_mask, resize_image
from .physics import Denoising, Downsampling, Inpainting, Physics, bernoulli_mask
from .spec import RestoreSpec, TaskName

OperatorFactory = Callable[..., Physics]

OPERATORS: dict[str, OperatorFactory] = {
    "denoise": lambda **_: Denoising(),
    "superres": lambda *, scale, kernel="lanczos2", **_: Downsampling(scale, kernel=kernel),
    "inpaint": lambda *, mask, **_: Inpainting(mask),
}


def make_physics(task: TaskName, *, scale: int = 4, kernel: str = "lanczos2", mask: torch.Tensor | None = None) -> Physics:
    """Build the forward operator of ``task``."""
    if task not in OPERATORS:
        raise ValueError(f"task must be one of {sorted(OPERATORS)}, got {task!r}")
    return OPERATORS[task](scale=scale, kernel=kernel, mask=mask)


@dataclass
class Measurement:
    """A task's data, as (H, W, C) float32 arrays in [0, 1].

    Attributes:
        y: what the network must explain through ``A``.
        output_size: (height, width) of the restoration.
        mask: (H, W) bool, True = known (inpainting only).
        reference: clean image at output size, when known.
        alpha: alpha channel at output size, passed through untouched.
        degraded: the degraded input as a user would look at it (for input.png).
    """

    y: np.ndarray
    output_size: tuple[int, int]
    mask: np.ndarray | None = None
    reference: np.ndarray | None = None
    alpha: np.ndarray | None = None
    degraded: np.ndarray | None = None

    @property
    def channels(self) -> int:
        return self.y.shape[-1]

    @property
    def scattered_mask(self) -> bool:
        """True for random-pixel masks (most holes touch a known pixel), False for text/blobs."""
        if self.mask is None:
            return False
        holes = ~self.mask
        if not holes.any():
            return False
        padded = np.pad(self.mask, 1, mode="edge")
        neighbour_known = padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:]
        return float(neighbour_known[holes].mean()) >= 0.8


def _match_channels(image: np.ndarray, channels: int) -> np.ndarray:
    if image.shape[-1] == channels:
        return image
    if channels == 1:
        return image.mean(axis=-1, keepdims=True)
    return np.repeat(image, channels, axis=-1)


def _reference(path: Path | None, size: tuple[int, int], channels: int, max_pixels: int | None) -> np.ndarray | None:
    if path is None:
        return None
    ref = load_image(path, max_pixels=max_pixels)
    if ref.pixels.shape[:2] != size:
        raise InputError(
            "reference_size_mismatch",
            f"reference is {ref.pixels.shape[1]}x{ref.pixels.shape[0]} px but the output is {size[1]}x{size[0]} px",
        )
    return _match_channels(ref.pixels, channels)


def build_measurement(
    spec: RestoreSpec,
    image: Path,
    *,
    mask: Path | None = None,
    reference: Path | None = None,
    max_pixels: int | None = None,
) -> Measurement:
    """Load the inputs of ``spec`` and build its measurement.

    Synthetic degradations (noise, downsampling, dropped pixels) are seeded by
    ``spec.seed`` and make the clean input the reference.
    """
    loaded: LoadedImage = load_image(image, max_pixels=max_pixels)
    pixels = loaded.pixels
    height, width, channels = pixels.shape
    generator = torch.Generator().manual_seed(spec.seed)

    if spec.task == "denoise":
        if mask is not None:
            raise InputError("mask_not_allowed", "a mask is only used for inpainting, not for denoise")
        y, ref = pixels, _reference(reference, (height, width), channels, max_pixels)
        if spec.add_noise_sigma:
            noise = torch.randn(pixels.shape, generator=generator).numpy() * (spec.add_noise_sigma / 255.0)
            y, ref = np.clip(pixels + noise, 0.0, 1.0).astype(np.float32), pixels
        return Measurement(y=y, output_size=(height, width), reference=ref, alpha=loaded.alpha, degraded=y)

    if spec.task == "superres":
        if mask is not None:
            raise InputError("mask_not_allowed", "a mask is only used for inpainting, not for superres")
        if spec.from_hr:
            if height % spec.scale or width % spec.scale:
                raise InputError("invalid_parameter", f"from_hr needs a size divisible by {spec.scale}, got {width}x{height}")
            # The paper's protocol: the low-resolution input is a Lanczos resize of the HR image.
            y = resize_image(pixels, size=(width // spec.scale, height // spec.scale), method="lanczos")
            return Measurement(y=np.clip(y, 0, 1), output_size=(height, width), reference=pixels, alpha=loaded.alpha, degraded=y)
        size = (height * spec.scale, width * spec.scale)
        alpha = None
        if loaded.alpha is not None:
            alpha = np.clip(resize_image(loaded.alpha[..., None], size=(size[1], size[0]), method="bicubic")[..., 0], 0, 1)
        ref = _reference(reference, size, channels, max_pixels)
        return Measurement(y=pixels, output_size=size, reference=ref, alpha=alpha, degraded=pixels)

    if spec.task == "inpaint":
        if mask is not None and spec.drop_fraction is not None:
            raise InputError("invalid_parameter", "give either a mask file or drop_fraction, not both")
        if mask is not None:
            known = load_mask(mask, size=(width, height))
            ref = _reference(reference, (height, width), channels, max_pixels)
        elif spec.drop_fraction is not None:
            known = bernoulli_mask(height, width, spec.drop_fraction, generator=generator).numpy()
            ref = pixels
        else:
            raise InputError("mask_required", "inpainting needs a mask file or a drop_fraction")
        y = (pixels * known[..., None]).astype(np.float32)
        return Measurement(y=y, output_size=(height, width), mask=known, reference=ref, alpha=loaded.alpha, degraded=y)

    raise InputError("invalid_parameter", f"task must be one of {sorted(OPERATORS)}, got {spec.task!r}")
