"""Misuse a new user hits, each with a clear answer: re-entry, closing with leases out,
closes that never end, waiting on itself, a full queue, a backend down for long."""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import warnings

import pytest
from pool_helpers import NO_HANG, assert_closed_cleanly, settle, start_acquire

from aiolease import Pool, PoolClosed, PoolTimeout, TooManyWaiters
from aiolease._pool._backoff import Backoff
from aiolease.abc import ResourceInfo
from aiolease.testing import FakeManager, FakeResource

pytestmark = [pytest.mark.aiolease_virtual_time, NO_HANG]


# -- re-entering an acquire ---------------------------------------------------------------


async def test_reentering_an_entered_acquire_raises_and_loses_nothing() -> None:
    fm = FakeManager()
    async with Pool(fm, max_size=2) as pool:
        acquire = pool.acquire()
        async with acquire as first:
            with pytest.raises(RuntimeError, match="already entered"):
                async with acquire:
                    pass  # pragma: no cover - never entered
            assert pool.statistics().in_use == 1
            assert first.lease is not None
        assert pool.statistics().in_use == 0
        async with acquire as again:  # sequential reuse stays allowed
            assert again is first
    assert_closed_cleanly(pool, fm)


async def test_an_awaited_acquire_can_be_awaited_again_and_then_entered() -> None:
    """``r = await acq`` is a lease that ``pool.release()`` ends, not an entered block:
    the same object may be awaited again, or entered, afterwards (it was refused as
    "already entered", a block it never was)."""
    fm = FakeManager()
    pool = Pool(fm, max_size=2)
    try:
        acquire = pool.acquire(timeout=5)
        first = await acquire
        second = await acquire  # a second lease, while the first is held
        assert first is not second
        await pool.release(first)
        await pool.release(second)
        async with acquire as r:
            assert pool.statistics().in_use == 1
            assert r.lease is not None
        again = await acquire
        assert pool.statistics().in_use == 1
        await pool.release(again)
    finally:
        await pool.aclose(timeout=0)  # (a failure above may leave a lease out)
    assert_closed_cleanly(pool, fm)


async def test_an_acquire_that_failed_can_be_entered_again() -> None:
    fm = FakeManager()
    fm.fail("create", ConnectionError, calls=1)
    async with Pool(fm, max_size=1) as pool:
        acquire = pool.acquire()
        with pytest.raises(ConnectionError):
            async with acquire:
                pass  # pragma: no cover
        await asyncio.sleep(1.0)  # past the backoff
        async with acquire as r:
            assert r.id == 1


# -- closing with leases out ----------------------------------------------------------------


async def test_aclose_with_a_lease_out_warns_soon_and_again_naming_the_lease(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fm = FakeManager()
    pool = Pool(fm, max_size=2, leak_timeout=3600.0)  # leak_timeout: the stack is captured
    await pool.open()
    loop = asyncio.get_running_loop()
    held = await pool.acquire()
    closing = asyncio.create_task(pool.aclose())
    with caplog.at_level(logging.WARNING, logger="aiolease.pool"):
        await asyncio.sleep(5.0)
        first = [r for r in caplog.records if "aclose() has waited" in r.getMessage()]
        assert len(first) == 1, caplog.text  # within 5 s
        assert repr(held) in first[0].getMessage()
        assert "test_pool_misuse.py" in first[0].getMessage()  # where it was acquired
        await asyncio.sleep(60.0)
        reports = [r for r in caplog.records if "aclose() has waited" in r.getMessage()]
        assert 3 <= len(reports) <= 6  # repeated, at growing intervals (2, 4, 8, 16, 32 s...)
    assert not closing.done()
    started = loop.time()
    await pool.aclose(timeout=1.5)  # a later aclose(timeout=t) ends the wait within t
    assert loop.time() - started == pytest.approx(1.5)
    assert closing.done()
    assert held.closed
    await pool.release(held)  # the holder gives back what was closed in its hands
    assert_closed_cleanly(pool, fm)


async def test_cancelling_the_closer_ends_the_wait_for_leases() -> None:
    fm = FakeManager()
    pool = Pool(fm, max_size=1)
    await pool.open()
    held = await pool.acquire()
    closer = asyncio.create_task(pool.aclose())
    await asyncio.sleep(30.0)
    closer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closer
    await settle(pool)
    assert held.closed  # closed in its holder's hands: the wait is over
    assert pool.closed
    await pool.release(held)
    assert_closed_cleanly(pool, fm)


async def test_aclose_timeout_zero_is_not_ignored_while_a_close_runs() -> None:
    fm = FakeManager()
    fm.block("close", calls=1)  # a close that never ends on its own
    pool = Pool(fm, max_size=2)
    await pool.open()
    async with pool.acquire():
        pass
    held = await pool.acquire()
    loop = asyncio.get_running_loop()
    started = loop.time()
    await pool.aclose(timeout=0)
    # The idle resource's close hung: it was abandoned at the manager's close_timeout.
    assert loop.time() - started == pytest.approx(fm.close_timeout)
    st = pool.statistics()
    assert st.discarded == 1
    assert st.size == 0
    await pool.release(held)


async def test_a_close_past_close_timeout_is_abandoned_and_aborted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    aborted: list[FakeResource] = []

    class Manager(FakeManager):
        close_timeout = 2.0

        def abort(self, resource: FakeResource) -> None:
            aborted.append(resource)

    fm = Manager()
    fm.block("close")
    loop = asyncio.get_running_loop()
    async with Pool(fm, max_size=1) as pool:
        r = await pool.acquire()
        started = loop.time()
        with caplog.at_level(logging.WARNING, logger="aiolease.pool"):
            await pool.release(r, discard=True)  # returns once the close is over or abandoned
        assert loop.time() - started == pytest.approx(2.0)
        assert aborted == [r]
        st = pool.statistics()
        # one resource: discarded (discard=True), then abandoned: counted once
        assert (st.size, st.discarded, st.closed) == (0, 1, 1)
        assert "longer than close_timeout" in caplog.text


# -- waiting on itself ----------------------------------------------------------------------


async def test_a_task_holding_every_lease_in_async_with_gets_pool_timeout_at_once() -> None:
    async with Pool(FakeManager(), max_size=2, acquire_timeout=None) as pool:
        loop = asyncio.get_running_loop()
        async with pool.acquire(), pool.acquire():
            started = loop.time()
            with pytest.raises(PoolTimeout, match="waiting on itself"):
                await pool.acquire()
            assert loop.time() == started  # at once, not after a timeout (there is none)
        assert pool.statistics().waiting == 0
        async with pool.acquire():  # the pool is fine afterwards
            pass


async def test_a_task_holding_every_lease_by_await_is_told_at_its_timeout() -> None:
    # An awaited lease could be released by another task: the pool waits, then says why.
    async with Pool(FakeManager(), max_size=1) as pool:
        held = await pool.acquire()
        with pytest.raises(PoolTimeout, match="waiting on itself"):
            await pool.acquire(timeout=3.0)
        await pool.release(held)


async def test_leases_handed_to_another_task_are_not_waiting_on_itself() -> None:
    async with Pool(FakeManager(), max_size=1) as pool:
        held = await pool.acquire()

        async def worker() -> None:
            await asyncio.sleep(1.0)
            await pool.release(held)

        task = asyncio.create_task(worker())
        async with pool.acquire(timeout=10.0) as r:  # the worker releases it for us
            assert r is held
        await task


# -- max_waiting at every instant ------------------------------------------------------------


async def test_max_waiting_holds_while_creations_for_departed_waiters_are_in_flight() -> None:
    fm = FakeManager()
    gate = fm.block("create")
    async with Pool(fm, max_size=3, max_waiting=1) as pool:
        leavers = [start_acquire(pool) for _ in range(3)]  # each starts a creation
        await gate.wait_arrived(3)
        for task in leavers:
            task.cancel()
        await asyncio.gather(*leavers, return_exceptions=True)
        # Three creations in flight serve no one now: they serve the next three...
        served = [start_acquire(pool) for _ in range(3)]
        await asyncio.sleep(0)
        queued = start_acquire(pool)  # ...and then one may queue (max_waiting=1)
        await asyncio.sleep(0)
        with pytest.raises(TooManyWaiters):
            await pool.acquire()
        assert pool.statistics().waiting <= 4
        gate.open()
        got = await asyncio.gather(*served)
        for r in got:
            await pool.release(r)
        await pool.release(await queued)


# -- backoff ------------------------------------------------------------------------------


@pytest.mark.parametrize("failures", [1, 10, 1025, 10_000, 10**9])
def test_backoff_stays_finite_and_capped(failures: int) -> None:
    backoff = Backoff(0.1, 10.0, rand=lambda: 1.0)
    assert backoff.delay(failures) <= 10.0
    backoff.failures = failures - 1
    assert backoff.failed(now=5.0, error=ConnectionError()) <= 10.0
    assert backoff.until <= 15.0


async def test_a_backend_down_for_thousands_of_attempts_keeps_the_pool_working() -> None:
    fm = FakeManager()
    rule = fm.fail("create", ConnectionError)
    async with Pool(fm, max_size=1, backoff_base=0.001, backoff_max=0.002) as pool:
        for _ in range(1100):  # past 1,025 consecutive failures
            with pytest.raises((ConnectionError, PoolTimeout)):
                await pool.acquire(timeout=0.01)
        assert pool.statistics().create_errors > 1025
        rule.remove()
        await asyncio.sleep(0.01)
        async with pool.acquire(timeout=1.0) as r:
            assert not r.closed


# -- where warnings point ----------------------------------------------------------------------


async def test_unclosed_pool_warning_names_the_users_line() -> None:
    pool = Pool(FakeManager(), max_size=1)
    line = sys._getframe().f_lineno - 1
    await pool.open()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del pool
        gc.collect()
    (warning,) = [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert f"test_pool_misuse.py:{line}" in str(warning.message)  # created at
    assert "aiolease" not in warning.filename.replace("test_pool_misuse", "")


# -- a manager's is_fatal that raises -----------------------------------------------------


class RaisingIsFatal(FakeManager):
    def is_fatal(self, resource: FakeResource, exc: BaseException) -> bool:
        raise KeyError("a bug in is_fatal")


@pytest.mark.parametrize("error", [ValueError("body"), asyncio.CancelledError()])
async def test_an_is_fatal_that_raises_loses_no_resource_nor_the_bodys_error(
    caplog: pytest.LogCaptureFixture, error: BaseException
) -> None:
    # The pool cannot tell whether the resource survived: it discards it (logged), and the
    # body's exception propagates unchanged; nothing stays checked out.
    fm = RaisingIsFatal()
    async with Pool(fm, max_size=1) as pool:
        caplog.set_level(logging.WARNING, logger="aiolease.pool")
        with pytest.raises(type(error)) as info:
            async with pool.acquire():
                raise error
        assert info.value is error
        assert "is_fatal raised KeyError: 'a bug in is_fatal'" in caplog.text
        await settle(pool)
        st = pool.statistics()
        assert st.in_use == 0, st
        assert st.discarded == 1, st
        async with pool.acquire():  # a new resource
            assert fm.created == 2
    assert_closed_cleanly(pool, fm)


class LeakingResetManager(FakeManager):
    """A manager whose reset lets an inner cancellation out (a timeout misused inside
    it, a driver's bug) though nobody cancelled the pool's reset task."""

    async def reset(self, resource: FakeResource, info: ResourceInfo) -> None:
        raise asyncio.CancelledError


async def test_a_reset_that_raises_cancelled_error_is_a_failed_reset_not_a_cancellation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Nobody cancelled the releasing task: it must not end cancelled (as for create(),
    # see Creations._failed). The resource is discarded, as after any failed reset.
    fm = LeakingResetManager()
    async with Pool(fm, max_size=1) as pool:
        caplog.set_level(logging.INFO, logger="aiolease.pool")
        async with pool.acquire():
            pass
        r = await pool.acquire()
        await pool.release(r)
        await settle(pool)
        assert "its reset failed" in caplog.text
        st = pool.statistics()
        assert st.in_use == 0, st
        assert st.discarded == 2, st
        assert fm.created == 2
    assert_closed_cleanly(pool, fm)


class LeakingCloseManager(FakeManager):
    """A manager whose close lets an inner cancellation out though nobody cancelled it."""

    async def close(self, resource: FakeResource) -> None:
        await super().close(resource)
        raise asyncio.CancelledError


async def test_a_close_that_raises_cancelled_error_is_a_failed_close_not_a_cancellation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # release(discard=True) and resize() wait for the close's pool task: nobody cancelled
    # the caller, so it must not end cancelled. The slot is freed all the same.
    fm = LeakingCloseManager()
    async with Pool(fm, max_size=2) as pool:
        caplog.set_level(logging.WARNING, logger="aiolease.pool")
        r = await pool.acquire()
        await pool.release(r, discard=True)
        async with pool.acquire():
            pass
        await pool.resize(max_size=2, min_size=0)
        await pool.expire()
        assert "closing" in caplog.text
        assert pool.statistics().size == 0
    assert pool.statistics().size == 0


# -- closing while a check or reset never ends ----------------------------------------------


async def test_aclose_timeout_ends_a_reset_that_never_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A reset that hangs is the pool's work, not a lease: aclose() reports it like a lease,
    and aclose(timeout=t) interrupts it within t and closes the resource; the releaser
    returns (its release is over), it does not end cancelled."""
    fm = FakeManager()
    gate = fm.block("reset", calls=1)
    pool = Pool(fm, max_size=1)
    await pool.open()
    held = await pool.acquire()
    releasing = asyncio.create_task(pool.release(held))
    await gate.wait_arrived()
    loop = asyncio.get_running_loop()
    closing = asyncio.create_task(pool.aclose())
    with caplog.at_level(logging.WARNING, logger="aiolease.pool"):
        await asyncio.sleep(5.0)
        reports = [r for r in caplog.records if "aclose() has waited" in r.getMessage()]
        assert len(reports) == 1, caplog.text  # not silent
        assert repr(held) in reports[0].getMessage()
    assert not closing.done()
    started = loop.time()
    await pool.aclose(timeout=1.0)
    assert loop.time() - started == pytest.approx(1.0)
    assert closing.done()
    assert releasing.done()
    await releasing  # returned, not cancelled
    assert held.closed
    assert pool.statistics().discarded == 1
    assert_closed_cleanly(pool, fm)


async def test_aclose_timeout_wakes_an_acquirer_whose_check_never_ends() -> None:
    """An acquirer with no timeout stuck in a check is woken with PoolClosed when
    aclose(timeout=t) stops waiting, not left waiting for a check that never ends."""
    fm = FakeManager()
    pool = Pool(fm, min_size=1, max_size=1)
    await pool.open()
    fm.block("check", calls=1)  # never opened
    task = start_acquire(pool, timeout=None)
    await asyncio.sleep(1.0)
    await pool.aclose(timeout=2.0)
    await asyncio.sleep(0)
    assert task.done()
    with pytest.raises(PoolClosed):
        await task
    assert pool.statistics().timeouts == 0  # closed, not timed out
    assert_closed_cleanly(pool, fm)


class _StubbornManager(FakeManager):
    """A FakeManager whose creation ignores cancellation until ``let_go`` is set (a driver
    that loses its cancellation, as redis-py does while connecting through a silent peer)."""

    close_timeout = 3.0

    def __init__(self) -> None:
        super().__init__()
        self.let_go = asyncio.Event()

    async def create(self) -> FakeResource:
        while not self.let_go.is_set():
            try:
                await self.let_go.wait()
            except asyncio.CancelledError:
                pass  # lost
        return await super().create()


class _StubbornResetManager(FakeManager):
    close_timeout = 3.0

    def __init__(self) -> None:
        super().__init__()
        self.let_go = asyncio.Event()

    async def reset(self, resource: FakeResource, info: ResourceInfo) -> None:
        while not self.let_go.is_set():
            try:
                await self.let_go.wait()
            except asyncio.CancelledError:
                pass  # lost
        await super().reset(resource, info)


async def timed_aclose(pool: Pool[FakeResource], caplog: pytest.LogCaptureFixture) -> float:
    """``pool.aclose(timeout=1.0)`` with aiolease.pool's WARNINGs captured; the seconds it took."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    with caplog.at_level(logging.WARNING, logger="aiolease.pool"):
        await pool.aclose(timeout=1.0)
    return loop.time() - started


async def test_aclose_timeout_stops_waiting_for_a_reset_that_ignores_its_interruption(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fm = _StubbornResetManager()
    pool = Pool(fm, max_size=1)
    await pool.open()
    held = await pool.acquire()
    releasing = asyncio.create_task(pool.release(held))
    await asyncio.sleep(1.0)
    waited = await timed_aclose(pool, caplog)
    # The timeout, then close_timeout (and a grace) for the hook, then as long for its task.
    assert waited <= 1.0 + 2 * (fm.close_timeout + 1.0), waited
    assert "ignored their interruption" in caplog.text, caplog.text
    fm.let_go.set()  # it ends at last: the resource is closed, its slot freed
    await releasing
    await settle(pool)
    assert pool.statistics().size == 0
    fm.assert_all_closed()


async def test_aclose_stops_waiting_for_a_creation_that_ignores_its_cancellation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fm = _StubbornManager()
    pool = Pool(fm, max_size=1)
    await pool.open()
    waiter = start_acquire(pool)
    await asyncio.sleep(1.0)
    waited = await timed_aclose(pool, caplog)
    assert fm.close_timeout <= waited <= fm.close_timeout + 2.0, waited  # not forever
    assert "ignored its cancellation" in caplog.text, caplog.text
    with pytest.raises(PoolClosed):
        await waiter
    assert pool.statistics().size == 1  # its slot: still creating
    fm.let_go.set()  # it ends at last: what it made is closed, its slot freed
    await settle(pool)
    assert pool.statistics().size == 0
    fm.assert_all_closed()
