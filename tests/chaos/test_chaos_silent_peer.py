"""A real silent peer: packets dropped by the kernel (not a proxy that still acknowledges),
and how long each PostgreSQL pool takes to notice with its default keepalive settings.

The test builds its own network: a network namespace joined to this one by a veth pair
(10.213.0.1 here, 10.213.0.2 there), a forwarder in the namespace to a forwarder here, which
forwards to PostgreSQL. Taking the far end of the veth pair down drops every packet
silently: the server vanishes without a FIN or RST. Nothing outside this private network changes.
Needs root (CAP_NET_ADMIN) and the ``ip`` tool; skipped otherwise.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

import aiolease
import aiolease.asyncpg
import aiolease.psycopg
from aiolease._compat.asyncpg import HAVE_SOCKET
from aiolease._liveness import SILENT_PEER_BOUND

from .harness import REPORT, Report

pytestmark = [pytest.mark.chaos, pytest.mark.postgres, pytest.mark.timeout(90)]

HERE, THERE = "10.213.0.1", "10.213.0.2"
FORWARD_PORT = 15432

FORWARDER = """
import asyncio, sys
async def pipe(r, w):
    try:
        while data := await r.read(65536):
            w.write(data)
            await w.drain()
    except OSError:
        pass
    finally:
        w.close()
async def handle(r, w):
    ur, uw = await asyncio.open_connection(sys.argv[3], int(sys.argv[4]))
    await asyncio.gather(pipe(r, uw), pipe(ur, w))
async def main():
    server = await asyncio.start_server(handle, sys.argv[1], int(sys.argv[2]))
    print("ready", flush=True)
    async with server:
        await server.serve_forever()
asyncio.run(main())
"""


def _run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


@pytest.fixture(scope="module")
def private_network() -> Iterator[str]:
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("!!! SKIPPED: needs root and the ip tool (a private network)")
    ns = f"aiolease{uuid.uuid4().hex[:6]}"
    here, there = f"{ns}a", f"{ns}b"
    try:
        _run("ip", "netns", "add", ns)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"!!! SKIPPED: cannot create a network namespace: {exc.stderr!r}")
    try:
        _run("ip", "link", "add", here, "type", "veth", "peer", "name", there)
        _run("ip", "link", "set", there, "netns", ns)
        _run("ip", "addr", "add", f"{HERE}/30", "dev", here)
        _run("ip", "link", "set", here, "up")
        _run("ip", "netns", "exec", ns, "ip", "addr", "add", f"{THERE}/30", "dev", there)
        _run("ip", "netns", "exec", ns, "ip", "link", "set", there, "up")
        _run("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        yield f"{ns}:{here}:{there}"
    finally:
        subprocess.run(["ip", "link", "del", here], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _drop(network: str, on: bool) -> None:
    """Every packet dropped silently (or not): the far end of the veth pair goes down, so
    what this side sends is discarded by the link, with no error and no ICMP."""
    ns, _, there = network.split(":")
    _run("ip", "netns", "exec", ns, "ip", "link", "set", there, "down" if on else "up")


@pytest.fixture
async def silent_dsn(private_network: str, pg_dsn: str) -> AsyncIterator[str]:
    """A DSN whose packets cross the private network."""
    parts = urlsplit(pg_dsn)
    host, port = parts.hostname or "127.0.0.1", parts.port or 5432
    ns = private_network.split(":")[0]

    async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        except OSError:
            pass
        finally:
            w.close()

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection(host, port)
        await asyncio.gather(pipe(r, uw), pipe(ur, w))

    server = await asyncio.start_server(handle, HERE, 0)
    here_port = server.sockets[0].getsockname()[1]
    proc = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", ns, sys.executable, "-c", FORWARDER,
        THERE, str(FORWARD_PORT), HERE, str(here_port),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(10):
            assert (await proc.stdout.readline()).strip() == b"ready"
        user = f"{parts.username}@" if parts.username else ""
        yield parts._replace(netloc=f"{user}{THERE}:{FORWARD_PORT}").geturl()
    finally:
        proc.kill()
        await proc.wait()
        server.close()


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_silent_peer_detected_within_the_bound(
    driver: str, private_network: str, silent_dsn: str
) -> None:
    if driver == "asyncpg" and not HAVE_SOCKET:
        pytest.skip("public mode: asyncpg's command_timeout bounds it instead")
    loop = asyncio.get_running_loop()
    report = Report(driver, "kernel drops all (query waiting)")
    REPORT.append(report)
    pool: aiolease.Pool[Any] = (
        aiolease.asyncpg.create_pool(silent_dsn, max_size=1, close_timeout=1.0)
        if driver == "asyncpg"
        else aiolease.psycopg.create_pool(silent_dsn, max_size=1)
    )
    try:
        async with pool:
            async with pool.acquire() as conn:
                await conn.execute("SELECT 1")
                _drop(private_network, True)
                start = loop.time()
                # A query whose answer never comes: only the kernel can end the wait.
                with pytest.raises(Exception) as caught:
                    async with asyncio.timeout(SILENT_PEER_BOUND + 20):
                        await conn.execute("SELECT pg_sleep(30)")
                detected = loop.time() - start
            report.errors[type(caught.value).__name__] += 1
            report.recovery = detected
            report.notes.append(f"detected after {detected:.1f} s")
            assert not isinstance(caught.value, TimeoutError), "not detected within the bound"
            assert detected <= SILENT_PEER_BOUND + 3
            assert pool.statistics().size == 0  # discarded
    finally:
        _drop(private_network, False)
        print("\n" + report.row())
