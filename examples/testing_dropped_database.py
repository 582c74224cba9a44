"""Your code survives a dropped database: FaultProxy between an aiolease pool and PostgreSQL.

Run it: ``AIOLEASE_PG_DSN=postgresql://postgres@127.0.0.1:5432/test pytest
examples/testing_dropped_database.py`` (skipped when PostgreSQL is not reachable).
"""

from __future__ import annotations

import asyncio
import os
import socket
from urllib.parse import urlsplit

import asyncpg
import pytest

import aiolease
import aiolease.asyncpg
from aiolease.testing import FaultProxy

DSN = os.environ.get("AIOLEASE_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")


# -- the code under test -------------------------------------------------------------------
async def count_tables(pool: aiolease.Pool[asyncpg.Connection], attempts: int = 3) -> int:
    """One query, retried when the connection is lost (the pool discards a dead one)."""
    for attempt in range(1, attempts + 1):
        try:
            async with asyncio.timeout(2), pool.acquire() as conn:
                return int(await conn.fetchval("SELECT count(*) FROM pg_class"))
        except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError, TimeoutError):
            if attempt == attempts:
                raise
            await asyncio.sleep(0.1 * attempt)
    raise AssertionError("unreachable")


# -- the tests -----------------------------------------------------------------------------
def _server() -> tuple[str, int]:
    parts = urlsplit(DSN)
    host, port = parts.hostname or "127.0.0.1", parts.port or 5432
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError as exc:
        pytest.skip(f"!!! SKIPPED: PostgreSQL at {host}:{port} is not reachable: {exc}")
    return host, port


def _through(proxy: FaultProxy) -> str:
    host, port = proxy.address
    parts = urlsplit(DSN)
    user = f"{parts.username}@" if parts.username else ""
    return parts._replace(netloc=f"{user}{host}:{port}").geturl()


async def test_survives_connections_reset_under_it() -> None:
    async with FaultProxy(*_server()) as proxy:
        pool = aiolease.asyncpg.create_pool(_through(proxy), max_size=2)
        async with pool:
            assert await count_tables(pool) > 0
            proxy.reset()  # every open connection dies with a TCP RST
            assert await count_tables(pool) > 0  # a fresh connection, no error seen


async def test_survives_a_silent_network() -> None:
    async with FaultProxy(*_server()) as proxy:
        # A statement cancelled on a silent peer: its connection is cut within 0.5 s.
        pool = aiolease.asyncpg.create_pool(_through(proxy), max_size=2)
        async with pool:
            assert await count_tables(pool) > 0
            proxy.blackhole()  # no answer, no FIN, no RST: only a timeout notices
            with pytest.raises(TimeoutError):
                await count_tables(pool, attempts=1)
            proxy.heal()
            assert await count_tables(pool) > 0
