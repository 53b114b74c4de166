"""A job's webhook in Redis: its subscription, its delivery cursor and log, and the due set.

The subscription is written at submission into the job's webhook hash
(``Keys.webhook``), and the job enters ``Keys.webhooks_due``, scored by when a
deliverer should look at it next (Redis clock). Any worker's deliverer
(``worker.webhooks``) takes a due job under an expiring lock, sends what the
job's event stream has past the hash's ``cursor``, and writes back the cursor,
the counters, a log entry and the next time to look, in one script: a
deliverer that dies mid-way leaves the job to the next one, which at worst
sends the last event again (same ``webhook-id``: receivers can drop it).

The hash and its log live as long as the job is live, and a retention
period after its deliveries are over.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from core.webhooks import DeliveryAttempt, WebhookEvent, WebhookLog, WebhookSubscription

from .base import to_json
from .errors import neutral_methods
from .keys import Keys
from .records import EventType, JobEvent

LOG_LENGTH = 50
"""Delivery attempts kept per job (the newest)."""

# KEYS: webhook hash, its log, the due set. ARGV: job id, hash fields (JSON), a log entry
# (JSON or ''), log length, next look (Redis seconds, or '' to leave the due set), TTL in
# ms ('' none). A job deleted meanwhile (hash gone) is only dropped from the due set.
_SAVE = """
local HASH, LOG, DUE = KEYS[1], KEYS[2], KEYS[3]
if redis.call('EXISTS', HASH) == 0 then
  redis.call('ZREM', DUE, ARGV[1])
  return 0
end
for field, value in pairs(cjson.decode(ARGV[2])) do redis.call('HSET', HASH, field, value) end
if ARGV[3] ~= '' then
  redis.call('LPUSH', LOG, ARGV[3])
  redis.call('LTRIM', LOG, 0, tonumber(ARGV[4]) - 1)
end
if ARGV[5] == '' then redis.call('ZREM', DUE, ARGV[1]) else redis.call('ZADD', DUE, ARGV[5], ARGV[1]) end
if ARGV[6] ~= '' then
  redis.call('PEXPIRE', HASH, ARGV[6])
  if redis.call('EXISTS', LOG) == 1 then redis.call('PEXPIRE', LOG, ARGV[6]) end
end
return 1
"""

_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True)
class Pending:
    """The event being delivered: its exact body is sent again on each retry."""

    message_id: str
    event: WebhookEvent
    body: str
    first_try_at: float
    tries: int = 0
    next_cursor: str = ""  # where the cursor moves once this one is done with


@dataclass(frozen=True)
class DeliveryState:
    """A job's webhook hash, parsed."""

    url: str
    events: tuple[WebhookEvent, ...]
    state: str = "pending"
    cursor: str = "0"
    started_sent: bool = False
    progress_sent_at: float | None = None
    pending: Pending | None = None
    attempts: int = 0
    delivered: int = 0

    @classmethod
    def from_redis(cls, fields: dict[str, str]) -> DeliveryState:
        pending = json.loads(fields["pending"]) if fields.get("pending") else None
        return cls(url=fields["url"], events=tuple(json.loads(fields["events"])),
                   state=fields.get("state", "pending"), cursor=fields.get("cursor") or "0",
                   started_sent=fields.get("started_sent") == "1",
                   progress_sent_at=float(fields["progress_sent_at"]) if fields.get("progress_sent_at") else None,
                   pending=Pending(**pending) if pending else None, attempts=int(fields.get("attempts") or 0),
                   delivered=int(fields.get("delivered") or 0))


async def subscribe(client: Any, keys: Keys, job_id: str, subscription: WebhookSubscription) -> None:
    """Record a new job's webhook and make it due (``client``: ``redis.asyncio``)."""
    async with client.pipeline(transaction=True) as pipe:
        pipe.hset(keys.webhook(job_id), mapping={"url": subscription.webhook_url, "state": "pending",
                                                 "events": to_json(subscription.webhook_events), "cursor": "0"})
        pipe.zadd(keys.webhooks_due, {job_id: 0})
        await pipe.execute()


async def read_log(client: Any, keys: Keys, job_id: str) -> WebhookLog | None:
    """A job's webhook and its latest deliveries; ``None`` if it has none."""
    async with client.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.webhook(job_id))
        pipe.lrange(keys.webhook_log(job_id), 0, -1)
        fields, entries = await pipe.execute()
    if not fields:
        return None
    state = DeliveryState.from_redis(fields)
    return WebhookLog(url=state.url, events=list(state.events), state=state.state,  # type: ignore[arg-type]
                      attempts=state.attempts, delivered=state.delivered,
                      last_status_code=int(fields["last_status_code"]) if fields.get("last_status_code") else None,
                      last_error=fields.get("last_error") or None,
                      delivered_at=_time(fields.get("delivered_at")),
                      next_attempt_at=_time(fields.get("next_attempt_at")) if state.pending else None,
                      log=[DeliveryAttempt.model_validate_json(entry) for entry in entries])


@neutral_methods
class Deliveries:
    """The deliverer's side (blocking ``redis.Redis`` with ``decode_responses=True``)."""

    def __init__(self, client: Any, keys: Keys, *, retention_s: int) -> None:
        self.client = client
        self.keys = keys
        self.retention_s = retention_s
        self._save = client.register_script(_SAVE)
        self._unlock = client.register_script(_UNLOCK)

    def now(self) -> float:
        seconds, micros = self.client.time()
        return seconds + micros / 1e6

    def due(self, *, now: float, limit: int = 50) -> list[str]:
        return self.client.zrangebyscore(self.keys.webhooks_due, "-inf", now, start=0, num=limit)

    def next_due_in(self, *, now: float) -> float | None:
        """Seconds until the earliest job is due (``None``: none waits)."""
        first = self.client.zrange(self.keys.webhooks_due, 0, 0, withscores=True)
        return max(0.0, first[0][1] - now) if first else None

    def lock(self, job_id: str, *, ttl_s: float) -> str | None:
        """Take the job's delivery lock: its token, or ``None`` if another deliverer holds it."""
        token = secrets.token_urlsafe(12)
        taken = self.client.set(self.keys.webhook_lock(job_id), token, nx=True, px=round(ttl_s * 1000))
        return token if taken else None

    def unlock(self, job_id: str, token: str) -> None:
        self._unlock(keys=[self.keys.webhook_lock(job_id)], args=[token])

    def state(self, job_id: str) -> DeliveryState | None:
        fields = self.client.hgetall(self.keys.webhook(job_id))
        return DeliveryState.from_redis(fields) if fields else None

    def events(self, job_id: str, *, after: str, count: int = 100) -> list[JobEvent]:
        reply = self.client.xread({self.keys.events(job_id): after}, count=count)
        entries = reply[0][1] if reply else []
        return [JobEvent(id=entry_id, type=EventType(data["type"]), data=json.loads(data["data"]))
                for entry_id, data in entries]

    def save(self, job_id: str, fields: dict[str, Any], *, attempt: DeliveryAttempt | None = None,
             next_look: float | None, expire: bool = False) -> bool:
        """Write ``fields`` (``None`` values stored as ``""``) and ``attempt`` to the log; look again at
        ``next_look`` (``None``: never, deliveries are over); ``expire``: start the retention
        period. ``False`` if the job's webhook is gone (the job was deleted)."""
        encoded = {key: "" if value is None else str(value) for key, value in fields.items()}
        return bool(self._save(
            keys=[self.keys.webhook(job_id), self.keys.webhook_log(job_id), self.keys.webhooks_due],
            args=[job_id, to_json(encoded), attempt.model_dump_json() if attempt else "", LOG_LENGTH,
                  "" if next_look is None else repr(next_look),
                  self.retention_s * 1000 if expire else ""]))

    def forget(self, job_id: str) -> None:
        """Drop the webhook of a job that no longer exists."""
        with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(self.keys.webhook(job_id), self.keys.webhook_log(job_id))
            pipe.zrem(self.keys.webhooks_due, job_id)
            pipe.execute()


def pending_json(pending: Pending | None) -> str:
    if pending is None:
        return ""
    return to_json(pending.__dict__)


def _time(raw: str | None) -> datetime | None:
    return datetime.fromtimestamp(float(raw), tz=timezone.utc) if raw else None
