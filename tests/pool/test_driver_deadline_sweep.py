"""The driver pools (asyncpg, psycopg, SQLite) under an ``asyncio.timeout()`` whose deadline
fires after each number of event-loop steps (cancelling.deadline_at_each_step): the caller
gets TimeoutError or the result, never a swallowed or replaced cancellation,
``cancelling()`` is back to 0 and an enclosing timeout still works; and the pool holds
nothing afterwards (no lease in use, nobody waiting, no transaction left open).

The existing sweeps cancel with ``Task.cancel()``; a deadline is the other way a caller
stops waiting, and the one that shows a cancellation swallowed in the step it came (the
deadline then expires without TimeoutError).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

import aiolease
from aiolease._transaction import _open
from cancelling import Deadline, deadline_at_each_step
from driver_pools import Sessions, settle, tagged

pytestmark = pytest.mark.timeout(180)

DRIVERS = [
    pytest.param("asyncpg", marks=pytest.mark.postgres),
    pytest.param("psycopg", marks=pytest.mark.postgres),
    pytest.param("sqlite"),
]

#: Loop steps swept at most: each sweep ends when a run completes first (a few round trips:
#: well under this on a loaded machine).
MAX_STEPS = 3000


def raw(conn: Any) -> Any:
    return getattr(conn, "_aiolease_origin", conn)


def in_transaction(driver: str, conn: Any) -> bool:
    conn = raw(conn)
    if driver == "psycopg":
        return bool(conn.pgconn.transaction_status != 0)
    if driver == "asyncpg":
        return bool(conn.is_in_transaction())
    return bool(conn.in_transaction)


async def fetch_values(driver: str, conn: Any, table: str) -> list[int]:
    query = f"SELECT v FROM {table} ORDER BY v"
    if driver == "asyncpg":
        return [r[0] for r in await conn.fetch(query)]
    cur = await conn.execute(query)
    rows = await cur.fetchall()
    if driver == "sqlite":
        await cur.close()
    return [r[0] for r in rows]


@asynccontextmanager
async def driver_pool(
    driver: str, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[Any, str, Sessions | None]]:
    """A pool of one connection of ``driver``, a fresh table, and (PostgreSQL) the pool's
    sessions as the server sees them."""
    table = f"aiolease_dl_{uuid.uuid4().hex[:12]}"
    if driver == "sqlite":
        from aiolease.sqlite import create_pool as sqlite_pool

        pool: Any = sqlite_pool(tmp_path / "db.sqlite", max_size=1)
        async with pool:
            async with pool.acquire() as conn:
                await conn.execute(f"CREATE TABLE {table} (v int)")
            yield pool, table, None
        return
    dsn = request.getfixturevalue("pg_dsn")
    if driver == "psycopg":
        from aiolease.psycopg import create_pool as psycopg_pool

        pool = psycopg_pool(dsn, max_size=1, **tagged(driver, table))
    else:
        from aiolease.asyncpg import create_pool as asyncpg_pool

        pool = asyncpg_pool(dsn, max_size=1, **tagged(driver, table))
    async with pool, Sessions(dsn, table) as sessions:
        async with pool.acquire() as conn:
            await conn.execute(f"CREATE TABLE {table} (v int)")
        try:
            yield pool, table, sessions
        finally:
            async with pool.acquire() as conn:
                await conn.execute(f"DROP TABLE IF EXISTS {table}")


async def release_after_steps(pool: Any, held: Any, steps: int) -> None:
    for _ in range(steps):
        await asyncio.sleep(0)
    await pool.release(held)


async def quiet(pool: Any, driver: str, sessions: Sessions | None, run: Deadline) -> None:
    """The pool's background work done, every session it let go ended (PostgreSQL), and
    nothing held or queued."""
    await settle(pool)
    if sessions is not None:
        await sessions.settled(driver, pool, run)
    s = pool.statistics()
    assert (s.in_use, s.waiting) == (0, 0), (run, s)


@pytest.mark.parametrize("contended", [False, True], ids=["idle", "contended"])
@pytest.mark.parametrize("driver", DRIVERS)
async def test_acquire_under_a_deadline_at_each_step(
    driver: str, contended: bool, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """``async with pool.acquire() as conn`` and a query in the body; contended: the pool's
    one connection is held by another task that gives it back a few steps later."""
    async with driver_pool(driver, request, tmp_path) as (pool, table, _):
        releases: list[asyncio.Task[None]] = []

        async def scenario() -> str:
            if contended:
                held = pool.acquire_nowait()
                releases.append(asyncio.create_task(release_after_steps(pool, held, 3)))
            async with pool.acquire() as conn:
                await conn.execute(f"INSERT INTO {table} VALUES (1)")
            return "done"

        async def check(run: Deadline) -> None:
            await asyncio.gather(*releases)
            releases.clear()
            # (No wait for the sessions the pool let go: no value is checked here.)
            await quiet(pool, driver, None, run)
            if not run.timed_out:
                assert run.result == "done"
            async with pool.acquire() as conn:
                assert not in_transaction(driver, conn), run
                await conn.execute(f"DELETE FROM {table}")

        covered = await deadline_at_each_step(scenario, check, max_steps=MAX_STEPS)
        assert len(covered) > 1  # at least one run was cut by its deadline


@pytest.mark.parametrize(
    "driver",
    [
        # Each run cut during the transaction discards its connection: a new one is made, and
        # the check waits for the server to end the old session (real time, each step).
        pytest.param("asyncpg", marks=[pytest.mark.postgres, pytest.mark.slow]),
        pytest.param("psycopg", marks=[pytest.mark.postgres, pytest.mark.slow]),
        pytest.param("sqlite"),
    ],
)
async def test_atomic_with_a_savepoint_under_a_deadline_at_each_step(
    driver: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """``pool.atomic()`` with a nested ``aiolease.atomic()``: besides the deadline's own
    checks, the work is all or nothing (kept whenever the caller got the result; a deadline
    during COMMIT may have let it land) and the connection goes back outside any
    transaction."""
    async with driver_pool(driver, request, tmp_path) as (pool, table, sessions):

        async def scenario() -> str:
            async with pool.atomic() as tx:
                await tx.connection.execute(f"INSERT INTO {table} VALUES (1)")
                async with aiolease.atomic(tx.connection):
                    await tx.connection.execute(f"INSERT INTO {table} VALUES (2)")
            return "committed"

        async def check(run: Deadline) -> None:
            await quiet(pool, driver, sessions, run)
            async with pool.acquire() as conn:
                assert not in_transaction(driver, conn), run
                assert id(raw(conn)) not in _open, run
                values = await fetch_values(driver, conn, table)
                await conn.execute(f"DELETE FROM {table}")
            assert values in ([], [1, 2]), (run, values)
            if not run.timed_out:
                assert (run.result, values) == ("committed", [1, 2]), run

        covered = await deadline_at_each_step(scenario, check, max_steps=MAX_STEPS)
        assert len(covered) > 1
