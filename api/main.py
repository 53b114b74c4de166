"""The FastAPI application: ``uvicorn --factory api.main:create_app``."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

import dip_engine
from api.deps import document_access
from api.errors import install_error_handlers
from api.request_guard import RequestGuard
from api.routes import events, health, jobs, results, webhooks
from api.routes.page import install_page
from core.config import Settings, get_settings
from core.queue import JobQueue
from core.results import clear_stale_staging, open_results, staging_dir
from core.store import JobStore, check_eviction_policy
from core.webhooks import document_webhooks

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app for ``settings`` (default: from the ``DIP_*`` environment)."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not settings.redis_url and not settings.redis_sentinels:
            raise RuntimeError("DIP_REDIS_URL is not set: the API needs the Redis that the workers use "
                               "(`dip serve` starts one and sets it), or DIP_REDIS_SENTINELS")
        app.state.results = open_results(settings)
        try:
            await run_in_threadpool(app.state.results.check)
        except ValueError as exc:
            raise RuntimeError(str(exc)) from None
        # Uploads a crashed API process left half-received (with object storage they are on
        # this host's disk only, where no worker's sweep looks).
        await run_in_threadpool(clear_stale_staging, staging_dir(settings, app.state.results))
        app.state.store = JobStore.from_settings(settings, retention_s=settings.retention_s,
                                                  redispatch_s=settings.redispatch_s)
        await _check_eviction(app.state.store, settings)
        app.state.queue = JobQueue.from_settings(settings)
        try:
            yield
        finally:
            app.state.queue.close()
            await app.state.store.aclose()

    app = FastAPI(
        title="Deep Image Prior restoration service",
        version=dip_engine.__version__,
        summary="Upload an image, follow the optimisation, download the restored PNG.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    install_error_handlers(app)
    app.add_middleware(RequestGuard, allowed_hosts=settings.allowed_hosts)
    for module in (jobs, results, events, health, webhooks):
        app.include_router(module.router)
    install_page(app)
    document_webhooks(app)
    document_access(app, settings)
    return app


async def _check_eviction(store: JobStore, settings: Settings) -> None:
    try:
        policy = await store.maxmemory_policy()
    except Exception as exc:  # noqa: BLE001 - Redis may be starting: /readyz reports it, the API still serves
        log.warning("could not read Redis's eviction policy (%s); checked by workers at their start", exc)
        return
    check_eviction_policy(policy, allowed=settings.allow_eviction)
