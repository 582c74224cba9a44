"""The client adapters against misbehaving peers and lifecycles: bodies cut short, bodies
that cannot be sent twice, limits whose release fails, clients closed mid-request.

Each test talks to a real server on 127.0.0.1: an aiohttp web server, or a raw asyncio
socket server for answers no well-behaved server gives.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import httpx
import pytest
from aiohttp import web
from client_kinds import kind, until

import aiolease
import aiolease._http
import aiolease.aiohttp
import aiolease.httpx

__all__ = ["kind"]  # the fixture, imported for pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(30)]

HOST = "127.0.0.1"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

Answer = Callable[[int], bytes]  # the n-th request (from 1) -> the raw response bytes


@asynccontextmanager
async def raw_server(answer: Answer) -> AsyncIterator[tuple[str, list[bytes]]]:
    """A raw HTTP/1.1 server: ``answer(n)`` is written for the n-th request head; a
    response ending in ``b"<close>"`` is written without that marker, then the
    connection is closed. Yields the base URL and the request heads received."""
    heads: list[bytes] = []
    writers: set[asyncio.StreamWriter] = set()
    handlers: set[asyncio.Task[Any]] = set()

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.add(writer)
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                heads.append(head)
                data = answer(len(heads))
                close = data.endswith(b"<close>")
                writer.write(data.removesuffix(b"<close>"))
                await writer.drain()
                if close:
                    return
        finally:
            writers.discard(writer)
            writer.close()

    server = await asyncio.start_server(connection, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://{HOST}:{port}/", heads
    finally:
        server.close()
        for w in list(writers):
            w.close()  # the handlers' reads end: each returns
        if handlers:
            await asyncio.wait(handlers, timeout=5)
        await server.wait_closed()


@asynccontextmanager
async def web_server(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> AsyncIterator[str]:
    """An aiohttp web server answering every path and method with ``handler``."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = socket.socket()
    sock.bind((HOST, 0))
    try:
        await web.SockSite(runner, sock).start()
        yield f"http://{HOST}:{sock.getsockname()[1]}/"
    finally:
        await runner.cleanup()
        sock.close()


Get = Callable[[str], Coroutine[Any, Any, int]]


@asynccontextmanager
async def client(kind: str, limits: Any, **options: Any) -> AsyncIterator[tuple[Get, Any]]:
    """A client of one connection at most; yields ``get(url) -> status`` and the adapter."""
    if kind == "httpx":
        transport = aiolease.httpx.LimitedTransport(
            limits,
            wrapped=httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=1)),
            **options,
        )
        async with httpx.AsyncClient(transport=transport, timeout=5) as hc:

            async def hget(url: str) -> int:
                return (await hc.get(url)).status_code

            yield hget, transport
    else:
        middleware = aiolease.aiohttp.limited(limits, **options)
        async with aiohttp.ClientSession(
            middlewares=[middleware],
            connector=aiohttp.TCPConnector(limit=1),
            timeout=aiohttp.ClientTimeout(total=5),
        ) as session:

            async def aget(url: str) -> int:
                async with session.get(url) as response:
                    await response.read()
                    return response.status

            yield aget, middleware


# -- a throttled response whose body cannot be read ------------------------------------

THROTTLED_BODIES = {
    # the server closes the connection 5 bytes into a 100-byte body
    "cut-short": (
        b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 0.1\r\n"
        b"Content-Length: 100\r\n\r\nslow <close>"
    ),
    # a body that says it is gzip and is not
    "bad-gzip": (
        b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 0.1\r\n"
        b"Content-Encoding: gzip\r\nContent-Length: 9\r\n\r\nnot gzip!"
    ),
}


@pytest.mark.parametrize("body", list(THROTTLED_BODIES))
async def test_a_throttled_body_that_cannot_be_read_does_not_fail_the_retry(
    kind: str, body: str
) -> None:
    # Nobody reads the body of a response that is retried: a failure reading it is no
    # reason to fail the request (it used to reach the caller as a transport error).
    def answer(n: int) -> bytes:
        return THROTTLED_BODIES[body] if n == 1 else OK

    async with (
        raw_server(answer) as (url, heads),
        client(kind, aiolease.RateLimiter(100)) as (
            get,
            _,
        ),
    ):
        assert await get(url) == 200
    assert len(heads) == 2


async def test_an_endless_throttled_body_does_not_hold_the_retry(kind: str) -> None:
    # The body of a 429 that is retried was read to its end first: one that never ends
    # (a trickle, under any read timeout) held the request, here past the 0.1 s the
    # server asked for, as long as the client's own total timeout, or for good.
    served = 0

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal served
        served += 1
        if served > 1:
            return web.Response(text="ok")
        response = web.StreamResponse(status=429, headers={"Retry-After": "0.1"})
        await response.prepare(request)
        try:
            for _ in iter(int, 1):  # until the client goes away (or the server's cleanup)
                await response.write(b"x" * 1024)
                await asyncio.sleep(0.01)
        except ConnectionError:
            pass
        return response

    async with web_server(handler) as url, client(kind, aiolease.RateLimiter(100)) as (get, _):
        async with asyncio.timeout(2):
            assert await get(url) == 200
    assert served == 2


# -- a body that cannot be sent twice --------------------------------------------------


async def _put_throttled_once(data: Any) -> tuple[int, list[bytes]]:
    """PUT ``data`` through ``limited()`` to a server that throttles the first request:
    the final status and the bodies the server received."""
    bodies: list[bytes] = []

    async def handler(request: web.Request) -> web.Response:
        bodies.append(await request.read())
        if len(bodies) == 1:
            return web.Response(status=429, headers={"Retry-After": "0.1"})
        return web.Response(text="ok")

    async with (
        web_server(handler) as url,
        aiohttp.ClientSession(
            middlewares=[aiolease.aiohttp.limited(aiolease.RateLimiter(100))]
        ) as session,
        session.put(url, data=data) as response,
    ):
        return response.status, bodies


async def test_a_pipe_body_spent_by_the_first_attempt_is_not_sent_again() -> None:
    # aiohttp reads a file body from where it started, and seeks back to resend it; a
    # pipe cannot seek: resent, the PUT went out with an empty body (and got a 200).
    read_end, write_end = os.pipe()
    os.write(write_end, b"the only copy")
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        status, bodies = await _put_throttled_once(pipe)
    assert status == 429  # returned as it is: the body cannot be resent
    assert bodies == [b"the only copy"]


async def test_a_seekable_file_body_is_sent_again_whole(tmp_path: Any) -> None:
    # The counterpart: a file that seeks back is replayable, and resent whole. An aiohttp
    # that does not mark spent payloads (the lowest allowed) closes a file body once
    # sent: there it is not resent, and the 429 is returned.
    replays = hasattr(aiohttp.payload.Payload, "consumed")
    path = tmp_path / "body.bin"
    path.write_bytes(b"the file")
    with path.open("rb") as f:
        status, bodies = await _put_throttled_once(f)
    assert status == (200 if replays else 429)
    assert bodies == [b"the file", b"the file"][: 2 if replays else 1]


async def test_a_multipart_body_with_a_part_sent_once_is_not_sent_again() -> None:
    # A form whose file part is an async iterable: on an aiohttp that does not mark spent
    # payloads (3.12.0, the lowest allowed) the multipart body as a whole looked
    # replayable, and the PUT was resent with that part empty (and got a 200).
    async def chunks() -> AsyncIterator[bytes]:
        yield b"the only copy"

    form = aiohttp.FormData()
    form.add_field("upload", chunks(), filename="data.bin")
    status, bodies = await _put_throttled_once(form)
    assert status == 429  # returned as it is: the body cannot be resent
    assert len(bodies) == 1
    assert b"the only copy" in bodies[0]


# -- limits whose release fails after the response head came ---------------------------


class _StuckRelease:
    """A limiter whose release waits (a Redis round trip that does not come back)."""

    def __init__(self) -> None:
        self.releasing = asyncio.Event()
        self.stuck = True

    @asynccontextmanager
    async def _acquire(self) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if self.stuck:
                self.releasing.set()
                await asyncio.Event().wait()

    def acquire(self, key: Any = None, timeout: float | None = None) -> Any:
        return self._acquire()


async def test_a_response_is_closed_when_the_release_of_the_limits_is_cancelled(
    kind: str,
) -> None:
    # The response head had come when the release was cancelled: left open, it held its
    # connection for good (the next request on a pool of one waited for it in vain).
    limiter = _StuckRelease()

    def answer(n: int) -> bytes:
        # The first body is left unfinished: its response holds the connection.
        return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n" if n == 1 else OK

    async with raw_server(answer) as (url, heads), client(kind, limiter) as (get, _):
        task = asyncio.create_task(get(url))
        await limiter.releasing.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        limiter.stuck = False
        async with asyncio.timeout(5):
            assert await get(url) == 200
    assert len(heads) == 2


# -- the client closed while a request waits -------------------------------------------


async def test_closing_the_client_fails_the_requests_still_waiting(kind: str) -> None:
    # httpx sent them after the close, on connections nothing closed; aiohttp failed
    # them with a bare AssertionError from its missing connector.
    def answer(n: int) -> bytes:
        return b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 0.3\r\nContent-Length: 0\r\n\r\n"

    async with raw_server(answer) as (plain_url, heads):
        # With a password in the URL, which the error raised does not show.
        url = plain_url.replace("http://", "http://bob:Zq7s3cr3tPW@")
        if kind == "httpx":
            transport = aiolease.httpx.LimitedTransport(aiolease.RateLimiter(100))
            hc = httpx.AsyncClient(transport=transport)

            async def get() -> Any:
                return await hc.get(url)

            close: Callable[[], Awaitable[None]] = hc.aclose
            adapter: Any = transport
        else:
            adapter = aiolease.aiohttp.limited(aiolease.RateLimiter(100))
            session = aiohttp.ClientSession(middlewares=[adapter])

            async def get() -> Any:
                async with session.get(url) as response:
                    return response.status

            close = session.close
        retried = asyncio.create_task(get())  # its 429 pauses the key, its retry waits
        await until(lambda: adapter.paused_for(HOST) > 0)
        waiting = asyncio.create_task(get())  # waits for the pause
        await asyncio.sleep(0.05)
        await close()
        for task in (retried, waiting):
            with pytest.raises(RuntimeError, match="closed while the request waited") as info:
                await task
            assert "Zq7s3cr3tPW" not in str(info.value)
    assert len(heads) == 1


# -- bad key functions -----------------------------------------------------------------


def test_an_async_key_function_is_refused_at_the_call(kind: str) -> None:
    async def key(request: Any) -> str:
        return "k"

    class AsyncKey:
        async def __call__(self, request: Any) -> str:
            return "k"

    make: Callable[..., Any] = (
        aiolease.httpx.LimitedTransport if kind == "httpx" else aiolease.aiohttp.limited
    )
    for bad in (key, AsyncKey()):
        with pytest.raises(TypeError, match="async function"):
            make(aiolease.RateLimiter(1), key=bad)


def test_a_limiter_class_instead_of_a_limiter_is_refused_at_the_call(kind: str) -> None:
    # It was taken (its acquire is a function too), and every request failed with
    # "RateLimiter.acquire() missing 1 required positional argument: 'self'".
    make: Callable[..., Any] = (
        aiolease.httpx.LimitedTransport if kind == "httpx" else aiolease.aiohttp.limited
    )
    with pytest.raises(TypeError, match=r"limits=.*RateLimiter.* is a class: pass a limiter"):
        make(aiolease.RateLimiter)


async def test_an_unhashable_key_is_named_as_such(kind: str) -> None:
    async with (
        raw_server(lambda n: OK) as (url, heads),
        client(kind, aiolease.RateLimiter(100), key=lambda request: ["a", "list"]) as (get, _),
    ):
        with pytest.raises(TypeError, match="key must be hashable"):
            await get(url)
    assert heads == []


# -- a pause longer than max_wait ------------------------------------------------------

# A server (or a proxy in maintenance mode) that asks for the end of time: 2**31 s.
FOREVER = (
    b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: Fri, 31 Dec 9999 23:59:59 GMT\r\n"
    b"Content-Length: 0\r\n\r\n"
)


async def test_a_pause_longer_than_max_wait_fails_the_next_requests_at_once(kind: str) -> None:
    # The 429 came back at once (the pause is past max_wait), but every later request of
    # the key, with the default timeout=None, waited the whole pause: 68 years here, in
    # every process for a Redis limiter, whose pause the 429 set too.
    limiter = aiolease.RateLimiter(100)
    async with (
        raw_server(lambda n: FOREVER if n == 1 else OK) as (url, heads),
        client(kind, limiter, max_wait=30) as (get, adapter),
    ):
        assert await get(url) == 429
        # Held here for ASK_AGAIN_AFTER (longer than max_wait), not the server's 68 years.
        assert 59 < adapter.paused_for(HOST) <= 60.001
        async with asyncio.timeout(5):
            with pytest.raises(aiolease.RateLimitExceeded) as caught:
                await get(url)
        assert 59 < caught.value.retry_after <= 60.001
        # The limiter (shared between processes when it is a Redis one) is paused only
        # for max_wait: a process that never saw the 429 sends one request after it,
        # and learns the rest from its own answer.
        with pytest.raises(aiolease.RateLimitExceeded) as held:
            limiter.acquire_nowait(key=HOST)
        assert 0 < held.value.retry_after <= 30
    assert len(heads) == 1


async def test_a_pause_past_max_wait_is_asked_again_after_a_while(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The key stayed refused here for all the server asked (68 years for FOREVER), with
    # nothing to clear it, in a long-running process whose server had long recovered.
    # Now it is held for max_wait or ASK_AGAIN_AFTER, whichever is longer; then the next
    # request asks the server again.
    monkeypatch.setattr(aiolease._http, "ASK_AGAIN_AFTER", 0.3)
    answers = [FOREVER, FOREVER, OK]
    async with (
        raw_server(lambda n: answers[min(n, len(answers)) - 1]) as (url, heads),
        client(kind, aiolease.RateLimiter(100), max_wait=0.1) as (get, adapter),
    ):
        assert await get(url) == 429
        assert 0.2 < adapter.paused_for(HOST) <= 0.301  # uvloop's clock: a millisecond tick
        with pytest.raises(aiolease.RateLimitExceeded, match=r"longer than max_wait=0\.1") as held:
            await get(url)  # refused at once, unsent
        assert 0.2 < held.value.retry_after <= 0.301
        await asyncio.sleep(0.35)
        assert await get(url) == 429  # asked again: the server still says "forever"
        assert len(heads) == 2
        with pytest.raises(aiolease.RateLimitExceeded):
            await get(url)
        await asyncio.sleep(0.35)
        assert await get(url) == 200  # the server recovered: so does the key
        assert adapter.paused_for(HOST) == 0
    assert len(heads) == 3


async def test_the_wait_for_a_learned_pace_is_bounded_by_max_wait(kind: str) -> None:
    # The pause was bounded by max_wait, the wait for a slot of the learned pace only by
    # timeout: with timeout=None a request queued behind a slow pace waited as long as
    # the queue was. Now a slot past max_wait raises RateLimitExceeded, the request unsent.
    throttled = b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n"
    loop = asyncio.get_running_loop()
    async with (
        raw_server(lambda n: throttled if n == 2 else OK) as (url, heads),
        client(kind, aiolease.RateLimiter(100), max_wait=1.0) as (get, adapter),
    ):
        assert await get(url) == 200
        # A quiet key's first 429: a pace of about 1.5 requests a second is learned.
        assert await get(url) == 200
        pace = adapter.pace(HOST)
        assert pace is not None
        assert pace < 3

        async def timed() -> tuple[float, int | BaseException]:
            start = loop.time()
            try:
                result: int | BaseException = await get(url)
            except aiolease.RateLimitExceeded as exc:
                result = exc
            return loop.time() - start, result

        results = await asyncio.gather(*(timed() for _ in range(4)))
    refused = [r for _, r in results if isinstance(r, aiolease.RateLimitExceeded)]
    assert refused, results
    assert all("max_wait=1" in str(r) for r in refused)
    assert max(took for took, _ in results) < 1.0 + 0.3, results  # slack: a loaded machine
    assert len(heads) == 3 + 4 - len(refused)


# -- cancelled while the body of a throttled response is read and dropped --------------


async def test_a_request_cancelled_while_its_throttled_body_is_dropped_frees_everything(
    kind: str,
) -> None:
    # The server stalls in the middle of a 429's body, which the retry leaves unread (it
    # was read and dropped first): the request is cancelled after the 429. Its connection
    # (the only one) and its slot must be free for the next request, and the key's pause
    # must not outlive it.
    def answer(n: int) -> bytes:
        if n == 1:
            return (
                b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 0.1\r\n"
                b"Content-Length: 100\r\n\r\nstalled"
            )
        return OK

    sem = aiolease.ConcurrencyLimiter(1)
    async with raw_server(answer) as (url, heads), client(kind, sem) as (get, adapter):
        task = asyncio.create_task(get(url))
        await until(lambda: adapter.paused_for(HOST) > 0)  # the 429 came: now dropping it
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with asyncio.timeout(5):
            assert await get(url) == 200
        assert adapter.paused_for(HOST) == 0
    stats = sem.statistics()
    assert (stats.in_use, stats.waiting) == (0, 0)
    assert len(heads) == 2


class _FailingClose(httpx.AsyncByteStream):
    """A response body whose close fails (a connection already broken)."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b"x"

    async def aclose(self) -> None:
        raise OSError("close failed")


class _SlowLimits:
    """Limits whose release (``where="release"``) or pause (``where="pause"``) takes long, as a
    Redis limiter's round trip does behind a slow network."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.entered = asyncio.Event()

    @asynccontextmanager
    async def _lease(self) -> AsyncIterator[None]:
        yield
        if self.where == "release":
            self.entered.set()
            await asyncio.sleep(30)

    def acquire(self, key: Any = None, timeout: float | None = None) -> Any:
        return self._lease()

    async def pause(self, seconds: float, key: Any = None) -> None:
        if self.where == "pause":
            self.entered.set()
            await asyncio.sleep(30)


@pytest.mark.parametrize("where", ["release", "pause"])
async def test_a_cancellation_goes_on_when_closing_the_orphaned_response_fails(
    where: str,
) -> None:
    # Cancelled after the response came (in the limits' release, or while a pause is
    # recorded), the request closes the response, which is nobody's now: a failure of that
    # close is logged, and the cancellation goes on (it used to be replaced by the close's
    # OSError).
    def answer(request: httpx.Request) -> httpx.Response:
        status = 429 if where == "pause" else 200
        return httpx.Response(status, headers={"Retry-After": "1"}, stream=_FailingClose())

    limits = _SlowLimits(where)
    transport = aiolease.httpx.LimitedTransport(limits, wrapped=httpx.MockTransport(answer))
    async with httpx.AsyncClient(transport=transport) as client:
        task = asyncio.ensure_future(client.get("http://api.example/x"))
        await asyncio.wait_for(limits.entered.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
