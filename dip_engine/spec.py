"""What a restoration run is asked to do: names and the request record.

Torch-free so that the API can validate and describe jobs without PyTorch.
What differs between tasks (operator, measurement, fields, presets, output
name) is in :mod:`dip_engine.problems`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

TaskName = Literal["denoise", "superres", "inpaint", "dejpeg", "deblur"]
PresetName = Literal["fast", "quality", "paper"]
EarlyStopMode = Literal["auto", "off"]
DeviceName = Literal["auto", "cpu", "cuda"]

TASKS: tuple[str, ...] = get_args(TaskName)
PRESETS: tuple[str, ...] = get_args(PresetName)
SCALES: tuple[int, ...] = (2, 4, 8)


@dataclass(frozen=True)
class RestoreSpec:
    """One restoration request. ``None`` means "the preset's value".

    Some fields belong to one task only (``problems.PROBLEMS[task].fields``
    lists them). A few make the measurement from a clean input, which then
    serves as the reference (benchmarking): ``add_noise_sigma`` (denoise and
    deblur, 0-255 scale), ``from_hr`` (superres: downsample the input by
    ``scale``), ``drop_fraction`` (inpaint: drop that fraction of pixels,
    seeded), ``from_sharp`` (deblur: blur the input with the kernel) and
    ``jpeg_quality`` (dejpeg: compress the input at that quality).
    ``noise_sigma`` (any task, 0-255 scale) is the measurement's noise level when
    the user knows it; otherwise the early-stopping gate estimates it from the image.
    """

    task: TaskName
    scale: int = 4
    from_hr: bool = False
    add_noise_sigma: float | None = None
    drop_fraction: float | None = None
    blur_sigma: float | None = None
    from_sharp: bool = False
    jpeg_quality: int | None = None
    noise_sigma: float | None = None
    preset: PresetName = "fast"
    iterations: int | None = None
    log_every: int | None = None
    snapshot_every: int | None = None
    early_stop: EarlyStopMode | None = None
    seed: int = 0
    device: DeviceName = "auto"
    deterministic: bool = False
