"""Driver pools (asyncpg, psycopg): ``configure=``, the hook run once on each new connection."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import asyncpg
import psycopg
import pytest
from psycopg.types.composite import CompositeInfo, register_composite

import aiolease
import aiolease.asyncpg
import aiolease.psycopg
from aiolease._lease import LeaseProxy
from aiolease.asyncpg import Reset
from pg_proxy import sessions

DRIVERS = ["asyncpg", "psycopg"]
RAW = {"asyncpg": asyncpg.Connection, "psycopg": psycopg.AsyncConnection}


def _module(driver: str) -> Any:
    return getattr(aiolease, driver)


def _closed(conn: Any) -> bool:
    return bool(conn.is_closed() if isinstance(conn, asyncpg.Connection) else conn.closed)


async def _one(conn: Any, query: str) -> Any:
    """The first column of the first row, on either driver (a lease or a connection)."""
    if isinstance(conn, asyncpg.Connection) or hasattr(conn, "fetchval"):
        return await conn.fetchval(query)
    cur = await conn.execute(query)
    row = await cur.fetchone()
    return None if row is None else row[0]


async def _backends(pg_dsn: str, tag: str) -> int:
    """How many server sessions have ``application_name`` ``tag`` (ours, by name)."""
    conn = await asyncpg.connect(pg_dsn)
    try:
        for _ in range(100):  # a closed session leaves pg_stat_activity a moment later
            count: int = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", tag
            )
            if count == 0:
                return 0
            await asyncio.sleep(0.05)
        return count
    finally:
        await conn.close()


def _named(driver: str, tag: str) -> dict[str, Any]:
    """Connect keywords giving the pool's sessions the application_name ``tag``."""
    if driver == "asyncpg":
        return {"server_settings": {"application_name": tag}}
    return {"application_name": tag}


@pytest.mark.parametrize("driver", DRIVERS)
async def test_configure_runs_once_per_new_connection_with_the_driver_connection(
    pg_dsn: str, driver: str
) -> None:
    seen: list[Any] = []

    async def configure(conn: Any) -> None:
        assert not isinstance(conn, LeaseProxy)
        assert isinstance(conn, RAW[driver])
        seen.append(conn)

    async with _module(driver).create_pool(
        pg_dsn, min_size=2, max_size=3, configure=configure
    ) as pool:
        assert len(seen) == 2  # the prefill's, before open() returned

        async def use() -> None:
            async with pool.acquire() as conn:
                assert await _one(conn, "SELECT 1") == 1
                await asyncio.sleep(0.05)

        for _ in range(3):
            await asyncio.gather(*(use() for _ in range(3)))
        assert len(seen) == 3 == len({id(c) for c in seen})
    assert all(_closed(c) for c in seen)


@pytest.mark.parametrize("reset", ["transaction", "session"])
async def test_asyncpg_jsonb_codec_set_in_configure_works_through_leases(
    pg_dsn: str, reset: Reset
) -> None:
    async def configure(conn: asyncpg.Connection) -> None:
        await conn.set_type_codec(
            "jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
        )

    async with aiolease.asyncpg.create_pool(
        pg_dsn, max_size=1, reset=reset, configure=configure
    ) as pool:
        for n in range(3):  # the same connection, after each release's reset
            async with pool.acquire() as conn:
                assert await conn.fetchval("SELECT $1::jsonb", {"n": n}) == {"n": n}
                assert await conn.fetchval("""SELECT '{"a": [1, 2]}'::jsonb""") == {"a": [1, 2]}
        assert pool.statistics().created == 1


async def test_asyncpg_session_reset_undoes_a_set_in_configure_not_server_settings(
    pg_dsn: str,
) -> None:
    async def configure(conn: asyncpg.Connection) -> None:
        await conn.execute("SET statement_timeout = '4321ms'")

    modes: list[tuple[Reset, str]] = [("transaction", "4321ms"), ("session", "1234ms")]
    for reset, after in modes:
        async with aiolease.asyncpg.create_pool(
            pg_dsn,
            max_size=1,
            reset=reset,
            configure=configure,
            server_settings={"statement_timeout": "1234ms"},
        ) as pool:
            async with pool.acquire() as conn:
                assert await conn.fetchval("SHOW statement_timeout") == "4321ms"
            async with pool.acquire() as conn:  # RESET ALL: back to server_settings
                assert await conn.fetchval("SHOW statement_timeout") == after


async def test_psycopg_set_in_configure_is_kept_across_leases(pg_dsn: str) -> None:
    async def configure(conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.execute("SET statement_timeout = '4321ms'")

    async with aiolease.psycopg.create_pool(pg_dsn, max_size=1, configure=configure) as pool:
        with pytest.raises(psycopg.errors.DivisionByZero):
            async with pool.acquire() as conn:  # a lease that failed: its reset resyncs
                await conn.execute("SELECT 1 / 0")
        async with pool.acquire() as conn:
            assert await _one(conn, "SHOW statement_timeout") == "4321ms"
        assert pool.statistics().created == 1


async def test_psycopg_type_registered_in_configure_works_through_leases(pg_dsn: str) -> None:
    name = f"cfg_point_{uuid.uuid4().hex[:8]}"
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as admin:
        await admin.execute(f"CREATE TYPE {name} AS (x int, y int)")
    try:

        async def configure(conn: psycopg.AsyncConnection[Any]) -> None:
            info = await CompositeInfo.fetch(conn, name)  # refuses a lease: not a connection
            assert info is not None
            register_composite(info, conn)

        async with aiolease.psycopg.create_pool(pg_dsn, max_size=1, configure=configure) as pool:
            for _ in range(2):
                async with pool.acquire() as conn:
                    point = await _one(conn, f"SELECT (1, 2)::{name}")
                    assert (point.x, point.y) == (1, 2)
                    assert type(point).__name__ == name
            with pytest.raises(psycopg.errors.DivisionByZero):
                async with pool.acquire() as conn:  # a lease that failed: its reset resyncs
                    await conn.execute("SELECT 1 / 0")
            async with pool.acquire() as conn:
                point = await _one(conn, f"SELECT (3, 4)::{name}")
                assert (point.x, point.y) == (3, 4)
            assert pool.statistics().created == 1
    finally:
        async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as admin:
            await admin.execute(f"DROP TYPE IF EXISTS {name}")


async def test_psycopg_settings_left_by_configure_are_what_the_reset_restores(
    pg_dsn: str,
) -> None:
    from psycopg.rows import dict_row

    async def configure(conn: psycopg.AsyncConnection[Any]) -> None:
        conn.row_factory = dict_row

    async with aiolease.psycopg.create_pool(pg_dsn, max_size=1, configure=configure) as pool:
        async with pool.acquire() as conn:
            cur = await conn.execute("SELECT 1 AS one")
            assert await cur.fetchone() == {"one": 1}
            conn.row_factory = psycopg.rows.tuple_row  # a holder's change...
        async with pool.acquire() as conn:  # ...set back to what configure left
            cur = await conn.execute("SELECT 1 AS one")
            assert await cur.fetchone() == {"one": 1}


@pytest.mark.parametrize("driver", DRIVERS)
async def test_configure_failure_fails_the_acquire_closes_and_a_later_acquire_retries(
    pg_dsn: str, driver: str
) -> None:
    tag = f"cfg_fail_{uuid.uuid4().hex[:8]}"
    made: list[Any] = []

    async def configure(conn: Any) -> None:
        made.append(conn)
        if len(made) == 1:
            raise LookupError("no such type: vector")

    async with _module(driver).create_pool(
        pg_dsn, max_size=2, backoff_base=0.01, configure=configure, **_named(driver, tag)
    ) as pool:
        with pytest.raises(LookupError, match="no such type"):
            async with pool.acquire():
                pass
        assert _closed(made[0])
        assert pool.statistics().size == 0
        assert await _backends(pg_dsn, tag) == 0  # the server session is gone too
        async with pool.acquire(timeout=10) as conn:  # the next attempt (after the backoff)
            assert await _one(conn, "SELECT 1") == 1
        assert len(made) == 2
        assert pool.statistics().create_errors == 1


@pytest.mark.parametrize("driver", DRIVERS)
async def test_configure_failure_at_open_fails_the_open_and_leaks_nothing(
    pg_dsn: str, driver: str
) -> None:
    tag = f"cfg_open_{uuid.uuid4().hex[:8]}"
    made: list[Any] = []

    async def configure(conn: Any) -> None:
        made.append(conn)
        raise ValueError("bad configure")

    pool = _module(driver).create_pool(
        pg_dsn, min_size=2, max_size=2, configure=configure, **_named(driver, tag)
    )
    with pytest.raises(ValueError, match="bad configure"):
        await pool.open()
    await pool.aclose()
    assert made
    assert all(_closed(c) for c in made)
    assert await _backends(pg_dsn, tag) == 0


@pytest.mark.parametrize("driver", DRIVERS)
async def test_configure_that_hangs_is_bounded_by_configure_timeout(
    pg_dsn: str, driver: str
) -> None:
    tag = f"cfg_hang_{uuid.uuid4().hex[:8]}"
    made: list[Any] = []

    async def configure(conn: Any) -> None:
        made.append(conn)
        await _one(conn, "SELECT pg_sleep(3600)")  # a query that never ends, in practice

    async with _module(driver).create_pool(
        pg_dsn, max_size=1, configure=configure, configure_timeout=0.3, **_named(driver, tag)
    ) as pool:
        with pytest.raises(TimeoutError, match=r"configure_timeout=0\.3 s"):
            async with pool.acquire(timeout=30):
                pass
        assert _closed(made[0])
        assert pool.statistics().size == 0
    assert await _backends(pg_dsn, tag) == 0


@pytest.mark.parametrize("driver", DRIVERS)
async def test_configure_own_timeout_error_goes_through_unchanged(pg_dsn: str, driver: str) -> None:
    async def configure(conn: Any) -> None:
        raise TimeoutError("my own")

    async with _module(driver).create_pool(pg_dsn, max_size=1, configure=configure) as pool:
        with pytest.raises(TimeoutError, match=r"^my own$"):
            async with pool.acquire():
                pass


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("waits_in", ["sleep", "query"])
async def test_creation_cancelled_during_configure_closes_the_connection(
    pg_dsn: str, driver: str, waits_in: str
) -> None:
    tag = f"cfg_cancel_{uuid.uuid4().hex[:8]}"
    made: list[Any] = []
    entered = asyncio.Event()

    async def configure(conn: Any) -> None:
        made.append(conn)
        entered.set()
        if waits_in == "sleep":
            await asyncio.sleep(3600)
        else:  # the server's session must not run it on after the close
            await _one(conn, "SELECT pg_sleep(3600)")

    pool = _module(driver).create_pool(
        pg_dsn, max_size=1, configure=configure, **_named(driver, tag)
    )
    await pool.open()
    waiter = asyncio.ensure_future(pool.acquire(timeout=60).__aenter__())
    await asyncio.wait_for(entered.wait(), 30)
    await pool.aclose()  # cancels the creation, in configure
    with pytest.raises(aiolease.PoolClosed):
        await waiter
    assert _closed(made[0])
    # (a psycopg query whose cancel request overtook it once ran on here: see
    # test_psycopg_cancel_dropped.py)
    assert await _backends(pg_dsn, tag) == 0, await sessions(pg_dsn, tag)


@pytest.mark.parametrize("driver", DRIVERS)
async def test_configure_that_leaves_a_transaction_open_fails_the_creation(
    pg_dsn: str, driver: str
) -> None:
    made: list[Any] = []

    async def configure(conn: Any) -> None:
        made.append(conn)
        await conn.execute("BEGIN")

    async with _module(driver).create_pool(pg_dsn, max_size=1, configure=configure) as pool:
        with pytest.raises(RuntimeError, match=r"left .*transaction|not IDLE"):
            async with pool.acquire():
                pass
        assert _closed(made[0])


@pytest.mark.parametrize("driver", DRIVERS)
async def test_configure_that_closes_the_connection_fails_the_creation(
    pg_dsn: str, driver: str
) -> None:
    async def configure(conn: Any) -> None:
        await conn.close()

    async with _module(driver).create_pool(pg_dsn, max_size=1, configure=configure) as pool:
        with pytest.raises(ConnectionError, match="closed the new connection"):
            async with pool.acquire():
                pass


def _sync_configure(conn: Any) -> None:
    pass


class _AsyncCallable:
    async def __call__(self, conn: Any) -> None:
        pass


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize(
    ("configure", "match"),
    [
        (42, "configure must be an async function.*got int 42"),
        (_sync_configure, "must be an async function.*_sync_configure"),
        (lambda conn: conn.execute("SELECT 1"), "must be an async function"),
    ],
)
def test_a_bad_configure_raises_type_error_at_create_pool(
    pg_dsn: str, driver: str, configure: Any, match: str
) -> None:
    with pytest.raises(TypeError, match=match):
        _module(driver).create_pool(pg_dsn, configure=configure)


@pytest.mark.parametrize("driver", DRIVERS)
async def test_an_async_callable_object_is_a_configure(pg_dsn: str, driver: str) -> None:
    async with _module(driver).create_pool(pg_dsn, min_size=1, configure=_AsyncCallable()) as pool:
        assert pool.statistics().size == 1


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_bad_configure_timeout_is_refused(pg_dsn: str, driver: str) -> None:
    with pytest.raises(ValueError, match="configure_timeout"):
        _module(driver).create_pool(pg_dsn, configure_timeout=-1)


async def test_psycopg_configure_without_autocommit_must_end_its_transaction(
    pg_dsn: str,
) -> None:
    async def leaves_it(conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.execute("SELECT 1")  # opens a transaction (autocommit=False)

    async def ends_it(conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.execute("SELECT 1")
        await conn.commit()

    async with aiolease.psycopg.create_pool(
        pg_dsn, max_size=1, autocommit=False, configure=leaves_it
    ) as pool:
        with pytest.raises(RuntimeError, match=r"state INTRANS, not IDLE"):
            async with pool.acquire():
                pass
    async with (
        aiolease.psycopg.create_pool(
            pg_dsn, max_size=1, autocommit=False, configure=ends_it
        ) as pool,
        pool.acquire() as conn,
    ):
        assert await _one(conn, "SELECT 2") == 2
