"""Server-Sent Events: a job's progress as it happens, resumable, a few streams per caller."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Header, Request
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.types import Receive, Scope, Send

from api.deps import AUTH_RESPONSES, CallerDep, JobDep, SettingsDep, StoreDep
from api.errors import ApiError
from api.views import job_url
from core.auth import Caller
from core.schemas import ErrorBody, Snapshot
from core.store import EventType, JobStatus, JobStore, StoreUnavailable, StreamLeases

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=AUTH_RESPONSES)

_STREAM_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}|0")
_BLOCK_MS = 5000  # how long one read waits for news before checking on the job
_PING_S = 15
# A slot frees when one of the caller's streams ends, which nothing foretells.
_STREAMS_RETRY_AFTER_S = 5
_RELEASE_TIMEOUT_S = 5.0  # past it, an unreturned lease lapses on its own


@router.get(
    "/{job_id}/events",
    summary="Follow a job (Server-Sent Events)",
    response_class=EventSourceResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "The event stream."},
               404: {"model": ErrorBody, "description": "No such job."},
               422: {"model": ErrorBody, "description": "Malformed Last-Event-ID."},
               429: {"model": ErrorBody, "description": "You have DIP_MAX_STREAMS_PER_CALLER event streams "
                                                        "open; close one, or retry after `Retry-After` seconds.",
                     "headers": {"Retry-After": {"schema": {"type": "integer"}}}}},
)
async def stream_events(
    request: Request,
    job: JobDep,
    caller: CallerDep,
    store: StoreDep,
    settings: SettingsDep,
    last_event_id: Annotated[str | None, Header(
        description="Resume after this event id (browsers send it when they reconnect).")] = None,
) -> EventSourceResponse:
    """Events `status` (`{"status", "error"?}`), `progress` (`{"progress", "metrics"}` as in the
    job) and `snapshot` (`{"iteration", "name", "url"}`), in order, each with its `id`. The
    stream replays the job's events from the start (or after `Last-Event-ID`) and ends after
    the terminal `status` event; comment lines keep idle connections alive. A caller (an API
    key; without keys, a client address) may hold DIP_MAX_STREAMS_PER_CALLER streams open at
    once, on all API processes together."""
    after = last_event_id.strip() if last_event_id else "0"
    # Redis stream ids are two unsigned 64-bit numbers: a larger one would fail inside Redis,
    # after the 200 and the first bytes of the stream have gone out.
    if not _STREAM_ID.fullmatch(after) or any(int(part) >= 2**64 for part in after.split("-")):
        raise ApiError(422, "invalid_parameter", f"Last-Event-ID: not an event id of this stream: {after!r}")
    holder = _stream_holder(caller, request)
    token = await store.streams.acquire(holder, limit=settings.max_streams_per_caller)
    if token is None:
        raise ApiError(429, "too_many_streams",
                       f"you have {settings.max_streams_per_caller} event streams open, the most allowed; "
                       "close one or retry later", headers={"Retry-After": str(_STREAMS_RETRY_AFTER_S)})
    files_url = f"{job_url(request, job.id)}/files"
    return _LeasedEventSource(_events(store, job.id, after, files_url), ping=_PING_S,
                              leases=store.streams, holder=holder, token=token)


def _stream_holder(caller: Caller, request: Request) -> str:
    """Whose streams a request counts among: its key's, or with no keys configured its address's
    (as the server sees it: behind a proxy, the one uvicorn's --forwarded-allow-ips trusts)."""
    if caller.owner:
        return f"key:{caller.owner}"
    return f"addr:{request.client.host if request.client else 'unknown'}"


class _LeasedEventSource(EventSourceResponse):
    """An event stream holding its caller's stream lease while it is open: renewed as it goes,
    given back however it ends (the job ended, the client left, the server stops)."""

    def __init__(self, content: Any, *, leases: StreamLeases, holder: str, token: str, **options: Any) -> None:
        super().__init__(content, **options)
        self._leases, self._holder, self._token = leases, holder, token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # A task of its own: the event generator waits on Redis, or on a slow client's socket.
        renewer = asyncio.create_task(self._renew())
        try:
            await super().__call__(scope, receive, send)
        finally:
            renewer.cancel()
            # Shielded: a server stopping cancels the request, and the slot must still go back.
            with anyio.move_on_after(_RELEASE_TIMEOUT_S, shield=True):
                try:
                    await self._leases.release(self._holder, self._token)
                except StoreUnavailable as exc:
                    log.warning("could not give back an event stream's lease (it lapses in %.0f s): %s",
                                self._leases.lease_s, exc)

    async def _renew(self) -> None:
        while True:
            await anyio.sleep(self._leases.lease_s / 3)
            try:
                await self._leases.renew(self._holder, self._token)
            except StoreUnavailable as exc:
                log.warning("could not renew an event stream's lease: %s", exc)


async def _events(store: JobStore, job_id: str, after: str, files_url: str) -> AsyncIterator[ServerSentEvent]:
    try:
        async for event in _job_events(store, job_id, after, files_url):
            yield event
    except StoreUnavailable as exc:
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
                data = Snapshot(**data, url=f"{files_url}/{data['name']}").model_dump()
            yield ServerSentEvent(data=json.dumps(data), event=event.type.value, id=event.id)
            if event.type is EventType.status and JobStatus(data["status"]).is_terminal:
                return
