"""A cancel request the server drops: PostgreSQL ignores a cancel request that reaches a
backend while it waits for a command, so one that overtakes the query it is meant for
(the query still on its way, or not yet read by a backend the machine has not scheduled)
stops nothing, and the query then runs to its end on the server.

The cancel request travels on a connection of its own, so sending the query first does
not make it arrive first. A loaded machine made this happen (rarely) in
test_creation_cancelled_during_configure_closes_the_connection: the backend was still
running the configure's ``pg_sleep(3600)`` after the pool had closed the connection.
Here a proxy holds the query back until the server has answered the first cancel
request, which makes that order certain.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

import aiolease
import aiolease.psycopg
from aiolease._compat.psycopg import PRIVATE
from pg_proxy import HoldingProxy, sessions, terminate_sessions

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(60)]


@pytest.mark.skipif(not PRIVATE, reason="public mode: psycopg's own cancellation (one request)")
async def test_a_cancel_request_the_server_dropped_is_sent_again(pg_dsn: str) -> None:
    tag = f"cancel_dropped_{uuid.uuid4().hex[:8]}"
    async with HoldingProxy.before(pg_dsn) as proxy:
        pool = aiolease.psycopg.create_pool(proxy.dsn(pg_dsn), max_size=1, application_name=tag)
        try:
            async with pool:
                async with pool.acquire() as conn:
                    pid = conn.info.backend_pid
                proxy.hold()  # the pooled connection's next query waits in the proxy

                async def op() -> None:
                    async with pool.acquire() as conn:
                        await conn.execute("SELECT pg_sleep(30)")

                task = asyncio.create_task(op())
                while not proxy.held:  # noqa: ASYNC110 - the query reaching the proxy
                    await asyncio.sleep(0.001)
                task.cancel()  # the cancel request goes straight through...
                await asyncio.wait_for(proxy.ended.wait(), 10)  # ...and was answered
                proxy.release()  # the backend reads the query after the cancel
                with pytest.raises(asyncio.CancelledError):
                    await task
                async with pool.acquire(timeout=5) as conn:
                    cur = await conn.execute("SELECT 42")
                    assert await cur.fetchone() == (42,)
                    same = conn.info.backend_pid == pid
                stats = pool.statistics()
            # The query was stopped: its connection was kept, and no session of the pool
            # runs on on the server.
            seen = await sessions(pg_dsn, tag)
            assert not any(s["query"] == "SELECT pg_sleep(30)" for s in seen), seen
            assert same, (stats, seen)
            assert stats.discarded == 0, (stats, seen)
        finally:
            await terminate_sessions(pg_dsn, tag)
