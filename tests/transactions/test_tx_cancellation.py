"""Cancellation at every await of atomic(), driven deterministically with FakeConnection gates."""

from __future__ import annotations

import asyncio

import pytest

import aiolease
from aiolease import _tracking
from aiolease._transaction import _open
from aiolease.testing import FakeConnection

pytestmark = pytest.mark.timeout(10)


async def cancel_at(conn: FakeConnection, pattern: str, task: asyncio.Task[None]) -> None:
    """Wait until ``task`` is held at a statement matching ``pattern``, cancel it, open the gate."""
    gate = conn.gate(pattern)
    await gate.reached.wait()
    task.cancel()
    await asyncio.sleep(0)
    gate.open()


async def test_cancelled_at_begin_rolls_back_and_leaves_no_state() -> None:
    conn = FakeConnection()
    gate = conn.gate("^BEGIN")

    async def body() -> None:
        async with aiolease.atomic(conn):
            raise AssertionError("not reached")  # pragma: no cover

    task = asyncio.create_task(body())
    await gate.reached.wait()
    task.cancel()
    gate.open()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert conn.statements == ["BEGIN", "ROLLBACK"]
    assert id(conn) not in _open
    assert not conn.in_transaction


async def test_cancelled_at_savepoint_rolls_back_everything() -> None:
    conn = FakeConnection()
    gate = conn.gate("^SAVEPOINT")

    async def body() -> None:
        async with aiolease.atomic(conn):
            await conn.execute("INSERT")
            async with aiolease.atomic(conn):
                raise AssertionError("not reached")  # pragma: no cover

    task = asyncio.create_task(body())
    await gate.reached.wait()
    task.cancel()
    gate.open()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert conn.statements == ["BEGIN", "INSERT", "SAVEPOINT aiolease_sp_2", "ROLLBACK"]
    assert conn.committed == []
    assert id(conn) not in _open


async def test_cancelled_at_release_rolls_back_everything() -> None:
    conn = FakeConnection()
    gate = conn.gate("^RELEASE")

    async def body() -> None:
        async with aiolease.atomic(conn), aiolease.atomic(conn):
            await conn.execute("INSERT")

    task = asyncio.create_task(body())
    await gate.reached.wait()
    task.cancel()
    gate.open()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert conn.statements[-1] == "ROLLBACK"
    assert conn.committed == []
    assert not conn.in_transaction


async def test_a_timeout_at_release_caught_in_the_enclosing_block_dooms_it() -> None:
    """An ``asyncio.timeout()`` around a nested block, caught inside the enclosing one, whose
    deadline comes during RELEASE SAVEPOINT: whether RELEASE ran is unknown, and either way the
    nested block's work is still in the transaction. The caller was told that block failed
    (TimeoutError), so the enclosing block must not commit that work: it rolls back."""
    conn = FakeConnection()
    gate = conn.gate("^RELEASE")
    outcome: list[str] = []

    async def body() -> None:
        async with aiolease.atomic(conn):
            await conn.execute("INSERT outer")
            try:
                async with asyncio.timeout(None) as deadline:
                    async with aiolease.atomic(conn):
                        await conn.execute("INSERT nested")
                        reached = asyncio.ensure_future(gate.reached.wait())
                        reached.add_done_callback(
                            lambda _: deadline.reschedule(asyncio.get_running_loop().time())
                        )
            except TimeoutError:
                outcome.append("nested timed out")
            await conn.execute("INSERT after")

    task = asyncio.create_task(body())
    await gate.reached.wait()
    await asyncio.sleep(0.01)  # the deadline fires while RELEASE waits
    gate.open()
    with pytest.raises(aiolease.TransactionError, match="RELEASE SAVEPOINT"):
        await task
    assert outcome == ["nested timed out"]
    assert conn.committed == []
    assert conn.statements[-1] == "ROLLBACK"
    assert not conn.in_transaction
    assert id(conn) not in _open


async def test_rollback_is_shielded_from_a_second_cancellation() -> None:
    conn = FakeConnection()
    gate = conn.gate("^ROLLBACK$")
    inside = asyncio.Event()

    async def body() -> None:
        async with aiolease.atomic(conn):
            await conn.execute("INSERT")
            inside.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(body())
    await inside.wait()
    task.cancel()  # first cancellation: the body
    await gate.reached.wait()
    task.cancel()  # second one, while ROLLBACK runs
    await asyncio.sleep(0)
    assert not task.done()  # still waiting for the rollback
    gate.open()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not conn.in_transaction  # the rollback completed
    assert not _tracking.is_broken(conn)


async def test_cancellation_during_rollback_after_an_error_still_completes_it() -> None:
    conn = FakeConnection()
    gate = conn.gate("^ROLLBACK$")

    async def body() -> None:
        async with aiolease.atomic(conn):
            await conn.execute("INSERT")
            raise KeyError("original")

    task = asyncio.create_task(body())
    await gate.reached.wait()
    task.cancel()
    gate.open()
    with pytest.raises(asyncio.CancelledError) as info:
        await task
    assert isinstance(info.value.__context__, KeyError)  # the original is chained
    assert not conn.in_transaction


async def test_cancelled_at_rollback_to_savepoint_completes_it() -> None:
    conn = FakeConnection()
    gate = conn.gate("^ROLLBACK TO")

    async def body() -> None:
        async with aiolease.atomic(conn):
            await conn.execute("KEEP")
            try:
                async with aiolease.atomic(conn):
                    await conn.execute("DROP")
                    raise KeyError
            except KeyError:
                pass

    task = asyncio.create_task(body())
    await gate.reached.wait()
    task.cancel()
    gate.open()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert conn.statements[-3:] == [
        "ROLLBACK TO SAVEPOINT aiolease_sp_2",
        "RELEASE SAVEPOINT aiolease_sp_2",
        "ROLLBACK",
    ]
    assert conn.committed == []


async def test_cancelled_at_commit_propagates_with_commit_unknown_and_marks_broken(
    caplog: pytest.LogCaptureFixture,
) -> None:
    conn = FakeConnection()
    gate = conn.gate("^COMMIT")
    hooks: list[str] = []

    async def body() -> None:
        async with aiolease.atomic(conn) as tx:
            tx.on_commit(lambda: hooks.append("commit"))
            tx.on_rollback(lambda: hooks.append("rollback"))
            await conn.execute("INSERT")

    task = asyncio.create_task(body())
    await gate.reached.wait()
    task.cancel()
    gate.open()
    with (
        caplog.at_level("WARNING", logger="aiolease.transaction"),
        pytest.raises(asyncio.CancelledError) as info,
    ):
        await task
    assert isinstance(info.value.__context__, aiolease.CommitUnknown)
    assert _tracking.is_broken(conn)
    assert hooks == []
    assert id(conn) not in _open
    assert any("outcome is unknown" in r.getMessage() for r in caplog.records)


async def test_a_timeout_during_commit_carries_commit_unknown() -> None:
    conn = FakeConnection()
    conn.gate("^COMMIT")  # never opened: COMMIT hangs
    with pytest.raises(TimeoutError) as info:
        async with asyncio.timeout(0.05), aiolease.atomic(conn):
            await conn.execute("INSERT")
    chain = []
    e: BaseException | None = info.value
    while e is not None:
        chain.append(e)
        e = e.__cause__ or e.__context__
    assert any(isinstance(x, aiolease.CommitUnknown) for x in chain)
    assert _tracking.is_broken(conn)


async def test_cancelled_in_an_async_commit_hook_propagates_after_commit() -> None:
    conn = FakeConnection()
    started = asyncio.Event()
    ran: list[str] = []

    async def slow_hook() -> None:
        started.set()
        await asyncio.Event().wait()

    async def body() -> None:
        async with aiolease.atomic(conn) as tx:
            await conn.execute("INSERT")
            tx.on_commit(slow_hook)
            tx.on_commit(lambda: ran.append("later"))

    task = asyncio.create_task(body())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert conn.committed == [("INSERT", ())]
    assert ran == []  # cancellation is not a hook failure: it stops the hooks
    assert id(conn) not in _open


async def test_cancelled_while_waiting_for_pool_atomic() -> None:
    conn = FakeConnection()

    async def create() -> FakeConnection:
        return conn

    async with aiolease.Pool.from_callables(create, max_size=1) as pool:
        async with pool.atomic():
            waiter = asyncio.create_task(pool.atomic().__aenter__())
            await asyncio.sleep(0)
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
        assert pool.statistics().in_use == 0
        async with pool.atomic() as tx:
            assert tx.connection is conn


async def test_cancelled_during_retry_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("aiolease._retry.random.uniform", lambda low, high: high)
    conn = FakeConnection()
    conn.fail_commit(1)
    attempts: list[int] = []

    async def work(c: FakeConnection) -> None:
        attempts.append(1)
        await c.execute("INSERT")

    task = asyncio.create_task(aiolease.run_transaction(conn, work, backoff=10, max_backoff=10))
    while not attempts or conn.in_transaction:  # noqa: ASYNC110 - polling state outside this loop
        await asyncio.sleep(0)
    await asyncio.sleep(0.01)  # now sleeping in the 10 s backoff
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert attempts == [1]
    assert conn.committed == []
