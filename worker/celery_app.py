"""The Celery application, configured from :class:`api.config.Settings`.

``celery -A worker.celery_app:app worker`` finds ``app`` here. It is built on
first access, so importing this module (the API does, to send tasks) reads
no settings and imports no torch; the task code (``worker.tasks``) is
imported only by workers, through ``include``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from celery import Celery

from api.config import Settings, get_settings
from worker.maintenance import Maintenance

RESTORE_TASK = "dip.restore"


def celery_config(settings: Settings) -> dict[str, Any]:
    """Every Celery option the service sets, for producers and workers alike."""
    if not settings.redis_url:
        raise ValueError("DIP_REDIS_URL is not set: workers and the API need a Redis URL "
                         "(`dip serve` starts a private Redis and sets it)")
    # Redis hands an unacknowledged message to another worker after this long; it
    # must outlast the hard time limit or a long job would run twice.
    transport = {"visibility_timeout": settings.visibility_timeout_s}
    return {
        "broker_url": settings.redis_url,
        "broker_transport_options": {**transport, "fanout_prefix": True, "fanout_patterns": True},
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


def create_celery_app(settings: Settings | None = None) -> Celery:
    """A Celery app for ``settings`` (default: from the environment).

    The settings object is kept as ``app.conf.dip_settings`` for the task
    code and the maintenance step.
    """
    settings = settings or get_settings()
    app = Celery("dip", include=["worker.signals", "worker.tasks"], set_as_current=False)
    app.conf.update(celery_config(settings), dip_settings=settings)
    app.steps["worker"].add(Maintenance)
    return app


@lru_cache(maxsize=1)
def _default_app() -> Celery:
    app = create_celery_app()
    app.set_current()
    return app


def __getattr__(name: str) -> Any:
    # Module attribute `app`, built on first access (PEP 562).
    if name == "app":
        return _default_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
