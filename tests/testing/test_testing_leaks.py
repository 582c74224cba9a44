"""Tests of aiolease.testing.leak_check and the aiolease_leaks fixture."""

from __future__ import annotations

import asyncio

import pytest

import aiolease
from aiolease import _tracking
from aiolease.testing import FakeManager, FakeResource, LeakCheck, leak_check

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
