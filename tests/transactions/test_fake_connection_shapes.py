"""FakeConnection speaks asyncpg-style and cursor-style, inside and outside atomic()."""

from __future__ import annotations

from typing import Any

import pytest

import aiolease
from aiolease.testing import FakeConnection, FakeCursor, FakeDatabaseError


async def test_asyncpg_style_methods_return_scripted_rows() -> None:
    conn = FakeConnection()
    conn.script("FROM users", rows=[(1, "ann"), (2, "bob")])
    conn.script("FROM one", rows={"id": 7, "name": "eve"})
    assert await conn.fetch("SELECT * FROM users WHERE x = $1", 5) == [(1, "ann"), (2, "bob")]
    assert await conn.fetchrow("SELECT * FROM users") == (1, "ann")
    assert await conn.fetchval("SELECT * FROM users") == 1
    assert await conn.fetchval("SELECT * FROM users", column=1) == "ann"
    assert await conn.fetchval("SELECT * FROM one", column=1) == "eve"
    assert await conn.fetch("SELECT nothing") == []
    assert await conn.fetchrow("SELECT nothing") is None
    assert await conn.fetchval("SELECT nothing") is None
    await conn.executemany("INSERT INTO t VALUES ($1, $2)", [(1, 2), (3, 4)])
    assert conn.statements[-2:] == ["INSERT INTO t VALUES ($1, $2)"] * 2
    assert conn.arguments[-2:] == [(1, 2), (3, 4)]


async def test_cursor_style_methods() -> None:
    conn = FakeConnection()
    conn.script("FROM t", rows=[(1,), (2,), (3,)])
    cur = conn.cursor()
    assert isinstance(cur, FakeCursor)
    assert await cur.execute("SELECT v FROM t WHERE a = %s", (9,)) is cur
    assert cur.rowcount == 3
    assert await cur.fetchone() == (1,)
    assert await cur.fetchmany(1) == [(2,)]
    assert await cur.fetchall() == [(3,)]
    assert await cur.fetchone() is None
    async with conn.cursor() as c2:
        await c2.execute("SELECT v FROM t")
        assert [row async for row in c2] == [(1,), (2,), (3,)]
    assert c2.closed
    with pytest.raises(FakeDatabaseError, match="closed"):
        await c2.execute("SELECT 1")
    assert conn.arguments[conn.statements.index("SELECT v FROM t WHERE a = %s")] == (9,)


async def test_both_shapes_inside_atomic_are_recorded_in_order_and_committed() -> None:
    conn = FakeConnection()

    async def repository_code(c: Any) -> None:  # written against a driver
        await c.executemany("INSERT a", [(1,), (2,)])
        cur = c.cursor()
        await cur.execute("INSERT b", (3,))

    async with aiolease.atomic(conn):
        await repository_code(conn)
    assert conn.statements == ["BEGIN", "INSERT a", "INSERT a", "INSERT b", "COMMIT"]
    assert conn.committed == [("INSERT a", (1,)), ("INSERT a", (2,)), ("INSERT b", (3,))]


async def test_a_scripted_error_through_fetch_aborts_the_transaction() -> None:
    conn = FakeConnection()
    conn.script("bad", error=FakeDatabaseError("boom", sqlstate="23505"))
    with pytest.raises(FakeDatabaseError, match="boom"):
        async with aiolease.atomic(conn):
            await conn.fetchval("SELECT bad")
    assert conn.statements[-1] == "ROLLBACK"
    assert conn.committed == []
