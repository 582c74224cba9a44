"""aiolease.asgi.RateLimitMiddleware through a real uvicorn server, with httpx as the client."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis.asyncio as redis_asyncio
from asgi_server import serve
from fastapi import FastAPI

import aiolease
from aiolease.asgi import RateLimitMiddleware, _policy, client_ip
from aiolease.redis import RedisConcurrencyLimiter, RedisRateLimiter

pytestmark = pytest.mark.slow


async def hello(scope: Any, receive: Any, send: Any) -> None:
    """A bare ASGI app: 200 "hello", or 500 on /boom, or a slow answer on /slow."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": f"lifespan.{'startup'}.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["path"] == "/boom":
        raise RuntimeError("boom")
    if scope["path"] == "/slow":
        await asyncio.sleep(0.5)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


async def _get_all(url: str, paths: list[str], **kw: Any) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url) as client:
        return [await client.get(p, **kw) for p in paths]


async def test_over_the_limit_gets_429_with_the_standard_headers() -> None:
    limiter = aiolease.RateLimiter(2, per=1.0, burst=2)
    async with serve(RateLimitMiddleware(hello, limiter=limiter)) as url:
        responses = await _get_all(url, ["/", "/", "/"])
    assert [r.status_code for r in responses] == [200, 200, 429]
    refused = responses[2]
    assert refused.headers["retry-after"] == "1"
    assert refused.headers["ratelimit-policy"] == '"default";q=2;w=1'
    assert refused.headers["ratelimit"] == '"default";r=0;t=1'
    assert refused.text == "Too Many Requests"
    assert limiter.statistics().rejected == 1


async def test_retry_after_is_whole_seconds_rounded_up() -> None:
    limiter = aiolease.RateLimiter(1, per=10.0)
    async with serve(RateLimitMiddleware(hello, limiter=limiter, policy_name="api")) as url:
        first, second = await _get_all(url, ["/", "/"])
    assert (first.status_code, second.status_code) == (200, 429)
    assert second.headers["retry-after"] == "10"  # 9.99... s away
    assert second.headers["ratelimit"] == '"api";r=0;t=10'
    assert second.headers["ratelimit-policy"] == '"api";q=1;w=10'


async def test_exempt_paths_and_prefixes_are_never_limited() -> None:
    limiter = aiolease.RateLimiter(1, per=60.0)
    app = RateLimitMiddleware(hello, limiter=limiter, exempt={"/health", "/static/*"})
    async with serve(app) as url:
        responses = await _get_all(url, ["/health"] * 3 + ["/static/a.css"] * 3 + ["/", "/"])
    assert [r.status_code for r in responses] == [200] * 7 + [429]


async def test_the_key_function_separates_clients() -> None:
    limiter = aiolease.RateLimiter(1, per=60.0)

    def api_key(scope: Any) -> str:
        value: bytes = dict(scope["headers"]).get(b"x-api-key", b"")
        return value.decode()

    async with (
        serve(RateLimitMiddleware(hello, limiter=limiter, key=api_key)) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        a1 = await client.get("/", headers={"x-api-key": "a"})
        b1 = await client.get("/", headers={"x-api-key": "b"})
        a2 = await client.get("/", headers={"x-api-key": "a"})
    assert (a1.status_code, b1.status_code, a2.status_code) == (200, 200, 429)


async def _refused_while_a_slow_request_holds(
    sem: aiolease.ConcurrencyLimiter, limiter: Any, *, then: str | None = None
) -> httpx.Response:
    """The answer to a request sent while a slow one holds ``sem``'s only slot (and, with
    ``then``, checks that a request to ``then`` succeeds after the slow one)."""
    async with (
        serve(RateLimitMiddleware(hello, limiter=limiter)) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        slow = asyncio.create_task(client.get("/slow"))
        async with asyncio.timeout(10):
            while sem.statistics().in_use == 0:  # noqa: ASYNC110 - the server's state
                await asyncio.sleep(0.01)
        refused = await client.get("/")
        assert (await slow).status_code == 200
        if then is not None:
            assert (await client.get(then)).status_code == 200
    return refused


async def test_a_concurrency_limit_holds_its_slot_while_the_app_runs() -> None:
    sem = aiolease.ConcurrencyLimiter(1)
    refused = await _refused_while_a_slow_request_holds(sem, sem, then="/")
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "1"
    assert refused.headers["ratelimit-policy"] == '"default";q=1;qu="concurrent-requests"'
    assert sem.statistics().in_use == 0


async def test_a_group_full_on_both_members_says_when_the_rate_member_admits() -> None:
    # The concurrency slot is held and the rate member's next slot is 10 s away: the
    # request cannot be admitted before then, whichever member frees up first.
    sem = aiolease.ConcurrencyLimiter(1)
    group = aiolease.LimitGroup(aiolease.RateLimiter(1, per=10.0), sem)
    refused = await _refused_while_a_slow_request_holds(sem, group)
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "10"
    assert refused.headers["ratelimit"] == '"default";r=0;t=10'


async def test_an_app_error_gives_the_slot_back() -> None:
    sem = aiolease.ConcurrencyLimiter(1)
    async with serve(RateLimitMiddleware(hello, limiter=sem)) as url:
        responses = await _get_all(url, ["/boom", "/boom", "/"])
    assert [r.status_code for r in responses] == [500, 500, 200]
    assert sem.statistics().in_use == 0


async def test_fastapi_add_middleware() -> None:
    app = FastAPI()

    @app.get("/items/{n}")
    async def item(n: int) -> dict[str, int]:
        return {"n": n}

    app.add_middleware(
        RateLimitMiddleware, limiter=aiolease.RateLimiter(2, per=1.0, burst=2), key=client_ip
    )
    async with serve(app) as url:
        responses = await _get_all(url, ["/items/1", "/items/2", "/items/3"])
    assert [r.status_code for r in responses] == [200, 200, 429]
    assert responses[0].json() == {"n": 1}


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[Any]:
    import redis.asyncio as redis_asyncio

    rc = redis_asyncio.Redis.from_url(redis_url)
    yield rc
    await rc.aclose()


@pytest.fixture
async def redis_name(redis_client: Any) -> AsyncIterator[str]:
    """A limiter name of the test's own, whose keys are deleted afterwards (its own only: a
    pattern shared by every run would delete a concurrent run's keys under its feet)."""
    name = f"aiolease-test-integ-asgi-{uuid.uuid4().hex[:12]}"
    yield name
    keys = [k async for k in redis_client.scan_iter(match=f"*{name}*")]
    if keys:
        await redis_client.delete(*keys)


async def _aclose(limiter: Any) -> None:
    aclose = getattr(limiter, "aclose", None)  # Redis limiters gain aclose() on 2026-12-05
    if aclose is not None:
        await aclose()


@pytest.mark.redis
async def test_a_redis_rate_limiter(redis_client: Any, redis_name: str) -> None:
    limiter = RedisRateLimiter(redis_client, redis_name, 2, burst=2)
    try:
        async with serve(RateLimitMiddleware(hello, limiter=limiter)) as url:
            responses = await _get_all(url, ["/", "/", "/"])
    finally:
        await _aclose(limiter)
    assert [r.status_code for r in responses] == [200, 200, 429]
    assert responses[2].headers["retry-after"] == "1"
    assert responses[2].headers["ratelimit-policy"] == '"default";q=2;w=1'


@pytest.mark.redis
async def test_a_redis_concurrency_limiter_releases_after_each_request(
    redis_client: Any, redis_name: str
) -> None:
    limiter = RedisConcurrencyLimiter(redis_client, redis_name, 1)
    try:
        async with serve(RateLimitMiddleware(hello, limiter=limiter)) as url:
            responses = await _get_all(url, ["/", "/boom", "/"])
            stats = limiter.statistics()
    finally:
        await _aclose(limiter)
    assert [r.status_code for r in responses] == [200, 500, 200]
    assert stats.in_use == 0


def test_the_policy_describes_the_limiter() -> None:
    rate = aiolease.RateLimiter(10, per=0.5)
    slow = aiolease.RateLimiter(100, per=60.0)
    sem = aiolease.ConcurrencyLimiter(4)
    assert _policy(rate, "p") == '"p";q=20;w=1'
    assert _policy(aiolease.LimitGroup(rate, slow, sem), "p") == '"p";q=100;w=60'
    assert _policy(aiolease.LimitGroup(sem), "p") == '"p";q=4;qu="concurrent-requests"'
    assert _policy(object(), "p") is None


@pytest.mark.parametrize(
    ("rate", "per", "policy"),
    [
        (0.5, 1.0, '"p";q=1;w=2'),  # one every 2 s, not "1 per second"
        (0.3, 1.0, '"p";q=1;w=4'),  # one every 3.3 s: the window holds one whole request
        (1, 90.5, '"p";q=1;w=91'),
        (1.5, 1.0, '"p";q=1;w=1'),
    ],
)
def test_the_policy_never_announces_more_than_the_limiter_admits(
    rate: float, per: float, policy: str
) -> None:
    """A rate below one request per `per` seconds is announced over a window long enough to
    hold one (q / w <= rate / per), so a client that follows the header is not refused."""
    assert _policy(aiolease.RateLimiter(rate, per=per), "p") == policy


def test_bad_arguments_are_refused_at_the_call() -> None:
    limiter = aiolease.RateLimiter(1)
    with pytest.raises(TypeError, match="acquire_nowait"):
        RateLimitMiddleware(hello, limiter=object())
    with pytest.raises(TypeError, match="exempt='/health'"):
        RateLimitMiddleware(hello, limiter=limiter, exempt="/health")
    with pytest.raises(TypeError, match="key="):
        RateLimitMiddleware(hello, limiter=limiter, key="ip")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="policy_name"):
        RateLimitMiddleware(hello, limiter=limiter, policy_name="")
    # Caught here, not when the first request is refused (a 500 instead of a 429).
    with pytest.raises(TypeError, match="policy=5"):
        RateLimitMiddleware(hello, limiter=limiter, policy=5)  # type: ignore[arg-type]
    for name, bad in (("policy_name", "lone\ud800"), ("policy", '"p";q=1\n')):
        options: dict[str, Any] = {name: bad}
        with pytest.raises(ValueError, match=name):
            RateLimitMiddleware(hello, limiter=limiter, **options)
    with pytest.raises(TypeError, match="exempt=5"):
        RateLimitMiddleware(hello, limiter=limiter, exempt=5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"exempt=\['/health', 1\]"):
        RateLimitMiddleware(hello, limiter=limiter, exempt=["/health", 1])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"'health' never matches .* \(write '/health'\)"):
        RateLimitMiddleware(hello, limiter=limiter, exempt=["/static/*", "health"])
    # Found by a new user's probe: app=None was accepted, and every request then failed
    # with "'NoneType' object is not callable".
    with pytest.raises(TypeError, match="app=None: expected an ASGI application"):
        RateLimitMiddleware(None, limiter=limiter)  # type: ignore[arg-type]


async def test_a_cancelled_request_gives_its_slot_back() -> None:
    sem = aiolease.ConcurrencyLimiter(1)
    started = asyncio.Event()

    async def stuck(scope: Any, receive: Any, send: Any) -> None:
        started.set()
        await asyncio.Event().wait()

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        pass

    scope = {"type": "http", "path": "/", "client": ("10.0.0.1", 1), "headers": []}
    task = asyncio.create_task(RateLimitMiddleware(stuck, limiter=sem)(scope, receive, send))
    await started.wait()
    assert sem.statistics().in_use == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sem.statistics().in_use == 0


def test_an_async_key_function_is_refused_at_the_call() -> None:
    # Its coroutine used to be taken for the key: a new key per request, nothing limited,
    # and a "coroutine never awaited" warning.
    async def api_key(scope: Any) -> str:
        return "k"

    class AsyncKey:
        async def __call__(self, scope: Any) -> str:
            return "k"

    bad: Any
    for bad in (api_key, AsyncKey()):
        with pytest.raises(TypeError, match="async function"):
            RateLimitMiddleware(hello, limiter=aiolease.RateLimiter(1), key=bad)


def test_an_async_exempt_function_is_refused_at_the_call() -> None:
    # Its coroutine was taken for the answer, and a coroutine is true: every request was
    # exempt (nothing limited), with a "coroutine never awaited" warning for each.
    async def is_health(scope: Any) -> bool:
        return False

    class AsyncExempt:
        async def __call__(self, scope: Any) -> bool:
            return False

    bad: Any
    for bad in (is_health, AsyncExempt()):
        with pytest.raises(TypeError, match=r"exempt=.* is an async function"):
            RateLimitMiddleware(hello, limiter=aiolease.RateLimiter(1), exempt=bad)


def test_a_limiter_class_instead_of_a_limiter_is_refused_at_the_call() -> None:
    # It was refused with "RateLimiter.statistics() missing 1 required positional argument".
    with pytest.raises(TypeError, match=r"limiter=.*RateLimiter.* is a class: pass a limiter"):
        RateLimitMiddleware(hello, limiter=aiolease.RateLimiter)


async def test_a_cancellation_as_a_redis_slot_comes_back_is_never_swallowed() -> None:
    """The request cancelled at each step of giving a Redis concurrency slot back (a
    degraded permit here: Redis unreachable, the fallback's slot; its release ends without a
    round trip, so the steps are the same each time) ends cancelled. Python 3.11's
    ``asyncio.wait_for`` returned the result instead when the awaited release ended in the
    step the cancellation came."""
    client = redis_asyncio.Redis.from_url("redis://127.0.0.1:1/0")  # refused at once
    limiter = RedisConcurrencyLimiter(
        client, f"asgi-{uuid.uuid4().hex}", 1, fallback=aiolease.ConcurrencyLimiter(1)
    )
    middleware = RateLimitMiddleware(hello, limiter=limiter)
    scope = {"type": "http", "path": "/", "client": ("10.0.0.1", 1), "headers": []}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    cancelled = 0
    try:
        for steps in range(8):
            head_sent = asyncio.Event()

            async def send(message: Any, head_sent: asyncio.Event = head_sent) -> None:
                if message["type"] == "http.response.start":
                    head_sent.set()  # the release comes next, with the body's last part

            task = asyncio.create_task(middleware(scope, receive, send))
            await head_sent.wait()
            for _ in range(steps):
                await asyncio.sleep(0)
            if task.done():
                await task
                break
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            cancelled += 1
            assert limiter.statistics().in_use == 0, steps
    finally:
        await limiter.aclose()
        await client.aclose()
    assert cancelled >= 2  # the sweep reached the release's end
