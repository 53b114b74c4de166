"""A worker that trains several queued jobs as one batched model (``DIP_BATCH_MAX``).

Real Celery workers against a real Redis and the real API, on tiny CPU images (batching
must be correct on any device): compatible jobs share a batch and each still ends on its
own, a cancel stops one job of a batch, and a batch whose worker is killed is taken back
job by job and resumed from each job's checkpoint.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest

from core.config import Settings

pytestmark = pytest.mark.e2e

LOG_EVERY = 10
BATCHING = {"DIP_BATCH_MAX": "3", "DIP_BATCH_WAIT_S": "1"}


def _metrics(cluster: Any, job_id: str) -> dict[str, Any]:
    [path] = (cluster.results_dir / job_id).rglob("metrics.json")
    return json.loads(Path(path).read_text())


def _full_history(cluster: Any, job_id: str, iterations: int) -> bool:
    return cluster.history(job_id) == list(range(LOG_EVERY, iterations + 1, LOG_EVERY))


@pytest.mark.timeout(180)
def test_compatible_queued_jobs_are_trained_as_one_batch_and_each_ends_on_its_own(cluster: Any) -> None:
    cluster.start_api()
    iterations = 60
    batch = [cluster.submit(seed=seed, iterations=iterations, log_every=LOG_EVERY) for seed in (1, 2, 3)]
    other = cluster.submit(seed=4, iterations=40, log_every=LOG_EVERY)  # other parameters: not batched
    worker = cluster.start_worker("batcher", **BATCHING)
    done = {job_id: cluster.wait_finished(job_id, timeout_s=150) for job_id in [*batch, other]}

    assert all(record["status"] == "succeeded" for record in done.values()), done
    assert [_metrics(cluster, job_id)["setup"]["batch_size"] for job_id in batch] == [3, 3, 3]
    assert _metrics(cluster, other)["setup"]["batch_size"] == 1
    assert "batched with" in worker.text()
    for job_id in batch:
        assert _full_history(cluster, job_id, iterations)
        assert cluster.statuses(job_id) == [("queued", None), ("running", 1), ("succeeded", None)]
    # Each job fitted its own image (its own seed): their results differ.
    images = [next((cluster.results_dir / job_id).rglob(_metrics(cluster, job_id)["files"]["result"])).read_bytes()
              for job_id in batch]
    assert len(set(images)) == 3


@pytest.mark.timeout(180)
def test_a_cancel_stops_its_job_and_the_rest_of_the_batch_goes_on(cluster: Any) -> None:
    cluster.start_api()
    iterations = 150
    jobs = [cluster.submit(seed=seed, iterations=iterations, log_every=LOG_EVERY) for seed in (1, 2, 3)]
    cluster.start_worker("batcher", **BATCHING)
    for job_id in jobs:
        cluster.wait_running(job_id, min_iteration=LOG_EVERY)
    response = cluster.http.post(f"/v1/jobs/{jobs[1]}/cancel")
    assert response.status_code == 202, response.text
    done = [cluster.wait_finished(job_id, timeout_s=150) for job_id in jobs]

    assert [record["status"] for record in done] == ["succeeded", "canceled", "succeeded"], done
    assert int(done[1]["iteration"]) < iterations
    for job_id in (jobs[0], jobs[2]):
        assert _metrics(cluster, job_id)["setup"]["batch_size"] == 3
        assert _full_history(cluster, job_id, iterations)


@pytest.mark.timeout(240)
def test_a_killed_batching_worker_loses_no_job_each_resumes_from_its_checkpoint(cluster: Any) -> None:
    cluster.start_api()
    iterations = 120
    jobs = [cluster.submit(seed=seed, iterations=iterations, log_every=LOG_EVERY) for seed in (1, 2, 3)]
    first = cluster.start_worker("first", **BATCHING)
    for job_id in jobs:
        cluster.wait_running(job_id, min_iteration=3 * cluster.checkpoint_every)
    assert len({cluster.record(job_id)["worker"] for job_id in jobs}) == 1  # one process runs all three
    first.group_signal(signal.SIGKILL)
    first.popen.wait()
    cluster.start_worker("second", **BATCHING)
    done = [cluster.wait_finished(job_id, timeout_s=180) for job_id in jobs]

    for job_id, record in zip(jobs, done):
        assert record["status"] == "succeeded", record
        assert record["worker"].startswith("second@")
        firsts = cluster.first_progress_of_each_run(job_id)
        assert len(firsts) == 2 and firsts[1] > 0, firsts  # the second run started from a checkpoint
        # A job that joined the batch still has its message queued: the new worker may get it and
        # take the lapsed lease over itself, before any reaper re-queues the job.
        assert cluster.statuses(job_id) in (
            [("queued", None), ("running", 1), ("queued", "lease_expired"), ("running", 2), ("succeeded", None)],
            [("queued", None), ("running", 1), ("running", 2), ("succeeded", None)])
        assert _full_history(cluster, job_id, iterations)


def test_the_batch_wait_must_be_shorter_than_half_a_lease() -> None:
    # A claimed job's lease is renewed only once its batch starts.
    with pytest.raises(ValueError, match="batch_wait_s"):
        Settings(redis_url="redis://localhost/0", lease_s=3.0, batch_wait_s=2.0)
    assert Settings(redis_url="redis://localhost/0", lease_s=3.0, batch_wait_s=1.0).batch_wait_s == 1.0
