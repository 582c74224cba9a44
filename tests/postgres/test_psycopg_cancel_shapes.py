"""A psycopg operation cancelled at any point on a pooled connection (the connections
aiolease's psycopg pools open: aiolease._compat.psycopg in default mode, psycopg's own in
public mode): the cancellation propagates, or the operation had ended first, and the next
caller is served a connection that answers its own query (a kept connection carries no
result or state of the cancelled operation).

Not here: a pipeline repeating a statement psycopg has begun to prepare. Cancelled (or
failed) on a live server, psycopg 3.3.9 (its own AsyncConnection too) may keep the name of
a statement the server never prepared; the pool's reset after such a lease empties both
sides, which tests/postgres/test_psycopg_prepared.py checks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import pytest

import aiolease._compat.psycopg
import aiolease.psycopg
from aiolease._transaction import _chain


async def _execute(c: Any) -> None:
    await c.execute("SELECT pg_sleep(0.05), 1")


async def _executemany(c: Any) -> None:
    async with c.cursor() as cur:
        await cur.executemany("SELECT pg_sleep(%s)", [(0.002,)] * 20)


async def _copy_out(c: Any) -> None:
    query = "COPY (SELECT g, pg_sleep(0.0005) FROM generate_series(1, 100) g) TO STDOUT"
    async with c.cursor() as cur, cur.copy(query) as copy:
        async for _ in copy:
            pass


async def _copy_in(c: Any) -> None:
    async with c.cursor() as cur:
        await cur.execute("CREATE TEMP TABLE IF NOT EXISTS copied (x int)")
        async with cur.copy("COPY copied FROM STDIN") as copy:
            for i in range(2000):
                await copy.write_row((i,))


async def _stream(c: Any) -> None:
    query = "SELECT g, pg_sleep(0.0005) FROM generate_series(1, 100) g"
    async with c.cursor() as cur:
        async for _ in cur.stream(query):
            pass


async def _server_cursor(c: Any) -> None:
    async with c.transaction(), c.cursor(name="shapes") as cur:
        await cur.execute("SELECT g, pg_sleep(0.0005) FROM generate_series(1, 100) g")
        while await cur.fetchmany(10):
            pass


async def _notices(c: Any) -> None:
    c.add_notice_handler(lambda diagnostic: None)
    await c.execute(
        "DO $$BEGIN FOR i IN 1..50 LOOP RAISE NOTICE 'n %', i; PERFORM pg_sleep(0.001); "
        "END LOOP; END$$"
    )


async def _atomic(c: Any) -> None:
    async with aiolease.atomic(c):
        await c.execute("SELECT pg_sleep(0.02)")
        await c.execute("SELECT 1")


async def _pipeline_error(c: Any) -> None:
    # An error of its own ends the pipeline's work before a cancellation takes effect.
    async with c.pipeline():
        await c.execute("SELECT pg_sleep(0.01)")
        await c.execute("SELECT 1 / 0")
        await c.execute("SELECT pg_sleep(0.05)")


_PSYCOPG = tuple(int(p) for p in psycopg.__version__.split(".")[:3])

SHAPES: dict[str, Callable[[Any], Awaitable[None]]] = {
    "execute": _execute,
    "executemany": _executemany,
    "copy_out": _copy_out,
    "copy_in": _copy_in,
    "stream": _stream,
    "server_cursor": _server_cursor,
    "notices": _notices,
    "atomic": _atomic,
    "pipeline_error": _pipeline_error,
}
#: When the cancellation comes, seconds after the operation starts (0: before its first
#: round trip ends).
DELAYS = (0.0, 0.0005, 0.002, 0.01, 0.03)


def _commit_unknown(exc: BaseException | None) -> bool:
    """Whether ``exc`` is a cancellation that came during atomic's COMMIT."""
    return exc is not None and any(isinstance(e, aiolease.CommitUnknown) for e in _chain(exc))


def _outcome(exc: BaseException | None) -> str:
    """What a cancelled run ended with, its chain included (for a failure message)."""
    if exc is None:
        return "ended first"
    return " <- ".join(f"{type(e).__name__}({e})" for e in _chain(exc))


@pytest.mark.parametrize("shape", SHAPES)
async def test_cancelled_psycopg_operation_leaves_the_pool_serving(pg_dsn: str, shape: str) -> None:
    operation = SHAPES[shape]
    outcomes: list[tuple[float, str]] = []
    during_commit = 0
    async with aiolease.psycopg.create_pool(pg_dsn, max_size=1) as pool:
        for delay in DELAYS:

            async def run() -> None:
                async with pool.acquire() as conn:
                    await operation(conn)

            task = asyncio.create_task(run())
            await asyncio.sleep(delay)
            task.cancel()
            ended: BaseException | None = None
            try:
                await task
            except (asyncio.CancelledError, psycopg.errors.DivisionByZero) as exc:
                ended = exc  # (or it ended first: nothing to check of the operation itself)
            during_commit += _commit_unknown(ended)
            outcomes.append((delay, _outcome(ended)))
            async with asyncio.timeout(5), pool.acquire() as conn:
                cur = await conn.execute("SELECT 42")
                assert await cur.fetchone() == (42,)
        stats = pool.statistics()
        assert (stats.in_use, stats.waiting) == (0, 0), stats
        old_pipeline = shape == "pipeline_error" and _PSYCOPG < (3, 3, 9)
        if aiolease._compat.psycopg.PRIVATE and not shape.startswith("copy") and not old_pipeline:
            # A live server ends every cancelled query: each connection is kept, also
            # when the query ended on an error of its own first (psycopg's own class
            # closes it then). A COPY cancelled midway may be left active by psycopg's
            # copy object, and psycopg before 3.3.9 leaves a pipeline that failed busy:
            # those connections are discarded. So is one whose atomic block was cancelled
            # during its COMMIT (the outcome is unknown: CommitUnknown in the chain, see
            # docs/transactions.md), which the atomic shape's last delays can hit when the
            # round trips are slow; a cancellation anywhere else in the block keeps it.
            assert stats.discarded == during_commit, (stats, outcomes)
