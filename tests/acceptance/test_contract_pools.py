"""Black-box acceptance tests of the DESIGN.md pool contract (Errors, Pools, Driver pools,
Time, Testing toolkit) and of issues 2 and 3, written only against public names.

Timing-sensitive tests run on ``aiolease.testing.VirtualTimeLoop`` through
``asyncio.Runner(loop_factory=VirtualTimeLoop)``, so they assert exact virtual
times and never depend on the machine's speed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import os
import random
import subprocess
import sys
import textwrap
import time
import warnings
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

import aiolease
import aiolease.abc
from aiolease import (
    AioleaseError,
    CommitUnknown,
    LimitTimeout,
    Pool,
    PoolClosed,
    PoolTimeout,
    RateLimitExceeded,
    ResourceInfo,
    Rollback,
    TooManyWaiters,
    TransactionError,
    WouldBlock,
)
from aiolease.testing import FakeConnection, FakeManager, FakeResource, VirtualTimeLoop, leak_check

R = TypeVar("R")


def vrun(fn: Callable[[], Coroutine[Any, Any, R]]) -> R:
    """Run ``fn()`` on a fresh VirtualTimeLoop (the contract's documented usage)."""
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(fn())


async def settle(n: int = 20) -> None:
    """Let every ready task run (no timers: virtual time does not move)."""
    for _ in range(n):
        await asyncio.sleep(0)


def closed(resource: FakeResource | Res) -> bool:
    """Read ``.closed`` through a call (mypy would keep an earlier narrowing across awaits)."""
    return resource.closed


def now() -> float:
    return asyncio.get_running_loop().time()


class Res:
    """A plain resource for duck-typed managers."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.closed = False

    def __repr__(self) -> str:
        return f"<Res {self.n}{' closed' if self.closed else ''}>"


class DuckManager:
    """A Manager written as a plain class: the contract defines Manager as a Protocol."""

    def __init__(self) -> None:
        self.made: list[Res] = []
        self.checked: list[int] = []
        self.reset_calls: list[int] = []
        self.closed: list[int] = []
        self.check_error: BaseException | None = None
        self.reset_error: BaseException | None = None
        self.create_error: BaseException | None = None
        self.close_delay = 0.0
        self.reset_delay = 0.0
        self.create_gate: asyncio.Event | None = None

    async def create(self) -> Res:
        if self.create_gate is not None:
            await self.create_gate.wait()
        if self.create_error is not None:
            raise self.create_error
        r = Res(len(self.made) + 1)
        self.made.append(r)
        return r

    async def check(self, resource: Res, info: ResourceInfo) -> None:
        self.checked.append(resource.n)
        if self.check_error is not None:
            raise self.check_error

    async def reset(self, resource: Res, info: ResourceInfo) -> None:
        if self.reset_delay:
            await asyncio.sleep(self.reset_delay)
        self.reset_calls.append(resource.n)
        if self.reset_error is not None:
            raise self.reset_error

    async def close(self, resource: Res) -> None:
        if self.close_delay:
            await asyncio.sleep(self.close_delay)
        resource.closed = True
        self.closed.append(resource.n)


def duck_pool(m: DuckManager, **opts: Any) -> Pool[Res]:
    # The contract's Manager is a Protocol; aiolease.abc.Manager is an ABC (allowed by DESIGN.md),
    # so a duck-typed manager needs a cast for the type checker only.
    return Pool(m, **opts)  # type: ignore[arg-type]


# ============================================================== Errors


def test_error_hierarchy() -> None:
    for cls in (
        PoolTimeout,
        LimitTimeout,
        PoolClosed,
        TooManyWaiters,
        WouldBlock,
        RateLimitExceeded,
        TransactionError,
        CommitUnknown,
        Rollback,
    ):
        assert issubclass(cls, AioleaseError), cls
    assert issubclass(AioleaseError, Exception)
    assert issubclass(PoolTimeout, TimeoutError)
    assert issubclass(LimitTimeout, TimeoutError)
    assert issubclass(CommitUnknown, TransactionError)
    exc = RateLimitExceeded(1.5)
    assert isinstance(exc.retry_after, float)
    assert exc.retry_after == 1.5


@pytest.mark.parametrize(
    ("kwargs", "exc_type", "names"),
    [
        ({"min_size": -1}, ValueError, "min_size"),
        ({"max_size": 0}, ValueError, "max_size"),
        ({"min_size": 5, "max_size": 2}, ValueError, "min_size"),
        ({"min_size": "1"}, TypeError, "min_size"),
        ({"max_size": 2.5}, TypeError, "max_size"),
        ({"acquire_timeout": -1.0}, ValueError, "acquire_timeout"),
        ({"acquire_timeout": "soon"}, TypeError, "acquire_timeout"),
        ({"max_waiting": -1}, ValueError, "max_waiting"),
        ({"max_lifetime": 0}, ValueError, "max_lifetime"),
        ({"max_lifetime": -5.0}, ValueError, "max_lifetime"),
        ({"idle_timeout": -1}, ValueError, "idle_timeout"),
        ({"leak_timeout": 0}, ValueError, "leak_timeout"),
        ({"acquire_timeout": float("nan")}, ValueError, "acquire_timeout"),
    ],
)
def test_invalid_arguments_named_at_construction(
    kwargs: dict[str, Any], exc_type: type[Exception], names: str
) -> None:
    with pytest.raises(exc_type, match=names):
        Pool(FakeManager(), **kwargs)


def test_invalid_acquire_timeout_rejected() -> None:
    pool = Pool(FakeManager())
    with pytest.raises(ValueError, match="timeout"):
        pool.acquire(timeout=-1)


def test_from_callables_rejects_non_callable() -> None:
    with pytest.raises(TypeError, match="create"):
        Pool.from_callables(42)  # type: ignore[arg-type]


# ============================================================== Pools: lifecycle


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


def test_acquire_on_never_opened_pool_opens_it() -> None:
    async def main() -> None:
        fm = FakeManager()
        pool = Pool(fm, max_size=2)
        r = await pool.acquire()
        assert isinstance(r, FakeResource)
        await pool.release(r)
        async with pool.acquire() as r2:
            assert r2 is r
        await pool.aclose()
        fm.assert_all_closed()

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


def test_repr_is_readable() -> None:
    pool = Pool(FakeManager(), max_size=4, name="orders")
    text = repr(pool)
    assert "orders" in text
    assert "4" in text


# ============================================================== statistics / ResourceInfo


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


# ============================================================== Manager shapes


def test_duck_typed_manager_works() -> None:
    async def main() -> None:
        m = DuckManager()
        async with duck_pool(m, max_size=2) as pool:
            async with pool.acquire() as r:
                assert r.n == 1
            assert m.checked == []  # fresh resource: no check
            assert m.reset_calls == [1]
            async with pool.acquire() as r:
                assert r.n == 1
            assert m.checked == [1]  # idle resource handed out: checked
        assert m.closed == [1]

    vrun(main)


def test_abc_manager_with_only_create() -> None:
    made: list[Res] = []

    class OnlyCreate(aiolease.abc.Manager[Res]):
        async def create(self) -> Res:
            made.append(Res(len(made)))
            return made[-1]

    async def main() -> None:
        async with Pool(OnlyCreate(), min_size=1, max_size=2) as pool:
            async with pool.acquire() as a, pool.acquire() as b:
                assert a is not b
            r = pool.acquire_nowait()
            await pool.release(r, discard=True)
            assert pool.statistics().size == 1

    vrun(main)
    assert len(made) == 2


@pytest.mark.parametrize("sync_close", [False, True, None])
def test_from_callables(sync_close: bool | None) -> None:
    closed: list[Res] = []

    async def create() -> Res:
        return Res(1)

    async def aclose_fn(r: Res) -> None:
        closed.append(r)

    def close_fn(r: Res) -> None:
        closed.append(r)

    async def main() -> None:
        if sync_close is None:
            pool = Pool.from_callables(create, min_size=1, max_size=2, name="fc")
        elif sync_close:
            pool = Pool.from_callables(create, close_fn, min_size=1, max_size=2)
        else:
            pool = Pool.from_callables(create, close=aclose_fn, min_size=1, max_size=2)
        async with pool:
            async with pool.acquire() as r:
                assert isinstance(r, Res)
            assert pool.statistics().size == 1
        assert pool.statistics().size == 0

    vrun(main)
    assert len(closed) == (0 if sync_close is None else 1)


# ============================================================== check / reset / discard


def test_check_runs_on_idle_handed_out_not_on_fresh() -> None:
    async def main() -> None:
        fm = FakeManager()
        async with Pool(fm, max_size=2) as pool:
            a = await pool.acquire()
            b = await pool.acquire()
            assert fm.calls["check"] == 0
            await pool.release(a)
            await pool.release(b)
            async with pool.acquire():
                pass
            assert fm.calls["check"] == 1

    vrun(main)


def test_min_size_prefilled_resources_are_idle_and_checked() -> None:
    async def main() -> None:
        fm = FakeManager()
        async with Pool(fm, min_size=1, max_size=1) as pool:
            async with pool.acquire():
                pass
            assert fm.calls["check"] == 1

    vrun(main)


def test_failed_check_discards_and_acquirer_still_served() -> None:
    async def main() -> None:
        fm = FakeManager()
        fm.fail("check", calls=1)
        async with Pool(fm, min_size=1, max_size=1) as pool:
            first = fm.resources[0]
            async with pool.acquire() as r:
                assert r is not first
            assert first.closed
            assert pool.statistics().size == 1
        fm.assert_no_violations()

    vrun(main)


def test_failed_reset_discards() -> None:
    async def main() -> None:
        fm = FakeManager()
        fm.fail("reset", calls=1)
        async with Pool(fm, max_size=1) as pool:
            async with pool.acquire() as r:
                pass
            assert r.closed  # release returned after the close it caused
            assert pool.statistics().size == 0
            async with pool.acquire() as r2:
                assert r2 is not r

    vrun(main)


def test_acquire_nowait() -> None:
    async def main() -> None:
        fm = FakeManager()
        pool = Pool(fm, min_size=1, max_size=2)
        with pytest.raises(WouldBlock):
            pool.acquire_nowait()  # not open
        async with pool:
            r = pool.acquire_nowait()
            assert fm.calls["check"] == 0  # nowait cannot await check
            with pytest.raises(WouldBlock):
                pool.acquire_nowait()  # none idle (even though it could create)
            await pool.release(r)
            r2 = pool.acquire_nowait()
            assert r2 is r
            assert fm.calls["check"] == 0
            await pool.release(r2)
        with pytest.raises(WouldBlock):
            pool.acquire_nowait()  # closed

    vrun(main)


def test_release_discard_returns_after_close_completed() -> None:
    async def main() -> None:
        fm = FakeManager()
        fm.delay("close", 5)
        async with Pool(fm, max_size=1) as pool:
            r = await pool.acquire()
            t0 = now()
            await pool.release(r, discard=True)
            assert now() == t0 + 5
            assert r.closed
            s = pool.statistics()
            assert (s.size, s.closed) == (0, 1)

    vrun(main)


def test_release_returns_after_reset_completed() -> None:
    async def main() -> None:
        m = DuckManager()
        m.reset_delay = 3
        async with duck_pool(m, max_size=1) as pool:
            r = await pool.acquire()
            await pool.release(r)
            assert m.reset_calls == [1]
            assert pool.statistics().idle == 1

    vrun(main)


def test_release_of_foreign_or_twice_released_resource_raises() -> None:
    async def main() -> None:
        async with Pool(FakeManager(), max_size=1) as pool:
            r = await pool.acquire()
            await pool.release(r)
            with pytest.raises((ValueError, AioleaseError)):
                await pool.release(r)
            assert pool.statistics().idle == 1

    vrun(main)


def test_fatal_error_in_body_discards_resource() -> None:
    async def main() -> None:
        fm = FakeManager(fatal=(ConnectionError,))
        async with Pool(fm, max_size=1) as pool:
            with pytest.raises(ConnectionError):
                async with pool.acquire() as r:
                    raise ConnectionError("broken pipe")
            assert r.closed
            with pytest.raises(KeyError):
                async with pool.acquire() as r2:
                    raise KeyError("not fatal")
            assert not r2.closed
            assert pool.statistics().idle == 1

    vrun(main)


# ============================================================== expire / resize


def test_expire_closes_idle_now_in_use_on_release() -> None:
    async def main() -> None:
        fm = FakeManager()
        fm.delay("close", 2)
        async with Pool(fm, min_size=0, max_size=3) as pool:
            a = await pool.acquire()
            b = await pool.acquire()
            await pool.release(b)
            t0 = now()
            await pool.expire()
            assert now() == t0 + 2  # returned after the close it caused
            assert closed(b)
            assert not closed(a)
            await pool.release(a)
            assert closed(a)  # retired on release, and release waited for it
            async with pool.acquire() as c:
                assert c not in (a, b)
            assert pool.statistics().size == 1

    vrun(main)


def test_resize_shrink_returns_after_closes_and_grow_serves_waiters() -> None:
    async def main() -> None:
        fm = FakeManager()
        fm.delay("close", 1)
        async with Pool(fm, min_size=3, max_size=4) as pool:
            held = await pool.acquire()
            t0 = now()
            await pool.resize(min_size=0, max_size=1)
            assert now() == t0 + 1
            s = pool.statistics()
            assert (s.size, s.idle, s.in_use, s.max_size, s.min_size) == (1, 0, 1, 1, 0)
            waiter = asyncio.ensure_future(pool.acquire(timeout=None))
            await settle()
            assert not waiter.done()
            await pool.resize(max_size=2)
            r2 = await waiter
            assert r2 is not held
            await pool.resize(max_size=1)  # both in use: nothing closed yet
            assert pool.statistics().size == 2
            await pool.release(r2)
            assert r2.closed  # surplus closed when released
            assert pool.statistics().size == 1
            await pool.release(held)
            assert not held.closed

    vrun(main)


def test_resize_grow_min_size_fills_in_background() -> None:
    async def main() -> None:
        fm = FakeManager()
        async with Pool(fm, max_size=5) as pool:
            await pool.resize(min_size=3)
            await settle()
            assert pool.statistics().idle == 3

    vrun(main)


def test_resize_rejects_bad_bounds() -> None:
    async def main() -> None:
        async with Pool(FakeManager(), max_size=5) as pool:
            with pytest.raises(ValueError, match="min_size"):
                await pool.resize(min_size=6)
            with pytest.raises(ValueError, match="max_size"):
                await pool.resize(max_size=0)

    vrun(main)


# ============================================================== size / max_size / FIFO


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


def test_max_waiting_zero_means_no_queueing() -> None:
    async def main() -> None:
        async with Pool(FakeManager(), max_size=1, max_waiting=0) as pool, pool.acquire():
            with pytest.raises(TooManyWaiters):
                await pool.acquire()

    vrun(main)


# ============================================================== timeouts / virtual time


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


# ============================================================== fail fast / backoff


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


def test_each_attempt_failure_goes_to_the_caller_it_served() -> None:
    async def main() -> None:
        fm = FakeManager()
        fm.fail("create", lambda call: ConnectionError(f"attempt {call.number}"))
        async with Pool(fm, max_size=5) as pool:
            results: list[str] = []

            async def one() -> None:
                try:
                    await pool.acquire(timeout=1000)
                except ConnectionError as exc:
                    results.append(str(exc))

            await asyncio.gather(*(one() for _ in range(4)))
            # Every caller got exactly one distinct attempt's error (no timeouts, no sharing).
            assert sorted(results) == [f"attempt {i}" for i in range(1, 5)]
            assert fm.calls["create"] == 4
            assert pool.statistics().size == 0

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


# ============================================================== cancellation


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
            s = pool.statistics()
            assert (s.in_use, s.waiting) == (0, 0)
            assert s.size == s.idle
            assert s.size <= 3
        assert worst <= 3
        fm.assert_all_closed()
        fm.assert_no_violations()
        assert fm.max_alive <= 3

    vrun(main)


# ============================================================== aclose


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


def test_aclose_timeout_closes_checked_out_resources() -> None:
    async def main() -> None:
        fm = FakeManager()
        pool = Pool(fm, max_size=2)
        await pool.open()
        r = await pool.acquire()
        t0 = now()
        await pool.aclose(timeout=5)
        assert now() == pytest.approx(t0 + 5)
        assert r.closed
        assert pool.statistics().size == 0
        await pool.release(r)  # late release of a resource already closed: no error
        fm.assert_no_violations()
        assert fm.closed == 1

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


# ============================================================== lifetime / idle / leaks


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


def test_max_lifetime_retires_in_use_resource_on_release() -> None:
    async def main() -> None:
        fm = FakeManager()
        async with Pool(fm, max_size=1, max_lifetime=10) as pool:
            async with pool.acquire() as r:
                await asyncio.sleep(20)
            assert r.closed
            assert pool.statistics().size == 0

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


# ============================================================== Time


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


# ============================================================== Testing toolkit


def test_fake_manager_and_connection_no_args() -> None:
    fm = FakeManager()
    assert isinstance(fm, aiolease.abc.Manager)
    conn = FakeConnection()
    assert conn.statements == []

    async def main() -> None:
        await conn.execute("SELECT 1")
        async with aiolease.atomic(conn):
            await conn.execute("INSERT INTO t VALUES ($1)", 1)
        assert conn.statements[0] == "SELECT 1"
        assert any(s.upper().startswith("BEGIN") for s in conn.statements)
        assert conn.statements[-1].upper().startswith("COMMIT")
        assert "INSERT INTO t VALUES ($1)" in conn.statements

    vrun(main)


def test_leak_check_names_pool_left_open() -> None:
    pools: list[Pool[FakeResource]] = []

    async def leaky() -> None:
        async with leak_check():
            pools.append(Pool(FakeManager(), name="forgotten-pool"))
            await pools[0].open()

    async def main() -> None:
        with pytest.raises(AssertionError, match="forgotten-pool"):
            await leaky()
        await pools[0].aclose()

    vrun(main)


def test_leak_check_names_checked_out_resource() -> None:
    fm = FakeManager()
    pool = Pool(fm, name="outside-pool")
    held: list[FakeResource] = []

    inner: list[Pool[FakeResource]] = []

    async def leaky() -> None:
        async with leak_check():
            inner.append(Pool(fm, name="holder-pool"))
            held.append(await inner[0].acquire())
            held.append(await pool.acquire())  # a pool made outside: its lease is not named

    async def main() -> None:
        with pytest.raises(AssertionError) as ei:
            await leaky()
        text = str(ei.value)
        assert repr(held[0]) in text
        assert "checked out" in text
        assert repr(held[1]) not in text
        await inner[0].release(held[0])
        await pool.release(held[1])
        await inner[0].aclose()
        await pool.aclose()

    vrun(main)


def test_leak_check_names_only_pools_created_inside() -> None:
    fm = FakeManager()
    made: list[Pool[FakeResource]] = []

    async def leaky(outer: Pool[FakeResource]) -> None:
        async with leak_check():
            await outer.acquire()  # made outside the check: not named
            made.append(Pool(fm, name="inner-pool"))
            await made[0].open()

    async def main() -> None:
        outer = Pool(fm, name="outer-pool")
        await outer.open()
        with pytest.raises(AssertionError) as ei:
            await leaky(outer)
        assert "inner-pool" in str(ei.value)
        assert "outer-pool" not in str(ei.value)
        await made[0].aclose()
        await outer.aclose(timeout=0)

    vrun(main)


def test_leak_check_names_open_transaction() -> None:
    conn = FakeConnection()
    cms: list[Any] = []

    async def leaky() -> None:
        async with leak_check():
            cms.append(aiolease.atomic(conn))
            await cms[0].__aenter__()

    async def main() -> None:
        with pytest.raises(AssertionError, match=r"(?i)transaction"):
            await leaky()
        await cms[0].__aexit__(None, None, None)
        assert not conn.in_transaction

    vrun(main)


def test_leak_check_passes_clean_code() -> None:
    async def main() -> None:
        async with leak_check():
            async with Pool(FakeManager(), name="clean") as pool, pool.acquire():
                pass
            conn = FakeConnection()
            async with aiolease.atomic(conn):
                await conn.execute("SELECT 1")

    vrun(main)


def _run_pytest(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(source))
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
    )
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-rA", "-p", "no:cacheprovider", "test_inner.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )


def test_aiolease_leaks_fixture_fails_leaky_test_and_passes_clean(tmp_path: Path) -> None:
    proc = _run_pytest(
        tmp_path,
        """
        from aiolease import Pool
        from aiolease.testing import FakeManager

        async def test_leaky(aiolease_leaks):
            pool = Pool(FakeManager(), name="fixture-leaked-pool")
            await pool.acquire()

        async def test_clean(aiolease_leaks):
            async with Pool(FakeManager(), name="fine") as pool:
                async with pool.acquire():
                    pass
        """,
    )
    out = proc.stdout + proc.stderr
    assert "fixture-leaked-pool" in out, out
    assert "PASSED test_inner.py::test_clean" in out, out
    assert "ERROR test_inner.py::test_leaky" in out or "FAILED test_inner.py::test_leaky" in out, (
        out
    )


# ============================================================== Driver pools


def test_sqlite_create_pool_returns_unopened_pool(tmp_path: Path) -> None:
    import aiolease.sqlite

    db = tmp_path / "t.db"
    pool = aiolease.sqlite.create_pool(str(db), max_size=2, min_size=1, name="sq")
    assert isinstance(pool, Pool)
    assert not db.exists()  # no I/O before open
    assert pool.statistics().size == 0

    async def main() -> None:
        async with pool, pool.acquire() as conn:
            cur = await conn.execute("SELECT 1")
            assert (await cur.fetchone())[0] == 1  # type: ignore[index]
            await cur.close()

    asyncio.run(main())
    assert db.exists()


def test_sqlite_create_pool_accepts_pathlike_and_open(tmp_path: Path) -> None:
    import aiolease.sqlite

    pool = aiolease.sqlite.create_pool(tmp_path / "p.db", max_size=1)

    async def main() -> None:
        await pool.open()
        r = await pool.acquire()
        await pool.release(r)
        await pool.aclose()

    asyncio.run(main())


def test_asyncpg_and_psycopg_create_pool_unopened_without_io() -> None:
    import aiolease.asyncpg
    import aiolease.psycopg

    # An unroutable DSN: construction must not connect.
    p1 = aiolease.asyncpg.create_pool(
        "postgresql://nobody@192.0.2.1:1/x", min_size=2, max_size=3, reset="transaction"
    )
    p2 = aiolease.asyncpg.create_pool("postgresql://nobody@192.0.2.1:1/x", reset="session")
    p3 = aiolease.psycopg.create_pool("host=192.0.2.1 port=1", min_size=1, max_size=2)
    for p in (p1, p2, p3):
        assert isinstance(p, Pool)
        assert p.statistics().size == 0
    with pytest.raises(ValueError, match="reset"):
        aiolease.asyncpg.create_pool("postgresql://x@192.0.2.1/x", reset="bogus")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="min_size"):
        aiolease.asyncpg.create_pool("postgresql://x@192.0.2.1/x", min_size=-1)


@pytest.mark.postgres
def test_asyncpg_create_pool_live(pg_dsn: str) -> None:
    import aiolease.asyncpg

    pool = aiolease.asyncpg.create_pool(pg_dsn, max_size=2)

    async def main() -> None:
        async with pool:
            async with pool.acquire() as conn:
                assert await conn.fetchval("SELECT 1") == 1
                await conn.execute("BEGIN")  # left open: reset rolls it back
            async with pool.acquire() as conn:
                assert not conn.is_in_transaction()

    asyncio.run(main())


@pytest.mark.postgres
def test_psycopg_create_pool_live(pg_dsn: str) -> None:
    import aiolease.psycopg

    pool = aiolease.psycopg.create_pool(pg_dsn, max_size=2)

    async def main() -> None:
        async with pool, pool.acquire() as conn:
            cur = await conn.execute("SELECT 1")
            assert (await cur.fetchone()) == (1,)

    asyncio.run(main())


@pytest.mark.parametrize(
    ("module", "driver", "extra"),
    [
        ("aiolease.asyncpg", "asyncpg", "asyncpg"),
        ("aiolease.psycopg", "psycopg", "psycopg"),
        ("aiolease.sqlite", "aiosqlite", "sqlite"),
    ],
)
def test_missing_driver_import_error_names_extra(module: str, driver: str, extra: str) -> None:
    code = textwrap.dedent(
        f"""
        import sys
        sys.modules[{driver!r}] = None  # simulate the driver not being installed
        import aiolease  # the core must not need any driver
        try:
            import {module}
        except ImportError as exc:
            print("MSG:", exc)
        else:
            print("NO ERROR")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert f"aiolease[{extra}]" in proc.stdout, proc.stdout + proc.stderr


def test_import_aiolease_imports_no_driver() -> None:
    code = (
        "import sys, aiolease, aiolease.testing; "
        "print(sorted(m for m in ('asyncpg','psycopg','aiosqlite','redis') if m in sys.modules))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert proc.stdout.strip() == "[]", proc.stdout + proc.stderr


# ============================================================== skeptical edge cases


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


def test_body_exception_propagates_unchanged_when_reset_fails() -> None:
    async def main() -> None:
        fm = FakeManager()
        fm.fail("reset")
        async with Pool(fm, max_size=1) as pool:
            with pytest.raises(KeyError, match="body"):
                async with pool.acquire():
                    raise KeyError("body")
            assert pool.statistics().size == 0

    vrun(main)


def test_failing_close_is_logged_not_raised_and_frees_slot() -> None:
    async def main() -> None:
        fm = FakeManager()
        fm.fail("close")
        async with Pool(fm, max_size=2) as pool:
            r = await pool.acquire()
            await pool.release(r, discard=True)
            assert pool.statistics().size == 0
            await pool.acquire()  # left checked out: aclose(timeout) closes it (and fails)
            await pool.aclose(timeout=1)
        assert pool.statistics().size == 0

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


def test_sqlite_pool_under_virtual_time_does_not_time_out_spuriously(tmp_path: Path) -> None:
    """Issue 3: virtual time must not jump while a thread may still answer (aiosqlite)."""
    import aiolease.sqlite

    async def main() -> None:
        pool = aiolease.sqlite.create_pool(str(tmp_path / "vt.db"), max_size=1, acquire_timeout=5)
        loop = asyncio.get_running_loop()
        try:
            async with pool:
                for _ in range(20):  # each iteration opens a fresh connection in its thread
                    conn = await pool.acquire()
                    await pool.release(conn, discard=True)
        finally:
            # Let any aiosqlite thread still connecting finish while the loop is alive.
            await loop.run_in_executor(None, time.sleep, 0.3)

    vrun(main)


@pytest.mark.xfail(
    strict=False,
    reason="audit D4: create is cancellation-safe now; the worker thread may need a moment to exit",
)
def test_sqlite_aclose_during_create_leaves_no_running_connection_thread(tmp_path: Path) -> None:
    import threading

    import aiolease.sqlite

    def workers() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if "connection_worker" in t.name and t.is_alive()]

    async def main() -> bool:
        pool = aiolease.sqlite.create_pool(str(tmp_path / "c.db"), max_size=1)
        await pool.open()
        t = asyncio.ensure_future(pool.acquire())
        await asyncio.sleep(0)
        await asyncio.sleep(0)  # the connect is now running in aiosqlite's thread
        await pool.aclose()  # "returns when every resource is closed"
        alive = bool(workers())
        with pytest.raises(PoolClosed):
            await t
        await asyncio.sleep(0.3)  # let a stray thread finish while the loop still runs
        return alive

    assert workers() == []
    alive_after_aclose = asyncio.run(main())
    assert not alive_after_aclose


def test_pool_rejects_object_without_create() -> None:
    with pytest.raises(TypeError, match="create"):
        Pool(object())  # type: ignore[arg-type]


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


def test_cancelled_expire_still_closes_and_refills() -> None:
    async def main() -> None:
        fm = FakeManager()
        fm.delay("close", 5)
        async with Pool(fm, min_size=2, max_size=2) as pool:
            first = list(fm.resources)
            t = asyncio.ensure_future(pool.expire())
            await settle()
            t.cancel()
            with pytest.raises(asyncio.CancelledError):
                await t
            await asyncio.sleep(10)
            assert all(closed(r) for r in first)
            s = pool.statistics()
            assert (s.size, s.idle) == (2, 2)

    vrun(main)


@pytest.mark.postgres
@pytest.mark.parametrize("reset", ["transaction", "session"])
def test_asyncpg_killed_backend_is_replaced(pg_dsn: str, reset: Any) -> None:
    import asyncpg

    import aiolease.asyncpg

    async def main() -> None:
        admin = await asyncpg.connect(pg_dsn)
        try:
            async with aiolease.asyncpg.create_pool(pg_dsn, max_size=1, reset=reset) as pool:
                # idle connection killed
                async with pool.acquire() as conn:
                    pid1 = await conn.fetchval("SELECT pg_backend_pid()")
                await admin.execute("SELECT pg_terminate_backend($1)", pid1)
                await asyncio.sleep(0.2)
                async with pool.acquire() as conn:
                    pid2 = await conn.fetchval("SELECT pg_backend_pid()")
                assert pid2 != pid1

                # in-use connection killed
                async def use_killed() -> None:
                    async with pool.acquire() as conn:
                        await admin.execute("SELECT pg_terminate_backend($1)", pid2)
                        await asyncio.sleep(0.2)
                        await conn.fetchval("SELECT 1")

                with pytest.raises(Exception):  # noqa: B017 - whatever the driver raises
                    await use_killed()
                async with pool.acquire() as conn:
                    assert await conn.fetchval("SELECT 1") == 1
                    assert await conn.fetchval("SELECT pg_backend_pid()") != pid2
                assert pool.statistics().size == 1
        finally:
            await admin.close()

    asyncio.run(main())


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
