"""Retries under real contention and faults: killed backends, busy SQLite files."""

from __future__ import annotations

import asyncio
import collections
import random
import sqlite3
from pathlib import Path
from typing import Any

import aiosqlite
import asyncpg
import psycopg
import pytest
from tx_backends import PG_DSN, Backend, pg_backend_fixture  # noqa: F401 - registers the fixture

import aiolease
import aiolease.sqlite
from driver_pools import tagged

pytestmark = pytest.mark.timeout(60)


# -- PostgreSQL --------------------------------------------------------------------


async def test_asyncpg_connection_killed_in_a_transaction_is_not_taken_for_a_foreign_one(
    pg_dsn: str,
) -> None:
    # asyncpg keeps reporting the last transaction status of a connection the server
    # closed: atomic() took it for "a transaction aiolease did not start" and
    # run_transaction() replaced the attempt's error with that TransactionError.
    observer, conn = await asyncpg.connect(PG_DSN), await asyncpg.connect(PG_DSN)
    try:
        calls: list[int] = []

        async def fn(c: Any) -> None:
            calls.append(1)
            await c.execute("SELECT 1")
            await observer.execute("SELECT pg_terminate_backend($1)", c.get_server_pid())
            while not c.is_closed():  # noqa: ASYNC110 - the driver reads the FATAL message
                await asyncio.sleep(0.01)
            await c.execute("SELECT 1")

        with pytest.raises(asyncpg.InterfaceError, match="closed"):
            await aiolease.run_transaction(conn, fn, attempts=3)
        assert calls == [1]
        with pytest.raises(asyncpg.InterfaceError, match="closed") as info:
            async with aiolease.atomic(conn):
                pass
        assert not isinstance(info.value, aiolease.TransactionError)
    finally:
        await observer.close()
        await conn.close()


def server_pid(conn: Any) -> int:
    if hasattr(conn, "get_server_pid"):
        return int(conn.get_server_pid())
    return int(conn.info.backend_pid)


def serialization_failure(conn: Any) -> Exception:
    """The driver's own 40001 error, as the server would have sent it."""
    if isinstance(conn, asyncpg.Connection):
        return asyncpg.exceptions.SerializationError("could not serialize access")
    return psycopg.errors.SerializationFailure("could not serialize access")


async def test_no_retry_on_a_passed_connection_whose_rollback_failed(pg_backend: Backend) -> None:
    # A retryable error, then the connection is lost before its ROLLBACK: atomic marks the
    # connection broken. A retry on that same connection could only fail at BEGIN (or
    # wait on a dead peer), and the error it raised replaced the attempt's own error.
    b = pg_backend
    observer, conn = await b.connect(), await b.connect()
    calls: list[int] = []

    async def fn(c: Any) -> None:
        calls.append(1)
        await b.run(c, "SELECT 1")
        await b.scalar(observer, "SELECT pg_terminate_backend($1)", server_pid(c))
        await asyncio.sleep(0.1)
        raise serialization_failure(c)

    with pytest.raises(Exception, match="could not serialize") as info:
        await aiolease.run_transaction(conn, fn, attempts=3, backoff=0.001)
    assert getattr(info.value, "sqlstate", None) == "40001"
    assert any("ROLLBACK also failed" in note for note in info.value.__notes__)
    assert calls == [1]

    # Through a pool, the next attempt gets a healthy connection.
    calls.clear()
    pids: list[int] = []
    async with b.pool(max_size=1) as pool:

        async def once_lost(c: Any) -> None:
            pids.append(server_pid(c))
            if len(pids) == 1:
                await fn(c)
            await b.run(c, "SELECT 1")

        await aiolease.run_transaction(pool, once_lost, attempts=3, backoff=0.001)
        assert len(pids) == 2
        assert pids[0] != pids[1]
        stats = pool.statistics()
        assert (stats.size, stats.in_use, stats.discarded) == (1, 0, 1)


RETRYABLE = frozenset({"40001", "40P01"})


@pytest.mark.parametrize("isolation", ["serializable", "repeatable read"])
async def test_bank_transfers_under_contention_are_retried_exactly_once_each(
    pg_backend: Backend, isolation: str
) -> None:
    # Read-then-write transfers between few accounts from many workers: serialization
    # failures and deadlocks, retried through run_transaction on a pool.
    b = pg_backend
    workers, transfers, accounts, attempts = 12, 4, 3, 8
    setup = await b.connect()
    for i in range(1, accounts + 1):
        await b.insert(setup, 100, id=i)
    barrier = asyncio.Barrier(workers)
    tries: collections.Counter[tuple[int, int]] = collections.Counter()
    hooks: collections.Counter[tuple[int, int]] = collections.Counter()
    committed: list[tuple[int, int]] = []
    failed: dict[tuple[int, int], BaseException] = {}

    async with b.pool(max_size=workers) as pool:

        async def transfer(key: tuple[int, int]) -> None:
            src, dst = random.sample(range(1, accounts + 1), 2)

            async def fn(conn: Any) -> None:
                tries[key] += 1
                async with aiolease.atomic(conn, savepoint=False) as tx:
                    tx.on_commit(lambda: hooks.update([key]))
                await b.run(conn, "SET LOCAL deadlock_timeout = '20ms'")  # deadlocks found fast
                have = await b.get(conn, src)
                if key[1] == 0 and tries[key] == 1:
                    await barrier.wait()  # every worker's first attempt read: they collide
                await b.run(conn, f"UPDATE {b.table} SET v = $1 WHERE id = $2", have - 1, src)
                other = await b.get(conn, dst)
                await b.run(conn, f"UPDATE {b.table} SET v = $1 WHERE id = $2", other + 1, dst)

            try:
                await aiolease.run_transaction(
                    pool,
                    fn,
                    attempts=attempts,
                    isolation=isolation,
                    backoff=0.005,
                    max_backoff=0.05,
                )
            except Exception as exc:
                failed[key] = exc
            else:
                committed.append(key)

        async def worker(w: int) -> None:
            for k in range(transfers):
                await transfer((w, k))

        await asyncio.gather(*(worker(w) for w in range(workers)))
        stats = pool.statistics()
        assert (stats.in_use, stats.discarded) == (0, 0)
    total = await b.scalar(setup, f"SELECT sum(v) FROM {b.table}")
    assert total == 100 * accounts  # every transfer all or nothing
    assert sum(tries.values()) > workers * transfers  # conflicts happened and were retried
    assert max(tries.values()) <= attempts
    assert hooks == collections.Counter(committed)  # once per committed transfer, else never
    for key, exc in failed.items():  # the driver's own error, after every attempt
        assert getattr(exc, "sqlstate", None) in RETRYABLE, repr(exc)
        assert tries[key] == attempts


async def test_cancelled_during_the_backoff_or_a_later_attempt_leaves_nothing_open(
    pg_backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    b = pg_backend
    monkeypatch.setattr(
        random, "uniform", lambda low, high: high
    )  # as _retry draws it  # the longest pause
    observer = await b.connect()
    calls: list[int] = []
    hooks: list[str] = []

    async def fn(conn: Any) -> None:
        calls.append(1)
        async with aiolease.atomic(conn, savepoint=False) as tx:
            tx.on_commit(lambda: hooks.append("commit"))
        await b.insert(conn, len(calls))
        if len(calls) == 1:
            await b.run(conn, "DO $$ BEGIN RAISE EXCEPTION 'x' USING ERRCODE = '40001'; END $$")
        await b.run(conn, "SELECT pg_sleep(30)")

    # The pool's sessions carry the test's own name: the check below looks at them alone
    # (another run's sessions in the same database may well be idle in a transaction).
    async with b.pool(max_size=1, **tagged(b.name, b.table)) as pool:
        for attempt in (1, 2):  # cancelled in the backoff after attempt 1, then in attempt 2
            calls.clear()
            backoff = 30.0 if attempt == 1 else 0.001
            task = asyncio.create_task(
                aiolease.run_transaction(pool, fn, backoff=backoff, max_backoff=backoff)
            )
            while len(calls) < attempt or pool.statistics().in_use != attempt - 1:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert calls == [1] * attempt
            assert pool.statistics().in_use == 0
        calls.clear()
        with pytest.raises(TimeoutError):  # asyncio.timeout() fires in a later attempt
            await run_within(0.5, aiolease.run_transaction(pool, fn, backoff=0.001))
        assert calls == [1, 1]
        async with pool.atomic() as tx:  # the pool's connection is healthy
            await b.run(tx.connection, "SELECT 1")
    assert hooks == []
    assert await b.count(observer) == 0
    idle_in_tx = await b.scalar(
        observer,
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 "
        "AND state IN ('idle in transaction', 'idle in transaction (aborted)')",
        b.table,
    )
    assert idle_in_tx == 0


@pytest.mark.slow
async def test_a_commit_with_an_unknown_outcome_is_never_run_again(pg_backend: Backend) -> None:
    # The backend is killed while COMMIT runs (a deferred trigger makes it last): the
    # work may have been committed, so run_transaction raises CommitUnknown at once.
    b = pg_backend
    observer = await b.connect()
    name = f"{b.table}_slow"
    await b.run(observer, f"CREATE TABLE {name} (v INTEGER)")
    await b.run(
        observer,
        f"CREATE FUNCTION {name}_f() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN PERFORM pg_sleep(1); RETURN NULL; END $$",
    )
    await b.run(
        observer,
        f"CREATE CONSTRAINT TRIGGER {name}_t AFTER INSERT ON {name} "
        f"DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {name}_f()",
    )
    calls: list[int] = []
    hooks: list[str] = []
    try:
        async with b.pool(max_size=1) as pool:

            async def fn(conn: Any) -> None:
                calls.append(server_pid(conn))
                async with aiolease.atomic(conn, savepoint=False) as tx:
                    tx.on_commit(lambda: hooks.append("commit"))
                    tx.on_rollback(lambda: hooks.append("rollback"))
                await b.run(conn, f"INSERT INTO {name} VALUES (1)")

            task = asyncio.create_task(aiolease.run_transaction(pool, fn, backoff=0.001))
            for _ in range(1000):
                state = None
                if calls:
                    state = await b.scalar(
                        observer,
                        "SELECT coalesce(max(query), '') FROM pg_stat_activity "
                        "WHERE pid = $1 AND state = 'active'",
                        calls[0],
                    )
                if state == "COMMIT":
                    break
                await asyncio.sleep(0.005)
            await b.scalar(observer, "SELECT pg_terminate_backend($1)", calls[0])
            with pytest.raises(aiolease.CommitUnknown):
                await task
            assert len(calls) == 1
            assert hooks == []
            stats = pool.statistics()
            assert (stats.in_use, stats.idle, stats.discarded) == (0, 0, 1)
    finally:
        await b.run(observer, f"DROP TABLE IF EXISTS {name}")
        await b.run(observer, f"DROP FUNCTION IF EXISTS {name}_f()")


async def run_within(seconds: float, work: Any) -> None:
    async with asyncio.timeout(seconds):
        await work


async def test_errors_that_are_not_retried(pg_backend: Backend) -> None:
    b = pg_backend
    setup = await b.connect()
    await b.insert(setup, 0, id=1)
    calls: list[str] = []

    async def duplicate(conn: Any) -> None:
        calls.append("duplicate")
        await b.insert(conn, 0, id=1)

    async def user_error(conn: Any) -> None:
        calls.append("user")
        raise LookupError("mine")

    async with b.pool(max_size=1) as pool:
        with pytest.raises(Exception) as info:  # the driver's own type, checked below
            await aiolease.run_transaction(pool, duplicate, backoff=0.001)
        assert getattr(info.value, "sqlstate", None) == "23505"
        with pytest.raises(LookupError):
            await aiolease.run_transaction(pool, user_error, backoff=0.001)
    assert calls == ["duplicate", "user"]


# -- SQLite --------------------------------------------------------------------------


@pytest.mark.parametrize("commit_on_loop", [False, True])
async def test_sqlite_statements_after_a_failed_begin_whose_error_was_caught_never_autocommit(
    tmp_path: Path, commit_on_loop: bool
) -> None:
    # On the fast path BEGIN IMMEDIATE runs with the block's first statement. When it
    # failed busy and the block caught that error, the block's later statements ran
    # outside any transaction: each committed at once, and the block, failing later,
    # "rolled back" (its on_rollback hooks ran) with their rows in the database.
    path = tmp_path / "busy.sqlite"
    holder = await aiosqlite.connect(path, isolation_level=None)
    await holder.execute("PRAGMA journal_mode=WAL")
    await holder.execute("CREATE TABLE t (v INTEGER)")
    hooks: list[str] = []
    pool = aiolease.sqlite.create_pool(
        path,
        max_size=1,
        pragmas={"journal_mode": "WAL", "busy_timeout": 0},
        commit_on_loop=commit_on_loop,
    )
    try:
        async with pool:
            for body_fails in (True, False):
                await holder.execute("BEGIN IMMEDIATE")
                # Public path: BEGIN fails at entry, and the body does not run.
                with pytest.raises((RuntimeError, sqlite3.OperationalError)):
                    await busy_block(pool, holder, hooks, body_fails)
                if holder.in_transaction:
                    await holder.execute("ROLLBACK")
                async with pool.acquire() as conn:
                    assert not conn.in_transaction
        async with holder.execute("SELECT count(*) FROM t") as cur:
            assert await cur.fetchone() == (0,)
    finally:
        await holder.close()


async def busy_block(pool: Any, holder: Any, hooks: list[str], body_fails: bool) -> None:
    async with pool.atomic() as tx:
        tx.on_rollback(lambda: hooks.append("rollback"))
        try:
            await tx.connection.execute("INSERT INTO t VALUES (1)")
        except sqlite3.OperationalError:
            pass  # busy: the mistake of catching it
        await holder.execute("ROLLBACK")  # the lock is free again
        try:
            await tx.connection.execute("INSERT INTO t VALUES (2)")
        finally:
            if body_fails:
                raise RuntimeError("the block fails: nothing may stay")


@pytest.mark.parametrize("journal", ["WAL", "DELETE"])
async def test_sqlite_two_pools_on_one_file_retry_busy_and_keep_the_total(
    tmp_path: Path, journal: str
) -> None:
    # Two pools (as two processes would) write one file with a short busy timeout:
    # "database is locked" at BEGIN IMMEDIATE (or at COMMIT, behind a reader in
    # rollback-journal mode) is retried; what still fails is SQLite's own error.
    path = tmp_path / "bank.sqlite"
    pragmas: dict[str, str | int | float] = {"journal_mode": journal, "busy_timeout": 5}
    setup = await aiosqlite.connect(path, isolation_level=None)
    await setup.execute(f"PRAGMA journal_mode={journal}")
    await setup.execute("CREATE TABLE acc (id INTEGER PRIMARY KEY, bal INTEGER)")
    await setup.executemany("INSERT INTO acc VALUES (?, 100)", [(1,), (2,), (3,)])
    hooks: collections.Counter[str] = collections.Counter()
    committed: list[str] = []
    failures: list[BaseException] = []
    pools = [aiolease.sqlite.create_pool(path, max_size=4, pragmas=pragmas) for _ in range(2)]

    async def transfer(pool: Any, key: str) -> None:
        src, dst = random.sample([1, 2, 3], 2)

        async def fn(conn: Any) -> None:
            async with aiolease.atomic(conn, savepoint=False) as tx:
                tx.on_commit(lambda: hooks.update([key]))
            async with conn.execute("SELECT bal FROM acc WHERE id = ?", (src,)) as cur:
                (have,) = await cur.fetchone()
            await asyncio.sleep(0.001)
            await conn.execute("UPDATE acc SET bal = ? WHERE id = ?", (have - 1, src))
            await conn.execute("UPDATE acc SET bal = bal + 1 WHERE id = ?", (dst,))

        try:
            await aiolease.run_transaction(pool, fn, attempts=4, backoff=0.002, max_backoff=0.01)
        except sqlite3.OperationalError as exc:
            failures.append(exc)
        else:
            committed.append(key)

    async def reader(pool: Any) -> None:
        for _ in range(20):
            try:
                async with pool.atomic(readonly=True) as tx:
                    total = await tx.connection.execute_fetchall("SELECT sum(bal) FROM acc")
                    assert list(total) == [(300,)]
            except sqlite3.OperationalError as exc:
                failures.append(exc)  # surfaced as is: pool.atomic does not retry

    try:
        for pool in pools:
            await pool.open()
        await asyncio.gather(
            *(transfer(pools[w % 2], f"{w}.{k}") for w in range(8) for k in range(4)),
            *(reader(pool) for pool in pools),
        )
        for pool in pools:
            async with pool.acquire() as conn:
                assert not conn.in_transaction
    finally:
        for pool in pools:
            await pool.aclose()
    async with setup.execute("SELECT sum(bal) FROM acc") as cur:
        assert await cur.fetchone() == (300,)
    await setup.close()
    assert hooks == collections.Counter(committed)
    assert committed  # progress
    assert all("database is locked" in str(exc) for exc in failures)
