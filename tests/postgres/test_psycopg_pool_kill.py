"""aiolease.psycopg.create_pool: connections the server terminates are never handed out.

Killed while idle (once, many times in a row, every idle connection at once,
through ``pool.acquire()`` and ``pool.atomic()``), killed while in use, the
races where only part of what the server sends on the way out has arrived, a
notification received while idle (kept, not discarded), and a healthy
checkout that sends nothing to the server.

psycopg reads a connection's socket only while an operation runs, so what the
server sends to an idle pooled connection waits unread in the socket whether
the event loop runs or not. A small TCP proxy (:class:`HoldingProxy`) in front
of the server reproduces the in-between states deterministically: the FATAL
message delivered but the socket's EOF held back, only the first bytes of the
FATAL message delivered, or the server's reply to a given statement held back.
Every table and channel is private to the test (uuid-suffixed) and cleaned up.
"""

from __future__ import annotations

import asyncio
import select
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from psycopg import pq

from aiolease import Pool
from aiolease.abc import ResourceInfo
from aiolease.psycopg import PsycopgManager, _readable, create_pool
from driver_pools import settle
from pg_tables import temporary_table


def raw(conn: Any) -> Any:
    """The driver connection behind a pool's lease proxy (identity checks across leases)."""
    return getattr(conn, "_aiolease_origin", conn)


pytestmark = pytest.mark.timeout(60)

Conn = psycopg.AsyncConnection[Any]
INFO = ResourceInfo(0.0, 0.0)


# ---------------------------------------------------------------------------- helpers


def pid_of(conn: Conn) -> int:
    return int(raw(conn).info.backend_pid)


async def terminate(admin: Conn, pid: int) -> None:
    """Terminate backend ``pid`` and wait (polling the server) until it is gone."""
    cur = await admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    assert await cur.fetchone() == (True,)
    for _ in range(2000):
        cur = await admin.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,))
        if await cur.fetchone() == (0,):
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"backend {pid} still alive after pg_terminate_backend")


def terminate_blocking(dsn: str, pid: int) -> None:
    """Terminate backend ``pid`` and wait until it is gone, with the event loop blocked."""
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        deadline = time.monotonic() + 10.0
        while admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone():
            if time.monotonic() > deadline:
                raise AssertionError(f"backend {pid} still alive 10 s after pg_terminate_backend")
            time.sleep(0.005)


async def wait_readable(conn: Conn) -> None:
    """Wait until something (sent to ``conn`` while it was idle) sits unread in its socket.

    The event loop keeps running meanwhile (the proxy needs it); psycopg does not
    read an idle connection's socket, so the data stays there for the pool to find.
    """
    for _ in range(2000):
        readable, _, _ = select.select([raw(conn).pgconn.socket], [], [], 0)
        if readable:
            return
        await asyncio.sleep(0.005)
    raise AssertionError("nothing arrived in the connection's socket within 10 s")


async def last_query(admin: Conn, pid: int) -> tuple[str, Any]:
    """The last statement backend ``pid`` received, and when its state last changed."""
    cur = await admin.execute(
        "SELECT query, state_change FROM pg_stat_activity WHERE pid = %s", (pid,)
    )
    row = await cur.fetchone()
    assert row is not None, f"backend {pid} is gone"
    return str(row[0]), row[1]


@pytest.fixture
async def admin(pg_dsn: str) -> AsyncIterator[Conn]:
    """A separate connection for looking at and killing the pool's backends."""
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture
async def table(admin: Conn) -> AsyncIterator[str]:
    """A fresh table ``aiolease_k_<uuid>(v int)``, dropped afterwards."""
    async with temporary_table(admin, "aiolease_k_", "v int") as name:
        yield name


class CountingManager(PsycopgManager):
    """A PsycopgManager that counts the full (async) checks it runs."""

    def __init__(self, conninfo: str, **kwargs: Any) -> None:
        super().__init__(conninfo, **kwargs)
        self.checks = 0

    async def check(self, resource: Conn, info: ResourceInfo) -> None:
        self.checks += 1
        await super().check(resource, info)


# ---------------------------------------------------------------------------- proxy


class Link:
    """One client connection through :class:`HoldingProxy` and what the test lets through.

    Attributes:
        hold_eof: keep the server's EOF from the client (the socket stays open).
        limit: bytes from the server still let through (None: all); the rest is held.
        stall_on: when the client sends data containing these bytes, hold
            everything the server sends from then on (``limit = 0``) and set ``stalled``.
        release_on: when the client sends data containing these bytes, deliver
            what was held (and the EOF, if the server already closed) from then on.
        sent: everything the client sent to the server.
    """

    def __init__(self) -> None:
        self.hold_eof = False
        self.limit: int | None = None
        self.stall_on: bytes | None = None
        self.release_on: bytes | None = None
        self.held = bytearray()
        self.sent = bytearray()
        self.server_eof = asyncio.Event()
        self.stalled = asyncio.Event()
        self.writers: list[asyncio.StreamWriter] = []
        self.tasks: list[asyncio.Task[None]] = []


class HoldingProxy:
    """A TCP proxy in front of PostgreSQL that can hold back what the server sends."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.links: list[Link] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _accept(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        link = Link()
        link.writers.append(cwriter)
        self.links.append(link)
        sreader, swriter = await asyncio.open_connection(*self.upstream)
        link.writers.append(swriter)
        link.tasks.append(asyncio.create_task(self._down(link, sreader, cwriter)))
        link.tasks.append(asyncio.create_task(self._up(link, creader, swriter)))

    @staticmethod
    async def _down(
        link: Link, sreader: asyncio.StreamReader, cwriter: asyncio.StreamWriter
    ) -> None:
        """Server to client."""
        while True:
            try:
                data = await sreader.read(65536)
            except OSError:
                data = b""
            if not data:
                break
            if link.limit is not None:
                passed = data[: link.limit]
                link.held += data[len(passed) :]
                link.limit -= len(passed)
                data = passed
            if data and not cwriter.is_closing():
                cwriter.write(data)
        link.server_eof.set()
        if not link.hold_eof:
            cwriter.close()

    @staticmethod
    async def _up(link: Link, creader: asyncio.StreamReader, swriter: asyncio.StreamWriter) -> None:
        """Client to server."""
        while True:
            try:
                data = await creader.read(65536)
            except OSError:
                data = b""
            if not data:
                break
            link.sent += data
            if not swriter.is_closing():
                swriter.write(data)
            if link.stall_on is not None and link.stall_on in data:
                link.limit = 0
                link.stalled.set()
            if link.release_on is not None and link.release_on in data:
                cwriter = link.writers[0]
                link.limit, link.hold_eof = None, False
                cwriter.write(bytes(link.held))
                link.held.clear()
                if link.server_eof.is_set():
                    cwriter.close()
        swriter.close()

    async def aclose(self) -> None:
        # Stop accepting first, but wait for the server only after its connections are
        # closed: from Python 3.12 on, wait_closed() waits for them.
        if self._server is not None:
            self._server.close()
        for link in self.links:
            for task in link.tasks:
                task.cancel()
            await asyncio.gather(*link.tasks, return_exceptions=True)
            for writer in link.writers:
                writer.close()
            for writer in link.writers:
                try:
                    await writer.wait_closed()
                except OSError:
                    pass
        if self._server is not None:
            await self._server.wait_closed()


@pytest.fixture
async def proxy(pg_dsn: str) -> AsyncIterator[tuple[HoldingProxy, str]]:
    """A :class:`HoldingProxy` to the test server, and a conninfo that goes through it."""
    params = psycopg.conninfo.conninfo_to_dict(pg_dsn)
    host, port = str(params.get("host") or "127.0.0.1"), int(str(params.get("port") or 5432))
    p = HoldingProxy(host, port)
    local_port = await p.start()
    try:
        yield p, psycopg.conninfo.make_conninfo(pg_dsn, host="127.0.0.1", port=local_port)
    finally:
        await p.aclose()


# ---------------------------------------------------------------------------- killed while idle


@pytest.mark.parametrize("how", ["loop-running", "loop-blocked"])
async def test_killed_while_idle_is_replaced(pg_dsn: str, admin: Conn, how: str) -> None:
    async with create_pool(pg_dsn, max_size=1) as pool:
        async with pool.acquire() as conn:
            pid = pid_of(conn)
        if how == "loop-blocked":
            terminate_blocking(pg_dsn, pid)
        else:
            await terminate(admin, pid)
        assert not raw(conn).closed  # psycopg has not looked at the socket yet
        async with pool.acquire() as conn2:
            assert raw(conn2) is not raw(conn)
            assert pid_of(conn2) != pid
            await conn2.execute("SELECT 1")
        await settle(pool)
        stats = pool.statistics()
        assert (stats.size, stats.created, stats.discarded, stats.closed) == (1, 2, 1, 1)
        assert raw(conn).closed


async def test_killed_while_idle_many_times_in_a_row(pg_dsn: str, admin: Conn, table: str) -> None:
    async with create_pool(pg_dsn, max_size=1) as pool:
        pids: set[int] = set()
        for i in range(12):
            async with pool.acquire() as conn:
                pid = pid_of(conn)
                assert pid not in pids
                pids.add(pid)
            await terminate(admin, pid)
            if i % 2:
                async with pool.atomic() as tx:
                    await tx.connection.execute(f"INSERT INTO {table} VALUES (%s)", (i,))
            else:
                async with pool.acquire() as conn2:
                    await conn2.execute(f"INSERT INTO {table} VALUES (%s)", (i,))
        await settle(pool)
        assert pool.statistics().discarded == 12
    cur = await admin.execute(f"SELECT count(*) FROM {table}")
    assert await cur.fetchone() == (12,)


@pytest.mark.parametrize("via", ["acquire", "atomic"])
async def test_every_dead_idle_connection_is_skipped(pg_dsn: str, admin: Conn, via: str) -> None:
    async with create_pool(pg_dsn, max_size=3) as pool:
        conns = [await pool.acquire() for _ in range(3)]
        pids = {pid_of(c) for c in conns}
        for c in conns:
            await pool.release(c)
        assert pool.statistics().idle == 3
        for pid in pids:
            await terminate(admin, pid)
        if via == "atomic":
            async with pool.atomic() as tx:
                assert pid_of(tx.connection) not in pids
                await tx.connection.execute("SELECT 1")
        else:
            async with pool.acquire() as conn:
                assert pid_of(conn) not in pids
                await conn.execute("SELECT 1")
        await settle(pool)
        stats = pool.statistics()
        assert (stats.size, stats.discarded, stats.closed) == (1, 3, 3)
        assert all(raw(c).closed for c in conns)


# ---------------------------------------------------------------------------- killed while in use


async def test_killed_while_in_use_is_discarded(pg_dsn: str, admin: Conn) -> None:
    async with create_pool(pg_dsn, max_size=1) as pool:
        pids: list[int] = []

        async def body() -> None:
            async with pool.acquire() as conn:
                pids.append(pid_of(conn))
                await terminate(admin, pids[0])
                await conn.execute("SELECT 1")

        with pytest.raises(psycopg.OperationalError) as caught:
            await body()
        await settle(pool)
        stats = pool.statistics()
        assert (stats.size, stats.in_use, stats.discarded, stats.closed) == (0, 0, 1, 1)
        async with pool.acquire() as conn2:
            assert pid_of(conn2) != pids[0]
            await conn2.execute("SELECT 1")
            # The error alone marks the connection as gone, not just its closed state.
            assert pool.manager.is_fatal(raw(conn2), caught.value)


async def test_killed_while_held_is_not_handed_to_a_waiter(pg_dsn: str, admin: Conn) -> None:
    # The holder does not touch the connection after its backend is terminated: the FATAL
    # and the EOF sit unread in the socket at release, and a release goes straight to the
    # waiting acquirer, without the checkout's check. The reset sees them instead.
    async with create_pool(pg_dsn, max_size=1) as pool:
        conn = await pool.acquire()
        pid = pid_of(conn)
        waiter = asyncio.ensure_future(pool.acquire(timeout=10))
        await asyncio.sleep(0.05)  # queued
        await terminate(admin, pid)
        await wait_readable(conn)
        await pool.release(conn)
        async with asyncio.timeout(10):
            conn2 = await waiter
        try:
            assert pid_of(conn2) != pid
            await conn2.execute("SELECT 1")
        finally:
            await pool.release(conn2)
        stats = pool.statistics()
        assert (stats.size, stats.in_use, stats.discarded, stats.closed) == (1, 0, 1, 1)


async def test_notification_while_held_keeps_the_connection(pg_dsn: str, admin: Conn) -> None:
    channel = f"aiolease_{uuid.uuid4().hex[:10]}"
    async with create_pool(pg_dsn, max_size=1) as pool:
        async with pool.acquire() as conn:
            await conn.execute(f"LISTEN {channel}")
            await admin.execute(f"NOTIFY {channel}, 'x'")
            await wait_readable(conn)
        async with pool.acquire() as conn2:
            assert raw(conn2) is raw(conn)
            await conn2.execute("SELECT 1")
            await conn2.execute(f"UNLISTEN {channel}")
        assert pool.statistics().discarded == 0


async def test_killed_inside_pool_atomic_is_discarded(pg_dsn: str, admin: Conn, table: str) -> None:
    async with create_pool(pg_dsn, max_size=1) as pool:
        pids: list[int] = []

        async def body() -> None:
            async with pool.atomic() as tx:
                pids.append(pid_of(tx.connection))
                await tx.connection.execute(f"INSERT INTO {table} VALUES (1)")
                await terminate(admin, pids[0])
                await tx.connection.execute(f"INSERT INTO {table} VALUES (2)")

        with pytest.raises(psycopg.OperationalError):
            await body()
        await settle(pool)
        stats = pool.statistics()
        assert (stats.size, stats.in_use, stats.discarded) == (0, 0, 1)
        async with pool.atomic() as tx:
            assert pid_of(tx.connection) != pids[0]
            await tx.connection.execute(f"INSERT INTO {table} VALUES (3)")
    cur = await admin.execute(f"SELECT v FROM {table} ORDER BY v")
    assert await cur.fetchall() == [(3,)]


async def test_killed_in_use_without_noticing_is_not_reused(pg_dsn: str, admin: Conn) -> None:
    # The body never touches the connection after the kill, so the body sees no error:
    # the release finds the FATAL message and EOF unread in the socket and discards it.
    async with create_pool(pg_dsn, max_size=1) as pool:
        async with pool.acquire() as conn:
            pid = pid_of(conn)
            await terminate(admin, pid)
            await wait_readable(conn)
        assert pool.statistics().idle == 0
        async with pool.acquire() as conn2:
            assert pid_of(conn2) != pid
            await conn2.execute("SELECT 1")
        assert pool.statistics().discarded == 1


@pytest.mark.parametrize(
    "exc",
    [
        psycopg.errors.AdminShutdown("terminating connection due to administrator command"),
        psycopg.errors.CrashShutdown("terminating connection because of crash"),
        psycopg.errors.IdleSessionTimeout("terminating connection due to idle-session timeout"),
        psycopg.errors.IdleInTransactionSessionTimeout("idle-in-transaction timeout"),
        psycopg.errors.ConnectionFailure("connection failure"),
        psycopg.errors.ConnectionDoesNotExist("connection does not exist"),
        psycopg.OperationalError("server closed the connection unexpectedly"),
        psycopg.OperationalError("consuming input failed: server closed the connection"),
        ConnectionResetError(),
        BrokenPipeError(),
    ],
    ids=type,
)
async def test_connection_errors_are_fatal(pg_dsn: str, exc: BaseException) -> None:
    manager = PsycopgManager(pg_dsn)
    conn = await manager.create()
    try:
        assert manager.is_fatal(raw(conn), exc)
    finally:
        await manager.close(raw(conn))
    assert manager.is_fatal(raw(conn), ValueError("anything, once the connection is closed"))


@pytest.mark.parametrize(
    "exc",
    [
        psycopg.errors.UniqueViolation("duplicate key"),
        psycopg.errors.QueryCanceled("canceling statement due to statement timeout"),
        psycopg.errors.SerializationFailure("could not serialize access"),
        psycopg.errors.LockNotAvailable("could not obtain lock"),
        psycopg.errors.PipelineAborted("pipeline aborted"),
        psycopg.errors.DivisionByZero("division by zero"),
        psycopg.ProgrammingError("bad query"),
        ValueError("application error"),
        asyncio.CancelledError(),
    ],
    ids=type,
)
async def test_other_errors_are_not_fatal(pg_dsn: str, exc: BaseException) -> None:
    manager = PsycopgManager(pg_dsn)
    conn = await manager.create()
    try:
        assert not manager.is_fatal(raw(conn), exc)
    finally:
        await manager.close(raw(conn))


async def test_fatal_severity_from_the_server_is_fatal(pg_dsn: str) -> None:
    # A FATAL error whose SQLSTATE is not in the list is still recognised by its severity.
    manager = PsycopgManager(pg_dsn)
    conn = await manager.create()
    other = await manager.create()
    try:
        with pytest.raises(psycopg.OperationalError) as caught:
            await conn.execute(
                "SET idle_session_timeout = 0; SELECT pg_terminate_backend(pg_backend_pid())"
            )
        assert caught.value.diag.severity_nonlocalized == "FATAL"
        assert manager.is_fatal(other, caught.value)
    finally:
        await manager.close(raw(conn))
        await manager.close(other)


async def test_application_error_in_body_keeps_the_connection(pg_dsn: str) -> None:
    async with create_pool(pg_dsn, max_size=1) as pool:
        with pytest.raises(psycopg.errors.DivisionByZero):
            async with pool.acquire() as conn:
                await conn.execute("SELECT 1 / 0")
        async with pool.acquire() as conn2:
            assert raw(conn2) is raw(conn)
        assert pool.statistics().discarded == 0


# ---------------------------------------------------------------- checkout without a round trip


async def test_healthy_checkout_sends_nothing_to_the_server(pg_dsn: str, admin: Conn) -> None:
    manager = CountingManager(pg_dsn)
    async with Pool(manager, max_size=1) as pool:
        marker = f"SELECT 'aiolease-{uuid.uuid4().hex}'"
        async with pool.acquire() as conn:
            pid = pid_of(conn)
            await conn.execute(marker)
        before = await last_query(admin, pid)
        assert before[0] == marker
        for _ in range(5):
            assert manager.check_needed(raw(conn), INFO) is False
            async with pool.acquire() as conn2:
                assert raw(conn2) is raw(conn)
        # No statement reached the backend since the marker, and no full check ran.
        assert await last_query(admin, pid) == before
        assert manager.checks == 0
        stats = pool.statistics()
        assert (stats.acquired, stats.discarded) == (6, 0)
        await manager.check(raw(conn), INFO)  # even called directly, a quiet check sends nothing
        assert await last_query(admin, pid) == before


async def test_check_needed_flags_a_killed_connection_and_check_condemns_it(
    pg_dsn: str, proxy: tuple[HoldingProxy, str], admin: Conn
) -> None:
    hp, conninfo = proxy
    manager = PsycopgManager(conninfo)
    conn = await manager.create()
    try:
        assert manager.check_needed(raw(conn), INFO) is False
        mark = len(hp.links[0].sent)
        await terminate(admin, pid_of(conn))
        await asyncio.wait_for(hp.links[0].server_eof.wait(), 10)
        assert manager.check_needed(raw(conn), INFO) is True
        with pytest.raises(ConnectionError, match="terminated the connection while idle"):
            await manager.check(raw(conn), INFO)
        assert b"SELECT" not in hp.links[0].sent[mark:]  # condemned without a round trip
    finally:
        await manager.close(raw(conn))


@pytest.mark.parametrize("libpq_read_it", [False, True], ids=["unread", "parsed-by-libpq"])
async def test_fatal_message_without_eof_is_never_handed_out(
    proxy: tuple[HoldingProxy, str], admin: Conn, libpq_read_it: bool
) -> None:
    # The server's FATAL message arrived but its EOF has not (held by the proxy): the
    # connection still says it is open. With "parsed-by-libpq", libpq has already read
    # and parsed the message, so the socket is quiet too; only the notice watch knows.
    hp, conninfo = proxy
    async with create_pool(conninfo, max_size=1) as pool:
        async with pool.acquire() as conn:
            pid = pid_of(conn)
        link = hp.links[0]
        link.hold_eof = True
        mark = len(link.sent)
        await terminate(admin, pid)
        await asyncio.wait_for(link.server_eof.wait(), 10)
        await wait_readable(conn)
        if libpq_read_it:
            raw(conn).pgconn.consume_input()
            raw(conn).pgconn.is_busy()
            assert not _readable(raw(conn).pgconn.socket)
        assert not raw(conn).closed
        assert raw(conn).pgconn.transaction_status == pq.TransactionStatus.IDLE
        assert pool.manager.check_needed(raw(conn), INFO) is True
        async with pool.acquire() as conn2:
            assert pid_of(conn2) != pid
            await conn2.execute("SELECT 1")
        assert b"SELECT" not in link.sent[mark:]  # no round trip was needed to decide
        await settle(pool)
        assert pool.statistics().discarded == 1


async def test_partial_message_while_idle_is_decided_by_the_round_trip(
    proxy: tuple[HoldingProxy, str], admin: Conn
) -> None:
    # Only the first bytes of the FATAL message arrived; the rest and the EOF follow
    # once the client sends something. Nothing conclusive at first, so the verifying
    # round trip runs and meets the rest of the FATAL message.
    hp, conninfo = proxy
    manager = PsycopgManager(conninfo)
    conn = await manager.create()
    try:
        link = hp.links[0]
        link.hold_eof, link.limit, link.release_on = True, 3, b"SELECT 1"
        mark = len(link.sent)
        await terminate(admin, pid_of(conn))
        await asyncio.wait_for(link.server_eof.wait(), 10)
        await wait_readable(conn)
        assert manager.check_needed(raw(conn), INFO) is True
        with pytest.raises(ConnectionError, match="terminating connection"):
            await manager.check(raw(conn), INFO)
        assert b"SELECT 1" in link.sent[mark:]  # the round trip decided
    finally:
        await manager.close(raw(conn))


async def test_round_trip_without_an_answer_times_out(
    proxy: tuple[HoldingProxy, str], admin: Conn
) -> None:
    # As above, but the rest of the message never comes: the check times out and the
    # pool replaces the connection.
    hp, conninfo = proxy
    async with Pool(PsycopgManager(conninfo, reset_timeout=0.3), max_size=1) as pool:
        async with pool.acquire() as conn:
            pid = pid_of(conn)
        link = hp.links[0]
        link.hold_eof, link.limit = True, 3
        mark = len(link.sent)
        await terminate(admin, pid)
        await asyncio.wait_for(link.server_eof.wait(), 10)
        await wait_readable(conn)
        assert pool.manager.check_needed(raw(conn), INFO) is True
        async with pool.acquire() as conn2:
            assert pid_of(conn2) != pid
            await conn2.execute("SELECT 1")
        assert b"SELECT 1" in link.sent[mark:]  # the round trip was tried
        await settle(pool)
        assert pool.statistics().discarded == 1
        assert raw(conn).closed


# ---------------------------------------------------------------- notifications while idle


@pytest.mark.parametrize("autocommit", [True, False])
async def test_notification_while_idle_keeps_the_connection(
    pg_dsn: str, admin: Conn, autocommit: bool
) -> None:
    channel = f"aiolease_{uuid.uuid4().hex[:12]}"
    received: list[str] = []
    manager = CountingManager(pg_dsn, autocommit=autocommit)
    async with Pool(manager, max_size=1) as pool:
        async with pool.acquire() as conn:
            pid = pid_of(conn)
            conn.add_notify_handler(lambda n: received.append(n.payload))
            await conn.execute(f"LISTEN {channel}")
            if not autocommit:
                await conn.commit()
        await admin.execute(f"NOTIFY {channel}, 'hello'")
        await wait_readable(conn)
        # Unread data on an idle connection: suspicious, so the full check runs...
        assert manager.check_needed(raw(conn), INFO) is True
        async with pool.acquire() as conn2:
            # ...and its round trip shows the connection is alive: kept, not replaced.
            assert raw(conn2) is raw(conn)
            assert pid_of(conn2) == pid
            assert raw(conn2).pgconn.transaction_status == pq.TransactionStatus.IDLE
            assert received == ["hello"]  # delivered to psycopg's handlers as usual
            # One plain round trip, no BEGIN even when not in autocommit mode.
            assert (await last_query(admin, pid))[0] == "SELECT 1"
            await conn2.execute(f"UNLISTEN {channel}")
            if not autocommit:
                await conn2.commit()
        assert manager.checks == 1
        assert pool.statistics().discarded == 0
        assert manager.check_needed(raw(conn), INFO) is False  # quiet again


# ---------------------------------------------------------------- cancellation inside check


@pytest.mark.parametrize("autocommit", [True, False])
async def test_cancelled_during_the_verifying_round_trip(
    proxy: tuple[HoldingProxy, str], admin: Conn, autocommit: bool
) -> None:
    hp, conninfo = proxy
    channel = f"aiolease_{uuid.uuid4().hex[:12]}"
    manager = PsycopgManager(conninfo, reset_timeout=30, autocommit=autocommit)
    async with Pool(manager, max_size=1) as pool:
        async with pool.acquire() as conn:
            pid = pid_of(conn)
            await conn.execute(f"LISTEN {channel}")
            if not autocommit:
                await conn.commit()
        link = hp.links[0]
        link.stall_on = b"SELECT 1"  # the server's answer to the check never arrives
        mark = len(link.sent)
        await admin.execute(f"NOTIFY {channel}")
        await wait_readable(conn)
        task = asyncio.ensure_future(pool.acquire())
        await asyncio.wait_for(link.stalled.wait(), 10)
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await settle(pool)
        stats = pool.statistics()
        assert (stats.size, stats.idle, stats.in_use, stats.waiting) == (0, 0, 0, 0)
        assert raw(conn).closed
        assert b"BEGIN" not in link.sent[mark:]  # the check opened no transaction
        # Abandoned at once: no cancel request (psycopg's would open a second connection).
        assert len(hp.links) == 1
        async with pool.acquire() as conn2:  # capacity was not lost
            assert pid_of(conn2) != pid
            await conn2.execute("SELECT 1")


async def test_failing_notify_handler_does_not_discard_the_connection(
    pg_dsn: str, admin: Conn, caplog: pytest.LogCaptureFixture
) -> None:
    channel = f"aiolease_{uuid.uuid4().hex[:12]}"

    def handler(n: psycopg.Notify) -> None:
        raise RuntimeError(f"bad handler got {n.payload}")

    async with create_pool(pg_dsn, max_size=1) as pool:
        async with pool.acquire() as conn:
            conn.add_notify_handler(handler)
            await conn.execute(f"LISTEN {channel}")
        await admin.execute(f"NOTIFY {channel}, 'x'")
        await wait_readable(conn)
        with caplog.at_level("ERROR", logger="aiolease.pool.psycopg"):
            async with pool.acquire() as conn2:
                assert raw(conn2) is raw(conn)
                conn2.remove_notify_handler(handler)
                await conn2.execute(f"UNLISTEN {channel}")
        assert "bad handler got x" in caplog.text
        assert pool.statistics().discarded == 0


# ---------------------------------------------------------------- prepared statements resync


async def test_prepared_resync_without_an_answer_discards_the_connection(
    proxy: tuple[HoldingProxy, str],
) -> None:
    # After a lease that raised, the reset empties the prepared statements of psycopg and
    # of the server (tests/postgres/test_psycopg_prepared.py). When the server's answer
    # never comes (a silent peer), reset_timeout ends it: the release returns, the
    # connection is discarded and the next caller gets a new one.
    hp, conninfo = proxy
    async with Pool(PsycopgManager(conninfo, reset_timeout=0.3), max_size=1) as pool:
        async with pool.acquire() as conn:
            pid = pid_of(conn)
        hp.links[0].stall_on = b"DEALLOCATE ALL"
        with pytest.raises(psycopg.errors.DivisionByZero):
            async with pool.acquire() as conn:
                await conn.execute("SELECT 1/0")
        assert hp.links[0].stalled.is_set()  # the resync was sent, and held
        await settle(pool)
        assert raw(conn).closed
        assert pool.statistics().discarded == 1
        async with pool.acquire() as conn2:
            assert pid_of(conn2) != pid
            await conn2.execute("SELECT 1")
