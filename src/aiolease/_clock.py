"""The one place aiolease reads time: the running loop's clock.

``asyncio.BaseEventLoop.time`` is ``time.monotonic()`` behind a Python call.
When a loop's class keeps that method, calling ``time.monotonic`` directly
reads the very same clock, one call cheaper; a loop that overrides ``time``
(``aiolease.testing.VirtualTimeLoop``, uvloop) is always asked itself.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

__all__ = ["BASE_TIME", "clock_of", "loop_time", "monotonic"]

BASE_TIME = asyncio.BaseEventLoop.time
monotonic = time.monotonic


def clock_of(loop: asyncio.AbstractEventLoop) -> Callable[[], float]:
    """A zero-argument function reading ``loop``'s clock (for objects bound to one loop)."""
    return monotonic if type(loop).time is BASE_TIME else loop.time


def loop_time(loop: asyncio.AbstractEventLoop) -> float:
    """``loop.time()``, always asked of the loop object itself: a ``time`` set on the object
    (a program or a test moving the clock by hand) is the loop's clock too, which the class
    check of :func:`clock_of` would miss (and telling the two apart costs more than the call
    the shortcut saves)."""
    return loop.time()
