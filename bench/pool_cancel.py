"""Pool: the cost of cancelling many queued waiters, oldest first or in a random order.

A full pool (``max_size=1``, the one resource held) has N waiters queued; all of them are
cancelled, oldest first or in a random order, and the cancellations are awaited to their end.
Reported: wall time per cancellation in each order, and their ratio (random / oldest first).
A waiter leaving from the middle of the queue should cost what one at the front costs.

Usage::

    python bench/pool_cancel.py [--sizes 5000,20000,40000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time

import aiolease


async def _make() -> object:
    return object()


async def cancel_all(n: int, order: str) -> float:
    """Seconds to cancel ``n`` queued waiters in ``order`` ("oldest" or "random")."""
    async with aiolease.Pool.from_callables(_make, max_size=1, acquire_timeout=None) as pool:
        held = await pool.acquire()
        tasks = [asyncio.ensure_future(pool.acquire().__aenter__()) for _ in range(n)]
        await asyncio.sleep(0)
        assert pool.statistics().waiting == n
        picked = list(range(n))
        if order == "random":
            random.Random(n).shuffle(picked)
        start = time.perf_counter()
        for i in picked:
            tasks[i].cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        spent = time.perf_counter() - start
        assert pool.statistics().waiting == 0
        await pool.release(held)
    return spent


async def main(sizes: list[int], rounds: int) -> None:
    print("pool: cancelling N queued waiters (median of rounds; us per cancellation)")
    print(f"    {'N':>7}  {'oldest first':>12}  {'random order':>12}  random / oldest")
    for n in sizes:
        oldest: list[float] = []
        shuffled: list[float] = []
        for _ in range(rounds):  # interleaved
            oldest.append(await cancel_all(n, "oldest"))
            shuffled.append(await cancel_all(n, "random"))
        a, b = statistics.median(oldest), statistics.median(shuffled)
        print(f"    {n:>7}  {a / n * 1e6:>12.2f}  {b / n * 1e6:>12.2f}  {b / a:>15.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="5000,20000,40000")
    parser.add_argument("--rounds", type=int, default=3)
    ns = parser.parse_args()
    asyncio.run(main([int(x) for x in ns.sizes.split(",")], ns.rounds))
