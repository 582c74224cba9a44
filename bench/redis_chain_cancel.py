"""Redis rate limiter: the cost of cancelling one sleeping waiter among many on one key.

N waiters of one ``RedisRateLimiter`` sleep on one key (rate 1/s, burst 1: their slots are
up to N seconds away) on the live Redis (AIOLEASE_REDIS_URL, default
redis://127.0.0.1:6379/0; the key is deleted at the end). Then C of them are cancelled one at
a time, each from the middle of the remaining ones, and each cancellation is awaited to its
end (its reservation given back: the later waiters move up, one RATE_SHIFT call). Reported:
the event loop's CPU time per cancellation (process time of the cancel and its wrap-up,
the Redis round trip's wait excluded) and the wall time per cancellation.

Usage::

    python bench/redis_chain_cancel.py [--sizes 1000,10000] [--cancels 200]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid

import redis.asyncio as redis

from aiolease.redis import RedisRateLimiter

URL = os.environ.get("AIOLEASE_REDIS_URL", "redis://127.0.0.1:6379/0")


async def _run(n: int, cancels: int) -> tuple[float, float]:
    client = redis.Redis.from_url(URL)
    name = f"bench-chain-{uuid.uuid4().hex[:8]}"
    lim = RedisRateLimiter(client, name, 1, burst=1)
    tasks: list[asyncio.Task[object]] = []
    try:
        await lim.acquire()
        for _ in range(n):
            tasks.append(asyncio.ensure_future(lim.acquire()))
        for _ in range(6000):  # until all have reserved (a peek at the limiter's internals)
            chain = lim._sleepers.get(lim._rkey(None))
            if chain is not None and len(chain.entries) == n:
                break
            await asyncio.sleep(0.05)
        cpu = wall = 0.0
        alive = list(tasks)
        for _ in range(min(cancels, n)):
            victim = alive.pop(len(alive) // 2)
            c0, w0 = time.process_time(), time.perf_counter()
            victim.cancel()
            await asyncio.gather(victim, return_exceptions=True)
            cpu += time.process_time() - c0
            wall += time.perf_counter() - w0
        done = min(cancels, n)
        return cpu / done * 1e3, wall / done * 1e3
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await lim.aclose()
        await client.delete(lim._rkey(None))
        await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--cancels", type=int, default=200)
    args = parser.parse_args()
    print(f"{'N':>7} {'cancels':>8} {'cpu ms/cancel':>14} {'wall ms/cancel':>15}")
    for n in (int(x) for x in args.sizes.split(",")):
        cpu, wall = asyncio.run(_run(n, args.cancels))
        print(f"{n:>7} {args.cancels:>8} {cpu:>14.3f} {wall:>15.3f}")


if __name__ == "__main__":
    main()
