"""Saving and loading the loop's state, atomically so a kill never leaves half a file."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


def save_checkpoint(path: Path, state: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        # Through a Python file: a full disk then raises OSError(ENOSPC), which says what
        # happened (torch.save on a path raises a RuntimeError without the errno).
        with open(tmp, "wb") as handle:
            torch.save(state, handle)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: Path, *, map_location: torch.device | str | None = None) -> dict[str, Any]:
    # weights_only=False: the state holds generator states and plain dicts we wrote ourselves.
    return torch.load(Path(path), map_location=map_location, weights_only=False)


def restore_generator(generator: torch.Generator, state: torch.Tensor, *, saved_on: str, path: Path) -> bool:
    """Set ``generator`` to a saved ``state``, if it is the state of a generator of its kind.

    A checkpoint written on another kind of device (a CUDA run resumed on a CPU worker) holds
    another generator's state: the resumed run then keeps the weights, the optimiser and the
    averages, and only its input jitter draws a fresh stream, which is logged. Returns whether
    the stream was restored.
    """
    state = state.cpu()
    if state.numel() == generator.get_state().numel():
        generator.set_state(state)
        return True
    log.warning("%s was written on %s and this run is on %s: resuming, with a fresh input-jitter stream",
                path, saved_on, generator.device.type)
    return False
