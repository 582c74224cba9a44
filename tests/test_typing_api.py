"""Typing test of the public Pool API: checked by ``mypy --strict`` (``assert_type``), and run.

Like attrs' typing examples: if a public signature loses its precision
(``Pool[T]`` turning into ``Pool[Any]``, ``acquire()`` no longer yielding
``T``), mypy fails on this file.
"""

from __future__ import annotations

import asyncio
from typing import assert_type

import pytest

import aiolease
from aiolease import Manager, Pool, PoolStatistics, ResourceInfo
from aiolease.testing import FakeConnection, FakeManager, FakeResource

pytestmark = pytest.mark.aiolease_virtual_time


class Conn:
    """A resource type of our own."""

    def __init__(self, n: int) -> None:
        self.n = n


class ConnManager(Manager[Conn]):
    def __init__(self) -> None:
        self.made = 0

    async def create(self) -> Conn:
        self.made += 1
        return Conn(self.made)

    async def check(self, resource: Conn, info: ResourceInfo) -> None:
        assert_type(info.created_at, float)
        assert_type(info.last_used_at, float)
        assert_type(info.uses, int)

    async def reset(self, resource: Conn, info: ResourceInfo) -> None:
        pass

    async def close(self, resource: Conn) -> None:
        pass


async def test_pool_generic_api() -> None:
    pool = Pool(
        ConnManager(),
        min_size=1,
        max_size=4,
        acquire_timeout=5.0,
        max_waiting=10,
        max_lifetime=3600.0,
        idle_timeout=60.0,
        leak_timeout=30.0,
        name="typed",
    )
    assert_type(pool, Pool[Conn])
    async with pool as p:
        assert_type(p, Pool[Conn])
        async with pool.acquire() as conn:
            assert_type(conn, Conn)
        async with pool.acquire(timeout=1.5) as conn2:
            assert_type(conn2, Conn)
        async with pool.acquire(timeout=None) as conn3:
            assert_type(conn3, Conn)
        c = await pool.acquire()
        assert_type(c, Conn)
        await pool.release(c)
        fut = asyncio.ensure_future(pool.acquire())
        c2 = await fut
        assert_type(c2, Conn)
        await pool.release(c2, discard=True)
        c3 = pool.acquire_nowait()
        assert_type(c3, Conn)
        await pool.release(c3)
        await pool.resize(min_size=0, max_size=2)
        await pool.resize(max_size=3)
        await pool.expire()
        stats = pool.statistics()
        assert_type(stats, PoolStatistics)
        assert_type(stats.size, int)
        assert_type(stats.wait_time_total, float)
        assert_type(pool.closed, bool)
        assert_type(pool.name, str | None)
        assert_type(pool.min_size, int)
        assert_type(pool.max_size, int)
        assert_type(pool.manager, Manager[Conn])
    await pool.aclose(timeout=1.0)
    with pytest.raises(aiolease.PoolClosed):
        await pool.open()


async def test_pool_open_and_aclose() -> None:
    pool: Pool[FakeResource] = Pool(FakeManager())
    await pool.open(wait=False)
    r = await pool.acquire()
    assert_type(r, FakeResource)
    await pool.release(r)
    await pool.aclose()


async def test_from_callables_infers_resource_type() -> None:
    async def create() -> bytes:
        return b"x"

    def close_sync(resource: bytes) -> None:
        pass

    async def close_async(resource: bytes) -> None:
        pass

    pool = Pool.from_callables(create, close_sync, max_size=2)
    assert_type(pool, Pool[bytes])
    pool2 = Pool.from_callables(create, close_async)
    assert_type(pool2, Pool[bytes])
    pool3 = Pool.from_callables(create)
    assert_type(pool3, Pool[bytes])
    async with pool, pool.acquire() as b:
        assert_type(b, bytes)
    for p in (pool2, pool3):
        await p.aclose()


def test_errors_typed() -> None:
    def handle(exc: Exception) -> str:
        if isinstance(exc, aiolease.PoolTimeout):
            assert_type(exc, aiolease.PoolTimeout)
            return "timeout"
        if isinstance(exc, aiolease.PoolClosed | aiolease.TooManyWaiters | aiolease.WouldBlock):
            return "pool"
        return "other"

    assert handle(aiolease.PoolTimeout()) == "timeout"
    assert handle(aiolease.WouldBlock()) == "pool"


async def test_pool_atomic_is_typed_with_the_pools_connection_type() -> None:
    async def create() -> FakeConnection:
        return FakeConnection()

    async with Pool.from_callables(create, max_size=1) as pool, pool.atomic() as tx:
        assert_type(tx, aiolease.Transaction[FakeConnection])
        assert_type(tx.connection, FakeConnection)
        await tx.connection.execute("SELECT 1")


async def test_retries_on_a_pool_are_typed_with_the_pools_connection_type() -> None:
    async def create() -> FakeConnection:
        return FakeConnection()

    async def work(conn: FakeConnection) -> int:
        await conn.execute("SELECT 1")
        return 7

    async with Pool.from_callables(create, max_size=1) as pool:
        # fn gets the pool's connection type (a fn for another type is a type error)...
        assert_type(await aiolease.run_transaction(pool, work), int)
        # ...and each attempt's transaction holds it.
        async for attempt in aiolease.transaction_attempts(pool):
            async with attempt as tx:
                assert_type(tx.connection, FakeConnection)
                await tx.connection.execute("SELECT 1")
