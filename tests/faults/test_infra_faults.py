"""The infrastructure under a running service: Redis and the API restarted (no job lost, clients
keep polling), a Redis that may evict (refused), a retention shorter than a job (kept)."""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

import httpx
import pytest

from tests.faults.conftest import KEYS

pytestmark = pytest.mark.e2e

LOG_EVERY = 10


@pytest.mark.timeout(150)
def test_redis_restart_loses_no_job_and_the_running_one_completes(cluster: Any) -> None:
    """Redis goes away for a few seconds while one job runs and two wait: the running job
    goes on (its writes wait for Redis) and succeeds with its whole history; the queued
    ones run after; the worker reconnects by itself."""
    cluster.lease_s = 8.0  # longer than the outage: the worker keeps its job throughout
    cluster.start_api()
    worker = cluster.start_worker("w")
    running = cluster.submit(iterations=200, log_every=LOG_EVERY)
    queued = [cluster.submit(iterations=30, log_every=LOG_EVERY, seed=seed) for seed in (1, 2)]
    cluster.wait_running(running, min_iteration=3 * cluster.checkpoint_every)

    down = time.monotonic()
    cluster.redis_server.stop()  # SHUTDOWN: the append-only file is flushed
    time.sleep(2.0)
    cluster.redis_server.start()  # same port, same data directory
    outage_s = time.monotonic() - down
    after = {job_id: cluster.record(job_id) for job_id in (running, *queued)}
    assert all(after.values()), after  # every job is still there

    done = cluster.wait_finished(running, timeout_s=90)
    recovered_s = time.monotonic() - down
    rest = [cluster.wait_finished(job_id, timeout_s=60) for job_id in queued]

    print(f"\nRedis down {outage_s:.1f} s: the running job finished {recovered_s:.1f} s after the outage began "
          f"(attempts {done['attempts']}), queued ones ran after")
    assert "Redis unreachable" in worker.text()  # the job did run into the outage...
    assert done["status"] == "succeeded", done  # ...and rode it out
    assert done["attempts"] == "1"
    assert cluster.history(running) == list(range(LOG_EVERY, 201, LOG_EVERY))  # points written late, none lost
    assert [r["status"] for r in rest] == ["succeeded", "succeeded"]
    assert all(float(r["started_at"]) >= float(done["finished_at"]) for r in rest)
    assert worker.alive()


@pytest.mark.timeout(120)
def test_api_restart_loses_nothing_and_clients_keep_polling(cluster: Any) -> None:
    """The API process is stopped and started again while a client polls a running job:
    the client sees a short gap of refused connections, then the same job, still moving."""
    api = cluster.start_api()
    cluster.start_worker("w")
    job_id = cluster.submit(iterations=150, log_every=LOG_EVERY)
    waiting = cluster.submit(iterations=20, log_every=LOG_EVERY, seed=1)
    seen: list[tuple[float, str, int]] = []  # (time, status, iteration) answered by the API
    errors: list[float] = []
    stop = threading.Event()

    def poll() -> None:
        with httpx.Client(base_url=cluster.http.base_url, timeout=5.0) as client:
            while not stop.is_set():
                try:
                    job = client.get(f"/v1/jobs/{job_id}").raise_for_status().json()
                    seen.append((time.monotonic(), job["status"], (job["progress"] or {}).get("iteration") or 0))
                except httpx.HTTPError:
                    errors.append(time.monotonic())
                time.sleep(0.05)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        cluster.wait_running(job_id, min_iteration=2 * cluster.checkpoint_every)
        restarted_at = time.monotonic()
        api.stop()
        cluster.start_api()
        back_s = time.monotonic() - restarted_at
        cluster.until(lambda: seen and seen[-1][1] in ("succeeded", "failed", "canceled"), timeout_s=90,
                      what="the poller sees the job end", on_timeout=cluster.logs_tail)
    finally:
        stop.set()
        poller.join(10)

    gap = [t for t in errors if t >= restarted_at]
    print(f"\nAPI restarted in {back_s:.1f} s; the poller got {len(gap)} refused requests over "
          f"{(max(gap) - min(gap)) if gap else 0:.1f} s, then went on")
    assert seen[-1][1] == "succeeded"
    assert len(errors) == len(gap)  # errors only during the restart
    assert any(t < restarted_at and s == "running" for t, s, _ in seen)
    assert any(t > restarted_at and s == "running" for t, s, _ in seen)  # polled it running again
    iterations = [i for _, s, i in seen if s == "running"]
    assert iterations == sorted(iterations)  # progress went on, never back
    history = cluster.http.get(f"/v1/jobs/{job_id}/history").json()
    assert [p["iteration"] for p in history] == list(range(LOG_EVERY, 151, LOG_EVERY))
    assert cluster.wait_finished(waiting)["status"] == "succeeded"  # queued across the restart
    again = cluster.submit(iterations=10, log_every=5, seed=2)  # and the new process takes work
    assert cluster.wait_finished(again)["status"] == "succeeded"


@pytest.mark.timeout(120)
def test_workers_and_the_api_refuse_a_redis_that_may_evict_job_data(cluster: Any) -> None:
    """A Redis that evicts under memory pressure would silently delete records, leases and queued
    jobs: the worker and the API refuse to start on it, with a message that says what to do."""
    cluster.redis.config_set("maxmemory-policy", "allkeys-lru")
    worker = cluster._spawn("evicting-worker", cluster.worker_argv("evicting"), cluster.env())
    api_argv = [sys.executable, "-m", "uvicorn", "--factory", "api.main:create_app", "--host", "127.0.0.1",
                "--port", str(cluster.api_port), "--log-level", "warning"]
    api = cluster._spawn("evicting-api", api_argv, cluster.env())
    for proc in (worker, api):
        cluster.until(lambda: not proc.alive(), timeout_s=60, what=f"{proc.name} refuses to run",
                      on_timeout=proc.tail)
        assert proc.popen.returncode != 0
        assert "maxmemory-policy allkeys-lru" in proc.text() and "DIP_ALLOW_EVICTION" in proc.text(), proc.tail()

    # Allowed on purpose: it runs, and says what it runs on; and noeviction needs no permission.
    allowed = cluster.start_worker("allowed", DIP_ALLOW_EVICTION="true")
    assert "running anyway" in allowed.text()
    cluster.redis.config_set("maxmemory-policy", "noeviction")
    cluster.start_api()
    job_id = cluster.submit(iterations=20, log_every=10)
    assert cluster.wait_finished(job_id)["status"] == "succeeded"


@pytest.mark.timeout(120)
def test_a_job_that_runs_longer_than_the_retention_is_kept_until_a_retention_after_its_end(cluster: Any) -> None:
    """Retention counts from a job's end: a queued or running job never expires, however short
    DIP_RETENTION_S is, and its record, history and files stay readable a retention period after."""
    retention_s = 3
    cluster.start_api(DIP_RETENTION_S=str(retention_s))
    cluster.start_worker("short-retention", DIP_RETENTION_S=str(retention_s))
    job_id = cluster.submit(iterations=400, log_every=10)
    running = cluster.wait_running(job_id, min_iteration=10)
    done = cluster.wait_finished(job_id, timeout_s=100)
    ended_at = time.monotonic()

    assert done["status"] == "succeeded", done
    assert float(done["finished_at"]) - float(done["created_at"]) > retention_s, "the job must outlive it"
    assert float(running["created_at"]) == float(done["created_at"])
    assert cluster.history(job_id)[-1] == 400
    job = cluster.http.get(f"/v1/jobs/{job_id}")
    assert job.status_code == 200 and job.json()["status"] == "succeeded"
    assert cluster.http.get(job.json()["outputs"]["result"]).status_code == 200
    ttls = [cluster.redis.pttl(key) for key in (KEYS.job(job_id), KEYS.history(job_id), KEYS.events(job_id))]
    assert all(0 < ttl <= retention_s * 1000 for ttl in ttls), ttls
    cluster.until(lambda: not cluster.redis.exists(KEYS.job(job_id)), timeout_s=retention_s + 5,
                  what="the record expires a retention period after the end")
    assert time.monotonic() - ended_at >= retention_s - 1


@pytest.mark.timeout(120)
def test_the_workers_sweep_timer_deletes_old_folders_and_keeps_recent_orphans(cluster: Any) -> None:
    """The retention sweep runs on the worker's own timer (no beat process): a folder without a
    record goes once its newest file is a retention old; a recent one (Redis lost its record)
    is kept and logged; a live job's folder is never touched."""
    import os

    from core.layout import new_job_id

    retention_s = 30
    cluster.start_api(DIP_RETENTION_S=str(retention_s))
    live = cluster.submit(iterations=20, log_every=10)
    old, recent = new_job_id(), new_job_id()
    for name in (old, recent):
        (cluster.results_dir / name / "out").mkdir(parents=True)
        (cluster.results_dir / name / "out" / "result.png").write_bytes(b"png")
    then = time.time() - 2 * retention_s
    for path in [cluster.results_dir / old, *(cluster.results_dir / old).rglob("*")]:
        os.utime(path, (then, then))
    worker = cluster.start_worker("sweeper", DIP_RETENTION_S=str(retention_s), DIP_SWEEP_INTERVAL_S="1")
    cluster.until(lambda: not (cluster.results_dir / old).exists(), timeout_s=30,
                  what="the sweep timer deletes the old orphan", on_timeout=worker.tail)
    cluster.until(lambda: "orphan results of job " + recent in worker.text(), timeout_s=30,
                  what="the recent orphan is logged", on_timeout=worker.tail)
    assert cluster.wait_finished(live)["status"] == "succeeded"
    cluster.until(lambda: worker.text().count("retention sweep:") >= 3, timeout_s=30,
                  what="more sweeps", on_timeout=worker.tail)
    assert (cluster.results_dir / recent / "out" / "result.png").exists()
    assert (cluster.results_dir / live).exists()  # its record is alive
