"""What a holder changes on its aiosqlite connection object, the next holder does not inherit.

The pool opens connections in autocommit mode (``isolation_level=None``). A holder that
set ``isolation_level = "DEFERRED"`` would have the next holder's INSERT open an implicit
transaction, which that holder's release then rolls back: a write lost without an error.
The release sets the connection object back as it was opened.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from aiolease.sqlite import create_pool

pytestmark = pytest.mark.timeout(60)

# A setting a holder changes, and the value it sets.
CHANGES: dict[str, Any] = {
    "isolation_level": "DEFERRED",
    "row_factory": sqlite3.Row,
    "text_factory": bytes,
}


def origin(conn: Any) -> Any:
    return getattr(conn, "_aiolease_origin", conn)


@pytest.mark.parametrize("leave_open", [False, True], ids=["idle", "transaction-left-open"])
@pytest.mark.parametrize("check_same_thread", [False, True])
@pytest.mark.parametrize("name", sorted(CHANGES))
async def test_the_next_holder_gets_the_connection_as_opened(
    tmp_path: Path, name: str, check_same_thread: bool, leave_open: bool
) -> None:
    async with create_pool(
        tmp_path / "db.sqlite", max_size=1, check_same_thread=check_same_thread
    ) as pool:
        async with pool.acquire() as conn:
            kept = origin(conn)
            await conn.execute("CREATE TABLE t (x TEXT)")
            opened = (conn.isolation_level, conn.row_factory, conn.text_factory)
        assert opened == (None, None, str)
        async with pool.acquire() as conn:
            setattr(conn, name, CHANGES[name])
            if leave_open:
                await conn.execute("BEGIN")
                await conn.execute("INSERT INTO t VALUES ('rolled back')")
        # sqlite3 lets only the connection's own thread set isolation_level back to
        # None: with check_same_thread=True that connection is discarded instead.
        discarded = check_same_thread and name == "isolation_level"
        async with pool.acquire() as conn:
            assert (origin(conn) is kept) is not discarded
            assert (conn.isolation_level, conn.row_factory, conn.text_factory) == opened
            await conn.execute("INSERT INTO t VALUES ('kept')")  # autocommit: no commit
        async with pool.acquire() as conn, conn.execute("SELECT x FROM t") as cur:
            rows: list[Any] = list(await cur.fetchall())
            assert [tuple(row) for row in rows] == [("kept",)]
            assert type(rows[0]) is tuple
            assert type(rows[0][0]) is str
        assert pool.statistics().discarded == discarded


async def test_settings_given_to_the_pool_are_the_ones_restored(tmp_path: Path) -> None:
    async with create_pool(tmp_path / "db.sqlite", max_size=1, isolation_level="IMMEDIATE") as pool:
        async with pool.acquire() as conn:
            conn.isolation_level = None
        async with pool.acquire() as conn:
            assert conn.isolation_level == "IMMEDIATE"
