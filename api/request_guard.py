"""Requests a browser was tricked into sending: a foreign Host, or a cross-site write.

Without keys the API trusts whoever reaches it, and a browser reaches it for any page it
shows. Two ways in are closed here, before any route runs:

- **DNS rebinding.** A page on ``evil.example`` that re-points its own name at 127.0.0.1 is
  same-origin with the API in the browser's eyes, but its requests carry ``Host:
  evil.example``. Only the names in ``DIP_ALLOWED_HOSTS`` are answered (400 ``invalid_host``);
  the health probes are answered for any name.
- **Cross-site writes.** A multipart POST needs no CORS preflight, so any page can submit,
  cancel or delete jobs. State-changing requests that a browser marks as cross-site
  (``Sec-Fetch-Site``), or whose ``Origin`` is not the API's own, get 403 ``cross_site``.
  Clients that are not browsers send neither header and are not affected.

A pure ASGI middleware: it never buffers a body or a streamed (SSE) response.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import error_response

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
OPEN_PATHS = frozenset({"/healthz", "/readyz"})


def host_name(host: str) -> str:
    """The name in a Host header value (``name``, ``name:port``, ``[v6]:port``), lower case."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def host_allowed(host: str, allowed: Iterable[str]) -> bool:
    """Whether ``host`` matches an entry: a name, ``*.domain`` (its subdomains) or ``*`` (any)."""
    name = host_name(host)
    for entry in allowed:
        entry = entry.strip().lower().strip("[]")
        if entry == "*" or name == entry or (entry.startswith("*.") and name.endswith(entry[1:])):
            return True
    return False


def cross_site(method: str, headers: Headers) -> str | None:
    """Why a request is a cross-site write a browser was made to send; ``None`` if it is not."""
    if method not in UNSAFE_METHODS:
        return None
    site = headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return f"a {site} request from a web page (Sec-Fetch-Site: {site})"
    origin = headers.get("origin")
    if origin is None:
        return None
    parts = urlsplit(origin)
    if origin == "null" or not parts.netloc or parts.netloc.lower() != headers.get("host", "").lower():
        return f"a request from another origin ({origin})"
    return None


class RequestGuard:
    """Refuses foreign Host headers and cross-site writes (see the module docstring)."""

    def __init__(self, app: ASGIApp, *, allowed_hosts: Iterable[str]) -> None:
        self.app = app
        self.allowed_hosts = tuple(allowed_hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        response = None
        if scope["path"] not in OPEN_PATHS and not host_allowed(headers.get("host", ""), self.allowed_hosts):
            response = error_response(
                400, "invalid_host", f"this server does not answer for the host {headers.get('host', '')!r}; "
                "add it to DIP_ALLOWED_HOSTS if it is this server's own name")
        elif (why := cross_site(scope["method"], headers)) is not None:
            response = error_response(403, "cross_site", f"refused {why}: jobs are changed only by clients "
                                      "of this server, or by pages it serves itself")
        if response is not None:
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
