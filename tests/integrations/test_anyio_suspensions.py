"""pool.atomic() on asyncpg under an anyio CancelScope cancelled at each suspension of the block.

The sweeps of test_anyio_scopes cancel after a number of event-loop steps, which lands on a
given await only as the I/O timing allows. Here the block's coroutine is driven through a
wrapper that counts the futures it waits on and cancels the scope when it starts waiting on
the n-th: BEGIN, each statement, SAVEPOINT, RELEASE and COMMIT in turn (on asyncio's loop
exactly; uvloop may read a reply before the cancellation is delivered, which then lands at
a later await, or at none when the block ends first). After each run, once the server has
ended every session the pool let go, no idle connection may have a transaction open on the
server (``pg_stat_activity``) and the table must hold all of the block's rows or none.

The "slow" variant makes COMMIT last longer than the pool's grace for closing a connection
whose statement is being cancelled, and ignore the cancel request, as a commit record's
flush on a loaded server does: the COMMIT of a connection discarded after its cancellation
then lands after the pool has settled, which a check must wait for (see
driver_pools.Sessions.settled).
"""

from __future__ import annotations

import asyncio
import types
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Generator
from typing import Any

import anyio
import pytest

import aiolease
import aiolease.asyncpg
from aiolease import Pool
from driver_pools import Sessions, settle, tagged

pytestmark = pytest.mark.timeout(120)


@types.coroutine
def _cancelling_at(
    coro: Coroutine[Any, Any, Any], n: int, scope: anyio.CancelScope, counted: list[int]
) -> Generator[Any, Any, Any]:
    """Drive ``coro``; when it yields to the event loop for the ``n``-th time (from 0),
    cancel ``scope`` (anyio then cancels what the task waits on, and again at each later
    await until the scope exits). ``counted`` gets the number of suspensions."""
    count = 0
    send: Any = None
    throw: BaseException | None = None
    try:
        while True:
            try:
                yielded = coro.send(send) if throw is None else coro.throw(throw)
            except StopIteration as stop:
                return stop.value
            if count == n:
                scope.cancel()
            count += 1
            try:
                send, throw = (yield yielded), None
            except BaseException as exc:
                send, throw = None, exc
    finally:
        counted.append(count)


async def _run_cancelled_at(fn: Callable[[], Coroutine[Any, Any, Any]], n: int) -> tuple[bool, int]:
    """Run ``fn()`` in a task, in an anyio CancelScope cancelled at its ``n``-th suspension.
    Returns (the scope caught its cancellation, the number of suspensions)."""
    scope = anyio.CancelScope()
    counted: list[int] = []
    returned = False

    async def run() -> None:
        nonlocal returned
        with scope:
            await _cancelling_at(fn(), n, scope, counted)
            returned = True

    await asyncio.create_task(run())
    assert scope.cancelled_caught != returned, (n, scope.cancelled_caught, returned)
    return scope.cancelled_caught, counted[0]


SLOW_COMMIT = """
create function {t}_slow() returns trigger language plpgsql as $$
declare until timestamptz := clock_timestamp() + interval '1.5 seconds';
begin
  loop
    begin
      perform pg_sleep(greatest(0, extract(epoch from until - clock_timestamp())));
      exit;
    exception when query_canceled then null;  -- as a WAL flush: a cancel does not stop it
    end;
  end loop;
  return null;
end $$;
create constraint trigger {t}_slow after insert on {t} deferrable initially deferred
  for each row when (new.x = 1) execute function {t}_slow();
"""


@pytest.fixture(params=["1-fast", "2-fast", "2-slow"], name="pool_and_table")
async def pool_and_table_fixture(
    pg_dsn: str, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[Pool[Any], str, bool]]:
    """(an open pool of max_size 1 or 2 whose sessions are named after the table, a table,
    whether its COMMIT is slow)."""
    table = f"anyio_susp_{uuid.uuid4().hex[:10]}"
    size, speed = request.param.split("-")
    pool = aiolease.asyncpg.create_pool(
        pg_dsn, max_size=int(size), acquire_timeout=20, **tagged("asyncpg", table)
    )
    async with pool:
        async with pool.acquire() as conn:
            await conn.execute(f"create table {table} (x int)")
            if speed == "slow":
                await conn.execute(SLOW_COMMIT.format(t=table))
        try:
            yield pool, table, speed == "slow"
        finally:
            async with pool.acquire() as conn:
                await conn.execute(f"drop table {table}")
                await conn.execute(f"drop function if exists {table}_slow()")


async def test_pool_atomic_cancelled_at_each_suspension(
    pool_and_table: tuple[Pool[Any], str, bool], pg_dsn: str
) -> None:
    pool, table, slow = pool_and_table
    async with Sessions(pg_dsn, table) as sessions:
        await _sweep(pool, table, slow, sessions)


async def _sweep(pool: Pool[Any], table: str, slow: bool, sessions: Sessions) -> None:
    history: list[tuple[int, bool, int, int]] = []
    for n in range(200):
        hooked: list[str] = []

        async def body(hooked: list[str] = hooked) -> None:
            async with pool.atomic() as tx:
                await tx.connection.execute(f"insert into {table} values (1)")
                async with aiolease.atomic(tx.connection):
                    await tx.connection.execute(f"insert into {table} values (2)")
                tx.on_commit(lambda: hooked.append("commit"))

        cancelled, suspensions = await _run_cancelled_at(body, n)
        await settle(pool)
        stats = pool.statistics()
        assert stats.in_use == 0, (n, stats)
        await sessions.settled("asyncpg", pool, (n, history))
        async with pool.acquire() as conn:
            rows = int(await conn.fetchval(f"select count(*) from {table}"))
            await conn.execute(f"delete from {table}")
        history.append((n, cancelled, rows, pool.statistics().discarded))
        assert rows in (0, 2), (history, pool.statistics(), await sessions.view())
        if hooked:
            assert rows == 2, n
        if not cancelled:
            if isinstance(asyncio.get_running_loop(), asyncio.BaseEventLoop):
                # asyncio's loop: the n-th suspension was hit, so the block has n or fewer.
                assert suspensions <= n, (n, suspensions)
            assert rows == 2, n
            assert hooked == ["commit"], n
            if slow:  # a COMMIT was cancelled: its connection was discarded
                assert pool.statistics().discarded, history
            return
    raise AssertionError("the block never ended before its cancellation")
