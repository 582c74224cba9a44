"""SQLite under faults, against real files: a block waiting for the write lock is
cancelled, statements started together after a failed BEGIN, a database that becomes
read-only or full, statements that end the block's transaction by hand."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

import aiosqlite
import pytest

import aiolease
from aiolease._compat import aiosqlite as _compat_aiosqlite
from aiolease.sqlite import DEFAULT_PRAGMAS, create_pool

pytestmark = pytest.mark.timeout(120)

#: A busy timeout far longer than any prompt cancellation takes.
LONG_BUSY_MS = 30_000

# Through aiosqlite's public API BEGIN IMMEDIATE is one statement, whose wait for the
# lock nothing ends early (a documented limit of AIOLEASE_COMPAT=public).
bounded_lock_wait = pytest.mark.skipif(
    not _compat_aiosqlite.ENABLED, reason="the bounded wait for the lock is the fenced path's"
)


async def connect(path: Path, busy_ms: int) -> aiosqlite.Connection:
    conn = await aiosqlite.connect(path, isolation_level=None, check_same_thread=False)
    await conn.execute("PRAGMA journal_mode=WAL")
    await conn.execute(f"PRAGMA busy_timeout={busy_ms}")
    return conn


async def scalar(conn: Any, sql: str) -> Any:
    async with conn.execute(sql) as cur:
        row = await cur.fetchone()
    assert row is not None
    return row[0]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "faults.sqlite"
    with sqlite3.connect(path, isolation_level=None) as setup:
        setup.execute("PRAGMA journal_mode=WAL")
        setup.execute("CREATE TABLE t (v INTEGER)")
    setup.close()
    return path


def hold_write_lock(path: Path) -> sqlite3.Connection:
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    return holder


@bounded_lock_wait
@pytest.mark.parametrize("commit_on_loop", [False, True])
async def test_cancelling_a_block_waiting_for_the_write_lock_ends_well_before_the_busy_timeout(
    db: Path, commit_on_loop: bool
) -> None:
    pragmas = {**DEFAULT_PRAGMAS, "busy_timeout": LONG_BUSY_MS}
    holder = hold_write_lock(db)
    try:
        async with create_pool(db, pragmas=pragmas, commit_on_loop=commit_on_loop) as pool:
            waiting = asyncio.Event()

            async def block() -> None:
                async with pool.atomic() as tx:
                    waiting.set()
                    await tx.connection.execute("INSERT INTO t VALUES (1)")

            task = asyncio.create_task(block())
            await waiting.wait()
            await asyncio.sleep(0.2)  # BEGIN IMMEDIATE waits for the lock in the thread
            started = time.monotonic()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            took = time.monotonic() - started
            # Generous: without a bound it takes the cleanup_timeout (5 s) or the busy
            # timeout, whichever is shorter.
            assert took < 4, took
            holder.execute("ROLLBACK")
            async with pool.atomic() as tx:
                await tx.connection.execute("INSERT INTO t VALUES (2)")
            async with pool.acquire() as conn:
                assert await scalar(conn, "SELECT group_concat(v) FROM t") == "2"
    finally:
        holder.close()


@bounded_lock_wait
async def test_a_direct_connection_cancelled_at_begin_is_left_clean_and_usable(db: Path) -> None:
    holder = hold_write_lock(db)
    conn = await connect(db, LONG_BUSY_MS)
    try:

        async def block() -> None:
            async with aiolease.atomic(conn):
                await conn.execute("INSERT INTO t VALUES (1)")

        task = asyncio.create_task(block())
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not conn.in_transaction
        assert await scalar(conn, "PRAGMA busy_timeout") == LONG_BUSY_MS  # as it was
        holder.execute("ROLLBACK")
        async with aiolease.atomic(conn):
            await conn.execute("INSERT INTO t VALUES (2)")
        assert await scalar(conn, "SELECT group_concat(v) FROM t") == "2"
    finally:
        holder.close()
        await conn.close()


async def test_a_block_waiting_for_the_lock_still_waits_the_whole_busy_timeout(db: Path) -> None:
    """The wait for the lock keeps its meaning: a lock freed after a while is taken."""
    holder = hold_write_lock(db)
    conn = await connect(db, LONG_BUSY_MS)
    try:
        loop = asyncio.get_running_loop()
        loop.call_later(0.5, holder.execute, "COMMIT")
        async with aiolease.atomic(conn):
            await conn.execute("INSERT INTO t VALUES (1)")
        assert await scalar(conn, "SELECT count(*) FROM t") == 1
        assert await scalar(conn, "PRAGMA busy_timeout") == LONG_BUSY_MS
    finally:
        holder.close()
        await conn.close()


async def test_a_busy_begin_fails_after_the_busy_timeout(db: Path) -> None:
    holder = hold_write_lock(db)
    conn = await connect(db, 300)
    try:
        started = time.monotonic()
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            async with aiolease.atomic(conn):
                await conn.execute("INSERT INTO t VALUES (1)")
        assert time.monotonic() - started >= 0.25
        assert not conn.in_transaction
        assert await scalar(conn, "PRAGMA busy_timeout") == 300
    finally:
        holder.close()
        await conn.close()


@pytest.mark.parametrize("commit_on_loop", [False, True])
async def test_statements_started_together_after_a_failed_begin_never_run_outside_it(
    db: Path, commit_on_loop: bool
) -> None:
    """BEGIN fails (locked); the statements the block started concurrently with its first
    one were queued before the failure was known: none may run in autocommit mode."""
    holder = hold_write_lock(db)
    pragmas = {**DEFAULT_PRAGMAS, "busy_timeout": 0}
    try:
        async with (
            create_pool(db, pragmas=pragmas, commit_on_loop=commit_on_loop, max_size=1) as pool,
            pool.acquire() as conn,
        ):
            # A temporary table needs no lock on the database file: a write to it
            # outside the transaction would succeed, and commit at once.
            await conn.execute("CREATE TEMP TABLE side (v INTEGER)")
            with pytest.raises((aiolease.TransactionError, sqlite3.OperationalError)):  # noqa: PT012 - the block under test
                async with aiolease.atomic(conn):
                    results = await asyncio.gather(
                        conn.execute("INSERT INTO t VALUES (1)"),
                        conn.execute("INSERT INTO side VALUES (1)"),
                        conn.execute("INSERT INTO side VALUES (2)"),
                        return_exceptions=True,
                    )
                    assert all(isinstance(r, sqlite3.OperationalError) for r in results), results
            assert not conn.in_transaction
            assert await scalar(conn, "SELECT count(*) FROM side") == 0
    finally:
        holder.close()


ENDLESS = (
    "INSERT INTO t WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c"
)


def rows(path: Path) -> int:
    with sqlite3.connect(path) as check:
        (count,) = check.execute("SELECT count(*) FROM t").fetchone()
    check.close()
    return int(count)


@pytest.mark.parametrize(
    "stuck", [pytest.param("waiting for the lock", marks=bounded_lock_wait), "mid-statement"]
)
async def test_closing_the_pool_under_blocks_that_are_stuck_commits_nothing(
    db: Path, stuck: str
) -> None:
    holder = hold_write_lock(db) if stuck == "waiting for the lock" else None
    pragmas = {**DEFAULT_PRAGMAS, "busy_timeout": LONG_BUSY_MS if holder else 5000}
    hooks: list[str] = []
    pool = create_pool(db, pragmas=pragmas, max_size=2)
    await pool.open()
    try:
        started = asyncio.Event()

        async def block() -> None:
            async with pool.atomic() as tx:
                tx.on_commit(lambda: hooks.append("commit"))
                started.set()
                await tx.connection.execute("INSERT INTO t VALUES (1)")
                await tx.connection.execute(ENDLESS)

        tasks = [asyncio.create_task(block()) for _ in range(2)]
        await started.wait()
        await asyncio.sleep(0.2)
        began = time.monotonic()
        await pool.aclose(timeout=0.5)  # then the leases are closed in their holders' hands
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        if holder is not None:
            assert time.monotonic() - began < 4  # generous: the busy timeout is 30 s
        assert all(isinstance(o, Exception) for o in outcomes), outcomes
        assert hooks == []
    finally:
        await pool.aclose()
        if holder is not None:
            holder.close()
    assert rows(db) == 0


async def test_a_full_database_fails_the_block_and_commits_nothing(db: Path) -> None:
    hooks: list[str] = []
    async with create_pool(db, max_size=1) as pool, pool.acquire() as conn:
        pages = await scalar(conn, "PRAGMA page_count")
        await conn.execute(f"PRAGMA max_page_count={pages + 2}")  # SQLITE_FULL past it
        with pytest.raises(sqlite3.OperationalError, match="full") as info:  # noqa: PT012 - the block under test
            async with aiolease.atomic(conn) as tx:
                tx.on_commit(lambda: hooks.append("commit"))
                tx.on_rollback(lambda: hooks.append("rollback"))
                await conn.execute("INSERT INTO t VALUES (1)")
                await conn.execute("INSERT INTO t SELECT randomblob(100000)")
        assert info.value.sqlite_errorname == "SQLITE_FULL"
        assert hooks == ["rollback"]
        assert not conn.in_transaction
    assert rows(db) == 0


async def test_a_corrupt_file_fails_the_acquire_with_sqlites_error(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.sqlite"
    path.write_bytes(b"not a database" * 1000)
    async with create_pool(path, max_size=1, acquire_timeout=5) as pool:
        with pytest.raises(sqlite3.DatabaseError, match="not a database"):
            async with pool.atomic() as tx:
                await tx.connection.execute("SELECT 1")


async def test_a_savepoint_block_after_a_failed_one_commits_with_the_outer_block(
    db: Path,
) -> None:
    async with create_pool(db, max_size=1) as pool:
        async with pool.atomic() as tx:
            conn = tx.connection
            await conn.execute("INSERT INTO t VALUES (1)")
            with pytest.raises(ZeroDivisionError):  # noqa: PT012 - the block under test
                async with aiolease.atomic(conn):
                    await conn.execute("INSERT INTO t VALUES (2)")
                    async with aiolease.atomic(conn):
                        await conn.execute("INSERT INTO t VALUES (3)")
                    raise ZeroDivisionError
            async with aiolease.atomic(conn):  # the same savepoint name, made again
                await conn.execute("INSERT INTO t VALUES (4)")
                async with aiolease.atomic(conn):
                    await conn.execute("INSERT INTO t VALUES (5)")
        async with pool.acquire() as conn:
            assert await scalar(conn, "SELECT group_concat(v) FROM t ORDER BY v") == "1,4,5"
            assert not conn.in_transaction


async def test_a_begin_sent_by_hand_in_a_block_fails_clearly(db: Path) -> None:
    hooks: list[str] = []
    async with create_pool(db, max_size=1) as pool:
        with pytest.raises(sqlite3.OperationalError, match="within a transaction"):  # noqa: PT012 - the block under test
            async with pool.atomic() as tx:
                tx.on_rollback(lambda: hooks.append("rollback"))
                await tx.connection.execute("INSERT INTO t VALUES (1)")
                await tx.connection.execute("BEGIN")
        assert hooks == ["rollback"]
    assert rows(db) == 0


# SQLite has no transaction id: in the outermost block, the transaction a hand-sent
# ``BEGIN`` opened cannot be told from the one atomic began (a documented limit).
_undetected = pytest.mark.xfail(
    strict=True, reason="undetectable in the outermost block (documented limit)"
)


@pytest.mark.parametrize(
    ("by_hand", "nested"),
    [
        (("COMMIT",), False),
        (("COMMIT",), True),
        pytest.param(("COMMIT", "BEGIN"), False, marks=_undetected),
        (("COMMIT", "BEGIN"), True),
        pytest.param(("ROLLBACK", "BEGIN"), False, marks=_undetected),
        (("ROLLBACK", "BEGIN"), True),
    ],
    ids=lambda v: "+".join(v) if isinstance(v, tuple) else ("nested" if v else "outermost"),
)
async def test_a_transaction_ended_by_hand_in_a_block_leaves_the_outcome_unknown(
    db: Path, by_hand: tuple[str, ...], nested: bool
) -> None:
    """``COMMIT`` (or ``COMMIT; BEGIN``, ``ROLLBACK; BEGIN``) sent by hand in a block: the
    transaction atomic ends is not the one it began (or none), so neither outcome may be
    claimed; what the hand-sent COMMIT committed stays."""
    hooks: list[str] = []
    async with create_pool(db, max_size=1) as pool:
        with pytest.raises(Exception) as info:  # noqa: PT012 - the block under test
            async with pool.atomic() as tx:
                tx.on_commit(lambda: hooks.append("commit"))
                tx.on_rollback(lambda: hooks.append("rollback"))
                await tx.connection.execute("INSERT INTO t VALUES (1)")
                if nested:
                    async with aiolease.atomic(tx.connection):
                        for statement in by_hand:
                            await tx.connection.execute(statement)
                else:
                    for statement in by_hand:
                        await tx.connection.execute(statement)
                if "BEGIN" in by_hand:
                    await tx.connection.execute("INSERT INTO t VALUES (2)")
        assert "cannot tell" in str(info.value) + "".join(getattr(info.value, "__notes__", []))
        assert hooks == []  # neither outcome is claimed
    if by_hand == ("COMMIT",):
        assert rows(db) == 1
