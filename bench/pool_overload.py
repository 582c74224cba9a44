"""Pool overload benchmark (``make bench-pool-overload``): many timed waits on an exhausted pool.

N tasks arrive evenly over one second at a pool whose one resource stays held; each
waits with ``timeout=1.0`` and times out. What counts is when the timeouts are
delivered: their lateness past each task's own deadline (median, p99), and the wall
time of the whole run (ideal: 2 s). Floor: the same tasks waiting on a bare
``asyncio.Queue`` under ``asyncio.timeout`` (what asyncpg's pool does: one timer per
waiter). A pool whose deadline timer looked at every waiter each time it fired made
this quadratic in N.

Usage::

    python bench/pool_overload.py [--sizes 1000,10000,30000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import aiolease

Run = Callable[[int], Coroutine[Any, Any, tuple[float, list[float]]]]


async def _arrivals(n: int, wait: Callable[[], Awaitable[None]]) -> tuple[float, list[float]]:
    loop = asyncio.get_running_loop()
    late: list[float] = []

    async def one(i: int) -> None:
        await asyncio.sleep(i / n)
        start = loop.time()
        try:
            await wait()
        except (TimeoutError, aiolease.PoolTimeout):
            late.append(loop.time() - start - 1.0)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return time.perf_counter() - t0, late


async def ours(n: int) -> tuple[float, list[float]]:
    async def create() -> object:
        return object()

    async def close(_: object) -> None:
        return None

    async with aiolease.Pool.from_callables(create, close, max_size=1) as pool, pool.acquire():

        async def wait() -> None:
            async with pool.acquire(timeout=1.0):
                pass

        return await _arrivals(n, wait)


async def floor(n: int) -> tuple[float, list[float]]:
    queue: asyncio.Queue[object] = asyncio.Queue()

    async def wait() -> None:
        async with asyncio.timeout(1.0):
            await queue.get()

    return await _arrivals(n, wait)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,30000")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print("timeouts of N waits arriving over 1 s (timeout=1.0), median of rounds")
    print(f"{'N':>7} {'contender':<14} {'wall s':>7} {'late p50 ms':>12} {'late p99 ms':>12}")
    for n in (int(x) for x in args.sizes.split(",")):
        walls: dict[str, list[float]] = {"aiolease.Pool": [], "asyncio.Queue": []}
        p50: dict[str, list[float]] = {k: [] for k in walls}
        p99: dict[str, list[float]] = {k: [] for k in walls}
        for r in range(args.repeats):
            order: list[tuple[str, Run]] = [("aiolease.Pool", ours), ("asyncio.Queue", floor)]
            for name, run in order if r % 2 == 0 else order[::-1]:
                wall, late = asyncio.run(run(n))
                late.sort()
                walls[name].append(wall)
                p50[name].append(late[len(late) // 2] * 1e3)
                p99[name].append(late[int(len(late) * 0.99)] * 1e3)
        for name in walls:
            print(
                f"{n:>7} {name:<14} {statistics.median(walls[name]):>7.2f} "
                f"{statistics.median(p50[name]):>12.1f} {statistics.median(p99[name]):>12.1f}"
            )
        ratio = statistics.median(walls["aiolease.Pool"]) / statistics.median(
            walls["asyncio.Queue"]
        )
        print(f"{n:>7} ours / floor (wall) = {ratio:.2f} (below 1: ours delivers sooner)")


if __name__ == "__main__":
    main()
