"""A job's webhook and its delivery log."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import AUTH_RESPONSES, JobDep, StoreDep
from api.errors import ApiError
from core.schemas import ErrorBody
from core.webhooks import WebhookLog

router = APIRouter(prefix="/v1/jobs", tags=["webhooks"], responses=AUTH_RESPONSES)


@router.get(
    "/{job_id}/webhooks",
    summary="The job's webhook and its deliveries",
    responses={404: {"model": ErrorBody, "description": "No such job, or it has no webhook."}},
)
async def get_webhooks(job: JobDep, store: StoreDep) -> WebhookLog:
    """The webhook the job was submitted with, what was delivered, and the latest tries
    (status codes, errors), newest first."""
    found = await store.webhook_log(job.id)
    if found is None:
        raise ApiError(404, "not_found", f"job {job.id} has no webhook")
    return found
