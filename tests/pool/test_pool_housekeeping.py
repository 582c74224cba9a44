"""max_lifetime (with jitter), idle_timeout above min_size, min_size refill, the
housekeeping timer (no polling) and leak_timeout reports."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

import pytest
from pool_helpers import (
    NO_HANG,
    assert_closed_cleanly,
    assert_consistent,
    checked_out_then_idle,
    closed,
    early_timer_loop,
    now,
    settle,
    vrun,
)
from pool_shapes import NO_DEADLINES

from aiolease import (
    Pool,
)
from aiolease._pool._housekeeping import Housekeeper
from aiolease.testing import FakeManager, FakeResource, VirtualTimeLoop

pytestmark = [pytest.mark.aiolease_virtual_time, NO_HANG]


def _loop() -> VirtualTimeLoop:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, VirtualTimeLoop)
    return loop


def _pool_timers(pool: Pool[Any]) -> list[asyncio.TimerHandle]:
    """The timers this pool has scheduled on the running loop (white-box: asyncio internals)."""
    scheduled: list[Any] = _loop()._scheduled  # type: ignore[attr-defined]
    owners: tuple[object, ...] = (pool, pool._housekeeper, pool._queue, pool._creations)
    return [
        h
        for h in scheduled
        if not h.cancelled() and getattr(h._callback, "__self__", None) in owners
    ]


async def _assert_no_wakeups(pool: Pool[Any], seconds: float = 1000.0) -> None:
    """Nothing is due: sleeping ``seconds`` jumps the clock exactly once (our own sleep)."""
    loop = _loop()
    await settle(pool)
    jumps = loop.jumps
    await asyncio.sleep(seconds)
    assert loop.jumps == jumps + 1, f"{loop.jumps - jumps - 1} unexpected wake-ups"


def _close_times(fm: FakeManager) -> dict[int, float]:
    return {e.resource: e.time for e in fm.events_of("closed") if e.resource is not None}


async def test_max_lifetime_retires_idle_resources_with_negative_jitter() -> None:
    fm = FakeManager()
    pool = Pool(fm, max_size=20, max_lifetime=100.0)
    await pool.open()
    held = [await pool.acquire() for _ in range(20)]
    for r in held:
        await pool.release(r)
    assert len(_pool_timers(pool)) <= 1
    await asyncio.sleep(101.0)
    closes = _close_times(fm)
    assert len(closes) == 20
    assert all(95.0 <= t <= 100.0 for t in closes.values()), closes
    assert len(set(closes.values())) > 1  # jittered: they do not all go at once
    assert_consistent(pool, fm)
    await pool.aclose()
    assert_closed_cleanly(pool, fm)


async def test_max_lifetime_retires_in_use_resource_on_release() -> None:
    fm = FakeManager()
    fm.delay("close", 2.0)
    pool = Pool(fm, max_size=1, max_lifetime=10.0)
    await pool.open()
    r = await pool.acquire()
    await asyncio.sleep(20.0)
    assert r.close_calls == 0  # never taken from its holder
    loop = _loop()
    start = loop.time()
    await pool.release(r)
    assert r.close_calls == 1
    assert loop.time() - start == pytest.approx(2.0)  # release returned after the close
    async with pool.acquire() as r2:
        assert r2.id == 2
    await pool.aclose()
    assert_closed_cleanly(pool, fm)


async def test_max_lifetime_expired_idle_resource_not_handed_out() -> None:
    fm = FakeManager()
    pool = Pool(fm, max_size=2, max_lifetime=10.0)
    await pool.open()
    r = await pool.acquire()
    await pool.release(r)
    await asyncio.sleep(10.0)
    async with pool.acquire() as r2:
        assert r2.id == 2
    assert r.closed
    await pool.aclose()
    assert_closed_cleanly(pool, fm)


async def test_idle_timeout_closes_idle_resources_above_min_size() -> None:
    fm = FakeManager()
    pool = Pool(fm, min_size=1, max_size=4, idle_timeout=10.0)
    await pool.open()
    held = [await pool.acquire() for _ in range(4)]
    for r in held:
        await pool.release(r)
    await asyncio.sleep(9.0)
    assert pool.statistics().idle == 4
    await asyncio.sleep(2.0)
    st = pool.statistics()
    assert (st.idle, st.size) == (1, 1)  # trimmed back to min_size
    assert set(_close_times(fm).values()) == {10.0}
    assert_consistent(pool, fm)
    await _assert_no_wakeups(pool)  # the one kept at min_size does not cause polling
    assert pool.statistics().idle == 1
    assert fm.created == 4  # ... nor churn
    await pool.aclose()
    assert_closed_cleanly(pool, fm)


async def test_idle_timeout_trims_the_surplus_under_a_light_steady_load() -> None:
    # One task at a time every 2 s, idle_timeout 10 s: it keeps using the most recently
    # used resource, so the other three go unused and are closed.
    fm = FakeManager()
    pool = Pool(fm, max_size=4, idle_timeout=10.0)
    await pool.open()
    held = await checked_out_then_idle(pool, 4)
    used = set()
    for _ in range(10):
        async with pool.acquire() as r:
            used.add(r)
        await asyncio.sleep(2.0)
    st = pool.statistics()
    assert (st.size, st.idle) == (1, 1)
    assert used == {held[-1]}
    assert fm.closed == 3
    await pool.aclose()
    assert_closed_cleanly(pool, fm)


async def test_idle_timeout_counts_from_last_release() -> None:
    fm = FakeManager()
    pool = Pool(fm, max_size=2, idle_timeout=10.0)
    await pool.open()
    async with pool.acquire():
        pass
    await asyncio.sleep(6.0)
    async with pool.acquire():
        await asyncio.sleep(1.0)
    await asyncio.sleep(8.0)  # 15 s since creation, 8 s since last use
    assert pool.statistics().idle == 1
    await asyncio.sleep(2.5)
    assert pool.statistics().size == 0
    assert _close_times(fm)[1] == pytest.approx(17.0)
    await pool.aclose()
    assert_closed_cleanly(pool, fm)


async def test_min_size_resource_past_idle_timeout_is_reused_not_replaced() -> None:
    fm = FakeManager()
    pool = Pool(fm, min_size=1, max_size=2, idle_timeout=5.0)
    await pool.open()
    await asyncio.sleep(60.0)
    async with pool.acquire() as r:
        assert r.id == 1  # kept warm at min_size, not closed and recreated
    r = pool.acquire_nowait()
    assert r.id == 1
    await pool.release(r)
    assert fm.created == 1
    await pool.aclose()
    assert_closed_cleanly(pool, fm)


async def test_lowering_min_size_lets_idle_timeout_trim() -> None:
    fm = FakeManager()
    pool = Pool(fm, min_size=3, max_size=3, idle_timeout=5.0)
    await pool.open()
    await asyncio.sleep(10.0)
    assert pool.statistics().idle == 3
    await pool.resize(min_size=1)
    await asyncio.sleep(1.0)
    assert pool.statistics().size == 1
    await pool.aclose()
    assert_closed_cleanly(pool, fm)


async def test_min_size_refilled_in_background() -> None:
    fm = FakeManager()
    fm.delay("create", 1.0)
    pool = Pool(fm, min_size=2, max_size=3)
    await pool.open()
    r = await pool.acquire()
    await pool.release(r, discard=True)
    assert pool.statistics().size == 2  # the replacement is already being created
    # Half a second past the creations' end: a check at the very instant they end would
    # race their timers (which start after this task's sleep does).
    await asyncio.sleep(1.5)
    assert pool.statistics().idle == 2
    await pool.expire()
    await asyncio.sleep(1.5)
    assert pool.statistics().idle == 2
    assert fm.created == 5
    assert_consistent(pool, fm)
    await _assert_no_wakeups(pool)
    await pool.aclose()
    assert_closed_cleanly(pool, fm)


async def test_housekeeping_is_one_timer_at_the_next_deadline() -> None:
    fm = FakeManager()
    pool = Pool(fm, max_size=5, max_lifetime=1000.0, idle_timeout=50.0, leak_timeout=30.0)
    await pool.open()
    held = [await pool.acquire() for _ in range(5)]
    assert len(_pool_timers(pool)) == 1  # one timer, for the first leak deadline
    for r in held[:3]:
        await asyncio.sleep(1.0)
        await pool.release(r)
        assert len(_pool_timers(pool)) <= 1
    (timer,) = _pool_timers(pool)
    assert timer.when() == pytest.approx(30.0)  # the earliest deadline: leak of held[3]
    loop = _loop()
    jumps = loop.jumps
    await asyncio.sleep(200.0)
    # wake-ups: leak at 30 (both held), idle timeouts at 51, 52, 53, our sleep
    assert loop.jumps - jumps <= 5
    assert pool.statistics().leaks == 2
    assert pool.statistics().idle == 0
    for r in held[3:]:
        await pool.release(r)
    await pool.aclose()
    assert _pool_timers(pool) == []
    assert_closed_cleanly(pool, fm)


@pytest.mark.pool_shapes(*NO_DEADLINES)
async def test_no_timer_without_deadlines() -> None:
    fm = FakeManager()
    pool = Pool(fm, min_size=2, max_size=4)
    await pool.open()
    async with pool.acquire():
        assert _pool_timers(pool) == []
    assert _pool_timers(pool) == []
    await _assert_no_wakeups(pool)
    await pool.aclose()


def acquire_site_for_leak_test(pool: Pool[FakeResource]) -> Any:
    """A uniquely named frame so the test can find it in the reported stack."""
    return pool.acquire()


async def test_leak_timeout_reports_once_per_lease_with_stack(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="aiolease.pool")
    fm = FakeManager()
    pool = Pool(fm, max_size=2, leak_timeout=10.0, name="leaky")

    async def hold_for(seconds: float) -> None:
        async with acquire_site_for_leak_test(pool):
            await asyncio.sleep(seconds)

    await pool.open()
    await hold_for(9.0)  # released in time: no report
    assert pool.statistics().leaks == 0
    assert caplog.records == []

    await hold_for(35.0)  # reported once, not every 10 s
    assert pool.statistics().leaks == 1
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert "leaky" in message
    assert "leak_timeout=10.0" in message
    assert "acquire_site_for_leak_test" in message  # the acquiring stack
    assert "hold_for" in message

    await hold_for(11.0)  # a new lease: reported again
    assert pool.statistics().leaks == 2
    await pool.aclose()
    assert_closed_cleanly(pool, fm)


async def test_leak_report_for_awaited_acquire(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="aiolease.pool")
    fm = FakeManager()
    pool = Pool(fm, max_size=1, leak_timeout=1.0)
    await pool.open()

    async def forgetful_user() -> FakeResource:
        return await pool.acquire()

    r = await forgetful_user()
    await asyncio.sleep(5.0)
    assert pool.statistics().leaks == 1
    assert "forgetful_user" in caplog.text
    await pool.release(r)
    await pool.aclose()


# -- merged from the former acceptance suite (tests/acceptance/test_contract_pools.py)


def test_max_lifetime_with_negative_jitter() -> None:
    async def main() -> None:
        for _ in range(5):
            fm = FakeManager()
            async with Pool(fm, min_size=0, max_size=1, max_lifetime=100) as pool:
                t0 = now()
                async with pool.acquire():
                    pass
                await asyncio.sleep(94.9)  # below 95%: never expired yet
                assert not fm.resources[0].closed
                await asyncio.sleep(5.2)  # past 100%: always expired (housekeeping, no acquire)
                assert closed(fm.resources[0])
                closed_at = fm.events_of("closed")[0].time
                assert t0 + 95 <= closed_at <= t0 + 100

    vrun(main)


def test_idle_timeout_only_above_min_size() -> None:
    async def main() -> None:
        fm = FakeManager()
        async with Pool(fm, min_size=1, max_size=3, idle_timeout=10) as pool:
            a = await pool.acquire()
            b = await pool.acquire()
            c = await pool.acquire()
            for r in (a, b, c):
                await pool.release(r)
            assert pool.statistics().idle == 3
            await asyncio.sleep(9)
            assert pool.statistics().idle == 3
            await asyncio.sleep(2)
            s = pool.statistics()
            assert (s.size, s.idle) == (1, 1)
            await asyncio.sleep(1000)
            assert pool.statistics().size == 1

    vrun(main)


def test_leak_timeout_reported_once_per_lease(caplog: pytest.LogCaptureFixture) -> None:
    def acquiring_function_name_xyz(pool: Pool[FakeResource]) -> Awaitable[FakeResource]:
        return asyncio.ensure_future(pool.acquire())

    async def main() -> None:
        async with Pool(FakeManager(), max_size=1, leak_timeout=10, name="leaky") as pool:
            r = await pool.acquire()
            await asyncio.sleep(9)
            assert pool.statistics().leaks == 0
            await asyncio.sleep(2)
            assert pool.statistics().leaks == 1
            await asyncio.sleep(100)
            assert pool.statistics().leaks == 1  # once per lease
            await pool.release(r)
            async with pool.acquire():
                await asyncio.sleep(11)
            assert pool.statistics().leaks == 2
            r = await acquiring_function_name_xyz(pool)
            await asyncio.sleep(11)
            await pool.release(r)
            assert pool.statistics().leaks == 3

    with caplog.at_level(logging.WARNING):
        vrun(main)
    warnings_ = [rec for rec in caplog.records if rec.levelno >= logging.WARNING]
    assert len(warnings_) >= 3
    assert any("test_leak_timeout_reported_once_per_lease" in rec.getMessage() for rec in warnings_)


def test_housekeeping_does_not_poll() -> None:
    counted: list[float] = []

    class CountingLoop(VirtualTimeLoop):
        def call_at(  # type: ignore[override]
            self, when: float, callback: Any, *args: Any, context: Any = None
        ) -> Any:
            counted.append(when)
            return super().call_at(when, callback, *args, context=context)

    async def main() -> None:
        fm = FakeManager()
        async with Pool(fm, min_size=1, max_size=3, idle_timeout=10, leak_timeout=30) as pool:
            rs = [await pool.acquire() for _ in range(3)]
            for r in rs:
                await pool.release(r)
            await asyncio.sleep(20)
            assert pool.statistics().size == 1
            counted.clear()
            await asyncio.sleep(3600)  # an idle hour: nothing is due
            assert len(counted) <= 2, counted  # the sleep's own timer (+ at most one re-arm)

    with asyncio.Runner(loop_factory=CountingLoop) as runner:
        runner.run(main())


def test_min_size_kept_filled_across_lifetimes() -> None:
    async def main() -> None:
        fm = FakeManager()
        async with Pool(fm, min_size=2, max_size=3, max_lifetime=100) as pool:
            await asyncio.sleep(1000)
            s = pool.statistics()
            assert (s.size, s.idle) == (2, 2)
            assert 18 <= s.created <= 24
            assert all(r.closed for r in fm.resources[:-2])

    vrun(main)


async def test_idle_timeout_does_not_count_closes_in_flight_as_surplus() -> None:
    # A slow close keeps its slot in `size` until it ends; trimming must not take it for a
    # live resource above min_size, or the min_size one is closed too and recreated.
    fm = FakeManager()
    fm.delay("close", 5.0)
    pool = Pool(fm, min_size=1, max_size=3, idle_timeout=10.0)
    await pool.open()
    held = [await pool.acquire() for _ in range(3)]
    for r in held:  # idle deadlines at 10, 11 and 12: each while the previous close runs
        await pool.release(r)
        await asyncio.sleep(1.0)
    await asyncio.sleep(30.0)
    st = pool.statistics()
    assert (st.size, st.idle) == (1, 1)
    assert fm.created == 3, "the min_size resource was closed and recreated"
    assert not held[-1].closed  # the most recently used one is the one kept
    assert_consistent(pool, fm)
    await pool.aclose()
    assert_closed_cleanly(pool, fm)


def test_a_resource_created_for_a_waiter_is_handed_out_even_with_a_tiny_max_lifetime() -> None:
    # The lifetime starts when the creation ends; the hand-off reads the clock again a few
    # microseconds later. A lifetime shorter than that must not throw every new resource
    # away at its hand-off (a create/close loop at full speed that never serves the waiter).
    async def main() -> None:
        fm = FakeManager()
        async with Pool(fm, max_size=1, max_lifetime=1e-9) as pool:
            async with pool.acquire(timeout=5.0) as r:
                assert not r.closed
            assert fm.created == 1, f"{fm.created} resources made to serve one acquire"
            await settle(pool)
            assert closed(r)  # retired at its release: its lifetime is over
        assert_closed_cleanly(pool, fm)

    asyncio.run(main())


class _NoRepr:
    """A resource whose repr raises (as some do once closed or half-built)."""

    def __repr__(self) -> str:
        raise RuntimeError("repr failed")


async def test_housekeeping_survives_a_resource_whose_repr_raises(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="aiolease.pool")

    async def make() -> _NoRepr:
        return _NoRepr()

    pool = Pool.from_callables(make, max_size=3, leak_timeout=5.0, idle_timeout=10.0)
    await pool.open()
    a, b, c = [await pool.acquire() for _ in range(3)]
    await pool.release(c)
    await asyncio.sleep(60.0)
    st = pool.statistics()
    assert st.leaks == 2, st  # both leases reported, not only the first
    assert (st.idle, st.size) == (0, 2), st  # and the idle one trimmed
    assert "_NoRepr" in caplog.text
    assert _pool_timers(pool) == []
    closing = asyncio.create_task(pool.aclose())
    await asyncio.sleep(3.0)  # aclose() reports the leases it waits for, and goes on waiting
    assert not closing.done()
    await pool.release(a)
    await pool.release(b)
    await closing
    assert pool.statistics().size == 0


async def test_min_size_is_refilled_while_retired_resources_close_slowly() -> None:
    # A close in flight is not a live resource: min_size is refilled at once where
    # max_size leaves room, not only once the slow closes have ended.
    fm = FakeManager()
    fm.delay("close", 5.0)
    pool = Pool(fm, min_size=2, max_size=4, max_lifetime=10.0)
    await pool.open()
    await asyncio.sleep(10.5)  # both retired (lifetime 9.5..10 s), their closes run until ~15
    st = pool.statistics()
    assert (st.size, st.idle, st.closed) == (4, 2, 0), st  # two closing, two new ones idle
    await asyncio.sleep(5.0)  # the old ones closed, the new ones not yet past their lifetime
    st = pool.statistics()
    assert (st.size, st.idle, st.closed) == (2, 2, 2), st
    assert_consistent(pool, fm)
    await pool.aclose()
    assert_closed_cleanly(pool, fm)


def test_housekeeping_timer_firing_early_does_not_spin() -> None:
    # uvloop's timers have millisecond ticks: a timer may fire while the loop's clock still
    # reads a little before its deadline. The deadline the timer was armed for has come all
    # the same: re-arming for it would spin (at most 1 ms on uvloop, here until the loop
    # stops firing early, which it does after 100 early fires to keep this test bounded).
    runs: list[float] = []

    EarlyTimerLoop = early_timer_loop(Housekeeper.run, runs)

    async def main() -> None:
        fm = FakeManager()
        async with Pool(fm, max_size=2, idle_timeout=10.0) as pool:
            r = await pool.acquire()
            await pool.release(r)
            await asyncio.sleep(20.0)
            assert pool.statistics().size == 0  # trimmed at its idle deadline

    with asyncio.Runner(loop_factory=EarlyTimerLoop) as runner:
        runner.run(main())
    assert runs.count(10.0) == 1, f"armed {runs.count(10.0)} times for the idle deadline"
