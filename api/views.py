"""Turning records into response bodies with absolute URLs."""

from __future__ import annotations

from fastapi import Request

from core.schemas import JobPublic
from core.store import JobRecord


def job_url(request: Request, job_id: str) -> str:
    return str(request.url_for("get_job", job_id=job_id))


def present(request: Request, record: JobRecord) -> JobPublic:
    return JobPublic.from_record(record, job_url=job_url(request, record.id))
