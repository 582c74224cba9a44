"""The "Pools" contract over the real drivers (black box: the public API only).

The generic ``Pool`` promises are proved in tests/pool/; these run the same promises
through ``aiolease.asyncpg`` / ``aiolease.psycopg`` (live PostgreSQL, ``pg_dsn``) and
``aiolease.sqlite`` (a temporary file), where the driver changes what can go wrong.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import aiolease
import aiolease.asyncpg
import aiolease.psycopg
import aiolease.sqlite

DRIVERS = ["sqlite", "asyncpg", "psycopg"]
DOWN_DSN = "postgresql://postgres@127.0.0.1:1/nowhere"


@pytest.fixture(params=DRIVERS)
def make_pool(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[..., aiolease.Pool[Any]]:
    """A function making an unopened driver pool with the given Pool options."""
    driver: str = request.param
    if driver == "sqlite":
        return lambda **options: aiolease.sqlite.create_pool(tmp_path / "a.db", **options)
    dsn: str = request.getfixturevalue("pg_dsn")
    module: Any = getattr(aiolease, driver)
    return lambda **options: module.create_pool(dsn, **options)


async def one(conn: Any) -> Any:
    """Run ``SELECT 1`` through whichever driver made ``conn``."""
    if hasattr(conn, "fetchval"):  # asyncpg
        return await conn.fetchval("SELECT 1")
    cursor = await conn.execute("SELECT 1")  # psycopg and aiosqlite
    row = await cursor.fetchone()
    return row[0]


async def test_reentering_an_acquire_raises_and_sequential_reuse_works(
    make_pool: Callable[..., aiolease.Pool[Any]],
) -> None:
    async with make_pool(max_size=1) as pool:
        cm = pool.acquire()
        async with cm as conn:
            with pytest.raises(RuntimeError):
                async with cm:
                    pass
            assert await one(conn) == 1
        async with cm as conn:
            assert await one(conn) == 1
        stats = pool.statistics()
        assert (stats.size, stats.in_use) == (1, 0)


async def test_waiting_on_itself_is_a_pool_timeout_at_once(
    make_pool: Callable[..., aiolease.Pool[Any]],
) -> None:
    async with make_pool(max_size=1, acquire_timeout=None) as pool:
        async with pool.acquire():
            with pytest.raises(aiolease.PoolTimeout, match="waiting on itself"):
                await pool.acquire()
        async with pool.acquire() as conn:
            assert await one(conn) == 1


async def test_a_connection_used_after_its_lease_raises_resource_released(
    make_pool: Callable[..., aiolease.Pool[Any]],
) -> None:
    async with make_pool(max_size=1) as pool:
        async with pool.acquire() as kept:
            pass
        async with pool.acquire() as current:
            with pytest.raises(aiolease.ResourceReleased, match=r"execute|fetchval"):
                await one(kept)
            assert await one(current) == 1
        assert isinstance(aiolease.ResourceReleased(), aiolease.AioleaseError)


async def test_aclose_timeout_closes_a_lease_still_out(
    make_pool: Callable[..., aiolease.Pool[Any]],
) -> None:
    pool = make_pool(max_size=2)
    await pool.open()
    held = await pool.acquire()
    await pool.aclose(timeout=0.2)
    with pytest.raises(aiolease.ResourceReleased):
        await one(held)
    await pool.release(held)  # a late release after aclose is accepted, closes nothing twice
    stats = pool.statistics()
    assert (stats.size, stats.in_use, stats.idle) == (0, 0, 0)
    with pytest.raises(aiolease.PoolClosed):
        await pool.acquire()


async def test_cancelled_acquirers_lose_no_capacity(
    make_pool: Callable[..., aiolease.Pool[Any]],
) -> None:
    async with make_pool(max_size=2) as pool:

        async def use() -> None:
            async with pool.acquire() as conn:
                await one(conn)

        for step in range(6):  # cancel after a growing number of loop turns
            tasks = [asyncio.create_task(use()) for _ in range(4)]
            for _ in range(step):
                await asyncio.sleep(0)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            assert pool.statistics().in_use == 0
            assert pool.statistics().size <= 2
        # Both slots still serve at the same time.
        async with pool.acquire(timeout=10) as a, pool.acquire(timeout=10) as b:
            assert (await one(a), await one(b)) == (1, 1)


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_a_down_backend_fails_fast_and_a_timeout_carries_the_cause(driver: str) -> None:
    module: Any = getattr(aiolease, driver)
    pool = module.create_pool(DOWN_DSN, max_size=1, backoff_base=5.0, backoff_max=5.0)
    async with pool:
        with pytest.raises(Exception) as first:  # the driver's own connection error
            await pool.acquire()
        assert not isinstance(first.value, aiolease.AioleaseError)
        # The next attempt is backed off past this acquirer's timeout.
        with pytest.raises(aiolease.PoolTimeout) as timed_out:
            await pool.acquire(timeout=0.2)
        assert timed_out.value.__cause__ is not None
        stats = pool.statistics()
        assert (stats.size, stats.in_use, stats.waiting) == (0, 0, 0)


@pytest.mark.parametrize("driver", DRIVERS)
def test_create_pool_refuses_an_unknown_keyword_at_the_call(driver: str, tmp_path: Path) -> None:
    module: Any = getattr(aiolease, driver)
    target = str(tmp_path / "a.db") if driver == "sqlite" else DOWN_DSN
    with pytest.raises(TypeError, match="no_such_option"):
        module.create_pool(target, no_such_option=1)
    pool = module.create_pool(
        target,
        min_size=0,
        max_size=3,
        acquire_timeout=1.0,
        max_waiting=2,
        max_lifetime=60.0,
        idle_timeout=30.0,
        leak_timeout=10.0,
        name="accept",
        backoff_base=0.5,
        backoff_max=2.0,
    )
    assert isinstance(pool, aiolease.Pool)
    assert pool.statistics().max_size == 3


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_aclose_timeout_ends_a_statement_running_on_a_lease(driver: str, pg_dsn: str) -> None:
    module: Any = getattr(aiolease, driver)
    pool = module.create_pool(pg_dsn, max_size=1)
    await pool.open()
    started = asyncio.Event()

    async def hold() -> None:
        async with pool.acquire() as conn:
            started.set()
            await conn.execute("SELECT pg_sleep(5)")

    holder = asyncio.create_task(hold())
    await started.wait()
    await asyncio.sleep(0.1)
    await asyncio.wait_for(pool.aclose(timeout=0.2), 15)
    done, _ = await asyncio.wait([holder], timeout=15)
    assert done, "the statement on the closed lease never ended"
    assert holder.exception() is not None
    stats = pool.statistics()
    assert (stats.size, stats.in_use) == (0, 0)


async def test_aclose_with_a_lease_out_warns_then_cancelling_the_closer_ends_the_wait(
    make_pool: Callable[..., aiolease.Pool[Any]], caplog: pytest.LogCaptureFixture
) -> None:
    pool = make_pool(max_size=1)
    await pool.open()
    held = await pool.acquire()
    caplog.set_level("WARNING", logger="aiolease.pool")
    closer = asyncio.create_task(pool.aclose())
    for _ in range(60):  # the contract's bound is 5 s; poll in small steps up to it
        if any(r.name == "aiolease.pool" and r.levelname == "WARNING" for r in caplog.records):
            break
        await asyncio.sleep(0.1)
    warned = [r for r in caplog.records if r.name == "aiolease.pool" and r.levelname == "WARNING"]
    assert warned, "aclose() with a lease out logged no warning"
    assert "lease" in warned[0].getMessage()
    assert not closer.done()
    closer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closer
    await pool.release(held)
    await pool.aclose(timeout=5)
    stats = pool.statistics()
    assert (stats.size, stats.in_use) == (0, 0)


async def test_leak_timeout_reports_a_lease_held_too_long_once(
    make_pool: Callable[..., aiolease.Pool[Any]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("WARNING", logger="aiolease")
    async with make_pool(max_size=1, leak_timeout=0.05) as pool:
        async with pool.acquire() as conn:
            for _ in range(100):
                if pool.statistics().leaks:
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.2)  # a second report would come in this time
            assert await one(conn) == 1
        assert pool.statistics().leaks == 1
        async with pool.acquire():
            pass
        assert pool.statistics().leaks == 1
    assert any("test_pool_driver_contract" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("option", ["max_lifetime", "idle_timeout"])
async def test_an_idle_connection_past_its_deadline_is_closed_and_replaced(
    make_pool: Callable[..., aiolease.Pool[Any]], option: str
) -> None:
    async with make_pool(max_size=1, **{option: 0.1}) as pool:
        async with pool.acquire() as conn:
            assert await one(conn) == 1
        for _ in range(100):  # housekeeping closes it at its deadline, unasked
            if pool.statistics().closed:
                break
            await asyncio.sleep(0.02)
        stats = pool.statistics()
        assert (stats.closed, stats.size, stats.idle) == (1, 0, 0)
        async with pool.acquire() as conn:
            assert await one(conn) == 1
        assert pool.statistics().created == 2


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_a_server_that_never_answers_neither_hangs_acquire_nor_close(driver: str) -> None:
    """A creation stuck on a silent peer: the acquirer's timeout still holds, and aclose()
    wakes every waiter with PoolClosed instead of waiting for the connect to give up."""

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never answer; end when the client hangs up
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    module: Any = getattr(aiolease, driver)
    try:
        pool = module.create_pool(
            f"postgresql://postgres@127.0.0.1:{port}/x?sslmode=disable", max_size=1
        )
        await pool.open()
        with pytest.raises(aiolease.PoolTimeout):
            await pool.acquire(timeout=0.2)
        waiters = [asyncio.ensure_future(pool.acquire(timeout=None)) for _ in range(3)]
        await asyncio.sleep(0.1)
        await asyncio.wait_for(pool.aclose(), 15)
        results = await asyncio.wait_for(asyncio.gather(*waiters, return_exceptions=True), 15)
        assert all(isinstance(r, aiolease.PoolClosed) for r in results), results
        stats = pool.statistics()
        assert (stats.size, stats.waiting) == (0, 0)
    finally:
        server.close()
        await server.wait_closed()
