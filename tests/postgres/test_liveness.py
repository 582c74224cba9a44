"""Silent peers, connect timeouts and failover for the asyncpg and psycopg pools.

Through :class:`aiolease.testing.FaultProxy` in front of the live PostgreSQL.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import psycopg
import pytest

import aiolease
import aiolease.asyncpg
import aiolease.psycopg
from aiolease._compat.asyncpg import HAVE_SOCKET, connection_socket
from aiolease._compat.psycopg import PRIVATE as PSYCOPG_BOUNDED
from aiolease._compat.psycopg import BoundedCancelConnection
from aiolease._lease import unwrap
from aiolease._liveness import (
    KEEPALIVE_COUNT,
    KEEPALIVE_IDLE,
    KEEPALIVE_INTERVAL,
    SILENT_PEER_BOUND,
)
from aiolease.testing import FaultProxy
from cancelling import cancel_and_time

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(60)]

DRIVERS = ["asyncpg", "psycopg"]


def _via(dsn: str, address: tuple[str, int]) -> str:
    parts = urlsplit(dsn)
    netloc = parts.netloc.rsplit("@", 1)
    auth = netloc[0] + "@" if len(netloc) == 2 else ""
    return urlunsplit(parts._replace(netloc=f"{auth}{address[0]}:{address[1]}"))


def _pool(driver: str, dsn: str, **options: Any) -> aiolease.Pool[Any]:
    if driver == "asyncpg":
        return aiolease.asyncpg.create_pool(dsn, **options)
    return aiolease.psycopg.create_pool(dsn, **options)


async def _select1(driver: str, conn: Any) -> None:
    if driver == "asyncpg":
        await conn.fetchval("SELECT 1")
    else:
        await (await conn.execute("SELECT 1")).fetchone()


def _fd_of(driver: str, conn: Any) -> int:
    if driver == "asyncpg":
        return int(connection_socket(conn).fileno())
    return int(conn.pgconn.socket)


def _options(fd: int) -> dict[str, int]:
    sock = socket.socket(fileno=socket.dup(fd))
    try:
        got = {"keepalive": sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)}
        for name in ("TCP_KEEPIDLE", "TCP_KEEPINTVL", "TCP_KEEPCNT", "TCP_USER_TIMEOUT"):
            if hasattr(socket, name):
                got[name] = sock.getsockopt(socket.IPPROTO_TCP, getattr(socket, name))
        return got
    finally:
        sock.close()


@pytest.fixture
def tcp_dsn(pg_dsn: str) -> str:
    host = urlsplit(pg_dsn).hostname or ""
    if host.startswith("/") or (host in ("", "localhost") and "host=" in pg_dsn):
        pytest.skip("needs a TCP DSN")
    return pg_dsn


@pytest.fixture
async def proxy(tcp_dsn: str) -> AsyncIterator[FaultProxy]:
    parts = urlsplit(tcp_dsn)
    async with FaultProxy(parts.hostname or "127.0.0.1", parts.port or 5432) as p:
        yield p


@pytest.mark.parametrize("driver", DRIVERS)
async def test_keepalive_is_on_by_default(driver: str, tcp_dsn: str) -> None:
    if driver == "asyncpg" and not HAVE_SOCKET:
        pytest.skip("public mode: asyncpg's socket is out of reach (command_timeout bounds it)")
    async with _pool(driver, tcp_dsn, max_size=1) as pool, pool.acquire() as conn:
        got = _options(_fd_of(driver, conn))
    assert got["keepalive"] == 1
    assert got.get("TCP_KEEPIDLE", KEEPALIVE_IDLE) == KEEPALIVE_IDLE
    assert got.get("TCP_KEEPINTVL", KEEPALIVE_INTERVAL) == KEEPALIVE_INTERVAL
    assert got.get("TCP_KEEPCNT", KEEPALIVE_COUNT) == KEEPALIVE_COUNT
    assert got.get("TCP_USER_TIMEOUT", SILENT_PEER_BOUND * 1000) == SILENT_PEER_BOUND * 1000


async def test_psycopg_keeps_the_users_keepalive_settings(tcp_dsn: str) -> None:
    dsn = tcp_dsn + ("&" if "?" in tcp_dsn else "?") + "keepalives_idle=30"
    pool = _pool("psycopg", dsn, max_size=1, keepalives_count=7)
    async with pool, pool.acquire() as conn:
        got = _options(_fd_of("psycopg", conn))
    assert got.get("TCP_KEEPIDLE", 30) == 30
    assert got.get("TCP_KEEPCNT", 7) == 7


def test_public_mode_bounds_asyncpg_operations_instead() -> None:
    manager = aiolease.asyncpg.AsyncpgManager("postgresql://x@127.0.0.1/db")
    if HAVE_SOCKET:
        assert "command_timeout" not in manager.connect_kwargs
    else:
        assert manager.connect_kwargs["command_timeout"] == aiolease.asyncpg.PUBLIC_COMMAND_TIMEOUT


@pytest.mark.parametrize("driver", DRIVERS)
async def test_a_hung_connect_is_bounded(driver: str, proxy: FaultProxy, tcp_dsn: str) -> None:
    proxy.blackhole()  # accepts, then silence: no server greeting ever
    loop = asyncio.get_running_loop()
    timeout = 1.0 if driver == "asyncpg" else 2.0  # libpq counts whole seconds, at least 2
    pool = _pool(driver, _via(tcp_dsn, proxy.address), max_size=1, connect_timeout=timeout)
    async with pool:
        start = loop.time()
        with pytest.raises((TimeoutError, OSError, psycopg.OperationalError)) as caught:
            async with pool.acquire():
                pass
        assert loop.time() - start < timeout + 1.5
        assert "timeout" in str(caught.value)  # says what timed out: never a bare TimeoutError()
        stats = pool.statistics()
        assert stats.size == 0  # the slot came back
        assert stats.in_use == 0


@pytest.mark.parametrize("driver", DRIVERS)
async def test_a_short_partition_costs_nothing(
    driver: str, proxy: FaultProxy, tcp_dsn: str
) -> None:
    """A partition that heals within the caller's timeout delays a query, as over a real
    network (TCP holds what it cannot send yet): the query completes on the same
    connection and the pool keeps it."""
    async with _pool(driver, _via(tcp_dsn, proxy.address), max_size=1) as pool:
        async with pool.acquire() as conn:
            await _select1(driver, conn)
        proxy.blackhole()

        async def query() -> None:
            async with asyncio.timeout(10), pool.acquire() as conn:
                await _select1(driver, conn)

        task = asyncio.create_task(query())
        done, _ = await asyncio.wait([task], timeout=0.3)
        assert not done  # held by the partition
        proxy.heal()
        await task
        stats = pool.statistics()
        assert (stats.created, stats.discarded, stats.size) == (1, 0, 1)


async def test_psycopg_hung_connect_to_several_hosts_is_bounded_with_a_message(
    proxy: FaultProxy, tcp_dsn: str
) -> None:
    # libpq's connect_timeout is per host: two silent hosts outlast the pool's own bound
    # around the whole connect, whose TimeoutError names the pool and the bound.
    proxy.blackhole()
    host, port = proxy.address
    conninfo = f"host={host},{host} port={port},{port} dbname=unused user=unused"
    pool = aiolease.psycopg.create_pool(conninfo, max_size=1, connect_timeout=2)
    async with pool:
        with pytest.raises(TimeoutError, match=f"{host}:{port},{host}:{port}/unused.*2 s"):
            async with pool.acquire():
                pass
        assert pool.statistics().size == 0


@pytest.mark.slow
@pytest.mark.parametrize("driver", DRIVERS)
async def test_cancelled_operation_on_a_silent_peer_ends_and_the_pool_recovers(
    driver: str, proxy: FaultProxy, tcp_dsn: str
) -> None:
    loop = asyncio.get_running_loop()
    pool = _pool(driver, _via(tcp_dsn, proxy.address), max_size=2)  # default close_timeout
    async with pool:
        async with pool.acquire() as conn:
            await _select1(driver, conn)
        started = asyncio.Event()

        async def stuck() -> None:
            # Silent from the moment the connection is handed out (in public mode its
            # checkout from idle is verified with a round trip, which must still pass).
            async with pool.acquire() as conn:
                proxy.blackhole()
                started.set()
                await _select1(driver, conn)

        task = asyncio.create_task(stuck())
        async with asyncio.timeout(10):
            await started.wait()
        await asyncio.sleep(0.2)
        assert not task.done()
        start = loop.time()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # asyncpg: the release closes the connection, whose statement is still being
        # cancelled: CANCEL_GRACE (0.5 s), not close_timeout (5 s), then it is cut (asyncpg's
        # close waits for the cancel, which nothing answers). psycopg: the cancelled query
        # gets CANCEL_GRACE too (aiolease._compat.psycopg); in public mode psycopg's own
        # bound, a 5 s cancel request then 5 s for the query to end.
        bounded = driver == "asyncpg" or PSYCOPG_BOUNDED
        assert loop.time() - start < (2.0 if bounded else 12.0)
        async with asyncio.timeout(2.0 if bounded else 5.0):
            while pool.statistics().size:  # noqa: ASYNC110 - the pool's background close
                await asyncio.sleep(0.05)
        proxy.heal()
        start = loop.time()
        async with pool.acquire(timeout=5) as conn:
            await _select1(driver, conn)
        assert loop.time() - start < 2.0
        assert pool.statistics().in_use == 0


# psycopg: a cancelled query gets CANCEL_GRACE (aiolease._compat.psycopg). In public mode
# psycopg's own bounds apply instead: a 5 s cancel request, then 5 s for the query to end.
PSYCOPG_CANCEL_BOUND = BoundedCancelConnection.cancel_grace + 1.0 if PSYCOPG_BOUNDED else 12.0


@pytest.mark.slow  # public mode: psycopg's own 10 s
@pytest.mark.parametrize("fault", ["blackhole", "half_open"])
async def test_psycopg_query_timed_out_on_a_silent_peer_ends_within_the_grace(
    fault: str, proxy: FaultProxy, tcp_dsn: str
) -> None:
    """The chaos suite's blackhole and half-open runs, reduced to one query under the
    application's timeout. psycopg's own wait holds the cancelled task for a cancel request
    and then for the query's end, 5 s each, before it closes the connection; the pool's
    connections give both CANCEL_GRACE together. The caller's TimeoutError is unchanged and
    the pool serves again as soon as the fault ends."""
    loop = asyncio.get_running_loop()
    async with _pool("psycopg", _via(tcp_dsn, proxy.address), max_size=1) as pool:
        async with pool.acquire() as conn:
            await _select1("psycopg", conn)
        with pytest.raises(TimeoutError) as caught:  # noqa: PT012 - the block under test
            async with asyncio.timeout(0.5) as scope, pool.acquire() as conn:
                getattr(proxy, fault)()
                await conn.execute("SELECT pg_sleep(30)")
        ended = loop.time() - (scope.when() or 0.0)
        assert type(caught.value) is TimeoutError
        current = asyncio.current_task()
        assert current is not None
        assert current.cancelling() == 0
        assert ended < PSYCOPG_CANCEL_BOUND, f"ended {ended:.2f} s after the timeout"
        async with asyncio.timeout(2.0):
            while pool.statistics().size:  # noqa: ASYNC110 - the pool's background close
                await asyncio.sleep(0.05)
        assert pool.statistics().discarded == 1
        proxy.heal()
        start = loop.time()
        async with pool.acquire(timeout=5) as conn:
            await _select1("psycopg", conn)
        assert loop.time() - start < 2.0  # the goal is 1 s; slack for a loaded machine


async def test_psycopg_query_cancelled_on_a_live_server_keeps_its_connection(
    tcp_dsn: str,
) -> None:
    """A live server answers the cancel request at once: the query ends with QueryCanceled
    inside the driver, the cancellation goes on, and the connection is kept."""
    async with _pool("psycopg", tcp_dsn, max_size=1) as pool:
        async with pool.acquire() as conn:
            pid = conn.info.backend_pid
            expected = BoundedCancelConnection if PSYCOPG_BOUNDED else psycopg.AsyncConnection
            assert type(unwrap(conn)) is expected
        started = asyncio.Event()

        async def op() -> None:
            async with pool.acquire() as conn:
                started.set()
                await conn.execute("SELECT pg_sleep(30)")

        task = asyncio.create_task(op())
        await started.wait()
        await asyncio.sleep(0.2)  # the query is running on the server
        assert await cancel_and_time(task) < 2.0
        async with pool.acquire(timeout=5) as conn:
            assert conn.info.backend_pid == pid
            await _select1("psycopg", conn)
        assert pool.statistics().discarded == 0


async def test_psycopg_second_cancellation_during_the_grace_ends_it_at_once(
    proxy: FaultProxy, tcp_dsn: str
) -> None:
    """A second cancellation while the first one's query is still being cancelled closes
    the connection and propagates at once (psycopg's own wait does the same in public
    mode: 3.3.8 and later close the connection, 3.3.7 leaves it to the pool)."""
    loop = asyncio.get_running_loop()

    class LongGrace(BoundedCancelConnection):
        cancel_grace = 5.0  # wide enough that the second cancellation lands inside it

    cls = LongGrace if PSYCOPG_BOUNDED else psycopg.AsyncConnection
    host, port = proxy.address
    conn = await cls.connect(tcp_dsn, host=host, port=port, autocommit=True)
    try:
        task = asyncio.create_task(conn.execute("SELECT pg_sleep(30)"))
        await asyncio.sleep(0.2)
        proxy.blackhole()
        task.cancel()
        await asyncio.sleep(0.2)
        assert not task.done()  # cancelling: nothing answers the cancel request
        start = loop.time()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert loop.time() - start < 1.0
        if PSYCOPG_BOUNDED:
            assert conn.closed
    finally:
        await conn.close()


def _fatal_message() -> bytes:
    body = b"SFATAL\0VFATAL\0C57P01\0Mterminating connection due to administrator command\0\0"
    return b"E" + struct.pack("!i", len(body) + 4) + body


def _inject(conn: Any, data: bytes) -> None:
    """Data arriving on the connection's socket, as the event loop hands it over."""
    conn._transport.get_protocol().data_received(data)


async def test_asyncpg_internal_client_error_after_a_fatal_before_eof(tcp_dsn: str) -> None:
    """What the chaos runs saw as ``InternalClientError('cannot switch to state 15;
    another operation (2) is in progress')``: the server's FATAL message (a terminated
    backend) read before the socket's EOF puts asyncpg's protocol in its error-consuming
    state (2) while the connection still reports itself open; the next simple query
    (state 15) fails that way. No connection was handed out mid-operation.

    Idle in the pool, such a connection is never handed out; in a holder's hands, the
    error is fatal and the connection is discarded."""
    async with aiolease.asyncpg.create_pool(tcp_dsn, max_size=1) as pool:
        async with pool.acquire() as conn:
            first = unwrap(conn)  # the driver connection (the lease proxy ends with the lease)
        # Idle: the FATAL arrives through the transport's protocol, the EOF not yet.
        _inject(first, _fatal_message())
        assert not first.is_closed()
        async with pool.acquire() as conn:
            assert unwrap(conn) is not first
            assert await conn.fetchval("SELECT 1") == 1
        # Held: the holder's next statement fails; the connection is not reused.
        async with pool.acquire() as conn:
            held = unwrap(conn)
            _inject(conn, _fatal_message())
            with pytest.raises(asyncpg.exceptions.InternalClientError, match="another operation"):
                await conn.execute("SELECT 1")
            with pytest.raises(asyncpg.exceptions.InterfaceError, match="closed"):
                await conn.execute("SELECT 1")  # and then it says closed
        async with pool.acquire() as conn:
            assert unwrap(conn) is not held
            assert await conn.fetchval("SELECT 1") == 1


# ---------------------------------------------------------------- failover


async def _set_read_only(dsn: str, on: bool) -> None:
    """Make the (test's own) database read-only for new sessions, or writable again."""
    conn = await asyncpg.connect(dsn, server_settings={"default_transaction_read_only": "off"})
    try:
        db = await conn.fetchval("SELECT current_database()")
        assert db.startswith("aiolease_failover_"), f"will not make {db!r} read-only"
        flag = "on" if on else "off"
        await conn.execute(f'ALTER DATABASE "{db}" SET default_transaction_read_only = {flag}')
    finally:
        await conn.close()


async def _write(driver: str, conn: Any, table: str) -> None:
    if driver == "asyncpg":
        await conn.execute(f"INSERT INTO {table} VALUES (1)")
    else:
        await conn.execute(f"INSERT INTO {table} VALUES (1)")


@pytest.fixture
async def own_db(pg_dsn: str) -> AsyncIterator[str]:
    """A database of the test's own (a read-only switch is per database: the shared one is
    never touched), dropped afterwards."""
    name = f"aiolease_failover_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        parts = urlsplit(pg_dsn)
        yield urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
async def rw_table(own_db: str) -> Callable[[], str]:
    """A table in the test's own database (dropped with it)."""
    name = "aiolease_failover_t"
    conn = await asyncpg.connect(own_db)
    await conn.execute(f"CREATE TABLE IF NOT EXISTS {name} (id int)")
    await conn.close()
    return lambda: name


@pytest.mark.parametrize("driver", DRIVERS)
async def test_read_only_server_expires_the_whole_pool(
    driver: str, own_db: str, rw_table: Callable[[], str]
) -> None:
    table = rw_table()
    await _set_read_only(own_db, True)
    async with _pool(driver, own_db, max_size=3) as pool:
        # Three connections to the "demoted" server, all idle in the pool.
        leases = [await pool.acquire() for _ in range(3)]
        for conn in leases:
            await pool.release(conn)
        await _set_read_only(own_db, False)  # "failover done": new sessions are writable
        with pytest.raises((asyncpg.exceptions.ReadOnlySQLTransactionError, psycopg.Error)):
            async with pool.acquire() as conn:
                await _write(driver, conn, table)
        async with asyncio.timeout(5):
            while pool.statistics().size:  # noqa: ASYNC110 - the expiry runs in a task
                await asyncio.sleep(0.02)
        # Every later write goes to a fresh (writable) connection: no second failure.
        for _ in range(3):
            async with pool.acquire() as conn:
                await _write(driver, conn, table)


async def _backend(driver: str, conn: Any) -> int:
    if driver == "asyncpg":
        return int(await conn.fetchval("SELECT pg_backend_pid()"))
    row = await (await conn.execute("SELECT pg_backend_pid()")).fetchone()
    return int(row[0])


async def _enter(pool: aiolease.Pool[Any]) -> tuple[Any, Any]:
    """A lease entered as ``async with`` enters it, to be left with :func:`_refused_write`."""
    lease = pool.acquire()
    return lease, await lease.__aenter__()


async def _refused_write(driver: str, lease: Any, conn: Any, table: str) -> None:
    """A write the server refuses as read-only, leaving the lease with that error as
    ``async with`` does (the pool judges the error there)."""
    with pytest.raises((asyncpg.exceptions.ReadOnlySQLTransactionError, psycopg.Error)) as caught:
        await _write(driver, conn, table)
    await lease.__aexit__(caught.type, caught.value, caught.tb)


async def _expiry_settled() -> None:
    """Let an expiry the pool may have started (a task) run to its end."""
    for _ in range(20):
        await asyncio.sleep(0.01)


async def _backends_of_two(driver: str, pool: aiolease.Pool[Any]) -> set[int]:
    async with pool.acquire() as a, pool.acquire() as b:
        return {await _backend(driver, a), await _backend(driver, b)}


@pytest.mark.parametrize("driver", DRIVERS)
async def test_a_session_that_made_itself_read_only_is_not_a_failover(
    driver: str, own_db: str, rw_table: Callable[[], str]
) -> None:
    """A holder's own ``SET default_transaction_read_only = on`` and then a write: the
    server still is a writable primary, so the other connections stay (only the one whose
    session was turned read-only is replaced)."""
    table = rw_table()
    async with _pool(driver, own_db, max_size=3) as pool:
        kept = await _backends_of_two(driver, pool)
        lease, conn = await _enter(pool)
        assert await _backend(driver, conn) in kept
        async with pool.acquire() as other:
            assert await _backend(driver, other) in kept
            third, conn = await _enter(pool)
            await conn.execute("SET default_transaction_read_only = on")
            await _refused_write(driver, third, conn, table)
        await lease.__aexit__(None, None, None)
        await _expiry_settled()
        assert pool.statistics().closed == 1
        assert await _backends_of_two(driver, pool) == kept, (
            "a holder's own SET expired the pool's other connections"
        )


@pytest.mark.parametrize("driver", DRIVERS)
async def test_a_failover_error_on_a_connection_from_before_the_expiry_expires_nothing_more(
    driver: str, own_db: str, rw_table: Callable[[], str]
) -> None:
    """Holders of the old server's connections get their errors one after another, after
    the first one expired the pool: the fresh connections made since are kept."""
    table = rw_table()
    await _set_read_only(own_db, True)
    async with _pool(driver, own_db, max_size=5) as pool:
        old = [await _enter(pool) for _ in range(3)]
        await _set_read_only(own_db, False)  # "failover done"
        await _refused_write(driver, *old[0], table)
        await _expiry_settled()
        fresh = await _backends_of_two(driver, pool)  # connections to the "new primary"
        for lease, conn in old[1:]:
            await _refused_write(driver, lease, conn, table)
        await _expiry_settled()
        assert await _backends_of_two(driver, pool) == fresh, "the fresh connections expired"


@pytest.mark.parametrize("driver", DRIVERS)
async def test_writes_to_a_read_only_database_expire_the_pool_once(
    driver: str, own_db: str, rw_table: Callable[[], str]
) -> None:
    """A database (or role) read-only by configuration, written to by mistake again and
    again: the first refusal expires the pool (it may be a demoted server); when the fresh
    connections find the server read-only too, reconnecting did not help, and later
    refusals replace only the connection that got them, not every connection each time."""
    table = rw_table()
    await _set_read_only(own_db, True)
    async with _pool(driver, own_db, max_size=3) as pool:
        await _refused_write(driver, *await _enter(pool), table)
        await _expiry_settled()
        kept = await _backends_of_two(driver, pool)
        async with pool.acquire(), pool.acquire():  # the third lease is a new connection
            lease, conn = await _enter(pool)
            await _refused_write(driver, lease, conn, table)
        await _expiry_settled()
        assert await _backends_of_two(driver, pool) == kept, "a second refusal expired the pool"


@pytest.mark.parametrize("driver", DRIVERS)
async def test_a_read_only_transaction_of_the_user_is_not_a_failover(
    driver: str, own_db: str, rw_table: Callable[[], str]
) -> None:
    table = rw_table()
    async with _pool(driver, own_db, max_size=2) as pool:
        with pytest.raises((asyncpg.exceptions.ReadOnlySQLTransactionError, psycopg.Error)):
            async with pool.atomic(readonly=True) as tx:
                await _write(driver, tx.connection, table)
        assert pool.statistics().closed == 0  # kept: the server is fine


@pytest.mark.slow
async def test_asyncpg_atomic_cancelled_on_a_silent_peer_ends(
    proxy: FaultProxy, tcp_dsn: str
) -> None:
    """Found by the chaos suite (asyncpg, blackhole): workers stuck for good, until
    atomic's cleanup was bounded by cleanup_timeout; then the pool served again only
    after cleanup_timeout (5 s), until the ROLLBACK behind the statement being cancelled
    got the cancel grace (0.5 s) and the abandoned connection was cut."""
    loop = asyncio.get_running_loop()
    async with aiolease.asyncpg.create_pool(_via(tcp_dsn, proxy.address), max_size=1) as pool:

        async def op() -> None:
            async with asyncio.timeout(0.5), pool.acquire() as conn, aiolease.atomic(conn):
                await conn.execute("SELECT 1")
                proxy.blackhole()
                await conn.execute("SELECT 2")

        task = asyncio.create_task(op())
        done, _ = await asyncio.wait({task}, timeout=3.0)  # its timeout + grace + slack
        proxy.reset()  # frees a stuck task: its connection is cut
        with pytest.raises(TimeoutError):
            await task
        assert done, "the transaction's exit was still waiting 2.5 s after its timeout"
        proxy.heal()
        start = loop.time()
        async with pool.acquire(timeout=5) as conn:  # the slot is free: a new connection
            assert await conn.fetchval("SELECT 1") == 1
        assert loop.time() - start < 2.0
