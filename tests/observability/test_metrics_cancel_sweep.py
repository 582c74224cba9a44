"""The state instruments after cancellations at every step, timeouts and closes.

A caller cancelled at any await of ``pool.acquire()`` (a creation, a check, a reset
in flight, a wait in the queue), an acquire that times out, a pool closed with
waiters: once the pool is quiet, ``db.client.connection.pending_requests`` is 0,
``count`` by state is what the pool holds, and ``timeouts`` what its statistics
say. The same for the limiters: ``queued_requests`` and ``active_leases`` back to
0, and every request that ran counted once in ``requests``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from metrics_helpers import Collected, instrumented

from aiolease import ConcurrencyLimiter, LimitGroup, Pool, RateLimiter
from aiolease.testing import FakeManager
from cancelling import cancel_after_steps

pytestmark = pytest.mark.timeout(120)

POOL = "db.client.connection.pool.name"
STATE = "db.client.connection.state"
LIMITER = "aiolease.limiter.name"
RESULTS = ("acquired", "rejected", "timeout", "canceled")


def pool_state(reader: Any, name: str) -> dict[str, int]:
    got = Collected(reader)
    count = got["db.client.connection.count"]
    return {
        "idle": count.value(**{POOL: name, STATE: "idle"}),
        "used": count.value(**{POOL: name, STATE: "used"}),
        "pending": got["db.client.connection.pending_requests"].value(**{POOL: name}),
        "timeouts": got["db.client.connection.timeouts"].value(**{POOL: name}),
    }


def limiter_state(reader: Any, name: str) -> tuple[int, int | None, int]:
    """(queued_requests, active_leases or None, the requests of every result)."""
    got = Collected(reader)
    queued = got["aiolease.limiter.queued_requests"].value(**{LIMITER: name})
    leases = got["aiolease.limiter.active_leases"]
    held = leases.value(**{LIMITER: name}) if leases.has(**{LIMITER: name}) else None
    requests = got["aiolease.limiter.requests"]
    total = sum(requests.value(**{LIMITER: name, "aiolease.limiter.result": r}) for r in RESULTS)
    return queued, held, total


async def lease(pool: Pool[Any], hold: float) -> None:
    async with pool.acquire():
        await asyncio.sleep(hold)


async def acquire_local(limiter: ConcurrencyLimiter | RateLimiter | LimitGroup) -> None:
    permit = await limiter.acquire(timeout=1.0)
    release = getattr(permit, "release", None)  # a rate limiter's admission holds nothing
    if isinstance(limiter, ConcurrencyLimiter | LimitGroup) and release is not None:
        release()


async def release_after(permit: Any, delay: float) -> None:
    await asyncio.sleep(delay)
    await permit.arelease()


async def hold_slot(limiter: Any, timeout: float | None) -> None:
    async with limiter.acquire(timeout=timeout):
        await asyncio.sleep(0.01)


async def cancel_at(coro: Any, delay: float, steps: int) -> None:
    """Run ``coro`` in a task and cancel it ``steps`` loop steps after ``delay`` seconds
    (virtual time: each moment of the scenario is reached exactly). A cancellation that
    reached the task ends it cancelled."""
    task = asyncio.ensure_future(coro)
    await asyncio.sleep(delay)
    for _ in range(steps):
        await asyncio.sleep(0)
    cancelled = task.cancel()
    try:
        await task
    except (Exception, asyncio.CancelledError):
        pass
    if cancelled:
        assert task.cancelled(), (delay, steps)


@pytest.mark.aiolease_virtual_time
@pytest.mark.parametrize("variant", ["wait", "timeout", "close"])
async def test_pool_state_after_a_cancel_at_every_step(variant: str) -> None:
    for at in range(80):
        delay, steps = divmod(at, 4)  # every 2 ms of the scenario, 0 to 3 steps in
        fm = FakeManager()
        for op in ("create", "check", "reset"):
            fm.delay(op, 0.01)  # an await in each hook, to be cancelled at
        name = f"sweep-{variant}-{at}"
        timeout = 0.025 if variant == "timeout" else None
        with instrumented() as reader:
            pool = Pool(fm, max_size=2, name=name, acquire_timeout=timeout)
            await pool.open()

            others = [asyncio.ensure_future(lease(pool, 0.02)) for _ in range(3)]
            await cancel_at(lease(pool, 0.03), delay * 0.002, steps)
            await asyncio.gather(*others, return_exceptions=True)
            if variant == "close":  # waiters still queued when the pool closes
                late = [asyncio.ensure_future(lease(pool, 0.5)) for _ in range(4)]
                await asyncio.sleep(0.005)
                await pool.aclose(timeout=0.1)
                await asyncio.gather(*late, return_exceptions=True)
            await asyncio.sleep(0.1)  # closes and resets in flight end
            s = pool.statistics()
            assert pool_state(reader, name) == {
                "idle": s.idle,
                "used": 0,
                "pending": 0,
                "timeouts": s.timeouts,
            }, at
            assert (s.waiting, s.in_use) == (0, 0), at
            if variant != "close":
                assert s.idle == len(fm.open_resources) == s.size, at
            await pool.aclose()
            fm.assert_all_closed()


async def test_a_waiter_cancelled_in_the_step_it_is_handed_a_connection() -> None:
    """The release hands the connection to the oldest waiter, which is cancelled before
    it runs: the connection goes on to the next waiter, and nothing stays pending or
    counted as used."""

    async def create() -> object:
        return object()

    name = "handed-cancelled"
    with instrumented() as reader:
        # No reset: the release hands the connection over before it returns.
        async with Pool.from_callables(create, max_size=1, name=name) as pool:
            held = await pool.acquire()
            first = asyncio.ensure_future(pool.acquire())
            second = asyncio.ensure_future(pool.acquire())
            await asyncio.sleep(0.01)
            assert pool_state(reader, name)["pending"] == 2
            await pool.release(held)  # handed to `first` in this step...
            assert not first.done()
            first.cancel()  # ...which is cancelled before it runs
            async with asyncio.timeout(5):
                with pytest.raises(asyncio.CancelledError):
                    await first
                handle = await second
            assert pool_state(reader, name) == {"idle": 0, "used": 1, "pending": 0, "timeouts": 0}
            await pool.release(handle)
            assert pool_state(reader, name) == {"idle": 1, "used": 0, "pending": 0, "timeouts": 0}


@pytest.mark.aiolease_virtual_time
@pytest.mark.parametrize("kind", ["concurrency", "rate"])
async def test_local_limiter_state_after_a_cancel_at_every_step(kind: str) -> None:
    """(A LimitGroup's members: test_group_member_state_after_a_cancel_at_every_step.)"""
    for steps in range(12):
        name = f"sweep-{kind}-{steps}"
        with instrumented() as reader:
            limiter: Any = (
                ConcurrencyLimiter(1, name=name)
                if kind == "concurrency"
                else RateLimiter(20, burst=1, name=name)  # one admission each 50 ms
            )
            first = await limiter.acquire()
            release = getattr(first, "release", None)
            if release is not None:
                asyncio.get_running_loop().call_later(0.01, release)

            await cancel_after_steps(acquire_local(limiter), steps)
            await acquire_local(limiter)
            await asyncio.sleep(0.2)
            queued, held, total = limiter_state(reader, name)
            s = limiter.statistics()
            assert queued == s.waiting == 0, steps
            assert held == (0 if kind == "concurrency" else None), steps
            assert total == 2 + (steps > 0), (steps, s)  # a task cancelled unstarted: no request


@pytest.mark.redis
@pytest.mark.parametrize("timeout", [None, 0.05])
async def test_redis_concurrency_limiter_state_after_a_cancel_at_every_step(
    redis_url: str, timeout: float | None
) -> None:
    """Cancelled in a Redis round trip, in the step after its reply, in the queue: the
    limiter's queue and leases come back to 0 here and in Redis, each request counted
    once."""
    import uuid

    import redis.asyncio as redis_asyncio

    from aiolease.redis import RedisConcurrencyLimiter

    client = redis_asyncio.Redis.from_url(redis_url)
    prefix = f"sweep-{uuid.uuid4().hex[:8]}"
    try:
        for steps in range(1, 25):
            name = f"{prefix}-{steps}"
            with instrumented() as reader:
                limiter = RedisConcurrencyLimiter(client, name, 1)
                try:
                    holder = await limiter.acquire()

                    releasing = asyncio.ensure_future(release_after(holder, 0.02))
                    await cancel_after_steps(hold_slot(limiter, timeout), steps)
                    await releasing
                    async with limiter.acquire(timeout=5.0):
                        pass
                    for _ in range(200):  # the withdrawals and releases in the background
                        if not limiter._bg.tasks:
                            break
                        await asyncio.sleep(0.01)
                    queued, held, total = limiter_state(reader, name)
                    s = limiter.statistics()
                    assert (queued, held, s.waiting, s.in_use) == (0, 0, 0, 0), steps
                    assert total == 3, (steps, s)
                    holders, queue = limiter._keys(None)[:2]
                    assert (await client.zcard(holders), await client.zcard(queue)) == (0, 0)
                finally:
                    await limiter.aclose()
    finally:
        keys = [k async for k in client.scan_iter(match=f"*{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


@pytest.mark.aiolease_virtual_time
async def test_group_member_state_after_a_cancel_at_every_step() -> None:
    """A LimitGroup of a rate and a concurrency limit: a waiter in both queues at once,
    cancelled at every step of its wait (before, at and after the step that admits it):
    each member's queue and leases come back to 0, each request counted once by each."""
    for steps in range(12):
        rate_name, conc_name = f"sweep-grate-{steps}", f"sweep-gconc-{steps}"
        with instrumented() as reader:
            rate = RateLimiter(20, burst=1, name=rate_name)  # one admission each 50 ms
            conc = ConcurrencyLimiter(1, name=conc_name)
            group = LimitGroup(rate, conc)
            first = await group.acquire()
            asyncio.get_running_loop().call_later(0.01, first.release)

            await cancel_after_steps(acquire_local(group), steps)
            await acquire_local(group)
            await asyncio.sleep(0.2)
            for limiter, name, leases in ((rate, rate_name, None), (conc, conc_name, 0)):
                queued, held, total = limiter_state(reader, name)
                s = limiter.statistics()
                assert queued == s.waiting == 0, (steps, name)
                assert held == leases, (steps, name)
                assert total == 2 + (steps > 0), (steps, name, s)
