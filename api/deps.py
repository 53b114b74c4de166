"""Dependencies of the routes: settings, store, queue and the job named in the path."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request

from api.config import Settings
from api.errors import job_not_found
from api.layout import JOB_ID
from api.queue import JobQueue
from api.store import JobRecord, JobStore


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _store(request: Request) -> JobStore:
    return request.app.state.store


def _queue(request: Request) -> JobQueue:
    return request.app.state.queue


SettingsDep = Annotated[Settings, Depends(_settings)]
StoreDep = Annotated[JobStore, Depends(_store)]
QueueDep = Annotated[JobQueue, Depends(_queue)]


async def _job(
    job_id: Annotated[str, Path(description="Job id: 22 URL-safe characters, as returned at submission.")],
    store: StoreDep,
) -> JobRecord:
    if not JOB_ID.fullmatch(job_id):
        raise job_not_found(job_id)
    record = await store.get(job_id)
    if record is None:
        raise job_not_found(job_id)
    return record


JobDep = Annotated[JobRecord, Depends(_job)]
"""The job named by the ``{job_id}`` path parameter; 404 if there is none."""
