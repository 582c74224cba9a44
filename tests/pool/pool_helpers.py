"""Shared helpers of the pool tests: wait for quiescence, check the pool's invariants.

White-box on purpose in one place only: :func:`settle` reads ``pool._tasks``
(the pool-owned tasks: creations, resets, closes) to know when background
work has finished. Everything else goes through the public API and the
:class:`~aiolease.testing.FakeManager` records.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest
from pool_shapes import tracks_leases

from aiolease import Pool
from aiolease.abc import ResourceInfo
from aiolease.testing import FakeManager, FakeResource, VirtualTimeLoop


async def settle(pool: Pool[Any] | None = None, *, spins: int = 20) -> None:
    """Let every ready task run; with a ``pool``, first wait until it has no background
    task left (creations, resets, closes).

    Under ``VirtualTimeLoop`` a delayed close or reset finishes instantly; a
    task held at a closed gate would make this wait forever, so open gates first.
    """
    for _ in range(1000):
        if pool is not None:
            tasks = [t for t in pool._tasks if not t.done()]
            if tasks:
                await asyncio.wait(tasks)
        for _ in range(spins):
            await asyncio.sleep(0)
        if pool is None or not any(not t.done() for t in pool._tasks):
            return
    raise AssertionError(f"{pool!r} never settled")


def now() -> float:
    """The running loop's clock."""
    return asyncio.get_running_loop().time()


def assert_consistent(
    pool: Pool[FakeResource],
    fm: FakeManager,
    *,
    quiescent: bool = True,
    max_size: int | None = None,
) -> None:
    """Assert the pool invariants of the contract.

    Always: ``size <= max_size``; no protocol violation seen by the manager
    (nothing handed out twice, closed twice, checked/reset after close, handed
    out after close). At quiescence (no creation, reset or close in flight):
    ``idle + in_use == size``, the manager's open resources are exactly the
    pool's idle and in-use ones, and the leased ones are exactly ``in_use``.

    Args:
        max_size: the bound to check ``size`` against (default: the pool's
            current ``max_size``; pass the old bound right after a resize down
            while resources are still checked out).
    """
    st = pool.statistics()
    bound = st.max_size if max_size is None else max_size
    assert st.size <= bound, f"size {st.size} > max_size {bound}: {pool!r}"
    assert st.idle >= 0
    assert st.in_use >= 0
    fm.assert_no_violations()
    if not quiescent:
        return
    assert fm.creating == 0, f"creations still in flight: {fm!r}"
    assert st.idle + st.in_use == st.size, f"idle + in_use != size: {st}"
    open_resources = fm.open_resources
    assert len(open_resources) == st.size, f"{len(open_resources)} open resources, {st}"
    if tracks_leases(pool, fm):
        leased = fm.leased
        assert len(leased) == st.in_use, f"{len(leased)} leased, {st}"
        assert all(not r.closed for r in leased)
    assert len({r.id for r in open_resources}) == len(open_resources)


async def checked_out_then_idle(pool: Pool[FakeResource], count: int) -> list[FakeResource]:
    """Acquire ``count`` resources at once, then release them in that order (all idle)."""
    held = [await pool.acquire() for _ in range(count)]
    for r in held:
        await pool.release(r)
    return held


def assert_closed_cleanly(pool: Pool[FakeResource], fm: FakeManager) -> None:
    """After ``aclose``: every created resource closed exactly once, nothing left."""
    st = pool.statistics()
    assert pool.closed
    assert st.size == 0, st
    assert st.idle == 0, st
    assert fm.creating == 0
    fm.assert_all_closed()
    assert st.closed == fm.created, (st, fm)


def start_acquire(
    pool: Pool[FakeResource], *, timeout: float | None = None, name: str | None = None
) -> asyncio.Task[FakeResource]:
    """A task doing ``await pool.acquire(timeout=timeout)`` (default: no timeout)."""

    async def acquire() -> FakeResource:
        return await pool.acquire(timeout=timeout)

    return asyncio.create_task(acquire(), name=name)


class NoResetFakeManager(FakeManager):
    """A FakeManager whose ``reset_needed`` says no, so ``release`` hands the resource on
    synchronously (the Manager's documented fast path): lets a test act between the
    hand-off and the moment the receiving waiter resumes."""

    def reset_needed(self, resource: FakeResource, info: ResourceInfo) -> bool:
        return False


#: Per-test timeout for the pool tests, enforced from a thread. A busy loop in the pool
#: (a timer re-armed at a past time) freezes virtual time and never lets the test end;
#: the default signal method cannot stop it, because asyncio swallows the timeout
#: exception when it lands inside a callback. The thread method dumps every stack and
#: ends the run instead of hanging it.
NO_HANG = pytest.mark.timeout(30, method="thread")


R = TypeVar("R")


def vrun(fn: Callable[[], Coroutine[Any, Any, R]]) -> R:
    """Run ``fn()`` on a fresh VirtualTimeLoop (the contract's documented usage)."""
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(fn())


def closed(resource: FakeResource | Res) -> bool:
    """Read ``.closed`` through a call (mypy would keep an earlier narrowing across awaits)."""
    return resource.closed


class Res:
    """A plain resource for duck-typed managers."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.closed = False

    def __repr__(self) -> str:
        return f"<Res {self.n}{' closed' if self.closed else ''}>"


class DuckManager:
    """A Manager written as a plain class: the contract defines Manager as a Protocol."""

    def __init__(self) -> None:
        self.made: list[Res] = []
        self.checked: list[int] = []
        self.reset_calls: list[int] = []
        self.closed: list[int] = []
        self.check_error: BaseException | None = None
        self.reset_error: BaseException | None = None
        self.create_error: BaseException | None = None
        self.close_delay = 0.0
        self.reset_delay = 0.0
        self.create_gate: asyncio.Event | None = None

    async def create(self) -> Res:
        if self.create_gate is not None:
            await self.create_gate.wait()
        if self.create_error is not None:
            raise self.create_error
        r = Res(len(self.made) + 1)
        self.made.append(r)
        return r

    async def check(self, resource: Res, info: ResourceInfo) -> None:
        self.checked.append(resource.n)
        if self.check_error is not None:
            raise self.check_error

    async def reset(self, resource: Res, info: ResourceInfo) -> None:
        if self.reset_delay:
            await asyncio.sleep(self.reset_delay)
        self.reset_calls.append(resource.n)
        if self.reset_error is not None:
            raise self.reset_error

    async def close(self, resource: Res) -> None:
        if self.close_delay:
            await asyncio.sleep(self.close_delay)
        resource.closed = True
        self.closed.append(resource.n)


def duck_pool(m: DuckManager, **opts: Any) -> Pool[Res]:
    # The contract's Manager is a Protocol; aiolease.abc.Manager is an ABC (the contract allows it),
    # so a duck-typed manager needs a cast for the type checker only.
    return Pool(m, **opts)  # type: ignore[arg-type]


def early_timer_loop(
    target: Callable[..., Any], armed: list[float], early: int = 100
) -> type[VirtualTimeLoop]:
    """A :class:`VirtualTimeLoop` whose timers for ``target`` (a function: the method a
    timer calls) fire 0.5 ms before their deadline, as uvloop's millisecond ticks may, the
    first ``early`` times (so that a test of a spin stays bounded); each deadline armed for
    ``target`` is appended to ``armed``."""

    class EarlyTimerLoop(VirtualTimeLoop):
        early_left = early

        def call_at(  # type: ignore[override]
            self, when: float, callback: Any, *args: Any, context: Any = None
        ) -> Any:
            if getattr(callback, "__func__", None) is target:
                armed.append(when)
                if self.early_left > 0:
                    self.early_left -= 1
                    when -= 0.0005
            return super().call_at(when, callback, *args, context=context)

    return EarlyTimerLoop
