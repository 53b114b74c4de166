"""Independent random streams derived from one seed (torch-free).

A run uses randomness in several places: the fixed input code ``z``, the
weight initialisation, the input jitter, and the synthetic degradations
(added noise, dropped pixels). Each draws from its own stream, so that no two
uses share numbers: with one generator for all of them, the input ``z`` would
*be* the dropped-pixel map or the noise, and the network would be handed the
degradation it is meant to undo.

The scheme: the seed of stream ``name`` for request seed ``s`` is the first
8 bytes of ``SHA-256("dip-restore/<name>/<s>")`` read as a big-endian
integer, masked to 63 bits (every torch and numpy generator accepts it).
Degradations draw from numpy's PCG64, the network's streams from torch's
generators: different algorithms as well as different seeds.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:  # torch stays optional here: the API validates requests without it
    import torch

Stream = Literal["input", "weights", "jitter", "noise", "mask", "jpeg", "holdout", "divergence"]


def stream_seed(seed: int, stream: Stream) -> int:
    """The 63-bit seed of ``stream`` for request seed ``seed``."""
    digest = hashlib.sha256(f"dip-restore/{stream}/{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def numpy_rng(seed: int, stream: Stream) -> np.random.Generator:
    """A numpy generator for a synthetic degradation."""
    return np.random.default_rng(stream_seed(seed, stream))


def torch_generator(seed: int, stream: Stream, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch generator on ``device`` for one of the network's streams."""
    import torch

    return torch.Generator(device=device).manual_seed(stream_seed(seed, stream))
