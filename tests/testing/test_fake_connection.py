"""FakeConnection edge cases without a server (its PostgreSQL differential is in
test_fake_connection_vs_psycopg.py)."""

from __future__ import annotations

import asyncio

import pytest

from aiolease.testing import (
    FakeConnection,
    FakeConnectionLost,
    FakeDatabase,
    FakeDatabaseError,
)


@pytest.mark.parametrize("sql", ["INSERT x", "COMMIT"])
async def test_a_statement_in_flight_when_the_connection_closes_fails(sql: str) -> None:
    conn = FakeConnection()
    await conn.execute("BEGIN")
    await conn.execute("INSERT in the transaction")
    gate = conn.gate(sql)
    task = asyncio.create_task(conn.execute(sql))
    await gate.reached.wait()
    await conn.close()
    gate.open()
    with pytest.raises(FakeConnectionLost, match="closed while the statement ran"):
        await task
    assert conn.committed == []  # neither the statement nor the transaction's work


async def test_an_autocommit_statement_in_flight_when_the_connection_closes_fails() -> None:
    conn = FakeConnection()
    gate = conn.gate("INSERT")
    task = asyncio.create_task(conn.execute("INSERT x"))
    await gate.reached.wait()
    await conn.close()
    gate.open()
    with pytest.raises(FakeConnectionLost):
        await task
    assert conn.committed == []


@pytest.mark.parametrize("n", [0, -1, True, 1.0, "1"])
def test_commit_faults_refuse_a_count_that_never_comes(n: object) -> None:
    conn = FakeConnection()
    with pytest.raises(ValueError, match=r"n must be an int >= 1 \(1 = the next COMMIT\)"):
        conn.fail_commit(n)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"n must be an int >= 1"):
        conn.drop_on_commit(n)  # type: ignore[arg-type]


@pytest.mark.parametrize("database", [5, [], "db"])
def test_a_database_that_is_not_one_is_refused_at_the_call(database: object) -> None:
    # Found by a new user's probe: FakeConnection(database=5) was accepted and its first
    # COMMIT raised AttributeError.
    with pytest.raises(TypeError, match="database must be a FakeDatabase or None, got"):
        FakeConnection(database=database)  # type: ignore[arg-type]
    FakeConnection(database=FakeDatabase())


async def test_a_malformed_control_statement_is_a_syntax_error_that_aborts() -> None:
    conn = FakeConnection()
    await conn.execute("BEGIN")
    with pytest.raises(FakeDatabaseError) as info:
        await conn.execute("SAVEPOINT")
    assert info.value.sqlstate == "42601"
    assert conn.transaction_status == "inerror"
    assert await conn.execute("COMMIT") == "ROLLBACK"


async def test_savepoint_names_fold_like_postgresql() -> None:
    conn = FakeConnection()
    await conn.execute("BEGIN")
    await conn.execute("INSERT 1")
    await conn.execute('SAVEPOINT "Sp"')
    await conn.execute("INSERT 2")
    with pytest.raises(FakeDatabaseError, match="'sp' does not exist"):
        await conn.execute("ROLLBACK TO Sp")  # unquoted: folded to sp, another name
    await conn.execute("ROLLBACK")
    await conn.execute("BEGIN")
    await conn.execute('SAVEPOINT "Sp"')
    await conn.execute("INSERT 3")
    assert await conn.execute('rollback work to savepoint "Sp"') == "ROLLBACK"
    assert conn.transaction_status == "intrans"  # only the savepoint's work went
    await conn.execute("INSERT 4")
    assert await conn.execute("COMMIT AND CHAIN") == "COMMIT"
    assert conn.transaction_status == "intrans"
    await conn.execute("INSERT 5")
    await conn.execute("ROLLBACK")
    assert conn.committed == [("INSERT 4", ())]


@pytest.mark.parametrize("error", ["boom", 42, int])
def test_script_refuses_an_error_that_is_not_an_exception(error: object) -> None:
    # Before, it was accepted and the statement then failed with "exceptions must
    # derive from BaseException", far from the script() call.
    with pytest.raises(TypeError, match="error must be an exception"):
        FakeConnection().script("INSERT", error=error)  # type: ignore[arg-type]


async def test_script_takes_an_exception_class() -> None:
    conn = FakeConnection()
    conn.script("INSERT", error=ConnectionResetError)
    with pytest.raises(ConnectionResetError):
        await conn.execute("INSERT x")


async def test_cursor_records_named_parameters_with_their_values() -> None:
    conn = FakeConnection()
    async with conn.cursor() as cur:
        await cur.execute("INSERT %(a)s, %(b)s", {"a": 1, "b": 2})
        await cur.execute("INSERT %s", [3])
    assert conn.arguments == [({"a": 1, "b": 2},), (3,)]


@pytest.mark.parametrize(
    ("sql", "command"),
    [
        ("INSERT INTO t VALUES (1)", "INSERT"),
        ("  update t SET v = 2", "UPDATE"),
        ("DELETE FROM t", "DELETE"),
        ("MERGE INTO t USING s ON true WHEN MATCHED THEN DELETE", "MERGE"),
        ("TRUNCATE t", "TRUNCATE"),
        ("CREATE TEMP TABLE t (v int)", "CREATE"),
        ("DROP TABLE t", "DROP"),
        ("ALTER TABLE t ADD COLUMN w int", "ALTER"),
        ("GRANT SELECT ON t TO public", "GRANT"),
        ("REVOKE SELECT ON t FROM public", "REVOKE"),
        ("COMMENT ON TABLE t IS 'x'", "COMMENT"),
    ],
)
async def test_a_read_only_transaction_refuses_writes(sql: str, command: str) -> None:
    # Before, the fake ran (and committed) them: a test of code that writes inside
    # atomic(readonly=True) passed, and the code failed on PostgreSQL.
    conn = FakeConnection()
    conn.script(sql.split()[0], rows=[(1,)])  # a scripted answer does not bypass the check
    await conn.execute("BEGIN READ ONLY")
    with pytest.raises(FakeDatabaseError, match=f"cannot execute {command} in a read-only") as e:
        await conn.execute(sql)
    assert e.value.sqlstate == "25006"
    assert conn.transaction_status == "inerror"
    assert await conn.execute("COMMIT") == "ROLLBACK"
    assert await conn.execute(sql) == [(1,)]  # outside the transaction, it runs
    assert conn.committed == [(sql, ())]


async def test_atomic_readonly_refuses_a_write_on_the_fake() -> None:
    import aiolease

    conn = FakeConnection()

    async def write_in_a_read_only_block() -> None:
        async with aiolease.atomic(conn, readonly=True):
            assert await conn.fetch("SELECT 1") == []
            await conn.execute("INSERT INTO t VALUES (1)")

    with pytest.raises(FakeDatabaseError, match="read-only") as e:
        await write_in_a_read_only_block()
    assert e.value.sqlstate == "25006"
    assert conn.committed == []
    assert not conn.in_transaction


@pytest.mark.parametrize(
    ("sql", "command"),
    [
        ("VACUUM accounts", "VACUUM"),
        ("vacuum (analyze) accounts", "VACUUM"),
        ("CREATE INDEX CONCURRENTLY ix ON t (v)", "CREATE INDEX CONCURRENTLY"),
        ("CREATE UNIQUE INDEX CONCURRENTLY ix ON t (v)", "CREATE INDEX CONCURRENTLY"),
        ("DROP INDEX CONCURRENTLY ix", "DROP INDEX CONCURRENTLY"),
        ("REINDEX TABLE CONCURRENTLY t", "REINDEX CONCURRENTLY"),
        ("REINDEX SCHEMA public", "REINDEX SCHEMA"),
        ("CREATE DATABASE d", "CREATE DATABASE"),
        ("DROP DATABASE d", "DROP DATABASE"),
        ("ALTER SYSTEM SET work_mem = '4MB'", "ALTER SYSTEM"),
        ("DISCARD ALL", "DISCARD ALL"),
    ],
)
async def test_a_command_that_cannot_run_in_a_transaction_block_is_refused(
    sql: str, command: str
) -> None:
    # Before, the fake ran (and committed) them inside atomic(): a test of a migration
    # that ran VACUUM or CREATE INDEX CONCURRENTLY in a transaction passed, and the code
    # failed on PostgreSQL with 25001.
    conn = FakeConnection()
    conn.script(sql.split()[0], rows=[(1,)])  # a scripted answer does not bypass the check
    await conn.execute("BEGIN")
    await conn.execute("SAVEPOINT a")
    with pytest.raises(FakeDatabaseError, match=f"{command} cannot run inside a transaction") as e:
        await conn.execute(sql)
    assert e.value.sqlstate == "25001"
    assert conn.transaction_status == "inerror"
    assert await conn.execute("ROLLBACK") == "ROLLBACK"
    assert await conn.execute(sql) == [(1,)]  # outside a transaction, it runs
    assert conn.committed == [(sql, ())]


@pytest.mark.parametrize("sql", ["REINDEX TABLE t", "CREATE INDEX ix ON t (v)", "DISCARD PLANS"])
async def test_their_plain_forms_run_in_a_transaction(sql: str) -> None:
    conn = FakeConnection()
    await conn.execute("BEGIN")
    assert await conn.execute(sql) == "OK"
    assert await conn.execute("COMMIT") == "COMMIT"
    assert conn.committed == [(sql, ())]


async def test_vacuum_inside_atomic_fails_on_the_fake() -> None:
    import aiolease

    conn = FakeConnection()
    with pytest.raises(FakeDatabaseError) as e:
        async with aiolease.atomic(conn):
            await conn.execute("VACUUM accounts")
    assert e.value.sqlstate == "25001"
    assert conn.committed == []
    assert not conn.in_transaction


@pytest.mark.parametrize(
    ("sql", "sqlstate"),
    [
        ("ALTER SYSTEM SET work_mem = '4MB'", "25001"),  # not refused as a write first
        ("VACUUM t", "25001"),
        ("CREATE DATABASE d", "25006"),  # refused as a write first
        ("CREATE INDEX CONCURRENTLY ix ON t (v)", "25006"),
    ],
)
async def test_in_a_read_only_transaction_as_on_postgresql(sql: str, sqlstate: str) -> None:
    conn = FakeConnection()
    await conn.execute("BEGIN READ ONLY")
    with pytest.raises(FakeDatabaseError) as e:
        await conn.execute(sql)
    assert e.value.sqlstate == sqlstate
    assert conn.transaction_status == "inerror"


@pytest.mark.parametrize("times", [2.5, True, "2", 0, -1])
def test_script_times_must_be_a_count(times: object) -> None:
    # Before, times=2.5 counted down 1.5, 0.5, -0.5 ... and never ran out (the rule served
    # every statement), and times=True quietly meant 1.
    conn = FakeConnection()
    with pytest.raises((TypeError, ValueError), match="times must be an int >= 1 or None"):
        conn.script("SELECT", rows=[(1,)], times=times)  # type: ignore[arg-type]


async def test_script_times_limits_the_statements_served() -> None:
    conn = FakeConnection()
    conn.script("SELECT", rows=[(1,)], times=2)
    assert [await conn.fetchval("SELECT 1") for _ in range(3)] == [1, 1, None]


@pytest.mark.parametrize("shape", ["execute", "cursor", "executemany", "fetch"])
async def test_several_statements_in_one_string_are_refused_with_no_effect(shape: str) -> None:
    """The fake does not model a simple query's implicit transaction: whatever the shape,
    the string is refused before anything is recorded, and the transaction goes on."""
    conn = FakeConnection()
    await conn.execute("BEGIN")
    await conn.execute("INSERT INTO t VALUES (1)")
    sql = "INSERT INTO t VALUES (2); COMMIT"

    async def run() -> object:
        if shape == "cursor":
            return await conn.cursor().execute(sql)
        if shape == "executemany":
            await conn.executemany(sql, [(), ()])
            return None
        return await (conn.fetch(sql) if shape == "fetch" else conn.execute(sql))

    with pytest.raises(
        NotImplementedError, match=r"does not model several statements in one string \(2 in"
    ):
        await run()
    assert conn.statements == ["BEGIN", "INSERT INTO t VALUES (1)"]
    assert conn.transaction_status == "intrans"
    assert await conn.execute("COMMIT") == "COMMIT"
    assert conn.committed == [("INSERT INTO t VALUES (1)", ())]


async def test_several_statements_of_plain_work_are_one_statement_of_work() -> None:
    """Work the code under test sends in one string (session settings, DDL) is recorded as
    sent, as one statement: committed at once outside a transaction, the transaction's work
    inside one; in a read-only transaction, refused if any of them writes."""
    conn = FakeConnection()
    sql = "SET search_path TO app; SET statement_timeout TO 5000"
    assert await conn.execute(sql) == "OK"
    assert conn.committed == [(sql, ())]
    await conn.execute("BEGIN")
    ddl = "CREATE TABLE a (x int); CREATE TABLE b (y int)"
    await conn.execute(ddl)
    await conn.execute("COMMIT")
    assert conn.committed == [(sql, ()), (ddl, ())]
    await conn.execute("BEGIN READ ONLY")
    with pytest.raises(FakeDatabaseError) as caught:
        await conn.execute("SELECT 1; INSERT INTO t VALUES (1)")
    assert caught.value.sqlstate == "25006"
    await conn.execute("ROLLBACK")
    assert conn.committed == [(sql, ()), (ddl, ())]
    with pytest.raises(NotImplementedError, match="with parameters"):
        await conn.execute("SELECT $1; SELECT 2", 1)
    with pytest.raises(NotImplementedError, match="transaction control"):
        await conn.execute("VACUUM; SELECT 1")  # a command only outside a block: not modelled


async def test_an_empty_query_is_recorded_and_does_nothing() -> None:
    conn = FakeConnection()
    assert await conn.execute(" ; -- nothing") is None
    assert conn.statements == [" ; -- nothing"]
    assert conn.committed == []


@pytest.mark.parametrize(
    ("sql", "what"),
    [
        ("SET TRANSACTION SNAPSHOT '00000003-0000001B-1'", "SET TRANSACTION SNAPSHOT"),
        ('SAVEPOINT U&"d\\0061t"', "a Unicode-escaped name"),
        ('ROLLBACK TO u&"a"', "a Unicode-escaped name"),
        ("RESET transaction_read_only", "this way of setting transaction_read_only"),
        ("SET transaction_isolation TO DEFAULT", "this way of setting transaction_read_only"),
        ("SET LOCAL transaction_deferrable = maybe", "this way of setting transaction_read_only"),
        ("SELECT set_config('transaction_read_only', 'on', true)", r"set_config\(\)"),
    ],
)
async def test_transaction_control_the_fake_does_not_model_is_refused(sql: str, what: str) -> None:
    """PostgreSQL imports the snapshot (or fails with 0A000 in a READ COMMITTED
    transaction), decodes the name, takes RESET and DEFAULT, and applies set_config() to
    the transaction; the fake has no snapshots, no decoder, no session defaults and does
    not read queries. It said 42601 (a syntax error that aborted the transaction) or ran
    the statement as work (the transaction stayed read-write)."""
    conn = FakeConnection()
    await conn.execute("BEGIN")
    with pytest.raises(NotImplementedError, match=f"does not model {what}"):
        await conn.execute(sql)
    assert conn.statements == ["BEGIN"]
    assert conn.transaction_status == "intrans"
    assert await conn.execute('SELECT U&"a" FROM t') == "OK"  # work: not read
