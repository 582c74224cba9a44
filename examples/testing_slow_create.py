"""A slow connect that times out, and a cancellation landing exactly at the connect.

Run it: ``pytest examples/testing_slow_create.py``.
"""

from __future__ import annotations

import asyncio

import pytest

import aiolease
from aiolease.testing import FakeManager


@pytest.mark.aiolease_virtual_time
async def test_a_slow_connect_times_out() -> None:
    loop = asyncio.get_running_loop()
    fm = FakeManager()
    fm.delay("create", 30.0)  # every connect takes 30 s

    async with aiolease.Pool(fm, max_size=1, acquire_timeout=5.0) as pool:
        with pytest.raises(aiolease.PoolTimeout):
            await pool.acquire()
        assert loop.time() == 5.0  # timed out after exactly 5 s (instantly, in real time)

        # The connect that was started keeps going and the pool keeps it.
        await asyncio.sleep(25.0)
        async with pool.acquire(timeout=0.1) as conn:
            assert conn.id == 1
    fm.assert_all_closed()


@pytest.mark.aiolease_virtual_time
async def test_cancelled_while_connecting_leaves_the_pool_whole() -> None:
    fm = FakeManager()
    gate = fm.block("create", calls=1)  # hold the first connect at its await

    async with aiolease.Pool(fm, max_size=1) as pool:
        task = asyncio.ensure_future(pool.acquire())
        await gate.wait_arrived()  # the connect is now suspended inside create()
        task.cancel()  # ...so the cancellation lands exactly there
        with pytest.raises(asyncio.CancelledError):
            await task
        gate.open()
        async with pool.acquire() as conn:  # capacity was not lost
            await conn.use()
        assert pool.statistics().size <= 1
    fm.assert_all_closed()
