"""The logged points of a run, shared by the loop, plots, metrics.json and the API."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class LogRecord:
    """Measurements taken every ``log_every`` iterations.

    ``psnr``/``ssim`` compare the raw output with the reference image and
    ``psnr_avg`` the exponential moving average of outputs; all three are
    ``None`` without a reference. ``psnr_degraded`` compares ``A(x)`` with the
    measurement ``y`` and is always known. ``variance`` is the ES-WMV
    windowed output variance (``None`` until the window is full).
    """

    iteration: int
    loss: float
    psnr_degraded: float
    elapsed_s: float
    psnr: float | None = None
    psnr_avg: float | None = None
    ssim: float | None = None
    variance: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LogRecord":
        return cls(**{k: data.get(k) for k in cls.__dataclass_fields__})
