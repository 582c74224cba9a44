"""Pool lifecycle: open, acquire/release forms, aclose, statistics, repr, warnings."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import re
import warnings

import pytest
from pool_helpers import (
    NO_HANG,
    Res,
    assert_closed_cleanly,
    assert_consistent,
    checked_out_then_idle,
    closed,
    now,
    settle,
    start_acquire,
    vrun,
)

import aiolease
import aiolease.abc
from aiolease import (
    Pool,
    PoolClosed,
    PoolStatistics,
    ResourceInfo,
    WouldBlock,
)
from aiolease.testing import FakeManager, FakeResource, leak_check

pytestmark = [pytest.mark.aiolease_virtual_time, NO_HANG]


async def test_async_with_acquire_release() -> None:
    fm = FakeManager()
    async with Pool(fm, max_size=2) as pool:
        async with pool.acquire() as r:
            assert isinstance(r, FakeResource)
            assert r in fm.leased
            await r.use()
            assert pool.statistics().in_use == 1
        assert r not in fm.leased
        assert_consistent(pool, fm)
        assert pool.statistics().idle == 1
    assert_closed_cleanly(pool, fm)


async def test_await_acquire_and_release() -> None:
    fm = FakeManager()
    async with Pool(fm, max_size=2) as pool:
        r = await pool.acquire()
        assert r in fm.leased
        await pool.release(r)
        assert r not in fm.leased
        with pytest.raises(ValueError, match="not checked out"):
            await pool.release(r)
        assert_consistent(pool, fm)
    assert_closed_cleanly(pool, fm)


async def test_acquire_accepted_by_ensure_future() -> None:
    fm = FakeManager()
    async with Pool(fm, max_size=1) as pool:
        fut = asyncio.ensure_future(pool.acquire())
        r = await fut
        assert isinstance(r, FakeResource)
        assert r.lease is not None
        await pool.release(r)
    assert_closed_cleanly(pool, fm)


@pytest.mark.parametrize("max_lifetime", [None, 1000.0])
async def test_idle_resources_go_least_recently_used_first(max_lifetime: float | None) -> None:
    fm = FakeManager()
    async with Pool(fm, max_size=3, max_lifetime=max_lifetime) as pool:
        a, b, c = await checked_out_then_idle(pool, 3)
        async with pool.acquire() as r:
            assert r is a  # released first: unused the longest
        assert pool.acquire_nowait() is b  # the same order without waiting
        await pool.release(b)
        got = [await pool.acquire() for _ in range(3)]
        assert got == [c, a, b]  # round and round: every resource gets used
        for r in got:
            await pool.release(r)
        assert fm.created == 3


async def test_check_needed_asked_of_the_resource_handed_out() -> None:
    asked: list[FakeResource] = []

    class Manager(FakeManager):
        async def check(self, resource: FakeResource, info: ResourceInfo) -> None:
            raise AssertionError("check_needed() said no check is needed")

        def check_needed(self, resource: FakeResource, info: ResourceInfo) -> bool:
            asked.append(resource)
            return False

    async with Pool(Manager(), max_size=2) as pool:
        a, _ = await checked_out_then_idle(pool, 2)
        asked.clear()
        async with pool.acquire() as r:
            assert r is a
        assert asked == [a]


async def test_with_idle_timeout_most_recently_used_goes_first() -> None:
    # So that under a light load the surplus goes unused and idle_timeout can trim it.
    fm = FakeManager()
    async with Pool(fm, max_size=3, idle_timeout=1000.0) as pool:
        a, b, c = await checked_out_then_idle(pool, 3)
        async with pool.acquire() as r:
            assert r is c
        assert pool.acquire_nowait() is c
        await pool.release(c)
        got = [await pool.acquire() for _ in range(3)]
        assert got == [c, b, a]
        for r in got:
            await pool.release(r)
        assert fm.created == 3


async def test_acquire_on_never_opened_pool_opens_it() -> None:
    fm = FakeManager()
    pool = Pool(fm, min_size=2, max_size=3)
    assert fm.calls["create"] == 0  # nothing happens in __init__
    r = await pool.acquire()
    assert fm.created == 2  # opened: min_size prefilled, one of them handed out
    assert pool.statistics().size == 2
    await pool.release(r)
    await pool.aclose()
    assert_closed_cleanly(pool, fm)


async def test_async_with_acquire_on_never_opened_pool() -> None:
    fm = FakeManager()
    pool = Pool(fm, max_size=1)
    async with pool.acquire() as r:
        await r.use()
    await pool.aclose()
    assert_closed_cleanly(pool, fm)


async def test_open_prefills_min_size() -> None:
    fm = FakeManager()
    fm.delay("create", 1.0)
    pool = Pool(fm, min_size=3, max_size=5)
    await pool.open()
    assert pool.statistics().idle == 3  # open() waits for the first min_size resources
    await pool.open()  # idempotent
    assert fm.created == 3
    await pool.aclose()
    assert_closed_cleanly(pool, fm)


async def test_open_nowait_fills_in_background() -> None:
    fm = FakeManager()
    fm.delay("create", 1.0)
    pool = Pool(fm, min_size=2, max_size=5)
    await pool.open(wait=False)
    assert pool.statistics().idle == 0
    assert pool.statistics().size == 2  # creations in flight count
    await settle(pool)
    assert pool.statistics().idle == 2
    await pool.aclose()
    assert_closed_cleanly(pool, fm)


async def test_statistics_size_counts_checks_and_resets_in_flight() -> None:
    # size = idle + in_use + creations, checks, resets and closes in flight.
    fm = FakeManager()
    fm.delay("reset", 1.0)
    fm.delay("check", 1.0)
    pool = Pool(fm, max_size=2)
    await pool.open()
    r = await pool.acquire()
    releasing = asyncio.create_task(pool.release(r))
    await asyncio.sleep(0.5)
    st = pool.statistics()
    assert (st.size, st.idle, st.in_use) == (1, 0, 0), st  # a reset in flight
    await releasing
    acquiring = asyncio.ensure_future(pool.acquire())
    await asyncio.sleep(0.5)
    st = pool.statistics()
    assert (st.size, st.idle, st.in_use) == (1, 0, 0), st  # a check in flight
    await pool.release(await acquiring)
    await pool.aclose()


async def test_open_prefill_is_not_counted_as_waiting_tasks() -> None:
    # open() waits for its min_size creations; no task is queued for a resource then
    # (statistics().waiting, repr and the pending-requests metric read it).
    fm = FakeManager()
    fm.delay("create", 1.0)
    pool = Pool(fm, min_size=3, max_size=4)
    opening = asyncio.create_task(pool.open())
    await asyncio.sleep(0.5)
    st = pool.statistics()
    assert (st.size, st.waiting) == (3, 0), st
    assert "waiting=0" in repr(pool)
    waiter = asyncio.ensure_future(pool.acquire())  # a real waiter is counted
    await asyncio.sleep(0.1)
    assert pool.statistics().waiting == 1
    await opening
    await pool.release(await waiter)
    assert pool.statistics().waiting == 0
    await pool.aclose()


@pytest.mark.parametrize("max_size", [3, 5])
async def test_acquire_during_open_prefill_gets_the_first_resource_ready(max_size: int) -> None:
    # Tasks that queue while open() fills min_size are served, oldest first, by the
    # creations as each ends: not all at once when the slowest of the prefill ends.
    fm = FakeManager()
    fm.delay("create", 1.0, calls=1)
    fm.delay("create", 2.0, calls=2)
    fm.delay("create", 9.0, calls=[3, 4, 5])
    pool = Pool(fm, min_size=3, max_size=max_size)
    opening = asyncio.create_task(pool.open())
    await asyncio.sleep(0.5)
    got: list[tuple[int, float]] = []

    async def use(i: int) -> None:
        async with pool.acquire() as r:
            got.append((i, now()))
            await r.use()
            await asyncio.sleep(5.0)

    first, second = asyncio.create_task(use(1)), asyncio.create_task(use(2))
    await asyncio.sleep(0)
    await first
    await second
    assert [i for i, _ in got] == [1, 2]
    assert [at for _, at in got] == pytest.approx([1.0, 2.0])
    assert not opening.done()
    await opening
    assert fm.created == 3  # the waiters adopted the prefill's creations, as any fill's
    await pool.aclose()
    assert_closed_cleanly(pool, fm)


async def test_acquire_cancelled_during_open_prefill_loses_nothing() -> None:
    fm = FakeManager()
    gate = fm.block("create", calls=1)
    fm.delay("create", 2.0, calls=[2, 3])
    pool = Pool(fm, min_size=3, max_size=3)
    opening = asyncio.create_task(pool.open())
    await gate.wait_arrived()
    waiters = [start_acquire(pool) for _ in range(2)]
    await asyncio.sleep(0.5)
    assert pool.statistics().waiting == 2
    waiters[0].cancel()
    gate.open()  # its resource goes to the waiter left
    r = await waiters[1]
    assert now() == pytest.approx(0.5)
    with pytest.raises(asyncio.CancelledError):
        await waiters[0]
    assert pool.statistics().waiting == 0
    await pool.release(r)
    await opening
    st = pool.statistics()
    assert (st.size, st.idle, st.in_use, st.waiting) == (3, 3, 0, 0), st
    assert fm.created == 3
    await pool.aclose()
    assert_closed_cleanly(pool, fm)


async def test_prefill_failure_with_a_waiter_still_fails_open() -> None:
    fm = FakeManager()
    fm.delay("create", 1.0, calls=1)
    fm.delay("create", 3.0, calls=2)
    fm.fail("create", ConnectionError, calls=2)
    pool = Pool(fm, min_size=2, max_size=2)
    opening = asyncio.create_task(pool.open())
    await asyncio.sleep(0.5)
    waiter = start_acquire(pool)
    r = await waiter  # the prefill's first resource, before open() gives up
    assert now() == pytest.approx(1.0)
    await pool.release(r)
    with pytest.raises(ConnectionError, match="call #2"):
        await opening
    assert pool.closed
    assert_closed_cleanly(pool, fm)


async def test_a_waiter_that_adopted_a_failing_prefill_creation_gets_its_error() -> None:
    # A task queued while the pool opens, with no room for a creation of its own, takes
    # over one of the prefill's (as it would any fill): that attempt's error is its own.
    fm = FakeManager()
    fm.delay("create", 1.0)
    fm.fail("create", ConnectionError, calls=1)
    pool = Pool(fm, min_size=1, max_size=1)
    opening = asyncio.create_task(pool.open())
    await asyncio.sleep(0.5)
    waiter = start_acquire(pool)
    with pytest.raises(ConnectionError, match="call #1"):
        await waiter
    assert now() == pytest.approx(1.0)
    with pytest.raises(ConnectionError, match="call #1"):
        await opening
    assert pool.closed
    assert_closed_cleanly(pool, fm)


async def test_open_failure_closes_pool_and_raises() -> None:
    fm = FakeManager()
    fm.fail("create", ConnectionError, calls=2)
    pool = Pool(fm, min_size=3, max_size=5)
    with pytest.raises(ConnectionError, match="call #2"):
        await pool.open()
    assert pool.closed
    assert_closed_cleanly(pool, fm)
    with pytest.raises(PoolClosed):
        await pool.open()


async def test_acquire_after_close_raises_pool_closed() -> None:
    fm = FakeManager()
    pool = Pool(fm, max_size=1)
    async with pool:
        pass
    with pytest.raises(PoolClosed):
        await pool.acquire()
    with pytest.raises(PoolClosed):
        async with pool.acquire():
            pass
    with pytest.raises(WouldBlock):
        pool.acquire_nowait()
    with pytest.raises(PoolClosed):
        await pool.open()
    await pool.aclose()  # idempotent


async def test_aclose_never_opened_pool() -> None:
    fm = FakeManager()
    pool = Pool(fm, min_size=1)
    await pool.aclose()
    assert pool.closed
    assert fm.calls["create"] == 0
    with pytest.raises(PoolClosed):
        await pool.acquire()


async def test_waiters_woken_with_pool_closed() -> None:
    fm = FakeManager()
    pool = Pool(fm, max_size=1)
    await pool.open()
    held = await pool.acquire()
    waiters = [start_acquire(pool) for _ in range(3)]
    await asyncio.sleep(0)
    assert pool.statistics().waiting == 3
    closing = asyncio.create_task(pool.aclose())
    for w in waiters:
        with pytest.raises(PoolClosed):
            await w
    assert not closing.done()  # still waiting for the checked-out resource
    assert held.close_calls == 0
    await pool.release(held)  # closed on release, after close
    assert held.close_calls == 1
    await closing
    assert_closed_cleanly(pool, fm)


async def test_in_use_resource_closed_when_released_after_close() -> None:
    fm = FakeManager()
    pool = Pool(fm, max_size=2)
    await pool.open()
    async with pool.acquire() as a:
        b = await pool.acquire()
        closing = asyncio.create_task(pool.aclose())
        await asyncio.sleep(0)
        await a.use()  # still usable while checked out
        await pool.release(b)
        assert b.closed  # release returned after the close it caused
        assert not closing.done()
    assert a.closed
    await closing
    assert_closed_cleanly(pool, fm)


async def test_aclose_timeout_closes_checked_out_resources(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fm = FakeManager()
    pool = Pool(fm, max_size=2)
    await pool.open()
    r = await pool.acquire()
    loop = asyncio.get_running_loop()
    start = loop.time()
    await pool.aclose(timeout=5.0)
    assert loop.time() - start == pytest.approx(5.0)
    assert r.closed
    stats = pool.statistics()
    # Closed in its holder's hands: no longer counted in use, so idle + in_use == size.
    assert (stats.size, stats.idle, stats.in_use) == (0, 0, 0), stats
    assert "in_use=0" in repr(pool)
    assert "still checked out" in caplog.text
    await pool.release(r)  # the late release is harmless
    with pytest.raises(ValueError, match="not checked out"):
        await pool.release(r)  # once only, as for any lease
    assert pool.statistics().in_use == 0
    fm.assert_all_closed()


async def test_aclose_timeout_late_release_through_async_with() -> None:
    fm = FakeManager()
    pool = Pool(fm, max_size=1)
    await pool.open()
    entered = asyncio.Event()
    leave = asyncio.Event()

    async def holder() -> None:
        async with pool.acquire() as r:
            entered.set()
            await leave.wait()
            assert r.closed  # closed by aclose meanwhile

    task = asyncio.create_task(holder())
    await entered.wait()
    await pool.aclose(timeout=1.0)
    assert pool.statistics().in_use == 0
    leave.set()
    await task  # leaving the block raises nothing
    assert_closed_cleanly(pool, fm)


async def test_leak_check_reports_a_resource_closed_by_aclose_timeout_until_released() -> None:
    fm = FakeManager()
    pool = Pool(fm, max_size=1)
    await pool.open()
    r = await pool.acquire()
    await pool.aclose(timeout=0.5)
    assert any("still checked out" in p for p in pool._aiolease_leaks())
    await pool.release(r)
    assert pool._aiolease_leaks() == []


async def test_aclose_timeout_returns_early_when_released() -> None:
    fm = FakeManager()
    pool = Pool(fm, max_size=2)
    await pool.open()
    r = await pool.acquire()
    loop = asyncio.get_running_loop()

    async def give_back() -> None:
        await asyncio.sleep(1.0)
        await pool.release(r)

    giver = asyncio.create_task(give_back())
    start = loop.time()
    await pool.aclose(timeout=10.0)
    assert loop.time() - start == pytest.approx(1.0)
    await giver
    assert_closed_cleanly(pool, fm)


async def test_aclose_waits_for_inflight_closes_and_is_idempotent_concurrently() -> None:
    fm = FakeManager()
    fm.delay("close", 2.0)
    pool = Pool(fm, min_size=2, max_size=2)
    await pool.open()
    loop = asyncio.get_running_loop()
    start = loop.time()
    first = asyncio.create_task(pool.aclose())
    second = asyncio.create_task(pool.aclose())
    await asyncio.gather(first, second)
    assert loop.time() - start == pytest.approx(2.0)
    assert_closed_cleanly(pool, fm)


async def test_acquire_nowait() -> None:
    fm = FakeManager()
    fm.fail("check")  # acquire_nowait never checks
    pool = Pool(fm, max_size=2)
    with pytest.raises(WouldBlock, match="not open"):
        pool.acquire_nowait()
    await pool.open()
    with pytest.raises(WouldBlock, match="no idle"):
        pool.acquire_nowait()
    fm.clear_rules()
    r = await pool.acquire()
    await pool.release(r)
    fm.fail("check")
    r2 = pool.acquire_nowait()
    assert r2 is r
    assert r2.lease is not None
    assert fm.calls["check"] == 0
    with pytest.raises(WouldBlock):
        pool.acquire_nowait()
    await pool.release(r2)
    await pool.aclose()
    assert_closed_cleanly(pool, fm)


async def test_unclosed_pool_warns_resource_warning() -> None:
    fm = FakeManager()
    pool = Pool(fm, max_size=1, name="forgotten")
    await pool.open()
    pattern = r"unclosed .*forgotten.*test_pool_lifecycle\.py"
    with pytest.warns(ResourceWarning, match=pattern):  # noqa: PT031  # the del must be inside
        del pool
        gc.collect()


async def test_closed_or_never_opened_pool_does_not_warn() -> None:
    fm = FakeManager()
    pool = Pool(fm)
    del pool
    pool2 = Pool(fm)
    await pool2.open()
    await pool2.aclose()
    del pool2
    gc.collect()  # filterwarnings=error: a ResourceWarning would fail the test


async def test_repr_is_readable() -> None:
    fm = FakeManager()
    pool = Pool(fm, max_size=4, name="db")
    assert repr(pool) == "<aiolease.Pool 'db' new size=0/4 idle=0 in_use=0 waiting=0>"
    async with pool, pool.acquire():
        assert repr(pool) == "<aiolease.Pool 'db' open size=1/4 idle=0 in_use=1 waiting=0>"
    assert re.fullmatch(r"<aiolease\.Pool 'db' closed size=0/4 .*>", repr(pool))
    # Unnamed: a generated name, unique in the process (logs tell pools apart by it).
    first, second = repr(Pool(fm)), repr(Pool(fm))
    assert re.fullmatch(r"<aiolease\.Pool 'pool-\d+' new size=0/10 .*>", first)
    assert first.split()[1] != second.split()[1]


async def test_statistics_fields() -> None:
    fm = FakeManager()
    pool = Pool(fm, min_size=1, max_size=2, acquire_timeout=3.0)
    st = pool.statistics()
    assert isinstance(st, PoolStatistics)
    assert (st.size, st.idle, st.in_use, st.waiting, st.min_size, st.max_size) == (0, 0, 0, 0, 1, 2)
    with pytest.raises(AttributeError):
        st.size = 3  # type: ignore[misc]  # frozen
    loop = asyncio.get_running_loop()
    async with pool:
        a = await pool.acquire()
        b = await pool.acquire()

        async def give_back() -> None:
            await asyncio.sleep(2.0)
            await pool.release(a)

        giver = asyncio.create_task(give_back())
        start = loop.time()
        c = await pool.acquire()  # waits 2 s
        assert loop.time() - start == pytest.approx(2.0)
        await giver
        with pytest.raises(aiolease.PoolTimeout):
            await pool.acquire()  # 3 s then timeout
        st = pool.statistics()
        assert st.size == 2
        assert st.in_use == 2
        assert st.idle == 0
        assert st.waiting == 0
        assert st.acquired == 3
        assert st.created == 2
        assert st.closed == 0
        assert st.timeouts == 1
        assert st.wait_time_total == pytest.approx(2.0)
        assert st.wait_time_max == pytest.approx(2.0)
        assert st.leaks == 0
        waiter = start_acquire(pool)
        await asyncio.sleep(0)
        assert pool.statistics().waiting == 1
        await pool.release(b, discard=True)
        await pool.release(await waiter)
        await pool.release(c)
        assert pool.statistics().discarded == 1
    st = pool.statistics()
    assert st.closed == st.created == 3
    assert st.size == 0


async def test_from_callables_async_create_sync_close() -> None:
    closed: list[int] = []
    counter = iter(range(100))

    async def create() -> int:
        await asyncio.sleep(0)
        return 1000 + next(counter)

    pool = Pool.from_callables(create, closed.append, max_size=2)
    async with pool, pool.acquire() as a, pool.acquire() as b:
        assert (a, b) == (1000, 1001)
    assert sorted(closed) == [1000, 1001]


async def test_from_callables_async_close_and_no_close() -> None:
    closed: list[object] = []

    async def create() -> object:
        return object()

    async def close(resource: object) -> None:
        await asyncio.sleep(0.5)
        closed.append(resource)

    pool = Pool.from_callables(create, close, min_size=1, max_size=1)
    async with pool, pool.acquire() as r:
        pass
    assert closed == [r]

    pool2 = Pool.from_callables(create)
    async with pool2, pool2.acquire():
        pass


async def test_create_returning_an_object_already_held_is_an_error() -> None:
    """Resources are told apart by identity: a manager handing out the same object twice
    would make one release free two leases. The second creation fails instead."""
    token = object()
    closed: list[object] = []

    async def create() -> object:
        return token

    pool = Pool.from_callables(create, closed.append, max_size=3)
    async with pool:
        async with pool.acquire() as r:
            assert r is token
            with pytest.raises(ValueError, match="distinct object"):
                await pool.acquire()
            assert pool.statistics().size == 1  # the failed creation freed its slot
        async with pool.acquire() as again:  # back idle: reused, not re-created
            assert again is token
    assert closed == [token]
    assert pool.statistics().size == 0


def test_from_callables_rejects_non_callables() -> None:
    with pytest.raises(TypeError, match="create"):
        Pool.from_callables(42)  # type: ignore[arg-type]

    async def create() -> int:
        return 1

    with pytest.raises(TypeError, match="close"):
        Pool.from_callables(create, close=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_size"):
        Pool.from_callables(create, max_size=0)


async def test_manager_lease_hooks_see_every_lease() -> None:
    fm = FakeManager()
    async with Pool(fm, max_size=1) as pool:
        for _ in range(3):
            async with pool.acquire() as r:
                await r.use()
    kinds = [e.kind for e in fm.events if e.kind in ("acquired", "released")]
    assert kinds == ["acquired", "released"] * 3
    assert fm.leases == 3


async def test_aclose_while_open_waits_for_prefill() -> None:
    fm = FakeManager()
    gate = fm.block("create")
    pool = Pool(fm, min_size=2, max_size=2)
    opening = asyncio.create_task(pool.open())
    await gate.wait_arrived(2)
    await pool.aclose()  # interrupts the prefill
    with pytest.raises(PoolClosed):
        await opening
    assert_closed_cleanly(pool, fm)


async def test_leak_check_names_open_pool_and_checked_out_resource() -> None:

    fm = FakeManager()
    pools: list[Pool[FakeResource]] = []
    held: list[FakeResource] = []

    async def leaky() -> None:
        async with leak_check():
            pool = Pool(fm, max_size=1, name="forgotten-db")
            pools.append(pool)
            await pool.open()
            held.append(await pool.acquire())

    with pytest.raises(AssertionError) as info:
        await leaky()
    report = str(info.value)
    assert "forgotten-db" in report
    assert "left open" in report
    assert "still checked out" in report
    assert "leaky" in report  # where it was acquired
    await pools[0].release(held[0])
    await pools[0].aclose()
    async with leak_check(), Pool(fm, max_size=1) as clean, clean.acquire():  # clean: passes
        pass


async def test_a_parametrised_pool_class_constructs_and_works() -> None:
    # Pool has __slots__: typing's Pool[T](...) cannot set __orig_class__ on the instance
    # and must still hand back a working pool.
    fm = FakeManager()
    pool = Pool[FakeResource](fm, max_size=1)
    async with pool, pool.acquire() as r:
        assert isinstance(r, FakeResource)
    assert_closed_cleanly(pool, fm)


def test_a_pool_takes_no_undeclared_attribute() -> None:
    # The slots are the pool's whole state: a typo'd attribute fails loudly instead of
    # silently creating a second, unread one.
    pool = Pool(FakeManager())
    with pytest.raises(AttributeError):
        pool._sise = 3  # type: ignore[attr-defined]


async def test_acquire_object_reusable_and_exit_without_enter_is_an_error() -> None:
    fm = FakeManager()
    async with Pool(fm, max_size=1) as pool:
        acq = pool.acquire()
        with pytest.raises(RuntimeError, match="not entered"):
            await acq.__aexit__(None, None, None)
        async with acq as first:
            pass
        async with acq as second:  # the same object, entered again
            assert second is first
        with pytest.raises(RuntimeError, match="or twice"):
            await acq.__aexit__(None, None, None)  # left twice
        stats = pool.statistics()
        assert (stats.in_use, stats.idle, stats.acquired) == (0, 1, 2), stats
    assert_closed_cleanly(pool, fm)


# -- merged from the former acceptance suite (tests/acceptance/test_contract_pools.py)


def test_constructed_outside_loop_then_used_in_asyncio_run() -> None:
    fm = FakeManager()
    pool = Pool(fm, min_size=2, max_size=3)  # no running loop here: must not fail or bind
    assert fm.calls["create"] == 0

    async def main() -> None:
        async with pool:
            assert pool.statistics().idle == 2
            async with pool.acquire() as r:
                assert isinstance(r, FakeResource)

    asyncio.run(main())
    fm.assert_all_closed()


def test_constructed_in_one_loop_used_in_another() -> None:
    fm = FakeManager()

    async def make() -> Pool[FakeResource]:
        return Pool(fm, max_size=2)

    pool = asyncio.run(make())

    async def use() -> None:
        async with pool, pool.acquire():
            pass

    asyncio.run(use())
    assert fm.created == fm.closed == 1


def test_opened_in_one_loop_is_refused_in_another_and_stays_consistent() -> None:
    """A pool opened on one event loop (a test's, or an asyncio.run that ended) and used
    on another: every call says so at once, and the pool loses nothing (before, a release
    spawned its reset on the other loop and lost the slot, and aclose() closed nothing)."""
    fm = FakeManager()
    pool = Pool(fm, max_size=2)
    home = asyncio.Runner()

    async def first() -> FakeResource:
        await pool.open()
        async with pool.acquire(), pool.acquire():
            pass
        return await pool.acquire()  # still held; the other one idle

    async def second() -> None:
        on_another = "opened on another event loop"
        with pytest.raises(RuntimeError, match=on_another):
            async with pool.acquire(timeout=1):
                pass  # pragma: no cover
        with pytest.raises(RuntimeError, match=on_another):
            await pool.acquire(timeout=1)
        with pytest.raises(RuntimeError, match=on_another):
            pool.acquire_nowait()
        with pytest.raises(RuntimeError, match=on_another):
            await pool.release(held)
        with pytest.raises(RuntimeError, match=on_another):
            await pool.resize(max_size=1)
        with pytest.raises(RuntimeError, match=on_another):
            await pool.expire()
        with pytest.raises(RuntimeError, match=on_another):
            await pool.aclose()
        with pytest.raises(RuntimeError, match=on_another):
            await pool.open()  # (it returned as if this loop were the pool's)
        with pytest.raises(RuntimeError, match=on_another):
            async with pool:
                pass  # pragma: no cover

    async def back_home() -> None:
        await pool.open()  # open already, on this loop: nothing to do
        st = pool.statistics()
        assert (st.size, st.idle, st.in_use, st.waiting) == (2, 1, 1, 0), st
        await pool.release(held)
        await pool.aclose()

    with home:
        held = home.run(first())
        asyncio.run(second())
        home.run(back_home())
    assert_closed_cleanly(pool, fm)


def test_loop_shutdown_cancelling_creations_is_no_failed_attempt(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """asyncio.run() ending with a pool left open cancels its creations in flight, as it
    cancels every task: the tasks end cancelled (not swallowed), and nothing is logged or
    counted as a failed attempt (the manager did not fail: before, a WARNING said its
    create() "raised CancelledError on an open pool")."""
    fm = FakeManager()
    fm.delay("create", 60.0)
    creations: list[asyncio.Task[object]] = []

    async def main() -> Pool[FakeResource]:
        pool = Pool(fm, min_size=2, max_size=2, name="left-open")
        await pool.open(wait=False)
        creations.extend(pool._tasks)
        await asyncio.sleep(0)  # they are in create()
        return pool

    caplog.set_level("WARNING", logger="aiolease.pool")
    pool = asyncio.run(main())
    assert len(creations) == 2
    assert all(t.cancelled() for t in creations), creations
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    st = pool.statistics()
    assert (st.size, st.create_errors, st.created) == (0, 0, 0), st
    assert fm.creating == 0
    creations.clear()  # (their frames refer to the pool, and so do the errors fm recorded)
    fm.events.clear()
    with pytest.warns(ResourceWarning, match="left-open"):  # noqa: PT031  # the del inside
        del pool
        gc.collect()


def test_async_with_prefills_min_size_and_closes_everything() -> None:
    async def main() -> None:
        fm = FakeManager()
        async with Pool(fm, min_size=3, max_size=5) as pool:
            s = pool.statistics()
            assert (s.size, s.idle, s.in_use, s.min_size, s.max_size) == (3, 3, 0, 3, 5)
        assert fm.created == 3
        fm.assert_all_closed()
        assert pool.statistics().size == 0

    vrun(main)


def test_acquire_cm_on_never_opened_pool_opens_it() -> None:
    async def main() -> None:
        fm = FakeManager()
        pool = Pool(fm, min_size=1, max_size=2)
        async with pool.acquire() as r:
            assert isinstance(r, FakeResource)
        assert pool.statistics().size >= 1
        await pool.aclose()
        fm.assert_all_closed()

    vrun(main)


def test_open_explicitly_then_aclose() -> None:
    async def main() -> None:
        fm = FakeManager()
        pool = Pool(fm, min_size=1)
        await pool.open()
        assert pool.statistics().idle == 1
        await pool.aclose()
        await pool.aclose()  # idempotent
        fm.assert_all_closed()
        with pytest.raises(PoolClosed):
            await pool.open()

    vrun(main)


def test_acquire_is_awaitable_and_accepted_by_ensure_future() -> None:
    async def main() -> None:
        async with Pool(FakeManager(), max_size=2) as pool:
            fut = asyncio.ensure_future(pool.acquire())
            r = await fut
            assert isinstance(r, FakeResource)
            assert pool.statistics().in_use == 1
            await pool.release(r)
            assert pool.statistics().in_use == 0
            task = asyncio.ensure_future(pool.acquire(timeout=1))
            r2 = await task
            await pool.release(r2)

    vrun(main)


def test_unclosed_pool_emits_resource_warning_when_collected() -> None:
    fm = FakeManager()

    async def main() -> None:
        pool = Pool(fm, min_size=1)
        await pool.open()
        # dropped without aclose()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asyncio.run(main())
        gc.collect()
    assert any(issubclass(w.category, ResourceWarning) for w in caught), caught


def test_closed_pool_does_not_warn() -> None:
    async def main() -> None:
        async with Pool(FakeManager(), min_size=1):
            pass

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asyncio.run(main())
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


def test_statistics_fields_and_frozen() -> None:
    async def main() -> None:
        async with Pool(FakeManager(), min_size=1, max_size=3) as pool, pool.acquire():
            s = pool.statistics()
        fields = {f.name for f in dataclasses.fields(s)}
        names = "size idle in_use waiting min_size max_size acquired created closed timeouts"
        for name in [*names.split(), "wait_time_total", "wait_time_max", "leaks"]:
            assert name in fields, name
        assert (s.size, s.idle, s.in_use, s.waiting, s.acquired, s.created) == (1, 0, 1, 0, 1, 1)
        with pytest.raises(dataclasses.FrozenInstanceError):
            s.size = 7  # type: ignore[misc]
        final = pool.statistics()
        assert (final.closed, final.size) == (1, 0)

    vrun(main)


def test_resource_info_fields() -> None:
    infos: list[tuple[float, float, int]] = []

    class M(aiolease.abc.Manager[Res]):
        async def create(self) -> Res:
            return Res(1)

        async def check(self, resource: Res, info: ResourceInfo) -> None:
            infos.append((info.created_at, info.last_used_at, info.uses))

    async def main() -> None:
        async with Pool(M(), max_size=1) as pool:
            t0 = now()
            async with pool.acquire():
                await asyncio.sleep(5)
            await asyncio.sleep(10)
            async with pool.acquire():
                pass
        assert infos == [(t0, t0 + 5, 1)]

    vrun(main)


def test_wait_time_statistics_on_virtual_clock() -> None:
    async def main() -> None:
        async with Pool(FakeManager(), max_size=1) as pool:
            r = await pool.acquire()

            async def waiter() -> None:
                async with pool.acquire():
                    pass

            t = asyncio.create_task(waiter())
            await settle()
            assert pool.statistics().waiting == 1
            await asyncio.sleep(7)
            await pool.release(r)
            await t
            s = pool.statistics()
            assert s.wait_time_max == pytest.approx(7.0)
            assert s.wait_time_total == pytest.approx(7.0)
            assert s.waiting == 0

    vrun(main)


def test_aclose_waits_for_checked_out_resource() -> None:
    async def main() -> None:
        fm = FakeManager()
        pool = Pool(fm, max_size=2)
        await pool.open()
        r = await pool.acquire()
        closer = asyncio.create_task(pool.aclose())
        await asyncio.sleep(50)
        assert not closer.done()
        assert not r.closed
        with pytest.raises(PoolClosed):
            await pool.acquire()
        await pool.release(r)  # in-use resources are closed when released
        assert closed(r)
        await closer
        fm.assert_all_closed()

    vrun(main)


def test_aclose_wakes_waiters_with_pool_closed() -> None:
    async def main() -> None:
        fm = FakeManager()
        pool = Pool(fm, max_size=1)
        await pool.open()
        r = await pool.acquire()
        waiters = [asyncio.ensure_future(pool.acquire(timeout=None)) for _ in range(3)]
        await settle()
        closer = asyncio.create_task(pool.aclose())
        await settle()
        for w in waiters:
            assert w.done()
            with pytest.raises(PoolClosed):
                w.result()
        await pool.release(r)
        await closer
        with pytest.raises(PoolClosed):
            await pool.acquire()
        with pytest.raises(PoolClosed):
            async with pool.acquire():
                pass
        fm.assert_all_closed()

    vrun(main)


def test_aclose_during_create_wakes_creator_with_pool_closed() -> None:
    async def main() -> None:
        fm = FakeManager()
        gate = fm.block("create", calls=1)
        pool = Pool(fm, max_size=1)
        await pool.open()
        t = asyncio.ensure_future(pool.acquire())
        await gate.wait_arrived()
        await pool.aclose()
        with pytest.raises(PoolClosed):
            await t
        assert pool.statistics().size == 0
        fm.assert_all_closed()

    vrun(main)


def test_aclose_cancelled_still_completes() -> None:
    async def main() -> None:
        fm = FakeManager()
        fm.delay("close", 3)
        pool = Pool(fm, min_size=2, max_size=2)
        await pool.open()
        t = asyncio.create_task(pool.aclose())
        await settle()
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        await asyncio.sleep(10)
        fm.assert_all_closed()
        await pool.aclose()

    vrun(main)


def test_aclose_while_check_in_progress() -> None:
    async def main() -> None:
        fm = FakeManager()
        pool = Pool(fm, min_size=1, max_size=1)
        await pool.open()
        gate = fm.block("check", calls=1)
        t = asyncio.ensure_future(pool.acquire())
        await gate.wait_arrived()
        closer = asyncio.create_task(pool.aclose())
        await settle()
        gate.open()
        with pytest.raises(PoolClosed):
            await t
        await closer
        fm.assert_all_closed()

    vrun(main)


def test_concurrent_aclose_calls_both_wait_for_completion() -> None:
    async def main() -> None:
        fm = FakeManager()
        fm.delay("close", 2)
        pool = Pool(fm, min_size=2, max_size=2)
        await pool.open()
        await asyncio.gather(pool.aclose(), pool.aclose())
        fm.assert_all_closed()

    vrun(main)


def test_pool_cannot_be_reopened_after_aclose() -> None:
    async def main() -> None:
        pool = Pool(FakeManager())
        async with pool:
            pass
        with pytest.raises(PoolClosed):
            async with pool:
                pass
        never = Pool(FakeManager())
        await never.aclose()
        with pytest.raises(PoolClosed):
            await never.acquire()

    vrun(main)


def test_aclose_timeout_also_closes_resource_stuck_in_check() -> None:
    async def main() -> None:
        fm = FakeManager()
        pool = Pool(fm, min_size=1, max_size=1)
        await pool.open()
        gate = fm.block("check", calls=1)  # a ping that never answers
        t = asyncio.ensure_future(pool.acquire(timeout=None))
        await gate.wait_arrived()
        await pool.aclose(timeout=5)
        stuck_closed = closed(fm.resources[0])
        size = pool.statistics().size
        gate.open()
        with pytest.raises(PoolClosed):
            await t
        await settle()
        assert (stuck_closed, size) == (True, 0)

    vrun(main)
