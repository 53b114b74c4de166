"""Dependencies of the routes: settings, store, queue, the caller and the job named in the path."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, FastAPI, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.errors import ApiError, job_not_found
from core.auth import Caller, Unauthorized, authenticate
from core.config import Settings
from core.layout import JOB_ID
from core.queue import JobQueue
from core.results import ResultsStore
from core.schemas import ErrorBody
from core.store import JobRecord, JobStore

AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "No API key, or an unknown one (when keys are configured).",
          "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}}},
}
"""OpenAPI answers of every route that needs a key."""

# Only for the OpenAPI document (the docs' "Authorize" button); the header is
# checked by `authenticate`, which tells a missing key from a malformed one.
_bearer = HTTPBearer(auto_error=False, scheme_name="ApiKey",
                     description="An API key from DIP_API_KEYS or DIP_ADMIN_KEYS; "
                                 "not needed when the service runs without keys.")


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _store(request: Request) -> JobStore:
    return request.app.state.store


def _queue(request: Request) -> JobQueue:
    return request.app.state.queue


def _results(request: Request) -> ResultsStore:
    return request.app.state.results


SettingsDep = Annotated[Settings, Depends(_settings)]
StoreDep = Annotated[JobStore, Depends(_store)]
QueueDep = Annotated[JobQueue, Depends(_queue)]
ResultsDep = Annotated[ResultsStore, Depends(_results)]


async def _caller(
    request: Request,
    settings: SettingsDep,
    _: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    try:
        return authenticate(request.headers.get("authorization"), api_keys=settings.api_keys,
                            admin_keys=settings.admin_keys)
    except Unauthorized as exc:
        raise ApiError(401, "unauthorized", str(exc), headers={"WWW-Authenticate": 'Bearer realm="dip"'}) from None


CallerDep = Annotated[Caller, Depends(_caller)]
"""Who is calling; 401 when keys are configured and the request has no valid one."""


def document_access(app: FastAPI, settings: Settings) -> None:
    """Make ``app``'s OpenAPI document say what this server asks for.

    Routes declare the bearer scheme and their 401 answers statically; a
    server with no keys configured asks for neither, so its document drops them.
    """
    if settings.auth_enabled:
        return
    build = app.openapi

    def openapi() -> dict[str, Any]:
        schema = build()  # cached by FastAPI: the removals below happen once
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                operation.pop("security", None)
                operation.get("responses", {}).pop("401", None)
        schema.get("components", {}).pop("securitySchemes", None)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


async def _admin(caller: CallerDep) -> Caller:
    if not caller.admin:
        raise ApiError(403, "forbidden", "this needs an admin key (DIP_ADMIN_KEYS)")
    return caller


AdminDep = Annotated[Caller, Depends(_admin)]
"""A caller with an admin key (everyone when no keys are configured); 403 otherwise."""


async def _job(
    caller: CallerDep,
    job_id: Annotated[str, Path(description="Job id: 22 URL-safe characters, as returned at submission.")],
    store: StoreDep,
) -> JobRecord:
    if not JOB_ID.fullmatch(job_id):
        raise job_not_found(job_id)
    record = await store.get(job_id)
    # Another key's job is answered exactly like one that does not exist.
    if record is None or not caller.can_see(record.owner):
        raise job_not_found(job_id)
    return record


JobDep = Annotated[JobRecord, Depends(_job)]
"""The job named by the ``{job_id}`` path parameter, if the caller may see it; 404 otherwise."""
