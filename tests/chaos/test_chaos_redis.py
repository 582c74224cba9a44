"""Chaos runs of the Redis rate limiter, lightly: a redis-server this suite starts on a free
port is SIGKILLed and restarted, and a FaultProxy in front of the shared Redis goes silent.

Each run records errors by type, the longest ``acquire(timeout=...)`` call, and the time to
the first admission after the fault ends; it asserts recovery and documented errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis.asyncio as aioredis

from aiolease.redis import RedisRateLimiter
from aiolease.testing import FaultProxy
from conftest import IN_CI

from .harness import REPORT, Report, env_seconds

pytestmark = [pytest.mark.chaos, pytest.mark.redis, pytest.mark.timeout(120)]

FAULT_SECONDS = env_seconds("AIOLEASE_CHAOS_FAULT_SECONDS", 2.0)
ACQUIRE_TIMEOUT = 1.0
WORKERS = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A private redis-server on a free port (never the shared one), killed and restarted
    at will."""

    def __init__(self, workdir: Path) -> None:
        self.port = _free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None
        options = ["--bind", "127.0.0.1", "--dir", str(self.workdir), "--save", ""]
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), *options, "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    async def ready(self) -> None:
        async with asyncio.timeout(10):
            while True:
                try:
                    _, w = await asyncio.open_connection("127.0.0.1", self.port)
                except OSError:
                    await asyncio.sleep(0.05)
                    continue
                w.close()
                return

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()  # SIGKILL: no goodbye to the clients
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        message = "redis-server not found on PATH: the chaos run that kills Redis needs it"
        if IN_CI:
            pytest.fail(f"CI=true and {message}", pytrace=False)
        pytest.skip(f"!!! SKIPPED: {message}")
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()


async def _run(
    report: Report, limiter: RedisRateLimiter, fault: str, inject: object, heal: object
) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    ok_times: list[float] = []
    longest = 0.0

    async def worker() -> None:
        nonlocal longest
        while not stop.is_set():
            start = loop.time()
            report.ops += 1
            try:
                async with limiter.acquire(timeout=ACQUIRE_TIMEOUT):
                    pass
            except Exception as exc:
                report.errors[type(exc).__name__] += 1
                await asyncio.sleep(0.01)
            else:
                report.ok += 1
                ok_times.append(loop.time())
            longest = max(longest, loop.time() - start)

    async with asyncio.TaskGroup() as tg:
        for _ in range(WORKERS):
            tg.create_task(worker())
        await asyncio.sleep(0.5)
        inject()  # type: ignore[operator]
        await asyncio.sleep(FAULT_SECONDS)
        await heal()  # type: ignore[operator]
        healed = loop.time()
        await asyncio.sleep(3.0)
        stop.set()
    after = [t - healed for t in ok_times if t >= healed]
    report.recovery = min(after) if after else None
    report.max_acquire = longest
    if longest > ACQUIRE_TIMEOUT + 0.1:
        report.notes.append(f"an acquire(timeout={ACQUIRE_TIMEOUT}) took {longest:.2f} s")


def _errors_documented(report: Report) -> None:
    """Every error an aiolease one (``LimiterUnavailable`` for an unreachable Redis)."""
    assert report.max_acquire <= ACQUIRE_TIMEOUT + 0.1, report.row()
    documented = {"LimiterUnavailable", "RateLimitExceeded", "LimitTimeout"}
    bare = sorted(set(report.errors) - documented)
    if bare:
        # Known on this branch: redis.py lets redis-py's errors (and a bare TimeoutError)
        # through with on_error="raise"; the Redis limiters' hardening wraps them.
        pytest.xfail(f"errors that are not LimiterUnavailable: {bare}")


@pytest.fixture
async def client_for(tmp_path: Path) -> AsyncIterator[list[aioredis.Redis]]:
    clients: list[aioredis.Redis] = []
    yield clients
    for c in clients:
        with contextlib.suppress(Exception):
            await c.aclose()


async def test_redis_server_killed_and_restarted(
    redis_server: RedisServer, client_for: list[aioredis.Redis]
) -> None:
    await redis_server.ready()
    client = aioredis.Redis(host="127.0.0.1", port=redis_server.port)
    client_for.append(client)
    limiter = RedisRateLimiter(client, f"chaos-{uuid.uuid4().hex[:8]}", 1000, burst=50)
    report = Report("redis", "server SIGKILL+restart")
    REPORT.append(report)

    async def restart() -> None:
        redis_server.start()
        await redis_server.ready()

    try:
        await _run(report, limiter, "kill", redis_server.kill, restart)
    finally:
        with contextlib.suppress(Exception):
            await limiter.aclose()
        print("\n" + report.row())
    assert report.recovery is not None, "no admission after the restart"
    assert report.recovery <= 2.0, report.row()
    _errors_documented(report)


async def test_redis_blackhole(redis_url: str, client_for: list[aioredis.Redis]) -> None:
    parts = urlsplit(redis_url)
    db = int(parts.path.lstrip("/") or 0)
    report = Report("redis", "blackhole (proxy)")
    REPORT.append(report)
    async with FaultProxy(parts.hostname or "127.0.0.1", parts.port or 6379) as proxy:
        host, port = proxy.address
        client = aioredis.Redis(host=host, port=port, db=db)
        client_for.append(client)
        limiter = RedisRateLimiter(client, f"chaos-{uuid.uuid4().hex[:8]}", 1000, burst=50)

        async def heal() -> None:
            proxy.heal()

        try:
            await _run(report, limiter, "blackhole", proxy.blackhole, heal)
        finally:
            with contextlib.suppress(Exception):
                await limiter.aclose()
            print("\n" + report.row())
    assert report.recovery is not None, "no admission after the blackhole"
    # Dead connections in redis-py's pool each cost one call_timeout after the heal.
    assert report.recovery <= 3.0, report.row()
    _errors_documented(report)
