"""ES-WMV: ground-truth-free early stopping for Deep Image Prior.

Wang, Li, Zhuang, Chen, Liang, Sun, "Early Stopping for Deep Image Prior"
(TMLR 2023). The windowed moving variance of the last ``W`` outputs,
``VAR_t = 1/W Σ_w ||x_w - mean(x)||²`` (per pixel), traces a U whose bottom
sits near the PSNR peak: the network has fitted the image but not yet the
noise. We remember the output at the running minimum and stop once no new
minimum has appeared for ``patience`` iterations.

Everything stays on the device: the minimum is tracked with ``torch.where`` so
that the loop never waits for the GPU; only ``detected_iteration`` (read at
log time) synchronises.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .config import EarlyStopConfig
from .forecast import EndForecast
from .noise import NOISE_FREE_SIGMA


class WindowedVariance:
    """Running variance of the last ``window`` tensors, O(1) per update.

    Keeps running sums of x and x² over a ring buffer; re-sums from the buffer
    every ``window`` updates so float32 drift cannot accumulate.
    """

    def __init__(self, window: int) -> None:
        if window < 2:
            raise ValueError(f"window must be >= 2, got {window}")
        self.window = window
        self.count = 0
        self._buffer: Tensor | None = None
        self._sum: Tensor | None = None
        self._sum_sq: Tensor | None = None

    def reset(self) -> None:
        """Empty the window (after a backtrack: the outputs in it belong to a spike)."""
        self.count = 0
        if self._buffer is not None:
            self._sum.zero_()  # type: ignore[union-attr]
            self._sum_sq.zero_()  # type: ignore[union-attr]

    def update(self, x: Tensor) -> Tensor | None:
        """Add ``x``; return the mean per-pixel variance once the window is full."""
        x = x.detach().to(torch.float32)
        if self._buffer is None:
            self._buffer = torch.zeros((self.window, *x.shape), dtype=x.dtype, device=x.device)
            self._sum = torch.zeros_like(x)
            self._sum_sq = torch.zeros_like(x)
        slot = self.count % self.window
        old = self._buffer[slot]
        if self.count >= self.window:
            self._sum.sub_(old)
            self._sum_sq.sub_(old * old)
        old.copy_(x)
        self._sum.add_(x)
        self._sum_sq.add_(x * x)
        self.count += 1
        if self.count % self.window == 0:
            self._sum = self._buffer.sum(0)
            self._sum_sq = (self._buffer * self._buffer).sum(0)
        if self.count < self.window:
            return None
        mean = self._sum / self.window
        return (self._sum_sq / self.window - mean * mean).clamp_min(0).mean()

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, "buffer": self._buffer, "sum": self._sum, "sum_sq": self._sum_sq}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = state["count"]
        self._buffer, self._sum, self._sum_sq = state["buffer"], state["sum"], state["sum_sq"]


class EarlyStopping:
    """ES-WMV detector: tracks the output at the minimum windowed variance.

    Call ``update(iteration, output)`` every iteration; read
    ``detected_iteration`` and ``should_stop(iteration)`` when convenient.
    ``update_variance`` takes a precomputed variance (used by tests on
    synthetic curves).
    """

    def __init__(self, config: EarlyStopConfig, *, noise_sigma: float | None = None,
                 pixels: int | None = None) -> None:
        self.config = config
        # The loss per measured entry below which the detector may act (the noise gate).
        self.fit_target = (None if config.noise_gate is None or noise_sigma is None
                           else config.noise_gate * noise_sigma**2)
        # Noise-free measurements may never reach their gate: their runs are expected to use the cap.
        noisy = noise_sigma is not None and noise_sigma > NOISE_FREE_SIGMA and self.fit_target is not None
        self.forecast = (EndForecast(pixels=pixels, patience=config.patience, gate_target=self.fit_target)
                         if noisy and pixels else None)
        self.gate_open = self.fit_target is None
        self.gate_opened_at: int | None = None
        # Where the search started again once the gate opened (None: no gate, or not open yet). A
        # minimum found since then has moved ``detected_iteration`` past it.
        self._search_start: int | None = None
        # The loss below which the fit reproduces the noise: the run ends there (the noise floor).
        self.floor_target = (None if config.noise_floor is None or noise_sigma is None
                             else config.noise_floor * noise_sigma**2)
        self.floor_reached_at: int | None = None
        self.variance = WindowedVariance(config.window)
        self._best_var: Tensor | None = None
        self._best_iter: Tensor | None = None
        self.candidate: Tensor | None = None
        self.last_variance: Tensor | None = None
        # The iteration as a device scalar, filled in place: no host-to-device copy per step.
        self._iteration: Tensor | None = None

    def update(self, iteration: int, output: Tensor, candidate: Tensor | None = None) -> None:
        """Feed the raw output of ``iteration``; ``candidate`` (default: the output)
        is what is remembered at a new minimum."""
        var = self.variance.update(output)
        if var is not None:
            self.update_variance(iteration, var, output if candidate is None else candidate)

    def update_variance(self, iteration: int, var: Tensor, candidate: Tensor) -> None:
        self.last_variance = var
        if self._best_var is None:
            self._best_var = var.clone()
            self._best_iter = torch.full((), iteration, dtype=torch.long, device=var.device)
            self.candidate = candidate.detach().clone()
            if self.gate_open and self.fit_target is not None:  # the gate opened before the window filled
                self._search_start = iteration
            return
        if self._iteration is None or self._iteration.device != var.device:
            self._iteration = torch.zeros((), dtype=torch.long, device=var.device)
        self._iteration.fill_(iteration)
        better = var < self._best_var * (1.0 - self.config.min_delta)
        self._best_var = torch.where(better, var, self._best_var)
        self._best_iter = torch.where(better, self._iteration, self._best_iter)
        self.candidate = torch.where(better, candidate.detach(), self.candidate)

    @property
    def detected_iteration(self) -> int | None:
        return None if self._best_iter is None else int(self._best_iter)

    def forget_window(self) -> None:
        """Drop the outputs in the window (after a backtrack: they belong to a spike); the
        minimum found so far stays."""
        self.variance.reset()

    def observe_fit(self, iteration: int, fit_mse: float, candidate: Tensor) -> None:
        """Report the loss per measured entry (at log points). Once it reaches the target the
        noise gate opens: the minima seen before are forgotten and ``candidate`` (the
        current output) is where the search starts again. Once it reaches the noise floor, the
        run is over."""
        if not self.gate_open and self.fit_target is not None and fit_mse <= self.fit_target:
            self.gate_open, self.gate_opened_at = True, iteration
            if self.last_variance is not None and self._best_var is not None:
                self._best_var = self.last_variance.clone()
                self._best_iter = torch.full((), iteration, dtype=torch.long, device=self._best_var.device)
                self.candidate = candidate.detach().clone()
                self._search_start = iteration
        if self.floor_reached_at is None and self.floor_target is not None and fit_mse <= self.floor_target:
            self.floor_reached_at = iteration
        if self.forecast is not None and not self.gate_open:
            self.forecast.observe(iteration, fit_mse)

    @property
    def returns_candidate(self) -> bool:
        """Whether the run returns ``candidate`` rather than its last output (reads the device once).

        A minimum seen before the fit reached the measurement's noise says nothing about
        overfitting: a run whose gate never opened returns its last output. Where the gate opened
        is only where the search started again: if no minimum beat it by the margin, the
        averaged output was still settling (rising, on a 256 px photo) and the run returns its
        last output too, unless it ended at the noise floor, past which that output reproduces
        the noise."""
        if not self.gate_open or self.candidate is None:
            return False
        if self._search_start is None or self.floor_reached_at is not None:
            return True
        return self.detected_iteration != self._search_start

    def expected_end(self, cap: int, iteration: int = 0) -> int:
        """Where the run ends if no new minimum comes: patience after the last one, once the
        gate is open. Before that, a noisy run's forecast end (:mod:`dip_engine.forecast`), never
        sooner than patience after ``iteration``, the soonest the gate could let it end; the cap
        for a noise-free run."""
        detected = self.detected_iteration
        if self.gate_open and detected is not None:
            return min(cap, detected + self.config.patience)
        if self.forecast is None:
            return cap
        return self.forecast.end(cap, iteration)

    def should_stop(self, iteration: int) -> bool:
        if self.floor_reached_at is not None:
            return True
        detected = self.detected_iteration
        return self.gate_open and detected is not None and iteration - detected >= self.config.patience

    def state_dict(self) -> dict[str, Any]:
        return {
            "variance": self.variance.state_dict(),
            "best_var": self._best_var,
            "best_iter": self._best_iter,
            "candidate": self.candidate,
            "last_variance": self.last_variance,
            "gate_open": self.gate_open,
            "gate_opened_at": self.gate_opened_at,
            "floor_reached_at": self.floor_reached_at,
            "search_start": self._search_start,
            "forecast": None if self.forecast is None else self.forecast.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.variance.load_state_dict(state["variance"])
        self._best_var, self._best_iter = state["best_var"], state["best_iter"]
        self.candidate, self.last_variance = state["candidate"], state["last_variance"]
        self.gate_open = state.get("gate_open", self.fit_target is None)
        self.gate_opened_at = state.get("gate_opened_at")
        self.floor_reached_at = state.get("floor_reached_at")
        # A checkpoint from before this was kept has none: its open gate counts as having found its minimum.
        self._search_start = state.get("search_start")
        if self.forecast is not None and state.get("forecast") is not None:
            self.forecast.load_state_dict(state["forecast"])
