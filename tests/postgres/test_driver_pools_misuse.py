"""Driver pools (asyncpg, psycopg): a connection kept after its lease, and bad options."""

from __future__ import annotations

from typing import Any

import pytest

import aiolease
import aiolease.asyncpg
import aiolease.psycopg
from aiolease import ResourceReleased


async def test_asyncpg_connection_used_after_its_lease_raises_and_never_runs(
    pg_dsn: str,
) -> None:
    async with aiolease.asyncpg.create_pool(pg_dsn, max_size=1) as pool:
        async with pool.acquire() as kept:
            fetchval = kept.fetchval  # a bound method taken during the lease
            assert await fetchval("SELECT 1") == 1
        async with pool.acquire() as current:  # the same connection, another holder
            await current.execute("SET application_name = 'holder2'")
            with pytest.raises(ResourceReleased, match=r"execute"):
                await kept.execute("SET application_name = 'intruder'")
            with pytest.raises(ResourceReleased, match=r"fetchval\(\)"):
                await fetchval("SELECT 2")
            with pytest.raises(ResourceReleased, match=r"is_closed\(\)"):
                kept.is_closed()
            # The next holder's session was not touched.
            assert await current.fetchval("SHOW application_name") == "holder2"


async def test_psycopg_connection_used_after_its_lease_raises(pg_dsn: str) -> None:
    async with aiolease.psycopg.create_pool(pg_dsn, max_size=1) as pool:
        async with pool.acquire() as kept:
            await kept.execute("SELECT 1")
        async with pool.acquire() as current:
            with pytest.raises(ResourceReleased, match=r"execute"):
                await kept.execute("SET application_name = 'intruder'")
            cur = await current.execute("SHOW application_name")
            assert await cur.fetchone() != ("intruder",)


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_pool_atomic_works_with_lease_proxies(pg_dsn: str, driver: str) -> None:
    module: Any = getattr(aiolease, driver)
    async with module.create_pool(pg_dsn, max_size=1) as pool:
        async with pool.atomic() as tx:
            assert tx.connection is not None
            async with aiolease.atomic(tx.connection) as inner:  # nested on the same lease
                assert not inner.is_outermost
        async with pool.acquire() as conn, aiolease.atomic(conn) as tx2:
            assert tx2.connection is conn  # what was passed in


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_sise": 3}, TypeError, "unexpected keyword argument 'max_sise'"),
        ({"min_size": -1}, ValueError, "min_size must be an int >= 0"),
        ({"max_size": 0}, ValueError, "max_size must be an int >= 1"),
        ({"acquire_timeout": float("nan")}, ValueError, "acquire_timeout"),
        ({"backoff_base": 0}, ValueError, "backoff_base must be a finite number of seconds > 0"),
        (
            {"backoff_max": "1"},
            TypeError,
            "backoff_max must be a finite number of seconds > 0, got str",
        ),
        (
            {"reset_timeout": float("nan")},
            ValueError,
            "reset_timeout must be a finite number of seconds > 0",
        ),
        # An int beyond any float: a ValueError, not the OverflowError it was.
        (
            {"reset_timeout": 10**400},
            ValueError,
            "reset_timeout must be a finite number of seconds > 0, got 1000",
        ),
        (
            {"connect_timeout": -(10**400)},
            ValueError,
            "connect_timeout must be a finite number of seconds > 0, got -1000",
        ),
        (
            {"connect_timeout": True},
            TypeError,
            "connect_timeout must be a finite number of seconds > 0, got bool True",
        ),
    ],
)
def test_create_pool_checks_every_option_at_the_call(
    driver: str, kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    module: Any = getattr(aiolease, driver)
    with pytest.raises(error, match=match):
        module.create_pool("postgresql://127.0.0.1:1/nowhere", **kwargs)


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
def test_create_pool_takes_the_backoff_options(driver: str) -> None:
    module: Any = getattr(aiolease, driver)
    pool = module.create_pool("postgresql://127.0.0.1:1/nowhere", backoff_base=0.5, backoff_max=2)
    assert pool.statistics().size == 0


def test_asyncpg_close_timeout_inf_is_refused() -> None:
    with pytest.raises(ValueError, match="close_timeout must be a finite number of seconds > 0"):
        aiolease.asyncpg.create_pool("postgresql://127.0.0.1:1/x", close_timeout=float("inf"))


def test_psycopg_unknown_connection_parameter_is_a_type_error_at_the_call() -> None:
    with pytest.raises(TypeError, match="'sslmod'"):
        aiolease.psycopg.create_pool("", sslmod="disable")
    aiolease.psycopg.create_pool("", sslmode="disable", connect_timeout=3)  # libpq's own


async def test_psycopg_abort_cuts_the_connection(pg_dsn: str) -> None:
    manager = aiolease.psycopg.PsycopgManager(pg_dsn)
    conn = await manager.create()
    manager.abort(conn)  # what the pool calls when a close outlasts close_timeout
    assert conn.closed


async def test_asyncpg_abort_cuts_the_connection(pg_dsn: str) -> None:
    manager = aiolease.asyncpg.AsyncpgManager(pg_dsn)
    conn = await manager.create()
    manager.abort(conn)
    assert conn.is_closed()
