"""Webhooks through the whole service: a real API, a real worker (whose deliverer sends them) and
a real local HTTP receiver that verifies every signature with the `standardwebhooks` library."""

from __future__ import annotations

import base64
import secrets
from typing import Any

import pytest
from standardwebhooks import Webhook

from core.process import free_port
from tests.faults.conftest import KEYS, cluster, png64, until  # noqa: F401 - `cluster` is a fixture
from tests.webhooks.receiver import Receiver, receiving

pytestmark = pytest.mark.e2e

SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
# Loopback receivers need both allowances; the checks themselves are tested below and in the unit tests.
OPEN = {"DIP_WEBHOOK_SECRET": SECRET, "DIP_WEBHOOK_ALLOW_HTTP": "true", "DIP_WEBHOOK_ALLOW_PRIVATE": "true",
        "DIP_WEBHOOK_PROGRESS_INTERVAL_S": "0.3", "DIP_WEBHOOK_RETRY_BASE_S": "0.5", "DIP_WEBHOOK_TIMEOUT_S": "10"}


def submit(cluster: Any, url: str, events: str = "completed", **params: Any) -> str:  # noqa: F811
    fields = {"task": "denoise", "preset": "fast", "webhook_url": url, "webhook_events": events, **params}
    response = cluster.http.post("/v1/jobs", files={"image": ("image.png", png64(), "image/png")},
                                 data={k: str(v) for k, v in fields.items()})
    assert response.status_code == 202, response.text
    return response.json()["id"]


def verified(receiver: Receiver, job_id: str) -> list[dict[str, Any]]:
    """The job's deliveries so far, each checked against its signature (raises if one does not verify)."""
    hook = Webhook(SECRET)
    return [hook.verify(d.body, d.headers) for d in list(receiver.deliveries)
            if d.payload["data"]["job_id"] == job_id]


def webhook_log(cluster: Any, job_id: str) -> dict[str, Any]:  # noqa: F811
    response = cluster.http.get(f"/v1/jobs/{job_id}/webhooks")
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.timeout(150)
def test_signed_events_arrive_in_order_and_a_500_is_retried_with_the_same_id(cluster: Any) -> None:  # noqa: F811
    cluster.start_api(**OPEN)
    cluster.start_worker("w", **OPEN)
    with receiving() as everything, receiving(codes=[500, 500]) as flaky:
        watched = submit(cluster, everything.url, "started,progress,snapshot,completed", iterations=60,
                         log_every=5, snapshot_every=20)
        retried = submit(cluster, flaky.url, seed=1, iterations=20)
        for job_id in (watched, retried):
            assert cluster.wait_finished(job_id)["status"] == "succeeded"
            until(lambda: webhook_log(cluster, job_id)["state"] == "done", timeout_s=30,  # noqa: B023
                  what=f"job {job_id}'s webhooks delivered", on_timeout=cluster.logs_tail)

        payloads = verified(everything, watched)
        kinds = [p["type"] for p in payloads]
        assert kinds[0] == "job.started" and kinds[-1] == "job.completed", kinds
        assert kinds.count("job.started") == 1 and kinds.count("job.completed") == 1
        assert "job.progress" in kinds and kinds.count("job.snapshot") >= 2, kinds
        progress = [p["data"]["iteration"] for p in payloads if p["type"] == "job.progress"]
        assert progress == sorted(progress) and progress[-1] <= 60
        completed = payloads[-1]["data"]
        assert completed["status"] == "succeeded" and completed["iterations"] == 60
        snapshots = [p["data"]["name"] for p in payloads if p["type"] == "job.snapshot"]
        assert set(snapshots) <= set(completed["files"]), (snapshots, completed["files"])
        log = webhook_log(cluster, watched)
        assert log["delivered"] == log["attempts"] == len(payloads)

        # The receiver failed twice: three tries of one event, one webhook-id, spaced by the backoff.
        tries = [d for d in flaky.deliveries if d.payload["data"]["job_id"] == retried]
        assert [d.type for d in tries] == ["job.completed"] * 3
        assert len({d.headers["webhook-id"] for d in tries}) == 1
        assert all(b.received_at - a.received_at >= 0.4 for a, b in zip(tries, tries[1:]))
        assert all(Webhook(SECRET).verify(d.body, d.headers) for d in tries)
        log = webhook_log(cluster, retried)
        assert [(t["status_code"], t["delivered"]) for t in log["log"]] == [(200, True), (500, False), (500, False)]
        assert (log["attempts"], log["delivered"], log["last_status_code"]) == (3, 1, 200)


@pytest.mark.timeout(150)
def test_a_slow_or_dead_receiver_costs_the_job_nothing(cluster: Any) -> None:  # noqa: F811
    cluster.start_api(**OPEN)
    cluster.start_worker("w", **OPEN)
    dead = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    with receiving(hold=True) as stuck:
        slowed = submit(cluster, stuck.url, "started,snapshot,completed", iterations=60, snapshot_every=20)
        unheard = submit(cluster, dead, seed=1, iterations=20)

        # The receiver holds its first delivery (job.started) unanswered: the job runs to its end
        # all the same, and the events after it wait for the receiver, not the job for them.
        done = cluster.wait_finished(slowed)
        assert done["status"] == "succeeded"
        # (one try of it, or more if the job outlasted DIP_WEBHOOK_TIMEOUT_S and it was tried again)
        assert {d.type for d in stuck.deliveries if d.payload["data"]["job_id"] == slowed} == {"job.started"}
        stuck.release()
        until(lambda: stuck.of_type("job.completed"), timeout_s=60, what="the receiver's last event",
              on_timeout=cluster.logs_tail)
        kinds = [p["type"] for p in verified(stuck, slowed)]
        assert kinds[-1] == "job.completed" and kinds.count("job.snapshot") == 3, kinds
        assert stuck.of_type("job.completed")[0].received_at > float(done["finished_at"])

        assert cluster.wait_finished(unheard)["status"] == "succeeded"
        log = until(lambda: (entry := webhook_log(cluster, unheard))["attempts"] >= 2 and entry, timeout_s=30,
                    what="a retried delivery to the dead receiver", on_timeout=cluster.logs_tail)
        assert log["state"] == "pending" and log["delivered"] == 0
        assert "could not connect" in log["last_error"] and log["next_attempt_at"] is not None


@pytest.mark.timeout(60)
def test_a_refused_target_gets_a_422_at_submission_and_nothing_is_kept(cluster: Any) -> None:  # noqa: F811
    cluster.start_api(DIP_WEBHOOK_SECRET=SECRET)
    for url, words in (("http://hooks.example.com/x", "only https"),
                       ("https://127.0.0.1/x", "loopback"),
                       ("https://10.1.2.3/x", "private"),
                       ("https://[::1]/x", "loopback"),
                       ("ftp://hooks.example.com/x", "https://")):
        response = cluster.http.post("/v1/jobs", files={"image": ("image.png", png64(), "image/png")},
                                     data={"task": "denoise", "webhook_url": url})
        assert response.status_code == 422, (url, response.text)
        assert response.json()["error"]["code"] == "invalid_webhook"
        assert words in response.json()["error"]["message"], (url, response.json())
    response = cluster.http.post("/v1/jobs", files={"image": ("image.png", png64(), "image/png")},
                                 data={"task": "denoise", "webhook_url": "https://127.0.0.1/x",
                                       "webhook_events": "started,finished"})
    assert response.status_code == 422 and "webhook_events" in response.json()["error"]["message"]
    assert cluster.redis.zcard(KEYS.all_jobs) == 0
    assert not cluster.redis.keys("*webhook*")
    assert not [p for p in cluster.results_dir.rglob("*") if p.is_file()]
