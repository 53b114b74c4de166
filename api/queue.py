"""Hands job ids to the workers through Celery, by task name (no task code, no torch here)."""

from __future__ import annotations

from celery import Celery

from api.config import Settings
from worker.celery_app import RESTORE_TASK, create_celery_app


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

    def enqueue(self, job_id: str) -> None:
        """Send job ``job_id`` to a worker (blocking: call it from a thread in async code).

        The Celery task id is the job id, so logs and Flower show the same id.
        """
        self._celery.send_task(RESTORE_TASK, args=[job_id], queue=self._queue, task_id=job_id)

    def close(self) -> None:
        self._celery.close()
