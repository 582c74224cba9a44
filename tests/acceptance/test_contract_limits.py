"""Black-box acceptance tests of the "Limits" / "Time" contract (docs/architecture.md).

Local limiters run on virtual time (``aiolease.testing.VirtualTimeLoop``);
the Redis limiters run against the live server on real time with slack.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import redis.asyncio as redis_asyncio

import aiolease
from aiolease.redis import RedisConcurrencyLimiter, RedisRateLimiter
from aiolease.testing import VirtualTimeLoop

vt = pytest.mark.aiolease_virtual_time
EPS = 1e-6


def now() -> float:
    return asyncio.get_running_loop().time()


async def take(limiter: Any, **kwargs: Any) -> None:
    """Acquire through the contract form ``async with limiter.acquire(...)``."""
    async with limiter.acquire(**kwargs):
        pass


def max_window_excess(
    admissions: list[tuple[float, float]], rate: float, per: float, burst: float
) -> float:
    """max over windows [t_i, t_j] of sum(cost) - (burst + rate * (t_j - t_i) / per)."""
    adm = sorted(admissions)
    worst = -math.inf
    for i in range(len(adm)):
        total = 0.0
        for j in range(i, len(adm)):
            total += adm[j][1]
            worst = max(worst, total - (burst + rate * (adm[j][0] - adm[i][0]) / per))
    return worst


# -- RateLimiter: construction and arguments ----------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"rate": 0}, "rate"),
        ({"rate": -1}, "rate"),
        ({"rate": math.nan}, "rate"),
        ({"rate": 1, "per": 0}, "per"),
        ({"rate": 1, "per": -2}, "per"),
        ({"rate": 1, "burst": 0}, "burst"),
        ({"rate": 1, "burst": 0.5}, "burst"),
    ],
)
def test_rate_limiter_bad_arguments(kwargs: dict[str, Any], word: str) -> None:
    with pytest.raises(ValueError, match=word):
        aiolease.RateLimiter(**kwargs)


def test_rate_limiter_bad_argument_type() -> None:
    with pytest.raises((TypeError, ValueError), match="rate"):
        aiolease.RateLimiter("ten")  # type: ignore[arg-type]


def test_rate_limiter_construction_needs_no_loop() -> None:
    limiter = aiolease.RateLimiter(5, 1.0, burst=2)

    async def use() -> float:
        limiter.acquire_nowait()
        limiter.acquire_nowait()
        with pytest.raises(aiolease.RateLimitExceeded) as info:
            limiter.acquire_nowait()
        return info.value.retry_after

    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        assert runner.run(use()) == pytest.approx(0.2)


@vt
async def test_cost_too_large_raises_value_error_immediately() -> None:
    limiter = aiolease.RateLimiter(10, 1.0, burst=3)
    t0 = now()
    with pytest.raises(ValueError, match="cost"):
        await take(limiter, cost=4)
    with pytest.raises(ValueError, match="cost"):
        async with limiter.acquire(cost=3.5):
            pass
    with pytest.raises(ValueError, match="cost"):
        limiter.acquire_nowait(cost=4)
    with pytest.raises(ValueError):
        limiter.acquire_nowait(cost=-1)
    assert now() == t0
    # The largest admissible cost is admitted.
    limiter.acquire_nowait(cost=3)


# -- RateLimiter: acquire_nowait / retry_after -----------------------------------------


@vt
async def test_acquire_nowait_burst_then_retry_after() -> None:
    limiter = aiolease.RateLimiter(2, per=1.0, burst=3)
    for _ in range(3):
        limiter.acquire_nowait()
    with pytest.raises(aiolease.RateLimitExceeded) as info:
        limiter.acquire_nowait()
    assert isinstance(info.value, aiolease.AioleaseError)
    assert info.value.retry_after == pytest.approx(0.5)
    await asyncio.sleep(info.value.retry_after)
    limiter.acquire_nowait()
    with pytest.raises(aiolease.RateLimitExceeded) as info2:
        limiter.acquire_nowait(cost=2)
    assert info2.value.retry_after == pytest.approx(1.0)


@vt
async def test_retry_after_is_exact_for_repeated_polling() -> None:
    limiter = aiolease.RateLimiter(3, per=2.0, burst=1)
    admitted: list[float] = []
    while len(admitted) < 10:
        try:
            limiter.acquire_nowait()
        except aiolease.RateLimitExceeded as exc:
            retry = exc.retry_after
            await asyncio.sleep(retry)
            assert retry > 0
        else:
            admitted.append(now())
    gaps = [b - a for a, b in itertools.pairwise(admitted)]
    assert gaps == pytest.approx([2.0 / 3] * 9)


# -- RateLimiter: window bound and saturation -------------------------------------------


CONFIGS = [
    (5.0, 1.0, 1.0),
    (10.0, 2.0, 3.0),
    (3.0, 0.5, 4.0),
    (100.0, 60.0, 10.0),
    (7.0, 1.0, 2.5),
]


@vt
@pytest.mark.parametrize(("rate", "per", "burst"), CONFIGS)
@pytest.mark.parametrize("seed", [1, 2])
async def test_window_bound_and_saturation(
    rate: float, per: float, burst: float, seed: int
) -> None:
    rng = random.Random(seed)
    limiter = aiolease.RateLimiter(rate, per, burst=burst)
    duration = 40 * per / rate  # about 40 admissions at saturation
    admissions: list[tuple[float, float]] = []
    start = now()

    async def greedy(i: int) -> None:
        while now() - start < duration:
            cost = rng.choice([1.0, 1.0, 0.5, min(2.0, burst), burst])
            style = i % 3
            if style == 0:
                await take(limiter, cost=cost)
            elif style == 1:
                async with limiter.acquire(cost=cost, key=None):
                    pass
            else:
                try:
                    limiter.acquire_nowait(cost=cost)
                except aiolease.RateLimitExceeded as exc:
                    await asyncio.sleep(max(exc.retry_after, 0.0) + rng.random() * 0.01)
                    continue
            admissions.append((now(), cost))
            if rng.random() < 0.2:
                await asyncio.sleep(rng.random() * per / rate)

    await asyncio.gather(*(greedy(i) for i in range(6)))
    assert max_window_excess(admissions, rate, per, burst) <= EPS
    elapsed = max(t for t, _ in admissions) - start
    total = sum(c for _, c in admissions)
    # Saturated: the whole run admits (almost) exactly rate/per per second.
    assert total <= burst + rate * elapsed / per + EPS
    assert total >= rate * elapsed / per - burst


@vt
async def test_async_with_limiter_saturation_rate_is_exact() -> None:
    limiter = aiolease.RateLimiter(4, per=1.0, burst=1)
    times: list[float] = []
    start = now()

    async def worker() -> None:
        for _ in range(10):
            async with limiter:
                times.append(now() - start)

    await asyncio.gather(*(worker() for _ in range(4)))
    assert len(times) == 40
    assert sorted(times) == pytest.approx([i * 0.25 for i in range(40)])


@vt
async def test_first_window_is_not_doubled() -> None:
    """aiolimiter admits ~2x in the first window; the bound forbids it."""
    limiter = aiolease.RateLimiter(10, per=1.0, burst=10)
    admitted: list[tuple[float, float]] = []
    start = now()

    async def one() -> None:
        await take(limiter)
        admitted.append((now(), 1.0))

    await asyncio.gather(*(one() for _ in range(40)))
    in_first_second = sum(1 for t, _ in admitted if t - start < 1.0)
    assert in_first_second <= 10 + 10 * 1.0  # burst + rate*T/per over [0, 1)
    assert max_window_excess(admitted, 10, 1.0, 10) <= EPS


# -- RateLimiter: FIFO, cancel, timeout --------------------------------------------------


@vt
async def test_fifo_per_key_small_costs_do_not_barge() -> None:
    limiter = aiolease.RateLimiter(1, per=1.0, burst=3)
    limiter.acquire_nowait(cost=3)
    order: list[str] = []

    async def waiter(name: str, cost: float, key: Any = None) -> None:
        await take(limiter, cost=cost, key=key)
        order.append(name)

    tasks = []
    for name, cost in [("big", 3.0), ("s1", 1.0), ("s2", 1.0), ("mid", 2.0), ("s3", 1.0)]:
        tasks.append(asyncio.create_task(waiter(name, cost)))
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert order == ["big", "s1", "s2", "mid", "s3"]
    # Meanwhile nowait on the same key refuses while others wait.


@vt
async def test_nowait_does_not_barge_ahead_of_waiters() -> None:
    limiter = aiolease.RateLimiter(1, per=1.0, burst=2)
    limiter.acquire_nowait(cost=2)
    task = asyncio.create_task(take(limiter, cost=2))
    await asyncio.sleep(1.0)  # one unit is available now, but the waiter needs two
    with pytest.raises(aiolease.RateLimitExceeded):
        limiter.acquire_nowait(cost=1)
    await task


@vt
async def test_keys_are_independent() -> None:
    limiter = aiolease.RateLimiter(1, per=10.0, burst=1)
    limiter.acquire_nowait(key="a")
    with pytest.raises(aiolease.RateLimitExceeded):
        limiter.acquire_nowait(key="a")
    limiter.acquire_nowait(key="b")
    limiter.acquire_nowait()  # the default key
    t0 = now()
    await take(limiter, key="c")
    assert now() == t0
    await take(limiter, key="a")
    assert now() - t0 == pytest.approx(10.0)


@vt
async def test_fifo_per_key_other_key_not_blocked_by_waiters() -> None:
    limiter = aiolease.RateLimiter(1, per=1.0, burst=1)
    limiter.acquire_nowait(key="a")
    waiting = [asyncio.create_task(take(limiter, key="a")) for _ in range(5)]
    await asyncio.sleep(0)
    t0 = now()
    await take(limiter, key="b")
    assert now() == t0
    await asyncio.gather(*waiting)
    assert now() - t0 == pytest.approx(5.0)


@vt
async def test_cancelled_waiter_gives_reservation_back() -> None:
    limiter = aiolease.RateLimiter(1, per=1.0, burst=1)
    start = now()
    limiter.acquire_nowait()
    admitted: dict[str, float] = {}

    async def waiter(name: str) -> None:
        await take(limiter)
        admitted[name] = now() - start

    b = asyncio.create_task(waiter("b"))
    await asyncio.sleep(0)
    c = asyncio.create_task(waiter("c"))
    await asyncio.sleep(0.5)
    b.cancel()
    with pytest.raises(asyncio.CancelledError):
        await b
    await c
    assert admitted == {"c": pytest.approx(1.0)}


@vt
async def test_waiter_timed_out_by_asyncio_timeout_gives_reservation_back() -> None:
    limiter = aiolease.RateLimiter(1, per=1.0, burst=1)
    start = now()
    limiter.acquire_nowait()

    async def impatient() -> None:
        async with asyncio.timeout(0.5):
            await take(limiter)

    b = asyncio.create_task(impatient())
    await asyncio.sleep(0)
    c = asyncio.create_task(take(limiter))
    with pytest.raises(TimeoutError):
        await b
    await c
    assert now() - start == pytest.approx(1.0)


@vt
async def test_timeout_fails_fast_without_sleeping_or_reserving() -> None:
    limiter = aiolease.RateLimiter(1, per=1.0, burst=1)
    start = now()
    limiter.acquire_nowait()
    with pytest.raises(aiolease.RateLimitExceeded) as info:
        await take(limiter, timeout=0.5)
    assert now() == start, "acquire(timeout=...) slept instead of failing at once"
    assert info.value.retry_after == pytest.approx(1.0)
    with pytest.raises(aiolease.RateLimitExceeded):
        async with limiter.acquire(cost=1, timeout=0.999):
            pass
    assert now() == start
    # Nothing was reserved by the failed calls: the next slot is still at 1.0.
    async with limiter.acquire(timeout=1.0):
        assert now() - start == pytest.approx(1.0)


@vt
async def test_timeout_accounts_for_queue_ahead() -> None:
    limiter = aiolease.RateLimiter(1, per=1.0, burst=1)
    start = now()
    limiter.acquire_nowait()
    queued = [asyncio.create_task(take(limiter)) for _ in range(3)]  # slots 1, 2, 3
    await asyncio.sleep(0)
    with pytest.raises(aiolease.RateLimitExceeded) as info:
        await take(limiter, timeout=2.5)  # its slot would be 4.0
    assert now() == start
    assert info.value.retry_after == pytest.approx(4.0)
    await asyncio.gather(*queued)
    assert now() - start == pytest.approx(3.0)


# -- RateLimiter: no polling (one timer per waiter) ----------------------------------------


class CountingLoop(VirtualTimeLoop):
    timers = 0

    def call_at(  # type: ignore[override]  # counting wrapper, same behaviour
        self, when: float, callback: Any, *args: Any, context: Any = None
    ) -> Any:
        CountingLoop.timers += 1
        return super().call_at(when, callback, *args, context=context)


def test_waiter_sleeps_once_no_polling() -> None:
    async def main() -> tuple[int, float]:
        limiter = aiolease.RateLimiter(1, per=100.0, burst=1)
        limiter.acquire_nowait()
        before = CountingLoop.timers
        start = now()
        await take(limiter)
        return CountingLoop.timers - before, now() - start

    with asyncio.Runner(loop_factory=CountingLoop) as runner:
        timers, waited = runner.run(main())
    assert waited == pytest.approx(100.0)
    assert timers <= 2, f"{timers} timers for one 100 s wait: polling"


# -- ConcurrencyLimiter -------------------------------------------------------------------


@pytest.mark.parametrize(("limit", "exc"), [(0, ValueError), (-1, ValueError), ("2", TypeError)])
def test_concurrency_limiter_bad_limit(limit: Any, exc: type[Exception]) -> None:
    with pytest.raises(exc, match="limit"):
        aiolease.ConcurrencyLimiter(limit)


@vt
async def test_concurrency_limit_holds_and_all_finish() -> None:
    sem = aiolease.ConcurrencyLimiter(3)
    active = peak = done = 0

    async def worker(i: int) -> None:
        nonlocal active, peak, done
        async with sem:
            active += 1
            peak = max(peak, active)
            await asyncio.sleep(1 + i % 3)
            active -= 1
        done += 1

    await asyncio.gather(*(worker(i) for i in range(20)))
    assert (peak, done, active) == (3, 20, 0)


@vt
async def test_concurrency_fifo() -> None:
    sem = aiolease.ConcurrencyLimiter(1)
    order: list[int] = []
    release = asyncio.Event()

    async def holder() -> None:
        async with sem:
            await release.wait()

    h = asyncio.create_task(holder())
    await asyncio.sleep(0)

    async def waiter(i: int) -> None:
        async with sem.acquire():
            order.append(i)
            await asyncio.sleep(0)

    tasks = []
    for i in range(6):
        tasks.append(asyncio.create_task(waiter(i)))
        await asyncio.sleep(0)
    release.set()
    await asyncio.gather(h, *tasks)
    assert order == list(range(6))


@vt
async def test_concurrency_timeout_raises_limit_timeout() -> None:
    sem = aiolease.ConcurrencyLimiter(1)
    start = now()
    async with sem:
        with pytest.raises(aiolease.LimitTimeout) as info:
            async with sem.acquire(timeout=2.0):
                pass
        assert isinstance(info.value, TimeoutError)
        assert isinstance(info.value, aiolease.AioleaseError)
        assert now() - start == pytest.approx(2.0)
        with pytest.raises(TimeoutError):
            await take(sem, key=None, timeout=0.5)
    # Timed-out waiters hold nothing: the slot is free at once.
    t = now()
    async with sem.acquire(timeout=1.0):
        assert now() == t


@vt
async def test_concurrency_cancelled_and_timed_out_waiters_give_place_back() -> None:
    sem = aiolease.ConcurrencyLimiter(2)
    gate = asyncio.Event()
    got: list[str] = []

    async def hold() -> None:
        async with sem:
            await gate.wait()

    holders = [asyncio.create_task(hold()) for _ in range(2)]
    await asyncio.sleep(0)

    async def waiter(name: str, timeout: float | None = None) -> None:
        async with sem.acquire(timeout=timeout):
            got.append(name)
            await gate.wait()

    a = asyncio.create_task(waiter("a"))
    await asyncio.sleep(0)
    b = asyncio.create_task(waiter("b", timeout=1.0))
    await asyncio.sleep(0)
    c = asyncio.create_task(waiter("c"))
    d = asyncio.create_task(waiter("d"))
    await asyncio.sleep(0.5)
    a.cancel()
    await asyncio.sleep(1.0)  # b times out
    with pytest.raises(asyncio.CancelledError):
        await a
    with pytest.raises(aiolease.LimitTimeout):
        await b
    gate.set()
    await asyncio.gather(*holders, c, d)
    assert got == ["c", "d"]
    # Full capacity is back.
    async with sem.acquire(timeout=0.1), sem.acquire(timeout=0.1):
        with pytest.raises(aiolease.LimitTimeout):
            await take(sem, timeout=0.1)


@vt
async def test_concurrency_keys_are_independent() -> None:
    sem = aiolease.ConcurrencyLimiter(1)
    async with sem.acquire(key="a"):
        t = now()
        async with sem.acquire(key="b", timeout=1.0):
            assert now() == t
        with pytest.raises(aiolease.LimitTimeout):
            await take(sem, key="a", timeout=1.0)


@vt
async def test_concurrency_cancellation_at_every_point_keeps_capacity() -> None:
    sem = aiolease.ConcurrencyLimiter(2)
    rng = random.Random(7)

    async def worker() -> None:
        async with sem.acquire(timeout=rng.choice([None, 0.3, 1.0])):
            await asyncio.sleep(rng.random())

    tasks = [asyncio.create_task(worker()) for _ in range(50)]
    for _ in range(20):
        await asyncio.sleep(rng.random() * 0.2)
        rng.choice(tasks).cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    t = now()
    async with sem.acquire(timeout=0.01), sem.acquire(timeout=0.01):
        assert now() == t
        with pytest.raises(aiolease.LimitTimeout):
            await take(sem, timeout=0.01)


# -- Redis -------------------------------------------------------------------------------


@pytest.fixture
async def rclient(redis_url: str) -> AsyncIterator[redis_asyncio.Redis]:
    client = redis_asyncio.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def rname(rclient: redis_asyncio.Redis) -> AsyncIterator[str]:
    name = f"acc-{uuid.uuid4().hex[:12]}"
    yield name
    keys = [k async for k in rclient.scan_iter(match=f"*{name}*", count=1000)]
    if keys:
        await rclient.delete(*keys)
    leftover = [k async for k in rclient.scan_iter(match=f"*{name}*", count=1000)]
    assert leftover == []


async def test_redis_rate_nowait_burst_then_retry_after(
    rclient: redis_asyncio.Redis, rname: str
) -> None:
    limiter = RedisRateLimiter(rclient, rname, 10, per=1.0, burst=3)
    for _ in range(3):
        await limiter.acquire_nowait()
    with pytest.raises(aiolease.RateLimitExceeded) as info:
        await limiter.acquire_nowait()
    assert 0 < info.value.retry_after <= 0.1 + 0.05
    # Keys were created in Redis under the name (and are Cluster-safe: one hash tag).
    keys = [k.decode() async for k in rclient.scan_iter(match=f"*{rname}*")]
    assert keys
    assert all("{" in k and "}" in k for k in keys)


async def test_redis_rate_cost_too_large_is_value_error(
    rclient: redis_asyncio.Redis, rname: str
) -> None:
    limiter = RedisRateLimiter(rclient, rname, 10, per=1.0, burst=2)
    with pytest.raises(ValueError, match="cost"):
        await take(limiter, cost=3)


def test_redis_rate_bad_arguments() -> None:
    client = redis_asyncio.Redis.from_url("redis://127.0.0.1:1")
    with pytest.raises(ValueError, match="rate"):
        RedisRateLimiter(client, "x", 0)
    with pytest.raises(ValueError, match="burst"):
        RedisRateLimiter(client, "x", 1, burst=0)
    with pytest.raises(ValueError, match="on_error"):
        RedisRateLimiter(client, "x", 1, on_error="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="limit"):
        RedisConcurrencyLimiter(client, "x", 0)


@pytest.mark.slow
async def test_redis_rate_window_bound_and_saturation(
    rclient: redis_asyncio.Redis, rname: str
) -> None:
    rate, burst, duration = 20.0, 2.0, 1.5
    limiter = RedisRateLimiter(rclient, rname, rate, per=1.0, burst=burst)
    admissions: list[tuple[float, float]] = []
    start = time.monotonic()

    async def greedy(i: int) -> None:
        while time.monotonic() - start < duration:
            if i % 2:
                async with limiter:
                    pass
            else:
                await take(limiter)
            admissions.append((time.monotonic(), 1.0))

    await asyncio.gather(*(greedy(i) for i in range(6)))
    # Client-side timestamps jitter by a round trip: allow one unit of slack.
    assert max_window_excess(admissions, rate, 1.0, burst + 1) <= EPS
    elapsed = max(t for t, _ in admissions) - start
    assert len(admissions) >= rate * elapsed * 0.8
    assert len(admissions) <= burst + rate * (elapsed + 0.1)


async def test_redis_rate_timeout_fails_fast(rclient: redis_asyncio.Redis, rname: str) -> None:
    limiter = RedisRateLimiter(rclient, rname, 2, per=1.0, burst=1)
    await limiter.acquire_nowait()
    t0 = time.monotonic()
    with pytest.raises(aiolease.RateLimitExceeded) as info:
        await take(limiter, timeout=0.1)
    assert time.monotonic() - t0 < 0.3, "timeout did not fail fast"
    assert 0.1 < info.value.retry_after <= 0.55


@pytest.mark.slow
async def test_redis_rate_fifo_per_key(rclient: redis_asyncio.Redis, rname: str) -> None:
    limiter = RedisRateLimiter(rclient, rname, 20, per=1.0, burst=3)
    order: list[int] = []

    async def one(i: int, cost: float) -> None:
        await take(limiter, cost=cost)
        order.append(i)

    await take(limiter, cost=3)
    tasks = []
    for i, cost in enumerate([3.0, 1.0, 1.0, 2.0, 1.0]):
        tasks.append(asyncio.create_task(one(i, cost)))
        await asyncio.sleep(0.01)  # each script reaches Redis before the next starts
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4]


@pytest.mark.slow
async def test_redis_rate_cancel_last_waiter_gives_back(
    rclient: redis_asyncio.Redis, rname: str
) -> None:
    limiter = RedisRateLimiter(rclient, rname, 2, per=1.0, burst=1)
    await limiter.acquire_nowait()
    t0 = time.monotonic()
    b = asyncio.create_task(take(limiter))  # slot ~0.5
    await asyncio.sleep(0.1)
    b.cancel()
    with pytest.raises(asyncio.CancelledError):
        await b
    await take(limiter)  # takes b's slot ~0.5, not ~1.0
    assert time.monotonic() - t0 < 0.8, "cancelled waiter did not give its slot back"


@pytest.mark.slow
async def test_redis_rate_cancel_middle_waiter_gives_back(
    rclient: redis_asyncio.Redis, rname: str
) -> None:
    limiter = RedisRateLimiter(rclient, rname, 2, per=1.0, burst=1)
    await limiter.acquire_nowait()
    t0 = time.monotonic()
    # b holds slot ~0.5, c ~1.0; cancelling b must move c up to ~0.5 (as the local limiter does).
    b = asyncio.create_task(take(limiter))
    await asyncio.sleep(0.05)
    c = asyncio.create_task(take(limiter))
    await asyncio.sleep(0.1)
    b.cancel()
    with pytest.raises(asyncio.CancelledError):
        await b
    await c
    assert time.monotonic() - t0 < 0.85, "cancelled waiter did not give its slot back"


@pytest.mark.slow
async def test_redis_concurrency_limit(rclient: redis_asyncio.Redis, rname: str) -> None:
    sem = RedisConcurrencyLimiter(rclient, rname, 2, lease_ttl=5.0)
    active = peak = done = 0

    async def worker() -> None:
        nonlocal active, peak, done
        async with sem:
            active += 1
            peak = max(peak, active)
            await asyncio.sleep(0.05)
            active -= 1
        done += 1

    await asyncio.gather(*(worker() for _ in range(8)))
    assert (peak, done) == (2, 8)
    async with sem, sem.acquire():
        with pytest.raises(aiolease.LimitTimeout) as info:
            await take(sem, timeout=0.2)
        assert isinstance(info.value, TimeoutError)
        # Another key is independent.
        async with sem.acquire(key="other", timeout=1.0):
            pass
    async with sem.acquire(timeout=1.0), sem.acquire(timeout=1.0):
        pass


@pytest.mark.slow
async def test_redis_concurrency_crashed_holder_frees_slot_after_ttl(
    rclient: redis_asyncio.Redis, rname: str, redis_url: str
) -> None:
    code = (
        "import asyncio, os, sys, redis.asyncio as r\n"
        "from aiolease.redis import RedisConcurrencyLimiter\n"
        "async def main():\n"
        f"    c = r.Redis.from_url({redis_url!r})\n"
        f"    sem = RedisConcurrencyLimiter(c, {rname!r}, 1, lease_ttl=1.0)\n"
        "    await sem.acquire().__aenter__()\n"
        "    print('held', flush=True)\n"
        "    os._exit(0)\n"
        "asyncio.run(main())\n"
    )
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.stdout.strip() == "held", proc.stderr
    sem = RedisConcurrencyLimiter(rclient, rname, 1, lease_ttl=1.0)
    t0 = time.monotonic()
    async with sem.acquire(timeout=5.0):
        waited = time.monotonic() - t0
    assert waited < 3.0


UNREACHABLE = ["refused", "silent"]


class SilentServer:
    """A TCP server that accepts connections and never answers (a hung Redis)."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> str:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.writers.append(writer)

        self.server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}/0"

    async def __aexit__(self, *exc: object) -> None:
        for w in self.writers:
            w.close()
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


@asynccontextmanager
async def unreachable_client(kind: str) -> AsyncIterator[redis_asyncio.Redis]:
    if kind == "refused":
        client = redis_asyncio.Redis.from_url("redis://127.0.0.1:1/0")
        try:
            yield client
        finally:
            await client.aclose()
        return
    async with SilentServer() as url:
        client = redis_asyncio.Redis.from_url(url)
        try:
            yield client
        finally:
            await client.aclose()


@pytest.mark.parametrize("kind", UNREACHABLE)
async def test_redis_on_error_allow_answers_fast(kind: str) -> None:
    async with unreachable_client(kind) as client:
        limiter = RedisRateLimiter(client, f"acc-{uuid.uuid4().hex[:8]}", 10, on_error="allow")
        t0 = time.monotonic()
        await take(limiter)
        async with limiter:
            pass
        for _ in range(20):
            await take(limiter)
        assert time.monotonic() - t0 < 1.0


@pytest.mark.parametrize("kind", UNREACHABLE)
async def test_redis_on_error_deny_raises_rate_limit_exceeded_fast(kind: str) -> None:
    async with unreachable_client(kind) as client:
        limiter = RedisRateLimiter(client, f"acc-{uuid.uuid4().hex[:8]}", 10, on_error="deny")
        t0 = time.monotonic()
        for _ in range(5):
            with pytest.raises(aiolease.RateLimitExceeded) as info:
                await take(limiter)
            assert isinstance(info.value.retry_after, float)
            assert info.value.retry_after >= 0
        with pytest.raises(aiolease.RateLimitExceeded):
            async with limiter:
                pass
        assert time.monotonic() - t0 < 1.0


@pytest.mark.parametrize("kind", UNREACHABLE)
async def test_redis_on_error_raise_raises_not_hangs(kind: str) -> None:
    async with unreachable_client(kind) as client:
        limiter = RedisRateLimiter(client, f"acc-{uuid.uuid4().hex[:8]}", 10)
        t0 = time.monotonic()
        with pytest.raises(Exception) as info:
            await take(limiter)
        assert not isinstance(info.value, aiolease.RateLimitExceeded)
        assert time.monotonic() - t0 < 2.0


# -- bounded per-key state -------------------------------------------------------------------


@vt
async def test_per_key_state_is_bounded() -> None:
    import tracemalloc

    limiter = aiolease.RateLimiter(10, per=1.0, burst=2)
    sem = aiolease.ConcurrencyLimiter(1)
    tracemalloc.start()
    try:
        limiter.acquire_nowait(key="warm-up")
        base = tracemalloc.get_traced_memory()[0]
        grown: list[int] = []
        for i in range(60_000):
            limiter.acquire_nowait(key=("k", i))
            async with sem.acquire(key=("k", i)):
                pass
            if i % 200 == 199:
                await asyncio.sleep(1.0)  # every key so far has paid its debt off
            if i in (19_999, 59_999):
                grown.append(tracemalloc.get_traced_memory()[0] - base)
    finally:
        tracemalloc.stop()
    # 60 000 keys used once each must not cost 3x what 20 000 did: idle keys are forgotten.
    assert grown[1] < 1.5 * grown[0] + 100_000, grown
    assert grown[1] < 2_000_000, grown


# -- more Redis -------------------------------------------------------------------------------


async def test_redis_rate_keys_independent_and_expire(
    rclient: redis_asyncio.Redis, rname: str
) -> None:
    limiter = RedisRateLimiter(rclient, rname, 1, per=10.0, burst=1)
    await limiter.acquire_nowait(key="a")
    with pytest.raises(aiolease.RateLimitExceeded):
        await limiter.acquire_nowait(key="a")
    await limiter.acquire_nowait(key="b")
    async with limiter.acquire(key="c", timeout=0.1):
        pass
    keys = [k async for k in rclient.scan_iter(match=f"*{rname}*")]
    assert keys
    for k in keys:
        ttl = await rclient.pttl(k)
        assert ttl > 0, f"{k!r} never expires (pttl={ttl})"


@pytest.mark.slow
async def test_redis_concurrency_lease_renewed_while_held(
    rclient: redis_asyncio.Redis, rname: str, redis_url: str
) -> None:
    other_client = redis_asyncio.Redis.from_url(redis_url)
    try:
        holder = RedisConcurrencyLimiter(rclient, rname, 1, lease_ttl=0.6)
        other = RedisConcurrencyLimiter(other_client, rname, 1, lease_ttl=0.6)
        async with holder:
            # Held for 2.5 TTLs: the renewal keeps the slot ours.
            with pytest.raises(aiolease.LimitTimeout):
                await take(other, timeout=1.5)
        async with other.acquire(timeout=1.0):
            pass
    finally:
        await other_client.aclose()


@vt
@pytest.mark.parametrize("seed", range(4))
async def test_window_bound_holds_with_cancellations_and_timeouts(seed: int) -> None:
    rng = random.Random(seed)
    rate, per, burst = 4.0, 1.0, 3.0
    limiter = aiolease.RateLimiter(rate, per, burst=burst)
    admissions: list[tuple[float, float]] = []
    start = now()

    async def one(cost: float, timeout: float | None) -> None:
        try:
            async with limiter.acquire(cost=cost, key="k", timeout=timeout):
                admissions.append((now(), cost))
        except aiolease.RateLimitExceeded:
            pass

    tasks: list[asyncio.Task[None]] = []
    while now() - start < 30:
        for _ in range(rng.randint(0, 3)):
            cost = rng.choice([0.5, 1.0, 2.0, 3.0])
            timeout = rng.choice([None, None, 0.5, 2.0])
            tasks.append(asyncio.create_task(one(cost, timeout)))
        if tasks and rng.random() < 0.5:
            rng.choice(tasks).cancel()
        await asyncio.sleep(rng.random() * 0.5)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert max_window_excess(admissions, rate, per, burst) <= EPS
    # Cancelled and rejected waiters left nothing behind: an idle limiter admits a burst.
    await asyncio.sleep(burst * per / rate)
    limiter.acquire_nowait(cost=burst, key="k")


@vt
async def test_concurrency_slot_handed_to_waiter_cancelled_in_same_instant_is_passed_on() -> None:
    sem = aiolease.ConcurrencyLimiter(1)
    got: list[str] = []
    release = asyncio.Event()

    async def holder() -> None:
        async with sem:
            await release.wait()

    async def waiter(name: str) -> None:
        async with sem:
            got.append(name)

    h = asyncio.create_task(holder())
    await asyncio.sleep(0)
    a = asyncio.create_task(waiter("a"))
    await asyncio.sleep(0)
    b = asyncio.create_task(waiter("b"))
    await asyncio.sleep(0)
    release.set()
    await asyncio.sleep(0)  # holder wakes and releases: the slot goes to a
    a.cancel()  # ...who is cancelled before it runs
    await asyncio.gather(h, b)
    (res,) = await asyncio.gather(a, return_exceptions=True)
    assert isinstance(res, asyncio.CancelledError)
    assert got == ["b"]
    async with sem.acquire(timeout=0.01):
        pass


@pytest.mark.slow
async def test_redis_rate_bound_holds_across_instances(
    rclient: redis_asyncio.Redis, rname: str, redis_url: str
) -> None:
    """Several limiters sharing a name (as several processes would) share one limit."""
    rate, burst, duration = 15.0, 2.0, 1.5
    clients = [redis_asyncio.Redis.from_url(redis_url) for _ in range(3)]
    try:
        limiters = [RedisRateLimiter(c, rname, rate, per=1.0, burst=burst) for c in clients]
        admissions: list[tuple[float, float]] = []
        start = time.monotonic()

        async def greedy(limiter: RedisRateLimiter) -> None:
            while time.monotonic() - start < duration:
                await take(limiter)
                admissions.append((time.monotonic(), 1.0))

        await asyncio.gather(*(greedy(lim) for lim in limiters for _ in range(2)))
    finally:
        for c in clients:
            await c.aclose()
    assert max_window_excess(admissions, rate, 1.0, burst + 1) <= EPS
    elapsed = max(t for t, _ in admissions) - start
    assert len(admissions) <= burst + rate * (elapsed + 0.1)
    assert len(admissions) >= rate * elapsed * 0.8
