"""pool.atomic() with a nested savepoint and a commit hook on the real drivers, cancelled
after each number of event-loop steps: the cancellation is never swallowed nor replaced,
the work is all or nothing (a cancellation that is not during COMMIT rolled it back), and
the connection goes back to the pool outside any transaction.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from typing import Any

import pytest

import aiolease
from aiolease import CommitUnknown
from aiolease._transaction import _chain, _open
from cancelling import cancel_after_steps
from driver_pools import Sessions, settle, tagged

pytestmark = pytest.mark.timeout(300)


def raw(conn: Any) -> Any:
    return getattr(conn, "_aiolease_origin", conn)


async def make_pool(driver: str, dsn: str, app: str) -> Any:
    """A pool of one connection whose sessions are named ``app`` (see next_holder_values)."""
    if driver == "psycopg":
        from aiolease.psycopg import create_pool as psycopg_pool

        return psycopg_pool(dsn, max_size=1, **tagged(driver, app))
    from aiolease.asyncpg import create_pool as asyncpg_pool

    return asyncpg_pool(dsn, max_size=1, **tagged(driver, app))


def in_transaction(driver: str, conn: Any) -> bool:
    conn = raw(conn)
    if driver == "psycopg":
        return bool(conn.pgconn.transaction_status != 0)
    return bool(conn.is_in_transaction())


async def next_holder_values(driver: str, pool: Any, sessions: Sessions, k: int) -> list[int]:
    """Once the pool's background work is done and the server has ended every session the
    pool let go (a connection discarded after its COMMIT was cancelled may have had that
    COMMIT land later: see driver_pools.Sessions.settled; the pool's sessions are named
    after the table): the next holder's connection is outside any transaction and any
    atomic block. Returns the table's values and empties it."""
    t = sessions.app
    await settle(pool)
    await sessions.settled(driver, pool, k)
    async with pool.acquire() as conn:
        assert not in_transaction(driver, conn), k
        assert id(raw(conn)) not in _open, k
        if driver == "psycopg":
            cur = await conn.execute(f"SELECT v FROM {t} ORDER BY v")
            values = [r[0] for r in await cur.fetchall()]
        else:
            values = [r[0] for r in await conn.fetch(f"SELECT v FROM {t} ORDER BY v")]
        await conn.execute(f"DELETE FROM {t}")
    assert pool.statistics().in_use == 0
    return values


async def hook(hooked: list[str]) -> None:
    await asyncio.sleep(0)
    hooked.append("commit")


async def explain(pool: Any, sessions: Sessions, k: int, values: list[int]) -> str:
    """A failed sweep's message: the step count, the values, the pool's statistics and the
    server's sessions of the pool."""
    view = await sessions.view()
    return f"k={k} values={values} statistics={pool.statistics()} server={view}"


async def sweep(pool: Any, driver: str, sessions: Sessions, nested: str) -> bool:
    """Cancel the block after 0, 1, 2... loop steps until it ends first; whether a
    cancellation came during COMMIT (CommitUnknown in its chain)."""
    kept = [1, 2] if nested == "released" else [1, 3]
    t = sessions.app
    seen_commit_unknown = False
    for k in range(5000):  # until the block ends before the cancellation
        hooked: list[str] = []

        async def body(hooked: list[str]) -> None:
            async with pool.atomic() as tx:
                await tx.connection.execute(f"INSERT INTO {t} VALUES (1)")
                try:
                    async with aiolease.atomic(tx.connection):
                        await tx.connection.execute(f"INSERT INTO {t} VALUES (2)")
                        if nested == "rolled back":
                            raise LookupError("caught")
                except LookupError:
                    await tx.connection.execute(f"INSERT INTO {t} VALUES (3)")

                tx.on_commit(functools.partial(hook, hooked))

        cancelled, result = await cancel_after_steps(body(hooked), k)
        if cancelled:
            assert isinstance(result, asyncio.CancelledError)  # (the helper checked)
            if any(isinstance(e, CommitUnknown) for e in _chain(result)):
                seen_commit_unknown = True
        else:
            assert result is None, (k, result)
        values = await next_holder_values(driver, pool, sessions, k)
        if values not in ([], kept):
            raise AssertionError(await explain(pool, sessions, k, values))
        if not cancelled:
            assert values == kept, k
            assert hooked == ["commit"], k
            return seen_commit_unknown  # past the whole block
        if hooked:  # the hooks run after COMMIT only
            assert values == kept, k
    raise AssertionError("the block never ended before its cancellation")


@pytest.mark.parametrize("nested", ["released", "rolled back"])
@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
async def test_pool_atomic_cancelled_at_each_step(pg_dsn: str, driver: str, nested: str) -> None:
    # The nested block either ends normally (RELEASE SAVEPOINT) or raises an error the
    # outer block catches (ROLLBACK TO SAVEPOINT); the outer block commits 1 and 2, or 1
    # and 3 (see sweep).
    t = f"aiolease_sw_{uuid.uuid4().hex[:12]}"
    pool = await make_pool(driver, pg_dsn, t)
    async with pool, Sessions(pg_dsn, t) as sessions:
        async with pool.acquire() as admin:
            await admin.execute(f"CREATE TABLE {t} (v int)")
        try:
            # A sweep ends at its first "ok"; under load a run's round trips can speed up
            # past COMMIT between one step count and the next, so a sweep may never cancel
            # during COMMIT: it is repeated (each one checks every outcome) until one did.
            for _ in range(5):
                if await sweep(pool, driver, sessions, nested):
                    break
            else:
                raise AssertionError("no sweep cancelled during COMMIT")
        finally:
            async with pool.acquire() as conn:
                await conn.execute(f"DROP TABLE IF EXISTS {t}")


@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
async def test_run_transaction_cancelled_at_each_step_of_a_retry(pg_dsn: str, driver: str) -> None:
    # The first attempt fails with a serialization failure after its write, the second
    # commits: a cancellation at any step (the attempts, their rollback and release, the
    # backoff between them) propagates, and at most the second attempt's write is kept.
    if driver == "psycopg":
        import psycopg

        failure: type[Exception] = psycopg.errors.SerializationFailure
    else:
        import asyncpg

        failure = asyncpg.exceptions.SerializationError
    t = f"aiolease_sw_{uuid.uuid4().hex[:12]}"
    pool = await make_pool(driver, pg_dsn, t)
    async with pool, Sessions(pg_dsn, t) as sessions:
        async with pool.acquire() as admin:
            await admin.execute(f"CREATE TABLE {t} (v int)")
        try:
            for k in range(5000):  # until the loop ends before the cancellation
                tries: list[int] = []

                async def fn(conn: Any, tries: list[int] = tries) -> None:
                    tries.append(1)
                    await conn.execute(f"INSERT INTO {t} VALUES ({len(tries)})")
                    if len(tries) == 1:
                        raise failure("could not serialize access (test)")

                cancelled, outcome = await cancel_after_steps(
                    aiolease.run_transaction(pool, fn, backoff=0.001, max_backoff=0.001), k
                )
                if not cancelled:
                    assert outcome is None, (k, outcome)
                values = await next_holder_values(driver, pool, sessions, k)
                if values not in ([], [2]) or (not cancelled and values != [2]):
                    raise AssertionError(await explain(pool, sessions, k, values))
                if not cancelled:
                    break
            else:
                raise AssertionError("the retry loop never ended before its cancellation")
        finally:
            async with pool.acquire() as conn:
                await conn.execute(f"DROP TABLE IF EXISTS {t}")


async def timeout_sweep(pool: Any, driver: str, sessions: Sessions) -> bool:
    """An ``asyncio.timeout()`` around the nested block, caught in the enclosing one, whose
    deadline comes after 0, 1, 2... loop steps in the nested block, until that block ends
    first: the nested block's row is never committed when its caller was told it failed
    (TimeoutError). Whether a deadline came during RELEASE SAVEPOINT (the enclosing block
    then rolls back: TransactionError)."""
    t = sessions.app
    seen_release = False
    loop = asyncio.get_running_loop()
    for k in range(5000):
        scopes: list[asyncio.Timeout] = []
        told: list[str] = []
        entered = asyncio.Event()

        async def body(
            scopes: list[asyncio.Timeout] = scopes,
            told: list[str] = told,
            entered: asyncio.Event = entered,
        ) -> None:
            async with pool.atomic() as tx:
                conn = tx.connection
                await conn.execute(f"INSERT INTO {t} VALUES (1)")
                try:
                    async with asyncio.timeout(None) as scope:
                        scopes.append(scope)
                        entered.set()
                        try:
                            async with aiolease.atomic(conn):
                                await conn.execute(f"INSERT INTO {t} VALUES (2)")
                        finally:
                            scopes.clear()  # the deadline is set only inside the block
                except TimeoutError:
                    told.append("timed out")

        task = asyncio.create_task(body())
        await entered.wait()
        for _ in range(k):
            await asyncio.sleep(0)
        if scopes:
            scopes[0].reschedule(loop.time())
        try:
            await task
            error: BaseException | None = None
        except aiolease.TransactionError as exc:
            error = exc
        values = await next_holder_values(driver, pool, sessions, k)
        if error is not None:
            assert "RELEASE SAVEPOINT" in str(error), (k, error)
            assert told == ["timed out"], k
            assert values == [], (k, values)
            seen_release = True
        elif told:
            assert values == [1], await explain(pool, sessions, k, values)
        else:
            assert values == [1, 2], (k, values)
            return seen_release
    raise AssertionError("the nested block never ended before its deadline")


@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
async def test_a_caught_timeout_at_each_step_of_a_nested_block(pg_dsn: str, driver: str) -> None:
    t = f"aiolease_sw_{uuid.uuid4().hex[:12]}"
    pool = await make_pool(driver, pg_dsn, t)
    async with pool, Sessions(pg_dsn, t) as sessions:
        async with pool.acquire() as admin:
            await admin.execute(f"CREATE TABLE {t} (v int)")
        try:
            # As above: a sweep may step past RELEASE between one count and the next (the
            # window is a step or two wide), so it is repeated until one came during it.
            for _ in range(30):
                if await timeout_sweep(pool, driver, sessions):
                    break
            else:
                raise AssertionError("no deadline came during RELEASE SAVEPOINT")
        finally:
            async with pool.acquire() as conn:
                await conn.execute(f"DROP TABLE IF EXISTS {t}")
