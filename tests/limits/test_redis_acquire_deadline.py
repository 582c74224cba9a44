"""``acquire(timeout=T)`` of the Redis limiters when Redis is slow or silent (contract, Limits
hardening): the call ends by its deadline whatever Redis does, and an acquisition that cannot be
honoured by then is refused, not admitted late; when Redis gave no answer in time the error is
``LimiterUnavailable`` with redis-py's error as ``__cause__``.

Every test reaches the live Redis (AIOLEASE_REDIS_URL) through a ``FaultProxy`` of its own, on
the pipelined connection and on the public redis-py API (as under ``AIOLEASE_COMPAT=public``),
with keys under a prefix of its own, deleted on the way out.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as redis_asyncio
from _redis_factories import PUBLIC, REDIS_URL, compat_public, idle, through_proxy, unique_name
from redis.exceptions import RedisError

from aiolease import LimiterUnavailable, RateLimitExceeded
from aiolease.redis import RedisConcurrencyLimiter, RedisRateLimiter
from aiolease.testing import FaultProxy

pytestmark = [pytest.mark.redis, pytest.mark.slow, pytest.mark.timeout(60)]

PREFIX = "aiolease-deadline"


@contextlib.asynccontextmanager
async def proxied(redis_url: str) -> AsyncIterator[tuple[FaultProxy, redis_asyncio.Redis]]:
    """A client reaching the live Redis through a FaultProxy; this file's keys deleted after."""
    try:
        async with through_proxy(redis_url) as (proxy, client):
            yield proxy, client
    finally:
        async with redis_asyncio.Redis.from_url(REDIS_URL) as direct:
            found = [k async for k in direct.scan_iter(match=f"{PREFIX}:*", count=1000)]
            if found:
                await direct.delete(*found)


@PUBLIC
@pytest.mark.parametrize("kind", ["rate", "concurrency"])
async def test_no_answer_by_the_acquire_deadline_is_unavailable_caused_by_redis_pys_error(
    redis_url: str, public: bool, kind: str
) -> None:
    # call_timeout is longer than the acquire's timeout: the acquire's own deadline ends the
    # call. The rate limiter raised LimiterUnavailable caused by an error of its own (a bare
    # TimeoutError subclass), where the contract promises redis-py's error as the cause (as
    # the concurrency limiter gave).
    async with proxied(redis_url) as (proxy, client):
        lim: Any
        with compat_public(public):
            if kind == "rate":
                lim = RedisRateLimiter(client, unique_name(), 100, call_timeout=1.0, prefix=PREFIX)
            else:
                lim = RedisConcurrencyLimiter(
                    client, unique_name(), 2, call_timeout=1.0, prefix=PREFIX
                )
        try:
            first = await lim.acquire()  # connected and working
            if kind == "concurrency":
                await first.arelease()
            proxy.blackhole()
            for timeout in (0.0, 0.2):
                with pytest.raises(LimiterUnavailable) as info:
                    await lim.acquire(timeout=timeout)
                cause = info.value.__cause__
                assert isinstance(cause, RedisError), repr(cause)
                assert not isinstance(info.value, TimeoutError)
            proxy.heal()
        finally:
            await lim.aclose()


@PUBLIC
@pytest.mark.parametrize("together", [1, 3])
async def test_a_slot_reserved_past_the_deadline_by_a_slow_reply_is_refused_and_given_back(
    redis_url: str, public: bool, together: int
) -> None:
    # One admission a second, the burst used; then every byte takes 0.3 s each way. The script
    # reserves the next slot (about 0.7 s from when it runs, within the 1 s timeout), but its
    # reply comes 0.3 s later: sleeping the wait from there would end about 0.25 s past the
    # acquire's deadline. The limiter admitted late; it must refuse (the slot is more than
    # the timeout away, as the client sees it) and give the reservation back.
    async with proxied(redis_url) as (proxy, client):
        with compat_public(public):
            lim = RedisRateLimiter(
                client, unique_name(), 1, per=1.0, call_timeout=5.0, prefix=PREFIX
            )
        try:
            await lim.acquire()  # the burst: the next slot is a second away
            rkey = lim._rkey(None)
            before = await client.get(rkey)
            proxy.set_latency(0.3)
            # Several at once: each given back in turn (the later ones' reservations were
            # chained on the earlier ones: every one of them is refused). The public path sends
            # one call at a time: the later ones get no reply before their deadline at all.
            outcomes = await asyncio.gather(
                *(lim.acquire(timeout=1.0) for _ in range(together)), return_exceptions=True
            )
            assert isinstance(outcomes[0], RateLimitExceeded), outcomes
            assert outcomes[0].retry_after > 0
            on_the_pipe = lim._call._direct  # (AIOLEASE_COMPAT=public: never)
            late = RateLimitExceeded if on_the_pipe else (RateLimitExceeded, LimiterUnavailable)
            assert all(isinstance(o, late) for o in outcomes), outcomes
            stats = lim.statistics()
            assert (stats.admitted, stats.rejected, stats.waiting) == (1, together, 0)
            await idle(lim)
            proxy.heal()
            # Given back: no debt past the first admission's is left (the key holds the state
            # that admission left, or, its debt run out meanwhile, has expired).
            after = await client.get(rkey)
            if after is not None:
                assert after == before
        finally:
            proxy.heal()
            await lim.aclose()
