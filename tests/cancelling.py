"""Cancelling a task in a test and timing how long it takes to end."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
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
