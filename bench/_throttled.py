"""A rate-limited HTTP server on 127.0.0.1 and the client runs measured against it.

Shared by ``bench/clients.py`` and ``tests/integrations`` (loaded there by path).

The server is a token bucket of ``rate`` per second holding at most ``burst``
tokens (an API documented as "``rate`` requests per second"). A request that
finds no token gets 429 with the wait in one of the header styles real APIs
use. It counts, besides the answers, *episodes*: a 429 starts one when it
arrives after the wait announced by the previous episode has passed; a 429
inside an episode means a request was sent into a window the server had
already closed. A client that honours the pause gets one 429 per episode
(requests already in flight aside).
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import json
import math
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

STYLES = ("retry-after", "http-date", "ratelimit", "ratelimit-reset")


def throttle_headers(style: str, wait: float, rate: float, burst: float) -> dict[str, str]:
    """The headers of a 429 saying "wait ``wait`` seconds" in ``style``."""
    seconds = max(1, math.ceil(wait))
    if style == "retry-after":
        return {"Retry-After": str(seconds)}
    if style == "http-date":
        now = int(time.time())  # an HTTP-date is wall-clock time by definition
        return {
            "Date": email.utils.formatdate(now, usegmt=True),
            "Retry-After": email.utils.formatdate(now + seconds, usegmt=True),
        }
    if style == "ratelimit":  # draft-ietf-httpapi-ratelimit-headers-08 and later
        return {
            "RateLimit-Policy": f'"default";q={math.ceil(burst)};w={max(1, round(burst / rate))}',
            "RateLimit": f'"default";r=0;t={seconds}',
        }
    if style == "ratelimit-reset":  # draft-06 and earlier
        return {
            "RateLimit-Limit": str(math.ceil(burst)),
            "RateLimit-Remaining": "0",
            "RateLimit-Reset": str(seconds),
        }
    raise ValueError(f"style={style!r}: one of {STYLES}")


@dataclass
class Counts:
    served: int = 0
    throttled: int = 0
    episodes: int = 0
    first: float | None = None  # loop time of the first request
    last_served: float | None = None
    methods: list[str] = field(default_factory=list)
    times: list[float] = field(default_factory=list)  # loop time of each request
    served_at: list[float] = field(default_factory=list)
    episode_starts: list[float] = field(default_factory=list)


class ThrottledServer:
    """An aiohttp web server on a free port of 127.0.0.1.

    Args:
        rate, burst: the token bucket (None: no limit).
        style: how a 429 says how long to wait (see ``STYLES``).
        script: responses ``(status, headers)`` given to the first requests, in order,
            before the bucket is consulted (for behaviour tests).
    """

    def __init__(
        self,
        rate: float | None = None,
        burst: float = 1.0,
        *,
        style: str = "retry-after",
        script: Sequence[tuple[int, dict[str, str]]] = (),
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.style = style
        self.script = list(script)
        self.counts = Counts()
        self._tokens = burst
        self._last: float | None = None
        self._episode_end = -math.inf
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.counts.methods.append(request.method)
        now = asyncio.get_running_loop().time()
        self.counts.times.append(now)
        if self.counts.first is None:
            self.counts.first = now
        if self.script:
            status, headers = self.script.pop(0)
            if status >= 400:
                self.counts.throttled += 1
            else:
                self.counts.served += 1
            return web.Response(status=status, headers=headers, text=str(status))
        if self.rate is None:
            self.counts.served += 1
            return web.Response(text="ok")
        if self._last is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1:
            self._tokens -= 1
            self.counts.served += 1
            self.counts.last_served = now
            self.counts.served_at.append(now)
            return web.Response(text="ok")
        wait = (1 - self._tokens) / self.rate
        headers = throttle_headers(self.style, wait, self.rate, self.burst)
        self.counts.throttled += 1
        if now >= self._episode_end:
            self.counts.episodes += 1
            self.counts.episode_starts.append(now)
            self._episode_end = now + max(1, math.ceil(wait))
        return web.Response(status=429, headers=headers, text="slow down")

    async def __aenter__(self) -> ThrottledServer:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


@asynccontextmanager
async def server_process(rate: float, burst: float, style: str) -> AsyncIterator[Any]:
    """A ``ThrottledServer(rate, burst, style=style)`` in a child process.

    Yields an object with ``url`` and, once the block has ended, ``counts`` (the
    server's ``Counts``; its instants are the child's loop clock, the same
    monotonic clock as this process's). The server's request handling then
    does not run on the client's event loop, where it would delay the client's
    own limiter as no remote server does.
    """
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        str(rate),
        str(burst),
        style,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    remote = _Remote((await proc.stdout.readline()).decode().strip())
    try:
        yield remote
    finally:
        proc.stdin.write(b"\n")
        await proc.stdin.drain()
        line = await proc.stdout.readline()
        await proc.wait()
    remote.counts = Counts(**json.loads(line))


@dataclass
class _Remote:
    url: str
    counts: Counts = field(default_factory=Counts)


async def _serve_child(rate: float, burst: float, style: str) -> None:
    """The child of :func:`server_process`: print the URL, serve until a line comes on stdin."""
    async with ThrottledServer(rate, burst, style=style) as server:
        print(server.url, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    print(json.dumps(dataclasses.asdict(server.counts)), flush=True)


@dataclass
class Run:
    client: str
    requests: int
    ok: int
    throttled: int
    episodes: int
    elapsed: float
    ideal: float
    steady: float | None  # share of the limit used between the first and last episode

    @property
    def efficiency(self) -> float:
        """The share of the server's limit achieved: ideal time / measured time."""
        return self.ideal / self.elapsed if self.elapsed > 0 else 0.0


async def _httpx_limited(url: str, n: int, limits: Any) -> list[int]:
    import httpx

    import aiolease.httpx

    transport = aiolease.httpx.LimitedTransport(limits, retries=5)
    async with httpx.AsyncClient(transport=transport, base_url=url) as client:
        responses = await asyncio.gather(*(client.get(f"/item/{i}") for i in range(n)))
    return [r.status_code for r in responses]


async def _aiohttp_limited(url: str, n: int, limits: Any) -> list[int]:
    import aiohttp

    import aiolease.aiohttp

    middleware = aiolease.aiohttp.limited(limits, retries=5)
    async with aiohttp.ClientSession(url, middlewares=[middleware]) as session:

        async def one(i: int) -> int:
            async with session.get(f"/item/{i}") as response:
                await response.read()
                return response.status

        return await asyncio.gather(*(one(i) for i in range(n)))


async def _httpx_aiolimiter(url: str, n: int, limits: Any) -> list[int]:
    """The hand-written pattern: aiolimiter + sleep Retry-After and retry, per request."""
    import httpx
    from aiolimiter import AsyncLimiter

    rate = limits.statistics().rate
    limiter = AsyncLimiter(rate, 1.0)
    async with httpx.AsyncClient(base_url=url) as client:

        async def one(i: int) -> int:
            for _ in range(6):
                async with limiter:
                    response = await client.get(f"/item/{i}")
                if response.status_code != 429:
                    break
                await asyncio.sleep(float(response.headers.get("Retry-After", "1")))
            return response.status_code

        return await asyncio.gather(*(one(i) for i in range(n)))


CLIENTS: dict[str, Callable[[str, int, Any], Any]] = {
    "aiolease.httpx": _httpx_limited,
    "aiolease.aiohttp": _aiohttp_limited,
    "aiolimiter+httpx (hand-written retry)": _httpx_aiolimiter,
}


LIMITERS = ("local", "group", "redis")


@asynccontextmanager
async def client_limiter(
    kind: str, rate: float, redis_url: str | None = None
) -> AsyncIterator[Any]:
    """The client's own limiter of ``rate``/s: a ``RateLimiter``, a ``LimitGroup`` of one
    with a ``ConcurrencyLimiter(100)``, or a ``RedisRateLimiter`` on ``AIOLEASE_REDIS_URL``
    (its keys are deleted afterwards)."""
    import aiolease

    if kind == "local":
        yield aiolease.RateLimiter(rate)
    elif kind == "group":
        yield aiolease.LimitGroup(aiolease.RateLimiter(rate), aiolease.ConcurrencyLimiter(100))
    elif kind == "redis":
        import redis.asyncio as redis_asyncio

        from aiolease.redis import RedisRateLimiter

        url = redis_url or os.environ.get("AIOLEASE_REDIS_URL", "redis://127.0.0.1:6379/0")
        name = f"aiolease-bench-clients-{os.getpid()}-{id(url)}"
        rc = redis_asyncio.Redis.from_url(url)
        limiter = RedisRateLimiter(rc, name, rate)
        try:
            yield limiter
        finally:
            await close_redis_limiters(rc, name, limiter)
    else:
        raise ValueError(f"limiter={kind!r}: one of {LIMITERS}")


async def close_redis_limiters(rc: Any, name: str, *limiters: Any) -> None:
    """Close ``limiters``, delete the Redis keys of ``name`` and close the client ``rc``."""
    for limiter in limiters:
        aclose = getattr(limiter, "aclose", None)  # Redis limiters gain aclose() on 2026-12-05
        if aclose is not None:
            await aclose()
    keys = [k async for k in rc.scan_iter(match=f"*{name}*")]
    if keys:
        await rc.delete(*keys)
    await rc.aclose()


async def measure(
    client: str,
    *,
    rate: float,
    burst: float,
    client_rate: float,
    n: int,
    style: str = "retry-after",
    limiter: str = "local",
    redis_url: str | None = None,
    in_process: bool = True,
) -> Run:
    """``n`` concurrent GETs through ``client`` limited to ``client_rate``/s at a ``rate``/s server.

    ``in_process=False``: the server runs in a child process (:func:`server_process`).
    """
    async with (
        ThrottledServer(rate, burst, style=style)
        if in_process
        else server_process(rate, burst, style) as server,
        client_limiter(limiter, client_rate, redis_url) as limits,
    ):
        statuses = await CLIENTS[client](server.url, n, limits)
    # The server's view: from the first request it saw to the last it served.
    first, last = server.counts.first, server.counts.last_served
    elapsed = (last - first) if first is not None and last is not None else 0.0
    return Run(
        client=client,
        requests=n,
        ok=sum(1 for s in statuses if s == 200),
        throttled=server.counts.throttled,
        episodes=server.counts.episodes,
        elapsed=elapsed,
        # A full bucket serves `burst` at once, then `rate` per second.
        ideal=max(0.0, n - burst) / rate,
        steady=_steady(server.counts, rate),
    )


def _steady(counts: Counts, rate: float) -> float | None:
    """Served per second between the first and the last throttling episode, over ``rate``.

    Each episode begins with the bucket empty, so what is served between two
    of them is what the client's pauses and resumptions let through of the limit.
    """
    if len(counts.episode_starts) < 2:
        return None
    a, b = counts.episode_starts[0], counts.episode_starts[-1]
    served = sum(1 for t in counts.served_at if a <= t < b)
    return served / ((b - a) * rate)


if __name__ == "__main__":
    asyncio.run(_serve_child(float(sys.argv[1]), float(sys.argv[2]), sys.argv[3]))
