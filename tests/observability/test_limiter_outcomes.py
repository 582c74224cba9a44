"""Every limiter request counted once, by the outcome its caller got.

* A Redis limiter's request that ends in ``LimiterUnavailable`` (Redis unreachable, no
  fallback, ``on_error="raise"``) was not granted: ``rejected``, in ``statistics()`` and in
  ``aiolease.limiter.requests`` alike, as ``on_error="deny"`` already counts its refusal.
* A local waiter admitted and cancelled in the same loop step, before its task resumed,
  gets ``CancelledError``: ``canceled`` (its admission is undone), not ``acquired``, and
  no queue time is recorded for it.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import uuid
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as redis_asyncio
from metrics_helpers import Collected, instrumented

from aiolease import (
    ConcurrencyLimiter,
    LimiterUnavailable,
    LimitGroup,
    LimitTimeout,
    RateLimiter,
    RateLimitExceeded,
    WouldBlock,
)
from aiolease.redis import RedisConcurrencyLimiter, RedisRateLimiter

pytestmark = pytest.mark.timeout(60)

LIMITER = "aiolease.limiter.name"
RESULT = "aiolease.limiter.result"
RESULTS = ("acquired", "rejected", "timeout", "canceled")


def requests(reader: Any, name: str) -> dict[str, int]:
    got = Collected(reader)["aiolease.limiter.requests"]
    return {r: got.value(**{LIMITER: name, RESULT: r}) for r in RESULTS}


def queued_count(reader: Any, name: str) -> int:
    got = Collected(reader)["aiolease.limiter.request.time_in_queue"]
    if not got.has(**{LIMITER: name}):
        return 0
    count: int = got.value(**{LIMITER: name}).count
    return count


def stats_counts(limiter: Any) -> dict[str, int]:
    s = limiter.statistics()
    return {
        "acquired": s.admitted,
        "rejected": s.rejected,
        "timeout": getattr(s, "timeouts", 0),
        "canceled": s.cancelled,
    }


def closed_port() -> int:
    """A local port nothing listens on (bound, then closed): connections are refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def unreachable_client() -> redis_asyncio.Redis:
    """A client of a local port nothing listens on (its connections are refused)."""
    return redis_asyncio.Redis.from_url(
        f"redis://127.0.0.1:{closed_port()}/0", socket_connect_timeout=1.0
    )


# -- Redis unreachable: rejected ------------------------------------------------------------

# (kind, on_error, the error each of the three requests ends with)
REDIS_CASES = [
    ("concurrency", None, LimiterUnavailable),
    ("rate", "raise", LimiterUnavailable),
    ("rate", "deny", RateLimitExceeded),
]


def make_redis(kind: str, on_error: Any, client: redis_asyncio.Redis, name: str) -> Any:
    if kind == "rate":
        return RedisRateLimiter(client, name, 100, burst=5, on_error=on_error or "raise")
    return RedisConcurrencyLimiter(client, name, 5, lease_ttl=2.0)


@pytest.mark.redis
@pytest.mark.parametrize(("kind", "on_error", "error"), REDIS_CASES)
async def test_requests_failing_because_redis_is_unreachable_count_as_rejected(
    kind: str, on_error: str | None, error: type[Exception]
) -> None:
    name = f"unreachable-{kind}-{on_error}-{uuid.uuid4().hex[:8]}"
    gc.collect()
    with instrumented() as reader:
        async with unreachable_client() as client:
            lim = make_redis(kind, on_error, client, name)
            try:
                requests_made: list[Callable[[], Awaitable[Any]]] = [
                    lambda: lim.acquire(timeout=1.0),
                    lambda: lim.acquire(timeout=1.0),
                    lambda: lim.acquire_nowait(1) if kind == "rate" else lim.acquire_nowait(),
                ]
                for request in requests_made:
                    with pytest.raises(error):
                        await request()
                expected = {"acquired": 0, "rejected": 3, "timeout": 0, "canceled": 0}
                assert requests(reader, name) == expected
                assert stats_counts(lim) == expected
                assert lim.statistics().waiting == 0
            finally:
                await lim.aclose()


@pytest.mark.redis
@pytest.mark.parametrize(("kind", "on_error", "error"), REDIS_CASES)
async def test_the_same_requests_with_redis_up_count_as_acquired(
    redis_url: str, kind: str, on_error: str | None, error: type[Exception]
) -> None:
    """The control: the same limiter and requests against the live Redis."""
    name = f"reachable-{kind}-{on_error}-{uuid.uuid4().hex[:8]}"
    gc.collect()
    with instrumented() as reader:
        async with redis_asyncio.Redis.from_url(redis_url) as client:
            lim = make_redis(kind, on_error, client, name)
            try:
                permits = [await lim.acquire(timeout=1.0), await lim.acquire(timeout=1.0)]
                if kind == "rate":
                    permits.append(await lim.acquire_nowait(1))
                else:
                    permits.append(await lim.acquire_nowait())
                expected = {"acquired": 3, "rejected": 0, "timeout": 0, "canceled": 0}
                assert requests(reader, name) == expected
                assert stats_counts(lim) == expected
                for p in permits:
                    if kind == "concurrency":
                        await p.arelease()
            finally:
                await lim.aclose()
                found = [k async for k in client.scan_iter(match=f"aiolease:*{name}*")]
                if found:
                    await client.delete(*found)


@pytest.mark.redis
@pytest.mark.parametrize("kind", ["rate", "concurrency"])
async def test_fallback_answers_while_redis_is_unreachable_are_counted_by_the_redis_limiter(
    kind: str,
) -> None:
    """The fallback answers for the Redis limiter: its refusals, timeouts and cancellations
    count in the Redis limiter's series too, as its admissions already did."""
    name = f"fallback-{kind}-{uuid.uuid4().hex[:8]}"
    gc.collect()
    with instrumented() as reader:
        async with unreachable_client() as client:
            lim: Any
            if kind == "rate":
                lim = RedisRateLimiter(
                    client, name, 100, burst=1, fallback=RateLimiter(1, per=60.0)
                )
                nowait: Callable[[], Awaitable[Any]] = lambda: lim.acquire_nowait(1)  # noqa: E731
                refused: type[Exception] = RateLimitExceeded
            else:
                lim = RedisConcurrencyLimiter(
                    client, name, 5, lease_ttl=2.0, fallback=ConcurrencyLimiter(1)
                )
                nowait = lim.acquire_nowait
                refused = WouldBlock
            try:
                permit = await lim.acquire(timeout=1.0)  # the fallback admits
                assert permit.degraded
                with pytest.raises(refused):
                    await nowait()
                expected = {"acquired": 1, "rejected": 1, "timeout": 0, "canceled": 0}
                if kind == "concurrency":
                    with pytest.raises(LimitTimeout):
                        await lim.acquire(timeout=0.05)
                    expected["timeout"] = 1
                waiter = asyncio.ensure_future(lim.acquire())  # waits (bounded: cancelled)
                await asyncio.sleep(0.05)
                assert not waiter.done()
                waiter.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await waiter
                expected["canceled"] = 1
                assert stats_counts(lim) == expected
                assert requests(reader, name) == expected
                if kind == "concurrency":
                    await permit.arelease()
            finally:
                await lim.aclose()


# -- local: admitted and cancelled in the same step -----------------------------------------


async def cancelled_in_the_step_it_is_admitted(
    acquire: Callable[[], Any], hand_over: Callable[[], None]
) -> Any:
    """``first`` and ``second`` queue; ``hand_over()`` admits ``first`` synchronously,
    which is cancelled before its task runs. Returns what ``second`` got."""
    first = asyncio.ensure_future(acquire())
    second = asyncio.ensure_future(acquire())
    await asyncio.sleep(0.01)
    assert not first.done()
    assert not second.done()
    hand_over()  # admits `first` in this step...
    assert not first.done()
    first.cancel()  # ...which is cancelled before it runs
    async with asyncio.timeout(5):
        with pytest.raises(asyncio.CancelledError):
            await first
        return await second


async def test_concurrency_waiter_cancelled_in_the_step_it_is_granted_counts_as_canceled() -> None:
    name = f"granted-cancelled-conc-{uuid.uuid4().hex[:8]}"
    gc.collect()
    with instrumented() as reader:
        lim = ConcurrencyLimiter(1, name=name)
        held = await lim.acquire()
        permit = await cancelled_in_the_step_it_is_admitted(lim.acquire, held.release)
        # The slot went on to `second`: one holder, nobody waiting.
        s = lim.statistics()
        assert (s.in_use, s.waiting) == (1, 0)
        expected = {"acquired": 2, "rejected": 0, "timeout": 0, "canceled": 1}
        assert stats_counts(lim) == expected
        assert requests(reader, name) == expected
        assert queued_count(reader, name) == 1  # `second` only
        permit.release()
        assert lim.statistics().in_use == 0


@pytest.mark.parametrize("strict", [False, True])
async def test_rate_waiter_cancelled_in_the_step_it_is_admitted_counts_as_canceled(
    strict: bool,
) -> None:
    name = f"granted-cancelled-rate-{strict}-{uuid.uuid4().hex[:8]}"
    gc.collect()
    with instrumented() as reader:
        # One admission per minute: only a refund admits a waiter during the test.
        lim = RateLimiter(1, per=60.0, strict=strict, name=name)
        held = await lim.acquire()
        # settle(0) refunds `held`, which admits `first` at once; `first`'s admission,
        # undone by its cancellation, then admits `second`.
        await cancelled_in_the_step_it_is_admitted(lim.acquire, lambda: held.settle(0))
        s = lim.statistics()
        assert s.waiting == 0
        expected = {"acquired": 2, "rejected": 0, "timeout": 0, "canceled": 1}
        assert stats_counts(lim) == expected
        assert requests(reader, name) == expected
        assert queued_count(reader, name) == 1


async def test_group_waiter_cancelled_in_the_step_it_is_admitted_counts_as_canceled() -> None:
    rate_name = f"granted-cancelled-grate-{uuid.uuid4().hex[:8]}"
    conc_name = f"granted-cancelled-gconc-{uuid.uuid4().hex[:8]}"
    gc.collect()
    with instrumented() as reader:
        rate = RateLimiter(1000, burst=10, name=rate_name)
        conc = ConcurrencyLimiter(1, name=conc_name)
        group = LimitGroup(rate, conc)
        held = await group.acquire()
        permit = await cancelled_in_the_step_it_is_admitted(group.acquire, held.release)
        assert conc.statistics().in_use == 1  # `second` holds the slot
        expected = {"acquired": 2, "rejected": 0, "timeout": 0, "canceled": 1}
        for lim, name in ((rate, rate_name), (conc, conc_name)):
            assert lim.statistics().waiting == 0
            assert stats_counts(lim) == expected, name
            assert requests(reader, name) == expected, name
            assert queued_count(reader, name) == 1, name
        permit.release()
        assert conc.statistics().in_use == 0


# -- local: admitted as its event loop closes -----------------------------------------------


def _stranded_case(kind: str) -> tuple[Any, list[tuple[Any, str]], Callable[[Any], None]]:
    """(the limiter, its (limiter, name) counted, how to admit the next waiter given the
    first permit)."""
    suffix = uuid.uuid4().hex[:8]
    if kind == "concurrency":
        lim = ConcurrencyLimiter(1, name=f"stranded-conc-{suffix}")
        return lim, [(lim, f"stranded-conc-{suffix}")], lambda held: held.release()
    if kind == "rate":
        # One admission per minute: only a refund admits a waiter during the test.
        rate = RateLimiter(1, per=60.0, name=f"stranded-rate-{suffix}")
        return rate, [(rate, f"stranded-rate-{suffix}")], lambda held: held.settle(0)
    rate = RateLimiter(1000, burst=10, name=f"stranded-grate-{suffix}")
    conc = ConcurrencyLimiter(1, name=f"stranded-gconc-{suffix}")
    members = [(rate, f"stranded-grate-{suffix}"), (conc, f"stranded-gconc-{suffix}")]
    return LimitGroup(rate, conc), members, lambda held: held.release()


def _strand(lim: Any, hand_over: Callable[[Any], None]) -> asyncio.Future[Any]:
    """A waiter of ``lim`` admitted in the last step of an event loop closed since: its
    task, returned, never resumes."""
    loop = asyncio.new_event_loop()
    try:

        async def queue() -> tuple[Any, asyncio.Future[Any]]:
            held = await lim.acquire()
            stranded = asyncio.ensure_future(lim.acquire())
            await asyncio.sleep(0.01)
            return held, stranded

        held, stranded = loop.run_until_complete(queue())
        loop.call_soon(hand_over, held)  # admits `stranded` in this step...
        loop.call_soon(loop.stop)  # ...the last one: its task never resumes
        loop.run_forever()
        assert not stranded.done()
        return stranded
    finally:
        loop.close()


@pytest.mark.parametrize("kind", ["concurrency", "rate", "group"])
def test_a_waiter_admitted_as_its_event_loop_closes_counts_as_canceled(kind: str) -> None:
    """A waiter admitted in the last step its event loop ran, whose task (still referenced)
    never resumes, was counted nowhere, and its admission (a concurrency slot) was held for
    good: the next request, on another loop, waited forever. Now the next request on a
    loop undoes it, counted as canceled (as a waiter left queued on a closed loop is), and
    the task's end, if it is ever collected, counts nothing more."""
    gc.collect()
    with instrumented() as reader:
        lim, counted, hand_over = _stranded_case(kind)
        stranded = _strand(lim, hand_over)
        assert all(m.statistics().waiting == 0 for m, _ in counted)

        async def next_request() -> None:
            async with asyncio.timeout(5):
                permit = await lim.acquire()
            release = getattr(permit, "release", None)
            if release is not None:
                release()

        asyncio.run(next_request())
        expected = {"acquired": 2, "rejected": 0, "timeout": 0, "canceled": 1}
        for member, name in counted:
            assert stats_counts(member) == expected, name
            assert requests(reader, name) == expected, name
            assert getattr(member.statistics(), "in_use", 0) == 0, name
        del stranded
        gc.collect()  # the task's coroutine is closed: nothing counted twice
        for member, name in counted:
            assert stats_counts(member) == expected, name
            assert getattr(member.statistics(), "in_use", 0) == 0, name


@pytest.mark.parametrize("kind", ["concurrency", "rate", "group"])
def test_a_waiter_admitted_as_its_event_loop_closes_and_then_collected_counts_as_canceled(
    kind: str,
) -> None:
    """Its task dropped too: collecting it closes its coroutine, which undoes the admission
    (counted canceled, the slot free) with no further request; the limiter's record of
    admissions not yet resumed must not keep the task alive meanwhile."""
    gc.collect()
    lim, counted, hand_over = _stranded_case(kind)
    stranded = weakref.ref(_strand(lim, hand_over))
    gc.collect()
    assert stranded() is None
    for member, name in counted:
        assert member.statistics().cancelled == 1, name
        assert getattr(member.statistics(), "in_use", 0) == 0, name
