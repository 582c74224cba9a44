"""The contended acquire (the pool is full and tasks are queued): the inlined wait of a
pool with no lease hook, and its hand-over to the general path when the entry it gets
needs more. Both ways in (``await pool.acquire()`` and ``async with``) take it."""

from __future__ import annotations

import asyncio
import itertools
import time
from types import EllipsisType

import pytest
from pool_helpers import NO_HANG, now, settle, vrun

import aiolease
import aiolease.abc
from aiolease import (
    Pool,
    PoolClosed,
    PoolTimeout,
    ResourceInfo,
    TooManyWaiters,
)
from aiolease.testing import FakeManager, FakeResource, VirtualTimeLoop, leak_check

pytestmark = [pytest.mark.aiolease_virtual_time, NO_HANG]


class Res:
    """A hook-free resource: the pool leases it without calling into a manager."""

    ids = itertools.count(1)

    def __init__(self) -> None:
        self.id = next(self.ids)
        self.closed = 0

    def __repr__(self) -> str:
        return f"<Res {self.id}>"


def plain_pool(max_size: int = 1, **kwargs: float | None) -> tuple[Pool[Res], list[Res]]:
    made: list[Res] = []

    async def create() -> Res:
        r = Res()
        made.append(r)
        return r

    async def close(r: Res) -> None:
        r.closed += 1

    return Pool.from_callables(create, close, max_size=max_size, **kwargs), made


async def enter(pool: Pool[Res], how: str, timeout: float | EllipsisType | None = ...) -> Res:
    acq = pool.acquire(timeout=timeout)
    return await (acq if how == "await" else acq.__aenter__())


HOW = pytest.mark.parametrize("how", ["await", "async with"])


@HOW
async def test_queued_tasks_are_served_in_arrival_order(how: str) -> None:
    pool, made = plain_pool(max_size=2)
    await pool.open()
    held = [await pool.acquire(), await pool.acquire()]
    order: list[int] = []

    async def user(i: int) -> None:
        r = await enter(pool, how)
        order.append(i)
        await asyncio.sleep(0.5)
        await pool.release(r)

    tasks = []
    for i in range(8):
        tasks.append(asyncio.create_task(user(i)))
        await asyncio.sleep(0)
    assert pool.statistics().waiting == 8
    for r in held:
        await pool.release(r)
    await asyncio.gather(*tasks)
    assert order == list(range(8))
    st = pool.statistics()
    assert (st.size, st.idle, st.in_use, st.waiting, st.acquired) == (2, 2, 0, 0, 10)
    assert st.wait_time_max == pytest.approx(1.5)  # the last pair waited for the three before it
    await pool.aclose()
    assert [r.closed for r in made] == [1, 1]


async def test_a_waiter_served_before_its_deadline_leaves_the_later_ones_on_time() -> None:
    pool, _ = plain_pool()
    await pool.open()
    held = await pool.acquire()
    early = asyncio.create_task(enter(pool, "await", timeout=1.0))  # the earliest deadline
    late = asyncio.create_task(enter(pool, "await", timeout=3.0))
    await asyncio.sleep(0.5)
    await pool.release(held)
    assert await early is held  # served: the timer armed for it fires for nothing
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(PoolTimeout):
        await late
    assert loop.time() - start == pytest.approx(2.5)  # at its own deadline, no later
    assert pool.statistics().timeouts == 1
    await pool.release(held)
    assert pool._queue._timer is None
    await pool.aclose()


async def test_each_queued_task_keeps_its_own_deadline_as_others_leave() -> None:
    # The queue keeps each waiter's deadline beside it, in queue order: a wait that leaves
    # from the front (served), the middle (cancelled) or the back (timed out) takes its
    # own deadline along and leaves the others' in place.
    pool, _ = plain_pool()
    await pool.open()
    held = await pool.acquire()
    loop = asyncio.get_running_loop()
    start = loop.time()
    tasks = []
    for timeout in (None, 1.0, None, 2.0, None, 6.0):
        tasks.append(asyncio.create_task(enter(pool, "await", timeout=timeout)))
        await asyncio.sleep(0)
    a, b, c, d, e, f = tasks
    f.cancel()  # the back
    await asyncio.sleep(0.5)
    b.cancel()  # the middle
    await pool.release(held)
    assert await a is held  # the front
    with pytest.raises(asyncio.CancelledError):
        await b
    with pytest.raises(PoolTimeout):
        await d
    assert loop.time() - start == pytest.approx(2.0)
    await asyncio.sleep(10)
    assert not c.done()  # no deadline: they wait on
    assert not e.done()
    await pool.release(held)
    assert await c is held
    await pool.release(held)
    assert await e is held
    await pool.release(held)
    assert pool.statistics().timeouts == 1
    assert pool._queue._timer is None
    await pool.aclose()


async def test_waiters_time_out_in_deadline_order_whatever_their_queue_order() -> None:
    # Deadlines need not follow the queue: a later task may wait less. Each wait ends at
    # its own deadline, in deadline order, and the ones still queued keep their places.
    pool, _ = plain_pool()
    await pool.open()
    held = await pool.acquire()
    loop = asyncio.get_running_loop()
    start = loop.time()
    ended: list[tuple[float, float]] = []

    async def waiter(timeout: float) -> None:
        with pytest.raises(PoolTimeout):
            await enter(pool, "await", timeout=timeout)
        ended.append((timeout, loop.time() - start))

    timeouts = [6.0, 5.0, 1.5, 4.0, 2.0, 3.0]
    tasks = [asyncio.create_task(waiter(t)) for t in timeouts]
    await asyncio.gather(*tasks)
    assert [t for t, _ in ended] == sorted(timeouts)
    for timeout, at in ended:
        assert at == pytest.approx(timeout)
    assert pool.statistics().timeouts == len(timeouts)
    assert pool._queue._timer is None
    await pool.release(held)
    await pool.aclose()


async def test_waits_that_end_before_their_deadline_leave_the_rest_on_time() -> None:
    # Hundreds of timed waits that end early (cancelled anywhere in the queue, or served)
    # leave nothing behind that fires: the waits left time out at their own deadlines,
    # each counted once, and the queue's record of deadlines stays within its size.
    pool, _ = plain_pool()
    await pool.open()
    held = await pool.acquire()
    loop = asyncio.get_running_loop()
    start = loop.time()
    early = [asyncio.create_task(enter(pool, "await", timeout=t)) for t in (1.0, 2.0, 3.0)]
    await asyncio.sleep(0)
    gone = [asyncio.create_task(enter(pool, "await", timeout=0.5 + i / 100)) for i in range(400)]
    await asyncio.sleep(0.1)
    for task in gone[1::2] + gone[-2::-2]:  # every place in the queue, in a scattered order
        task.cancel()
    await asyncio.gather(*gone, return_exceptions=True)
    late = [asyncio.create_task(enter(pool, "await", timeout=t)) for t in (0.5, 4.0)]
    await asyncio.sleep(0)
    waiting = pool.statistics().waiting
    assert waiting == 5
    assert len(pool._waiters) <= 2 * waiting + 65  # the places the cancelled waits left
    assert len(pool._queue._heap) <= 2 * waiting + 65
    with pytest.raises(PoolTimeout):
        await late[0]
    assert loop.time() - start == pytest.approx(0.6)
    for i, task in enumerate(early, 1):
        with pytest.raises(PoolTimeout):
            await task
        assert loop.time() - start == pytest.approx(i)
    await pool.release(held)
    assert await late[1] is held  # served before its deadline
    await asyncio.sleep(5)
    assert pool.statistics().timeouts == 4
    assert pool._queue._timer is None
    await pool.release(held)
    await pool.aclose()


@HOW
async def test_a_queued_task_times_out_and_leaves_the_queue(how: str) -> None:
    pool, _ = plain_pool(acquire_timeout=3.0)
    await pool.open()
    held = await pool.acquire()
    first = asyncio.create_task(enter(pool, how, timeout=None))  # queued, no timeout
    await asyncio.sleep(0)
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(PoolTimeout):
        await enter(pool, how, timeout=1.5)  # behind `first`
    assert loop.time() - start == pytest.approx(1.5)
    with pytest.raises(PoolTimeout):
        await enter(pool, how)  # the pool's acquire_timeout
    assert loop.time() - start == pytest.approx(4.5)
    st = pool.statistics()
    assert (st.waiting, st.timeouts) == (1, 2)
    await pool.release(held)
    assert await first is held
    await pool.release(held)
    assert pool._queue._timer is None  # no timed wait left: the timer is disarmed
    await pool.aclose()


@HOW
async def test_a_cancelled_queued_task_passes_its_resource_on(how: str) -> None:
    pool, _ = plain_pool()
    await pool.open()
    held = await pool.acquire()
    first = asyncio.create_task(enter(pool, how))
    await asyncio.sleep(0)
    second = asyncio.create_task(enter(pool, how))
    await asyncio.sleep(0)
    await pool.release(held)  # handed to `first`...
    first.cancel()  # ...cancelled before it resumes
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await second is held
    st = pool.statistics()
    assert (st.in_use, st.waiting, st.idle) == (1, 0, 0)
    await pool.release(held)
    await pool.aclose()


@HOW
async def test_a_resource_handed_over_as_the_pool_closes_is_closed_not_lost(how: str) -> None:
    pool, made = plain_pool(max_size=2)
    await pool.open()
    a, b = await pool.acquire(), await pool.acquire()
    first = asyncio.create_task(enter(pool, how))
    await asyncio.sleep(0)
    second = asyncio.create_task(enter(pool, how))  # queued behind `first`
    await asyncio.sleep(0)
    assert pool.statistics().waiting == 2
    closing = asyncio.create_task(pool.aclose())  # starts before the waiters resume...
    await pool.release(a)  # ...from these hand-overs (no await in between)
    await pool.release(b)
    for waiter in (first, second):
        with pytest.raises(PoolClosed):
            await waiter
    await closing
    assert [r.closed for r in made] == [1, 1]


@HOW
async def test_a_queued_task_under_leak_check_is_tracked(how: str) -> None:
    async def second_in_line() -> Res:
        return await enter(pool, how)

    async with leak_check() as leaks:
        pool, _ = plain_pool()
        await pool.open()
        held = await pool.acquire()
        first = asyncio.create_task(enter(pool, how))
        await asyncio.sleep(0)
        second = asyncio.create_task(second_in_line())  # queued behind `first`
        await asyncio.sleep(0)
        await pool.release(held)
        await pool.release(await first)
        got = await second
        held_now = [p for p in leaks.leaks() if "is still checked out" in p]
        assert len(held_now) == 1  # the lease the queued task got is tracked...
        assert ", in second_in_line\n" in held_now[0]  # ...with the stack that acquired it
        await pool.release(got)
        await pool.aclose()
    await settle(pool)


async def test_a_resource_handed_over_carries_its_release_time_to_on_acquire() -> None:
    seen: list[float] = []

    class Manager(aiolease.abc.Manager[Res]):
        async def create(self) -> Res:
            return Res()

        def on_acquire(self, resource: Res, info: ResourceInfo) -> None:
            seen.append(info.last_used_at)

    pool = Pool(Manager(), max_size=1)
    await pool.open()
    loop = asyncio.get_running_loop()
    released_at: list[float] = []

    async def user(hold: float) -> None:
        async with pool.acquire():  # leaving it hands the resource to the next in line
            await asyncio.sleep(hold)
            released_at.append(loop.time())

    first = asyncio.create_task(user(5.0))
    await asyncio.sleep(0)
    await asyncio.gather(first, user(2.0), user(1.0))
    assert seen[1:] == [pytest.approx(t) for t in released_at[:2]]
    await pool.aclose()


async def test_waiting_counts_timed_and_untimed_waiters_alike() -> None:
    # Timed waits are counted by the deadline registry, untimed ones by a counter: the
    # statistic and the repr see both, from the moment a task queues until it stops waiting.
    pool, _ = plain_pool(acquire_timeout=10.0)
    await pool.open()
    held = await pool.acquire()

    async def acquire(timeout: float | EllipsisType | None) -> Res:
        return await pool.acquire(timeout=timeout)

    async def queue(timeout: float | EllipsisType | None) -> asyncio.Task[Res]:
        task = asyncio.create_task(acquire(timeout))
        await asyncio.sleep(0)
        return task

    default = await queue(...)  # the pool's 10 s
    untimed = await queue(None)
    short = await queue(1.0)
    cancelled = await queue(None)
    assert pool.statistics().waiting == 4
    assert "waiting=4" in repr(pool)
    cancelled.cancel()
    await asyncio.sleep(0)
    assert pool.statistics().waiting == 3
    with pytest.raises(PoolTimeout):
        await short
    assert pool.statistics().waiting == 2
    await pool.release(held)
    first = await default
    assert pool.statistics().waiting == 1
    await pool.release(first)
    await pool.release(await untimed)
    st = pool.statistics()
    assert (st.waiting, st.timeouts, st.in_use, st.idle) == (0, 1, 0, 1)
    assert "waiting=0" in repr(pool)
    await pool.aclose()


# -- merged from the former acceptance suite (tests/acceptance/test_contract_pools.py)


def test_size_counts_creations_in_flight() -> None:
    async def main() -> None:
        fm = FakeManager()
        gate = fm.block("create", calls=1)
        async with Pool(fm, max_size=1) as pool:
            t1 = asyncio.ensure_future(pool.acquire(timeout=None))
            await gate.wait_arrived()
            s = pool.statistics()
            assert (s.size, s.idle, s.in_use) == (1, 0, 0)
            t2 = asyncio.ensure_future(pool.acquire(timeout=None))
            await settle()
            assert fm.calls["create"] == 1  # max_size reached by the creation in flight
            gate.open()
            r1 = await t1
            await pool.release(r1)
            r2 = await t2
            assert r2 is r1
            await pool.release(r2)
            assert fm.max_alive == 1

    vrun(main)


def test_fifo_handoff_no_barging() -> None:
    async def main() -> None:
        async with Pool(FakeManager(), max_size=1) as pool:
            order: list[str] = []
            r = await pool.acquire()

            async def user(tag: str) -> None:
                async with pool.acquire(timeout=None):
                    order.append(tag)
                    await asyncio.sleep(1)

            tasks = []
            for tag in "ABC":
                tasks.append(asyncio.create_task(user(tag)))
                await settle()
            await pool.release(r)
            tasks.append(asyncio.create_task(user("late")))  # arrives after the hand-off
            await asyncio.gather(*tasks)
            assert order == ["A", "B", "C", "late"]

    vrun(main)


def test_fifo_with_check_failure_keeps_place() -> None:
    async def main() -> None:
        fm = FakeManager()
        async with Pool(fm, min_size=1, max_size=1) as pool:
            fm.fail("check", calls=1)
            order: list[str] = []

            async def user(tag: str) -> None:
                async with pool.acquire(timeout=None):
                    order.append(tag)
                    await asyncio.sleep(1)

            ta = asyncio.create_task(user("A"))
            tb = asyncio.create_task(user("B"))
            await asyncio.gather(ta, tb)
            assert order == ["A", "B"]

    vrun(main)


def test_max_waiting_raises_too_many_waiters() -> None:
    async def main() -> None:
        async with Pool(FakeManager(), max_size=1, max_waiting=1) as pool:
            r = await pool.acquire()
            w = asyncio.ensure_future(pool.acquire(timeout=None))
            await settle()
            with pytest.raises(TooManyWaiters):
                await pool.acquire(timeout=None)
            await pool.release(r)
            await pool.release(await w)

    vrun(main)


async def test_a_task_refused_by_max_waiting_never_times_out_later() -> None:
    # The refused task's wait never began: its deadline fires nothing (no timeout counted,
    # no error left unretrieved on a future nobody awaits).
    pool, _ = plain_pool(max_waiting=1)
    await pool.open()
    held = await pool.acquire()
    queued = asyncio.create_task(enter(pool, "await", timeout=5.0))
    await asyncio.sleep(0)
    with pytest.raises(TooManyWaiters):
        await enter(pool, "await", timeout=1.0)
    await asyncio.sleep(2.0)
    assert pool.statistics().timeouts == 0
    assert not queued.done()
    with pytest.raises(PoolTimeout):
        await queued
    assert pool.statistics().timeouts == 1
    await pool.release(held)
    await pool.aclose()


def test_max_waiting_zero_means_no_queueing() -> None:
    async def main() -> None:
        async with Pool(FakeManager(), max_size=1, max_waiting=0) as pool, pool.acquire():
            with pytest.raises(TooManyWaiters):
                await pool.acquire()

    vrun(main)


def test_timeout_raises_pool_timeout_on_loop_clock() -> None:
    async def main() -> None:
        async with Pool(FakeManager(), max_size=1, acquire_timeout=30) as pool:
            held = await pool.acquire()  # awaited: another task could release it
            t0 = now()
            with pytest.raises(PoolTimeout) as ei:
                await pool.acquire()
            assert now() == pytest.approx(t0 + 30)
            assert isinstance(ei.value, TimeoutError)
            t1 = now()
            with pytest.raises(TimeoutError):
                async with pool.acquire(timeout=2.5):
                    pass
            assert now() == pytest.approx(t1 + 2.5)
            await pool.release(held)
            assert pool.statistics().timeouts == 2
            assert pool.statistics().waiting == 0
            async with pool.acquire(timeout=0):
                pass

    started = time.monotonic()
    vrun(main)
    assert time.monotonic() - started < 10  # virtual, not real, seconds


def test_acquire_timeout_none_waits_forever() -> None:
    async def main() -> None:
        async with Pool(FakeManager(), max_size=1, acquire_timeout=None) as pool:
            r = await pool.acquire()
            w = asyncio.ensure_future(pool.acquire())
            await asyncio.sleep(10_000)
            assert not w.done()
            await pool.release(r)
            await pool.release(await w)

    vrun(main)


def test_slow_create_times_out_and_capacity_is_kept() -> None:
    async def main() -> None:
        fm = FakeManager()
        fm.delay("create", 10, calls=1)
        async with Pool(fm, max_size=1) as pool:
            with pytest.raises(PoolTimeout):
                await pool.acquire(timeout=1)
            await asyncio.sleep(20)  # the creation completes, into idle
            s = pool.statistics()
            assert (s.size, s.idle) == (1, 1)
            async with pool.acquire(timeout=0):
                pass

    vrun(main)


def test_timeout_during_check_closes_resource() -> None:
    async def main() -> None:
        fm = FakeManager()
        async with Pool(fm, min_size=1, max_size=1) as pool:
            fm.delay("check", 100, calls=1)
            first = fm.resources[0]
            with pytest.raises(PoolTimeout):
                await pool.acquire(timeout=1)
            await settle()
            assert first.closed
            async with pool.acquire(timeout=1) as r:
                assert r is not first
            assert pool.statistics().size == 1

    vrun(main)


def test_virtual_time_loop_runs_an_hour_instantly() -> None:
    async def main() -> float:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await asyncio.sleep(3600)
        async with asyncio.timeout(10):
            await asyncio.sleep(5)
        return loop.time() - t0

    started = time.monotonic()
    assert vrun(main) == pytest.approx(3605)
    assert time.monotonic() - started < 1.0


@pytest.mark.aiolease_virtual_time
async def test_virtual_time_from_pytest_marker() -> None:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, VirtualTimeLoop)
    async with Pool(FakeManager(), max_size=1) as pool:
        held = await pool.acquire()
        t0 = loop.time()
        with pytest.raises(PoolTimeout):
            await pool.acquire(timeout=600)
        assert loop.time() == pytest.approx(t0 + 600)
        await pool.release(held)


def test_acquire_timeout_none_overrides_pool_default() -> None:
    async def main() -> None:
        async with Pool(FakeManager(), max_size=1, acquire_timeout=1) as pool:
            r = await pool.acquire()
            w = asyncio.ensure_future(pool.acquire(timeout=None))
            await asyncio.sleep(100)
            assert not w.done()
            await pool.release(r)
            await pool.release(await w)

    vrun(main)


def test_released_resource_goes_to_oldest_waiter_even_if_it_awaits_a_creation() -> None:
    async def main() -> None:
        fm = FakeManager()
        async with Pool(fm, max_size=2) as pool:
            r1 = await pool.acquire()
            gate = fm.block("create", calls=2)
            order: list[str] = []
            held: list[FakeResource] = []

            async def user(tag: str) -> None:
                r = await pool.acquire(timeout=None)
                order.append(tag)
                held.append(r)

            a = asyncio.ensure_future(user("A"))
            await gate.wait_arrived()  # A waits (for the creation it started)
            await pool.release(r1)  # handed to the oldest waiter: A
            c = asyncio.ensure_future(user("C"))  # a newcomer must not barge ahead of A
            await settle()
            gate.open()
            await asyncio.gather(a, c)
            for r in held:
                await pool.release(r)
            assert order == ["A", "C"]

    vrun(main)
