"""psycopg dialect: the first statement of a block, once it has come ``prepare_threshold``
times, runs as ``BEGIN; EXECUTE <prepared>`` with the same results, and falls back to text
when the prepared statement is gone or stale."""

from __future__ import annotations

from collections.abc import AsyncIterator

import psycopg
import pytest

import aiolease
from pg_tables import temporary_table

pytestmark = pytest.mark.timeout(30)

Conn = psycopg.AsyncConnection[tuple[object, ...]]


@pytest.fixture
async def conn(pg_dsn: str) -> AsyncIterator[Conn]:
    c = await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True)
    c.prepare_threshold = 2
    try:
        yield c
    finally:
        await c.close()


@pytest.fixture
async def table(conn: Conn) -> AsyncIterator[str]:
    async with temporary_table(conn, "aiolease_prep_", "id BIGINT PRIMARY KEY, v TEXT") as name:
        yield name


async def ours(conn: Conn) -> dict[str, str]:
    """This connection's prepared statements made by aiolease: name -> parameter types."""
    cur = await conn.execute(
        "SELECT name, parameter_types::text FROM pg_prepared_statements"
        " WHERE name LIKE '\\_aiolease\\_%'"
    )
    return {str(name): str(types) for name, types in await cur.fetchall()}


async def first_statement(
    conn: Conn, query: str, params: tuple[object, ...]
) -> psycopg.AsyncCursor[tuple[object, ...]]:
    async with aiolease.atomic(conn):
        cur = await conn.execute(query, params)
    return cur  # noqa: RET504  (after the block: committed)


async def test_a_statement_is_prepared_after_the_threshold(conn: Conn, table: str) -> None:
    insert = f"INSERT INTO {table} (id, v) VALUES (%s, %s) RETURNING id, v"
    for i in range(1, 3):
        cur = await first_statement(conn, insert, (i, f"v{i}"))
        assert await ours(conn) == {}  # the first two: text
        assert await cur.fetchone() == (i, f"v{i}")
    for i in range(3, 6):
        cur = await first_statement(conn, insert, (i, f"v{i}"))
        assert (cur.rowcount, cur.statusmessage) == (1, "INSERT 0 1")
        assert [d.name for d in cur.description or ()] == ["id", "v"]
        assert await cur.fetchone() == (i, f"v{i}")
    # psycopg's parameter types: smallint for a small int, none for a str (the server
    # infers it from the column).
    assert await ours(conn) == {"_aiolease_1": "{smallint,text}"}
    cur = await conn.execute(f"SELECT count(*) FROM {table}")
    assert await cur.fetchone() == (5,)


async def test_parameter_types_key_the_statements_and_keep_result_types(conn: Conn) -> None:
    query = "SELECT %s + 1"
    for value in (1.5, 1.5, 1.5, 2**40, 2**40, 2**40, 2**40):
        cur = await first_statement(conn, query, (value,))
        row = await cur.fetchone()
        assert row == (value + 1,)
        assert row is not None
        assert type(row[0]) is type(value)
    assert sorted((await ours(conn)).values()) == ['{"double precision"}', "{bigint}"]


async def test_a_statement_the_server_will_not_prepare_stays_text(conn: Conn) -> None:
    for _ in range(4):
        cur = await first_statement(conn, "SELECT pg_typeof(%s)::text", ("x",))  # $1: no type
        assert await cur.fetchone() == ("unknown",)
        cur = await first_statement(conn, "SET LOCAL application_name = 'a'", ())
        assert cur.statusmessage == "SET"
    assert await ours(conn) == {}


async def test_no_prepare_threshold_means_never(conn: Conn, table: str) -> None:
    conn.prepare_threshold = None
    for i in range(5):
        await first_statement(conn, f"INSERT INTO {table} (id) VALUES (%s)", (i,))
    assert await ours(conn) == {}


async def test_prepare_false_is_never_prepared(conn: Conn, table: str) -> None:
    for i in range(5):
        async with aiolease.atomic(conn):
            cur = await conn.execute(f"INSERT INTO {table} (id) VALUES (%s)", (i,), prepare=False)
        assert cur.rowcount == 1
    assert await ours(conn) == {}


async def test_prepared_max_bounds_the_statements(conn: Conn, table: str) -> None:
    conn.prepared_max = 1
    for i in range(4):
        await first_statement(conn, f"INSERT INTO {table} (id) VALUES (%s)", (i,))
        await first_statement(conn, f"SELECT id FROM {table} WHERE id = %s", (i,))
    assert len(await ours(conn)) == 1


async def test_a_deallocated_statement_is_sent_as_text_again(conn: Conn, table: str) -> None:
    insert = f"INSERT INTO {table} (id) VALUES (%s)"
    for i in range(3):
        await first_statement(conn, insert, (i,))
    assert len(await ours(conn)) == 1
    await conn.execute("DEALLOCATE ALL")
    cur = await first_statement(conn, insert, (10,))  # 26000 inside: rolled back, then text
    assert cur.rowcount == 1
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    cur = await conn.execute(f"SELECT id FROM {table} ORDER BY id")
    assert [r[0] for r in await cur.fetchall()] == [0, 1, 2, 10]
    for i in range(20, 23):
        await first_statement(conn, insert, (i,))
    assert len(await ours(conn)) == 1  # prepared again after the threshold


async def test_a_stale_plan_is_replaced_by_text(conn: Conn, table: str) -> None:
    select = f"SELECT * FROM {table} WHERE id = %s"
    await conn.execute(f"INSERT INTO {table} (id, v) VALUES (1, 'a')")
    for _ in range(3):
        cur = await first_statement(conn, select, (1,))
        assert await cur.fetchone() == (1, "a")
    assert len(await ours(conn)) == 1
    await conn.execute(f"ALTER TABLE {table} ADD COLUMN w INT DEFAULT 7")
    cur = await first_statement(conn, select, (1,))  # 0A000 inside: rolled back, then text
    assert await cur.fetchone() == (1, "a", 7)
    assert await ours(conn) == {}  # the stale one is deallocated


async def test_an_error_of_the_prepared_statement_is_the_statement_error(
    conn: Conn, table: str
) -> None:
    insert = f"INSERT INTO {table} (id) VALUES (%s)"
    for i in range(3):
        await first_statement(conn, insert, (i,))
    with pytest.raises(psycopg.errors.UniqueViolation):
        await first_statement(conn, insert, (1,))
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert len(await ours(conn)) == 1
