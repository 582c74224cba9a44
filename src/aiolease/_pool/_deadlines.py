"""Acquire deadlines: every timed wait shares one timer, armed for the earliest deadline."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["Deadlines"]

_INF = float("inf")


class Deadlines:
    """One loop timer for every timed wait, armed for the earliest deadline.

    The owner keeps the waits and their deadlines; a wait that ends costs
    nothing here. ``due(deadline)`` makes sure the timer fires by ``deadline``;
    when it fires, ``expire(now)`` times out the waits whose deadline has come
    and returns the earliest deadline left (inf: none), for which the timer is
    re-armed; ``close()`` disarms it once no wait is left.
    """

    __slots__ = ("_expire", "_loop", "_timer", "_when")

    def __init__(
        self, loop: asyncio.AbstractEventLoop | None, expire: Callable[[float], float]
    ) -> None:
        self._loop = loop
        self._expire = expire
        self._timer: asyncio.TimerHandle | None = None
        self._when = _INF  # when _timer fires

    def due(self, deadline: float) -> None:
        """A wait ends at ``deadline`` at the latest."""
        if deadline < self._when:
            self._arm(deadline)

    def close(self) -> None:
        """No wait left: disarm."""
        if self._timer is not None:
            self._arm(_INF)

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._when = when
        if when != _INF:
            assert self._loop is not None, "Deadlines used before the pool opened"
            self._timer = self._loop.call_at(when, self._fire, when)

    def _fire(self, when: float) -> None:
        self._timer = None
        self._when = _INF
        self.due(self._expire(when))
