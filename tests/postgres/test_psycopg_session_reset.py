"""What a holder changes on its psycopg connection object, the next holder does not inherit.

The pool's connections are in the mode it opened them with (autocommit by default): a
holder that turned autocommit off would have the next holder's writes run in an implicit
transaction that the release rolls back, so the reset restores the mode (no round trip).
The same for the transaction characteristics (isolation level, read only, deferrable:
the next holder's transactions would run SERIALIZABLE or READ ONLY) and the factories.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

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


async def _observe(conn: Any) -> Any:
    """What the next holder's transaction runs with: its isolation, read-only and
    deferrable characteristics, as the server reports them, and the row type."""
    async with conn.transaction():
        cur = await conn.execute(
            "SELECT current_setting('transaction_isolation'),"
            " current_setting('transaction_read_only'),"
            " current_setting('transaction_deferrable')"
        )
        row = await cur.fetchone()
    return (type(row).__name__, *(row.values() if isinstance(row, dict) else row))


async def _serializable(conn: Any) -> None:
    await conn.set_isolation_level(psycopg.IsolationLevel.SERIALIZABLE)


async def _read_only(conn: Any) -> None:
    await conn.set_read_only(True)


async def _deferrable(conn: Any) -> None:
    await _serializable(conn)
    await _read_only(conn)
    await conn.set_deferrable(True)


async def _dict_rows(conn: Any) -> None:
    conn.row_factory = dict_row


async def _client_cursors(conn: Any) -> None:
    conn.cursor_factory = psycopg.AsyncClientCursor


async def _prepare_at_once(conn: Any) -> None:
    conn.prepare_threshold = 0


# What a holder changes on the connection object.
CHANGES: dict[str, Callable[[Any], Awaitable[None]]] = {
    "isolation_level": _serializable,
    "read_only": _read_only,
    "deferrable": _deferrable,
    "row_factory": _dict_rows,
    "cursor_factory": _client_cursors,
    "prepare_threshold": _prepare_at_once,
}


@pytest.mark.parametrize("leave_open", [False, True], ids=["idle", "transaction-left-open"])
@pytest.mark.parametrize("name", sorted(CHANGES))
async def test_the_next_holder_gets_the_connection_as_opened(
    pg_dsn: str, name: str, leave_open: bool
) -> None:
    apply, observe = CHANGES[name], _observe
    async with create_pool(pg_dsn, max_size=1) as pool:
        async with pool.acquire() as conn:
            pid = raw(conn).info.backend_pid
            before = await observe(conn)
            opened = (raw(conn).cursor_factory, raw(conn).prepare_threshold)
        assert before == ("tuple", "read committed", "off", "off")
        async with pool.acquire() as conn:
            await apply(conn)
            assert await observe(conn) != before or name in ("cursor_factory", "prepare_threshold")
            if leave_open:
                await conn.set_autocommit(False)
                await conn.execute("SELECT 1")  # an implicit transaction, left open
        async with pool.acquire() as conn:
            assert raw(conn).info.backend_pid == pid  # kept, not discarded
            assert await observe(conn) == before
            assert (raw(conn).cursor_factory, raw(conn).prepare_threshold) == opened
            assert conn.autocommit is True
        assert pool.statistics().discarded == 0


async def test_a_row_factory_given_to_the_pool_is_the_one_restored(pg_dsn: str) -> None:
    async with create_pool(pg_dsn, max_size=1, row_factory=dict_row) as pool:
        async with pool.acquire() as conn:
            conn.row_factory = psycopg.rows.tuple_row
            cur = await conn.execute("SELECT 1 AS one")
            assert await cur.fetchone() == (1,)
        async with pool.acquire() as conn:
            cur = await conn.execute("SELECT 1 AS one")
            assert await cur.fetchone() == {"one": 1}
