"""aiolease.otel against the live services: driver pools' names, a Redis limiter."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest
from metrics_helpers import Collected, instrumented, traced

POOL = "db.client.connection.pool.name"


def _expected_name(dsn: str) -> str:
    url = urlsplit(dsn)
    return f"{url.hostname}:{url.port or 5432}/{url.path.lstrip('/')}"


@pytest.mark.postgres
async def test_asyncpg_pool_is_named_by_address_and_database(pg_dsn: str) -> None:
    from aiolease.asyncpg import create_pool

    with instrumented() as reader:
        async with create_pool(pg_dsn, max_size=2) as pool, pool.acquire() as conn:
            assert await conn.fetchval("SELECT 1") == 1
            got = Collected(reader)
        name = _expected_name(pg_dsn)
        count = got["db.client.connection.count"]
        assert count.value(**{POOL: name, "db.client.connection.state": "used"}) == 1
        created = got["db.client.connection.create_time"].value(**{POOL: name})
        assert created.count == 1
        assert created.sum > 0
        named = create_pool(pg_dsn, name="billing")
        assert Collected(reader)["db.client.connection.max"].has(**{POOL: "billing"})
        await named.aclose()


@pytest.mark.postgres
async def test_psycopg_pool_is_named_by_address_and_database(pg_dsn: str) -> None:
    from aiolease.psycopg import create_pool

    with instrumented() as reader:
        async with create_pool(pg_dsn, max_size=2) as pool:
            async with pool.acquire() as conn:
                await conn.execute("SELECT 1")
            got = Collected(reader)
    wait = got["db.client.connection.wait_time"].value(**{POOL: _expected_name(pg_dsn)})
    assert wait.count == 1


@pytest.mark.postgres
@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_postgres_transaction_and_waited_acquire_spans(pg_dsn: str, driver: str) -> None:
    import importlib

    create_pool = importlib.import_module(f"aiolease.{driver}").create_pool
    with traced() as t:
        async with create_pool(pg_dsn, max_size=1, name="traced") as pool:
            async with pool.atomic() as tx:
                waiter = asyncio.ensure_future(pool.acquire(timeout=5))
                await asyncio.sleep(0.05)
                await tx.connection.execute("SELECT 1")
            await pool.release(await waiter)  # it waited for the transaction's connection
    span = t.one("aiolease.transaction")
    assert dict(span.attributes or {}) == {
        "db.system": "postgresql",
        "aiolease.transaction.outcome": "commit",
    }
    # The first acquire waited for the pool's first connection to be made, the second
    # for the transaction's connection.
    first, acquire = t.spans("aiolease.pool.acquire")
    assert dict(first.attributes or {}) == {POOL: "traced"}
    assert dict(acquire.attributes or {}) == {POOL: "traced"}
    assert acquire.end_time is not None
    assert acquire.start_time is not None
    assert acquire.end_time - acquire.start_time >= 0.04e9


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[object]:
    import redis.asyncio as redis_asyncio

    client = redis_asyncio.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.mark.redis
async def test_redis_concurrency_limiter(redis_client: object) -> None:
    from aiolease.redis import RedisConcurrencyLimiter

    name = f"otel-{uuid.uuid4().hex[:8]}"
    client: object = redis_client
    try:
        with instrumented() as reader:
            sem = RedisConcurrencyLimiter(client, name, 1)  # type: ignore[arg-type]
            try:
                first = await sem.acquire()
                waiter = asyncio.create_task(sem.acquire().__aenter__())
                await asyncio.sleep(0.2)
                mid = Collected(reader)
                assert (
                    mid["aiolease.limiter.queued_requests"].value(**{"aiolease.limiter.name": name})
                    == 1
                )
                for permit in (first, waiter):
                    if isinstance(permit, asyncio.Task):
                        permit = await permit
                    done = permit.release()  # the Redis call runs in a task
                    if done is not None:
                        await done
                got = Collected(reader)
            finally:
                await sem.aclose()
        requests = got["aiolease.limiter.requests"]
        assert (
            requests.value(**{"aiolease.limiter.name": name, "aiolease.limiter.result": "acquired"})
            == 2
        )
        queued = got["aiolease.limiter.request.time_in_queue"].value(
            **{"aiolease.limiter.name": name}
        )
        assert queued.count == 1
        assert queued.sum >= 0.2
    finally:
        keys = [k async for k in client.scan_iter(match=f"*{name}*")]  # type: ignore[attr-defined]
        if keys:
            await client.delete(*keys)  # type: ignore[attr-defined]
