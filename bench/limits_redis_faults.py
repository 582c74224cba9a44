"""Redis limiters when Redis fails: detection, recovery, fallback overshoot, state lost on restart.

Runs against a redis-server of its own (``redis-server`` on PATH, a free port, no persistence),
never the shared one: it is killed (SIGKILL), frozen (SIGSTOP: a silent server) and restarted.

(1) detect:  one task acquiring in a loop; time from the fault to the first
             ``LimiterUnavailable`` (killed: connection reset/refused; frozen: no reply, so
             ``call_timeout`` decides).
(2) recover: time from a restarted (or resumed) server answering PING to the limiter's first
             admission by Redis (the cool-down, at most 1 s, spaces the probes).
(3) overshoot during fallback: three limiter objects (as three processes would) share one
             name, rate 50/s, burst 5, each with ``fallback=RateLimiter(...)``; greedy tasks
             for 2 s up, 2 s down, 2 s up again. The most admitted in any 1-s window of each
             phase, against the shared bound (burst + rate = 55): with a fallback at the full
             rate, and at rate / 3.
(4) a restart without persistence forgets the limiter's state: admissions right after it.

These are measurements, not tests. Run: ``python bench/limits_redis_faults.py``.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import os
import shutil
import signal
import socket
import sys
from collections.abc import AsyncIterator

import redis.asyncio as redis_asyncio

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
import aiolease  # noqa: E402
from aiolease import LimiterUnavailable  # noqa: E402
from aiolease.redis import RedisRateLimiter  # noqa: E402

sys.path.insert(0, _HERE)
from _common import environment  # noqa: E402

HUGE = 1_000_000_000


class Server:
    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not on PATH")
        self.binary = binary
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> float:
        """Start it; returns the loop time at which it first answered PING."""
        self.proc = await asyncio.create_subprocess_exec(
            self.binary,
            *("--port", str(self.port), "--bind", "127.0.0.1", "--save", ""),
            *("--appendonly", "no"),
            stdout=asyncio.subprocess.DEVNULL,
        )
        probe = redis_asyncio.Redis.from_url(self.url, socket_connect_timeout=0.1)
        try:
            while True:
                with contextlib.suppress(Exception):
                    if await probe.ping():
                        return asyncio.get_running_loop().time()
                await asyncio.sleep(0.002)
        finally:
            await probe.aclose()

    async def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            await self.proc.wait()
            self.proc = None

    def freeze(self, frozen: bool) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP if frozen else signal.SIGCONT)


@contextlib.asynccontextmanager
async def server() -> AsyncIterator[Server]:
    srv = Server()
    await srv.start()
    try:
        yield srv
    finally:
        if srv.proc is not None:
            srv.freeze(False)
        await srv.kill()


async def detect(srv: Server, fault: str) -> float:
    loop = asyncio.get_running_loop()
    async with redis_asyncio.Redis.from_url(srv.url) as client:
        lim = RedisRateLimiter(client, f"detect-{fault}", HUGE, burst=HUGE)
        await lim.acquire()
        at = 0.0

        async def loop_until_error() -> float:
            while True:
                try:
                    await lim.acquire()
                except LimiterUnavailable:
                    return loop.time()
                await asyncio.sleep(0)

        task = asyncio.ensure_future(loop_until_error())
        await asyncio.sleep(0.2)
        at = loop.time()
        if fault == "killed":
            await srv.kill()
        else:
            srv.freeze(True)
        seen = await task
        if fault == "frozen":
            srv.freeze(False)
        else:
            await srv.start()
        await lim.aclose()
        return seen - at


async def recover(srv: Server, fault: str) -> float:
    loop = asyncio.get_running_loop()
    async with redis_asyncio.Redis.from_url(srv.url) as client:
        lim = RedisRateLimiter(client, "recover", HUGE, burst=HUGE)
        await lim.acquire()
        if fault == "killed":
            await srv.kill()
        else:
            srv.freeze(True)
        # Keep asking while it is down, as a busy service would (the cool-down grows to 1 s).
        for _ in range(30):
            with contextlib.suppress(LimiterUnavailable):
                await lim.acquire()
            await asyncio.sleep(0.05)
        if fault == "killed":
            up = await srv.start()
        else:
            srv.freeze(False)
            up = loop.time()
        while True:
            try:
                await lim.acquire()
                break
            except LimiterUnavailable:
                await asyncio.sleep(0.001)
        recovered = loop.time() - up
        await lim.aclose()
        return recovered


async def overshoot(srv: Server, fallback_rate: float) -> dict[str, int]:
    rate, burst, n = 50.0, 5.0, 3
    loop = asyncio.get_running_loop()
    clients = [redis_asyncio.Redis.from_url(srv.url) for _ in range(n)]
    lims = [
        RedisRateLimiter(
            c,
            f"overshoot-{fallback_rate:g}",
            rate,
            burst=burst,
            call_timeout=0.1,
            fallback=aiolease.RateLimiter(fallback_rate, burst=burst),
        )
        for c in clients
    ]
    stamps: list[float] = []
    stop = False

    async def greedy(lim: RedisRateLimiter) -> None:
        while not stop:
            with contextlib.suppress(LimiterUnavailable, aiolease.RateLimitExceeded):
                await lim.acquire(timeout=1.0)
                stamps.append(loop.time())

    tasks = [asyncio.ensure_future(greedy(lim)) for lim in lims for _ in range(2)]
    t0 = loop.time()
    await asyncio.sleep(2.0)
    t_down = loop.time()
    await srv.kill()
    await asyncio.sleep(2.0)
    t_up = await srv.start()
    await asyncio.sleep(2.0)
    t_end = loop.time()
    stop = True
    await asyncio.gather(*tasks)
    for lim in lims:
        await lim.aclose()
    for c in clients:
        await c.aclose()
    stamps.sort()

    def worst(a: float, b: float) -> int:
        inside = [t for t in stamps if a <= t < b]
        return max(
            (bisect.bisect_left(inside, t + 1.0) - i for i, t in enumerate(inside)), default=0
        )

    return {
        "up": worst(t0, t_down),
        "down": worst(t_down, t_up),
        "back": worst(t_up, t_end),
        "switch": worst(t_down - 0.5, t_down + 0.5),
    }


async def forgets(srv: Server) -> int:
    async with redis_asyncio.Redis.from_url(srv.url) as client:
        lim = RedisRateLimiter(client, "forgets", 1, per=10.0, burst=3)
        for _ in range(3):
            await lim.acquire_nowait()  # the burst is used: the next slot is ~10 s away
        await srv.kill()
        await srv.start()
        admitted = 0
        for _ in range(10):
            with contextlib.suppress(aiolease.RateLimitExceeded, LimiterUnavailable):
                await lim.acquire_nowait()
                admitted += 1
            await asyncio.sleep(0.12)  # past a cool-down after the broken connection
        await lim.aclose()
        return admitted


async def main() -> None:
    print(environment(), flush=True)
    async with server() as srv:
        for fault in ("killed", "frozen"):
            times = sorted([await detect(srv, fault) for _ in range(5)])
            print(
                f"(1) detect, Redis {fault}: median {times[2] * 1000:.0f} ms "
                f"(min {times[0] * 1000:.0f}, max {times[-1] * 1000:.0f}; default call_timeout)"
            )
        for fault in ("killed", "frozen"):
            rec = sorted([await recover(srv, fault) for _ in range(5)])
            what = "restarted" if fault == "killed" else "resumed (SIGCONT)"
            print(
                f"(2) recover, Redis {what}: median {rec[2] * 1000:.0f} ms "
                f"(min {rec[0] * 1000:.0f}, max {rec[-1] * 1000:.0f}) after it answers PING"
            )
        for fb in (50.0, 50.0 / 3):
            w = await overshoot(srv, fb)
            print(
                f"(3) 3 limiters, rate 50/s burst 5 (bound 55 per 1-s window), fallback "
                f"{fb:.3g}/s each: most in 1 s: up {w['up']}, Redis down {w['down']}, "
                f"back up {w['back']}; around the switch {w['switch']}"
            )
        n = await forgets(srv)
        print(
            f"(4) rate 1 per 10 s, burst 3, burst used, then Redis restarted (no persistence): "
            f"{n} admitted at once after the restart (a fresh burst: the state was forgotten)"
        )


if __name__ == "__main__":
    asyncio.run(main())
