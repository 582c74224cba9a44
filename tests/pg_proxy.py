"""A TCP proxy in front of PostgreSQL that holds a query back, and the server's view of a
test's sessions: for the tests of a cancel request that overtakes its query (the server drops
it), tests/postgres/test_*_cancel_dropped.py."""

from __future__ import annotations

import asyncio
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

import asyncpg

__all__ = ["HoldingProxy", "sessions", "terminate_sessions"]


class HoldingProxy:
    """A TCP proxy on 127.0.0.1 in front of the server. :meth:`hold` keeps what the
    clients of the connections open now send (in order) until :meth:`release`;
    connections opened later go straight through. ``ended`` is set when a connection
    opened during the hold has ended (the server closes a cancel request's connection
    once it has signalled the backend)."""

    def __init__(self, host: str, port: int) -> None:
        self._host, self._port = host, port
        self._server: asyncio.Server | None = None
        self._gates: list[asyncio.Event] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.held: list[bytes] = []  # what the hold kept back
        self.ended = asyncio.Event()
        self._holding = False

    @classmethod
    def before(cls, dsn: str) -> HoldingProxy:
        """A proxy in front of the server ``dsn`` names (clients connect to :meth:`dsn`)."""
        parts = urlsplit(dsn)
        return cls(parts.hostname or "127.0.0.1", parts.port or 5432)

    async def __aenter__(self) -> HoldingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def dsn(self, dsn: str) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        parts = urlsplit(dsn)
        auth = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
        return urlunsplit(parts._replace(netloc=f"{auth}127.0.0.1:{port}"))

    def hold(self) -> None:
        self._holding = True
        for gate in self._gates:
            gate.clear()

    def release(self) -> None:
        self._holding = False
        for gate in self._gates:
            gate.set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        opened_during_hold = self._holding
        up_reader, up_writer = await asyncio.open_connection(self._host, self._port)
        gate = asyncio.Event()
        gate.set()
        self._gates.append(gate)

        async def upstream() -> None:
            while data := await reader.read(65536):
                if not gate.is_set():
                    self.held.append(data)
                    await gate.wait()
                up_writer.write(data)
                await up_writer.drain()

        async def downstream() -> None:
            while data := await up_reader.read(65536):
                writer.write(data)
                await writer.drain()

        pumps = [asyncio.create_task(upstream()), asyncio.create_task(downstream())]
        self._tasks.update(pumps)
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
                self._tasks.discard(pump)
            await asyncio.gather(*pumps, return_exceptions=True)
            self._gates.remove(gate)
            writer.close()
            up_writer.close()
            if opened_during_hold:
                self.ended.set()


async def sessions(pg_dsn: str, tag: str) -> list[dict[str, object]]:
    """The server's view of the sessions named ``tag`` (pg_stat_activity)."""
    conn = await asyncpg.connect(pg_dsn)
    try:
        rows = await conn.fetch(
            "SELECT pid, state, query, wait_event, query_start FROM pg_stat_activity "
            "WHERE application_name = $1",
            tag,
        )
        return [dict(r) for r in rows]
    finally:
        await conn.close()


async def running_on(
    pg_dsn: str, tag: str, query: str, *, within: float
) -> list[dict[str, object]]:
    """The sessions named ``tag`` still running ``query`` once ``within`` seconds have
    passed, or none as soon as none runs it (a session the client has just let go may
    take a moment to end on the server)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        running = [
            s for s in await sessions(pg_dsn, tag) if s["state"] == "active" and s["query"] == query
        ]
        if not running or loop.time() >= deadline:
            return running
        await asyncio.sleep(0.1)


async def terminate_sessions(pg_dsn: str, tag: str) -> None:
    """End the server sessions named ``tag`` (what a failed test left running)."""
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            tag,
        )
    finally:
        await conn.close()
