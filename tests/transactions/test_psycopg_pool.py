"""aiolease.psycopg.create_pool: check discards dead connections, reset cleans transactions."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest

import aiolease
import aiolease.psycopg


def raw(conn: Any) -> Any:
    """The driver connection behind a pool's lease proxy (white-box checks across leases)."""
    return getattr(conn, "_aiolease_origin", conn)


pytestmark = pytest.mark.timeout(30)


async def pid_of(conn: Any) -> int:
    return int(raw(conn).info.backend_pid)


async def test_returns_an_unopened_pool_of_autocommit_connections(pg_dsn: str) -> None:
    pool = aiolease.psycopg.create_pool(pg_dsn, max_size=2, name="pg")
    assert isinstance(pool, aiolease.Pool)
    assert pool.statistics().size == 0
    async with pool, pool.acquire() as conn:
        assert isinstance(raw(conn), psycopg.AsyncConnection)  # behind the lease proxy
        assert conn.autocommit
        await conn.execute("SELECT 1")
    pool = aiolease.psycopg.create_pool(pg_dsn, autocommit=False)
    async with pool, pool.acquire() as conn:
        assert not conn.autocommit


async def test_reset_rolls_back_a_transaction_left_open(pg_dsn: str) -> None:
    async with aiolease.psycopg.create_pool(pg_dsn, max_size=1) as pool:
        async with pool.acquire() as conn:
            await conn.execute("BEGIN")
            await conn.execute("CREATE TEMP TABLE left_open (x int)")
            first = await pid_of(conn)
        async with pool.acquire() as conn:
            assert await pid_of(conn) == first  # reused, not discarded
            assert raw(conn).info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            cur = await conn.execute("SELECT to_regclass('pg_temp.left_open') IS NULL")
            assert await cur.fetchone() == (True,)  # the open transaction was rolled back


async def test_reset_rolls_back_an_aborted_transaction(pg_dsn: str) -> None:
    async with aiolease.psycopg.create_pool(pg_dsn, max_size=1) as pool:
        async with pool.acquire() as conn:
            await conn.execute("BEGIN")
            with pytest.raises(psycopg.errors.DivisionByZero):
                await conn.execute("SELECT 1/0")
            assert raw(conn).info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        async with pool.acquire() as conn:
            assert raw(conn).info.transaction_status == psycopg.pq.TransactionStatus.IDLE


async def test_check_discards_a_connection_killed_while_idle(pg_dsn: str) -> None:
    async with (
        aiolease.psycopg.create_pool(pg_dsn, max_size=1) as pool,
        await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as killer,
    ):
        async with pool.acquire() as conn:
            victim = await pid_of(conn)
        await killer.execute("SELECT pg_terminate_backend(%s)", (victim,))
        async with pool.acquire() as conn:
            # psycopg notices the dead socket on its next use; the pool must not
            # hand it out once it is known broken.
            if await pid_of(conn) == victim:
                with pytest.raises(psycopg.OperationalError):
                    await conn.execute("SELECT 1")
        async with pool.acquire() as conn:
            assert await pid_of(conn) != victim
            await conn.execute("SELECT 1")


async def test_reset_discards_a_connection_released_mid_query(pg_dsn: str) -> None:
    async with aiolease.psycopg.create_pool(pg_dsn, max_size=1) as pool:
        manager = pool.manager
        async with pool.acquire() as conn:
            first = await pid_of(conn)
        conn = await pool.acquire()
        # A connection released while a query runs (state ACTIVE) is discarded.
        raw(conn).pgconn.send_query(b"SELECT pg_sleep(0.2)")
        assert raw(conn).pgconn.transaction_status == psycopg.pq.TransactionStatus.ACTIVE
        assert isinstance(manager, aiolease.psycopg.PsycopgManager)
        await pool.release(conn)
        assert pool.statistics().discarded == 1
        async with pool.acquire() as conn:
            assert await pid_of(conn) != first


async def test_manager_validates_reset_timeout(pg_dsn: str) -> None:
    with pytest.raises(ValueError, match="reset_timeout"):
        aiolease.psycopg.PsycopgManager(pg_dsn, reset_timeout=0)
    with pytest.raises(TypeError, match="reset_timeout"):
        aiolease.psycopg.PsycopgManager(pg_dsn, reset_timeout="1")  # type: ignore[arg-type]


@pytest.mark.parametrize("conninfo", [None, 5, b"host=h"])
def test_a_conninfo_that_is_not_a_str_is_named_at_the_call(conninfo: object) -> None:
    # Found by a new user's probe: create_pool(None) raised AttributeError "'NoneType'
    # object has no attribute 'encode'" from psycopg's parser.
    name = type(conninfo).__name__
    with pytest.raises(TypeError, match=f"conninfo must be a str, got {name}"):
        aiolease.psycopg.PsycopgManager(conninfo)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="conninfo must be a str"):
        aiolease.psycopg.create_pool(conninfo)  # type: ignore[arg-type]


async def test_pool_atomic_on_psycopg_pool_commits(pg_dsn: str) -> None:
    async with aiolease.psycopg.create_pool(pg_dsn, max_size=2) as pool:
        results = await asyncio.gather(
            *(aiolease.run_transaction(pool, lambda c: _one(c)) for _ in range(4))
        )
    assert results == [1, 1, 1, 1]


async def _one(conn: Any) -> int:
    cur = await conn.execute("SELECT 1")
    row = await cur.fetchone()
    return int(row[0])
