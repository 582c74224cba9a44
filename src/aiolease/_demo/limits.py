"""Demo scenario "limits": an API client limited to 2 calls/s, per-key limits, Retry-After.

Everything is in-process (a fake API); it finishes in about four seconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from .. import ConcurrencyLimiter, LimitGroup, RateLimiter, RateLimitExceeded


async def run(out: Callable[[str], None]) -> None:
    loop = asyncio.get_running_loop()
    t0 = loop.time()

    def stamp() -> str:
        return f"t={loop.time() - t0:4.2f}s"

    # 1. The seed scenario: an API that allows 2 calls per second.
    api = RateLimiter(2, per=1.0, name="api")
    out("1. An API client limited to 2 calls per second; 5 calls started at once:")

    async def call(i: int) -> None:
        async with api:
            out(f"   {stamp()}  call {i}")

    await asyncio.gather(*(call(i) for i in range(1, 6)))
    s = api.statistics()
    out(f"   admitted={s.admitted}, longest wait {s.wait_time_max:.2f}s (each sleeps once)")

    # 2. Per-key limits: every user has their own 2/s; at most 3 calls in flight overall.
    out("2. Per-user limits (2/s each) and at most 3 calls in flight overall, in one `async with`:")
    in_flight = ConcurrencyLimiter(3, name="in-flight")
    per_user = LimitGroup(RateLimiter(2, name="per-user"), in_flight, shared=(in_flight,))
    t0 = loop.time()

    async def user_call(user: str, i: int) -> None:
        async with per_user.acquire(key=user):
            out(f"   {stamp()}  {user} call {i} ({in_flight.statistics().in_use} in flight)")
            await asyncio.sleep(0.3)

    users = ("alice", "bob", "carol", "dave")
    await asyncio.gather(*(user_call(u, i) for i in (1, 2) for u in users))

    # 3. The server answers 429 with Retry-After: everyone holds off.
    out("3. The server says 429, Retry-After: 1.5 -> pause; nothing goes out until then:")
    api = RateLimiter(10, name="api")
    t0 = loop.time()
    api.pause(1.5)
    try:
        api.acquire_nowait()
    except RateLimitExceeded as exc:
        out(f"   {stamp()}  acquire_nowait -> RateLimitExceeded(retry_after={exc.retry_after:.2f})")
    try:
        await api.acquire(timeout=0.5)
    except RateLimitExceeded as exc:
        out(f"   {stamp()}  acquire(timeout=0.5) failed at once, retry_after={exc.retry_after:.2f}")

    async def resumed(i: int) -> None:
        async with api:
            out(f"   {stamp()}  call {i} after the pause")

    await asyncio.gather(*(resumed(i) for i in range(1, 4)))
