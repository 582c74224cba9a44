"""psycopg's prepared statements and the server's agree again after a lease that failed.

A pipeline whose earlier statement fails or is cancelled makes the server skip the rest
of it, the ``Parse`` of a statement psycopg prepares there included. psycopg 3.3.9 (its
own AsyncConnection too, so both ``AIOLEASE_COMPAT`` modes) may still keep that statement's
name when psycopg had counted the statement before (``prepare_threshold`` reached in the
pipeline): every later run of it on that connection then fails with
``InvalidSqlStatementName``. The other way round, a statement the server prepared but
whose run failed stays on the server, unknown to psycopg (with ``prepare_threshold=0``
each failed lease leaves one). The pool keeps such a connection, so the reset after a
lease that raised empties both sides; a lease that ended normally costs nothing more.
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest

from aiolease.psycopg import create_pool

pytestmark = pytest.mark.timeout(60)

#: The statement the failing pipeline prepares (its own text: no other test's statement).
QUERY = "SELECT %s::int + 0 AS aiolease_prepared_probe"


@pytest.fixture
async def admin(pg_dsn: str) -> Any:
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        yield conn


async def wait_until_sleeping(admin: Any, pid: int) -> None:
    """Until backend ``pid`` executes ``pg_sleep`` (its wait event; the query text shows
    as active already while it is parsed)."""
    for _ in range(2000):
        cur = await admin.execute(
            "SELECT state, wait_event FROM pg_stat_activity WHERE pid = %s", (pid,)
        )
        if await cur.fetchone() == ("active", "PgSleep"):
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"backend {pid} never slept in pg_sleep")


async def server_statements(conn: Any) -> int:
    """How many prepared statements the server holds for ``conn``'s session."""
    cur = await conn.execute("SELECT count(*) FROM pg_prepared_statements", prepare=False)
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def run_query(conn: Any, n: int) -> None:
    cur = await conn.execute(QUERY, (n,))
    assert await cur.fetchone() == (n,)


async def failing_pipeline(conn: Any) -> None:
    """A pipeline whose first statement fails: the server skips the second."""
    async with conn.pipeline():
        await conn.execute("SELECT 1/0")
        await conn.execute(QUERY, (-1,))  # prepared here when psycopg counted it before


@pytest.mark.parametrize("threshold", [5, 0])
@pytest.mark.parametrize("ending", ["cancelled", "error"])
async def test_next_holder_runs_the_statement_a_failed_pipeline_prepared(
    pg_dsn: str, admin: Any, threshold: int, ending: str
) -> None:
    async with create_pool(pg_dsn, max_size=1, prepare_threshold=threshold) as pool:
        async with pool.acquire() as conn:
            for i in range(threshold):  # psycopg counts the statement: its next run prepares it
                await run_query(conn, i)
        started: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        async def failing_pipeline() -> None:
            async with pool.acquire() as conn, conn.pipeline():
                started.set_result(conn.info.backend_pid)
                first = "SELECT pg_sleep(30)" if ending == "cancelled" else "SELECT 1/0"
                await conn.execute(first)
                await conn.execute(QUERY, (-1,))  # prepared here; the server skips it

        task = asyncio.create_task(failing_pipeline())
        pid = await started
        if ending == "cancelled":
            await wait_until_sleeping(admin, pid)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        else:
            with pytest.raises(psycopg.errors.DivisionByZero):
                await task
        async with pool.acquire() as conn:
            assert conn.info.backend_pid == pid  # the same connection, kept
            assert await server_statements(conn) == 0  # nothing left over on the server
            for i in range(threshold + 2):  # past the threshold: prepared again, and used
                await run_query(conn, i)
            async with conn.pipeline():
                await run_query(conn, 42)
        assert pool.statistics().discarded == 0


async def test_an_error_caught_inside_the_lease_costs_at_most_one_failure(pg_dsn: str) -> None:
    # The pool only learns of errors that end the lease: one caught inside it leaves the
    # connection as psycopg left it, and the next holder's run of the statement may fail.
    # That failure ends its lease with an error, so the holder after it is served again.
    async with create_pool(pg_dsn, max_size=1) as pool:
        async with pool.acquire() as conn:
            for i in range(5):
                await run_query(conn, i)
            with pytest.raises(psycopg.errors.DivisionByZero):
                await failing_pipeline(conn)
        try:
            async with pool.acquire() as conn:
                await run_query(conn, 1)
        except psycopg.errors.InvalidSqlStatementName:
            pass  # psycopg 3.3.9 kept the name of the statement the server skipped
        async with pool.acquire() as conn:
            await run_query(conn, 2)
            await run_query(conn, 3)
        assert pool.statistics().discarded == 0


async def last_statement(admin: Any, pid: int) -> str:
    cur = await admin.execute("SELECT query FROM pg_stat_activity WHERE pid = %s", (pid,))
    row = await cur.fetchone()
    assert row is not None
    return str(row[0])


@pytest.mark.parametrize("threshold", [5, None])
async def test_the_resync_runs_only_after_a_lease_that_raised_and_may_prepare(
    pg_dsn: str, admin: Any, threshold: int | None
) -> None:
    async with create_pool(pg_dsn, max_size=1, prepare_threshold=threshold) as pool:
        async with pool.acquire() as conn:
            pid = conn.info.backend_pid
            await run_query(conn, 1)
        # A lease that ended normally: nothing is sent at release.
        assert await last_statement(admin, pid) == QUERY.replace("%s", "$1")
        with pytest.raises(psycopg.errors.DivisionByZero):
            async with pool.acquire() as conn:
                await conn.execute("SELECT 1/0")
        last = await last_statement(admin, pid)
        if threshold is None:  # psycopg never prepares: nothing to resync
            assert last == "SELECT 1/0"
        else:
            assert last == "ROLLBACK"  # BEGIN; DEALLOCATE ALL; ROLLBACK
        async with pool.acquire() as conn:
            assert conn.info.backend_pid == pid
            await run_query(conn, 2)
