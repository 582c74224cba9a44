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
        yield
    finally:
        loop.set_task_factory(before)
