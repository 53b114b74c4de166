"""Redis clients for the job store: from ``redis_url``, or through Redis Sentinel.

With ``redis_sentinels`` set, the sentinels name the primary: each new connection asks
them where it is, and a connection to a primary that was demoted (``READONLY``) or that
died is dropped, so that the next call finds the promoted replica. Until one is promoted
calls fail with a connection error, which the store reports as ``StoreUnavailable``.
``redis_url`` then only lends its username, password and database.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import redis
import redis.asyncio as aioredis
import redis.asyncio.sentinel as aiosentinel
import redis.sentinel
from redis.connection import parse_url

if TYPE_CHECKING:
    from core.config import Settings

__all__ = ["async_client", "close_async", "close_sync", "sync_client"]

# Sentinels answer a discovery at once: a dead one must not hold a call up for a whole
# data socket timeout (the API's is long, for blocking stream reads) before the next is asked.
_SENTINEL_TIMEOUT_S = 2.0


def sync_client(settings: Settings, **connection: Any) -> redis.Redis:
    """A blocking client of the primary; ``connection``: ``redis.Redis`` options."""
    url = settings.redis_url or ""
    if not settings.redis_sentinels:
        if not url:
            raise ValueError("no Redis configured: set DIP_REDIS_URL or DIP_REDIS_SENTINELS")
        return redis.Redis.from_url(url, **connection)
    manager = redis.sentinel.Sentinel(list(settings.sentinel_addresses),
                                      sentinel_kwargs=_sentinel_options(connection))
    return manager.master_for(settings.redis_sentinel_master, **_credentials(url), **connection)


def async_client(settings: Settings, *, max_connections: int, pool_wait_s: float,
                 **connection: Any) -> aioredis.Redis:
    """An asyncio client of the primary over a blocking pool of ``max_connections``, where a call
    waits up to ``pool_wait_s`` for a free connection; ``connection``: ``redis.asyncio.Redis`` options.
    Closing the client closes its pool."""
    url = settings.redis_url or ""
    if not settings.redis_sentinels:
        if not url:
            raise ValueError("no Redis configured: set DIP_REDIS_URL or DIP_REDIS_SENTINELS")
        pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=pool_wait_s,
                                                        **connection)
        return aioredis.Redis.from_pool(pool)
    manager = aiosentinel.Sentinel(list(settings.sentinel_addresses), sentinel_kwargs=_sentinel_options(connection))
    return manager.master_for(settings.redis_sentinel_master, connection_pool_class=_BlockingSentinelPool,
                              max_connections=max_connections, timeout=pool_wait_s,
                              **_credentials(url), **connection)


def close_sync(client: redis.Redis) -> None:
    """Close ``client`` and, for a Sentinel client, its connections to the sentinels."""
    client.close()
    for sentinel in _sentinels(client):
        sentinel.close()


async def close_async(client: aioredis.Redis) -> None:
    """Close ``client`` and, for a Sentinel client, its connections to the sentinels."""
    await client.aclose()
    for sentinel in _sentinels(client):
        await sentinel.aclose()


class _BlockingSentinelPool(aiosentinel.SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """Sentinel discovery with the API's pool semantics: a request waits for a free connection
    rather than fail at once (``max_connections``, ``timeout``)."""


def _credentials(url: str) -> dict[str, Any]:
    # Host and port come from the sentinels; the rest of the URL (TLS, sockets) is refused by Settings.
    parsed = parse_url(url or "redis://")
    return {key: parsed[key] for key in ("username", "password", "db") if parsed.get(key) is not None}


def _sentinel_options(connection: dict[str, Any]) -> dict[str, Any]:
    connect_s = connection.get("socket_connect_timeout") or _SENTINEL_TIMEOUT_S
    read_s = connection.get("socket_timeout") or _SENTINEL_TIMEOUT_S
    return {"socket_connect_timeout": min(connect_s, _SENTINEL_TIMEOUT_S),
            "socket_timeout": min(read_s, _SENTINEL_TIMEOUT_S)}


def _sentinels(client: Any) -> Sequence[Any]:
    manager = getattr(client.connection_pool, "sentinel_manager", None)
    return list(manager.sentinels) if manager is not None else []
