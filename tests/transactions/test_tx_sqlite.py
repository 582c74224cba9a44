"""SQLite specifics (aiosqlite, real files): BEGIN IMMEDIATE, thread hops, concurrent writers."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import Any

import aiosqlite
import pytest

import aiolease
import aiolease.sqlite
from aiolease import _tracking
from aiolease._compat import aiosqlite as _compat_aiosqlite

pytestmark = pytest.mark.timeout(60)


async def connect(path: Path, busy_ms: int = 10000) -> aiosqlite.Connection:
    conn = await aiosqlite.connect(path, isolation_level=None)
    await conn.execute("PRAGMA journal_mode=WAL")
    await conn.execute(f"PRAGMA busy_timeout={busy_ms}")
    return conn


async def scalar(conn: aiosqlite.Connection, sql: str, *args: Any) -> Any:
    async with conn.execute(sql, args) as cur:
        row = await cur.fetchone()
    assert row is not None
    return row[0]


class HopCounter:
    """Counts the operations sent to a connection's worker thread (its queue's puts)."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self.hops = 0
        self._queue = conn._tx
        conn._tx = self  # type: ignore[assignment]  # the worker keeps reading the real queue

    def put_nowait(self, item: Any) -> None:
        self.hops += 1
        self._queue.put_nowait(item)

    def qsize(self) -> int:
        return self._queue.qsize()


@pytest.fixture
async def db(tmp_path: Path) -> Any:
    path = tmp_path / "tx.sqlite"
    conn = await connect(path)
    await conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER)")
    await conn.execute("INSERT INTO t VALUES (1, 0)")
    await conn.close()
    return path


needs_fast_path = pytest.mark.skipif(
    not _compat_aiosqlite.ENABLED, reason="counts the thread hops of the aiosqlite fast path"
)


@needs_fast_path
async def test_one_insert_costs_two_hops_and_reads_are_inside_the_transaction(db: Path) -> None:
    conn = await connect(db)
    try:
        hops = HopCounter(conn)
        async with aiolease.atomic(conn):
            assert hops.hops == 0  # BEGIN is deferred to the first operation...
            assert await scalar(conn, "SELECT v FROM t WHERE id = 1") == 0
            # ...and ran in the same hop as that read: the read is inside the transaction
            assert conn.in_transaction
            await conn.execute("UPDATE t SET v = v + 1 WHERE id = 1")
            before_commit = hops.hops
        assert hops.hops == before_commit + 1  # COMMIT: one hop
        assert not conn.in_transaction
        async with aiolease.atomic(conn):
            pass
        assert hops.hops == before_commit + 1  # an empty block costs nothing
    finally:
        await conn.close()


async def test_the_dialect_path_is_chosen_once_by_the_compat_mode(db: Path) -> None:
    """The dialect made for aiosqlite runs the fenced functions as its methods when the
    internals are in use, and the public-API methods otherwise (AIOLEASE_COMPAT=public)."""
    from aiolease._dialects import dialect_for
    from aiolease._dialects.sqlite import AiosqliteDialect, aiosqlite_dialect

    conn = await connect(db)
    try:
        dialect = dialect_for(conn)
        assert isinstance(dialect, AiosqliteDialect)
        fenced = type(dialect).begin is not AiosqliteDialect.begin
        assert fenced is _compat_aiosqlite.ENABLED
        assert type(aiosqlite_dialect()) is type(dialect)
    finally:
        await conn.close()


async def test_writes_take_the_write_lock_at_begin(db: Path) -> None:
    """BEGIN IMMEDIATE: a second writer waits at its first statement, even a read."""
    writer, other = await connect(db), await connect(db, busy_ms=0)
    try:
        async with aiolease.atomic(writer):
            await scalar(writer, "SELECT v FROM t")
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                async with aiolease.atomic(other):
                    await scalar(other, "SELECT v FROM t")  # BEGIN IMMEDIATE cannot get the lock
        assert not other.in_transaction
    finally:
        await writer.close()
        await other.close()


async def test_readonly_uses_a_deferred_transaction_and_resets_query_only(db: Path) -> None:
    writer, reader = await connect(db), await connect(db, busy_ms=0)
    try:
        async with aiolease.atomic(writer):
            await writer.execute("UPDATE t SET v = 5")
            async with aiolease.atomic(reader, readonly=True):  # no write lock needed
                assert await scalar(reader, "SELECT v FROM t") == 0
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            async with aiolease.atomic(reader, readonly=True):
                await reader.execute("UPDATE t SET v = 6")
        assert await scalar(reader, "PRAGMA query_only") == 0
        await reader.execute("UPDATE t SET v = 7")
        assert await scalar(writer, "SELECT v FROM t") == 7
    finally:
        await writer.close()
        await reader.close()


async def test_busy_begin_is_retried(db: Path) -> None:
    holder, conn = await connect(db), await connect(db, busy_ms=0)
    try:
        await holder.execute("BEGIN IMMEDIATE")

        async def commit_soon() -> None:
            await asyncio.sleep(0.05)
            await holder.execute("COMMIT")  # the lock frees during the retries

        releaser = asyncio.create_task(commit_soon())
        last = 0
        async for attempt in aiolease.transaction_attempts(conn, backoff=0.01, attempts=50):
            async with attempt:
                # BEGIN IMMEDIATE fails busy: with the fast path it runs with this
                # statement (retried by the loop), else at entry (retried there).
                last = attempt.number
                await conn.execute("UPDATE t SET v = v + 1")
        await releaser
        assert last >= 2
        assert await scalar(holder, "SELECT v FROM t") == 1
    finally:
        await holder.close()
        await conn.close()


async def test_a_busy_begin_whose_error_was_caught_never_began(db: Path) -> None:
    # BEGIN rides with the first statement (fast path): when it fails, nothing began.
    # That is a plain rollback, not a transaction a statement of the block ended (an
    # unknown outcome, which would skip the hooks and never be retried).
    holder, conn = await connect(db), await connect(db, busy_ms=0)
    hooks: list[str] = []
    try:
        await holder.execute("BEGIN IMMEDIATE")
        with pytest.raises((aiolease.TransactionError, sqlite3.OperationalError)) as info:  # noqa: PT012 - the block under test
            async with aiolease.atomic(conn) as tx:
                tx.on_rollback(lambda: hooks.append("rollback"))
                try:
                    await conn.execute("UPDATE t SET v = v + 1")
                except sqlite3.OperationalError:
                    pass  # busy: the mistake of catching it
        # public path: BEGIN fails at entry, before the hook; fast path: at the UPDATE.
        if isinstance(info.value, aiolease.TransactionError):
            assert "rolled back, not committed" in str(info.value)
            assert hooks == ["rollback"]
    finally:
        await holder.close()
        await conn.close()


async def test_sixteen_concurrent_writers_never_see_database_is_locked(db: Path) -> None:
    writers, rounds = 16, 10
    async with aiolease.sqlite.create_pool(db, max_size=writers) as pool:

        async def increment(conn: Any) -> None:
            value = await scalar(conn, "SELECT v FROM t WHERE id = 1")  # read first...
            await asyncio.sleep(0)  # ...let the others run...
            await conn.execute("UPDATE t SET v = ? WHERE id = 1", (value + 1,))  # ...then write

        async def writer() -> None:
            for _ in range(rounds):
                await aiolease.run_transaction(pool, increment, attempts=1)  # no retry needed

        await asyncio.gather(*(writer() for _ in range(writers)))
        async with pool.acquire() as conn:
            assert await scalar(conn, "SELECT v FROM t WHERE id = 1") == writers * rounds


async def test_cancellation_during_commit_propagates_and_marks_broken(db: Path) -> None:
    conn = await connect(db)
    try:
        release = threading.Event()
        entered = asyncio.Event()

        async def body() -> None:
            async with aiolease.atomic(conn):
                await conn.execute("UPDATE t SET v = 1")
                # Occupy the worker thread so that COMMIT waits in its queue.
                blocker = asyncio.ensure_future(conn._execute(release.wait))  # type: ignore[no-untyped-call]
                entered.set()
            await blocker  # pragma: no cover

        task = asyncio.create_task(body())
        await entered.wait()
        while conn._tx.qsize() < 1:  # COMMIT is queued behind the blocker  # noqa: ASYNC110 - polling state outside this loop
            await asyncio.sleep(0.001)
        task.cancel()
        try:
            with pytest.raises(asyncio.CancelledError) as info:
                await task
        finally:
            release.set()
        assert isinstance(info.value.__context__, aiolease.CommitUnknown)
        assert _tracking.is_broken(conn)
    finally:
        await conn.close()


async def test_failed_commit_is_rolled_back_in_the_same_hop(db: Path) -> None:
    conn = await connect(db)
    try:
        await conn.execute("PRAGMA foreign_keys = ON")
        await conn.execute(
            "CREATE TABLE child (p INTEGER REFERENCES t(id) DEFERRABLE INITIALLY DEFERRED)"
        )
        with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
            async with aiolease.atomic(conn):
                await conn.execute("INSERT INTO child VALUES (99)")  # checked at COMMIT
        assert not conn.in_transaction
        assert await scalar(conn, "SELECT count(*) FROM child") == 0
    finally:
        await conn.close()


async def test_transaction_ended_by_sqlite_is_reported(db: Path) -> None:
    conn = await connect(db)
    try:
        with pytest.raises(aiolease.TransactionError, match="cannot tell"):  # noqa: PT012 - the block under test
            async with aiolease.atomic(conn):
                await conn.execute("UPDATE t SET v = 9")
                await conn.execute("ROLLBACK")  # stands for SQLite's automatic rollbacks
        assert await scalar(conn, "SELECT v FROM t") == 0
    finally:
        await conn.close()


async def test_a_block_ending_with_the_error_sqlite_rolled_back_for_runs_its_rollback_hooks(
    db: Path,
) -> None:
    # SQLite rolls the transaction back by itself after some errors (an interrupted write,
    # SQLITE_FULL, IOERR, BUSY, NOMEM): a block that ends with such an error was rolled
    # back, not "ended by a statement of the block" with an unknown outcome.
    conn = await connect(db)
    hooks: list[str] = []
    endless = (
        "INSERT INTO t(v) WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
        "SELECT x FROM c"
    )
    try:
        with pytest.raises(sqlite3.OperationalError, match="interrupted") as info:  # noqa: PT012 - the block under test
            async with aiolease.atomic(conn) as tx:
                tx.on_rollback(lambda: hooks.append("rollback"))
                tx.on_commit(lambda: hooks.append("commit"))
                await conn.execute("UPDATE t SET v = 9")
                asyncio.get_running_loop().call_later(0.05, asyncio.ensure_future, conn.interrupt())
                await conn.execute(endless)
        assert hooks == ["rollback"]
        assert not getattr(info.value, "__notes__", None)  # no "cannot tell"
        assert await scalar(conn, "SELECT v FROM t") == 0
        assert not conn.in_transaction
    finally:
        await conn.close()


@needs_fast_path
async def test_savepoint_as_first_operation_begins_in_the_same_hop(db: Path) -> None:
    conn = await connect(db)
    try:
        hops = HopCounter(conn)
        async with aiolease.atomic(conn), aiolease.atomic(conn):
            assert hops.hops == 1
            assert conn.in_transaction
            await conn.execute("UPDATE t SET v = 3")
            raise aiolease.Rollback
        assert await scalar(conn, "SELECT v FROM t") == 0
    finally:
        await conn.close()


async def test_the_dialect_reads_the_transaction_state_and_false_once_closed(db: Path) -> None:
    """Both paths (the fenced read of the sqlite3 connection, and aiosqlite's public
    ``in_transaction``, which raises once closed) give the same answers."""
    from aiolease._dialects import dialect_for

    conn = await connect(db)
    dialect = dialect_for(conn)
    try:
        assert dialect.in_transaction(conn) is False
        await conn.execute("BEGIN")
        assert dialect.in_transaction(conn) is True
        await conn.execute("ROLLBACK")
        assert dialect.in_transaction(conn) is False
    finally:
        await conn.close()
    assert dialect.in_transaction(conn) is False


async def test_an_operation_after_stop_fails_in_a_block_as_outside_one(db: Path) -> None:
    """The block's first operation is queued to the worker thread by aiolease (with BEGIN,
    on the fenced path): a connection that is stopping refuses it as aiosqlite does."""
    conn = await connect(db)
    release = threading.Event()
    # The worker thread waits on the event, so the connection stays stopping (not yet
    # closed) while the operations below are refused.
    busy = asyncio.ensure_future(conn._execute(release.wait))  # type: ignore[no-untyped-call]
    await asyncio.sleep(0)  # queued
    stopped = conn.stop()
    assert stopped is not None
    try:
        with pytest.raises(ValueError, match="Connection closed"):
            await conn.execute("SELECT 1")
        with pytest.raises(ValueError, match="Connection closed"):
            async with aiolease.atomic(conn):
                await conn.execute("SELECT 1")
    finally:
        release.set()
        await busy
        await stopped
    # The block ended: a new one on the same object fails only for the closed connection.
    with pytest.raises(ValueError, match="no active connection"):
        async with aiolease.atomic(conn):
            await conn.execute("SELECT 1")
