"""The worker's engine callback when things go wrong: Redis away, lease lost, worker draining.

The reporter is driven as the engine's loop drives it, against a real Redis
server of the test's own (stopped and started again in the middle of a run).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core.layout import new_job_id
from core.store import JobStore, WorkerStore
from dip_engine.callbacks import FitState
from dip_engine.history import LogRecord
from stack.redis_server import RedisServer
from worker.lease import LeaseKeeper, LeaseLost
from worker.progress import JobReporter

WORKER = "node@host:123"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def run(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A claimed job on a Redis of its own, and a reporter for it on a fake clock."""
    server = RedisServer(tmp_path / "redis").start()

    async def create() -> str:
        api_store = JobStore.from_url(server.url, retention_s=600)
        try:
            return await api_store.create(new_job_id(), task="denoise", params={}, files={})
        finally:
            await api_store.aclose()

    job_id = asyncio.run(create())
    store = WorkerStore.from_url(server.url, retention_s=600)
    claim = store.claim(job_id, worker="node@host:1", max_attempts=3, lease_s=60)
    clock = Clock()
    lease = LeaseKeeper(store, job_id, claim.token, lease_s=60)  # renewals are not under test here
    reporter = JobReporter(store, lease, tmp_path, progress_interval_s=0.25, cancel_poll_s=0.2,
                           worker=WORKER, outage_retry_s=1.0, clock=clock)
    yield {"server": server, "store": store, "job_id": job_id, "claim": claim, "clock": clock, "reporter": reporter}
    store.close()
    server.stop()


def _step(reporter: JobReporter, state: FitState, clock: Clock, iteration: int) -> None:
    """One iteration as the engine reports it (10 ms each; a history point every 10)."""
    clock.now = iteration * 0.01
    state.iteration = iteration
    if iteration % 10 == 0:
        record = LogRecord(iteration=iteration, loss=0.1, psnr_degraded=20.0, elapsed_s=clock.now)
        state.last = record
        reporter.on_log(state, record)
    reporter.on_step(state)


def _history(store: WorkerStore, job_id: str) -> list[int]:
    return [json.loads(p)["iteration"] for p in store.client.lrange(store.keys.history(job_id), 0, -1)]


def test_the_run_goes_on_through_a_redis_outage_and_no_history_point_is_lost(run: dict[str, Any]) -> None:
    store, reporter, clock, server = run["store"], run["reporter"], run["clock"], run["server"]
    state = FitState(total=300)
    reporter.on_fit_start(state)
    for iteration in range(1, 101):
        _step(reporter, state, clock, iteration)
    server.stop()
    for iteration in range(101, 201):  # ten points logged while Redis is away; no step may fail
        _step(reporter, state, clock, iteration)
    assert state.stop_reason is None
    server.start()
    for iteration in range(201, 301):
        _step(reporter, state, clock, iteration)
    reporter.on_fit_end(state)
    assert reporter.flush(within_s=5)

    assert _history(store, run["job_id"]) == list(range(10, 301, 10))  # late, in order, once
    assert store.get(run["job_id"]).iteration == 300


def test_points_that_wait_at_the_end_are_written_once_redis_is_back(run: dict[str, Any]) -> None:
    store, reporter, clock, server = run["store"], run["reporter"], run["clock"], run["server"]
    state = FitState(total=50)
    reporter.on_fit_start(state)
    server.stop()
    for iteration in range(1, 51):
        _step(reporter, state, clock, iteration)
    reporter.on_fit_end(state)
    assert not reporter.flush(within_s=0.5)  # still away: the points are kept, not dropped
    server.start()
    assert reporter.flush(within_s=10)
    assert _history(store, run["job_id"]) == [10, 20, 30, 40, 50]


def test_a_run_that_lost_its_lease_stops_at_once_and_writes_nothing_more(run: dict[str, Any]) -> None:
    store, reporter, clock, job_id = run["store"], run["reporter"], run["clock"], run["job_id"]
    state = FitState(total=100)
    reporter.on_fit_start(state)
    for iteration in range(1, 21):
        _step(reporter, state, clock, iteration)
    # Another worker took the job over (this one was presumed dead).
    other = store.claim(job_id, worker="other@host:9", max_attempts=3, lease_s=60, take_over=run["claim"].token)
    with pytest.raises(LeaseLost):
        for iteration in range(21, 101):
            _step(reporter, state, clock, iteration)
    assert state.iteration <= 21 + 1  # noticed at the next look at the job (0.2 s)
    assert _history(store, job_id) == [10, 20]
    record = store.get(job_id)
    assert record.status.value == "running" and record.attempts == 2
    assert store.client.hget(store.keys.job(job_id), "lease_token") == other.token


def test_a_draining_worker_hands_the_job_back_at_the_next_look(run: dict[str, Any]) -> None:
    store, reporter, clock = run["store"], run["reporter"], run["clock"]
    state = FitState(total=100)
    reporter.on_fit_start(state)
    for iteration in range(1, 11):
        _step(reporter, state, clock, iteration)
    store.set_draining(WORKER)  # what the worker's main process does on SIGTERM
    _step(reporter, state, clock, 11)
    _step(reporter, state, clock, 31)  # 0.2 s later
    assert state.stop_reason == "canceled" and reporter.handed_back
