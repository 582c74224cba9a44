"""No lost capacity: cancellation or timeout at each await of acquire, create, check,
reset, release and close, driven deterministically with FakeManager gates."""

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

from aiolease import Pool, PoolClosed, PoolTimeout
from aiolease.testing import FakeManager, FakeResource

pytestmark = [pytest.mark.aiolease_virtual_time, NO_HANG]


async def _idle_pool(fm: FakeManager, n: int, max_size: int) -> Pool[FakeResource]:
    pool = Pool(fm, min_size=n, max_size=max_size)
    await pool.open()
    assert pool.statistics().idle == n
    return pool


async def _cancel(task: asyncio.Task[FakeResource]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# -- acquire: waiting in the queue ---------------------------------------------------------


async def test_cancel_while_queued() -> None:
    fm = FakeManager()
    pool = Pool(fm, max_size=1)
    await pool.open()
    held = await pool.acquire()
    waiter = start_acquire(pool)
    await asyncio.sleep(0)
    assert pool.statistics().waiting == 1
    await _cancel(waiter)
    assert pool.statistics().waiting == 0
    await pool.release(held)
    assert pool.statistics().idle == 1  # not handed to the cancelled waiter
    assert_consistent(pool, fm)
    await pool.aclose()
    assert_closed_cleanly(pool, fm)


async def test_timeout_while_queued() -> None:
    fm = FakeManager()
    pool = Pool(fm, max_size=1)
    await pool.open()
    held = await pool.acquire()
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(PoolTimeout) as info:
        await pool.acquire(timeout=2.5)
    assert isinstance(info.value, TimeoutError)
    assert info.value.__cause__ is None  # no creation error to chain
    assert loop.time() - start == pytest.approx(2.5)
    st = pool.statistics()
    assert (st.waiting, st.timeouts) == (0, 1)
    await pool.release(held)
    assert_consistent(pool, fm)
    async with pool.acquire(timeout=0) as r:  # timeout=0 succeeds when one is free
        assert r is held
    await pool.aclose()
    assert_closed_cleanly(pool, fm)


async def test_default_acquire_timeout_applies() -> None:
    fm = FakeManager()
    pool = Pool(fm, max_size=1, acquire_timeout=7.0)
    await pool.open()
    held = await pool.acquire()
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(PoolTimeout):
        async with pool.acquire():
            pass
    assert loop.time() - start == pytest.approx(7.0)
    await pool.release(held)
    await pool.aclose()
    assert_closed_cleanly(pool, fm)


async def test_waiter_cancelled_after_hand_off_passes_resource_on() -> None:
    """The hand-off handshake: the resource was given to a waiter that was then
    cancelled before it resumed; it goes to the next waiter, not lost."""
    fm = NoResetFakeManager()
    pool = Pool(fm, max_size=1)
    await pool.open()
    held = await pool.acquire()
    first = start_acquire(pool)
    second = start_acquire(pool)
    await asyncio.sleep(0)
    assert pool.statistics().waiting == 2
    await pool.release(held)  # synchronous hand-off to `first`...
    first.cancel()  # ...which is cancelled before it resumes
    with pytest.raises(asyncio.CancelledError):
        await first
    r = await second
    assert r is held
    assert_consistent(pool, fm)
    await pool.release(r)
    await pool.aclose()
    assert_closed_cleanly(pool, fm)


async def test_timeout_racing_a_release_loses_nothing() -> None:
    """A release at the very instant the oldest waiter times out: the resource ends
    with exactly one of the waiters."""
    fm = NoResetFakeManager()
    pool = Pool(fm, max_size=1)
    await pool.open()
    held = await pool.acquire()
    loop = asyncio.get_running_loop()
    first = start_acquire(pool, timeout=5.0)
    second = start_acquire(pool)
    await asyncio.sleep(0)
    await asyncio.sleep(5.0 - loop.time())  # wakes at the same virtual instant as the timeout
    await pool.release(held)
    outcome = (await asyncio.gather(first, return_exceptions=True))[0]
    if isinstance(outcome, PoolTimeout):
        r = await second
    else:
        assert outcome is held
        assert not second.done()
        await pool.release(outcome)
        r = await second
    assert r is held
    assert_consistent(pool, fm)
    await pool.release(r)
    await pool.aclose()
    assert_closed_cleanly(pool, fm)


async def test_waiter_cancelled_after_hand_off_with_no_one_queued_goes_idle() -> None:
    fm = NoResetFakeManager()
    pool = Pool(fm, max_size=1)
    await pool.open()
    held = await pool.acquire()
    waiter = start_acquire(pool)
    await asyncio.sleep(0)
    await pool.release(held)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert pool.statistics().idle == 1
    assert_consistent(pool, fm)
    await pool.aclose()
    assert_closed_cleanly(pool, fm)


# -- acquire: waiting for its own creation -------------------------------------------------


async def test_cancel_while_waiting_for_own_creation() -> None:
    fm = FakeManager()
    gate = fm.block("create", calls=1)
    pool = Pool(fm, max_size=2)
    await pool.open()
    task = start_acquire(pool)
    await gate.wait_arrived()
    assert pool.statistics().size == 1  # the creation in flight counts
    await _cancel(task)
    gate.open()
    await settle(pool)
    assert pool.statistics().idle == 1  # the new resource was kept, not lost
    assert_consistent(pool, fm)
    await pool.aclose()
    assert_closed_cleanly(pool, fm)


async def test_cancelled_creation_serves_next_waiter() -> None:
    fm = FakeManager()
    gate = fm.block("create", calls=1)
    pool = Pool(fm, max_size=1)
    await pool.open()
    first = start_acquire(pool)
    await gate.wait_arrived()
    second = start_acquire(pool)  # max_size reached: queues
    await asyncio.sleep(0)
    await _cancel(first)
    gate.open()
    r = await second
    assert r.id == 1
    assert_consistent(pool, fm)
    await pool.release(r)
    await pool.aclose()
    assert_closed_cleanly(pool, fm)


async def test_cancel_while_waiting_for_own_creation_that_then_fails() -> None:
    fm = FakeManager()
    gate = fm.block("create", calls=1)
    fm.fail("create", ConnectionError, calls=1)
    pool = Pool(fm, max_size=1, backoff_base=1.0)
    await pool.open()
    task = start_acquire(pool)
    await gate.wait_arrived()
    await _cancel(task)
    gate.open()
    await settle(pool)
    assert pool.statistics().size == 0  # the failed slot was freed
    assert_consistent(pool, fm)
    async with pool.acquire() as r:  # after the backoff, a new creation
        assert r.id == 1
    await pool.aclose()
    assert_closed_cleanly(pool, fm)


async def test_timeout_while_waiting_for_own_creation() -> None:
    fm = FakeManager()
    fm.delay("create", 10.0)
    pool = Pool(fm, max_size=1)
    await pool.open()
    with pytest.raises(PoolTimeout):
        await pool.acquire(timeout=3.0)
    assert pool.statistics().size == 1  # still being created
    await settle(pool)
    st = pool.statistics()
    assert (st.idle, st.size, st.timeouts) == (1, 1, 1)
    assert_consistent(pool, fm)
    await pool.aclose()
    assert_closed_cleanly(pool, fm)


async def test_cancel_while_opening_on_first_acquire() -> None:
    fm = FakeManager()
    gate = fm.block("create")
    pool = Pool(fm, min_size=2, max_size=3)
    task = start_acquire(pool)
    await gate.wait_arrived(2)
    await _cancel(task)
    gate.open()
    await settle(pool)
    assert pool.statistics().idle == 2
    assert_consistent(pool, fm)
    await pool.aclose()
    assert_closed_cleanly(pool, fm)


# -- create: interrupted by aclose ---------------------------------------------------------


async def test_aclose_cancels_creation_and_wakes_its_acquirer() -> None:
    fm = FakeManager()
    gate = fm.block("create")
    pool = Pool(fm, max_size=2)
    await pool.open()
    own = start_acquire(pool)
    await gate.wait_arrived()
    await pool.aclose()
    with pytest.raises(PoolClosed):
        await own
    assert fm.events_of("created", ok=False)[0].error.__class__ is asyncio.CancelledError
    assert_closed_cleanly(pool, fm)


async def test_aclose_does_not_interrupt_close_started_by_a_finished_creation() -> None:
    """A creation that finished after its acquirer left, in a pool shrunk meanwhile,
    closes its surplus resource; aclose must let that close finish, not cancel it."""
    fm = FakeManager()
    pool = Pool(fm, max_size=2)
    await pool.open()
    create_gate = fm.block("create", calls=1)
    close_gate = fm.block("close", calls=1)
    a = start_acquire(pool)
    await create_gate.wait_arrived()
    b = await pool.acquire()  # the 2nd creation is not held
    await pool.resize(max_size=1)
    await _cancel(a)
    create_gate.open()
    await close_gate.wait_arrived()  # the surplus resource is being closed
    closing = asyncio.create_task(pool.aclose())
    await asyncio.sleep(1.0)
    close_gate.open()
    await pool.release(b)
    await closing
    closes = fm.events_of("closed")
    assert len(closes) == 2
    assert all(e.ok for e in closes), [str(e) for e in closes]  # none interrupted
    assert_closed_cleanly(pool, fm)


# -- check ---------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["cancel", "timeout"])
@pytest.mark.pool_shapes(*WITH_HOOKS)
async def test_interrupted_check_discards_resource(how: str) -> None:
    fm = FakeManager()
    pool = await _idle_pool(fm, 1, 1)
    gate = fm.block("check", calls=1)
    task = start_acquire(pool, timeout=4.0 if how == "timeout" else None)
    await gate.wait_arrived()
    if how == "cancel":
        await _cancel(task)
    else:
        loop = asyncio.get_running_loop()
        with pytest.raises(PoolTimeout):
            await task  # the check does not outlive the acquire timeout
        assert loop.time() == pytest.approx(4.0)
        assert pool.statistics().timeouts == 1
    gate.open()
    await settle(pool)
    r1 = fm.resources[0]
    assert r1.closed  # interrupted mid-check: state unknown, closed
    assert pool.statistics().discarded == 1
    assert_consistent(pool, fm)  # its slot was freed and min_size refilled
    assert [r.id for r in fm.open_resources] == [2]
    async with pool.acquire() as r:
        assert r.id == 2
    await pool.aclose()
    assert_closed_cleanly(pool, fm)


@pytest.mark.pool_shapes(*WITH_HOOKS)
async def test_aclose_during_check() -> None:
    fm = FakeManager()
    pool = await _idle_pool(fm, 1, 1)
    gate = fm.block("check", calls=1)
    task = start_acquire(pool)
    await gate.wait_arrived()
    closing = asyncio.create_task(pool.aclose())
    await asyncio.sleep(10.0)
    assert not closing.done()  # the resource under check is still the pool's: aclose waits
    gate.open()
    await closing
    assert fm.resources[0].close_calls == 1  # closed before aclose returned
    with pytest.raises(PoolClosed):  # not handed out from a closed pool
        await task
    assert_closed_cleanly(pool, fm)


# -- reset / release -----------------------------------------------------------------------


@pytest.mark.pool_shapes(*WITH_HOOKS)
async def test_cancel_release_during_reset_is_shielded() -> None:
    fm = FakeManager()
    pool = Pool(fm, max_size=1)
    await pool.open()
    gate = fm.block("reset", calls=1)
    r = await pool.acquire()
    releasing = asyncio.create_task(pool.release(r))
    await gate.wait_arrived()
    waiter = start_acquire(pool)
    await asyncio.sleep(0)
    releasing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await releasing
    assert pool.statistics().size == 1
    gate.open()
    got = await waiter  # the reset finished and the resource went to the waiter
    assert got is r
    assert fm.events_of("reset")[0].ok
    assert_consistent(pool, fm)
    await pool.release(got)
    await pool.aclose()
    assert_closed_cleanly(pool, fm)


@pytest.mark.pool_shapes(*WITH_HOOKS)
async def test_cancel_async_with_exit_during_reset() -> None:
    fm = FakeManager()
    pool = Pool(fm, max_size=1)
    await pool.open()
    gate = fm.block("reset", calls=1)

    async def user() -> None:
        async with pool.acquire() as r:
            await r.use()

    task = asyncio.create_task(user())
    await gate.wait_arrived()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    gate.open()
    await settle(pool)
    assert pool.statistics().idle == 1
    assert_consistent(pool, fm)
    await pool.aclose()
    assert_closed_cleanly(pool, fm)


@pytest.mark.pool_shapes(*WITH_HOOKS)
async def test_release_waits_for_reset() -> None:
    fm = FakeManager()
    fm.delay("reset", 3.0)
    pool = Pool(fm, max_size=1)
    await pool.open()
    r = await pool.acquire()
    loop = asyncio.get_running_loop()
    start = loop.time()
    await pool.release(r)
    assert loop.time() - start == pytest.approx(3.0)
    assert pool.statistics().idle == 1
    await pool.aclose()
    assert_closed_cleanly(pool, fm)


@pytest.mark.pool_shapes(*WITH_HOOKS)
async def test_aclose_during_reset_closes_after_it() -> None:
    fm = FakeManager()
    pool = Pool(fm, max_size=1)
    await pool.open()
    gate = fm.block("reset", calls=1)
    r = await pool.acquire()
    releasing = asyncio.create_task(pool.release(r))
    await gate.wait_arrived()
    closing = asyncio.create_task(pool.aclose())
    await asyncio.sleep(0)
    assert not closing.done()
    gate.open()
    await releasing
    await closing
    assert_closed_cleanly(pool, fm)


# -- close ---------------------------------------------------------------------------------


async def test_cancel_release_discard_during_close_is_shielded() -> None:
    fm = FakeManager()
    pool = Pool(fm, max_size=1)
    await pool.open()
    gate = fm.block("close", calls=1)
    r = await pool.acquire()
    waiter = start_acquire(pool)
    await asyncio.sleep(0)
    releasing = asyncio.create_task(pool.release(r, discard=True))
    await gate.wait_arrived()
    assert pool.statistics().size == 1  # the close in flight still holds the slot
    releasing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await releasing
    gate.open()
    got = await waiter  # the freed slot served the waiter with a new resource
    assert got.id == 2
    assert r.close_calls == 1
    assert_consistent(pool, fm)
    await pool.release(got)
    await pool.aclose()
    assert_closed_cleanly(pool, fm)


async def test_cancel_aclose_is_shielded() -> None:
    fm = FakeManager()
    pool = await _idle_pool(fm, 2, 2)
    gate = fm.block("close")
    closing = asyncio.create_task(pool.aclose())
    await gate.wait_arrived(2)
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    assert pool.closed
    gate.open()
    await pool.aclose()  # waits for the close going on in the background
    assert_closed_cleanly(pool, fm)


async def test_close_error_is_logged_and_slot_freed(caplog: pytest.LogCaptureFixture) -> None:
    fm = FakeManager()
    fm.fail("close", OSError, calls=1)
    pool = Pool(fm, max_size=1)
    await pool.open()
    r = await pool.acquire()
    await pool.release(r, discard=True)  # does not raise the close error
    assert "closing" in caplog.text
    assert pool.statistics().size == 0
    assert_consistent(pool, fm)
    await pool.aclose()
    assert_closed_cleanly(pool, fm)
