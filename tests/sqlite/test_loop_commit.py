"""COMMIT on the event loop for connections of aiolease.sqlite pools (no thread hop).

What must hold: a small transaction commits without a trip to the worker
thread; a large one, or one whose statement is still running in the worker,
commits through the thread (in order, nothing lost); SQLite's automatic
checkpoint never runs inside a COMMIT on the loop, but checkpoints still happen
(in the worker thread); rollbacks and read-only blocks restore the connection's
settings; the feature is off when it cannot apply.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosqlite
import pytest

import aiolease
from aiolease._compat.aiosqlite import ENABLED, LOOP_COMMIT_MAX_CHANGES
from aiolease.sqlite import SqliteManager

LOOP_ATTR = "_aiolease_loop_commit"

pytestmark = pytest.mark.skipif(
    not ENABLED, reason="COMMIT on the loop needs aiosqlite internals (AIOLEASE_COMPAT=public)"
)


async def scalar(conn: aiosqlite.Connection, sql: str) -> Any:
    async with conn.execute(sql) as cur:
        row = await cur.fetchone()
    assert row is not None
    return row[0]


def slow(x: int) -> int:
    """A SQL function that keeps the connection's worker thread busy for 0.3 s."""
    time.sleep(0.3)
    return x


class HopCounter:
    """Counts the operations queued to a connection's worker thread."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self.count = 0
        self.queue: Any = conn._tx  # the worker thread keeps reading this one
        conn._tx = self  # type: ignore[assignment]

    def put_nowait(self, item: Any) -> None:
        self.count += 1
        self.queue.put_nowait(item)

    def empty(self) -> bool:
        return bool(self.queue.empty())


@contextlib.asynccontextmanager
async def connection(path: Path, **options: Any) -> AsyncIterator[aiosqlite.Connection]:
    options.setdefault("commit_on_loop", True)
    manager = SqliteManager(path, **options)
    conn = await manager.create()
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v INTEGER)")
        yield conn
    finally:
        await manager.close(conn)


async def count_rows(path: Path) -> int:
    async with aiosqlite.connect(path) as other:
        return int(await scalar(other, "SELECT count(*) FROM t"))


async def test_pool_connections_commit_on_the_loop(tmp_path: Path) -> None:
    async with connection(tmp_path / "db.sqlite") as conn:
        assert LOOP_ATTR in conn.__dict__
        hops = HopCounter(conn)
        async with aiolease.atomic(conn):
            await conn.execute("INSERT INTO t (v) VALUES (1)")
        assert hops.count == 1  # the INSERT (with BEGIN); COMMIT ran on the loop
        assert not conn.in_transaction
        assert await count_rows(tmp_path / "db.sqlite") == 1


async def test_commit_on_loop_false_keeps_the_commit_in_the_thread(tmp_path: Path) -> None:
    async with connection(tmp_path / "db.sqlite", commit_on_loop=False) as conn:
        assert LOOP_ATTR not in conn.__dict__
        hops = HopCounter(conn)
        async with aiolease.atomic(conn):
            await conn.execute("INSERT INTO t (v) VALUES (1)")
        assert hops.count == 2
        assert await count_rows(tmp_path / "db.sqlite") == 1


async def test_not_enabled_where_it_cannot_apply(tmp_path: Path) -> None:
    # Same-thread checks on: the loop may not touch the connection.
    async with connection(tmp_path / "a.sqlite", check_same_thread=True) as conn:
        assert LOOP_ATTR not in conn.__dict__
        async with aiolease.atomic(conn):
            await conn.execute("INSERT INTO t (v) VALUES (1)")
        assert await count_rows(tmp_path / "a.sqlite") == 1
    # Not WAL: a COMMIT could have to wait for readers.
    async with connection(tmp_path / "b.sqlite", pragmas={"journal_mode": "DELETE"}) as conn:
        assert LOOP_ATTR not in conn.__dict__
    manager = SqliteManager(":memory:")
    conn = await manager.create()
    try:
        assert LOOP_ATTR not in conn.__dict__
    finally:
        await manager.close(conn)


def test_commit_on_loop_must_be_a_bool(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="commit_on_loop"):
        SqliteManager(tmp_path / "db.sqlite", commit_on_loop=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="commit_on_loop"):
        aiolease.sqlite.create_pool(tmp_path / "db.sqlite", commit_on_loop="yes")  # type: ignore[arg-type]


async def test_a_large_transaction_commits_in_the_thread(tmp_path: Path) -> None:
    rows = LOOP_COMMIT_MAX_CHANGES + 1
    async with connection(tmp_path / "db.sqlite") as conn:
        hops = HopCounter(conn)
        async with aiolease.atomic(conn):
            await conn.executemany("INSERT INTO t (v) VALUES (?)", [(i,) for i in range(rows)])
        assert hops.count == 2  # executemany, then COMMIT through the worker
        assert await count_rows(tmp_path / "db.sqlite") == rows


async def test_a_statement_still_running_is_committed_in_order(tmp_path: Path) -> None:
    async with connection(tmp_path / "db.sqlite") as conn:
        await conn.create_function("slow", 1, slow)
        hops = HopCounter(conn)
        async with aiolease.atomic(conn):
            await conn.execute("INSERT INTO t (v) VALUES (1)")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.05):
                    await conn.execute("INSERT INTO t (v) VALUES (slow(2))")
            # The body gave up waiting, but the worker thread is still inside the INSERT.
        # The COMMIT queued behind it (a hop), instead of racing it on the loop.
        assert hops.count == 3
        assert await count_rows(tmp_path / "db.sqlite") == 2
        assert not conn.in_transaction


async def test_rollback_and_failed_blocks_restore_autocheckpoint(tmp_path: Path) -> None:
    async with connection(tmp_path / "db.sqlite") as conn:
        assert await scalar(conn, "PRAGMA wal_autocheckpoint") == 1000
        seen_in_block = []

        async def fail() -> None:
            async with aiolease.atomic(conn):
                await conn.execute("INSERT INTO t (v) VALUES (1)")
                seen_in_block.append(await scalar(conn, "PRAGMA wal_autocheckpoint"))
                raise ZeroDivisionError

        with pytest.raises(ZeroDivisionError):
            await fail()
        assert seen_in_block == [0]  # off in the block
        assert await scalar(conn, "PRAGMA wal_autocheckpoint") == 1000
        async with aiolease.atomic(conn):
            await conn.execute("INSERT INTO t (v) VALUES (2)")
        assert await scalar(conn, "PRAGMA wal_autocheckpoint") == 1000
        async with aiolease.atomic(conn, readonly=True):
            assert await scalar(conn, "SELECT count(*) FROM t") == 1
        assert await scalar(conn, "PRAGMA wal_autocheckpoint") == 1000
        assert await scalar(conn, "PRAGMA query_only") == 0
        async with aiolease.atomic(conn):
            pass  # no statement: nothing began, nothing to restore
        assert await scalar(conn, "PRAGMA wal_autocheckpoint") == 1000
    assert await count_rows(tmp_path / "db.sqlite") == 1


async def test_checkpoints_still_happen_in_the_worker_thread(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    pragmas = {"journal_mode": "WAL", "busy_timeout": 5000, "wal_autocheckpoint": 10}
    async with connection(path, pragmas=pragmas) as conn:
        for i in range(60):
            async with aiolease.atomic(conn):
                await conn.execute("INSERT INTO t (v) VALUES (?)", (i,))
        async with conn.execute("PRAGMA wal_checkpoint(PASSIVE)") as cur:
            row = await cur.fetchone()
    assert row is not None
    busy, log_frames, _ = row
    assert busy == 0
    # Without checkpoints the WAL would hold a frame or more for each of the 60
    # commits; checkpointed every 10 changes, it was restarted along the way.
    assert log_frames < 30
    assert await count_rows(path) == 60


async def test_many_writers_through_a_pool(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    async with aiolease.sqlite.create_pool(path, max_size=4, commit_on_loop=True) as pool:
        async with pool.acquire() as conn:
            await conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER)")

        async def writer(n: int) -> None:
            for i in range(25):

                async def insert(conn: Any, i: int = i) -> None:
                    await conn.execute("INSERT INTO t (v) VALUES (?)", (n * 100 + i,))

                await aiolease.run_transaction(pool, insert)

        await asyncio.gather(*(writer(n) for n in range(8)))
    assert await count_rows(path) == 200


async def test_a_failing_commit_on_the_loop_raises_and_rolls_back(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    async with connection(path) as conn:
        await conn.execute(
            "CREATE TABLE child (p INTEGER REFERENCES t(id) DEFERRABLE INITIALLY DEFERRED)"
        )
        with pytest.raises(sqlite3.IntegrityError):
            async with aiolease.atomic(conn):
                await conn.execute("INSERT INTO child (p) VALUES (42)")  # checked at COMMIT
        assert not conn.in_transaction
        assert await scalar(conn, "SELECT count(*) FROM child") == 0
        assert await scalar(conn, "PRAGMA wal_autocheckpoint") == 1000


async def test_a_first_statement_still_queued_is_committed(tmp_path: Path) -> None:
    async with connection(tmp_path / "db.sqlite") as conn:
        await conn.create_function("slow", 1, slow)
        # Keep the worker thread busy, so the block's only statement waits in its queue.
        busy = asyncio.create_task(conn.execute("SELECT slow(1)"))
        await asyncio.sleep(0.05)
        async with aiolease.atomic(conn):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.05):
                    await conn.execute("INSERT INTO t (v) VALUES (1)")
        await busy
        # The INSERT began the transaction after the block had ended: it was committed
        # behind it, not left open.
        assert not conn.in_transaction
        assert await count_rows(tmp_path / "db.sqlite") == 1
