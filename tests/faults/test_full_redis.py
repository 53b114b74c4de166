"""A Redis that refuses writes for a while (full, with ``noeviction``; a failover does the same
with READONLY), and a broker that loses a message.

A full Redis still pops a queued message for a worker, but refuses the broker's own
bookkeeping write after it: the message is lost before any code of ours sees it (the
probe behind this: BRPOP answers, ZADD and HSET get OOM). The job must not be lost
with it: a job still queued is sent again after ``DIP_REDISPATCH_S``, then after twice
as long, until a worker claims it. A running job rides out refused writes as it rides
out an unreachable Redis.
"""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import KEYS, LEASE_S, QUEUE

pytestmark = pytest.mark.e2e

REDISPATCH_S = 2.0


@pytest.mark.timeout(120)
def test_a_job_whose_message_the_broker_lost_is_sent_again_and_runs(cluster: Any) -> None:
    env = {"DIP_REDISPATCH_S": str(REDISPATCH_S)}
    cluster.start_api(**env)
    job_id = cluster.submit(iterations=30)  # no worker yet: its message waits in the queue
    assert cluster.redis.llen(QUEUE) == 1
    assert cluster.redis.rpop(QUEUE)  # what a full Redis does to a message it delivers
    worker = cluster.start_worker("w", **env)

    done = cluster.wait_finished(job_id, timeout_s=60)

    assert done["status"] == "succeeded", done
    assert done["attempts"] == "1"
    assert f"job {job_id}: queued without a confirmed message, or waiting long after its last one" in worker.text()
    assert cluster.statuses(job_id) == [("queued", None), ("running", 1), ("succeeded", None)]
    assert cluster.redis.zscore(KEYS.leases, job_id) is None  # nothing more is sent for it


@pytest.mark.timeout(120)
def test_a_running_job_rides_out_a_full_redis(cluster: Any) -> None:
    cluster.start_api()
    worker = cluster.start_worker("w")
    job_id = cluster.submit(iterations=200, log_every=10)
    cluster.wait_running(job_id, min_iteration=30)

    cluster.redis.config_set("maxmemory", "1")  # every write is refused with OOM
    try:
        cluster.until(lambda: "refusing writes" in worker.text(), timeout_s=LEASE_S, what="a write refused",
                      on_timeout=worker.tail)
    finally:
        cluster.redis.config_set("maxmemory", "0")

    done = cluster.wait_finished(job_id, timeout_s=60)
    assert done["status"] == "succeeded", done
    assert done["attempts"] == "1"
    assert cluster.history(job_id) == list(range(10, 201, 10))  # points written late, none lost
    assert worker.alive()
