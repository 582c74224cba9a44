"""Backends of the transaction contract suite: asyncpg, psycopg, aiosqlite and FakeConnection.

A test module imports the fixtures it uses (``backend_fixture``, ``pg_backend_fixture``).

Every backend gives the tests the same small vocabulary: open a connection,
insert a value, count what a connection sees, open a pool. PostgreSQL
backends work in a uuid-named table dropped afterwards; SQLite works in a file
under ``tmp_path``; the fake shares one in-memory FakeDatabase.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosqlite
import asyncpg
import psycopg
import pytest
from hypothesis import HealthCheck, settings

import aiolease
import aiolease.psycopg
import aiolease.sqlite
from aiolease import _dialects
from aiolease._compat import aiosqlite as _compat_aiosqlite
from aiolease._dialects.sqlite import AiosqliteDialect
from aiolease.testing import FakeConnection, FakeDatabase


def generated(default: int) -> tuple[int, settings]:
    """How many examples a generated (hypothesis) suite runs, ``AIOLEASE_DIFF_EXAMPLES``
    or ``default`` (modest, so ``make test`` stays quick), and its settings."""
    examples = int(os.environ.get("AIOLEASE_DIFF_EXAMPLES", str(default)))
    return examples, settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        database=None,
    )


PG_DSN = os.environ.get("AIOLEASE_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
# sqlite-public: aiosqlite through its public API only (the _compat fast path off).
BACKENDS = ["asyncpg", "psycopg", "sqlite", "sqlite-public", "sqlite-loop", "fake"]
POSTGRES = frozenset({"asyncpg", "psycopg"})
# How the registry names the aiosqlite dialect's factory.
SQLITE_DIALECT = _dialects._LAZY[("aiosqlite", "Connection")]


class Backend:
    """One database + driver under test; subclasses fill in the driver calls."""

    name = "?"
    #: Whether a failing statement aborts the transaction (PostgreSQL's 25P02).
    aborts_on_error = True
    #: Whether the connection can be lost (a network connection).
    networked = True
    #: Column type of an auto-numbered primary key.
    id_column = "SERIAL PRIMARY KEY"

    def __init__(self) -> None:
        self.table = f"aiolease_tx_{uuid.uuid4().hex[:12]}"
        self.connections: list[Any] = []

    async def setup(self) -> None:
        conn = await self.connect()
        await self.run(conn, f"CREATE TABLE {self.table} (id {self.id_column}, v INTEGER)")

    async def teardown(self) -> None:
        for conn in self.connections:
            await self.close(conn)
        conn = await self._open()
        try:
            await self.run(conn, f"DROP TABLE IF EXISTS {self.table}")
        finally:
            await self.close(conn)

    async def connect(self) -> Any:
        conn = await self._open()
        self.connections.append(conn)
        return conn

    async def _open(self) -> Any:
        raise NotImplementedError

    async def close(self, conn: Any) -> None:
        raise NotImplementedError

    async def run(self, conn: Any, sql: str, *args: Any) -> None:
        """Execute a statement (placeholders written ``$1``, ``$2``...)."""
        raise NotImplementedError

    async def scalar(self, conn: Any, sql: str, *args: Any) -> Any:
        raise NotImplementedError

    async def insert(self, conn: Any, value: int, id: int | None = None) -> None:
        if id is None:
            await self.run(conn, f"INSERT INTO {self.table} (v) VALUES ($1)", value)
        else:
            await self.run(conn, f"INSERT INTO {self.table} (id, v) VALUES ($1, $2)", id, value)

    async def count(self, conn: Any) -> int:
        return int(await self.scalar(conn, f"SELECT count(*) FROM {self.table}"))

    async def get(self, conn: Any, id: int) -> int:
        return int(await self.scalar(conn, f"SELECT v FROM {self.table} WHERE id = $1", id))

    async def fail(self, conn: Any) -> None:
        """Run a statement that fails (a division by zero / a scripted error)."""
        await self.run(conn, "SELECT 1/0")

    def pool(self, **options: Any) -> aiolease.Pool[Any]:
        raise NotImplementedError


class AsyncpgBackend(Backend):
    name = "asyncpg"

    async def _open(self) -> Any:
        return await asyncpg.connect(PG_DSN)

    async def close(self, conn: Any) -> None:
        if not conn.is_closed():
            await conn.close()

    async def run(self, conn: Any, sql: str, *args: Any) -> None:
        await conn.execute(sql, *args)

    async def scalar(self, conn: Any, sql: str, *args: Any) -> Any:
        return await conn.fetchval(sql, *args)

    def pool(self, **options: Any) -> aiolease.Pool[Any]:
        import aiolease.asyncpg

        return aiolease.asyncpg.create_pool(PG_DSN, **options)


def _pyformat(sql: str) -> str:
    for i in range(9, 0, -1):
        sql = sql.replace(f"${i}", "%s")
    return sql


class PsycopgBackend(Backend):
    name = "psycopg"

    async def _open(self) -> Any:
        return await psycopg.AsyncConnection.connect(PG_DSN, autocommit=True)

    async def close(self, conn: Any) -> None:
        await conn.close()

    async def run(self, conn: Any, sql: str, *args: Any) -> None:
        await conn.execute(_pyformat(sql), args or None)

    async def scalar(self, conn: Any, sql: str, *args: Any) -> Any:
        cur = await conn.execute(_pyformat(sql), args or None)
        row = await cur.fetchone()
        assert row is not None
        return row[0]

    def pool(self, **options: Any) -> aiolease.Pool[Any]:
        return aiolease.psycopg.create_pool(PG_DSN, **options)


class SqliteBackend(Backend):
    name = "sqlite"
    aborts_on_error = False
    networked = False
    id_column = "INTEGER PRIMARY KEY"

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    async def _open(self) -> Any:
        conn = await aiosqlite.connect(self.path, isolation_level=None)
        await conn.execute("PRAGMA journal_mode=WAL")
        await conn.execute("PRAGMA busy_timeout=10000")
        return conn

    async def close(self, conn: Any) -> None:
        await conn.close()

    async def run(self, conn: Any, sql: str, *args: Any) -> None:
        await conn.execute(sql.replace("$1", "?").replace("$2", "?"), args)

    async def scalar(self, conn: Any, sql: str, *args: Any) -> Any:
        async with conn.execute(sql.replace("$1", "?").replace("$2", "?"), args) as cur:
            row = await cur.fetchone()
        assert row is not None
        return row[0]

    async def fail(self, conn: Any) -> None:
        await self.run(conn, "SELECT no_such_column FROM sqlite_master")

    def pool(self, **options: Any) -> aiolease.Pool[Any]:
        return aiolease.sqlite.create_pool(self.path, **options)


class SqliteLoopBackend(SqliteBackend):
    """Connections made by :mod:`aiolease.sqlite` (WAL, ``check_same_thread=False``):
    ``atomic`` commits them on the event loop. Same behaviour expected as plain aiosqlite."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.manager = aiolease.sqlite.SqliteManager(
            path, pragmas={"busy_timeout": 10000, "journal_mode": "WAL"}, commit_on_loop=True
        )

    async def _open(self) -> Any:
        conn = await self.manager.create()
        assert "_aiolease_loop_commit" in conn.__dict__, "loop commit not enabled"
        return conn

    async def close(self, conn: Any) -> None:
        await self.manager.close(conn)


class FakeBackend(Backend):
    """FakeConnection: rows are the committed INSERTs (plus the connection's pending ones)."""

    name = "fake"

    def __init__(self) -> None:
        super().__init__()
        self.database = FakeDatabase()

    async def setup(self) -> None:
        pass

    async def teardown(self) -> None:
        for conn in self.connections:
            await conn.close()

    async def _open(self) -> Any:
        return FakeConnection(database=self.database)

    async def close(self, conn: Any) -> None:
        await conn.close()

    async def run(self, conn: Any, sql: str, *args: Any) -> None:
        await conn.execute(sql, *args)

    async def insert(self, conn: Any, value: int, id: int | None = None) -> None:
        await conn.execute("INSERT", value, id)

    def _rows(self, conn: Any) -> list[tuple[Any, ...]]:
        rows = [args for sql, args in self.database.committed if sql == "INSERT"]
        return rows + [args for sql, args in conn._work if sql == "INSERT"]

    async def count(self, conn: Any) -> int:
        await conn.execute("SELECT count")
        return len(self._rows(conn))

    async def get(self, conn: Any, id: int) -> int:
        await conn.execute("SELECT v", id)
        values = [v for v, i in self._rows(conn) if i == id]
        return int(values[-1])

    async def fail(self, conn: Any) -> None:
        conn.script("FAIL", error=FakeDatabaseErrorFactory(), times=1)
        await conn.execute("FAIL")

    def pool(self, **options: Any) -> aiolease.Pool[Any]:
        database = self.database

        async def create() -> FakeConnection:
            return FakeConnection(database=database)

        async def close(conn: FakeConnection) -> None:
            await conn.close()

        return aiolease.Pool.from_callables(create, close, **options)


def FakeDatabaseErrorFactory() -> Exception:
    from aiolease.testing import FakeDatabaseError

    return FakeDatabaseError("division by zero", sqlstate="22012")


@pytest.fixture(params=BACKENDS, name="backend")
async def backend_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """Each contract test runs once per backend."""
    name: str = request.param
    b: Backend
    if name in POSTGRES:
        request.getfixturevalue("pg_dsn")  # skips loudly / fails under CI when down
        b = AsyncpgBackend() if name == "asyncpg" else PsycopgBackend()
    elif name in ("sqlite", "sqlite-public"):
        b = SqliteBackend(tmp_path / "contract.sqlite")
    elif name == "sqlite-loop":
        if not _compat_aiosqlite.ENABLED:
            pytest.skip("COMMIT on the loop needs aiosqlite internals (AIOLEASE_COMPAT=public)")
        b = SqliteLoopBackend(tmp_path / "contract.sqlite")
    else:
        b = FakeBackend()
    with pytest.MonkeyPatch.context() as patch:
        if name == "sqlite-public":
            # The dialect chose its path when it was made: swap in the public one.
            patch.setattr(_compat_aiosqlite, "ENABLED", False)
            patch.setattr(_dialects, "_CACHE", {})
            patch.setitem(_dialects._BUILTIN, SQLITE_DIALECT, AiosqliteDialect())
        await b.setup()
        try:
            yield b
        finally:
            await b.teardown()


@pytest.fixture(params=sorted(POSTGRES), name="pg_backend")
async def pg_backend_fixture(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    """The PostgreSQL drivers only (real conflicts, deadlocks, killed backends)."""
    request.getfixturevalue("pg_dsn")
    b: Backend = AsyncpgBackend() if request.param == "asyncpg" else PsycopgBackend()
    await b.setup()
    try:
        yield b
    finally:
        await b.teardown()
