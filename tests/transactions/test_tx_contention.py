"""Retries under real contention and faults: killed backends, busy SQLite files."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest
from tx_backends import PG_DSN

import aiolease

pytestmark = pytest.mark.timeout(60)


# -- PostgreSQL --------------------------------------------------------------------


async def test_asyncpg_connection_killed_in_a_transaction_is_not_taken_for_a_foreign_one(
    pg_dsn: str,
) -> None:
    # asyncpg keeps reporting the last transaction status of a connection the server
    # closed: atomic() took it for "a transaction aiolease did not start" and
    # run_transaction() replaced the attempt's error with that TransactionError.
    observer, conn = await asyncpg.connect(PG_DSN), await asyncpg.connect(PG_DSN)
    try:
        calls: list[int] = []

        async def fn(c: Any) -> None:
            calls.append(1)
            await c.execute("SELECT 1")
            await observer.execute("SELECT pg_terminate_backend($1)", c.get_server_pid())
            while not c.is_closed():  # noqa: ASYNC110 - the driver reads the FATAL message
                await asyncio.sleep(0.01)
            await c.execute("SELECT 1")

        with pytest.raises(asyncpg.InterfaceError, match="closed"):
            await aiolease.run_transaction(conn, fn, attempts=3)
        assert calls == [1]
        with pytest.raises(asyncpg.InterfaceError, match="closed") as info:
            async with aiolease.atomic(conn):
                pass
        assert not isinstance(info.value, aiolease.TransactionError)
    finally:
        await observer.close()
        await conn.close()
