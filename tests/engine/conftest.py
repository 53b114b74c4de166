"""Fixtures shared by the engine tests: a one-thread torch and synthetic test images."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pytest

ImageMaker = Callable[..., np.ndarray]


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Run torch on one thread for the module (restored afterwards).

    Tiny nets gain nothing from a second thread, lose a lot when the other
    core is busy, and the equality tests need a fixed thread count.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def textured(width: int, height: int, *, seed: int = 0) -> np.ndarray:
    """uint8 (H, W, 3): smooth gradients, a horizontal edge and a little texture."""
    ys, xs = np.mgrid[0:height, 0:width] / max(width, height)
    rng = np.random.default_rng(seed)
    image = np.stack([0.2 + 0.6 * xs, 0.3 + 0.4 * (ys > 0.5), 0.5 + 0.3 * np.sin(12 * xs + 5 * ys)], axis=-1)
    image += 0.05 * rng.standard_normal(image.shape)
    return np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def make_image() -> ImageMaker:
    """``make_image(width, height, *, seed=0)``: a synthetic uint8 RGB test image."""
    return textured
