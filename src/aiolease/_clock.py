"""The one place aiolease reads time: the running loop's clock.

Always asked of the loop object itself (``loop.time()``): a loop whose class overrides
``time`` (``aiolease.testing.VirtualTimeLoop``, uvloop) and a ``time`` set on the loop object
(a program or a test moving the clock by hand) are the clock of every timeout, lifetime,
backoff and rate alike. (Calling ``time.monotonic`` directly when the class keeps asyncio's
own ``time`` would miss the second, and saves nothing measurable.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["clock_of", "loop_time"]


def clock_of(loop: asyncio.AbstractEventLoop) -> Callable[[], float]:
    """A zero-argument function reading ``loop``'s clock (for objects bound to one loop)."""
    return loop.time


def loop_time(loop: asyncio.AbstractEventLoop) -> float:
    """``loop.time()``."""
    return loop.time()
