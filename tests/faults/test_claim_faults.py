"""A claim that cannot be made: the job is sent again or failed with a reason, never dropped.

A worker holds a delivered message at the claim (``DIP_FAULT_INJECTION=hold_before_claim``,
test-only) while the test fills Redis (``maxmemory`` 1 byte, ``noeviction``): the claim is
then refused with OOM for longer than ``DIP_REDIS_RETRY_S``. ``DIP_REDISPATCH_S=0`` turns
off the periodic resend, so nothing but the claim's own handling can save the job.
"""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import KEYS

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(150)
def test_a_claim_refused_past_its_retry_window_keeps_the_job_and_it_runs_once_redis_accepts_writes(
        cluster: Any) -> None:
    hold = cluster.root / "var" / "hold_before_claim"
    hold.parent.mkdir(parents=True, exist_ok=True)
    hold.touch()
    env = {"DIP_REDIS_RETRY_S": "1", "DIP_REDISPATCH_S": "0"}
    cluster.start_api(**env)
    worker = cluster.start_worker("w", DIP_FAULT_INJECTION="hold_before_claim", **env)
    job_id = cluster.submit(iterations=30)
    cluster.until(lambda: f"holding job {job_id}" in worker.text(), timeout_s=30, what="the delivery held",
                  on_timeout=worker.tail)

    cluster.redis.config_set("maxmemory", "1")  # every write is refused with OOM
    try:
        hold.unlink()
        # Twice past the retry window: the claim gave up, and the job was kept, not acked away.
        cluster.until(lambda: worker.text().count(f"job {job_id}: the claim is still refused") >= 2,
                      timeout_s=30, what="the claim given up on, twice", on_timeout=worker.tail)
        assert cluster.record(job_id)["status"] == "queued"
    finally:
        cluster.redis.config_set("maxmemory", "0")

    done = cluster.wait_finished(job_id, timeout_s=60)
    assert done["status"] == "succeeded", done
    assert done["attempts"] == "1"
    assert worker.alive()


@pytest.mark.timeout(120)
def test_a_job_whose_record_cannot_be_read_fails_with_a_reason(cluster: Any) -> None:
    cluster.start_api()
    job_id = cluster.submit(iterations=30)  # no worker yet: it waits in the queue
    cluster.redis.hset(KEYS.job(job_id), "params", "{not json")  # what a bad migration or a hand edit leaves
    worker = cluster.start_worker("w")

    done = cluster.wait_finished(job_id, timeout_s=30)

    assert done["status"] == "failed", done
    assert done["error_code"] == "invalid_record"
    assert "could not be read" in done["error_message"] and "JSONDecodeError" in done["error_message"]
    assert done["attempts"] == "1"  # failed at once, not after the attempt cap
    assert worker.alive()
