"""The worker's engine callback: throttled progress, history, snapshots, cancellation."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from core.layout import new_job_id
from core.store import EventType, JobStore, Keys, WorkerStore
from dip_engine.callbacks import FitState
from dip_engine.history import LogRecord
from worker.lease import LeaseKeeper
from worker.progress import JobReporter, Throttle


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def setup(redis_server: Any, tmp_path: Path) -> Any:
    url = redis_server.url.rsplit("/", 1)[0] + "/6"
    keys = Keys(prefix=f"p{uuid.uuid4().hex[:8]}")

    async def create() -> str:
        store = JobStore.from_url(url, retention_s=600, keys=keys)
        job_id = await store.create(new_job_id(), task="denoise", params={}, files={})
        await store.aclose()
        return job_id

    job_id = asyncio.run(create())
    store = WorkerStore.from_url(url, retention_s=600, keys=keys)
    claim = store.claim(job_id, worker="w", max_attempts=3, lease_s=30)
    clock = FakeClock()
    lease = LeaseKeeper(store, job_id, claim.token, lease_s=30)  # not started: these tests renew nothing
    reporter = JobReporter(store, lease, tmp_path, progress_interval_s=0.25, cancel_poll_s=0.2, clock=clock)

    def events() -> list[Any]:
        async def read() -> list[Any]:
            api_store = JobStore.from_url(url, retention_s=600, keys=keys)
            try:
                return await api_store.read_events(job_id, after="0", block_ms=None, count=10_000)
            finally:
                await api_store.aclose()
        return asyncio.run(read())

    yield store, job_id, reporter, clock, events, tmp_path
    for key in store.client.scan_iter(f"{keys.prefix}:*"):
        store.client.delete(key)
    store.close()


def test_progress_is_throttled_but_first_and_last_always_go_out(setup: Any) -> None:
    store, job_id, reporter, clock, events, _ = setup
    state = FitState(total=1000)
    reporter.on_fit_start(state)
    for iteration in range(1, 1001):  # 1000 iterations in 2 s: 500 it/s
        clock.now = iteration * 0.002
        state.iteration = iteration
        reporter.on_step(state)
        if iteration % 100 == 0:
            record = LogRecord(iteration=iteration, loss=float("nan") if iteration == 500 else 0.5,
                               psnr_degraded=20.0, elapsed_s=clock.now)
            state.last = record
            reporter.on_log(state, record)
    reporter.on_fit_end(state)

    progress = [e.data["progress"]["iteration"] for e in events() if e.type is EventType.progress]
    assert progress[0] == 0 and progress[-1] == 1000
    assert 8 <= len(progress) <= 2 + 2.0 / 0.25  # one per 0.25 s, plus the first and the last
    record = store.get(job_id)
    assert record.iteration == 1000 and record.total == 1000 and state.stop_reason is None
    history = [json.loads(p) for p in store.client.lrange(store.keys.history(job_id), 0, -1)]
    assert [p["iteration"] for p in history] == list(range(100, 1001, 100))
    assert history[4]["loss"] is None  # NaN is stored as null, not as invalid JSON


def test_cancel_is_noticed_within_one_poll_interval(setup: Any) -> None:
    store, job_id, reporter, clock, _, _ = setup
    state = FitState(total=10_000)
    reporter.on_fit_start(state)
    reporter.on_step(state)  # the first step looks at the flag
    store.client.hset(store.keys.job(job_id), "cancel_requested", "1")
    clock.now = 0.1
    reporter.on_step(state)
    assert state.stop_reason is None  # neither interval has passed: no Redis round trip
    clock.now = 0.21
    reporter.on_step(state)
    assert state.stop_reason == "canceled"


def test_cancel_before_the_first_step_stops_at_the_first_step(setup: Any) -> None:
    store, job_id, reporter, clock, _, _ = setup
    store.client.hset(store.keys.job(job_id), "cancel_requested", "1")
    state = FitState(total=100)
    reporter.on_fit_start(state)
    assert state.stop_reason is None  # the engine gets one step, and so an output to save
    clock.now = 0.01
    state.iteration = 1
    reporter.on_step(state)
    assert state.stop_reason == "canceled"


def test_snapshots_are_published_with_their_public_name(setup: Any) -> None:
    store, job_id, reporter, clock, events, job_dir = setup
    state = FitState(total=100, iteration=50)
    path = job_dir / "out" / "snapshots" / "iter_00050.png"
    reporter.on_snapshot(state, path)
    assert store.get(job_id).files == {"snapshot_00050.png": "out/snapshots/iter_00050.png"}
    assert [e.data for e in events() if e.type is EventType.snapshot] == [
        {"iteration": 50, "name": "snapshot_00050.png"}]


def test_throttle() -> None:
    clock = FakeClock()
    throttle = Throttle(1.0, clock=clock)
    seen = []
    for step in range(30):
        clock.now = step * 0.1
        seen.append(throttle.ready())
    assert [i for i, ok in enumerate(seen) if ok] == [0, 10, 20]
    with pytest.raises(ValueError, match="interval_s"):
        Throttle(-1)


def test_the_eta_counts_down_to_early_stopping_s_expected_end(setup: Any) -> None:
    from core.schemas import Progress

    store, job_id, reporter, clock, events, _ = setup
    state = FitState(total=3000)
    reporter.on_fit_start(state)
    state.iteration, state.expected_end = 1000, 1400  # the detector counts down: 400 left, not 2000
    record = LogRecord(iteration=1000, loss=0.5, psnr_degraded=20.0, elapsed_s=2.0)
    state.last = record
    clock.now = 2.0
    reporter.on_log(state, record)
    reporter.on_fit_end(state)
    stored = store.get(job_id)
    assert stored.expected_end == 1400
    progress = Progress.of(stored.iteration, stored.total, iterations_per_second=10.0, end=stored.expected_end)
    assert progress.eta_seconds == pytest.approx(40.0) and progress.fraction == pytest.approx(1000 / 3000)
    assert Progress.of(1000, 3000, iterations_per_second=10.0).eta_seconds == pytest.approx(200.0)
