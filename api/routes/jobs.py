"""Submitting, reading, listing, cancelling and deleting jobs."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response, status
from starlette.concurrency import run_in_threadpool

from api.deps import AUTH_RESPONSES, CallerDep, JobDep, QueueDep, ResultsDep, SettingsDep, StoreDep
from api.errors import ApiError, job_not_found
from api.submission import form_openapi, submit_job
from api.views import job_url, present
from core.schemas import ErrorBody, JobList, JobPublic
from core.store import InvalidCursor, JobStatus

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=AUTH_RESPONSES)

_ERRORS: dict[int | str, dict[str, Any]] = {404: {"model": ErrorBody, "description": "No such job."}}


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Submit a restoration job",
    openapi_extra=form_openapi(),
    responses={
        202: {"description": "Queued. `Location` is the job's URL.",
              "headers": {"Location": {"schema": {"type": "string"}}}},
        400: {"model": ErrorBody, "description": "Malformed body or Idempotency-Key."},
        413: {"model": ErrorBody, "description": "A file over DIP_MAX_UPLOAD_BYTES."},
        415: {"model": ErrorBody, "description": "Not multipart/form-data."},
        422: {"model": ErrorBody, "description": "Bad parameter or image (code says which)."},
        429: {"model": ErrorBody, "description": "Too many jobs waiting (DIP_MAX_QUEUED, "
                                                 "DIP_MAX_QUEUED_PER_CLIENT); retry after `Retry-After` seconds.",
              "headers": {"Retry-After": {"schema": {"type": "integer"}}}},
        503: {"model": ErrorBody, "description": "Redis, the broker or the object store is unreachable; nothing "
                                                 "was kept. "
                                                 "Retry after `Retry-After` seconds.",
              "headers": {"Retry-After": {"schema": {"type": "integer"}}}},
        507: {"model": ErrorBody, "description": "The results volume is full (`insufficient_storage`); "
                                                 "nothing was kept."},
    },
)
async def create_job(
    request: Request,
    response: Response,
    caller: CallerDep,
    settings: SettingsDep,
    store: StoreDep,
    queue: QueueDep,
    results: ResultsDep,
    idempotency_key: Annotated[str | None, Header(
        description="Any 1-128 characters of A-Z a-z 0-9 . _ : -; a retry with the same key "
                    "returns the job created first instead of a new one.")] = None,
) -> JobPublic:
    """Upload an image (multipart form: `image`, optional `mask`, `kernel` and `reference` files, and
    the parameters as fields), or name it: `image_url` (and `mask_url`...) instead of the file part,
    fetched by the server before it answers. Answers at once with the queued job; follow it with
    `GET`, `/events` or `/history`."""
    record, _ = await submit_job(request, settings=settings, store=store, queue=queue, results=results,
                                 idempotency_key=idempotency_key, owner=caller.owner)
    response.headers["Location"] = job_url(request, record.id)
    return present(request, record)


@router.get("", summary="List jobs, newest first")
async def list_jobs(
    request: Request,
    caller: CallerDep,
    store: StoreDep,
    status_: Annotated[JobStatus | None, Query(alias="status", description="Only jobs in this status.")] = None,
    limit: Annotated[int, Query(ge=1, le=100, description="Page size.")] = 20,
    cursor: Annotated[str | None, Query(pattern=r"^[A-Za-z0-9_-]{1,200}$",
                                        description="`next_cursor` of the previous page.")] = None,
) -> JobList:
    """Your own jobs (an admin key: everyone's). Filtered by `status`, a page may hold fewer
    than `limit` jobs and still have a `next_cursor`."""
    try:
        records, next_cursor = await store.list(status=status_, owner=None if caller.admin else caller.owner,
                                                limit=limit, cursor=cursor)
    except InvalidCursor as exc:
        raise ApiError(422, "invalid_parameter", f"cursor: {exc}") from exc
    return JobList(items=[present(request, r) for r in records], next_cursor=next_cursor)


@router.get("/{job_id}", summary="Get a job", responses=_ERRORS)
async def get_job(request: Request, job: JobDep) -> JobPublic:
    """Status, progress, latest metrics, file URLs and error of one job."""
    return present(request, job)


@router.post(
    "/{job_id}/cancel",
    summary="Cancel a job",
    responses={**_ERRORS, 202: {"model": JobPublic, "description": "Running: it stops within a second or two."},
               409: {"model": ErrorBody, "description": "The job already succeeded or failed."}},
)
async def cancel_job(request: Request, response: Response, job: JobDep, store: StoreDep) -> JobPublic:
    """A queued job is canceled at once and never starts (200); a running one is asked to
    stop (202), keeps its partial outputs and ends `canceled`."""
    outcome = await store.cancel(job.id)
    if outcome == "missing":
        raise job_not_found(job.id)
    if outcome in (JobStatus.succeeded.value, JobStatus.failed.value):
        raise ApiError(409, "conflict", f"job {job.id} already {outcome}; nothing to cancel")
    if outcome == "cancel_requested":
        response.status_code = status.HTTP_202_ACCEPTED
    record = await store.get(job.id)
    if record is None:
        raise job_not_found(job.id)
    return present(request, record)


@router.delete(
    "/{job_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a job and its files",
    responses={**_ERRORS, 409: {"model": ErrorBody, "description": "Running: cancel it first."}},
)
async def delete_job(job: JobDep, store: StoreDep, results: ResultsDep) -> Response:
    outcome = await store.delete(job.id, owner=job.owner)
    if outcome == JobStatus.running.value:
        raise ApiError(409, "conflict", f"job {job.id} is running; cancel it first (POST .../cancel)")
    if outcome == "missing":
        raise job_not_found(job.id)
    await run_in_threadpool(results.delete, job.id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
