"""psycopg: statement shapes whose behaviour a pipelined or deferred BEGIN would change.

Each scenario runs inside psycopg's own ``conn.transaction()`` and inside
``aiolease.atomic`` on a plain connection and on a pooled one (the lease
proxy), and the outcomes must be equal. The shapes are those where psycopg's
pipeline mode, or a BEGIN sent later than at the block's entry, behaves
differently from psycopg's transaction (see docs/transactions.md, psycopg):
a query without parameters (psycopg's simple protocol: several statements
in one), COPY, ``executemany``, ``cursor.stream``, a server-side cursor, row
factories, notices, the diagnostics of a failing first statement, what the
block sees before its first statement (transaction status, psycopg's own
guards, a nested ``conn.transaction()``), a statement through a cursor taken
from the lease proxy, and a connection the server ended before BEGIN.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import psycopg
import pytest
from psycopg import pq
from psycopg.rows import dict_row

import aiolease
import aiolease.psycopg

Scenario = Callable[[Any], Awaitable[Any]]

#: The scenarios' table: one name per run, so that two runs on one database never share it.
TABLE = f"aiolease_shapes_{uuid.uuid4().hex[:12]}"

_DIAG_FIELDS = (
    "severity_nonlocalized",
    "message_primary",
    "message_detail",
    "message_hint",
    "statement_position",
    "schema_name",
    "table_name",
    "column_name",
    "constraint_name",
)


def error_outcome(exc: BaseException) -> tuple[Any, ...]:
    diag = getattr(exc, "diag", None)
    fields = tuple(getattr(diag, f, None) for f in _DIAG_FIELDS) if diag is not None else ()
    return ("error", type(exc).__name__, getattr(exc, "sqlstate", None), fields)


def status(conn: Any) -> str:
    return pq.TransactionStatus(conn.info.transaction_status).name


@pytest.fixture
async def setup(pg_dsn: str) -> AsyncIterator[tuple[Any, Any, Any]]:
    """A native and a plain autocommit connection, a one-connection pool, and a table."""
    admin = await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True)
    await admin.execute(f"DROP TABLE IF EXISTS {TABLE}")
    await admin.execute(f"CREATE TABLE {TABLE} (id int PRIMARY KEY, v text)")
    native = await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True)
    plain = await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True)
    pool = aiolease.psycopg.create_pool(pg_dsn, max_size=1)
    await pool.open()
    try:
        yield native, plain, pool
    finally:
        await pool.aclose()
        await native.close()
        await plain.close()
        await admin.execute(f"DROP TABLE IF EXISTS {TABLE}")
        await admin.close()


async def _contents(conn: Any) -> list[Any]:
    cur = await conn.execute(f"SELECT id, v FROM {TABLE} ORDER BY id")
    rows: list[Any] = await cur.fetchall()
    await conn.execute(f"TRUNCATE {TABLE}")
    return rows


async def _in_block(conn: Any, enter: Callable[[], Any], body: Scenario) -> Any:
    try:
        async with enter():
            result = ("ok", await body(conn))
    except Exception as exc:
        result = error_outcome(exc)
    return result, status(conn), await _contents(conn)


async def differential(setup: tuple[Any, Any, Any], body: Scenario) -> None:
    native, plain, pool = setup
    expected = await _in_block(native, native.transaction, body)
    assert await _in_block(plain, lambda: aiolease.atomic(plain), body) == expected
    async with pool.acquire() as pooled:
        assert await _in_block(pooled, lambda: aiolease.atomic(pooled), body) == expected


# -- the block's first statement, in each shape -------------------------------------------


async def no_params_several_statements(conn: Any) -> Any:
    # Without parameters psycopg uses the simple protocol, which runs several statements
    # (in pipeline mode it would refuse them: "cannot insert multiple commands").
    cur = await conn.execute(f"INSERT INTO {TABLE} VALUES (1, 'a'); SELECT 2")
    return cur.statusmessage, await cur.fetchall()


async def no_params_then_error(conn: Any) -> Any:
    await conn.execute(f"INSERT INTO {TABLE} VALUES (1, 'a'); SELECT 1/0")


async def params_error_diagnostics(conn: Any) -> Any:
    await conn.execute(f"INSERT INTO {TABLE} VALUES (%s, %s), (%s, %s)", (1, "a", 1, "b"))


async def params_syntax_error_position(conn: Any) -> Any:
    await conn.execute("SELECT %s FROM WHERE", (1,))


async def client_side_error_then_statement(conn: Any) -> Any:
    # psycopg refuses the call before sending anything; the transaction goes on.
    try:
        await conn.execute("SELECT %s, %s", (1,))
    except psycopg.ProgrammingError as exc:
        first = error_outcome(exc)
    await conn.execute(f"INSERT INTO {TABLE} VALUES (%s, %s)", (1, "a"))
    return first, status(conn)


async def copy_first(conn: Any) -> Any:
    async with conn.cursor().copy(f"COPY {TABLE} (id, v) FROM STDIN") as copy:
        await copy.write_row((1, "a"))
        await copy.write_row((2, "b"))
    return status(conn)


async def executemany_first(conn: Any) -> Any:
    cur = conn.cursor()
    await cur.executemany(
        f"INSERT INTO {TABLE} VALUES (%s, %s) RETURNING id",
        [(1, "a"), (2, "b")],
        returning=True,
    )
    ids = []
    while True:
        ids.append(await cur.fetchone())
        if not cur.nextset():
            break
    return ids


async def stream_first(conn: Any) -> Any:
    await conn.execute(f"INSERT INTO {TABLE} VALUES (%s, %s)", (1, "a"))
    return [row async for row in conn.cursor().stream("SELECT generate_series(1, %s)", (3,))]


async def stream_is_the_first_statement(conn: Any) -> Any:
    return [row async for row in conn.cursor().stream("SELECT generate_series(1, %s)", (3,))]


async def server_cursor_first(conn: Any) -> Any:
    # DECLARE needs a transaction block: outside one the server refuses it.
    async with conn.cursor(name="aiolease_shapes_cur") as cur:
        await cur.execute("SELECT generate_series(1, %s)", (5,))
        return await cur.fetchmany(2), await cur.fetchall()


async def row_factory_first(conn: Any) -> Any:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute("SELECT %s::int AS a, %s::text AS b", (1, "x"))
    return await cur.fetchall()


async def prepared_first(conn: Any) -> Any:
    out = []
    for i in range(3):
        cur = await conn.execute("SELECT %s::int + 1", (i,), prepare=True)
        out.append(await cur.fetchone())
    # Fails: the error propagates out of the block (prepared statement cache and all).
    await conn.execute("SELECT %s::int / %s", (1, 0), prepare=True)
    return out


async def notices_first(conn: Any) -> Any:
    seen: list[Any] = []

    def handler(diag: psycopg.errors.Diagnostic) -> None:
        seen.append((diag.severity_nonlocalized, diag.message_primary))

    conn.add_notice_handler(handler)
    try:
        # A notice from the server while the statement runs (a parameter: extended protocol).
        await conn.execute("SET LOCAL client_min_messages = notice")
        await conn.execute("DROP TABLE IF EXISTS aiolease_no_such_table")
        cur = await conn.execute("SELECT %s::text", ("after",))
        return seen, await cur.fetchall()
    finally:
        conn.remove_notice_handler(handler)


# -- before the first statement -----------------------------------------------------------


async def status_before_first_statement(conn: Any) -> Any:
    return status(conn)


async def commit_inside_the_block(conn: Any) -> Any:
    # psycopg forbids commit() inside its transaction() context.
    await conn.commit()


async def autocommit_change_inside_the_block(conn: Any) -> Any:
    await conn.set_autocommit(False)


async def native_nested_block_first(conn: Any) -> Any:
    # Inside a transaction, psycopg's conn.transaction() is a savepoint: its exit does
    # not commit, and the enclosing block's rollback undoes its work.
    async with conn.transaction():
        await conn.execute(f"INSERT INTO {TABLE} VALUES (%s, %s)", (1, "a"))
    raise RuntimeError("roll back")


async def cursor_then_rollback(conn: Any) -> Any:
    # A cursor taken from the connection (a pool's lease proxy included) runs inside the
    # block: its insert is undone by the rollback.
    cur = conn.cursor()
    await cur.execute(f"INSERT INTO {TABLE} VALUES (%s, %s)", (1, "a"))
    raise RuntimeError("roll back")


async def empty_block(conn: Any) -> Any:
    return None


SCENARIOS = [
    no_params_several_statements,
    no_params_then_error,
    params_error_diagnostics,
    params_syntax_error_position,
    client_side_error_then_statement,
    copy_first,
    executemany_first,
    stream_first,
    stream_is_the_first_statement,
    server_cursor_first,
    row_factory_first,
    prepared_first,
    notices_first,
    status_before_first_statement,
    commit_inside_the_block,
    autocommit_change_inside_the_block,
    native_nested_block_first,
    cursor_then_rollback,
    empty_block,
]


@pytest.mark.parametrize("body", SCENARIOS, ids=[s.__name__ for s in SCENARIOS])
async def test_first_statement_shapes_match_psycopgs_transaction(
    setup: tuple[Any, Any, Any], body: Scenario
) -> None:
    await differential(setup, body)


def roll_back_native() -> None:
    raise psycopg.Rollback()


async def test_rollback_of_a_native_nested_block_is_caught_like_in_psycopg(
    setup: tuple[Any, Any, Any],
) -> None:
    """psycopg.Rollback from a nested conn.transaction() is swallowed by psycopg; the work of
    the enclosing block before it commits."""

    async def body(conn: Any) -> Any:
        await conn.execute(f"INSERT INTO {TABLE} VALUES (%s, %s)", (1, "a"))
        async with conn.transaction():
            await conn.execute(f"INSERT INTO {TABLE} VALUES (%s, %s)", (2, "b"))
            roll_back_native()
        return status(conn)

    await differential(setup, body)


async def test_isolation_and_readonly_hold_for_the_first_statement(pg_dsn: str) -> None:
    """The block's first statement already runs at the requested level, read-only."""
    pool = aiolease.psycopg.create_pool(pg_dsn, max_size=1)
    seen: list[Any] = []

    async def body() -> None:
        async with pool.atomic(isolation="serializable", readonly=True) as tx:
            cur = await tx.connection.execute(
                "SELECT current_setting(%s), current_setting(%s)",
                ("transaction_isolation", "transaction_read_only"),
            )
            seen.append(await cur.fetchone())
            await tx.connection.execute("CREATE TABLE aiolease_ro (v int)")

    async with pool:
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            await body()
    assert seen == [("serializable", "on")]


async def test_a_session_ended_by_the_server_fails_at_entry_like_psycopg(pg_dsn: str) -> None:
    """A connection whose session the server ended while idle: psycopg's transaction()
    raises the server's FATAL error (AdminShutdown, 57P01: what a pool's failover
    detection reads) at entry, before the body runs; so does atomic. (In pipeline mode the
    same death surfaces as an OperationalError without a SQLSTATE.)"""
    killer = await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True)

    async def outcome(use_atomic: bool) -> Any:
        conn = await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True)
        try:
            await killer.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
            await asyncio.sleep(0.2)  # the FATAL message and the EOF reach the socket
            body_ran = False
            try:
                async with aiolease.atomic(conn) if use_atomic else conn.transaction():
                    body_ran = True
                    await conn.execute("SELECT %s", (1,))
            except psycopg.Error as exc:
                return type(exc).__name__, exc.sqlstate, body_ran
            return "no error"
        finally:
            await conn.close()

    try:
        expected = await outcome(False)
        assert expected == ("AdminShutdown", "57P01", False)
        assert await outcome(True) == expected
    finally:
        await killer.close()
