"""Generator networks for Deep Image Prior, built by name.

``skip`` is the hourglass with skip connections of Ulyanov et al. (reference
code: ``models/skip.py``, ``models/common.py`` and ``models/downsampler.py``
of DmitryUlyanov/deep-image-prior), rebuilt module for module so that
parameter counts and behaviour match the paper. ``unet`` is a small U-Net for
fast CPU runs. Build either with :func:`get_net`, or from a run's
:class:`~dip_engine.config.NetConfig` with :func:`build_from_config`::

    net = get_net("skip", in_channels=32, out_channels=3)
    net.size_multiple  # 32: input height and width must be multiples of it

Batch normalisation never keeps running statistics: DIP fits one image, in a
batch of one, and evaluation must compute exactly what training computes.

Padding and upsampling come from :mod:`dip_engine.layers`, which keeps
seeded CUDA runs repeatable in deterministic mode.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Literal, get_args

import torch
from torch import Tensor, nn

from .config import NetConfig
from .layers import (DownsampleMode, ReflectionPad2d, Upsample2x, UpsampleMode, downsampler, reflection_pad,
                     replication_pad, upsample2x_bilinear, upsample2x_nearest)

__all__ = [
    "Activation", "Concat", "DownsampleMode", "NETS", "PadMode", "SkipNet", "UNet", "UpsampleMode",
    "build_from_config", "count_parameters", "get_net", "list_nets", "reflection_pad",
    "replication_pad", "skip", "unet", "upsample2x_bilinear", "upsample2x_nearest",
]

PadMode = Literal["reflection", "zero"]
Activation = Literal["LeakyReLU", "Swish", "ELU", "none"]


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, track_running_stats=False)


def _act(kind: Activation = "LeakyReLU") -> nn.Module:
    if kind == "LeakyReLU":
        return nn.LeakyReLU(0.2, inplace=True)
    if kind == "Swish":
        return nn.SiLU()  # x * sigmoid(x), the reference's Swish
    return nn.ELU() if kind == "ELU" else nn.Identity()


def _conv(in_ch: int, out_ch: int, kernel: int, *, stride: int = 1, pad: PadMode,
          downsample: DownsampleMode = "stride") -> nn.Module:
    """``kernel``x``kernel`` convolution that keeps the size (up to ``stride``).

    With a ``downsample`` other than ``"stride"``, a stride > 1 becomes a
    stride-1 conv followed by that downsampler, as in the reference ``conv``.
    """
    pooled = stride > 1 and downsample != "stride"
    if pooled:
        stride = 1
    to_pad = (kernel - 1) // 2
    if pad == "reflection" and to_pad > 0:
        # Reflection avoids the dark borders that zero padding teaches the net.
        layers = [ReflectionPad2d(to_pad), nn.Conv2d(in_ch, out_ch, kernel, stride)]
    else:
        layers = [nn.Conv2d(in_ch, out_ch, kernel, stride, padding=to_pad)]
    if pooled:
        layers.append(downsampler(downsample))
    return layers[0] if len(layers) == 1 else nn.Sequential(*layers)


def _conv_bn_act(in_ch: int, out_ch: int, kernel: int, *, stride: int = 1, pad: PadMode,
                 downsample: DownsampleMode = "stride",
                 activation: Activation = "LeakyReLU") -> list[nn.Module]:
    return [_conv(in_ch, out_ch, kernel, stride=stride, pad=pad, downsample=downsample),
            _bn(out_ch), _act(activation)]


def _center_crop_cat(tensors: Sequence[Tensor]) -> Tensor:
    """Concatenate along channels, centre-cropping all to the smallest H and W."""
    height = min(t.shape[2] for t in tensors)
    width = min(t.shape[3] for t in tensors)
    cropped = []
    for t in tensors:
        top = (t.shape[2] - height) // 2
        left = (t.shape[3] - width) // 2
        cropped.append(t[:, :, top:top + height, left:left + width])
    return torch.cat(cropped, dim=1)


class Concat(nn.Module):
    """Runs every branch on the same input and concatenates the results on channels.

    Outputs of different sizes (an odd size halved then doubled) are
    centre-cropped to the smallest, as in the reference code.
    """

    def __init__(self, *branches: nn.Module) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x: Tensor) -> Tensor:
        return _center_crop_cat([_dense_grad(branch(x)) for branch in self.branches])


def _dense_grad(t: Tensor) -> Tensor:
    """``t``, whose gradient is made dense in ``t``'s own layout on its way back.

    The concatenation hands each branch a channel slice of its gradient. In channels-last
    memory a slice is strided, and CPU kernels take slow paths on it: the bilinear
    upsampling's backward ran 3x slower on one (about 7% of a 256 px step); the copy costs
    a twentieth of that.
    """
    if not t.requires_grad:
        return t
    channels_last = t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    t.register_hook(lambda grad: grad.contiguous(memory_format=layout))
    return t


# --------------------------------------------------------------------------- validation


def _check_positive(name: str, value: int, *, allow_zero: bool = False) -> None:
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def _check_channels(name: str, values: Sequence[int], *, allow_zero: bool = False) -> tuple[int, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) == 0:
        raise ValueError(f"{name} must be a non-empty sequence of ints, got {values!r}")
    for v in values:
        _check_positive(f"{name} entry", v, allow_zero=allow_zero)
    return tuple(values)


def _check_kernel(name: str, value: int) -> None:
    # An even kernel cannot be padded symmetrically, so H and W would drift.
    _check_positive(name, value)
    if value % 2 == 0:
        raise ValueError(f"{name} must be odd, got {value!r}")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def _check_io(in_channels: int, out_channels: int, upsample_mode: str, pad: str) -> None:
    _check_positive("in_channels", in_channels)
    _check_positive("out_channels", out_channels)
    _check_choice("upsample_mode", upsample_mode, get_args(UpsampleMode))
    _check_choice("pad", pad, get_args(PadMode))


# --------------------------------------------------------------------------- skip


class SkipNet(nn.Sequential):
    """The skip hourglass: a nested ``nn.Sequential`` with a ``size_multiple``."""

    def __init__(self, *modules: nn.Module, size_multiple: int) -> None:
        super().__init__(*modules)
        self.size_multiple = size_multiple


@dataclass(frozen=True)
class _SkipOptions:
    """The per-net settings every level of :func:`skip` shares."""

    kernel_down: int
    kernel_up: int
    kernel_skip: int
    upsample_mode: UpsampleMode
    pad: PadMode
    need1x1_up: bool
    downsample_mode: DownsampleMode
    activation: Activation


def skip(
    in_channels: int = 32,
    out_channels: int = 3,
    *,
    channels_down: Sequence[int] = (128,) * 5,
    channels_up: Sequence[int] = (128,) * 5,
    channels_skip: Sequence[int] = (4,) * 5,
    kernel_down: int = 3,
    kernel_up: int = 3,
    kernel_skip: int = 1,
    upsample_mode: UpsampleMode = "bilinear",
    pad: PadMode = "reflection",
    need_sigmoid: bool = True,
    need1x1_up: bool = True,
    downsample_mode: DownsampleMode = "stride",
    activation: Activation = "LeakyReLU",
) -> SkipNet:
    """The Deep Image Prior hourglass with skip connections.

    Level ``i`` maps its input ``x`` to
    ``up_i(BN(Concat(skip_i(x), upsample(deeper_i(x)))))`` where ``deeper_i``
    is a stride-2 conv, a conv, and level ``i + 1`` nested inside it; a final
    1x1 conv (and sigmoid) gives the image. The defaults (32 input channels,
    5 levels of 128, skips of 4) have 2,217,831 parameters, as in the paper.

    Args:
        in_channels: Channels of the input code ``z``.
        out_channels: Channels of the output image.
        channels_down: Encoder width per level; its length is the depth.
        channels_up: Decoder width per level (same length).
        channels_skip: Skip-branch width per level (same length); 0 drops
            that level's skip branch.
        kernel_down: Odd kernel size of the encoder convolutions.
        kernel_up: Odd kernel size of the decoder convolutions.
        kernel_skip: Odd kernel size of the skip convolutions.
        upsample_mode: ``"bilinear"`` or ``"nearest"``.
        pad: ``"reflection"`` or ``"zero"``.
        need_sigmoid: End with a sigmoid, for images in [0, 1].
        need1x1_up: Add a 1x1 conv block after each decoder conv.
        downsample_mode: ``"stride"`` (a stride-2 conv) or a stride-1 conv
            followed by ``"avg"`` or ``"max"`` 2x2 pooling or a fixed
            ``"lanczos2"``/``"lanczos3"`` blur-and-decimate.
        activation: ``"LeakyReLU"`` (slope 0.2), ``"Swish"`` (SiLU), ``"ELU"``
            or ``"none"``.

    Returns:
        A :class:`SkipNet` whose ``size_multiple`` is ``2 ** depth``.

    Raises:
        ValueError: On a bad option, naming it and its value.
    """
    _check_io(in_channels, out_channels, upsample_mode, pad)
    down = _check_channels("channels_down", channels_down)
    up = _check_channels("channels_up", channels_up)
    skips = _check_channels("channels_skip", channels_skip, allow_zero=True)
    if not len(down) == len(up) == len(skips):
        raise ValueError(
            "channels_down, channels_up and channels_skip must have the same length, got "
            f"{len(down)}, {len(up)} and {len(skips)} ({down!r}, {up!r}, {skips!r})")
    for name, kernel in (("kernel_down", kernel_down), ("kernel_up", kernel_up),
                         ("kernel_skip", kernel_skip)):
        _check_kernel(name, kernel)
    _check_choice("downsample_mode", downsample_mode, get_args(DownsampleMode))
    _check_choice("activation", activation, get_args(Activation))
    options = _SkipOptions(kernel_down=kernel_down, kernel_up=kernel_up, kernel_skip=kernel_skip,
                           upsample_mode=upsample_mode, pad=pad, need1x1_up=bool(need1x1_up),
                           downsample_mode=downsample_mode, activation=activation)

    body = _skip_level(0, in_channels, down, up, skips, options)
    head: list[nn.Module] = [_conv(up[0], out_channels, 1, pad=pad)]
    if need_sigmoid:
        head.append(nn.Sigmoid())
    return SkipNet(*body, *head, size_multiple=2 ** len(down))


def _skip_level(i: int, in_ch: int, down: tuple[int, ...], up: tuple[int, ...],
                skips: tuple[int, ...], opt: _SkipOptions) -> list[nn.Module]:
    """Modules of level ``i`` and, recursively, of every level below it."""
    deepest = i == len(down) - 1
    act, pad = opt.activation, opt.pad
    deeper: list[nn.Module] = [
        *_conv_bn_act(in_ch, down[i], opt.kernel_down, stride=2, pad=pad,
                      downsample=opt.downsample_mode, activation=act),
        *_conv_bn_act(down[i], down[i], opt.kernel_down, pad=pad, activation=act),
    ]
    if not deepest:
        deeper.append(nn.Sequential(*_skip_level(i + 1, down[i], down, up, skips, opt)))
    deeper.append(Upsample2x(opt.upsample_mode))
    deeper_out = down[i] if deepest else up[i + 1]

    if skips[i]:
        merged: nn.Module = Concat(
            nn.Sequential(*_conv_bn_act(in_ch, skips[i], opt.kernel_skip, pad=pad, activation=act)),
            nn.Sequential(*deeper))
    else:
        merged = nn.Sequential(*deeper)
    layers = [merged, _bn(skips[i] + deeper_out),
              *_conv_bn_act(skips[i] + deeper_out, up[i], opt.kernel_up, pad=pad, activation=act)]
    if opt.need1x1_up:
        layers += _conv_bn_act(up[i], up[i], 1, pad=pad, activation=act)
    return layers


# --------------------------------------------------------------------------- unet


class UNet(nn.Module):
    """Encoder-decoder with concatenated skip connections.

    Each encoder level halves the size with a stride-2 conv block; each
    decoder level upsamples, concatenates the encoder features of that size
    and applies a conv block.
    """

    def __init__(self, in_channels: int, out_channels: int, *, channels: tuple[int, ...],
                 upsample_mode: UpsampleMode, pad: PadMode, need_sigmoid: bool) -> None:
        super().__init__()
        self.size_multiple = 2 ** (len(channels) - 1)
        self.inc = nn.Sequential(*_conv_bn_act(in_channels, channels[0], 3, pad=pad),
                                 *_conv_bn_act(channels[0], channels[0], 3, pad=pad))
        self.downs = nn.ModuleList(
            nn.Sequential(*_conv_bn_act(c_in, c_out, 3, stride=2, pad=pad),
                          *_conv_bn_act(c_out, c_out, 3, pad=pad))
            for c_in, c_out in zip(channels[:-1], channels[1:]))
        self.upsample = Upsample2x(upsample_mode)
        self.ups = nn.ModuleList(
            nn.Sequential(*_conv_bn_act(c_deep + c_skip, c_skip, 3, pad=pad),
                          *_conv_bn_act(c_skip, c_skip, 3, pad=pad))
            for c_skip, c_deep in zip(channels[:-1], channels[1:]))
        head: list[nn.Module] = [_conv(channels[0], out_channels, 1, pad=pad)]
        if need_sigmoid:
            head.append(nn.Sigmoid())
        self.head = nn.Sequential(*head)

    def forward(self, x: Tensor) -> Tensor:
        features = [self.inc(x)]
        for down in self.downs:
            features.append(down(features[-1]))
        y = features.pop()
        for up in reversed(self.ups):
            y = up(_center_crop_cat([features.pop(), self.upsample(y)]))
        return self.head(y)


def unet(
    in_channels: int = 32,
    out_channels: int = 3,
    *,
    channels: Sequence[int] = (16, 32, 64, 128),
    upsample_mode: UpsampleMode = "bilinear",
    pad: PadMode = "reflection",
    need_sigmoid: bool = True,
) -> UNet:
    """A small U-Net, much cheaper than :func:`skip`, for quick CPU runs.

    Args:
        in_channels: Channels of the input code ``z``.
        out_channels: Channels of the output image.
        channels: Width per level, finest first; ``len(channels) - 1``
            downsamplings.
        upsample_mode: ``"bilinear"`` or ``"nearest"``.
        pad: ``"reflection"`` or ``"zero"``.
        need_sigmoid: End with a sigmoid, for images in [0, 1].

    Returns:
        A :class:`UNet` whose ``size_multiple`` is ``2 ** (len(channels) - 1)``.

    Raises:
        ValueError: On a bad option, naming it and its value.
    """
    _check_io(in_channels, out_channels, upsample_mode, pad)
    widths = _check_channels("channels", channels)
    return UNet(in_channels, out_channels, channels=widths, upsample_mode=upsample_mode, pad=pad,
                need_sigmoid=need_sigmoid)


# --------------------------------------------------------------------------- registry


NETS: Mapping[str, Callable[..., nn.Module]] = MappingProxyType({"skip": skip, "unet": unet})
"""Read-only registry: net name -> builder taking ``(in_channels, out_channels, **options)``."""


def list_nets() -> list[str]:
    """Names accepted by :func:`get_net`, sorted."""
    return sorted(NETS)


def get_net(name: str, **kwargs: object) -> nn.Module:
    """Build the net registered as ``name`` with the builder's keyword arguments.

    Raises:
        ValueError: If ``name`` is not registered (the message lists the
            known names) or an option is bad.
    """
    try:
        builder = NETS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown net {name!r}; known nets: {', '.join(list_nets())}") from None
    return builder(**kwargs)


def count_parameters(net: nn.Module) -> int:
    """Number of scalar parameters in ``net`` (trainable or not; buffers excluded)."""
    return sum(p.numel() for p in net.parameters())


# NetConfig fields passed to skip() as they are.
_SKIP_OPTIONS = ("kernel_down", "kernel_up", "kernel_skip", "need1x1_up", "downsample_mode", "activation")
# Options only the skip net has: a config that sets them for another net is
# rejected rather than silently building something else.
_SKIP_ONLY = ("channels_up", "channels_skip", *_SKIP_OPTIONS)


def build_from_config(config: NetConfig, *, out_channels: int) -> nn.Module:
    """Instantiate the network a :class:`~dip_engine.config.NetConfig` describes.

    A ``"meshgrid"`` input has 2 channels whatever ``input_channels`` says.
    ``skip`` takes every option; ``unet`` takes ``channels_down`` as its
    widths, else ``min(channels, 16 * 2**i)`` for each of ``levels`` levels.

    Raises:
        ValueError: For an unknown net, or a skip-only option set on another
            net, naming the option and its value.
    """
    in_channels = 2 if config.input == "meshgrid" else config.input_channels
    down, up, skips = config.level_channels()
    if config.name == "skip":
        options = {name: getattr(config, name) for name in _SKIP_OPTIONS}
        return get_net("skip", in_channels=in_channels, out_channels=out_channels, channels_down=down,
                       channels_up=up, channels_skip=skips, upsample_mode=config.upsample_mode,
                       pad=config.pad, **options)
    defaults = {f.name: f.default for f in fields(NetConfig)}
    for name in _SKIP_ONLY:
        if getattr(config, name) != defaults[name]:
            raise ValueError(f"NetConfig.{name}={getattr(config, name)!r} applies to the 'skip' net "
                             f"only, not to {config.name!r}")
    widths = config.channels_down or tuple(min(config.channels, 16 * 2**i) for i in range(config.levels))
    return get_net(config.name, in_channels=in_channels, out_channels=out_channels, channels=widths,
                   upsample_mode=config.upsample_mode, pad=config.pad)
