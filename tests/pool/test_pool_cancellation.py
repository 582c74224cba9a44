"""No lost capacity: cancellation or timeout at each await of acquire, create, check,
reset, release and close, driven deterministically with FakeManager gates."""

from __future__ import annotations

import asyncio
import random

import pytest
from pool_helpers import (
    NO_HANG,
    DuckManager,
    NoResetFakeManager,
    Res,
    assert_closed_cleanly,
    assert_consistent,
    duck_pool,
    settle,
    start_acquire,
    vrun,
)
from pool_shapes import WITH_HOOKS

from aiolease import (
    Pool,
    PoolClosed,
    PoolTimeout,
)
from aiolease.abc import ResourceInfo
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
    b = start_acquire(pool)
    # The 2nd creation (not held) serves the oldest waiter, a; b takes over the 1st.
    held = await a
    await pool.resize(max_size=1)
    await _cancel(b)
    create_gate.open()
    await close_gate.wait_arrived()  # the surplus resource is being closed
    closing = asyncio.create_task(pool.aclose())
    await asyncio.sleep(1.0)
    close_gate.open()
    await pool.release(held)
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


@pytest.mark.parametrize("how", ["task", "wait_for"])
@pytest.mark.pool_shapes(*WITH_HOOKS)
async def test_enter_cancelled_before_it_ran_keeps_the_idle_resource(how: str) -> None:
    """``acquire().__aenter__()`` in a task cancelled before its first step (as
    ``wait_for(..., 0)`` does): the idle resource its check was due on stays the pool's."""
    fm = FakeManager()
    pool = await _idle_pool(fm, 1, 1)
    fm.fail("check", calls=1)  # the check_needed shape then asks for a check too
    if how == "task":
        task = asyncio.ensure_future(pool.acquire().__aenter__())
        await _cancel(task)
    else:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(pool.acquire().__aenter__(), 0)
    fm.clear_rules()
    assert_consistent(pool, fm)
    assert pool.statistics().idle == 1
    async with pool.acquire(timeout=1) as r:
        assert r is fm.resources[0]
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


# -- merged from the former acceptance suite (tests/acceptance/test_contract_pools.py)


def test_cancel_during_create_keeps_capacity() -> None:
    async def main() -> None:
        fm = FakeManager()
        gate = fm.block("create", calls=1)
        async with Pool(fm, max_size=1) as pool:
            t = asyncio.ensure_future(pool.acquire())
            await gate.wait_arrived()
            t.cancel()
            with pytest.raises(asyncio.CancelledError):
                await t
            gate.open()
            await settle()
            s = pool.statistics()
            assert (s.size, s.idle, s.in_use, s.waiting) == (1, 1, 0, 0)
            async with pool.acquire(timeout=0):
                pass
        fm.assert_all_closed()
        fm.assert_no_violations()

    vrun(main)


@pytest.mark.pool_shapes(*WITH_HOOKS)
def test_cancel_during_check_frees_slot() -> None:
    async def main() -> None:
        fm = FakeManager()
        async with Pool(fm, min_size=1, max_size=1) as pool:
            gate = fm.block("check", calls=1)
            t = asyncio.ensure_future(pool.acquire())
            await gate.wait_arrived()
            t.cancel()
            with pytest.raises(asyncio.CancelledError):
                await t
            await settle()
            assert pool.statistics().in_use == 0
            async with pool.acquire(timeout=1) as r:
                assert isinstance(r, FakeResource)
            s = pool.statistics()
            assert s.size == s.idle == 1
        fm.assert_no_violations()

    vrun(main)


@pytest.mark.pool_shapes(*WITH_HOOKS)
def test_cancel_during_reset_is_shielded() -> None:
    async def main() -> None:
        fm = FakeManager()
        async with Pool(fm, max_size=1) as pool:
            gate = fm.block("reset", calls=1)
            r = await pool.acquire()
            t = asyncio.create_task(pool.release(r))
            await gate.wait_arrived()
            t.cancel()
            with pytest.raises(asyncio.CancelledError):
                await t
            gate.open()
            await settle()
            s = pool.statistics()
            assert (s.size, s.idle, s.in_use) == (1, 1, 0)
            assert not r.closed
        fm.assert_all_closed()

    vrun(main)


@pytest.mark.pool_shapes(*WITH_HOOKS)
def test_cancel_body_of_async_with_releases() -> None:
    async def main() -> None:
        fm = FakeManager()
        gate = fm.block("reset", calls=1)
        async with Pool(fm, max_size=1) as pool:

            async def body() -> None:
                async with pool.acquire():
                    await asyncio.sleep(100)

            t = asyncio.create_task(body())
            await settle()
            t.cancel()
            await gate.wait_arrived()
            t.cancel()  # a second cancel while the release's reset runs
            with pytest.raises(asyncio.CancelledError):
                await t
            gate.open()
            await settle()
            s = pool.statistics()
            assert (s.size, s.idle, s.in_use) == (1, 1, 0)

    vrun(main)


def test_cancel_during_close_is_shielded() -> None:
    async def main() -> None:
        fm = FakeManager()
        async with Pool(fm, max_size=1) as pool:
            gate = fm.block("close", calls=1)
            r = await pool.acquire()
            t = asyncio.create_task(pool.release(r, discard=True))
            await gate.wait_arrived()
            t.cancel()
            with pytest.raises(asyncio.CancelledError):
                await t
            assert pool.statistics().size == 1  # close in flight still holds its slot
            gate.open()
            await settle()
            assert r.closed
            assert pool.statistics().size == 0

    vrun(main)


def test_cancelled_waiter_passes_handoff_on() -> None:
    async def create() -> Res:
        return Res(1)

    async def main() -> None:
        # No reset: release() hands over synchronously, so `a` is cancelled after it was
        # handed the resource but before it ran.
        async with Pool.from_callables(create, max_size=1) as pool:
            r = await pool.acquire()
            a = asyncio.ensure_future(pool.acquire(timeout=None))
            await settle()
            b = asyncio.ensure_future(pool.acquire(timeout=None))
            await settle()
            await pool.release(r)  # handed to a...
            assert not a.done()
            a.cancel()  # ...which is cancelled before it runs
            with pytest.raises(asyncio.CancelledError):
                await a
            rb = await b
            assert rb is r
            await pool.release(rb)
            s = pool.statistics()
            assert (s.size, s.idle, s.waiting) == (1, 1, 0)

    vrun(main)


def test_manager_create_raising_cancelled_error_on_open_pool() -> None:
    """A manager whose create() itself raises CancelledError (e.g. a driver's inner timeout)."""

    async def main() -> None:
        m = DuckManager()
        m.create_error = asyncio.CancelledError()
        async with duck_pool(m, max_size=1) as pool:
            with pytest.raises(BaseException) as ei:
                await pool.acquire(timeout=5)
            assert not isinstance(ei.value, PoolClosed), (
                "an open pool must not report PoolClosed for a failed creation"
            )
            assert pool.statistics().size == 0
            m.create_error = None
            await asyncio.sleep(60)
            async with pool.acquire(timeout=5) as r:
                assert r.n == 1

    vrun(main)


def test_manager_check_raising_cancelled_error_frees_slot() -> None:
    async def main() -> None:
        m = DuckManager()
        async with duck_pool(m, min_size=1, max_size=1) as pool:
            m.check_error = asyncio.CancelledError()
            t = asyncio.ensure_future(pool.acquire(timeout=5))
            with pytest.raises(BaseException):  # noqa: B017 - only consistency matters here
                await t
            await settle()
            m.check_error = None
            assert pool.statistics().in_use == 0
            async with pool.acquire(timeout=5):
                pass
            assert pool.statistics().size == 1

    vrun(main)


class _ConvertingCheckManager(DuckManager):
    """A check that turns its own cancellation into an error of its own, as a driver may
    (its "query cancelled" error): the first check waits until cancelled."""

    def __init__(self) -> None:
        super().__init__()
        self.in_check = asyncio.Event()
        self.hold_first = True

    async def check(self, resource: Res, info: ResourceInfo) -> None:
        self.checked.append(resource.n)
        if self.hold_first:
            self.hold_first = False
            self.in_check.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                raise ConnectionError("query cancelled") from None


@pytest.mark.parametrize("how", ["cancel", "timeout", "pool_timeout"])
def test_a_cancellation_a_check_turns_into_an_error_still_cancels_the_acquire(how: str) -> None:
    """The caller was cancelled (or its own timeout fired) during the manager's check, and
    the check raised an error of its own instead of CancelledError: the acquire must end
    cancelled (its timeout: TimeoutError), not try the next idle resource and return it.
    (The acquire's own timeout: PoolTimeout.)"""

    async def main() -> None:
        m = _ConvertingCheckManager()
        async with duck_pool(m, min_size=2, max_size=2) as pool:
            await settle()
            assert pool.statistics().idle == 2

            async def lease() -> None:
                async with pool.acquire(timeout=5):  # (released even if it wrongly succeeds)
                    pass

            if how == "cancel":
                task = asyncio.ensure_future(lease())
                await m.in_check.wait()
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            elif how == "timeout":
                with pytest.raises(TimeoutError) as caught:
                    async with asyncio.timeout(1):
                        await lease()
                assert not isinstance(caught.value, PoolTimeout)
            else:
                with pytest.raises(PoolTimeout):
                    async with pool.acquire(timeout=1):
                        pass
            assert m.checked == [1]  # the second idle resource was not taken
            await settle()
            s = pool.statistics()
            assert (s.in_use, s.discarded) == (0, 1)  # the interrupted one was discarded
            async with pool.acquire(timeout=5) as r:
                assert r.n == 2

    vrun(main)


def test_manager_reset_raising_cancelled_error_keeps_pool_consistent() -> None:
    async def main() -> None:
        m = DuckManager()
        m.reset_error = asyncio.CancelledError()
        async with duck_pool(m, max_size=1) as pool:
            r = await pool.acquire()
            try:
                await pool.release(r)
            except asyncio.CancelledError:
                pass
            await settle()
            assert r.closed
            s = pool.statistics()
            assert (s.size, s.in_use) == (0, 0)
            m.reset_error = None
            async with pool.acquire(timeout=1):
                pass

    vrun(main)


def test_random_cancellation_never_loses_capacity() -> None:
    async def main() -> None:
        rnd = random.Random(1234)
        fm = FakeManager()
        fm.delay("create", 0.3)
        fm.delay("check", 0.1)
        fm.delay("reset", 0.2)
        fm.delay("close", 0.1)
        fm.fail("create", when=lambda c: c.number % 7 == 0)
        fm.fail("check", when=lambda c: c.number % 5 == 0)
        fm.fail("reset", when=lambda c: c.number % 6 == 0)
        pool = Pool(fm, min_size=1, max_size=3, max_lifetime=5, idle_timeout=2)
        worst = 0

        async def worker() -> None:
            nonlocal worst
            for _ in range(20):
                try:
                    async with pool.acquire(timeout=rnd.choice([0.05, 0.5, 3.0])) as r:
                        await r.use()
                        await asyncio.sleep(rnd.random())
                except (PoolTimeout, Exception):
                    pass
                worst = max(worst, pool.statistics().size)

        async with pool:
            tasks = [asyncio.create_task(worker()) for _ in range(8)]
            for _ in range(40):
                await asyncio.sleep(rnd.random() * 0.5)
                victim = rnd.choice(tasks)
                if not victim.done():
                    victim.cancel()
                if rnd.random() < 0.1:
                    await pool.expire()
                if rnd.random() < 0.1:
                    await pool.resize(max_size=rnd.choice([1, 2, 3]))
            await asyncio.gather(*tasks, return_exceptions=True)
            await pool.resize(max_size=3)
            await asyncio.sleep(10)
            # max_lifetime keeps replacing the min_size resource (a close, then a
            # creation): let one in flight end before counting.
            await settle(pool)
            s = pool.statistics()
            assert (s.in_use, s.waiting) == (0, 0)
            assert s.size == s.idle
            assert s.size <= 3
        assert worst <= 3
        fm.assert_all_closed()
        fm.assert_no_violations()
        assert fm.max_alive <= 3

    vrun(main)


def test_cancelled_open_loses_no_resource() -> None:
    async def main() -> None:
        fm = FakeManager()
        gate = fm.block("create", calls=1)
        pool = Pool(fm, min_size=2, max_size=2)
        t = asyncio.ensure_future(pool.open())
        await gate.wait_arrived()
        await settle()  # the 2nd creation has completed; the 1st is held at the gate
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        gate.open()
        await settle()
        s = pool.statistics()
        await pool.aclose()
        assert s.size == s.idle + s.in_use  # no slot held by a resource nobody owns
        fm.assert_all_closed()

    vrun(main)


def test_a_cancelled_async_with_pool_closes_the_pool_it_was_opening() -> None:
    # `async with pool:` runs no __aexit__ when entering fails: cancelled while open() waits
    # for its min_size creations, the pool must not stay open (and filled) out of reach.
    async def main() -> None:
        fm = FakeManager()
        gate = fm.block("create", calls=1)
        pool = Pool(fm, min_size=2, max_size=2)

        async def body() -> None:
            async with pool:
                raise AssertionError("not reached")  # pragma: no cover

        t = asyncio.ensure_future(body())
        await gate.wait_arrived()
        await settle()  # the 2nd creation has completed; the 1st is held at the gate
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        gate.open()
        await settle()
        assert pool.statistics().size == 0, pool
        assert "closed" in repr(pool)
        fm.assert_all_closed()

    vrun(main)


def test_outer_asyncio_timeout_and_wait_for_leave_pool_consistent() -> None:
    async def main() -> None:
        async with Pool(FakeManager(), max_size=1, acquire_timeout=None) as pool:
            r = await pool.acquire()
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(1):
                    await pool.acquire()
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(pool.acquire(), 1)
            assert pool.statistics().waiting == 0
            await pool.release(r)
            s = pool.statistics()
            assert (s.size, s.idle, s.in_use) == (1, 1, 0)
            async with pool.acquire(timeout=0) as again:
                assert again is r

    vrun(main)


def test_taskgroup_cancellation_of_many_waiters() -> None:
    async def main() -> None:
        fm = FakeManager()
        fm.delay("create", 1)
        async with Pool(fm, max_size=2) as pool:
            held = [await pool.acquire(), await pool.acquire()]

            async def boom() -> None:
                await asyncio.sleep(5)
                raise RuntimeError("sibling failed")

            async def want() -> None:
                async with pool.acquire(timeout=None):
                    await asyncio.sleep(100)

            async def group() -> None:
                async with asyncio.TaskGroup() as tg:
                    for _ in range(10):
                        tg.create_task(want())
                    tg.create_task(boom())

            with pytest.raises(ExceptionGroup):
                await group()
            assert pool.statistics().waiting == 0
            for r in held:
                await pool.release(r)
            s = pool.statistics()
            assert (s.size, s.idle, s.in_use) == (2, 2, 0)
        fm.assert_all_closed()
        fm.assert_no_violations()

    vrun(main)


@pytest.mark.pool_shapes("hook-free", "all-hooks")
async def test_waiters_cancelled_in_a_random_order_leave_no_places_behind() -> None:
    # A waiter that leaves from the middle of the queue is not searched for: its place is
    # dropped at the front, or when left places are most of the queue. So the queue never
    # holds more than about twice its waiters, whatever the order they leave in (the cost of
    # leaving: bench/pool_cancel.py).
    fm = NoResetFakeManager()
    async with Pool(fm, max_size=1, acquire_timeout=None) as pool:
        held = await pool.acquire()
        n = 2_000
        waiters = [start_acquire(pool) for _ in range(n)]
        await asyncio.sleep(0)
        picked = list(range(n))
        random.Random(n).shuffle(picked)
        for k, i in enumerate(picked[: n - 10], 1):
            waiters[i].cancel()
            await asyncio.sleep(0)
            assert pool.statistics().waiting == n - k
            assert len(pool._waiters) <= 2 * (n - k) + 64, (k, len(pool._waiters))
        for i in picked[n - 10 :]:
            waiters[i].cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
        assert pool.statistics().waiting == 0
        assert len(pool._waiters) == 0  # nobody queued: no place kept
        await pool.release(held)
        async with pool.acquire():
            pass
    assert_closed_cleanly(pool, fm)


async def test_waiters_left_in_a_random_order_keep_the_count_and_the_order() -> None:
    fm = NoResetFakeManager()
    async with Pool(fm, max_size=1, acquire_timeout=None) as pool:
        held = await pool.acquire()
        waiters = [start_acquire(pool, timeout=None if i % 3 else 5.0) for i in range(300)]
        await asyncio.sleep(0)
        rng = random.Random(7)
        gone = set(rng.sample(range(300), 200))
        for k, i in enumerate(rng.sample(sorted(gone), len(gone))):
            waiters[i].cancel()
            await asyncio.sleep(0)
            assert pool.statistics().waiting == 300 - k - 1
        served: list[int] = []
        r = held
        for i in sorted(set(range(300)) - gone):
            await pool.release(r)
            r = await waiters[i]
            served.append(i)
            assert pool.statistics().waiting == 300 - len(gone) - len(served)
        await pool.release(r)
        assert pool.statistics().idle == 1
    assert_closed_cleanly(pool, fm)
