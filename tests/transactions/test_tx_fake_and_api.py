"""FakeConnection's own semantics, retries with injected faults, and API misuse errors."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import pytest

import aiolease
from aiolease import _tracking
from aiolease.abc import Dialect
from aiolease.testing import (
    FakeConnection,
    FakeConnectionLost,
    FakeDatabase,
    FakeDatabaseError,
    leak_check,
)

pytestmark = pytest.mark.timeout(10)


# -- FakeConnection -------------------------------------------------------------


async def test_fake_records_every_statement_and_commits_only_on_commit() -> None:
    conn = FakeConnection()
    assert await conn.execute("INSERT a", 1) == "OK"  # autocommit outside a transaction
    assert await conn.execute("BEGIN") == "BEGIN"
    await conn.execute("INSERT b", 2)
    await conn.execute("SAVEPOINT s")
    await conn.execute("INSERT c", 3)
    await conn.execute("ROLLBACK TO SAVEPOINT s")
    await conn.execute("RELEASE SAVEPOINT s")
    assert conn.transaction_status == "intrans"
    assert await conn.execute("COMMIT") == "COMMIT"
    assert conn.committed == [("INSERT a", (1,)), ("INSERT b", (2,))]
    assert conn.statements[0] == "INSERT a"
    assert conn.statements[-1] == "COMMIT"
    assert conn.arguments[0] == (1,)
    await conn.execute("BEGIN")
    await conn.execute("INSERT d")
    await conn.execute("ROLLBACK")
    assert len(conn.committed) == 2


async def test_fake_aborted_state_like_postgresql() -> None:
    conn = FakeConnection()
    conn.script("bad", error=FakeDatabaseError("boom", sqlstate="22012"))
    await conn.execute("BEGIN")
    await conn.execute("SAVEPOINT s")
    with pytest.raises(FakeDatabaseError, match="boom"):
        await conn.execute("bad")
    assert conn.transaction_status == "inerror"
    with pytest.raises(FakeDatabaseError) as info:
        await conn.execute("SELECT 1")
    assert info.value.sqlstate == "25P02"
    await conn.execute("ROLLBACK TO SAVEPOINT s")  # recovers
    await conn.execute("INSERT")
    with pytest.raises(FakeDatabaseError):
        await conn.execute("bad")
    assert await conn.execute("COMMIT") == "ROLLBACK"  # COMMIT of an aborted transaction
    assert conn.committed == []


async def test_fake_scripts_results_and_limits_them() -> None:
    conn = FakeConnection()
    conn.script(r"select \* from users", rows=[("ann",)], times=1)
    conn.script("select", rows=[])
    assert await conn.execute("SELECT * FROM users") == [("ann",)]
    assert await conn.execute("SELECT * FROM users") == []
    with pytest.raises(ValueError):
        conn.script("x", rows=[], error=KeyError())
    with pytest.raises(ValueError):
        conn.script("x", times=0)
    for latency in (-1, 10**400):  # an int beyond any float: not OverflowError
        with pytest.raises(ValueError, match="latency must be a finite number of seconds >= 0"):
            FakeConnection(latency=latency)


async def test_fake_savepoint_errors() -> None:
    conn = FakeConnection()
    with pytest.raises(FakeDatabaseError, match="transaction blocks") as info:
        await conn.execute("SAVEPOINT s")
    assert info.value.sqlstate == "25P01"
    await conn.execute("BEGIN")
    with pytest.raises(FakeDatabaseError, match="does not exist"):
        await conn.execute("RELEASE SAVEPOINT nope")
    assert conn.transaction_status == "inerror"


async def test_fake_refuses_concurrent_use() -> None:
    conn = FakeConnection()
    gate = conn.gate("slow")
    first = asyncio.create_task(conn.execute("slow"))
    await gate.reached.wait()
    with pytest.raises(FakeDatabaseError, match="another operation is in progress"):
        await conn.execute("other")
    gate.open()
    await first


async def test_fake_latency_uses_the_loop_clock() -> None:
    conn = FakeConnection(latency=0.01)
    loop = asyncio.get_running_loop()
    start = loop.time()
    await conn.execute("SELECT")
    assert loop.time() - start >= 0.009


async def test_fake_shares_a_database() -> None:
    db = FakeDatabase()
    a, b = FakeConnection(database=db), FakeConnection(database=db)
    async with aiolease.atomic(a):
        await a.execute("INSERT", 1)
        assert b.committed == []
    assert b.committed == [("INSERT", (1,))]


async def test_fake_drop_on_commit_raises_commit_unknown_and_pool_discards_it() -> None:
    made: list[FakeConnection] = []

    async def create() -> FakeConnection:
        made.append(FakeConnection())
        made[-1].drop_on_commit(committed=True) if len(made) == 1 else None
        return made[-1]

    async with aiolease.Pool.from_callables(create, max_size=1) as pool:
        with pytest.raises(aiolease.CommitUnknown, match="lost during COMMIT") as info:
            async with pool.atomic() as tx:
                await tx.connection.execute("INSERT")
        assert isinstance(info.value.__cause__, FakeConnectionLost)
        assert made[0].closed
        assert made[0].committed == [("INSERT", ())]  # it did commit
        assert _tracking.is_broken(made[0])
        async with pool.atomic() as tx:
            assert tx.connection is made[1]  # the lost one was discarded


async def test_run_transaction_retries_injected_failures_and_runs_hooks_once() -> None:
    conn = FakeConnection()
    conn.fail_commit(1)
    conn.fail_commit(2, sqlstate="40P01")
    committed: list[int] = []
    rolled_back: list[int] = []
    calls: list[int] = []

    async def work(c: FakeConnection) -> int:
        calls.append(1)
        await c.execute("INSERT", len(calls))
        async with aiolease.atomic(c, savepoint=False) as tx:
            tx.on_commit(lambda: committed.append(len(calls)))
            tx.on_rollback(lambda: rolled_back.append(len(calls)))
        return len(calls)

    assert await aiolease.run_transaction(conn, work, backoff=0.001) == 3
    assert committed == [3]
    assert rolled_back == []  # hooks only for the committed attempt
    assert conn.committed == [("INSERT", (3,))]


async def test_last_attempt_error_propagates_and_its_rollback_hooks_run() -> None:
    conn = FakeConnection()
    for n in (1, 2):
        conn.fail_commit(n)
    rolled_back: list[int] = []

    async def work(c: FakeConnection) -> None:
        async with aiolease.atomic(c, savepoint=False) as tx:
            tx.on_rollback(lambda: rolled_back.append(1))

    with pytest.raises(FakeDatabaseError) as info:
        await aiolease.run_transaction(conn, work, attempts=2, backoff=0.001)
    assert info.value.sqlstate == "40001"
    assert rolled_back == [1]  # only the final, unretried attempt's


async def test_an_attempt_whose_block_ended_the_transaction_is_not_retried() -> None:
    # The work was committed by hand; a retryable error after it made
    # run_transaction run fn again: the work was done twice.
    conn = FakeConnection()
    conn.script("^UPDATE", error=FakeDatabaseError("deadlock detected", sqlstate="40P01"))
    calls: list[int] = []

    async def work(c: FakeConnection) -> None:
        calls.append(1)
        await c.execute("INSERT", len(calls))
        await c.execute("COMMIT")
        await c.execute("UPDATE")  # outside any transaction now

    with pytest.raises(FakeDatabaseError) as info:
        await aiolease.run_transaction(conn, work, backoff=0.001)
    assert info.value.sqlstate == "40P01"
    assert any("cannot tell" in note for note in info.value.__notes__)
    assert calls == [1]
    assert conn.committed == [("INSERT", (1,))]


async def test_retry_backoff_is_capped_and_jittered(monkeypatch: pytest.MonkeyPatch) -> None:
    caps: list[float] = []

    def uniform(low: float, high: float) -> float:
        caps.append(high)
        return 0.0

    monkeypatch.setattr("aiolease._retry.random.uniform", uniform)
    conn = FakeConnection()
    for n in range(1, 6):
        conn.fail_commit(n)

    async def work(c: FakeConnection) -> None:
        await c.execute("INSERT")

    await aiolease.run_transaction(conn, work, attempts=6, backoff=0.3, max_backoff=1.0)
    assert caps == [0.3, 0.6, 1.0, 1.0, 1.0]


async def test_transaction_attempts_loop() -> None:
    conn = FakeConnection()
    conn.fail_commit(1)
    seen: list[int] = []
    async for attempt in aiolease.transaction_attempts(conn, backoff=0.001):
        seen.append(attempt.number)
        async with attempt as tx:
            await tx.connection.execute("INSERT")
    assert seen == [1, 2]
    assert conn.committed == [("INSERT", ())]


async def test_transaction_attempts_with_a_pool() -> None:
    conns: list[FakeConnection] = []

    async def create() -> FakeConnection:
        conns.append(FakeConnection())
        if len(conns) == 1:
            conns[0].fail_commit(1)
        return conns[-1]

    async with aiolease.Pool.from_callables(create, max_size=1) as pool:
        numbers = []
        async for attempt in aiolease.transaction_attempts(pool, backoff=0.001):
            numbers.append(attempt.number)
            async with attempt as tx:
                await tx.connection.execute("INSERT")
        assert numbers == [1, 2]
        assert pool.statistics().in_use == 0


# -- API errors ---------------------------------------------------------------------


async def test_unsupported_connection_names_the_supported_ones() -> None:
    with pytest.raises(TypeError, match=r"asyncpg, psycopg.*aiosqlite.*register_dialect"):
        aiolease.atomic(object())
    supported = r"a pool.*asyncpg, psycopg.*aiosqlite.*register_dialect"
    with pytest.raises(TypeError, match=supported):
        aiolease.transaction_attempts(object())
    with pytest.raises(TypeError, match=supported):
        await aiolease.run_transaction(object(), lambda conn: asyncio.sleep(0))


async def test_register_dialect_for_a_custom_connection() -> None:
    class MyConn:
        def __init__(self) -> None:
            self.log: list[str] = []

    class MyDialect(Dialect[MyConn]):
        name = "mine"

        async def begin(self, conn: MyConn, isolation: str | None, readonly: bool) -> None:
            conn.log.append("begin")

        async def commit(self, conn: MyConn) -> bool:
            conn.log.append("commit")
            return True

        async def rollback(self, conn: MyConn) -> None:
            conn.log.append("rollback")

        async def savepoint(self, conn: MyConn, name: str) -> None:
            conn.log.append(f"sp {name}")

        async def release_savepoint(self, conn: MyConn, name: str) -> None:
            conn.log.append(f"release {name}")

        async def rollback_to_savepoint(self, conn: MyConn, name: str) -> None:
            conn.log.append(f"undo {name}")

    class SubConn(MyConn):
        pass

    aiolease.register_dialect(MyConn, MyDialect())
    conn = SubConn()  # subclasses match
    async with aiolease.atomic(conn), aiolease.atomic(conn) as inner:
        inner.set_rollback(True)
    assert conn.log == ["begin", "sp aiolease_sp_2", "undo aiolease_sp_2", "commit"]
    with pytest.raises(TypeError, match="Dialect instance"):
        aiolease.register_dialect(MyConn, object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="dotted name"):
        aiolease.register_dialect("nodots", MyDialect())

    class ByName:
        def __init__(self) -> None:
            self.log: list[str] = []

    aiolease.register_dialect(f"{ByName.__module__}.{ByName.__qualname__}", MyDialect())
    by_name = ByName()
    async with aiolease.atomic(by_name):
        pass
    assert by_name.log == ["begin", "commit"]


def test_import_aiolease_imports_no_driver() -> None:
    code = (
        "import sys, aiolease, aiolease.testing; "
        "print([m for m in ('asyncpg', 'psycopg', 'aiosqlite') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


async def _never(conn: object) -> None:
    raise AssertionError("not reached")  # pragma: no cover


async def test_misuse_errors() -> None:
    conn = FakeConnection()
    tx = aiolease.atomic(conn)
    with pytest.raises(aiolease.TransactionError, match="open"):
        tx.on_commit(print)
    with pytest.raises(aiolease.TransactionError):
        tx.set_rollback(True)
    async with tx:
        with pytest.raises(TypeError, match="callable"):
            tx.on_commit(42)  # type: ignore[arg-type]
        with pytest.raises(aiolease.TransactionError, match="outermost"):
            async with aiolease.atomic(conn, isolation="serializable"):
                pass  # pragma: no cover
        with pytest.raises(aiolease.TransactionError, match="outermost"):
            async with aiolease.atomic(conn, readonly=True):
                pass  # pragma: no cover
    with pytest.raises(aiolease.TransactionError, match="only once"):
        async with tx:
            pass  # pragma: no cover
    with pytest.raises(TypeError):
        aiolease.atomic(conn, isolation=3)  # type: ignore[arg-type]
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="attempts"):
            aiolease.transaction_attempts(conn, attempts=bad)  # type: ignore[arg-type]
    for bad_backoff in (-1, 0, float("inf"), float("nan"), 10**400):
        with pytest.raises(ValueError, match="backoff"):
            aiolease.transaction_attempts(conn, backoff=bad_backoff)
        with pytest.raises(ValueError, match="max_backoff"):
            aiolease.transaction_attempts(conn, max_backoff=bad_backoff)
        with pytest.raises(ValueError, match="cleanup_timeout"):
            aiolease.atomic(conn, cleanup_timeout=bad_backoff)
    with pytest.raises(ValueError, match="backoff must be a finite number"):
        await aiolease.run_transaction(conn, _never, backoff=float("inf"), max_backoff=float("inf"))
    with pytest.raises(TypeError, match="cleanup_timeout"):
        aiolease.atomic(conn, cleanup_timeout="5")  # type: ignore[arg-type]
    assert "unentered" in repr(aiolease.atomic(conn))


async def test_flags_and_fn_are_checked_at_the_call() -> None:
    # readonly="false" is a str, not False: taken as a truth value it meant the opposite.
    conn = FakeConnection()
    for flag in ("readonly", "savepoint", "durable"):
        for bad in ("false", None, 0, 1.0):
            options: dict[str, Any] = {flag: bad}
            with pytest.raises(TypeError, match=f"{flag} must be True or False"):
                aiolease.atomic(conn, **options)
    with pytest.raises(TypeError, match="readonly must be True or False"):
        await aiolease.run_transaction(conn, _never, readonly="no")  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="fn must be an async function"):
        await aiolease.run_transaction(conn, 42)  # type: ignore[call-overload]
    assert conn.statements == []  # refused before any BEGIN


async def test_fn_that_returns_no_awaitable_is_named() -> None:
    # Found by a new user's probe: a plain def fn (a lambda that forgot to call the async
    # function, a sync function) failed with "object int can't be used in 'await'
    # expression", naming neither fn nor what it must be. It is known only once fn has
    # run (a lambda returning a coroutine is fine), so the attempt rolls back first.
    conn = FakeConnection()
    with pytest.raises(
        TypeError,
        match=r"fn must be an async function of the connection: fn\(connection\) "
        r"returned int 1, not an awaitable",
    ):
        await aiolease.run_transaction(conn, lambda c: 1)  # type: ignore[arg-type,return-value]
    assert conn.statements == ["BEGIN", "ROLLBACK"]
    assert await aiolease.run_transaction(conn, lambda c: _answer(c)) == 42


async def _answer(conn: FakeConnection) -> int:
    return 42


async def test_blocks_exited_out_of_order_are_refused() -> None:
    conn = FakeConnection()
    outer = aiolease.atomic(conn)
    await outer.__aenter__()
    inner = aiolease.atomic(conn)
    await inner.__aenter__()
    with pytest.raises(aiolease.TransactionError, match="out of order"):
        await outer.__aexit__(None, None, None)
    await inner.__aexit__(None, None, None)
    await outer.__aexit__(None, None, None)
    assert conn.statements[-1] == "COMMIT"


async def test_several_failing_hooks_are_grouped() -> None:
    conn = FakeConnection()

    def bad() -> None:
        raise KeyError("x")

    with pytest.raises(aiolease.HookError) as info:  # noqa: PT012 - the block under test
        async with aiolease.atomic(conn) as tx:
            tx.on_commit(bad)
            tx.on_commit(bad)
    assert len(info.value.errors) == 2
    assert isinstance(info.value.__cause__, ExceptionGroup)
    with pytest.raises(aiolease.HookError, match="was rolled back") as info:  # noqa: PT012 - the block under test
        async with aiolease.atomic(conn) as tx:
            tx.on_rollback(bad)
            raise aiolease.Rollback
    assert info.value.committed is False


async def test_hooks_of_a_block_without_savepoint_follow_the_outer_block() -> None:
    conn = FakeConnection()
    ran: list[str] = []
    async with aiolease.atomic(conn):
        async with aiolease.atomic(conn, savepoint=False) as inner:
            inner.on_commit(lambda: ran.append("inner"))
        async with aiolease.atomic(conn, savepoint=False) as doomed:
            doomed.set_rollback(True)  # rolls the whole transaction back, silently
    assert ran == []
    assert "ROLLBACK" in conn.statements
    assert not any(s.startswith("SAVEPOINT") for s in conn.statements)


async def test_leak_check_reports_an_open_transaction() -> None:
    conn = FakeConnection()
    tx: Any = None
    with pytest.raises(AssertionError, match="transaction left open"):  # noqa: PT012 - the block under test
        async with leak_check():
            tx = aiolease.atomic(conn)
            await tx.__aenter__()
    await tx.__aexit__(None, None, None)
    async with leak_check(), aiolease.atomic(conn):
        pass


async def test_a_failed_rollback_is_never_silent() -> None:
    conn = FakeConnection()
    conn.script("^ROLLBACK", error=FakeConnectionLost("gone"))
    with pytest.raises(aiolease.TransactionError, match="ROLLBACK failed") as info:
        async with aiolease.atomic(conn):
            raise aiolease.Rollback
    assert isinstance(info.value.__cause__, FakeConnectionLost)
    assert _tracking.is_broken(conn)
    conn = FakeConnection()
    conn.script("^ROLLBACK", error=FakeConnectionLost("gone"))
    with pytest.raises(KeyError) as key_info:
        async with aiolease.atomic(conn):
            raise KeyError("original")
    assert any("ROLLBACK also failed" in note for note in key_info.value.__notes__)
    conn = FakeConnection()
    conn.script("^ROLLBACK TO", error=FakeConnectionLost("gone"))
    with pytest.raises(aiolease.TransactionError, match="ROLLBACK TO SAVEPOINT"):
        async with aiolease.atomic(conn), aiolease.atomic(conn) as inner:
            inner.set_rollback(True)


async def test_backoff_stays_capped_after_a_thousand_retries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # backoff * 2**(n - 1) exceeds any float after 1024 retries: it raised
    # OverflowError instead of sleeping max_backoff and trying again.
    caps: list[float] = []

    def uniform(low: float, high: float) -> float:
        caps.append(high)
        return 0.0

    monkeypatch.setattr("aiolease._retry.random.uniform", uniform)
    conn = FakeConnection()
    calls = 0

    async def conflicts(c: FakeConnection) -> None:
        nonlocal calls
        calls += 1
        raise FakeDatabaseError("could not serialize access", sqlstate="40001")

    with pytest.raises(FakeDatabaseError, match="serialize"):
        await aiolease.run_transaction(conn, conflicts, attempts=1100, max_backoff=0.5)
    assert calls == 1100
    assert caps[-1] == 0.5
    assert len(caps) == 1099


async def test_run_transaction_gives_back_a_rollback_raised_by_fn() -> None:
    # The attempt's block swallowed the Rollback, and run_transaction then read
    # a result that fn never returned: UnboundLocalError.
    conn = FakeConnection()
    rolled_back: list[str] = []
    rollback = aiolease.Rollback()

    async def gives_up(c: FakeConnection) -> int:
        async with aiolease.atomic(c, savepoint=False) as tx:
            tx.on_rollback(lambda: rolled_back.append("hook"))
        await c.execute("INSERT")
        raise rollback

    with pytest.raises(aiolease.Rollback) as info:
        await aiolease.run_transaction(conn, gives_up)
    assert info.value is rollback
    assert conn.statements == ["BEGIN", "INSERT", "ROLLBACK"]  # one attempt, no retry
    assert conn.committed == []
    assert rolled_back == ["hook"]


async def test_pool_options_are_checked_at_the_call_not_after_a_connection() -> None:
    # They were checked only once a connection was acquired: with the pool busy,
    # the call waited for a slot (here: for ever) before saying the option was bad.
    async def create() -> FakeConnection:
        return FakeConnection()

    async with aiolease.Pool.from_callables(create, max_size=1, acquire_timeout=None) as pool:
        async with pool.acquire():
            with pytest.raises(ValueError, match="isolation='bogus'"):
                pool.atomic(isolation="bogus")
            with pytest.raises(TypeError, match="readonly must be True or False"):
                pool.atomic(readonly="no")  # type: ignore[arg-type]
            with pytest.raises(ValueError, match="cleanup_timeout"):
                pool.atomic(cleanup_timeout=float("nan"))
            with pytest.raises(ValueError, match="cleanup_timeout"):
                aiolease.transaction_attempts(pool, cleanup_timeout=-1)
            async with asyncio.timeout(5):
                with pytest.raises(ValueError, match="isolation='bogus'"):
                    await aiolease.run_transaction(pool, _never, isolation="bogus")
        assert pool.statistics().acquired == 1  # only the test's own


async def test_pool_atomic_takes_a_cleanup_timeout() -> None:
    # docs/transactions.md names cleanup_timeout a pool.atomic() option; it was refused.
    conn = FakeConnection()
    conn.hang("^ROLLBACK$")

    async def create() -> FakeConnection:
        return conn

    async with aiolease.Pool.from_callables(create, max_size=1) as pool:
        async with asyncio.timeout(5):
            with pytest.raises(KeyError) as info:
                async with pool.atomic(cleanup_timeout=0.05):
                    raise KeyError("boom")
    assert isinstance(info.value.__context__, TimeoutError)
    assert "cleanup_timeout=0.05s" in str(info.value.__context__)


async def test_run_transaction_refuses_to_retry_inside_an_open_block() -> None:
    # On a connection already in atomic(), each attempt was a savepoint: a
    # serialization failure was "retried" inside the same transaction (which
    # cannot succeed), though every attempt is documented as a fresh outermost one.
    conn = FakeConnection()
    calls = 0

    async def conflicts(c: FakeConnection) -> None:
        nonlocal calls
        calls += 1
        raise FakeDatabaseError("could not serialize access", sqlstate="40001")

    async with aiolease.atomic(conn):
        with pytest.raises(aiolease.TransactionError, match="outside any atomic block"):
            await aiolease.run_transaction(conn, conflicts, backoff=0.001)
        with pytest.raises(aiolease.TransactionError, match="outside any atomic block"):  # noqa: PT012 - the loop under test
            async for attempt in aiolease.transaction_attempts(conn, backoff=0.001):
                async with attempt:
                    await conflicts(conn)
        await conn.execute("INSERT")
    assert calls == 0
    assert conn.statements == ["BEGIN", "INSERT", "COMMIT"]
