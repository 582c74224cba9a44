"""A redis-server of the test's own (to kill and restart) and a TCP proxy that can go silent.

The shared Redis (AIOLEASE_REDIS_URL) is never stopped or reconfigured: tests that need Redis to
die, restart or go silent, or that send a server-wide command (SCRIPT FLUSH, FLUSHDB, CONFIG SET,
CLIENT PAUSE, CLIENT KILL by type), start their own server on a free port (no persistence: a
restart forgets every key) and point their client at it, directly or through
:class:`SilentProxy`. Whatever such a server writes (a replica's copy of its primary's data)
goes to a directory of its own, never to the working directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis_asyncio

from conftest import IN_CI


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class OwnRedis:
    """A redis-server process on a free port; :meth:`kill` and :meth:`start` it at will.
    Its files go to ``workdir`` (a replica saves the data it receives there)."""

    def __init__(self, binary: str, workdir: str) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            self.binary,
            *("--port", str(self.port), "--bind", "127.0.0.1", "--save", ""),
            *("--dir", self.workdir),
            *("--appendonly", "no", "--protected-mode", "no"),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        probe = redis_asyncio.Redis.from_url(self.url, socket_connect_timeout=0.2)
        try:
            for _ in range(200):
                with contextlib.suppress(Exception):
                    if await probe.ping():
                        return
                await asyncio.sleep(0.02)
        finally:
            await probe.aclose()
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    async def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            await self.proc.wait()
            self.proc = None


@contextlib.asynccontextmanager
async def running_redis(binary: str) -> AsyncIterator[OwnRedis]:
    """A redis-server of ``binary``, started on a free port in a directory of its own, killed
    (and the directory removed) on the way out."""
    with tempfile.TemporaryDirectory(prefix="aiolease-redis-") as workdir:
        server = OwnRedis(binary, workdir)
        try:
            await server.start()
            yield server
        finally:
            await server.kill()


@pytest.fixture
async def own_redis() -> AsyncIterator[OwnRedis]:
    """A started redis-server of this test's own; skipped loudly (failed under CI) if missing."""
    binary = shutil.which("redis-server")
    if binary is None:
        message = "redis-server not found on PATH: the tests with a Redis of their own need it"
        if IN_CI:
            pytest.fail(f"CI=true and {message}", pytrace=False)
        pytest.skip(f"!!! SKIPPED: {message}")
    async with running_redis(binary) as server:
        yield server


class SilentProxy:
    """Forwards 127.0.0.1:<port> to a Redis; :meth:`silence` keeps connections open but
    forwards nothing either way (a hung server or a black-holed network), :meth:`heal` resumes.
    :meth:`cut_at_reply` lets one command through and loses the connection before its reply."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.silent = False
        self.connections = 0  # connections accepted so far
        self.sent = bytearray()  # every byte the clients sent on to Redis
        self._cut: bytes | None = None
        self._closing = False
        self._healed = asyncio.Event()
        self._healed.set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def silence(self) -> None:
        self.silent = True
        self._healed.clear()

    def heal(self) -> None:
        self.silent = False
        self._healed.set()

    def cut_at_reply(self, command: bytes) -> None:
        """Once: the next data a client sends that contains ``command`` goes on to Redis (which
        runs it), and when Redis answers, that client's connection is closed instead of given
        the reply: the client cannot tell whether the command ran."""
        self._cut = command

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        cut: list[bool],
        to_redis: bool,
    ) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                await self._healed.wait()  # silent: hold every byte back
                if to_redis:
                    self.sent += data
                    if self._cut is not None and self._cut in data:
                        self._cut = None
                        cut[0] = True  # this connection loses the reply
                elif cut[0]:
                    break  # the reply: dropped, the client's connection closed
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        await self._healed.wait()  # silent: the connection is accepted but never answered
        if self._closing:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers += [writer, up_writer]
        cut = [False]
        for task in (
            asyncio.ensure_future(self._pipe(reader, up_writer, cut, to_redis=True)),
            asyncio.ensure_future(self._pipe(up_reader, writer, cut, to_redis=False)),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def __aenter__(self) -> SilentProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._closing = True
        self.heal()
        await asyncio.sleep(0)
        self._server.close()
        for w in self._writers:
            w.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), 1.0)
