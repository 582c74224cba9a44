"""Random-cancellation soak: 200 tasks run transactions through a pool while a canceller
cancels one of them every few milliseconds (and starts a fresh one in its place).

Asserts afterwards: no lost capacity (every slot can be leased again), nothing in use,
no task left behind, memory flat, no lost or phantom commit. The run lasts
``AIOLEASE_CHAOS_SOAK_SECONDS`` (default 180, shared between the drivers).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import tracemalloc
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

import aiolease
import aiolease.asyncpg
import aiolease.psycopg
import aiolease.sqlite

from . import harness
from .harness import REPORT, Outcomes, Report, check_commits, env_seconds, transaction

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(600)]

TASKS = 200
SOAK = env_seconds("AIOLEASE_CHAOS_SOAK_SECONDS", 180.0)
SHARE = {"asyncpg": 0.5, "psycopg": 0.3, "sqlite": 0.2}
MAX_SIZE = 5
#: Memory the soak may gain between its first quarter and its end (bytes, traced).
MEMORY_SLACK = 8 * 1024 * 1024


def _setup(
    driver: str, pg_dsn: str, path: Path, table: str
) -> tuple[aiolease.Pool[Any], Callable[[Any, int], Awaitable[None]]]:
    if driver == "asyncpg":

        async def insert_asyncpg(conn: Any, tx_id: int) -> None:
            await conn.execute(f"INSERT INTO {table} VALUES ($1)", tx_id)

        pool: aiolease.Pool[Any] = aiolease.asyncpg.create_pool(pg_dsn, max_size=MAX_SIZE)
        return pool, insert_asyncpg
    if driver == "psycopg":

        async def insert_psycopg(conn: Any, tx_id: int) -> None:
            await conn.execute(f"INSERT INTO {table} VALUES (%s)", (tx_id,))

        return aiolease.psycopg.create_pool(pg_dsn, max_size=MAX_SIZE), insert_psycopg

    async def insert_sqlite(conn: Any, tx_id: int) -> None:
        await conn.execute(f"INSERT INTO {table} VALUES (?)", (tx_id,))

    return aiolease.sqlite.create_pool(path, max_size=MAX_SIZE), insert_sqlite


async def _ids(driver: str, pg_dsn: str, path: Path, table: str, create: bool) -> set[int]:
    if driver == "sqlite":
        async with aiolease.sqlite.create_pool(path, max_size=1) as pool, pool.acquire() as conn:
            if create:
                await conn.execute(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY)")
                return set()
            async with conn.execute(f"SELECT id FROM {table}") as cursor:
                return {int(r[0]) for r in await cursor.fetchall()}
    pg = await asyncpg.connect(pg_dsn)
    try:
        if create:
            await pg.execute(f"CREATE TABLE {table} (id bigint PRIMARY KEY)")
            return set()
        ids = {int(r["id"]) for r in await pg.fetch(f"SELECT id FROM {table}")}
        await pg.execute(f"DROP TABLE {table}")
        return ids
    finally:
        await pg.close()


def _memory() -> int:
    """Bytes allocated and still alive, except the soak's own records of every
    transaction (which grow with the number of transactions by design)."""
    own = [tracemalloc.Filter(False, f) for f in (__file__, harness.__file__)]
    snapshot = tracemalloc.take_snapshot().filter_traces(own)
    return sum(stat.size for stat in snapshot.statistics("filename"))


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg", "sqlite"])
async def test_cancellation_soak(
    driver: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    pg_dsn = "" if driver == "sqlite" else request.getfixturevalue("pg_dsn")
    path = tmp_path / "soak.db"
    table = f"aiolease_soak_{uuid.uuid4().hex[:12]}"
    await _ids(driver, pg_dsn, path, table, create=True)
    loop = asyncio.get_running_loop()
    duration = SOAK * SHARE[driver]
    report = Report(driver, f"cancel soak {TASKS}x{duration:.0f}s")
    REPORT.append(report)
    outcomes = Outcomes()
    baseline = set(asyncio.all_tasks())
    rng = random.Random(20261205)
    swallowed = 0  # cancellations a transaction turned into something else
    cancels = 0
    grown = 0
    pool, insert = _setup(driver, pg_dsn, path, table)
    tracemalloc.start()
    try:
        async with pool:

            async def worker() -> None:
                nonlocal swallowed
                task = asyncio.current_task()
                assert task is not None
                while True:
                    await transaction(
                        pool, insert, outcomes, report, acquire_timeout=10.0, op_timeout=10.0
                    )
                    if task.cancelling():
                        swallowed += 1  # the cancellation did not propagate: end it here
                        raise asyncio.CancelledError
                    await asyncio.sleep(rng.random() * 0.002)

            tasks = {asyncio.create_task(worker()) for _ in range(TASKS)}
            end = loop.time() + duration
            memory_mark: int | None = None
            pending: set[asyncio.Task[None]] = set()
            while loop.time() < end:
                victim = rng.choice(list(tasks))
                tasks.discard(victim)
                victim.cancel()
                cancels += 1
                pending.add(victim)
                tasks.add(asyncio.create_task(worker()))
                await asyncio.sleep(rng.random() * 0.01)
                done = {t for t in pending if t.done()}
                pending -= done
                for t in done:
                    if not t.cancelled():
                        report.errors[f"task ended by {type(t.exception()).__name__}"] += 1
                if memory_mark is None and loop.time() > end - duration * 0.75:
                    memory_mark = _memory()
            for t in tasks:
                t.cancel()
            async with asyncio.timeout(30):
                results = await asyncio.gather(*tasks, *pending, return_exceptions=True)
            for r in results:
                if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError):
                    report.errors[f"task ended by {type(r).__name__}"] += 1
            grown = _memory() - (memory_mark or 0)

            stats = pool.statistics()
            assert stats.in_use == 0
            assert stats.size <= MAX_SIZE
            # No lost capacity: every slot can be leased at once.
            async with asyncio.timeout(10):
                leases = [await pool.acquire() for _ in range(MAX_SIZE)]
                for conn in leases:
                    await pool.release(conn)
    finally:
        tracemalloc.stop()
        with contextlib.suppress(Exception):
            present = await _ids(driver, pg_dsn, path, table, create=False)
            check_commits(outcomes, present, report)
        report.notes.append(f"{cancels} cancels, {swallowed} swallowed")
        report.notes.append(f"memory {grown / 1e6:+.2f} MB")
        print("\n" + report.row())
    leftover = [t for t in asyncio.all_tasks() - baseline if t is not asyncio.current_task()]
    assert not leftover, f"tasks left behind: {leftover}"
    assert report.ok > 0
    assert report.lost == 0, f"{report.lost} lost commits"
    assert report.phantom == 0, f"{report.phantom} phantom commits"
    assert grown < MEMORY_SLACK, f"memory grew by {grown} bytes"
