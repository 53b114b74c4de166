"""Queue caps (429 with Retry-After, atomic under concurrency) and the per-job wall-time limit."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import pytest

LIMITS_DB = 7
WALL_TIME_DB = 8
MAX_QUEUED = 4
MAX_PER_CLIENT = 2
MAX_JOB_SECONDS = 7
KILL_AFTER_S = 300  # the default hard - soft time limits


@pytest.fixture(scope="module")
def api(start_api: Any, key_settings: dict[str, str]) -> Iterator[Any]:
    with start_api(LIMITS_DB, max_queued=str(MAX_QUEUED), max_queued_per_client=str(MAX_PER_CLIENT),
                   max_job_seconds=str(MAX_JOB_SECONDS), **key_settings) as api:
        yield api


@pytest.fixture(autouse=True)
def empty_queue(api: Any) -> None:
    """Each test starts with no jobs (no worker runs here: whatever is submitted stays queued)."""
    api.redis.flushdb()
    for path in api.results_dir.iterdir():
        shutil.rmtree(path)


def _queue_full(response: Any, error_of: Any) -> str:
    message = error_of(response, 429, "queue_full")
    assert response.headers["retry-after"].isdigit() and int(response.headers["retry-after"]) > 0
    return message


def test_per_client_cap_is_429_and_writes_nothing(api: Any, image64: bytes, error_of: Any) -> None:
    alice = api.client("alice")
    first = api.submit(alice, image64, headers={"Idempotency-Key": "first"}).json()
    api.submit_ok(alice, image64)
    before = api.state()
    message = _queue_full(api.submit(alice, image64), error_of)
    assert str(MAX_PER_CLIENT) in message and "you have" in message
    assert api.state() == before
    # A retry of an accepted submission still answers with its job.
    retry = api.submit(alice, image64, headers={"Idempotency-Key": "first"})
    assert retry.status_code == 202 and retry.json()["id"] == first["id"]
    # Other clients are not held back by Alice's jobs, and a canceled job frees a place.
    api.submit_ok(api.client("bob"), image64)
    assert alice.post(f"/v1/jobs/{first['id']}/cancel").status_code == 200
    api.submit_ok(alice, image64)


def test_global_cap_is_429_for_everyone(api: Any, image64: bytes, error_of: Any) -> None:
    for who in ("alice", "alice", "bob", "bob"):
        api.submit_ok(api.client(who), image64)
    message = _queue_full(api.submit(api.client("admin"), image64), error_of)
    assert "the service has" in message and str(MAX_QUEUED) in message
    assert api.redis.zcard("dip:jobs:queued") == MAX_QUEUED


def test_caps_hold_under_concurrent_submissions(api: Any, image64: bytes) -> None:
    # Twelve at once from one client: the early check cannot see the others'
    # uploads, the atomic one at creation must.
    alice = api.client("alice")
    with ThreadPoolExecutor(max_workers=12) as pool:
        statuses = sorted(pool.map(lambda _: api.submit(alice, image64).status_code, range(12)))
    assert statuses == [202] * MAX_PER_CLIENT + [429] * (12 - MAX_PER_CLIENT)
    assert api.redis.zcard("dip:jobs:queued") == MAX_PER_CLIENT
    job_dirs = [p for p in api.results_dir.iterdir() if p.name != ".staging"]
    assert len(job_dirs) == MAX_PER_CLIENT and not list((api.results_dir / ".staging").iterdir())


def test_a_full_queue_refuses_before_the_upload(api: Any, image64: bytes) -> None:
    alice = api.client("alice")
    for _ in range(MAX_PER_CLIENT):
        api.submit_ok(alice, image64)
    # Announce a 900 kB body, send only the head: the answer must not wait for the rest.
    host = api.url.removeprefix("http://")
    head = (f"POST /v1/jobs HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {api.keys['alice']}\r\n"
            "Content-Type: multipart/form-data; boundary=xyz\r\nContent-Length: 900000\r\n\r\n").encode()
    response = api.raw(head, timeout_s=5.0)
    assert response.status == 429 and json.loads(response.body)["error"]["code"] == "queue_full"


def test_the_wall_time_limit_travels_with_the_job(api: Any, image64: bytes) -> None:
    job = api.submit_ok(api.client("alice"), image64)
    assert api.redis.hget(f"dip:job:{job['id']}", "time_limit_s") == str(MAX_JOB_SECONDS)
    # The Celery message waiting in the queue carries the limits: any worker, and any
    # redelivery after a crash, applies them.
    messages = [json.loads(raw) for raw in api.redis.lrange(api.queue, 0, -1)]
    (message,) = [m for m in messages if m["headers"]["id"] == job["id"]]
    assert message["headers"]["timelimit"] == [MAX_JOB_SECONDS + KILL_AFTER_S, MAX_JOB_SECONDS]


@pytest.mark.e2e
def test_a_job_over_its_wall_time_fails_with_time_limit(start_api: Any, image64: bytes) -> None:
    with start_api(WALL_TIME_DB, worker=True, max_job_seconds="2") as api:
        http = api.client()
        job = api.submit_ok(http, image64, iterations=20000, early_stop="off", log_every=100)
        deadline = time.monotonic() + 60
        while (state := http.get(f"/v1/jobs/{job['id']}").json())["status"] in ("queued", "running"):
            assert time.monotonic() < deadline, f"{state}\n{api.log_tail('worker')}"
            time.sleep(0.1)
    assert state["status"] == "failed" and state["error"]["code"] == "time_limit", state
    ran_s = (datetime.fromisoformat(state["finished_at"]) - datetime.fromisoformat(state["started_at"])).total_seconds()
    assert 1.5 <= ran_s < 20, ran_s  # the clock starts as the task starts, a moment before the claim
    # On a busy machine the limit may come before the first progress write.
    assert (state["progress"] or {}).get("iteration", 0) < 20000
