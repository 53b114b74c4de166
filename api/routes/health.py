"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from api import metrics
from api.deps import AUTH_RESPONSES, AdminDep, StoreDep
from api.errors import ApiError
from core.schemas import ErrorBody

router = APIRouter(tags=["health"])

# A worker beats every 5 s; three missed beats and it no longer counts.
WORKER_MAX_AGE_S = 15.0


@router.get("/healthz", summary="The API process is up")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Ready to run jobs: Redis answers and a healthy worker is alive",
            responses={503: {"model": ErrorBody,
                             "description": "Redis unreachable, or no live worker that takes jobs."}})
async def readyz(store: StoreDep) -> dict[str, Any]:
    """``workers``: live workers taking jobs; ``unhealthy_workers``: live ones that stopped
    (their device kept failing jobs), with why."""
    await store.ping()
    workers = await store.live_workers(max_age_s=WORKER_MAX_AGE_S)
    unhealthy = await store.unhealthy_workers(max_age_s=WORKER_MAX_AGE_S)
    if workers == 0:
        raise ApiError(503, "no_worker", f"no worker has sent a heartbeat in the last {WORKER_MAX_AGE_S:.0f} s",
                       headers={"Retry-After": "5"})
    if workers <= len(unhealthy):
        stopped = "; ".join(f"{each.worker}: {each.reason}" for each in unhealthy)
        raise ApiError(503, "no_worker", f"no live worker takes jobs: each stopped after its device kept failing "
                       f"({stopped})", headers={"Retry-After": "5"})
    return {"status": "ready", "workers": workers - len(unhealthy),
            "unhealthy_workers": [{"worker": each.worker, "reason": each.reason, "since": each.since}
                                  for each in unhealthy]}


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {metrics.CONTENT_TYPE: {}}, "description": "Text exposition format."},
                       **AUTH_RESPONSES,
                       403: {"model": ErrorBody, "description": "The key is not an admin key."}})
async def get_metrics(store: StoreDep, _: AdminDep) -> Response:
    """Service-wide counts (every client's jobs): with keys configured, for admin keys only."""
    stats = await store.stats(worker_max_age_s=WORKER_MAX_AGE_S)
    return Response(metrics.render(stats), media_type=metrics.CONTENT_TYPE)
