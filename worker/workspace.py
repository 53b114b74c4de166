"""A job's folder on the worker that runs it, kept in step with the results store.

With the local results volume the folder *is* the job's folder and nothing is
copied. With object storage it is a private scratch folder: the job's files
(inputs, and the checkpoint and snapshots of an earlier run, maybe on another
host) are downloaded before the run, each snapshot and checkpoint is uploaded
as soon as it is written, and the outputs before the job's end is recorded, so
that a record never names a file the store lacks.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from core.config import Settings
from core.layout import OUT_DIR
from core.results import ResultsStore, ResultsUnavailable
from dip_engine.callbacks import Callback, FitState

log = logging.getLogger(__name__)

RESULTS_UNAVAILABLE = "results_unavailable"


class Workspace(Callback):
    """Args:
        results: The results store.
        job_id: The job.
        settings: ``scratch_dir`` (the folder's parent with object storage) and ``results_retry_s``
            (how long an upload is retried before the job is handed back).
    """

    def __init__(self, results: ResultsStore, job_id: str, settings: Settings) -> None:
        self.results = results
        self.job_id = job_id
        self.retry_s = settings.results_retry_s
        local = results.local_path(job_id, ".")
        self.directory = local if local is not None and results.shared_disk else settings.scratch_dir / job_id
        self._copied = not results.shared_disk  # a scratch copy of what the store holds

    def pull(self) -> None:
        """Download what the store holds of the job that the folder lacks."""
        if not self._copied:
            return
        for name, info in self._retry(lambda: self.results.list(self.job_id), "list").items():
            path = self.directory / name
            if not (path.is_file() and path.stat().st_size == info.size):
                self._retry(lambda name=name, path=path: self.results.get_file(self.job_id, name, path),
                            f"download {name}")

    def push(self, path: Path) -> None:
        """Upload one file of the folder (retried for ``results_retry_s``, then ResultsUnavailable)."""
        if not self._copied or not path.is_file():
            return
        name = path.relative_to(self.directory).as_posix()
        self._retry(lambda: self.results.put_file(self.job_id, name, path), f"upload {name}")

    def push_outputs(self) -> None:
        """Upload the run's folder as it ended, and drop from the store what the run removed
        (thinned snapshots, the checkpoint of a finished job)."""
        if not self._copied:
            return
        out = self.directory / OUT_DIR
        local = {path.relative_to(self.directory).as_posix() for path in out.rglob("*") if path.is_file()}
        stored = self._retry(lambda: self.results.list(self.job_id), "list")
        for name in sorted(local):
            path = self.directory / name
            if stored.get(name) is None or stored[name].size != path.stat().st_size or name.endswith(".json"):
                self.push(path)
        gone = [name for name in stored if name.startswith(f"{OUT_DIR}/") and name not in local]
        if gone:
            self._retry(lambda: self.results.delete(self.job_id, gone), "delete")

    def close(self) -> None:
        """Remove the scratch copy (with object storage; the store keeps everything)."""
        if self._copied:
            shutil.rmtree(self.directory, ignore_errors=True)

    # The engine's hooks: each snapshot and checkpoint goes up as soon as it is written,
    # before the reporter (next in the list) names it in the job's record.
    def on_snapshot(self, state: FitState, path: Path) -> None:
        self.push(path)

    def on_checkpoint(self, state: FitState, path: Path) -> None:
        self.push(path.with_name("checkpoint.json"))
        self.push(path)

    def _retry(self, call, what: str):  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + self.retry_s
        delay_s = 0.5
        while True:
            try:
                return call()
            except ResultsUnavailable as exc:
                if time.monotonic() + delay_s > deadline:
                    raise ResultsUnavailable(f"job {self.job_id}: {what}: the results store is still "
                                             f"unavailable after {self.retry_s:g} s ({exc})") from exc
                log.warning("job %s: %s failed (%s); retrying in %.1f s", self.job_id, what, exc, delay_s)
                time.sleep(delay_s)
                delay_s = min(delay_s * 2, 10.0)
