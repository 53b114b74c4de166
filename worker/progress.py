"""The engine callback that connects a running job to the job store.

It publishes small events through a throttle: progress at most every
``progress_interval_s``; history points, snapshots and the final progress
always. Every iteration it may also look at the job's flags, at most every
``cancel_poll_s``, so stopping costs the loop next to nothing:

- cancel requested: stop, keep the partial outputs (the job ends ``canceled``);
- the worker is shutting down (its drain flag), or its main process is gone:
  stop with a checkpoint and hand the job back (see :attr:`JobReporter.handed_back`);
- the lease is lost (another worker runs the job now), or has not been renewed
  for longer than the lease (the fence, see :mod:`worker.lease`): raise
  :class:`LeaseLost` at once, so the run writes no more files, no outputs and no
  final status. Each hook checks it last, since the engine writes right after.

While Redis is unreachable, or refuses writes for now (full, read-only after a
failover), the run goes on: progress is skipped, history points and snapshots
wait and are written in order once Redis answers again.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar


from core.layout import snapshot_file_name, snapshot_order
from core.schemas import Metrics, Progress
from core.store import RunState, StoreUnavailable, WorkerStore
from dip_engine.callbacks import Callback, FitState
from dip_engine.history import LogRecord
from worker.lease import LeaseKeeper, LeaseLost

log = logging.getLogger(__name__)

T = TypeVar("T")


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
    """Publishes a job's progress, history and snapshots; stops the run when it must.

    Args:
        store: The worker's job store.
        lease: The lease of the claimed job (its id and token; whether it is lost).
        job_dir: The job's directory (snapshot paths are stored relative to it).
        progress_interval_s: Least time between progress events.
        cancel_poll_s: Least time between looks at the job's flags.
        worker: ``<node>:<main pid>`` of the worker, whose drain flag is read.
        parent_pid: The worker's main process; if this process's parent changes
            (the main process died), the job is handed back. ``None``: not watched.
        outage_retry_s: While Redis is unreachable, least time between tries.
        clock: Monotonic clock (tests pass a fake one).
    """

    def __init__(self, store: WorkerStore, lease: LeaseKeeper, job_dir: Path, *, progress_interval_s: float,
                 cancel_poll_s: float = 0.2, worker: str = "", parent_pid: int | None = None,
                 outage_retry_s: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._lease = lease
        self._job_id = lease.job_id
        self._job_dir = job_dir
        self._worker = worker
        self._parent_pid = parent_pid
        self._progress = Throttle(progress_interval_s, clock=clock)
        self._poll = Throttle(cancel_poll_s, clock=clock)
        self._outage = Throttle(outage_retry_s, clock=clock)
        self._redis_away = False
        # Writes that wait for Redis, in order: a history rewind, points, snapshots.
        self._rewind_to: int | None = None
        self._points: list[dict[str, Any]] = []
        self._snapshots: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.handed_back = False

    def on_fit_start(self, state: FitState) -> None:
        # A resumed run starts at its checkpoint and logs the later points again. What the
        # checkpoint holds is published again too (the store skips what it has): the run
        # that wrote it may have been cut off from Redis before it could publish it.
        self._rewind_to = state.start_iteration
        self._points = [_finite(record.to_dict()) for record in state.resumed_history]
        self._snapshots = [self._snapshot(path) for path in state.resumed_snapshots
                           if path.is_file() and path.is_relative_to(self._job_dir)]
        # A cancel that came before the first step is obeyed at the first step,
        # so the run has an output to keep.
        self._publish(state, stop=False)

    def on_step(self, state: FitState) -> None:
        self._lease.check()
        if self._progress.ready():
            self._publish(state, stop=True)
        elif self._poll.ready():
            self._obey(state, self._write(lambda: self._store.report(
                self._job_id, token=self._lease.token, worker=self._worker)), stop=True)
        # Again after the writes: one may have waited seconds on a silent Redis, and the
        # loop writes a checkpoint right after this hook.
        self._lease.check()

    def on_log(self, state: FitState, record: LogRecord) -> None:
        self._points.append(_finite(record.to_dict()))
        self._flush()
        self._lease.check()  # a snapshot file may be written next

    def on_snapshot(self, state: FitState, path: Path) -> None:
        self._snapshots.append(self._snapshot(path))
        self._flush()
        self._lease.check()

    def on_fit_end(self, state: FitState) -> None:
        # The loop is over: a stop request could only relabel a finished run.
        self._publish(state, stop=False)
        self._lease.check()  # the outputs are written next

    def _snapshot(self, path: Path) -> tuple[dict[str, str], dict[str, Any]]:
        """(files entry, event data) that publish one snapshot."""
        name = snapshot_file_name(path)
        return {name: path.relative_to(self._job_dir).as_posix()}, {"iteration": snapshot_order(name), "name": name}

    def flush(self, *, within_s: float) -> bool:
        """Write the history points and snapshots that still wait for Redis (the run is over),
        trying for up to ``within_s``; ``False`` if some could not be written."""
        deadline = time.monotonic() + within_s
        while not self._flush(wait=False):
            if time.monotonic() >= deadline:
                log.warning("job %s: %d history points and %d snapshots could not be written: Redis is away",
                            self._job_id, len(self._points), len(self._snapshots))
                return False
            time.sleep(0.2)
        return True

    def _publish(self, state: FitState, *, stop: bool) -> None:
        progress = Progress.of(state.iteration, state.total, iterations_per_second=state.iterations_per_second,
                               elapsed_s=state.elapsed_s, end=state.end)
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
        run_state = self._write(lambda: self._store.report(
            self._job_id, fields, event, token=self._lease.token, worker=self._worker))
        self._progress.reset()
        self._obey(state, run_state, stop=stop)
        if stop:
            self._poll.reset()  # that write also read the flags, and they were obeyed

    def _obey(self, state: FitState, run_state: RunState | None, *, stop: bool) -> None:
        if run_state is RunState.gone and not self._lease.confirm():
            raise LeaseLost(f"job {self._job_id}: another worker runs it now")
        if not stop or state.stop_reason is not None:
            return
        orphaned = self._parent_pid is not None and os.getppid() != self._parent_pid
        if run_state is RunState.cancel_requested:
            state.request_stop("canceled")
        elif run_state is RunState.draining or orphaned:
            # "canceled" is the engine's stop that saves and keeps a checkpoint: the next run resumes from it.
            state.request_stop("canceled")
            self.handed_back = True

    def _write(self, call: Callable[[], T]) -> T | None:
        """``call()`` after the writes that wait for Redis; ``None`` while Redis is unreachable."""
        if not self._flush():
            return None
        return self._try(call)

    def _flush(self, *, wait: bool = True) -> bool:
        """Write what waited for Redis, in order; ``False`` if Redis is still away.
        ``wait=False``: try even if the last try failed less than ``outage_retry_s`` ago."""
        if self._rewind_to is not None:
            iteration = self._rewind_to
            if self._try(lambda: self._store.rewind_history(self._job_id, iteration=iteration,
                                                            token=self._lease.token), wait=wait) is None:
                return False
            self._rewind_to = None
        while self._points:
            point = self._points[0]
            if self._try(lambda: self._store.append_history(self._job_id, point, token=self._lease.token),
                         wait=wait) is None:
                return False
            self._points.pop(0)
        while self._snapshots:
            files, event = self._snapshots[0]
            if self._try(lambda: self._store.add_files(self._job_id, files, event=event,
                                                       token=self._lease.token), wait=wait) is None:
                return False
            self._snapshots.pop(0)
        return True

    def _try(self, call: Callable[[], T], *, wait: bool = True) -> T | None:
        # While Redis is away, try at most every outage_retry_s: a connection attempt
        # to an unreachable host can take a while, and the loop must keep going.
        if wait and self._redis_away and not self._outage.ready():
            return None
        try:
            result = call()
        except StoreUnavailable as exc:
            if not self._redis_away:
                log.warning("job %s: Redis unreachable or refusing writes (%s); running on, progress is "
                            "written once it is back", self._job_id, exc)
            self._redis_away = True
            self._outage.reset()
            return None
        if self._redis_away:
            log.info("job %s: Redis is back", self._job_id)
            self._redis_away = False
        return result


def _finite(values: dict[str, Any]) -> dict[str, Any]:
    """Non-finite floats (a diverging loss) as ``None``: JSON has no NaN."""
    return {key: _finite(value) if isinstance(value, dict)
            else None if isinstance(value, float) and not math.isfinite(value) else value
            for key, value in values.items()}
