"""aiolease under anyio's cancel scopes (the asyncio backend Starlette and FastAPI run on).

anyio's cancellation is level-triggered: inside a cancelled ``CancelScope`` every await
raises ``CancelledError`` again until the scope exits, where asyncio delivers a
cancellation once. These tests cancel pools, transactions and limiters with
``anyio.move_on_after``/``fail_after`` at their awaits, with real services, and check
that capacity is kept, the database rolled back, the scope exits as anyio says (no
leaked, no swallowed cancellation) and that aiolease's own bounded clean-ups (in the
cancelled task) neither spin on the re-delivered cancellation nor give up on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import anyio
import httpx
import pytest
from asgi_server import serve
from fastapi import FastAPI, Request

import aiolease
import aiolease._compat.psycopg
from aiolease import Pool
from aiolease.testing import FakeConnection, FakeManager, FaultProxy
from driver_pools import Sessions, settle, tagged

pytestmark = pytest.mark.timeout(60)

PG_SLEEP = "select pg_sleep(30)"


def consistent(pool: Pool[Any]) -> None:
    stats = pool.statistics()
    assert stats.in_use == 0, stats
    assert stats.waiting == 0, stats
    assert stats.size == stats.idle <= stats.max_size, stats


def aiolease_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("aiolease") and r.levelno >= logging.WARNING
    ]


# -- driver pools ---------------------------------------------------------------------


def _asyncpg_pool(dsn: str, tmp_path: Path, **kw: Any) -> Pool[Any]:
    import aiolease.asyncpg

    return aiolease.asyncpg.create_pool(dsn, **kw)


def _psycopg_pool(dsn: str, tmp_path: Path, **kw: Any) -> Pool[Any]:
    import aiolease.psycopg

    return aiolease.psycopg.create_pool(dsn, **kw)


def _sqlite_pool(dsn: str, tmp_path: Path, **kw: Any) -> Pool[Any]:
    import aiolease.sqlite

    return aiolease.sqlite.create_pool(str(tmp_path / "anyio.db"), **kw)


POOLS: dict[str, Callable[..., Pool[Any]]] = {
    "asyncpg": _asyncpg_pool,
    "psycopg": _psycopg_pool,
    "sqlite": _sqlite_pool,
}


@pytest.fixture(params=sorted(POOLS), name="db")
async def db_fixture(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[str, Pool[Any], str]]:
    """(driver, an open pool of max_size 2, a table name of this test); the pool's
    PostgreSQL sessions are named after the table (see :func:`settled`)."""
    kind: str = request.param
    dsn = "" if kind == "sqlite" else request.getfixturevalue("pg_dsn")
    table = f"anyio_{uuid.uuid4().hex[:10]}"
    named = {} if kind == "sqlite" else tagged(kind, table)
    pool = POOLS[kind](dsn, tmp_path, max_size=2, acquire_timeout=20, **named)
    async with pool:
        async with pool.acquire() as conn:
            await conn.execute(f"create table {table} (x int)")
        try:
            yield kind, pool, table
        finally:
            async with pool.acquire() as conn:
                await conn.execute(f"drop table {table}")


async def count_rows(kind: str, pool: Pool[Any], table: str) -> int:
    async with pool.acquire() as conn:
        if kind == "asyncpg":
            return int(await conn.fetchval(f"select count(*) from {table}"))
        cursor = await conn.execute(f"select count(*) from {table}")
        row = await cursor.fetchone()
        return int(row[0])


async def in_transaction(kind: str, pool: Pool[Any]) -> list[bool]:
    """Whether each idle connection of the pool is inside a transaction."""
    out = []
    for entry in list(pool._idle):
        conn = entry.resource
        if kind == "asyncpg":
            out.append(conn.is_in_transaction())
        elif kind == "psycopg":
            out.append(conn.info.transaction_status.name != "IDLE")
        else:
            out.append(conn.in_transaction)
    return out


@pytest.fixture(name="sessions")
async def sessions_fixture(
    db: tuple[str, Pool[Any], str], request: pytest.FixtureRequest
) -> AsyncIterator[Sessions | None]:
    """The server's view of the ``db`` pool's sessions (None for SQLite)."""
    kind, _, table = db
    if kind == "sqlite":
        yield None
        return
    async with Sessions(request.getfixturevalue("pg_dsn"), table) as sessions:
        yield sessions


async def settled(kind: str, pool: Pool[Any], sessions: Sessions | None, what: Any) -> None:
    """Once the pool has settled: every PostgreSQL session the pool let go has ended on the
    server, and its idle connections are outside any transaction as the server sees it
    (see driver_pools.Sessions.settled). SQLite: its idle connections are outside any
    transaction."""
    if sessions is None:
        states = [bool(entry.resource.in_transaction) for entry in pool._idle]
        assert states == [False] * len(states), what
        return
    await sessions.settled(kind, pool, what)


async def test_atomic_body_cancelled_by_move_on_after_rolls_back(
    db: tuple[str, Pool[Any], str],
) -> None:
    kind, pool, table = db
    committed: list[str] = []
    rolled_back: list[str] = []
    with anyio.move_on_after(0.3) as scope:
        async with pool.atomic() as tx:
            tx.on_commit(lambda: committed.append("x"))
            tx.on_rollback(lambda: rolled_back.append("x"))
            await tx.connection.execute(f"insert into {table} values (1)")
            await anyio.sleep(30)
    assert scope.cancelled_caught
    assert committed == []
    assert rolled_back == ["x"]
    await settle(pool)
    consistent(pool)
    assert await count_rows(kind, pool, table) == 0
    assert await in_transaction(kind, pool) == [False] * len(pool._idle)


async def test_atomic_nested_savepoint_cancelled_by_fail_after(
    db: tuple[str, Pool[Any], str],
) -> None:
    kind, pool, table = db

    async def body() -> None:
        with anyio.fail_after(0.3):
            async with pool.atomic() as tx:
                await tx.connection.execute(f"insert into {table} values (1)")
                async with aiolease.atomic(tx.connection):
                    await tx.connection.execute(f"insert into {table} values (2)")
                    async with aiolease.atomic(tx.connection):
                        await tx.connection.execute(f"insert into {table} values (3)")
                        await anyio.sleep(30)

    with pytest.raises(TimeoutError):
        await body()
    await settle(pool)
    consistent(pool)
    assert await count_rows(kind, pool, table) == 0
    assert await in_transaction(kind, pool) == [False] * len(pool._idle)


@pytest.mark.parametrize("kind", ["asyncpg", "psycopg"])
async def test_statement_cancelled_by_scope_rolls_back_and_keeps_capacity(
    kind: str, pg_dsn: str, tmp_path: Path
) -> None:
    table = f"anyio_{uuid.uuid4().hex[:10]}"
    async with POOLS[kind](pg_dsn, tmp_path, max_size=1, acquire_timeout=20) as pool:
        async with pool.acquire() as conn:
            await conn.execute(f"create table {table} (x int)")
        try:
            for _ in range(3):
                with anyio.move_on_after(0.3) as scope:
                    async with pool.atomic() as tx:
                        await tx.connection.execute(f"insert into {table} values (1)")
                        await tx.connection.execute(PG_SLEEP)
                assert scope.cancelled_caught
                await settle(pool)
                consistent(pool)
                assert await count_rows(kind, pool, table) == 0
        finally:
            async with pool.acquire() as conn:
                await conn.execute(f"drop table {table}")


async def test_psycopg_query_cancelled_by_scope_keeps_the_connection(
    pg_dsn: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The cancelled query is cancelled on the server within the grace and the connection
    kept, as under asyncio.timeout(): the re-delivered cancellation is not a second one."""
    async with _psycopg_pool(pg_dsn, tmp_path, max_size=1) as pool:
        with caplog.at_level(logging.INFO, logger="aiolease"):
            with anyio.move_on_after(0.3) as scope:
                async with pool.atomic() as tx:
                    await tx.connection.execute(PG_SLEEP)
            assert scope.cancelled_caught
            await settle(pool)
        consistent(pool)
        stats = pool.statistics()
        if aiolease._compat.psycopg.PRIVATE:
            assert (stats.created, stats.closed, stats.discarded) == (1, 0, 0), stats
            assert aiolease_warnings(caplog) == []
        async with pool.acquire() as conn:
            cursor = await conn.execute("select 1")
            assert await cursor.fetchone() == (1,)


# -- the generic pool at each await ---------------------------------------------------


@pytest.mark.parametrize("op", ["create", "check", "reset", "close"])
async def test_pool_cancelled_at_each_manager_await(
    op: Literal["create", "check", "reset", "close"],
) -> None:
    manager = FakeManager()
    async with Pool(manager, max_size=2, acquire_timeout=10) as pool:
        if op != "create":  # one idle resource, its check due
            async with pool.acquire():
                pass
        gate = manager.block(op)
        with anyio.move_on_after(0.2) as scope:
            if op == "close":
                r = await pool.acquire()
                await pool.release(r, discard=True)
            else:
                async with pool.acquire():
                    await anyio.sleep(30)
        assert scope.cancelled_caught
        gate.open()
        await settle(pool)
        consistent(pool)
        with anyio.fail_after(5):
            async with pool.acquire(), pool.acquire():
                pass
        consistent(pool)


async def test_pool_waiters_cancelled_by_scopes_keep_fifo_and_capacity() -> None:
    async with Pool(FakeManager(), max_size=1, acquire_timeout=None) as pool:
        order: list[int] = []

        async def waiter(i: int, limit: float) -> None:
            with anyio.move_on_after(limit):
                async with pool.acquire():
                    order.append(i)
                    await anyio.sleep(0.01)

        held = await pool.acquire()
        async with anyio.create_task_group() as tg:
            for i, limit in enumerate([30, 0.05, 30, 0.05, 30]):
                tg.start_soon(waiter, i, limit)
                await anyio.sleep(0.01)
            await anyio.sleep(0.2)
            await pool.release(held)
        assert order == [0, 2, 4]
        await settle(pool)
        consistent(pool)


async def test_pool_aclose_in_cancelled_scope_closes_everything() -> None:
    manager = FakeManager()
    pool = Pool(manager, min_size=2, max_size=2)
    await pool.open()
    out = await pool.acquire()
    with anyio.move_on_after(0.2) as scope:
        await pool.aclose()
    assert scope.cancelled_caught
    await pool.release(out)
    with anyio.fail_after(5):
        await pool.aclose()
    assert pool.statistics().size == 0


# -- transactions: the cleanup in the cancelled task ----------------------------------


async def test_rollback_after_scope_cancellation_does_not_spin(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While the shielded ROLLBACK runs, the re-delivered cancellation must not make the
    cancelled task wake at every loop iteration."""
    conn = FakeConnection()
    gate = conn.gate("^ROLLBACK")
    waits = 0
    real_wait = asyncio.wait

    async def counting_wait(*args: Any, **kwargs: Any) -> Any:
        nonlocal waits
        waits += 1
        return await real_wait(*args, **kwargs)

    async def open_later() -> None:
        await gate.reached.wait()
        await asyncio.sleep(0.3)
        gate.open()

    opener = asyncio.create_task(open_later())
    monkeypatch.setattr(asyncio, "wait", counting_wait)
    with anyio.move_on_after(0.1) as scope:
        async with aiolease.atomic(conn, cleanup_timeout=5):
            await conn.execute("INSERT")
            await anyio.sleep(30)
    monkeypatch.undo()
    await opener
    assert scope.cancelled_caught
    assert conn.statements == ["BEGIN", "INSERT", "ROLLBACK"]
    assert not conn.in_transaction
    assert waits < 10, f"the cancelled task woke {waits} times during a 0.3 s ROLLBACK"


async def test_commit_cancelled_by_scope_propagates_and_discards(
    pg_dsn: str, tmp_path: Path
) -> None:
    import aiolease.asyncpg

    async with aiolease.asyncpg.create_pool(pg_dsn, max_size=1) as pool:
        # The COMMIT waits on a lock held by another session: the scope fires during it.
        table = f"anyio_{uuid.uuid4().hex[:10]}"
        async with pool.acquire() as conn:
            await conn.execute(
                f"create table {table} (x int primary key deferrable initially deferred)"
            )
        import asyncpg

        other = await asyncpg.connect(pg_dsn)
        try:
            await other.execute("begin")
            await other.execute(f"insert into {table} values (1)")
            committed: list[str] = []
            with anyio.move_on_after(0.5) as scope:
                async with pool.atomic() as tx:
                    tx.on_commit(lambda: committed.append("x"))
                    await tx.connection.execute(f"insert into {table} values (1)")
            assert scope.cancelled_caught
            assert committed == []
            await other.execute("rollback")
            await settle(pool)
            consistent(pool)
            async with pool.acquire() as conn:
                assert not conn.is_in_transaction()
                await conn.execute(f"drop table {table}")
        finally:
            await other.close()


# -- limiters ---------------------------------------------------------------------------


async def _fifo_with_cancelled_waiters(acquire: Callable[[], Any]) -> list[int]:
    order: list[int] = []
    started = anyio.Event()

    async def holder() -> None:
        async with acquire():
            started.set()
            await anyio.sleep(0.3)

    async def waiter(i: int, limit: float) -> None:
        with anyio.move_on_after(limit):
            async with acquire():
                order.append(i)
                await anyio.sleep(0.01)

    async with anyio.create_task_group() as tg:
        tg.start_soon(holder)
        await started.wait()
        for i, limit in enumerate([30, 0.1, 30, 0.1, 30]):
            tg.start_soon(waiter, i, limit)
            await anyio.sleep(0.01)
    # cancelled while held: the slot comes back
    with anyio.move_on_after(0.1) as scope:
        async with acquire():
            await anyio.sleep(30)
    assert scope.cancelled_caught
    with anyio.fail_after(5):
        async with acquire():
            pass
    return order


async def _rate_with_cancelled_waiters(acquire: Callable[[], Any]) -> list[int]:
    """Five waiters on a 5/s limiter, the middle three cancelled by their scopes: which got
    admitted (the last takes the slot the cancelled ones gave back)."""
    got: list[int] = []

    async def waiter(i: int, limit: float) -> None:
        with anyio.move_on_after(limit):
            async with acquire():
                got.append(i)

    async with anyio.create_task_group() as tg:
        for i, limit in enumerate([30, 0.05, 0.05, 0.05, 30]):
            tg.start_soon(waiter, i, limit)
            await anyio.sleep(0.005)
    return got


async def test_local_limiters_under_scopes() -> None:
    sem = aiolease.ConcurrencyLimiter(1)
    assert await _fifo_with_cancelled_waiters(sem.acquire) == [0, 2, 4]
    stats = sem.statistics()
    assert (stats.in_use, stats.waiting) == (0, 0)
    group = aiolease.LimitGroup(aiolease.ConcurrencyLimiter(1), aiolease.RateLimiter(1000))
    assert await _fifo_with_cancelled_waiters(group.acquire) == [0, 2, 4]
    rate = aiolease.RateLimiter(5)
    # 4 got the slot the three cancelled waiters gave back
    assert await _rate_with_cancelled_waiters(rate.acquire) == [0, 4]
    assert rate.statistics().waiting == 0


async def test_redis_limiters_under_scopes(redis_url: str) -> None:
    import redis.asyncio as redis_asyncio

    from aiolease.redis import RedisConcurrencyLimiter, RedisRateLimiter

    client = redis_asyncio.Redis.from_url(redis_url)
    name = f"anyio-{uuid.uuid4().hex[:10]}"
    try:
        sem = RedisConcurrencyLimiter(client, name, 1)
        try:
            assert await _fifo_with_cancelled_waiters(sem.acquire) == [0, 2, 4]
        finally:
            await sem.aclose()
        rate = RedisRateLimiter(client, name + "-r", 5)
        try:
            assert await _rate_with_cancelled_waiters(rate.acquire) == [0, 4]
        finally:
            await rate.aclose()
    finally:
        keys = [k async for k in client.scan_iter(match=f"*{name}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


# -- a FastAPI app: a timeout middleware, a client that disconnects -------------------


class _TimeoutMiddleware:
    """A plain ASGI middleware that gives each request ``seconds`` (anyio.move_on_after),
    then answers 504: the usual shape of a request timeout in Starlette apps."""

    def __init__(self, app: Any, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] == "/hold-until-disconnect":
            await self.app(scope, receive, send)
            return
        with anyio.move_on_after(self.seconds) as timeout:
            await self.app(scope, receive, send)
        if timeout.cancelled_caught:
            await send({"type": "http.response.start", "status": 504, "headers": []})
            await send({"type": "http.response.body", "body": b"timeout"})


async def test_fastapi_handler_cancelled_by_timeout_or_disconnect(pg_dsn: str) -> None:
    import aiolease.asyncpg

    table = f"anyio_{uuid.uuid4().hex[:10]}"
    pool = aiolease.asyncpg.create_pool(pg_dsn, max_size=1, acquire_timeout=5)
    limiter = aiolease.ConcurrencyLimiter(1)
    rolled_back: list[str] = []
    app = FastAPI()

    async def hold(slow_sql: bool) -> None:
        async with limiter.acquire(timeout=5), pool.atomic() as tx:
            tx.on_rollback(lambda: rolled_back.append("x"))
            await tx.connection.execute(f"insert into {table} values (1)")
            if slow_sql:
                await tx.connection.execute(PG_SLEEP)
            else:
                await anyio.sleep(30)

    @app.get("/hold")
    async def hold_route(slow: int = 0) -> dict[str, str]:
        await hold(bool(slow))
        return {}  # pragma: no cover

    @app.get("/hold-until-disconnect")
    async def disconnect_route(request: Request) -> dict[str, str]:
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                while not await request.is_disconnected():  # noqa: ASYNC110
                    await anyio.sleep(0.02)
                tg.cancel_scope.cancel()

            tg.start_soon(watch)
            await hold(True)
        return {}  # pragma: no cover

    @app.get("/state")
    async def state() -> dict[str, Any]:
        async with pool.acquire() as conn:
            rows = await conn.fetchval(f"select count(*) from {table}")
        stats = pool.statistics()
        return {
            "rows": rows,
            "in_use": stats.in_use,
            "size": stats.size,
            "sem": limiter.statistics().in_use,
        }

    async with pool:
        async with pool.acquire() as conn:
            await conn.execute(f"create table {table} (x int)")
        try:
            async with (
                serve(_TimeoutMiddleware(app, 0.3)) as url,
                httpx.AsyncClient(base_url=url, timeout=10) as client,
            ):
                for slow in (0, 1, 0, 1):
                    response = await client.get("/hold", params={"slow": slow})
                    assert response.status_code == 504
                    state_now = (await client.get("/state")).json()
                    assert state_now == {"rows": 0, "in_use": 0, "size": 1, "sem": 0}
                for _ in range(2):
                    with pytest.raises(httpx.ReadTimeout):
                        # the client gives up: the server sees the disconnect
                        await client.get("/hold-until-disconnect", timeout=0.3)
                    with anyio.fail_after(10):
                        while True:
                            state_now = (await client.get("/state")).json()
                            if state_now["in_use"] == 0 and state_now["sem"] == 0:
                                break
                            await anyio.sleep(0.05)
                    assert state_now == {"rows": 0, "in_use": 0, "size": 1, "sem": 0}
            assert rolled_back == ["x"] * 6
            await settle(pool)
            consistent(pool)
        finally:
            async with pool.acquire() as conn:
                await conn.execute(f"drop table {table}")


# -- a sweep: the scope cancelled after each number of loop steps ---------------------


async def _cancel_scope_after_steps(fn: Callable[[], Any], steps: int) -> tuple[bool, bool]:
    """Run ``fn()`` in a task inside an anyio CancelScope cancelled after ``steps`` loop
    steps. Returns (the scope caught its cancellation, ``fn`` returned). Nothing may
    propagate out of the scope: its own cancellation is caught, never leaked or replaced."""
    scope = anyio.CancelScope()
    returned = False

    async def run() -> None:
        nonlocal returned
        with scope:
            await fn()
            returned = True

    task = asyncio.create_task(run())
    for _ in range(steps):
        await asyncio.sleep(0)
    scope.cancel()
    await task
    assert scope.cancelled_caught != returned, (steps, scope.cancelled_caught, returned)
    return scope.cancelled_caught, returned


async def _explain(pool: Pool[Any], sessions: Sessions | None, history: Any) -> str:
    """A failed sweep's message: the last iterations (step count, whether the scope caught
    the cancellation, rows, connections discarded so far), the pool's statistics, and the
    server's sessions of the pool."""
    view = [] if sessions is None else await sessions.view()
    return f"history={history} statistics={pool.statistics()} server={view}"


async def test_pool_atomic_sweep_under_scope(
    db: tuple[str, Pool[Any], str], sessions: Sessions | None
) -> None:
    kind, pool, table = db
    history: list[tuple[int, bool, int, int]] = []
    for k in range(3000):  # until the block ends before the cancellation
        hooked: list[str] = []

        async def body(hooked: list[str] = hooked) -> None:
            async with pool.atomic() as tx:
                await tx.connection.execute(f"insert into {table} values (1)")
                async with aiolease.atomic(tx.connection):
                    await tx.connection.execute(f"insert into {table} values (2)")
                tx.on_commit(lambda: hooked.append("commit"))

        cancelled, _ = await _cancel_scope_after_steps(body, k)
        await settle(pool)
        consistent(pool)
        assert await in_transaction(kind, pool) == [False] * len(pool._idle), k
        # Before counting: a discarded connection's COMMIT may still land on the server.
        await settled(kind, pool, sessions, (k, history[-5:]))
        rows = await count_rows(kind, pool, table)
        history.append((k, cancelled, rows, pool.statistics().discarded))
        if rows not in (0, 2):
            raise AssertionError(await _explain(pool, sessions, history[-6:]))
        if hooked:
            assert rows == 2, k
        async with pool.acquire() as conn:
            await conn.execute(f"delete from {table}")
        if not cancelled:
            assert rows == 2, k
            assert hooked == ["commit"], k
            return
    raise AssertionError("the block never ended before its cancellation")


async def test_run_transaction_sweep_under_scope(
    db: tuple[str, Pool[Any], str], sessions: Sessions | None
) -> None:
    kind, pool, table = db
    history: list[tuple[int, bool, int, int]] = []
    for k in range(3000):
        tries: list[int] = []

        async def fn(conn: Any, tries: list[int] = tries) -> None:
            tries.append(1)
            await conn.execute(f"insert into {table} values ({len(tries)})")
            if len(tries) == 1:
                raise _serialization_failure(kind)

        async def body() -> None:
            await aiolease.run_transaction(pool, fn, backoff=0.001, max_backoff=0.001)

        cancelled, _ = await _cancel_scope_after_steps(body, k)
        await settle(pool)
        consistent(pool)
        assert await in_transaction(kind, pool) == [False] * len(pool._idle), k
        await settled(kind, pool, sessions, (k, history[-5:]))
        rows = await count_rows(kind, pool, table)
        history.append((k, cancelled, rows, pool.statistics().discarded))
        if rows not in (0, 1):
            raise AssertionError(await _explain(pool, sessions, history[-6:]))
        async with pool.acquire() as conn:
            await conn.execute(f"delete from {table}")
        if not cancelled:
            assert rows == 1, k
            return
    raise AssertionError("run_transaction never ended before its cancellation")


def _serialization_failure(kind: str) -> Exception:
    if kind == "asyncpg":
        import asyncpg

        return asyncpg.exceptions.SerializationError("could not serialize access (test)")
    if kind == "psycopg":
        import psycopg

        return psycopg.errors.SerializationFailure("could not serialize access (test)")
    import sqlite3

    return sqlite3.OperationalError("database is locked")


@contextlib.asynccontextmanager
async def _slow_and_fast(redis_url: str) -> AsyncIterator[tuple[FaultProxy, Any, Any, str]]:
    """A Redis client whose round trips go through a FaultProxy (this worker's, slowed down
    by the test), another straight to Redis (another process's), and a limiter name of the
    test's own; the name's keys are deleted and both clients closed afterwards."""
    import redis.asyncio as redis_asyncio

    parts = urlsplit(redis_url)
    name = f"anyio-{uuid.uuid4().hex[:10]}"
    fast = redis_asyncio.Redis.from_url(redis_url)
    async with FaultProxy(parts.hostname or "127.0.0.1", parts.port or 6379) as proxy:
        host, port = proxy.address
        slow = redis_asyncio.Redis.from_url(f"redis://{host}:{port}{parts.path}")
        try:
            yield proxy, slow, fast, name
        finally:
            keys = [k async for k in fast.scan_iter(match=f"*{name}*")]
            if keys:
                await fast.delete(*keys)
            await slow.aclose()
            await fast.aclose()


async def test_asgi_redis_slot_given_back_before_an_outer_timeout_answers(redis_url: str) -> None:
    """RateLimitMiddleware gives a concurrency slot back before the response leaves, also
    when a timeout middleware around it (anyio.move_on_after) cancels the request: a
    client's next request, to any worker, never meets its previous one."""
    from aiolease.asgi import RateLimitMiddleware
    from aiolease.redis import RedisConcurrencyLimiter

    async with _slow_and_fast(redis_url) as (proxy, slow, fast, name):
        # This worker's round trips to Redis take 0.1 s; another worker's are fast.
        worker = RedisConcurrencyLimiter(slow, name, 1, call_timeout=3)
        other = RedisConcurrencyLimiter(fast, name, 1)
        try:
            await worker.acquire_nowait("warm-up")  # connected before the latency
            proxy.set_latency(0.05)

            async def endpoint(scope: Any, receive: Any, send: Any) -> None:
                await anyio.sleep(30)

            app = _TimeoutMiddleware(
                RateLimitMiddleware(endpoint, limiter=worker, key=lambda scope: "k"), 0.5
            )
            sent: list[dict[str, Any]] = []

            async def receive() -> dict[str, Any]:  # pragma: no cover - never called
                await anyio.sleep(60)
                return {"type": "http.disconnect"}

            async def send(message: dict[str, Any]) -> None:
                sent.append(message)

            scope = {"type": "http", "path": "/x", "method": "GET", "headers": []}
            for _ in range(2):
                sent.clear()
                await app(scope, receive, send)
                assert sent[0]["status"] == 504
                permit = await other.acquire_nowait("k")  # raises WouldBlock if still held
                await permit.arelease()
        finally:
            await worker.aclose()
            await other.aclose()


async def test_redis_slot_released_before_a_cancelled_scope_exits(redis_url: str) -> None:
    """Leaving ``async with RedisConcurrencyLimiter.acquire()`` awaits the release (docs/redis.md),
    also when an anyio scope cancelled the body: once the scope has exited, another process
    finds the slot free."""
    from aiolease.redis import RedisConcurrencyLimiter

    async with _slow_and_fast(redis_url) as (proxy, slow, fast, name):
        worker = RedisConcurrencyLimiter(slow, name, 1, call_timeout=3)
        other = RedisConcurrencyLimiter(fast, name, 1)
        try:
            await worker.acquire_nowait("warm-up")  # connected before the latency
            proxy.set_latency(0.05)
            for _ in range(2):
                with anyio.move_on_after(0.5) as scope:
                    async with worker.acquire("k"):
                        await anyio.sleep(30)
                assert scope.cancelled_caught
                permit = await other.acquire_nowait("k")  # raises WouldBlock if still held
                await permit.arelease()
        finally:
            await worker.aclose()
            await other.aclose()


async def test_redis_rate_reservation_given_back_before_a_cancelled_scope_exits(
    redis_url: str,
) -> None:
    """A waiter cancelled by an anyio scope gives its reservation back before the scope exits
    (as a Task.cancel()'d one does): right after, another process sees the slot free again."""
    from aiolease import RateLimitExceeded
    from aiolease.redis import RedisRateLimiter

    async with _slow_and_fast(redis_url) as (proxy, slow, fast, name):
        # One admission per 20 s: the first takes it, a waiter reserves the next one.
        worker = RedisRateLimiter(slow, name, 1, per=20, call_timeout=3)
        other = RedisRateLimiter(fast, name, 1, per=20)
        try:
            await worker.acquire_nowait(key="warm-up")  # connected before the latency
            await worker.acquire_nowait(key="k")
            proxy.set_latency(0.05)
            with anyio.move_on_after(0.5) as scope:
                await worker.acquire(key="k")
            assert scope.cancelled_caught
            with pytest.raises(RateLimitExceeded) as refused:
                await other.acquire_nowait(key="k")
            # Given back: the next admission is the one after the first (about 20 s away),
            # not one more period behind the cancelled reservation (about 40 s).
            assert refused.value.retry_after < 30, refused.value.retry_after
        finally:
            await worker.aclose()
            await other.aclose()


async def test_failed_rollback_under_scope_is_logged_and_marks_broken(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from aiolease import _tracking

    conn = FakeConnection()
    conn.script("^ROLLBACK", error=OSError("connection reset"))
    hooks: list[str] = []
    with caplog.at_level(logging.WARNING, logger="aiolease"), anyio.move_on_after(0.1) as scope:
        async with aiolease.atomic(conn) as tx:
            tx.on_rollback(lambda: hooks.append("rollback"))
            await conn.execute("INSERT")
            await anyio.sleep(30)
    assert scope.cancelled_caught
    assert any("ROLLBACK failed" in m for m in aiolease_warnings(caplog))
    assert _tracking.is_broken(conn)
    assert hooks == ["rollback"]


async def test_hung_rollback_under_scope_is_bounded() -> None:
    conn = FakeConnection()
    conn.hang("^ROLLBACK")
    loop = asyncio.get_running_loop()
    start = loop.time()
    with anyio.fail_after(10), anyio.move_on_after(0.1) as scope:
        async with aiolease.atomic(conn, cleanup_timeout=0.5):
            await conn.execute("INSERT")
            await anyio.sleep(30)
    assert scope.cancelled_caught
    assert loop.time() - start < 5  # cleanup_timeout (0.5 s), not the outer 10 s
