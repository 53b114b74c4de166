"""Webhooks: what a job's subscriber gets, how it is signed, and which targets may be called.

Shared by the API (checks a target at submission, documents the payloads) and the
workers' deliverer (``worker.webhooks``, which checks the target again before every
delivery: DNS can change between the two).

Signing follows Standard Webhooks (https://www.standardwebhooks.com/): the body is
signed with HMAC-SHA256 over ``<webhook-id>.<webhook-timestamp>.<body>`` with the
secret ``DIP_WEBHOOK_SECRET`` (``whsec_`` + base64, as the Standard Webhooks
libraries expect), and sent in the ``webhook-id``, ``webhook-timestamp`` and
``webhook-signature`` (``v1,<base64>``) headers.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from datetime import datetime
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, ValidationError, field_validator

from core.addresses import AddressRefused, HostUnresolved, Resolver, allowed_addresses
from core.quality import Metrics

WebhookEvent = Literal["started", "progress", "snapshot", "completed"]
WEBHOOK_EVENTS: tuple[WebhookEvent, ...] = ("started", "progress", "snapshot", "completed")
MAX_URL_LENGTH = 2048


class InvalidWebhook(ValueError):
    """A webhook that may not be called, or malformed webhook fields; the message says why."""


class WebhookSubscription(BaseModel):
    """The webhook fields of ``POST /v1/jobs``. Kept on the job record beside, not in, its
    parameters: the engine never sees them, and they do not keep jobs out of a batch."""

    webhook_url: str = Field(max_length=MAX_URL_LENGTH, description=(
        "Called (POST, JSON, signed as Standard Webhooks) on the job's events; https only, and not a "
        "private, loopback or link-local address, unless the server allows them."))
    webhook_events: list[WebhookEvent] = Field(["completed"], min_length=1, description=(
        "Events to send, comma-separated or a JSON list: started, progress (at most one every "
        "DIP_WEBHOOK_PROGRESS_INTERVAL_S, the latest), snapshot, completed (the job ended, however)."))

    @field_validator("webhook_events", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("webhook_events")
    @classmethod
    def _dedupe(cls, value: list[WebhookEvent]) -> list[WebhookEvent]:
        return [event for event in WEBHOOK_EVENTS if event in value]


def subscription_from_form(fields: dict[str, str], *, enabled: bool, allow_http: bool, allow_private: bool,
                           resolve: Resolver | None = None) -> WebhookSubscription | None:
    """Take the webhook fields out of a submitted form and check them (``None``: no webhook asked).

    Raises:
        InvalidWebhook: Malformed fields, a refused target, or webhooks not enabled here.
    """
    names = [name for name in WebhookSubscription.model_fields if name in fields]
    if not names:
        return None
    raw = {name: fields.pop(name) for name in names}
    if "webhook_url" not in raw:
        raise InvalidWebhook("webhook_events needs a webhook_url")
    try:
        subscription = WebhookSubscription.model_validate(raw)
    except (ValidationError, ValueError) as exc:
        problems = exc.errors(include_url=False) if isinstance(exc, ValidationError) else [{"msg": str(exc)}]
        raise InvalidWebhook("; ".join(f"{'.'.join(map(str, p.get('loc', ()))) or 'webhook_events'}: {p['msg']}"
                                       for p in problems)) from None
    if not enabled:
        raise InvalidWebhook("webhooks are not enabled on this server (DIP_WEBHOOK_SECRET is not set)")
    check_target(subscription.webhook_url, allow_http=allow_http, allow_private=allow_private, resolve=resolve)
    return subscription


def webhook_form_fields() -> dict[str, Any]:
    """OpenAPI of the webhook form fields (``webhook_events`` travels as one text field)."""
    fields = WebhookSubscription.model_fields
    return {
        "webhook_url": {"type": "string", "format": "uri", "maxLength": MAX_URL_LENGTH,
                        "description": fields["webhook_url"].description},
        "webhook_events": {"type": "string", "default": "completed", "example": "started,progress,completed",
                           "description": fields["webhook_events"].description},
    }


def check_target(url: str, *, allow_http: bool, allow_private: bool,
                 resolve: Resolver | None = None) -> list[str]:
    """Refuse (``InvalidWebhook``) a URL the service may not call; else its host's addresses.

    Every address the name resolves to must be allowed, so that a name cannot pass
    with one public address and be reached through a private one. Deliveries
    connect to these very addresses (no second lookup to rebind).
    """
    if len(url) > MAX_URL_LENGTH:
        raise InvalidWebhook(f"webhook_url is longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise InvalidWebhook(f"webhook_url {url!r} is not a valid URL: {exc}") from None
    if parts.scheme not in ("https", "http"):
        raise InvalidWebhook(f"webhook_url {url!r} must be an https:// URL")
    if parts.scheme == "http" and not allow_http:
        raise InvalidWebhook(f"webhook_url {url!r}: only https targets are allowed on this server")
    host = parts.hostname
    if not host:
        raise InvalidWebhook(f"webhook_url {url!r} has no host")
    try:
        return allowed_addresses(host, port, allow_private=allow_private, what="webhook_url host", resolver=resolve)
    except (HostUnresolved, AddressRefused) as exc:
        raise InvalidWebhook(str(exc)) from None


# -- signing ----------------------------------------------------------------------------------------


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` (or bare base64) secret, as Standard Webhooks decodes it."""
    try:
        key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("DIP_WEBHOOK_SECRET must be `whsec_` followed by base64 (e.g. "
                         "`whsec_$(openssl rand -base64 32)`)") from None
    if len(key) < 16:
        raise ValueError(f"DIP_WEBHOOK_SECRET is too short: {len(key)} bytes, at least 16 (24+ is best)")
    return key


def sign(key: bytes, *, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value: ``v1,<base64 HMAC-SHA256 of id.timestamp.body>``."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def signed_headers(key: bytes, *, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {"webhook-id": message_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(key, message_id=message_id, timestamp=timestamp, body=body),
            "content-type": "application/json"}


# -- payloads (also documented as the OpenAPI `webhooks`) -------------------------------------------


class StartedData(BaseModel):
    job_id: str
    attempt: int | None = Field(None, description="Which run of the job this is (1: the first).")


class ProgressData(BaseModel):
    job_id: str
    iteration: int
    total: int
    fraction: float
    eta_seconds: float | None = None
    loss: float | None = None
    psnr: float | None = None


class SnapshotData(BaseModel):
    job_id: str
    iteration: int
    name: str = Field(description="The PNG's name: GET /v1/jobs/{job_id}/files/{name}.")


class CompletedData(BaseModel):
    """The job's summary once it ended."""

    job_id: str
    status: Literal["succeeded", "failed", "canceled"]
    task: str
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: int = 0
    stop_reason: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    iterations: int | None = None
    metrics: Metrics | None = Field(None, description="As in the job object's `metrics`.")
    files: list[str] = Field([], description="Its files: GET /v1/jobs/{job_id}/files/{name}.")


class _Payload(BaseModel):
    type: str
    timestamp: datetime = Field(description="When the event happened (the job's clock).")


class StartedPayload(_Payload):
    type: Literal["job.started"] = "job.started"
    data: StartedData


class ProgressPayload(_Payload):
    type: Literal["job.progress"] = "job.progress"
    data: ProgressData


class SnapshotPayload(_Payload):
    type: Literal["job.snapshot"] = "job.snapshot"
    data: SnapshotData


class CompletedPayload(_Payload):
    type: Literal["job.completed"] = "job.completed"
    data: CompletedData


PAYLOADS: dict[WebhookEvent, type[_Payload]] = {
    "started": StartedPayload, "progress": ProgressPayload, "snapshot": SnapshotPayload,
    "completed": CompletedPayload,
}


# -- the delivery log ------------------------------------------------------------------------------


class DeliveryAttempt(BaseModel):
    """One try at sending one event."""

    message_id: str = Field(description="The `webhook-id` header: the same on every retry of one event.")
    event: WebhookEvent
    attempt: int = Field(description="1 for the first try of this event.")
    at: datetime
    status_code: int | None = Field(None, description="The receiver's answer; none if it was not reached.")
    error: str | None = Field(None, description="Why this try failed, if it did.")
    delivered: bool


class WebhookLog(BaseModel):
    """A job's webhook and its deliveries (``GET /v1/jobs/{id}/webhooks``)."""

    url: str
    events: list[WebhookEvent]
    state: Literal["pending", "done", "gave_up"] = Field(description=(
        "pending: events may still come or be retried; done: `completed` was delivered, or the job "
        "ended with nothing more to send; gave_up: an event failed for DIP_WEBHOOK_GIVE_UP_S, and "
        "nothing more is sent."))
    attempts: int = Field(0, description="Tries, all events together.")
    delivered: int = Field(0, description="Events delivered.")
    last_status_code: int | None = None
    last_error: str | None = None
    delivered_at: datetime | None = Field(None, description="When the latest delivery succeeded.")
    next_attempt_at: datetime | None = Field(None, description="When a failed event is tried again.")
    log: list[DeliveryAttempt] = Field([], description="The latest tries, newest first.")


def document_webhooks(app: Any) -> None:
    """Declare the payloads on ``app``'s OpenAPI ``webhooks`` (one per event type)."""
    for event, payload in PAYLOADS.items():
        def receiver(body: Any) -> None:  # pragma: no cover - documentation only
            """Sent once."""
        receiver.__annotations__ = {"body": payload, "return": None}
        app.webhooks.post(f"job.{event}", summary=f"job.{event}", description=_DESCRIPTIONS[event]
                          + _SIGNING, response_description="Any 2xx: delivered. Anything else: retried.",
                          status_code=200, operation_id=f"webhook_job_{event}")(receiver)


_SIGNING = (" Signed as Standard Webhooks: headers `webhook-id` (the same on every retry), `webhook-timestamp` "
            "and `webhook-signature` (`v1,` + base64 HMAC-SHA256 of `id.timestamp.body` with DIP_WEBHOOK_SECRET). "
            "Failures (no 2xx in DIP_WEBHOOK_TIMEOUT_S) are retried with exponential backoff for up to a day; "
            "events of one job arrive in order.")
_DESCRIPTIONS: dict[WebhookEvent, str] = {
    "started": "A worker started the job (sent once).",
    "progress": "Progress of the optimisation, at most one every DIP_WEBHOOK_PROGRESS_INTERVAL_S (the latest).",
    "snapshot": "A new snapshot PNG of the output.",
    "completed": "The job ended: succeeded, failed or canceled, with its summary.",
}
