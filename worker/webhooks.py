"""The webhook deliverer: threads of a worker's main process that send jobs' events to their webhooks.

Never in the job's own loop: a job runs in a pool process and only writes its
events to Redis (as for the SSE stream); the deliverer, started by the
maintenance bootstep, reads each subscribed job's event stream and sends what
it subscribed to, in order, so a slow or dead receiver costs the job nothing.

Any worker's deliverer can continue a job's deliveries (the cursor and the
retry schedule are in Redis, ``core.store.webhooks``); a per-job expiring lock
keeps two from sending the same job's events at once. A failed delivery is
retried after ``DIP_WEBHOOK_RETRY_BASE_S``, doubling up to an hour, until it
has failed for ``DIP_WEBHOOK_GIVE_UP_S``; the job's later events are then
dropped too (the receiver is gone).

The target is checked again before every delivery, and the request goes to
the very addresses that were checked (no second DNS lookup that could be
rebound to a private address); the TLS certificate is still verified for the
URL's host name.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

import httpx

from core.addresses import host_header, pinned_url
from core.config import Settings
from core.quality import Metrics
from core.store import EventType, JobEvent, JobRecord, JobStatus, Keys, StoreError, WorkerStore
from core.store.webhooks import DeliveryState, Pending, pending_json
from core.webhooks import (CompletedData, CompletedPayload, DeliveryAttempt, ProgressData, ProgressPayload,
                          Resolver, SnapshotData, SnapshotPayload, StartedData, StartedPayload, WebhookEvent,
                          InvalidWebhook, check_target, secret_key, signed_headers)

log = logging.getLogger(__name__)

POLL_S = 0.5  # how often the due set is read
IDLE_LOOK_S = 1.0  # a live job with nothing new is looked at again this soon
MAX_BACKOFF_S = 3600.0
_THREADS = 4
_EVENTS_PER_READ = 500


@dataclass(frozen=True)
class Step:
    """What to do next for one job, from its stream past the cursor.

    ``message``: deliver it (``None``: nothing to send now); ``cursor``: where the
    cursor is once the events before the message are skipped; ``done``: the job ended and
    nothing more is to be sent; ``look_at``: when to look again if there is no message.
    """

    message: Pending | None
    cursor: str
    done: bool = False
    look_at: float | None = None


def plan(state: DeliveryState, events: list[JobEvent], record: JobRecord, *, now: float,
         progress_interval_s: float) -> Step:
    """The next message for a job whose stream has ``events`` past ``state.cursor`` (a pure function)."""
    cursor = state.cursor
    for i, event in enumerate(events):
        later = events[i + 1:]
        status = event.data.get("status") if event.type is EventType.status else None
        if status == JobStatus.running.value and "started" in state.events and not state.started_sent:
            return Step(_message(record, event, "started", now), cursor)
        if status is not None and JobStatus(status).is_terminal:
            if "completed" in state.events:
                return Step(_message(record, event, "completed", now), cursor)
            return Step(None, event.id, done=True)
        if event.type is EventType.progress and "progress" in state.events:
            # The latest wins: a newer progress, or the job's end, makes this one moot.
            if not any(e.type is EventType.progress or _terminal(e) for e in later):
                ready_at = (state.progress_sent_at or 0.0) + progress_interval_s
                if now >= ready_at:
                    return Step(_message(record, event, "progress", now), cursor)
                if not later:  # wait for the interval (or a newer one) rather than drop it
                    return Step(None, cursor, look_at=ready_at)
        if event.type is EventType.snapshot and "snapshot" in state.events:
            return Step(_message(record, event, "snapshot", now), cursor)
        cursor = event.id
    return Step(None, cursor, look_at=now + IDLE_LOOK_S)


def _terminal(event: JobEvent) -> bool:
    return event.type is EventType.status and JobStatus(event.data.get("status", "queued")).is_terminal


def _message(record: JobRecord, event: JobEvent, kind: WebhookEvent, now: float) -> Pending:
    at = datetime.fromtimestamp(int(event.id.split("-", 1)[0]) / 1000, tz=timezone.utc)
    payload: Any
    if kind == "started":
        payload = StartedPayload(timestamp=at, data=StartedData(job_id=record.id, attempt=event.data.get("attempt")))
    elif kind == "progress":
        progress, metrics = event.data.get("progress", {}), event.data.get("metrics", {})
        payload = ProgressPayload(timestamp=at, data=ProgressData(
            job_id=record.id, iteration=progress.get("iteration", 0), total=progress.get("total", 0),
            fraction=progress.get("fraction", 0.0), eta_seconds=progress.get("eta_seconds"),
            loss=metrics.get("loss"), psnr=metrics.get("psnr")))
    elif kind == "snapshot":
        payload = SnapshotPayload(timestamp=at, data=SnapshotData(job_id=record.id, **event.data))
    else:
        payload = CompletedPayload(timestamp=at, data=completed_data(record))
    return Pending(message_id=f"msg_{record.id}_{event.id}", event=kind, body=payload.model_dump_json(),
                   first_try_at=now, next_cursor=event.id)


def completed_data(record: JobRecord) -> CompletedData:
    def when(value: float | None) -> datetime | None:
        return None if value is None else datetime.fromtimestamp(value, tz=timezone.utc)

    return CompletedData(
        job_id=record.id, status=record.status.value, task=record.task,  # type: ignore[arg-type]
        created_at=when(record.created_at), started_at=when(record.started_at),  # type: ignore[arg-type]
        finished_at=when(record.finished_at), attempts=record.attempts, stop_reason=record.stop_reason,
        error_code=record.error_code, error_message=record.error_message, iterations=record.iteration,
        metrics=Metrics.of(record), files=sorted(record.files))


@dataclass(frozen=True)
class Outcome:
    status_code: int | None
    error: str | None

    @property
    def delivered(self) -> bool:
        return self.error is None


def send(url: str, message: Pending, *, secret: str | None, timeout_s: float, allow_http: bool,
         allow_private: bool, resolve: Resolver | None = None) -> Outcome:
    """POST one signed message to ``url``, after checking the target again."""
    if not secret:
        return Outcome(None, "DIP_WEBHOOK_SECRET is not set on this worker")
    try:
        addresses = check_target(url, allow_http=allow_http, allow_private=allow_private, resolve=resolve)
    except InvalidWebhook as exc:
        return Outcome(None, f"target refused: {exc}")
    body = message.body.encode()
    headers = signed_headers(secret_key(secret), message_id=message.message_id, timestamp=int(time.time()),
                             body=body)
    parts = urlsplit(url)
    headers["host"] = host_header(parts)
    error = "no address"
    for address in addresses:
        pinned = pinned_url(parts, address)
        try:
            # One client per delivery: a pooled connection verified for another name on the same
            # address must never carry this one. No proxies from the environment: they would
            # resolve the name again.
            with httpx.Client(timeout=timeout_s, follow_redirects=False, trust_env=False) as client:
                with client.stream("POST", pinned, content=body, headers=headers,
                                   extensions={"sni_hostname": parts.hostname or ""}) as response:
                    code = response.status_code
        except httpx.ConnectError as exc:
            error = f"could not connect to {address}: {exc}"
            continue
        except httpx.HTTPError as exc:
            return Outcome(None, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
        return Outcome(code, None if 200 <= code < 300 else f"answered {code}")
    return Outcome(None, error)


class Deliverer:
    """The delivery threads of one worker process. ``start()`` then ``stop()``.

    Args:
        settings: Redis, retention and the ``webhook_*`` settings.
        keys: Key names (tests may use a prefix of their own).
        resolve: Host name lookup (default: the system's).
    """

    def __init__(self, settings: Settings, *, keys: Keys | None = None, resolve: Resolver | None = None) -> None:
        self.settings = settings
        self._keys = keys or Keys()
        self._resolve = resolve
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._busy: set[str] = set()
        self._busy_lock = threading.Lock()
        # Long enough for a few deliveries; a holder that died frees the job within it.
        self._lock_ttl_s = 4 * settings.webhook_timeout_s + 30
        self._store = WorkerStore.from_settings(settings, retention_s=settings.retention_s, keys=self._keys)
        self._deliveries = self._store.deliveries()

    def start(self) -> None:
        self._pool = ThreadPoolExecutor(_THREADS, thread_name_prefix="webhook")
        self._thread = threading.Thread(target=self._run, name="webhooks", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._store.close()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                for job_id in self._deliveries.due(now=self._deliveries.now()):
                    with self._busy_lock:
                        if job_id in self._busy:
                            continue
                        self._busy.add(job_id)
                    self._pool.submit(self._serve, job_id)  # type: ignore[union-attr]
            except StoreError as exc:
                log.warning("webhook deliverer: Redis unavailable (%s); trying again", exc)
                self._stopping.wait(5.0)
            except RuntimeError:
                return  # the pool was shut down
            self._stopping.wait(POLL_S)

    def _serve(self, job_id: str) -> None:
        try:
            token = self._deliveries.lock(job_id, ttl_s=self._lock_ttl_s)
            if token is None:
                return  # another deliverer has it
            try:
                self.advance(job_id)
            finally:
                self._deliveries.unlock(job_id, token)
        except Exception:  # noqa: BLE001 - one job's trouble never stops the deliverer
            log.exception("webhook deliveries of job %s failed; tried again later", job_id)
        finally:
            with self._busy_lock:
                self._busy.discard(job_id)

    def advance(self, job_id: str) -> None:
        """Send what job ``job_id`` has due, while holding its lock (a few deliveries at most)."""
        deliveries, settings = self._deliveries, self.settings
        deadline = time.monotonic() + self._lock_ttl_s / 2 - settings.webhook_timeout_s
        while not self._stopping.is_set():
            state = deliveries.state(job_id)
            record = self._store.get(job_id)
            if state is None or record is None:
                deliveries.forget(job_id)  # the job was deleted
                return
            now = deliveries.now()
            message, cursor = state.pending, state.cursor
            if message is None:
                step = plan(state, deliveries.events(job_id, after=state.cursor, count=_EVENTS_PER_READ), record,
                            now=now, progress_interval_s=settings.webhook_progress_interval_s)
                if step.message is None:
                    deliveries.save(job_id, {"cursor": step.cursor, "state": "done" if step.done else "pending"},
                                    next_look=None if step.done else step.look_at, expire=step.done)
                    return
                message, cursor = step.message, step.cursor
            outcome = send(state.url, message, secret=settings.webhook_secret.get_secret_value()
                           if settings.webhook_secret else None, timeout_s=settings.webhook_timeout_s,
                           allow_http=settings.webhook_allow_http, allow_private=settings.webhook_allow_private,
                           resolve=self._resolve)
            if not self._record(job_id, state, message, cursor, outcome, now=deliveries.now()):
                return
            if time.monotonic() > deadline:
                return

    def _record(self, job_id: str, state: DeliveryState, message: Pending, cursor: str, outcome: Outcome, *,
                now: float) -> bool:
        """Write how one try went; ``True`` if the next event can be sent at once."""
        tries = message.tries + 1
        attempt = DeliveryAttempt(message_id=message.message_id, event=message.event, attempt=tries,
                                  at=datetime.fromtimestamp(now, tz=timezone.utc), status_code=outcome.status_code,
                                  error=outcome.error, delivered=outcome.delivered)
        fields: dict[str, Any] = {"attempts": state.attempts + 1, "last_status_code": outcome.status_code,
                                  "last_error": outcome.error}
        if outcome.delivered:
            fields.update(pending="", cursor=message.next_cursor, delivered=state.delivered + 1, delivered_at=now,
                          next_attempt_at="")
            if message.event == "started":
                fields["started_sent"] = "1"
            elif message.event == "progress":
                fields["progress_sent_at"] = repr(now)
            done = message.event == "completed"
            if done:
                fields["state"] = "done"
            return self._deliveries.save(job_id, fields, attempt=attempt, next_look=None if done else now,
                                         expire=done) and not done
        if now - message.first_try_at >= self.settings.webhook_give_up_s:
            log.warning("job %s: webhook %s gave up after %d tries over %.0f s (%s); its later events are "
                        "dropped too", job_id, message.event, tries, now - message.first_try_at, outcome.error)
            fields.update(state="gave_up", pending="", next_attempt_at="")
            self._deliveries.save(job_id, fields, attempt=attempt, next_look=None, expire=True)
            return False
        retry_at = now + min(self.settings.webhook_retry_base_s * 2 ** (tries - 1), MAX_BACKOFF_S)
        log.info("job %s: webhook %s failed (%s); try %d in %.0f s", job_id, message.event, outcome.error,
                 tries + 1, retry_at - now)
        fields.update(pending=pending_json(Pending(**{**message.__dict__, "tries": tries})), cursor=cursor,
                      next_attempt_at=repr(retry_at))
        self._deliveries.save(job_id, fields, attempt=attempt, next_look=retry_at)
        return False
