"""Contract points of atomic() checked once per backend: hook order across nested blocks,
isolation spellings, read-only blocks, durable nesting, hooks dropped with a savepoint and a
caught error that aborted the transaction."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import pytest
from tx_backends import POSTGRES, Backend, backend_fixture  # noqa: F401 - registers the fixture

import aiolease

pytestmark = pytest.mark.timeout(60)


class Boom(Exception):
    pass


async def test_hooks_registered_on_the_outer_block_while_a_nested_one_is_open_keep_order(
    backend: Backend,
) -> None:
    # Registration order, also for hooks given to the enclosing block while a nested
    # one (with or without a savepoint) is open and handed over when it ends.
    conn = await backend.connect()
    calls: list[str] = []
    async with aiolease.atomic(conn) as outer:
        outer.on_commit(lambda: calls.append("a"))
        async with aiolease.atomic(conn) as inner:
            inner.on_commit(lambda: calls.append("b"))
            outer.on_commit(lambda: calls.append("c"))
            inner.on_commit(lambda: calls.append("d"))
        async with aiolease.atomic(conn, savepoint=False) as flat:
            flat.on_commit(lambda: calls.append("e"))
            outer.on_commit(lambda: calls.append("f"))
    assert calls == ["a", "b", "c", "d", "e", "f"]
    calls.clear()
    async with aiolease.atomic(conn) as outer:
        outer.on_rollback(lambda: calls.append("a"))
        async with aiolease.atomic(conn) as inner:
            inner.on_rollback(lambda: calls.append("b"))
            outer.on_rollback(lambda: calls.append("c"))
            async with aiolease.atomic(conn) as innermost:
                innermost.on_rollback(lambda: calls.append("d"))
                outer.on_rollback(lambda: calls.append("e"))
                inner.on_rollback(lambda: calls.append("f"))
        outer.set_rollback(True)
    assert calls == ["a", "b", "c", "d", "e", "f"]


async def test_isolation_is_case_insensitive_and_bad_levels_are_named(backend: Backend) -> None:
    conn = await backend.connect()
    for spelling in ("SERIALIZABLE", "Serializable", " serializable "):
        async with aiolease.atomic(conn, isolation=spelling):
            await backend.insert(conn, 1)
    if backend.name in POSTGRES:
        for spelling, level in (
            ("READ COMMITTED", "read committed"),
            ("Repeatable Read", "repeatable read"),
            ("serializable", "serializable"),
        ):
            async with aiolease.atomic(conn, isolation=spelling):
                got = await backend.scalar(conn, "SHOW transaction_isolation")
                assert got == level
    elif backend.name != "fake":
        with pytest.raises(ValueError, match="not supported by sqlite: it accepts 'serializable'"):
            aiolease.atomic(conn, isolation="Read Committed")
    with pytest.raises(ValueError, match="'snapshot' is not an isolation level"):
        aiolease.atomic(conn, isolation="snapshot")
    with pytest.raises(TypeError):
        aiolease.atomic(conn, isolation=b"serializable")  # type: ignore[arg-type]


async def test_readonly_refuses_writes_and_the_connection_is_writable_after(
    backend: Backend,
) -> None:
    conn = await backend.connect()
    for how in ("ok", "error", "set_rollback"):
        with pytest.raises(Exception, match=r"read-only|readonly|^$") as info:  # noqa: PT012
            async with aiolease.atomic(conn, readonly=True) as tx:
                if how == "error":
                    raise Boom
                if how == "set_rollback":
                    tx.set_rollback(True)
                await backend.insert(conn, 1)
        assert isinstance(info.value, Boom) == (how == "error")
        async with aiolease.atomic(conn):
            await backend.insert(conn, 2)
    async with aiolease.atomic(conn, readonly=True):
        assert await backend.count(conn) == 3


async def test_durable_nested_raises_and_the_outer_block_goes_on(backend: Backend) -> None:
    conn = await backend.connect()
    async with aiolease.atomic(conn):
        await backend.insert(conn, 1)
        with pytest.raises(aiolease.TransactionError):
            async with aiolease.atomic(conn, durable=True):
                pass
        async with aiolease.atomic(conn):
            await backend.insert(conn, 2)
    assert await backend.count(conn) == 2


async def test_sync_async_and_partial_hooks_in_order_and_dropped_with_a_savepoint(
    backend: Backend,
) -> None:
    conn = await backend.connect()
    calls: list[Any] = []

    async def rec(x: Any) -> None:
        await asyncio.sleep(0)
        calls.append(x)

    class Callable_:
        async def __call__(self) -> None:
            calls.append("obj")

    async with aiolease.atomic(conn) as tx:
        tx.on_commit(functools.partial(rec, 1))
        tx.on_commit(lambda: calls.append(2))
        tx.on_commit(Callable_())
        tx.on_rollback(lambda: calls.append("never"))
        with pytest.raises(Boom):  # noqa: PT012 - the block under test
            async with aiolease.atomic(conn) as inner:
                inner.on_commit(lambda: calls.append("dropped"))
                inner.on_rollback(lambda: calls.append("dropped-rb"))
                raise Boom
        async with aiolease.atomic(conn) as inner2:
            inner2.on_commit(lambda: calls.append("dropped2"))
            inner2.set_rollback(True)
        tx.on_commit(functools.partial(rec, 3))
    assert calls == [1, 2, "obj", 3]


async def test_caught_error_that_aborted_the_transaction_is_never_a_silent_non_commit(
    backend: Backend,
) -> None:
    conn = await backend.connect()
    rb: list[int] = []
    if not backend.aborts_on_error:
        pytest.skip("SQLite: a failed statement does not abort the transaction")
    with pytest.raises(aiolease.TransactionError, match="rolled back"):  # noqa: PT012
        async with aiolease.atomic(conn) as tx:
            tx.on_rollback(lambda: rb.append(1))
            tx.on_commit(lambda: rb.append(99))
            await backend.insert(conn, 1)
            try:
                await backend.fail(conn)
            except Exception:
                pass
    assert rb == [1]
    assert await backend.count(conn) == 0
    # set_rollback after a caught error: silent
    async with aiolease.atomic(conn) as tx:
        try:
            await backend.fail(conn)
        except Exception:
            pass
        tx.set_rollback(True)
    # nested
    async with aiolease.atomic(conn):
        await backend.insert(conn, 5)
        with pytest.raises(aiolease.TransactionError):  # noqa: PT012 - the block under test
            async with aiolease.atomic(conn):
                try:
                    await backend.fail(conn)
                except Exception:
                    pass
    assert await backend.count(conn) == 1


async def test_a_connection_closed_before_commit_is_a_known_rollback(backend: Backend) -> None:
    # COMMIT is never sent on a connection closed already, and the database rolled the
    # session's transaction back: the driver's error propagates (no CommitUnknown) and the
    # on_rollback hooks run, on the test double as on the drivers.
    conn, other = await backend.connect(), await backend.connect()
    calls: list[str] = []
    with pytest.raises(Exception) as info:  # noqa: PT012 - each driver's own error
        async with aiolease.atomic(conn) as tx:
            tx.on_commit(lambda: calls.append("commit"))
            tx.on_rollback(lambda: calls.append("rollback"))
            await backend.insert(conn, 1)
            await backend.close(conn)
    assert not isinstance(info.value, aiolease.CommitUnknown), repr(info.value)
    assert calls == ["rollback"]
    assert await backend.count(other) == 0
