"""The pool's log lines (docs/logging.md): one line per event, naming the pool, at its level."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from pool_helpers import settle

import aiolease
import aiolease.testing
from aiolease import Pool
from aiolease.testing import FakeConnection, FakeManager, InjectedFault


def lines(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if text in r.getMessage()]


@pytest.fixture(autouse=True)
def _debug(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="aiolease")


async def test_creation_failure_and_recovery(caplog: pytest.LogCaptureFixture) -> None:
    fm = FakeManager()
    fm.fail("create", InjectedFault("connection refused"), calls=[1, 2])
    async with Pool(fm, max_size=1, name="orders", backoff_base=0.01, backoff_max=0.02) as pool:
        for attempt in (1, 2):
            with pytest.raises(InjectedFault):
                await pool.acquire()
            (record,) = lines(caplog, f"attempt {attempt} in a row")
            assert record.levelno == logging.WARNING
            assert record.name == "aiolease.pool"
            message = record.getMessage()
            assert "'orders'" in message
            assert "creating a resource failed" in message
            assert "InjectedFault: connection refused" in message
            assert "next attempt in 0.0" in message
            await asyncio.sleep(0.03)  # past the backoff
        async with pool.acquire():
            pass
    (recovered,) = lines(caplog, "created a resource again")
    assert recovered.levelno == logging.INFO
    assert "'orders'" in recovered.getMessage()
    assert "after 2 failed attempt(s)" in recovered.getMessage()


async def test_failed_check_is_one_info_line(caplog: pytest.LogCaptureFixture) -> None:
    fm = FakeManager()
    async with Pool(fm, max_size=1, name="orders") as pool:
        async with pool.acquire():
            pass
        fm.fail("check", InjectedFault("server went away"), calls=1)
        async with pool.acquire():
            pass
        await settle(pool)
    (record,) = lines(caplog, "discarding")
    assert record.levelno == logging.INFO
    message = record.getMessage()
    assert "'orders'" in message
    assert "its check failed: InjectedFault: server went away" in message
    assert pool.statistics().discarded == 1


async def test_failed_reset_is_one_info_line(caplog: pytest.LogCaptureFixture) -> None:
    fm = FakeManager()
    fm.fail("reset", InjectedFault("rollback timed out"), calls=1)
    async with Pool(fm, max_size=1, name="orders") as pool:
        async with pool.acquire():
            pass
        await settle(pool)
    (record,) = lines(caplog, "discarding")
    assert record.levelno == logging.INFO
    assert "its reset failed: InjectedFault: rollback timed out" in record.getMessage()


async def test_a_check_past_the_acquire_timeout_is_one_info_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fm = FakeManager()
    async with Pool(fm, max_size=1, name="orders") as pool:
        async with pool.acquire():
            pass
        fm.delay("check", 1.0, calls=1)
        with pytest.raises(aiolease.PoolTimeout):
            await pool.acquire(timeout=0.05)
        await settle(pool)
    (record,) = lines(caplog, "discarding")
    assert record.levelno == logging.INFO
    assert "its check outlasted the acquire timeout" in record.getMessage()


async def test_resize_retires_the_surplus_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    fm = FakeManager()
    async with Pool(fm, min_size=2, max_size=2, name="orders") as pool:
        await pool.resize(min_size=0, max_size=1)
    (record,) = lines(caplog, "above max_size=1")
    assert record.levelno == logging.DEBUG


@pytest.mark.parametrize(
    ("option", "why"),
    [
        ("max_lifetime", "past max_lifetime=0.05s"),
        ("idle_timeout", "idle longer than idle_timeout"),
    ],
)
async def test_retired_resources_are_debug_lines_saying_why(
    caplog: pytest.LogCaptureFixture, option: str, why: str
) -> None:
    fm = FakeManager()
    options: dict[str, Any] = {option: 0.05}
    async with Pool(fm, max_size=2, name="orders", **options) as pool:
        async with pool.acquire():
            pass
        await asyncio.sleep(0.1)
        await settle(pool)
        (retired,) = lines(caplog, why)
        async with pool.acquire():
            pass
        await pool.expire()
        (expired,) = lines(caplog, "expire() retired it")
    for record in (retired, expired):
        assert record.levelno == logging.DEBUG
        assert "'orders'" in record.getMessage()
        assert "closing <FakeResource" in record.getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.INFO]


async def test_fatal_error_in_the_body_is_one_info_line(caplog: pytest.LogCaptureFixture) -> None:
    fm = FakeManager(fatal=(aiolease.testing.ResourceKilled,))
    async with Pool(fm, max_size=1, name="orders") as pool:
        with pytest.raises(aiolease.testing.ResourceKilled):
            async with pool.acquire():
                raise aiolease.testing.ResourceKilled("socket closed")
        await settle(pool)
    (record,) = lines(caplog, "unusable after its holder's error")
    assert record.levelno == logging.INFO
    assert "'orders'" in record.getMessage()
    assert "ResourceKilled: socket closed" in record.getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_unknown_commit_outcome_is_an_error_naming_the_pool(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def connect() -> FakeConnection:
        conn = FakeConnection()
        conn.drop_on_commit()
        return conn

    async with Pool.from_callables(connect, max_size=1, name="orders") as pool:
        with pytest.raises(aiolease.CommitUnknown):
            async with pool.atomic() as tx:
                await tx.connection.execute("INSERT")
        await settle(pool)
    (unknown,) = lines(caplog, "the outcome is unknown")
    assert unknown.levelno == logging.WARNING
    assert unknown.name == "aiolease.transaction"
    assert "'orders'" in unknown.getMessage()
    assert "FakeConnectionLost" in unknown.getMessage()
    (discarded,) = lines(caplog, "a transaction marked it broken")
    assert discarded.levelno == logging.INFO
    assert "'orders'" in discarded.getMessage()
    assert pool.statistics().discarded == 1


async def test_acquire_on_the_spot_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    fm = FakeManager()
    async with Pool(fm, max_size=1) as pool:
        for _ in range(3):
            async with pool.acquire():
                pass
            await pool.release(await pool.acquire())
        assert caplog.records == []  # (not even at DEBUG)
