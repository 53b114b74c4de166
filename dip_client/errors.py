"""What the client raises: one exception type carrying the API's own error code."""

from __future__ import annotations

from typing import Any

import httpx
from pydantic import ValidationError

from core.schemas import ErrorBody

__all__ = ["AuthError", "DipConnectionError", "DipError", "NotFoundError", "error_from"]


class DipError(Exception):
    """An answer other than success: ``code`` is the API's stable code (``not_found``,
    ``invalid_parameter``, ``queue_full``...), so callers branch on it, not on the message."""

    def __init__(self, code: str, message: str, status_code: int | None = None, *,
                 details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(f"{message} ({code}" + (f", HTTP {status_code})" if status_code else ")"))
        self.code = code
        self.message = message
        self.status_code = status_code
        self.details = details

    @property
    def is_client_error(self) -> bool:
        """A 4xx: the request itself was wrong, retrying it unchanged cannot help."""
        return self.status_code is not None and 400 <= self.status_code < 500


class NotFoundError(DipError):
    """404: no such job (or file), or one that belongs to another key."""


class AuthError(DipError):
    """401/403: no key, an unknown key, or a key without the right."""


class DipConnectionError(DipError):
    """The server could not be reached (after the retries)."""

    def __init__(self, message: str) -> None:
        super().__init__("unreachable", message)


def error_from(response: httpx.Response) -> DipError:
    """The exception for a failed ``response``, from its ``{"error": {...}}`` body when it has one
    (a proxy in front of the API may answer with HTML: then the status alone names it)."""
    try:
        info = ErrorBody.model_validate_json(response.content).error
        code, message, details = info.code, info.message, info.details
    except ValidationError:
        code, message, details = f"http_{response.status_code}", response.text[:200] or response.reason_phrase, None
    kind = {404: NotFoundError, 401: AuthError, 403: AuthError}.get(response.status_code, DipError)
    return kind(code, message, response.status_code, details=details)
