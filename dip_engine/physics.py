"""Forward operators ``y = A(x)``: the only thing in the loop that differs between the tasks.

Each operator is a small ``nn.Module`` whose tensors are registered buffers, so
``.to(device)`` moves them. ``A_adjoint`` defaults to the exact adjoint of the
(linear) ``A`` through a vector-Jacobian product; subclasses with a closed
form override it.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import pad

DownsampleKernel = Literal["lanczos2", "bilinear"]


class Physics(nn.Module):
    """A linear measurement operator ``y = A x``."""

    def A(self, x: Tensor) -> Tensor:  # noqa: N802 (the operator's conventional name)
        raise NotImplementedError

    def A_adjoint(self, y: Tensor) -> Tensor:  # noqa: N802
        x0 = torch.zeros(self.input_shape(y.shape), dtype=y.dtype, device=y.device)
        _, vjp = torch.func.vjp(self.A, x0)
        return vjp(y)[0]

    def input_shape(self, measurement_shape: torch.Size) -> torch.Size:
        """Shape of ``x`` for a measurement of this shape."""
        return measurement_shape

    @property
    def measured_fraction(self) -> float:
        """Fraction of the entries of ``y`` that carry data (for PSNR against ``y``)."""
        return 1.0

    def forward(self, x: Tensor) -> Tensor:
        return self.A(x)


class Denoising(Physics):
    """Identity operator: ``A x = x`` (the noise lives in ``y``)."""

    def A(self, x: Tensor) -> Tensor:  # noqa: N802
        return x

    def A_adjoint(self, y: Tensor) -> Tensor:  # noqa: N802
        return y


class Inpainting(Physics):
    """Elementwise mask: ``A x = M ⊙ x`` with ``M`` 1 on known pixels, 0 in holes.

    Args:
        mask: (H, W) boolean or {0, 1} tensor, shared by all channels.
    """

    mask: Tensor

    def __init__(self, mask: Tensor) -> None:
        super().__init__()
        if mask.dim() != 2:
            raise ValueError(f"mask must be (H, W), got shape {tuple(mask.shape)}")
        self.register_buffer("mask", mask.to(torch.float32)[None, None])

    def A(self, x: Tensor) -> Tensor:  # noqa: N802
        return x * self.mask

    def A_adjoint(self, y: Tensor) -> Tensor:  # noqa: N802
        return y * self.mask

    @property
    def measured_fraction(self) -> float:
        return float(self.mask.mean())


def lanczos_kernel(factor: int, *, support: int = 2, phase: float = 0.5) -> Tensor:
    """The DIP paper's Lanczos downsampling kernel, normalised to sum 1.

    Width ``4 * factor + 1``; with phase 0.5 the kernel is one tap shorter
    (``4 * factor`` square, e.g. 16x16 for x4) and centred between pixels, so
    stride-``factor`` sampling lands on the centre of each low-resolution pixel.
    """
    width = 4 * factor + 1
    size = width - 1 if phase == 0.5 else width
    center = (width + 1) / 2.0
    idx = torch.arange(1, size + 1, dtype=torch.float64)
    dist = (idx + 0.5 - center if phase == 0.5 else idx - center).abs() / factor
    # sinc(d) * sinc(d / support), written out as the reference code does
    safe = torch.where(dist == 0, torch.ones_like(dist), dist)
    taps = support * torch.sin(math.pi * safe) * torch.sin(math.pi * safe / support) / (math.pi**2 * safe**2)
    taps = torch.where(dist == 0, torch.ones_like(taps), taps)
    kernel = taps[:, None] * taps[None, :]
    return (kernel / kernel.sum()).to(torch.float32)


class Downsampling(Physics):
    """Blur-and-decimate: ``A x = (k * x)↓factor`` per channel.

    ``lanczos2`` is the paper's kernel (replication padding so that an H x W
    image maps to exactly H/factor x W/factor); ``bilinear`` is the seed
    code's plain bilinear resize.

    Args:
        factor: integer scale, e.g. 4.
        kernel: ``"lanczos2"`` (default) or ``"bilinear"``.
    """

    kernel: Tensor

    def __init__(self, factor: int, *, kernel: DownsampleKernel = "lanczos2") -> None:
        super().__init__()
        if factor < 2:
            raise ValueError(f"factor must be >= 2, got {factor}")
        if kernel not in ("lanczos2", "bilinear"):
            raise ValueError(f"kernel must be 'lanczos2' or 'bilinear', got {kernel!r}")
        self.factor = factor
        self.kernel_name = kernel
        weights = lanczos_kernel(factor) if kernel == "lanczos2" else torch.ones(1, 1)
        self.register_buffer("kernel", weights[None, None])
        size = weights.shape[0]
        self._pad = (size - 1) // 2 if size % 2 else (size - factor) // 2

    def A(self, x: Tensor) -> Tensor:  # noqa: N802
        if x.shape[-2] % self.factor or x.shape[-1] % self.factor:
            raise ValueError(f"input size {tuple(x.shape[-2:])} is not divisible by factor {self.factor}")
        if self.kernel_name == "bilinear":
            return F.interpolate(x, scale_factor=1 / self.factor, mode="bilinear", align_corners=False)
        channels = x.shape[1]
        padded = pad(x, (self._pad,) * 4, mode="replicate")
        weight = self.kernel.expand(channels, 1, -1, -1)
        return F.conv2d(padded, weight, stride=self.factor, groups=channels)

    def input_shape(self, measurement_shape: torch.Size) -> torch.Size:
        *lead, h, w = measurement_shape
        return torch.Size([*lead, h * self.factor, w * self.factor])


class Blur(Physics):
    """Convolution with a known kernel: ``A x = k * x`` per channel.

    A true convolution (the kernel is flipped for ``conv2d``'s correlation),
    with reflection padding so that ``y`` has the size of ``x``.

    Args:
        kernel: ``(h, w)`` non-negative weights; normalised by the caller (they
            usually sum to 1). Any size up to the image's; even sizes put the
            centre at ``((h - 1) // 2, (w - 1) // 2)``.
    """

    kernel: Tensor

    def __init__(self, kernel: Tensor) -> None:
        super().__init__()
        if kernel.dim() != 2:
            raise ValueError(f"kernel must be (h, w), got shape {tuple(kernel.shape)}")
        self.register_buffer("kernel", torch.flip(kernel.to(torch.float32), dims=(0, 1))[None, None])
        kh, kw = kernel.shape
        top, left = (kh - 1) // 2, (kw - 1) // 2
        # Padding for the flipped kernel: the side before the centre gets what lies after it.
        self._pad = (kw - 1 - left, left, kh - 1 - top, top)

    def A(self, x: Tensor) -> Tensor:  # noqa: N802
        channels = x.shape[1]
        padded = pad(x, self._pad, mode="reflect") if any(self._pad) else x
        return F.conv2d(padded, self.kernel.expand(channels, 1, -1, -1), groups=channels)
