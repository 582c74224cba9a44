"""aiolease.asgi.RateLimitMiddleware against what production brings: a Redis that stops
answering, many client addresses, proxies' forwarding headers, non-HTTP scopes.

Served by a real uvicorn on 127.0.0.1 (the client addresses vary over 127.0.0.0/8, which
Linux routes to the loopback whole), with httpx as the client.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from asgi_server import serve

import aiolease
from aiolease.asgi import RateLimitMiddleware, client_ip
from aiolease.redis import RedisConcurrencyLimiter, RedisRateLimiter

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]


async def hello(scope: Any, receive: Any, send: Any) -> None:
    """A bare ASGI app answering 200 "hello" (and the lifespan protocol)."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


# -- Redis that stops answering ---------------------------------------------------------


@asynccontextmanager
async def silent_redis() -> AsyncIterator[str]:
    """A TCP server that accepts connections and never answers: a Redis that hangs
    (paused, swapping, behind a dropped route). Yields its redis:// URL."""
    conns: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conns.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.close()
        for w in conns:
            w.close()
        await server.wait_closed()


def _redis_limiter(kind: str, url: str) -> Any:
    import redis.asyncio as redis_asyncio

    rc = redis_asyncio.Redis.from_url(url)
    name = f"aiolease-test-asgi-faults-{uuid.uuid4().hex[:12]}"
    if kind.startswith("rate-"):
        on_error: Any = kind.removeprefix("rate-")
        return RedisRateLimiter(rc, name, 10, on_error=on_error, call_timeout=0.2)
    fallback = aiolease.ConcurrencyLimiter(5) if kind == "concurrency-fallback" else None
    return RedisConcurrencyLimiter(rc, name, 5, call_timeout=0.2, fallback=fallback)


@pytest.mark.parametrize(
    ("kind", "status"),
    [
        ("rate-raise", 500),  # LimiterUnavailable reaches the server: fail closed, loudly
        ("rate-allow", 200),  # fail open
        ("rate-deny", 429),  # fail closed, with a Retry-After
        ("concurrency", 500),
        ("concurrency-fallback", 200),
    ],
)
async def test_a_redis_that_stops_answering_is_answered_within_call_timeout(
    kind: str, status: int
) -> None:
    # Each request is answered, by on_error or fallback, once call_timeout has passed: none
    # waits on the silent Redis. (The bound below is a hang guard, not a timing claim.)
    async with silent_redis() as url:
        limiter = _redis_limiter(kind, url)
        try:
            async with (
                serve(RateLimitMiddleware(hello, limiter=limiter)) as base,
                httpx.AsyncClient(base_url=base, timeout=20) as client,
            ):
                async with asyncio.timeout(20):
                    responses = [await client.get("/") for _ in range(3)]
        finally:
            await limiter.aclose()
    assert [r.status_code for r in responses] == [status] * 3
    if status == 429:
        assert all(int(r.headers["retry-after"]) >= 1 for r in responses)


# -- many client addresses ---------------------------------------------------------------

ADDRESSES = [f"127.0.{i // 200}.{i % 200 + 2}" for i in range(300)]


async def _one_request_from_each(base: str) -> list[int]:
    """One GET / from each of ADDRESSES (a plain HTTP/1.1 client: a new httpx client per
    address costs more than the request); the statuses."""
    host, port = base.removeprefix("http://").split(":")
    statuses = []
    for address in ADDRESSES:
        reader, writer = await asyncio.open_connection(host, int(port), local_addr=(address, 0))
        try:
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            status_line = await reader.readline()
            await reader.read()
        finally:
            writer.close()
            await writer.wait_closed()
        statuses.append(int(status_line.split()[1]))
    return statuses


async def test_a_local_limiter_does_not_keep_a_state_per_client_address_for_good() -> None:
    # 300 clients, one request each: each key's state is idle 10 ms after its request
    # and swept, so the limiter holds a bounded number of keys, not one per address seen.
    limiter = aiolease.RateLimiter(100, per=1.0)
    seen: set[str] = set()

    def key(scope: Any) -> str:
        ip = client_ip(scope)
        seen.add(ip)
        return ip

    async with serve(RateLimitMiddleware(hello, limiter=limiter, key=key)) as base:
        statuses = await _one_request_from_each(base)
    assert statuses == [200] * len(ADDRESSES)
    assert len(seen) == len(ADDRESSES)  # the server saw each address: the keys differed
    assert limiter.statistics().keys < len(ADDRESSES) // 2


@pytest.mark.redis
async def test_a_redis_limiter_leaves_no_key_without_an_expiry(redis_url: str) -> None:
    import redis.asyncio as redis_asyncio

    rc = redis_asyncio.Redis.from_url(redis_url)
    name = f"aiolease-test-asgi-faults-{uuid.uuid4().hex[:12]}"
    rate = RedisRateLimiter(rc, name, 1, per=60.0, burst=2)  # each key's state: 60 s
    slots = RedisConcurrencyLimiter(rc, name + "-c", 5)
    try:
        app = RateLimitMiddleware(RateLimitMiddleware(hello, limiter=slots), limiter=rate)
        async with serve(app) as base:
            statuses = await _one_request_from_each(base)
        keys = [k async for k in rc.scan_iter(match=f"*{name}*")]
        ttls = [await rc.pttl(k) for k in keys]
    finally:
        await rate.aclose()
        await slots.aclose()
        leftover = [k async for k in rc.scan_iter(match=f"*{name}*")]
        if leftover:
            await rc.delete(*leftover)
        await rc.aclose()
    assert statuses == [200] * len(ADDRESSES)
    assert keys  # the limiters did write their state
    assert all(ttl > 0 for ttl in ttls), list(zip(keys, ttls, strict=True))


# -- forwarding headers ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("allowed", "expected"),
    [
        # the client (127.0.0.1) is not a trusted proxy: its forwarding headers are ignored
        ("192.0.2.1", [200, 429, 429]),
        # uvicorn told to trust every peer: each made-up address gets a limit of its own
        ("*", [200, 200, 200]),
    ],
)
async def test_forwarding_headers_count_only_from_the_proxies_the_server_trusts(
    allowed: str, expected: list[int]
) -> None:
    # client_ip reads no header itself: it is the address in the scope, which uvicorn
    # rewrites from X-Forwarded-For only for a peer in forwarded_allow_ips. Trusting
    # every peer ("*") lets any client pick its own key, hence the warning in the docs.
    limiter = aiolease.RateLimiter(1, per=60.0)
    app = RateLimitMiddleware(hello, limiter=limiter)
    async with (
        serve(app, proxy_headers=True, forwarded_allow_ips=allowed) as base,
        httpx.AsyncClient(base_url=base) as client,
    ):
        statuses = []
        for i in range(3):
            spoofed = f"203.0.113.{i}"
            headers = {"X-Forwarded-For": spoofed, "Forwarded": f"for={spoofed}"}
            statuses.append((await client.get("/", headers=headers)).status_code)
    assert statuses == expected


def test_client_ip_reads_no_forwarding_header() -> None:
    scope = {
        "type": "http",
        "client": ("198.51.100.7", 4000),
        "headers": [(b"x-forwarded-for", b"203.0.113.9"), (b"forwarded", b"for=203.0.113.9")],
    }
    assert client_ip(scope) == "198.51.100.7"


# -- scopes other than HTTP --------------------------------------------------------------


@pytest.mark.parametrize("scope_type", ["websocket", "lifespan"])
async def test_websocket_and_lifespan_scopes_pass_through_untouched(scope_type: str) -> None:
    # (No WebSocket library is installed for uvicorn here: the middleware is called as
    # the server would call it.) An exhausted limiter would refuse an HTTP request.
    limiter = aiolease.RateLimiter(1, per=60.0)
    limiter.acquire_nowait(key="10.0.0.1")
    seen: list[tuple[Any, Any, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append((scope, receive, send))

    async def receive() -> dict[str, Any]:
        return {"type": f"{scope_type}.connect"}

    async def send(message: Any) -> None:
        raise AssertionError(f"the middleware sent {message!r} itself")

    scope = {"type": scope_type, "path": "/ws", "client": ("10.0.0.1", 1), "headers": []}
    await RateLimitMiddleware(app, limiter=limiter)(scope, receive, send)
    assert seen == [(scope, receive, send)]
    assert limiter.statistics().rejected == 0
