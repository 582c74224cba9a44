"""Pools under an eager task factory (Python 3.12+ ``asyncio.eager_task_factory``).

With it, ``create_task`` runs the new task's first steps at once, inside the call,
up to its first real suspension. A pool runs its creations, resets and closes in
tasks of its own: they must behave as on a default loop (FIFO, no lost capacity,
nothing raised from inside the pool's bookkeeping) when those tasks start eagerly,
as they do with a manager whose hooks complete without suspending.
"""

from __future__ import annotations

import asyncio

import pytest
from pool_helpers import NO_HANG, assert_closed_cleanly, assert_consistent, settle

from aiolease import Pool
from aiolease.testing import FakeManager
from eager import NEEDS_EAGER, eager_tasks

pytestmark = [NEEDS_EAGER, NO_HANG]


async def test_readme_pool_serves_concurrent_users_in_order() -> None:
    """The README's pool (a create that never suspends) under contention."""

    async def connect() -> dict[str, int]:
        return {"queries": 0}

    order: list[int] = []
    with eager_tasks():
        async with Pool.from_callables(connect, max_size=3, acquire_timeout=5) as pool:

            async def user(i: int) -> None:
                async with pool.acquire() as conn:
                    order.append(i)
                    conn["queries"] += 1
                    await asyncio.sleep(0.001)

            await asyncio.gather(*(user(i) for i in range(12)))
            st = pool.statistics()
            assert st.size == 3, st
            assert (st.idle, st.in_use, st.waiting, st.acquired) == (3, 0, 0, 12), st
    assert order == list(range(12))


@pytest.mark.aiolease_virtual_time
async def test_fake_manager_pool_keeps_its_invariants() -> None:
    """Prefill, hand-off through check and reset, expiry, resize and close, with a
    manager whose every hook completes without suspending."""
    fm = FakeManager()
    with eager_tasks():
        pool = Pool(fm, min_size=2, max_size=3, max_lifetime=10.0, idle_timeout=5.0)
        await pool.open()
        assert_consistent(pool, fm)
        order: list[int] = []

        async def user(i: int) -> None:
            async with pool.acquire() as r:
                order.append(i)
                await r.use()
                await asyncio.sleep(1.0)

        await asyncio.gather(*(user(i) for i in range(9)))
        assert order == list(range(9))
        await settle(pool)
        assert_consistent(pool, fm)
        await asyncio.sleep(30.0)  # lifetimes and idle timeouts pass; min_size refilled
        await settle(pool)
        assert_consistent(pool, fm)
        assert pool.statistics().size == 2
        await pool.resize(min_size=0, max_size=1)
        await pool.expire()
        await settle(pool)
        assert_consistent(pool, fm)
        async with pool.acquire() as r:
            await r.use()
        await pool.aclose()
    assert_closed_cleanly(pool, fm)


@pytest.mark.aiolease_virtual_time
async def test_aclose_right_after_starting_creations_frees_their_slots() -> None:
    """aclose() in the same step as the creations it cancels (open(wait=False) starts the
    min_size fill and returns without suspending): each creation still frees its slot.
    The close's own task started eagerly would cancel them before their first step."""
    fm = FakeManager()
    fm.delay("create", 1.0)
    with eager_tasks():
        pool = Pool(fm, min_size=2, max_size=3)
        await pool.open(wait=False)
        await pool.aclose()
    assert pool.statistics().size == 0, pool
    assert pool._aiolease_leaks() == []
    assert_closed_cleanly(pool, fm)
