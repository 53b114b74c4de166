"""Saving and loading the loop's state, atomically so a kill never leaves half a file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch


def save_checkpoint(path: Path, state: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: Path, *, map_location: torch.device | str | None = None) -> dict[str, Any]:
    # weights_only=False: the state holds generator states and plain dicts we wrote ourselves.
    return torch.load(Path(path), map_location=map_location, weights_only=False)
