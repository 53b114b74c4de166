"""The worker's side of the job records (blocking client): claim, report, finish, sweep."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

import redis

from .base import DURATION_BUCKETS, StoreBase, to_json
from .records import JobRecord, JobStatus, encode_fields


class ClaimOutcome(str, Enum):
    claimed = "claimed"    # this delivery runs the job
    gave_up = "gave_up"    # attempt cap passed: the job is now failed
    missing = "missing"    # deleted or expired
    finished = "finished"  # already terminal (canceled while queued, or a late redelivery)


@dataclass(frozen=True)
class Claim:
    outcome: ClaimOutcome
    attempt: int
    record: JobRecord | None


class RunState(str, Enum):
    """What a progress write learnt about the job."""

    running = "running"
    cancel_requested = "cancel_requested"
    gone = "gone"  # no longer running here: deleted, expired or finished elsewhere


class WorkerStore(StoreBase):
    """Job records as a worker process sees them. Build with :meth:`from_url` in the
    process that uses it (after the fork)."""

    @classmethod
    def from_url(cls, url: str, **options: Any) -> WorkerStore:
        client = redis.Redis.from_url(
            url, decode_responses=True, socket_connect_timeout=5, health_check_interval=30
        )
        return cls(client, **options)

    def close(self) -> None:
        self.client.close()

    def get(self, job_id: str) -> JobRecord | None:
        with self.client.pipeline(transaction=False) as pipe:
            self._queue_reads(pipe, job_id)
            return self._parse_reads(pipe.execute())[0]

    def claim(self, job_id: str, *, worker: str, max_attempts: int) -> Claim:
        """Mark a delivered job running, counting the attempt.

        A job found ``running`` is a redelivery after its worker died: it is
        taken over. Past ``max_attempts`` the job is failed instead.
        """
        message = (f"the job was started {max_attempts} times and each time the worker running it "
                   f"died or was killed; giving up (attempt cap {max_attempts})")
        reply, attempt = self._scripts.claim(**self._job_call(job_id, worker, max_attempts, message))
        # Any other reply is the terminal status the job already had.
        outcome = ClaimOutcome(reply) if reply in ClaimOutcome.__members__ else ClaimOutcome.finished
        record = self.get(job_id) if outcome is ClaimOutcome.claimed else None
        return Claim(outcome=outcome, attempt=int(attempt), record=record)

    def report(self, job_id: str, fields: dict[str, Any] | None = None,
               event: dict[str, Any] | None = None) -> RunState:
        """Write progress fields and (optionally) a progress event; learn whether to stop."""
        code = self._scripts.progress(**self._job_call(
            job_id, to_json(encode_fields(fields or {})), "" if event is None else to_json(event)))
        return {0: RunState.gone, 1: RunState.running, 2: RunState.cancel_requested}[int(code)]

    def append_history(self, job_id: str, point: dict[str, Any]) -> None:
        self._scripts.append_history(**self._job_call(job_id, to_json(point)))

    def rewind_history(self, job_id: str, *, iteration: int) -> None:
        """Forget points logged after ``iteration`` (a resumed run logs them again)."""
        self._scripts.rewind_history(**self._job_call(job_id, iteration))

    def add_files(self, job_id: str, files: dict[str, str], *, event: dict[str, Any] | None = None) -> None:
        """Publish files written while running (name -> path in the job directory)."""
        self._scripts.add_files(**self._job_call(job_id, to_json(files), "" if event is None else to_json(event)))

    def finish(self, job_id: str, status: JobStatus, *, fields: dict[str, Any] | None = None,
               files: dict[str, str] | None = None, error: tuple[str, str] | None = None) -> bool:
        """Move a running job to a terminal ``status``; ``False`` if it was not running."""
        if not status.is_terminal:
            raise ValueError(f"status must be terminal, got {status.value!r}")
        error_json = "" if error is None else to_json({"code": error[0], "message": error[1]})
        reply = self._scripts.finish(**self._job_call(
            job_id, status.value, to_json(encode_fields(fields or {})), to_json(files or {}), error_json,
            ",".join(str(b) for b in DURATION_BUCKETS), extra_keys=(self.keys.durations,)))
        return reply == "ok"

    def heartbeat(self, worker: str, *, forget_after_s: float = 3600) -> None:
        """Say that ``worker`` is alive (read by ``/readyz``)."""
        self._scripts.heartbeat(keys=[self.keys.workers], args=[worker, forget_after_s])

    def sign_off(self, worker: str) -> None:
        """Say that ``worker`` stopped (it no longer counts as live)."""
        self.client.zrem(self.keys.workers, worker)

    def expired_job_ids(self, *, created_before: float, limit: int = 500) -> list[str]:
        """Indexed jobs whose record has expired (only jobs older than the retention can be)."""
        candidates = self.client.zrangebyscore(self.keys.all_jobs, "-inf", created_before * 1000,
                                               start=0, num=limit)
        with self.client.pipeline(transaction=False) as pipe:
            for job_id in candidates:
                pipe.exists(self.keys.job(job_id))
            alive = pipe.execute()
        return [job_id for job_id, exists in zip(candidates, alive) if not exists]

    def exists(self, job_id: str) -> bool:
        return bool(self.client.exists(self.keys.job(job_id)))

    def purge(self, job_id: str) -> bool:
        """Drop what is left of a job whose record has expired; ``False`` if it is alive."""
        return self._scripts.delete(**self._job_call(job_id, "1")) == "missing"
