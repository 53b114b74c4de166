"""Hands job ids to the workers through Celery, by task name (no task code, no torch here)."""

from __future__ import annotations

from celery import Celery
from kombu.exceptions import OperationalError

from api.config import Settings
from worker.celery_app import RESTORE_TASK, create_celery_app


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
        return cls(create_celery_app(settings), queue=settings.queue)

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
