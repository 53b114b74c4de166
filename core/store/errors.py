"""The job store's own errors: callers see these, never a Redis exception.

Redis stays inside ``core.store``. A caller only needs to know whether waiting can
help: :class:`StoreUnavailable` (unreachable, timed out, or refusing writes for now:
full, read-only after a failover, still loading...) is worth retrying, any other
:class:`StoreError` (a wrong key type, a script bug) is not.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

import redis.asyncio.sentinel
import redis.exceptions
import redis.sentinel

__all__ = ["StoreError", "StoreUnavailable", "neutral", "neutral_methods"]

F = TypeVar("F", bound=Callable[..., Any])
C = TypeVar("C", bound=type)

# Answers by which a reachable Redis refuses a write for now: full (maxmemory with noeviction),
# a replica after a failover, a server still loading, a long script, no replicas to write to.
# A script's refusal arrives as a plain ResponseError carrying the code in its message.
REFUSED_FOR_NOW = ("OOM", "READONLY", "LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN", "NOREPLICAS", "CLUSTERDOWN")


class StoreError(Exception):
    """The job store failed, in a way that waiting will not fix."""


class StoreUnavailable(StoreError):
    """The job store cannot be reached, or refuses writes for a while: retry later."""


# Sentinel's "no primary known" (while a failover is under way) and "the previous master is now
# a slave" (a demoted primary) are connection errors in redis-py; named all the same, so that a
# failover never becomes a 500 should that change.
_FOR_NOW = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, redis.exceptions.OutOfMemoryError,
            redis.exceptions.ReadOnlyError, redis.sentinel.MasterNotFoundError,
            redis.asyncio.sentinel.MasterNotFoundError)


def _for_now(exc: redis.exceptions.RedisError) -> bool:
    if isinstance(exc, _FOR_NOW):
        return True
    text = str(exc)  # "OOM command not allowed..." or "Error running script (...): ... -OOM command..."
    return isinstance(exc, redis.exceptions.ResponseError) and any(
        text.startswith(f"{code} ") or f"-{code} " in text for code in REFUSED_FOR_NOW)


def translate(exc: redis.exceptions.RedisError) -> StoreError:
    """The neutral error for a Redis one (its message kept, its type named)."""
    kind = StoreUnavailable if _for_now(exc) else StoreError
    return kind(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)


def neutral(function: F) -> F:
    """``function`` (plain or ``async``), raising :class:`StoreError` where Redis raised."""
    if inspect.iscoroutinefunction(function):
        @functools.wraps(function)
        async def wrapped_async(*args: Any, **kwargs: Any) -> Any:
            try:
                return await function(*args, **kwargs)
            except redis.exceptions.RedisError as exc:
                raise translate(exc) from exc
        return wrapped_async  # type: ignore[return-value]

    @functools.wraps(function)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except redis.exceptions.RedisError as exc:
            raise translate(exc) from exc
    return wrapped  # type: ignore[return-value]


def neutral_methods(cls: C) -> C:
    """Wrap every public method ``cls`` defines (not class methods or properties) with :func:`neutral`."""
    for name, value in list(vars(cls).items()):
        if not name.startswith("_") and inspect.isfunction(value):
            setattr(cls, name, neutral(value))
    return cls
