"""What the API's store and the worker's store share: options, keys, scripts, record reads."""

from __future__ import annotations

import json
import logging
from typing import Any

from .keys import Keys
from .records import JobRecord, JobStatus
from .scripts import Scripts

log = logging.getLogger(__name__)

# Upper bounds (seconds) of the job duration histogram kept in Redis.
DURATION_BUCKETS: tuple[float, ...] = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400)


class StoreBase:
    """Holds the client, key names and registered scripts.

    Args:
        client: A ``redis.Redis`` or ``redis.asyncio.Redis`` created with
            ``decode_responses=True``.
        retention_s: How long a finished job's keys live.
        keys: Key names (a prefix of their own lets deployments or tests share a Redis).
        events_maxlen: Entries kept per job event stream (older ones are trimmed).
        redispatch_s: A queued job whose message went out is sent again this long after,
            then twice as long, and so on, until a worker claims it (0: never). See
            ``Settings.redispatch_s``.
    """

    def __init__(self, client: Any, *, retention_s: int, keys: Keys | None = None,
                 events_maxlen: int = 5000, redispatch_s: float = 0.0) -> None:
        if isinstance(redispatch_s, bool) or not isinstance(redispatch_s, (int, float)) or not redispatch_s >= 0:
            raise ValueError(f"redispatch_s must be a number of seconds >= 0, got {redispatch_s!r}")
        if isinstance(retention_s, bool) or not isinstance(retention_s, int) or retention_s < 1:
            raise ValueError(f"retention_s must be a positive int, got {retention_s!r}")
        if isinstance(events_maxlen, bool) or not isinstance(events_maxlen, int) or events_maxlen < 10:
            raise ValueError(f"events_maxlen must be an int >= 10, got {events_maxlen!r}")
        if not client.get_connection_kwargs().get("decode_responses"):
            raise ValueError("the Redis client must be created with decode_responses=True")
        self.client = client
        self.keys = keys or Keys()
        self.retention_s = retention_s
        self._events_maxlen = events_maxlen
        self.redispatch_s = float(redispatch_s)
        self._scripts = Scripts.register(client)

    def _job_call(self, job_id: str, *argv: Any, extra_keys: tuple[str, ...] = ()) -> dict[str, Any]:
        """``keys=`` and ``args=`` for a job script (layout in ``scripts``)."""
        return {
            "keys": self.keys.job_script_keys(job_id, *extra_keys),
            "args": [self.retention_s * 1000, self._events_maxlen, job_id, *argv],
        }

    def _queue_reads(self, pipe: Any, job_id: str) -> None:
        pipe.hgetall(self.keys.job(job_id))
        pipe.hgetall(self.keys.files(job_id))
        pipe.zrank(self.keys.by_status(JobStatus.queued), job_id)

    @staticmethod
    def _parse_reads(replies: list[Any]) -> list[JobRecord | None]:
        """Records from the replies of ``_queue_reads`` (three per job), ``None`` for gone ones."""
        records: list[JobRecord | None] = []
        for fields, files, rank in zip(replies[0::3], replies[1::3], replies[2::3]):
            records.append(JobRecord.from_redis(fields, files, rank) if fields else None)
        return records


def check_eviction_policy(policy: str, *, allowed: bool) -> None:
    """Refuse (``RuntimeError``) a Redis whose ``maxmemory-policy`` evicts keys, which would silently
    delete job records, leases and queued messages; log it if ``allowed`` (DIP_ALLOW_EVICTION)."""
    if not policy.startswith(("allkeys-", "volatile-")):
        return
    if allowed:
        log.warning("Redis may evict keys (maxmemory-policy %s): running anyway, as DIP_ALLOW_EVICTION says",
                    policy)
        return
    raise RuntimeError(f"Redis may evict keys under memory pressure (maxmemory-policy {policy}): job records, "
                       "leases and queued jobs could vanish. Set `maxmemory-policy noeviction` on that Redis "
                       "(`dip serve` and docker-compose.yml do), or DIP_ALLOW_EVICTION=true to run anyway.")


def to_json(value: Any) -> str:
    """Compact JSON for script arguments and stream entries."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False)
