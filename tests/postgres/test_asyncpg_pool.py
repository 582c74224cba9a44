"""aiolease.asyncpg.create_pool against the live PostgreSQL server.

Killed backends (idle and in use), a transaction left open at release, a body
cancelled mid-query, the two reset modes, bad arguments. Every table, lock key
and setting is private to the test (uuid-suffixed) and cleaned up.

Several tests kill a backend with the event loop *not running*
(:func:`terminate_blocking` uses a blocking psycopg connection): that is the
hard case, where asyncpg has not seen the server's FATAL message yet and
``Connection.is_closed()`` still says False.
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import select
import signal
import time
import uuid
import weakref
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import psycopg
import pytest

import aiolease
import aiolease._compat.asyncpg
from aiolease import Pool
from aiolease.abc import ResourceInfo
from aiolease.asyncpg import AsyncpgManager, _quiet, _socket_fd, create_pool
from driver_pools import settle
from pg_tables import temporary_table


def raw(conn: Any) -> Any:
    """The driver connection behind a pool's lease proxy (identity checks across leases)."""
    return getattr(conn, "_aiolease_origin", conn)


Connection = asyncpg.Connection

# What needs asyncpg's transport, which only its private layout gives (aiolease._compat.asyncpg).
needs_transport = pytest.mark.skipif(
    not aiolease._compat.asyncpg.PRIVATE, reason="AIOLEASE_COMPAT=public: no transport to watch"
)

# What a query on a connection whose backend was terminated may raise, depending on
# how far asyncpg got in reading the server's FATAL message and the EOF.
CONNECTION_LOST = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    OSError,
)


# ---------------------------------------------------------------------------- helpers


def terminate_blocking(dsn: str, pid: int) -> None:
    """Terminate backend ``pid`` and wait until the server reports it gone, blocking.

    Blocking on purpose: the event loop does not run meanwhile, so asyncpg
    cannot notice the FATAL message or the EOF before the pool's next checkout.
    """
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        deadline = time.monotonic() + 10.0
        while admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone():
            if time.monotonic() > deadline:
                raise AssertionError(f"backend {pid} still alive 10 s after pg_terminate_backend")
            time.sleep(0.005)


async def terminate(admin: Connection, pid: int) -> None:
    """Terminate backend ``pid`` and wait (polling the server) until it is gone."""
    assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
    for _ in range(2000):
        if not await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid):
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"backend {pid} still alive after pg_terminate_backend")


async def wait_until_sleeping(admin: Connection, pid: int) -> None:
    """Wait until backend ``pid`` is executing ``pg_sleep`` (its wait event says so). The
    query text alone is no proof: it shows as active already while the statement is being
    parsed, and a cancellation arriving between the parse and the execution finds no query
    in flight (the connection is then rightly kept)."""
    for _ in range(2000):
        state = await admin.fetchrow(
            "SELECT state, wait_event FROM pg_stat_activity WHERE pid = $1", pid
        )
        if state is not None and state["state"] == "active" and state["wait_event"] == "PgSleep":
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"backend {pid} never slept in pg_sleep")


@pytest.fixture
async def admin(pg_dsn: str) -> AsyncIterator[Connection]:
    """A separate connection for looking at and killing the pool's backends."""
    conn = await asyncpg.connect(pg_dsn)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def table(admin: Connection) -> AsyncIterator[str]:
    """A fresh table ``aiolease_t_<uuid>(v int)``, dropped afterwards."""
    async with temporary_table(admin, "aiolease_t_", "v int") as name:
        yield name


# ---------------------------------------------------------------------------- basics


async def test_create_pool_returns_an_unopened_pool(pg_dsn: str) -> None:
    pool = create_pool(pg_dsn, max_size=3, name="pg")
    assert isinstance(pool, Pool)
    assert isinstance(pool.manager, AsyncpgManager)
    assert pool.statistics().size == 0  # no I/O before open
    assert not pool.closed
    await pool.aclose()


async def test_acquire_query_release(pg_dsn: str) -> None:
    async with create_pool(pg_dsn, min_size=1, max_size=2) as pool:
        assert pool.statistics().size == 1  # min_size prefilled on open
        async with pool.acquire() as conn:
            assert isinstance(raw(conn), Connection)  # behind the lease proxy
            assert await conn.fetchval("SELECT 40 + 2") == 42
            assert pool.statistics().in_use == 1
        conn2 = await pool.acquire()
        assert raw(conn2) is raw(conn)  # the warm connection is reused
        await pool.release(conn2)
        stats = pool.statistics()
        assert (stats.idle, stats.in_use, stats.acquired, stats.created) == (1, 0, 2, 1)
    assert raw(conn).is_closed()


async def test_concurrent_tasks_share_the_connections(pg_dsn: str) -> None:
    async with create_pool(pg_dsn, max_size=3) as pool:

        async def work(i: int) -> int:
            async with pool.acquire() as conn:
                return int(await conn.fetchval("SELECT $1::int * 2", i))

        assert await asyncio.gather(*(work(i) for i in range(30))) == [i * 2 for i in range(30)]
        stats = pool.statistics()
        assert stats.created <= 3
        assert stats.acquired == 30
        assert stats.in_use == 0


async def test_connect_kwargs_reach_asyncpg(pg_dsn: str) -> None:
    settings = {"application_name": f"aiolease-{uuid.uuid4().hex[:8]}"}
    pool = create_pool(pg_dsn, max_size=1, server_settings=settings)
    async with pool, pool.acquire() as conn:
        assert await conn.fetchval("SHOW application_name") == settings["application_name"]


async def test_creation_error_goes_to_the_acquirer(pg_dsn: str) -> None:
    bad = pg_dsn.rsplit("/", 1)[0] + f"/no_such_db_{uuid.uuid4().hex[:8]}"
    async with create_pool(bad, max_size=1) as pool:
        with pytest.raises(asyncpg.InvalidCatalogNameError):
            await pool.acquire(timeout=10)
        stats = pool.statistics()
        assert (stats.size, stats.create_errors) == (0, 1)


# ---------------------------------------------------------------------------- killed backends


@pytest.mark.parametrize("how", ["loop-blocked", "loop-running"])
async def test_backend_killed_while_idle_is_replaced(
    pg_dsn: str, admin: Connection, how: str
) -> None:
    async with create_pool(pg_dsn, max_size=1) as pool:
        async with pool.acquire() as conn:
            pid = raw(conn).get_server_pid()
        if how == "loop-blocked":
            terminate_blocking(pg_dsn, pid)
            # The hard case: the loop has not run, asyncpg has not noticed.
            assert not raw(conn).is_closed()
        else:
            await terminate(admin, pid)
        async with pool.acquire() as conn2:
            assert raw(conn2) is not raw(conn)
            assert raw(conn2).get_server_pid() != pid
            assert await conn2.fetchval("SELECT 1") == 1
        await settle(pool)
        stats = pool.statistics()
        assert (stats.size, stats.created, stats.discarded, stats.closed) == (1, 2, 1, 1)
        assert raw(conn).is_closed()


async def test_every_dead_idle_connection_is_skipped(pg_dsn: str, admin: Connection) -> None:
    async with create_pool(pg_dsn, max_size=3) as pool:
        conns = [await pool.acquire() for _ in range(3)]
        pids = {raw(c).get_server_pid() for c in conns}
        for c in conns:
            await pool.release(c)
        for pid in pids:
            terminate_blocking(pg_dsn, pid)
        async with pool.acquire() as conn:
            assert raw(conn).get_server_pid() not in pids
            assert await conn.fetchval("SELECT 1") == 1
        await settle(pool)
        assert pool.statistics().discarded == 3


async def test_backend_killed_while_in_use_is_discarded(pg_dsn: str, admin: Connection) -> None:
    async with create_pool(pg_dsn, max_size=1) as pool:
        pids: list[int] = []

        async def body() -> None:
            async with pool.acquire() as conn:
                pids.append(raw(conn).get_server_pid())
                await terminate(admin, pids[0])
                await conn.fetchval("SELECT 1")

        with pytest.raises(CONNECTION_LOST):
            await body()
        pid = pids[0]
        await settle(pool)
        stats = pool.statistics()
        assert (stats.size, stats.in_use, stats.discarded, stats.closed) == (0, 0, 1, 1)
        async with pool.acquire() as conn2:
            assert raw(conn2).get_server_pid() != pid
            assert await conn2.fetchval("SELECT 1") == 1


async def test_backend_killed_in_use_without_noticing_is_not_reused(
    pg_dsn: str, admin: Connection
) -> None:
    # The body never touches the connection after the kill: release sees no error, so
    # the connection goes back idle; the next checkout must still not hand it out.
    async with create_pool(pg_dsn, max_size=1) as pool:
        async with pool.acquire() as conn:
            pid = raw(conn).get_server_pid()
            terminate_blocking(pg_dsn, pid)
        async with pool.acquire() as conn2:
            assert raw(conn2).get_server_pid() != pid
            assert await conn2.fetchval("SELECT 1") == 1


@needs_transport
async def test_backend_killed_while_held_is_not_handed_to_a_waiter(pg_dsn: str) -> None:
    # Killed with the loop blocked, then released at once: asyncpg has read nothing, and
    # a release goes straight to the waiting acquirer, without the checkout's check. The
    # release sees the unread FATAL message and EOF in the socket instead (public mode has
    # no socket to look at: the waiter's first statement fails, and is fatal).
    async with create_pool(pg_dsn, max_size=1) as pool:
        conn = await pool.acquire()
        pid = raw(conn).get_server_pid()
        waiter = asyncio.ensure_future(pool.acquire(timeout=10))
        await asyncio.sleep(0.05)  # queued
        terminate_blocking(pg_dsn, pid)
        await pool.release(conn)
        async with asyncio.timeout(10):
            conn2 = await waiter
        try:
            assert raw(conn2).get_server_pid() != pid
            assert await conn2.fetchval("SELECT 1") == 1
        finally:
            await pool.release(conn2)
        assert pool.statistics().discarded == 1


@pytest.mark.parametrize(
    "exc",
    [
        asyncpg.exceptions.ConnectionDoesNotExistError("gone"),
        asyncpg.exceptions.AdminShutdownError("terminating connection"),
        asyncpg.exceptions.InternalClientError("cannot switch to state"),
        ConnectionResetError(),
    ],
)
async def test_connection_errors_are_fatal(pg_dsn: str, exc: BaseException) -> None:
    manager = AsyncpgManager(pg_dsn)
    conn = await manager.create()
    try:
        assert manager.is_fatal(raw(conn), exc)
        assert not manager.is_fatal(raw(conn), asyncpg.exceptions.UniqueViolationError("dup"))
        assert not manager.is_fatal(raw(conn), asyncpg.exceptions.QueryCanceledError("timeout"))
        assert not manager.is_fatal(raw(conn), ValueError("app error"))
    finally:
        await manager.close(raw(conn))
    assert manager.is_fatal(raw(conn), ValueError("anything, once the connection is closed"))


async def test_application_error_in_body_keeps_the_connection(pg_dsn: str) -> None:
    async with create_pool(pg_dsn, max_size=1) as pool:
        with pytest.raises(asyncpg.exceptions.DivisionByZeroError):
            async with pool.acquire() as conn:
                await conn.fetchval("SELECT 1 / 0")
        async with pool.acquire() as conn2:
            assert raw(conn2) is raw(conn)
        assert pool.statistics().discarded == 0


@pytest.mark.parametrize("statement", ["DEALLOCATE ALL", "DISCARD ALL"])
async def test_statements_dropped_by_a_holder_cost_one_failure_not_all(
    pg_dsn: str, statement: str
) -> None:
    # asyncpg's statement cache still names the statements the server dropped: every
    # later run of a cached query on that connection failed, lease after lease.
    async with create_pool(pg_dsn, max_size=1) as pool:
        async with pool.acquire() as conn:
            await conn.fetchval("SELECT $1::int", 1)
            await conn.execute(statement)
        with pytest.raises(asyncpg.exceptions.InvalidSQLStatementNameError):
            async with pool.acquire() as conn:
                await conn.fetchval("SELECT $1::int", 2)
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT $1::int", 3) == 3
        assert pool.statistics().discarded == 1


# ---------------------------------------------------------------- check without a round trip


@needs_transport
async def test_check_needs_no_round_trip_for_a_healthy_connection(pg_dsn: str) -> None:
    manager = AsyncpgManager(pg_dsn)
    conn = await manager.create()
    info = ResourceInfo(0.0, 0.0)
    try:
        assert manager.check_needed(raw(conn), info) is False
        terminate_blocking(pg_dsn, raw(conn).get_server_pid())
        assert not raw(conn).is_closed()
        assert manager.check_needed(raw(conn), info) is True
        with pytest.raises(ConnectionError, match="unread data while idle"):
            await manager.check(raw(conn), info)
    finally:
        await manager.close(raw(conn))


@pytest.mark.parametrize("end", ["close", "abort"])
async def test_the_manager_lets_go_of_a_connection_it_closed(pg_dsn: str, end: str) -> None:
    # The manager keeps each connection's watch from create() to close() or abort(): after
    # either, nothing of the manager's keeps the connection alive.
    manager = AsyncpgManager(pg_dsn)
    conn = await manager.create()
    info = ResourceInfo(0.0, 0.0)
    manager.on_idle(conn, info)
    assert manager.check_needed(conn, info) is not aiolease._compat.asyncpg.PRIVATE
    ref = weakref.ref(conn)
    if end == "close":
        await manager.close(conn)
    else:
        manager.abort(conn)
        for _ in range(100):  # the transport's connection_lost runs on a later loop turn
            if conn.is_closed() and raw_transport_gone(conn):
                break
            await asyncio.sleep(0.01)
    del conn
    gc.collect()
    assert ref() is None


def raw_transport_gone(conn: Any) -> bool:
    transport = conn._transport
    return transport is None or bool(transport.is_closing())


def notify_blocking(dsn: str, channel: str, payload: str, conn: Connection) -> None:
    """NOTIFY from another connection and wait, blocking, until it sits unread in
    ``conn``'s socket (the event loop does not run, so asyncpg cannot read it)."""
    fd = _socket_fd(conn)
    assert fd is not None
    with psycopg.connect(dsn, autocommit=True) as other:
        other.execute(f"NOTIFY {channel}, '{payload}'")
    readable, _, _ = select.select([fd], [], [], 10.0)
    assert readable, "the notification never arrived"


@needs_transport
async def test_pending_notification_is_not_mistaken_for_a_dead_connection(
    pg_dsn: str,
) -> None:
    channel = f"aiolease_{uuid.uuid4().hex[:12]}"
    received: list[object] = []

    def listener(*args: object) -> None:
        received.append(args[3])

    async with create_pool(pg_dsn, max_size=1) as pool:
        async with pool.acquire() as conn:
            pid = raw(conn).get_server_pid()
            await conn.add_listener(channel, listener)
        notify_blocking(pg_dsn, channel, "hello", raw(conn))
        # Unread data on an idle connection: suspicious, so the full check runs...
        assert pool.manager.check_needed(raw(conn), ResourceInfo(0.0, 0.0))
        async with pool.acquire() as conn2:
            # ...and its round trip shows the connection is fine: kept, not replaced.
            assert raw(conn2).get_server_pid() == pid
            await conn2.remove_listener(channel, listener)
        assert pool.statistics().discarded == 0
        for _ in range(100):
            if received:
                break
            await asyncio.sleep(0.01)
    assert received == ["hello"]


@needs_transport
async def test_data_the_loop_read_while_idle_triggers_the_check(pg_dsn: str) -> None:
    # The other half of the race: the loop already read what the server sent (so the
    # socket is quiet again), but the connection heard from the server while idle.
    channel = f"aiolease_{uuid.uuid4().hex[:12]}"
    got = asyncio.Event()
    manager = AsyncpgManager(pg_dsn)
    conn = await manager.create()
    other = await asyncpg.connect(pg_dsn)
    info = ResourceInfo(0.0, 0.0)
    try:
        await conn.add_listener(channel, lambda *args: got.set())
        assert manager.reset_needed(raw(conn), info) is False  # released...
        manager.on_idle(raw(conn), info)  # ...and nobody waiting: idle
        assert manager.check_needed(raw(conn), info) is False  # checked out (makes the poller)...
        assert manager.reset_needed(raw(conn), info) is False
        manager.on_idle(raw(conn), info)  # ...and idle again from now on
        await other.execute(f"NOTIFY {channel}")
        await asyncio.wait_for(got.wait(), 10)
        assert _quiet(conn)  # nothing left unread in the socket...
        assert manager.check_needed(raw(conn), info) is True  # ...yet it heard something
        await manager.check(raw(conn), info)  # a notification: the round trip passes
    finally:
        await other.close()
        await manager.close(raw(conn))


async def test_killed_with_the_loop_running_is_never_handed_out(
    pg_dsn: str, admin: Connection
) -> None:
    # Whether asyncpg has read nothing, the FATAL message only, or also the EOF when
    # the next acquire comes, the dead connection must not be handed out.
    async with create_pool(pg_dsn, max_size=1) as pool:
        for _ in range(20):
            async with pool.acquire() as conn:
                pid = raw(conn).get_server_pid()
            await terminate(admin, pid)
            async with pool.acquire() as conn2:
                assert raw(conn2).get_server_pid() != pid
                assert await conn2.fetchval("SELECT 1") == 1
        await settle(pool)
        assert pool.statistics().discarded == 20


# ---------------------------------------------------------------- reset="transaction"


async def test_transaction_left_open_is_rolled_back(pg_dsn: str, table: str) -> None:
    async with create_pool(pg_dsn, max_size=1) as pool:
        async with pool.acquire() as conn:
            pid = raw(conn).get_server_pid()
            await conn.execute("BEGIN")
            await conn.execute(f"INSERT INTO {table} VALUES (1)")
            assert raw(conn).is_in_transaction()
        await settle(pool)
        async with pool.acquire() as conn2:
            assert raw(conn2).get_server_pid() == pid  # reset, not replaced
            assert not raw(conn2).is_in_transaction()
            assert await conn2.fetchval(f"SELECT count(*) FROM {table}") == 0
        assert pool.statistics().discarded == 0


async def test_asyncpg_transaction_object_left_open_is_rolled_back(pg_dsn: str, table: str) -> None:
    async with create_pool(pg_dsn, max_size=1) as pool:
        async with pool.acquire() as conn:
            tr = conn.transaction()
            await tr.start()
            await conn.execute(f"INSERT INTO {table} VALUES (1)")
        await settle(pool)
        async with pool.acquire() as conn2:
            assert raw(conn2) is raw(conn)
            assert not raw(conn2).is_in_transaction()
            # asyncpg refuses a new top-level transaction while it still tracks the old one.
            async with conn2.transaction():
                await conn2.execute(f"INSERT INTO {table} VALUES (2)")
            assert [tuple(r) for r in await conn2.fetch(f"SELECT v FROM {table}")] == [(2,)]


async def test_failed_transaction_left_open_is_rolled_back(pg_dsn: str) -> None:
    async with create_pool(pg_dsn, max_size=1) as pool:
        conns: list[Connection] = []

        async def body() -> None:
            async with pool.acquire() as conn:
                conns.append(conn)
                await conn.execute("BEGIN")
                await conn.fetchval("SELECT 1 / 0")  # the transaction is now aborted

        with pytest.raises(asyncpg.exceptions.DivisionByZeroError):
            await body()
        await settle(pool)
        async with pool.acquire() as conn2:
            assert raw(conn2) is raw(conns[0])
            assert not raw(conn2).is_in_transaction()
            assert await conn2.fetchval("SELECT 1") == 1


async def test_no_reset_round_trip_without_a_transaction(pg_dsn: str) -> None:
    manager = AsyncpgManager(pg_dsn)
    conn = await manager.create()
    info = ResourceInfo(0.0, 0.0)
    try:
        # Public mode: a round trip on every release (whether a statement still runs cannot
        # be read there: see test_a_statement_timed_out_and_caught_in_the_lease_never_reaches_
        # a_waiter).
        assert manager.reset_needed(raw(conn), info) is not aiolease._compat.asyncpg.SEES_CANCELLING
        await conn.execute("BEGIN")
        assert manager.reset_needed(raw(conn), info) is True
        await manager.reset(raw(conn), info)
        assert not raw(conn).is_in_transaction()
        assert AsyncpgManager(pg_dsn, reset="session").reset_needed(raw(conn), info) is True
    finally:
        await manager.close(raw(conn))


async def test_body_cancelled_mid_query_discards_the_busy_connection(
    pg_dsn: str, admin: Connection
) -> None:
    async with create_pool(pg_dsn, max_size=1) as pool:
        pids: list[int] = []
        started = asyncio.Event()

        async def slow() -> None:
            async with pool.acquire() as conn:
                pids.append(raw(conn).get_server_pid())
                started.set()
                await conn.fetchval("SELECT pg_sleep(10)")

        task = asyncio.create_task(slow())
        await started.wait()
        await wait_until_sleeping(admin, pids[0])
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with pool.acquire(timeout=10) as conn2:
            assert raw(conn2).get_server_pid() != pids[0]
            assert await conn2.fetchval("SELECT 1") == 1
        await settle(pool)
        stats = pool.statistics()
        assert (stats.discarded, stats.closed, stats.size) == (1, 1, 1)
    # The busy backend is gone: cancelled and closed, not left running pg_sleep.
    for _ in range(2000):
        if not await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pids[0]
        ):
            break
        await asyncio.sleep(0.005)
    else:
        raise AssertionError(f"backend {pids[0]} still alive")


# ---------------------------------------------------------------- reset="session" vs "transaction"


async def _lock_is_free(admin: Connection, key: int) -> bool:
    got = bool(await admin.fetchval("SELECT pg_try_advisory_lock($1)", key))
    if got:
        await admin.execute("SELECT pg_advisory_unlock($1)", key)
    return got


@pytest.mark.parametrize("reset", ["transaction", "session"])
async def test_session_state_across_leases(pg_dsn: str, admin: Connection, reset: Any) -> None:
    key = random.randrange(1, 2**62)
    async with create_pool(pg_dsn, max_size=1, reset=reset) as pool:
        async with pool.acquire() as conn:
            pid = raw(conn).get_server_pid()
            await conn.execute("SET statement_timeout = '12345ms'")
            await conn.execute("SELECT pg_advisory_lock($1)", key)
        await settle(pool)
        assert await _lock_is_free(admin, key) == (reset == "session")
        async with pool.acquire() as conn2:
            assert raw(conn2).get_server_pid() == pid  # same connection either way
            timeout = await conn2.fetchval("SHOW statement_timeout")
            if reset == "session":
                # Isolated: RESET ALL and pg_advisory_unlock_all() ran on release.
                assert timeout != "12345ms"
                assert await _lock_is_free(admin, key)
            else:
                # The documented trade-off: session state carries over to the next user.
                assert timeout == "12345ms"
                assert not await _lock_is_free(admin, key)
                await conn2.execute("SELECT pg_advisory_unlock_all()")
                await conn2.execute("RESET ALL")
        assert pool.statistics().discarded == 0


async def test_session_reset_restores_the_role_and_drops_temporary_tables(pg_dsn: str) -> None:
    # RESET ALL leaves ROLE and SESSION AUTHORIZATION alone, and temporary tables live on:
    # the next holder ran as the role the last one switched to, and saw its tables.
    temp = f"aiolease_tmp_{uuid.uuid4().hex[:10]}"
    async with create_pool(pg_dsn, max_size=1, reset="session") as pool:
        async with pool.acquire() as conn:
            user = await conn.fetchval("SELECT current_user")
            superuser = await conn.fetchval("SHOW is_superuser") == "on"
            try:
                await conn.execute("SET ROLE pg_monitor")
            except asyncpg.InsufficientPrivilegeError:
                pytest.skip(f"!!! SKIPPED: {user} cannot SET ROLE pg_monitor")
            await conn.execute(f"CREATE TEMPORARY TABLE {temp} (v int)")
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT current_user") == user
            assert await conn.fetchval("SELECT to_regclass($1)", temp) is None
            if superuser:
                await conn.execute("SET SESSION AUTHORIZATION pg_monitor")
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT session_user") == user
        assert pool.statistics().discarded == 0


async def test_session_reset_keeps_the_users_connection_class(pg_dsn: str) -> None:
    class Mine(asyncpg.Connection):
        __slots__ = ()

    pool = create_pool(pg_dsn, max_size=1, reset="session", connection_class=Mine)
    async with pool, pool.acquire() as conn:
        assert isinstance(raw(conn), Mine)
        assert "RESET ROLE" in raw(conn).get_reset_query()


async def test_session_reset_also_rolls_back(pg_dsn: str, table: str) -> None:
    async with create_pool(pg_dsn, max_size=1, reset="session") as pool:
        async with pool.acquire() as conn:
            await conn.execute("BEGIN")
            await conn.execute(f"INSERT INTO {table} VALUES (1)")
        await settle(pool)
        async with pool.acquire() as conn2:
            assert raw(conn2) is raw(conn)
            assert not raw(conn2).is_in_transaction()
            assert await conn2.fetchval(f"SELECT count(*) FROM {table}") == 0


def freeze_backend(pid: int) -> None:
    """SIGSTOP the server process ``pid`` (the server must run on this machine, and we
    must be allowed to signal its processes: root, or the server's own user)."""
    try:
        os.kill(pid, signal.SIGSTOP)
    except (PermissionError, ProcessLookupError) as exc:
        pytest.skip(f"!!! SKIPPED: cannot stop backend {pid} of a local server ({exc!r})")


@pytest.mark.slow
@pytest.mark.parametrize("reset", ["transaction", "session"])
async def test_reset_outlasting_reset_timeout_discards_the_connection(
    pg_dsn: str, reset: Any
) -> None:
    # The backend is frozen, so the reset's round trip (ROLLBACK of the transaction left
    # open, or the session reset) never answers: after reset_timeout the connection is
    # discarded (closed within close_timeout) and its slot freed.
    manager = AsyncpgManager(pg_dsn, reset=reset, reset_timeout=0.2, close_timeout=0.2)
    async with Pool(manager, max_size=1) as pool:
        conn = await pool.acquire()
        pid = raw(conn).get_server_pid()
        await conn.execute("BEGIN")
        loop = asyncio.get_running_loop()
        freeze_backend(pid)
        try:
            started = loop.time()
            await pool.release(conn)  # returns once the discarded connection is closed
            took = loop.time() - started
        finally:
            os.kill(pid, signal.SIGCONT)
        assert raw(conn).is_closed()
        assert took < 4.0  # reset_timeout + close_timeout, not the defaults' 5 s + 5 s
        stats = pool.statistics()
        # discarded for its failed reset, and again if its close outlasted close_timeout
        assert (stats.size, stats.in_use, stats.closed) == (0, 0, 1)
        assert stats.discarded in (1, 2)
        async with pool.acquire() as conn2:
            assert raw(conn2).get_server_pid() != pid
            assert await conn2.fetchval("SELECT 1") == 1


# ---------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"reset": "none"}, ValueError, "reset must be"),
        (
            {"reset_timeout": 0},
            ValueError,
            "reset_timeout must be a finite number of seconds > 0, got 0",
        ),
        (
            {"reset_timeout": True},
            TypeError,
            "reset_timeout must be a finite number of seconds > 0",
        ),
        (
            {"reset_timeout": float("nan")},
            ValueError,
            "reset_timeout must be a finite number of seconds > 0",
        ),
        (
            {"close_timeout": float("inf")},
            ValueError,
            "close_timeout must be a finite number of seconds > 0",
        ),
        (
            {"close_timeout": -1.0},
            ValueError,
            "close_timeout must be a finite number of seconds > 0",
        ),
        ({"close_timeout": "5"}, TypeError, "close_timeout"),
        ({"reset": "session", "connection_class": object}, TypeError, "connection_class"),
    ],
)
def test_bad_manager_arguments(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        AsyncpgManager("postgresql://unused", **kwargs)


@pytest.mark.parametrize("dsn", [5, b"postgresql://h/db", {"host": "h"}])
def test_a_dsn_that_is_not_a_str_is_named_at_the_call(dsn: object) -> None:
    # Found by a new user's probe: create_pool(5) raised "argument of type 'int' is not
    # iterable" from deep inside, naming neither the argument nor what it takes.
    with pytest.raises(TypeError, match=f"dsn must be a str or None, got {type(dsn).__name__}"):
        AsyncpgManager(dsn)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="dsn must be a str or None"):
        create_pool(dsn)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"reset": "always"}, ValueError, "reset must be"),
        ({"max_size": 0}, ValueError, "max_size must be an int >= 1"),
        ({"min_size": 3, "max_size": 2}, ValueError, "min_size"),
        ({"acquire_timeout": -1}, ValueError, "acquire_timeout"),
        ({"max_size": "10"}, TypeError, "max_size"),
    ],
)
def test_bad_create_pool_arguments(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        create_pool("postgresql://unused", **kwargs)


def test_module_is_reachable_from_the_package() -> None:
    import aiolease.asyncpg as mod

    assert mod.create_pool is create_pool
    assert aiolease.Pool is Pool


def watched(conn: Connection) -> bool:
    """Whether the connection's watch (see aiolease.asyncpg._Watch) is in its data path."""
    protocol = raw(conn)._transport.get_protocol()
    return type(protocol).__name__ == "_Watch"


@needs_transport
@pytest.mark.asyncio(loop_factories=["asyncio"])
async def test_the_watch_stays_in_the_data_path(pg_dsn: str) -> None:
    # Put in once through the transport's public set_protocol(), it stays for the
    # connection's life: idle, handed over directly, checked out from idle.
    async with create_pool(pg_dsn, max_size=1) as pool:
        async with pool.acquire() as conn:
            pass
        assert watched(conn)  # idle: watched
        holding, queued = asyncio.Event(), asyncio.Event()
        seen: list[bool] = []

        async def first() -> None:
            async with pool.acquire():
                holding.set()
                await queued.wait()

        async def second() -> None:
            await holding.wait()
            waiter = asyncio.ensure_future(pool.acquire().__aenter__())
            await asyncio.sleep(0)
            queued.set()
            conn2 = await waiter
            seen.append(watched(conn2))  # handed over directly: still watched
            assert await conn2.fetchval("SELECT 1") == 1
            await pool.release(conn2)

        await asyncio.gather(first(), second())
        assert seen == [True]
        assert watched(conn)
        async with pool.acquire() as conn3:
            assert watched(conn3)
            assert await conn3.fetchval("SELECT 2") == 2
        assert watched(conn3)
        assert pool.statistics().discarded == 0


@needs_transport
@pytest.mark.asyncio(loop_factories=["uvloop"])
async def test_on_uvloop_the_watch_stays_in_place_and_still_counts(
    pg_dsn: str, admin: Connection
) -> None:
    # uvloop's set_protocol() stops and restarts reading the socket (two syscalls), so
    # the watch is never swapped there: it stays the protocol, and only its count moves.
    assert isinstance(asyncio.get_running_loop(), pytest.importorskip("uvloop").Loop)
    async with create_pool(pg_dsn, max_size=1) as pool:
        async with pool.acquire() as conn:
            assert watched(conn)
            transport: Any = raw(conn)._transport
            watch = transport.get_protocol()
        for _ in range(3):
            async with pool.acquire() as conn2:
                assert raw(conn2) is raw(conn)
                assert transport.get_protocol() is watch  # not taken out for the checkout
                assert await conn2.fetchval("SELECT 1") == 1
            assert watch.seen == watch.received  # idle from here: the count restarts
        await terminate(admin, raw(conn).get_server_pid())
        async with pool.acquire() as conn3:
            assert raw(conn3) is not raw(conn)  # heard from the server while idle, failed its check
            assert await conn3.fetchval("SELECT 1") == 1
        await settle(pool)
        assert pool.statistics().discarded == 1


# ---------------------------------------------------------------------------- reads


async def test_large_results_and_queries_arrive_whole(pg_dsn: str) -> None:
    # A result of many chunks, and a query larger than a chunk: nothing lost or reordered.
    async with create_pool(pg_dsn, max_size=2) as pool, pool.acquire() as conn:
        text = await conn.fetchval(
            "SELECT string_agg(md5(g::text), '') FROM generate_series(1, 20000) g"
        )
        assert len(text) == 20000 * 32
        rows = await conn.fetch("SELECT g, md5(g::text) AS h FROM generate_series(1, 5000) g")
        assert [r["g"] for r in rows] == list(range(1, 5001))
        big = "x" * 300_000
        assert await conn.fetchval("SELECT length($1::text)", big) == 300_000
        assert await conn.fetchval("SELECT $1::text", big) == big


@needs_transport
async def test_the_watch_passes_the_protocol_calls_on(pg_dsn: str, admin: Connection) -> None:
    # The watch stands in for asyncpg's protocol (for good on uvloop, while idle on
    # asyncio): the calls a transport makes reach asyncpg's protocol through it.
    from aiolease.asyncpg import _Watch

    calls: list[tuple[str, tuple[Any, ...]]] = []

    class Recorder:
        def __getattr__(self, name: str) -> Any:
            def record(*args: Any) -> bool:
                calls.append((name, args))
                return name == "eof_received"

            return record

    watch = _Watch(Recorder())
    transport = object()
    error = OSError("gone")
    watch.connection_made(transport)  # type: ignore[arg-type]
    watch.data_received(b"abc")
    assert watch.eof_received() is True
    watch.pause_writing()
    watch.resume_writing()
    watch.connection_lost(error)
    assert calls == [
        ("connection_made", (transport,)),
        ("data_received", (b"abc",)),
        ("eof_received", ()),
        ("pause_writing", ()),
        ("resume_writing", ()),
        ("connection_lost", (error,)),
    ]
    assert watch.received == 1
    # And for real: a backend killed while its connection sits idle and watched reaches
    # asyncpg's connection_lost through the watch, so the connection reports closed.
    async with create_pool(pg_dsn, max_size=1) as pool:
        async with pool.acquire() as conn:
            pass
        assert watched(conn)
        await terminate(admin, raw(conn).get_server_pid())
        for _ in range(200):
            if raw(conn).is_closed():
                break
            await asyncio.sleep(0.01)
        assert raw(conn).is_closed()
        async with pool.acquire() as conn2:
            assert raw(conn2) is not raw(conn)
            assert await conn2.fetchval("SELECT 1") == 1


def test_reset_mode_is_fixed_at_construction() -> None:
    # Every release reads it: it is set once, with the manager.
    assert AsyncpgManager().reset_mode == "transaction"
    manager = AsyncpgManager(reset="session")
    assert manager.reset_mode == "session"
    with pytest.raises(AttributeError):
        manager.reset_mode = "transaction"  # type: ignore[misc]
