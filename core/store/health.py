"""Workers that stopped taking jobs, as ``/readyz`` reports them.

A worker whose device failed several jobs in a row (``worker.failures``) stops
consuming the queue and says why in ``Keys.unhealthy_workers`` (worker name ->
JSON ``{reason, since}``). Its heartbeat goes on, so only live workers' entries
count; a worker clears its own entry when it starts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .keys import Keys


@dataclass(frozen=True)
class UnhealthyWorker:
    worker: str
    reason: str
    since: float  # Unix time


def mark_unhealthy(client: Any, keys: Keys, worker: str, *, reason: str, since: float) -> None:
    """Say that ``worker`` (blocking client) stopped taking jobs, and why."""
    client.hset(keys.unhealthy_workers, worker, json.dumps({"reason": reason, "since": since}))


def clear_unhealthy(client: Any, keys: Keys, worker: str) -> None:
    """Forget a worker's entry (blocking client): it (re)starts with a clean slate."""
    client.hdel(keys.unhealthy_workers, worker)


async def unhealthy_workers(client: Any, keys: Keys, *, max_age_s: float) -> list[UnhealthyWorker]:
    """The live workers (a heartbeat within ``max_age_s``, Redis clock) that stopped taking jobs."""
    seconds, micros = await client.time()
    live = set(await client.zrangebyscore(keys.workers, seconds + micros / 1e6 - max_age_s, "+inf"))
    entries = await client.hgetall(keys.unhealthy_workers)
    found: list[UnhealthyWorker] = []
    for worker, raw in sorted(entries.items()):
        if worker in live:
            entry = json.loads(raw)
            found.append(UnhealthyWorker(worker, str(entry.get("reason", "")), float(entry.get("since", 0))))
    return found
