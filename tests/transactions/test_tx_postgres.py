"""PostgreSQL specifics, on asyncpg and psycopg: real conflicts, deadlocks, aborts, lost COMMITs."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from tx_backends import Backend, pg_backend_fixture  # noqa: F401 - registers the fixture

import aiolease
from aiolease import _tracking

pytestmark = pytest.mark.timeout(60)


class Boom(Exception):
    pass


def server_pid(conn: Any) -> int:
    if hasattr(conn, "get_server_pid"):
        return int(conn.get_server_pid())
    return int(conn.info.backend_pid)


async def wait_for_query(b: Backend, observer: Any, pid: int, query: str) -> None:
    """Poll pg_stat_activity until backend ``pid`` is running ``query``."""
    for _ in range(2000):
        state = await b.scalar(
            observer,
            "SELECT state || ':' || query FROM pg_stat_activity WHERE pid = $1",
            pid,
        )
        if state == f"active:{query}":
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"backend {pid} never ran {query!r}")


@pytest.fixture
async def slow_commit(pg_backend: Backend) -> AsyncIterator[str]:
    """A table whose COMMIT takes 2 s (a deferred constraint trigger sleeps)."""
    b = pg_backend
    name = f"aiolease_slow_{uuid.uuid4().hex[:10]}"
    conn = await b.connect()
    await b.run(conn, f"CREATE TABLE {name} (v INTEGER)")
    await b.run(
        conn,
        f"CREATE FUNCTION {name}_f() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN PERFORM pg_sleep(2); RETURN NULL; END $$",
    )
    await b.run(
        conn,
        f"CREATE CONSTRAINT TRIGGER {name}_t AFTER INSERT ON {name} "
        f"DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {name}_f()",
    )
    try:
        yield name
    finally:
        cleanup = await b.connect()
        await b.run(cleanup, f"DROP TABLE IF EXISTS {name}")
        await b.run(cleanup, f"DROP FUNCTION IF EXISTS {name}_f()")


async def test_caught_error_aborts_the_transaction_and_exit_says_so(pg_backend: Backend) -> None:
    b = pg_backend
    conn = await b.connect()
    rolled_back: list[bool] = []
    with pytest.raises(aiolease.TransactionError, match="rolled back, not committed"):  # noqa: PT012 - the block under test
        async with aiolease.atomic(conn) as tx:
            tx.on_rollback(lambda: rolled_back.append(True))
            tx.on_commit(lambda: rolled_back.append(False))
            await b.insert(conn, 1)
            try:
                await b.fail(conn)
            except Exception:
                pass  # the mistake: PostgreSQL has aborted the transaction
    assert rolled_back == [True]
    assert await b.count(conn) == 0
    assert not conn_in_transaction(conn)


async def test_atomic_on_a_closed_connection_raises_the_drivers_error(pg_backend: Backend) -> None:
    # psycopg: a closed connection was taken for one "already inside a transaction
    # that aiolease did not start".
    b = pg_backend
    conn = await b._open()
    await b.close(conn)
    with pytest.raises(Exception, match="closed") as info:
        async with aiolease.atomic(conn):
            pass
    assert not isinstance(info.value, aiolease.TransactionError)


async def test_caught_error_in_nested_block_rolls_back_only_that_block(pg_backend: Backend) -> None:
    b = pg_backend
    conn = await b.connect()
    async with aiolease.atomic(conn):
        await b.insert(conn, 1)
        with pytest.raises(aiolease.TransactionError, match="savepoint") as info:  # noqa: PT012 - the block under test
            async with aiolease.atomic(conn):
                await b.insert(conn, 2)
                try:
                    await b.fail(conn)
                except Exception:
                    pass
        assert info.value.__cause__ is not None  # the 25P02 from RELEASE
        await b.insert(conn, 3)  # the outer transaction is usable again
    assert await b.count(conn) == 2


async def test_error_propagating_from_nested_block_keeps_outer_usable(pg_backend: Backend) -> None:
    b = pg_backend
    conn = await b.connect()
    async with aiolease.atomic(conn):
        await b.insert(conn, 1)
        with pytest.raises(Exception, match="division by zero"):
            async with aiolease.atomic(conn):
                await b.fail(conn)
        await b.insert(conn, 2)
    assert await b.count(conn) == 2


async def test_real_serialization_conflicts_are_retried(pg_backend: Backend) -> None:
    b = pg_backend
    setup = await b.connect()
    await b.insert(setup, 0, id=1)
    tasks = 4
    barrier = asyncio.Barrier(tasks)
    attempts: list[int] = []
    committed: list[int] = []

    async with b.pool(max_size=tasks) as pool:

        async def increment(conn: Any) -> None:
            attempts.append(1)
            value = await b.get(conn, 1)
            if len(attempts) <= tasks:
                await barrier.wait()  # every first attempt read the same value
            await b.run(conn, f"UPDATE {b.table} SET v = $1 WHERE id = 1", value + 1)
            async with aiolease.atomic(conn, savepoint=False) as tx:
                tx.on_commit(lambda: committed.append(1))

        await asyncio.gather(
            *(
                aiolease.run_transaction(pool, increment, isolation="serializable", attempts=20)
                for _ in range(tasks)
            )
        )
    assert await b.get(setup, 1) == tasks  # no lost update
    assert len(attempts) > tasks  # conflicts really happened and were retried
    assert committed == [1] * tasks  # hooks ran for committed attempts only


async def test_a_serialization_failure_at_commit_is_retried_without_hooks(
    pg_backend: Backend,
) -> None:
    # Write skew under SERIALIZABLE: both bodies finish, the second COMMIT fails
    # (40001). Its attempt is retried and runs no hook of either kind.
    b = pg_backend
    setup = await b.connect()
    await b.insert(setup, 0, id=1)
    await b.insert(setup, 0, id=2)
    barrier = asyncio.Barrier(2)
    finished: list[str] = []
    hooks: list[tuple[str, str, int]] = []

    async with b.pool(max_size=2) as pool:

        async def write_skew(conn: Any, name: str, mine: int) -> int:
            attempt = 1 + finished.count(name)
            async with aiolease.atomic(conn, savepoint=False) as tx:
                tx.on_commit(lambda: hooks.append(("commit", name, attempt)))
                tx.on_rollback(lambda: hooks.append(("rollback", name, attempt)))
            total = await b.scalar(conn, f"SELECT sum(v) FROM {b.table}")
            if attempt == 1:
                await barrier.wait()  # both read before either writes
            await b.run(conn, f"UPDATE {b.table} SET v = $1 WHERE id = $2", total + 1, mine)
            finished.append(name)
            if attempt == 1:
                await barrier.wait()  # both wrote before either commits
            return attempt

        def run(name: str, mine: int) -> Any:
            async def fn(conn: Any) -> int:
                return await write_skew(conn, name, mine)

            return aiolease.run_transaction(pool, fn, isolation="serializable", attempts=3)

        results = await asyncio.gather(run("a", 1), run("b", 2))
    assert sorted(results) == [1, 2]  # one committed at once, one at its second attempt
    assert len(finished) == 3  # the failed attempt's body ran to its end: COMMIT failed
    assert sorted(hooks) == [("commit", "a", results[0]), ("commit", "b", results[1])]


async def test_real_deadlock_is_retried_to_the_right_data(pg_backend: Backend) -> None:
    b = pg_backend
    setup = await b.connect()
    await b.insert(setup, 0, id=1)
    await b.insert(setup, 0, id=2)
    barrier = asyncio.Barrier(2)
    errors: list[str] = []
    conns = [await b.connect(), await b.connect()]

    async def transfer(conn: Any, first: int, second: int) -> None:
        async for attempt in aiolease.transaction_attempts(conn, attempts=10):
            async with attempt:
                await b.run(conn, "SET LOCAL deadlock_timeout = '50ms'")
                await b.run(conn, f"UPDATE {b.table} SET v = v + 1 WHERE id = $1", first)
                if attempt.number == 1:
                    await barrier.wait()  # both hold their first row: a lock cycle
                try:
                    await b.run(conn, f"UPDATE {b.table} SET v = v + 1 WHERE id = $1", second)
                except Exception as exc:
                    errors.append(getattr(exc, "sqlstate", "?"))
                    raise

    await asyncio.gather(transfer(conns[0], 1, 2), transfer(conns[1], 2, 1))
    assert errors == ["40P01"]  # exactly one victim, retried
    assert await b.get(setup, 1) == 2
    assert await b.get(setup, 2) == 2


async def test_non_retryable_error_is_not_retried(pg_backend: Backend) -> None:
    b = pg_backend
    conn = await b.connect()
    calls: list[int] = []

    async def bad(c: Any) -> None:
        calls.append(1)
        raise Boom

    with pytest.raises(Boom):
        await aiolease.run_transaction(conn, bad, attempts=5)
    assert calls == [1]


async def test_retries_stop_after_attempts(pg_backend: Backend) -> None:
    b = pg_backend
    conn = await b.connect()
    calls: list[int] = []

    async def always_conflicts(c: Any) -> None:
        calls.append(1)
        await b.run(c, "DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '40001'; END $$")

    with pytest.raises(Exception, match="conflict") as info:
        await aiolease.run_transaction(conn, always_conflicts, attempts=3, backoff=0.001)
    assert getattr(info.value, "sqlstate", None) == "40001"
    assert calls == [1, 1, 1]


async def test_a_serialization_failure_raised_in_a_task_group_is_retried(
    pg_backend: Backend,
) -> None:
    # A body that runs its work in a TaskGroup gets the server's 40001 inside an
    # ExceptionGroup: the attempt failed by serialization all the same and is retried. A group
    # holding any other error too is not (that error would be hidden by a retry).
    b = pg_backend
    conn = await b.connect()
    calls: list[int] = []

    async def conflict_in_a_group(c: Any) -> str:
        calls.append(1)
        async with asyncio.TaskGroup() as group:
            if len(calls) == 1:
                group.create_task(
                    b.run(c, "DO $$ BEGIN RAISE EXCEPTION 'x' USING ERRCODE = '40001'; END $$")
                )
        return "done"

    assert await aiolease.run_transaction(conn, conflict_in_a_group, backoff=0.001) == "done"
    assert calls == [1, 1]

    calls.clear()

    async def conflict_and_a_bug(c: Any) -> None:
        calls.append(1)

        async def bug() -> None:
            raise Boom

        async with asyncio.TaskGroup() as group:
            group.create_task(bug())
            group.create_task(
                b.run(c, "DO $$ BEGIN RAISE EXCEPTION 'x' USING ERRCODE = '40001'; END $$")
            )

    with pytest.raises(ExceptionGroup) as info:
        await aiolease.run_transaction(conn, conflict_and_a_bug, backoff=0.001)
    assert info.value.subgroup(Boom) is not None
    assert calls == [1]


@pytest.mark.slow
async def test_cancellation_during_commit_propagates_with_commit_unknown(
    pg_backend: Backend, slow_commit: str
) -> None:
    b = pg_backend
    conn, observer = await b.connect(), await b.connect()

    async def body() -> None:
        async with aiolease.atomic(conn):
            await b.run(conn, f"INSERT INTO {slow_commit} VALUES (1)")

    task = asyncio.create_task(body())
    await wait_for_query(b, observer, server_pid(conn), "COMMIT")
    task.cancel()
    with pytest.raises(asyncio.CancelledError) as info:
        await task
    unknown = info.value.__context__
    assert isinstance(unknown, aiolease.CommitUnknown)
    assert "cancelled during COMMIT" in str(unknown)
    assert _tracking.is_broken(conn)


@pytest.mark.slow
async def test_connection_killed_during_commit_raises_commit_unknown_and_pool_discards(
    pg_backend: Backend, slow_commit: str
) -> None:
    b = pg_backend
    observer = await b.connect()
    hooks: list[str] = []
    async with b.pool(max_size=1) as pool:
        pids: list[int] = []

        async def body() -> None:
            async with pool.atomic() as tx:
                pids.append(server_pid(tx.connection))
                tx.on_commit(lambda: hooks.append("commit"))
                tx.on_rollback(lambda: hooks.append("rollback"))
                await b.run(tx.connection, f"INSERT INTO {slow_commit} VALUES (1)")

        task = asyncio.create_task(body())
        while not pids:  # noqa: ASYNC110 - polling state outside this loop
            await asyncio.sleep(0.001)
        await wait_for_query(b, observer, pids[0], "COMMIT")
        await b.scalar(observer, "SELECT pg_terminate_backend($1)", pids[0])
        with pytest.raises(aiolease.CommitUnknown, match="connection was lost during COMMIT"):
            await task
        assert hooks == []  # the outcome is unknown: neither kind runs
        stats = pool.statistics()
        assert stats.in_use == 0
        assert stats.idle == 0  # the dead connection was discarded
        async with pool.atomic() as tx:  # and a fresh one serves the next caller
            assert server_pid(tx.connection) != pids[0]
    assert await b.scalar(observer, f"SELECT count(*) FROM {slow_commit}") == 0


@pytest.mark.parametrize("how", ["idle_in_transaction_timeout", "terminated_while_idle"])
async def test_a_session_ended_before_commit_was_sent_is_a_known_rollback(
    pg_backend: Backend, how: str
) -> None:
    """The server ended the session while the block was idle in its transaction (the
    idle-in-transaction timeout, or a backend terminated between two statements): COMMIT
    never reached it, so the transaction was rolled back, not "maybe committed". The
    block's error is the driver's, its on_rollback hooks run, and the pool discards the
    connection. Where the driver cannot tell (psycopg, below), it stays unknown."""
    b = pg_backend
    observer = await b.connect()
    hooks: list[str] = []
    async with b.pool(max_size=1) as pool:
        with pytest.raises(Exception) as info:  # noqa: PT012 - the block under test
            async with pool.atomic() as tx:
                tx.on_commit(lambda: hooks.append("commit"))
                tx.on_rollback(lambda: hooks.append("rollback"))
                await b.insert(tx.connection, 1)
                pid = server_pid(tx.connection)
                if how == "idle_in_transaction_timeout":
                    await b.run(tx.connection, "SET LOCAL idle_in_transaction_session_timeout=100")
                else:
                    await b.scalar(observer, "SELECT pg_terminate_backend($1)", pid)
                for _ in range(200):  # idle in the transaction until the server ends it
                    await asyncio.sleep(0.01)
                    alive = await b.scalar(
                        observer, "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid
                    )
                    if not alive:
                        break
                await asyncio.sleep(0.05)  # the FATAL message and the close reach the driver
        if b.name == "psycopg" and how == "terminated_while_idle":
            # libpq reads the server's goodbye only when COMMIT goes out, and a backend
            # terminated while COMMIT runs says the same (57P01): it stays unknown.
            assert isinstance(info.value, aiolease.CommitUnknown), info.value
            assert hooks == []
        else:
            assert not isinstance(info.value, aiolease.CommitUnknown), info.value
            assert hooks == ["rollback"]
        assert pool.statistics().idle == 0  # the dead connection was discarded
        async with pool.atomic() as tx:
            await b.insert(tx.connection, 2)
    assert await b.count(observer) == 1


async def test_connection_killed_in_body_propagates_and_pool_recovers(pg_backend: Backend) -> None:
    b = pg_backend
    observer = await b.connect()
    async with b.pool(max_size=1) as pool:
        with pytest.raises(Exception) as info:  # noqa: PT012 - the block under test
            async with pool.atomic() as tx:
                await b.insert(tx.connection, 1)
                await b.scalar(
                    observer, "SELECT pg_terminate_backend($1)", server_pid(tx.connection)
                )
                await b.insert(tx.connection, 2)
        assert not isinstance(info.value, aiolease.CommitUnknown)
        async with pool.atomic() as tx:
            await b.insert(tx.connection, 3)
    assert await b.count(observer) == 1


async def test_isolation_level_is_applied(pg_backend: Backend) -> None:
    b = pg_backend
    conn = await b.connect()
    async with aiolease.atomic(conn, isolation="repeatable read", readonly=True):
        assert await b.scalar(conn, "SHOW transaction_isolation") == "repeatable read"
        assert await b.scalar(conn, "SHOW transaction_read_only") == "on"
    async with aiolease.atomic(conn):
        assert await b.scalar(conn, "SHOW transaction_read_only") == "off"


async def test_isolation_and_readonly_apply_through_every_entry_point(pg_backend: Backend) -> None:
    # atomic(), pool.atomic() and run_transaction(): what the server says it runs.
    b = pg_backend

    async def settings(conn: Any) -> tuple[str, str]:
        level = await b.scalar(conn, "SELECT current_setting('transaction_isolation')")
        readonly = await b.scalar(conn, "SELECT current_setting('transaction_read_only')")
        return level, readonly

    conn = await b.connect()
    async with b.pool(max_size=1) as pool:
        for level in (None, "read committed", "Repeatable Read", "SERIALIZABLE"):
            for readonly in (False, True):
                want = ((level or "read committed").lower(), "on" if readonly else "off")
                async with aiolease.atomic(conn, isolation=level, readonly=readonly):
                    assert await settings(conn) == want
                async with pool.atomic(isolation=level, readonly=readonly) as tx:
                    assert await settings(tx.connection) == want
                got = await aiolease.run_transaction(
                    pool, settings, isolation=level, readonly=readonly
                )
                assert got == want
        async with pool.atomic() as tx:  # nothing sticks to the connection
            assert await settings(tx.connection) == ("read committed", "off")
    assert await settings(conn) == ("read committed", "off")


def conn_in_transaction(conn: Any) -> bool:
    from aiolease._dialects import dialect_for

    return dialect_for(conn).in_transaction(conn)


async def test_asyncpg_own_pool_and_its_proxies(pg_dsn: str) -> None:
    import asyncpg

    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=2)
    try:

        async def work(conn: Any) -> int:
            assert type(conn).__name__ == "PoolConnectionProxy"
            return int(await conn.fetchval("SELECT 41 + 1"))

        assert await aiolease.run_transaction(pool, work) == 42  # a pool-like target
        async with pool.acquire() as conn, aiolease.atomic(conn, isolation="serializable"):
            assert await conn.fetchval("SHOW transaction_isolation") == "serializable"
    finally:
        await pool.close()


async def test_asyncpg_rollback_on_a_cut_connection_raises_the_drivers_error(
    pg_dsn: str,
) -> None:
    # A connection cut under a block (terminate(): what the pool does past its grace) has no
    # protocol left; asyncpg's is_in_transaction() then fails with AttributeError. The
    # dialect's rollback must report the driver's own error for a closed connection.
    import asyncpg

    from aiolease._dialects import dialect_for

    conn = await asyncpg.connect(pg_dsn)
    await conn.execute("BEGIN")
    conn.terminate()
    with pytest.raises(asyncpg.InterfaceError, match="closed"):
        await dialect_for(conn).rollback(conn)
