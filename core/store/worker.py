"""The worker's side of the job records (blocking client): claim, lease, report, finish, reap, sweep."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .base import DURATION_BUCKETS, StoreBase, to_json
from .connect import close_sync, sync_client
from .errors import neutral_methods
from .health import clear_unhealthy, mark_unhealthy
from .records import JobRecord, JobStatus, encode_fields
from .webhooks import Deliveries

if TYPE_CHECKING:
    from core.config import Settings


class ClaimOutcome(str, Enum):
    claimed = "claimed"    # this delivery runs the job
    busy = "busy"          # a live lease of another holder runs it: drop this delivery
    gave_up = "gave_up"    # attempt cap passed: the job is now failed
    missing = "missing"    # deleted or expired
    finished = "finished"  # already terminal (canceled while queued, or a late redelivery)


@dataclass(frozen=True)
class Claim:
    """What a claim found. ``token`` is the new lease's (when claimed); ``holder`` and
    ``holder_token`` name the live lease that made it ``busy``. ``sent_at``: when the claim
    was sent (``time.monotonic()``), where the new lease's fence starts counting."""

    outcome: ClaimOutcome
    attempt: int
    record: JobRecord | None
    token: str = ""
    holder: str = ""
    holder_token: str = ""
    sent_at: float | None = None
    unreadable: str = ""  # claimed, but its record could not be parsed (why): fail it, do not run it


class RunState(str, Enum):
    """What a progress write learnt about the job."""

    running = "running"
    cancel_requested = "cancel_requested"
    draining = "draining"  # the worker is shutting down: hand the job back
    gone = "gone"  # no longer running under this lease: deleted, expired, finished or taken over


class Renewal(str, Enum):
    renewed = "renewed"
    taken_back = "taken_back"  # a reaper had re-queued it, nobody had claimed it: running again
    lost = "lost"              # another worker holds it now, or it ended: stop


class ReapOutcome(str, Enum):
    requeued = "requeued"  # its worker stopped renewing the lease: queued again, send a message
    dispatch = "dispatch"  # queued, but its message may never have been sent: send one
    failed = "failed"      # its worker died with the last allowed attempt
    live = "live"          # renewed meanwhile
    gone = "gone"          # ended or deleted


def _connection_options(socket_timeout_s: float) -> dict[str, Any]:
    # Fail fast while Redis is away (the caller decides what to retry); the one retry
    # replaces a pooled connection that a Redis restart (or a failover) has closed.
    return {"decode_responses": True, "socket_connect_timeout": min(2.0, socket_timeout_s),
            "socket_timeout": socket_timeout_s, "health_check_interval": 30, "retry": Retry(NoBackoff(), 1)}


def attempt_cap_message(max_attempts: int) -> str:
    return (f"the job was started {max_attempts} times and each time the worker running it "
            f"died or was killed; giving up (attempt cap {max_attempts})")


@neutral_methods
class WorkerStore(StoreBase):
    """Job records as a worker process sees them. Build with :meth:`from_settings` in the
    process that uses it (after the fork).

    Every write of a run carries the run's lease ``token``: once another worker has
    taken the job over, the old holder's writes change nothing.
    """

    @classmethod
    def from_url(cls, url: str, *, socket_timeout_s: float = 10.0, **options: Any) -> WorkerStore:
        """``socket_timeout_s``: the longest one call may wait on a silent Redis (a running
        job's store keeps it under its lease's margin, so its fence is never held up)."""
        return cls(redis.Redis.from_url(url, **_connection_options(socket_timeout_s)), **options)

    @classmethod
    def from_settings(cls, settings: Settings, *, socket_timeout_s: float = 10.0, **options: Any) -> WorkerStore:
        """The service's Redis: through ``settings.redis_sentinels`` when set, else ``redis_url``
        (``socket_timeout_s``: as :meth:`from_url`)."""
        return cls(sync_client(settings, **_connection_options(socket_timeout_s)), **options)

    def close(self) -> None:
        close_sync(self.client)

    def get(self, job_id: str) -> JobRecord | None:
        with self.client.pipeline(transaction=False) as pipe:
            self._queue_reads(pipe, job_id)
            return self._parse_reads(pipe.execute())[0]

    def claim(self, job_id: str, *, worker: str, max_attempts: int, lease_s: float,
              take_over: str = "") -> Claim:
        """Mark a delivered job running under a new lease, counting the attempt.

        A job found ``running`` whose lease has expired (its worker died) is taken
        over; one whose lease is live is left alone (``busy``) unless ``take_over``
        is that lease's token. Past ``max_attempts`` the job is failed instead.
        """
        token = secrets.token_urlsafe(12)
        sent_at = time.monotonic()
        reply = self._scripts.claim(**self._job_call(
            job_id, worker, max_attempts, attempt_cap_message(max_attempts), token, lease_s, take_over,
            extra_keys=(self.keys.leases,)))
        outcome_name, attempt = reply[0], int(reply[1])
        # Any other reply is the terminal status the job already had.
        outcome = ClaimOutcome(outcome_name) if outcome_name in ClaimOutcome.__members__ else ClaimOutcome.finished
        if outcome is ClaimOutcome.busy:
            return Claim(outcome, attempt, None, holder=reply[2], holder_token=reply[3])
        record, unreadable = None, ""
        try:
            record = self.get(job_id) if outcome is ClaimOutcome.claimed else None
        except (KeyError, TypeError, ValueError) as exc:  # a field missing or malformed: retrying cannot help
            unreadable = f"{type(exc).__name__}: {exc}"
        return Claim(outcome, attempt, record, token=token if outcome is ClaimOutcome.claimed else "",
                     sent_at=sent_at, unreadable=unreadable)

    def renew(self, job_id: str, *, token: str, lease_s: float) -> Renewal:
        """Extend the lease ``token`` holds by ``lease_s`` from now (Redis clock)."""
        code = int(self._scripts.renew(**self._job_call(job_id, token, lease_s, extra_keys=(self.keys.leases,))))
        return {0: Renewal.lost, 1: Renewal.renewed, 2: Renewal.taken_back}[code]

    def report(self, job_id: str, fields: dict[str, Any] | None = None, event: dict[str, Any] | None = None,
               *, token: str, worker: str = "") -> RunState:
        """Write progress fields and (optionally) a progress event; learn whether to stop.

        ``worker`` (``<node>:<main pid>``) names the worker whose drain flag is read.
        """
        code = self._scripts.progress(**self._job_call(
            job_id, to_json(encode_fields(fields or {})), "" if event is None else to_json(event), token,
            extra_keys=(self.keys.draining(worker),)))
        return {0: RunState.gone, 1: RunState.running, 2: RunState.cancel_requested,
                3: RunState.draining}[int(code)]

    def append_history(self, job_id: str, point: dict[str, Any], *, token: str) -> bool:
        return bool(self._scripts.append_history(**self._job_call(job_id, to_json(point), token)))

    def rewind_history(self, job_id: str, *, iteration: int, token: str) -> bool:
        """Forget points logged after ``iteration`` (a resumed run logs them again)."""
        return int(self._scripts.rewind_history(**self._job_call(job_id, iteration, token))) >= 0

    def add_files(self, job_id: str, files: dict[str, str], *, token: str,
                  event: dict[str, Any] | None = None) -> bool:
        """Publish files written while running (name -> path in the job directory)."""
        return bool(self._scripts.add_files(**self._job_call(
            job_id, to_json(files), "" if event is None else to_json(event), token)))

    def finish(self, job_id: str, status: JobStatus, *, token: str, fields: dict[str, Any] | None = None,
               files: dict[str, str] | None = None, error: tuple[str, str] | None = None) -> bool:
        """Move the job held by ``token`` to a terminal ``status``; ``False`` if it no longer holds it."""
        if not status.is_terminal:
            raise ValueError(f"status must be terminal, got {status.value!r}")
        error_json = "" if error is None else to_json({"code": error[0], "message": error[1]})
        reply = self._scripts.finish(**self._job_call(
            job_id, status.value, to_json(encode_fields(fields or {})), to_json(files or {}), error_json,
            ",".join(str(b) for b in DURATION_BUCKETS), token,
            extra_keys=(self.keys.durations, self.keys.leases)))
        return reply == "ok"

    def hand_back(self, job_id: str, *, token: str, dispatch_id: str, dispatch_grace_s: float,
                  reason: str = "worker_shutdown") -> bool:
        """Put a job stopped early back in the queue, not counting the attempt.

        Until :meth:`confirm_dispatch` says its new message went out, the job stays in
        the lease index, so a reaper sends one after ``dispatch_grace_s`` if the caller dies.
        """
        return bool(self._scripts.hand_back(**self._job_call(
            job_id, token, dispatch_id, dispatch_grace_s, reason, extra_keys=(self.keys.leases,))))

    def confirm_dispatch(self, job_id: str, *, dispatch_id: str) -> None:
        self._scripts.confirm_dispatch(**self._job_call(job_id, dispatch_id, self.redispatch_s,
                                                         extra_keys=(self.keys.leases,)))

    def maxmemory_policy(self) -> str:
        """The server's eviction policy (from INFO, which managed Redis services allow where CONFIG is off)."""
        return str(self.client.info("memory").get("maxmemory_policy", "noeviction"))

    def queued_ids(self, *, limit: int = 100) -> list[str]:
        """Ids of queued jobs, oldest first (what a batching worker looks through for company)."""
        return self.client.zrange(self.keys.by_status(JobStatus.queued), 0, limit - 1)

    def time_limit_s(self, job_id: str) -> int | None:
        """The job's own wall-time limit per run, as recorded at submission (``None``: none)."""
        raw = self.client.hget(self.keys.job(job_id), "time_limit_s")
        return int(raw) if raw else None

    def expired_leases(self, *, margin_s: float = 0.0, limit: int = 100) -> list[str]:
        """Ids in the lease index whose entry expired more than ``margin_s`` ago (Redis clock)."""
        seconds, micros = self.client.time()
        return self.client.zrangebyscore(self.keys.leases, "-inf", seconds + micros / 1e6 - margin_s,
                                         start=0, num=limit)

    def reap(self, job_id: str, *, max_attempts: int, dispatch_id: str, dispatch_grace_s: float,
             margin_s: float = 0.0) -> ReapOutcome:
        """Take back a job whose lease expired more than ``margin_s`` ago: re-queue it, or fail
        it at the attempt cap."""
        return ReapOutcome(self._scripts.reap(**self._job_call(
            job_id, max_attempts, attempt_cap_message(max_attempts), dispatch_id, dispatch_grace_s, margin_s,
            extra_keys=(self.keys.leases,))))

    def set_draining(self, worker: str, *, ttl_s: int = 3600) -> None:
        """Tell the jobs of ``worker`` (``<node>:<main pid>``) to hand themselves back."""
        self.client.set(self.keys.draining(worker), "1", ex=ttl_s)

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

    def mark_unhealthy(self, worker: str, *, reason: str, since: float) -> None:
        """Say that ``worker`` stopped taking jobs, and why (``core.store.health``)."""
        mark_unhealthy(self.client, self.keys, worker, reason=reason, since=since)

    def clear_unhealthy(self, worker: str) -> None:
        """Forget ``worker``'s entry: it (re)starts with a clean slate."""
        clear_unhealthy(self.client, self.keys, worker)

    def deliveries(self) -> Deliveries:
        """The webhook deliverer's side of the store, on this store's connection."""
        return Deliveries(self.client, self.keys, retention_s=self.retention_s)

    def exists(self, job_id: str) -> bool:
        return bool(self.client.exists(self.keys.job(job_id)))

    def purge(self, job_id: str) -> bool:
        """Drop what is left of a job whose record has expired; ``False`` if it is alive."""
        return self._scripts.delete(**self._job_call(job_id, "1", extra_keys=(self.keys.leases,))) == "missing"
