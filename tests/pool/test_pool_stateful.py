"""Hypothesis stateful test: random interleavings of acquire, release, cancel, timeout,
failing create/check/reset, resize, expire and close never break the pool invariants.

Each example runs on a fresh :class:`~aiolease.testing.VirtualTimeLoop` (driven
step by step through an ``asyncio.Runner``), so delays and timeouts cost no
real time and every run of an example is identical.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from pool_shapes import SHAPES, shaped_pool, tracks_leases

from aiolease import (
    Pool,
    PoolClosed,
    PoolStatistics,
    PoolTimeout,
    TooManyWaiters,
    WouldBlock,
    _tracking,
)
from aiolease.testing import FakeManager, FakeResource, InjectedFault, VirtualTimeLoop

#: The statistics that only ever grow.
MONOTONE = (
    "acquired",
    "created",
    "closed",
    "timeouts",
    "wait_time_total",
    "wait_time_max",
    "leaks",
    "create_errors",
    "discarded",
)

#: What a pending acquire may legitimately end with, besides a resource.
EXPECTED_ACQUIRE_ERRORS = (
    PoolTimeout,
    PoolClosed,
    TooManyWaiters,
    InjectedFault,
    asyncio.CancelledError,
)

OPS = ("create", "check", "reset")


class PoolMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.runner = asyncio.Runner(loop_factory=VirtualTimeLoop)
        self.fm = FakeManager(fatal=(ConnectionError,))
        self.pool: Pool[FakeResource] | None = None
        self.held: dict[int, FakeResource] = {}
        self.pending: list[asyncio.Task[FakeResource]] = []
        self.releasing: list[asyncio.Task[None]] = []
        self.closing: asyncio.Task[None] | None = None
        self.ceiling = 0  # size bound: max_size, or more right after a resize down
        self.shape = ""
        self.tracker = _tracking.Tracker()
        self.last: PoolStatistics | None = None  # the previous invariant check's snapshot

    # -- helpers ---------------------------------------------------------------------------

    @property
    def p(self) -> Pool[FakeResource]:
        assert self.pool is not None
        return self.pool

    def run(self, coro: Any) -> Any:
        return self.runner.run(coro)

    async def _spin(self, n: int = 30) -> None:
        for _ in range(n):
            await asyncio.sleep(0)

    def _harvest(self) -> None:
        """Collect finished acquires: a resource joins `held`, an error must be expected."""
        still: list[asyncio.Task[FakeResource]] = []
        for task in self.pending:
            if not task.done():
                still.append(task)
                continue
            if task.cancelled():
                continue
            exc = task.exception()
            if exc is not None:
                assert isinstance(exc, EXPECTED_ACQUIRE_ERRORS), repr(exc)
                continue
            r = task.result()
            assert r.id not in self.held, f"{r!r} handed out twice"
            assert not r.closed, f"closed {r!r} handed out"
            self.held[r.id] = r
        self.pending = still
        for t in self.releasing:
            if t.done() and not t.cancelled():
                assert t.exception() is None, repr(t.exception())
        self.releasing = [t for t in self.releasing if not t.done()]

    def _settle(self) -> None:
        self.run(self._spin())
        self._harvest()

    # -- setup -----------------------------------------------------------------------------

    @initialize(
        max_size=st.integers(1, 4),
        min_size=st.integers(0, 2),
        max_lifetime=st.sampled_from([None, 5.0, 40.0]),
        idle_timeout=st.sampled_from([None, 3.0]),
        max_waiting=st.sampled_from([None, 2]),
        leak_timeout=st.sampled_from([None, 7.0]),
        shape=st.sampled_from(SHAPES),
    )
    def make_pool(
        self,
        max_size: int,
        min_size: int,
        max_lifetime: float | None,
        idle_timeout: float | None,
        max_waiting: int | None,
        leak_timeout: float | None,
        shape: str,
    ) -> None:
        """A pool in one of the manager and configuration shapes (see pool_shapes)."""
        min_size = min(min_size, max_size)
        self.shape = shape
        if shape == "leak-check":
            _tracking.active.append(self.tracker)

        async def make() -> Pool[FakeResource]:
            pool = shaped_pool(
                shape,
                self.fm,
                min_size=min_size,
                max_size=max_size,
                max_lifetime=max_lifetime,
                idle_timeout=idle_timeout,
                max_waiting=max_waiting,
                leak_timeout=leak_timeout,
                acquire_timeout=None,
                backoff_base=0.5,
                backoff_max=4.0,
            )
            await pool.open(wait=False)
            return pool

        self.pool = self.run(make())
        self.ceiling = max_size

    # -- rules -----------------------------------------------------------------------------

    @rule(timeout=st.sampled_from([None, 0.0, 1.0, 6.0]), spins=st.integers(0, 3))
    def acquire(self, timeout: float | None, spins: int) -> None:
        pool = self.p

        async def start() -> None:
            async def go() -> FakeResource:
                return await pool.acquire(timeout=timeout)

            self.pending.append(asyncio.create_task(go()))
            await self._spin(spins)

        self.run(start())
        self._harvest()

    @rule()
    def enter_cancelled_before_it_ran(self) -> None:
        """``acquire().__aenter__()`` in a task cancelled before its first step (as
        ``wait_for(..., 0)`` does): served on the spot it is a lease like any other,
        else it must hold nothing."""
        pool = self.p

        async def go() -> None:
            entering = asyncio.ensure_future(pool.acquire().__aenter__())
            entering.cancel()
            try:
                r = await entering
            except (asyncio.CancelledError, *EXPECTED_ACQUIRE_ERRORS):
                return
            assert r.id not in self.held
            self.held[r.id] = r

        self.run(go())
        self._harvest()

    @rule()
    def acquire_nowait(self) -> None:
        async def go() -> None:
            try:
                r = self.p.acquire_nowait()
            except WouldBlock:
                return
            assert r.id not in self.held
            assert not r.closed
            self.held[r.id] = r

        self.run(go())

    @precondition(lambda self: bool(self.held))
    @rule(data=st.data(), discard=st.booleans(), kill=st.booleans())
    def release(self, data: st.DataObject, discard: bool, kill: bool) -> None:
        rid = data.draw(st.sampled_from(sorted(self.held)))
        r = self.held.pop(rid)
        if kill and self.shape != "hook-free":  # (no reset, no check there to notice)
            r.kill()  # its reset then fails: discarded
        self.run(self.p.release(r, discard=discard))
        self._harvest()

    @precondition(lambda self: bool(self.held))
    @rule(data=st.data(), spins=st.integers(1, 4))
    def release_then_cancel(self, data: st.DataObject, spins: int) -> None:
        """Cancel the releasing task after a few loop iterations (mid-reset or mid-close).

        At least one iteration: a task cancelled before it ever ran never calls release.
        """
        rid = data.draw(st.sampled_from(sorted(self.held)))
        r = self.held.pop(rid)
        pool = self.p

        async def go() -> None:
            task = asyncio.create_task(pool.release(r))
            await self._spin(spins)
            task.cancel()
            self.releasing.append(task)

        self.run(go())

    @precondition(lambda self: bool(self.held) and bool(self.pending))
    @rule(data=st.data(), spins=st.integers(0, 3))
    def release_racing_cancel(self, data: st.DataObject, spins: int) -> None:
        """Release, and cancel a waiting acquirer a few iterations later: the cancellation
        may land after the resource was handed to it but before it resumed."""
        rid = data.draw(st.sampled_from(sorted(self.held)))
        r = self.held.pop(rid)
        victim = self.pending[0]  # the oldest: the one a hand-off goes to
        pool = self.p

        async def go() -> None:
            releasing = asyncio.create_task(pool.release(r))
            await self._spin(spins)
            victim.cancel()
            await releasing

        self.run(go())
        self._harvest()

    @rule(fatal=st.booleans(), timeout=st.sampled_from([0.0, 1.0]))
    def use_in_async_with(self, fatal: bool, timeout: float) -> None:
        """A body that raises: a fatal error (ConnectionError) discards the resource."""
        pool = self.p

        async def go() -> None:
            try:
                async with pool.acquire(timeout=timeout) as r:
                    assert r.id not in self.held
                    await r.use()
                    raise (ConnectionError if fatal else ValueError)("body failed")
            except (ConnectionError, ValueError) as exc:
                if str(exc) != "body failed":  # the body's own error, unchanged
                    raise
            except EXPECTED_ACQUIRE_ERRORS:
                pass

        self.run(go())
        self._harvest()

    @precondition(lambda self: bool(self.pending))
    @rule(data=st.data())
    def cancel_acquire(self, data: st.DataObject) -> None:
        task = data.draw(st.sampled_from(self.pending))
        task.cancel()
        self._settle()

    @rule(data=st.data())
    def kill_idle(self, data: st.DataObject) -> None:
        """The backend drops an idle resource: its check fails, it is replaced."""
        idle = [r for r in self.fm.open_resources if r.id not in self.held and r.lease is None]
        if idle and self.shape != "hook-free":  # (no check there to notice)
            data.draw(st.sampled_from(idle)).kill()

    @rule(seconds=st.sampled_from([0.1, 0.5, 1.0, 2.5, 10.0]))
    def advance(self, seconds: float) -> None:
        self.run(asyncio.sleep(seconds))
        self._harvest()

    @rule(op=st.sampled_from(OPS), count=st.integers(1, 3))
    def fail_next(self, op: str, count: int) -> None:
        first = self.fm.calls[op] + 1
        self.fm.fail(op, calls=range(first, first + count))  # type: ignore[arg-type]

    @rule(op=st.sampled_from((*OPS, "close")), seconds=st.sampled_from([0.2, 1.0, 3.0]))
    def delay_next(self, op: str, seconds: float) -> None:
        self.fm.delay(op, seconds, calls=self.fm.calls[op] + 1)  # type: ignore[arg-type]

    @rule(max_size=st.integers(1, 4), min_size=st.integers(0, 2))
    def resize(self, max_size: int, min_size: int) -> None:
        min_size = min(min_size, max_size)
        size_before = self.p.statistics().size
        self.run(self.p.resize(min_size=min_size, max_size=max_size))
        self.ceiling = max(max_size, min(self.ceiling, size_before))
        self._settle()

    @rule()
    def expire(self) -> None:
        self.run(self.p.expire())
        self._settle()

    @precondition(lambda self: self.closing is None)
    @rule(timeout=st.sampled_from([None, 0.0, 2.0]))
    def close(self, timeout: float | None) -> None:
        pool = self.p

        async def go() -> None:
            self.closing = asyncio.create_task(pool.aclose(timeout=timeout))
            await self._spin()

        self.run(go())
        self._harvest()

    # -- invariants --------------------------------------------------------------------------

    def _quiescent(self) -> bool:
        pool = self.p
        return (
            self.fm.creating == 0
            and not pool._in_hook
            and all(t.done() for t in pool._tasks)
            and not pool.closed
        )

    @invariant()
    def pool_is_consistent(self) -> None:
        if self.pool is None:
            return
        self.run(self._spin())
        self._harvest()
        pool = self.p
        stats = pool.statistics()
        # The contract's bound, read from the same snapshot: after a resize down the bound
        # in force is the size, falling to the new max_size as the surplus is closed...
        assert stats.size <= stats.max_size, stats
        # ...and never above what the model allows: the configured max_size, or less.
        if stats.size <= pool.max_size:
            self.ceiling = pool.max_size
        assert stats.size <= self.ceiling, (stats, self.ceiling)
        self.fm.assert_no_violations()
        idle_ids = [e.resource.id for e in pool._idle]
        assert len(set(idle_ids)) == len(idle_ids), f"idle twice: {idle_ids}"
        assert not set(idle_ids) & set(self.held), "a resource both idle and held"
        assert all(not e.resource.closed for e in pool._idle), "closed resource idle"
        leased = {r.id for r in self.fm.leased}
        if pool.closed:  # aclose(timeout) may have closed resources still held
            assert leased <= set(self.held)
        else:
            assert all(not r.closed for r in self.held.values()), "held resource closed"
            assert leased == set(self.held) or not tracks_leases(pool, self.fm)
        if pool.closed and self.closing is not None and self.closing.done():
            # Closed, with resources closed in their holders' hands: none counted in use.
            assert (stats.size, stats.idle, stats.in_use) == (0, 0, 0), stats
        self._check_counters(stats)
        self._check_housekeeping(stats)
        if self._quiescent():
            assert stats.idle + stats.in_use == stats.size, stats
            assert stats.in_use == len(self.held), stats
            assert len(self.fm.open_resources) == stats.size, (stats, self.fm)

    def _check_counters(self, stats: PoolStatistics) -> None:
        """The counters only grow; size is what was created, less what was closed, plus
        the creations in flight (white-box: the pool's own count of them)."""
        creations = self.p._creations
        in_flight = len(creations.bound) + len(creations.orphans)
        assert stats.size == stats.created - stats.closed + in_flight, (stats, in_flight)
        assert 0 <= self.p._closing <= stats.size, (stats, self.p._closing)
        assert stats.leaks <= stats.acquired, stats
        # Each resource discarded once, and closed (or being closed) since.
        assert stats.discarded <= stats.closed + self.p._closing, (stats, self.p._closing)
        assert 0.0 <= stats.wait_time_max <= stats.wait_time_total, stats
        last = self.last
        self.last = stats
        if last is None:
            return
        for name in MONOTONE:
            assert getattr(stats, name) >= getattr(last, name), (name, last, stats)

    def _check_housekeeping(self, stats: PoolStatistics) -> None:
        """Housekeeping ran at every deadline that passed: no idle resource past its
        lifetime, none past its idle timeout while the live ones exceed min_size, and
        every lease held past leak_timeout reported."""
        pool = self.p
        if pool.closed:
            return
        now = pool._clock()
        for entry in pool._idle:
            assert entry.info.expires_at > now, f"idle past its lifetime: {entry.resource!r}"
        if pool._idle_timeout is not None:
            live = stats.size - pool._closing
            stale = [e for e in pool._idle if e.info.last_used_at + pool._idle_timeout <= now]
            assert not stale or live <= pool.min_size, (stats, [e.resource for e in stale])
        if pool._leak_timeout is not None:
            for entry in pool._in_use.values():
                if entry.lease_start + pool._leak_timeout < now:
                    assert entry.leak_reported, f"lease of {entry.handle!r} not reported"

    def teardown(self) -> None:
        if self.tracker in _tracking.active:
            _tracking.active.remove(self.tracker)
        try:
            if self.pool is not None:
                pool = self.pool

                async def finish() -> None:
                    for task in self.pending:
                        task.cancel()
                    await asyncio.gather(*self.pending, return_exceptions=True)
                    self.fm.clear_rules()
                    for task in self.pending:
                        if not task.cancelled() and task.exception() is None:
                            self.held[task.result().id] = task.result()
                    for r in list(self.held.values()):
                        await pool.release(r)
                    self.held.clear()
                    await asyncio.gather(*self.releasing, return_exceptions=True)
                    await pool.aclose()
                    if self.closing is not None:
                        await self.closing

                self.run(finish())
                stats = pool.statistics()
                assert stats.size == 0, stats
                assert stats.idle == 0, stats
                self.fm.assert_all_closed()  # every created resource closed exactly once
                assert stats.closed == self.fm.created
        finally:
            self.runner.close()


PoolMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.mark.timeout(120, method="thread")  # see pool_helpers.NO_HANG
class TestPoolStateful(PoolMachine.TestCase):  # type: ignore[valid-type,misc]
    pass
