"""The API's side of the job records (asyncio): submit, read, list, cancel, delete, stream."""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from .base import DURATION_BUCKETS, StoreBase, to_json
from .records import EventType, JobEvent, JobRecord, JobStatus, encode_fields


# Longer than any blocking read of the event streams (see read_events).
_SOCKET_TIMEOUT_S = 30.0


class InvalidCursor(ValueError):
    """A listing cursor that this store did not hand out."""


@dataclass(frozen=True)
class StoreStats:
    """Numbers for ``/metrics``, read from Redis at scrape time."""

    jobs_by_status: dict[JobStatus, int]
    running_iterations_per_second: float
    live_workers: int
    # status -> ({bucket bound: cumulative count}, count, sum of seconds)
    durations: dict[str, tuple[dict[float, int], int, float]]


class JobStore(StoreBase):
    """Job records as the API sees them. Build with :meth:`from_url`; close with :meth:`aclose`."""

    @classmethod
    def from_url(cls, url: str, **options: Any) -> JobStore:
        client = aioredis.Redis.from_url(
            url, decode_responses=True, socket_connect_timeout=5, socket_timeout=_SOCKET_TIMEOUT_S,
            health_check_interval=30,
        )
        return cls(client, **options)

    async def aclose(self) -> None:
        await self.client.aclose()

    async def ping(self) -> bool:
        return bool(await self.client.ping())

    async def create(self, job_id: str, *, task: str, params: dict[str, Any], files: dict[str, str],
                     owner: str = "", idempotency_key: str | None = None) -> str:
        """Record a new queued job, atomically with its index entries and first event.

        Returns:
            ``job_id``, or the id of the job created earlier with the same
            ``idempotency_key`` (then nothing is written).
        """
        fields = encode_fields({"task": task, "params": params, "owner": owner, "attempts": 0})
        extra = () if idempotency_key is None else (self.keys.idempotency(owner, idempotency_key),)
        return await self._scripts.create(
            **self._job_call(job_id, to_json(fields), to_json(files), extra_keys=extra)
        )

    async def find_idempotent(self, owner: str, idempotency_key: str) -> str | None:
        """The job id an idempotency key already points to, if any."""
        return await self.client.get(self.keys.idempotency(owner, idempotency_key))

    async def get(self, job_id: str) -> JobRecord | None:
        return (await self._get_many([job_id]))[0]

    async def list(self, *, status: JobStatus | None = None, limit: int = 20,
                   cursor: str | None = None) -> tuple[list[JobRecord], str | None]:
        """Jobs newest first, ``limit`` at a time.

        The cursor names the last job of the previous page; pages are counted
        from the oldest end, which new submissions never shift.

        Returns:
            The page and the cursor of the next one (``None`` on the last page).

        Raises:
            InvalidCursor: ``cursor`` was not made by this method.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be a positive int, got {limit!r}")
        index = self.keys.all_jobs if status is None else self.keys.by_status(status)
        if cursor is None:
            older = await self.client.zcard(index)
        else:
            score, last_id = _decode_cursor(cursor)
            rank = await self.client.zrank(index, last_id)
            older = rank if rank is not None else await self.client.zcount(index, "-inf", f"({score}")
        start = max(0, older - limit)
        entries = await self.client.zrange(index, start, older - 1, withscores=True) if older else []
        entries.reverse()
        records = [r for r in await self._get_many([job_id for job_id, _ in entries]) if r is not None]
        next_cursor = _encode_cursor(*entries[-1]) if start > 0 and entries else None
        return records, next_cursor

    async def cancel(self, job_id: str) -> str:
        """Cancel: ``"canceled"`` (was queued), ``"cancel_requested"`` (running; the worker
        stops it), the terminal status it already had, or ``"missing"``."""
        return await self._scripts.cancel(**self._job_call(job_id))

    async def delete(self, job_id: str) -> str:
        """Delete the record unless it is running: returns the status it had,
        ``"running"`` (refused) or ``"missing"``. Files are the caller's."""
        return await self._scripts.delete(**self._job_call(job_id, "0"))

    async def history(self, job_id: str) -> list[dict[str, Any]]:
        return [json.loads(raw) for raw in await self.client.lrange(self.keys.history(job_id), 0, -1)]

    async def read_events(self, job_id: str, *, after: str, block_ms: int | None,
                          count: int = 100) -> list[JobEvent]:
        """Events with stream ids after ``after`` (``"0"``: from the start), waiting
        up to ``block_ms`` (< 25 s) for the first one (``None``: don't wait)."""
        if block_ms is not None and not 0 < block_ms < (_SOCKET_TIMEOUT_S - 5) * 1000:
            raise ValueError(f"block_ms must be in 1..{(_SOCKET_TIMEOUT_S - 5) * 1000:.0f} or None, got {block_ms!r}")
        reply = await self.client.xread({self.keys.events(job_id): after}, count=count, block=block_ms)
        entries = reply[0][1] if reply else []
        return [JobEvent(id=entry_id, type=EventType(data["type"]), data=json.loads(data["data"]))
                for entry_id, data in entries]

    async def live_workers(self, *, max_age_s: float) -> int:
        """Workers whose last heartbeat is at most ``max_age_s`` old (Redis clock)."""
        return int(await self._scripts.live_workers(keys=[self.keys.workers], args=[max_age_s]))

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
