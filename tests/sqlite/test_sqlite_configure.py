"""aiolease.sqlite.create_pool(configure=...): the hook run once on each new connection."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import aiosqlite
import pytest

from aiolease import PoolClosed
from aiolease._lease import LeaseProxy
from aiolease.sqlite import SqliteManager, create_pool

# A statement that never ends on its own (counts forever); only interrupt() stops it.
FOREVER = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "test.db"


def _closed(conn: aiosqlite.Connection) -> bool:
    try:
        conn.in_transaction  # noqa: B018 - raises ValueError once closed
    except ValueError:
        return True
    return False


async def _scalar(conn: Any, sql: str) -> Any:
    async with conn.execute(sql) as cur:
        row = await cur.fetchone()
    assert row is not None
    return row[0]


async def _threads_end(idents: set[int]) -> bool:
    for _ in range(500):
        if not idents & {t.ident for t in threading.enumerate()}:
            return True
        await asyncio.sleep(0.01)
    return False


async def test_configure_runs_once_per_new_connection_and_its_setup_survives_resets(
    db: Path,
) -> None:
    seen: list[aiosqlite.Connection] = []

    async def configure(conn: aiosqlite.Connection) -> None:
        assert not isinstance(conn, LeaseProxy)
        assert isinstance(conn, aiosqlite.Connection)
        seen.append(conn)
        await conn.create_function("double", 1, lambda x: 2 * x, deterministic=True)
        await conn.execute("PRAGMA cache_size = -4321")
        conn.row_factory = aiosqlite.Row

    async with create_pool(db, min_size=2, max_size=3, configure=configure) as pool:
        assert len(seen) == 2

        async def use(n: int) -> None:
            async with pool.acquire() as conn:
                assert await _scalar(conn, f"SELECT double({n})") == 2 * n
                assert await _scalar(conn, "PRAGMA cache_size") == -4321
                async with conn.execute("SELECT 1 AS one") as cur:
                    row = await cur.fetchone()
                assert row is not None
                assert row["one"] == 1
                conn.row_factory = None  # a holder's change: set back at release
                await conn.execute("BEGIN")  # left open: rolled back at release
                await asyncio.sleep(0.02)

        for _ in range(3):
            await asyncio.gather(*(use(n) for n in range(3)))
        assert len(seen) == 3 == len({id(c) for c in seen})
    assert all(_closed(c) for c in seen)


async def test_configure_failure_fails_the_acquire_closes_and_a_later_acquire_retries(
    db: Path,
) -> None:
    made: list[aiosqlite.Connection] = []
    idents: set[int] = set()

    async def configure(conn: aiosqlite.Connection) -> None:
        made.append(conn)
        await conn.create_function("thread_id", 0, threading.get_ident)
        idents.add(await _scalar(conn, "SELECT thread_id()"))
        if len(made) == 1:
            raise LookupError("no such extension")

    async with create_pool(db, max_size=2, backoff_base=0.01, configure=configure) as pool:
        with pytest.raises(LookupError, match="no such extension"):
            async with pool.acquire():
                pass
        assert _closed(made[0])
        assert pool.statistics().size == 0
        async with pool.acquire(timeout=10) as conn:
            assert await _scalar(conn, "SELECT 1") == 1
        assert len(made) == 2
        assert pool.statistics().create_errors == 1
    assert await _threads_end(idents)


@pytest.mark.parametrize("waits_in", ["sleep", "statement"])
async def test_configure_that_hangs_is_bounded_by_configure_timeout(
    db: Path, waits_in: str
) -> None:
    made: list[aiosqlite.Connection] = []

    async def configure(conn: aiosqlite.Connection) -> None:
        made.append(conn)
        if waits_in == "sleep":
            await asyncio.sleep(3600)
        else:  # in the connection's thread: interrupted by the close
            await _scalar(conn, FOREVER)

    async with create_pool(db, max_size=1, configure=configure, configure_timeout=0.3) as pool:
        with pytest.raises(TimeoutError, match=r"configure_timeout=0\.3 s"):
            async with pool.acquire(timeout=30):
                pass
        assert _closed(made[0])
        assert pool.statistics().size == 0


@pytest.mark.parametrize("waits_in", ["sleep", "statement"])
async def test_creation_cancelled_during_configure_closes_the_connection(
    db: Path, waits_in: str
) -> None:
    made: list[aiosqlite.Connection] = []
    entered = asyncio.Event()

    async def configure(conn: aiosqlite.Connection) -> None:
        made.append(conn)
        entered.set()
        if waits_in == "sleep":
            await asyncio.sleep(3600)
        else:
            await _scalar(conn, FOREVER)

    pool = create_pool(db, max_size=1, configure=configure)
    await pool.open()
    waiter = asyncio.ensure_future(pool.acquire(timeout=60).__aenter__())
    await asyncio.wait_for(entered.wait(), 30)
    await pool.aclose()  # cancels the creation, in configure
    with pytest.raises(PoolClosed):
        await waiter
    assert _closed(made[0])


async def test_configure_that_leaves_a_transaction_open_fails_the_creation(db: Path) -> None:
    made: list[aiosqlite.Connection] = []

    async def configure(conn: aiosqlite.Connection) -> None:
        made.append(conn)
        await conn.execute("BEGIN")

    async with create_pool(db, max_size=1, configure=configure) as pool:
        with pytest.raises(RuntimeError, match="left a transaction open"):
            async with pool.acquire():
                pass
        assert _closed(made[0])


async def test_configure_that_closes_the_connection_fails_the_creation(db: Path) -> None:
    async def configure(conn: aiosqlite.Connection) -> None:
        await conn.close()

    async with create_pool(db, max_size=1, configure=configure) as pool:
        with pytest.raises(ConnectionError, match="closed the new connection"):
            async with pool.acquire():
                pass


def _sync_configure(conn: Any) -> None:
    pass


@pytest.mark.parametrize(
    ("configure", "match"),
    [
        ("PRAGMA x", "configure must be an async function.*got str"),
        (_sync_configure, "must be an async function.*_sync_configure"),
    ],
)
def test_a_bad_configure_raises_type_error_at_create_pool(
    db: Path, configure: Any, match: str
) -> None:
    with pytest.raises(TypeError, match=match):
        create_pool(db, configure=configure)
    with pytest.raises(ValueError, match="configure_timeout"):
        create_pool(db, configure_timeout=0)


async def test_a_cancellation_while_a_failed_configure_is_cleaned_up_is_not_lost(db: Path) -> None:
    # The task creating the connection is cancelled as configure fails: the cancellation
    # lands in the close of the new connection, which goes on to its end; the task then ends
    # with the CancelledError, not with configure's error as if it had not been cancelled.
    made: list[aiosqlite.Connection] = []

    async def configure(conn: aiosqlite.Connection) -> None:
        made.append(conn)
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        raise ValueError("configure failed")

    manager = SqliteManager(str(db), configure=configure)
    task = asyncio.create_task(manager.create())
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _closed(made[0])
