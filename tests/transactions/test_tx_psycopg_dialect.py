"""psycopg dialect: BEGIN pipelined with the first statement keeps the usual semantics."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import psycopg
import pytest

import aiolease
from pg_tables import temporary_table

pytestmark = pytest.mark.timeout(30)

Conn = psycopg.AsyncConnection[tuple[object, ...]]


@pytest.fixture
async def setup(pg_dsn: str) -> AsyncIterator[tuple[Conn, Conn, str]]:
    conn = await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True)
    other = await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True)
    try:
        # Made and dropped through `other`: a test may leave `conn` unusable.
        async with temporary_table(other, "aiolease_pp_", "id INTEGER PRIMARY KEY") as table:
            yield conn, other, table
    finally:
        await conn.close()
        await other.close()


async def count(conn: Conn, table: str) -> int:
    cur = await conn.execute(f"SELECT count(*) FROM {table}")
    row = await cur.fetchone()
    assert row is not None
    return int(str(row[0]))


async def test_first_statement_error_is_raised_by_execute(setup: tuple[Conn, Conn, str]) -> None:
    conn, _other, table = setup
    await conn.execute(f"INSERT INTO {table} VALUES (1)")
    async with aiolease.atomic(conn):
        with pytest.raises(psycopg.errors.UniqueViolation):
            await conn.execute(f"INSERT INTO {table} VALUES (1)")  # raised here, not at COMMIT
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        raise aiolease.Rollback
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert conn.cursor_factory is psycopg.AsyncCursor  # disarmed


async def test_first_statement_results_are_readable(setup: tuple[Conn, Conn, str]) -> None:
    conn, other, table = setup
    async with aiolease.atomic(conn):
        cur = await conn.execute("SELECT %s::int + 1", (41,))
        assert await cur.fetchone() == (42,)
        await conn.execute(f"INSERT INTO {table} VALUES (%s)", (1,))
        assert await count(other, table) == 0
    assert await count(other, table) == 1


async def test_a_cursor_made_before_the_block_still_runs_inside_it(
    setup: tuple[Conn, Conn, str],
) -> None:
    conn, other, table = setup
    cur = conn.cursor()
    async with aiolease.atomic(conn):
        await cur.execute(f"INSERT INTO {table} VALUES (1)")  # via the safety net
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        raise aiolease.Rollback
    assert await count(other, table) == 0


async def test_multi_statement_first_query(setup: tuple[Conn, Conn, str]) -> None:
    conn, other, table = setup
    with pytest.raises(KeyError):  # noqa: PT012 - the block under test
        async with aiolease.atomic(conn):
            await conn.execute(f"INSERT INTO {table} VALUES (1); INSERT INTO {table} VALUES (2)")
            raise KeyError
    assert await count(other, table) == 0


async def test_cancelled_in_the_first_statement(setup: tuple[Conn, Conn, str]) -> None:
    conn, other, table = setup

    async def body() -> None:
        async with aiolease.atomic(conn):
            await conn.execute("SELECT pg_sleep(30)")

    task = asyncio.create_task(body())
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    async with aiolease.atomic(conn):
        await conn.execute(f"INSERT INTO {table} VALUES (1)")
    assert await count(other, table) == 1


async def test_non_autocommit_connection(pg_dsn: str, setup: tuple[Conn, Conn, str]) -> None:
    _, other, table = setup
    conn = await psycopg.AsyncConnection.connect(pg_dsn)
    try:
        async with aiolease.atomic(conn):
            await conn.execute(f"INSERT INTO {table} VALUES (1)")
        async with aiolease.atomic(conn):
            await conn.execute(f"INSERT INTO {table} VALUES (2)")
            raise aiolease.Rollback
        assert await count(other, table) == 1
    finally:
        await conn.close()


async def test_inside_the_callers_pipeline(setup: tuple[Conn, Conn, str]) -> None:
    conn, other, table = setup
    async with conn.pipeline():
        async with aiolease.atomic(conn):
            await conn.execute(f"INSERT INTO {table} VALUES (1)")
        with pytest.raises(psycopg.errors.UniqueViolation):
            async with aiolease.atomic(conn):
                await conn.execute(f"INSERT INTO {table} VALUES (1)")  # fails at the sync
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert await count(other, table) == 1


async def test_executemany_copy_and_driver_transaction_as_first_operation(
    setup: tuple[Conn, Conn, str],
) -> None:
    conn, other, table = setup
    async with aiolease.atomic(conn):
        await conn.cursor().executemany(f"INSERT INTO {table} VALUES (%s)", [(1,), (2,)])
        raise aiolease.Rollback
    async with aiolease.atomic(conn):
        async with conn.cursor().copy(f"COPY {table} (id) FROM STDIN") as copy:
            await copy.write_row((3,))
        raise aiolease.Rollback
    async with aiolease.atomic(conn):
        async with conn.transaction():  # psycopg sees our transaction: a savepoint
            await conn.execute(f"INSERT INTO {table} VALUES (4)")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        raise aiolease.Rollback
    assert await count(other, table) == 0


async def test_first_statement_travels_with_begin_as_one_query(
    setup: tuple[Conn, Conn, str],
) -> None:
    conn, other, table = setup
    async with aiolease.atomic(conn):
        cur = await conn.execute(
            f"INSERT INTO {table} VALUES (%s), (%s) RETURNING id, %s::text", (1, 2, "it's")
        )
        # One simple query carried BEGIN and the statement, parameters bound on the client...
        sent = cur._query.query  # type: ignore[union-attr]
        assert sent.startswith(b"BEGIN")
        assert b"'it''s'" in sent
        # ...and the cursor shows the statement, as if it had been sent alone.
        assert cur.statusmessage == "INSERT 0 2"
        assert cur.rowcount == 2
        assert [d.name for d in cur.description or []] == ["id", "text"]
        assert await cur.fetchall() == [(1, "it's"), (2, "it's")]
        assert cur.nextset() is None
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        assert await count(other, table) == 0
    assert await count(other, table) == 2


@pytest.mark.parametrize("how", ["binary=True", "prepare=True"])
async def test_first_statement_that_cannot_be_text_goes_in_a_pipeline(
    setup: tuple[Conn, Conn, str], how: str
) -> None:
    conn, other, table = setup
    pipelines: list[object] = []
    original = conn.pipeline

    def pipeline() -> object:
        pipelines.append(how)
        return original()

    conn.pipeline = pipeline  # type: ignore[method-assign,assignment]
    async with aiolease.atomic(conn):
        if how == "binary=True":
            cur = await conn.execute(
                f"INSERT INTO {table} VALUES (%s) RETURNING id", (7,), binary=True
            )
        else:
            cur = await conn.execute(
                f"INSERT INTO {table} VALUES (%s) RETURNING id", (7,), prepare=True
            )
        assert pipelines == [how]  # BEGIN went in a pipeline with the statement
        assert await cur.fetchone() == (7,)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        assert await count(other, table) == 0
    assert await count(other, table) == 1


async def test_first_statement_as_sql_composed(setup: tuple[Conn, Conn, str]) -> None:
    conn, other, table = setup
    query = psycopg.sql.SQL("INSERT INTO {} VALUES ({})").format(
        psycopg.sql.Identifier(table), psycopg.sql.Literal(5)
    )
    with pytest.raises(KeyError):  # noqa: PT012 - the block under test
        async with aiolease.atomic(conn):
            await conn.execute(query)
            assert await count(other, table) == 0
            raise KeyError
    assert await count(other, table) == 0
    async with aiolease.atomic(conn):
        await conn.execute(query)
    assert await count(other, table) == 1


async def test_client_side_binding_matches_psycopg(setup: tuple[Conn, Conn, str]) -> None:
    import datetime
    import decimal

    from aiolease._dialects.psycopg import _as_text

    conn, _other, _table = setup
    query = "SELECT %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, '100%%'"
    values = (
        1,
        -(2**70),
        1.5,
        decimal.Decimal("3.25"),
        "it's a \\ back'slash",
        None,
        True,
        datetime.date(2026, 11, 25),
        b"\x00\xff'",
        [1, 2],
    )
    # psycopg's ClientCursor, except a float: typed float8 as a parameter would be.
    expected = (
        psycopg.AsyncClientCursor(conn)
        .mogrify(query, values)
        .encode()
        .replace(b"1.5", b"1.5::float8")
    )
    for params in (values, list(values)):
        assert _as_text(conn, query, params) == expected
        assert _as_text(conn, query.encode(), params) == expected
    # Named placeholders take psycopg's own path; the result is the same.
    named = "SELECT %(a)s, %(b)s, %(a)s"
    assert _as_text(conn, named, {"a": 1, "b": "x"}) == b"SELECT 1, 'x', 1"
    # A placeholder count that does not match cannot be sent as text.
    assert _as_text(conn, "SELECT %s, %s", (1,)) is None
    # The values come back from the server as sent.
    async with aiolease.atomic(conn):
        cur = await conn.execute(query, values)
        row = await cur.fetchone()
    assert row is not None
    assert row[:8] == values[:8]
    assert row[8] == values[8]
    assert row[9:] == ([1, 2], "100%")


async def test_the_first_statement_returns_the_types_it_returns_outside_a_block(
    setup: tuple[Conn, Conn, str],
) -> None:
    # Client-side binding must not change result types: psycopg's literal for a float
    # (1.5) is a numeric, which would come back as a Decimal.
    import decimal

    conn, _other, _table = setup
    values = [
        7,
        2**40,
        2**70,
        1.5,
        -2.25,
        float("nan"),
        float("-inf"),
        decimal.Decimal("-3.5"),
        True,
        b"x",
        [1.5, 2.0],
    ]
    for value in values:
        query = "SELECT pg_typeof(%s)::text, %s"
        outside = await (await conn.execute(query, (value, value))).fetchone()
        assert outside is not None
        async with aiolease.atomic(conn):
            positional = await (await conn.execute(query, (value, value))).fetchone()
        async with aiolease.atomic(conn):
            named = await (
                await conn.execute("SELECT pg_typeof(%(v)s)::text, %(v)s", {"v": value})
            ).fetchone()
        for inside in (positional, named):
            assert inside is not None
            assert type(inside[1]) is type(outside[1]), (value, inside, outside)
            if value == value:  # not NaN
                assert inside[1] == outside[1]
            if outside[0] != "smallint":  # a small int literal is an integer: same Python int
                assert inside[0] == outside[0], (value, inside, outside)


async def test_a_value_written_as_a_bare_number_of_another_type_keeps_its_type(
    setup: tuple[Conn, Conn, str],
) -> None:
    from psycopg.adapt import Dumper

    conn, _other, _table = setup

    class Celsius:
        def __init__(self, degrees: float) -> None:
            self.degrees = degrees

    class CelsiusDumper(Dumper):
        oid = psycopg.adapters.types["float4"].oid

        def dump(self, obj: Celsius) -> bytes:
            return repr(obj.degrees).encode()

        def quote(self, obj: Celsius) -> bytes:
            return self.dump(obj)  # a bare number, as psycopg's numeric dumpers write

    conn.adapters.register_dumper(Celsius, CelsiusDumper)
    query = "SELECT pg_typeof(%s)::text"
    outside = await (await conn.execute(query, (Celsius(21.5),))).fetchone()
    async with aiolease.atomic(conn):
        inside = await (await conn.execute(query, (Celsius(21.5),))).fetchone()
    assert outside == inside == ("real",)


async def test_client_side_binding_sees_dumpers_registered_later(
    setup: tuple[Conn, Conn, str],
) -> None:
    from psycopg.adapt import Dumper

    conn, _other, _table = setup

    class Point:
        def __init__(self, x: int) -> None:
            self.x = x

    class PointDumper(Dumper):
        def dump(self, obj: Point) -> bytes:
            return str(obj.x * 10).encode()

    async with aiolease.atomic(conn):
        cur = await conn.execute("SELECT %s::int", (7,))  # the template is cached
        assert await cur.fetchone() == (7,)
    conn.adapters.register_dumper(Point, PointDumper)
    async with aiolease.atomic(conn):
        cur = await conn.execute("SELECT %s::int", (Point(7),))
        assert await cur.fetchone() == (70,)

    class TimesTwo(Dumper):  # replaces the dumper of a type already bound
        def dump(self, obj: int) -> bytes:
            return str(obj * 2).encode()

    conn.adapters.register_dumper(int, TimesTwo)
    async with aiolease.atomic(conn):
        cur = await conn.execute("SELECT %s::int", (7,))
        assert await cur.fetchone() == (14,)


async def test_first_statement_wrong_parameter_count_raises_psycopgs_error(
    setup: tuple[Conn, Conn, str],
) -> None:
    conn, _other, table = setup
    with pytest.raises(psycopg.ProgrammingError, match="placeholders"):
        async with aiolease.atomic(conn):
            await conn.execute(f"INSERT INTO {table} VALUES (%s)", (1, 2))
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


async def test_first_statement_larger_than_the_socket_buffer(
    setup: tuple[Conn, Conn, str],
) -> None:
    # Sending it has to wait for the socket to drain: the write wait.
    conn, other, table = setup
    await conn.execute(f"ALTER TABLE {table} ADD COLUMN payload TEXT")
    payload = "x" * (16 * 1024 * 1024)
    async with aiolease.atomic(conn):
        await conn.execute(f"INSERT INTO {table} VALUES (%s, %s)", (1, payload))
        assert await count(other, table) == 0
    cur = await other.execute(f"SELECT length(payload) FROM {table}")
    assert await cur.fetchone() == (len(payload),)


async def test_cancelled_during_commit_leaves_the_connection_usable(
    setup: tuple[Conn, Conn, str],
) -> None:
    # COMMIT checks a deferred unique constraint and so waits for another
    # transaction holding the same key. Cancelled there: CommitUnknown, the
    # query is cancelled on the server and its result drained (what psycopg
    # does), so the connection is back in sync and nothing was committed.
    conn, other, table = setup
    deferred = f"{table}_d"
    await conn.execute(f"CREATE TABLE {deferred} (k INT UNIQUE DEFERRABLE INITIALLY DEFERRED)")
    try:
        async with other.transaction():
            await other.execute(f"INSERT INTO {deferred} VALUES (1)")

            async def body() -> None:
                async with aiolease.atomic(conn):
                    await conn.execute(f"INSERT INTO {deferred} VALUES (1)")  # deferred check

            task = asyncio.create_task(body())
            for _ in range(100):  # until COMMIT waits on the other transaction's key
                await asyncio.sleep(0.05)
                cur = await other.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND query = 'COMMIT'"
                )
                if await cur.fetchone() == (1,):
                    break
            else:
                pytest.fail("COMMIT never waited")
            task.cancel()
            with pytest.raises(aiolease.CommitUnknown):
                await task
            raise aiolease.Rollback
    except aiolease.Rollback:
        pass
    finally:
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        cur = await conn.execute(f"SELECT count(*) FROM {deferred}")
        assert await cur.fetchone() == (0,)
        await conn.execute(f"DROP TABLE {deferred}")


async def test_socket_already_watched_by_another_reader(setup: tuple[Conn, Conn, str]) -> None:
    # The dialect registers its reader itself only for a socket nobody
    # watches; otherwise it goes through loop.add_reader like psycopg does.
    conn, other, table = setup
    loop = asyncio.get_running_loop()
    fileno = conn.pgconn.socket
    loop.add_reader(fileno, lambda: None)
    try:
        async with aiolease.atomic(conn):
            await conn.execute(f"INSERT INTO {table} VALUES (%s)", (1,))
    finally:
        loop.remove_reader(fileno)
    assert await count(other, table) == 1
    async with aiolease.atomic(conn):  # and the fast way again
        await conn.execute(f"INSERT INTO {table} VALUES (%s)", (2,))
    assert await count(other, table) == 2


def test_on_another_event_loop_class(pg_dsn: str) -> None:
    # Not asyncio's own selector loop: the public reader API.
    class Loop(asyncio.SelectorEventLoop):
        pass

    async def main() -> int:
        conn = await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True)
        try:
            async with aiolease.atomic(conn):
                cur = await conn.execute("SELECT %s::int", (5,))
                row = await cur.fetchone()
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            return int(str(row[0])) if row else -1
        finally:
            await conn.close()

    with asyncio.Runner(loop_factory=Loop) as runner:
        assert runner.run(main()) == 5
