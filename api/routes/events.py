"""Server-Sent Events: a job's progress as it happens, resumable."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator
from typing import Annotated

import redis.exceptions
from fastapi import APIRouter, Header, Request
from sse_starlette import EventSourceResponse, ServerSentEvent

from api.deps import AUTH_RESPONSES, JobDep, StoreDep
from api.errors import ApiError
from api.schemas import ErrorBody
from api.store import EventType, JobStatus, JobStore
from api.views import job_url

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=AUTH_RESPONSES)

_STREAM_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}|0")
_BLOCK_MS = 5000  # how long one read waits for news before checking on the job
_PING_S = 15


@router.get(
    "/{job_id}/events",
    summary="Follow a job (Server-Sent Events)",
    response_class=EventSourceResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "The event stream."},
               404: {"model": ErrorBody, "description": "No such job."},
               422: {"model": ErrorBody, "description": "Malformed Last-Event-ID."}},
)
async def stream_events(
    request: Request,
    job: JobDep,
    store: StoreDep,
    last_event_id: Annotated[str | None, Header(
        description="Resume after this event id (browsers send it when they reconnect).")] = None,
) -> EventSourceResponse:
    """Events `status` (`{"status", "error"?}`), `progress` (`{"progress", "metrics"}` as in the
    job) and `snapshot` (`{"iteration", "name", "url"}`), in order, each with its `id`. The
    stream replays the job's events from the start (or after `Last-Event-ID`) and ends after
    the terminal `status` event; comment lines keep idle connections alive."""
    after = last_event_id.strip() if last_event_id else "0"
    # Redis stream ids are two unsigned 64-bit numbers: a larger one would fail inside Redis,
    # after the 200 and the first bytes of the stream have gone out.
    if not _STREAM_ID.fullmatch(after) or any(int(part) >= 2**64 for part in after.split("-")):
        raise ApiError(422, "invalid_parameter", f"Last-Event-ID: not an event id of this stream: {after!r}")
    files_url = f"{job_url(request, job.id)}/files"
    return EventSourceResponse(_events(store, job.id, after, files_url), ping=_PING_S)


async def _events(store: JobStore, job_id: str, after: str, files_url: str) -> AsyncIterator[ServerSentEvent]:
    try:
        async for event in _job_events(store, job_id, after, files_url):
            yield event
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        # The answer has started: no error status can be sent any more. Ending the
        # stream makes the client reconnect (EventSource does) and resume at its
        # Last-Event-ID, instead of the server failing the connection.
        log.warning("event stream of job %s ended early: Redis unavailable: %s", job_id, exc)


async def _job_events(store: JobStore, job_id: str, after: str, files_url: str) -> AsyncIterator[ServerSentEvent]:
    while True:
        events = await store.read_events(job_id, after=after, block_ms=None)
        if not events:
            record = await store.get(job_id)
            if record is None:  # deleted while queued, or expired
                return
            if not record.status.is_terminal:
                events = await store.read_events(job_id, after=after, block_ms=_BLOCK_MS)
            elif not await store.read_events(job_id, after=after, block_ms=None, count=1):
                # Its terminal event was sent before (resumed after it) or trimmed away: say it again.
                error = {"code": record.error_code, "message": record.error_message} if record.error_code else None
                yield ServerSentEvent(data=json.dumps({"status": record.status.value, "error": error}),
                                      event=EventType.status.value)
                return
        for event in events:
            after = event.id
            data = event.data
            if event.type is EventType.snapshot:
                data = {**data, "url": f"{files_url}/{data['name']}"}
            yield ServerSentEvent(data=json.dumps(data), event=event.type.value, id=event.id)
            if event.type is EventType.status and JobStatus(data["status"]).is_terminal:
                return
