"""Leases and the reaper against a real Redis and a real Celery producer (no worker runs).

A record is put in the state a vanished worker leaves (``running``, lease
lapsed) and the reaper is called as a worker's maintenance step calls it; the
message it sends is read back from the broker's queue in Redis.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from core.config import Settings
from core.layout import new_job_id
from core.process import free_port
from core.store import (ClaimOutcome, JobStatus, JobStore, Keys, Renewal, RunState, StoreError, StoreUnavailable,
                        WorkerStore)
from tests.faults.conftest import until
from worker.celery_app import create_celery_app
from worker.lease import LeaseKeeper, LeaseLost
from worker.outage import until_store_answers
from worker.recovery import ReapReport, reap, worker_sender

DB = 7
SHORT_LEASE_S = 0.2  # for leases that must lapse: the tests wait it out
LIVE_S = 30  # for leases and graces that must still hold when a test looks, however slow the machine


@pytest.fixture
def env(redis_server: Any) -> Iterator[dict[str, Any]]:
    url = redis_server.url.rsplit("/", 1)[0] + f"/{DB}"
    keys = Keys(prefix=f"l{uuid.uuid4().hex[:8]}")
    queue = f"q{uuid.uuid4().hex[:8]}"
    store = WorkerStore.from_url(url, retention_s=3600, keys=keys)
    settings = Settings(redis_url=url, queue=queue, soft_time_limit_s=3600, hard_time_limit_s=3900)
    app = create_celery_app(settings)
    send = worker_sender(app, settings)

    def create(time_limit_s: int | None = None) -> str:
        async def main() -> str:
            api_store = JobStore.from_url(url, retention_s=3600, keys=keys)
            try:
                return await api_store.create(new_job_id(), task="denoise", params={}, files={},
                                              time_limit_s=time_limit_s)
            finally:
                await api_store.aclose()
        return asyncio.run(main())

    def messages() -> list[tuple[list[Any], list[Any]]]:
        """(args, [hard, soft] time limits) of the task messages waiting in the queue, oldest first."""
        raw = [json.loads(m) for m in reversed(store.client.lrange(queue, 0, -1))]
        return [(json.loads(base64.b64decode(m["body"]))[0], m["headers"]["timelimit"]) for m in raw]

    def statuses(job_id: str) -> list[tuple[str, Any]]:
        return [(json.loads(f["data"])["status"], json.loads(f["data"]).get("reason"))
                for _, f in store.client.xrange(keys.events(job_id)) if f["type"] == "status"]

    yield {"store": store, "send": send, "create": create, "messages": messages, "statuses": statuses, "keys": keys}
    client = redis.Redis.from_url(url)
    for key in [*client.scan_iter(f"{keys.prefix}:*"), queue]:
        client.delete(key)
    client.close()
    app.close()
    store.close()


# A grace long enough that the reaper's first look always falls inside it, short enough to wait out.
HAND_BACK_GRACE_S = 2.0


def _lapse() -> None:
    time.sleep(SHORT_LEASE_S + 0.1)


def test_a_running_job_whose_worker_vanished_is_requeued_by_the_reaper(env: dict[str, Any]) -> None:
    store: WorkerStore = env["store"]
    job_id = env["create"](time_limit_s=600)
    gone = store.claim(job_id, worker="w1@host:11", max_attempts=3, lease_s=LIVE_S)
    assert gone.outcome is ClaimOutcome.claimed
    assert reap(store, env["send"], max_attempts=3, dispatch_grace_s=30) == ReapReport([], [], [])  # lease live
    assert store.get(job_id).status is JobStatus.running and env["messages"]() == []
    # Its last renewal was a short one; then the worker vanished without a trace.
    assert store.renew(job_id, token=gone.token, lease_s=SHORT_LEASE_S) is Renewal.renewed
    _lapse()

    report = reap(store, env["send"], max_attempts=3, dispatch_grace_s=30)
    assert report.requeued == [job_id] and report.resent == report.failed == []
    record = store.get(job_id)
    assert record.status is JobStatus.queued and record.attempts == 1 and record.queue_position == 1
    assert env["messages"]() == [([job_id], [900, 600])]  # a new message, with the job's own time limit
    assert store.client.zscore(env["keys"].leases, job_id) is None  # its dispatch was confirmed
    assert reap(store, env["send"], max_attempts=3, dispatch_grace_s=30).requeued == []  # nothing more
    assert env["statuses"](job_id)[-1] == ("queued", "lease_expired")

    resumed = store.claim(job_id, worker="w2@host:22", max_attempts=3, lease_s=30)
    assert resumed.outcome is ClaimOutcome.claimed and resumed.attempt == 2
    # The vanished holder, were it to come back, can change nothing any more.
    assert store.renew(job_id, token=gone.token, lease_s=30) is Renewal.lost
    assert store.report(job_id, {"iteration": 1}, token=gone.token) is RunState.gone
    assert not store.append_history(job_id, {"iteration": 1}, token=gone.token)
    assert not store.finish(job_id, JobStatus.succeeded, token=gone.token)
    assert store.finish(job_id, JobStatus.succeeded, token=resumed.token)
    assert store.client.zscore(env["keys"].leases, job_id) is None


def test_the_reaper_fails_a_job_whose_worker_died_on_its_last_attempt(env: dict[str, Any]) -> None:
    store: WorkerStore = env["store"]
    job_id = env["create"]()
    store.claim(job_id, worker="w@host:1", max_attempts=1, lease_s=SHORT_LEASE_S)
    _lapse()
    report = reap(store, env["send"], max_attempts=1, dispatch_grace_s=30)
    assert report.failed == [job_id] and report.requeued == []
    record = store.get(job_id)
    assert record.status is JobStatus.failed and record.error_code == "worker_lost"
    assert "started 1 times" in record.error_message
    assert env["messages"]() == []
    assert store.client.zscore(env["keys"].leases, job_id) is None


def test_a_delivery_for_a_job_with_a_live_lease_is_dropped(env: dict[str, Any]) -> None:
    store: WorkerStore = env["store"]
    job_id = env["create"]()
    holder = store.claim(job_id, worker="w1@host:11", max_attempts=3, lease_s=30)
    duplicate = store.claim(job_id, worker="w2@host:22", max_attempts=3, lease_s=30)
    assert duplicate.outcome is ClaimOutcome.busy and duplicate.record is None
    assert duplicate.holder == "w1@host:11" and duplicate.holder_token == holder.token
    assert store.get(job_id).attempts == 1  # a dropped delivery is not an attempt
    wrong = store.claim(job_id, worker="w2@host:22", max_attempts=3, lease_s=30, take_over="not-the-token")
    assert wrong.outcome is ClaimOutcome.busy
    # Taking over by the holder's token is for a worker that saw the holder's process die.
    taken = store.claim(job_id, worker="w1@host:12", max_attempts=3, lease_s=30, take_over=holder.token)
    assert taken.outcome is ClaimOutcome.claimed and taken.attempt == 2
    assert store.renew(job_id, token=holder.token, lease_s=30) is Renewal.lost
    assert store.renew(job_id, token=taken.token, lease_s=30) is Renewal.renewed


def test_a_holder_cut_off_past_its_lease_takes_the_job_back_unless_claimed(env: dict[str, Any]) -> None:
    store: WorkerStore = env["store"]
    first, second = env["create"](), env["create"]()
    for job_id in (first, second):
        store.claim(job_id, worker="w@host:1", max_attempts=3, lease_s=SHORT_LEASE_S)
    tokens = {job_id: store.client.hget(env["keys"].job(job_id), "lease_token") for job_id in (first, second)}
    _lapse()
    assert sorted(reap(store, env["send"], max_attempts=3, dispatch_grace_s=30).requeued) == sorted(tokens)

    # Nobody claimed the first yet: its holder, back in touch, takes it back and goes on.
    assert store.renew(first, token=tokens[first], lease_s=30) is Renewal.taken_back
    assert store.get(first).status is JobStatus.running
    assert store.claim(first, worker="w2@host:2", max_attempts=3, lease_s=30).outcome is ClaimOutcome.busy
    # The second ended while Redis was out of reach: its end still counts once written.
    assert store.finish(second, JobStatus.succeeded, token=tokens[second])
    assert store.get(second).status is JobStatus.succeeded
    assert store.claim(second, worker="w2@host:2", max_attempts=3, lease_s=30).outcome is ClaimOutcome.finished


def test_a_handed_back_job_is_not_an_attempt_and_a_lost_message_is_resent(env: dict[str, Any]) -> None:
    store: WorkerStore = env["store"]
    job_id = env["create"]()
    claim = store.claim(job_id, worker="w@host:1", max_attempts=3, lease_s=30)
    assert store.hand_back(job_id, token=claim.token, dispatch_id="d1", dispatch_grace_s=HAND_BACK_GRACE_S)
    handed_back = time.monotonic()
    assert not store.hand_back(job_id, token=claim.token, dispatch_id="d2", dispatch_grace_s=HAND_BACK_GRACE_S)
    record = store.get(job_id)
    assert record.status is JobStatus.queued and record.attempts == 0
    assert env["statuses"](job_id)[-1] == ("queued", "worker_shutdown")
    # The worker died before sending the message: within the grace a reaper leaves it be...
    assert reap(store, env["send"], max_attempts=3, dispatch_grace_s=30) == ReapReport([], [], [])
    assert env["messages"]() == []
    time.sleep(max(0.0, HAND_BACK_GRACE_S + 0.1 - (time.monotonic() - handed_back)))  # the grace lapses
    # ...after it, sends it (a queued job is never left without a message).
    assert reap(store, env["send"], max_attempts=3, dispatch_grace_s=30).resent == [job_id]
    assert env["messages"]() == [([job_id], [None, None])]
    assert store.client.zscore(env["keys"].leases, job_id) is None
    assert store.claim(job_id, worker="w2@host:2", max_attempts=3, lease_s=30).attempt == 1


def test_the_reaper_waits_a_margin_past_the_lease_before_it_requeues(env: dict[str, Any]) -> None:
    store: WorkerStore = env["store"]
    job_id = env["create"]()
    store.claim(job_id, worker="w@host:1", max_attempts=3, lease_s=SHORT_LEASE_S)
    _lapse()
    # Lapsed, but not by the margin: its holder may still be inside its last iteration.
    assert reap(store, env["send"], max_attempts=3, dispatch_grace_s=30, margin_s=LIVE_S) == ReapReport([], [], [])
    assert store.reap(job_id, max_attempts=3, dispatch_id="d", dispatch_grace_s=30, margin_s=LIVE_S).value == "live"
    assert store.get(job_id).status is JobStatus.running
    assert reap(store, env["send"], max_attempts=3, dispatch_grace_s=30, margin_s=0).requeued == [job_id]


def test_a_holder_that_could_not_renew_for_a_whole_lease_is_fenced_for_good(env: dict[str, Any],
                                                                             caplog: pytest.LogCaptureFixture) -> None:
    store: WorkerStore = env["store"]
    job_id = env["create"]()
    claim = store.claim(job_id, worker="w@host:1", max_attempts=3, lease_s=LIVE_S)
    now = [100.0]
    keeper = LeaseKeeper(store, job_id, claim.token, lease_s=10, held_since=now[0], clock=lambda: now[0])
    now[0] = 108.0
    assert keeper.confirm()  # renewed at 108: the fence now falls at 118
    now[0] = 117.5
    keeper.check()
    assert not keeper.stale
    # Redis silent from here on (the renewals fail): a whole lease after the last renewal was sent...
    keeper._store = WorkerStore.from_url(f"redis://127.0.0.1:{free_port()}/0", retention_s=3600)
    assert keeper.confirm()  # a failed renewal alone is not a loss: the lease may still hold
    now[0] = 118.5
    assert keeper.stale and keeper.lost
    with pytest.raises(LeaseLost, match="not renewed for 10.5 s"):
        keeper.check()
    assert "writing nothing more" in caplog.text
    # ...and Redis answering again does not reopen the fence: another worker may hold the job by now.
    keeper._store = store
    assert not keeper.confirm()
    with pytest.raises(LeaseLost):
        keeper.check()


def test_a_queued_job_is_sent_again_while_it_waits_at_doubling_delays(env: dict[str, Any]) -> None:
    """A broker can lose a message it delivers (a Redis full at that moment): a queued job is
    sent again after the redispatch delay, then after twice as long, until a worker claims it."""
    keys = env["keys"]
    store = WorkerStore.from_url(_url(env["store"]), retention_s=3600, keys=keys, redispatch_s=SHORT_LEASE_S)
    job_id = env["create"]()
    store.confirm_dispatch(job_id, dispatch_id=job_id)  # the API's first message went out
    assert reap(store, env["send"], max_attempts=3, dispatch_grace_s=30) == ReapReport([], [], [])
    _lapse()
    assert reap(store, env["send"], max_attempts=3, dispatch_grace_s=30).resent == [job_id]
    assert len(env["messages"]()) == 1
    # Next time after twice the delay: not yet at one delay...
    _lapse()
    assert reap(store, env["send"], max_attempts=3, dispatch_grace_s=30).resent == []
    until(lambda: reap(store, env["send"], max_attempts=3, dispatch_grace_s=30).resent == [job_id],
          timeout_s=LIVE_S, what="second resend")
    assert len(env["messages"]()) == 2
    # Claimed: the lease replaces the entry, and no more messages go out.
    claim = store.claim(job_id, worker="w@host:1", max_attempts=3, lease_s=LIVE_S)
    assert claim.outcome is ClaimOutcome.claimed and claim.attempt == 1
    assert store.finish(job_id, JobStatus.succeeded, token=claim.token)
    assert store.client.zscore(keys.leases, job_id) is None


def test_a_claim_waits_out_a_full_redis_and_other_errors_are_not_retried(env: dict[str, Any],
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    store: WorkerStore = env["store"]
    job_id = env["create"]()
    admin = redis.Redis.from_url(_url(store), decode_responses=True)
    outcome: list[Any] = []
    admin.config_set("maxmemory", "1")  # noeviction: every write is refused with OOM
    try:
        claiming = threading.Thread(target=lambda: outcome.append(until_store_answers(
            lambda: store.claim(job_id, worker="w@host:1", max_attempts=3, lease_s=LIVE_S),
            within_s=LIVE_S, what="a claim", first_wait_s=0.05)))
        claiming.start()
        until(lambda: "refusing writes while writing a claim" in caplog.text, timeout_s=LIVE_S,
              what="the claim refused with OOM and retried")
        assert store.get(job_id).status is JobStatus.queued
    finally:
        admin.config_set("maxmemory", "0")
    claiming.join(LIVE_S)
    assert outcome and outcome[0].outcome is ClaimOutcome.claimed
    assert "OOM" in caplog.text
    # A refusal that waiting cannot fix is raised at once, as the store's own error (not Redis').
    admin.set(env["keys"].workers, "not a sorted set")
    caplog.clear()
    try:
        with pytest.raises(StoreError, match="WRONGTYPE") as raised:
            until_store_answers(lambda: store.heartbeat("w@host"), within_s=LIVE_S, what="a heartbeat")
    finally:
        admin.delete(env["keys"].workers)
    assert not isinstance(raised.value, StoreUnavailable)
    assert "retrying" not in caplog.text
    admin.close()


def _url(store: WorkerStore) -> str:
    kwargs = store.client.connection_pool.connection_kwargs
    return f"redis://{kwargs['host']}:{kwargs['port']}/{kwargs['db']}"
