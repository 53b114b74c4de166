"""Hooks into the fitting loop: progress, cancellation, and the service's events.

The loop calls every hook of every callback in order. Hooks must be cheap:
``on_step`` runs every iteration and must not synchronise with the device.
A callback stops a run with ``state.request_stop("canceled")``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from .history import LogRecord


@dataclass
class FitState:
    """Where a run stands; shared, read-mostly, with every callback."""

    total: int
    iteration: int = 0
    start_iteration: int = 0
    elapsed_s: float = 0.0
    best_iteration: int | None = None
    best_psnr: float | None = None
    early_stop_iteration: int | None = None
    # Where the run is now expected to end: the cap, or sooner once early stopping is counting
    # down its patience from a minimum. What the ETA counts down to.
    expected_end: int | None = None
    last: LogRecord | None = None
    stop_reason: str | None = None
    # What a resumed run's checkpoint had already logged and written: a callback whose own
    # writes of them were lost (a worker cut off from its store) can publish them again.
    resumed_history: tuple[LogRecord, ...] = ()
    resumed_snapshots: tuple[Path, ...] = ()
    _clock_start: float = field(default_factory=time.monotonic, repr=False)

    def request_stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason

    @property
    def iterations_per_second(self) -> float | None:
        done = self.iteration - self.start_iteration
        run_s = time.monotonic() - self._clock_start
        return done / run_s if done > 0 and run_s > 0 else None

    @property
    def end(self) -> int:
        """The iteration the run is expected to end at (the cap when nothing says sooner)."""
        return self.total if self.expected_end is None else max(self.iteration, min(self.expected_end, self.total))

    @property
    def eta_seconds(self) -> float | None:
        speed = self.iterations_per_second
        return (self.end - self.iteration) / speed if speed else None


class Callback:
    """Base class: override the hooks you need."""

    def on_fit_start(self, state: FitState) -> None:
        pass

    def on_step(self, state: FitState) -> None:
        pass

    def on_log(self, state: FitState, record: LogRecord) -> None:
        pass

    def on_snapshot(self, state: FitState, path: Path) -> None:
        pass

    def on_checkpoint(self, state: FitState, path: Path) -> None:
        pass

    def on_fit_end(self, state: FitState) -> None:
        pass


class ProgressBar(Callback):
    """A tqdm bar showing iteration, loss and PSNR (vs reference when known)."""

    def __init__(self, *, disable: bool = False) -> None:
        self.disable = disable
        self._bar = None

    def on_fit_start(self, state: FitState) -> None:
        from tqdm.auto import tqdm

        self._bar = tqdm(total=state.total, initial=state.iteration, unit="it", disable=self.disable, dynamic_ncols=True)

    def on_step(self, state: FitState) -> None:
        if self._bar is not None:
            self._bar.update(state.iteration - self._bar.n)

    def on_log(self, state: FitState, record: LogRecord) -> None:
        if self._bar is None:
            return
        if self._bar.total != state.end:  # tqdm's ETA counts down to the expected end
            self._bar.total = state.end
        fields = {"loss": f"{record.loss:.2e}"}
        if record.psnr is not None:
            fields["psnr"] = f"{max(record.psnr, record.psnr_avg or -1.0):.2f}"
        else:
            fields["psnr_y"] = f"{record.psnr_degraded:.2f}"
        self._bar.set_postfix(fields, refresh=False)

    def on_fit_end(self, state: FitState) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
