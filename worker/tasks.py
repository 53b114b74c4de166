"""The one Celery task: run a restoration job and record how it ended."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from celery import Task, shared_task
from celery.exceptions import Reject, SoftTimeLimitExceeded

from core.config import Settings
from core.layout import OUT_DIR, output_file_name
from core.process import pid_alive
from core.queue import RESTORE_TASK
from core.results import ResultsStore, ResultsUnavailable, open_results
from core.schemas import JobCreate, Metrics
from core.store import Claim, ClaimOutcome, JobRecord, JobStatus, StoreError, StoreUnavailable, WorkerStore
from dip_engine.errors import InputError
from dip_engine.restore import RestoreInputs, RestoreLimits, RestoreRequest, RestoreResult, restore_batch
from worker.batching import gather
from worker.failures import (DISK_FULL, OUT_OF_MEMORY, DeviceHealth, disk_full_error, is_out_of_memory,
                             out_of_memory_message, release_memory)
from worker.fault_injection import HOLD_FILE, maybe_crash, maybe_fail, maybe_hold, maybe_slow
from worker.lease import LeaseKeeper, LeaseLost
from worker.outage import until_store_answers
from worker.progress import JobReporter
from worker.recovery import Send, dispatch, new_dispatch_id, worker_sender
from worker.signals import select_device
from worker.workspace import RESULTS_UNAVAILABLE, Workspace

log = logging.getLogger(__name__)


class JobTask(Task):
    """Task base holding this process's store connection (Celery makes one task
    instance per process, so it is opened after the fork, on first use)."""

    _store: WorkerStore | None = None
    _health: DeviceHealth | None = None
    _results: ResultsStore | None = None

    @property
    def settings(self) -> Settings:
        return self.app.conf.dip_settings

    @property
    def health(self) -> DeviceHealth:
        if self._health is None:
            self._health = DeviceHealth(self.settings.device_failure_limit)
        return self._health

    @property
    def results(self) -> ResultsStore:
        if self._results is None:
            self._results = open_results(self.settings)
        return self._results

    @property
    def store(self) -> WorkerStore:
        if self._store is None:
            # A call stuck on a silent Redis must not outlast the lease's margin: the
            # fence (worker.lease) is checked between calls.
            self._store = WorkerStore.from_settings(self.settings, retention_s=self.settings.retention_s,
                                                    redispatch_s=self.settings.redispatch_s,
                                                    socket_timeout_s=min(10.0, self.settings.lease_margin_s / 2))
        return self._store


@shared_task(name=RESTORE_TASK, base=JobTask, bind=True)
def restore_job(self: JobTask, job_id: str) -> str:
    """Run job ``job_id`` unless it was canceled, deleted, failed too often or runs
    elsewhere. Returns its status when this delivery is done with it."""
    node = self.request.hostname or "worker"
    settings = self.settings
    if self.health.tripped:
        if not self.health.announced:
            _stop_taking_jobs(self, node)
        # Delivered before this worker's consumer stopped: back to the queue, for a healthy worker.
        raise Reject(f"this worker stopped taking jobs ({self.health.reason})", requeue=True)
    maybe_hold(HOLD_FILE, job_id, settings.var_dir)
    claim = _claim_or_send_again(self, job_id, node=node)
    if claim.outcome is ClaimOutcome.claimed and claim.unreadable:
        return _fail_unreadable(self.store, job_id, claim, settings)
    if claim.outcome is not ClaimOutcome.claimed or claim.record is None:
        log.info("job %s not run: %s%s", job_id, claim.outcome.value,
                 f" (held by {claim.holder})" if claim.holder else "")
        return claim.outcome.value
    log.info("job %s: attempt %d on %s:%d", job_id, claim.attempt, node, os.getpid())
    maybe_crash("crash_on_start", job_id)
    # The job's own limit travels in its message (Celery enforces it); else the workers' default.
    time_limit_s = (self.request.timelimit or (None, None))[1] or settings.soft_time_limit_s
    claims = [claim, *gather(self.store, claim, settings, results=self.results, worker=f"{node}:{os.getpid()}")]
    if len(claims) > 1:
        log.info("job %s: batched with %s", job_id, ", ".join(c.record.id for c in claims[1:] if c.record))
    statuses = run_jobs(self.store, claims, settings, results=self.results, worker=f"{node}:{os.getppid()}", parent_pid=os.getppid(),
                        send=worker_sender(self.app, settings), time_limit_s=time_limit_s, health=self.health)
    if self.health.tripped and not self.health.announced:
        _stop_taking_jobs(self, node)
    for each, status in zip(claims, statuses):
        log.info("job %s: %s", each.record.id if each.record else job_id,
                 "lease lost, left to its new holder" if status is None else status.value)
    return "lease_lost" if statuses[0] is None else statuses[0].value


def _claim_or_send_again(task: JobTask, job_id: str, *, node: str) -> Claim:
    """The claim, retried while Redis refuses it for now (full, read-only, unreachable).

    Past ``redis_retry_s`` the job's message is sent again for later (Celery's retry): acking
    this delivery on an error would leave the job queued with no message. While Redis refuses
    that publish too, this delivery is kept (unacknowledged) and the claim tried again. A claim
    that fails otherwise (a script error, which waiting cannot fix) is sent again at most
    ``max_attempts`` times, then given up on, logged; a queued job is still sent again every
    ``redispatch_s`` (``worker.recovery``).
    """
    settings = task.settings
    while True:
        try:
            return until_store_answers(lambda: _claim(task.store, job_id, node=node, settings=settings),
                                       within_s=settings.redis_retry_s, what=f"the claim of job {job_id}")
        except StoreError as exc:
            transient = isinstance(exc, StoreUnavailable)
            if not transient and task.request.retries >= settings.max_attempts:
                log.error("job %s: its claim failed %d times (%s); giving this message up, the job stays "
                          "queued", job_id, task.request.retries + 1, exc)
                raise
            delay_s = min(settings.redis_retry_s, 60.0)
            log.warning("job %s: the claim %s (%s); sending its message again, to run in %.0f s", job_id,
                        "is still refused" if transient else "failed", exc, delay_s)
            try:
                raise task.retry(exc=exc, countdown=delay_s, max_retries=None)
            except Reject as refused:  # the broker refused the new message: keep this one, try again
                log.warning("job %s: its message could not be sent again (%s); keeping this delivery and "
                            "claiming again", job_id, refused.reason)


def _fail_unreadable(store: WorkerStore, job_id: str, claim: Claim, settings: Settings) -> str:
    """Fail a job claimed whose record cannot be parsed: no run can read it."""
    error = ("invalid_record", f"the job's stored record could not be read ({claim.unreadable})")
    log.error("job %s: %s; failed", job_id, error[1])
    recorded = until_store_answers(lambda: store.finish(job_id, JobStatus.failed, token=claim.token, error=error),
                                   within_s=settings.redis_retry_s, what=f"the failure of job {job_id}")
    return JobStatus.failed.value if recorded else "lease_lost"


def _stop_taking_jobs(task: JobTask, node: str) -> None:
    """Stop this worker consuming the queue (its device keeps failing jobs), and say so for /readyz."""
    health, settings = task.health, task.settings
    reason = (f"its device failed {health.failures} jobs in a row (DIP_DEVICE_FAILURE_LIMIT="
              f"{health.limit}); last: {health.reason}")
    log.error("worker %s stops taking jobs: %s. Queued jobs wait for other workers; restart this one once "
              "its device is fixed", node, reason)
    try:
        until_store_answers(lambda: task.store.mark_unhealthy(node, reason=reason, since=health.tripped_at or 0.0),
                            within_s=settings.redis_retry_s, what=f"the health of worker {node}")
    except StoreError as exc:
        log.warning("worker %s: could not publish that it stopped taking jobs (%s)", node, exc)
    try:  # through the broker to this worker's main process, which owns the consumer
        task.app.control.cancel_consumer(settings.queue, destination=[node])
    except Exception as exc:  # noqa: BLE001 - the next delivery tries again, and goes back to the queue
        log.warning("worker %s: could not stop its consumer yet (%s)", node, exc)
        return
    health.announced = True


def _claim(store: WorkerStore, job_id: str, *, node: str, settings: Settings) -> Claim:
    claim = store.claim(job_id, worker=f"{node}:{os.getpid()}", max_attempts=settings.max_attempts,
                        lease_s=settings.lease_s)
    if claim.outcome is ClaimOutcome.busy and (_died_here(claim.holder, node)
                                               or claim.holder == f"{node}:{os.getpid()}"):
        # A pool process of this worker held it and was killed; Celery redelivers such a
        # job at once, and waiting for its lease to lapse would only delay it. Or this very
        # process claimed it, but the reply was lost and the claim is being retried.
        claim = store.claim(job_id, worker=f"{node}:{os.getpid()}", max_attempts=settings.max_attempts,
                            lease_s=settings.lease_s, take_over=claim.holder_token)
    return claim


def _died_here(holder: str, node: str) -> bool:
    """Whether ``holder`` (``<node>:<pid>``) was a process of this node that no longer exists."""
    holder_node, _, pid = holder.rpartition(":")
    return holder_node == node and pid.isdigit() and not pid_alive(int(pid))


def run_jobs(store: WorkerStore, claims: Sequence[Claim], settings: Settings, *, results: ResultsStore,
             worker: str, send: Send, parent_pid: int | None = None, time_limit_s: float | None = None,
             health: DeviceHealth | None = None) -> list[JobStatus | None]:
    """Run the engine on claimed jobs, as one batch where they can share a model, and write
    how each ended.

    ``time_limit_s`` is the soft time limit this run is under (for the error message).
    ``health`` counts this run's device or disk failure (or its success).

    Returns:
        Each job's final status, in order; ``queued`` if it was handed back (the worker is
        shutting down, the results disk is full or the results store unreachable); ``None`` if its lease was lost (another
        worker runs it: nothing written).
    """
    records = [claim.record for claim in claims]
    assert all(record is not None for record in records)
    workspaces = [Workspace(results, record.id, settings) for record in records]  # type: ignore[union-attr]
    directories = [workspace.directory for workspace in workspaces]
    with ExitStack() as held:
        for workspace in workspaces:
            held.callback(workspace.close)
        leases = [held.enter_context(LeaseKeeper(store, record.id, claim.token, lease_s=settings.lease_s,
                                                 held_since=claim.sent_at))
                  for claim, record in zip(claims, records)]  # type: ignore[union-attr]
        reporters = [JobReporter(store, lease, directory, progress_interval_s=settings.progress_interval_s,
                                 worker=worker, parent_pid=parent_pid)
                     for lease, directory in zip(leases, directories)]
        outcomes: list[RestoreResult | tuple[str, str] | None] = [None] * len(claims)
        requests: dict[int, RestoreRequest] = {}
        for i, (record, workspace, reporter) in enumerate(zip(records, workspaces, reporters)):
            try:
                workspace.pull()
                requests[i] = _request(record, workspace, reporter, settings)  # type: ignore[arg-type]
            except ResultsUnavailable as exc:
                log.error("job %s: its files could not be fetched (%s); handing it back", record.id, exc)  # type: ignore[union-attr]
                outcomes[i] = (RESULTS_UNAVAILABLE, str(exc))
            except InputError as exc:
                outcomes[i] = (exc.code, exc.message)
            except Exception as exc:  # noqa: BLE001 - a record the engine cannot read fails that job only
                log.exception("job %s failed", record.id)  # type: ignore[union-attr]
                outcomes[i] = ("internal_error", f"{type(exc).__name__}: {exc}")
        limits = RestoreLimits(checkpoint_every=settings.checkpoint_every, resume=True,
                               max_pixels=settings.max_pixels, max_iterations=settings.max_iterations,
                               max_snapshots=settings.max_snapshots)
        device_failure, engine_failed = "", False
        try:
            for i in requests:
                maybe_fail(records[i].id)  # type: ignore[union-attr]
            ran = restore_batch(list(requests.values()), limits, isolate=(LeaseLost,))
            for i, result in zip(requests, ran):
                outcomes[i] = (result.code, result.message) if isinstance(result, InputError) else result  # type: ignore[assignment]
        except SoftTimeLimitExceeded:
            limit_s = time_limit_s or settings.soft_time_limit_s
            for i in requests:
                outcomes[i] = ("time_limit", f"the job ran longer than its {limit_s:g} s time limit")
        except Exception as exc:  # noqa: BLE001 - any engine failure ends the jobs, never the worker
            ids, engine_failed = ", ".join(r.id for r in records), True  # type: ignore[union-attr]
            if is_out_of_memory(exc):  # the job's size, not the device: it fails, and does not count
                log.warning("jobs %s ran out of memory: %s", ids, exc)
                device = requests[next(iter(requests))].spec.device if requests else "device"
                for i in requests:
                    outcomes[i] = (OUT_OF_MEMORY, out_of_memory_message(requests[i].inputs.image, device=device))
            elif isinstance(exc, ResultsUnavailable):  # the object store, not this worker: handed back
                log.error("jobs %s: the results store stays unavailable (%s); handing them back", ids, exc)
                for i in requests:
                    outcomes[i] = (RESULTS_UNAVAILABLE, str(exc))
            elif (full := disk_full_error(exc)) is not None:  # the volume, not the job: handed back
                log.error("jobs %s: the results disk is full (%s); handing them back", ids, full)
                device_failure = f"results disk full ({full})"
                for i in requests:
                    outcomes[i] = (DISK_FULL, str(full))
            else:
                log.exception("jobs %s failed", ids)
                device_failure = f"{type(exc).__name__}: {exc}"
                for i in requests:
                    outcomes[i] = ("internal_error", f"{type(exc).__name__}: {exc}")
        if engine_failed:
            release_memory()  # once the error, and the tensors its traceback held, are gone
        if health is not None and requests:
            if device_failure:
                health.failed(device_failure)
            elif any(isinstance(outcome, RestoreResult) for outcome in outcomes):
                health.ok()
        return [_end(store, lease, reporter, workspace, outcome, settings, send)
                for lease, reporter, workspace, outcome in zip(leases, reporters, workspaces, outcomes)]


def _request(record: JobRecord, workspace: Workspace, reporter: JobReporter, settings: Settings) -> RestoreRequest:
    directory = workspace.directory
    spec = JobCreate.model_validate(record.params).to_spec(device=select_device(settings.device),
                                                           deterministic=settings.deterministic)
    inputs = RestoreInputs(image=_input(record, directory, "input."), mask=_input(record, directory, "mask."),
                           kernel=_input(record, directory, "kernel."),
                           reference=_input(record, directory, "reference."))
    return RestoreRequest(spec, inputs, directory / OUT_DIR, callbacks=[workspace, reporter, *maybe_slow(record.id)])


def _end(store: WorkerStore, lease: LeaseKeeper, reporter: JobReporter, workspace: Workspace,
         outcome: RestoreResult | tuple[str, str] | Exception | None, settings: Settings,
         send: Send) -> JobStatus | None:
    """Record how one job ended: its result, its error, or its hand-back."""
    job_id = lease.job_id
    if isinstance(outcome, LeaseLost):
        log.warning("%s; stopping without writing its end", outcome)
        return None
    reporter.flush(within_s=settings.redis_retry_s)
    if isinstance(outcome, RestoreResult) and reporter.handed_back:
        lease.stop()
        return _hand_back(store, lease, settings, send)
    if isinstance(outcome, RestoreResult):
        try:
            workspace.push_outputs()  # before the record names them
        except ResultsUnavailable as exc:
            log.error("job %s: its outputs could not be stored (%s); handing it back", job_id, exc)
            outcome = (RESULTS_UNAVAILABLE, str(exc))
    if isinstance(outcome, tuple) and outcome[0] in (DISK_FULL, RESULTS_UNAVAILABLE):
        lease.stop()
        return _hand_back(store, lease, settings, send, reason=outcome[0])
    status = JobStatus.failed
    fields: dict[str, Any] = {}
    files: dict[str, str] = {}
    error = outcome if isinstance(outcome, tuple) else None
    if isinstance(outcome, RestoreResult):
        status = JobStatus.canceled if outcome.stop_reason == "canceled" else JobStatus.succeeded
        files = {output_file_name(kind, path): path.relative_to(workspace.directory).as_posix()
                 for kind, path in outcome.files.items() if path.is_file()}
        metrics = Metrics.of(outcome) or Metrics()
        fields = {"stop_reason": outcome.stop_reason, "iteration": outcome.iterations,
                  **metrics.model_dump(include={"best_iteration", "early_stop_iteration", "psnr_best", "psnr_output"})}
    elif error is None:
        error = ("internal_error", "the run ended without a result")
    # The lease is still renewed while this waits out a Redis outage.
    recorded = until_store_answers(
        lambda: store.finish(job_id, status, token=lease.token, fields=fields, files=files, error=error),
        within_s=settings.redis_retry_s, what=f"the end of job {job_id}")
    if not recorded:
        log.warning("job %s no longer held by this worker (taken over or deleted); its end (%s) is not recorded",
                    job_id, status.value)
        return None
    return status


def _hand_back(store: WorkerStore, lease: LeaseKeeper, settings: Settings, send: Send,
               reason: str = "worker_shutdown") -> JobStatus | None:
    """Re-queue a job stopped for the worker's shutdown (or a full disk), with a new message
    (its checkpoint is kept)."""
    dispatch_id = new_dispatch_id()
    handed = until_store_answers(
        lambda: store.hand_back(lease.job_id, token=lease.token, dispatch_id=dispatch_id,
                                dispatch_grace_s=settings.lease_s, reason=reason),
        within_s=settings.redis_retry_s, what=f"the hand-back of job {lease.job_id}")
    if not handed:
        log.warning("job %s: lease lost before it could be handed back", lease.job_id)
        return None
    try:
        dispatch(store, lease.job_id, dispatch_id, send)
    except Exception as exc:  # noqa: BLE001 - the job is queued either way; a reaper sends it later
        log.warning("job %s handed back, but its message could not be sent (%s); a reaper will send it "
                    "within %.0f s", lease.job_id, exc, settings.lease_s)
    log.info("job %s handed back to the queue", lease.job_id)
    return JobStatus.queued


def _input(record: JobRecord, directory: Path, prefix: str) -> Path | None:
    name = next((name for name in record.files if name.startswith(prefix)), None)
    return None if name is None else directory / record.files[name]
