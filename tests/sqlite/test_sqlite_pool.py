"""aiolease.sqlite.create_pool over aiosqlite, on real database files under tmp_path.

WAL journaling, the busy timeout and the other pragmas on every connection,
one thread per connection, a transaction left open at release, concurrent
tasks, closed connections, bad arguments.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import aiosqlite
import pytest

from aiolease.abc import ResourceInfo
from aiolease.sqlite import DEFAULT_PRAGMAS, SqliteManager, create_pool
from driver_pools import settle


def raw(conn: Any) -> Any:
    """The driver connection behind a pool's lease proxy (identity checks across leases)."""
    return getattr(conn, "_aiolease_origin", conn)


async def pragma(conn: aiosqlite.Connection, name: str) -> Any:
    async with conn.execute(f"PRAGMA {name}") as cur:
        row = await cur.fetchone()
    assert row is not None
    return row[0]


async def scalar(conn: aiosqlite.Connection, sql: str) -> Any:
    async with conn.execute(sql) as cur:
        row = await cur.fetchone()
    assert row is not None
    return row[0]


def exists(path: Path) -> bool:
    return path.exists()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "test.db"


# ---------------------------------------------------------------------------- pragmas


async def test_create_pool_returns_an_unopened_pool(db: Path) -> None:
    pool = create_pool(db, max_size=2, name="lite")
    assert isinstance(pool.manager, SqliteManager)
    assert pool.statistics().size == 0
    assert not exists(db)  # no I/O before open
    await pool.aclose()


async def test_every_connection_gets_wal_busy_timeout_and_pragmas(db: Path) -> None:
    async with create_pool(db, min_size=3, max_size=3) as pool:
        conns = [await pool.acquire() for _ in range(3)]
        try:
            for conn in conns:
                assert await pragma(conn, "journal_mode") == "wal"
                assert await pragma(conn, "busy_timeout") == DEFAULT_PRAGMAS["busy_timeout"]
                assert await pragma(conn, "synchronous") == 1  # NORMAL
                assert await pragma(conn, "foreign_keys") == 1
                assert conn.isolation_level is None  # autocommit: transactions are explicit
        finally:
            for conn in conns:
                await pool.release(conn)


async def test_pragmas_replace_the_defaults(db: Path) -> None:
    async with (
        create_pool(db, max_size=1, pragmas={"busy_timeout": 1234}) as pool,
        pool.acquire() as conn,
    ):
        assert await pragma(conn, "busy_timeout") == 1234
        assert await pragma(conn, "journal_mode") == "delete"  # not asked for: SQLite's default


async def test_connect_kwargs_reach_sqlite(db: Path) -> None:
    async with (
        create_pool(db, max_size=1, isolation_level="DEFERRED") as pool,
        pool.acquire() as conn,
    ):
        assert conn.isolation_level == "DEFERRED"


async def test_memory_database_skips_wal() -> None:
    async with create_pool(":memory:", max_size=1) as pool, pool.acquire() as conn:
        assert await pragma(conn, "journal_mode") == "memory"
        assert await pragma(conn, "busy_timeout") == DEFAULT_PRAGMAS["busy_timeout"]


async def test_a_read_only_database_is_served_with_the_default_pragmas(db: Path) -> None:
    # A database opened read-only (mode=ro; also a file on read-only media, or without
    # write permission) cannot change its journal mode, and needs none: nothing writes.
    # Every connection failed at creation with "attempt to write a readonly database".
    import sqlite3

    setup = sqlite3.connect(db)
    setup.execute("CREATE TABLE t (v INTEGER)")
    setup.execute("INSERT INTO t VALUES (1)")
    setup.commit()
    setup.close()
    async with create_pool(f"file:{db}?mode=ro", uri=True, max_size=2) as pool:
        async with pool.acquire() as conn:
            assert await scalar(conn, "SELECT v FROM t") == 1
            assert await pragma(conn, "journal_mode") == "delete"  # the file's own
            assert await pragma(conn, "busy_timeout") == DEFAULT_PRAGMAS["busy_timeout"]
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            async with pool.atomic() as tx:
                await tx.connection.execute("INSERT INTO t VALUES (2)")
        async with pool.acquire() as conn:
            assert await scalar(conn, "SELECT count(*) FROM t") == 1


async def test_a_writer_waits_for_the_lock_instead_of_failing(db: Path) -> None:
    async with create_pool(db, max_size=2) as pool:
        async with pool.acquire() as conn:
            await conn.execute("CREATE TABLE t (v INTEGER)")
        holder = await pool.acquire()
        await holder.execute("BEGIN IMMEDIATE")  # holds the write lock
        await holder.execute("INSERT INTO t VALUES (1)")

        async def write() -> None:
            async with pool.acquire() as conn:
                await conn.execute("INSERT INTO t VALUES (2)")  # blocks on the lock

        writer = asyncio.create_task(write())
        await asyncio.sleep(0.05)
        assert not writer.done()  # waiting inside busy_timeout, not failed
        await holder.execute("COMMIT")
        await pool.release(holder)
        await asyncio.wait_for(writer, 10)
        async with pool.acquire() as conn:
            assert await scalar(conn, "SELECT count(*) FROM t") == 2


async def test_readers_do_not_block_the_writer_in_wal(db: Path) -> None:
    async with create_pool(db, max_size=2) as pool:
        async with pool.acquire() as conn:
            await conn.execute("CREATE TABLE t (v INTEGER)")
            await conn.execute("INSERT INTO t VALUES (1)")
        async with pool.acquire() as reader, pool.acquire() as writer:
            await reader.execute("BEGIN")
            assert await scalar(reader, "SELECT count(*) FROM t") == 1  # read snapshot
            await writer.execute("INSERT INTO t VALUES (2)")  # no SQLITE_BUSY under WAL
            assert await scalar(reader, "SELECT count(*) FROM t") == 1  # still the snapshot
            await reader.execute("COMMIT")
            assert await scalar(reader, "SELECT count(*) FROM t") == 2


# ---------------------------------------------------------------------------- threads


async def test_each_connection_runs_in_its_own_thread(db: Path) -> None:
    async with create_pool(db, max_size=3) as pool:
        conns = [await pool.acquire() for _ in range(3)]
        try:
            idents = []
            for conn in conns:
                await conn.create_function("thread_id", 0, threading.get_ident)
                idents.append(await scalar(conn, "SELECT thread_id()"))
            assert len(set(idents)) == 3
            assert threading.get_ident() not in idents
        finally:
            for conn in conns:
                await pool.release(conn)


async def test_connection_threads_end_when_the_pool_closes(db: Path) -> None:
    async with create_pool(db, max_size=2) as pool:
        idents = set()
        conns = [await pool.acquire(), await pool.acquire()]
        for conn in conns:
            await conn.create_function("thread_id", 0, threading.get_ident)
            idents.add(await scalar(conn, "SELECT thread_id()"))
            await pool.release(conn)
        assert idents <= {t.ident for t in threading.enumerate()}
    for _ in range(500):
        if not idents & {t.ident for t in threading.enumerate()}:
            break
        await asyncio.sleep(0.01)
    assert not idents & {t.ident for t in threading.enumerate()}


# ---------------------------------------------------------------------------- reset and discard


async def test_transaction_left_open_is_rolled_back(db: Path) -> None:
    async with create_pool(db, max_size=1) as pool:
        async with pool.acquire() as conn:
            await conn.execute("CREATE TABLE t (v INTEGER)")
        async with pool.acquire() as conn:
            await conn.execute("BEGIN")
            await conn.execute("INSERT INTO t VALUES (1)")
            assert raw(conn).in_transaction
        await settle(pool)
        async with pool.acquire() as conn2:
            assert raw(conn2) is raw(conn)  # rolled back and reused, not replaced
            assert not raw(conn2).in_transaction
            assert await scalar(conn2, "SELECT count(*) FROM t") == 0
        stats = pool.statistics()
        assert (stats.discarded, stats.created) == (0, 1)


async def test_no_reset_work_without_a_transaction(db: Path) -> None:
    manager = SqliteManager(db)
    conn = await manager.create()
    info = ResourceInfo(0.0, 0.0)
    try:
        assert manager.reset_needed(raw(conn), info) is False
        await conn.execute("BEGIN")
        assert manager.reset_needed(raw(conn), info) is True
        await manager.reset(raw(conn), info)
        assert not raw(conn).in_transaction
    finally:
        await manager.close(raw(conn))


async def test_connection_closed_in_the_body_is_discarded(db: Path) -> None:
    async with create_pool(db, max_size=1) as pool:
        async with pool.acquire() as conn:
            await conn.close()
        await settle(pool)
        stats = pool.statistics()
        assert (stats.discarded, stats.size, stats.idle) == (1, 0, 0)
        async with pool.acquire() as conn2:
            assert raw(conn2) is not raw(conn)
            assert await scalar(conn2, "SELECT 1") == 1


async def test_connection_closed_while_idle_is_discarded(db: Path) -> None:
    async with create_pool(db, max_size=1) as pool:
        async with pool.acquire() as conn:
            pass
        await raw(conn).close()  # behind the pool's back, while idle
        async with pool.acquire() as conn2:
            assert raw(conn2) is not raw(conn)
            assert await scalar(conn2, "SELECT 1") == 1
        await settle(pool)
        assert pool.statistics().discarded == 1


async def test_check_rejects_only_closed_connections(db: Path) -> None:
    manager = SqliteManager(db)
    conn = await manager.create()
    info = ResourceInfo(0.0, 0.0)
    assert manager.check_needed(raw(conn), info) is False  # an open one: no check awaited
    await manager.check(raw(conn), info)
    await manager.close(raw(conn))
    assert manager.check_needed(raw(conn), info) is True
    with pytest.raises(ConnectionError):
        await manager.check(raw(conn), info)
    with pytest.raises(ConnectionError):
        await manager.reset(raw(conn), info)


# ---------------------------------------------------------------------------- concurrency


async def test_concurrent_tasks_share_the_connections(db: Path) -> None:
    async with create_pool(db, max_size=3) as pool:
        async with pool.acquire() as conn:
            await conn.execute("CREATE TABLE t (task INTEGER, i INTEGER)")

        async def work(task: int) -> None:
            for i in range(5):
                async with pool.acquire() as conn:
                    await conn.execute("BEGIN IMMEDIATE")
                    await conn.execute("INSERT INTO t VALUES (?, ?)", (task, i))
                    await conn.execute("COMMIT")

        await asyncio.gather(*(work(task) for task in range(20)))
        async with pool.acquire() as conn:
            assert await scalar(conn, "SELECT count(*) FROM t") == 100
            assert await scalar(conn, "SELECT count(DISTINCT task) FROM t") == 20
        stats = pool.statistics()
        assert stats.created <= 3
        assert (stats.in_use, stats.discarded, stats.acquired) == (0, 0, 102)


async def test_cancelled_task_leaves_the_pool_whole(db: Path) -> None:
    async with create_pool(db, max_size=1) as pool:
        holder = await pool.acquire()
        waiter = asyncio.ensure_future(pool.acquire())
        await asyncio.sleep(0)
        assert pool.statistics().waiting == 1
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        await pool.release(holder)
        stats = pool.statistics()
        assert (stats.size, stats.idle, stats.in_use, stats.waiting) == (1, 1, 0, 0)


# ---------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_size": 0}, ValueError, "max_size must be an int >= 1"),
        ({"min_size": 2, "max_size": 1}, ValueError, "min_size"),
        ({"pragmas": {"journal_mode; DROP TABLE x": "WAL"}}, ValueError, "pragma names"),
        ({"idle_timeout": 0}, ValueError, "idle_timeout"),
        ({"reset_timeout": 0}, ValueError, "reset_timeout must be a finite number of seconds > 0"),
        (
            {"reset_timeout": "5"},
            TypeError,
            "reset_timeout must be a finite number of seconds > 0, got str",
        ),
        # Found by a new user's probe: these raised AttributeError from inside.
        ({"pragmas": ["journal_mode=WAL"]}, TypeError, "pragmas must be a mapping"),
        ({"pragmas": "journal_mode=WAL"}, TypeError, "pragmas must be a mapping"),
    ],
)
def test_bad_arguments(
    tmp_path: Path, kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        create_pool(tmp_path / "x.db", **kwargs)


def test_manager_repr_names_the_database(tmp_path: Path) -> None:
    # Found by a new user's probe: it was "<aiolease.sqlite.SqliteManager object at 0x...>",
    # while the asyncpg and psycopg managers name their database.
    path = tmp_path / "x.db"
    assert repr(SqliteManager(path)) == f"<SqliteManager {str(path)!r}>"
    uri = SqliteManager(f"file:{path}?mode=rwc&password=hunter2", uri=True)
    assert repr(uri) == f"<SqliteManager {'file:' + str(path)!r}>"  # no query


async def test_prefill_of_a_new_database_never_hits_the_wal_switch_lock(tmp_path: Path) -> None:
    # Connections opened together all switch a fresh file to WAL, which needs an exclusive
    # lock that SQLite refuses at once (no busy wait): the manager retries instead.
    for i in range(25):
        async with create_pool(tmp_path / f"fresh{i}.db", min_size=4, max_size=4) as pool:
            assert pool.statistics().idle == 4
