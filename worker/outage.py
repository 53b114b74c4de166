"""Riding out a job-store outage: retry a write that must not be lost, for a bounded time."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from core.store import StoreUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")


def until_store_answers(call: Callable[[], T], *, within_s: float, what: str,
                        first_wait_s: float = 0.2, max_wait_s: float = 5.0) -> T:
    """``call()``, retried with a doubling wait while the job store is unreachable or refuses
    writes for now (:class:`~core.store.StoreUnavailable`: full, read-only after a failover...).

    Args:
        call: The store operation (it must be safe to repeat: the job scripts are).
        within_s: Give up after this long and raise the last error.
        what: Says what is being written, for the log.
        first_wait_s: First wait between tries; doubles up to ``max_wait_s``.

    Raises:
        StoreError: At once for an error that waiting cannot fix; ``StoreUnavailable`` past ``within_s``.
    """
    if not within_s >= 0:
        raise ValueError(f"within_s must be >= 0, got {within_s!r}")
    deadline = time.monotonic() + within_s
    wait = first_wait_s
    while True:
        try:
            return call()
        except StoreUnavailable as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                raise
            log.warning("job store unreachable or refusing writes while writing %s (%s); retrying for %.0f s more",
                        what, exc, left)
            time.sleep(min(wait, left))
            wait = min(wait * 2, max_wait_s)
