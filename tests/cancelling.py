"""Cancelling a task in a test and timing how long it takes to end."""

from __future__ import annotations

import asyncio

import pytest


async def cancel_and_time(task: asyncio.Task[None]) -> float:
    """Cancel ``task``, expect it to end cancelled; the seconds that took."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return loop.time() - start
