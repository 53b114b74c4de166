"""The one Celery task: run a restoration job and record how it ended."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from celery import Task, shared_task
from celery.exceptions import SoftTimeLimitExceeded

from api.config import Settings
from api.layout import OUT_DIR, job_dir, output_file_name
from api.schemas import JobCreate
from api.store import ClaimOutcome, JobRecord, JobStatus, WorkerStore
from dip_engine.errors import InputError
from dip_engine.restore import RestoreInputs, restore
from worker.celery_app import RESTORE_TASK
from worker.progress import JobReporter
from worker.signals import select_device

log = logging.getLogger(__name__)


class JobTask(Task):
    """Task base holding this process's store connection (Celery makes one task
    instance per process, so it is opened after the fork, on first use)."""

    _store: WorkerStore | None = None

    @property
    def settings(self) -> Settings:
        return self.app.conf.dip_settings

    @property
    def store(self) -> WorkerStore:
        if self._store is None:
            self._store = WorkerStore.from_url(self.settings.redis_url, retention_s=self.settings.retention_s)
        return self._store


@shared_task(name=RESTORE_TASK, base=JobTask, bind=True)
def restore_job(self: JobTask, job_id: str) -> str:
    """Run job ``job_id`` unless it was canceled, deleted or failed too often. Returns its final status."""
    worker = f"{self.request.hostname or 'worker'}:{os.getpid()}"
    claim = self.store.claim(job_id, worker=worker, max_attempts=self.settings.max_attempts)
    if claim.outcome is not ClaimOutcome.claimed or claim.record is None:
        log.info("job %s not run: %s", job_id, claim.outcome.value)
        return claim.outcome.value
    log.info("job %s: attempt %d on %s", job_id, claim.attempt, worker)
    status = run_job(self.store, claim.record, self.settings)
    log.info("job %s %s", job_id, status.value)
    return status.value


def run_job(store: WorkerStore, record: JobRecord, settings: Settings) -> JobStatus:
    """Run the engine on a claimed job and write its final status, outputs and error."""
    directory = job_dir(settings.results_dir, record.id)
    reporter = JobReporter(store, record.id, directory, progress_interval_s=settings.progress_interval_s)
    error: tuple[str, str] | None = None
    try:
        spec = JobCreate.model_validate(record.params).to_spec(device=select_device(settings.device))
        inputs = RestoreInputs(image=_input(record, directory, "input."), mask=_input(record, directory, "mask."),
                               reference=_input(record, directory, "reference."))
        result = restore(spec, inputs, directory / OUT_DIR, callbacks=[reporter],
                         checkpoint_every=settings.checkpoint_every, resume=True, max_pixels=settings.max_pixels,
                         max_iterations=settings.max_iterations)
    except InputError as exc:
        error = (exc.code, exc.message)
    except SoftTimeLimitExceeded:
        error = ("time_limit", f"the job ran longer than the {settings.soft_time_limit_s} s time limit")
    except Exception as exc:  # noqa: BLE001 - any engine failure ends the job, never the worker
        log.exception("job %s failed", record.id)
        error = ("internal_error", f"{type(exc).__name__}: {exc}")
    status = JobStatus.failed
    fields: dict[str, Any] = {}
    files: dict[str, str] = {}
    if error is None:
        status = JobStatus.canceled if result.stop_reason == "canceled" else JobStatus.succeeded
        files = {output_file_name(kind, path): path.relative_to(directory).as_posix()
                 for kind, path in result.files.items() if path.is_file()}
        fields = {"stop_reason": result.stop_reason, "iteration": result.iterations,
                  "best_iteration": result.best_iteration, "early_stop_iteration": result.early_stop_iteration,
                  "psnr_best": result.psnr_best, "psnr_output": result.psnr_output}
    if not store.finish(record.id, status, fields=fields, files=files, error=error):
        log.warning("job %s was no longer running (deleted?); its end (%s) is not recorded",
                    record.id, status.value)
    return status


def _input(record: JobRecord, directory: Path, prefix: str) -> Path | None:
    name = next((name for name in record.files if name.startswith(prefix)), None)
    return None if name is None else directory / record.files[name]
