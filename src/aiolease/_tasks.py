"""The tasks aiolease starts for its own work.

Its bookkeeping starts a task (a pool's creation, reset or close) in the middle of a
synchronous critical section and expects the task's code to run later, as
``loop.create_task`` does on a default loop. An eager task factory (Python 3.12's
``asyncio.eager_task_factory``) instead runs the coroutine inside ``create_task``, up
to its first suspension: a manager hook that completes without suspending would then
change the pool's state in the middle of the code that started it. So these tasks are
made with the ``asyncio.Task`` constructor, which never starts eagerly, and the
loop's task factory is not used for them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["start_task"]

T = TypeVar("T")


def start_task(coro: Coroutine[Any, Any, T], loop: asyncio.AbstractEventLoop) -> asyncio.Task[T]:
    """A task of ``loop`` running ``coro`` from the loop's next step on (never eagerly)."""
    return asyncio.Task(coro, loop=loop)
