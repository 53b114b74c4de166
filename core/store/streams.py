"""Leases of open event streams, per caller, in Redis (asyncio).

A caller's open streams are counted in Redis rather than in the API process:
several API processes may serve one caller, and a process that restarts
must not forget streams another still serves. Each open stream holds a
lease, a random token in the caller's sorted set (``Keys.streams``) scored
by when it expires (Redis clock). The stream renews it while it lives and
removes it when it ends; the lease of a stream whose API process died
lapses on its own, so a crash costs the caller a slot for one lease at most.
"""

from __future__ import annotations

import secrets
from typing import Any

from .errors import neutral_methods
from .keys import Keys

STREAM_LEASE_S = 30.0
"""How long a stream's lease lasts unless renewed (streams renew it every third of that)."""

# Drop the lapsed leases, count the rest, add one if under the cap: atomic, so
# concurrent requests on any number of API processes never pass the cap together.
# KEYS: the caller's leases. ARGV: token, cap, lease in ms. Returns 1 (leased) or 0.
_ACQUIRE = """
local key, token, cap, lease_ms = KEYS[1], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
if redis.call('ZCARD', key) >= cap then return 0 end
redis.call('ZADD', key, now + lease_ms, token)
redis.call('PEXPIRE', key, lease_ms)
return 1
"""

# Push a lease's expiry on. A lease that had lapsed (its stream stalled for a whole
# lease) is taken again: the stream is still open, so it counts.
# KEYS: the caller's leases. ARGV: token, lease in ms.
_RENEW = """
local key, token, lease_ms = KEYS[1], ARGV[1], tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', key, now + lease_ms, token)
redis.call('PEXPIRE', key, lease_ms)
return 1
"""


@neutral_methods
class StreamLeases:
    """Leases of open event streams, per caller.

    Args:
        client: A ``redis.asyncio.Redis`` created with ``decode_responses=True``.
        keys: Key names.
        lease_s: How long a lease lasts unless renewed.
    """

    def __init__(self, client: Any, keys: Keys, *, lease_s: float = STREAM_LEASE_S) -> None:
        if isinstance(lease_s, bool) or not isinstance(lease_s, (int, float)) or not 0 < lease_s < 3600:
            raise ValueError(f"lease_s must be a number of seconds in (0, 3600), got {lease_s!r}")
        self.client = client
        self.keys = keys
        self.lease_s = float(lease_s)
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)

    async def acquire(self, caller: str, *, limit: int) -> str | None:
        """A lease for a new stream of ``caller``: its token, or ``None`` if ``caller`` has ``limit`` open."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be a positive int, got {limit!r}")
        token = secrets.token_urlsafe(12)
        leased = await self._acquire(keys=[self.keys.streams(caller)], args=[token, limit, self._lease_ms])
        return token if leased else None

    async def renew(self, caller: str, token: str) -> None:
        await self._renew(keys=[self.keys.streams(caller)], args=[token, self._lease_ms])

    async def release(self, caller: str, token: str) -> None:
        await self.client.zrem(self.keys.streams(caller), token)

    @property
    def _lease_ms(self) -> int:
        return round(self.lease_s * 1000)
