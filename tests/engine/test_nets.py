"""Tests of dip_engine.nets: the skip hourglass, the U-Net and the registry."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torch.nn.functional as F

from dip_engine import layers, nets
from dip_engine.nets import (
    NETS,
    count_parameters,
    get_net,
    list_nets,
    reflection_pad,
    replication_pad,
    skip,
    unet,
    upsample2x_bilinear,
    upsample2x_nearest,
)

# Small enough that every test runs in milliseconds on CPU.
TINY = {
    "skip": dict(channels_down=(8, 8, 8), channels_up=(8, 8, 8), channels_skip=(2, 2, 2)),
    "unet": dict(channels=(4, 8, 16)),
}


def test_skip_defaults_have_the_paper_parameter_count() -> None:
    net = skip()
    assert count_parameters(net) == 2_217_831
    assert net.size_multiple == 32


def test_skip_matches_reference_structure_for_one_level() -> None:
    # One level, written out by hand from the reference code: skip branch,
    # down block, upsample, concat, bn, up conv block, 1x1 block, head.
    net = skip(2, 3, channels_down=(5,), channels_up=(6,), channels_skip=(1,))
    expected = (
        (2 * 1 + 1) + 2 * 1              # skip conv1x1 + bn
        + (9 * 2 * 5 + 5) + 2 * 5        # stride-2 conv + bn
        + (9 * 5 * 5 + 5) + 2 * 5        # conv + bn
        + 2 * (1 + 5)                    # bn after concat
        + (9 * 6 * 6 + 6) + 2 * 6        # up conv + bn
        + (6 * 6 + 6) + 2 * 6            # 1x1 conv + bn
        + (6 * 3 + 3)                    # head
    )
    assert count_parameters(net) == expected
    assert isinstance(net[-1], nn.Sigmoid)


def test_skip_nests_deeper_levels_inside_the_deeper_branch() -> None:
    net = skip(4, 3, **TINY["skip"])
    concats = [m for m in net.modules() if type(m).__name__ == "Concat"]
    assert len(concats) == 3
    # Level i+1's Concat is a descendant of level i's deeper branch.
    outer_deeper = concats[0].branches[1]
    assert concats[1] in list(outer_deeper.modules())
    assert concats[2] in list(concats[1].branches[1].modules())


def test_batch_norm_keeps_no_running_statistics() -> None:
    net = skip(4, 3, **TINY["skip"])
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(not m.track_running_stats and m.running_mean is None for m in norms)


@pytest.mark.parametrize("name", list_nets())
def test_eval_output_equals_train_output(name: str) -> None:
    torch.manual_seed(0)
    net = get_net(name, in_channels=4, out_channels=3, **TINY[name])
    z = torch.randn(1, 4, 32, 32)
    train_out = net.train()(z)
    eval_out = net.eval()(z)
    torch.testing.assert_close(eval_out, train_out)


@pytest.mark.parametrize("name", list_nets())
@pytest.mark.parametrize("upsample_mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("pad", ["reflection", "zero"])
def test_output_shape_and_range(name: str, upsample_mode: str, pad: str) -> None:
    net = get_net(name, in_channels=4, out_channels=3, upsample_mode=upsample_mode, pad=pad,
                  **TINY[name])
    z = torch.randn(1, 4, 2 * net.size_multiple, 3 * net.size_multiple)
    out = net(z)
    assert out.shape == (1, 3, 2 * net.size_multiple, 3 * net.size_multiple)
    assert 0 <= out.min() and out.max() <= 1


@pytest.mark.parametrize("name", list_nets())
def test_sizes_that_are_not_multiples_are_cropped_consistently(name: str) -> None:
    net = get_net(name, in_channels=4, out_channels=1, need_sigmoid=False, **TINY[name])
    out = net(torch.randn(1, 4, 30, 21))
    assert out.shape[:2] == (1, 1) and out.shape[2] <= 30 and out.shape[3] <= 21
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", list_nets())
def test_gradients_reach_every_parameter(name: str) -> None:
    net = get_net(name, in_channels=4, out_channels=3, **TINY[name])
    net(torch.randn(1, 4, 32, 32)).square().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_size_multiple_follows_depth() -> None:
    assert skip(channels_down=(8,) * 3, channels_up=(8,) * 3, channels_skip=(4,) * 3).size_multiple == 8
    assert unet().size_multiple == 8
    assert unet(channels=(8, 16)).size_multiple == 2


def test_zero_skip_channels_drop_the_skip_branch() -> None:
    net = skip(4, 3, channels_down=(8, 8), channels_up=(8, 8), channels_skip=(0, 2))
    concats = [m for m in net.modules() if type(m).__name__ == "Concat"]
    assert len(concats) == 1
    assert net(torch.randn(1, 4, 16, 16)).shape == (1, 3, 16, 16)


def test_without_sigmoid_outputs_leave_unit_range() -> None:
    torch.manual_seed(0)
    net = unet(4, 3, channels=(4, 8), need_sigmoid=False)
    out = net(torch.randn(1, 4, 16, 16))
    assert out.min() < 0 or out.max() > 1


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        (dict(channels_down=(8, 8), channels_up=(8,), channels_skip=(4, 4)), "same length"),
        (dict(channels_down=()), "channels_down must be a non-empty sequence of ints, got ()"),
        (dict(channels_down=(8, -1), channels_up=(8, 8), channels_skip=(4, 4)),
         "channels_down entry must be an int >= 1, got -1"),
        (dict(kernel_down=4), "kernel_down must be odd, got 4"),
        (dict(upsample_mode="bicubic"), "'bicubic'"),
        (dict(pad="circular"), "'circular'"),
        (dict(in_channels=0), "in_channels must be an int >= 1, got 0"),
    ],
)
def test_skip_rejects_bad_options_with_the_value(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        skip(**kwargs)
    assert fragment in str(info.value)


def test_unet_rejects_bad_channels() -> None:
    with pytest.raises(ValueError, match="channels entry must be an int >= 1, got 0"):
        unet(channels=(8, 0))
    with pytest.raises(ValueError, match="'abc'"):
        unet(channels="abc")


def test_options_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        skip(32, 3, (8,))  # type: ignore[misc]


def test_registry() -> None:
    assert list_nets() == ["skip", "unet"]
    assert set(NETS) == {"skip", "unet"}
    with pytest.raises(TypeError):
        NETS["other"] = skip  # type: ignore[index]
    net = get_net("unet", in_channels=3, out_channels=1, channels=(4, 8))
    # The options reached unet(): its layers have those channels, and the count is that net's.
    assert [(n, tuple(p.shape)) for n, p in net.named_parameters()] == \
        [(n, tuple(p.shape)) for n, p in unet(3, 1, channels=(4, 8)).named_parameters()]
    assert net(torch.rand(1, 3, 8, 8)).shape == (1, 1, 8, 8)
    assert count_parameters(net) == (
        (27 * 4 + 4) + 2 * 4 + (36 * 4 + 4) + 2 * 4      # in: 3->4 conv + bn, 4->4 conv + bn
        + (36 * 8 + 8) + 2 * 8 + (72 * 8 + 8) + 2 * 8    # down: 4->8 conv + bn, 8->8 conv + bn
        + (108 * 4 + 4) + 2 * 4 + (36 * 4 + 4) + 2 * 4   # up: (8+4)->4 conv + bn, 4->4 conv + bn
        + (4 * 1 + 1)                                    # 1x1 head
    ) == 1793


def test_count_parameters_counts_weights_and_biases_but_not_buffers() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(5, 2, bias=False))
    assert count_parameters(net) == (3 * 4 * 9 + 4) + (4 + 4) + 5 * 2  # running stats are buffers
    assert count_parameters(nn.ReLU()) == 0


def test_get_net_unknown_name_lists_known_names() -> None:
    with pytest.raises(ValueError, match=r"unknown net 'resnet'; known nets: skip, unet"):
        get_net("resnet")


# --------------------------------------------------------------------------- deterministic path

SIZES = [(1, 1), (1, 5), (4, 4), (5, 7), (8, 3), (9, 12)]


def _value_and_grad(fn, x: torch.Tensor, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().clone().requires_grad_(True)
    y = fn(x)
    weight = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=y.dtype)
    (y * weight).sum().backward()
    return y.detach(), x.grad


@pytest.mark.parametrize(("height", "width"), SIZES)
def test_bilinear_upsampling_as_transposed_conv_equals_interpolate(height: int, width: int) -> None:
    x = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(0))
    ours = _value_and_grad(upsample2x_bilinear, x)
    theirs = _value_and_grad(
        lambda t: F.interpolate(t, scale_factor=2, mode="bilinear", align_corners=False), x)
    assert ours[0].shape == (2, 3, 2 * height, 2 * width)
    for a, b in zip(ours, theirs):
        assert (a - b).abs().max() < 1e-6


@pytest.mark.parametrize(("height", "width"), SIZES)
def test_nearest_upsampling_equals_interpolate(height: int, width: int) -> None:
    x = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(0))
    ours = _value_and_grad(upsample2x_nearest, x)
    theirs = _value_and_grad(lambda t: F.interpolate(t, scale_factor=2, mode="nearest"), x)
    assert torch.equal(ours[0], theirs[0])
    torch.testing.assert_close(ours[1], theirs[1], rtol=0, atol=1e-6)


@pytest.mark.parametrize("padding", [(1, 1, 1, 1), (2, 2, 2, 2), (0, 3, 1, 0), (3, 0, 0, 2)])
@pytest.mark.parametrize(("height", "width"), [(4, 4), (5, 7), (8, 9)])
def test_padding_by_slicing_equals_f_pad(padding: tuple[int, ...], height: int, width: int) -> None:
    x = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(0))
    for ours_fn, mode in ((reflection_pad, "reflect"), (replication_pad, "replicate")):
        ours = _value_and_grad(lambda t: ours_fn(t, padding), x)
        theirs = _value_and_grad(lambda t: F.pad(t, padding, mode=mode), x)
        assert torch.equal(ours[0], theirs[0]), mode
        torch.testing.assert_close(ours[1], theirs[1], rtol=0, atol=1e-6)


def test_reflection_pad_rejects_padding_as_large_as_the_input() -> None:
    message = r"reflection padding \(2, 2, 2, 2\) must be smaller than the input size 2x5"
    with pytest.raises(ValueError, match=message):
        reflection_pad(torch.zeros(1, 1, 2, 5), (2, 2, 2, 2))


@pytest.mark.parametrize("upsample_mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("downsample_mode", ["stride", "lanczos2"])
def test_whole_net_on_the_deterministic_path_matches_the_builtins(
        monkeypatch: pytest.MonkeyPatch, upsample_mode: str, downsample_mode: str) -> None:
    # The path is chosen per forward call; forcing it on CPU checks the whole net.
    torch.manual_seed(0)
    net = skip(4, 3, upsample_mode=upsample_mode, downsample_mode=downsample_mode, **TINY["skip"])
    z = torch.rand(1, 4, 40, 24)

    def run() -> tuple[torch.Tensor, list[torch.Tensor]]:
        net.zero_grad()
        out = net(z)
        out.square().mean().backward()
        return out.detach(), [p.grad.clone() for p in net.parameters()]

    builtin_out, builtin_grads = run()
    monkeypatch.setattr(layers, "is_deterministic", lambda x: True)
    det_out, det_grads = run()
    torch.testing.assert_close(det_out, builtin_out, rtol=0, atol=1e-6)
    for a, b in zip(det_grads, builtin_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_cpu_keeps_the_builtins_in_deterministic_mode() -> None:
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        assert not layers.is_deterministic(torch.zeros(1))
        torch.manual_seed(0)
        out = skip(4, 3, **TINY["skip"])(torch.rand(1, 4, 32, 32))
    finally:
        torch.use_deterministic_algorithms(before)
    torch.manual_seed(0)
    assert torch.equal(out, skip(4, 3, **TINY["skip"])(torch.rand(1, 4, 32, 32)))


def test_deterministic_layers_keep_the_module_structure() -> None:
    net = skip()
    assert len(net.state_dict()) == len(list(net.parameters()))  # no buffers were added
    pads = [m for m in net.modules() if isinstance(m, nn.ReflectionPad2d)]
    ups = [m for m in net.modules() if isinstance(m, nn.Upsample)]
    assert pads and ups and all(u.scale_factor == 2 and u.mode == "bilinear" for u in ups)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("upsample_mode", ["bilinear", "nearest"])
def test_seeded_cuda_runs_repeat_in_deterministic_mode(upsample_mode: str) -> None:
    before = torch.are_deterministic_algorithms_enabled()
    # Errors, rather than warnings, for any kernel left non-deterministic.
    torch.use_deterministic_algorithms(True)
    try:
        results = []
        for _ in range(2):
            torch.manual_seed(0)
            net = skip(4, 3, upsample_mode=upsample_mode, downsample_mode="lanczos2",
                       **TINY["skip"]).cuda()
            z = torch.rand(1, 4, 64, 48, device="cuda")
            net(z).square().mean().backward()
            results.append(torch.cat([p.grad.flatten() for p in net.parameters()]).cpu())
    finally:
        torch.use_deterministic_algorithms(before)
    assert torch.equal(results[0], results[1])


def test_reflection_padding_under_autocast_keeps_the_activations_precision() -> None:
    # CPU autocast would pad in float32; padding only copies, so bf16 in, bf16 out, same values.
    x = torch.rand(1, 6, 9, 7).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        padded = layers.ReflectionPad2d(2)(x)
    assert padded.dtype == torch.bfloat16
    assert torch.equal(padded, F.pad(x.float(), (2, 2, 2, 2), mode="reflect").to(torch.bfloat16))
    # The Lanczos downsampler's replication padding goes the same way.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        replicated = layers.pad(x, (3, 3, 3, 3), "replicate")
    assert replicated.dtype == torch.bfloat16
    assert torch.equal(replicated, F.pad(x.float(), (3, 3, 3, 3), mode="replicate").to(torch.bfloat16))


class _SeesGradient(torch.autograd.Function):
    """Identity that records whether the gradient reaching it is dense in channels-last memory."""

    seen: list[bool] = []

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        _SeesGradient.seen.append(grad.is_contiguous(memory_format=torch.channels_last))
        return grad


def test_concat_hands_its_branches_dense_gradients() -> None:
    # The concatenation's backward gives each branch a channel slice, strided in channels-last
    # memory; CPU kernels such as the bilinear upsampling's backward are 3x slower on one.
    class Branch(nn.Module):
        def __init__(self, channels: int) -> None:
            super().__init__()
            self.conv = nn.Conv2d(4, channels, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return _SeesGradient.apply(self.conv(x))

    concat = nets.Concat(Branch(3), Branch(5)).to(memory_format=torch.channels_last)
    x = torch.rand(1, 4, 8, 8).contiguous(memory_format=torch.channels_last)
    _SeesGradient.seen.clear()
    out = concat(x)
    out.backward(torch.rand_like(out))
    assert _SeesGradient.seen == [True, True]
    # Without the hook the slices are strided: the test can fail.
    sliced = torch.rand(1, 8, 8, 8).contiguous(memory_format=torch.channels_last)[:, 3:]
    assert not sliced.is_contiguous(memory_format=torch.channels_last)
