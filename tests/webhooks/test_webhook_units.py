"""The webhook module on its own: target checks, signatures (checked by the `standardwebhooks` library),
the form fields, the delivery plan, and one delivery to a real local receiver."""

from __future__ import annotations

import base64
import json
import secrets
import time

import pytest
from standardwebhooks import Webhook

from core.store import EventType, JobEvent, JobRecord, JobStatus
from core.store.webhooks import DeliveryState, Pending
from core.webhooks import InvalidWebhook, check_target, secret_key, signed_headers, subscription_from_form
from tests.webhooks.receiver import receiving
from worker.webhooks import plan, send

PUBLIC = "93.184.216.34"
SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def resolver(table: dict[str, list[str]]):
    def resolve(host: str, port: int) -> list[str]:
        if host in table:
            return table[host]
        if host.replace(".", "").isdigit() or ":" in host:
            return [host]
        raise OSError("Name or service not known")
    return resolve


RESOLVE = resolver({"hooks.example.com": [PUBLIC], "sneaky.example.com": [PUBLIC, "127.0.0.1"],
                    "loop.example.com": ["127.0.0.1"]})


def test_https_public_target_passes() -> None:
    assert check_target("https://hooks.example.com/x", allow_http=False, allow_private=False,
                        resolve=RESOLVE) == [PUBLIC]


@pytest.mark.parametrize("url, reason", [
    ("http://hooks.example.com/x", "only https"),
    ("ftp://hooks.example.com/x", "must be an https"),
    ("https://127.0.0.1/x", "loopback"),
    ("https://10.1.2.3/x", "private"),
    ("https://192.168.0.9/x", "private"),
    ("https://169.254.169.254/latest", "link-local"),
    ("https://[::1]/x", "loopback"),
    ("https://[::ffff:10.0.0.1]/x", "private"),
    ("https://100.64.0.1/x", "non-global"),
    ("https://loop.example.com/x", "resolves to 127.0.0.1"),
    ("https://sneaky.example.com/x", "resolves to 127.0.0.1"),
    ("https://nowhere.example.com/x", "does not resolve"),
    ("https:///x", "no host"),
])
def test_refused_targets(url: str, reason: str) -> None:
    with pytest.raises(InvalidWebhook, match=reason):
        check_target(url, allow_http=False, allow_private=False, resolve=RESOLVE)


def test_allow_flags() -> None:
    assert check_target("http://10.1.2.3:8080/x", allow_http=True, allow_private=True, resolve=RESOLVE)
    with pytest.raises(InvalidWebhook, match="only https"):
        check_target("http://10.1.2.3/x", allow_http=False, allow_private=True, resolve=RESOLVE)


def test_form_fields() -> None:
    fields = {"task": "denoise", "webhook_url": "https://hooks.example.com/x",
              "webhook_events": "completed, started,progress"}
    got = subscription_from_form(fields, enabled=True, allow_http=False, allow_private=False, resolve=RESOLVE)
    assert got is not None and got.webhook_events == ["started", "progress", "completed"]
    assert fields == {"task": "denoise"}  # taken out: never engine parameters
    assert subscription_from_form({"task": "denoise"}, enabled=True, allow_http=False,
                                  allow_private=False) is None
    got = subscription_from_form({"webhook_url": "https://hooks.example.com/x"}, enabled=True, allow_http=False,
                                 allow_private=False, resolve=RESOLVE)
    assert got is not None and got.webhook_events == ["completed"]
    for bad, message in (({"webhook_url": "https://hooks.example.com/", "webhook_events": "finished"}, "webhook_events"),
                         ({"webhook_events": "started"}, "needs a webhook_url"),
                         ({"webhook_url": "https://hooks.example.com/"}, "not enabled")):
        with pytest.raises(InvalidWebhook, match=message):
            subscription_from_form(dict(bad), enabled=message != "not enabled", allow_http=False,
                                   allow_private=False, resolve=RESOLVE)


def test_signature_verifies_with_standardwebhooks() -> None:
    body = json.dumps({"type": "job.completed", "data": {"job_id": "x"}}).encode()
    headers = signed_headers(secret_key(SECRET), message_id="msg_1", timestamp=int(time.time()), body=body)
    assert Webhook(SECRET).verify(body, headers)["type"] == "job.completed"
    with pytest.raises(Exception):
        Webhook(SECRET).verify(body + b" ", headers)


@pytest.mark.parametrize("secret", ["whsec_short", "not base64 !", "whsec_" + base64.b64encode(b"x" * 8).decode()])
def test_bad_secrets_are_refused(secret: str) -> None:
    with pytest.raises(ValueError, match="DIP_WEBHOOK_SECRET"):
        secret_key(secret)


# -- the plan: which event goes next ------------------------------------------------------------------

def _record(status: JobStatus = JobStatus.running) -> JobRecord:
    return JobRecord(id="j", status=status, task="denoise", params={}, created_at=1.0, finished_at=2.0)


def _events(*kinds: str) -> list[JobEvent]:
    out = []
    for i, kind in enumerate(kinds, start=1):
        if kind in ("running", "queued", "succeeded"):
            out.append(JobEvent(f"{1000 + i}-0", EventType.status, {"status": kind, "attempt": 1}))
        elif kind == "progress":
            out.append(JobEvent(f"{1000 + i}-0", EventType.progress,
                                {"progress": {"iteration": i, "total": 10, "fraction": i / 10}, "metrics": {}}))
        else:
            out.append(JobEvent(f"{1000 + i}-0", EventType.snapshot, {"iteration": i, "name": f"snapshot_{i:05d}.png"}))
    return out


def _state(*events: str, **extra) -> DeliveryState:
    return DeliveryState(url="https://x/", events=tuple(events), **extra)  # type: ignore[arg-type]


def test_plan_skips_unsubscribed_and_sends_completed() -> None:
    events = _events("queued", "running", "progress", "snapshot", "succeeded")
    step = plan(_state("completed"), events, _record(JobStatus.succeeded), now=5000, progress_interval_s=1)
    assert step.message is not None and step.message.event == "completed" and step.cursor == "1004-0"
    assert json.loads(step.message.body)["data"]["status"] == "succeeded"
    step = plan(_state("snapshot"), events, _record(JobStatus.succeeded), now=5000, progress_interval_s=1)
    assert step.message is not None and step.message.event == "snapshot" and step.message.next_cursor == "1004-0"
    step = plan(_state("started"), events[2:], _record(JobStatus.succeeded), now=5000, progress_interval_s=1)
    assert step.message is None and step.done and step.cursor == "1005-0"


def test_plan_started_once_and_latest_progress_wins() -> None:
    events = _events("running", "progress", "progress", "progress")
    step = plan(_state("started", "progress"), events, _record(), now=5000, progress_interval_s=10)
    assert step.message is not None and step.message.event == "started"
    step = plan(_state("started", "progress", started_sent=True), events, _record(), now=5000, progress_interval_s=10)
    assert step.message is not None and json.loads(step.message.body)["data"]["iteration"] == 4
    # Within the interval of the last one: wait for it (keeping the cursor), then send the latest.
    step = plan(_state("progress", progress_sent_at=4995.0), events, _record(), now=5000, progress_interval_s=10)
    assert step.message is None and step.look_at == 5005.0 and step.cursor == "1003-0"
    # A progress made moot by the end is not sent.
    step = plan(_state("progress"), _events("progress", "succeeded"), _record(JobStatus.succeeded), now=5000,
                progress_interval_s=10)
    assert step.message is None and step.done


# -- one delivery, to a real receiver ----------------------------------------------------------------

def _pending() -> Pending:
    return Pending(message_id="msg_j_1-0", event="completed", body='{"type":"job.completed"}', first_try_at=0.0)


def test_send_signs_and_pins_the_checked_address() -> None:
    with receiving() as receiver:
        url = f"http://hook.test:{receiver.port}/in"
        outcome = send(url, _pending(), secret=SECRET, timeout_s=5, allow_http=True, allow_private=True,
                       resolve=resolver({"hook.test": ["127.0.0.1"]}))
        assert outcome.delivered and outcome.status_code == 200
        (got,) = receiver.deliveries
        assert got.headers["host"] == f"hook.test:{receiver.port}"
        Webhook(SECRET).verify(got.body, got.headers)


def test_send_does_not_call_a_target_refused_at_delivery() -> None:
    with receiving() as receiver:
        # At submission the name was public; now it resolves to loopback.
        url = f"http://hook.test:{receiver.port}/in"
        outcome = send(url, _pending(), secret=SECRET, timeout_s=5, allow_http=True, allow_private=False,
                       resolve=resolver({"hook.test": ["127.0.0.1"]}))
        assert not outcome.delivered and "target refused" in (outcome.error or "")
        assert receiver.deliveries == []


def test_send_reports_a_failing_receiver() -> None:
    with receiving(codes=[500]) as receiver:
        outcome = send(receiver.url, _pending(), secret=SECRET, timeout_s=5, allow_http=True, allow_private=True)
        assert outcome.status_code == 500 and outcome.error == "answered 500"


def test_openapi_documents_the_payloads_and_the_form_fields() -> None:
    from core.config import Settings
    from api.main import create_app

    schema = create_app(Settings()).openapi()
    assert sorted(schema["webhooks"]) == ["job.completed", "job.progress", "job.snapshot", "job.started"]
    body = schema["webhooks"]["job.completed"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    completed = schema["components"]["schemas"][body["$ref"].rsplit("/", 1)[1]]
    assert completed["properties"]["type"]["const"] == "job.completed"
    assert "webhook-signature" in schema["webhooks"]["job.completed"]["post"]["description"]
    form = schema["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert {"webhook_url", "webhook_events"} <= set(form["properties"])


def test_the_readme_receiver_snippet_verifies_a_delivery() -> None:
    """The few lines the README gives receivers accept our signature and refuse a changed body."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    blocks = [b.split("```", 1)[0] for b in readme.split("```python\n")[1:]]
    snippet = next(b for b in blocks if "def verify(" in b)
    namespace: dict = {}
    exec(snippet, namespace)  # noqa: S102 - our own README
    body = b'{"type": "job.completed", "data": {"job_id": "x"}}'
    headers = signed_headers(secret_key(SECRET), message_id="msg_1", timestamp=int(time.time()), body=body)
    assert namespace["verify"](SECRET, headers, body)
    assert not namespace["verify"](SECRET, headers, body + b" ")
    stale = signed_headers(secret_key(SECRET), message_id="msg_1", timestamp=int(time.time()) - 3600, body=body)
    assert not namespace["verify"](SECRET, stale, body)
