"""Local limiter overload benchmark: many tasks queued on one key of a strict RateLimiter.

N tasks queue at once (no timeout) behind a strict limiter whose window is full; what
counts is the event-loop time until the last of them is queued (ideal: linear in N).
Floor: the same tasks queueing on a GCRA RateLimiter (O(1) per arrival) and on a bare
``asyncio.Semaphore``. A strict limiter that walked the whole queue for each arrival (to
work out a slot that only a timeout uses) made this quadratic in N.

Usage::

    python bench/limits_overload.py [--sizes 1000,10000,30000]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiolease


async def _queue(n: int, make: Callable[[], Callable[[], Awaitable[Any]]]) -> float:
    wait = make()

    async def one() -> None:
        await wait()

    tasks = [asyncio.ensure_future(one()) for _ in range(n)]
    t0 = time.perf_counter()
    await asyncio.sleep(0)  # every task runs up to its wait
    queued = time.perf_counter() - t0
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return queued


def _strict() -> Callable[[], Awaitable[Any]]:
    lim = aiolease.RateLimiter(1, per=1000.0, strict=True)
    lim.acquire_nowait()
    return lambda: lim.acquire()


def _gcra() -> Callable[[], Awaitable[Any]]:
    lim = aiolease.RateLimiter(1, per=1000.0)
    lim.acquire_nowait()
    return lambda: lim.acquire()


def _semaphore() -> Callable[[], Awaitable[Any]]:
    sem = asyncio.Semaphore(0)
    return sem.acquire


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,30000")
    args = parser.parse_args()
    print("loop time to queue N tasks at once on one key (no timeout), seconds")
    print(f"{'N':>7} {'strict':>8} {'gcra':>8} {'asyncio.Semaphore':>18}")
    for n in (int(x) for x in args.sizes.split(",")):
        strict = asyncio.run(_queue(n, _strict))
        gcra = asyncio.run(_queue(n, _gcra))
        floor = asyncio.run(_queue(n, _semaphore))
        print(f"{n:>7} {strict:>8.3f} {gcra:>8.3f} {floor:>18.3f}")


if __name__ == "__main__":
    main()
