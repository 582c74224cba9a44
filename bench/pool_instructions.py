"""The loops of ``bench/pool.py`` without its harness, for instruction counts.

Runs ``N`` operations (after a warm-up of 20 per task) of one contender of
``bench/pool.py`` and exits, so that ``valgrind --tool=callgrind`` can count
the instructions of this process. The instructions per operation are the
difference between a run of N1 and one of N0 operations, divided by
``N1 - N0`` (the start-up, the pool's set-up and the warm-up cancel out)::

    PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python bench/pool_instructions.py mech 100 12000   # and 2000

Subjects: ``mech`` (aiolease.Pool, no-op resource, acquire +
``asyncio.sleep(0)`` + release), ``mech-floor`` (the same over an
``asyncio.Queue``), ``pg`` (``aiolease.asyncpg.create_pool``, ``SELECT 1``),
``pg-floor`` (10 raw asyncpg connections in an ``asyncio.Queue``); the
PostgreSQL ones use ``AIOLEASE_PG_DSN``. Pools hold 10 resources.

Usage::

    python bench/pool_instructions.py SUBJECT TASKS N
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import aiolease

SIZE = 10
WARMUP = 20  # operations per task before the counted ones


class _Resource:
    __slots__ = ()


async def _make_resource() -> _Resource:
    return _Resource()


async def _run(tasks: int, n: int, worker: Callable[[int], Awaitable[None]]) -> None:
    """``worker(k)`` runs k operations (its loop inline, as in bench/pool.py's workers)."""
    await asyncio.gather(*(worker(WARMUP) for _ in range(tasks)))
    await asyncio.gather(*(worker(n // tasks) for _ in range(tasks)))


async def mech(tasks: int, n: int) -> None:
    async with aiolease.Pool.from_callables(_make_resource, max_size=SIZE) as pool:

        async def worker(k: int) -> None:
            acquire, sleep = pool.acquire, asyncio.sleep
            for _ in range(k):
                async with acquire():
                    await sleep(0)

        await _run(tasks, n, worker)


async def mech_floor(tasks: int, n: int) -> None:
    queue: asyncio.Queue[_Resource] = asyncio.Queue()
    for _ in range(SIZE):
        queue.put_nowait(_Resource())

    async def worker(k: int) -> None:
        get, put, sleep = queue.get, queue.put_nowait, asyncio.sleep
        for _ in range(k):
            r = await get()
            await sleep(0)
            put(r)

    await _run(tasks, n, worker)


async def pg(tasks: int, n: int) -> None:
    from aiolease.asyncpg import create_pool

    async with create_pool(_dsn(), min_size=SIZE, max_size=SIZE) as pool:

        async def worker(k: int) -> None:
            acquire = pool.acquire
            for _ in range(k):
                async with acquire() as conn:
                    await conn.fetchval("SELECT 1")

        await _run(tasks, n, worker)


async def pg_floor(tasks: int, n: int) -> None:
    import asyncpg

    conns = [await asyncpg.connect(_dsn()) for _ in range(SIZE)]
    queue: asyncio.Queue[Any] = asyncio.Queue()
    for conn in conns:
        queue.put_nowait(conn)

    async def worker(k: int) -> None:
        get, put = queue.get, queue.put_nowait
        for _ in range(k):
            conn = await get()
            await conn.fetchval("SELECT 1")
            put(conn)

    try:
        await _run(tasks, n, worker)
    finally:
        for conn in conns:
            await conn.close()


def _dsn() -> str:
    return os.environ.get("AIOLEASE_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")


SUBJECTS = {"mech": mech, "mech-floor": mech_floor, "pg": pg, "pg-floor": pg_floor}

if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in SUBJECTS:
        raise SystemExit(f"usage: {sys.argv[0]} {{{','.join(SUBJECTS)}}} TASKS N")
    asyncio.run(SUBJECTS[sys.argv[1]](int(sys.argv[2]), int(sys.argv[3])))
