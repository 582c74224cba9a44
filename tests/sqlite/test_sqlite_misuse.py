"""SQLite driver pool: a connection kept after its lease, bad options and paths."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import aiolease
from aiolease import ResourceReleased
from aiolease.sqlite import create_pool


async def test_connection_used_after_its_lease_raises(tmp_path: Path) -> None:
    async with create_pool(tmp_path / "db.sqlite", max_size=1) as pool:
        async with pool.acquire() as kept:
            await kept.execute("CREATE TABLE t (x INTEGER)")
        with pytest.raises(ResourceReleased, match=r"execute"):
            await kept.execute("INSERT INTO t VALUES (1)")
        async with pool.acquire() as conn, conn.execute("SELECT count(*) FROM t") as cur:
            assert await cur.fetchone() == (0,)


async def test_a_lease_backs_up_into_another_lease(tmp_path: Path) -> None:
    # Found by aiosqlite's own test_backup_aiosqlite run on leases: backup() got the
    # target's proxy, which aiosqlite does not know (TypeError from sqlite3).
    async with (
        create_pool(tmp_path / "a.sqlite", max_size=1) as source,
        create_pool(tmp_path / "b.sqlite", max_size=1) as target,
    ):
        async with source.acquire() as src, target.acquire() as dst:
            await src.execute("CREATE TABLE t (x INTEGER)")
            await src.execute("INSERT INTO t VALUES (1)")
            await src.backup(dst)
            async with dst.execute("SELECT x FROM t") as cur:
                assert [tuple(row) for row in await cur.fetchall()] == [(1,)]
        async with source.acquire() as src:
            with pytest.raises(ResourceReleased, match=r"backup"):
                await src.backup(dst)


async def test_a_row_factory_set_on_a_lease_reads_back_as_set(tmp_path: Path) -> None:
    # Found by running the drivers' own suites on leases: a callable attribute read from
    # a lease was a checking wrapper instead of the value set.
    def first(cursor: Any, row: tuple[Any, ...]) -> Any:
        return row[0]

    async with create_pool(tmp_path / "db.sqlite", max_size=1) as pool, pool.acquire() as conn:
        conn.row_factory = first  # type: ignore[assignment]  # aiosqlite types it as a class
        assert conn.row_factory is first
        async with conn.execute("SELECT 7") as cur:
            assert await cur.fetchone() == 7


async def test_pool_atomic_works_with_lease_proxies(tmp_path: Path) -> None:
    async with create_pool(tmp_path / "db.sqlite", max_size=1) as pool:
        async with pool.atomic() as tx:
            await tx.connection.execute("CREATE TABLE t (x INTEGER)")
        async with pool.atomic() as tx:
            await tx.connection.execute("INSERT INTO t VALUES (1)")
        async with pool.acquire() as conn, conn.execute("SELECT count(*) FROM t") as cur:
            assert await cur.fetchone() == (1,)


@pytest.mark.parametrize(
    ("pragmas", "match"),
    [
        ({"busy_timeout": "0; DROP TABLE t"}, "pragma busy_timeout: the value must be"),
        ({"journal_mode": "WAL'"}, "pragma journal_mode"),
        ({"user_version; DROP TABLE t": 1}, "pragma names are identifiers"),
        ({"cache_size": float("nan")}, "pragma cache_size"),
        ({"foreign_keys": True}, "pragma foreign_keys"),
    ],
)
def test_unsafe_pragmas_are_refused_at_the_call(
    tmp_path: Path, pragmas: dict[str, Any], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        create_pool(tmp_path / "db.sqlite", pragmas=pragmas)


def test_plain_pragmas_are_taken(tmp_path: Path) -> None:
    create_pool(tmp_path / "db.sqlite", pragmas={"cache_size": -2000, "journal_mode": "WAL"})


def test_a_path_in_a_missing_directory_fails_at_the_call(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        create_pool(tmp_path / "missing" / "db.sqlite")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_sise": 3}, TypeError, "unexpected keyword argument 'max_sise'"),
        ({"tiemout": 3}, TypeError, "unexpected keyword argument 'tiemout'"),
        ({"backoff_max": -1}, ValueError, "backoff_max must be a finite number of seconds > 0"),
    ],
)
def test_create_pool_checks_every_option_at_the_call(
    tmp_path: Path, kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        create_pool(tmp_path / "db.sqlite", **kwargs)


def test_create_pool_takes_sqlite3_and_pool_options(tmp_path: Path) -> None:
    pool = create_pool(tmp_path / "db.sqlite", timeout=3.0, backoff_base=0.5, backoff_max=1.0)
    assert isinstance(pool, aiolease.Pool)


async def test_abort_stops_the_connection_thread(tmp_path: Path) -> None:
    from aiolease.sqlite import SqliteManager

    manager = SqliteManager(tmp_path / "db.sqlite")
    conn = await manager.create()
    manager.abort(conn)  # what the pool calls when a close outlasts close_timeout
    conn._thread.join(timeout=5.0)  # white-box: the worker
    assert not conn._thread.is_alive()


async def test_close_after_abort_returns_once_the_thread_stopped(tmp_path: Path) -> None:
    from aiolease.sqlite import SqliteManager

    manager = SqliteManager(tmp_path / "db.sqlite")
    conn = await manager.create()
    manager.abort(conn)  # what the pool calls first for a connection discarded as broken
    async with asyncio.timeout(5):
        await manager.close(conn)
    conn._thread.join(timeout=5.0)  # white-box: the worker
    assert not conn._thread.is_alive()
    closed = await manager.create()
    await manager.close(closed)
    manager.abort(closed)  # closed already: nothing to stop
    async with asyncio.timeout(5):
        await manager.close(closed)


async def test_unclosed_driver_pool_warning_names_the_users_line(tmp_path: Path) -> None:
    import gc
    import sys
    import warnings

    pool = create_pool(tmp_path / "db.sqlite", max_size=1)
    line = sys._getframe().f_lineno - 1
    await pool.open()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del pool
        gc.collect()
    messages = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert any(f"test_sqlite_misuse.py:{line}" in m for m in messages), messages


async def test_cursors_made_by_a_lease_work_during_it(tmp_path: Path) -> None:
    async with create_pool(tmp_path / "db.sqlite", max_size=1) as pool, pool.acquire() as conn:
        await conn.execute("CREATE TABLE t (x INTEGER)")
        cur = await conn.executemany("INSERT INTO t VALUES (?)", [(1,), (2,), (3,)])
        assert cur.rowcount == 3
        async with conn.execute("SELECT x FROM t ORDER BY x") as cur:
            assert await cur.fetchone() == (1,)
            assert [row async for row in cur] == [(2,), (3,)]
        made = await conn.cursor()
        assert await made.execute("SELECT count(*) FROM t") is made
        assert list(await made.fetchall()) == [(3,)]
        await conn.executescript("DELETE FROM t; INSERT INTO t VALUES (9);")
        assert list(await (await conn.execute("SELECT x FROM t")).fetchall()) == [(9,)]
        assert "CREATE TABLE t (x INTEGER);" in [line async for line in conn.iterdump()]


async def test_cursors_made_by_a_lease_refuse_use_after_it(tmp_path: Path) -> None:
    async with create_pool(tmp_path / "db.sqlite", max_size=1) as pool:
        async with pool.acquire() as kept:
            await kept.execute("CREATE TABLE t (x INTEGER)")
            made = await kept.cursor()
            executed = await kept.execute("SELECT 1")
            pending = kept.execute("INSERT INTO t VALUES (1)")  # made, not awaited
            dump = kept.iterdump()
        with pytest.raises(ResourceReleased, match=r"Cursor\.execute\(\)"):
            await made.execute("INSERT INTO t VALUES (2)")
        with pytest.raises(ResourceReleased, match=r"Cursor\.fetchall\(\)"):
            await executed.fetchall()
        with pytest.raises(ResourceReleased, match=r"Cursor \(async for\)"):
            async for _ in executed:
                pass
        with pytest.raises(ResourceReleased, match=r"\(await\)"):
            await pending
        with pytest.raises(ResourceReleased, match=r"\(async for\)"):
            async for _ in dump:
                pass
        async with pool.acquire() as conn, conn.execute("SELECT count(*) FROM t") as cur:
            assert await cur.fetchone() == (0,)
