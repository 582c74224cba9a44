"""Differential suite: a statement inside ``atomic`` behaves as inside the driver's own transaction.

Hypothesis generates values, statement shapes and server settings; each case
runs in the driver's native transaction (psycopg and asyncpg
``conn.transaction()``, aiosqlite's own BEGIN/commit) and in ``atomic`` on a
plain connection and on a pooled one, and the outcomes must be equal: the same
values of the same Python types, or the same exception type and SQLSTATE.

Example counts stay modest so ``make test`` stays quick; set
``AIOLEASE_DIFF_EXAMPLES`` (e.g. 2000) to run more.
"""

from __future__ import annotations

import datetime as dt
import enum
import math
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiosqlite
import asyncpg
import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st
from psycopg.types.json import Json, Jsonb
from tx_backends import generated

import aiolease
import aiolease.asyncpg
import aiolease.psycopg
import aiolease.sqlite

EXAMPLES, DIFF = generated(100)
pytestmark = pytest.mark.timeout(max(120, EXAMPLES * 3))

#: Cases run per driver in this process (reported by the summary test at the end).
CASES: dict[str, int] = {"psycopg": 0, "asyncpg": 0, "sqlite": 0}


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


def describe(value: Any) -> Any:
    """A value as (type, repr), recursively: equal iff same value and same Python type."""
    if isinstance(value, list | tuple):
        return (type(value).__name__, [describe(v) for v in value])
    if isinstance(value, dict):
        return ("dict", sorted((k, describe(v)) for k, v in value.items()))
    if isinstance(value, float) and math.isnan(value):
        return ("float", "nan")
    return (type(value).__name__, repr(value))


def outcome_of_error(exc: BaseException) -> tuple[str, str, str | None]:
    return ("error", type(exc).__name__, getattr(exc, "sqlstate", None))


# -- values -----------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
edge_ints = st.sampled_from(
    [0, 1, -1, 2**15 - 1, -(2**15), 2**31 - 1, -(2**31), 2**63 - 1, -(2**63), 2**63, -(2**64)]
)
pg_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers() | edge_ints,
    st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([-0.0, math.inf, -math.inf]),
    st.decimals(allow_nan=True, allow_infinity=True, places=None)
    | st.sampled_from([Decimal("5"), Decimal("NaN"), Decimal("-NaN"), Decimal("1E+3")]),
    st.text(max_size=12)
    | st.sampled_from(["'", "\\", "''; SELECT 1; --", "%s", "\\x41", "ü€日本", "a\\'b"]),
    st.binary(max_size=12),
    st.dates(),
    st.datetimes(timezones=st.just(dt.UTC) | st.none()),
    st.times(),
    st.times(timezones=st.sampled_from([dt.UTC, dt.timezone(dt.timedelta(hours=-5, minutes=-30))])),
    st.timedeltas(min_value=dt.timedelta(days=-9999), max_value=dt.timedelta(days=9999)),
    st.uuids(),
    st.lists(st.none() | st.integers(-1000, 1000), max_size=4),
    st.lists(st.lists(st.none() | st.integers(-9, 9), min_size=2, max_size=2), max_size=3),
    json_values.map(Json),
    json_values.map(Jsonb),
    st.sampled_from(list(Color)),
)

PG_SHAPES = [
    "SELECT %s",
    "SELECT %s::text",
    "SELECT pg_typeof(%s)::text",
    "SELECT %s / 2",
    "SELECT -%s::text",
    "SELECT %s[1]",
    "SELECT 'a' LIKE '%%%s%%'",  # a placeholder inside quotes: psycopg refuses it
    "SELECT %s; SELECT 1",  # several statements with parameters
    "SELECT %s, %s",  # more placeholders than values
]
PG_SETTINGS = st.fixed_dictionaries(
    {
        "client_encoding": st.sampled_from(["UTF8", "LATIN1", "SQL_ASCII", "EUC_JP"]),
        "standard_conforming_strings": st.sampled_from(["on", "off"]),
        "IntervalStyle": st.sampled_from(["postgres", "sql_standard", "iso_8601"]),
    }
)


# -- psycopg ------------------------------------------------------------------------------


async def _psycopg_run(
    conn: psycopg.AsyncConnection[Any], query: str, params: Any, prepare: bool | None
) -> Any:
    cur = await conn.execute(query, params, prepare=prepare)
    rows = await cur.fetchall() if cur.description else None
    return [describe(tuple(r)) for r in rows] if rows is not None else cur.statusmessage


async def _settle(conn: psycopg.AsyncConnection[Any], setting: dict[str, str]) -> None:
    for name, value in setting.items():
        await conn.execute(f"SET {name} = '{value}'")


async def _psycopg_case(
    conn: psycopg.AsyncConnection[Any],
    enter: Callable[[], Any],
    setting: dict[str, str],
    query: str,
    params: Any,
    prepare: bool | None,
) -> Any:
    await _settle(conn, setting)
    try:
        async with enter():
            return ("ok", await _psycopg_run(conn, query, params, prepare))
    except Exception as exc:  # whatever psycopg raises, it must raise it in both
        return outcome_of_error(exc)
    finally:
        await _settle(
            conn,
            {
                "client_encoding": "UTF8",
                "standard_conforming_strings": "on",
                "IntervalStyle": "postgres",
            },
        )


@pytest.fixture
async def pg_trio(pg_dsn: str) -> AsyncIterator[list[Any]]:
    """Three autocommit connections for each prepare_threshold, and a one-connection pool."""
    conns = [await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) for _ in range(4)]
    for c in conns[2:]:
        c.prepare_threshold = 0
    pool = aiolease.psycopg.create_pool(pg_dsn, max_size=1)
    await pool.open()
    try:
        yield [conns, pool]
    finally:
        await pool.aclose()
        for c in conns:
            await c.close()


@DIFF
@given(
    setting=PG_SETTINGS,
    query=st.sampled_from(PG_SHAPES),
    value=pg_values,
    prepared=st.sampled_from([None, True, "threshold0"]),
)
async def test_psycopg_atomic_is_psycopgs_transaction(
    pg_trio: list[Any], setting: dict[str, str], query: str, value: Any, prepared: Any
) -> None:
    conns, pool = pg_trio
    threshold0 = prepared == "threshold0"
    native, plain = (conns[2], conns[3]) if threshold0 else (conns[0], conns[1])
    prepare = True if prepared is True else None
    params = (value,)
    expected = await _psycopg_case(native, native.transaction, setting, query, params, prepare)
    got = await _psycopg_case(
        plain, lambda: aiolease.atomic(plain), setting, query, params, prepare
    )
    assert got == expected
    async with pool.acquire() as pooled:
        if threshold0:
            pooled.prepare_threshold = 0
        try:
            got_pooled = await _psycopg_case(
                pooled, lambda: aiolease.atomic(pooled), setting, query, params, prepare
            )
        finally:
            pooled.prepare_threshold = 5
    assert got_pooled == expected
    CASES["psycopg"] += 1


@DIFF
@given(value=pg_values, savepoint_fails=st.booleans())
async def test_psycopg_nested_blocks_match_nested_transactions(
    pg_trio: list[Any], value: Any, savepoint_fails: bool
) -> None:
    """A nested block (savepoint) that fails and is rolled back, then a statement:
    also with prepare_threshold=0, where psycopg's prepared cache must follow."""
    conns, _ = pg_trio

    async def scenario(conn: psycopg.AsyncConnection[Any], native: bool) -> Any:
        results: list[Any] = []
        outer = conn.transaction() if native else aiolease.atomic(conn)
        try:
            async with outer:
                try:
                    inner = conn.transaction() if native else aiolease.atomic(conn)
                    async with inner:
                        results.append(await _psycopg_run(conn, "SELECT %s", (value,), None))
                        if savepoint_fails:
                            await conn.execute("SELECT 1/0")
                except psycopg.Error as exc:
                    results.append(outcome_of_error(exc))
                results.append(await _psycopg_run(conn, "SELECT %s", (value,), None))
        except Exception as exc:
            results.append(outcome_of_error(exc))
        return results

    for native, plain in ((conns[0], conns[1]), (conns[2], conns[3])):
        assert await scenario(plain, native=False) == await scenario(native, native=True)
    CASES["psycopg"] += 1


# -- asyncpg ------------------------------------------------------------------------------

ASYNCPG_CASES = st.one_of(
    st.tuples(st.just("SELECT $1::int8"), st.integers(-(2**63), 2**63 - 1) | edge_ints),
    st.tuples(st.just("SELECT $1::float8"), st.floats()),
    st.tuples(st.just("SELECT $1::numeric"), st.decimals(allow_nan=True, allow_infinity=False)),
    st.tuples(st.just("SELECT $1::text"), st.text(max_size=12)),
    st.tuples(st.just("SELECT $1::bytea"), st.binary(max_size=12)),
    st.tuples(st.just("SELECT $1::int4[]"), st.lists(st.none() | st.integers(-9, 9), max_size=4)),
    st.tuples(st.just("SELECT $1::timestamptz"), st.datetimes(timezones=st.just(dt.UTC))),
    st.tuples(st.just("SELECT $1::interval"), st.timedeltas()),
    st.tuples(st.just("SELECT $1::uuid"), st.uuids()),
    st.tuples(st.just("SELECT $1::bool"), st.booleans() | st.none()),
    st.tuples(st.just("SELECT $1"), st.integers() | st.text(max_size=4)),  # unknown type
    st.tuples(st.just("SELECT $1::int4 / 0"), st.integers(-9, 9)),
)


@pytest.fixture
async def apg(pg_dsn: str) -> AsyncIterator[list[Any]]:
    conns = [await asyncpg.connect(pg_dsn) for _ in range(2)]
    pool = aiolease.asyncpg.create_pool(pg_dsn, max_size=1)
    await pool.open()
    try:
        yield [conns, pool]
    finally:
        await pool.aclose()
        for c in conns:
            await c.close()


async def _asyncpg_case(conn: Any, enter: Callable[[], Any], query: str, value: Any) -> Any:
    try:
        async with enter():
            rows = await conn.fetch(query, value)
            return ("ok", [describe(tuple(r)) for r in rows])
    except (
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
        ValueError,
        TypeError,
        OverflowError,
    ) as exc:
        return outcome_of_error(exc)


@DIFF
@given(case=ASYNCPG_CASES)
async def test_asyncpg_atomic_is_asyncpgs_transaction(
    apg: list[Any], case: tuple[str, Any]
) -> None:
    (native, plain), pool = apg
    query, value = case
    expected = await _asyncpg_case(native, native.transaction, query, value)
    assert await _asyncpg_case(plain, lambda: aiolease.atomic(plain), query, value) == expected
    async with pool.acquire() as pooled:
        assert (
            await _asyncpg_case(pooled, lambda: aiolease.atomic(pooled), query, value) == expected
        )
    CASES["asyncpg"] += 1


# -- aiosqlite ----------------------------------------------------------------------------

sqlite_values = st.one_of(
    st.none(),
    st.integers(-(2**63), 2**63 - 1),
    st.integers(2**63, 2**70),  # overflow
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.binary(max_size=12),
    st.booleans(),
)
SQLITE_SHAPES = [
    "SELECT ?",
    "SELECT typeof(?)",
    "SELECT ? / 2",
    "SELECT ?, ?",
    "SELECT ?; SELECT 1",
]


@pytest.fixture
async def lite(tmp_path: Path) -> AsyncIterator[list[Any]]:
    path = tmp_path / "diff.sqlite"
    conns = [await aiosqlite.connect(path, isolation_level=None) for _ in range(2)]
    pool = aiolease.sqlite.create_pool(path, max_size=1)
    await pool.open()
    try:
        yield [conns, pool]
    finally:
        await pool.aclose()
        for c in conns:
            await c.close()


class _NativeSqlite:
    """aiosqlite's own transaction: BEGIN IMMEDIATE, then commit() or rollback()."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self.conn = conn

    async def __aenter__(self) -> None:
        await self.conn.execute("BEGIN IMMEDIATE")

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc is None:
            await self.conn.commit()
        else:
            await self.conn.rollback()


async def _sqlite_case(conn: Any, enter: Callable[[], Any], query: str, value: Any) -> Any:
    params = (value,)
    try:
        async with enter():
            cur = await conn.execute(query, params)
            rows = await cur.fetchall()
            return ("ok", [describe(tuple(r)) for r in rows])
    except (aiosqlite.Error, ValueError, TypeError, OverflowError) as exc:
        return outcome_of_error(exc)


@DIFF
@given(query=st.sampled_from(SQLITE_SHAPES), value=sqlite_values)
async def test_sqlite_atomic_is_aiosqlites_transaction(
    lite: list[Any], query: str, value: Any
) -> None:
    (native, plain), pool = lite
    expected = await _sqlite_case(native, lambda: _NativeSqlite(native), query, value)
    assert await _sqlite_case(plain, lambda: aiolease.atomic(plain), query, value) == expected
    async with pool.acquire() as pooled:
        assert await _sqlite_case(pooled, lambda: aiolease.atomic(pooled), query, value) == expected
    CASES["sqlite"] += 1


def test_zz_report_case_counts(capsys: pytest.CaptureFixture[str]) -> None:
    """Prints how many differential cases ran in this process (see the -s output / -rA)."""
    with capsys.disabled():
        print(f"\ndifferential cases run: {CASES}")
    assert all(isinstance(n, int) for n in CASES.values())
