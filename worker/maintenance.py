"""Housekeeping that ``dip worker`` does on its own, with no beat process.

A worker bootstep runs three jobs on the worker's timer (in the main process,
between messages): a heartbeat that ``/readyz`` reads; the reaper, which
re-queues jobs whose worker vanished (their lease lapsed, see
``worker.recovery``); and the retention sweep. Redis expires job records by
itself; the sweep then deletes what Redis cannot: the job directories on the
results volume and the index entries of expired jobs.
It also starts the webhook deliverer's threads (``worker.webhooks``).

When the worker starts shutting down (SIGTERM: Celery's warm shutdown waits
for running jobs), the step raises the worker's drain flag; each running job
sees it within a fraction of a second, stops with a checkpoint and hands
itself back to the queue, so the shutdown is quick and the job resumes on
another worker.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery import bootsteps
from celery.signals import worker_shutting_down

from core.config import Settings
from core.results import ResultsStore, ResultsUnavailable, clear_stale_staging, open_results, staging_dir
from core.store import StoreError, WorkerStore, check_eviction_policy
from worker.recovery import Send, reap, worker_sender
from worker.webhooks import Deliverer

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_S = 5.0


@dataclass(frozen=True)
class SweepReport:
    expired_jobs: int  # whose record expired, files deleted
    orphan_dirs: int  # deleted: abandoned uploads, and job files without a record past the retention
    orphans_kept: int = 0  # jobs' files without a record, kept until a retention after their newest file


def sweep(store: WorkerStore, results: ResultsStore, *, staging: Path | None = None, now: float | None = None,
          grace_s: float = 3600, limit: int = 500) -> SweepReport:
    """Delete expired jobs' files and index entries, abandoned uploads, and job files that no
    record owns once they are as old as the retention.

    A job's files are deleted only a full retention period after its own newest file, record or
    no record: a record can be missing because Redis lost it (a crash's last second, a failover to
    a lagging replica, FLUSHDB, another database), and the results are then the only copy.

    Args:
        store: The job store; its ``retention_s`` says which jobs can have expired.
        results: The results store (the local volume or a bucket): files are deleted by job prefix.
        staging: Where the API stages uploads, when it is on this host's disk (the local volume).
        now: Unix time (default: the current time).
        grace_s: Leave alone uploads being staged for less than this.
        limit: Expired jobs handled per call (the rest go next time).
    """
    now = time.time() if now is None else now
    retention_s = store.retention_s
    expired = orphans = kept = 0
    for job_id in store.expired_job_ids(created_before=now - retention_s, limit=limit):
        if store.purge(job_id):
            newest = results.newest_change(job_id)
            if newest is None or newest < now - retention_s:
                results.delete(job_id)
                expired += 1
    if staging is not None:
        orphans += clear_stale_staging(staging, older_than_s=grace_s, now=now)
    for job_id in list(results.job_ids()):
        if store.exists(job_id):
            continue
        newest = results.newest_change(job_id)
        if newest is None:
            continue  # deleted meanwhile
        if newest < now - retention_s:
            results.delete(job_id)
            orphans += 1
        else:
            kept += 1
            log.warning("orphan results of job %s in %r: no job record (lost by Redis?); kept until %s, a "
                        "retention period after its newest file", job_id, results,
                        time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(newest + retention_s)))
    return SweepReport(expired, orphans, kept)


class Maintenance(bootsteps.StartStopStep):
    """Worker bootstep: heartbeat every few seconds, reaper every half lease, retention sweep
    every ``sweep_interval_s``; raises the drain flag when the worker shuts down."""

    requires = {"celery.worker.components:Timer"}

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self._timers: list[Any] = []
        self._store: WorkerStore | None = None
        self._name = ""
        self._results: ResultsStore | None = None
        self._settings: Settings | None = None
        self._send: Send | None = None
        self._deliverer: Deliverer | None = None

    def start(self, worker: Any) -> None:
        settings = self._settings = worker.app.conf.dip_settings
        self._store = WorkerStore.from_settings(settings, retention_s=settings.retention_s,
                                                redispatch_s=settings.redispatch_s)
        self._check_eviction(settings)
        self._name = worker.hostname
        try:  # a worker restarted under the same name starts healthy (worker.failures)
            self._store.clear_unhealthy(self._name)
        except StoreError as exc:
            log.warning("could not clear this worker's health entry: %s", exc)
        self._results = open_results(settings)
        self._send = worker_sender(worker.app, settings)
        worker_shutting_down.connect(self._drain, weak=False)
        self._beat()
        reap_every_s = max(1.0, settings.lease_s / 2)
        self._timers = [
            worker.timer.call_repeatedly(HEARTBEAT_INTERVAL_S, self._beat, priority=10),
            worker.timer.call_after(0.5, self._reap),
            worker.timer.call_repeatedly(reap_every_s, self._reap),
            worker.timer.call_after(1.0, self._sweep),
            worker.timer.call_repeatedly(settings.sweep_interval_s, self._sweep),
            # Once the pool has forked its processes: they need not inherit the delivery threads.
            worker.timer.call_after(1.0, self._start_deliverer),
        ]

    def _start_deliverer(self) -> None:
        self._deliverer = Deliverer(self._settings)  # type: ignore[arg-type]
        self._deliverer.start()

    def _check_eviction(self, settings: Settings) -> None:
        try:
            policy = self._store.maxmemory_policy()  # type: ignore[union-attr]
        except StoreError as exc:
            log.warning("could not read Redis's eviction policy (%s); checked again at the next start", exc)
            return
        try:
            check_eviction_policy(policy, allowed=settings.allow_eviction)
        except RuntimeError as refusal:
            log.critical("%s", refusal)
            raise SystemExit(f"refusing to start: {refusal}") from None

    def stop(self, worker: Any) -> None:
        worker_shutting_down.disconnect(self._drain)
        for timer in self._timers:
            timer.cancel()
        self._timers = []
        if self._deliverer is not None:
            self._deliverer.stop()
            self._deliverer = None
        if self._store is not None:
            try:
                self._store.sign_off(self._name)
            except StoreError as exc:
                log.warning("could not sign off: %s", exc)
            self._store.close()
            self._store = None

    def _beat(self) -> None:
        try:
            self._store.heartbeat(self._name)
        except StoreError as exc:
            log.warning("heartbeat failed: %s", exc)

    def _reap(self) -> None:
        try:
            report = reap(self._store, self._send, max_attempts=self._settings.max_attempts,
                          dispatch_grace_s=self._settings.lease_s, margin_s=self._settings.lease_margin_s)
        except Exception as exc:  # noqa: BLE001 - Redis or the broker away: the next round retries
            log.warning("reaper failed: %s", exc)
            return
        for job_id in report.requeued:
            log.warning("job %s: its worker stopped renewing the lease; re-queued", job_id)
        for job_id in report.resent:
            log.warning("job %s: queued without a confirmed message, or waiting long after its last one; "
                        "sent again", job_id)
        for job_id in report.failed:
            log.warning("job %s: its worker died on the last allowed attempt; failed", job_id)

    def _drain(self, **_: Any) -> None:
        # Runs inside Celery's signal handler, which may have interrupted this process's
        # own Redis calls: a client of its own cannot wait on their connection pool's lock.
        settings = self._settings
        store = WorkerStore.from_settings(settings, retention_s=settings.retention_s)
        try:
            store.set_draining(f"{self._name}:{os.getpid()}")
            log.info("shutting down: running jobs hand themselves back")
        except StoreError as exc:
            log.warning("could not tell running jobs to hand themselves back (%s); "
                        "they run on until the worker is stopped", exc)
        finally:
            store.close()

    def _sweep(self) -> None:
        try:
            report = sweep(self._store, self._results, staging=staging_dir(self._settings, self._results))
        except (StoreError, ResultsUnavailable, OSError) as exc:
            log.warning("retention sweep failed: %s", exc)
            return
        if report.expired_jobs or report.orphan_dirs or report.orphans_kept:
            log.info("retention sweep: %d expired jobs and %d old orphan directories deleted, %d orphan "
                     "directories kept", report.expired_jobs, report.orphan_dirs, report.orphans_kept)
