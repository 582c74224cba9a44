"""Creation failures: fail fast, pool-wide jittered exponential backoff, PoolTimeout cause."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from pool_helpers import (
    NO_HANG,
    assert_closed_cleanly,
    assert_consistent,
    early_timer_loop,
    now,
    settle,
    start_acquire,
    vrun,
)

from aiolease import (
    Pool,
    PoolTimeout,
)
from aiolease._pool._creations import Creations
from aiolease.testing import FakeManager, FakeResource

pytestmark = [pytest.mark.aiolease_virtual_time, NO_HANG]


def _attempt_times(fm: FakeManager) -> list[float]:
    """When each create call ended (a failing create with no delay ends when it starts)."""
    return [e.time for e in fm.events_of("created")]


async def test_create_error_goes_to_its_caller_at_once() -> None:
    fm = FakeManager()
    fm.fail("create", ConnectionError, calls=1)
    pool = Pool(fm, max_size=1, acquire_timeout=30.0)
    await pool.open()
    loop = asyncio.get_running_loop()
    with pytest.raises(ConnectionError, match="call #1"):
        await pool.acquire()
    assert loop.time() == 0.0  # not a timeout: at once
    st = pool.statistics()
    assert (st.size, st.create_errors, st.timeouts) == (0, 1, 0)  # capacity restored
    assert_consistent(pool, fm)
    await pool.aclose()
    assert_closed_cleanly(pool, fm)


async def test_next_acquirer_waits_for_backoff_then_succeeds() -> None:
    fm = FakeManager()
    fm.fail("create", ConnectionError, calls=1)
    pool = Pool(fm, max_size=2, backoff_base=4.0)
    await pool.open()
    loop = asyncio.get_running_loop()
    with pytest.raises(ConnectionError):
        await pool.acquire()
    r = await pool.acquire(timeout=10.0)
    assert 2.0 <= loop.time() <= 4.0  # base delay, jittered down by up to half
    assert fm.calls["create"] == 2  # no attempt before the backoff ended
    await pool.release(r)
    r2 = await pool.acquire()
    r3 = await pool.acquire()  # success reset the backoff: immediate creation
    assert 2.0 <= loop.time() <= 4.0
    await pool.release(r2)
    await pool.release(r3)
    await pool.aclose()
    assert_closed_cleanly(pool, fm)


async def test_a_backoff_that_ends_between_two_clock_reads_still_starts_the_next_attempt() -> None:
    # uvloop's clock is libuv's, read afresh in milliseconds: it can move on between two
    # reads in one callback. At the backoff's end the dispatch found it not over (no
    # attempt), then over (no timer): the waiter stalled until its acquire timeout. Here
    # the first read at each new loop time lags the loop by a microsecond.
    fm = FakeManager()
    fm.fail("create", ConnectionError, calls=1)
    pool = Pool(fm, max_size=1, backoff_base=4.0)
    await pool.open()
    with pytest.raises(ConnectionError):
        await pool.acquire()
    loop_clock = pool._clock
    seen = [-1.0]

    def lagging() -> float:
        t = loop_clock()
        if t != seen[0]:
            seen[0] = t
            return t - 1e-6
        return t

    pool._clock = lagging
    until = pool._creations.backoff.until
    r = await pool.acquire(timeout=10.0)
    assert now() == until  # the attempt started when the backoff ended
    assert fm.calls["create"] == 2
    await pool.release(r)
    await pool.aclose()
    assert_closed_cleanly(pool, fm)


async def test_each_attempt_failure_goes_to_the_caller_it_served() -> None:
    fm = FakeManager()
    fm.fail("create", ConnectionError, calls=[1, 2, 3])
    pool = Pool(fm, max_size=5, backoff_base=1.0, backoff_max=100.0)
    await pool.open()
    tasks = []
    for i in range(5):
        tasks.append(start_acquire(pool, name=f"acquirer{i}"))
        await asyncio.sleep(0)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for i in range(3):
        error = results[i]
        assert isinstance(error, ConnectionError)
        assert f"call #{i + 1}" in str(error)  # attempt i+1 served acquirer i
    got = [r for r in results[3:] if isinstance(r, FakeResource)]
    assert len(got) == 2
    assert pool.statistics().create_errors == 3
    for r in got:
        await pool.release(r)
    assert_consistent(pool, fm)
    await pool.aclose()
    assert_closed_cleanly(pool, fm)


async def test_backoff_is_pool_wide_exponential_and_capped() -> None:
    fm = FakeManager()
    fm.fail("create", ConnectionError, calls=range(1, 8))
    pool = Pool(fm, max_size=10, backoff_base=1.0, backoff_max=8.0)
    await pool.open()
    with pytest.raises(ConnectionError):
        await pool.acquire()
    # Now ten tasks want a resource at once: attempts are made one at a time, spaced out.
    tasks = [start_acquire(pool) for _ in range(10)]
    results = await asyncio.gather(*tasks, return_exceptions=True)
    errors = [r for r in results if isinstance(r, ConnectionError)]
    assert len(errors) == 6
    assert sum(isinstance(r, FakeResource) for r in results) == 4
    times = _attempt_times(fm)[:8]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # After failure k+1 the delay is base * 2**k, capped, jittered down to [50%, 100%].
    for k, gap in enumerate(gaps):
        full = min(8.0, 1.0 * 2**k)
        assert full / 2 <= gap <= full, (k, gap, gaps)
    assert len({round(g / min(8.0, 2**k), 6) for k, g in enumerate(gaps)}) > 1  # jittered
    for r in results:
        if isinstance(r, FakeResource):
            await pool.release(r)
    await pool.aclose()
    assert_closed_cleanly(pool, fm)


async def test_only_one_attempt_in_flight_during_backoff() -> None:
    fm = FakeManager()
    fm.fail("create", ConnectionError, calls=1)
    gate = fm.block("create", calls=2)
    pool = Pool(fm, max_size=5, backoff_base=1.0)
    await pool.open()
    with pytest.raises(ConnectionError):
        await pool.acquire()
    tasks = [start_acquire(pool) for _ in range(4)]
    await gate.wait_arrived()  # the probe after the backoff
    await asyncio.sleep(0)
    assert fm.creating == 1  # the others wait for the probe's outcome
    gate.open()
    results = await asyncio.gather(*tasks)
    assert len({r.id for r in results}) == 4
    for r in results:
        await pool.release(r)
    await pool.aclose()
    assert_closed_cleanly(pool, fm)


async def test_pool_timeout_carries_last_creation_error() -> None:
    fm = FakeManager()
    fm.fail("create", lambda call: ConnectionError(f"backend down #{call.number}"))
    pool = Pool(fm, max_size=2, backoff_base=10.0)
    await pool.open()
    with pytest.raises(ConnectionError, match="#1"):
        await pool.acquire()
    with pytest.raises(PoolTimeout) as info:
        await pool.acquire(timeout=1.0)  # the next attempt is 5-10 s away
    cause = info.value.__cause__
    assert isinstance(cause, ConnectionError)
    assert str(cause) == "backend down #1"
    assert "backend down #1" in str(info.value)
    assert pool.statistics().timeouts == 1
    assert_consistent(pool, fm)
    await pool.aclose()
    assert_closed_cleanly(pool, fm)


async def test_timed_out_waiter_does_not_consume_later_attempt() -> None:
    fm = FakeManager()
    fm.fail("create", ConnectionError, calls=1)
    pool = Pool(fm, max_size=1, backoff_base=10.0)
    await pool.open()
    with pytest.raises(ConnectionError):
        await pool.acquire()
    with pytest.raises(PoolTimeout):
        await pool.acquire(timeout=1.0)
    async with pool.acquire(timeout=20.0) as r:  # served by the attempt after the backoff
        assert r.id == 1
    assert fm.calls["create"] == 2
    await pool.aclose()
    assert_closed_cleanly(pool, fm)


async def test_min_size_refill_backs_off_and_recovers() -> None:
    fm = FakeManager()
    fm.fail("create", ConnectionError, calls=[2, 3, 4])
    pool = Pool(fm, min_size=2, max_size=2, backoff_base=1.0)
    with pytest.raises(ConnectionError):
        await pool.open()  # open(wait=True) reports the failure and closes
    assert_closed_cleanly(pool, fm)

    fm2 = FakeManager()
    fm2.fail("create", ConnectionError, calls=[2, 3, 4])
    pool2 = Pool(fm2, min_size=2, max_size=2, backoff_base=1.0)
    await pool2.open(wait=False)
    await asyncio.sleep(100.0)
    assert pool2.statistics().idle == 2  # refilled in the background after the failures
    times = _attempt_times(fm2)
    assert len(times) == 5  # not hammered: one attempt per backoff period
    assert all(b - a >= 0.5 for a, b in itertools.pairwise(times[1:]))
    assert_consistent(pool2, fm2)
    await pool2.aclose()
    assert_closed_cleanly(pool2, fm2)


async def test_no_busy_loop_when_backoff_ends_while_pool_is_full(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After a failed creation, waiters queued on a full pool wait for capacity once the
    backoff is over: no timer re-armed at a past time (a busy loop)."""
    fm = FakeManager()
    fm.fail("create", ConnectionError, calls=2)
    pool = Pool(fm, max_size=2, backoff_base=1.0)
    await pool.open()
    held = await pool.acquire()
    with pytest.raises(ConnectionError):
        await pool.acquire()
    await pool.resize(max_size=1)  # now full
    # Count the backoff wake-ups (white-box), and break a busy loop instead of hanging in it:
    # virtual time cannot advance while a timer keeps firing at a past time.
    wakeups = 0
    on_backoff_end = Creations._on_backoff_end

    def counting(self: Creations[FakeResource], when: float) -> None:
        nonlocal wakeups
        wakeups += 1
        if wakeups < 100:
            on_backoff_end(self, when)
        else:
            self._timer = None

    monkeypatch.setattr(Creations, "_on_backoff_end", counting)
    waiter = start_acquire(pool)
    await asyncio.sleep(100.0)  # far past the backoff
    assert wakeups == 1  # the backoff ended once, and its timer was not re-armed in the past
    assert not waiter.done()
    await pool.release(held)
    assert await waiter is held
    await pool.release(held)
    await pool.aclose()
    assert_closed_cleanly(pool, fm)


async def test_create_error_during_wait_for_queue_slot_is_not_lost_capacity() -> None:
    fm = FakeManager()
    fm.fail("create", ConnectionError, calls=2)
    pool = Pool(fm, max_size=2, backoff_base=1.0)
    await pool.open()
    a = await pool.acquire()
    with pytest.raises(ConnectionError):
        await pool.acquire()
    b = await pool.acquire()  # after the backoff
    assert pool.statistics().size == 2
    await pool.release(a)
    await pool.release(b)
    await settle(pool)
    assert_consistent(pool, fm)
    await pool.aclose()
    assert_closed_cleanly(pool, fm)


# -- merged from the former acceptance suite (tests/acceptance/test_contract_pools.py)


def test_create_error_goes_to_caller_not_timeout() -> None:
    async def main() -> None:
        fm = FakeManager()
        fm.fail("create", ConnectionRefusedError, calls=1)
        async with Pool(fm, max_size=2, acquire_timeout=60) as pool:
            t0 = now()
            with pytest.raises(ConnectionRefusedError):
                await pool.acquire()
            assert now() == t0  # at once, not after the timeout
            assert pool.statistics().size == 0  # capacity restored
            await asyncio.sleep(20)  # past any backoff
            async with pool.acquire() as r:
                assert isinstance(r, FakeResource)

    vrun(main)


def test_timeout_carries_last_creation_error_as_cause() -> None:
    async def main() -> None:
        fm = FakeManager()
        fm.fail("create", ConnectionRefusedError)
        async with Pool(fm, max_size=2) as pool:
            with pytest.raises(ConnectionRefusedError):
                await pool.acquire(timeout=10)
            # Now in backoff (>= 0.5 * base): a tiny timeout expires before the next attempt.
            with pytest.raises(PoolTimeout) as ei:
                await pool.acquire(timeout=0.001)
            assert isinstance(ei.value.__cause__, ConnectionRefusedError)

    vrun(main)


def test_backoff_spaces_attempts_exponentially() -> None:
    async def main() -> None:
        fm = FakeManager()
        fm.fail("create", ConnectionRefusedError)
        async with Pool(fm, max_size=10) as pool:
            stamps: list[float] = []
            for _ in range(8):
                with pytest.raises(ConnectionRefusedError):
                    await pool.acquire(timeout=10_000)
                stamps.append(now())
            gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]  # noqa: RUF007
            assert all(g > 0 for g in gaps), gaps
            # exponential growth overall (jittered by at most 2x per step)
            assert gaps[-1] > 4 * gaps[0], gaps
            # and a down backend is not hammered by many concurrent callers
            calls_before = fm.calls["create"]

            async def try_once() -> None:
                with pytest.raises((ConnectionRefusedError, PoolTimeout)):
                    await pool.acquire(timeout=1)

            await asyncio.gather(*(try_once() for _ in range(50)))
            assert fm.calls["create"] - calls_before <= 2

    vrun(main)


def test_later_acquirers_wait_for_next_attempt_and_get_resource_on_recovery() -> None:
    async def main() -> None:
        fm = FakeManager()
        fm.fail("create", ConnectionRefusedError, calls=[1, 2])
        async with Pool(fm, max_size=3) as pool:
            with pytest.raises(ConnectionRefusedError):
                await pool.acquire(timeout=100)
            with pytest.raises(ConnectionRefusedError):
                await pool.acquire(timeout=100)
            async with pool.acquire(timeout=100) as r:
                assert isinstance(r, FakeResource)

    vrun(main)


def test_open_with_failing_min_size_raises_creation_error() -> None:
    async def main() -> None:
        fm = FakeManager()
        fm.fail("create", ConnectionRefusedError, calls=1)
        pool = Pool(fm, min_size=2, max_size=2)
        with pytest.raises(ConnectionRefusedError):
            await pool.open()
        await pool.aclose()
        fm.assert_all_closed()

    vrun(main)


def test_min_size_refilled_in_background_after_discard() -> None:
    async def main() -> None:
        fm = FakeManager()
        async with Pool(fm, min_size=2, max_size=3) as pool:
            r = await pool.acquire()
            await pool.release(r, discard=True)
            await settle()
            assert pool.statistics().idle == 2

    vrun(main)


def test_implicit_open_failure_does_not_kill_pool() -> None:
    """`acquire()` opens a never-opened pool; a failed creation is the caller's error only."""

    async def main() -> None:
        fm = FakeManager()
        fm.fail("create", ConnectionRefusedError, calls=1)
        pool = Pool(fm, min_size=1, max_size=2)
        with pytest.raises(ConnectionRefusedError):
            await pool.acquire()
        await asyncio.sleep(30)  # past the backoff
        async with pool.acquire() as r:  # "capacity is restored": the pool still works
            assert isinstance(r, FakeResource)
        await pool.aclose()

    vrun(main)


def test_down_backend_is_not_hammered_by_min_size_refill() -> None:
    async def main() -> None:
        fm = FakeManager()
        async with Pool(fm, min_size=2, max_size=3) as pool:
            fm.fail("create")
            for _ in range(2):
                r = await pool.acquire()
                await pool.release(r, discard=True)
            before = fm.calls["create"]
            await asyncio.sleep(60)
            assert fm.calls["create"] - before <= 30  # backoff, not a retry storm
            assert pool.statistics().size == 0
            fm.clear_rules()
            await asyncio.sleep(30)  # recovers by itself (backoff capped)
            assert pool.statistics().idle == 2

    vrun(main)


def test_backoff_timer_firing_early_does_not_spin() -> None:
    # uvloop's timers tick in milliseconds: the backoff's timer may fire while the clock
    # still reads a little before the backoff's end. That end has come all the same:
    # finding the backoff not over and re-arming for it would spin (here until the loop
    # stops firing early, after 100 early fires, to keep this test bounded).
    arms: list[float] = []

    EarlyTimerLoop = early_timer_loop(Creations._on_backoff_end, arms)

    async def main() -> None:
        fm = FakeManager()
        fm.fail("create", ConnectionError, calls=1)
        pool = Pool(fm, min_size=1, max_size=1, backoff_base=4.0)
        await pool.open(wait=False)  # its first creation fails: a backoff of 2..4 s
        await asyncio.sleep(10.0)
        assert pool.statistics().idle == 1  # refilled when the backoff ended
        assert fm.calls["create"] == 2
        await pool.aclose()

    with asyncio.Runner(loop_factory=EarlyTimerLoop) as runner:
        runner.run(main())
    assert len(arms) == 1, f"the backoff timer was armed {len(arms)} times"
