"""Strict FIFO hand-off (no barging) and max_waiting back-pressure."""

from __future__ import annotations

import asyncio

import pytest
from pool_helpers import (
    NO_HANG,
    NoResetFakeManager,
    assert_closed_cleanly,
    assert_consistent,
    settle,
    start_acquire,
)
from pool_shapes import WITH_HOOKS

from aiolease import Pool, TooManyWaiters, WouldBlock
from aiolease.testing import FakeManager, FakeResource

pytestmark = [pytest.mark.aiolease_virtual_time, NO_HANG]


async def test_waiters_served_in_arrival_order() -> None:
    fm = FakeManager()
    pool = Pool(fm, max_size=1)
    await pool.open()
    order: list[int] = []

    async def user(i: int) -> None:
        async with pool.acquire() as r:
            order.append(i)
            await r.use()
            await asyncio.sleep(1.0)

    tasks = []
    for i in range(6):
        tasks.append(asyncio.create_task(user(i)))
        await asyncio.sleep(0)  # arrival order is creation order
    await asyncio.gather(*tasks)
    assert order == list(range(6))
    assert fm.created == 1
    await pool.aclose()
    assert_closed_cleanly(pool, fm)


@pytest.mark.parametrize("manager", [FakeManager, NoResetFakeManager])
async def test_newcomer_does_not_barge_past_queued_waiter(manager: type[FakeManager]) -> None:
    """A task arriving right as a resource is released queues behind the oldest waiter,
    whether the release hands over synchronously or after an awaited reset."""
    fm = manager()
    pool = Pool(fm, max_size=1)
    await pool.open()
    held = await pool.acquire()
    order: list[str] = []

    async def user(name: str) -> None:
        async with pool.acquire() as r:
            order.append(name)
            await r.use()

    waiter = asyncio.create_task(user("waiter"))
    await asyncio.sleep(0)
    releasing = asyncio.create_task(pool.release(held))
    newcomer = asyncio.create_task(user("newcomer"))  # arrives during the release
    await asyncio.sleep(0)
    with pytest.raises(WouldBlock):
        pool.acquire_nowait()  # not even acquire_nowait can take it
    await asyncio.gather(releasing, waiter, newcomer)
    assert order == ["waiter", "newcomer"]
    assert_consistent(pool, fm)
    await pool.aclose()
    assert_closed_cleanly(pool, fm)


async def test_synchronous_hand_off_leaves_nothing_idle_for_newcomers() -> None:
    fm = NoResetFakeManager()
    pool = Pool(fm, max_size=1)
    await pool.open()
    held = await pool.acquire()
    waiter = start_acquire(pool)
    await asyncio.sleep(0)
    await pool.release(held)  # handed to the waiter before it even resumes
    assert pool.statistics().idle == 0
    with pytest.raises(WouldBlock):
        pool.acquire_nowait()
    newcomer = start_acquire(pool)
    assert await waiter is held
    await asyncio.sleep(0)
    assert not newcomer.done()
    await pool.release(held)
    assert await newcomer is held
    await pool.release(held)
    await pool.aclose()
    assert_closed_cleanly(pool, fm)


async def test_freed_slot_goes_to_oldest_waiter() -> None:
    fm = FakeManager()
    pool = Pool(fm, max_size=1)
    await pool.open()
    held = await pool.acquire()
    first = start_acquire(pool)
    await asyncio.sleep(0)
    second = start_acquire(pool)
    await asyncio.sleep(0)
    await pool.release(held, discard=True)  # frees a slot: a creation for `first`
    r = await first
    assert r.id == 2
    await asyncio.sleep(0)
    assert not second.done()
    await pool.release(r)
    assert await second is r
    await pool.release(r)
    await pool.aclose()
    assert_closed_cleanly(pool, fm)


async def test_a_faster_creation_serves_the_oldest_waiter() -> None:
    """Two waiters, each with a creation started for it; the later one's finishes first:
    the resource goes to the oldest waiter, and the later waiter takes over the creation
    still in flight (it was served first, after waiting less)."""
    fm = FakeManager()
    fm.delay("create", 3.0, calls=1)
    fm.delay("create", 0.5, calls=2)
    pool = Pool(fm, max_size=2)
    await pool.open()
    loop = asyncio.get_running_loop()
    served: list[tuple[str, float]] = []

    async def user(name: str) -> FakeResource:
        r = await pool.acquire()
        served.append((name, loop.time()))
        return r

    first = asyncio.create_task(user("first"))
    await asyncio.sleep(0)
    second = asyncio.create_task(user("second"))
    got = await asyncio.gather(first, second)
    assert served == [("first", 0.5), ("second", 3.0)]
    for r in got:
        await pool.release(r)
    await pool.aclose()
    assert_closed_cleanly(pool, fm)


@pytest.mark.pool_shapes(*WITH_HOOKS)
async def test_acquirer_whose_resource_failed_its_check_keeps_its_turn() -> None:
    """A's idle resource fails its check while B queues behind A: the slot the
    discard frees goes to A, not to B."""
    fm = FakeManager()
    fm.delay("close", 1.0)
    pool = Pool(fm, max_size=2)
    await pool.open()
    held = await pool.acquire()
    bad = await pool.acquire()
    await pool.release(bad)  # idle
    gate = fm.block("check", calls=1)
    fm.fail("check", calls=1)
    order: list[str] = []

    async def user(name: str) -> None:
        async with pool.acquire() as r:
            order.append(name)
            await r.use()

    a = asyncio.create_task(user("A"))
    await gate.wait_arrived()  # A is checking `bad`
    b = asyncio.create_task(user("B"))
    await asyncio.sleep(0)
    gate.open()
    await asyncio.gather(a, b)
    assert order == ["A", "B"]  # A was served by the freed slot; B by what A released
    assert fm.created == 3
    assert bad.closed
    await pool.release(held)
    await pool.aclose()
    assert_closed_cleanly(pool, fm)


async def test_fifo_with_many_waiters_and_resources() -> None:
    fm = FakeManager()
    fm.delay("reset", 0.5)
    pool = Pool(fm, min_size=3, max_size=3)
    await pool.open()
    order: list[int] = []

    async def user(i: int) -> None:
        async with pool.acquire() as r:
            order.append(i)
            await asyncio.sleep(2.0)
            await r.use()

    tasks = []
    for i in range(12):
        tasks.append(asyncio.create_task(user(i)))
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert order == list(range(12))
    assert fm.max_alive <= 3
    await pool.aclose()
    assert_closed_cleanly(pool, fm)


async def test_max_waiting_raises_too_many_waiters() -> None:
    fm = FakeManager()
    pool = Pool(fm, max_size=1, max_waiting=2)
    await pool.open()
    held = await pool.acquire()
    w1 = start_acquire(pool)
    w2 = start_acquire(pool)
    await asyncio.sleep(0)
    with pytest.raises(TooManyWaiters, match="max_waiting=2"):
        await pool.acquire()
    w1.cancel()
    with pytest.raises(asyncio.CancelledError):
        await w1
    w3 = start_acquire(pool)  # room again
    await asyncio.sleep(0)
    assert pool.statistics().waiting == 2
    await pool.release(held)
    r = await w2
    await pool.release(r)
    r = await w3
    await pool.release(r)
    assert_consistent(pool, fm)
    await pool.aclose()
    assert_closed_cleanly(pool, fm)


async def test_max_waiting_zero_never_queues_but_still_serves() -> None:
    fm = FakeManager()
    pool = Pool(fm, max_size=1, max_waiting=0)
    async with pool:
        async with pool.acquire() as r:
            await r.use()
            with pytest.raises(TooManyWaiters):
                await pool.acquire()
        async with pool.acquire():  # free again: no queueing needed
            pass
        await settle(pool)
        assert_consistent(pool, fm)
    assert_closed_cleanly(pool, fm)


async def test_too_many_waiters_leaves_pool_consistent() -> None:
    fm = FakeManager()
    pool = Pool(fm, max_size=2, max_waiting=1)
    await pool.open()
    held = [await pool.acquire(), await pool.acquire()]
    waiter = start_acquire(pool)
    await asyncio.sleep(0)
    for _ in range(5):
        with pytest.raises(TooManyWaiters):
            await pool.acquire()
    st = pool.statistics()
    assert (st.waiting, st.size, st.in_use) == (1, 2, 2)
    for r in held:
        await pool.release(r)
    got: FakeResource = await waiter
    await pool.release(got)
    assert_consistent(pool, fm)
    await pool.aclose()
    assert_closed_cleanly(pool, fm)
