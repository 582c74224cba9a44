"""Two RedisRateLimiter objects on one key (two processes: two clients), driven by hypothesis.

Random acquisitions (waiting, bounded, fail-fast), cancellations at any point, pauses from
either object and settles, interleaved at random instants. Whatever the order, every task ends
as a permit, ``RateLimitExceeded`` or - only when it was cancelled - ``CancelledError`` (a
cancellation is never swallowed nor turned into another error, and none is invented); each
object's counters add up; no waiter, sleeper chain or background call is left behind; and the
key holds no debt beyond what was asked of it (it expires). The window bound itself is checked
exactly, on a clock the test drives, in test_redis_rate_model.py.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from _redis_factories import compat_public, delete_keys, redis_client, unique_name
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aiolease import RateLimitExceeded
from aiolease.redis import RedisRateLimiter, RedisRatePermit

pytestmark = pytest.mark.redis

RATE, BURST = 100.0, 2.0  # T = 10 ms

_who = st.sampled_from(["a", "b"])
_op = st.one_of(
    st.tuples(
        st.just("acquire"),
        _who,
        st.sampled_from([1.0, 2.0, 0.5]),
        st.sampled_from([None, None, 0.0, 0.03]),
    ),
    st.tuples(st.just("cancel"), st.integers(0, 30)),
    st.tuples(st.just("pause"), _who, st.sampled_from([0.0, 0.02, 0.05])),
    st.tuples(st.just("settle"), st.integers(0, 30), st.sampled_from([0.0, 0.5, 2.0])),
    st.tuples(st.just("sleep"), st.sampled_from([0, 0, 0.001, 0.005, 0.015])),
    st.tuples(st.just("block"), st.sampled_from([0.005, 0.02])),  # a frozen loop, briefly
)


def _block_the_loop(seconds: float) -> None:
    """What a synchronous call on the event loop does (a frozen loop, briefly)."""
    time.sleep(seconds)


async def _scenario(
    url: str, ops: list[tuple[Any, ...]], public: tuple[bool, bool], b_shape: tuple[float, float]
) -> None:
    name = unique_name("races")
    async with redis_client(url) as c1, redis_client(url) as c2:
        with compat_public(public[0]):
            a = RedisRateLimiter(c1, name, RATE, burst=BURST)
        with compat_public(public[1]):
            # (all processes sharing a name should use one shape: a mismatch must not break it)
            b = RedisRateLimiter(c2, name, b_shape[0], burst=b_shape[1])
        lims = {"a": a, "b": b}
        tasks: list[tuple[str, asyncio.Task[RedisRatePermit]]] = []
        cancelled: set[int] = set()
        try:
            for op in ops:
                if op[0] == "acquire":
                    _, who, cost, timeout = op
                    lim = lims[who]
                    coro = (
                        lim.acquire_nowait(cost)
                        if timeout == 0.0
                        else lim.acquire(cost, None, timeout)
                    )
                    tasks.append((who, asyncio.ensure_future(coro)))
                elif op[0] == "cancel" and tasks:
                    i = op[1] % len(tasks)
                    if tasks[i][1].cancel():
                        cancelled.add(i)
                elif op[0] == "pause":
                    lims[op[1]].pause(op[2])
                elif op[0] == "settle" and tasks:
                    task = tasks[op[1] % len(tasks)][1]
                    if task.done() and not task.cancelled() and task.exception() is None:
                        task.result().settle(op[2])
                elif op[0] == "sleep":
                    await asyncio.sleep(op[1])
                elif op[0] == "block":
                    _block_the_loop(op[1])
            async with asyncio.timeout(10):  # every wait here is short: none is unbounded
                await asyncio.gather(*(t for _, t in tasks), return_exceptions=True)
                for lim in lims.values():
                    while lim._bg.tasks:
                        await asyncio.wait(set(lim._bg.tasks))
            ends = {w: {"admitted": 0, "rejected": 0, "cancelled": 0} for w in lims}
            for i, (who, task) in enumerate(tasks):
                if task.cancelled():
                    assert i in cancelled, "a cancellation nobody asked for"
                    ends[who]["cancelled"] += 1
                    continue
                assert i not in cancelled, "a cancellation was swallowed"
                exc = task.exception()
                assert exc is None or isinstance(exc, RateLimitExceeded), repr(exc)
                ends[who]["admitted" if exc is None else "rejected"] += 1
            for who, lim in lims.items():
                s = lim.statistics()
                assert (s.admitted, s.rejected) == (ends[who]["admitted"], ends[who]["rejected"])
                # (a task cancelled before its first step never reached the limiter)
                assert s.cancelled <= ends[who]["cancelled"], (who, s)
                assert s.waiting == 0
                assert s.errors == 0
                assert not lim._sleepers
            ttl = await c1.pttl(lims["a"]._rkey(None))
            # Gone, or expiring within the debt asked for (every cost, every pause), never kept.
            most = (
                sum(op[2] for op in ops if op[0] == "acquire") / min(RATE, b_shape[0])
                + 0.05 * len(ops)
                + 1
            )
            assert ttl == -2 or 0 <= ttl <= most * 1000, ttl
        finally:
            for lim in lims.values():
                await lim.aclose()
                assert not lim._aiolease_leaks()
            await delete_keys(c1, name)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    ops=st.lists(_op, min_size=1, max_size=24),
    public=st.tuples(st.booleans(), st.booleans()),
    b_shape=st.sampled_from([(RATE, BURST), (RATE, 3.0), (RATE / 2, BURST)]),
)
def test_two_objects_racing_on_one_key_leave_nothing_behind(
    redis_url: str,
    ops: list[tuple[Any, ...]],
    public: tuple[bool, bool],
    b_shape: tuple[float, float],
) -> None:
    asyncio.run(_scenario(redis_url, ops, public, b_shape))
