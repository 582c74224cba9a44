"""The Redis limiters under an ``asyncio.timeout()`` whose deadline fires after each number
of event-loop steps (cancelling.deadline_at_each_step), on the pipelined connection and on
the public redis-py API (as under ``AIOLEASE_COMPAT=public``): the caller gets TimeoutError
or the permit, never a swallowed or replaced cancellation, ``cancelling()`` is back to 0,
an enclosing timeout still works, and nothing stays held, queued or reserved, here or in
Redis.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as redis_asyncio
from _redis_factories import PUBLIC, compat_public, delete_keys, idle, unique_name

from aiolease.redis import RedisConcurrencyLimiter, RedisRateLimiter
from cancelling import Deadline, deadline_at_each_step

pytestmark = pytest.mark.timeout(180)


@PUBLIC
@pytest.mark.parametrize("contended", [False, True], ids=["free", "contended"])
async def test_redis_concurrency_limiter_under_a_deadline_at_each_step(
    redis_url: str, public: bool, contended: bool
) -> None:
    """``async with limiter.acquire()`` (a slot taken and given back); contended: the one slot
    is held by an acquisition released a few steps after the scenario starts."""
    client = redis_asyncio.Redis.from_url(redis_url)
    name = unique_name("dl-conc")
    with compat_public(public):
        limiter = RedisConcurrencyLimiter(client, name, 1)
    holders: list[Any] = []
    releases: list[asyncio.Task[None]] = []

    async def before(k: int) -> None:
        if contended:
            holders[:] = [await limiter.acquire()]

    async def release_after_steps(permit: Any, steps: int) -> None:
        for _ in range(steps):
            await asyncio.sleep(0)
        await permit.arelease()

    async def scenario() -> str:
        for holder in holders:
            releases.append(asyncio.create_task(release_after_steps(holder, 3)))
        async with limiter.acquire(timeout=10):
            await asyncio.sleep(0)
        return "done"

    async def check(run: Deadline) -> None:
        await asyncio.gather(*releases)
        releases.clear()
        await idle(limiter)
        s = limiter.statistics()
        assert (s.in_use, s.waiting) == (0, 0), (run, s)
        held, queue = limiter._keys(None)[:2]
        assert (await client.zcard(held), await client.zcard(queue)) == (0, 0), run

    try:
        covered = await deadline_at_each_step(scenario, check, max_steps=3000, before=before)
        assert len(covered) > 1
    finally:
        await limiter.aclose()
        await delete_keys(client, name)
        await client.aclose()


def tat(state: bytes | str | None) -> int:
    """The ``tat`` of a rate limiter state (microseconds; see aiolease.redis._scripts); 0
    for no state."""
    return 0 if state is None else int(state.split()[1])


@pytest.mark.slow  # real-time waits for each admission
@PUBLIC
async def test_redis_rate_limiter_under_a_deadline_at_each_step(
    redis_url: str, public: bool
) -> None:
    """An acquisition that must wait for the next admission (the burst used just before):
    a caller that timed out was given back (counted cancelled, not admitted), and left no
    debt in Redis: the key's ``tat`` is where it was, or (that debt run out meanwhile) not
    past the server's clock."""
    client = redis_asyncio.Redis.from_url(redis_url)
    name = unique_name("dl-rate")
    with compat_public(public):
        limiter = RedisRateLimiter(client, name, 1000, burst=1)  # one admission each 1 ms
    befores: list[tuple[int, int, int]] = []

    def key(k: int) -> str:
        return f"k{k}"

    async def before(k: int) -> None:
        await limiter.acquire(key=key(k))  # the burst is used: the next one must wait
        s = limiter.statistics()
        befores[:] = [(tat(await client.get(limiter._rkey(key(k)))), s.admitted, s.cancelled)]

    async def check(run: Deadline) -> None:
        await idle(limiter)
        s = limiter.statistics()
        tat_before, admitted, cancelled = befores[0]
        assert s.waiting == 0, (run, s)
        expected = (admitted, cancelled + 1) if run.timed_out else (admitted + 1, cancelled)
        assert (s.admitted, s.cancelled) == expected, (run, s)
        if run.timed_out:
            seconds, micros = await client.time()
            now = seconds * 1_000_000 + micros
            after = tat(await client.get(limiter._rkey(key(run.k))))
            assert after <= max(tat_before, now), (run, tat_before, after, now)

    try:
        k = 0

        async def scenario() -> str:
            await limiter.acquire(key=key(k))
            return "admitted"

        async def numbered(n: int) -> None:
            nonlocal k
            k = n
            await before(n)

        covered = await deadline_at_each_step(scenario, check, max_steps=5000, before=numbered)
        assert len(covered) > 1
    finally:
        await limiter.aclose()
        await delete_keys(client, name)
        await client.aclose()
