"""Cancelling a task in a test and timing how long it takes to end; sweeping a Task.cancel()
(cancel_after_steps) or an ``asyncio.timeout()`` deadline (deadline_at_each_step) over each
step of a scenario."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

T = TypeVar("T")


async def cancel_and_time(task: asyncio.Task[None]) -> float:
    """Cancel ``task``, expect it to end cancelled; the seconds that took."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return loop.time() - start


async def cancel_after_steps(
    coro: Coroutine[Any, Any, T], steps: int
) -> tuple[bool, T | BaseException]:
    """Run ``coro`` in a task and cancel it after ``steps`` steps of the event loop.

    Returns whether the cancellation reached the task (it had not ended yet) and the
    task's outcome: its result, or the exception it ended with. A cancellation that
    reached the task must end it cancelled: never swallowed.
    """
    task = asyncio.create_task(coro)
    for _ in range(steps):
        await asyncio.sleep(0)
    cancelled = task.cancel()
    outcome: T | BaseException
    try:
        outcome = await task
    except (Exception, asyncio.CancelledError) as exc:  # (gather would replace a
        outcome = exc  # CancelledError by a new one, without its chain)
    if cancelled:
        assert isinstance(outcome, asyncio.CancelledError), (steps, outcome)
    return cancelled, outcome


@dataclass
class Deadline:
    """One run of :func:`deadline_at_each_step`: the deadline came after ``k`` loop steps of
    the scenario, and the caller got ``result`` (the scenario's) or ``TimeoutError``
    (``timed_out``)."""

    k: int
    timed_out: bool
    result: Any = None


async def deadline_at_each_step(
    scenario: Callable[[], Awaitable[T]],
    check: Callable[[Deadline], Awaitable[None]] | None = None,
    *,
    max_steps: int,
    before: Callable[[int], Awaitable[None]] | None = None,
) -> range:
    """Run ``scenario()`` under ``asyncio.timeout()`` whose deadline fires after k = 0, 1,
    2... event-loop steps, until a run completes with the deadline never fired; returns
    the k covered (the last one ran to completion). Fails past ``max_steps``.

    Each run is in a task of its own, inside an enclosing ``asyncio.timeout()``; after it:

    - the caller got the scenario's result or TimeoutError, and TimeoutError exactly when
      the deadline expired (never a plain CancelledError, another exception, or a result
      with the deadline expired and its cancellation swallowed);
    - ``asyncio.current_task().cancelling()`` is back to what it was (0);
    - the enclosing ``asyncio.timeout()`` still turns its own deadline into TimeoutError;
    - ``check(Deadline(...))`` (the scenario's invariant: nothing held) passes.

    Each k is run a second time with the enclosing deadline firing in the same step, which
    must win (see ``caller_within``): that shows a cancellation request taken back by an
    ``uncancel()`` that was not the scenario's to make.

    ``before(k)``, if given, sets up each run (outside the deadline).
    """
    loop = asyncio.get_running_loop()

    async def caller(k: int) -> Deadline:
        task = asyncio.current_task()
        assert task is not None
        assert task.cancelling() == 0
        tick: list[asyncio.Handle] = []
        run = Deadline(k, False)
        enclosing_fired = False
        try:
            async with asyncio.timeout(None) as outer:
                try:
                    async with asyncio.timeout(None) as inner:
                        _fire_after(k, loop, tick, inner)
                        try:
                            run.result = await scenario()
                        finally:
                            for handle in tick:
                                handle.cancel()
                except TimeoutError:
                    run.timed_out = True
                if run.timed_out != inner.expired():
                    raise AssertionError(
                        f"k={k}: the deadline expired={inner.expired()} but the caller got "
                        + ("TimeoutError" if run.timed_out else f"the result {run.result!r}")
                    )
                assert task.cancelling() == 0, f"k={k}: cancelling() == {task.cancelling()}"
                outer.reschedule(loop.time())  # the enclosing deadline must still work
                await asyncio.sleep(30)
        except TimeoutError:
            enclosing_fired = True
        except asyncio.CancelledError as exc:
            raise AssertionError(f"k={k}: CancelledError escaped the deadline") from exc
        except AssertionError:
            raise
        except Exception as exc:
            raise AssertionError(f"k={k}: the caller got {exc!r}") from exc
        assert enclosing_fired, f"k={k}: the enclosing deadline never fired"
        assert task.cancelling() == 0, f"k={k}: cancelling() == {task.cancelling()} at the end"
        return run

    async def caller_within(k: int) -> Deadline:
        """The same deadline and the enclosing one, in the same step: the enclosing one wins
        (the inner block must let its CancelledError through: a request taken back with an
        extra ``uncancel()`` turns it into the inner block's TimeoutError, and the code
        after that block runs on past the enclosing deadline)."""
        task = asyncio.current_task()
        assert task is not None
        tick: list[asyncio.Handle] = []
        run = Deadline(k, False)
        try:
            async with asyncio.timeout(None) as outer:
                try:
                    async with asyncio.timeout(None) as inner:
                        _fire_after(k, loop, tick, outer, inner)
                        try:
                            run.result = await scenario()
                        finally:
                            for handle in tick:
                                handle.cancel()
                except TimeoutError as exc:
                    raise AssertionError(
                        f"k={k}: the inner deadline raised TimeoutError while the enclosing "
                        "one had expired too (a cancellation request taken back)"
                    ) from exc
                if inner.expired() or outer.expired():
                    raise AssertionError(
                        f"k={k}: the deadlines expired, but the caller got the result "
                        f"{run.result!r}"
                    )
                return run
        except TimeoutError:
            run.timed_out = True
        except asyncio.CancelledError as exc:
            raise AssertionError(f"k={k}: CancelledError escaped both deadlines") from exc
        except AssertionError:
            raise
        except Exception as exc:
            raise AssertionError(f"k={k}: the caller got {exc!r} (both deadlines)") from exc
        assert inner.expired(), f"k={k}: TimeoutError without the deadlines"
        assert task.cancelling() == 0, f"k={k}: cancelling() == {task.cancelling()} (both)"
        return run

    for k in range(max_steps + 1):
        done = False
        for each in (caller, caller_within):
            if before is not None:
                await before(k)
            run = await asyncio.create_task(each(k))
            if check is not None:
                await check(run)
            done = done or (each is caller and not run.timed_out)
        if done:
            return range(k + 1)
    raise AssertionError(f"the scenario never completed before its deadline (k <= {max_steps})")


def _fire_after(
    k: int, loop: asyncio.AbstractEventLoop, tick: list[asyncio.Handle], *scopes: asyncio.Timeout
) -> None:
    """Make ``scopes`` expire after ``k`` loop steps (each step a ``call_soon`` from the one
    before; ``tick`` holds the pending handle, to cancel when the run ends first)."""
    if k == 0:
        for scope in scopes:
            scope.reschedule(loop.time())  # fires in the next step
    else:
        tick[:] = [loop.call_soon(_fire_after, k - 1, loop, tick, *scopes)]
