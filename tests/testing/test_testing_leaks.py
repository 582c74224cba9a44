"""Tests of aiolease.testing.leak_check and the aiolease_leaks fixture."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

import aiolease
import aiolease.abc
from aiolease import (
    Pool,
    _tracking,
)
from aiolease.testing import (
    FakeConnection,
    FakeManager,
    FakeResource,
    LeakCheck,
    VirtualTimeLoop,
    leak_check,
)

R = TypeVar("R")


def vrun(fn: Callable[[], Coroutine[Any, Any, R]]) -> R:
    """Run ``fn()`` on a fresh VirtualTimeLoop."""
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(fn())


pytestmark = pytest.mark.aiolease_virtual_time


class Holder:
    """A minimal Trackable: holds named things until released."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.held: list[str] = []
        _tracking.track(self)

    def _aiolease_leaks(self) -> list[str]:
        return [f"{self.name} still holds {thing}" for thing in self.held]


async def test_clean_block_passes_and_unregisters() -> None:
    async with leak_check() as check:
        assert isinstance(check, LeakCheck)
        assert check.tracker in _tracking.active
        holder = Holder("h")
        holder.held.append("x")
        holder.held.clear()
    assert check.tracker not in _tracking.active
    assert check.tracker.objects() == [holder]


async def _leaky_block(*holders: tuple[str, list[str]]) -> None:
    """A leak_check block creating holders that still hold things at exit."""
    async with leak_check():
        made = [Holder(name) for name, _ in holders]
        for holder, (_, things) in zip(made, holders, strict=True):
            holder.held += things


async def test_leak_inside_raises_assertion_listing_every_leak() -> None:
    with pytest.raises(AssertionError) as exc_info:
        await _leaky_block(("a", ["conn1", "conn2"]), ("b", ["line1\nline2"]))
    assert str(exc_info.value) == (
        "leak_check found 3 leaks:\n"
        "  - a still holds conn1\n"
        "  - a still holds conn2\n"
        "  - b still holds line1\n    line2"
    )
    assert not _tracking.active


async def test_single_leak_wording() -> None:
    with pytest.raises(AssertionError, match=r"^leak_check found 1 leak:\n  - h still holds x$"):
        await _leaky_block(("h", ["x"]))


async def test_objects_created_before_are_not_examined() -> None:
    outside = Holder("outside")
    outside.held.append("x")
    async with leak_check():
        pass


async def test_checks_nest() -> None:
    async def outer_block() -> None:
        async with leak_check() as outer:
            outer_made = Holder("outer-made")
            outer_made.held.append("x")
            with pytest.raises(AssertionError, match="inner-made") as inner_info:
                await _leaky_block(("inner-made", ["y"]))
            assert "outer-made" not in str(inner_info.value)
            assert outer.tracker in _tracking.active
            assert len(_tracking.active) == 1

    with pytest.raises(AssertionError, match="outer-made still holds x") as outer_info:
        await outer_block()
    assert "inner-made still holds y" in str(outer_info.value)


async def test_error_in_block_propagates_with_the_report_as_a_note() -> None:
    async def failing_block() -> None:
        async with leak_check():
            holder = Holder("h")
            holder.held.append("x")
            raise ZeroDivisionError("the error under test")

    with pytest.raises(ZeroDivisionError) as exc_info:
        await failing_block()
    assert exc_info.value.__notes__ == ["leak_check found 1 leak:\n  - h still holds x"]
    assert not _tracking.active


async def test_error_in_clean_block_propagates_without_note() -> None:
    with pytest.raises(KeyError) as exc_info:
        async with leak_check():
            raise KeyError("k")
    assert not hasattr(exc_info.value, "__notes__")


async def test_async_exit_lets_releases_under_way_finish() -> None:
    async def release_soon(holder: Holder) -> None:
        for _ in range(3):
            await asyncio.sleep(0)
        holder.held.clear()

    async with leak_check():
        holder = Holder("h")
        holder.held.append("x")
        task = asyncio.create_task(release_soon(holder))
    assert task.done()


async def test_sync_form_checks_immediately() -> None:
    def sync_block() -> None:
        with leak_check():
            holder = Holder("h")
            holder.held.append("x")

    with pytest.raises(AssertionError, match="h still holds x"):
        sync_block()


async def test_check_and_leaks_mid_block() -> None:
    async with leak_check() as check:
        holder = Holder("h")
        assert check.leaks() == []
        check.check()
        holder.held.append("x")
        assert check.leaks() == ["h still holds x"]
        with pytest.raises(AssertionError, match="h still holds x"):
            check.check()
        holder.held.clear()


async def test_an_active_check_cannot_be_entered_twice() -> None:
    check = leak_check()
    async with check:
        with pytest.raises(RuntimeError, match="already active"):
            async with check:
                pass


async def test_objects_dropped_inside_are_still_reported() -> None:
    check = leak_check()

    async def dropping_block() -> None:
        async with check:
            holder = Holder("dropped")
            holder.held.append("x")
            del holder  # dropped without cleanup: the check keeps it alive to report it

    with pytest.raises(AssertionError, match="dropped still holds x"):
        await dropping_block()
    assert check.tracker.objects() == []  # let go once the check is over


# -- with the real Pool ------------------------------------------------------------------------


async def test_pool_resource_acquired_and_never_released_is_named_with_where() -> None:
    fm = FakeManager()
    pools: list[aiolease.Pool[FakeResource]] = []

    async def leaky_test_body() -> None:
        async with leak_check():
            pool = aiolease.Pool(fm, max_size=2, name="leaky")
            pools.append(pool)
            await pool.open()
            await pool.acquire()  # the leak under test
            kept = await pool.acquire()
            await pool.release(kept)

    with pytest.raises(AssertionError) as exc_info:
        await leaky_test_body()
    message = str(exc_info.value)
    assert message.startswith("leak_check found 2 leaks:")
    assert "<FakeResource r1 lease 1> is still checked out from <aiolease.Pool 'leaky'" in message
    assert "was left open" in message
    assert __file__ in message
    assert "await pool.acquire()  # the leak under test" in message
    assert "r2" not in message
    [pool] = pools
    await pool.release(fm.resources[0])
    await pool.aclose()
    fm.assert_all_closed()


async def test_pool_never_closed_is_reported() -> None:
    pools: list[aiolease.Pool[FakeResource]] = []

    async def forgetful_test_body() -> None:
        async with leak_check():
            pool = aiolease.Pool(FakeManager(), name="forgotten")
            pools.append(pool)
            async with pool.acquire() as resource:
                await resource.use()

    with pytest.raises(
        AssertionError, match=r"leak_check found 1 leak:\n  - <aiolease.Pool 'forgotten' open "
    ):
        await forgetful_test_body()
    await pools[0].aclose()


async def test_clean_pool_use_passes() -> None:
    fm = FakeManager()
    async with leak_check(), aiolease.Pool(fm, max_size=3) as pool:
        async with pool.acquire() as resource:
            await resource.use()
        resource = await pool.acquire()
        await pool.release(resource)
    fm.assert_all_closed()


async def test_cancelled_acquirer_leaves_no_leak() -> None:
    fm = FakeManager()
    gate = fm.block("create", calls=1)
    async with leak_check(), aiolease.Pool(fm, max_size=1) as pool:
        task = asyncio.ensure_future(pool.acquire())
        await gate.wait_arrived()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        gate.open()
        async with pool.acquire() as resource:  # the creation the cancelled task started
            assert resource.id == 1
    fm.assert_all_closed()


async def test_fixture_passes_a_clean_test(aiolease_leaks: LeakCheck) -> None:
    assert aiolease_leaks.tracker in _tracking.active
    async with aiolease.Pool(FakeManager()) as pool, pool.acquire() as resource:
        await resource.use()
    assert aiolease_leaks.leaks() == []


@pytest.mark.aiolease_leak_check
async def test_marker_applies_the_fixture(request: pytest.FixtureRequest) -> None:
    assert "aiolease_leaks" in request.fixturenames
    assert len(_tracking.active) == 1


# -- merged from the former acceptance suite (tests/acceptance/test_contract_pools.py)


def test_fake_manager_and_connection_no_args() -> None:
    fm = FakeManager()
    assert isinstance(fm, aiolease.abc.Manager)
    conn = FakeConnection()
    assert conn.statements == []

    async def main() -> None:
        await conn.execute("SELECT 1")
        async with aiolease.atomic(conn):
            await conn.execute("INSERT INTO t VALUES ($1)", 1)
        assert conn.statements[0] == "SELECT 1"
        assert any(s.upper().startswith("BEGIN") for s in conn.statements)
        assert conn.statements[-1].upper().startswith("COMMIT")
        assert "INSERT INTO t VALUES ($1)" in conn.statements

    vrun(main)


def test_leak_check_names_pool_left_open() -> None:
    pools: list[Pool[FakeResource]] = []

    async def leaky() -> None:
        async with leak_check():
            pools.append(Pool(FakeManager(), name="forgotten-pool"))
            await pools[0].open()

    async def main() -> None:
        with pytest.raises(AssertionError, match="forgotten-pool"):
            await leaky()
        await pools[0].aclose()

    vrun(main)


def test_leak_check_names_checked_out_resource() -> None:
    fm = FakeManager()
    pool = Pool(fm, name="outside-pool")
    held: list[FakeResource] = []

    inner: list[Pool[FakeResource]] = []

    async def leaky() -> None:
        async with leak_check():
            inner.append(Pool(fm, name="holder-pool"))
            held.append(await inner[0].acquire())
            held.append(await pool.acquire())  # a pool made outside: its lease is not named

    async def main() -> None:
        with pytest.raises(AssertionError) as ei:
            await leaky()
        text = str(ei.value)
        assert repr(held[0]) in text
        assert "checked out" in text
        assert repr(held[1]) not in text
        await inner[0].release(held[0])
        await pool.release(held[1])
        await inner[0].aclose()
        await pool.aclose()

    vrun(main)


def test_leak_check_names_only_pools_created_inside() -> None:
    fm = FakeManager()
    made: list[Pool[FakeResource]] = []

    async def leaky(outer: Pool[FakeResource]) -> None:
        async with leak_check():
            await outer.acquire()  # made outside the check: not named
            made.append(Pool(fm, name="inner-pool"))
            await made[0].open()

    async def main() -> None:
        outer = Pool(fm, name="outer-pool")
        await outer.open()
        with pytest.raises(AssertionError) as ei:
            await leaky(outer)
        assert "inner-pool" in str(ei.value)
        assert "outer-pool" not in str(ei.value)
        await made[0].aclose()
        await outer.aclose(timeout=0)

    vrun(main)


def test_leak_check_names_open_transaction() -> None:
    conn = FakeConnection()
    cms: list[Any] = []

    async def leaky() -> None:
        async with leak_check():
            cms.append(aiolease.atomic(conn))
            await cms[0].__aenter__()

    async def main() -> None:
        with pytest.raises(AssertionError, match=r"(?i)transaction"):
            await leaky()
        await cms[0].__aexit__(None, None, None)
        assert not conn.in_transaction

    vrun(main)


def test_leak_check_passes_clean_code() -> None:
    async def main() -> None:
        async with leak_check():
            async with Pool(FakeManager(), name="clean") as pool, pool.acquire():
                pass
            conn = FakeConnection()
            async with aiolease.atomic(conn):
                await conn.execute("SELECT 1")

    vrun(main)


def _run_pytest(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(source))
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
    )
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-rA", "-p", "no:cacheprovider", "test_inner.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )


def test_aiolease_leaks_fixture_fails_leaky_test_and_passes_clean(tmp_path: Path) -> None:
    proc = _run_pytest(
        tmp_path,
        """
        from aiolease import Pool
        from aiolease.testing import FakeManager

        async def test_leaky(aiolease_leaks):
            pool = Pool(FakeManager(), name="fixture-leaked-pool")
            await pool.acquire()

        async def test_clean(aiolease_leaks):
            async with Pool(FakeManager(), name="fine") as pool:
                async with pool.acquire():
                    pass
        """,
    )
    out = proc.stdout + proc.stderr
    assert "fixture-leaked-pool" in out, out
    assert "PASSED test_inner.py::test_clean" in out, out
    assert "ERROR test_inner.py::test_leaky" in out or "FAILED test_inner.py::test_leaky" in out, (
        out
    )


async def test_a_limiter_is_examined_when_made_inside_the_check() -> None:
    """docs/limits.md and testing.md: a limiter made inside leak_check() and left with a
    waiter is reported; one made before it (at import time) is not examined."""
    before = aiolease.ConcurrencyLimiter(1)
    held = await before.acquire()
    waiter = asyncio.ensure_future(before.acquire())
    async with leak_check():
        await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    held.release()
    check = leak_check()
    async with check:
        inside = aiolease.ConcurrencyLimiter(1)
        held = await inside.acquire()
        waiter = asyncio.ensure_future(inside.acquire())
        await asyncio.sleep(0)
        leaks = check.leaks()
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        held.release()
    assert any("still waiting on the default key" in leak for leak in leaks), leaks
    assert any("1 slot(s) still held on the default key" in leak for leak in leaks), leaks


@pytest.mark.aiolease_virtual_time
async def test_what_leak_check_does_not_examine() -> None:
    """Documented limits: a lease from a pool made before the check, a transaction begun
    by hand, a task left running."""
    async with Pool(FakeManager(), max_size=1) as pool:
        conn = FakeConnection()
        async with leak_check() as check:
            resource = await pool.acquire()
            await conn.execute("BEGIN")
            task = asyncio.create_task(asyncio.sleep(10))
        assert check.leaks() == []
        task.cancel()
        await pool.release(resource)
