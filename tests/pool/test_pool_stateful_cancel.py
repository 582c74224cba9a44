"""The pool's stateful test with resize(), expire() and aclose() cancelled after a few
turns of the loop (at any of their awaits: closing surplus or retired resources, waiting
for leases), among the same acquires, releases, faults and timeouts: the invariants still
hold and teardown closes every resource exactly once."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import precondition, rule
from test_pool_stateful import PoolMachine


class CancelledAdminMachine(PoolMachine):
    def _cancel_after(self, op: Awaitable[None], spins: int) -> None:
        """Run ``op`` in a task, cancel it after ``spins`` turns of the loop, and wait for it."""

        async def go() -> None:
            task = asyncio.ensure_future(op)
            for _ in range(spins):
                await asyncio.sleep(0)
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

        self.run(go())

    @rule(max_size=st.integers(1, 4), min_size=st.integers(0, 2), spins=st.integers(0, 6))
    def resize_cancelled(self, max_size: int, min_size: int, spins: int) -> None:
        self._cancel_after(
            self.p.resize(min_size=min(min_size, max_size), max_size=max_size), spins
        )
        self.ceiling = max(max_size, self.ceiling)  # cancelled before or after the change
        self._settle()

    @rule(spins=st.integers(0, 6))
    def expire_cancelled(self, spins: int) -> None:
        self._cancel_after(self.p.expire(), spins)
        self._settle()

    @precondition(lambda self: self.closing is None)
    @rule(timeout=st.sampled_from([None, 0.0, 2.0]), spins=st.integers(0, 6))
    def close_cancelled(self, timeout: float | None, spins: int) -> None:
        self._cancel_after(self.p.aclose(timeout=timeout), spins)
        self._harvest()


CancelledAdminMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.mark.timeout(120, method="thread")  # see pool_helpers.NO_HANG
class TestPoolStatefulCancelled(CancelledAdminMachine.TestCase):  # type: ignore[valid-type,misc]
    pass
