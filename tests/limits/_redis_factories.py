"""The Redis limiters as implementations of the limiter contract suites, and Redis test helpers.

Each limiter gets a unique name (so tests never share Redis state) and every key it created is
deleted when its ``make`` block exits. The live server is AIOLEASE_REDIS_URL (the ``redis_url``
fixture applies the project's skip-or-fail policy first).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis.asyncio as redis_asyncio
from limits_helpers import Impl

from aiolease._compat import redis as _compat_redis
from aiolease.redis import RedisConcurrencyLimiter, RedisRateLimiter
from aiolease.testing import FaultProxy

REDIS_URL = os.environ.get("AIOLEASE_REDIS_URL", "redis://127.0.0.1:6379/0")

#: Slack for timing assertions on real time: a round trip plus a loaded CI machine's jitter.
TOL = 0.08


def unique_name(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def delete_keys(client: redis_asyncio.Redis, name: str) -> int:
    """Delete every key of limiter ``name`` (all kinds and keys); returns how many existed."""
    found = [k async for k in client.scan_iter(match=f"aiolease:*{{{name}*", count=1000)]
    if found:
        await client.delete(*found)
    return len(found)


@contextlib.asynccontextmanager
async def redis_client(url: str = REDIS_URL, **kw: Any) -> AsyncIterator[redis_asyncio.Redis]:
    client = redis_asyncio.Redis.from_url(url, **kw)
    try:
        yield client
    finally:
        await client.aclose()


async def disconnected_under_calls(
    client: redis_asyncio.Redis, acquire: Callable[[], Awaitable[Any]], steps: int, how: str
) -> list[Any]:
    """The outcomes (results or exceptions) of three concurrent ``acquire()`` calls when
    redis-py disconnects ``client``'s connections after ``steps`` loop steps: its pool's
    ``disconnect()`` (``how="pool-disconnect"``) or the client's ``aclose()``, which the client
    survives (it reconnects on its next call)."""
    calls = [asyncio.ensure_future(acquire()) for _ in range(3)]
    for _ in range(steps):
        await asyncio.sleep(0)
    if how == "pool-disconnect":
        await client.connection_pool.disconnect()
    else:
        await client.aclose()
    return await asyncio.gather(*calls, return_exceptions=True)


@contextlib.asynccontextmanager
async def through_proxy(
    url: str = REDIS_URL,
) -> AsyncIterator[tuple[FaultProxy, redis_asyncio.Redis]]:
    """A client of ``url`` that reaches it through a FaultProxy (to delay or cut its traffic)."""
    parts = urlsplit(url)
    async with FaultProxy(parts.hostname or "127.0.0.1", parts.port or 6379) as proxy:
        host, port = proxy.address
        async with redis_client(f"redis://{host}:{port}{parts.path}") as client:
            yield proxy, client


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float = 2.0) -> None:
    """Poll ``check`` every 5 ms until it is true; fail after ``seconds``."""
    for _ in range(int(seconds / 0.005)):
        if await check():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"not reached within {seconds}s")


@contextlib.contextmanager
def compat_public(public: bool) -> Iterator[None]:
    """Build limiters as under ``AIOLEASE_COMPAT=public`` (no private redis-py names)."""
    saved = _compat_redis.PIPE, _compat_redis.WALK
    _compat_redis.PIPE = saved[0] and not public
    _compat_redis.WALK = saved[1] and not public
    try:
        yield
    finally:
        _compat_redis.PIPE, _compat_redis.WALK = saved


@contextlib.asynccontextmanager
async def _redis_rate(
    rate: float, per: float = 1.0, *, public: bool = False, **kw: Any
) -> AsyncIterator[RedisRateLimiter]:
    async with redis_client() as client:
        name = unique_name("rate")
        with compat_public(public):
            limiter = RedisRateLimiter(client, name, rate, per, **kw)
        assert limiter._call._direct is (_compat_redis.PIPE and not public)
        try:
            yield limiter
            await limiter.aclose()
            assert limiter._aiolease_leaks() == [], limiter._aiolease_leaks()
        finally:
            await limiter.aclose()
            await delete_keys(client, name)


@contextlib.asynccontextmanager
async def _redis_concurrency(
    limit: int, *, public: bool = False, **kw: Any
) -> AsyncIterator[RedisConcurrencyLimiter]:
    async with redis_client() as client:
        name = unique_name("conc")
        with compat_public(public):
            limiter = RedisConcurrencyLimiter(client, name, limit, **kw)
        try:
            yield limiter
            await limiter.aclose()
            assert limiter._aiolease_leaks() == [], limiter._aiolease_leaks()
        finally:
            await limiter.aclose()
            await delete_keys(client, name)


_MARKS = [pytest.mark.redis, pytest.mark.slow]

# "redis": the pipelined connection (aiolease._compat.redis); "redis-public": the public
# redis-py API only, as under AIOLEASE_COMPAT=public (another code path for every call).
REDIS_RATE_IMPLS: list[Any] = [
    pytest.param(
        Impl(
            ident,
            functools.partial(_redis_rate, public=public),
            None,
            tol=TOL,
            requires=("redis_url",),
            supports=frozenset({"refund_any_waiter"}),
        ),
        id=ident,
        marks=_MARKS,
    )
    for ident, public in (("redis", False), ("redis-public", True))
]
REDIS_CONCURRENCY_IMPLS: list[Any] = [
    pytest.param(
        Impl(
            ident,
            functools.partial(_redis_concurrency, public=public),
            None,
            tol=TOL,
            requires=("redis_url",),
        ),
        id=ident,
        marks=_MARKS,
    )
    for ident, public in (("redis", False), ("redis-public", True))
]


#: Each variant: the pipe, and the public path (``AIOLEASE_COMPAT=public``).
PUBLIC = pytest.mark.parametrize("public", [False, True], ids=["pipe", "public"])


async def idle(lim: Any) -> None:
    """The limiter's background calls (a give-back) and the replies still to come are done."""
    for _ in range(2000):
        if not (lim._bg.tasks or lim._call._pending or lim._call._calls):
            return
        await asyncio.sleep(0.002)
    raise AssertionError("background calls did not finish")
