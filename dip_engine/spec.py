"""What a restoration run is asked to do: names and the request record.

Torch-free so that the API can validate and describe jobs without PyTorch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

TaskName = Literal["denoise", "superres", "inpaint"]
PresetName = Literal["fast", "paper"]
EarlyStopMode = Literal["auto", "off"]
DeviceName = Literal["auto", "cpu", "cuda"]

TASKS: tuple[str, ...] = get_args(TaskName)
PRESETS: tuple[str, ...] = get_args(PresetName)
SCALES: tuple[int, ...] = (2, 4, 8)


@dataclass(frozen=True)
class RestoreSpec:
    """One restoration request. ``None`` means "the preset's value".

    Three fields make the measurement from a clean input, which then serves
    as the reference (benchmarking): ``add_noise_sigma`` (denoise, 0-255
    scale), ``from_hr`` (superres: downsample the input by ``scale``) and
    ``drop_fraction`` (inpaint: drop that fraction of pixels, seeded).
    """

    task: TaskName
    scale: int = 4
    from_hr: bool = False
    add_noise_sigma: float | None = None
    drop_fraction: float | None = None
    preset: PresetName = "fast"
    iterations: int | None = None
    log_every: int | None = None
    snapshot_every: int | None = None
    early_stop: EarlyStopMode | None = None
    seed: int = 0
    device: DeviceName = "auto"


def result_filename(task: TaskName, scale: int = 4) -> str:
    """The final output's file name, as the original code names it."""
    return {"denoise": "dip_denoised.png", "superres": f"dip_superres_x{scale}.png",
            "inpaint": "dip_inpainted.png"}[task]


def curves_filename(task: TaskName, scale: int = 4) -> str:
    return result_filename(task, scale).replace(".png", "_curves.png")
