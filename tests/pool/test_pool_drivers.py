"""The driver pools (asyncpg, psycopg, sqlite) against the pool contract, through
public names only."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from pool_helpers import vrun

from aiolease import (
    Pool,
    PoolClosed,
)


def test_sqlite_create_pool_returns_unopened_pool(tmp_path: Path) -> None:
    import aiolease.sqlite

    db = tmp_path / "t.db"
    pool = aiolease.sqlite.create_pool(str(db), max_size=2, min_size=1, name="sq")
    assert isinstance(pool, Pool)
    assert not db.exists()  # no I/O before open
    assert pool.statistics().size == 0

    async def main() -> None:
        async with pool, pool.acquire() as conn:
            cur = await conn.execute("SELECT 1")
            assert (await cur.fetchone())[0] == 1  # type: ignore[index]
            await cur.close()

    asyncio.run(main())
    assert db.exists()


def test_sqlite_create_pool_accepts_pathlike_and_open(tmp_path: Path) -> None:
    import aiolease.sqlite

    pool = aiolease.sqlite.create_pool(tmp_path / "p.db", max_size=1)

    async def main() -> None:
        await pool.open()
        r = await pool.acquire()
        await pool.release(r)
        await pool.aclose()

    asyncio.run(main())


def test_asyncpg_and_psycopg_create_pool_unopened_without_io() -> None:
    import aiolease.asyncpg
    import aiolease.psycopg
    import aiolease.sqlite

    # An unroutable DSN: construction must not connect.
    p1 = aiolease.asyncpg.create_pool(
        "postgresql://nobody@192.0.2.1:1/x", min_size=2, max_size=3, reset="transaction"
    )
    p2 = aiolease.asyncpg.create_pool("postgresql://nobody@192.0.2.1:1/x", reset="session")
    p3 = aiolease.psycopg.create_pool("host=192.0.2.1 port=1", min_size=1, max_size=2)
    for p in (p1, p2, p3):
        assert isinstance(p, Pool)
        assert p.statistics().size == 0
    with pytest.raises(ValueError, match="reset"):
        aiolease.asyncpg.create_pool("postgresql://x@192.0.2.1/x", reset="bogus")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="min_size"):
        aiolease.asyncpg.create_pool("postgresql://x@192.0.2.1/x", min_size=-1)
    for create_pool, target in (
        (aiolease.asyncpg.create_pool, "postgresql://x@192.0.2.1/x"),
        (aiolease.psycopg.create_pool, "host=192.0.2.1 port=1"),
        (aiolease.sqlite.create_pool, ":memory:"),
    ):
        with pytest.raises(ValueError, match="name must be encodable as UTF-8"):
            create_pool(target, name="a\ud800")


@pytest.mark.postgres
def test_asyncpg_create_pool_live(pg_dsn: str) -> None:
    import aiolease.asyncpg

    pool = aiolease.asyncpg.create_pool(pg_dsn, max_size=2)

    async def main() -> None:
        async with pool:
            async with pool.acquire() as conn:
                assert await conn.fetchval("SELECT 1") == 1
                await conn.execute("BEGIN")  # left open: reset rolls it back
            async with pool.acquire() as conn:
                assert not conn.is_in_transaction()

    asyncio.run(main())


@pytest.mark.postgres
def test_psycopg_create_pool_live(pg_dsn: str) -> None:
    import aiolease.psycopg

    pool = aiolease.psycopg.create_pool(pg_dsn, max_size=2)

    async def main() -> None:
        async with pool, pool.acquire() as conn:
            cur = await conn.execute("SELECT 1")
            assert (await cur.fetchone()) == (1,)

    asyncio.run(main())


@pytest.mark.parametrize(
    ("module", "driver", "extra"),
    [
        ("aiolease.asyncpg", "asyncpg", "asyncpg"),
        ("aiolease.psycopg", "psycopg", "psycopg"),
        ("aiolease.sqlite", "aiosqlite", "sqlite"),
    ],
)
def test_missing_driver_import_error_names_extra(module: str, driver: str, extra: str) -> None:
    code = textwrap.dedent(
        f"""
        import sys
        sys.modules[{driver!r}] = None  # simulate the driver not being installed
        import aiolease  # the core must not need any driver
        try:
            import {module}
        except ImportError as exc:
            print("MSG:", exc)
        else:
            print("NO ERROR")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert f"aiolease[{extra}]" in proc.stdout, proc.stdout + proc.stderr


def test_import_aiolease_imports_no_driver() -> None:
    code = (
        "import sys, aiolease, aiolease.testing; "
        "print(sorted(m for m in ('asyncpg','psycopg','aiosqlite','redis') if m in sys.modules))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def test_sqlite_pool_under_virtual_time_does_not_time_out_spuriously(tmp_path: Path) -> None:
    """Issue 3: virtual time must not jump while a thread may still answer (aiosqlite)."""
    import aiolease.sqlite

    async def main() -> None:
        pool = aiolease.sqlite.create_pool(str(tmp_path / "vt.db"), max_size=1, acquire_timeout=5)
        loop = asyncio.get_running_loop()
        try:
            async with pool:
                for _ in range(20):  # each iteration opens a fresh connection in its thread
                    conn = await pool.acquire()
                    await pool.release(conn, discard=True)
        finally:
            # Let any aiosqlite thread still connecting finish while the loop is alive.
            await loop.run_in_executor(None, time.sleep, 0.3)

    vrun(main)


def test_sqlite_aclose_during_create_leaves_no_running_connection_thread(tmp_path: Path) -> None:
    # Audit D4. aiosqlite resolves close()'s future from its worker thread just before that
    # thread leaves its loop, so the thread may still be alive for an instant after aclose()
    # returns; what must hold is that it then ends on its own, promptly.
    import threading

    import aiolease.sqlite

    def workers() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if "connection_worker" in t.name and t.is_alive()]

    async def main() -> list[threading.Thread]:
        pool = aiolease.sqlite.create_pool(str(tmp_path / "c.db"), max_size=1)
        await pool.open()
        t = asyncio.ensure_future(pool.acquire())
        await asyncio.sleep(0)
        await asyncio.sleep(0)  # the connect is now running in aiosqlite's thread
        await pool.aclose()  # "returns when every resource is closed"
        left = workers()
        assert pool.statistics().size == 0
        with pytest.raises(PoolClosed):
            await t
        return left

    assert workers() == []
    for thread in asyncio.run(main()):
        thread.join(timeout=1.0)
        assert not thread.is_alive(), "an aiosqlite connection thread outlived aclose() by 1 s"
