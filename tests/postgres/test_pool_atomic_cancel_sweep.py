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

pytestmark = pytest.mark.timeout(300)


def raw(conn: Any) -> Any:
    return getattr(conn, "_aiolease_origin", conn)


async def make_pool(driver: str, dsn: str) -> Any:
    if driver == "psycopg":
        from aiolease.psycopg import create_pool as psycopg_pool

        return psycopg_pool(dsn, max_size=1)
    from aiolease.asyncpg import create_pool as asyncpg_pool

    return asyncpg_pool(dsn, max_size=1)


def in_transaction(driver: str, conn: Any) -> bool:
    conn = raw(conn)
    if driver == "psycopg":
        return bool(conn.pgconn.transaction_status != 0)
    return bool(conn.is_in_transaction())


async def next_holder_values(driver: str, pool: Any, t: str, k: int) -> list[int]:
    """Once the pool's background work is done: the next holder's connection is outside
    any transaction and any atomic block. Returns table ``t``'s values and empties it."""
    for _ in range(50):
        if not pool._tasks:
            break
        await asyncio.sleep(0.01)
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


async def sweep(pool: Any, driver: str, t: str, nested: str) -> bool:
    """Cancel the block after 0, 1, 2... loop steps until it ends first; whether a
    cancellation came during COMMIT (CommitUnknown in its chain)."""
    kept = [1, 2] if nested == "released" else [1, 3]
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
        values = await next_holder_values(driver, pool, t, k)
        assert values in ([], kept), (k, values)
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
    pool = await make_pool(driver, pg_dsn)
    async with pool:
        t = f"aiolease_sw_{uuid.uuid4().hex[:12]}"
        async with pool.acquire() as admin:
            await admin.execute(f"CREATE TABLE {t} (v int)")
        try:
            # A sweep ends at its first "ok"; under load a run's round trips can speed up
            # past COMMIT between one step count and the next, so a sweep may never cancel
            # during COMMIT: it is repeated (each one checks every outcome) until one did.
            for _ in range(5):
                if await sweep(pool, driver, t, nested):
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
    pool = await make_pool(driver, pg_dsn)
    async with pool:
        t = f"aiolease_sw_{uuid.uuid4().hex[:12]}"
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
                values = await next_holder_values(driver, pool, t, k)
                assert values in ([], [2]), (k, values)
                if not cancelled:
                    assert values == [2], k
                if not cancelled:
                    break
            else:
                raise AssertionError("the retry loop never ended before its cancellation")
        finally:
            async with pool.acquire() as conn:
                await conn.execute(f"DROP TABLE IF EXISTS {t}")
