"""Tests of dip_engine.physics: the forward operators, the Lanczos kernel and the masks.

Every operator test is parametrised over ``OPERATOR_CASES``; a fourth task is
one more entry there (and ``test_every_registered_task_is_covered`` fails until
it is added).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from dip_engine.degradations import bernoulli_mask, gaussian_kernel
from dip_engine.physics import Blur, Denoising, Downsampling, Inpainting, Physics, lanczos_kernel
from dip_engine.problems import PROBLEMS, make_physics

SIZE = 64


def _mask(size: int = SIZE, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(bernoulli_mask(size, size, 0.5, rng=np.random.default_rng(seed)))


def _motion_kernel() -> torch.Tensor:
    # Asymmetric and even-sized: catches a kernel that is not flipped or is off-centre.
    kernel = torch.zeros(4, 6)
    kernel[1, :5] = torch.tensor([1.0, 2.0, 3.0, 1.0, 0.5])
    kernel[2, 3] = 1.5
    return kernel / kernel.sum()


# id -> (task it implements, factory). Output images are SIZE x SIZE.
OPERATOR_CASES: dict[str, tuple[str, Callable[[], Physics]]] = {
    "denoise": ("denoise", lambda: Denoising()),
    "superres-lanczos2-x2": ("superres", lambda: Downsampling(2)),
    "superres-lanczos2-x4": ("superres", lambda: Downsampling(4, kernel="lanczos2")),
    "superres-lanczos2-x8": ("superres", lambda: Downsampling(8)),
    "superres-bilinear-x4": ("superres", lambda: Downsampling(4, kernel="bilinear")),
    "inpaint": ("inpaint", lambda: Inpainting(_mask())),
    "inpaint-registry": ("inpaint", lambda: make_physics("inpaint", mask=_mask(seed=1))),
    "dejpeg-registry": ("dejpeg", lambda: make_physics("dejpeg")),
    "deblur-gaussian": ("deblur", lambda: Blur(torch.from_numpy(gaussian_kernel(1.6)))),
    "deblur-motion": ("deblur", lambda: make_physics("deblur", blur=_motion_kernel())),
}


@pytest.fixture(params=sorted(OPERATOR_CASES), ids=str)
def physics(request: pytest.FixtureRequest) -> Physics:
    return OPERATOR_CASES[request.param][1]()


def _factor(op: Physics) -> int:
    return getattr(op, "factor", 1)


def _random(shape: tuple[int, ...], seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_every_registered_task_is_covered() -> None:
    assert set(PROBLEMS) == {task for task, _ in OPERATOR_CASES.values()}


# -- every operator --------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
def test_adjointness(physics: Physics, channels: int) -> None:
    # <A x, y> == <x, A^T y> for random x, y: A_adjoint is the true adjoint of A.
    op = physics.to(torch.float64)
    f = _factor(op)
    x = _random((1, channels, SIZE, SIZE), seed=1)
    y = _random((1, channels, SIZE // f, SIZE // f), seed=2)
    lhs = torch.sum(op.A(x) * y)
    rhs = torch.sum(x * op.A_adjoint(y))
    assert lhs.dtype == rhs.dtype == torch.float64
    torch.testing.assert_close(lhs, rhs, rtol=1e-10, atol=1e-10)


def test_shapes(physics: Physics) -> None:
    f = _factor(physics)
    x = torch.rand(1, 3, SIZE, SIZE)
    y = physics.A(x)
    assert y.shape == (1, 3, SIZE // f, SIZE // f)
    assert physics(x).shape == y.shape  # forward is A
    assert physics.input_shape(y.shape) == x.shape
    assert physics.A_adjoint(y).shape == x.shape


def test_is_linear(physics: Physics) -> None:
    op = physics.to(torch.float64)
    x1, x2 = _random((1, 3, SIZE, SIZE), seed=3), _random((1, 3, SIZE, SIZE), seed=4)
    torch.testing.assert_close(op.A(2.0 * x1 - 3.0 * x2), 2.0 * op.A(x1) - 3.0 * op.A(x2))


def test_to_dtype_moves_every_buffer(physics: Physics) -> None:
    buffers = dict(physics.named_buffers())
    moved = physics.to(torch.float64)
    assert dict(moved.named_buffers()).keys() == buffers.keys()
    assert all(b.dtype == torch.float64 for b in moved.buffers())
    x = torch.rand(1, 3, SIZE, SIZE, dtype=torch.float64)
    assert moved.A(x).dtype == torch.float64


def test_to_device_moves_every_buffer(physics: Physics) -> None:
    # The meta device stands in for a GPU: only a registered buffer follows .to(device).
    moved = physics.to("meta")
    assert all(b.device.type == "meta" for b in moved.buffers())
    f = _factor(moved)
    y = moved.A(torch.empty(1, 3, SIZE, SIZE, device="meta"))
    assert y.device.type == "meta" and y.shape == (1, 3, SIZE // f, SIZE // f)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_to_cuda_moves_every_buffer(physics: Physics) -> None:
    moved = physics.to("cuda")
    assert all(b.is_cuda for b in moved.buffers())
    assert moved.A(torch.rand(1, 3, SIZE, SIZE, device="cuda")).is_cuda


def test_measured_fraction(physics: Physics) -> None:
    expected = float(physics.mask.mean()) if isinstance(physics, Inpainting) else 1.0
    assert physics.measured_fraction == pytest.approx(expected)
    assert 0.0 < physics.measured_fraction <= 1.0


# -- Lanczos kernel ---------------------------------------------------------------


def _reference_lanczos(factor: int, support: int = 2) -> np.ndarray:
    """The DIP reference code's ``get_kernel(factor, 'lanczos', 0.5, 4 * factor + 1, support=2)``, loop for loop."""
    kernel_width = 4 * factor + 1
    kernel = np.zeros([kernel_width - 1, kernel_width - 1])
    center = (kernel_width + 1.0) / 2.0
    for i in range(1, kernel.shape[0] + 1):
        for j in range(1, kernel.shape[1] + 1):
            di = abs(i + 0.5 - center) / factor
            dj = abs(j + 0.5 - center) / factor
            val = 1.0
            if di != 0:
                val *= support * np.sin(np.pi * di) * np.sin(np.pi * di / support) / (np.pi * np.pi * di * di)
            if dj != 0:
                val *= support * np.sin(np.pi * dj) * np.sin(np.pi * dj / support) / (np.pi * np.pi * dj * dj)
            kernel[i - 1][j - 1] = val
    return kernel / kernel.sum()


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_lanczos_kernel_size_sum_and_symmetry(factor: int) -> None:
    k = lanczos_kernel(factor)
    assert k.shape == (4 * factor, 4 * factor)
    assert k.dtype == torch.float32
    assert float(k.sum(dtype=torch.float64)) == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(k, k.T)
    torch.testing.assert_close(k, k.flip(0))
    torch.testing.assert_close(k, k.flip(1))
    # Separable: the outer product of its row sums (which sum to 1).
    row = k.sum(1)
    torch.testing.assert_close(k, row[:, None] * row[None, :])
    # Peak at the centre, negative lobes at the border (a Lanczos, not a box or a Gaussian).
    assert k[2 * factor - 1, 2 * factor - 1] == k.max()
    assert float(k.min()) < 0


def test_lanczos_x4_is_16x16() -> None:
    assert lanczos_kernel(4).shape == (16, 16)


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_lanczos_kernel_matches_the_reference_code(factor: int) -> None:
    np.testing.assert_allclose(lanczos_kernel(factor).numpy(), _reference_lanczos(factor), rtol=1e-5, atol=1e-8)


# -- Downsampling -------------------------------------------------------------------


@pytest.mark.parametrize("kernel", ["lanczos2", "bilinear"])
@pytest.mark.parametrize("factor", [2, 4, 8])
@pytest.mark.parametrize("size", [(64, 64), (32, 96)])
def test_downsampling_maps_hw_to_hw_over_factor(kernel: str, factor: int, size: tuple[int, int]) -> None:
    h, w = size
    op = Downsampling(factor, kernel=kernel)
    assert op.A(torch.rand(1, 3, h, w)).shape == (1, 3, h // factor, w // factor)
    assert op.input_shape(torch.Size([1, 3, h // factor, w // factor])) == (1, 3, h, w)


@pytest.mark.parametrize("kernel", ["lanczos2", "bilinear"])
@pytest.mark.parametrize("factor", [2, 4, 8])
def test_downsampling_keeps_a_constant_image_constant(kernel: str, factor: int) -> None:
    op = Downsampling(factor, kernel=kernel)
    x = torch.full((1, 3, 64, 64), 0.37)
    torch.testing.assert_close(op.A(x), torch.full((1, 3, 64 // factor, 64 // factor), 0.37))


def test_downsampling_is_per_channel() -> None:
    op = Downsampling(4)
    x = torch.rand(1, 3, 64, 64)
    y = op.A(x)
    for c in range(3):
        torch.testing.assert_close(op.A(x[:, c : c + 1]), y[:, c : c + 1])


def test_lanczos_downsampling_averages_locally() -> None:
    # A vertical step edge stays a step edge, blurred only near the edge.
    x = torch.zeros(1, 1, 64, 64)
    x[..., 32:] = 1.0
    y = Downsampling(4).A(x)[0, 0]
    torch.testing.assert_close(y[:, :6], torch.zeros(16, 6), atol=1e-6, rtol=0)
    torch.testing.assert_close(y[:, 10:], torch.ones(16, 6), atol=1e-6, rtol=0)
    assert torch.allclose(y, y[:1].expand_as(y))  # every row alike


def test_downsampling_refuses_indivisible_sizes_and_bad_options() -> None:
    with pytest.raises(ValueError, match=r"\(65, 64\).*4"):
        Downsampling(4).A(torch.rand(1, 3, 65, 64))
    with pytest.raises(ValueError, match="factor must be >= 2, got 1"):
        Downsampling(1)
    with pytest.raises(ValueError, match="'bicubic'"):
        Downsampling(4, kernel="bicubic")  # type: ignore[arg-type]


# -- Inpainting ---------------------------------------------------------------------


def test_inpainting_zeroes_holes_and_keeps_known_pixels() -> None:
    mask = _mask()
    x = torch.rand(1, 3, SIZE, SIZE) + 0.5  # no zeros of its own
    y = Inpainting(mask).A(x)
    holes = ~mask
    assert torch.all(y[..., holes] == 0)
    assert torch.equal(y[..., mask], x[..., mask])


def test_inpainting_mask_is_a_buffer_shared_by_channels() -> None:
    op = Inpainting(torch.tensor([[1, 0], [0, 1]]))
    assert [name for name, _ in op.named_buffers()] == ["mask"]
    assert op.mask.shape == (1, 1, 2, 2) and op.mask.dtype == torch.float32
    assert op.measured_fraction == 0.5
    x = torch.ones(1, 3, 2, 2)
    assert torch.equal(op.A(x), torch.tensor([[1.0, 0.0], [0.0, 1.0]]).expand(1, 3, 2, 2))


def test_inpainting_refuses_a_non_2d_mask() -> None:
    with pytest.raises(ValueError, match=r"\(1, 4, 4\)"):
        Inpainting(torch.ones(1, 4, 4))


# -- blur ---------------------------------------------------------------------------------


def test_blur_is_a_true_convolution_centred_at_the_kernel_middle() -> None:
    # An impulse at (r, c) comes out as the kernel itself with its centre at (r, c).
    kernel = _motion_kernel()
    x = torch.zeros(1, 1, 16, 16)
    x[0, 0, 8, 8] = 1.0
    y = Blur(kernel).A(x)[0, 0]
    top, left = (kernel.shape[0] - 1) // 2, (kernel.shape[1] - 1) // 2
    assert torch.allclose(y[8 - top:8 - top + 4, 8 - left:8 - left + 6], kernel, atol=1e-7)
    assert float(y.sum()) == pytest.approx(1.0, abs=1e-6)


def test_blur_matches_the_independent_numpy_convolution() -> None:
    from dip_engine.degradations import convolve

    kernel = _motion_kernel()
    x = torch.rand(1, 3, 20, 24, generator=torch.Generator().manual_seed(0))
    expected = convolve(x[0].permute(1, 2, 0).numpy(), kernel.numpy())
    assert np.allclose(Blur(kernel).A(x)[0].permute(1, 2, 0).numpy(), expected, atol=1e-5)


def test_blur_refuses_a_kernel_that_is_not_2d() -> None:
    with pytest.raises(ValueError, match=r"\(1, 3, 3\)"):
        Blur(torch.ones(1, 3, 3))


# -- bernoulli_mask -----------------------------------------------------------------


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_bernoulli_mask_drops_about_p(p: float) -> None:
    mask = torch.from_numpy(bernoulli_mask(256, 256, p, rng=np.random.default_rng(3)))
    assert mask.shape == (256, 256) and mask.dtype == torch.bool
    dropped = 1.0 - float(mask.float().mean())
    # 65536 draws: the binomial std is < 0.002.
    assert dropped == pytest.approx(p, abs=0.01)
    assert Inpainting(mask).measured_fraction == pytest.approx(1.0 - p, abs=0.01)


def test_bernoulli_mask_is_reproducible_with_a_seed() -> None:
    def draw(seed: int) -> np.ndarray:
        return bernoulli_mask(64, 48, 0.5, rng=np.random.default_rng(seed))

    assert np.array_equal(draw(7), draw(7))
    assert not np.array_equal(draw(7), draw(8))
    assert draw(7).shape == (64, 48)


def test_bernoulli_mask_does_not_touch_the_global_rng() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    bernoulli_mask(16, 16, 0.5, rng=np.random.default_rng(0))
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("p", [0.0, 1.0, -0.1, 1.5])
def test_bernoulli_mask_refuses_fractions_outside_0_1(p: float) -> None:
    with pytest.raises(ValueError, match=f"got {p}"):
        bernoulli_mask(8, 8, p, rng=np.random.default_rng(0))
