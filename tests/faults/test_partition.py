"""A worker cut off from Redis in the middle of a job (a network partition, not a crash).

The worker talks to Redis through a TCP proxy the test cuts: its connections
go silent, as over a dead link. It cannot renew its lease, so after a lease
it must stop writing the job's files (the fence); past a margin, another
worker's reaper re-queues the job and the other worker resumes it from its
checkpoint. Exactly one process writes the job's files at any time, and the
result is one valid, complete run.
"""

from __future__ import annotations

import io
import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from core.layout import job_dir
from tests.faults.tcp_proxy import TcpProxy

pytestmark = pytest.mark.e2e

ITERATIONS = 400
LOG_EVERY = 10
FENCE = "writing nothing more"


def _log_time(text: str, needle: str) -> datetime:
    """When a worker logged its first line containing ``needle`` (Celery's ``[YYYY-mm-dd HH:MM:SS,mmm: ...``)."""
    line = next(line for line in text.splitlines() if needle in line)
    stamp = re.match(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})", line)
    assert stamp, line
    return datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f")


def _files(directory: Path) -> dict[str, tuple[int, int]]:
    return {path.relative_to(directory).as_posix(): (path.stat().st_size, path.stat().st_mtime_ns)
            for path in sorted(directory.rglob("*")) if path.is_file()}


@pytest.mark.timeout(180)
def test_a_worker_cut_off_from_redis_stops_writing_and_another_completes_the_job(cluster: Any) -> None:
    cluster.start_api()
    proxy = TcpProxy("127.0.0.1", cluster.redis_server.port)
    try:
        cut_off = cluster.start_worker("cut", DIP_REDIS_URL=proxy.url())
        job_id = cluster.submit(iterations=ITERATIONS, log_every=LOG_EVERY, snapshot_every=50)
        before = cluster.wait_running(job_id, min_iteration=3 * cluster.checkpoint_every)
        assert before["worker"].startswith("cut@")

        proxy.cut()
        other = cluster.start_worker("other")  # straight to Redis
        # The cut-off worker stops by itself: nothing tells it to.
        cluster.until(lambda: FENCE in cut_off.text(), timeout_s=60, what="the cut-off worker stops the job",
                      on_timeout=cut_off.tail)
        done = cluster.wait_finished(job_id, timeout_s=120)
        finished = _files(job_dir(cluster.results_dir, job_id))

        # Back in touch, the first worker finds the job taken over, writes nothing, and lives on.
        proxy.restore()
        cluster.until(lambda: "lease lost, left to its new holder" in cut_off.text(), timeout_s=60,
                      what="the cut-off worker's task returns", on_timeout=cut_off.tail)
    finally:
        proxy.close()

    assert done["status"] == "succeeded", done
    assert done["worker"].startswith("other@") and done["attempts"] == "2"
    assert cluster.statuses(job_id) == [("queued", None), ("running", 1), ("queued", "lease_expired"),
                                        ("running", 2), ("succeeded", None)]
    # One writer at a time: the first stopped before the other claimed the job...
    stopped, claimed = _log_time(cut_off.text(), FENCE), _log_time(other.text(), f"job {job_id}: attempt 2")
    print(f"\ncut-off worker stopped at {stopped:%H:%M:%S.%f}, the other claimed the job at {claimed:%H:%M:%S.%f} "
          f"(lease {cluster.lease_s} s)")
    assert stopped < claimed
    # ...and wrote nothing after the job ended: same files, same sizes, same times, no checkpoint.
    assert _files(job_dir(cluster.results_dir, job_id)) == finished
    assert not any(name.endswith("checkpoint.pt") for name in finished)
    assert cluster.record(job_id) == done
    assert cut_off.alive() and other.alive()

    # A valid, complete run: every history point once, in order; the outputs of its last iteration.
    assert cluster.history(job_id) == list(range(LOG_EVERY, ITERATIONS + 1, LOG_EVERY))
    result = cluster.http.get(f"/v1/jobs/{job_id}/files/result.png")
    assert result.status_code == 200
    assert Image.open(io.BytesIO(result.content)).size == (64, 64)
    metrics = json.loads(cluster.http.get(f"/v1/jobs/{job_id}/files/metrics.json").content)
    assert metrics["history"][-1]["iteration"] == ITERATIONS
