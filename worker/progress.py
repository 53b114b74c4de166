"""The engine callback that connects a running job to the job store.

It publishes small events through a throttle: progress at most every
``progress_interval_s``; history points, snapshots and the final progress
always. Every iteration it may also look at the job's cancel flag, at most
every ``cancel_poll_s``, so stopping costs the loop next to nothing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from api.layout import snapshot_file_name
from api.schemas import Metrics, Progress
from api.store import RunState, WorkerStore
from dip_engine.callbacks import Callback, FitState
from dip_engine.history import LogRecord


class Throttle:
    """Says "go" at most once per ``interval_s``."""

    def __init__(self, interval_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if not interval_s >= 0:
            raise ValueError(f"interval_s must be >= 0, got {interval_s!r}")
        self._interval = interval_s
        self._clock = clock
        self._last = -math.inf

    def ready(self) -> bool:
        now = self._clock()
        if now - self._last < self._interval:
            return False
        self._last = now
        return True

    def reset(self) -> None:
        """Count from now (something equivalent just happened)."""
        self._last = self._clock()


class JobReporter(Callback):
    """Publishes a job's progress, history and snapshots; stops the run when it is canceled.

    Args:
        store: The worker's job store.
        job_id: The job being run.
        job_dir: The job's directory (snapshot paths are stored relative to it).
        progress_interval_s: Least time between progress events.
        cancel_poll_s: Least time between looks at the cancel flag.
        clock: Monotonic clock (tests pass a fake one).
    """

    def __init__(self, store: WorkerStore, job_id: str, job_dir: Path, *, progress_interval_s: float,
                 cancel_poll_s: float = 0.2, clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._job_id = job_id
        self._job_dir = job_dir
        self._progress = Throttle(progress_interval_s, clock=clock)
        self._poll = Throttle(cancel_poll_s, clock=clock)

    def on_fit_start(self, state: FitState) -> None:
        # A resumed run starts at its checkpoint and logs the later points again.
        self._store.rewind_history(self._job_id, iteration=state.start_iteration)
        # A cancel that came before the first step is obeyed at the first step,
        # so the run has an output to keep.
        self._publish(state, obey=False)

    def on_step(self, state: FitState) -> None:
        if self._progress.ready():
            self._publish(state)
        elif self._poll.ready():
            self._obey(state, self._store.report(self._job_id))

    def on_log(self, state: FitState, record: LogRecord) -> None:
        self._store.append_history(self._job_id, _finite(record.to_dict()))

    def on_snapshot(self, state: FitState, path: Path) -> None:
        name = snapshot_file_name(path)
        self._store.add_files(self._job_id, {name: path.relative_to(self._job_dir).as_posix()},
                              event={"iteration": state.iteration, "name": name})

    def on_fit_end(self, state: FitState) -> None:
        self._publish(state)

    def _publish(self, state: FitState, *, obey: bool = True) -> None:
        progress = Progress.of(state.iteration, state.total, iterations_per_second=state.iterations_per_second,
                               elapsed_s=state.elapsed_s)
        last = state.last
        metrics = Metrics(
            loss=last.loss if last else None, psnr=last.psnr if last else None,
            psnr_degraded=last.psnr_degraded if last else None, ssim=last.ssim if last else None,
            psnr_best=state.best_psnr, best_iteration=state.best_iteration,
            early_stop_iteration=state.early_stop_iteration,
        )
        fields = _finite({**progress.model_dump(exclude={"fraction", "eta_seconds"}),
                          "start_iteration": state.start_iteration, **metrics.model_dump()})
        event = _finite({"progress": progress.model_dump(), "metrics": metrics.model_dump()})
        run_state = self._store.report(self._job_id, fields, event)
        self._progress.reset()
        if obey:
            self._obey(state, run_state)
            self._poll.reset()  # that write also read the cancel flag

    @staticmethod
    def _obey(state: FitState, run_state: RunState) -> None:
        if run_state is not RunState.running:
            state.request_stop("canceled")


def _finite(values: dict[str, Any]) -> dict[str, Any]:
    """Non-finite floats (a diverging loss) as ``None``: JSON has no NaN."""
    return {key: _finite(value) if isinstance(value, dict)
            else None if isinstance(value, float) and not math.isfinite(value) else value
            for key, value in values.items()}
