"""The workers' Celery application: the shared configuration (``core.queue``) plus the
task code and the maintenance bootstep.

``celery -A worker.celery_app:app worker`` finds ``app`` here. It is built on
first access, so importing this module reads no settings and imports no torch;
the task code (``worker.tasks``) is imported by the worker, through ``include``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from celery import Celery

from core.config import Settings, get_settings
from core.queue import RESTORE_TASK, celery_config
from worker.maintenance import Maintenance

__all__ = ["RESTORE_TASK", "create_celery_app"]


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
