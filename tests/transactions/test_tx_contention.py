"""Retries under real contention and faults: killed backends, busy SQLite files."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import aiosqlite
import asyncpg
import psycopg
import pytest
from tx_backends import PG_DSN, Backend, pg_backend_fixture  # noqa: F401 - registers the fixture

import aiolease
import aiolease.sqlite

pytestmark = pytest.mark.timeout(60)


# -- PostgreSQL --------------------------------------------------------------------


async def test_asyncpg_connection_killed_in_a_transaction_is_not_taken_for_a_foreign_one(
    pg_dsn: str,
) -> None:
    # asyncpg keeps reporting the last transaction status of a connection the server
    # closed: atomic() took it for "a transaction aiolease did not start" and
    # run_transaction() replaced the attempt's error with that TransactionError.
    observer, conn = await asyncpg.connect(PG_DSN), await asyncpg.connect(PG_DSN)
    try:
        calls: list[int] = []

        async def fn(c: Any) -> None:
            calls.append(1)
            await c.execute("SELECT 1")
            await observer.execute("SELECT pg_terminate_backend($1)", c.get_server_pid())
            while not c.is_closed():  # noqa: ASYNC110 - the driver reads the FATAL message
                await asyncio.sleep(0.01)
            await c.execute("SELECT 1")

        with pytest.raises(asyncpg.InterfaceError, match="closed"):
            await aiolease.run_transaction(conn, fn, attempts=3)
        assert calls == [1]
        with pytest.raises(asyncpg.InterfaceError, match="closed") as info:
            async with aiolease.atomic(conn):
                pass
        assert not isinstance(info.value, aiolease.TransactionError)
    finally:
        await observer.close()
        await conn.close()


def server_pid(conn: Any) -> int:
    if hasattr(conn, "get_server_pid"):
        return int(conn.get_server_pid())
    return int(conn.info.backend_pid)


def serialization_failure(conn: Any) -> Exception:
    """The driver's own 40001 error, as the server would have sent it."""
    if isinstance(conn, asyncpg.Connection):
        return asyncpg.exceptions.SerializationError("could not serialize access")
    return psycopg.errors.SerializationFailure("could not serialize access")


async def test_no_retry_on_a_passed_connection_whose_rollback_failed(pg_backend: Backend) -> None:
    # A retryable error, then the connection is lost before its ROLLBACK: atomic marks the
    # connection broken. A retry on that same connection could only fail at BEGIN (or
    # wait on a dead peer), and the error it raised replaced the attempt's own error.
    b = pg_backend
    observer, conn = await b.connect(), await b.connect()
    calls: list[int] = []

    async def fn(c: Any) -> None:
        calls.append(1)
        await b.run(c, "SELECT 1")
        await b.scalar(observer, "SELECT pg_terminate_backend($1)", server_pid(c))
        await asyncio.sleep(0.1)
        raise serialization_failure(c)

    with pytest.raises(Exception, match="could not serialize") as info:
        await aiolease.run_transaction(conn, fn, attempts=3, backoff=0.001)
    assert getattr(info.value, "sqlstate", None) == "40001"
    assert any("ROLLBACK also failed" in note for note in info.value.__notes__)
    assert calls == [1]

    # Through a pool, the next attempt gets a healthy connection.
    calls.clear()
    pids: list[int] = []
    async with b.pool(max_size=1) as pool:

        async def once_lost(c: Any) -> None:
            pids.append(server_pid(c))
            if len(pids) == 1:
                await fn(c)
            await b.run(c, "SELECT 1")

        await aiolease.run_transaction(pool, once_lost, attempts=3, backoff=0.001)
        assert len(pids) == 2
        assert pids[0] != pids[1]
        stats = pool.statistics()
        assert (stats.size, stats.in_use, stats.discarded) == (1, 0, 1)


# -- SQLite --------------------------------------------------------------------------


@pytest.mark.parametrize("commit_on_loop", [False, True])
async def test_sqlite_statements_after_a_failed_begin_whose_error_was_caught_never_autocommit(
    tmp_path: Path, commit_on_loop: bool
) -> None:
    # On the fast path BEGIN IMMEDIATE runs with the block's first statement. When it
    # failed busy and the block caught that error, the block's later statements ran
    # outside any transaction: each committed at once, and the block, failing later,
    # "rolled back" (its on_rollback hooks ran) with their rows in the database.
    path = tmp_path / "busy.sqlite"
    holder = await aiosqlite.connect(path, isolation_level=None)
    await holder.execute("PRAGMA journal_mode=WAL")
    await holder.execute("CREATE TABLE t (v INTEGER)")
    hooks: list[str] = []
    pool = aiolease.sqlite.create_pool(
        path,
        max_size=1,
        pragmas={"journal_mode": "WAL", "busy_timeout": 0},
        commit_on_loop=commit_on_loop,
    )
    try:
        async with pool:
            for body_fails in (True, False):
                await holder.execute("BEGIN IMMEDIATE")
                # Public path: BEGIN fails at entry, and the body does not run.
                with pytest.raises((RuntimeError, sqlite3.OperationalError)):
                    await busy_block(pool, holder, hooks, body_fails)
                if holder.in_transaction:
                    await holder.execute("ROLLBACK")
                async with pool.acquire() as conn:
                    assert not conn.in_transaction
        async with holder.execute("SELECT count(*) FROM t") as cur:
            assert await cur.fetchone() == (0,)
    finally:
        await holder.close()


async def busy_block(pool: Any, holder: Any, hooks: list[str], body_fails: bool) -> None:
    async with pool.atomic() as tx:
        tx.on_rollback(lambda: hooks.append("rollback"))
        try:
            await tx.connection.execute("INSERT INTO t VALUES (1)")
        except sqlite3.OperationalError:
            pass  # busy: the mistake of catching it
        await holder.execute("ROLLBACK")  # the lock is free again
        try:
            await tx.connection.execute("INSERT INTO t VALUES (2)")
        finally:
            if body_fails:
                raise RuntimeError("the block fails: nothing may stay")
