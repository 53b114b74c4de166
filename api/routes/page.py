"""The web page at ``/``: static files shipped in the package (``api/static/``), no build step.

The page is same-origin with the API, so the request guard's Host and Origin checks pass it,
and it calls only ``/v1`` like any other client (with the caller's key when keys are configured).
Its Content-Security-Policy lets it load nothing from anywhere but this server.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
CONTENT_SECURITY_POLICY = ("default-src 'self'; img-src 'self' blob:; connect-src 'self'; "
                           "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def install_page(app: FastAPI) -> None:
    """Serve ``index.html`` at ``/`` and its scripts and styles under ``/static``."""
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html",
                            headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY,
                                     "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})
