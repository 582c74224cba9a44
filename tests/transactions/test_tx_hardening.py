"""Hardening: bounded clean-up, no lost errors, cancellation never swallowed.

Each fault runs on FakeConnection (injected: a ROLLBACK that hangs or raises)
and, for the silent peer, on asyncpg and psycopg behind a proxy that stops
forwarding.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import psycopg
import pytest
from silent_proxy import SilentProxy

import aiolease
from aiolease import _tracking
from aiolease._compat.psycopg import CONNECTION_CLASS
from aiolease._compat.psycopg import PRIVATE as PSYCOPG_BOUNDED
from aiolease._liveness import CANCEL_GRACE
from aiolease._transaction import _open
from aiolease.testing import FakeConnection
from cancelling import cancel_and_time

pytestmark = pytest.mark.timeout(30)

PG_DSN = os.environ.get("AIOLEASE_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")


class Boom(Exception):
    pass


def chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    todo: list[BaseException] = [exc]
    while todo:
        e = todo.pop()
        if any(e is s for s in seen):
            continue
        seen.append(e)
        todo.extend(x for x in (e.__cause__, e.__context__) if x is not None)
    return seen


# -- FakeConnection: injected faults ---------------------------------------------------


async def test_a_hanging_rollback_is_abandoned_after_cleanup_timeout() -> None:
    conn = FakeConnection()
    conn.hang("^ROLLBACK$")
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(Boom) as info:  # noqa: PT012 - the block under test
        async with aiolease.atomic(conn, cleanup_timeout=0.2):
            await conn.execute("INSERT")
            raise Boom
    # uvloop's timers fire on a millisecond clock, so up to a millisecond early.
    assert 0.199 <= loop.time() - start < 2
    assert isinstance(info.value.__context__, TimeoutError)
    assert "cleanup_timeout" in str(info.value.__context__)
    assert any("ROLLBACK also failed" in n for n in info.value.__notes__)
    assert _tracking.is_broken(conn)
    assert id(conn) not in _open


@pytest.mark.parametrize("cancelled", [True, False], ids=["cancelled", "an error"])
async def test_a_dialect_that_cannot_tell_bounds_only_the_clean_up_after_a_cancel(
    monkeypatch: pytest.MonkeyPatch, cancelled: bool
) -> None:
    # cancel_pending() -> None: the driver cannot tell whether it is still cancelling a
    # statement. After a cancellation (a statement may have been cut short) the ROLLBACK gets
    # cancel_grace; after an ordinary error it gets the whole cleanup_timeout.
    from aiolease.testing._fake_connection import FakeDialect

    monkeypatch.setattr(FakeDialect, "cancel_pending", lambda self, conn: None)
    monkeypatch.setattr(FakeDialect, "cancel_grace", 0.05)
    conn = FakeConnection()
    conn.hang("^ROLLBACK$")
    loop = asyncio.get_running_loop()
    inside = asyncio.Event()
    raised_at: list[float] = []

    async def body() -> None:
        async with aiolease.atomic(conn, cleanup_timeout=0.5):
            await conn.execute("INSERT")
            inside.set()
            if not cancelled:
                # The clean-up starts here, maybe before this test's task runs again.
                raised_at.append(loop.time())
                raise Boom
            await asyncio.sleep(3600)

    task = asyncio.create_task(body())
    await inside.wait()
    start = loop.time()
    if cancelled:
        task.cancel()
    with pytest.raises(asyncio.CancelledError if cancelled else Boom):
        await task
    took = loop.time() - (raised_at[0] if raised_at else start)
    if cancelled:
        assert took < 0.4
    else:
        assert 0.499 <= took < 2
    assert _tracking.is_broken(conn)


async def test_a_failing_rollback_is_attached_to_the_original_error() -> None:
    conn = FakeConnection()
    rollback_error = ConnectionResetError("peer reset during ROLLBACK")
    conn.script("^ROLLBACK$", error=rollback_error)
    original = Boom("body")
    with pytest.raises(Boom) as info:  # noqa: PT012 - the block under test
        async with aiolease.atomic(conn):
            await conn.execute("INSERT")
            raise original
    assert info.value is original
    assert info.value.__context__ is rollback_error
    assert any("peer reset during ROLLBACK" in n for n in info.value.__notes__)
    assert _tracking.is_broken(conn)


async def test_a_failing_savepoint_rollback_is_attached_and_marks_broken() -> None:
    conn = FakeConnection()
    rollback_error = ConnectionResetError("lost")
    conn.script("^ROLLBACK TO", error=rollback_error)
    with pytest.raises(Boom) as info:
        async with aiolease.atomic(conn), aiolease.atomic(conn):
            raise Boom
    assert any(e is rollback_error for e in chain(info.value))
    assert _tracking.is_broken(conn)


async def test_a_second_cancellation_during_a_hanging_rollback_keeps_everything() -> None:
    conn = FakeConnection()
    gate = conn.hang("^ROLLBACK$")
    inside = asyncio.Event()

    async def body() -> None:
        async with aiolease.atomic(conn, cleanup_timeout=0.2):
            await conn.execute("INSERT")
            inside.set()
            raise Boom

    task = asyncio.create_task(body())
    await gate.reached.wait()
    assert inside.is_set()
    task.cancel()  # a second fault while the rollback hangs
    await asyncio.sleep(0)
    assert not task.done()  # the clean-up still gets its bounded time
    with pytest.raises(asyncio.CancelledError) as info:
        await task
    errors = chain(info.value)
    assert any(isinstance(e, TimeoutError) for e in errors)  # the rollback's failure
    assert any(isinstance(e, Boom) for e in errors)  # the body's error
    assert _tracking.is_broken(conn)


async def test_a_failed_rollback_after_cancellation_is_kept_on_the_cancellation() -> None:
    conn = FakeConnection()
    conn.script("^ROLLBACK$", error=ConnectionResetError("lost"))
    inside = asyncio.Event()

    async def body() -> None:
        async with aiolease.atomic(conn):
            inside.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(body())
    await inside.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError) as info:
        await task
    assert any(isinstance(e, ConnectionResetError) for e in chain(info.value))
    assert _tracking.is_broken(conn)


async def test_pool_atomic_keeps_commit_unknown_when_the_release_is_cancelled() -> None:
    conn = FakeConnection()
    conn.drop_on_commit()
    release_started = asyncio.Event()

    class SlowRelease:
        async def __aenter__(self) -> FakeConnection:
            return conn

        async def __aexit__(self, *exc: object) -> None:
            release_started.set()
            await asyncio.Event().wait()  # the caller's timeout fires here

    class Pool:
        def acquire(self) -> SlowRelease:
            return SlowRelease()

    with pytest.raises(TimeoutError) as info:
        async with asyncio.timeout(0.2), aiolease._pool_atomic.pool_atomic(Pool()) as tx:
            await tx.connection.execute("INSERT")
    assert release_started.is_set()
    assert any(isinstance(e, aiolease.CommitUnknown) for e in chain(info.value))


# -- the seam for driver pools' per-lease proxies ----------------------------------------


class LeaseProxy:
    """What a driver pool hands out: forwards to the raw connection until released."""

    def __init__(self, raw: FakeConnection) -> None:
        self._raw = raw

    def _aiolease_unwrap(self) -> FakeConnection:
        return self._raw

    async def execute(self, sql: str, *args: Any) -> Any:
        return await self._raw.execute(sql, *args)


async def test_atomic_drives_the_raw_connection_behind_a_lease_proxy() -> None:
    raw = FakeConnection()
    proxy = LeaseProxy(raw)
    async with aiolease.atomic(proxy) as tx:
        assert tx.connection is proxy
        await proxy.execute("INSERT 1")
        # Nesting is keyed by the raw connection: a block on either one nests.
        async with aiolease.atomic(raw):
            await raw.execute("INSERT 2")
        async with aiolease.atomic(LeaseProxy(raw)) as inner:
            assert inner.connection is not proxy
    assert raw.statements == [
        "BEGIN",
        "INSERT 1",
        "SAVEPOINT aiolease_sp_2",
        "INSERT 2",
        "RELEASE SAVEPOINT aiolease_sp_2",
        "SAVEPOINT aiolease_sp_2",
        "RELEASE SAVEPOINT aiolease_sp_2",
        "COMMIT",
    ]
    assert id(raw) not in _open


async def test_a_lost_commit_through_a_proxy_marks_both_broken() -> None:
    raw = FakeConnection()
    raw.drop_on_commit()
    proxy = LeaseProxy(raw)
    with pytest.raises(aiolease.CommitUnknown):
        async with aiolease.atomic(proxy):
            await proxy.execute("INSERT")
    assert _tracking.is_broken(raw)
    assert _tracking.is_broken(proxy)


async def test_run_transaction_accepts_a_lease_proxy_as_a_connection() -> None:
    raw = FakeConnection()

    async def work(conn: LeaseProxy) -> int:
        await conn.execute("INSERT")
        return 7

    assert await aiolease.run_transaction(LeaseProxy(raw), work) == 7
    assert raw.statements == ["BEGIN", "INSERT", "COMMIT"]


# -- real drivers behind a silent peer ---------------------------------------------------


@pytest.fixture
async def proxy(pg_dsn: str) -> AsyncIterator[SilentProxy]:
    parts = urlsplit(pg_dsn)
    async with SilentProxy(parts.hostname or "127.0.0.1", parts.port or 5432) as p:
        yield p


async def _connect(driver: str, proxy: SilentProxy, **kwargs: Any) -> Any:
    host, port = proxy.address
    if driver == "asyncpg":
        return await asyncpg.connect(PG_DSN, host=host, port=port, **kwargs)
    return await psycopg.AsyncConnection.connect(
        PG_DSN, host=host, port=port, autocommit=True, **kwargs
    )


async def _close(conn: Any) -> None:
    if isinstance(conn, asyncpg.Connection):
        conn.terminate()
    else:
        await conn.close()


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_rollback_on_a_silent_peer_is_bounded(driver: str, proxy: SilentProxy) -> None:
    conn = await _connect(driver, proxy)
    loop = asyncio.get_running_loop()
    try:
        start = loop.time()
        with pytest.raises(Boom) as info:  # noqa: PT012 - the block under test
            async with aiolease.atomic(conn, cleanup_timeout=0.5):
                await conn.execute("SELECT 1")
                proxy.blackhole()
                raise Boom
        assert loop.time() - start < 3
        assert isinstance(info.value.__context__, TimeoutError)
        assert _tracking.is_broken(conn)
        if driver == "asyncpg":
            assert conn.is_closed()  # its transport was aborted (terminate())
    finally:
        await _close(conn)


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_cancellation_on_a_silent_peer_goes_on_within_the_bound(
    driver: str, proxy: SilentProxy
) -> None:
    conn = await _connect(driver, proxy)
    inside = asyncio.Event()

    async def body() -> None:
        async with aiolease.atomic(conn, cleanup_timeout=0.5):
            await conn.execute("SELECT 1")
            proxy.blackhole()
            inside.set()
            await asyncio.Event().wait()

    try:
        task = asyncio.create_task(body())
        await inside.wait()
        assert await cancel_and_time(task) < 3
        assert _tracking.is_broken(conn)
    finally:
        await _close(conn)


async def _cancel_mid_statement(conn: Any, proxy: SilentProxy, *, silent: bool) -> float:
    """Cancel a statement running inside atomic (default cleanup_timeout); the seconds
    the task took to end after the cancel."""
    inside = asyncio.Event()

    async def body() -> None:
        async with aiolease.atomic(conn):
            await conn.execute("SELECT 1")
            if silent:
                proxy.blackhole()
            inside.set()
            await conn.execute("SELECT pg_sleep(30)")

    task = asyncio.create_task(body())
    await inside.wait()
    await asyncio.sleep(0.2)  # the statement is on its way
    return await cancel_and_time(task)


@pytest.mark.parametrize("silent", [True, False], ids=["silent peer", "live server"])
async def test_asyncpg_rollback_behind_a_cancel_waits_only_the_grace(
    proxy: SilentProxy, silent: bool
) -> None:
    # asyncpg queues the ROLLBACK behind its cancel request of the cancelled statement. On a
    # silent peer neither is ever answered: atomic waits the dialect's cancel_grace (0.5 s),
    # not cleanup_timeout (5 s), so the connection's pool slot is free again at once. A live
    # server answers the cancel at once, the ROLLBACK follows and the connection is kept.
    # Public mode cannot see the cancel: a clean-up after a cancellation gets the grace anyway.
    conn = await _connect("asyncpg", proxy)
    try:
        assert await _cancel_mid_statement(conn, proxy, silent=silent) < 2.5
        assert _tracking.is_broken(conn) is silent
        if silent:
            assert conn.is_closed()  # abandoned: its transport was aborted
        else:
            assert await conn.fetchval("SELECT 1") == 1
            assert not conn.is_in_transaction()
    finally:
        await _close(conn)


async def test_asyncpg_driver_timeout_during_commit_is_commit_unknown(proxy: SilentProxy) -> None:
    conn = await _connect("asyncpg", proxy, command_timeout=0.5)
    try:
        with pytest.raises(aiolease.CommitUnknown):  # noqa: PT012 - the block under test
            async with aiolease.atomic(conn):
                await conn.execute("SELECT 1")
                proxy.blackhole()
        assert _tracking.is_broken(conn)
    finally:
        await _close(conn)


@pytest.mark.slow
@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_a_timeout_during_commit_on_a_silent_peer_carries_commit_unknown(
    driver: str, proxy: SilentProxy
) -> None:
    conn = await _connect(driver, proxy)
    try:
        with pytest.raises(TimeoutError) as info:  # noqa: PT012 - the block under test
            async with asyncio.timeout(0.5), aiolease.atomic(conn):
                await conn.execute("SELECT 1")
                proxy.blackhole()
        assert any(isinstance(e, aiolease.CommitUnknown) for e in chain(info.value))
        assert _tracking.is_broken(conn)
    finally:
        await _close(conn)


@pytest.mark.slow  # public mode: psycopg's own 10 s
async def test_psycopg_pool_connection_timed_out_in_commit_ends_within_the_grace(
    proxy: SilentProxy,
) -> None:
    """The class aiolease's psycopg pools open: the COMMIT cancelled by the timeout gets
    CANCEL_GRACE (aiolease._compat.psycopg), and the caller's TimeoutError still carries
    CommitUnknown."""
    host, port = proxy.address
    conn = await CONNECTION_CLASS.connect(PG_DSN, host=host, port=port, autocommit=True)
    loop = asyncio.get_running_loop()
    try:
        with pytest.raises(TimeoutError) as info:  # noqa: PT012 - the block under test
            async with asyncio.timeout(0.5) as scope, aiolease.atomic(conn):
                await conn.execute("SELECT 1")
                proxy.blackhole()
        ended = loop.time() - (scope.when() or 0.0)
        assert any(isinstance(e, aiolease.CommitUnknown) for e in chain(info.value))
        assert _tracking.is_broken(conn)
        assert conn.closed or not PSYCOPG_BOUNDED
        assert ended < (CANCEL_GRACE + 1.0 if PSYCOPG_BOUNDED else 12.0)
    finally:
        await _close(conn)
