"""A backend that fails twice, then recovers: FakeManager fault injection on virtual time.

Run it: ``pytest examples/testing_flaky_backend.py``.
"""

from __future__ import annotations

import asyncio

import pytest

import aiolease
from aiolease.testing import FakeManager, FakeResource


# -- the code under test -------------------------------------------------------------------
async def fetch_with_retry(pool: aiolease.Pool[FakeResource], attempts: int = 5) -> int:
    """Query through the pool, retrying connection errors with a 5 s, 10 s, ... backoff."""
    for attempt in range(1, attempts + 1):
        try:
            async with pool.acquire() as conn:
                return await conn.use()
        except ConnectionError:
            if attempt == attempts:
                raise
            await asyncio.sleep(5.0 * attempt)
    raise AssertionError("unreachable")


# -- the tests -----------------------------------------------------------------------------
@pytest.mark.aiolease_virtual_time
async def test_recovers_after_two_failed_connects() -> None:
    fm = FakeManager()
    fm.fail("create", ConnectionError, calls=[1, 2])  # the 1st and 2nd connect fail

    async with aiolease.Pool(fm, max_size=1) as pool:
        assert await fetch_with_retry(pool) == 1

    # The retries slept 5 s then 10 s of virtual time: instant, and exact.
    assert asyncio.get_running_loop().time() == 15.0
    assert [str(e) for e in fm.events] == [
        "created FAILED ConnectionError('injected create failure (call #1)')",
        "created FAILED ConnectionError('injected create failure (call #2)')",
        "created r1",
        "acquired r1 lease 1",
        "released r1 lease 1",
        "reset r1 lease 1",
        "closed r1",
    ]
    fm.assert_all_closed()


@pytest.mark.aiolease_virtual_time
async def test_gives_up_when_the_backend_stays_down() -> None:
    fm = FakeManager()
    fm.fail("create", ConnectionError)  # every connect fails

    async with aiolease.Pool(fm, max_size=1) as pool:
        with pytest.raises(ConnectionError, match=r"call #3"):
            await fetch_with_retry(pool, attempts=3)
    assert fm.created == 0


@pytest.mark.aiolease_virtual_time
async def test_a_connection_dropped_while_idle_is_replaced() -> None:
    fm = FakeManager()
    async with aiolease.Pool(fm, max_size=1) as pool:
        assert await fetch_with_retry(pool) == 1
        fm.resources[0].kill()  # the server dropped it while it sat idle
        assert await fetch_with_retry(pool) == 1  # a fresh connection, first use
    assert [r.id for r in fm.resources] == [1, 2]
    assert fm.events_of("checked", ok=False)[0].resource == 1
    fm.assert_all_closed()
