"""Running a test's code under an eager task factory (Python 3.12+ ``asyncio.eager_task_factory``).

With it, ``create_task`` runs the new task's first steps at once, inside the call, up to its
first real suspension; aliasing code that expects a task it starts to run later.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

#: Skips a test (or a parameter) where the eager task factory does not exist.
NEEDS_EAGER = pytest.mark.skipif(
    sys.version_info < (3, 12), reason="asyncio.eager_task_factory is new in Python 3.12"
)


@contextmanager
def eager_tasks(enabled: bool = True) -> Iterator[None]:
    """Run the body with the running loop's task factory set to the eager one (when
    ``enabled``), restoring the loop's own afterwards."""
    if not enabled:
        yield
        return
    loop = asyncio.get_running_loop()
    before = loop.get_task_factory()
    loop.set_task_factory(asyncio.eager_task_factory)  # type: ignore[attr-defined,unused-ignore]
    try:
        _check_loop_takes_it(loop)
        yield
    finally:
        loop.set_task_factory(before)


async def _nothing() -> None:
    pass


def _check_loop_takes_it(loop: asyncio.AbstractEventLoop) -> None:
    """Skip where the loop cannot call the eager factory (uvloop 0.23 passes it an
    ``eager_start`` argument that Python 3.13's factory does not take)."""
    coro = _nothing()
    try:
        loop.create_task(coro)
    except TypeError as exc:
        coro.close()
        pytest.skip(f"{type(loop).__name__} cannot use asyncio.eager_task_factory here: {exc}")
