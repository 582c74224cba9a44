"""Redis limiters after the process froze (a blocking call, a long GC pause, SIGSTOP).

While the event loop is blocked, Redis answers and the replies wait on the socket. When the loop
runs again, the timer of ``call_timeout`` is due as well: it must not fail the calls (and cool
the limiter down) before the replies already there have been read. Redis is reached through a
FaultProxy running on a loop of its own thread, so the network goes on while the test's loop is
blocked: its latency makes sure the replies come after the loop was blocked, and during it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from _redis_factories import compat_public, delete_keys, redis_client, unique_name

from aiolease import LimiterUnavailable
from aiolease.redis import RedisConcurrencyLimiter, RedisRateLimiter
from aiolease.testing import FaultProxy

pytestmark = [pytest.mark.redis, pytest.mark.slow]

CALL_TIMEOUT = 0.5
#: Each way, so a round trip takes twice as long; three calls one after the other (the public
#: path sends one at a time) still fit in CALL_TIMEOUT.
LATENCY = 0.03
#: Longer than CALL_TIMEOUT: every call in flight is past its deadline when the loop runs again.
FREEZE = CALL_TIMEOUT + 0.3


@contextlib.contextmanager
def proxy_in_a_thread(url: str, latency: float = 0.0) -> Iterator[tuple[str, Any]]:
    """A FaultProxy in front of ``url`` on a thread's own loop: ``(url through it, control)``.

    ``control(method, *args)`` calls a FaultProxy method on its loop (thread-safe)."""
    parts = urlsplit(url)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    stop: list[asyncio.Event] = []
    box: list[FaultProxy] = []

    async def serve() -> None:
        async with FaultProxy(parts.hostname or "127.0.0.1", parts.port or 6379) as proxy:
            proxy.set_latency(latency)
            box.append(proxy)
            stop.append(asyncio.Event())
            started.set()
            await stop[0].wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    try:
        assert started.wait(10), "the proxy did not start"
        host, port = box[0].address

        def control(method: str, *args: Any) -> None:
            loop.call_soon_threadsafe(getattr(box[0], method), *args)

        yield f"redis://{host}:{port}{parts.path}", control
    finally:
        if stop:
            loop.call_soon_threadsafe(stop[0].set)
        thread.join(10)
        loop.close()


@contextlib.asynccontextmanager
async def limiter(redis_url: str, kind: str, public: bool, **kw: Any) -> AsyncIterator[Any]:
    """A limiter of ``kind`` reaching Redis through a slow proxy thread; closed and its keys
    deleted at exit. Connected already (one call made)."""
    name = unique_name("freeze")
    with proxy_in_a_thread(redis_url, LATENCY) as (url, _):
        async with redis_client(url) as client:
            with compat_public(public):
                if kind == "rate":
                    lim: Any = RedisRateLimiter(client, name, 10, per=60, burst=10, **kw)
                else:
                    lim = RedisConcurrencyLimiter(client, name, 10, lease_ttl=5.0, **kw)
            try:
                if kind == "rate":
                    await lim.acquire()
                else:
                    await (await lim.acquire()).arelease()
                yield lim
            finally:
                await lim.aclose()
                await delete_keys(client, name)


def block_the_loop(seconds: float) -> None:
    """What a synchronous call on the event loop does (or a GC pause, or SIGSTOP)."""
    time.sleep(seconds)


@pytest.mark.parametrize("public", [False, True], ids=["pipe", "public"])
@pytest.mark.parametrize("kind", ["rate", "concurrency"])
async def test_replies_that_came_while_the_loop_was_blocked_are_read(
    redis_url: str, kind: str, public: bool
) -> None:
    async with limiter(redis_url, kind, public, call_timeout=CALL_TIMEOUT) as lim:
        tasks = [asyncio.ensure_future(lim.acquire()) for _ in range(3)]
        await asyncio.sleep(0.01)  # the first calls are on their way; Redis answers...
        block_the_loop(FREEZE)  # ...while the loop is blocked past call_timeout
        permits = await asyncio.gather(*tasks)  # not LimiterUnavailable: Redis did answer
        assert not any(p.degraded for p in permits)
        assert lim.statistics().errors == 0 if kind == "rate" else lim._health.errors == 0
        assert lim._health.down_since is None  # no cool-down either
        if kind == "concurrency":
            assert await lim.in_use() == 3
            for p in permits:
                await p.arelease()
            assert await lim.in_use() == 0


@pytest.mark.parametrize("public", [False, True], ids=["pipe", "public"])
async def test_a_waiter_whose_subscribe_reply_comes_while_the_loop_is_blocked_gets_the_slot(
    redis_url: str, public: bool
) -> None:
    # Waiting for the SUBSCRIBE reply of the hand-off listener is bounded by call_timeout too.
    async with (
        limiter(redis_url, "concurrency", public, call_timeout=CALL_TIMEOUT) as sem,
        redis_client(redis_url) as direct,
    ):
        held = [await sem.acquire() for _ in range(10)]
        waiter = asyncio.ensure_future(sem.acquire())
        for _ in range(5000):  # (round trips without the proxy's latency)
            if (await direct.pubsub_numsub(sem._channel))[0][1]:
                break
            await asyncio.sleep(0.001)
        block_the_loop(FREEZE)  # Redis subscribed the listener; its reply is on the way
        await asyncio.sleep(0.2)  # queued and listening by now
        assert not waiter.done()
        await held[0].arelease()
        permit = await waiter  # handed over: not LimiterUnavailable
        for p in (*held[1:], permit):
            await p.arelease()
        assert await sem.in_use() == 0
        assert sem._health.errors == 0


@pytest.mark.parametrize("public", [False, True], ids=["pipe", "public"])
async def test_a_freeze_past_the_acquire_timeout_leaves_no_slot_held(
    redis_url: str, public: bool
) -> None:
    # The acquisitions' own deadline passes while the loop is blocked: they fail (the caller's
    # timeout is wall time), and the slots Redis gave them meanwhile are given back.
    async with limiter(redis_url, "concurrency", public, call_timeout=CALL_TIMEOUT) as sem:
        tasks = [asyncio.ensure_future(sem.acquire(timeout=0.05)) for _ in range(3)]
        await asyncio.sleep(0.01)
        block_the_loop(FREEZE)
        done = await asyncio.gather(*tasks, return_exceptions=True)
        for outcome in done:
            if not isinstance(outcome, BaseException):
                await outcome.arelease()
        await asyncio.wait(sem._bg.tasks)  # the withdrawals
        assert await sem.in_use() == 0


@pytest.mark.parametrize("public", [False, True], ids=["pipe", "public"])
async def test_a_freeze_past_the_acquire_timeout_loses_no_reservation(
    redis_url: str, public: bool
) -> None:
    async with limiter(redis_url, "rate", public, call_timeout=CALL_TIMEOUT) as lim:
        tasks = [asyncio.ensure_future(lim.acquire(timeout=0.05)) for _ in range(3)]
        await asyncio.sleep(0.01)
        block_the_loop(FREEZE)
        done = await asyncio.gather(*tasks, return_exceptions=True)
        admitted = sum(not isinstance(o, BaseException) for o in done)
        while lim._bg.tasks:
            await asyncio.wait(lim._bg.tasks)  # the give-backs
        # Burst 10, one used at the start: what the failed acquisitions reserved came back, so
        # the rest of the burst is admitted at once (the next slot would be 6 s away).
        await lim.acquire(cost=9 - admitted, timeout=1.0)


@pytest.mark.parametrize("public", [False, True], ids=["pipe", "public"])
async def test_a_silent_redis_is_still_detected_after_a_freeze(
    redis_url: str, public: bool
) -> None:
    name = unique_name("freeze")
    with proxy_in_a_thread(redis_url) as (url, control):
        async with redis_client(url) as client:
            with compat_public(public):
                lim = RedisRateLimiter(client, name, 10, per=60, burst=10, call_timeout=0.3)
            try:
                await lim.acquire()
                control("blackhole")
                await asyncio.sleep(0.05)
                task = asyncio.ensure_future(lim.acquire())
                await asyncio.sleep(0.01)
                block_the_loop(0.5)
                t0 = asyncio.get_running_loop().time()
                with pytest.raises(LimiterUnavailable):
                    await task
                # Within call_timeout of the loop running again (plus slack), not forever.
                assert asyncio.get_running_loop().time() - t0 <= 0.3 + 0.2
            finally:
                await lim.aclose()
    async with redis_client(redis_url) as direct:
        await delete_keys(direct, name)
