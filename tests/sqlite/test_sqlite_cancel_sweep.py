"""pool.atomic() on SQLite (read-write with a nested savepoint and a commit hook, and
read-only), cancelled after each number of event-loop steps, with and without COMMIT on
the loop: the cancellation is never swallowed, the work is all or nothing, and the
connection goes back outside any transaction, writable, and not armed to BEGIN.
"""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path
from typing import Any

import pytest

import aiolease
from aiolease._compat.aiosqlite import _LOOP
from aiolease._transaction import _open
from aiolease.sqlite import create_pool
from cancelling import cancel_after_steps

pytestmark = pytest.mark.timeout(300)


def raw(conn: Any) -> Any:
    return getattr(conn, "_aiolease_origin", conn)


def armed(conn: Any) -> bool:
    """Whether the connection's next operation would send BEGIN first (the fenced path)."""
    state = vars(conn)
    loop = state.get(_LOOP)
    if loop is not None:
        return loop.begin_fn is not None
    return "_execute" in state


async def hook(hooked: list[str]) -> None:
    await asyncio.sleep(0)
    hooked.append("commit")


async def body(pool: Any, hooked: list[str], readonly: bool) -> None:
    if readonly:
        async with pool.atomic(readonly=True) as tx:
            async with tx.connection.execute("SELECT count(*) FROM t") as cur:
                await cur.fetchone()
            tx.on_commit(functools.partial(hook, hooked))
        return
    async with pool.atomic() as tx:
        await tx.connection.execute("INSERT INTO t VALUES (1)")
        async with aiolease.atomic(tx.connection):
            await tx.connection.execute("INSERT INTO t VALUES (2)")
        tx.on_commit(functools.partial(hook, hooked))


@pytest.mark.parametrize("readonly", [False, True], ids=["read-write", "read-only"])
@pytest.mark.parametrize("commit_on_loop", [False, True])
async def test_sqlite_pool_atomic_cancelled_at_each_step(
    tmp_path: Path, readonly: bool, commit_on_loop: bool
) -> None:
    async with create_pool(
        tmp_path / "db.sqlite", max_size=1, commit_on_loop=commit_on_loop
    ) as pool:
        async with pool.acquire() as conn:
            await conn.execute("CREATE TABLE t (v int)")
        outcomes: list[str] = []
        for k in range(5000):  # until the block ends before the cancellation
            hooked: list[str] = []
            cancelled, outcome = await cancel_after_steps(body(pool, hooked, readonly), k)
            if not cancelled:
                assert outcome is None, (k, outcome)
            outcomes.append("cancelled" if cancelled else "ok")
            for _ in range(200):
                if not pool._tasks:
                    break
                await asyncio.sleep(0.005)
            async with pool.acquire() as conn:
                assert not raw(conn).in_transaction, k
                assert id(raw(conn)) not in _open, k
                assert not armed(raw(conn)), k
                async with conn.execute("PRAGMA query_only") as cur:
                    assert await cur.fetchone() == (0,), k
                async with conn.execute("SELECT count(*) FROM t") as cur:
                    row = await cur.fetchone()
                assert row is not None
                assert row[0] in (0, 2), (k, row)
                if not cancelled and not readonly:
                    assert row[0] == 2, k
                if not cancelled:
                    assert hooked == ["commit"], k
                await conn.execute("DELETE FROM t")
                assert not raw(conn).in_transaction, k
            assert pool.statistics().in_use == 0
            if not cancelled:
                break
        assert outcomes[-1] == "ok"


async def test_a_read_only_block_on_a_bare_connection_cancelled_at_each_step(
    tmp_path: Path,
) -> None:
    """Without a pool to discard the connection after a cancelled COMMIT, a read-only block
    cancelled at any step still leaves it writable (``PRAGMA query_only`` back to 0)."""
    import aiosqlite

    async with aiosqlite.connect(tmp_path / "db.sqlite") as conn:
        await conn.execute("CREATE TABLE t (v int)")
        await conn.commit()

        async def read() -> None:
            async with (
                aiolease.atomic(conn, readonly=True),
                conn.execute("SELECT count(*) FROM t") as cur,
            ):
                await cur.fetchone()

        for k in range(5000):  # until the block ends before the cancellation
            cancelled, _ = await cancel_after_steps(read(), k)
            async with conn.execute("PRAGMA query_only") as cur:
                assert await cur.fetchone() == (0,), k
            assert not conn.in_transaction, k
            if not cancelled:
                break
