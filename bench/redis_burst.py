"""Redis limiter burst benchmark: N ``acquire()`` calls at once on a fresh limiter.

A fresh ``RedisRateLimiter`` (its pipe has no connection yet) on the live Redis
(AIOLEASE_REDIS_URL, default redis://127.0.0.1:6379/0; its keys expire by themselves) gets
N acquisitions in one event-loop pass, never limited. What counts is how many are admitted
(ideal: all) and the wall time. Floor: the same burst on a limiter whose pipe is already
connected. A pipe that let the calls made while it connected through one per loop pass made
the later ones outlast ``call_timeout`` and fail as Redis unavailable.

Usage::

    python bench/redis_burst.py [--sizes 1000,10000,20000]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import time
import uuid

import redis.asyncio as redis

from aiolease.redis import RedisRateLimiter

URL = os.environ.get("AIOLEASE_REDIS_URL", "redis://127.0.0.1:6379/0")


async def _burst(n: int, connected: bool) -> tuple[float, dict[str, int]]:
    client = redis.Redis.from_url(URL)
    lim = RedisRateLimiter(client, f"bench-burst-{uuid.uuid4().hex[:8]}", 1e9, burst=1e9)
    try:
        if connected:
            await lim.acquire()
        t0 = time.perf_counter()
        got = await asyncio.gather(
            *(lim.acquire(key=i % 100) for i in range(n)), return_exceptions=True
        )
        wall = time.perf_counter() - t0
        return wall, dict(collections.Counter(type(r).__name__ for r in got))
    finally:
        await lim.aclose()
        await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,20000")
    args = parser.parse_args()
    print(f"{'N':>7} {'pipe':<10} {'wall s':>7}  outcomes")
    for n in (int(x) for x in args.sizes.split(",")):
        for connected in (False, True):
            wall, outcomes = asyncio.run(_burst(n, connected))
            label = "connected" if connected else "fresh"
            print(f"{n:>7} {label:<10} {wall:>7.2f}  {outcomes}")


if __name__ == "__main__":
    main()
