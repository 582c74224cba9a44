"""The adapters' default key: every spelling of one host is one key, so a pause holds them all.

A real aiohttp web server on the IPv6 loopback answers the first request 429 with a long
``Retry-After``; a request through another spelling of the same address must meet that pause.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import httpx
import pytest
from aiohttp import web
from client_kinds import kind
from yarl import URL

import aiolease
import aiolease.aiohttp
import aiolease.httpx

__all__ = ["kind"]  # the fixture, imported for pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(30)]


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@asynccontextmanager
async def throttling_server() -> AsyncIterator[tuple[int, list[str]]]:
    """Answers its first request 429 with ``Retry-After: 30``, the others 200; yields the
    port on ::1 and the paths requested."""
    paths: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        paths.append(request.path)
        if len(paths) == 1:
            return web.Response(status=429, headers={"Retry-After": "30"})
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = socket.socket(socket.AF_INET6)
    sock.bind(("::1", 0))
    try:
        await web.SockSite(runner, sock).start()
        yield sock.getsockname()[1], paths
    finally:
        await runner.cleanup()
        sock.close()


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this machine")
@pytest.mark.parametrize(
    "spelling", ["[0:0::1]", "[::0:1]", "[0000:0000:0000:0000:0000:0000:0000:0001]"]
)
async def test_every_spelling_of_an_ipv6_address_shares_the_pause(kind: str, spelling: str) -> None:
    async with throttling_server() as (port, paths):
        throttled, other = f"http://{spelling}:{port}/a", f"http://[::1]:{port}/b"
        limits = aiolease.RateLimiter(100)
        # retries=0: the 429 comes back at once and the key stays paused for 30 s; a
        # request of the same host then waits at most 0.5 s (timeout) and raises unsent.
        if kind == "httpx":
            transport = aiolease.httpx.LimitedTransport(limits, retries=0, timeout=0.5)
            async with httpx.AsyncClient(transport=transport) as hc:
                assert (await hc.get(throttled)).status_code == 429
                with pytest.raises(aiolease.RateLimitExceeded):
                    await hc.get(other)
            assert transport.paused_for("::1") > 0
        else:
            middleware = aiolease.aiohttp.limited(limits, retries=0, timeout=0.5)
            async with aiohttp.ClientSession(middlewares=[middleware]) as session:
                async with session.get(throttled) as response:
                    assert response.status == 429
                with pytest.raises(aiolease.RateLimitExceeded):
                    async with session.get(other):
                        pass
            assert middleware.paused_for("::1") > 0
    assert paths == ["/a"]  # the other spelling was never sent


async def test_the_default_keys_agree_on_every_spelling_of_a_host() -> None:
    # One key per host whichever client computes it: a Redis limiter shares pauses and
    # limits between an httpx process and an aiohttp one by that key.
    for url, expected in [
        ("http://[0:0::1]:8080/", "::1"),
        ("http://[::ABCD]/", "::abcd"),
        ("http://[fe80::1%25eth0]/", "fe80::1%eth0"),
        ("http://API.Example.COM:8443/x", "api.example.com"),
        ("http://127.0.0.1:1/", "127.0.0.1"),
    ]:
        assert aiolease.httpx.request_host(httpx.Request("GET", url)) == expected, url
        request = aiohttp.ClientRequest("GET", URL(url), loop=asyncio.get_running_loop())
        assert aiolease.aiohttp.request_host(request) == expected, url
