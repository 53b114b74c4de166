"""What a restoration run is asked to do: names and the request record.

Torch-free so that the API can validate and describe jobs without PyTorch.
What differs between tasks (operator, measurement, fields, presets, output
name) is in :mod:`dip_engine.problems`.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Literal, get_args, get_type_hints

TaskName = Literal["denoise", "superres", "inpaint", "dejpeg", "deblur"]
PresetName = Literal["fast", "quality", "paper"]
EarlyStopMode = Literal["auto", "off"]
DeviceName = Literal["auto", "cpu", "cuda"]

TASKS: tuple[str, ...] = get_args(TaskName)
PRESETS: tuple[str, ...] = get_args(PresetName)
SCALES: tuple[int, ...] = (2, 4, 8)
MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class Param:
    """How one request field is described and bounded: the API's form and the command line
    are both built from these (``RestoreSpec`` is the one declaration of a job's parameters).

    ``flag``: its command-line name (default ``--<name-with-dashes>``); ``group``: the
    command line's mutually exclusive group it shares with an upload (``mask``, ``kernel``);
    ``service``: whether a job may set it (``device`` and ``deterministic`` are the worker's).
    """

    help: str
    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    flag: str = ""
    metavar: str | None = None
    group: str = ""
    service: bool = True


def _param(default: Any = MISSING, help: str = "", **options: Any) -> Any:
    return field(default=default, metadata={"param": Param(help, **options)})


@dataclass(frozen=True)
class RestoreSpec:
    """One restoration request. ``None`` means "the preset's value".

    Some fields belong to one task only (``problems.PROBLEMS[task].fields``
    lists them). A few make the measurement from a clean input, which then
    serves as the reference (benchmarking): ``add_noise_sigma``, ``from_hr``,
    ``drop_fraction``, ``from_sharp`` and ``jpeg_quality``. Each field's
    :class:`Param` says what it means and its bounds, once for the API and the CLI.
    """

    task: TaskName = _param(help="What to restore.")
    scale: int = _param(4, "Super-resolution factor: 2, 4 or 8.")
    from_hr: bool = _param(False, "superres: the image is high-resolution; downsample it by the scale first "
                                  "and score the result against it.")
    add_noise_sigma: float | None = _param(
        None, "denoise (and deblur with from_sharp): add Gaussian noise of this sigma (0-255 scale) to a clean "
              "image and score the result against it.", gt=0, le=255, flag="--add-noise", metavar="SIGMA")
    drop_fraction: float | None = _param(
        None, "inpaint: drop this fraction of pixels at random (seeded) instead of giving a mask.",
        gt=0, lt=1, metavar="P", group="mask")
    blur_sigma: float | None = _param(
        None, "deblur: the blur is a Gaussian of this sigma in pixels (instead of a kernel image).",
        gt=0, le=20, metavar="S", group="kernel")
    from_sharp: bool = _param(False, "deblur: the image is sharp; blur it with the kernel first (then add "
                                     "add_noise_sigma) and score the result against it.")
    jpeg_quality: int | None = _param(
        None, "dejpeg: the image is clean; compress it as a JPEG of this quality first and score the result "
              "against it.", ge=1, le=95, metavar="Q")
    noise_sigma: float | None = _param(
        None, "The image's noise level (0-255 scale) if you know it (0: noise-free); early stopping waits until "
              "the fit reaches it. Unset: estimated from the image (superres and inpaint: 0, the low-resolution "
              "image and the known pixels count as exact).", ge=0, le=255, metavar="SIGMA")
    preset: PresetName = _param("fast", "Hyperparameter preset. fast: sized for a CPU; quality: the paper's "
                                        "networks with our loop improvements; paper: the published protocol "
                                        "exactly (fixed iterations, raw output, no early stopping).")
    iterations: int | None = _param(None, "Optimisation steps at most (default: the preset's; a server's "
                                          "maximum applies).", ge=1)
    log_every: int | None = _param(None, "Iterations between history points.", ge=1)
    snapshot_every: int | None = _param(None, "Iterations between snapshot PNGs.", ge=1)
    early_stop: EarlyStopMode | None = _param(None, "auto: stop when the output stops improving (ES-WMV); "
                                                    "off: run every iteration. Default: the preset's.")
    seed: int = _param(0, "Random seed (input code, weights, dropped pixels, added noise).", ge=0, le=MAX_SEED)
    device: DeviceName = _param("auto", "Where to run: auto, cpu or cuda.", service=False)
    deterministic: bool = _param(False, "GPU: repeatable seeded runs (deterministic cuDNN, no autotuning; "
                                        "slower).", service=False)


@dataclass(frozen=True)
class RequestField:
    """One field of :class:`RestoreSpec` with its resolved type, default and :class:`Param`."""

    name: str
    type: Any
    default: Any
    param: Param

    @property
    def required(self) -> bool:
        return self.default is MISSING


def request_fields() -> list[RequestField]:
    """The fields of :class:`RestoreSpec`, in order."""
    hints = get_type_hints(RestoreSpec)
    return [RequestField(f.name, hints[f.name], f.default, f.metadata["param"]) for f in fields(RestoreSpec)]
