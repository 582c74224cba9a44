"""Several OS processes sharing one Redis limiter; a holder killed with SIGKILL."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis_asyncio
from _redis_factories import delete_keys, redis_client, unique_name
from limits_helpers import max_in_window

from aiolease.redis import RedisConcurrencyLimiter

pytestmark = [pytest.mark.redis, pytest.mark.slow]

_RATE_CHILD = """
import asyncio, json, sys, time
import redis.asyncio as r
from aiolease.redis import RedisRateLimiter

async def main(url, name, rate, burst, seconds):
    async with r.Redis.from_url(url) as client:
        lim = RedisRateLimiter(client, name, rate, burst=burst)
        times = []
        stop = time.time() + seconds

        async def greedy():
            while time.time() < stop:
                await lim.acquire()
                times.append(time.time())  # one wall clock for every process on this host

        await asyncio.gather(*(greedy() for _ in range(3)))
        print(json.dumps(times))

url, name, rate, burst, seconds = sys.argv[1:]
asyncio.run(main(url, name, float(rate), float(burst), float(seconds)))
"""

_CONC_CHILD = """
import asyncio, json, sys
import redis.asyncio as r
from aiolease.redis import RedisConcurrencyLimiter

async def main(url, name, limit, rounds):
    async with r.Redis.from_url(url) as client:
        sem = RedisConcurrencyLimiter(client, name, limit, lease_ttl=5.0)
        counter = "aiolease:test:{" + name + "}:active"
        peak = 0

        async def worker():
            nonlocal peak
            for _ in range(rounds):
                async with sem.acquire():
                    peak = max(peak, await client.incr(counter))
                    await asyncio.sleep(0.01)
                    await client.decr(counter)

        await asyncio.gather(*(worker() for _ in range(3)))
        print(json.dumps(peak))

url, name, limit, rounds = sys.argv[1:]
asyncio.run(main(url, name, int(limit), int(rounds)))
"""

_HOLDER_CHILD = """
import asyncio, sys
import redis.asyncio as r
from aiolease.redis import RedisConcurrencyLimiter

async def main(url, name, ttl):
    client = r.Redis.from_url(url)
    sem = RedisConcurrencyLimiter(client, name, 1, lease_ttl=ttl)
    await sem.acquire()
    print("held", flush=True)
    await asyncio.sleep(3600)

url, name, ttl = sys.argv[1:]
asyncio.run(main(url, name, float(ttl)))
"""


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[redis_asyncio.Redis]:
    async with redis_client(redis_url) as c:
        yield c


@pytest.fixture
async def name(client: redis_asyncio.Redis) -> AsyncIterator[str]:
    n = unique_name("proc")
    yield n
    await delete_keys(client, n)
    await client.delete(f"aiolease:test:{{{n}}}:active")


async def _run_children(code: str, *argv: str, n: int) -> list[str]:
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", code, *argv, stdout=asyncio.subprocess.PIPE
        )
        for _ in range(n)
    ]
    outs = []
    for p in procs:
        out, _ = await p.communicate()
        assert p.returncode == 0
        outs.append(out.decode())
    return outs


async def test_processes_sharing_a_rate_limit_stay_within_the_bound(
    redis_url: str, name: str
) -> None:
    rate, burst, seconds = 40.0, 2.0, 2.5
    outs = await _run_children(
        _RATE_CHILD, redis_url, name, str(rate), str(burst), str(seconds), n=4
    )
    times = sorted(t for out in outs for t in json.loads(out))
    # At most burst + rate * W in any window W. The admissions were stamped by four processes
    # after their own wake-ups (a loaded machine wakes some late, bunching them), so allow two
    # admissions of jitter; the exact bound is checked on a driven clock in
    # test_redis_rate_model.py.
    for window in (0.5, 1.0, 2.0):
        worst = max_in_window(times, [1.0] * len(times), window)
        assert worst <= burst + rate * window + 2, (window, worst)
    # ...and the processes together saturate the limit. A late first or last stamp stretches
    # the span they are measured over: with the suite's other workers busy on the same cores
    # (pytest-xdist) that can be a few tenths of a second, hence a tenth of slack below; a limit
    # that under-admits (a process served alone, slots lost) falls far short of it.
    span = times[-1] - times[0]
    assert len(times) >= 0.9 * (burst + rate * span), (len(times), span)
    assert len(times) <= burst + rate * span + 2


async def test_processes_sharing_a_concurrency_limit_never_exceed_it(
    redis_url: str, name: str
) -> None:
    outs = await _run_children(_CONC_CHILD, redis_url, name, "2", "8", n=4)
    peaks = [json.loads(out) for out in outs]
    assert max(peaks) == 2


async def test_a_killed_holder_frees_its_slot_after_the_lease_ttl(
    client: redis_asyncio.Redis, redis_url: str, name: str
) -> None:
    ttl = 1.0
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _HOLDER_CHILD,
        redis_url,
        name,
        str(ttl),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line.strip() == b"held"
        os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()
        sem = RedisConcurrencyLimiter(client, name, 1, lease_ttl=ttl)
        assert await sem.in_use() == 1  # the dead holder's lease is still there...
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        permit = await sem.acquire(timeout=10 * ttl)  # ...until it expires
        waited = loop.time() - t0
        assert waited > 0  # it had to wait for the expiry, it was not free
        await permit.arelease()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


_WAITERS_CHILD = """
import asyncio, sys
import redis.asyncio as r
from aiolease.redis import RedisConcurrencyLimiter

async def main(url, name, ttl, n):
    client = r.Redis.from_url(url)
    sem = RedisConcurrencyLimiter(client, name, 1, lease_ttl=ttl)
    waiters = [asyncio.ensure_future(sem.acquire()) for _ in range(n)]
    while sem.statistics().waiting < n or len(sem._waiters) < n:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)  # every waiter queued in Redis and subscribed
    print("queued", flush=True)
    await asyncio.sleep(3600)
    del waiters

url, name, ttl, n = sys.argv[1:]
asyncio.run(main(url, name, float(ttl), int(n)))
"""


async def test_waiters_of_a_killed_process_stop_reserving_capacity_within_the_lease_ttl(
    client: redis_asyncio.Redis, redis_url: str, name: str
) -> None:
    # A slot released to a dead process's queued waiter must not stay captured for a fresh
    # lease_ttl: it expires when the dead waiter's heartbeat would have.
    ttl = 1.0
    sem = RedisConcurrencyLimiter(client, name, 1, lease_ttl=ttl)
    held = await sem.acquire()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _WAITERS_CHILD,
        redis_url,
        name,
        str(ttl),
        "3",
        stdout=asyncio.subprocess.PIPE,
    )
    loop = asyncio.get_running_loop()
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line.strip() == b"queued"
        assert await client.zcard(sem._keys(None)[1]) == 3  # three waiters queued in Redis
        os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()
        killed = loop.time()
        await asyncio.sleep(0.7 * ttl)
        await held.arelease()  # handed to the oldest dead waiter
        permit = await sem.acquire(timeout=5 * ttl)
        # Its last heartbeat was at most at the kill: capacity is back by kill + lease_ttl
        # (plus the waiter's wake-up and a loaded machine's slack), not release + lease_ttl.
        assert loop.time() - killed <= ttl + 0.3
        await permit.arelease()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await sem.aclose()
