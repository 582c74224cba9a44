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

import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aiolease.testing import FakeConnection, FakeDatabaseError

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
    st.just("FAIL"),
)


def _deterministic(steps: list[str]) -> bool:
    """Whether PostgreSQL answers ``steps`` the same on every run.

    A transaction started by AND CHAIN sometimes counts as having run a query
    already (a snapshot taken by the server on its own, e.g. while other sessions
    change the catalog), so changing its modes (BEGIN ISOLATION LEVEL ...) may or
    may not fail there.
    """
    chained = False
    for step in steps:
        if chained and step.split()[0] in ("BEGIN", "START") and len(step.split()) > 2:
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


def _sql(step: str, table: str) -> str:
    if step == "FAIL":
        return "SELECT 1/0"
    if step.startswith("INSERT "):
        return f"INSERT INTO {table} VALUES ({step[7:]})"
    return step


async def _on_postgres(pg: _Pg, steps: list[str]) -> tuple[list[Any], list[int]]:
    conn, seen = pg.conn, []
    for step in steps:
        try:
            cur = await conn.execute(_sql(step, pg.table))
            status = None if step.startswith(("INSERT", "FAIL")) else cur.statusmessage
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
            status = None if step.startswith(("INSERT", "FAIL")) else status
        except FakeDatabaseError as exc:
            status = f"error {exc.sqlstate}"
        seen.append((step, status, conn.transaction_status))
    rows = sorted(int(sql.split("(")[1].rstrip(")")) for sql, _ in conn.committed)
    return seen, rows


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
    ],
)
async def test_sequences_the_fake_got_wrong(pg: _Pg, steps: list[str]) -> None:
    expected = await _on_postgres(pg, steps)
    assert await _on_the_fake(steps) == expected
