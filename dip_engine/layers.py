"""Layers whose CUDA backward would otherwise be non-deterministic, and the nets' resamplers.

On CUDA with ``torch.use_deterministic_algorithms(True)``, reflection and
replication padding and bilinear upsampling scatter their gradients with
``atomicAdd``. Here they run as slicing, ``cat`` and convolutions instead
(:func:`reflection_pad`, :func:`replication_pad`, :func:`upsample2x_bilinear`,
:func:`upsample2x_nearest`), so seeded runs repeat. Elsewhere the modules are
PyTorch's built-ins, bit for bit, except that padding keeps the input's
precision under autocast (:func:`pad`); no parameter or state-dict entry depends
on the path. The networks and the forward operators both use them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "DownsampleMode", "ReflectionPad2d", "Upsample2x", "UpsampleMode", "downsampler", "is_deterministic",
    "pad", "reflection_pad", "replication_pad", "upsample2x_bilinear", "upsample2x_nearest",
]

UpsampleMode = Literal["bilinear", "nearest"]
DownsampleMode = Literal["stride", "avg", "max", "lanczos2", "lanczos3"]


def reflection_pad(x: Tensor, padding: Sequence[int]) -> Tensor:
    """``F.pad(x, padding, mode="reflect")`` for an (N, C, H, W) ``x``, from slicing,
    ``flip`` and ``cat``, whose backward (unlike CUDA's) adds without atomics.
    ``padding`` is ``(left, right, top, bottom)``, each smaller than that side."""
    left, right, top, bottom = padding
    height, width = x.shape[-2:]
    if max(top, bottom) >= height or max(left, right) >= width:
        raise ValueError(f"reflection padding {tuple(padding)!r} must be smaller than the input "
                         f"size {height}x{width}")
    x = torch.cat([x[..., 1:top + 1, :].flip(-2), x,
                   x[..., height - 1 - bottom:height - 1, :].flip(-2)], dim=-2)
    return torch.cat([x[..., 1:left + 1].flip(-1), x, x[..., width - 1 - right:width - 1].flip(-1)],
                     dim=-1)


def replication_pad(x: Tensor, padding: Sequence[int]) -> Tensor:
    """``F.pad(x, padding, mode="replicate")`` for an (N, C, H, W) ``x``, from ``expand``
    and ``cat``, whose backward sums instead of scattering with atomics.
    ``padding`` is ``(left, right, top, bottom)``."""
    left, right, top, bottom = padding
    x = torch.cat([x[:, :, :1].expand(-1, -1, top, -1), x,
                   x[:, :, -1:].expand(-1, -1, bottom, -1)], dim=2)
    return torch.cat([x[..., :1].expand(-1, -1, -1, left), x,
                      x[..., -1:].expand(-1, -1, -1, right)], dim=3)


def upsample2x_bilinear(x: Tensor) -> Tensor:
    """``F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)`` as a
    transposed convolution, whose input gradient is a plain (deterministic) convolution.

    Output pixel ``2i`` is ``0.25 x[i-1] + 0.75 x[i]`` and ``2i+1`` is
    ``0.75 x[i] + 0.25 x[i+1]``, clamped at the borders: after a replicate pad
    of 1, a stride-2 transposed conv with taps (0.25, 0.75, 0.75, 0.25) gives
    exactly these, offset by 3 pixels on each side.
    """
    channels = x.shape[1]
    taps = torch.tensor([0.25, 0.75, 0.75, 0.25], dtype=x.dtype, device=x.device)
    kernel = (taps[:, None] * taps[None, :]).expand(channels, 1, 4, 4).contiguous()
    y = F.conv_transpose2d(replication_pad(x, (1, 1, 1, 1)), kernel, stride=2, groups=channels)
    return y[:, :, 3:-3, 3:-3]


def upsample2x_nearest(x: Tensor) -> Tensor:
    """``F.interpolate(x, scale_factor=2, mode="nearest")`` as ``expand`` and ``reshape``."""
    n, c, h, w = x.shape
    return x[:, :, :, None, :, None].expand(n, c, h, 2, w, 2).reshape(n, c, 2 * h, 2 * w)


def is_deterministic(x: Tensor) -> bool:
    # Only CUDA's kernels for these layers are non-deterministic; elsewhere the
    # built-ins are faster, and keeping them keeps CPU results bit-identical.
    return x.is_cuda and torch.are_deterministic_algorithms_enabled()


class ReflectionPad2d(nn.ReflectionPad2d):
    """``nn.ReflectionPad2d``, computed by :func:`pad`."""

    def forward(self, x: Tensor) -> Tensor:
        return pad(x, self.padding, "reflect")


class Upsample2x(nn.Upsample):
    """x2 ``nn.Upsample``, computed by :func:`upsample2x_bilinear` or
    :func:`upsample2x_nearest` in deterministic CUDA runs."""

    def __init__(self, mode: UpsampleMode) -> None:
        super().__init__(scale_factor=2, mode=mode, align_corners=False if mode == "bilinear" else None)

    def forward(self, x: Tensor) -> Tensor:
        if not is_deterministic(x):
            return super().forward(x)
        return upsample2x_bilinear(x) if self.mode == "bilinear" else upsample2x_nearest(x)


def _lanczos_kernel(support: int) -> Tensor:
    """The reference ``Downsampler``'s factor-2, phase-0.5 Lanczos kernel, summing to 1.

    Not ``physics.lanczos_kernel``: its width, fixed at ``4 * factor + 1``,
    would cut a support-3 kernel short (the reference's is ``6 * factor + 1``).
    """
    size = 4 * support  # width 4 * support + 1, one tap fewer at phase 0.5
    dist = (torch.arange(size, dtype=torch.float64) - (size - 1) / 2).abs() / 2  # never 0
    taps = support * torch.sin(math.pi * dist) * torch.sin(math.pi * dist / support) / (math.pi * dist) ** 2
    kernel = taps[:, None] * taps[None, :]
    return (kernel / kernel.sum()).to(torch.float32)


class _LanczosDownsample(nn.Module):
    """Per-channel Lanczos blur and x2 decimation, size-preserving (replicate padding).

    The reference uses a dense, trainable ``Conv2d`` initialised to this
    depthwise kernel; here the kernel is a fixed, non-persistent buffer, so
    it adds no parameters and no state-dict entries.
    """

    kernel: Tensor

    def __init__(self, support: int) -> None:
        super().__init__()
        self.register_buffer("kernel", _lanczos_kernel(support)[None, None], persistent=False)
        self.pad = (self.kernel.shape[-1] - 2) // 2

    def forward(self, x: Tensor) -> Tensor:
        x = pad(x, (self.pad,) * 4, "replicate")
        channels = x.shape[1]
        return F.conv2d(x, self.kernel.expand(channels, -1, -1, -1), stride=2, groups=channels)


def downsampler(mode: DownsampleMode) -> nn.Module:
    if mode == "avg":
        return nn.AvgPool2d(2, 2)
    if mode == "max":
        return nn.MaxPool2d(2, 2)
    return _LanczosDownsample(support=int(mode[-1]))


def pad(x: Tensor, padding: Sequence[int], mode: Literal["reflect", "replicate"]) -> Tensor:
    """``F.pad`` in reflect or replicate mode, atomic-free in deterministic CUDA runs, and in
    ``x``'s own precision under autocast."""
    if is_deterministic(x):
        return reflection_pad(x, padding) if mode == "reflect" else replication_pad(x, padding)
    device = x.device.type
    if not (torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device)):
        return F.pad(x, tuple(padding), mode=mode)
    # CPU autocast runs reflection and replication padding in float32: a bf16 net would cast
    # every padded activation up and back (about 8% of a 256 px step). Padding only copies
    # values, so it is exact in the input's own precision.
    with torch.autocast(device, enabled=False):
        return F.pad(x, tuple(padding), mode=mode)
