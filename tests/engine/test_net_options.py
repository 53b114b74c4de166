"""Tests of the reference code's other net set-ups: per-level channels, kernel sizes,
1x1 decoder blocks, downsampling modes and activations, from ``skip`` and from a
:class:`NetConfig` through :func:`build_from_config`.

The parameter counts of the three notebook set-ups were computed by running the
reference ``models/skip.py`` (DmitryUlyanov/deep-image-prior); with its weights
loaded in parameter order, our nets give identical outputs for these set-ups and
for every downsampling mode (checked once with a throwaway script, since the
reference code is not vendored here).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from dip_engine.config import NetConfig
from dip_engine.nets import build_from_config, count_parameters, skip, unet
from dip_engine.physics import lanczos_kernel

LIBRARY = NetConfig(input_channels=1, channels_down=(16, 32, 64, 128, 128, 128),
                    channels_up=(16, 32, 64, 128, 128, 128), channels_skip=(0,) * 6,
                    kernel_down=5, kernel_up=3, kernel_skip=1, upsample_mode="nearest",
                    need1x1_up=False)
SNAIL = NetConfig(input_channels=3, channels_down=(8, 16, 32, 64, 128),
                  channels_up=(8, 16, 32, 64, 128), channels_skip=(0, 0, 0, 4, 4),
                  upsample_mode="bilinear")
KATE = NetConfig(input_channels=32, channels=128, levels=5, skip_channels=128, upsample_mode="nearest")
pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(channels_down=(4, 8, 8), channels_up=(4, 8, 8), channels_skip=(2, 0, 2))


@pytest.mark.parametrize(
    ("config", "params", "multiple"),
    [(LIBRARY, 2_996_467, 64), (SNAIL, 572_827, 32), (KATE, 3_002_627, 32), (NetConfig(), 2_217_831, 32)],
    ids=["library", "snail", "kate", "default"],
)
def test_reference_setups_have_the_reference_parameter_counts(config: NetConfig, params: int,
                                                              multiple: int) -> None:
    net = build_from_config(config, out_channels=3)
    assert count_parameters(net) == params
    assert net.size_multiple == config.size_multiple == multiple


def test_default_config_builds_todays_net_with_the_same_outputs() -> None:
    torch.manual_seed(0)
    old = skip(32, 3, channels_down=(128,) * 5, channels_up=(128,) * 5, channels_skip=(4,) * 5,
               upsample_mode="bilinear", pad="reflection")
    torch.manual_seed(0)
    new = build_from_config(NetConfig(), out_channels=3)
    assert [n for n, _ in old.named_parameters()] == [n for n, _ in new.named_parameters()]
    assert old.state_dict().keys() == new.state_dict().keys()
    z = torch.rand(1, 32, 64, 64)
    assert torch.equal(old(z), new(z))


def test_library_setup_structure() -> None:
    net = build_from_config(LIBRARY, out_channels=3)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert convs[0].in_channels == 1 and convs[0].kernel_size == (5, 5) and convs[0].stride == (2, 2)
    assert not any(type(m).__name__ == "Concat" for m in net.modules())
    assert {m.mode for m in net.modules() if isinstance(m, nn.Upsample)} == {"nearest"}
    # No 1x1 decoder blocks: the only 1x1 conv is the head.
    assert [c for c in convs if c.kernel_size == (1, 1)] == [convs[-1]]
    assert net(torch.rand(1, 1, 256, 192)).shape == (1, 3, 256, 192)


def test_meshgrid_input_has_two_channels() -> None:
    net = build_from_config(dataclasses.replace(SNAIL, input="meshgrid"), out_channels=1)
    assert next(m for m in net.modules() if isinstance(m, nn.Conv2d)).in_channels == 2
    assert net(torch.rand(1, 2, 64, 64)).shape == (1, 1, 64, 64)


def test_unet_branch() -> None:
    net = build_from_config(NetConfig(name="unet", channels=64, levels=4), out_channels=3)
    assert count_parameters(net) == count_parameters(unet(32, 3, channels=(16, 32, 64, 64)))
    net = build_from_config(NetConfig(name="unet", channels_down=(8, 16)), out_channels=3)
    assert count_parameters(net) == count_parameters(unet(32, 3, channels=(8, 16)))
    with pytest.raises(ValueError, match="NetConfig.downsample_mode='avg' applies to the 'skip' net"):
        build_from_config(NetConfig(name="unet", downsample_mode="avg"), out_channels=3)
    with pytest.raises(ValueError, match="unknown net 'resnet'"):
        build_from_config(NetConfig(name="resnet"), out_channels=3)


# --------------------------------------------------------------------------- NetConfig


def test_per_level_channels_set_the_depth_and_levels_is_ignored() -> None:
    config = NetConfig(levels=2, channels=16, skip_channels=3,
                       channels_down=[8, 8, 8])  # type: ignore[arg-type]
    assert config.channels_down == (8, 8, 8)  # lists become tuples (hashable config)
    assert config.depth == 3 and config.size_multiple == 8
    assert config.level_channels() == ((8, 8, 8), (16, 16, 16), (3, 3, 3))
    assert NetConfig(levels=4).level_channels() == ((128,) * 4, (128,) * 4, (4,) * 4)
    assert NetConfig(channels_skip=(0, 4)).size_multiple == 4
    hash(config)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        (dict(channels_down=(8, 8), channels_skip=(4, 4, 4)),
         "must have one length, got channels_down=(8, 8), channels_skip=(4, 4, 4)"),
        (dict(channels_up=()), "NetConfig.channels_up must be a non-empty tuple of ints >= 1, got ()"),
        (dict(channels_down=(8, 0)),
         "NetConfig.channels_down must be a non-empty tuple of ints >= 1, got (8, 0)"),
        (dict(channels_skip=(4, -1)),
         "NetConfig.channels_skip must be a non-empty tuple of ints >= 0, got (4, -1)"),
        (dict(channels_down="16,32"), "got '16,32'"),
        (dict(kernel_down=4), "NetConfig.kernel_down must be an odd int >= 1, got 4"),
        (dict(kernel_skip=0), "NetConfig.kernel_skip must be an odd int >= 1, got 0"),
        (dict(need1x1_up="no"), "NetConfig.need1x1_up must be a bool, got 'no'"),
        (dict(downsample_mode="bicubic"), "NetConfig.downsample_mode must be one of"),
        (dict(activation="ReLU"), "got 'ReLU'"),
    ],
)
def test_net_config_rejects_bad_values_naming_them(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        NetConfig(**kwargs)
    assert fragment in str(info.value)


# --------------------------------------------------------------------------- downsampling and activations


@pytest.mark.parametrize("mode", ["stride", "avg", "max", "lanczos2", "lanczos3"])
@pytest.mark.parametrize("pad", ["reflection", "zero"])
def test_downsample_modes_add_no_parameters_and_keep_sizes(mode: str, pad: str) -> None:
    torch.manual_seed(0)
    net = skip(4, 3, downsample_mode=mode, pad=pad, **TINY)
    assert count_parameters(net) == count_parameters(skip(4, 3, pad=pad, **TINY))
    assert all(n.endswith(("weight", "bias")) for n in net.state_dict())
    out = net(torch.rand(1, 4, 48, 40))
    assert out.shape == (1, 3, 48, 40)
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_downsample_mode_replaces_the_stride() -> None:
    net = skip(4, 3, downsample_mode="avg", **TINY)
    first = net[0].branches[1][0]  # level 0: Concat -> deeper branch -> first conv
    assert [type(m).__name__ for m in first] == ["ReflectionPad2d", "Conv2d", "AvgPool2d"]
    assert first[1].stride == (1, 1)
    assert all(c.stride == (1, 1) for c in net.modules() if isinstance(c, nn.Conv2d))


def test_lanczos_downsampler_uses_the_reference_kernels() -> None:
    for support, size in ((2, 8), (3, 12)):
        down = skip(4, 3, downsample_mode=f"lanczos{support}", **TINY)[0].branches[1][0][2]
        kernel = down.kernel[0, 0]
        assert kernel.shape == (size, size)
        torch.testing.assert_close(kernel.sum(), torch.tensor(1.0))
        torch.testing.assert_close(kernel, kernel.flip(0).flip(1))
        if support == 2:  # the paper's super-resolution kernel at factor 2
            torch.testing.assert_close(kernel, lanczos_kernel(2, support=2, phase=0.5))
        # A constant image stays constant: replicate padding, a kernel summing to 1.
        x = torch.full((1, 2, 16, 10), 0.3)
        torch.testing.assert_close(down(x), torch.full((1, 2, 8, 5), 0.3))


@pytest.mark.parametrize(("name", "kind"), [("LeakyReLU", nn.LeakyReLU), ("Swish", nn.SiLU),
                                            ("ELU", nn.ELU), ("none", nn.Identity)])
def test_activations(name: str, kind: type) -> None:
    net = skip(4, 3, activation=name, **TINY)
    found = {type(m) for m in net.modules()} & {nn.LeakyReLU, nn.SiLU, nn.ELU, nn.Identity}
    assert found == {kind}
    assert count_parameters(net) == count_parameters(skip(4, 3, **TINY))
    assert net(torch.rand(1, 4, 16, 16)).shape == (1, 3, 16, 16)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [(dict(downsample_mode="lanczos4"), "'lanczos4'"), (dict(activation="relu"), "'relu'"),
     (dict(kernel_up=2), "kernel_up must be odd, got 2"),
     (dict(kernel_skip=0), "kernel_skip must be an int >= 1, got 0")],
)
def test_skip_rejects_bad_new_options(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        skip(**kwargs)
    assert fragment in str(info.value)


def test_kernel_sizes_are_used() -> None:
    net = skip(4, 3, kernel_down=5, kernel_up=7, kernel_skip=3, **TINY)
    sizes = {c.kernel_size[0] for c in net.modules() if isinstance(c, nn.Conv2d)}
    assert sizes == {1, 3, 5, 7}
    assert net(torch.rand(1, 4, 64, 64)).shape == (1, 3, 64, 64)
