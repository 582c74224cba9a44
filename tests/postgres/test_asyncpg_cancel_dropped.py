"""A cancel request the server drops, on asyncpg pools: PostgreSQL ignores a cancel request
that reaches a backend while it waits for a command, so one that overtakes the query it is
meant for (it travels on a connection of its own) stops nothing. asyncpg sends one request;
the pool then waits ``CANCEL_GRACE`` for the query's end and cuts the connection, and the
server session ran the query on to its end (PostgreSQL does not notice a closed client
socket while a query runs). The pool sends the request again while the query has not ended.

The same goes for ``atomic``'s ROLLBACK (or ROLLBACK TO SAVEPOINT) behind a cancelled
statement, which waits the dialect's ``cancel_grace`` before the connection is cut.

A proxy (tests/pg_proxy.py) holds the query back until the server has answered the first
cancel request, which makes that order certain.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

import aiolease
import aiolease.asyncpg
from aiolease._compat.asyncpg import RESENDS_CANCEL
from pg_proxy import HoldingProxy, running_on, terminate_sessions

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(60)]

resends = pytest.mark.skipif(
    not RESENDS_CANCEL,
    reason="public mode (or an asyncpg without Connection._cancel_current_command): "
    "asyncpg's own single cancel request, which the server drops when it overtakes its "
    "query",
)

_QUERY = "SELECT pg_sleep(30)"


def _tagged(tag: str) -> dict[str, Any]:
    return {"server_settings": {"application_name": tag}}


@contextlib.asynccontextmanager
async def _proxied_pool(
    pg_dsn: str, prefix: str, *, ends: bool = True, **options: Any
) -> AsyncIterator[tuple[HoldingProxy, aiolease.Pool[Any]]]:
    """An open asyncpg pool of one, through a :class:`HoldingProxy`, its sessions named by a
    tag of their own; on a clean exit, when ``ends``, checks that no session still runs the
    query (the server's view), and always ends the tagged sessions left."""
    tag = f"{prefix}_{uuid.uuid4().hex[:8]}"
    async with HoldingProxy.before(pg_dsn) as proxy:
        options = {**options, **_tagged(tag)}
        if "configure" in options:
            options["configure"] = functools.partial(options["configure"], proxy)
        pool = aiolease.asyncpg.create_pool(proxy.dsn(pg_dsn), max_size=1, **options)
        try:
            async with pool:
                yield proxy, pool
            if ends:
                running = await running_on(pg_dsn, tag, _QUERY, within=3)
                assert not running, (pool.statistics(), running)
        finally:
            await terminate_sessions(pg_dsn, tag)


async def _dropped(proxy: HoldingProxy) -> None:
    """Once the held query's cancel request went straight through and was answered, let the
    query on: the backend reads it after the cancel."""
    await asyncio.wait_for(proxy.ended.wait(), 10)
    proxy.release()


async def _held(proxy: HoldingProxy) -> None:
    """Until the query has reached the proxy (and is held there)."""
    while not proxy.held:  # noqa: ASYNC110 - the query reaching the proxy
        await asyncio.sleep(0.001)


@resends
@pytest.mark.parametrize("how", ["cancel", "timeout"])
async def test_a_cancelled_query_whose_cancel_request_was_dropped_does_not_run_on(
    pg_dsn: str, how: str
) -> None:
    async with _proxied_pool(pg_dsn, "apg_cancel_dropped") as (proxy, pool):
        async with pool.acquire() as conn:
            await conn.execute("SELECT 1")
        proxy.hold()  # the pooled connection's next query waits in the proxy
        scope = asyncio.timeout(None)

        async def op() -> None:
            async with pool.acquire() as conn, scope:
                await conn.execute(_QUERY)

        task = asyncio.create_task(op())
        await _held(proxy)
        if how == "cancel":
            task.cancel()
        else:
            scope.reschedule(asyncio.get_running_loop().time())
        await _dropped(proxy)
        with pytest.raises(asyncio.CancelledError if how == "cancel" else TimeoutError):
            await task
        # The pool lets the connection go (closed within the grace) and serves again.
        async with pool.acquire(timeout=5) as conn:
            assert await conn.fetchval("SELECT 42") == 42


@resends
async def test_a_configure_query_whose_cancel_request_was_dropped_does_not_run_on(
    pg_dsn: str,
) -> None:
    async def configure(proxy: HoldingProxy, conn: Any) -> None:
        proxy.hold()  # this new connection's query waits in the proxy
        await conn.execute(_QUERY)

    async with _proxied_pool(
        pg_dsn, "apg_cfg_dropped", configure=configure, configure_timeout=1
    ) as (proxy, pool):

        async def op() -> None:
            async with pool.acquire(timeout=30):
                pass

        task = asyncio.create_task(op())
        await _held(proxy)
        # configure_timeout cancels the query.
        await _dropped(proxy)
        with pytest.raises(TimeoutError, match="configure_timeout"):
            await task


@resends
@pytest.mark.parametrize("nested", [False, True], ids=["rollback", "savepoint"])
async def test_a_query_cancelled_in_atomic_whose_cancel_request_was_dropped_does_not_run_on(
    pg_dsn: str, nested: bool
) -> None:
    # The clean-up behind the cancelled query (ROLLBACK, or ROLLBACK TO SAVEPOINT in a
    # nested block) waits for its end within the dialect's cancel_grace.
    async with _proxied_pool(pg_dsn, "apg_atomic_dropped") as (proxy, pool):
        async with pool.acquire() as conn:
            await conn.execute("SELECT 1")
        entered = asyncio.Event()

        async def op() -> None:
            async with pool.acquire() as conn, aiolease.atomic(conn):
                if nested:
                    async with aiolease.atomic(conn):
                        await block(conn)
                else:
                    await block(conn)

        async def block(conn: Any) -> None:
            proxy.hold()  # after BEGIN (and SAVEPOINT): the query waits in the proxy
            entered.set()
            await conn.execute(_QUERY)

        task = asyncio.create_task(op())
        await asyncio.wait_for(entered.wait(), 10)
        await _held(proxy)
        task.cancel()
        await _dropped(proxy)
        with pytest.raises(asyncio.CancelledError):
            await task
        async with pool.acquire(timeout=5) as conn:
            assert await conn.fetchval("SELECT 42") == 42


async def test_a_statement_timed_out_and_caught_in_the_lease_never_reaches_a_waiter(
    pg_dsn: str,
) -> None:
    # The holder catches asyncpg's own ``timeout=`` error and leaves its lease normally while
    # the statement, whose single cancel request the server dropped, still runs. A waiter
    # queued meanwhile is handed the connection at that release, with no checkout check
    # before it: the release must see (or, in public mode, rule out with a round trip bounded
    # by reset_timeout) the statement in flight, never make the waiter wait behind it.
    async with _proxied_pool(
        pg_dsn, "apg_caught_dropped", ends=RESENDS_CANCEL, reset_timeout=1
    ) as (proxy, pool):
        async with pool.acquire() as conn:
            await conn.execute("SELECT 1")
        holding = asyncio.Event()

        async def holder() -> None:
            async with pool.acquire() as conn:
                holding.set()
                proxy.hold()  # the statement waits in the proxy: its cancel overtakes it
                with pytest.raises(TimeoutError):
                    await conn.execute(_QUERY, timeout=0.2)
                await _dropped(proxy)

        async def waiter() -> int:
            async with pool.acquire(timeout=30) as conn:
                return int(await conn.fetchval("SELECT 42"))

        held = asyncio.create_task(holder())
        await asyncio.wait_for(holding.wait(), 10)
        waiting = asyncio.create_task(waiter())
        await asyncio.sleep(0.05)  # queued behind the holder
        await asyncio.wait_for(held, 10)
        # Without the check the waiter's query waits for pg_sleep(30) to end.
        assert await asyncio.wait_for(waiting, 10) == 42
