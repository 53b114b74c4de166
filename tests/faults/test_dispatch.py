"""A job's first message: lost if the API dies before sending it, sent twice if a reaper is early.

The API writes a job's record, then sends its message, then confirms the dispatch.
Until the confirmation the job waits in the lease index; after the grace (the lease
length, ``DIP_LEASE_S``) any worker's reaper sends the message again. These tests
run that with a real Redis, API and Celery workers (``conftest.py``): the crash is
simulated by writing the record through the API's store as ``POST /v1/jobs`` does
and sending nothing.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import httpx
import pytest

from api.main import create_app
from core.config import Settings
from core.layout import STAGING_DIR, job_dir, new_job_id
from core.process import free_port
from core.queue import JobQueue
from core.schemas import JobCreate
from core.store import JobStore, WorkerStore
from worker.celery_app import create_celery_app
from worker.recovery import new_dispatch_id, reap, worker_sender

from .conftest import KEYS, QUEUE, png64

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.name != "posix", reason="process groups and POSIX signals")]

ITERATIONS = 60
RESENT = "queued without a confirmed message, or waiting long after its last one; sent again"


def _create_unsent(cluster: Any) -> str:
    """What ``POST /v1/jobs`` writes before it sends the message: inputs in place, record queued."""
    job_id = new_job_id()
    directory = job_dir(cluster.results_dir, job_id)
    directory.mkdir(parents=True)
    (directory / "input.png").write_bytes(png64())
    params = JobCreate.model_validate({"task": "denoise", "iterations": ITERATIONS}).model_dump(mode="json")

    async def create() -> str:
        store = JobStore.from_url(cluster.redis_server.url, retention_s=3600)
        try:
            return await store.create(job_id, task="denoise", params=params, files={"input.png": "input.png"},
                                      time_limit_s=600, dispatch_grace_s=cluster.lease_s)
        finally:
            await store.aclose()

    assert asyncio.run(create()) == job_id
    return job_id


def _settings(cluster: Any) -> Settings:
    return Settings(redis_url=cluster.redis_server.url, results_dir=cluster.results_dir, queue=QUEUE,
                    lease_s=cluster.lease_s)


def _send_duplicate(cluster: Any, job_id: str) -> None:
    """One more message for the job, as a reaper that thought it unsent would publish."""
    settings = _settings(cluster)
    app = create_celery_app(settings)
    try:
        worker_sender(app, settings)(job_id, new_dispatch_id(), 600)
    finally:
        app.close()


def _log_has(cluster: Any, text: str) -> bool:
    return any(text in proc.text() for proc in cluster.procs)


@pytest.mark.timeout(120)
def test_a_job_whose_message_was_never_sent_is_sent_by_a_reaper_after_the_grace(cluster: Any) -> None:
    cluster.start_worker("w1")
    job_id = _create_unsent(cluster)
    assert cluster.redis.zscore(KEYS.leases, job_id) is not None  # awaiting its dispatch

    record = cluster.wait_finished(job_id, timeout_s=cluster.lease_s + 60)

    assert record["status"] == "succeeded", record
    assert record["attempts"] == "1"
    # Redis clock both: the reaper waited for the grace, and not much longer (it runs
    # every lease_s / 2, at least every second).
    waited_s = float(record["started_at"]) - float(record["created_at"])
    print(f"\nunsent job: started {waited_s:.2f} s after its record was written (grace {cluster.lease_s} s)")
    assert cluster.lease_s - 0.05 <= waited_s < cluster.lease_s + 5
    assert _log_has(cluster, f"job {job_id}: {RESENT}")
    assert cluster.statuses(job_id) == [("queued", None), ("running", 1), ("succeeded", None)]
    assert cluster.redis.zscore(KEYS.leases, job_id) is None
    assert "dispatch" not in record


@pytest.mark.timeout(120)
def test_a_submitted_job_is_confirmed_sent_and_not_sent_again(cluster: Any) -> None:
    cluster.start_api()  # no worker yet: the message waits in the queue
    job_id = cluster.submit(iterations=ITERATIONS)

    assert cluster.record(job_id)["status"] == "queued"
    # Confirmed before the answer: a reaper sends it again only if it still waits a redispatch delay on.
    seconds, _ = cluster.redis.time()
    assert cluster.redis.zscore(KEYS.leases, job_id) > seconds + Settings().redispatch_s - 60
    assert "dispatch" not in cluster.record(job_id)
    assert cluster.redis.llen(QUEUE) == 1
    # Past the grace, a reaper (as a worker's maintenance step calls it) finds nothing to resend.
    time.sleep(cluster.lease_s + 0.5)
    settings = _settings(cluster)
    store = WorkerStore.from_url(settings.redis_url, retention_s=settings.retention_s)
    app = create_celery_app(settings)
    try:
        report = reap(store, worker_sender(app, settings), max_attempts=3, dispatch_grace_s=cluster.lease_s)
    finally:
        app.close()
        store.close()
    assert (report.requeued, report.resent, report.failed) == ([], [], [])
    assert cluster.redis.llen(QUEUE) == 1

    cluster.start_worker("w1")
    record = cluster.wait_finished(job_id)
    assert record["status"] == "succeeded", record
    assert record["attempts"] == "1"
    assert cluster.statuses(job_id) == [("queued", None), ("running", 1), ("succeeded", None)]
    assert cluster.redis.zscore(KEYS.leases, job_id) is None
    assert not _log_has(cluster, RESENT)


@pytest.mark.timeout(150)
def test_a_duplicate_message_is_dropped_while_the_job_runs_and_once_it_ended(cluster: Any) -> None:
    cluster.start_api()
    cluster.start_worker("w1")
    cluster.start_worker("w2")
    job_id = cluster.submit(iterations=200, log_every=10, early_stop="off")
    running = cluster.wait_running(job_id, min_iteration=10)

    _send_duplicate(cluster, job_id)  # the idle worker takes it: the live lease wins
    cluster.until(lambda: _log_has(cluster, f"job {job_id} not run: busy (held by {running['worker']})"),
                  timeout_s=30, what="duplicate dropped while running", on_timeout=cluster.logs_tail)
    record = cluster.wait_finished(job_id)
    assert record["status"] == "succeeded", record

    _send_duplicate(cluster, job_id)
    cluster.until(lambda: _log_has(cluster, f"job {job_id} not run: finished"),
                  timeout_s=30, what="duplicate dropped after the end", on_timeout=cluster.logs_tail)
    record = cluster.record(job_id)
    assert record["status"] == "succeeded"
    assert record["attempts"] == "1"
    assert [s for s, _ in cluster.statuses(job_id)] == ["queued", "running", "succeeded"]
    assert cluster.history(job_id) == list(range(10, 201, 10))  # one run wrote every point once


def test_a_submission_whose_message_cannot_be_sent_is_refused_with_503_and_leaves_nothing(cluster: Any) -> None:
    """The job store answers but the broker does not (a real producer, pointed at a closed
    port): the record, its lease-index entry and its files are removed again."""
    settings = _settings(cluster)
    app = create_app(settings)

    async def submit() -> httpx.Response:
        async with app.router.lifespan_context(app):
            app.state.queue.close()
            app.state.queue = JobQueue.from_settings(
                settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"}))
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://localhost") as client:
                return await client.post("/v1/jobs", files={"image": ("image.png", png64(), "image/png")},
                                         data={"task": "denoise", "iterations": "10"})

    response = asyncio.run(submit())

    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "unavailable"
    assert response.headers["Retry-After"] == "5"
    assert list(cluster.redis.scan_iter(f"{KEYS.prefix}:job:*")) == []
    assert cluster.redis.zcard(KEYS.all_jobs) == 0
    assert cluster.redis.zcard(KEYS.leases) == 0
    assert [p.name for p in cluster.results_dir.iterdir()] == [STAGING_DIR]
    assert list((cluster.results_dir / STAGING_DIR).iterdir()) == []
