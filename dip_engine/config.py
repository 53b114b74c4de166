"""Option groups of a run, as frozen dataclasses (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

OutputKind = Literal["ema", "raw"]


@dataclass(frozen=True)
class NetConfig:
    """Which network and input to fit.

    ``input`` is the fixed code ``z``: ``"noise"`` (uniform in [0, 0.1), the
    paper's choice) or ``"meshgrid"`` (2 channels of x/y coordinates).
    """

    name: str = "skip"
    channels: int = 128
    levels: int = 5
    skip_channels: int = 4
    upsample_mode: Literal["bilinear", "nearest"] = "bilinear"
    pad: Literal["reflection", "zero"] = "reflection"
    input: Literal["noise", "meshgrid"] = "noise"
    input_channels: int = 32
    input_scale: float = 0.1

    def __post_init__(self) -> None:
        for name in ("channels", "levels", "input_channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"NetConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.skip_channels < 0:
            raise ValueError(f"NetConfig.skip_channels must be >= 0, got {self.skip_channels}")

    @property
    def size_multiple(self) -> int:
        return 2**self.levels


@dataclass(frozen=True)
class EarlyStopConfig:
    """ES-WMV (Wang et al., TMLR 2023): stop once the windowed moving variance of
    the outputs has not reached a new minimum for ``patience`` iterations.

    ``signal`` picks the sequence whose variance is watched: the raw outputs
    (the paper) or their moving average. ``min_delta`` counts a minimum as new
    only when it undercuts the previous one by that relative margin (0: the
    paper); on the averaged outputs, whose variance keeps creeping down after
    the PSNR peak, a margin turns the detector into a knee detector.
    """

    window: int = 100
    patience: int = 1000
    signal: OutputKind = "raw"
    min_delta: float = 0.0

    def __post_init__(self) -> None:
        if self.signal not in ("raw", "ema"):
            raise ValueError(f"EarlyStopConfig.signal must be 'raw' or 'ema', got {self.signal!r}")
        if not 0.0 <= self.min_delta < 1.0:
            raise ValueError(f"EarlyStopConfig.min_delta must be in [0, 1), got {self.min_delta}")
        if self.window < 2:
            raise ValueError(f"EarlyStopConfig.window must be >= 2, got {self.window}")
        if self.patience < 1:
            raise ValueError(f"EarlyStopConfig.patience must be >= 1, got {self.patience}")


@dataclass(frozen=True)
class FitConfig:
    """Hyperparameters of the optimisation loop.

    Args:
        iterations: iteration cap.
        lr: Adam learning rate (constant).
        reg_noise_std: std of the fresh Gaussian jitter added to ``z`` each iteration.
        ema: output averaging weight (``0`` disables): ``avg = ema * avg + (1 - ema) * out``.
        backtrack_db: restore the last good weights when the PSNR against the
            degraded input drops by more than this between checks (``None`` disables).
        backtrack_every: iterations between those checks; ``None``: at log points, since
            the check reads the loss on the host and logging already does.
        early_stop: ES-WMV settings, ``None`` to run to the cap.
        output: which output a run returns and snapshots: the EMA or the raw one.
        log_every: iterations between logged points (loss, PSNR, SSIM).
        snapshot_every: iterations between snapshot PNGs (``None``: none).
    """

    iterations: int = 3000
    lr: float = 0.01
    reg_noise_std: float = 1.0 / 30.0
    ema: float = 0.99
    backtrack_db: float | None = 5.0
    backtrack_every: int | None = None
    early_stop: EarlyStopConfig | None = field(default_factory=EarlyStopConfig)
    output: OutputKind = "ema"
    log_every: int = 50
    snapshot_every: int | None = None

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ValueError(f"FitConfig.iterations must be >= 1, got {self.iterations}")
        if self.lr <= 0:
            raise ValueError(f"FitConfig.lr must be > 0, got {self.lr}")
        if self.reg_noise_std < 0:
            raise ValueError(f"FitConfig.reg_noise_std must be >= 0, got {self.reg_noise_std}")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"FitConfig.ema must be in [0, 1), got {self.ema}")
        if self.log_every < 1 or (self.backtrack_every is not None and self.backtrack_every < 1):
            raise ValueError(f"log_every and backtrack_every must be >= 1, got {self.log_every}, {self.backtrack_every}")
        if self.snapshot_every is not None and self.snapshot_every < 1:
            raise ValueError(f"FitConfig.snapshot_every must be >= 1 or None, got {self.snapshot_every}")
        if self.output not in ("ema", "raw"):
            raise ValueError(f"FitConfig.output must be 'ema' or 'raw', got {self.output!r}")
