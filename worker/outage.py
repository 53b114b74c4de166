"""Riding out a Redis outage: retry a write that must not be lost, for a bounded time."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import redis.exceptions

log = logging.getLogger(__name__)

T = TypeVar("T")

# Errors that mean "Redis is not reachable right now" (a restart, a network cut), not a bad command.
UNREACHABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)

# Answers by which a reachable Redis refuses a write for now: full (maxmemory with noeviction),
# a replica after a failover, a server still loading, a long script, no replicas to write to.
# A script's refusal arrives as a plain ResponseError carrying the code in its message.
REFUSED_FOR_NOW = ("OOM", "READONLY", "LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN", "NOREPLICAS", "CLUSTERDOWN")


def refused_for_now(exc: BaseException) -> bool:
    """Whether ``exc`` says Redis cannot be reached, or refuses writes for a while."""
    if isinstance(exc, (*UNREACHABLE, redis.exceptions.OutOfMemoryError, redis.exceptions.ReadOnlyError)):
        return True
    if not isinstance(exc, redis.exceptions.ResponseError):
        return False
    text = str(exc)  # "OOM command not allowed..." or "Error running script (...): ... -OOM command..."
    return any(text.startswith(f"{code} ") or f"-{code} " in text for code in REFUSED_FOR_NOW)


def until_redis_answers(call: Callable[[], T], *, within_s: float, what: str,
                        first_wait_s: float = 0.2, max_wait_s: float = 5.0) -> T:
    """``call()``, retried with a doubling wait while Redis is unreachable or refuses
    writes for now (:func:`refused_for_now`: full, read-only after a failover...).

    Args:
        call: The Redis operation (it must be safe to repeat: the job scripts are).
        within_s: Give up after this long and raise the last error.
        what: Says what is being written, for the log.
        first_wait_s: First wait between tries; doubles up to ``max_wait_s``.
    """
    if not within_s >= 0:
        raise ValueError(f"within_s must be >= 0, got {within_s!r}")
    deadline = time.monotonic() + within_s
    wait = first_wait_s
    while True:
        try:
            return call()
        except redis.exceptions.RedisError as exc:
            left = deadline - time.monotonic()
            if not refused_for_now(exc) or left <= 0:
                raise
            log.warning("Redis unreachable or refusing writes while writing %s (%s); retrying for %.0f s more",
                        what, exc, left)
            time.sleep(min(wait, left))
            wait = min(wait * 2, max_wait_s)
