"""The queue between the API and the workers: the task's name, every Celery option, and the
producer that hands job ids to the workers by that name (no task code, no torch here)."""

from __future__ import annotations

from typing import Any
from urllib.parse import SplitResult, parse_qs, urlsplit

from celery import Celery
from kombu.exceptions import OperationalError

from core.config import Settings

RESTORE_TASK = "dip.restore"


def broker_url(settings: Settings) -> str:
    """The broker's URL: ``redis_url``, or with ``redis_sentinels`` one ``sentinel://`` URL per sentinel
    (kombu's syntax), each carrying ``redis_url``'s credentials and database.

    Raises:
        ValueError: Neither is set.
    """
    if not settings.redis_sentinels:
        if not settings.redis_url:
            raise ValueError("DIP_REDIS_URL is not set: workers and the API need a Redis URL "
                             "(`dip serve` starts a private Redis and sets it), or DIP_REDIS_SENTINELS")
        return settings.redis_url
    # Every URL carries them: kombu moves on to the next URL when a connection fails.
    url = urlsplit(settings.redis_url or "redis://")
    userinfo = url.netloc.rpartition("@")[0]  # as written, still percent-encoded
    credentials = f"{userinfo}@" if userinfo else ""
    db = _database(url)
    return ";".join(f"sentinel://{credentials}{_netloc_host(host)}:{port}/{db}"
                    for host, port in settings.sentinel_addresses)


def celery_config(settings: Settings) -> dict[str, Any]:
    """Every Celery option the service sets, for producers and workers alike."""
    # Redis hands an unacknowledged message to another worker after this long; it
    # must outlast the hard time limit or a long job would run twice.
    transport = {"visibility_timeout": settings.visibility_timeout_s}
    sentinel = {"master_name": settings.redis_sentinel_master} if settings.redis_sentinels else {}
    return {
        "broker_url": broker_url(settings),
        "broker_transport_options": {**transport, **sentinel, "fanout_prefix": True, "fanout_patterns": True},
        # Reconnect to a restarted or unreachable Redis for as long as it takes: running
        # jobs go on meanwhile (their lease, not their message, says who runs them).
        "broker_connection_retry_on_startup": True,
        "broker_connection_retry": True,
        "broker_connection_max_retries": None,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        # Job state lives in the job store; no result backend, so no result keys.
        "result_backend": None,
        "result_backend_transport_options": transport,
        "task_ignore_result": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "event_serializer": "json",
        "task_default_queue": settings.queue,
        # A job is acknowledged only when it ends, and one whose pool process dies goes
        # back to the queue at once (the task caps the attempts). A whole worker that
        # dies leaves its message unacknowledged for the visibility timeout: the lease
        # reaper (worker.recovery) re-queues such a job within seconds instead.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_soft_time_limit": settings.soft_time_limit_s,
        "task_time_limit": settings.hard_time_limit_s,
        "worker_concurrency": settings.worker_concurrency,
        # Release memory fragmented by many jobs (and any CUDA context) now and then.
        "worker_max_tasks_per_child": 50,
        # SIGTERM (warm shutdown) waits for running jobs, which hand themselves back at
        # once (worker.maintenance); a cold shutdown (SIGQUIT) still gives them this long.
        "worker_soft_shutdown_timeout": 30.0,
    }


def _database(url: SplitResult) -> int:
    # As redis-py reads a URL: the path's number, unless the query names a db.
    query = parse_qs(url.query).get("db")
    text = query[0] if query else url.path.strip("/")
    return int(text) if text.isdigit() else 0


def _netloc_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def producer_app(settings: Settings) -> Celery:
    """A Celery app that sends tasks the way the workers expect them (no task code)."""
    app = Celery("dip", set_as_current=False)
    app.conf.update(celery_config(settings))
    return app


class BrokerUnavailable(Exception):
    """The message could not be sent: the broker was unreachable (after Celery's own retries)."""


class JobQueue:
    """Producer side of the Celery queue.

    Args:
        celery: An app configured like the workers' (broker, serializer, queue).
        queue: The queue the workers consume.
    """

    def __init__(self, celery: Celery, *, queue: str) -> None:
        if not queue:
            raise ValueError(f"queue must be a non-empty name, got {queue!r}")
        self._celery = celery
        self._queue = queue

    @classmethod
    def from_settings(cls, settings: Settings) -> JobQueue:
        return cls(producer_app(settings), queue=settings.queue)

    def enqueue(self, job_id: str, *, time_limit_s: int | None = None, kill_after_s: int = 300) -> None:
        """Send job ``job_id`` to a worker (blocking: call it from a thread in async code).

        The Celery task id is the job id, so logs and Flower show the same id.

        Args:
            time_limit_s: Soft wall-time limit of each run (the task is told and
                ends the job ``failed``); ``None``: the workers' default.
            kill_after_s: With ``time_limit_s``, the run is killed this much later
                if it has not stopped.

        Raises:
            BrokerUnavailable: The broker was unreachable; most likely nothing was sent.
        """
        if time_limit_s is not None and (isinstance(time_limit_s, bool) or not isinstance(time_limit_s, int)
                                         or time_limit_s < 1):
            raise ValueError(f"time_limit_s must be a positive int or None, got {time_limit_s!r}")
        if isinstance(kill_after_s, bool) or not isinstance(kill_after_s, int) or kill_after_s < 1:
            raise ValueError(f"kill_after_s must be a positive int, got {kill_after_s!r}")
        # The limits travel in the message, so a redelivered job keeps them.
        limits = {} if time_limit_s is None else {"soft_time_limit": time_limit_s,
                                                  "time_limit": time_limit_s + kill_after_s}
        try:
            self._celery.send_task(RESTORE_TASK, args=[job_id], queue=self._queue, task_id=job_id, **limits)
        except OperationalError as exc:
            raise BrokerUnavailable(str(exc)) from exc

    def close(self) -> None:
        self._celery.close()
