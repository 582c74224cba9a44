"""LimitGroup: several rate limits and a concurrency limit held together, atomically (local)."""

from __future__ import annotations

import asyncio
import pickle

import pytest
from limits_helpers import run_then_close, vrun

from aiolease import (
    ConcurrencyLimiter,
    GroupPermit,
    LimitGroup,
    LimitTimeout,
    RateLimiter,
    RateLimitExceeded,
    WouldBlock,
)


def now() -> float:
    return asyncio.get_running_loop().time()


def test_two_rate_limits_hold_together() -> None:
    async def body() -> list[float]:
        per_second = RateLimiter(2, burst=2)
        per_ten = RateLimiter(3, per=10, strict=True)  # "at most 3 in any 10 s"
        both = LimitGroup(per_second, per_ten)
        t0 = now()
        times = []
        for _ in range(6):
            async with both:
                times.append(now() - t0)
        return times

    assert vrun(body) == [0.0, 0.0, 0.5, 10.0, 10.0, 10.5]


def test_waiting_holds_no_member_capacity() -> None:
    async def body() -> None:
        fast = RateLimiter(10)
        slow = RateLimiter(1)
        group = LimitGroup(fast, slow)
        await group.acquire()
        w = asyncio.ensure_future(group.acquire())  # admitted at 1.0 by slow
        await asyncio.sleep(0.5)
        assert fast.statistics().admitted == 1  # nothing charged to `fast` while waiting
        assert fast.statistics().waiting == 1
        await w
        assert now() == 1.0
        assert (fast.statistics().admitted, slow.statistics().admitted) == (2, 2)

    vrun(body)


def test_rate_and_concurrency_in_one_async_with() -> None:
    async def body() -> list[float]:
        rate = RateLimiter(10)
        sem = ConcurrencyLimiter(2)
        api = LimitGroup(rate, sem)
        t0 = now()
        starts: list[float] = []
        peak = 0

        async def call() -> None:
            nonlocal peak
            async with api.acquire() as permit:
                assert isinstance(permit, GroupPermit)
                starts.append(now() - t0)
                peak = max(peak, sem.statistics().in_use)
                await asyncio.sleep(1.0)

        await asyncio.gather(*(call() for _ in range(6)))
        assert peak == 2
        assert sem.statistics().in_use == 0
        return starts

    assert vrun(body) == pytest.approx([0.0, 0.1, 1.0, 1.1, 2.0, 2.1])


def test_cancelled_group_waiter_gives_everything_back() -> None:
    async def body() -> dict[str, float]:
        rate = RateLimiter(1)
        sem = ConcurrencyLimiter(5)
        group = LimitGroup(rate, sem)
        await group.acquire()  # leaves one slot in use (permit not released)
        t0 = now()
        got: dict[str, float] = {}

        async def one(name: str) -> None:
            async with group.acquire():
                got[name] = now() - t0

        a = asyncio.ensure_future(one("a"))
        await asyncio.sleep(0)
        b = asyncio.ensure_future(one("b"))
        await asyncio.sleep(0.5)
        a.cancel()
        with pytest.raises(asyncio.CancelledError):
            await a
        await b
        assert (rate.statistics().waiting, sem.statistics().waiting) == (0, 0)
        assert sem.statistics().in_use == 1
        assert sem.statistics().cancelled == 1
        return got

    assert vrun(body) == {"b": 1.0}


def test_group_task_cancelled_as_admitted_returns_slot_and_rate() -> None:
    async def body() -> None:
        rate = RateLimiter(1)
        sem = ConcurrencyLimiter(1)
        group = LimitGroup(rate, sem)
        first = await group.acquire()
        w = asyncio.ensure_future(group.acquire())
        await asyncio.sleep(0)
        first.release()
        await asyncio.sleep(0.99)  # rate admits w at 1.0
        loop = asyncio.get_running_loop()
        loop.call_at(1.0, w.cancel)
        with pytest.raises(asyncio.CancelledError):
            await w
        assert sem.statistics().in_use == 0
        p = group.acquire_nowait()  # the rate slot at 1.0 was refunded too
        p.release()

    vrun(body)


def test_group_timeouts() -> None:
    async def body() -> None:
        rate = RateLimiter(1)
        sem = ConcurrencyLimiter(1)
        group = LimitGroup(rate, sem)
        held = await group.acquire()
        t0 = now()
        # The rate part alone cannot make it: fail fast.
        with pytest.raises(RateLimitExceeded) as info:
            await group.acquire(timeout=0.5)
        assert info.value.retry_after == 1.0
        assert now() == t0
        # The rate could, but the slot never comes free: LimitTimeout at the deadline.
        with pytest.raises(LimitTimeout):
            await group.acquire(timeout=2.0)
        assert now() - t0 == 2.0
        held.release()
        async with group.acquire(timeout=0):
            pass

    vrun(body)


@pytest.mark.parametrize("plain", [False, True])
def test_deadline_holds_when_a_group_delays_the_queue(plain: bool) -> None:
    """Estimates on arrival are exact per limiter; a group admitted late can still push
    later waiters back, so waiters with a timeout on a grouped limiter keep a deadline."""

    async def body() -> None:
        r1, r2, r3 = RateLimiter(1), RateLimiter(1), RateLimiter(1)
        g12, g13 = LimitGroup(r1, r2), LimitGroup(r1, r3)
        t0 = now()
        await g12.acquire()  # r1 and r2 busy until t0 + 1
        x = asyncio.ensure_future(r2.acquire())  # r2 at t0 + 1
        await asyncio.sleep(0)
        g = asyncio.ensure_future(g12.acquire())  # behind x on r2: t0 + 2, holding up r1
        await asyncio.sleep(0)
        # Estimated t0 + 2 on r1; really t0 + 3 (r1's slot for g slipped to t0 + 2).
        late = r1.acquire(timeout=2.5) if plain else g13.acquire(timeout=2.5)
        with pytest.raises(RateLimitExceeded):
            await late
        assert now() - t0 == 2.5
        await asyncio.gather(x, g)
        assert r1.statistics().waiting == 0

    vrun(body)


def test_group_acquire_nowait() -> None:
    async def body() -> None:
        rate = RateLimiter(1)
        sem = ConcurrencyLimiter(1)
        group = LimitGroup(rate, sem)
        p = group.acquire_nowait()
        with pytest.raises(WouldBlock) as full:
            group.acquire_nowait()
        # Both members refuse: no admission before the rate member's next slot.
        assert full.value.retry_after == 1.0
        p.release()
        with pytest.raises(RateLimitExceeded) as info:
            group.acquire_nowait()
        assert info.value.retry_after == 1.0
        assert sem.statistics().in_use == 0
        with pytest.raises(TypeError, match=r"key must be hashable .*got list \[1\]"):
            group.acquire_nowait(key=[1])  # type: ignore[arg-type]

    vrun(body)


def test_a_full_concurrency_member_alone_does_not_know_when_it_frees() -> None:
    async def body() -> None:
        sem = ConcurrencyLimiter(1)
        group = LimitGroup(RateLimiter(100), sem)
        held = group.acquire_nowait()
        await asyncio.sleep(1)  # the rate member has admissions to spare again
        with pytest.raises(WouldBlock) as full:
            group.acquire_nowait()
        assert full.value.retry_after is None
        with pytest.raises(WouldBlock) as alone:
            sem.acquire_nowait()
        assert alone.value.retry_after is None
        held.release()

    vrun(body)


def test_would_block_keeps_its_retry_after_through_pickle() -> None:
    err = pickle.loads(pickle.dumps(WouldBlock("full", retry_after=2)))
    assert (str(err), err.retry_after) == ("full", 2.0)
    assert WouldBlock("plain").retry_after is None


def test_group_settle_and_pause() -> None:
    async def body() -> None:
        a = RateLimiter(1, burst=4)
        b = RateLimiter(2, burst=4)
        group = LimitGroup(a, b)
        p = await group.acquire(cost=1)
        p.settle(4)
        assert p.cost == 4
        with pytest.raises(RateLimitExceeded) as info:
            group.acquire_nowait()
        assert info.value.retry_after == 1.0  # a: tat 4 -> cost 1 at 1.0
        await asyncio.sleep(10)
        group.pause(3)
        t0 = now()
        await group.acquire()
        assert now() - t0 == 3.0

    vrun(body)


@pytest.mark.parametrize("seconds", [-1.0, float("nan"), float("inf"), 10**400])
def test_group_pause_checks_seconds_without_a_rate_member(seconds: float) -> None:
    group = LimitGroup(ConcurrencyLimiter(1), ConcurrencyLimiter(2))
    with pytest.raises(ValueError, match="seconds"):
        group.pause(seconds)
    group.pause(0.5)  # a valid pause of a group with no rate member does nothing


def test_group_bad_arguments() -> None:
    rate = RateLimiter(1, burst=2)
    with pytest.raises(ValueError, match="at least one"):
        LimitGroup()
    with pytest.raises(ValueError, match="twice"):
        LimitGroup(rate, rate)
    with pytest.raises(TypeError, match="LimitGroup takes"):
        LimitGroup(rate, asyncio.Semaphore(1))  # type: ignore[arg-type]
    group = LimitGroup(rate, RateLimiter(5, burst=3), ConcurrencyLimiter(1))
    with pytest.raises(ValueError, match="never be admitted"):
        group.acquire(cost=3)
    with pytest.raises(ValueError, match="timeout"):
        group.acquire(timeout=-1)
    # An unhashable key is refused at the call (not when awaited), naming key and value.
    with pytest.raises(TypeError, match=r"key must be hashable .*got list \[1\]"):
        group.acquire(key=[1])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"key must be hashable .*got dict \{\}"):
        group.pause(1, key={})  # type: ignore[arg-type]
    for shared in (5, rate):  # a member, not a tuple of members
        with pytest.raises(TypeError, match=r"shared must be a tuple .*got (int 5|RateLimiter)"):
            LimitGroup(rate, shared=shared)  # type: ignore[arg-type]
    assert len(group.members) == 3
    assert repr(group).startswith("<LimitGroup <RateLimiter")


def test_group_fifo_across_members() -> None:
    """A group waiter and plain waiters of one member are served in arrival order."""

    async def body() -> dict[str, float]:
        a = RateLimiter(1)
        b = RateLimiter(1)
        group = LimitGroup(a, b)
        await a.acquire()
        await b.acquire()
        order: dict[str, float] = {}

        async def on(name: str, lim: RateLimiter | LimitGroup) -> None:
            await lim.acquire()
            order[name] = now()

        tasks = []
        for name, lim in (("a1", a), ("g", group), ("a2", a), ("b1", b)):
            tasks.append(asyncio.ensure_future(on(name, lim)))
            await asyncio.sleep(0)
        await asyncio.gather(*tasks)
        return order

    # g waits behind a1 on `a` (b alone would admit it at 1.0); b1 waits behind g.
    assert vrun(body) == {"a1": 1.0, "g": 2.0, "a2": 3.0, "b1": 3.0}


def test_shared_takes_any_collection_of_members() -> None:
    """docs/limits.md: `shared=` is a collection of the group's members (a tuple, a list...)."""
    rate, cap = RateLimiter(1), ConcurrencyLimiter(1)
    for shared in ((cap,), [cap], {cap}):
        LimitGroup(rate, cap, shared=shared)  # type: ignore[arg-type]


def test_shared_member_ignores_the_key() -> None:
    async def body() -> None:
        per_user = RateLimiter(1)
        cap = ConcurrencyLimiter(2)
        group = LimitGroup(per_user, cap, shared=(cap,))
        a = group.acquire_nowait(key="alice")
        b = group.acquire_nowait(key="bob")
        with pytest.raises(WouldBlock):
            group.acquire_nowait(key="carol")  # the shared cap is full
        assert cap.statistics().keys == 0  # only the default key of `cap` was used
        assert per_user.statistics().keys == 3  # carol's state exists but nothing was charged
        a.release()
        b.release()
        with pytest.raises(RateLimitExceeded):
            group.acquire_nowait(key="alice")  # alice's own rate
        group.acquire_nowait(key="carol").release()

    vrun(body)
    with pytest.raises(ValueError, match="shared member"):
        LimitGroup(RateLimiter(1), shared=(ConcurrencyLimiter(1),))


def test_group_async_with_checks_the_default_cost() -> None:
    """``async with group:`` charges 1: a strict member below rate 1 can never admit it."""

    async def body() -> None:
        small = RateLimiter(0.5, strict=True)
        sem = ConcurrencyLimiter(1)
        group = LimitGroup(small, sem)
        with pytest.raises(ValueError, match="never be admitted"):
            async with group:
                pass
        assert small.statistics().admitted == 0
        assert sem.statistics().in_use == 0

    vrun(body)


def test_group_settle_beyond_any_clock_changes_no_member() -> None:
    async def body() -> None:
        a, b = RateLimiter(1, per=0.5, burst=2), RateLimiter(1, per=2, burst=2)
        permit = await LimitGroup(a, b).acquire()
        with pytest.raises(ValueError, match="actual_cost"):
            permit.settle(1e308)  # fits a's interval (0.5 s) but not b's (2 s)
        assert [p.cost for p in permit.rate_permits] == [1, 1]
        assert a._default.tat == 0.5

    vrun(body)


def test_a_group_waiter_left_on_a_closed_loop_holds_up_no_member() -> None:
    rate, sem = RateLimiter(10), ConcurrencyLimiter(1)
    group = LimitGroup(rate, sem)

    async def strand() -> tuple[GroupPermit, asyncio.Task[GroupPermit]]:
        held = await group.acquire(key="k")
        left = asyncio.ensure_future(group.acquire(key="k"))  # waits for the slot
        await asyncio.sleep(0)
        return held, left

    held, left = run_then_close(strand)

    async def later() -> None:
        async with asyncio.timeout(5):
            alone = asyncio.ensure_future(rate.acquire(key="k"))  # the rate member by itself
            both = asyncio.ensure_future(group.acquire(key="k"))
            await asyncio.sleep(0)
            held.release()
            await alone
            (await both).release()
        assert (rate.statistics().waiting, sem.statistics().in_use) == (0, 0)

    asyncio.run(later())
    left.get_coro().close()


def test_one_acquire_object_entered_by_two_tasks_at_once_is_refused() -> None:
    async def body() -> None:
        sem = ConcurrencyLimiter(2)
        group = LimitGroup(RateLimiter(100, burst=10), sem)
        slot = group.acquire(key="x")
        async with slot:
            with pytest.raises(RuntimeError, match="already"):
                async with slot:
                    pass  # pragma: no cover
        async with slot:
            pass
        assert sem.statistics().in_use == 0

    vrun(body)
