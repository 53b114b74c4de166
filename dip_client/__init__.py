"""Python client of the dip job API: submit images, follow jobs live, fetch results.

::

    from dip_client import Client

    with Client("http://127.0.0.1:8000") as dip:          # or DIP_URL / DIP_API_KEY
        job = dip.submit("noisy.png", task="denoise", iterations=500)
        job = dip.wait(job.id, progress=lambda j: print(j.progress))
        dip.download(job.id, "out/")

Answers are the API's own pydantic models (:class:`JobPublic`...); failures raise
:class:`DipError` carrying the API's error code.

Names load on first use: ``dip --help`` imports ``dip_client.cli``, which must not pull
in httpx and the API's models.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from core.schemas import (
        ErrorBody,
        HistoryPoint,
        JobList,
        JobPublic,
        JobStatus,
        Snapshot,
        SnapshotPage,
    )

    from ._core import Retry
    from .client import AsyncClient, Client
    from .errors import AuthError, DipConnectionError, DipError, NotFoundError
    from .events import EventType, JobEvent

_HOMES = {
    **dict.fromkeys(("ErrorBody", "HistoryPoint", "JobList", "JobPublic", "JobStatus", "Snapshot",
                     "SnapshotPage"), "core.schemas"),
    "Retry": "dip_client._core",
    "AsyncClient": "dip_client.client", "Client": "dip_client.client",
    **dict.fromkeys(("AuthError", "DipConnectionError", "DipError", "NotFoundError"), "dip_client.errors"),
    **dict.fromkeys(("EventType", "JobEvent"), "dip_client.events"),
}

__all__ = [
    "AsyncClient", "AuthError", "Client", "DipConnectionError", "DipError", "ErrorBody", "EventType",
    "HistoryPoint", "JobEvent", "JobList", "JobPublic", "JobStatus", "NotFoundError", "Retry", "Snapshot",
    "SnapshotPage",
]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
