"""A full disk, a full GPU and a broken device, on real processes.

The full disk is real: a small tmpfs mounted for the test (root, as in CI; the tests fail without it)
holds the results volume, and a filler file takes its last bytes. A GPU's faults cannot
be had on a CPU machine: ``DIP_FAULT_INJECTION`` (test-only, ``worker.fault_injection``)
raises, where the engine starts a job, what a CUDA error or ``torch.cuda.OutOfMemoryError``
raises there.
"""

from __future__ import annotations

import errno
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core.config import Settings
from core.layout import STAGING_DIR
from worker.celery_app import create_celery_app

from .conftest import KEYS, QUEUE, png64

pytestmark = pytest.mark.e2e


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 32 MiB tmpfs for the results volume (a checkpoint of the fast preset takes 2.6 MB)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:  # fails loudly: a full disk cannot be had any other way
        pytest.fail(f"cannot mount a small tmpfs for the full-disk tests (needs root, as CI runs): "
                    f"{made.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    """Take every free byte of ``disk`` with one file; returns it (delete it to free the space)."""
    filler = disk / "filler"
    with filler.open("wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return filler


@pytest.mark.timeout(120)
def test_an_upload_to_a_full_disk_is_refused_with_507_and_nothing_is_kept(cluster: Any, small_disk: Path) -> None:
    results = small_disk / "results"
    cluster.start_api(DIP_RESULTS_DIR=str(results))
    results.mkdir(exist_ok=True)
    filler = fill(small_disk)

    response = cluster.http.post("/v1/jobs", files={"image": ("image.png", png64(), "image/png")},
                                 data={"task": "denoise", "preset": "fast"})

    assert response.status_code == 507, response.text
    assert response.json()["error"]["code"] == "insufficient_storage"
    assert "full" in response.json()["error"]["message"]
    assert not [p for p in results.rglob("*") if p.is_file()]  # no half-written upload
    assert [p.name for p in results.rglob("*") if p.is_dir()] in ([], [STAGING_DIR])  # no job folder
    assert cluster.redis.zcard(KEYS.all_jobs) == 0  # and no record
    filler.unlink()
    assert cluster.http.post("/v1/jobs", files={"image": ("image.png", png64(), "image/png")},
                             data={"task": "denoise", "preset": "fast"}).status_code == 202


@pytest.mark.timeout(180)
def test_a_running_job_on_a_full_disk_is_handed_back_and_resumes_once_there_is_room(cluster: Any,
                                                                                    small_disk: Path) -> None:
    env = {"DIP_RESULTS_DIR": str(small_disk / "results"), "DIP_DEVICE_FAILURE_LIMIT": "2"}
    cluster.start_api(**env)
    first = cluster.start_worker("first", **env)
    job_id = cluster.submit(iterations=300, log_every=10)
    cluster.wait_running(job_id, min_iteration=20)

    filler = fill(small_disk)
    # Handed back, taken again by the same worker, handed back again: it stops taking jobs.
    cluster.until(lambda: "stops taking jobs" in first.text(), timeout_s=60, what="the worker stopped",
                  on_timeout=cluster.logs_tail)
    cluster.wait(job_id, lambda r: r["status"] == "queued", timeout_s=30, what="queued again")
    assert ("queued", "disk_full") in cluster.statuses(job_id)
    assert "results disk full" in first.text()

    filler.unlink()
    second = cluster.start_worker("second", **env)
    done = cluster.wait_finished(job_id, timeout_s=90)
    assert done["status"] == "succeeded", done
    assert done["worker"].startswith("second@")
    assert "failed" not in [status for status, _ in cluster.statuses(job_id)]
    assert first.alive() and second.alive()


@pytest.mark.timeout(150)
def test_a_worker_whose_device_keeps_failing_stops_taking_jobs_and_readyz_says_so(cluster: Any) -> None:
    cluster.start_api()
    sick = cluster.start_worker("sick", DIP_FAULT_INJECTION="device_error", DIP_DEVICE_FAILURE_LIMIT="2")
    cluster.until(lambda: cluster.http.get("/readyz").status_code == 200, timeout_s=30, what="ready")
    failed = [cluster.submit(seed=seed, iterations=30) for seed in (1, 2)]
    for job_id in failed:
        done = cluster.wait_finished(job_id)
        assert done["status"] == "failed" and done["error_code"] == "internal_error", done
        assert "CUDA error" in done["error_message"]

    # It no longer consumes the queue (asked of the worker itself, over the broker).
    app = create_celery_app(Settings(redis_url=cluster.redis_server.url, queue=QUEUE))
    name = f"sick@{socket.gethostname()}"
    try:
        cluster.until(lambda: (app.control.inspect(destination=[name], timeout=1).active_queues() or {})
                      .get(name) == [], timeout_s=30, what="the sick worker's consumer cancelled",
                      on_timeout=sick.tail)
    finally:
        app.close()
    ready = cluster.http.get("/readyz")
    assert ready.status_code == 503, ready.text
    assert ready.json()["error"]["code"] == "no_worker"
    assert name in ready.json()["error"]["message"] and "2 jobs in a row" in ready.json()["error"]["message"]

    waiting = cluster.submit(seed=3, iterations=30)
    assert cluster.record(waiting)["status"] == "queued"
    healthy = cluster.start_worker("healthy")
    done = cluster.wait_finished(waiting)
    assert done["status"] == "succeeded", done
    assert done["worker"].startswith("healthy@") and done["attempts"] == "1"
    ready = cluster.http.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["workers"] == 1
    assert [w["worker"] for w in ready.json()["unhealthy_workers"]] == [name]
    assert sick.alive() and healthy.alive()


@pytest.mark.timeout(120)
def test_out_of_memory_fails_the_job_with_what_to_try_and_the_worker_goes_on(cluster: Any) -> None:
    cluster.start_api()
    too_big = cluster.submit(seed=1, iterations=30)  # no worker yet: its id names the fault
    # A limit of 1: were running out of memory counted against the device, the next job would wait.
    worker = cluster.start_worker("w", DIP_FAULT_INJECTION=f"out_of_memory:{too_big}", DIP_DEVICE_FAILURE_LIMIT="1")

    done = cluster.wait_finished(too_big)
    assert done["status"] == "failed", done
    assert done["error_code"] == "out_of_memory"
    assert "64×64 (H×W)" in done["error_message"] and "DIP_BATCH_MAX=1" in done["error_message"]
    after = cluster.submit(seed=2, iterations=30)
    assert cluster.wait_finished(after)["status"] == "succeeded"
    assert worker.alive()
