"""One error shape for every failure: ``{"error": {"code", "message"}}``."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.results import ResultsUnavailable
from core.store import StoreUnavailable
from dip_engine.errors import InputError

log = logging.getLogger(__name__)

_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
          405: "method_not_allowed", 406: "not_acceptable", 409: "conflict", 413: "upload_too_large",
          415: "unsupported_media_type", 422: "invalid_parameter", 429: "too_many_requests",
          503: "unavailable"}


class ApiError(Exception):
    """An answer other than success, with a stable ``code`` and a message naming the problem."""

    def __init__(self, status_code: int, code: str, message: str, *,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.headers = headers


def job_not_found(job_id: str) -> ApiError:
    # Same answer for malformed and unknown ids: nothing about which ids exist leaks.
    return ApiError(404, "not_found", f"no job with id {job_id!r}")


def error_response(status_code: int, code: str, message: str, *, details: list[dict[str, Any]] | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    error: dict[str, Any] = {"code": code, "message": message}
    if details:
        error["details"] = details
    return JSONResponse({"error": error}, status_code=status_code, headers=headers)


def validation_response(errors: list[Any]) -> JSONResponse:
    """422 listing each bad field as ``name: problem``."""
    details = []
    for error in errors:
        location = [str(part) for part in error.get("loc", ()) if part not in ("body", "query", "path", "header")]
        field = ".".join(location) or "request"
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        if error.get("type") == "extra_forbidden":
            message = "unknown field"
        details.append({"field": field, "message": message})
    summary = "; ".join(f"{d['field']}: {d['message']}" for d in details)
    return error_response(422, "invalid_parameter", summary, details=details)


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception the app can raise to the JSON error shape."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status_code, exc.code, exc.message, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _CODES.get(exc.status_code, "error")
        return error_response(exc.status_code, code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _request_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_response(list(exc.errors()))

    @app.exception_handler(ValidationError)
    async def _model_invalid(request: Request, exc: ValidationError) -> JSONResponse:
        return validation_response(exc.errors(include_url=False))

    @app.exception_handler(InputError)
    async def _input_error(request: Request, exc: InputError) -> JSONResponse:
        return error_response(422, exc.code, exc.message)

    @app.exception_handler(StoreUnavailable)
    async def _store_down(request: Request, exc: Exception) -> JSONResponse:
        # Unreachable, or refusing writes for now (full, a replica during a failover): 503, never 500.
        log.warning("job store unavailable: %s", exc)
        return error_response(503, "unavailable", "the job store (Redis) is unreachable or refuses writes for "
                              "now; retry shortly", headers={"Retry-After": "5"})

    @app.exception_handler(ResultsUnavailable)
    async def _results_down(request: Request, exc: Exception) -> JSONResponse:
        log.warning("results store unavailable: %s", exc)
        return error_response(503, "unavailable", "the results store (object storage) is unreachable for now; "
                              "retry shortly", headers={"Retry-After": "5"})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Logged by Starlette's error middleware; the client gets no traceback.
        return error_response(500, "internal_error", "internal server error")
