"""The API's side of the job records (asyncio): submit, read, list, cancel, delete, stream."""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import redis.asyncio as aioredis

from core.webhooks import WebhookLog, WebhookSubscription

from .base import DURATION_BUCKETS, StoreBase, to_json
from .connect import async_client, close_async
from .errors import neutral_methods
from .health import UnhealthyWorker, unhealthy_workers
from .records import EventType, JobEvent, JobRecord, JobStatus, encode_fields
from .streams import StreamLeases
from .webhooks import read_log, subscribe

if TYPE_CHECKING:
    from core.config import Settings


# Longer than any blocking read of the event streams (see read_events).
_SOCKET_TIMEOUT_S = 30.0
# Redis connections: requests share one pool; blocking reads of event streams (one
# per open SSE connection, each held for seconds) have their own, so that however
# many clients follow jobs, status reads still find a connection. A request waits
# for a free connection rather than fail at once.
_POOL_SIZE = 256
_STREAM_POOL_SIZE = 4096
_POOL_WAIT_S = 10.0
_CONNECTION_OPTIONS: dict[str, Any] = {"decode_responses": True, "socket_connect_timeout": 5,
                                       "socket_timeout": _SOCKET_TIMEOUT_S, "health_check_interval": 30}
# Default time to send a new job's first message before a worker's reaper sends one.
DISPATCH_GRACE_S = 30.0
# Index entries one listing request reads at most while filtering an owner's jobs by
# status: a page may come back short (with a cursor) rather than scan without bound.
_MAX_SCAN = 1000


class InvalidCursor(ValueError):
    """A listing cursor that this store did not hand out."""


class QueueFull(Exception):
    """A submission refused because too many jobs are waiting.

    Attributes:
        scope: ``"service"`` (all clients together) or ``"client"`` (this owner).
        limit: The cap that was reached.
    """

    def __init__(self, scope: Literal["service", "client"], limit: int) -> None:
        who = "the service has" if scope == "service" else "you have"
        super().__init__(f"{who} {limit} jobs waiting for a worker, the most allowed; retry later")
        self.scope = scope
        self.limit = limit


@dataclass(frozen=True)
class QueuedCounts:
    """Jobs waiting for a worker: all of them, and those of one owner."""

    total: int
    owner: int


@dataclass(frozen=True)
class StoreStats:
    """Numbers for ``/metrics``, read from Redis at scrape time."""

    jobs_by_status: dict[JobStatus, int]
    running_iterations_per_second: float
    live_workers: int
    # status -> ({bucket bound: cumulative count}, count, sum of seconds)
    durations: dict[str, tuple[dict[float, int], int, float]]


@neutral_methods
class JobStore(StoreBase):
    """Job records as the API sees them. Build with :meth:`from_settings` (or :meth:`from_url`); close
    with :meth:`aclose`.

    Args:
        client: For every command but blocking stream reads.
        stream_client: For blocking reads of event streams (default ``client``).
        options: As :class:`StoreBase`.

    Attributes:
        streams: Leases of the open event streams, which cap them per caller.
    """

    def __init__(self, client: Any, *, stream_client: Any = None, **options: Any) -> None:
        super().__init__(client, **options)
        self._stream_client = stream_client or client
        self.streams = StreamLeases(client, self.keys)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> JobStore:
        def client(size: int) -> aioredis.Redis:
            pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=size, timeout=_POOL_WAIT_S,
                                                            **_CONNECTION_OPTIONS)
            return aioredis.Redis.from_pool(pool)  # closes the pool when closed

        return cls(client(_POOL_SIZE), stream_client=client(_STREAM_POOL_SIZE), **options)

    @classmethod
    def from_settings(cls, settings: Settings, **options: Any) -> JobStore:
        """The service's Redis: through ``settings.redis_sentinels`` when set, else ``redis_url``."""
        def client(size: int) -> aioredis.Redis:
            return async_client(settings, max_connections=size, pool_wait_s=_POOL_WAIT_S, **_CONNECTION_OPTIONS)

        return cls(client(_POOL_SIZE), stream_client=client(_STREAM_POOL_SIZE), **options)

    async def aclose(self) -> None:
        await close_async(self.client)
        if self._stream_client is not self.client:
            await close_async(self._stream_client)

    async def maxmemory_policy(self) -> str:
        """The server's eviction policy (from INFO, which managed Redis services allow where CONFIG is off)."""
        return str((await self.client.info("memory")).get("maxmemory_policy", "noeviction"))

    async def ping(self) -> bool:
        return bool(await self.client.ping())

    async def create(self, job_id: str, *, task: str, params: dict[str, Any], files: dict[str, str],
                     owner: str = "", idempotency_key: str | None = None, time_limit_s: int | None = None,
                     max_queued: int | None = None, max_queued_per_owner: int | None = None,
                     dispatch_grace_s: float = DISPATCH_GRACE_S, fingerprint: str = "") -> str:
        """Record a new queued job, atomically with its index entries and first event.

        The job also enters the lease index as awaiting its message: send the message,
        then call :meth:`confirm_dispatch`. A caller that dies in between (or whose
        confirmation fails) leaves the job to the workers' reaper, which sends the
        message ``dispatch_grace_s`` after creation; a second message is harmless (the
        claim drops it).

        Args:
            owner: Fingerprint of the creating key (``""`` without keys).
            idempotency_key: A retry with the same key (and owner) returns the first job.
            time_limit_s: Wall-time limit of one run, kept in the record for the worker.
            max_queued: Refuse if this many jobs are already queued (``None``: no cap).
            max_queued_per_owner: Refuse if ``owner`` has this many queued (``None``: no cap).
            dispatch_grace_s: Time given to send and confirm the first message.
            fingerprint: A digest of the request (its files and parameters), which a retry
                with the same ``idempotency_key`` must match (see :meth:`fingerprint`).

        Returns:
            ``job_id``, or the id of the job created earlier with the same
            ``idempotency_key`` (then nothing is written, and nothing is to be sent).

        Raises:
            QueueFull: A cap was reached (nothing written).
        """
        for name, cap in (("max_queued", max_queued), ("max_queued_per_owner", max_queued_per_owner)):
            if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
                raise ValueError(f"{name} must be a positive int or None, got {cap!r}")
        if (isinstance(dispatch_grace_s, bool) or not isinstance(dispatch_grace_s, (int, float))
                or not 0 < dispatch_grace_s < math.inf):
            raise ValueError(f"dispatch_grace_s must be a positive number of seconds, got {dispatch_grace_s!r}")
        fields = encode_fields({"task": task, "params": params, "owner": owner, "attempts": 0,
                                "time_limit_s": time_limit_s, "request_fingerprint": fingerprint})
        extra = (self.keys.owner_jobs(owner), self.keys.owner_queued(owner), self.keys.leases)
        if idempotency_key is not None:
            extra += (self.keys.idempotency(owner, idempotency_key),)
        outcome, *reply = await self._scripts.create(**self._job_call(
            job_id, to_json(fields), to_json(files), max_queued or 0, max_queued_per_owner or 0,
            dispatch_grace_s, extra_keys=extra))
        if outcome == "queue_full":
            scope, limit = reply
            raise QueueFull(scope, int(limit))
        return reply[0]

    async def confirm_dispatch(self, job_id: str) -> bool:
        """Say that the first message of a job made by :meth:`create` was sent, so that no
        reaper sends another; ``False`` if there was nothing to confirm (a worker has
        claimed the job, or a reaper has re-sent it, or it ended or was deleted)."""
        # The dispatch of create is named after the job (reapers name theirs at random).
        return bool(await self._scripts.confirm_dispatch(**self._job_call(
            job_id, job_id, self.redispatch_s, extra_keys=(self.keys.leases,))))

    async def queued_counts(self, owner: str) -> QueuedCounts:
        """How many jobs are queued, in all and for ``owner`` (a read, for early refusals)."""
        total, mine = await self._scripts.queued_counts(
            keys=[self.keys.by_status(JobStatus.queued), self.keys.owner_queued(owner)], args=[])
        return QueuedCounts(total=int(total), owner=int(mine))

    async def fingerprint(self, job_id: str) -> str:
        """The request digest a job was created with (``""``: none recorded)."""
        return await self.client.hget(self.keys.job(job_id), "request_fingerprint") or ""

    async def find_idempotent(self, owner: str, idempotency_key: str) -> str | None:
        """The job id an idempotency key already points to, if any."""
        return await self.client.get(self.keys.idempotency(owner, idempotency_key))

    async def get(self, job_id: str) -> JobRecord | None:
        return (await self._get_many([job_id]))[0]

    async def list(self, *, status: JobStatus | None = None, owner: str | None = None, limit: int = 20,
                   cursor: str | None = None) -> tuple[list[JobRecord], str | None]:
        """Jobs newest first, ``limit`` at a time.

        The cursor names the last job looked at; pages are counted from the
        oldest end, which new submissions never shift.

        Args:
            status: Only jobs in this status.
            owner: Only jobs of this owner (``None``: everyone's). Filtered by
                status, a page reads at most ``_MAX_SCAN`` of the owner's jobs
                and may come back short, with a cursor to go on.

        Returns:
            The page and the cursor of the next one (``None`` on the last page).

        Raises:
            InvalidCursor: ``cursor`` was not made by this method.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be a positive int, got {limit!r}")
        if owner is None:
            index = self.keys.all_jobs if status is None else self.keys.by_status(status)
            wanted = None  # the index holds only matching jobs
        else:
            index, wanted = self.keys.owner_jobs(owner), status
        if cursor is None:
            older = await self.client.zcard(index)
        else:
            score, last_id = _decode_cursor(cursor)
            rank = await self.client.zrank(index, last_id)
            older = rank if rank is not None else await self.client.zcount(index, "-inf", f"({score}")
        # Filtering by status, read ahead: most entries may not match.
        read_ahead = limit if wanted is None else max(limit, 100)
        records: list[JobRecord] = []
        scanned = 0
        last: tuple[str, float] | None = None
        while older > 0 and len(records) < limit and scanned < _MAX_SCAN:
            start = max(0, older - max(limit - len(records), read_ahead))
            entries = await self.client.zrange(index, start, older - 1, withscores=True)
            entries.reverse()
            found = await self._get_many([job_id for job_id, _ in entries])
            gone = [job_id for (job_id, _), record in zip(entries, found) if record is None]
            if gone and owner is not None:
                # Deleted or expired: the owner index is ours to tidy (the global
                # ones are the retention sweep's, which also removes the files).
                await self.client.zrem(index, *gone)
            for entry, record in zip(entries, found):
                older, scanned, last = older - 1, scanned + 1, entry
                if record is not None and (wanted is None or record.status is wanted):
                    records.append(record)
                    if len(records) == limit:
                        break
        next_cursor = _encode_cursor(*last) if older > 0 and last is not None else None
        return records, next_cursor

    async def cancel(self, job_id: str) -> str:
        """Cancel: ``"canceled"`` (was queued), ``"cancel_requested"`` (running; the worker
        stops it), the terminal status it already had, or ``"missing"``."""
        return await self._scripts.cancel(**self._job_call(job_id))

    async def delete(self, job_id: str, *, owner: str | None = None) -> str:
        """Delete the record unless it is running: returns the status it had,
        ``"running"`` (refused) or ``"missing"``. Files are the caller's.

        ``owner``: also drop the job from that owner's index (else listing
        drops it when it meets it)."""
        status = await self._scripts.delete(**self._job_call(job_id, "0", extra_keys=(self.keys.leases,)))
        if owner is not None and status != JobStatus.running.value:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.zrem(self.keys.owner_jobs(owner), job_id)
                pipe.zrem(self.keys.owner_queued(owner), job_id)
                await pipe.execute()
        return status

    async def history(self, job_id: str) -> list[dict[str, Any]]:
        return [json.loads(raw) for raw in await self.client.lrange(self.keys.history(job_id), 0, -1)]

    async def read_events(self, job_id: str, *, after: str, block_ms: int | None,
                          count: int = 100) -> list[JobEvent]:
        """Events with stream ids after ``after`` (``"0"``: from the start), waiting
        up to ``block_ms`` (< 25 s) for the first one (``None``: don't wait)."""
        if block_ms is not None and not 0 < block_ms < (_SOCKET_TIMEOUT_S - 5) * 1000:
            raise ValueError(f"block_ms must be in 1..{(_SOCKET_TIMEOUT_S - 5) * 1000:.0f} or None, got {block_ms!r}")
        client = self.client if block_ms is None else self._stream_client
        reply = await client.xread({self.keys.events(job_id): after}, count=count, block=block_ms)
        entries = reply[0][1] if reply else []
        return [JobEvent(id=entry_id, type=EventType(data["type"]), data=json.loads(data["data"]))
                for entry_id, data in entries]

    async def live_workers(self, *, max_age_s: float) -> int:
        """Workers whose last heartbeat is at most ``max_age_s`` old (Redis clock)."""
        return int(await self._scripts.live_workers(keys=[self.keys.workers], args=[max_age_s]))

    async def unhealthy_workers(self, *, max_age_s: float) -> list[UnhealthyWorker]:
        """Live workers that stopped taking jobs, and why (``core.store.health``)."""
        return await unhealthy_workers(self.client, self.keys, max_age_s=max_age_s)

    async def subscribe_webhook(self, job_id: str, subscription: WebhookSubscription) -> None:
        """Record a new job's webhook and make its deliveries due (``core.store.webhooks``)."""
        await subscribe(self.client, self.keys, job_id, subscription)

    async def webhook_log(self, job_id: str) -> WebhookLog | None:
        """A job's webhook and its latest deliveries; ``None`` if it has none."""
        return await read_log(self.client, self.keys, job_id)

    async def stats(self, *, worker_max_age_s: float) -> StoreStats:
        async with self.client.pipeline(transaction=False) as pipe:
            for status in JobStatus:
                pipe.zcard(self.keys.by_status(status))
            pipe.zrange(self.keys.by_status(JobStatus.running), 0, -1)
            pipe.hgetall(self.keys.durations)
            *counts, running, durations = await pipe.execute()
        async with self.client.pipeline(transaction=False) as pipe:
            for job_id in running:
                pipe.hget(self.keys.job(job_id), "iterations_per_second")
            speeds = await pipe.execute()
        return StoreStats(
            jobs_by_status=dict(zip(JobStatus, counts)),
            running_iterations_per_second=sum(float(s) for s in speeds if s),
            live_workers=await self.live_workers(max_age_s=worker_max_age_s),
            durations=_parse_durations(durations),
        )

    async def _get_many(self, job_ids: list[str]) -> list[JobRecord | None]:
        if not job_ids:
            return []
        async with self.client.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                self._queue_reads(pipe, job_id)
            return self._parse_reads(await pipe.execute())


def _parse_durations(raw: dict[str, str]) -> dict[str, tuple[dict[float, int], int, float]]:
    out: dict[str, tuple[dict[float, int], int, float]] = {}
    for status in {field.split(":", 1)[0] for field in raw}:
        buckets = {float(b): int(raw.get(f"{status}:{b}", 0)) for b in DURATION_BUCKETS}
        out[status] = (buckets, int(raw.get(f"{status}:count", 0)), float(raw.get(f"{status}:sum", 0.0)))
    return out


def _encode_cursor(job_id: str, score: float) -> str:
    return base64.urlsafe_b64encode(f"{score!r}|{job_id}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        score, job_id = raw.split("|", 1)
        if not math.isfinite(float(score)):
            raise ValueError(score)
        return float(score), job_id
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise InvalidCursor(f"invalid cursor {cursor!r}") from exc
