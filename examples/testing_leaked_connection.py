"""Catching a leaked connection with leak_check() / the aiolease_leaks fixture.

Run it: ``pytest examples/testing_leaked_connection.py``.
"""

from __future__ import annotations

import pytest

import aiolease
from aiolease.testing import FakeManager, FakeResource, LeakCheck, leak_check


# -- the code under test -------------------------------------------------------------------
async def transfer_buggy(pool: aiolease.Pool[FakeResource], amount: int) -> None:
    conn = await pool.acquire()
    await conn.use()
    if amount < 0:
        raise ValueError("negative amount")  # BUG: returns without releasing conn
    await pool.release(conn)


async def transfer_fixed(pool: aiolease.Pool[FakeResource], amount: int) -> None:
    async with pool.acquire() as conn:
        await conn.use()
        if amount < 0:
            raise ValueError("negative amount")


# -- the tests -----------------------------------------------------------------------------
@pytest.mark.aiolease_virtual_time
async def test_leak_check_names_the_leaked_connection_and_where_it_was_taken() -> None:
    pools: list[aiolease.Pool[FakeResource]] = []

    async def the_test_as_written() -> None:
        async with leak_check():
            pool = aiolease.Pool(FakeManager(), name="accounts")
            pools.append(pool)
            with pytest.raises(ValueError):
                await transfer_buggy(pool, -5)

    with pytest.raises(AssertionError) as failure:
        await the_test_as_written()
    report = str(failure.value)
    assert "is still checked out from <aiolease.Pool 'accounts'" in report
    assert "in transfer_buggy" in report  # the acquiring stack points at the bug
    assert "conn = await pool.acquire()" in report
    await pools[0].aclose(timeout=0)  # tidy up after the demonstration


@pytest.mark.aiolease_virtual_time
async def test_the_fixed_code_passes_the_fixture_check(aiolease_leaks: LeakCheck) -> None:
    async with aiolease.Pool(FakeManager(), name="accounts") as pool:
        await transfer_fixed(pool, 10)
        with pytest.raises(ValueError):
            await transfer_fixed(pool, -5)
    # aiolease_leaks checks again after the test's fixtures are torn down.
    assert aiolease_leaks.leaks() == []
