"""Option groups of a run, as frozen dataclasses (torch-free)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

OutputKind = Literal["ema", "raw"]


@dataclass(frozen=True)
class NetConfig:
    """Which network and input to fit.

    ``input`` is the fixed code ``z``: ``"noise"`` (uniform in [0, 0.1), the
    paper's choice) or ``"meshgrid"`` (2 channels of x/y coordinates).

    The skip net is ``levels`` levels of ``channels`` with skips of
    ``skip_channels``, unless per-level widths are given: ``channels_down``,
    ``channels_up`` and ``channels_skip`` (0 drops a level's skip). The given
    ones must have one length, which is then the depth, and ``levels`` is
    ignored; one left ``None`` repeats ``channels`` (or ``skip_channels``).
    ``kernel_*`` are the odd kernel sizes of the encoder, decoder and skip
    convolutions, ``need1x1_up`` adds a 1x1 block after each decoder conv,
    ``downsample_mode`` replaces the stride-2 conv with a conv and pooling
    (``"avg"``, ``"max"``) or a Lanczos blur-and-decimate, and ``activation``
    picks the non-linearity ("Swish" is SiLU), as in the reference code.
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
    channels_down: tuple[int, ...] | None = None
    channels_up: tuple[int, ...] | None = None
    channels_skip: tuple[int, ...] | None = None
    kernel_down: int = 3
    kernel_up: int = 3
    kernel_skip: int = 1
    need1x1_up: bool = True
    downsample_mode: Literal["stride", "avg", "max", "lanczos2", "lanczos3"] = "stride"
    activation: Literal["LeakyReLU", "Swish", "ELU", "none"] = "LeakyReLU"

    def __post_init__(self) -> None:
        for name in ("channels", "levels", "input_channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"NetConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.skip_channels < 0:
            raise ValueError(f"NetConfig.skip_channels must be >= 0, got {self.skip_channels}")
        given: dict[str, tuple[int, ...]] = {}
        for name, low in (("channels_down", 1), ("channels_up", 1), ("channels_skip", 0)):
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, (tuple, list)) or not value or any(
                    isinstance(v, bool) or not isinstance(v, int) or v < low for v in value):
                raise ValueError(
                    f"NetConfig.{name} must be a non-empty tuple of ints >= {low}, got {value!r}")
            # Lists (from a parser or JSON) become tuples, so the config stays hashable.
            object.__setattr__(self, name, tuple(value))
            given[name] = tuple(value)
        if len({len(v) for v in given.values()}) > 1:
            listed = ", ".join(f"{k}={v!r}" for k, v in given.items())
            raise ValueError(f"NetConfig per-level channels must have one length, got {listed}")
        for name in ("kernel_down", "kernel_up", "kernel_skip"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value % 2 == 0:
                raise ValueError(f"NetConfig.{name} must be an odd int >= 1, got {value!r}")
        if not isinstance(self.need1x1_up, bool):
            raise ValueError(f"NetConfig.need1x1_up must be a bool, got {self.need1x1_up!r}")
        for name, choices in (("downsample_mode", ("stride", "avg", "max", "lanczos2", "lanczos3")),
                              ("activation", ("LeakyReLU", "Swish", "ELU", "none"))):
            if getattr(self, name) not in choices:
                raise ValueError(f"NetConfig.{name} must be one of {choices}, got {getattr(self, name)!r}")

    @property
    def depth(self) -> int:
        """Number of levels: the length of the per-level channels if given, else ``levels``."""
        given = [v for v in (self.channels_down, self.channels_up, self.channels_skip) if v is not None]
        return len(given[0]) if given else self.levels

    def level_channels(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """``(channels_down, channels_up, channels_skip)``, one entry per level."""
        return (self.channels_down or (self.channels,) * self.depth,
                self.channels_up or (self.channels,) * self.depth,
                self.channels_skip or (self.skip_channels,) * self.depth)

    @property
    def size_multiple(self) -> int:
        return 2**self.depth


@dataclass(frozen=True)
class EarlyStopConfig:
    """ES-WMV (Wang et al., TMLR 2023): stop once the windowed moving variance of
    the outputs has not reached a new minimum for ``patience`` iterations.

    ``signal`` picks the sequence whose variance is watched: the raw outputs
    (the paper) or their moving average. ``min_delta`` counts a minimum as new
    only when it undercuts the previous one by that relative margin (0: the
    paper); on the averaged outputs, whose variance keeps creeping down after
    the PSNR peak, a margin turns the detector into a knee detector.

    ``noise_gate`` (the discrepancy principle; ``None``: off) keeps the detector
    shut until the fit has reached the measurement's noise: until the loss per
    measured entry is at most ``noise_gate * sigma^2``, with ``sigma`` estimated
    from the measurement (:mod:`dip_engine.noise`). Minima seen before that do
    not count. A noise-free measurement (inpainting's known pixels, a clean
    low-resolution image) then runs until it is fitted to its own fine-texture
    level instead of stopping while the fit still improves.

    ``noise_floor`` (``None``: off; at most the gate) ends the run once the loss
    has fallen to ``noise_floor * sigma^2``: a fit that far below the noise
    reproduces the noise itself, whatever the variance does. On the averaged
    outputs the variance can keep dropping by the margin well past the PSNR
    peak on a small image; the run then returns the output at its minimum.
    """

    window: int = 100
    patience: int = 1000
    signal: OutputKind = "raw"
    min_delta: float = 0.0
    noise_gate: float | None = None
    noise_floor: float | None = None

    def __post_init__(self) -> None:
        if self.signal not in ("raw", "ema"):
            raise ValueError(f"EarlyStopConfig.signal must be 'raw' or 'ema', got {self.signal!r}")
        if not 0.0 <= self.min_delta < 1.0:
            raise ValueError(f"EarlyStopConfig.min_delta must be in [0, 1), got {self.min_delta}")
        if self.window < 2:
            raise ValueError(f"EarlyStopConfig.window must be >= 2, got {self.window}")
        if self.patience < 1:
            raise ValueError(f"EarlyStopConfig.patience must be >= 1, got {self.patience}")
        if self.noise_gate is not None and not self.noise_gate > 0:
            raise ValueError(f"EarlyStopConfig.noise_gate must be > 0 or None, got {self.noise_gate}")
        if self.noise_floor is not None and not (0 < self.noise_floor <= (self.noise_gate or math.inf)):
            raise ValueError(f"EarlyStopConfig.noise_floor must be > 0 and at most noise_gate ({self.noise_gate}), "
                             f"or None; got {self.noise_floor}")


@dataclass(frozen=True)
class FitConfig:
    """Hyperparameters of the optimisation loop.

    Args:
        iterations: iteration cap.
        lr: Adam learning rate (constant).
        reg_noise_std: std of the fresh Gaussian jitter added to ``z`` each iteration.
        ema: output averaging weight (``0`` disables): ``avg = ema * avg + (1 - ema) * out``.
        ema_start: ``"debiased"`` starts the average at zero and divides by
            ``1 - ema**t`` (as Adam's moments); ``"first"`` seeds it with the first
            output, as the reference code does (that random output then weighs on
            short runs).
        backtrack_db: undo a drop of more than this in the PSNR against the
            degraded input (``None`` disables).
        backtrack_rule: ``"rollback"`` checks every ``backtrack_every`` iterations
            against the last accepted check, keeps the weights that produced the
            checked output (taken before the step), and on a drop restores the
            weights, Adam's moments, the output average and the early-stopping
            window, so the spike leaves no trace. ``"reference"`` is the authors'
            notebook rule: checked every iteration but those where ``i % log_every
            == 0`` (0-based ``i``), parameters only, the average keeps the spike, and
            the step still runs with the spike's gradients.
        backtrack_every: iterations between rollback checks; ``None``: at log points,
            where the loss is read on the host anyway.
        early_stop: ES-WMV settings, ``None`` to run to the cap.
        output: which output a run returns and snapshots: the average (``"ema"``) or
            the raw one; a raw run's last output is ``net(z)`` without jitter, as the
            reference code returns it.
        log_every: iterations between logged points (loss, PSNR, SSIM).
        snapshot_every: iterations between snapshot PNGs; ``None``: at every log point.
        max_snapshots: at most this many snapshots (``0``: none): past it the interval
            is widened to a multiple of itself, so snapshots stay evenly spaced.
        precision: ``"bf16"`` runs the network under bfloat16 autocast (the loss, the
            average and the early-stopping window stay in float32); on CPUs with AMX and
            on GPUs the convolutions run several times faster. ``"auto"``: bf16 where the
            device has bf16 hardware (:func:`dip_engine.hardware.bf16_is_fast`), else fp32.
        channels_last: keep the network's activations in NHWC layout, which oneDNN and
            cuDNN convolutions prefer.
        cuda_graph: on a CUDA device, capture the forward and backward pass once and replay
            it each step (:class:`dip_engine.cuda_graph.GraphedStep`), one launch instead of
            hundreds; the optimiser step, backtracking and logging stay eager. Ignored on
            other devices.
    """

    iterations: int = 3000
    lr: float = 0.01
    reg_noise_std: float = 1.0 / 30.0
    ema: float = 0.99
    ema_start: Literal["debiased", "first"] = "debiased"
    backtrack_db: float | None = 5.0
    backtrack_rule: Literal["rollback", "reference"] = "rollback"
    backtrack_every: int | None = None
    early_stop: EarlyStopConfig | None = field(default_factory=EarlyStopConfig)
    output: OutputKind = "ema"
    log_every: int = 50
    snapshot_every: int | None = None
    max_snapshots: int = 100
    precision: Literal["fp32", "bf16", "auto"] = "fp32"
    channels_last: bool = False
    cuda_graph: bool = False

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ValueError(f"FitConfig.iterations must be >= 1, got {self.iterations}")
        if self.lr <= 0:
            raise ValueError(f"FitConfig.lr must be > 0, got {self.lr}")
        if self.reg_noise_std < 0:
            raise ValueError(f"FitConfig.reg_noise_std must be >= 0, got {self.reg_noise_std}")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"FitConfig.ema must be in [0, 1), got {self.ema}")
        if self.ema_start not in ("debiased", "first"):
            raise ValueError(f"FitConfig.ema_start must be 'debiased' or 'first', got {self.ema_start!r}")
        if self.backtrack_rule not in ("rollback", "reference"):
            raise ValueError(f"FitConfig.backtrack_rule must be 'rollback' or 'reference', got {self.backtrack_rule!r}")
        if self.log_every < 1 or (self.backtrack_every is not None and self.backtrack_every < 1):
            raise ValueError(f"log_every and backtrack_every must be >= 1, got {self.log_every}, {self.backtrack_every}")
        if self.snapshot_every is not None and self.snapshot_every < 1:
            raise ValueError(f"FitConfig.snapshot_every must be >= 1 or None, got {self.snapshot_every}")
        if self.max_snapshots < 0:
            raise ValueError(f"FitConfig.max_snapshots must be >= 0, got {self.max_snapshots}")
        if self.output not in ("ema", "raw"):
            raise ValueError(f"FitConfig.output must be 'ema' or 'raw', got {self.output!r}")
        if self.precision not in ("fp32", "bf16", "auto"):
            raise ValueError(f"FitConfig.precision must be 'fp32', 'bf16' or 'auto', got {self.precision!r}")

    @property
    def snapshot_interval(self) -> int | None:
        """Iterations between snapshots once the cap is applied (``None``: no snapshots)."""
        if self.max_snapshots == 0:
            return None
        every = self.snapshot_every or self.log_every
        return every * -(-(self.iterations // every) // self.max_snapshots) or every


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs beyond its inputs.

    Attributes:
        net: the network.
        fit: the loop.
        downsample_kernel: super-resolution's model of the low-resolution image.
        holdout: fraction of the measured pixels left out of the fit, where the task has a classical
            answer (inpainting with exact known pixels, denoising): on them the net's answer is
            weighed against the classical one (``dip_engine.blend``). ``0``: off.
    """

    net: NetConfig
    fit: FitConfig
    downsample_kernel: str = "lanczos2"
    holdout: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.holdout < 0.5:
            raise ValueError(f"RunConfig.holdout must be in [0, 0.5), got {self.holdout!r}")
