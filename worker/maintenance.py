"""Housekeeping that ``dip worker`` does on its own, with no beat process.

A worker bootstep runs two jobs on the worker's timer (in the main process,
between messages): a heartbeat that ``/readyz`` reads, and the retention
sweep. Redis expires job records by itself; the sweep then deletes what
Redis cannot: the job directories on the results volume and the index
entries of expired jobs.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.exceptions
from celery import bootsteps

from api.layout import JOB_ID, STAGING_DIR, job_dir
from api.store import WorkerStore

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_S = 5.0


@dataclass(frozen=True)
class SweepReport:
    expired_jobs: int
    orphan_dirs: int


def sweep(store: WorkerStore, results_dir: Path, *, now: float | None = None, grace_s: float = 3600,
          limit: int = 500) -> SweepReport:
    """Delete expired jobs' files and index entries, and directories that no record owns.

    Args:
        store: The job store; its ``retention_s`` says which jobs can have expired.
        results_dir: The results volume.
        now: Unix time (default: the current time).
        grace_s: Leave alone directories changed more recently than this: an
            upload being staged, or a job dir whose record is being written.
        limit: Expired jobs handled per call (the rest go next time).
    """
    now = time.time() if now is None else now
    expired = 0
    for job_id in store.expired_job_ids(created_before=now - store.retention_s, limit=limit):
        if store.purge(job_id):
            shutil.rmtree(job_dir(results_dir, job_id), ignore_errors=True)
            expired += 1
    orphans = 0
    if results_dir.is_dir():
        staging = results_dir / STAGING_DIR
        candidates = [*staging.iterdir()] if staging.is_dir() else []
        candidates += [entry for entry in results_dir.iterdir()
                       if JOB_ID.fullmatch(entry.name) and not store.exists(entry.name)]
        for entry in candidates:
            if entry.is_dir() and entry.stat().st_mtime < now - grace_s:
                shutil.rmtree(entry, ignore_errors=True)
                orphans += 1
    return SweepReport(expired_jobs=expired, orphan_dirs=orphans)


class Maintenance(bootsteps.StartStopStep):
    """Worker bootstep: heartbeat every few seconds, retention sweep every ``sweep_interval_s``."""

    requires = {"celery.worker.components:Timer"}

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self._timers: list[Any] = []
        self._store: WorkerStore | None = None
        self._name = ""
        self._results_dir = Path()

    def start(self, worker: Any) -> None:
        settings = worker.app.conf.dip_settings
        self._store = WorkerStore.from_url(settings.redis_url, retention_s=settings.retention_s)
        self._name = worker.hostname
        self._results_dir = settings.results_dir
        self._beat()
        self._timers = [
            worker.timer.call_repeatedly(HEARTBEAT_INTERVAL_S, self._beat, priority=10),
            worker.timer.call_after(1.0, self._sweep),
            worker.timer.call_repeatedly(settings.sweep_interval_s, self._sweep),
        ]

    def stop(self, worker: Any) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers = []
        if self._store is not None:
            try:
                self._store.sign_off(self._name)
            except redis.exceptions.RedisError as exc:
                log.warning("could not sign off: %s", exc)
            self._store.close()
            self._store = None

    def _beat(self) -> None:
        try:
            self._store.heartbeat(self._name)
        except redis.exceptions.RedisError as exc:
            log.warning("heartbeat failed: %s", exc)

    def _sweep(self) -> None:
        try:
            report = sweep(self._store, self._results_dir)
        except (redis.exceptions.RedisError, OSError) as exc:
            log.warning("retention sweep failed: %s", exc)
            return
        if report.expired_jobs or report.orphan_dirs:
            log.info("retention sweep: %d expired jobs and %d orphan directories deleted",
                     report.expired_jobs, report.orphan_dirs)
