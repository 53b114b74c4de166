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


def until_redis_answers(call: Callable[[], T], *, within_s: float, what: str,
                        first_wait_s: float = 0.2, max_wait_s: float = 5.0) -> T:
    """``call()``, retried with a doubling wait while Redis is unreachable.

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
        except UNREACHABLE as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                raise
            log.warning("Redis unreachable while writing %s (%s); retrying for %.0f s more", what, exc, left)
            time.sleep(min(wait, left))
            wait = min(wait * 2, max_wait_s)
