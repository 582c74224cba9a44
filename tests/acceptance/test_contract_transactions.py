"""Black-box acceptance tests of the "Transactions" / "Errors" contract (docs/architecture.md).

Only public names as the contract spells them are used. Real engines: the live
PostgreSQL (asyncpg and psycopg) and SQLite files (aiosqlite); plus
``aiolease.testing.FakeConnection`` where the contract names it.
"""

# The `async with atomic(...)` block under test sits inside pytest.raises on purpose.
# ruff: noqa: PT012

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite
import asyncpg
import psycopg
import pytest

import aiolease
import aiolease.asyncpg
import aiolease.psycopg
import aiolease.sqlite
from aiolease.testing import FakeConnection

PG_BACKENDS = ["asyncpg", "psycopg"]
REAL_BACKENDS = ["asyncpg", "psycopg", "sqlite"]


# -- helpers ----------------------------------------------------------------------


class Env:
    """One backend: how to connect, run SQL and read rows, plus a private table."""

    def __init__(self, backend: str, target: str) -> None:
        self.backend = backend
        self.target = target  # DSN or SQLite file path
        self.table = f"acc_tx_{uuid.uuid4().hex[:12]}"

    async def connect(self) -> Any:
        if self.backend == "asyncpg":
            return await asyncpg.connect(self.target)
        if self.backend == "psycopg":
            return await psycopg.AsyncConnection.connect(self.target)
        return await aiosqlite.connect(self.target)

    async def connect_autocommit(self) -> Any:
        if self.backend == "psycopg":
            return await psycopg.AsyncConnection.connect(self.target, autocommit=True)
        if self.backend == "sqlite":
            return await aiosqlite.connect(self.target, isolation_level=None)
        return await self.connect()

    @asynccontextmanager
    async def conn(self, autocommit: bool = False) -> AsyncIterator[Any]:
        c = await (self.connect_autocommit() if autocommit else self.connect())
        try:
            yield c
        finally:
            await c.close()

    async def run(self, conn: Any, sql: str) -> None:
        await conn.execute(sql)

    async def rows(self, conn: Any, sql: str) -> list[tuple[Any, ...]]:
        if self.backend == "asyncpg":
            return [tuple(r) for r in await conn.fetch(sql)]
        if self.backend == "psycopg":
            cur = await conn.execute(sql)
            return [tuple(r) for r in await cur.fetchall()]
        async with conn.execute(sql) as cur:
            return [tuple(r) for r in await cur.fetchall()]

    async def values(self) -> list[int]:
        """The table's values, read from a fresh autocommit connection."""
        async with self.conn(autocommit=True) as c:
            return sorted(r[0] for r in await self.rows(c, f"SELECT v FROM {self.table}"))

    def create_pool(self, **options: Any) -> aiolease.Pool[Any]:
        if self.backend == "asyncpg":
            return aiolease.asyncpg.create_pool(self.target, **options)
        if self.backend == "psycopg":
            return aiolease.psycopg.create_pool(self.target, **options)
        return aiolease.sqlite.create_pool(self.target, **options)


@pytest.fixture(params=REAL_BACKENDS)
async def env(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Env]:
    backend: str = request.param
    target = str(tmp_path / "acc.db") if backend == "sqlite" else request.getfixturevalue("pg_dsn")
    e = Env(backend, target)
    async with e.conn(autocommit=True) as c:
        await e.run(c, f"CREATE TABLE {e.table} (v INTEGER)")
    try:
        yield e
    finally:
        async with e.conn(autocommit=True) as c:
            await e.run(c, f"DROP TABLE IF EXISTS {e.table}")


@pytest.fixture(params=PG_BACKENDS)
async def pg_env(request: pytest.FixtureRequest, pg_dsn: str) -> AsyncIterator[Env]:
    e = Env(request.param, pg_dsn)
    async with e.conn(autocommit=True) as c:
        await e.run(c, f"CREATE TABLE {e.table} (v INTEGER)")
    try:
        yield e
    finally:
        async with e.conn(autocommit=True) as c:
            await e.run(c, f"DROP TABLE IF EXISTS {e.table}")


# -- Errors -----------------------------------------------------------------------


def test_error_hierarchy() -> None:
    assert issubclass(aiolease.TransactionError, aiolease.AioleaseError)
    assert issubclass(aiolease.CommitUnknown, aiolease.TransactionError)
    assert issubclass(aiolease.Rollback, aiolease.AioleaseError)
    assert issubclass(aiolease.RateLimitExceeded, aiolease.AioleaseError)
    assert issubclass(aiolease.LimitTimeout, aiolease.AioleaseError)
    assert issubclass(aiolease.LimitTimeout, TimeoutError)
    assert issubclass(aiolease.PoolTimeout, TimeoutError)
    for name in ("PoolClosed", "TooManyWaiters", "WouldBlock"):
        assert issubclass(getattr(aiolease, name), aiolease.AioleaseError)


# -- dialect discovery ------------------------------------------------------------


def _run_python(code: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_import_aiolease_imports_no_driver() -> None:
    out = _run_python(
        "import sys, aiolease\n"
        "mods = ('asyncpg', 'psycopg', 'psycopg_pool', 'aiosqlite', 'redis')\n"
        "print(','.join(m for m in mods if m in sys.modules))"
    )
    assert out == "", f"`import aiolease` imported driver modules: {out}"


def test_builtin_sqlite_dialect_found_with_only_import_aiolease(tmp_path: Path) -> None:
    db = tmp_path / "sub.db"
    out = _run_python(
        "import asyncio, sys, aiosqlite, aiolease\n"
        "async def main():\n"
        f"    async with aiosqlite.connect({str(db)!r}) as c:\n"
        "        await c.execute('CREATE TABLE t (v INTEGER)')\n"
        "        async with aiolease.atomic(c):\n"
        "            await c.execute('INSERT INTO t VALUES (1)')\n"
        f"    async with aiosqlite.connect({str(db)!r}) as c:\n"
        "        async with c.execute('SELECT count(*) FROM t') as cur:\n"
        "            print((await cur.fetchone())[0])\n"
        "asyncio.run(main())\n"
        "print('aiolease.sqlite' in sys.modules and 'loaded-integration' or 'ok')"
    )
    assert out.splitlines()[0] == "1"


def test_builtin_asyncpg_dialect_found_with_only_import_aiolease(pg_dsn: str) -> None:
    out = _run_python(
        "import asyncio, asyncpg, aiolease\n"
        "async def main():\n"
        f"    c = await asyncpg.connect({pg_dsn!r})\n"
        "    try:\n"
        "        async with aiolease.atomic(c) as tx:\n"
        "            assert tx.connection is c\n"
        "            print(await c.fetchval('SELECT 1'))\n"
        "    finally:\n"
        "        await c.close()\n"
        "asyncio.run(main())\n"
    )
    assert out == "1"


def test_builtin_psycopg_dialect_found_with_only_import_aiolease(pg_dsn: str) -> None:
    out = _run_python(
        "import asyncio, psycopg, aiolease\n"
        "async def main():\n"
        f"    c = await psycopg.AsyncConnection.connect({pg_dsn!r})\n"
        "    try:\n"
        "        async with aiolease.atomic(c) as tx:\n"
        "            assert tx.connection is c\n"
        "            cur = await c.execute('SELECT 1')\n"
        "            print((await cur.fetchone())[0])\n"
        "    finally:\n"
        "        await c.close()\n"
        "asyncio.run(main())\n"
    )
    assert out == "1"


async def test_unsupported_connection_raises_type_error_naming_drivers() -> None:
    class NotAConnection:
        async def execute(self, sql: str) -> None:
            return None

    with pytest.raises(TypeError) as info:
        async with aiolease.atomic(NotAConnection()):
            pass
    message = str(info.value)
    for word in ("asyncpg", "psycopg", "aiosqlite", "register_dialect"):
        assert word in message, f"{word!r} not in {message!r}"


async def test_register_dialect_teaches_atomic_a_new_connection_type() -> None:
    from aiolease.abc import Dialect

    class MyConn:
        def __init__(self) -> None:
            self.log: list[str] = []

    class MyDialect(Dialect[MyConn]):
        async def begin(self, conn: MyConn, isolation: str | None, readonly: bool) -> None:
            conn.log.append("BEGIN")

        async def commit(self, conn: MyConn) -> bool:
            conn.log.append("COMMIT")
            return True

        async def rollback(self, conn: MyConn) -> None:
            conn.log.append("ROLLBACK")

        async def savepoint(self, conn: MyConn, name: str) -> None:
            conn.log.append("SAVEPOINT")

        async def release_savepoint(self, conn: MyConn, name: str) -> None:
            conn.log.append("RELEASE")

        async def rollback_to_savepoint(self, conn: MyConn, name: str) -> None:
            conn.log.append("ROLLBACK TO")

    aiolease.register_dialect(MyConn, MyDialect())
    c = MyConn()
    async with aiolease.atomic(c) as tx:
        assert tx.connection is c
        async with aiolease.atomic(c):
            pass
    assert c.log == ["BEGIN", "SAVEPOINT", "RELEASE", "COMMIT"]
    with pytest.raises(ValueError, match="boom"):
        async with aiolease.atomic(c):
            raise ValueError("boom")
    assert c.log[-2:] == ["BEGIN", "ROLLBACK"]


# -- isolation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "level", ["serializable", "SERIALIZABLE", "Read Committed", "REPEATABLE READ"]
)
async def test_isolation_case_insensitive_on_postgres(pg_env: Env, level: str) -> None:
    async with pg_env.conn() as c, aiolease.atomic(c, isolation=level):
        rows = await pg_env.rows(c, "SELECT current_setting('transaction_isolation')")
    assert rows[0][0] == " ".join(level.lower().split())


@pytest.mark.parametrize("level", ["serializable", "Serializable", "SERIALIZABLE"])
async def test_sqlite_accepts_serializable(tmp_path: Path, level: str) -> None:
    async with aiosqlite.connect(tmp_path / "iso.db") as c:
        await c.execute("CREATE TABLE t (v INTEGER)")
        await c.commit()
        async with aiolease.atomic(c, isolation=level):
            await c.execute("INSERT INTO t VALUES (1)")
    async with (
        aiosqlite.connect(tmp_path / "iso.db") as c2,
        c2.execute("SELECT count(*) FROM t") as cur,
    ):
        row = await cur.fetchone()
    assert row is not None
    assert row[0] == 1


@pytest.mark.parametrize("level", ["read committed", "repeatable read", "READ COMMITTED"])
async def test_sqlite_rejects_other_isolation_levels(tmp_path: Path, level: str) -> None:
    async with aiosqlite.connect(tmp_path / "iso.db") as c:
        with pytest.raises(ValueError, match=r"(?i)serializable"):
            async with aiolease.atomic(c, isolation=level):
                pass


async def test_unknown_isolation_level_is_value_error() -> None:
    with pytest.raises(ValueError, match="isolation"):
        async with aiolease.atomic(FakeConnection(), isolation="chaos"):
            pass


async def test_readonly_transaction_on_postgres(pg_env: Env) -> None:
    async with pg_env.conn() as c:
        with pytest.raises(Exception) as info:
            async with aiolease.atomic(c, readonly=True):
                await pg_env.run(c, f"INSERT INTO {pg_env.table} VALUES (1)")
        assert "read-only" in str(info.value)
    assert await pg_env.values() == []


# -- commit / rollback visibility ---------------------------------------------------


async def test_commit_visible_from_second_connection(env: Env) -> None:
    async with env.conn() as c:
        async with aiolease.atomic(c) as tx:
            assert tx.connection is c
            await env.run(c, f"INSERT INTO {env.table} VALUES (1)")
        assert await env.values() == [1]


async def test_exception_rolls_back_and_propagates_unchanged(env: Env) -> None:
    err = ValueError("original")
    async with env.conn() as c:
        with pytest.raises(ValueError) as info:
            async with aiolease.atomic(c):
                await env.run(c, f"INSERT INTO {env.table} VALUES (1)")
                raise err
        assert info.value is err
        assert await env.values() == []
        # The connection is usable for a new transaction afterwards.
        async with aiolease.atomic(c):
            await env.run(c, f"INSERT INTO {env.table} VALUES (2)")
    assert await env.values() == [2]


async def test_rollback_exception_is_silent(env: Env) -> None:
    async with env.conn() as c, aiolease.atomic(c):
        await env.run(c, f"INSERT INTO {env.table} VALUES (1)")
        raise aiolease.Rollback()
    assert await env.values() == []


async def test_set_rollback_rolls_back_without_raising(env: Env) -> None:
    async with env.conn() as c, aiolease.atomic(c) as tx:
        await env.run(c, f"INSERT INTO {env.table} VALUES (1)")
        tx.set_rollback(True)
    assert await env.values() == []


async def test_savepoint_rollback_keeps_outer_work(env: Env) -> None:
    async with env.conn() as c, aiolease.atomic(c):
        await env.run(c, f"INSERT INTO {env.table} VALUES (1)")
        with pytest.raises(KeyError):
            async with aiolease.atomic(c):
                await env.run(c, f"INSERT INTO {env.table} VALUES (2)")
                raise KeyError("inner")
        async with aiolease.atomic(c):
            await env.run(c, f"INSERT INTO {env.table} VALUES (3)")
        async with aiolease.atomic(c) as inner:
            await env.run(c, f"INSERT INTO {env.table} VALUES (4)")
            inner.set_rollback(True)
        async with aiolease.atomic(c):
            await env.run(c, f"INSERT INTO {env.table} VALUES (5)")
            raise aiolease.Rollback()
    assert await env.values() == [1, 3]


async def test_savepoint_rollback_after_db_error_keeps_outer_work(pg_env: Env) -> None:
    async with pg_env.conn() as c, aiolease.atomic(c):
        await pg_env.run(c, f"INSERT INTO {pg_env.table} VALUES (1)")
        with pytest.raises(Exception, match=r"(?i)division by zero"):
            async with aiolease.atomic(c):
                await pg_env.rows(c, "SELECT 1/0")
        await pg_env.run(c, f"INSERT INTO {pg_env.table} VALUES (2)")
    assert await pg_env.values() == [1, 2]


async def test_durable_nested_raises_transaction_error(env: Env) -> None:
    async with env.conn() as c, aiolease.atomic(c, durable=True):
        await env.run(c, f"INSERT INTO {env.table} VALUES (1)")
        with pytest.raises(aiolease.TransactionError):
            async with aiolease.atomic(c, durable=True):
                pass
    assert await env.values() == [1]


async def test_durable_outermost_commits(env: Env) -> None:
    async with env.conn() as c, aiolease.atomic(c, durable=True):
        await env.run(c, f"INSERT INTO {env.table} VALUES (7)")
    assert await env.values() == [7]


# -- hooks --------------------------------------------------------------------------


async def test_hooks_run_in_order_after_outermost_commit(env: Env) -> None:
    events: list[str] = []
    seen_committed: list[list[int]] = []

    async def async_hook() -> None:
        await asyncio.sleep(0)
        seen_committed.append(await env.values())
        events.append("async")

    async with env.conn() as c:
        async with aiolease.atomic(c) as outer:
            await env.run(c, f"INSERT INTO {env.table} VALUES (1)")
            outer.on_commit(lambda: events.append("sync1"))
            async with aiolease.atomic(c) as inner:
                inner.on_commit(async_hook)
                inner.on_rollback(lambda: events.append("rollback!"))
            assert events == [], "a hook ran before the outermost commit"
            outer.on_commit(lambda: events.append("sync2"))
            events_before_exit = list(events)
        assert events == ["sync1", "async", "sync2"]
    assert events_before_exit == []
    assert seen_committed == [[1]], "on_commit hook ran before the data was committed"


async def test_on_rollback_hooks_run_in_order(env: Env) -> None:
    events: list[str] = []

    async def async_hook() -> None:
        events.append("async")

    async with env.conn() as c:
        with pytest.raises(ZeroDivisionError):
            async with aiolease.atomic(c) as tx:
                tx.on_rollback(lambda: events.append("a"))
                tx.on_rollback(async_hook)
                tx.on_commit(lambda: events.append("commit!"))
                async with aiolease.atomic(c) as inner:
                    inner.on_rollback(lambda: events.append("b"))
                raise ZeroDivisionError
        assert events == ["a", "async", "b"]


async def test_hooks_of_rolled_back_savepoint_are_dropped(env: Env) -> None:
    events: list[str] = []
    async with env.conn() as c, aiolease.atomic(c) as outer:
        outer.on_commit(lambda: events.append("outer"))
        with pytest.raises(RuntimeError):
            async with aiolease.atomic(c) as inner:
                inner.on_commit(lambda: events.append("dropped-commit"))
                raise RuntimeError
        async with aiolease.atomic(c) as inner2:
            inner2.on_commit(lambda: events.append("dropped-commit-2"))
            raise aiolease.Rollback()
        async with aiolease.atomic(c) as inner3:
            inner3.on_commit(lambda: events.append("kept"))
    assert events == ["outer", "kept"]


async def test_failing_hook_does_not_stop_others_and_says_committed(env: Env) -> None:
    events: list[str] = []

    def bad() -> None:
        raise OSError("hook failed")

    async with env.conn() as c:
        with pytest.raises(aiolease.TransactionError) as info:
            async with aiolease.atomic(c) as tx:
                await env.run(c, f"INSERT INTO {env.table} VALUES (1)")
                tx.on_commit(lambda: events.append("first"))
                tx.on_commit(bad)
                tx.on_commit(lambda: events.append("third"))
    assert events == ["first", "third"]
    assert "committed" in str(info.value).lower()
    assert "rolled back" not in str(info.value).lower()
    assert await env.values() == [1]


# -- cleanup errors, cancellation, aborted transactions --------------------------


async def test_cleanup_error_never_masks_original(env: Env) -> None:
    original = LookupError("the original")
    c = await env.connect()
    try:
        with pytest.raises(LookupError) as info:
            async with aiolease.atomic(c):
                await env.run(c, f"INSERT INTO {env.table} VALUES (1)")
                await c.close()  # ROLLBACK will now fail
                raise original
        assert info.value is original
    finally:
        await c.close()
    assert await env.values() == []


async def test_cleanup_error_never_masks_original_fake_connection() -> None:
    original = LookupError("the original")
    conn = FakeConnection()
    with pytest.raises(LookupError) as info:
        async with aiolease.atomic(conn):
            await conn.execute("INSERT INTO t VALUES (1)")
            await conn.close()
            raise original
    assert info.value is original


async def test_cancellation_inside_block_rolls_back(env: Env) -> None:
    inside = asyncio.Event()
    async with env.conn() as c:

        async def body() -> None:
            async with aiolease.atomic(c):
                await env.run(c, f"INSERT INTO {env.table} VALUES (1)")
                inside.set()
                await asyncio.Event().wait()

        task = asyncio.create_task(body())
        await inside.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await env.values() == []
        # The connection is out of the transaction and usable again.
        async with aiolease.atomic(c):
            await env.run(c, f"INSERT INTO {env.table} VALUES (2)")
    assert await env.values() == [2]


async def test_aborted_transaction_raises_transaction_error(pg_env: Env) -> None:
    async with pg_env.conn() as c:
        with pytest.raises(aiolease.TransactionError) as info:
            async with aiolease.atomic(c):
                await pg_env.run(c, f"INSERT INTO {pg_env.table} VALUES (1)")
                try:
                    await pg_env.rows(c, "SELECT 1/0")
                except Exception:
                    pass
        assert not isinstance(info.value, aiolease.CommitUnknown)
        assert "rolled back" in str(info.value).lower()
        # Usable again.
        async with aiolease.atomic(c):
            await pg_env.run(c, f"INSERT INTO {pg_env.table} VALUES (2)")
    assert await pg_env.values() == [2]


async def test_aborted_by_first_statement_raises_transaction_error(pg_env: Env) -> None:
    async with pg_env.conn() as c:
        with pytest.raises(aiolease.TransactionError, match="rolled back"):
            async with aiolease.atomic(c):
                try:
                    await pg_env.rows(c, "SELECT * FROM no_such_table_acc_h8")
                except Exception:
                    pass
        async with aiolease.atomic(c):
            await pg_env.run(c, f"INSERT INTO {pg_env.table} VALUES (3)")
    assert await pg_env.values() == [3]


async def test_repeated_cancellation_during_rollback_still_rolls_back(env: Env) -> None:
    inside = asyncio.Event()
    async with env.conn() as c:

        async def body() -> None:
            async with aiolease.atomic(c):
                await env.run(c, f"INSERT INTO {env.table} VALUES (1)")
                inside.set()
                await asyncio.sleep(3600)

        task = asyncio.create_task(body())
        await inside.wait()
        for _ in range(4):
            task.cancel()
            await asyncio.sleep(0)
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await env.values() == []
        async with aiolease.atomic(c):
            await env.run(c, f"INSERT INTO {env.table} VALUES (2)")
    assert await env.values() == [2]


@pytest.mark.parametrize("steps", range(8))
async def test_cancellation_at_each_step_leaves_connection_clean(env: Env, steps: int) -> None:
    async with env.conn() as c:

        async def body() -> None:
            async with aiolease.atomic(c):
                await env.run(c, f"INSERT INTO {env.table} VALUES (1)")
                async with aiolease.atomic(c):
                    await env.run(c, f"INSERT INTO {env.table} VALUES (2)")

        task = asyncio.create_task(body())
        for _ in range(steps):
            await asyncio.sleep(0)
        task.cancel()
        outcome = (await asyncio.gather(task, return_exceptions=True))[0]
        committed = await env.values()
        if isinstance(outcome, asyncio.CancelledError):
            assert committed == []
        else:  # finished (or its COMMIT outcome is unknown) before the cancel landed
            assert outcome is None or isinstance(outcome, aiolease.CommitUnknown)
        if not isinstance(outcome, aiolease.CommitUnknown):
            async with aiolease.atomic(c):
                await env.run(c, f"INSERT INTO {env.table} VALUES (9)")
            assert 9 in await env.values()


# -- pool.atomic and CommitUnknown ----------------------------------------------------


async def test_pool_atomic_commits_and_rolls_back(env: Env) -> None:
    async with env.create_pool(max_size=2) as pool:
        async with pool.atomic() as tx:
            await env.run(tx.connection, f"INSERT INTO {env.table} VALUES (1)")
        with pytest.raises(ValueError):
            async with pool.atomic() as tx:
                await env.run(tx.connection, f"INSERT INTO {env.table} VALUES (2)")
                raise ValueError
        async with pool.atomic(isolation="serializable", durable=True) as tx:
            await env.run(tx.connection, f"INSERT INTO {env.table} VALUES (3)")
        assert pool.statistics().in_use == 0
    assert await env.values() == [1, 3]


async def _slow_commit_table(e: Env, seconds: float) -> str:
    """A deferred constraint trigger that makes COMMIT take ``seconds``."""
    fn = f"{e.table}_slow"
    async with e.conn(autocommit=True) as c:
        await e.run(
            c,
            f"CREATE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN PERFORM pg_sleep({seconds}); RETURN NULL; END $$",
        )
        await e.run(
            c,
            f"CREATE CONSTRAINT TRIGGER {fn}_t AFTER INSERT ON {e.table} "
            f"DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {fn}()",
        )
    return fn


async def _drop_function(e: Env, fn: str) -> None:
    async with e.conn(autocommit=True) as c:
        await e.run(c, f"DROP TABLE IF EXISTS {e.table}")
        await e.run(c, f"DROP FUNCTION IF EXISTS {fn}()")


async def _backend_pid(e: Env, conn: Any) -> int:
    return int((await e.rows(conn, "SELECT pg_backend_pid()"))[0][0])


async def _wait_until_committing(e: Env, pid: int) -> None:
    """Poll pg_stat_activity until backend ``pid`` is running its COMMIT."""
    async with e.conn(autocommit=True) as watcher:
        for _ in range(1000):
            rows = await e.rows(
                watcher, f"SELECT state, query FROM pg_stat_activity WHERE pid = {pid}"
            )
            if rows and rows[0][0] == "active" and "COMMIT" in str(rows[0][1]).upper():
                return
            await asyncio.sleep(0.005)
    raise AssertionError("the COMMIT never started")


async def test_cancel_during_commit_propagates_and_pool_discards(
    pg_env: Env,
) -> None:
    fn = await _slow_commit_table(pg_env, 1.0)
    try:
        async with pg_env.create_pool(max_size=1) as pool:
            pids: list[int] = []
            committing = asyncio.Event()

            async def body() -> None:
                async with pool.atomic() as tx:
                    pids.append(await _backend_pid(pg_env, tx.connection))
                    await pg_env.run(tx.connection, f"INSERT INTO {pg_env.table} VALUES (1)")
                    committing.set()

            task = asyncio.create_task(body())
            await committing.wait()
            await _wait_until_committing(pg_env, pids[0])  # running the 1 s trigger
            task.cancel()
            with pytest.raises(asyncio.CancelledError) as info:
                await task
            assert isinstance(info.value.__context__, aiolease.CommitUnknown)
            async with pool.atomic() as tx:
                new_pid = await _backend_pid(pg_env, tx.connection)
            assert new_pid != pids[0], "the pool reused a connection whose COMMIT was cut"
    finally:
        await _drop_function(pg_env, fn)


async def test_connection_lost_during_commit_raises_commit_unknown(pg_env: Env) -> None:
    fn = await _slow_commit_table(pg_env, 1.0)
    try:
        async with pg_env.create_pool(max_size=1) as pool:
            pid_box: list[int] = []
            committing = asyncio.Event()

            async def body() -> None:
                async with pool.atomic() as tx:
                    pid_box.append(await _backend_pid(pg_env, tx.connection))
                    await pg_env.run(tx.connection, f"INSERT INTO {pg_env.table} VALUES (1)")
                    committing.set()

            task = asyncio.create_task(body())
            await committing.wait()
            await _wait_until_committing(pg_env, pid_box[0])
            async with pg_env.conn(autocommit=True) as killer:
                await pg_env.rows(killer, f"SELECT pg_terminate_backend({pid_box[0]})")
            with pytest.raises(aiolease.CommitUnknown):
                await task
            async with pool.atomic() as tx:
                new_pid = await _backend_pid(pg_env, tx.connection)
            assert new_pid != pid_box[0]
    finally:
        await _drop_function(pg_env, fn)


# -- run_transaction -------------------------------------------------------------------


async def test_run_transaction_retries_real_serialization_failure(pg_env: Env) -> None:
    t = pg_env.table
    async with pg_env.conn(autocommit=True) as c:
        await pg_env.run(c, f"INSERT INTO {t} VALUES (0)")
    both_read = asyncio.Barrier(2)
    calls: dict[str, int] = {"a": 0, "b": 0}
    hooks: list[str] = []

    def make(name: str) -> Callable[[Any], Awaitable[str]]:
        async def fn(conn: Any) -> str:
            calls[name] += 1
            attempt = calls[name]
            async with aiolease.atomic(conn) as tx:
                tx.on_commit(lambda: hooks.append(f"{name}{attempt}"))
            current = (await pg_env.rows(conn, f"SELECT v FROM {t}"))[0][0]
            if attempt == 1:
                await both_read.wait()
            await pg_env.run(conn, f"UPDATE {t} SET v = {current + 1}")
            return f"{name}{attempt}"

        return fn

    async with pg_env.create_pool(max_size=2) as pool:
        results = await asyncio.gather(
            aiolease.run_transaction(pool, make("a"), isolation="serializable"),
            aiolease.run_transaction(pool, make("b"), isolation="serializable"),
        )
    assert await pg_env.values() == [2]
    assert calls["a"] + calls["b"] >= 3, "no real serialization failure happened"
    assert sorted(hooks) == sorted(results), "hooks must run only for the committed attempt"


async def test_run_transaction_returns_result_and_does_not_retry_other_errors(
    env: Env,
) -> None:
    calls = 0

    async def fn(conn: Any) -> int:
        nonlocal calls
        calls += 1
        await env.run(conn, f"INSERT INTO {env.table} VALUES (1)")
        raise KeyError("not retryable")

    async def ok(conn: Any) -> int:
        await env.run(conn, f"INSERT INTO {env.table} VALUES (5)")
        return 42

    async with env.create_pool(max_size=2) as pool:
        with pytest.raises(KeyError):
            await aiolease.run_transaction(pool, fn, attempts=5)
        assert await aiolease.run_transaction(pool, ok) == 42
    assert calls == 1
    assert await env.values() == [5]


async def test_run_transaction_many_sqlite_writers_never_surface_locked(tmp_path: Path) -> None:
    path = str(tmp_path / "writers.db")
    async with aiosqlite.connect(path, isolation_level=None) as c:
        await c.execute("CREATE TABLE counter (v INTEGER)")
        await c.execute("INSERT INTO counter VALUES (0)")

    async def incr(conn: Any) -> None:
        async with conn.execute("SELECT v FROM counter") as cur:
            row = await cur.fetchone()
        await asyncio.sleep(0)
        await conn.execute("UPDATE counter SET v = ?", (row[0] + 1,))

    pools = [aiolease.sqlite.create_pool(path, max_size=1) for _ in range(16)]
    try:
        for p in pools:
            await p.open()
        await asyncio.gather(*(aiolease.run_transaction(p, incr) for p in pools))
    finally:
        for p in pools:
            await p.aclose()
    async with aiosqlite.connect(path) as c, c.execute("SELECT v FROM counter") as cur:
        row = await cur.fetchone()
    assert row is not None
    assert row[0] == 16


async def test_run_transaction_gives_up_after_attempts_with_last_error(pg_env: Env) -> None:
    t = pg_env.table
    async with pg_env.conn(autocommit=True) as c:
        await pg_env.run(c, f"INSERT INTO {t} VALUES (0)")
    both_read = asyncio.Barrier(2)

    async def fn(conn: Any) -> None:
        current = (await pg_env.rows(conn, f"SELECT v FROM {t}"))[0][0]
        await both_read.wait()
        await pg_env.run(conn, f"UPDATE {t} SET v = {current + 1}")

    async with pg_env.create_pool(max_size=2) as pool:
        results = await asyncio.gather(
            aiolease.run_transaction(pool, fn, attempts=1, isolation="serializable"),
            aiolease.run_transaction(pool, fn, attempts=1, isolation="serializable"),
            return_exceptions=True,
        )
    errors = [r for r in results if isinstance(r, BaseException)]
    assert len(errors) == 1, results
    assert getattr(errors[0], "sqlstate", None) == "40001", repr(errors[0])
    assert await pg_env.values() == [1]


async def test_run_transaction_retries_real_deadlock(pg_env: Env) -> None:
    t = pg_env.table
    async with pg_env.conn(autocommit=True) as c:
        await pg_env.run(c, f"INSERT INTO {t} VALUES (1)")
        await pg_env.run(c, f"INSERT INTO {t} VALUES (2)")
    both_locked = asyncio.Barrier(2)
    calls = 0

    def make(first: int, second: int) -> Callable[[Any], Awaitable[None]]:
        async def fn(conn: Any) -> None:
            nonlocal calls
            calls += 1
            attempt_is_first = calls <= 2
            await pg_env.run(conn, "SET LOCAL deadlock_timeout = '50ms'")
            await pg_env.run(conn, f"UPDATE {t} SET v = v + 10 WHERE v % 10 = {first}")
            if attempt_is_first:
                await both_locked.wait()
            await pg_env.run(conn, f"UPDATE {t} SET v = v + 100 WHERE v % 10 = {second}")

        return fn

    async with pg_env.create_pool(max_size=2) as pool:
        await asyncio.gather(
            aiolease.run_transaction(pool, make(1, 2)),
            aiolease.run_transaction(pool, make(2, 1)),
        )
    assert calls >= 3, "no real deadlock happened"
    assert await pg_env.values() == [111, 112]


async def test_one_connection_used_by_two_tasks_is_an_error() -> None:
    conn = FakeConnection()
    inside = asyncio.Event()
    done = asyncio.Event()

    async def owner() -> None:
        async with aiolease.atomic(conn):
            inside.set()
            await done.wait()

    task = asyncio.create_task(owner())
    await inside.wait()
    try:
        with pytest.raises(aiolease.TransactionError):
            async with aiolease.atomic(conn):
                pass
    finally:
        done.set()
        await task
    assert conn.statements[-1].upper() == "COMMIT"


async def test_nested_cleanup_error_never_masks_original(env: Env) -> None:
    original = LookupError("inner original")
    c = await env.connect()
    try:
        with pytest.raises(LookupError) as info:
            async with aiolease.atomic(c), aiolease.atomic(c):
                await env.run(c, f"INSERT INTO {env.table} VALUES (1)")
                await c.close()  # ROLLBACK TO SAVEPOINT and ROLLBACK will fail
                raise original
        assert info.value is original
    finally:
        await c.close()
    assert await env.values() == []


async def test_failing_on_rollback_hook_does_not_mask_original(env: Env) -> None:
    original = KeyError("original")
    events: list[str] = []

    def bad() -> None:
        raise OSError("hook")

    async with env.conn() as c:
        with pytest.raises(KeyError) as info:
            async with aiolease.atomic(c) as tx:
                tx.on_rollback(bad)
                tx.on_rollback(lambda: events.append("second"))
                raise original
    assert info.value is original
    assert events == ["second"]


async def test_sqlite_write_transaction_takes_write_lock_at_start(tmp_path: Path) -> None:
    """BEGIN IMMEDIATE: the block holds the write lock from its first statement on."""
    path = str(tmp_path / "imm.db")
    async with aiosqlite.connect(path, isolation_level=None) as setup:
        await setup.execute("CREATE TABLE t (v INTEGER)")
    async with aiosqlite.connect(path) as a, aiosqlite.connect(path, timeout=0.05) as b:
        async with aiolease.atomic(a):
            async with a.execute("SELECT count(*) FROM t") as cur:
                await cur.fetchone()
            with pytest.raises(Exception, match="locked"):
                await b.execute("INSERT INTO t VALUES (1)")
        await b.rollback()


async def test_sqlite_readonly_refuses_writes(tmp_path: Path) -> None:
    path = str(tmp_path / "ro.db")
    async with aiosqlite.connect(path, isolation_level=None) as setup:
        await setup.execute("CREATE TABLE t (v INTEGER)")
    async with aiosqlite.connect(path) as c:
        with pytest.raises(Exception, match=r"(?i)read.?only|query_only|readonly"):
            async with aiolease.atomic(c, readonly=True):
                await c.execute("INSERT INTO t VALUES (1)")
        async with aiolease.atomic(c):
            await c.execute("INSERT INTO t VALUES (2)")
        async with c.execute("SELECT v FROM t") as cur:
            assert [tuple(r) for r in await cur.fetchall()] == [(2,)]


async def test_run_transaction_bad_attempts_is_value_error() -> None:
    async def fn(conn: Any) -> None:
        return None

    with pytest.raises(ValueError, match="attempts"):
        await aiolease.run_transaction(FakeConnection(), fn, attempts=0)


async def test_caught_error_in_nested_block_without_savepoint_is_no_silent_commit(
    env: Env,
) -> None:
    async with env.conn() as c:
        with pytest.raises(aiolease.TransactionError, match=r"(?i)roll"):
            async with aiolease.atomic(c):
                await env.run(c, f"INSERT INTO {env.table} VALUES (1)")
                try:
                    async with aiolease.atomic(c, savepoint=False):
                        raise ValueError("caught by the user")
                except ValueError:
                    pass
    assert await env.values() == []


@pytest.mark.aiolease_virtual_time
async def test_run_transaction_backoff_is_capped_and_on_loop_clock() -> None:
    from aiolease.abc import Dialect

    class Conflict(Exception):
        pass

    class RetryConn:
        commits = 0

    class RetryDialect(Dialect[RetryConn]):
        async def begin(self, conn: RetryConn, isolation: str | None, readonly: bool) -> None:
            return None

        async def commit(self, conn: RetryConn) -> bool:
            conn.commits += 1
            raise Conflict("serialization failure")

        async def rollback(self, conn: RetryConn) -> None:
            return None

        async def savepoint(self, conn: RetryConn, name: str) -> None:
            return None

        async def release_savepoint(self, conn: RetryConn, name: str) -> None:
            return None

        async def rollback_to_savepoint(self, conn: RetryConn, name: str) -> None:
            return None

        def is_retryable(self, exc: BaseException) -> bool:
            return isinstance(exc, Conflict)

    aiolease.register_dialect(RetryConn, RetryDialect())
    conn = RetryConn()
    hooks: list[str] = []

    async def fn(c: Any) -> None:
        async with aiolease.atomic(c) as tx:
            tx.on_commit(lambda: hooks.append("commit"))
            tx.on_rollback(lambda: hooks.append("rollback"))

    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(Conflict):
        await aiolease.run_transaction(conn, fn, attempts=6)
    assert conn.commits == 6
    assert loop.time() - t0 <= 5 * 1.0 + 1e-6  # five backoffs, each capped at 1 s
    assert "commit" not in hooks


# -- FakeConnection ----------------------------------------------------------------------


async def test_fake_connection_records_statements_including_transaction_control() -> None:
    conn = FakeConnection()
    await conn.execute("SELECT 1")
    async with aiolease.atomic(conn) as tx:
        assert tx.connection is conn
        await conn.execute("INSERT INTO t VALUES ($1)", 1)
        async with aiolease.atomic(conn):
            await conn.execute("INSERT INTO t VALUES ($1)", 2)
        with pytest.raises(ValueError):
            async with aiolease.atomic(conn):
                await conn.execute("INSERT INTO t VALUES ($1)", 3)
                raise ValueError
    stmts = [s.upper() for s in conn.statements]
    assert conn.statements[0] == "SELECT 1"
    assert stmts[1].startswith("BEGIN")
    assert conn.statements[2] == "INSERT INTO t VALUES ($1)"
    assert stmts[3].startswith("SAVEPOINT")
    assert stmts[5].startswith("RELEASE")
    assert stmts[6].startswith("SAVEPOINT")
    assert stmts[8].startswith("ROLLBACK TO")
    assert all(not s.startswith("ROLLBACK TO") for s in stmts[:8])
    assert stmts[-1] == "COMMIT"
    # After ROLLBACK TO, releasing the savepoint is optional; nothing else may follow.
    assert stmts[9:-1] in ([], [stmts[8].replace("ROLLBACK TO SAVEPOINT", "RELEASE SAVEPOINT")])


async def test_fake_connection_rollback_recorded() -> None:
    conn = FakeConnection()
    async with aiolease.atomic(conn) as tx:
        await conn.execute("UPDATE t SET v = 1")
        tx.set_rollback(True)
    assert [s.upper() for s in conn.statements][-1] == "ROLLBACK"
    assert conn.statements[0].upper().startswith("BEGIN")


async def test_fake_connection_hooks_and_run_transaction() -> None:
    conn = FakeConnection()
    events: list[str] = []

    async def fn(c: Any) -> str:
        await c.execute("INSERT INTO t VALUES (1)")
        async with aiolease.atomic(c) as tx:
            tx.on_commit(lambda: events.append("committed"))
        return "done"

    assert await aiolease.run_transaction(conn, fn) == "done"
    assert events == ["committed"]
    assert conn.statements[-1].upper() == "COMMIT"


async def test_fake_connection_contract_semantics() -> None:
    conn = FakeConnection()
    events: list[str] = []
    async with aiolease.atomic(conn) as tx:
        tx.on_commit(lambda: events.append("outer"))
        async with aiolease.atomic(conn) as sp:
            sp.on_commit(lambda: events.append("dropped"))
            sp.set_rollback(True)
        async with aiolease.atomic(conn) as sp2:
            sp2.on_commit(lambda: events.append("kept"))
        with pytest.raises(aiolease.TransactionError):
            async with aiolease.atomic(conn, durable=True):
                pass
        assert events == []
    assert events == ["outer", "kept"]
    async with aiolease.atomic(conn) as tx2:
        tx2.on_rollback(lambda: events.append("rolled back"))
        raise aiolease.Rollback()
    assert events[-1] == "rolled back"
    assert conn.statements[-1].upper() == "ROLLBACK"


async def test_pool_atomic_over_fake_connections() -> None:
    async def create() -> FakeConnection:
        return FakeConnection()

    async def close(c: FakeConnection) -> None:
        await c.close()

    async with aiolease.Pool.from_callables(create, close=close, max_size=2) as pool:
        async with pool.atomic() as tx:
            await tx.connection.execute("INSERT INTO t VALUES ($1)", 1)
            conn = tx.connection
        assert isinstance(conn, FakeConnection)
        assert [s.upper() for s in conn.statements] == [
            "BEGIN",
            "INSERT INTO T VALUES ($1)",
            "COMMIT",
        ]
        assert pool.statistics().in_use == 0


# -- hardening (2026-12-05) ----------------------------------------------------------


@pytest.mark.parametrize("name", ["backoff", "max_backoff"])
@pytest.mark.parametrize("bad", [float("inf"), float("nan"), 0, -1.0])
async def test_run_transaction_bad_backoff_is_value_error_naming_it(name: str, bad: float) -> None:
    async def fn(conn: Any) -> None:
        raise AssertionError("not reached")  # pragma: no cover

    with pytest.raises(ValueError, match=name):
        options: dict[str, Any] = {name: bad}
        await aiolease.run_transaction(FakeConnection(), fn, **options)


@pytest.mark.aiolease_virtual_time
async def test_a_rollback_with_no_answer_is_abandoned_after_5_s_by_default() -> None:
    from aiolease import _tracking

    conn = FakeConnection()
    conn.hang("^ROLLBACK$")
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(KeyError) as info:
        async with aiolease.atomic(conn):
            await conn.execute("INSERT")
            raise KeyError("original")
    assert loop.time() - t0 == pytest.approx(5.0, abs=0.01)
    assert isinstance(info.value.__context__, TimeoutError)
    assert any("ROLLBACK" in note for note in info.value.__notes__)
    assert _tracking.is_broken(conn)


@pytest.mark.aiolease_virtual_time
async def test_cancellation_is_not_swallowed_by_a_hanging_rollback() -> None:
    conn = FakeConnection()
    conn.hang("^ROLLBACK$")
    inside = asyncio.Event()

    async def body() -> None:
        async with aiolease.atomic(conn, cleanup_timeout=1.0):
            inside.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(body())
    await inside.wait()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert loop.time() - t0 == pytest.approx(1.0, abs=0.01)
