"""The transaction contract, once per backend: asyncpg, psycopg, aiosqlite, FakeConnection."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from tx_backends import Backend, backend_fixture  # noqa: F401 - registers the fixture

import aiolease
from aiolease import _tracking

pytestmark = pytest.mark.timeout(60)


class Boom(Exception):
    pass


async def test_commit_is_visible_from_another_connection(backend: Backend) -> None:
    conn, other = await backend.connect(), await backend.connect()
    async with aiolease.atomic(conn) as tx:
        assert tx.connection is conn
        await backend.insert(conn, 1)
        assert await backend.count(other) == 0  # not before the commit
    assert await backend.count(other) == 1
    assert not backend_in_transaction(conn)


async def test_exception_rolls_back_and_propagates_unchanged(backend: Backend) -> None:
    conn, other = await backend.connect(), await backend.connect()
    error = Boom("body failed")
    with pytest.raises(Boom) as info:  # noqa: PT012 - the block under test
        async with aiolease.atomic(conn):
            await backend.insert(conn, 1)
            raise error
    assert info.value is error
    assert await backend.count(other) == 0
    assert await backend.count(conn) == 0
    assert not backend_in_transaction(conn)


async def test_rollback_exception_and_set_rollback_roll_back_silently(backend: Backend) -> None:
    conn = await backend.connect()
    async with aiolease.atomic(conn):
        await backend.insert(conn, 1)
        raise aiolease.Rollback
    async with aiolease.atomic(conn) as tx:
        await backend.insert(conn, 2)
        tx.set_rollback(True)
    async with aiolease.atomic(conn) as tx:
        await backend.insert(conn, 3)
        tx.set_rollback(True)
        tx.set_rollback(False)  # changed its mind: commits
    assert await backend.count(conn) == 1


async def test_savepoint_rollback_keeps_the_outer_work(backend: Backend) -> None:
    conn, other = await backend.connect(), await backend.connect()
    async with aiolease.atomic(conn):
        await backend.insert(conn, 1)
        with pytest.raises(Boom):  # noqa: PT012 - the block under test
            async with aiolease.atomic(conn) as inner:
                assert not inner.is_outermost
                await backend.insert(conn, 2)
                raise Boom
        async with aiolease.atomic(conn):
            await backend.insert(conn, 3)
        async with aiolease.atomic(conn):
            await backend.insert(conn, 4)
            raise aiolease.Rollback  # only the inner block
        assert await backend.count(conn) == 2
    assert await backend.count(other) == 2


async def test_three_levels_of_nesting(backend: Backend) -> None:
    conn = await backend.connect()
    async with aiolease.atomic(conn):
        await backend.insert(conn, 1)
        async with aiolease.atomic(conn):
            await backend.insert(conn, 2)
            async with aiolease.atomic(conn) as deepest:
                await backend.insert(conn, 3)
                deepest.set_rollback(True)
        assert await backend.count(conn) == 2
    assert await backend.count(conn) == 2


async def test_failed_block_without_savepoint_dooms_the_transaction(backend: Backend) -> None:
    conn = await backend.connect()
    with pytest.raises(aiolease.TransactionError, match="savepoint=False"):  # noqa: PT012 - the block under test
        async with aiolease.atomic(conn):
            await backend.insert(conn, 1)
            try:
                async with aiolease.atomic(conn, savepoint=False):
                    raise Boom
            except Boom:
                pass
    assert await backend.count(conn) == 0
    assert not backend_in_transaction(conn)


async def test_durable_must_be_outermost(backend: Backend) -> None:
    conn = await backend.connect()
    async with aiolease.atomic(conn, durable=True):
        await backend.insert(conn, 1)
        with pytest.raises(aiolease.TransactionError, match="durable"):
            async with aiolease.atomic(conn, durable=True):
                pass  # pragma: no cover
    assert await backend.count(conn) == 1


async def test_hooks_run_in_order_after_the_outermost_commit(backend: Backend) -> None:
    conn, other = await backend.connect(), await backend.connect()
    events: list[Any] = []

    async def async_hook() -> None:
        events.append(("async", await backend.count(other)))  # committed before the hook

    async with aiolease.atomic(conn) as tx:
        await backend.insert(conn, 1)
        tx.on_commit(lambda: events.append("first"))
        tx.on_rollback(lambda: events.append("never"))
        async with aiolease.atomic(conn) as inner:
            inner.on_commit(async_hook)
        with pytest.raises(Boom):  # noqa: PT012 - the block under test
            async with aiolease.atomic(conn) as dropped:
                dropped.on_commit(lambda: events.append("dropped"))
                dropped.on_rollback(lambda: events.append("dropped too"))
                raise Boom
        tx.on_commit(lambda: events.append("last"))
        assert events == []  # nothing before the outermost commit
    assert events == ["first", ("async", 1), "last"]


async def test_on_rollback_hooks_run_and_commit_hooks_do_not(backend: Backend) -> None:
    conn = await backend.connect()
    events: list[str] = []

    async def async_hook() -> None:
        events.append("async rollback")

    with pytest.raises(Boom):  # noqa: PT012 - the block under test
        async with aiolease.atomic(conn) as tx:
            tx.on_commit(lambda: events.append("commit"))
            tx.on_rollback(lambda: events.append("rollback"))
            tx.on_rollback(async_hook)
            await backend.insert(conn, 1)
            raise Boom
    assert events == ["rollback", "async rollback"]
    events.clear()
    async with aiolease.atomic(conn) as tx:
        tx.on_rollback(lambda: events.append("silent"))
        tx.set_rollback(True)
    assert events == ["silent"]


@pytest.mark.parametrize("exit", ["clean", "raise", "Rollback", "set_rollback", "nested"])
@pytest.mark.parametrize("statement", ["ROLLBACK", "COMMIT"])
async def test_a_transaction_ended_by_a_statement_of_the_block_runs_no_hook(
    backend: Backend, statement: str, exit: str
) -> None:
    # A COMMIT sent by hand made atomic raise "rolled back, not committed" and run
    # the on_rollback hooks for work that was committed (on FakeConnection it even
    # reported a commit and ran on_commit after a ROLLBACK sent by hand). atomic
    # cannot tell which statement ended the transaction: no hook runs, either kind.
    conn = await backend.connect()
    hooks: list[str] = []
    with pytest.raises(Exception) as info:  # noqa: PT012 - the block under test; checked below
        async with aiolease.atomic(conn) as tx:
            tx.on_commit(lambda: hooks.append("commit"))
            tx.on_rollback(lambda: hooks.append("rollback"))
            await backend.insert(conn, 1)
            if exit == "nested":
                async with aiolease.atomic(conn) as inner:
                    inner.on_rollback(lambda: hooks.append("inner rollback"))
                    await backend.run(conn, statement)
            else:
                await backend.run(conn, statement)
            if exit == "raise":
                raise Boom
            if exit == "Rollback":
                raise aiolease.Rollback
            tx.set_rollback(exit == "set_rollback")
    assert hooks == []
    if exit == "raise":
        assert isinstance(info.value, Boom)  # unchanged, with a note saying why no hook ran
        assert any("cannot tell" in note for note in info.value.__notes__)
    elif exit != "nested":  # there the savepoint's RELEASE fails with the driver's error
        assert isinstance(info.value, aiolease.TransactionError)
        assert "cannot tell whether its work was committed" in str(info.value)
    assert await backend.count(conn) == (1 if statement == "COMMIT" else 0)
    assert not _tracking.is_broken(conn)
    async with aiolease.atomic(conn):  # the connection is fine
        await backend.insert(conn, 2)
    assert await backend.count(conn) == (2 if statement == "COMMIT" else 1)


async def test_a_failing_commit_hook_says_the_data_was_committed(backend: Backend) -> None:
    conn = await backend.connect()
    ran: list[int] = []

    def bad() -> None:
        raise ValueError("hook broke")

    with pytest.raises(aiolease.HookError, match="WAS committed") as info:  # noqa: PT012 - the block under test
        async with aiolease.atomic(conn) as tx:
            await backend.insert(conn, 1)
            tx.on_commit(lambda: ran.append(1))
            tx.on_commit(bad)
            tx.on_commit(lambda: ran.append(3))
    assert ran == [1, 3]  # the others still ran
    assert info.value.committed is True
    assert isinstance(info.value.__cause__, ValueError)
    assert await backend.count(conn) == 1


async def test_failing_rollback_hook_never_masks_the_original(backend: Backend) -> None:
    conn = await backend.connect()

    def bad() -> None:
        raise ValueError("hook broke")

    with pytest.raises(Boom) as info:  # noqa: PT012 - the block under test
        async with aiolease.atomic(conn) as tx:
            tx.on_rollback(bad)
            raise Boom
    assert any("on_rollback hook also failed" in note for note in info.value.__notes__)


async def test_isolation_and_readonly(backend: Backend) -> None:
    conn = await backend.connect()
    async with aiolease.atomic(conn, isolation="SERIALIZABLE"):
        await backend.insert(conn, 1)
    if backend.name == "sqlite":
        with pytest.raises(ValueError, match="not supported by sqlite: it accepts 'serializable'"):
            aiolease.atomic(conn, isolation="read committed")
    else:
        for level in ("read committed", "Repeatable Read", "serializable"):
            async with aiolease.atomic(conn, isolation=level):
                if backend.name != "fake":
                    shown = await backend.scalar(conn, "SHOW transaction_isolation")
                    assert shown == level.lower()
    with pytest.raises(ValueError, match="'read committed', 'repeatable read' or 'serializable'"):
        aiolease.atomic(conn, isolation="snapshot")
    if backend.name == "fake":
        async with aiolease.atomic(conn, readonly=True, isolation="serializable"):
            pass
        assert "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY" in conn.statements
        return
    with pytest.raises(Exception, match=r"(?i)read-only|readonly"):  # noqa: PT012 - the block under test
        async with aiolease.atomic(conn, readonly=True):
            assert await backend.count(conn) == 1  # reads work
            await backend.insert(conn, 2)
    assert await backend.count(conn) == 1
    await backend.insert(conn, 3)  # read-only does not stick to the connection
    assert await backend.count(conn) == 2


async def test_two_tasks_cannot_share_one_transaction(backend: Backend) -> None:
    conn = await backend.connect()
    async with aiolease.atomic(conn):

        async def intruder() -> None:
            async with aiolease.atomic(conn):
                pass  # pragma: no cover

        with pytest.raises(aiolease.TransactionError, match="owned by task"):
            await asyncio.create_task(intruder(), name="intruder")
        await backend.insert(conn, 1)
    assert await backend.count(conn) == 1


async def test_refuses_a_transaction_it_did_not_start(backend: Backend) -> None:
    conn = await backend.connect()
    await backend.run(conn, "BEGIN")
    if backend.name == "sqlite":
        await backend.insert(conn, 1)  # SQLite's BEGIN is deferred until the first statement
    with pytest.raises(aiolease.TransactionError, match="did not start"):
        async with aiolease.atomic(conn):
            pass  # pragma: no cover
    await backend.run(conn, "ROLLBACK")
    async with aiolease.atomic(conn):
        await backend.insert(conn, 2)
    assert await backend.count(conn) == 1


async def test_cancellation_in_the_body_rolls_back(backend: Backend) -> None:
    conn, other = await backend.connect(), await backend.connect()
    inside = asyncio.Event()

    async def body() -> None:
        async with aiolease.atomic(conn):
            await backend.insert(conn, 1)
            inside.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(body())
    await inside.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not backend_in_transaction(conn)
    assert not _tracking.is_broken(conn)
    assert await backend.count(other) == 0
    async with aiolease.atomic(conn):  # the connection is fine
        await backend.insert(conn, 2)
    assert await backend.count(other) == 1


async def test_cancellation_during_a_statement_rolls_back(backend: Backend) -> None:
    """Cancelled while the driver is mid-query: the rollback waits for the driver."""
    conn, other = await backend.connect(), await backend.connect()
    started = asyncio.Event()
    # SQLite's statement holds the driver's thread until it ends, and the ROLLBACK queues
    # behind it: on a machine busy with other work (parallel test workers) that can outlast
    # the default cleanup bound, which this test is not about.
    cleanup_timeout = 30.0 if backend.name == "sqlite" else None

    async def body() -> None:
        async with aiolease.atomic(conn, cleanup_timeout=cleanup_timeout):
            await backend.insert(conn, 1)
            started.set()
            await slow_statement(backend, conn)

    task = asyncio.create_task(body())
    await started.wait()
    await asyncio.sleep(0.05 if backend.name != "fake" else 0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await backend.count(other) == 0
    async with aiolease.atomic(conn):
        await backend.insert(conn, 2)
    assert await backend.count(other) == 1


async def test_leak_check_reports_a_transaction_left_open(backend: Backend) -> None:
    conn = await backend.connect()
    tx = aiolease.atomic(conn)
    assert tx._aiolease_leaks() == []
    await tx.__aenter__()
    leaks = tx._aiolease_leaks()
    assert len(leaks) == 1
    assert "transaction left open" in leaks[0]
    await tx.__aexit__(None, None, None)
    assert tx._aiolease_leaks() == []


async def test_pool_atomic_acquires_commits_and_releases(backend: Backend) -> None:
    async with backend.pool(max_size=2) as pool:
        async with pool.atomic() as tx:
            await backend.insert(tx.connection, 1)
        with pytest.raises(Boom):  # noqa: PT012 - the block under test
            async with pool.atomic(isolation="serializable") as tx:
                await backend.insert(tx.connection, 2)
                raise Boom
        async with pool.atomic() as tx:
            assert await backend.count(tx.connection) == 1
            tx.set_rollback(True)
        stats = pool.statistics()
        assert stats.in_use == 0
        assert stats.size >= 1


async def test_run_transaction_returns_the_result(backend: Backend) -> None:
    async with backend.pool(max_size=2) as pool:

        async def work(conn: Any) -> str:
            await backend.insert(conn, 7)
            return "done"

        assert await aiolease.run_transaction(pool, work) == "done"
        conn = await backend.connect()
        assert await aiolease.run_transaction(conn, work) == "done"  # a connection works too
        assert await backend.count(conn) == 2


def backend_in_transaction(conn: Any) -> bool:
    from aiolease._dialects import dialect_for

    return dialect_for(conn).in_transaction(conn)


async def slow_statement(backend: Backend, conn: Any) -> None:
    if backend.name in ("asyncpg", "psycopg"):
        await backend.run(conn, "SELECT pg_sleep(30)")
    elif backend.name == "sqlite":
        # A CPU-bound recursive query: the worker thread stays busy a while.
        await backend.scalar(
            conn,
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 3000000) "
            "SELECT count(*) FROM c",
        )
    else:
        conn.gate("SLOW")
        await conn.execute("SLOW")
