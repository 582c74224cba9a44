"""The psycopg pool's reset after a lease that raised, under faults and misuse.

A cancellation at each step of a failing lease and of its reset, the pool's close
(cancelled, or with a timeout) while that reset runs, a lease that raised inside a
transaction it opened, a reset that fails: the connection is never handed on dirty
(open transaction, psycopg's prepared statements out of step with the server's) and
never lost, and no cancellation is swallowed.
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
from psycopg import pq

import aiolease._compat.psycopg
from aiolease import Pool
from aiolease.psycopg import create_pool
from cancelling import cancel_after_steps
from driver_pools import settle

#: psycopg before 3.3.9: a pipeline whose exit was cancelled, on a connection closed since
#: (the pool discards it), is later collected and its exit generator's ``finally`` flushes
#: the closed connection: "Exception ignored in <generator object BasePipeline._exit_gen>"
#: (psycopg's noise, nothing lost; 3.3.9 does not do it). Ignored there only.
_OLD_PIPELINE_EXIT = tuple(int(p) for p in psycopg.__version__.split(".")[:3]) < (3, 3, 9)

pytestmark = [pytest.mark.timeout(120)] + (
    [
        pytest.mark.filterwarnings(
            "ignore:Exception ignored in. <generator object BasePipeline._exit_gen"
            ":pytest.PytestUnraisableExceptionWarning"
        )
    ]
    if _OLD_PIPELINE_EXIT
    else []
)

QUERY = "SELECT %s::int + 1 AS aiolease_resync_faults_probe"
THRESHOLD = 2


def raw(conn: Any) -> Any:
    return getattr(conn, "_aiolease_origin", conn)


async def run_query(conn: Any, n: int) -> None:
    cur = await conn.execute(QUERY, (n,))
    assert await cur.fetchone() == (n + 1,)


async def server_statements(conn: Any) -> int:
    cur = await conn.execute("SELECT count(*) FROM pg_prepared_statements", prepare=False)
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def warm(pool: Pool[Any]) -> None:
    async with pool.acquire() as conn:
        for i in range(THRESHOLD):  # counted: the next run prepares it
            await run_query(conn, i)


async def failing_lease(pool: Pool[Any]) -> None:
    async with pool.acquire() as conn, conn.pipeline():
        await conn.execute("SELECT 1/0")
        await conn.execute(QUERY, (-1,))


async def assert_clean_next_holder(pool: Pool[Any]) -> None:
    async with pool.acquire() as conn:
        assert raw(conn).pgconn.transaction_status == pq.TransactionStatus.IDLE
        assert await server_statements(conn) == 0
        for i in range(THRESHOLD + 2):
            await run_query(conn, i)
    stats = pool.statistics()
    assert stats.in_use == 0


async def yields(k: int) -> None:
    for _ in range(k):
        await asyncio.sleep(0)


async def test_failing_lease_cancelled_at_each_step_hands_on_a_clean_connection(
    pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    # k event-loop steps after the lease starts, for k = 0, 1, ... until the lease and its
    # reset are over before the cancellation: every step of the body, the release and the
    # resync gets the cancellation once.
    async with create_pool(pg_dsn, max_size=1, prepare_threshold=THRESHOLD) as pool:
        await warm(pool)
        for k in range(5000):
            cancelled, outcome = await cancel_after_steps(failing_lease(pool), k)
            if not cancelled:
                assert isinstance(outcome, psycopg.errors.DivisionByZero), (k, outcome)
            await settle(pool)
            await assert_clean_next_holder(pool)
            if not cancelled and not pool._tasks:
                break
        else:
            raise AssertionError("the lease never ended before its cancellation")
        if aiolease._compat.psycopg.PRIVATE and not _OLD_PIPELINE_EXIT:
            # A cancellation while the pipeline's results were read, after 1/0 had failed:
            # the connection is between statements, kept (psycopg's own class closes it).
            # psycopg before 3.3.9 leaves it busy (ACTIVE, pipeline aborted) then: closed.
            # So does any psycopg when 1/0's error arrived in a read of its own, before the
            # end of the pipeline (a loaded machine): the rest is not read, so the state is
            # unknown and the connection is closed, said in one warning each. (Read as it was
            # logged: the record's message would give the connection's repr as it is now.)
            split = [
                line
                for line in caplog.text.splitlines()
                if "pipeline=ABORTED" in line and "closing the connection" in line
            ]
            assert pool.statistics().discarded == len(split), (pool.statistics(), split)


@pytest.mark.parametrize("k", range(0, 40, 3))
async def test_aclose_cancelled_while_the_reset_runs(pg_dsn: str, k: int) -> None:
    pool = create_pool(pg_dsn, max_size=1, prepare_threshold=THRESHOLD)
    await pool.open()
    await warm(pool)
    lease = asyncio.create_task(failing_lease(pool))
    await yields(1)
    closer = asyncio.create_task(pool.aclose())
    await yields(k)
    cancelled = closer.cancel()
    results = await asyncio.gather(lease, closer, return_exceptions=True)
    # A cancelled closer closes the leases in their holders' hands (documented): the
    # lease's body may fail with the closed connection's error instead.
    assert isinstance(results[0], Exception), results[0]
    if cancelled:  # never swallowed
        assert isinstance(results[1], asyncio.CancelledError), results[1]
    await asyncio.wait_for(pool.aclose(), 10)
    assert pool.statistics().size == 0
    assert not pool._tasks


@pytest.mark.parametrize("k", range(0, 40, 3))
async def test_aclose_with_timeout_while_the_reset_runs(pg_dsn: str, k: int) -> None:
    pool = create_pool(pg_dsn, max_size=1, prepare_threshold=THRESHOLD)
    await pool.open()
    await warm(pool)
    lease = asyncio.create_task(failing_lease(pool))
    await yields(k)
    await asyncio.wait_for(pool.aclose(timeout=0), 10)
    result = (await asyncio.gather(lease, return_exceptions=True))[0]
    assert isinstance(result, Exception), result
    assert pool.statistics().size == 0
    assert not pool._tasks


async def test_lease_that_raised_inside_its_own_transaction(pg_dsn: str) -> None:
    async with create_pool(pg_dsn, max_size=1, prepare_threshold=THRESHOLD) as pool:
        await warm(pool)
        pids: list[int] = []

        async def lease() -> None:
            async with pool.acquire() as conn:
                await conn.execute("BEGIN")
                pids.append(raw(conn).info.backend_pid)
                async with conn.pipeline():
                    await conn.execute("SELECT 1/0")
                    await conn.execute(QUERY, (-1,))

        with pytest.raises(psycopg.errors.DivisionByZero):
            await lease()
        await settle(pool)
        async with pool.acquire() as conn:
            assert raw(conn).info.backend_pid == pids[0]  # kept
        await assert_clean_next_holder(pool)


async def test_lease_that_raised_on_a_non_autocommit_connection(pg_dsn: str) -> None:
    async with create_pool(
        pg_dsn, max_size=1, prepare_threshold=THRESHOLD, autocommit=False
    ) as pool:
        async with pool.acquire() as conn:
            for i in range(THRESHOLD):
                await run_query(conn, i)
            await conn.commit()
        with pytest.raises(psycopg.errors.DivisionByZero):
            await failing_lease(pool)
        await settle(pool)
        async with pool.acquire() as conn:
            assert raw(conn).pgconn.transaction_status == pq.TransactionStatus.IDLE
            for i in range(THRESHOLD + 2):
                await run_query(conn, i)
            await conn.rollback()


async def test_a_failed_reset_discards_rather_than_hands_on(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import aiolease.psycopg as module

    real = module._resync_prepared

    async def failing_resync(conn: Any) -> None:
        await real(conn)  # sent: the server's statements are gone, psycopg's may stay
        raise psycopg.OperationalError("resync failed")

    async with create_pool(pg_dsn, max_size=1, prepare_threshold=THRESHOLD) as pool:
        await warm(pool)
        monkeypatch.setattr(module, "_resync_prepared", failing_resync)
        pids: list[int] = []

        async def lease() -> None:
            async with pool.acquire() as conn:
                pids.append(raw(conn).info.backend_pid)
                await conn.execute("SELECT 1/0")

        with pytest.raises(psycopg.errors.DivisionByZero):
            await lease()
        await settle(pool)
        monkeypatch.setattr(module, "_resync_prepared", real)
        assert pool.statistics().discarded == 1
        async with pool.acquire() as conn:
            assert raw(conn).info.backend_pid != pids[0]
        await assert_clean_next_holder(pool)
