"""A statement left running in a connection's thread: its caller was cancelled or timed out.

aiosqlite runs each statement in the connection's own thread, and cancelling the
awaiting task does not stop it. Every wait of the pool around such a connection
(its release, its close, ``aclose()``) stays bounded, the next holder never gets a
connection still busy with another lease's statement, and no thread outlives the
pool. The statement below never ends on its own: only SQLite's interrupt stops it.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

import aiolease
from aiolease.sqlite import SqliteManager, create_pool
from driver_pools import settle

pytestmark = pytest.mark.timeout(60)

# Counts forever: only sqlite3's interrupt() ends it.
ENDLESS = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
BOUND = 20.0  # a failure bound ("never waits forever"), not a timing


def raw(conn: Any) -> Any:
    return getattr(conn, "_aiolease_origin", conn)


async def thread_of(conn: Any) -> threading.Thread:
    """The connection's worker thread (white-box: a thread ident may be reused)."""
    thread: threading.Thread = raw(conn)._thread
    assert thread.is_alive()
    return thread


async def gone(thread: threading.Thread) -> bool:
    """Whether ``thread`` has ended (waits for it a bounded while)."""
    for _ in range(500):
        if not thread.is_alive():
            return True
        await asyncio.sleep(0.01)
    return False


async def start_endless(conn: Any) -> None:
    """Start ENDLESS in the connection's thread and stop awaiting it (its caller times out)."""
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await conn.execute(ENDLESS)


async def test_a_body_that_timed_out_does_not_hand_its_statement_to_the_next_holder(
    tmp_path: Path,
) -> None:
    async with create_pool(tmp_path / "db.sqlite", max_size=1) as pool:
        with pytest.raises(TimeoutError):  # noqa: PT012 - the lease under test
            async with pool.acquire() as conn:
                thread = await thread_of(conn)
                async with asyncio.timeout(0.05):
                    await conn.execute(ENDLESS)
        async with asyncio.timeout(BOUND), pool.acquire() as conn, conn.execute("SELECT 1") as cur:
            assert await cur.fetchone() == (1,)
        assert await gone(thread)
        stats = pool.statistics()
        assert (stats.size, stats.in_use, stats.discarded) == (1, 0, 1)


async def test_a_release_whose_rollback_waits_behind_the_statement_is_bounded(
    tmp_path: Path,
) -> None:
    pool = create_pool(tmp_path / "db.sqlite", max_size=1, reset_timeout=0.2)
    async with pool:
        async with pool.acquire() as conn:
            await conn.execute("CREATE TABLE t (v INTEGER)")
        async with asyncio.timeout(BOUND), pool.acquire() as conn:
            thread = await thread_of(conn)
            await conn.execute("BEGIN")
            await conn.execute("INSERT INTO t VALUES (1)")
            await start_endless(conn)  # caught: the body ends normally, in a transaction
        assert await gone(thread)
        async with asyncio.timeout(BOUND), pool.acquire() as conn:
            assert not raw(conn).in_transaction
            async with conn.execute("SELECT count(*) FROM t") as cur:
                assert await cur.fetchone() == (0,)
        stats = pool.statistics()
        assert (stats.size, stats.in_use, stats.discarded) == (1, 0, 1)


async def test_aclose_ends_with_a_statement_still_running(tmp_path: Path) -> None:
    pool = create_pool(tmp_path / "db.sqlite", max_size=2)
    await pool.open()
    held = await pool.acquire()
    async with pool.acquire() as conn:
        idle_thread = await thread_of(conn)
        await start_endless(conn)  # caught: the connection goes back idle, still busy
    held_thread = await thread_of(held)
    running = asyncio.ensure_future(held.execute(ENDLESS))
    await asyncio.sleep(0.05)
    async with asyncio.timeout(BOUND):
        await pool.aclose(timeout=0.1)  # closes the held lease in its holder's hands
    with pytest.raises((sqlite3.OperationalError, aiolease.ResourceReleased)):
        await running
    await pool.release(held)
    assert await gone(idle_thread)
    assert await gone(held_thread)
    stats = pool.statistics()
    assert (stats.size, stats.in_use, stats.idle, stats.discarded) == (0, 0, 0, 0)


@pytest.mark.parametrize("abort_first", [False, True])
async def test_the_managers_close_ends_a_connection_still_running_a_statement(
    tmp_path: Path, abort_first: bool
) -> None:
    manager = SqliteManager(tmp_path / "db.sqlite")
    conn = await manager.create()
    thread = await thread_of(conn)
    await start_endless(conn)
    if abort_first:
        manager.abort(conn)  # what the pool does first for a connection discarded as broken
    async with asyncio.timeout(BOUND):
        await manager.close(conn)
    assert await gone(thread)


async def test_a_close_interrupts_the_statements_queued_behind_the_running_one(
    tmp_path: Path,
) -> None:
    # Statements queued behind the one running: each ends only when interrupted. The close
    # interrupts again until the thread stops (it used to interrupt once, then wait out
    # the pool's close_timeout for the abort).
    manager = SqliteManager(tmp_path / "db.sqlite")
    conn = await manager.create()
    thread = await thread_of(conn)
    first = asyncio.ensure_future(conn.execute(ENDLESS))
    second = asyncio.ensure_future(conn.execute(ENDLESS))
    await asyncio.sleep(0.05)
    async with asyncio.timeout(BOUND):
        await manager.close(conn)
    assert await gone(thread)
    for task in (first, second):
        with pytest.raises((sqlite3.OperationalError, ValueError)):  # interrupted, closed
            await task


async def test_pool_counts_stay_whole_after_many_timed_out_bodies(tmp_path: Path) -> None:
    async with create_pool(tmp_path / "db.sqlite", max_size=2) as pool:

        async def one() -> None:
            try:
                async with pool.acquire() as conn:
                    async with asyncio.timeout(0.02):
                        await conn.execute(ENDLESS)
            except TimeoutError:
                pass

        async with asyncio.timeout(BOUND * 2):
            await asyncio.gather(*(one() for _ in range(6)))
            await settle(pool)
        stats = pool.statistics()
        assert (stats.in_use, stats.waiting) == (0, 0)
        assert stats.size <= 2
        async with asyncio.timeout(BOUND), pool.acquire() as conn, conn.execute("SELECT 1") as cur:
            assert await cur.fetchone() == (1,)


@pytest.mark.parametrize("commit_on_loop", [False, True])
async def test_an_abandoned_rollback_behind_the_statement_frees_the_slot(
    tmp_path: Path, commit_on_loop: bool
) -> None:
    async with create_pool(
        tmp_path / "db.sqlite", max_size=1, commit_on_loop=commit_on_loop
    ) as pool:
        async with pool.acquire() as conn:
            await conn.execute("CREATE TABLE t (v INTEGER)")
        with pytest.raises(TimeoutError):  # noqa: PT012 - the block under test
            async with asyncio.timeout(0.1), pool.atomic(cleanup_timeout=0.2) as tx:
                thread = await thread_of(tx.connection)
                await tx.connection.execute("INSERT INTO t VALUES (1)")
                await tx.connection.execute(ENDLESS)
        # atomic's ROLLBACK waited behind the statement, was abandoned (the connection
        # marked broken), and the pool's abort interrupted the statement.
        async with (
            asyncio.timeout(BOUND),
            pool.acquire() as conn,
            conn.execute("SELECT count(*) FROM t") as cur,
        ):
            assert await cur.fetchone() == (0,)
        assert await gone(thread)
        assert pool.statistics().discarded == 1


async def test_a_body_cancelled_as_it_sends_its_statement_is_closed_at_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Cancelled right after sending it (within a step or two), the statement may still be
    # queued for the connection's thread when the close interrupts it, and start after that
    # one interrupt: the close then waited out the whole close_timeout (10 s) and the
    # connection was abandoned, about one run in three.
    caplog.set_level(logging.WARNING, logger="aiolease.pool")
    async with create_pool(tmp_path / "race.db", max_size=1) as pool:
        for i in range(12):

            async def body() -> None:
                async with pool.acquire() as conn:
                    await conn.execute(ENDLESS)

            task = asyncio.create_task(body())
            for _ in range(i % 3):
                await asyncio.sleep(0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            async with asyncio.timeout(BOUND), pool.acquire() as conn:
                await conn.execute("SELECT 1")
        await settle(pool)
    abandoned = [r.getMessage() for r in caplog.records if "close took longer" in r.getMessage()]
    assert abandoned == []
