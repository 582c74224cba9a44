"""A holder that changes its psycopg connection's autocommit mode leaves it as it found it.

The pool's connections are in the mode it opened them with (autocommit by default): a
holder that turned autocommit off would have the next holder's writes run in an implicit
transaction that the release rolls back, so the reset restores the mode (no round trip).
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from aiolease.psycopg import create_pool

pytestmark = pytest.mark.timeout(60)


def raw(conn: Any) -> Any:
    return getattr(conn, "_aiolease_origin", conn)


@pytest.mark.parametrize("configured", [True, False])
async def test_the_next_holder_gets_the_pools_autocommit_mode(
    pg_dsn: str, configured: bool
) -> None:
    table = f"aiolease_ac_{uuid.uuid4().hex[:12]}"
    async with create_pool(pg_dsn, max_size=1, autocommit=configured) as pool:
        async with pool.acquire() as conn:
            pid = raw(conn).info.backend_pid
            await conn.execute(f"CREATE TABLE {table} (v int)")
            if not configured:
                await conn.commit()
        try:
            async with pool.acquire() as conn:
                await conn.set_autocommit(not configured)
            async with pool.acquire() as conn:
                assert raw(conn).info.backend_pid == pid  # kept, not discarded
                assert conn.autocommit is configured
                await conn.execute(f"INSERT INTO {table} VALUES (1)")
                if not configured:
                    await conn.commit()
            async with pool.acquire() as conn:
                cur = await conn.execute(f"SELECT count(*) FROM {table}")
                assert await cur.fetchone() == (1,)
                if not configured:
                    await conn.rollback()
            assert pool.statistics().discarded == 0
        finally:
            async with pool.acquire() as conn:
                await conn.execute(f"DROP TABLE IF EXISTS {table}")
                if not configured:
                    await conn.commit()
