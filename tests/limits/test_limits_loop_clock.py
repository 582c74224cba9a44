"""The local limiters read the running loop's clock, ``loop.time()`` (contract, "Time"), also
when a program (or a test) replaces ``time`` on the loop object itself rather than in its class.

The clock here is moved by hand: each admission below is decided by where it says "now", never
by how long the test took.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

import aiolease


def on_a_shifted_clock(body: Callable[[list[float]], Awaitable[None]]) -> None:
    """Run ``body(offset)`` on asyncio's own loop whose ``time`` (set on the loop object) reads
    the real clock plus ``offset[0]`` seconds."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        real = loop.time
        offset = [0.0]
        loop.time = lambda: real() + offset[0]  # type: ignore[method-assign]
        try:
            await body(offset)
        finally:
            del loop.time  # (the class's own again, before the runner closes the loop)

    asyncio.run(main())


@pytest.mark.parametrize("form", ["nowait", "async_with_limiter", "async_with_acquire"])
def test_a_clock_set_on_the_loop_object_drives_the_rate_limiter(form: str) -> None:
    async def body(offset: list[float]) -> None:
        limiter = aiolease.RateLimiter(1, per=100.0)
        key = "k" if form == "async_with_acquire" else None  # (a known key's own fast path)
        limiter.acquire_nowait(key=key)
        with pytest.raises(aiolease.RateLimitExceeded):
            limiter.acquire_nowait(key=key)  # the clock has not moved
        offset[0] = 200.0  # the loop's clock: 200 s later, the next admission is due
        if form == "nowait":
            limiter.acquire_nowait()
        elif form == "async_with_limiter":
            async with asyncio.timeout(5):  # (bounded: the wrong clock would wait 100 s)
                async with limiter:
                    pass
        else:
            async with limiter.acquire(key=key, timeout=0):
                pass
        assert limiter.statistics().waiting == 0

    on_a_shifted_clock(body)


def test_a_clock_set_on_the_loop_object_drives_the_pool() -> None:
    """The pool reads the same clock: a resource past its ``max_lifetime`` by the loop's
    clock is retired at its next checkout, however little real time passed."""

    async def body(offset: list[float]) -> None:
        made = []

        async def create() -> object:
            made.append(object())
            return made[-1]

        async with aiolease.Pool.from_callables(create, max_size=1, max_lifetime=100) as pool:
            async with pool.acquire(timeout=5) as first:
                pass
            offset[0] = 200.0  # past its lifetime (up to 5% shorter) by the loop's clock
            async with pool.acquire(timeout=5) as second:
                assert second is not first
            assert len(made) == 2

    on_a_shifted_clock(body)
