"""Getting jobs whose worker vanished running again.

A job's message is acknowledged only when its run ends, but Redis hands an
unacknowledged message to another worker only after the visibility timeout
(hours). The lease notices a dead worker within seconds: each worker's
maintenance step calls :func:`reap`, which re-queues each job whose lease has
lapsed (or fails it at the attempt cap) and sends it a new message. A
re-queued job stays in the lease index until its message is known to be
sent, so a reaper that dies half-way is covered by the next one.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass

from celery import Celery

from core.config import Settings
from core.queue import RESTORE_TASK
from core.store import ReapOutcome, WorkerStore

# send(job_id, dispatch_id, time_limit_s): publish a message that runs the job, with the
# job's own wall-time limit (None: the workers' default).
Send = Callable[[str, str, int | None], None]


@dataclass(frozen=True)
class ReapReport:
    requeued: list[str]  # running, but their worker stopped renewing the lease: sent again
    resent: list[str]    # queued, but their message was never confirmed sent: sent again
    failed: list[str]    # their worker died on the last allowed attempt


def new_dispatch_id() -> str:
    return secrets.token_hex(6)


def celery_sender(app: Celery, *, task: str, queue: str, kill_after_s: int) -> Send:
    """A :data:`Send` publishing ``task`` on ``queue`` (task id: ``<job id>-<dispatch id>``).

    As the API's first message does, a job's time limit travels in the message:
    soft at ``time_limit_s``, killed ``kill_after_s`` later.
    """
    def send(job_id: str, dispatch_id: str, time_limit_s: int | None) -> None:
        limits = {} if time_limit_s is None else {"soft_time_limit": time_limit_s,
                                                  "time_limit": time_limit_s + kill_after_s}
        app.send_task(task, args=[job_id], queue=queue, task_id=f"{job_id}-{dispatch_id}", **limits)
    return send


def worker_sender(app: Celery, settings: Settings) -> Send:
    """The :data:`Send` of a worker: the restore task on the service's queue, with the
    same time limits as the API's first message."""
    return celery_sender(app, task=RESTORE_TASK, queue=settings.queue,
                         kill_after_s=max(1, settings.hard_time_limit_s - settings.soft_time_limit_s))


def dispatch(store: WorkerStore, job_id: str, dispatch_id: str, send: Send) -> None:
    """Send the job's message, then clear its pending dispatch (a reaper resends it if we die between)."""
    send(job_id, dispatch_id, store.time_limit_s(job_id))
    store.confirm_dispatch(job_id, dispatch_id=dispatch_id)


def reap(store: WorkerStore, send: Send, *, max_attempts: int, dispatch_grace_s: float,
         margin_s: float = 0.0, limit: int = 100) -> ReapReport:
    """Re-queue (or fail, at the attempt cap) the jobs whose lease has lapsed.

    Args:
        store: The job store.
        send: Publishes a job's message.
        max_attempts: A job whose worker died on its last allowed attempt fails.
        dispatch_grace_s: How long a re-queued job waits for its message to be
            confirmed before another reaper sends one again.
        margin_s: Only leases that expired longer ago than this: a holder cut off
            from Redis stops at its lease's expiry, and may still be finishing an
            iteration then (``Settings.lease_margin_s``).
        limit: Jobs handled per call (the rest go next time).
    """
    report = ReapReport(requeued=[], resent=[], failed=[])
    for job_id in store.expired_leases(margin_s=margin_s, limit=limit):
        dispatch_id = new_dispatch_id()
        outcome = store.reap(job_id, max_attempts=max_attempts, dispatch_id=dispatch_id,
                             dispatch_grace_s=dispatch_grace_s, margin_s=margin_s)
        if outcome in (ReapOutcome.requeued, ReapOutcome.dispatch):
            dispatch(store, job_id, dispatch_id, send)
            (report.requeued if outcome is ReapOutcome.requeued else report.resent).append(job_id)
        elif outcome is ReapOutcome.failed:
            report.failed.append(job_id)
    return report
