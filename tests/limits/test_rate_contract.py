"""The RateLimiter contract, run over every implementation (``rate_impl``)."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest
from limits_helpers import RATE_IMPLS, Impl, applied, max_in_window, nowait, resolve

import aiolease
from aiolease import RateLimitExceeded


@pytest.fixture(params=RATE_IMPLS)
def rate_impl(request: pytest.FixtureRequest) -> Impl:
    """Each implementation in turn (local on virtual time; Redis on real time)."""
    return resolve(request)


def now() -> float:
    return asyncio.get_running_loop().time()


def close(a: float, b: float, impl: Impl) -> bool:
    return abs(a - b) <= impl.tol + 1e-6


async def spawn_in_order(*coros: Any) -> list[asyncio.Task[Any]]:
    """Start tasks so that each has reached its first wait before the next starts."""
    tasks = []
    for c in coros:
        tasks.append(asyncio.ensure_future(c))
        for _ in range(3):
            await asyncio.sleep(0)
    return tasks


def test_sequential_acquisitions_are_spaced_by_the_interval(rate_impl: Impl) -> None:
    async def body() -> list[float]:
        async with rate_impl.make(2) as lim:
            t0 = now()
            times = []
            for _ in range(5):
                await lim.acquire()
                times.append(now() - t0)
            return times

    times = rate_impl.run(body)
    for got, want in zip(times, [0.0, 0.5, 1.0, 1.5, 2.0], strict=True):
        assert close(got, want, rate_impl), times


def test_async_with_limiter_and_acquire_forms(rate_impl: Impl) -> None:
    async def body() -> list[float]:
        async with rate_impl.make(4) as lim:
            t0 = now()
            times = []
            async with lim:
                times.append(now() - t0)
            async with lim.acquire() as permit:
                times.append(now() - t0)
                assert permit.cost == 1
            permit = await lim.acquire(key=None)
            times.append(now() - t0)
            return times

    times = rate_impl.run(body)
    for got, want in zip(times, [0.0, 0.25, 0.5], strict=True):
        assert close(got, want, rate_impl), times


def test_burst_admits_at_once_then_the_rate(rate_impl: Impl) -> None:
    async def body() -> list[float]:
        async with rate_impl.make(2, burst=3) as lim:
            t0 = now()

            async def one() -> float:
                await lim.acquire()
                return now() - t0

            return list(await asyncio.gather(*(one() for _ in range(5))))

    times = sorted(rate_impl.run(body))
    for got, want in zip(times, [0.0, 0.0, 0.0, 0.5, 1.0], strict=True):
        assert close(got, want, rate_impl), times


def test_greedy_tasks_stay_within_the_window_bound_and_saturate(rate_impl: Impl) -> None:
    rate, burst, horizon = 5.0, 2.0, 3.0

    async def body() -> list[float]:
        async with rate_impl.make(rate, burst=burst) as lim:
            t0 = now()
            times: list[float] = []

            async def greedy() -> None:
                while True:
                    await lim.acquire()
                    t = now() - t0
                    if t > horizon + 1e-9:
                        return
                    times.append(t)

            await asyncio.gather(*(greedy() for _ in range(10)))
            return sorted(times)

    times = rate_impl.run(body)
    slack = rate * rate_impl.tol + 1e-6
    for window in (0.0, 0.1, 0.5, 1.0, 2.0, 3.0):
        assert max_in_window(times, [1.0] * len(times), window) <= burst + rate * window + slack
    # Saturated: exactly burst + rate * horizon in [0, horizon] (the last one at `horizon`).
    expected = burst + rate * horizon
    assert abs(len(times) - expected) <= 1 + slack, len(times)
    if rate_impl.virtual:
        assert len(times) == expected


def test_waiters_are_served_first_in_first_out_regardless_of_cost(rate_impl: Impl) -> None:
    async def body() -> list[int]:
        async with rate_impl.make(1, burst=3) as lim:
            await lim.acquire(cost=3)  # empty the bucket
            order: list[int] = []

            async def one(i: int, cost: float) -> None:
                await lim.acquire(cost=cost)
                order.append(i)

            tasks = await spawn_in_order(one(0, 3), one(1, 1), one(2, 2), one(3, 1), one(4, 1))
            await asyncio.gather(*tasks)
            return order

    assert rate_impl.run(body) == [0, 1, 2, 3, 4]


def test_timeout_fails_fast_without_reserving(rate_impl: Impl) -> None:
    async def body() -> None:
        async with rate_impl.make(1) as lim:
            await lim.acquire()
            t0 = now()
            with pytest.raises(RateLimitExceeded) as info:
                await lim.acquire(timeout=0.5)
            assert now() - t0 <= rate_impl.tol  # raised at once, no sleep
            assert close(info.value.retry_after, 1.0, rate_impl)
            assert isinstance(info.value, aiolease.AioleaseError)
            # Nothing was reserved: the next caller still gets the 1.0 slot.
            await lim.acquire(timeout=1.0 + rate_impl.tol)
            assert close(now() - t0, 1.0, rate_impl)

    rate_impl.run(body)


def test_timeout_counts_the_waiters_ahead(rate_impl: Impl) -> None:
    async def body() -> None:
        async with rate_impl.make(2) as lim:
            await lim.acquire()
            t0 = now()
            ahead = await spawn_in_order(lim.acquire(), lim.acquire())  # slots 0.5 and 1.0
            with pytest.raises(RateLimitExceeded) as info:
                await lim.acquire(timeout=1.2)
            assert close(info.value.retry_after, 1.5, rate_impl)
            await asyncio.gather(*ahead)
            assert close(now() - t0, 1.0, rate_impl)

    rate_impl.run(body)


def test_cancelled_waiter_gives_its_slot_back(rate_impl: Impl) -> None:
    rate_impl.need("refund_any_waiter")

    async def body() -> dict[str, float]:
        async with rate_impl.make(1) as lim:
            await lim.acquire()
            t0 = now()
            got: dict[str, float] = {}

            async def one(name: str) -> None:
                await lim.acquire()
                got[name] = now() - t0

            a, b, c = await spawn_in_order(one("a"), one("b"), one("c"))  # slots 1, 2, 3
            await asyncio.sleep(0.5)
            b.cancel()
            await asyncio.gather(a, c)
            with pytest.raises(asyncio.CancelledError):
                await b
            return got

    got = rate_impl.run(body)
    assert "b" not in got
    assert close(got["a"], 1.0, rate_impl), got
    assert close(got["c"], 2.0, rate_impl), got  # moved up into b's slot


def test_cancelling_the_head_moves_everyone_up(rate_impl: Impl) -> None:
    rate_impl.need("refund_any_waiter")

    async def body() -> dict[str, float]:
        async with rate_impl.make(1) as lim:
            await lim.acquire()
            t0 = now()
            got: dict[str, float] = {}

            async def one(name: str) -> None:
                await lim.acquire()
                got[name] = now() - t0

            a, b, c = await spawn_in_order(one("a"), one("b"), one("c"))
            await asyncio.sleep(0.25)
            a.cancel()
            await asyncio.gather(b, c)
            with pytest.raises(asyncio.CancelledError):
                await a
            return got

    got = rate_impl.run(body)
    assert close(got["b"], 1.0, rate_impl), got
    assert close(got["c"], 2.0, rate_impl), got


def test_waiter_timed_out_by_the_caller_gives_its_slot_back(rate_impl: Impl) -> None:
    async def body() -> float:
        async with rate_impl.make(1) as lim:
            await lim.acquire()
            t0 = now()

            async def impatient() -> None:
                async with asyncio.timeout(0.5):
                    await lim.acquire()

            first = asyncio.ensure_future(impatient())
            await asyncio.sleep(0)
            with pytest.raises(TimeoutError):
                await first
            await lim.acquire()
            return now() - t0

    assert close(rate_impl.run(body), 1.0, rate_impl)


def test_keys_are_limited_independently(rate_impl: Impl) -> None:
    async def body() -> None:
        async with rate_impl.make(1) as lim:
            t0 = now()
            await lim.acquire(key="a")
            await lim.acquire(key="b")
            await lim.acquire(key=("tenant", 7))
            assert now() - t0 <= rate_impl.tol
            with pytest.raises(RateLimitExceeded):
                await nowait(lim, key="a")
            await lim.acquire(key="a")
            assert close(now() - t0, 1.0, rate_impl)
            await nowait(lim, key="c")

    rate_impl.run(body)


def test_acquire_nowait(rate_impl: Impl) -> None:
    async def body() -> None:
        async with rate_impl.make(4) as lim:
            permit = await nowait(lim)
            assert permit.cost == 1
            with pytest.raises(RateLimitExceeded) as info:
                await nowait(lim)
            assert close(info.value.retry_after, 0.25, rate_impl)
            await asyncio.sleep(info.value.retry_after + rate_impl.tol)
            await nowait(lim)

    rate_impl.run(body)


def test_acquire_nowait_does_not_barge_ahead_of_waiters(rate_impl: Impl) -> None:
    async def body() -> None:
        async with rate_impl.make(1, burst=2) as lim:
            await lim.acquire(cost=2)
            (waiter,) = await spawn_in_order(lim.acquire(cost=2))  # slot 2.0
            await asyncio.sleep(1.0)  # 1 unit is free now, but a waiter is ahead
            with pytest.raises(RateLimitExceeded):
                await nowait(lim, cost=1)
            await waiter

    rate_impl.run(body)


@pytest.mark.parametrize(
    ("args", "kwargs", "exc"),
    [
        ((0,), {}, ValueError),
        ((-1,), {}, ValueError),
        ((math.nan,), {}, ValueError),
        ((math.inf,), {}, ValueError),
        (("10",), {}, TypeError),
        ((True,), {}, TypeError),
        ((10, 0), {}, ValueError),
        ((10, -1.0), {}, ValueError),
        ((10,), {"burst": 0.5}, ValueError),
        ((10,), {"burst": math.inf}, ValueError),
        ((10**400,), {}, ValueError),  # an int beyond any float: too large, not OverflowError
        ((10, 10**400), {}, ValueError),
        ((10,), {"burst": 10**400}, ValueError),
    ],
)
def test_bad_constructor_arguments(
    rate_impl: Impl, args: tuple[Any, ...], kwargs: dict[str, Any], exc: type[Exception]
) -> None:
    async def body() -> None:
        with pytest.raises(exc) as info:
            async with rate_impl.make(*args, **kwargs):
                pass
        named = next(iter(kwargs)) if kwargs else ("rate", "per")[len(args) - 1]
        assert named in str(info.value)  # the message names the bad argument

    rate_impl.run(body)


def test_bad_acquire_arguments(rate_impl: Impl) -> None:
    async def body() -> None:
        async with rate_impl.make(10, burst=3) as lim:
            for cost in (0, -1, math.nan, math.inf, 10**400):
                with pytest.raises(ValueError, match="cost"):
                    lim.acquire(cost=cost)
                with pytest.raises(ValueError, match="cost"):
                    await nowait(lim, cost=cost)
            with pytest.raises(ValueError, match="never be admitted") as info:
                lim.acquire(cost=4)  # more than the burst: raised at once
            assert "burst=3" in str(info.value)
            with pytest.raises(ValueError, match="never be admitted"):
                await nowait(lim, cost=3.5)
            with pytest.raises(ValueError, match="timeout"):
                lim.acquire(timeout=-1)
            lim.acquire(timeout=10**400)  # an int beyond any float waits as long as inf does
            with pytest.raises(TypeError):
                lim.acquire(cost="1")
            with pytest.raises(ValueError, match="seconds"):
                await applied(lim.pause(-1))
            with pytest.raises(ValueError, match="seconds"):
                await applied(lim.pause(10**400))
            # An unhashable key is refused at the call (not when awaited), naming key and value.
            with pytest.raises(TypeError, match=r"key must .*got list \[1\]"):
                lim.acquire(key=[1])
            with pytest.raises(TypeError, match=r"key must .*got list \[1\]"):
                await nowait(lim, key=[1])
            with pytest.raises(TypeError, match=r"key must .*got list \[1\]"):
                await applied(lim.pause(1, key=[1]))
            permit = await lim.acquire(cost=3)
            with pytest.raises(ValueError, match="actual_cost"):
                await applied(permit.settle(-1))
            with pytest.raises(ValueError, match="actual_cost"):
                await applied(permit.settle(10**400))

    rate_impl.run(body)


def test_pause_holds_every_waiter_off(rate_impl: Impl) -> None:
    async def body() -> list[float]:
        async with rate_impl.make(10, burst=2) as lim:
            t0 = now()
            await applied(lim.pause(2.0))
            with pytest.raises(RateLimitExceeded) as info:
                await nowait(lim)
            assert close(info.value.retry_after, 2.0, rate_impl)
            await applied(lim.pause(0.5))  # never shortens a pause in force

            async def one() -> float:
                await lim.acquire()
                return now() - t0

            return sorted(await asyncio.gather(*(one() for _ in range(4))))

    times = rate_impl.run(body)
    # After the pause: up to the burst at once, then the rate.
    for got, want in zip(times, [2.0, 2.0, 2.1, 2.2], strict=True):
        assert close(got, want, rate_impl), times


def test_pause_fails_waiters_it_pushes_past_their_timeout(rate_impl: Impl) -> None:
    async def body() -> None:
        async with rate_impl.make(1) as lim:
            await lim.acquire()
            t0 = now()
            (patient, hurried) = await spawn_in_order(
                lim.acquire(), lim.acquire(timeout=2.5)
            )  # slots 1.0 and 2.0
            await applied(lim.pause(3.0))
            with pytest.raises(RateLimitExceeded):
                await hurried
            assert now() - t0 <= rate_impl.tol
            await patient
            assert close(now() - t0, 3.0, rate_impl)

    rate_impl.run(body)


def test_a_pause_longer_than_any_clock_holds_every_waiter_off(rate_impl: Impl) -> None:
    # A finite pause beyond what a clock can count (Redis: its expiry and reply integers) is a
    # pause for good: the waiter it pushes past its timeout fails, nobody is admitted.
    async def body() -> None:
        async with rate_impl.make(1) as lim:
            await lim.acquire()
            waiter = asyncio.ensure_future(lim.acquire(timeout=30))
            await asyncio.sleep(0.05)  # it sleeps on its slot
            await applied(lim.pause(1e300))
            with pytest.raises(RateLimitExceeded):
                await waiter
            with pytest.raises(RateLimitExceeded) as info:
                await nowait(lim)
            assert info.value.retry_after >= 2.0**31 - 1

    rate_impl.run(body)


def test_pause_on_one_key_leaves_others_alone(rate_impl: Impl) -> None:
    async def body() -> None:
        async with rate_impl.make(10) as lim:
            await applied(lim.pause(5.0, key="a"))
            await nowait(lim, key="b")
            await nowait(lim)
            with pytest.raises(RateLimitExceeded):
                await nowait(lim, key="a")

    rate_impl.run(body)


def test_settle_charges_the_difference(rate_impl: Impl) -> None:
    async def body() -> None:
        async with rate_impl.make(1, burst=5) as lim:
            permit = await lim.acquire(cost=1)
            await applied(permit.settle(5))  # the call really used 5
            assert permit.cost == 5
            with pytest.raises(RateLimitExceeded) as info:
                await nowait(lim)
            assert close(info.value.retry_after, 1.0, rate_impl)

    rate_impl.run(body)


def test_settle_refunds_the_difference(rate_impl: Impl) -> None:
    async def body() -> None:
        async with rate_impl.make(1, burst=5) as lim:
            t0 = now()
            permit = await lim.acquire(cost=5)  # estimate
            with pytest.raises(RateLimitExceeded):
                await nowait(lim, cost=4)
            await applied(permit.settle(1))  # it used only 1
            await nowait(lim, cost=4)
            assert now() - t0 <= rate_impl.tol

    rate_impl.run(body)


def test_settle_refund_moves_the_head_waiter_up(rate_impl: Impl) -> None:
    # On Redis a settle cannot tell whether another process was admitted in between, so a
    # refund never moves sleeping waiters up (docs/redis.md).
    rate_impl.need("settle_moves_waiters")

    async def body() -> float:
        async with rate_impl.make(1, burst=4) as lim:
            t0 = now()
            permit = await lim.acquire(cost=4)
            (waiter,) = await spawn_in_order(lim.acquire(cost=4))  # slot 4.0
            await applied(permit.settle(2))  # slot becomes 2.0
            await waiter
            return now() - t0

    assert close(rate_impl.run(body), 2.0, rate_impl)


def test_statistics(rate_impl: Impl) -> None:
    async def body() -> None:
        async with rate_impl.make(2, burst=1) as lim:
            await lim.acquire()
            with pytest.raises(RateLimitExceeded):
                await nowait(lim)
            (w1, w2) = await spawn_in_order(lim.acquire(), lim.acquire())
            s = lim.statistics()
            assert (s.admitted, s.rejected, s.waiting) == (1, 1, 2)
            assert (s.rate, s.per, s.burst, s.strict) == (2.0, 1.0, 1.0, False)
            w2.cancel()
            await w1
            with pytest.raises(asyncio.CancelledError):
                await w2
            s = lim.statistics()
            assert (s.admitted, s.rejected, s.waiting, s.cancelled) == (2, 1, 0, 1)
            assert close(s.wait_time_total, 0.5, rate_impl)
            assert close(s.wait_time_max, 0.5, rate_impl)
            with pytest.raises(AttributeError):
                s.admitted = 0

    rate_impl.run(body)
