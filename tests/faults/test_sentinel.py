"""Redis Sentinel: the job store and the broker follow the primary through a failover.

Real processes throughout: a primary, its replica and one sentinel (``stack.sentinel``),
and for the end-to-end test the API and a Celery worker configured with
``DIP_REDIS_SENTINELS`` only (no ``DIP_REDIS_URL``). While no primary is available the store
raises ``StoreUnavailable`` (the API answers 503), never anything else.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import redis.asyncio.sentinel
import redis.exceptions
import redis.sentinel
from pydantic import ValidationError

from core.config import Settings
from core.layout import new_job_id
from core.queue import celery_config
from core.store import ClaimOutcome, JobStatus, JobStore, Keys, StoreUnavailable, WorkerStore
from core.store.errors import translate
from tests.faults.conftest import Cluster, until
from stack.sentinel import MASTER, SentinelTopology

pytestmark = pytest.mark.skipif(os.name != "posix", reason="process groups and POSIX signals")

T = TypeVar("T")
ITERATIONS = 60
LOG_EVERY = 10


# -- settings (no process) ----------------------------------------------------------------------

@pytest.mark.parametrize("entries", ["redis-1", "redis-1:", "redis-1:port", "redis-1:0", "::1:26379",
                                     '["a:26379", "b"]'])
def test_a_malformed_sentinel_address_is_refused_at_start_up(entries: str) -> None:
    with pytest.raises(ValidationError, match="DIP_REDIS_SENTINELS"):
        Settings(redis_sentinels=entries)


def test_sentinels_need_a_plain_redis_url_and_a_master_name() -> None:
    with pytest.raises(ValidationError, match="redis:// URL"):
        Settings(redis_sentinels="a:26379", redis_url="rediss://:pw@ignored/0")
    with pytest.raises(ValidationError, match="DIP_REDIS_SENTINEL_MASTER"):
        Settings(redis_sentinels="a:26379", redis_sentinel_master=" ")


def test_the_broker_url_names_every_sentinel_with_the_urls_credentials() -> None:
    settings = Settings(redis_sentinels="a:26379, [::1]:26380", redis_url="redis://:p%40ss@ignored/3",
                        redis_sentinel_master="main")
    config = celery_config(settings)
    assert config["broker_url"] == "sentinel://:p%40ss@a:26379/3;sentinel://:p%40ss@[::1]:26380/3"
    assert config["broker_transport_options"]["master_name"] == "main"
    assert config["broker_transport_options"]["visibility_timeout"] == settings.visibility_timeout_s
    assert settings.sentinel_addresses == (("a", 26379), ("::1", 26380))
    # Without sentinels, the URL as given and no master name.
    plain = celery_config(Settings(redis_url="redis://h:1/2"))
    assert plain["broker_url"] == "redis://h:1/2" and "master_name" not in plain["broker_transport_options"]


@pytest.mark.parametrize("error", [
    redis.sentinel.MasterNotFoundError("No master found for 'dip'"),
    redis.asyncio.sentinel.MasterNotFoundError("No master found for 'dip'"),
    redis.exceptions.ConnectionError("The previous master is now a slave"),
    redis.exceptions.ReadOnlyError("You can't write against a read only replica."),
    redis.exceptions.ResponseError("Error running script (call to f_0): @user_script:3: "
                                   "-READONLY You can't write against a read only replica."),
], ids=type)
def test_what_a_failover_raises_is_unavailable_for_now(error: Exception) -> None:
    assert isinstance(translate(error), StoreUnavailable)  # the API's 503, the workers' retry


# -- the stores against a real topology ---------------------------------------------------------

@pytest.fixture
def topology(tmp_path: Path) -> Iterator[SentinelTopology]:
    made = SentinelTopology(tmp_path / "redis").start()
    try:
        yield made
    finally:
        made.stop()


def _status_on(topology: SentinelTopology, port: int, key: str) -> str | None:
    """A job's status as one node holds it (not through the sentinel)."""
    client = topology.node(port).client()
    try:
        return client.hget(key, "status")
    finally:
        client.close()


def _or_none(call: Callable[[], T], seen: list[str]) -> T | None:
    """``call()``, or None while the store is unavailable (noted in ``seen``); any other error fails."""
    try:
        return call()
    except StoreUnavailable as exc:
        seen.append(str(exc))
        return None


async def _until_async(call: Callable[[], Any], *, timeout_s: float, what: str, seen: list[str]) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        try:
            value = await call()
            if value:
                return value
        except StoreUnavailable as exc:
            seen.append(str(exc))
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"not within {timeout_s} s: {what}")
        await asyncio.sleep(0.05)


@pytest.mark.e2e
@pytest.mark.timeout(90)
@pytest.mark.parametrize("how", ["sentinel_failover", "primary_killed"])
def test_both_stores_follow_the_primary_through_a_failover(topology: SentinelTopology, how: str) -> None:
    """A job written through the API's store is on the primary; after the replica is promoted
    (a SENTINEL FAILOVER, or the primary killed) both stores reach the new primary by
    themselves, and meanwhile fail only with StoreUnavailable."""
    settings = Settings(redis_url=None, redis_sentinels=topology.sentinels, redis_sentinel_master=MASTER)
    keys = Keys(prefix=f"s{uuid.uuid4().hex[:8]}")
    seen: list[str] = []

    async def scenario() -> None:
        api = JobStore.from_settings(settings, retention_s=3600, keys=keys)
        worker = WorkerStore.from_settings(settings, retention_s=3600, keys=keys)
        try:
            job_id = await api.create(new_job_id(), task="denoise", params={}, files={})
            old = topology.primary_port()
            assert _status_on(topology, old, keys.job(job_id)) == "queued"  # the primary has it
            assert worker.get(job_id).status is JobStatus.queued
            topology.wait_replicated()

            if how == "sentinel_failover":
                topology.failover()
                new = topology.wait_promoted(old)
                # A demoted primary keeps its clients' connections until the sentinel reconfigures
                # it (and drops them): writes meanwhile would be lost, as Redis documents.
                until(lambda: topology.node(old).info().get("role") == "slave", timeout_s=30,
                      what="the old primary demoted", on_timeout=topology.tail)
            else:
                topology.kill_primary()
                # Ask all through the gap: no primary, then a promoted one.
                until(lambda: _or_none(lambda: worker.get(job_id), seen), timeout_s=30,
                      what="the worker's store reached a new primary", on_timeout=topology.tail)
                new = topology.wait_promoted(old)
                assert seen, "the store never noticed the primary was gone"

            record = await _until_async(lambda: api.get(job_id), timeout_s=30, seen=seen,
                                        what="the API's store reached the new primary")
            assert record.status is JobStatus.queued
            claim = until(lambda: _or_none(lambda: worker.claim(job_id, worker="w@test", max_attempts=3,
                                                                lease_s=30), seen),
                          timeout_s=30, what="the claim written on the new primary")
            assert claim.outcome is ClaimOutcome.claimed
            assert _status_on(topology, new, keys.job(job_id)) == "running"  # written there
            assert (await api.get(job_id)).status is JobStatus.running
        finally:
            worker.close()
            await api.aclose()

    asyncio.run(scenario())
    print(f"\n{how}: {len(seen)} calls answered StoreUnavailable meanwhile")


# -- end to end: API and worker through the sentinel --------------------------------------------

@dataclass
class SentinelCluster(Cluster):
    """The faults suite's cluster, with its processes and its own client going through the sentinel."""

    topology: SentinelTopology = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        super().__post_init__()
        self.redis.close()
        self.redis = self.topology.master_client()  # the test's view follows the primary too

    def env(self, **extra: str) -> dict[str, str]:
        env = super().env(DIP_REDIS_SENTINELS=self.topology.sentinels, DIP_REDIS_SENTINEL_MASTER=MASTER, **extra)
        env.pop("DIP_REDIS_URL")  # the sentinels alone say where Redis is
        return env


@pytest.fixture
def sentinel_cluster(tmp_path: Path) -> Iterator[SentinelCluster]:
    topology = SentinelTopology(tmp_path / "redis").start()
    made = SentinelCluster(tmp_path, topology.primary(), topology=topology)
    try:
        yield made
    finally:
        made.close()
        topology.stop()


@pytest.mark.e2e
@pytest.mark.timeout(240)
def test_a_primary_killed_mid_job_is_replaced_and_no_job_is_lost(sentinel_cluster: SentinelCluster) -> None:
    """SIGKILL of the primary while a job runs and another waits: the sentinel promotes the
    replica, the API answers 503 (never 500) until then, and both jobs succeed."""
    cluster = sentinel_cluster
    cluster.lease_s = 8.0  # longer than the failover: the worker may keep its job throughout
    cluster.start_api()
    # Slowed down, so that the job is still running when the primary dies, however fast the machine.
    worker = cluster.start_worker("w", DIP_FAULT_INJECTION="slow_steps")
    running = cluster.submit(iterations=ITERATIONS, log_every=LOG_EVERY)
    cluster.wait_running(running, min_iteration=cluster.checkpoint_every)
    queued = cluster.submit(iterations=20, log_every=LOG_EVERY, seed=1)
    assert cluster.record(queued)["status"] == "queued"
    cluster.topology.wait_replicated()

    old = cluster.topology.kill_primary()
    statuses: list[int] = []

    def answered() -> bool:
        try:
            response = cluster.http.get(f"/v1/jobs/{running}")
        except httpx.TransportError as exc:  # the API itself must stay up
            pytest.fail(f"the API did not answer: {exc!r}\n{cluster.logs_tail()}")
        statuses.append(response.status_code)
        if response.status_code == 503:
            error = response.json()["error"]
            assert error["code"] == "unavailable" and error["message"], response.text
        return response.status_code == 200

    until(answered, timeout_s=60, what="the API answers again", every_s=0.1,
          on_timeout=lambda: f"statuses {statuses}\n{cluster.topology.tail()}\n{cluster.logs_tail()}")
    new = cluster.topology.wait_promoted(old)

    done = cluster.wait_finished(running, timeout_s=120)
    after = cluster.wait_finished(queued, timeout_s=90)
    print(f"\nprimary {old} killed, {new} promoted; the API answered {statuses.count(503)} times 503 meanwhile; "
          f"the running job took {done['attempts']} attempt(s)")
    assert 500 not in statuses, statuses
    assert 503 in statuses, statuses  # the gap was seen, and answered as unavailable
    assert set(statuses) <= {200, 503}, statuses
    assert done["status"] == "succeeded", done
    assert after["status"] == "succeeded", after
    final = cluster.http.get(f"/v1/jobs/{running}")
    assert final.status_code == 200 and final.json()["status"] == "succeeded", final.text
    assert worker.alive()
    log = worker.text()
    assert "Redis unreachable" in log  # the running job did meet the gap...
    assert log.count("Connected to sentinel://") >= 2  # ...and the broker found the new primary by itself
