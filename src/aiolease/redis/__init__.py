"""Distributed rate and concurrency limits on Redis (extra: ``pip install aiolease[redis]``).

:class:`RedisRateLimiter` and :class:`RedisConcurrencyLimiter` have the interfaces of
:class:`aiolease.RateLimiter` and :class:`aiolease.ConcurrencyLimiter`, shared by every process that
uses the same Redis and limiter ``name``. Pass a ``redis.asyncio.Redis`` client (or a
``redis.asyncio.RedisCluster``); the limiters never close it. ``await limiter.aclose()`` ends a
limiter's background work (its pipelined connection, renewals, hand-off listener).

Differences forced by the network (each is one round trip): ``acquire_nowait`` is a coroutine;
``pause`` returns a task (await it to be sure it is applied); ``permit.settle`` / ``permit.release``
schedule their Redis call (``await permit.asettle(...)`` / ``await permit.arelease()`` wait for it).
When Redis is unreachable the limiters raise :class:`aiolease.LimiterUnavailable` (or answer by
``on_error`` / ``fallback``). See docs/redis.md.
"""

from __future__ import annotations

try:
    import redis.asyncio as _redis_asyncio  # noqa: F401
except ImportError as _exc:  # pragma: no cover - exercised without the extra installed
    raise ImportError(
        "aiolease.redis needs the redis-py client: pip install 'aiolease[redis]'"
    ) from _exc

from ._concurrency import RedisConcurrencyLimiter as RedisConcurrencyLimiter
from ._concurrency import RedisConcurrencyLimiterStatistics as RedisConcurrencyLimiterStatistics
from ._concurrency import RedisConcurrencyPermit as RedisConcurrencyPermit
from ._keys import redis_key as redis_key
from ._rate import RedisRateLimiter as RedisRateLimiter
from ._rate import RedisRateLimiterStatistics as RedisRateLimiterStatistics
from ._rate import RedisRatePermit as RedisRatePermit

__all__ = [
    "RedisConcurrencyLimiter",
    "RedisConcurrencyLimiterStatistics",
    "RedisConcurrencyPermit",
    "RedisRateLimiter",
    "RedisRateLimiterStatistics",
    "RedisRatePermit",
    "redis_key",
]
