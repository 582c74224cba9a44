"""resize, expire, and discarding broken resources (check/reset errors, discard=True,
fatal body errors, resources marked broken)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pool_helpers import (
    NO_HANG,
    DuckManager,
    Res,
    assert_closed_cleanly,
    assert_consistent,
    closed,
    duck_pool,
    now,
    settle,
    start_acquire,
    vrun,
)

import aiolease
import aiolease.abc
from aiolease import (
    AioleaseError,
    Pool,
    ResourceInfo,
    WouldBlock,
)
from aiolease._tracking import mark_broken
from aiolease.testing import (
    FakeManager,
    FakeResource,
    ResourceKilled,
)

pytestmark = [pytest.mark.aiolease_virtual_time, NO_HANG]


# -- resize ----------------------------------------------------------------------------------


async def test_resize_up_serves_waiters() -> None:
    fm = FakeManager()
    pool = Pool(fm, max_size=1)
    await pool.open()
    held = await pool.acquire()
    waiters = [start_acquire(pool) for _ in range(3)]
    await asyncio.sleep(0)
    await pool.resize(max_size=3)
    got = [await waiters[0], await waiters[1]]  # two new slots: the two oldest waiters
    await asyncio.sleep(0)
    assert not waiters[2].done()
    assert pool.statistics().size == 3
    await pool.release(held)
    got.append(await waiters[2])
    for r in got:
        await pool.release(r)
    assert_consistent(pool, fm)
    await pool.aclose()
    assert_closed_cleanly(pool, fm)


async def test_resize_down_closes_surplus_idle_before_returning() -> None:
    fm = FakeManager()
    fm.delay("close", 3.0)
    pool = Pool(fm, min_size=4, max_size=4)
    await pool.open()
    loop = asyncio.get_running_loop()
    start = loop.time()
    await pool.resize(min_size=1, max_size=2)
    assert loop.time() - start == pytest.approx(3.0)  # returned after the closes it caused
    st = pool.statistics()
    assert (st.size, st.idle, st.min_size, st.max_size) == (2, 2, 1, 2)
    assert fm.closed == 2
    assert_consistent(pool, fm)
    await pool.aclose()
    assert_closed_cleanly(pool, fm)


async def test_resize_down_retires_in_use_surplus_on_release() -> None:
    fm = FakeManager()
    pool = Pool(fm, max_size=3)
    await pool.open()
    held = [await pool.acquire() for _ in range(3)]
    await pool.resize(max_size=1)
    stats = pool.statistics()
    assert stats.size == 3  # cannot take resources from their holders
    # The bound in force falls with the surplus: size <= max_size at every instant.
    assert stats.max_size == 3
    assert pool.max_size == 1  # the one configured
    assert "size=3/3" in repr(pool)
    assert_consistent(pool, fm, max_size=3)
    waiter = start_acquire(pool)
    await pool.release(held[0])
    assert held[0].closed
    assert (pool.statistics().size, pool.statistics().max_size) == (2, 2)
    await pool.release(held[1])
    assert held[1].closed
    assert (pool.statistics().size, pool.statistics().max_size) == (1, 1)
    await pool.release(held[2])  # back within max_size: goes to the waiter
    assert await waiter is held[2]
    await pool.release(held[2])
    assert pool.statistics().size == 1
    assert_consistent(pool, fm)
    await pool.aclose()
    assert_closed_cleanly(pool, fm)


async def test_resize_down_does_not_count_closes_in_flight_as_surplus() -> None:
    # One resource is being closed (slowly): its slot is freed when that close ends, so a
    # resize to size - 1 has no other surplus, now or when a lease comes back.
    fm = FakeManager()
    fm.delay("close", 5.0)
    pool = Pool(fm, max_size=4)
    await pool.open()
    held = [await pool.acquire() for _ in range(4)]
    discard = asyncio.create_task(pool.release(held[0], discard=True))
    await asyncio.sleep(0.1)
    for r in held[1:3]:
        await pool.release(r)
    await pool.resize(max_size=3)
    await pool.release(held[3])
    await discard
    await settle(pool)
    st = pool.statistics()
    assert (st.size, st.idle, st.closed) == (3, 3, 1), st
    assert_consistent(pool, fm)
    await pool.aclose()
    assert_closed_cleanly(pool, fm)


async def test_resize_min_size_up_fills_in_background() -> None:
    fm = FakeManager()
    pool = Pool(fm, max_size=5)
    await pool.open()
    await pool.resize(min_size=3)
    await settle(pool)
    assert pool.statistics().idle == 3
    await pool.aclose()
    assert_closed_cleanly(pool, fm)


async def test_resize_rejects_bad_bounds() -> None:
    fm = FakeManager()
    pool = Pool(fm, min_size=1, max_size=3)
    with pytest.raises(ValueError, match=r"min_size \(4\) must be <= max_size \(3\)"):
        await pool.resize(min_size=4)
    with pytest.raises(ValueError, match="max_size"):
        await pool.resize(max_size=0)
    with pytest.raises(TypeError, match="min_size"):
        await pool.resize(min_size=1.5)  # type: ignore[arg-type]
    assert (pool.min_size, pool.max_size) == (1, 3)
    await pool.resize(min_size=0, max_size=1)  # before open: just the bounds
    assert (pool.min_size, pool.max_size) == (0, 1)
    assert fm.calls["create"] == 0


# -- expire ----------------------------------------------------------------------------------


async def test_expire_retires_idle_now_and_in_use_on_release() -> None:
    fm = FakeManager()
    fm.delay("close", 2.0)
    pool = Pool(fm, max_size=3)
    await pool.open()
    a, b, c = [await pool.acquire() for _ in range(3)]
    await pool.release(a)
    await pool.release(b)
    loop = asyncio.get_running_loop()
    start = loop.time()
    await pool.expire()
    assert loop.time() - start == pytest.approx(2.0)  # returned after the idle closes
    assert (a.closed, b.closed, c.close_calls) == (True, True, 0)
    async with pool.acquire() as fresh:
        assert fresh.id == 4  # replaced on demand
    await pool.release(c)
    assert c.closed
    assert_consistent(pool, fm)
    await pool.aclose()
    assert_closed_cleanly(pool, fm)


async def test_expire_does_not_retire_resources_created_after() -> None:
    fm = FakeManager()
    pool = Pool(fm, max_size=2)
    await pool.open()
    await pool.expire()
    async with pool.acquire() as r:
        pass
    async with pool.acquire() as r2:
        assert r2 is r
    await pool.aclose()
    assert_closed_cleanly(pool, fm)


async def test_expire_retires_a_resource_whose_creation_began_before() -> None:
    """A creation in flight when expire() is called (a connect to the old primary during
    a failover) makes a resource of the old generation: it is closed, not handed out,
    and its acquirer gets one created after."""
    fm = FakeManager()
    pool = Pool(fm, max_size=2)
    await pool.open()
    gate = fm.block("create", calls=1)
    waiter = start_acquire(pool)
    await gate.wait_arrived()
    await pool.expire()
    gate.open()
    r = await waiter
    assert r.id == 2, r
    assert fm.resources[0].closed
    await pool.release(r)
    await pool.aclose()
    assert_closed_cleanly(pool, fm)


# -- discard ---------------------------------------------------------------------------------


async def test_check_runs_on_idle_not_on_fresh_resources() -> None:
    fm = FakeManager()
    pool = Pool(fm, max_size=2)
    await pool.open()
    async with pool.acquire() as r:
        pass
    assert fm.calls["check"] == 0  # fresh: not checked
    async with pool.acquire() as r2:
        assert r2 is r
    assert [e.resource for e in fm.events_of("checked")] == [r.id]
    await pool.aclose()
    assert_closed_cleanly(pool, fm)


async def test_handed_off_resource_is_not_checked() -> None:
    fm = FakeManager()
    pool = Pool(fm, max_size=1)
    await pool.open()
    r = await pool.acquire()
    waiter = start_acquire(pool)
    await asyncio.sleep(0)
    await pool.release(r)  # reset, then straight to the waiter: no check needed
    assert await waiter is r
    assert fm.calls["check"] == 0
    await pool.release(r)
    await pool.aclose()
    assert_closed_cleanly(pool, fm)


async def test_failed_check_discards_and_tries_next() -> None:
    fm = FakeManager()
    fm.fail("check", when=lambda call: call.resource is not None and call.resource.id == 1)
    pool = Pool(fm, min_size=2, max_size=2)
    await pool.open()
    async with pool.acquire() as r:  # r1 (idle longest) fails its check; r2 is handed out
        assert r.id == 2
        assert not r.closed
    assert fm.resources[0].closed
    assert pool.statistics().discarded == 1
    await settle(pool)
    assert_consistent(pool, fm)  # min_size refilled after the discard
    assert pool.statistics().size == 2
    await pool.aclose()
    assert_closed_cleanly(pool, fm)


async def test_killed_idle_resource_is_replaced_by_check() -> None:
    fm = FakeManager()
    pool = Pool(fm, max_size=1)
    await pool.open()
    async with pool.acquire() as r:
        pass
    r.kill()  # e.g. the server dropped an idle connection
    async with pool.acquire() as r2:
        assert r2.id == 2
        await r2.use()
    assert isinstance(fm.events_of("checked", ok=False)[0].error, ResourceKilled)
    await pool.aclose()
    assert_closed_cleanly(pool, fm)


async def test_failed_reset_discards_and_frees_slot() -> None:
    fm = FakeManager()
    fm.fail("reset", calls=1)
    pool = Pool(fm, max_size=1)
    await pool.open()
    waiter_result = None
    r = await pool.acquire()
    waiter = start_acquire(pool)
    await asyncio.sleep(0)
    await pool.release(r)  # does not raise the reset error
    assert r.closed
    waiter_result = await waiter
    assert waiter_result.id == 2  # the freed slot served the waiter
    await pool.release(waiter_result)
    assert pool.statistics().discarded == 1
    assert_consistent(pool, fm)
    await pool.aclose()
    assert_closed_cleanly(pool, fm)


async def test_release_discard_true_closes_before_returning() -> None:
    fm = FakeManager()
    fm.delay("close", 1.5)
    pool = Pool(fm, max_size=1)
    await pool.open()
    r = await pool.acquire()
    loop = asyncio.get_running_loop()
    start = loop.time()
    await pool.release(r, discard=True)
    assert r.closed
    assert loop.time() - start == pytest.approx(1.5)
    assert fm.calls["reset"] == 0
    assert pool.statistics().size == 0
    await pool.aclose()
    assert_closed_cleanly(pool, fm)


class _SlowCloseManager(FakeManager):
    close_timeout = 1.0


@pytest.mark.parametrize("how", ["discard", "failed reset", "failed check", "retired"])
async def test_a_discarded_resource_whose_close_is_abandoned_is_counted_once(how: str) -> None:
    # statistics().discarded counts resources: one discarded (or retired) and then abandoned
    # at close_timeout is one, not two.
    fm = _SlowCloseManager()
    fm.delay("close", 100.0)
    pool = Pool(fm, max_size=1)
    await pool.open()
    r = await pool.acquire()
    if how == "failed reset":
        fm.fail("reset")
    await pool.release(r, discard=how == "discard")
    if how == "failed check":
        fm.fail("check")
        with pytest.raises(aiolease.PoolTimeout):  # its replacement waits for the close
            await pool.acquire(timeout=0.5)
    if how == "retired":
        await pool.expire()
    await settle(pool)
    st = pool.statistics()
    assert (st.created, st.closed, st.discarded) == (1, 1, 1), st
    await pool.aclose()
    assert pool.statistics().discarded == 1


async def test_fatal_body_error_discards_resource() -> None:
    fm = FakeManager(fatal=(ConnectionError,))
    pool = Pool(fm, max_size=1)
    await pool.open()
    with pytest.raises(ConnectionError, match="lost"):  # the body's error propagates unchanged
        async with pool.acquire() as r:
            raise ConnectionError("lost")
    assert r.closed
    assert pool.statistics().discarded == 1
    with pytest.raises(ValueError, match="harmless"):
        async with pool.acquire() as r2:
            raise ValueError("harmless")  # not fatal: reused
    assert not r2.closed
    async with pool.acquire() as r3:
        assert r3 is r2
    await pool.aclose()
    assert_closed_cleanly(pool, fm)


async def test_killed_resource_error_in_body_is_fatal() -> None:
    fm = FakeManager()
    pool = Pool(fm, max_size=1)
    await pool.open()

    async def body() -> FakeResource:
        async with pool.acquire() as r:
            r.kill()
            await r.use()
        return r

    with pytest.raises(ResourceKilled):
        await body()
    (r,) = fm.resources
    assert r.closed
    await pool.aclose()
    assert_closed_cleanly(pool, fm)


async def test_resource_marked_broken_is_discarded_on_release() -> None:
    fm = FakeManager()
    close_gate = fm.block("close")  # a close that hangs (a dead peer)
    pool = Pool(fm, max_size=1)
    await pool.open()
    loop = asyncio.get_running_loop()
    async with pool.acquire() as r:
        mark_broken(r)  # e.g. connection lost during COMMIT
        left_at = loop.time()
    # The exit did not wait for the close: it runs in a pool-owned task.
    assert loop.time() == left_at
    assert close_gate.blocked == 0 or not r.closed
    assert fm.calls["reset"] == 0
    await close_gate.wait_arrived()
    close_gate.open()
    await settle(pool)
    assert r.closed
    assert pool.statistics().discarded == 1
    async with pool.acquire() as r2:
        assert r2.id == 2
    r3 = await pool.acquire()
    mark_broken(r3)
    await pool.release(r3)  # returns at once; aclose awaits the close
    await pool.aclose()
    assert r3.closed
    assert_closed_cleanly(pool, fm)


class _SilentPeerManager(FakeManager):
    """The first resource's peer goes silent: its graceful close hangs (bounded only by
    close_timeout) unless it was aborted first, as a driver's close of a cut connection
    returns at once."""

    close_timeout = 5.0

    def __init__(self) -> None:
        super().__init__(fatal=(ResourceKilled,))
        self.aborted: list[FakeResource] = []

    def abort(self, resource: FakeResource) -> None:
        self.aborted.append(resource)

    async def close(self, resource: FakeResource) -> None:
        if resource.id == 1 and resource not in self.aborted:
            await asyncio.sleep(3600)
        await super().close(resource)


@pytest.mark.parametrize("how", ["marked broken", "fatal error", "failed check"])
async def test_a_broken_resource_is_aborted_first_and_its_slot_freed_at_once(how: str) -> None:
    fm = _SilentPeerManager()
    loop = asyncio.get_running_loop()
    async with Pool(fm, max_size=1) as pool:
        if how == "failed check":
            async with pool.acquire():
                pass
            fm.fail("check", calls=1)
            start = loop.time()
            async with pool.acquire() as r2:  # the idle one failed its check: a new one
                assert r2.id == 2
        else:
            start = loop.time()
            with pytest.raises(ResourceKilled):  # noqa: PT012 - the block under test
                async with pool.acquire() as r:
                    if how == "marked broken":
                        mark_broken(r)  # e.g. a COMMIT cancelled on a silent peer
                    raise ResourceKilled("the connection was lost")
        await settle(pool)
        (first, *_) = fm.resources
        # Cut before its close, which then had nothing to wait for: the slot was free at
        # the same instant, not after close_timeout.
        assert fm.aborted == [first]
        assert first.closed
        assert loop.time() == start
        assert pool.statistics().size == (1 if how == "failed check" else 0)
        async with pool.acquire() as again:
            assert not again.closed
    assert_closed_cleanly(pool, fm)


async def test_a_resource_whose_body_was_cancelled_is_closed_gracefully() -> None:
    # Even when the manager calls the cancellation fatal (asyncpg in public mode): the
    # driver may still be cancelling a statement, which a graceful close lets reach the server.
    fm = _SilentPeerManager()
    fm.fatal = (ResourceKilled, asyncio.CancelledError)
    loop = asyncio.get_running_loop()
    async with Pool(fm, max_size=1) as pool:
        inside = asyncio.Event()

        async def body() -> None:
            async with pool.acquire():
                inside.set()
                await asyncio.sleep(3600)

        task = asyncio.create_task(body())
        await inside.wait()
        start = loop.time()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert loop.time() - start == pytest.approx(fm.close_timeout)
        assert fm.aborted == fm.resources[:1]  # by the close_timeout, not before


async def test_a_resource_discarded_by_its_holder_is_closed_gracefully() -> None:
    # discard=True says nothing about the peer: no abort unless the close outlasts its bound.
    fm = _SilentPeerManager()
    loop = asyncio.get_running_loop()
    async with Pool(fm, max_size=1) as pool:
        r = await pool.acquire()
        start = loop.time()
        await pool.release(r, discard=True)
        assert loop.time() - start == pytest.approx(fm.close_timeout)
        assert fm.aborted == [r]  # by the close_timeout, not before


# -- the manager's synchronous fast paths ----------------------------------------------------


class _SelectiveFakeManager(FakeManager):
    """Skips ``check`` for resources marked healthy and ``reset`` for clean ones."""

    def check_needed(self, resource: FakeResource, info: ResourceInfo) -> bool:
        return not resource.data.get("healthy", False)

    def reset_needed(self, resource: FakeResource, info: ResourceInfo) -> bool:
        return bool(resource.data.get("dirty", False))


async def test_check_needed_and_reset_needed_skip_the_awaits() -> None:
    fm = _SelectiveFakeManager()
    pool = Pool(fm, max_size=1)
    await pool.open()
    async with pool.acquire() as r:
        r.data["healthy"] = True
    assert fm.calls["reset"] == 0  # not dirty: put straight back
    async with pool.acquire() as r:
        r.data["healthy"] = False
        r.data["dirty"] = True
    assert fm.calls["check"] == 0  # healthy: not checked
    assert fm.calls["reset"] == 1
    async with pool.acquire() as r:
        pass
    assert fm.calls["check"] == 1  # suspicious: checked
    await pool.aclose()
    assert_closed_cleanly(pool, fm)


class _IdleRecorder(FakeManager):
    """Records every on_idle call and every checkout of an idle resource."""

    def __init__(self) -> None:
        super().__init__()
        self.idle_log: list[tuple[str, int]] = []

    def on_idle(self, resource: FakeResource, info: ResourceInfo) -> None:
        self.idle_log.append(("idle", resource.id))

    def check_needed(self, resource: FakeResource, info: ResourceInfo) -> bool:
        self.idle_log.append(("checkout", resource.id))
        return False


async def test_on_idle_is_called_when_a_resource_starts_to_sit_idle() -> None:
    fm = _IdleRecorder()
    pool = Pool(fm, min_size=1, max_size=1)
    await pool.open()
    assert fm.idle_log == [("idle", 1)]  # created by the prefill, nobody waiting
    async with pool.acquire():
        assert fm.idle_log == [("idle", 1), ("checkout", 1)]
    assert fm.idle_log[-1] == ("idle", 1)  # released, nobody waiting
    fm.idle_log.clear()

    # Passed straight from one task to the next: never idle in between.
    holding, queued = asyncio.Event(), asyncio.Event()

    async def first() -> None:
        async with pool.acquire():
            holding.set()
            await queued.wait()

    async def second() -> None:
        await holding.wait()
        waiter = asyncio.ensure_future(pool.acquire().__aenter__())
        await asyncio.sleep(0)  # queued behind the holder
        queued.set()
        resource = await waiter
        assert fm.idle_log == [("checkout", 1)]  # no on_idle for the hand-off
        await pool.release(resource)

    await asyncio.gather(first(), second())
    assert fm.idle_log == [("checkout", 1), ("idle", 1)]  # idle again after the last release
    await pool.aclose()
    assert_closed_cleanly(pool, fm)


async def test_on_idle_after_a_reset() -> None:
    fm = _IdleRecorder()
    pool = Pool(fm, max_size=1)
    await pool.open()
    async with pool.acquire():
        pass  # FakeManager has no reset_needed: the reset runs, then the resource goes idle
    assert fm.calls["reset"] == 1
    assert fm.idle_log == [("idle", 1)]
    await pool.aclose()
    assert_closed_cleanly(pool, fm)


@pytest.mark.parametrize("hook", ["check", "on_acquire", "on_release", "on_idle"])
async def test_each_hook_given_the_info_sees_the_last_release_time(hook: str) -> None:
    # The inlined release to idle skips the clock when nothing can read last_used_at:
    # each hook that is given the ResourceInfo must still see it.
    seen: list[float] = []

    async def create(self: Any) -> object:
        return object()

    async def record_async(self: Any, resource: object, info: ResourceInfo) -> None:
        seen.append(info.last_used_at)

    def record(self: Any, resource: object, info: ResourceInfo) -> None:
        seen.append(info.last_used_at)

    manager_class: Any = type(
        "OneHook",
        (aiolease.abc.Manager,),
        {"create": create, hook: record_async if hook == "check" else record},
    )
    pool = Pool(manager_class(), max_size=1)
    await pool.open()
    loop = asyncio.get_running_loop()
    async with pool.acquire():
        await asyncio.sleep(5)
    released_at = loop.time()
    await asyncio.sleep(10)
    async with pool.acquire():
        pass
    await pool.aclose()
    expected = released_at + 10 if hook in ("on_release", "on_idle") else released_at
    assert seen
    assert seen[-1] == expected


# -- merged from the former acceptance suite (tests/acceptance/test_contract_pools.py)


def test_duck_typed_manager_works() -> None:
    async def main() -> None:
        m = DuckManager()
        async with duck_pool(m, max_size=2) as pool:
            async with pool.acquire() as r:
                assert r.n == 1
            assert m.checked == []  # fresh resource: no check
            assert m.reset_calls == [1]
            async with pool.acquire() as r:
                assert r.n == 1
            assert m.checked == [1]  # idle resource handed out: checked
        assert m.closed == [1]

    vrun(main)


def test_abc_manager_with_only_create() -> None:
    made: list[Res] = []

    class OnlyCreate(aiolease.abc.Manager[Res]):
        async def create(self) -> Res:
            made.append(Res(len(made)))
            return made[-1]

    async def main() -> None:
        async with Pool(OnlyCreate(), min_size=1, max_size=2) as pool:
            async with pool.acquire() as a, pool.acquire() as b:
                assert a is not b
            r = pool.acquire_nowait()
            await pool.release(r, discard=True)
            assert pool.statistics().size == 1

    vrun(main)
    assert len(made) == 2


@pytest.mark.parametrize("sync_close", [False, True, None])
def test_from_callables(sync_close: bool | None) -> None:
    closed: list[Res] = []

    async def create() -> Res:
        return Res(1)

    async def aclose_fn(r: Res) -> None:
        closed.append(r)

    def close_fn(r: Res) -> None:
        closed.append(r)

    async def main() -> None:
        if sync_close is None:
            pool = Pool.from_callables(create, min_size=1, max_size=2, name="fc")
        elif sync_close:
            pool = Pool.from_callables(create, close_fn, min_size=1, max_size=2)
        else:
            pool = Pool.from_callables(create, close=aclose_fn, min_size=1, max_size=2)
        async with pool:
            async with pool.acquire() as r:
                assert isinstance(r, Res)
            assert pool.statistics().size == 1
        assert pool.statistics().size == 0

    vrun(main)
    assert len(closed) == (0 if sync_close is None else 1)


def test_check_runs_on_idle_handed_out_not_on_fresh() -> None:
    async def main() -> None:
        fm = FakeManager()
        async with Pool(fm, max_size=2) as pool:
            a = await pool.acquire()
            b = await pool.acquire()
            assert fm.calls["check"] == 0
            await pool.release(a)
            await pool.release(b)
            async with pool.acquire():
                pass
            assert fm.calls["check"] == 1

    vrun(main)


def test_min_size_prefilled_resources_are_idle_and_checked() -> None:
    async def main() -> None:
        fm = FakeManager()
        async with Pool(fm, min_size=1, max_size=1) as pool:
            async with pool.acquire():
                pass
            assert fm.calls["check"] == 1

    vrun(main)


def test_failed_check_discards_and_acquirer_still_served() -> None:
    async def main() -> None:
        fm = FakeManager()
        fm.fail("check", calls=1)
        async with Pool(fm, min_size=1, max_size=1) as pool:
            first = fm.resources[0]
            async with pool.acquire() as r:
                assert r is not first
            assert first.closed
            assert pool.statistics().size == 1
        fm.assert_no_violations()

    vrun(main)


def test_failed_reset_discards() -> None:
    async def main() -> None:
        fm = FakeManager()
        fm.fail("reset", calls=1)
        async with Pool(fm, max_size=1) as pool:
            async with pool.acquire() as r:
                pass
            assert r.closed  # release returned after the close it caused
            assert pool.statistics().size == 0
            async with pool.acquire() as r2:
                assert r2 is not r

    vrun(main)


def test_acquire_nowait() -> None:
    async def main() -> None:
        fm = FakeManager()
        pool = Pool(fm, min_size=1, max_size=2)
        with pytest.raises(WouldBlock):
            pool.acquire_nowait()  # not open
        async with pool:
            r = pool.acquire_nowait()
            assert fm.calls["check"] == 0  # nowait cannot await check
            with pytest.raises(WouldBlock):
                pool.acquire_nowait()  # none idle (even though it could create)
            await pool.release(r)
            r2 = pool.acquire_nowait()
            assert r2 is r
            assert fm.calls["check"] == 0
            await pool.release(r2)
        with pytest.raises(WouldBlock):
            pool.acquire_nowait()  # closed

    vrun(main)


def test_release_discard_returns_after_close_completed() -> None:
    async def main() -> None:
        fm = FakeManager()
        fm.delay("close", 5)
        async with Pool(fm, max_size=1) as pool:
            r = await pool.acquire()
            t0 = now()
            await pool.release(r, discard=True)
            assert now() == t0 + 5
            assert r.closed
            s = pool.statistics()
            assert (s.size, s.closed) == (0, 1)

    vrun(main)


def test_release_returns_after_reset_completed() -> None:
    async def main() -> None:
        m = DuckManager()
        m.reset_delay = 3
        async with duck_pool(m, max_size=1) as pool:
            r = await pool.acquire()
            await pool.release(r)
            assert m.reset_calls == [1]
            assert pool.statistics().idle == 1

    vrun(main)


def test_release_of_foreign_or_twice_released_resource_raises() -> None:
    async def main() -> None:
        async with Pool(FakeManager(), max_size=1) as pool:
            r = await pool.acquire()
            await pool.release(r)
            with pytest.raises((ValueError, AioleaseError)):
                await pool.release(r)
            assert pool.statistics().idle == 1

    vrun(main)


def test_fatal_error_in_body_discards_resource() -> None:
    async def main() -> None:
        fm = FakeManager(fatal=(ConnectionError,))
        async with Pool(fm, max_size=1) as pool:
            with pytest.raises(ConnectionError):
                async with pool.acquire() as r:
                    raise ConnectionError("broken pipe")
            assert r.closed
            with pytest.raises(KeyError):
                async with pool.acquire() as r2:
                    raise KeyError("not fatal")
            assert not r2.closed
            assert pool.statistics().idle == 1

    vrun(main)


def test_expire_closes_idle_now_in_use_on_release() -> None:
    async def main() -> None:
        fm = FakeManager()
        fm.delay("close", 2)
        async with Pool(fm, min_size=0, max_size=3) as pool:
            a = await pool.acquire()
            b = await pool.acquire()
            await pool.release(b)
            t0 = now()
            await pool.expire()
            assert now() == t0 + 2  # returned after the close it caused
            assert closed(b)
            assert not closed(a)
            await pool.release(a)
            assert closed(a)  # retired on release, and release waited for it
            async with pool.acquire() as c:
                assert c not in (a, b)
            assert pool.statistics().size == 1

    vrun(main)


def test_resize_shrink_returns_after_closes_and_grow_serves_waiters() -> None:
    async def main() -> None:
        fm = FakeManager()
        fm.delay("close", 1)
        async with Pool(fm, min_size=3, max_size=4) as pool:
            held = await pool.acquire()
            t0 = now()
            await pool.resize(min_size=0, max_size=1)
            assert now() == t0 + 1
            s = pool.statistics()
            assert (s.size, s.idle, s.in_use, s.max_size, s.min_size) == (1, 0, 1, 1, 0)
            waiter = asyncio.ensure_future(pool.acquire(timeout=None))
            await settle()
            assert not waiter.done()
            await pool.resize(max_size=2)
            r2 = await waiter
            assert r2 is not held
            await pool.resize(max_size=1)  # both in use: nothing closed yet
            assert pool.statistics().size == 2
            await pool.release(r2)
            assert r2.closed  # surplus closed when released
            assert pool.statistics().size == 1
            await pool.release(held)
            assert not held.closed

    vrun(main)


def test_resize_grow_min_size_fills_in_background() -> None:
    async def main() -> None:
        fm = FakeManager()
        async with Pool(fm, max_size=5) as pool:
            await pool.resize(min_size=3)
            await settle()
            assert pool.statistics().idle == 3

    vrun(main)


def test_body_exception_propagates_unchanged_when_reset_fails() -> None:
    async def main() -> None:
        fm = FakeManager()
        fm.fail("reset")
        async with Pool(fm, max_size=1) as pool:
            with pytest.raises(KeyError, match="body"):
                async with pool.acquire():
                    raise KeyError("body")
            assert pool.statistics().size == 0

    vrun(main)


def test_cancelled_expire_still_closes_and_refills() -> None:
    async def main() -> None:
        fm = FakeManager()
        fm.delay("close", 5)
        async with Pool(fm, min_size=2, max_size=2) as pool:
            first = list(fm.resources)
            t = asyncio.ensure_future(pool.expire())
            await settle()
            t.cancel()
            with pytest.raises(asyncio.CancelledError):
                await t
            await asyncio.sleep(10)
            assert all(closed(r) for r in first)
            s = pool.statistics()
            assert (s.size, s.idle) == (2, 2)

    vrun(main)
