"""The job store against a real Redis: atomic transitions, listing, retention sweep."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.exceptions

from core.layout import STAGING_DIR, new_job_id
from core.results.local import LocalResults
from core.store import ClaimOutcome, JobStatus, JobStore, Keys, RunState, StoreError, StoreUnavailable, WorkerStore
from worker.maintenance import sweep

STORE_DB = 6


@pytest.fixture
def keys() -> Keys:
    return Keys(prefix=f"t{uuid.uuid4().hex[:8]}")


@pytest.fixture
def url(redis_server: Any) -> str:
    return redis_server.url.rsplit("/", 1)[0] + f"/{STORE_DB}"


@pytest.fixture
def worker_store(url: str, keys: Keys) -> Iterator[WorkerStore]:
    store = WorkerStore.from_url(url, retention_s=3600, keys=keys)
    yield store
    for key in store.client.scan_iter(f"{keys.prefix}:*"):
        store.client.delete(key)
    store.close()


def run(coroutine_factory: Any, url: str, keys: Keys, *, retention_s: int = 3600) -> Any:
    """Run ``coroutine_factory(api_store)`` with a fresh asyncio store."""
    async def main() -> Any:
        store = JobStore.from_url(url, retention_s=retention_s, keys=keys)
        try:
            return await coroutine_factory(store)
        finally:
            await store.aclose()
    return asyncio.run(main())


def _create(url: str, keys: Keys, count: int = 1, **options: Any) -> list[str]:
    async def create(store: JobStore) -> list[str]:
        ids = []
        for _ in range(count):
            ids.append(await store.create(new_job_id(), task="denoise", params={"task": "denoise"},
                                          files={"input.png": "input.png"}, **options))
        return ids
    return run(create, url, keys)


def test_status_changes_only_from_the_right_states(url: str, keys: Keys, worker_store: WorkerStore) -> None:
    (job_id,) = _create(url, keys)
    assert not worker_store.finish(job_id, JobStatus.succeeded, token="none")  # not running yet
    assert worker_store.report(job_id, {"iteration": 1}, token="none") is RunState.gone

    claim = worker_store.claim(job_id, worker="w", max_attempts=3, lease_s=30)
    assert claim.outcome is ClaimOutcome.claimed and claim.attempt == 1
    assert claim.record.status is JobStatus.running and claim.record.started_at is not None
    token = claim.token
    assert worker_store.report(job_id, {"iteration": 3, "total": 10}, {"iteration": 3}, token=token) is RunState.running
    assert run(lambda s: s.cancel(job_id), url, keys) == "cancel_requested"
    assert worker_store.report(job_id, token=token) is RunState.cancel_requested
    assert run(lambda s: s.delete(job_id), url, keys) == "running"  # refused

    assert worker_store.finish(job_id, JobStatus.canceled, token=token, files={"result.png": "out/r.png"})
    assert not worker_store.finish(job_id, JobStatus.succeeded, token=token)  # a second ending changes nothing
    assert worker_store.claim(job_id, worker="w", max_attempts=3, lease_s=30).outcome is ClaimOutcome.finished
    record = worker_store.get(job_id)
    assert record.status is JobStatus.canceled and record.files["result.png"] == "out/r.png"
    assert record.finished_at >= record.started_at
    assert run(lambda s: s.cancel(job_id), url, keys) == "canceled"

    events = run(lambda s: s.read_events(job_id, after="0", block_ms=None), url, keys)
    assert [(e.type.value, e.data.get("status")) for e in events] == [
        ("status", "queued"), ("status", "running"), ("progress", None), ("status", "canceled")]
    indexes = {status: worker_store.client.zscore(keys.by_status(status), job_id) for status in JobStatus}
    assert [s for s, score in indexes.items() if score is not None] == [JobStatus.canceled]


def test_attempt_cap_fails_the_job(url: str, keys: Keys, worker_store: WorkerStore) -> None:
    (job_id,) = _create(url, keys)
    claims = [worker_store.claim(job_id, worker="w", max_attempts=2, lease_s=30)]
    for _ in range(2):  # each time taken over from a holder that died
        claims.append(worker_store.claim(job_id, worker="w", max_attempts=2, lease_s=30,
                                         take_over=claims[-1].token))
    assert [c.outcome for c in claims] == [ClaimOutcome.claimed, ClaimOutcome.claimed, ClaimOutcome.gave_up]
    record = worker_store.get(job_id)
    assert record.status is JobStatus.failed and record.error_code == "worker_lost"
    assert "2 times" in record.error_message


def test_idempotency_key_maps_to_the_first_job(url: str, keys: Keys, worker_store: WorkerStore) -> None:
    first = _create(url, keys, idempotency_key="k")[0]
    again = _create(url, keys, idempotency_key="k")[0]
    other_owner = _create(url, keys, idempotency_key="k", owner="someone-else")[0]
    assert again == first != other_owner
    assert worker_store.client.zcard(keys.all_jobs) == 2
    assert run(lambda s: s.delete(first), url, keys) == "queued"
    assert run(lambda s: s.find_idempotent("", "k"), url, keys) is None  # the key went with its job


def test_queue_positions_and_paged_listing(url: str, keys: Keys, worker_store: WorkerStore) -> None:
    ids = _create(url, keys, 5)
    assert [worker_store.get(i).queue_position for i in ids] == [1, 2, 3, 4, 5]
    worker_store.claim(ids[0], worker="w", max_attempts=3, lease_s=30)
    assert worker_store.get(ids[0]).queue_position is None
    assert worker_store.get(ids[1]).queue_position == 1

    async def pages(store: JobStore, status: JobStatus | None) -> list[list[str]]:
        result, cursor = [], None
        while True:
            records, cursor = await store.list(status=status, limit=2, cursor=cursor)
            result.append([r.id for r in records])
            if cursor is None:
                return result
            if len(result) == 2:  # a job submitted between pages does not shift them
                await store.create(new_job_id(), task="denoise", params={}, files={})

    assert run(lambda s: pages(s, None), url, keys) == [ids[4:2:-1], ids[2:0:-1], ids[:1]]
    assert run(lambda s: pages(s, JobStatus.running), url, keys) == [[ids[0]]]


def _age(directory: Path, seconds: float) -> None:
    """Make ``directory`` and everything in it look ``seconds`` old."""
    then = time.time() - seconds
    for path in [directory, *directory.rglob("*")]:
        os.utime(path, (then, then))


def test_sweep_deletes_expired_jobs_files_and_old_orphans_and_keeps_recent_ones(url: str, keys: Keys,
                                                                                 tmp_path: Path) -> None:
    async def create(store: JobStore) -> str:
        return await store.create(new_job_id(), task="denoise", params={}, files={})

    async def create_and_cancel(store: JobStore) -> str:
        job_id = await create(store)  # a live job never expires: retention counts from its end
        await store.cancel(job_id)
        return job_id

    expired = run(create_and_cancel, url, keys, retention_s=1)
    kept = run(create, url, keys, retention_s=3600)
    lost, old_orphan, staging = new_job_id(), new_job_id(), tmp_path / ".staging" / new_job_id()
    for directory in (tmp_path / expired, tmp_path / kept, tmp_path / lost, tmp_path / old_orphan, staging):
        (directory / "out").mkdir(parents=True)
        (directory / "out" / "result.png").write_bytes(b"png")
    for directory in (tmp_path / expired, tmp_path / kept, tmp_path / old_orphan):
        _age(directory, 100)
    client = redis.Redis.from_url(url, decode_responses=True)
    deadline = time.monotonic() + 5
    while client.exists(keys.job(expired)):
        assert time.monotonic() < deadline
        time.sleep(0.1)

    # Retention 60 s: folders without a record go once their newest file is 60 s old (the old
    # orphan, and the expired job's, 100 s); one whose record went missing recently (Redis lost
    # it) stays until 60 s after its newest file.
    store = WorkerStore.from_url(url, retention_s=60, keys=keys)
    report = sweep(store, LocalResults(tmp_path), staging=tmp_path / STAGING_DIR, grace_s=3600)
    assert (report.expired_jobs, report.orphan_dirs, report.orphans_kept) == (0, 2, 1)
    assert not (tmp_path / old_orphan).exists() and not (tmp_path / expired).exists()
    assert (tmp_path / lost).exists() and (tmp_path / kept).exists()
    assert staging.exists()  # an upload being staged

    # Two hours on: the expired job's index entry goes, and so do the lost record's folder and the
    # abandoned upload; the live job's folder stays.
    later = sweep(store, LocalResults(tmp_path), staging=tmp_path / STAGING_DIR, now=time.time() + 7200,
                  grace_s=3600)
    assert (later.expired_jobs, later.orphan_dirs, later.orphans_kept) == (1, 2, 0)
    assert not (tmp_path / lost).exists() and not staging.exists()
    assert client.zscore(keys.all_jobs, expired) is None and client.zscore(keys.all_jobs, kept) is not None
    assert (tmp_path / kept).exists()  # its record is alive
    store.close()
    for key in client.scan_iter(f"{keys.prefix}:*"):
        client.delete(key)
    client.close()


def test_history_rewinds_to_a_checkpoint(url: str, keys: Keys, worker_store: WorkerStore) -> None:
    (job_id,) = _create(url, keys)
    token = worker_store.claim(job_id, worker="w", max_attempts=3, lease_s=30).token
    for iteration in (5, 10, 15, 20):
        worker_store.append_history(job_id, {"iteration": iteration, "loss": 1.0}, token=token)
        name = f"snapshot_{iteration:05d}.png"
        worker_store.add_files(job_id, {name: f"out/snapshots/iter_{iteration:05d}.png"}, token=token,
                               event={"iteration": iteration, "name": name})
    worker_store.rewind_history(job_id, iteration=12, token=token)
    assert [p["iteration"] for p in run(lambda s: s.history(job_id), url, keys)] == [5, 10]
    # The abandoned part's snapshots are gone from the files and the event stream alike.
    assert sorted(worker_store.client.hkeys(keys.files(job_id))) == ["input.png", "snapshot_00005.png",
                                                                    "snapshot_00010.png"]
    events = [(f["type"], json.loads(f["data"])) for _, f in worker_store.client.xrange(keys.events(job_id))]
    assert [data["iteration"] for kind, data in events if kind == "snapshot"] == [5, 10]
    assert [kind for kind, _ in events][:2] == ["status", "status"]  # queued, running: kept
    # A live job's keys never expire; once it ends they all expire a retention period later.
    job_keys = (keys.job(job_id), keys.files(job_id), keys.history(job_id), keys.events(job_id))
    assert [worker_store.client.pttl(key) for key in job_keys if worker_store.client.exists(key)] == [-1] * 4
    assert worker_store.finish(job_id, JobStatus.succeeded, token=token)
    ttls = [worker_store.client.pttl(key) for key in job_keys if worker_store.client.exists(key)]
    assert len(ttls) == 4 and all(0 < ttl <= worker_store.retention_s * 1000 for ttl in ttls)


def test_options_are_validated(url: str) -> None:
    with pytest.raises(ValueError, match="retention_s"):
        WorkerStore.from_url(url, retention_s=0)
    with pytest.raises(ValueError, match="decode_responses"):
        WorkerStore(redis.Redis.from_url(url), retention_s=10)


@pytest.mark.parametrize(("raised", "expected"), [
    (redis.exceptions.ConnectionError("Connection refused"), StoreUnavailable),
    (redis.exceptions.TimeoutError("Timeout reading from socket"), StoreUnavailable),
    (redis.exceptions.OutOfMemoryError("command not allowed when used memory > 'maxmemory'"), StoreUnavailable),
    (redis.exceptions.ResponseError("Error running script (call to f_1): @user_script:9: -READONLY You can't "
                                    "write against a read only replica."), StoreUnavailable),
    (redis.exceptions.ResponseError("LOADING Redis is loading the dataset in memory"), StoreUnavailable),
    (redis.exceptions.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"), StoreError),
    (redis.exceptions.ResponseError("Error running script: @user_script:3: attempt to compare nil"), StoreError),
])
def test_redis_errors_become_the_stores_own(raised: Exception, expected: type) -> None:
    from core.store.errors import neutral

    def call() -> None:
        raise raised

    with pytest.raises(StoreError) as caught:
        neutral(call)()
    assert type(caught.value) is expected
    assert caught.value.__cause__ is raised and str(raised) in str(caught.value)


def test_job_ids_are_valid_and_never_read_as_a_command_line_option() -> None:
    from core.layout import JOB_ID

    ids = [new_job_id() for _ in range(2000)]  # the old ids started with - or _ once in 32
    assert all(JOB_ID.fullmatch(job_id) and job_id[0].isalnum() for job_id in ids)
    assert len(set(ids)) == len(ids)
