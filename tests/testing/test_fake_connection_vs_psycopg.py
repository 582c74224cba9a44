"""Differential: FakeConnection's transaction control against PostgreSQL's (through psycopg).

FakeConnection claims PostgreSQL's transaction semantics. Hypothesis draws
sequences of transaction-control statements (BEGIN, SAVEPOINT, RELEASE,
ROLLBACK TO, COMMIT, ROLLBACK, AND CHAIN, quoted names, malformed ones), inserts
and failing statements; each sequence runs on an autocommit psycopg connection
and on a FakeConnection, and after each statement both must agree on the status
or the SQLSTATE of the error and on the transaction status; at the end on the
committed rows.

Set ``AIOLEASE_DIFF_EXAMPLES`` to run more examples.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aiolease.testing import FakeConnection, FakeConnectionLost, FakeDatabaseError
from aiolease.testing._fake_sql import _statements

EXAMPLES = int(os.environ.get("AIOLEASE_DIFF_EXAMPLES", "150"))
pytestmark = pytest.mark.timeout(max(120, EXAMPLES))

NAMES = ["a", "b", "A", '"A"', '"a"', '"x""y"', "savepoint"]
CONTROL = [
    "BEGIN",
    "BEGIN ISOLATION LEVEL SERIALIZABLE",
    "BEGIN ISOLATION LEVEL SERIALIZABLE READ WRITE NOT DEFERRABLE",
    "BEGIN TRANSACTION ISOLATION LEVEL READ COMMITTED",
    "BEGIN ISOLATION LEVEL REPEATABLE READ, READ WRITE",
    "START TRANSACTION NOT DEFERRABLE",
    "BEGIN WORK DEFERRABLE",
    "BEGIN READ ONLY",
    "START TRANSACTION READ ONLY",
    "BEGIN ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE",
    "SET TRANSACTION READ ONLY",
    "SET TRANSACTION READ WRITE",
    "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
    "SET TRANSACTION NOT DEFERRABLE",
    "SET TRANSACTION",
    "BEGIN ISOLATION LEVEL",
    "BEGIN READ",
    "START TRANSACTION",
    "COMMIT",
    "END",
    "COMMIT AND CHAIN",
    "COMMIT AND NO CHAIN",
    "ROLLBACK",
    "ABORT",
    "ROLLBACK WORK",
    "ROLLBACK AND CHAIN",
    "SAVEPOINT",
    "RELEASE",
    "ROLLBACK TO",
    "START",
    "END WORK",
    "ABORT AND CHAIN",
    "COMMIT TRANSACTION AND CHAIN",
    "PREPARE TRANSACTION 'x'",
    "COMMIT PREPARED 'x'",
    "ROLLBACK PREPARED 'x'",
    "/* c */ COMMIT",
    "-- c\nROLLBACK",
    ";",
    "SET transaction_read_only = on",
    "SET LOCAL transaction_read_only TO off",
    "SET transaction_isolation = 'serializable'",
    "SET SESSION transaction_deferrable = true",
]
NAMED = [
    "SAVEPOINT {}",
    "RELEASE {}",
    "RELEASE SAVEPOINT {}",
    "ROLLBACK TO {}",
    "ROLLBACK TO SAVEPOINT {}",
    "ROLLBACK TRANSACTION TO SAVEPOINT {}",
]
statements = st.one_of(
    st.sampled_from(CONTROL),
    st.builds(str.format, st.sampled_from(NAMED), st.sampled_from(NAMES)),
    st.integers(0, 9).map(lambda v: f"INSERT {v}"),
    st.integers(0, 9).map(lambda v: f"/* c */ INSERT {v}"),
    st.just("FAIL"),
    st.just("LOCK"),
)


def _deterministic(steps: list[str]) -> bool:
    """Whether PostgreSQL answers ``steps`` the same on every run.

    A transaction started by AND CHAIN sometimes counts as having run a query
    already (a snapshot taken by the server on its own, e.g. while other sessions
    change the catalog), so changing its modes (BEGIN ISOLATION LEVEL ..., SET
    TRANSACTION NOT DEFERRABLE) may or may not fail there.
    """
    chained = False
    for step in steps:
        if chained and step.split()[0] in ("BEGIN", "START", "SET") and len(step.split()) > 2:
            return False
        chained = chained or step.endswith(" AND CHAIN")
    return True


DIFF = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)


class _Pg:
    def __init__(self, conn: psycopg.AsyncConnection[Any], table: str) -> None:
        self.conn = conn
        self.table = table


@pytest.fixture
async def pg(pg_dsn: str) -> AsyncIterator[_Pg]:
    table = f"aiolease_fakediff_{uuid.uuid4().hex[:12]}"
    conn = await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True)
    try:
        await conn.execute(f"CREATE TABLE {table} (v INTEGER)")
        yield _Pg(conn, table)
    finally:
        await conn.rollback()
        await conn.execute(f"DROP TABLE IF EXISTS {table}")
        await conn.close()


# Steps that are work (no status compared), and those standing for a command PostgreSQL
# refuses inside a transaction block.
WORK = (
    "INSERT",
    "FAIL",
    "VACUUM",
    "REINDEX",
    "CREATE",
    "/* c */ INSERT",
    "LOCK",
    "DECLARE",
    "CLOSE",
    "SET search_path",
    "SET LOCAL search_path",
    "SET CONSTRAINTS",
    "RESET",
    "SHOW",
    "LISTEN",
    "NOTIFY",
    "UNLISTEN",
    "CHECKPOINT",
    "SELECT",
)
BLOCK_REFUSED = {
    "VACUUM": "VACUUM {}",
    "REINDEX CONCURRENTLY": "REINDEX TABLE CONCURRENTLY {}",
    "CREATE INDEX CONCURRENTLY": "CREATE INDEX CONCURRENTLY ON {} (v)",
    # and those it refuses outside one
    "LOCK": "LOCK {}",
    "LOCK IN SHARE MODE": "/* c */ lock table {} in share mode",
    "DECLARE": "DECLARE c NO SCROLL CURSOR WITHOUT HOLD FOR SELECT v FROM {}",
    "DECLARE WITH HOLD": "DECLARE c CURSOR WITH HOLD FOR SELECT v FROM {}",
    "CLOSE": "CLOSE c",
}


def _sql(step: str, table: str) -> str:
    if step.startswith("/* c */ INSERT"):  # a comment before the statement
        return "/* c */ " + _sql(step[8:], table)
    if step == "FAIL":
        return "SELECT 1/0"
    if step in BLOCK_REFUSED:
        return BLOCK_REFUSED[step].format(table)
    if step.startswith("INSERT "):
        return f"INSERT INTO {table} VALUES ({step[7:]})"
    return step


async def _on_postgres(pg: _Pg, steps: list[str]) -> tuple[list[Any], list[int]]:
    conn, seen = pg.conn, []
    for step in steps:
        try:
            cur = await conn.execute(_sql(step, pg.table))
            status = None if step.startswith(WORK) else cur.statusmessage
        except psycopg.Error as exc:
            status = f"error {exc.sqlstate}"
        seen.append((step, status, conn.info.transaction_status.name.lower()))
    if conn.info.transaction_status.name != "IDLE":
        await conn.execute("ROLLBACK")
    cur = await conn.execute(f"SELECT v FROM {pg.table} ORDER BY v")
    rows = [row[0] for row in await cur.fetchall()]
    await conn.execute(f"TRUNCATE {pg.table}")
    return seen, rows


async def _on_the_fake(steps: list[str]) -> tuple[list[Any], list[int]]:
    conn, seen = FakeConnection(), []
    conn.script(r"1/0", error=FakeDatabaseError("division by zero", "22012"))
    for step in steps:
        try:
            status = await conn.execute(_sql(step, "t"))
            status = None if step.startswith(WORK) else status
        except FakeDatabaseError as exc:
            status = f"error {exc.sqlstate}"
        seen.append((step, status, conn.transaction_status))
    return seen, _inserted(conn)


def _inserted(conn: FakeConnection) -> list[int]:
    """The values of the INSERTs the fake committed, sorted (as ``SELECT v ... ORDER BY v``)."""
    return sorted(
        int(sql.rsplit("(", 1)[1].rstrip(")")) for sql, _ in conn.committed if "INSERT" in sql
    )


@DIFF
@given(steps=st.lists(statements, min_size=1, max_size=14).filter(_deterministic))
async def test_the_fake_follows_postgresql_transaction_control(pg: _Pg, steps: list[str]) -> None:
    expected = await _on_postgres(pg, steps)
    assert await _on_the_fake(steps) == expected


@pytest.mark.parametrize(
    "steps",
    [
        # Each sequence the fake got wrong: quoted names (an AssertionError, or a full
        # ROLLBACK for ROLLBACK TO "A"), ROLLBACK WORK/TRANSACTION TO (a full ROLLBACK),
        # AND CHAIN (no new transaction), BEGIN in an aborted transaction (accepted),
        # a malformed control statement (an AssertionError, the transaction went on).
        ["BEGIN", 'SAVEPOINT "A"', "INSERT 1", 'ROLLBACK TO "A"', "INSERT 2", "COMMIT"],
        ["BEGIN", "INSERT 1", "SAVEPOINT a", "INSERT 2", "ROLLBACK WORK TO SAVEPOINT a", "COMMIT"],
        ["BEGIN", "INSERT 1", "SAVEPOINT a", "INSERT 2", "ROLLBACK TRANSACTION TO a", "COMMIT"],
        ["BEGIN", "INSERT 1", "COMMIT AND CHAIN", "INSERT 2", "ROLLBACK"],
        ["BEGIN", "INSERT 1", "ROLLBACK AND CHAIN", "INSERT 2", "ROLLBACK", "INSERT 3"],
        ["COMMIT AND CHAIN", "ROLLBACK AND CHAIN"],
        ["BEGIN", "FAIL", "BEGIN", "ROLLBACK"],
        ["BEGIN", "FAIL", "COMMIT AND CHAIN", "INSERT 4", "COMMIT"],
        ["BEGIN", "SAVEPOINT", "INSERT 5", "COMMIT"],
        ["BEGIN", "RELEASE", "ROLLBACK"],
        ["START TRANSACTION", "INSERT 6", "END"],
        ["BEGIN", 'SAVEPOINT "x""y"', "INSERT 7", 'RELEASE "x""y"', "COMMIT"],
        # BEGIN inside a transaction sets its modes as SET TRANSACTION does, with its checks.
        ["BEGIN ISOLATION LEVEL SERIALIZABLE", "INSERT 8", "BEGIN ISOLATION LEVEL READ COMMITTED"],
        ["BEGIN", "INSERT 8", "BEGIN TRANSACTION ISOLATION LEVEL READ COMMITTED", "COMMIT"],
        ["BEGIN", "SAVEPOINT a", "BEGIN ISOLATION LEVEL SERIALIZABLE", "ROLLBACK"],
        ["BEGIN", "SAVEPOINT a", "FAIL", "ROLLBACK TO a", "RELEASE a", "BEGIN DEFERRABLE"],
        ["BEGIN", "START TRANSACTION ISOLATION LEVEL REPEATABLE READ, NOT DEFERRABLE", "END"],
        ["BEGIN ISOLATION LEVEL SERIALIZABLE READ WRITE", "INSERT 9", "COMMIT"],
        # A write in a read-only transaction fails with 25006 (the fake accepted and
        # committed it).
        ["BEGIN READ ONLY", "INSERT 1", "COMMIT"],
        ["START TRANSACTION READ ONLY", "INSERT 1", "END"],
        ["BEGIN READ ONLY", "SAVEPOINT a", "INSERT 1", "ROLLBACK TO a", "INSERT 2", "COMMIT"],
        ["BEGIN READ ONLY", "COMMIT AND CHAIN", "INSERT 1", "COMMIT"],
        ["BEGIN", "INSERT 1", "BEGIN READ ONLY", "INSERT 2", "COMMIT"],
        ["BEGIN", "SAVEPOINT a", "BEGIN READ ONLY", "INSERT 1", "COMMIT"],
        ["BEGIN READ ONLY", "BEGIN READ WRITE", "INSERT 1", "COMMIT"],
        ["BEGIN READ ONLY", "SAVEPOINT a", "INSERT 1", "ROLLBACK TO a", "RELEASE a", "BEGIN"],
        # SET TRANSACTION sets the modes as BEGIN inside a transaction does (the fake took it
        # for work: read-only was not enforced, READ WRITE not restored).
        ["BEGIN", "SET TRANSACTION READ ONLY", "INSERT 1", "COMMIT"],
        ["BEGIN READ ONLY", "SET TRANSACTION READ WRITE", "INSERT 1", "COMMIT"],
        ["BEGIN", "INSERT 1", "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", "COMMIT"],
        ["BEGIN", "SAVEPOINT a", "SET TRANSACTION READ ONLY", "INSERT 1", "COMMIT"],
        ["SET TRANSACTION READ ONLY", "INSERT 1"],
        ["BEGIN", "FAIL", "SET TRANSACTION READ ONLY", "ROLLBACK"],
        ["BEGIN", "SET TRANSACTION", "COMMIT"],
        # An error undoes the modes set in the transaction back to those it started with,
        # which AND CHAIN carried over (the fake fell back to the defaults: read-write).
        ["BEGIN READ ONLY", "ROLLBACK AND CHAIN", "FAIL", "COMMIT AND CHAIN", "INSERT 1"],
        [
            "BEGIN READ ONLY",
            "ROLLBACK AND CHAIN",
            "SET TRANSACTION READ WRITE",
            "FAIL",
            "COMMIT AND CHAIN",
            "INSERT 1",
            "COMMIT",
        ],
        # Ending a subtransaction, released or rolled back, restores the read-only mode it
        # had on entry (the fake kept the one set inside it).
        ["BEGIN", "SAVEPOINT a", "SET TRANSACTION READ ONLY", "RELEASE a", "INSERT 1", "COMMIT"],
        ["BEGIN", "SAVEPOINT a", "SET TRANSACTION READ ONLY", "ROLLBACK TO a", "INSERT 1"],
        [
            "BEGIN",
            "SAVEPOINT a",
            "SET TRANSACTION READ ONLY",
            "FAIL",
            "COMMIT AND CHAIN",
            "INSERT 1",
            "COMMIT",
        ],
        [
            "BEGIN",
            "SAVEPOINT a",
            "SAVEPOINT b",
            "SET TRANSACTION READ ONLY",
            "RELEASE b",
            "FAIL",
            "COMMIT AND CHAIN",
            "INSERT 1",
            "COMMIT",
        ],
        [
            "BEGIN",
            "SAVEPOINT a",
            "SET TRANSACTION READ ONLY",
            "SAVEPOINT b",
            "FAIL",
            "ROLLBACK TO b",
            "INSERT 1",
            "COMMIT",
        ],
        # A command PostgreSQL refuses inside a transaction block fails with 25001 and
        # aborts the transaction (the fake ran it as work); it counts as a query; in a
        # read-only transaction CREATE INDEX CONCURRENTLY is refused as a write first.
        ["BEGIN", "INSERT 1", "VACUUM", "COMMIT", "VACUUM", "INSERT 2"],
        ["BEGIN", "SAVEPOINT a", "VACUUM", "ROLLBACK TO a", "RELEASE a", "BEGIN DEFERRABLE"],
        ["BEGIN", "SAVEPOINT a", "REINDEX CONCURRENTLY", "ROLLBACK TO a", "INSERT 3", "COMMIT"],
        ["BEGIN READ ONLY", "VACUUM", "ROLLBACK", "REINDEX CONCURRENTLY", "INSERT 4"],
        ["BEGIN", "CREATE INDEX CONCURRENTLY", "ROLLBACK AND CHAIN", "INSERT 5", "COMMIT"],
        ["BEGIN READ ONLY", "CREATE INDEX CONCURRENTLY", "ROLLBACK"],
        # The refused write counts as a query: the modes can no longer change.
        [
            "BEGIN READ ONLY",
            "SAVEPOINT a",
            "INSERT 1",
            "ROLLBACK TO a",
            "RELEASE a",
            "BEGIN DEFERRABLE",
        ],
        # Two-phase commit, on a server with prepared transactions disabled (PostgreSQL's
        # default): PREPARE TRANSACTION rolls back (55000 inside a transaction), COMMIT /
        # ROLLBACK PREPARED find no transaction (42704), and cannot run in a block (25001).
        # The fake took PREPARE TRANSACTION for work (the transaction went on and committed
        # it) and COMMIT / ROLLBACK PREPARED for syntax errors (42601).
        ["BEGIN", "INSERT 1", "PREPARE TRANSACTION 'x'", "INSERT 2", "COMMIT"],
        ["PREPARE TRANSACTION 'x'", "INSERT 1", "ROLLBACK"],
        ["BEGIN", "FAIL", "PREPARE TRANSACTION 'x'", "INSERT 1"],
        ["BEGIN READ ONLY", "SAVEPOINT a", "PREPARE TRANSACTION E'x'", "INSERT 1"],
        ["BEGIN", "PREPARE TRANSACTION x", "ROLLBACK"],
        ["COMMIT PREPARED 'x'", "ROLLBACK PREPARED $$x$$", "INSERT 1"],
        ["BEGIN", "INSERT 1", "COMMIT PREPARED 'x'", "COMMIT"],
        ["BEGIN", "FAIL", "ROLLBACK PREPARED 'x'", "ROLLBACK"],
        ["BEGIN", "SAVEPOINT a", "COMMIT PREPARED 'x'", "ROLLBACK TO a", "INSERT 1", "COMMIT"],
        ["BEGIN", "SAVEPOINT a", "COMMIT PREPARED 'x'", "ROLLBACK TO a", "BEGIN DEFERRABLE"],
        # Comments around transaction control (the fake took "-- c\nBEGIN" for work and
        # "COMMIT -- c" for a syntax error), and an empty query (no effect, even in an
        # aborted transaction: the fake recorded it as work, and refused it there).
        ["-- c\nBEGIN", "/* c */ INSERT 1", "COMMIT -- c", "/* c */ INSERT 2"],
        ["/* a /* nested */ comment */ START TRANSACTION READ ONLY", "INSERT 1", "ROLLBACK"],
        ["BEGIN", "SAVEPOINT a /* c */", "INSERT 1", "ROLLBACK TO a -- c", "COMMIT"],
        [";", "BEGIN", "FAIL", ";", "-- only a comment", "ROLLBACK", ";"],
        ["BEGIN READ ONLY", "/* c */ INSERT 1", "ROLLBACK"],
        # Other spellings of transaction control (these the fake already got right).
        ["BEGIN", "ABORT AND CHAIN", "END AND CHAIN", "INSERT 1", "END WORK", "ABORT TRANSACTION"],
        ["BEGIN", "SAVEPOINT a", "RELEASE a", "ROLLBACK TO a", "ROLLBACK"],
        ["BEGIN", "SAVEPOINT a", "SAVEPOINT a", "INSERT 1", "RELEASE a", "ROLLBACK TO a", "COMMIT"],
        ["BEGIN", "ROLLBACK TO SAVEPOINT", "ROLLBACK"],
        ["begin", "INSERT 1", "Commit;;"],
        # Commas between modes: one, between two (the fake took any commas as spaces).
        ["BEGIN ,READ ONLY", "INSERT 1", "ROLLBACK"],
        ["BEGIN READ ONLY,,DEFERRABLE", "ROLLBACK"],
        ["START TRANSACTION, READ ONLY", "INSERT 1"],
        ["BEGIN", "SET TRANSACTION , READ ONLY", "ROLLBACK"],
        ["BEGIN", "SET TRANSACTION READ ONLY,", "ROLLBACK"],
        ["BEGIN ISOLATION LEVEL SERIALIZABLE, READ ONLY DEFERRABLE", "INSERT 1", "ROLLBACK"],
        # A name longer than 63 bytes is truncated, at a character boundary (the fake
        # compared whole names: 3B001).
        ["BEGIN", "SAVEPOINT " + "a" * 70, "INSERT 1", "ROLLBACK TO " + "a" * 64, "COMMIT"],
        ["BEGIN", "SAVEPOINT " + "é" * 40, "INSERT 1", "RELEASE " + "é" * 35, "COMMIT"],
        ["BEGIN", 'SAVEPOINT "' + "é" * 40 + '"', "ROLLBACK TO " + "é" * 32, "COMMIT"],
        # Setting transaction_read_only, transaction_isolation or transaction_deferrable is
        # SET TRANSACTION, with its checks (the fake took it for work: read-only was not
        # enforced, a late isolation change not refused).
        ["BEGIN", "SET transaction_read_only = on", "INSERT 1", "ROLLBACK"],
        ["BEGIN", "SET LOCAL transaction_read_only TO true", "INSERT 1", "ROLLBACK"],
        ["SET transaction_read_only = on", "INSERT 1", "BEGIN", "INSERT 2", "COMMIT"],
        ["BEGIN", "INSERT 1", "SET transaction_isolation = 'serializable'", "COMMIT"],
        ["BEGIN", "INSERT 1", "SET transaction_isolation TO 'Repeatable Read'", "COMMIT"],
        ["BEGIN READ ONLY", "SET SESSION transaction_read_only = 'off'", "INSERT 1", "COMMIT"],
        [
            "BEGIN READ ONLY",
            "SAVEPOINT a",
            "INSERT 1",
            "ROLLBACK TO a",
            "SET transaction_read_only = of",
        ],
        ["BEGIN", "SAVEPOINT a", "SET transaction_deferrable = yes", "ROLLBACK"],
        ["BEGIN", "SET transaction_read_only = 1", "SAVEPOINT a", "SET transaction_read_only = 0"],
        ["BEGIN", "FAIL", "SET transaction_read_only = on", "ROLLBACK"],
        # LOCK and DECLARE (without WITH HOLD) fail with 25P01 outside a transaction block
        # (the fake ran them as autocommitted work).
        ["LOCK", "LOCK IN SHARE MODE", "BEGIN", "LOCK", "INSERT 1", "COMMIT"],
        ["DECLARE", "BEGIN", "DECLARE", "CLOSE", "COMMIT", "DECLARE WITH HOLD", "CLOSE"],
        # LOCK, SET, SHOW and a few others take no snapshot: the modes can still change
        # after them (the fake counted them as queries: 25001).
        ["BEGIN", "LOCK", "BEGIN ISOLATION LEVEL SERIALIZABLE", "SET TRANSACTION DEFERRABLE"],
        ["BEGIN", "SET search_path TO public", "SHOW search_path", "BEGIN DEFERRABLE", "COMMIT"],
        [
            "BEGIN READ ONLY",
            "SET CONSTRAINTS ALL DEFERRED",
            "SET TRANSACTION READ WRITE",
            "INSERT 1",
        ],
        ["BEGIN", "LISTEN ch", "NOTIFY ch", "UNLISTEN ch", "CHECKPOINT", "BEGIN DEFERRABLE"],
        ["BEGIN", "RESET search_path", "SET LOCAL search_path TO public", "BEGIN DEFERRABLE"],
        ["BEGIN", "SELECT 1", "BEGIN DEFERRABLE", "ROLLBACK"],
    ],
)
async def test_sequences_the_fake_got_wrong(pg: _Pg, steps: list[str]) -> None:
    expected = await _on_postgres(pg, steps)
    assert await _on_the_fake(steps) == expected


CANCELLED = [
    ["BEGIN", "INSERT 1", "SLOW", "INSERT 2", "COMMIT"],
    ["BEGIN", "INSERT 1", "SAVEPOINT a", "SLOW", "ROLLBACK TO a", "INSERT 2", "COMMIT"],
    ["BEGIN", "INSERT 1", "SAVEPOINT a", "SLOW", "RELEASE a", "COMMIT"],
    ["SLOW", "INSERT 3", "BEGIN", "INSERT 4", "COMMIT"],
]


@pytest.mark.parametrize("steps", CANCELLED)
async def test_a_statement_cancelled_while_it_runs_aborts_the_transaction(
    pg: _Pg, steps: list[str]
) -> None:
    """``SLOW`` runs until a timeout cancels it (``asyncio.timeout`` around it, caught):
    PostgreSQL cancels the statement, which aborts the transaction it ran in (25P02 until
    ROLLBACK). The fake used to go on as if the statement had never been sent, so code that
    catches the timeout and carries on in the transaction passed on the fake and failed on
    PostgreSQL."""

    async def run(execute: Any, state: Any, slow: str) -> list[Any]:
        seen = []
        for step in steps:
            try:
                if step == "SLOW":
                    async with asyncio.timeout(0.2):
                        await execute(slow)
                    status = "answered"
                else:
                    status = await execute(step)
            except TimeoutError:
                status = "timed out"
            except (psycopg.Error, FakeDatabaseError) as exc:
                status = f"error {exc.sqlstate}"
            seen.append((step, status, state()))
        return seen

    conn, table = pg.conn, pg.table

    async def on_postgres(step: str) -> Any:
        cur = await conn.execute(_sql(step, table))
        return None if step.startswith(("INSERT", "FAIL", "SELECT")) else cur.statusmessage

    expected = await run(
        on_postgres, lambda: conn.info.transaction_status.name.lower(), "SELECT pg_sleep(5)"
    )
    if conn.info.transaction_status.name != "IDLE":
        await conn.execute("ROLLBACK")
    cur = await conn.execute(f"SELECT v FROM {table} ORDER BY v")
    rows = [row[0] for row in await cur.fetchall()]

    fake = FakeConnection()
    fake.script(r"1/0", error=FakeDatabaseError("division by zero", "22012"))
    fake.hang("pg_sleep")

    async def on_the_fake(step: str) -> Any:
        status = await fake.execute(_sql(step, "t"))
        return None if step.startswith(("INSERT", "FAIL", "SELECT")) else status

    assert await run(on_the_fake, lambda: fake.transaction_status, "SELECT pg_sleep(5)") == (
        expected
    )
    assert sorted(int(sql.split("(")[1].rstrip(")")) for sql, _ in fake.committed) == rows


@pytest.mark.parametrize("in_transaction", [False, True])
async def test_executemany_is_all_or_nothing_as_on_postgresql(
    pg: _Pg, pg_dsn: str, in_transaction: bool
) -> None:
    """A batch whose third row fails: outside a transaction, psycopg's and asyncpg's
    ``executemany`` run it as one implicit transaction (no row stays); inside one, the
    failure aborts the transaction. The fake committed the rows before the failing one."""
    import asyncpg

    rows = [(1,), (2,), (0,), (3,)]  # 0 fails: division by zero
    sql = f"INSERT INTO {pg.table} VALUES (10 / %s)"
    seen: list[tuple[str, int, str]] = []

    async def committed() -> int:
        cur = await pg.conn.execute(f"SELECT count(*) FROM {pg.table}")
        row = await cur.fetchone()
        await pg.conn.execute(f"TRUNCATE {pg.table}")
        return int(row[0]) if row else -1

    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as p:
        if in_transaction:
            await p.execute("BEGIN")
        with pytest.raises(psycopg.Error):
            async with p.cursor() as cur:
                await cur.executemany(sql, rows)
        status = p.info.transaction_status.name.lower()
        if in_transaction:
            await p.execute("COMMIT")
        seen.append(("psycopg", await committed(), status))

    a = await asyncpg.connect(pg_dsn)
    try:
        if in_transaction:
            await a.execute("BEGIN")
        with pytest.raises(asyncpg.PostgresError):
            await a.executemany(sql.replace("%s", "$1"), rows)
        try:  # asyncpg has no "aborted" status: ask the server
            await a.execute("SELECT 1")
            status = "intrans" if a.is_in_transaction() else "idle"
        except asyncpg.PostgresError:
            status = "inerror"
        if in_transaction:
            await a.execute("COMMIT")
        seen.append(("asyncpg", await committed(), status))
    finally:
        await a.close()

    for shape in ("cursor", "connection"):
        fake = FakeConnection()
        fake.script("INSERT", times=2)  # the first two rows go through...
        fake.script("INSERT", error=FakeDatabaseError("division by zero", "22012"), times=1)
        if in_transaction:
            await fake.execute("BEGIN")
        batch = fake.cursor().executemany if shape == "cursor" else fake.executemany
        with pytest.raises(FakeDatabaseError):
            await batch(sql, rows)
        status = fake.transaction_status
        if in_transaction:
            await fake.execute("COMMIT")
        seen.append((shape, len(fake.committed), status))

    status = "inerror" if in_transaction else "idle"
    assert seen == [
        ("psycopg", 0, status),
        ("asyncpg", 0, status),
        ("cursor", 0, status),
        ("connection", 0, status),
    ]


# One statement each for PostgreSQL (a ";" inside a literal, a quoted name, a comment or a
# dollar quote, or only trailing ones), or several.
STRINGS = [
    "SELECT 1; SELECT 2",
    "SELECT ';'",
    "SELECT 'a'';'; SELECT 2",
    "SELECT E'\\';'",
    "SELECT E'\\';'; SELECT 2",
    'SELECT 1 AS "a;b"',
    "SELECT 1 -- ;\n",
    "SELECT 1 /* ; /* ; */ ; */",
    "SELECT $$;$$",
    "SELECT $a$ ; $$ ; $a$; SELECT 2",
    "SELECT 1 AS a$b; SELECT 2",
    "SELECT 1;",
    "SELECT 1; ;",
    "; SELECT 1",
    "BEGIN; SELECT 1; COMMIT",
]


@pytest.mark.parametrize("sql", STRINGS)
async def test_several_statements_with_transaction_control_are_refused_as_not_modelled(
    pg: _Pg, sql: str
) -> None:
    """PostgreSQL runs the statements of one simple-query string as one implicit
    transaction (an error in any of them undoes the others; a BEGIN among them takes
    in those before it), and refuses several with parameters. The fake does not model
    that: a string with transaction control among its statements is refused, with
    nothing recorded and the transaction as it was; several statements of plain work are
    one statement of work, and one statement (whatever ";" it holds) is one. It used to
    read only the first statement's first word: "BEGIN; INSERT ...; COMMIT" was a syntax
    error, and "INSERT ...; COMMIT" inside a transaction recorded work and left it open."""
    cur = await pg.conn.execute(sql)
    results = 1
    while cur.nextset():
        results += 1

    fake = FakeConnection()
    await fake.execute("BEGIN")
    if results > 1 and "BEGIN;" in sql:
        with pytest.raises(NotImplementedError, match="does not model several statements"):
            await fake.execute(sql)
        assert fake.statements == ["BEGIN"]
    else:
        await fake.execute(sql)
        assert fake.statements == ["BEGIN", sql]
    if results > 1:  # with parameters: refused (PostgreSQL refuses them too)
        with pytest.raises(NotImplementedError, match="with parameters"):
            await fake.execute(sql, 1)
    assert fake.transaction_status == "intrans"


@pytest.mark.parametrize("fault", ["fail", "drop"])
@pytest.mark.parametrize(
    "before",
    [["COMMIT"], ["END", "COMMIT AND NO CHAIN"], ["BEGIN", "FAIL", "COMMIT"], ["ABORT", "COMMIT"]],
)
async def test_commit_faults_count_only_commits_that_commit(
    pg: _Pg, before: list[str], fault: str
) -> None:
    """``fail_commit(1)`` / ``drop_on_commit(1)`` are for the next transaction's COMMIT.
    A COMMIT outside a transaction (PostgreSQL only warns: "there is no transaction in
    progress") and one ending an aborted transaction (answered ROLLBACK) commit nothing
    and are not counted. The fake counted them: the fault was used up on them, silently,
    and the transaction's COMMIT went through."""
    steps = [*before, "BEGIN", "INSERT 1"]
    seen, rows = await _on_postgres(pg, steps)  # then ROLLBACK: no row

    fake = FakeConnection()
    fake.script(r"1/0", error=FakeDatabaseError("division by zero", "22012"))
    if fault == "fail":
        fake.fail_commit(1)
    else:
        fake.drop_on_commit(1)
    answers = []
    for step in before:
        try:
            answers.append(await fake.execute(_sql(step, "t")))
        except FakeDatabaseError as exc:
            answers.append(f"error {exc.sqlstate}")
    assert answers == [status for _, status, _ in seen[: len(before)]]
    await fake.execute("BEGIN")
    await fake.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(FakeDatabaseError if fault == "fail" else FakeConnectionLost):
        await fake.execute("COMMIT")
    assert fake.committed == []
    assert rows == []


async def test_reserved_keywords_cannot_name_a_savepoint(pg: _Pg) -> None:
    """Every keyword of the server, unquoted, as a savepoint's name: PostgreSQL refuses the
    reserved ones and the type/function-name ones (42601), and takes the others. The fake
    took any word (``SAVEPOINT to`` was a savepoint named "to")."""
    cur = await pg.conn.execute("SELECT word FROM pg_get_keywords() ORDER BY word")
    words = [row[0] for row in await cur.fetchall()]
    steps = []
    for word in words:
        steps += ["BEGIN", f"SAVEPOINT {word}", f"RELEASE {word}", f"ROLLBACK TO {word}", "ABORT"]
    expected = await _on_postgres(pg, steps)
    assert await _on_the_fake(steps) == expected


# SELECT lists whose ";" and comment marks PostgreSQL's lexer must not take for a statement's
# end, and the ways statements are separated or padded.
EXPRESSIONS = [
    "1",
    "';'",
    "'a'';--'",
    "E'\\';'",
    "e'\\\\';",
    "$$;$$",
    "$t$ ; $$ ; $t$",
    '1 AS "x;""/*"',
    "1 -- ;\n",
    "/* ; /* ; */ ; */ 1",
    "1 AS a$b",
    "1/2",
    "'$$' || ';'",
]
SEPARATORS = [";", "; ;", ";\n", " ; -- x\n", "/* c */;"]
PADDING = ["", ";", " -- c\n", "/* c */", "; /* ; */ ;"]


@DIFF
@given(
    selects=st.lists(st.sampled_from(EXPRESSIONS), min_size=1, max_size=4),
    separators=st.lists(st.sampled_from(SEPARATORS), min_size=3, max_size=3),
    before=st.sampled_from(PADDING),
    after=st.sampled_from(PADDING),
)
async def test_the_fake_counts_statements_as_postgresql_splits_them(
    pg: _Pg, selects: list[str], separators: list[str], before: str, after: str
) -> None:
    """How many statements a string holds, by PostgreSQL's count of results (one per
    statement) and by the fake: one it runs, several it refuses."""
    sql = before + "".join(
        f"SELECT {expression}" + (separators[i] if i < len(selects) - 1 else "")
        for i, expression in enumerate(selects)
    )
    sql += after
    cur = await pg.conn.execute(sql)
    results = 1
    while cur.nextset():
        results += 1
    assert results == len(selects)

    assert len(_statements(sql)) == results
    fake = FakeConnection()
    await fake.execute(sql)  # plain work, however many statements: one statement of work
    assert fake.committed == [(sql, ())]
    with pytest.raises(NotImplementedError, match=f"several statements .*\\({results + 1} in"):
        await fake.execute(sql + "; COMMIT")
