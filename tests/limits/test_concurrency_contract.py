"""The ConcurrencyLimiter contract, run over every implementation (``concurrency_impl``)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from limits_helpers import CONCURRENCY_IMPLS, Impl, applied, nowait, resolve

import aiolease
from aiolease import LimitTimeout, WouldBlock


@pytest.fixture(params=CONCURRENCY_IMPLS)
def concurrency_impl(request: pytest.FixtureRequest) -> Impl:
    """Each implementation in turn (local on virtual time; Redis on real time)."""
    return resolve(request)


def now() -> float:
    return asyncio.get_running_loop().time()


async def spawn_in_order(*coros: Any) -> list[asyncio.Task[Any]]:
    tasks = []
    for c in coros:
        tasks.append(asyncio.ensure_future(c))
        for _ in range(3):
            await asyncio.sleep(0)
    return tasks


def test_at_most_limit_holders_at_once(concurrency_impl: Impl) -> None:
    async def body() -> int:
        async with concurrency_impl.make(3) as sem:
            holding = 0
            peak = 0

            async def worker() -> None:
                nonlocal holding, peak
                async with sem:
                    holding += 1
                    peak = max(peak, holding)
                    await asyncio.sleep(0.1)
                    holding -= 1

            await asyncio.gather(*(worker() for _ in range(10)))
            assert sem.statistics().in_use == 0
            return peak

    assert concurrency_impl.run(body) == 3


def test_waiters_are_served_in_arrival_order(concurrency_impl: Impl) -> None:
    async def body() -> list[int]:
        async with concurrency_impl.make(1) as sem:
            order: list[int] = []
            first = await sem.acquire()

            async def one(i: int) -> None:
                async with sem.acquire() as permit:
                    order.append(i)
                    assert not permit.released
                    await asyncio.sleep(0.01)

            tasks = await spawn_in_order(*(one(i) for i in range(5)))
            await applied(first.release())
            await asyncio.gather(*tasks)
            return order

    assert concurrency_impl.run(body) == [0, 1, 2, 3, 4]


def test_acquire_timeout_raises_limit_timeout(concurrency_impl: Impl) -> None:
    async def body() -> None:
        async with concurrency_impl.make(1) as sem:
            held = await sem.acquire()
            t0 = now()
            with pytest.raises(LimitTimeout) as info:
                await sem.acquire(timeout=0.3)
            assert isinstance(info.value, TimeoutError)
            assert isinstance(info.value, aiolease.AioleaseError)
            assert abs(now() - t0 - 0.3) <= concurrency_impl.tol + 1e-6
            assert sem.statistics().waiting == 0
            await applied(held.release())
            async with sem.acquire(timeout=0.3):
                pass

    concurrency_impl.run(body)


def test_cancelled_waiter_gives_its_place_back(concurrency_impl: Impl) -> None:
    async def body() -> list[str]:
        async with concurrency_impl.make(1) as sem:
            got: list[str] = []
            held = await sem.acquire()

            async def one(name: str) -> None:
                async with sem.acquire():
                    got.append(name)

            a, b, c = await spawn_in_order(one("a"), one("b"), one("c"))
            b.cancel()
            with pytest.raises(asyncio.CancelledError):
                await b
            await applied(held.release())
            await asyncio.gather(a, c)
            assert sem.statistics().in_use == 0
            return got

    assert concurrency_impl.run(body) == ["a", "c"]


def test_acquire_nowait(concurrency_impl: Impl) -> None:
    async def body() -> None:
        async with concurrency_impl.make(2) as sem:
            p1 = await nowait(sem)
            p2 = await nowait(sem, key=None)
            with pytest.raises(WouldBlock):
                await nowait(sem)
            await applied(p1.release())
            await applied(p1.release())  # idempotent
            p3 = await nowait(sem)
            await applied(p2.release())
            await applied(p3.release())
            assert sem.statistics().in_use == 0

    concurrency_impl.run(body)


def test_keys_have_separate_slots(concurrency_impl: Impl) -> None:
    async def body() -> None:
        async with concurrency_impl.make(1) as sem:
            a = await sem.acquire(key="a")
            b = await sem.acquire(key="b")
            with pytest.raises(WouldBlock):
                await nowait(sem, key="a")
            assert sem.statistics().in_use == 2
            await applied(a.release())
            await applied(b.release())

    concurrency_impl.run(body)


def test_bad_arguments(concurrency_impl: Impl) -> None:
    async def body() -> None:
        for limit, exc in ((0, ValueError), (-1, ValueError), (1.5, TypeError), ("2", TypeError)):
            with pytest.raises(exc, match="limit"):
                async with concurrency_impl.make(limit):
                    pass
        async with concurrency_impl.make(1) as sem:
            with pytest.raises(ValueError, match="timeout"):
                sem.acquire(timeout=-1)
            sem.acquire(timeout=10**400)  # an int beyond any float waits as long as inf does
            # An unhashable key is refused at the call (not when awaited), naming key and value.
            with pytest.raises(TypeError, match=r"key must .*got list \[1\]"):
                sem.acquire(key=[1])
            with pytest.raises(TypeError, match=r"key must .*got list \[1\]"):
                await nowait(sem, key=[1])

    concurrency_impl.run(body)


def test_statistics(concurrency_impl: Impl) -> None:
    async def body() -> None:
        async with concurrency_impl.make(1) as sem:
            held = await sem.acquire()
            with pytest.raises(WouldBlock):
                await nowait(sem)
            with pytest.raises(LimitTimeout):
                await sem.acquire(timeout=0.1)
            (waiter,) = await spawn_in_order(sem.acquire())
            s = sem.statistics()
            assert (s.limit, s.in_use, s.waiting) == (1, 1, 1)
            assert (s.admitted, s.rejected, s.timeouts) == (1, 1, 1)
            await asyncio.sleep(0.2)
            await applied(held.release())
            p = await waiter
            await applied(p.release())
            s = sem.statistics()
            assert (s.in_use, s.waiting, s.admitted) == (0, 0, 2)
            assert s.wait_time_max >= 0.2 - concurrency_impl.tol

    concurrency_impl.run(body)


def test_one_acquire_object_entered_by_two_tasks_at_once_is_refused(
    concurrency_impl: Impl,
) -> None:
    """``slot = sem.acquire(key=...)`` kept and entered by several tasks: each exit released
    the permit of the latest entry, so a slot was given back while its holder still ran (more
    holders than ``limit``) and another stayed held for good."""

    async def body() -> None:
        async with concurrency_impl.make(2) as sem:
            slot = sem.acquire(key="x")
            async with slot:
                with pytest.raises(RuntimeError, match="already"):
                    async with slot:
                        pass  # pragma: no cover
            async with slot:  # entered again after its block: fine
                pass
            assert sem.statistics().in_use == 0

    concurrency_impl.run(body)
