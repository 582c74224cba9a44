"""cancelling.deadline_at_each_step fails on each way a deadline can be lost.

Each scenario below mishandles the cancellation its deadline sends in one known way; the
sweep must fail on it (and pass on the correct version), or the sweeps that use it
(tests/*/test_*deadline_sweep.py) could not fail either.
"""

from __future__ import annotations

import asyncio
import sys

import pytest

from cancelling import Deadline, deadline_at_each_step


async def work() -> str:
    for _ in range(5):
        await asyncio.sleep(0)
    return "done"


async def test_a_scenario_that_handles_its_deadline_passes() -> None:
    seen: list[Deadline] = []

    async def cleanup_and_reraise() -> str:
        try:
            return await work()
        except asyncio.CancelledError:
            await asyncio.sleep(0)  # cleanup that awaits, then the cancellation goes on
            raise

    async def check(run: Deadline) -> None:
        seen.append(run)

    covered = await deadline_at_each_step(cleanup_and_reraise, check, max_steps=50)
    # Each k twice (the deadline alone, then with the enclosing one in the same step).
    assert [run.k for run in seen] == [k for k in covered for _ in range(2)]
    alone = seen[::2]
    assert [run.timed_out for run in alone] == [True] * (len(covered) - 1) + [False]
    assert alone[-1].result == "done"
    assert len(covered) > 1


async def test_a_cancellation_swallowed_after_cleanup_fails() -> None:
    async def swallow() -> str:
        try:
            return await work()
        except asyncio.CancelledError:
            await asyncio.sleep(0)
            return "cleaned up"  # the caller's deadline is lost

    with pytest.raises(AssertionError, match="expired=True but the caller got the result"):
        await deadline_at_each_step(swallow, max_steps=50)


async def test_a_cancellation_replaced_by_another_error_fails() -> None:
    async def replace() -> str:
        try:
            return await work()
        except asyncio.CancelledError:
            raise LookupError("instead") from None

    with pytest.raises(AssertionError, match="the caller got LookupError"):
        await deadline_at_each_step(replace, max_steps=50)


async def test_a_cancellation_request_left_counted_fails() -> None:
    """A scenario that interrupts its own wait with ``cancel()`` and swallows that
    cancellation without ``uncancel()``: cancelling() stays 1 once it completes (and a
    deadline that comes while its own is pending is swallowed with it)."""

    async def leave_counted() -> str:
        result = await work()
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            pass
        return result

    with pytest.raises(AssertionError, match=r"k=\d+: ") as caught:
        await deadline_at_each_step(leave_counted, max_steps=50)
    assert "cancelling() == 1" in str(caught.value) or "expired=True" in str(caught.value)


async def test_an_extra_uncancel_fails() -> None:
    """An ``uncancel()`` that is not the scenario's to make: alone, the deadline's request
    would be clamped at 0 and still turned into TimeoutError; with the enclosing deadline
    in the same step, the inner block turns it into TimeoutError and the enclosing
    deadline is lost."""

    async def uncancel() -> str:
        try:
            return await work()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            assert task is not None
            task.uncancel()
            raise

    with pytest.raises(AssertionError, match="a cancellation request taken back"):
        await deadline_at_each_step(uncancel, max_steps=50)


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="asyncio.wait_for is fixed in 3.12")
async def test_wait_for_returning_the_result_it_was_cancelled_in_fails() -> None:
    """Python 3.11's ``asyncio.wait_for`` returns the inner result when it is cancelled in
    the step that result arrives: the caller's deadline expired, and it got a result."""

    async def wait_for() -> str:
        return await asyncio.wait_for(work(), 10)

    with pytest.raises(AssertionError, match="expired=True but the caller got the result"):
        await deadline_at_each_step(wait_for, max_steps=50)


async def test_a_scenario_that_never_completes_in_max_steps_fails() -> None:
    with pytest.raises(AssertionError, match="never completed before its deadline"):
        await deadline_at_each_step(work, max_steps=2)
