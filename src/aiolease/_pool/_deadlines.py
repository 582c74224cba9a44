"""Acquire deadlines: every timed wait shares one timer, armed for the earliest deadline."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["Deadlines"]

K = TypeVar("K")
_INF = float("inf")


class Deadlines(Generic[K]):
    """Times out waits: ``add(key, deadline)`` while waiting, ``discard(key)`` when done.

    One loop timer serves every wait (a timer per wait would cost more than the
    rest of a contended acquire); when it fires, each key whose deadline has
    come is passed to ``expire`` and the timer is re-armed for the next one.
    """

    __slots__ = ("_due", "_expire", "_loop", "_timer", "_when")

    def __init__(self, loop: asyncio.AbstractEventLoop | None, expire: Callable[[K], None]) -> None:
        self._loop = loop
        self._expire = expire
        self._due: dict[K, float] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._when = _INF  # when _timer fires

    def __len__(self) -> int:
        return len(self._due)

    def add(self, key: K, deadline: float) -> None:
        self._due[key] = deadline
        if deadline < self._when:
            self._arm(deadline)

    def discard(self, key: K) -> None:
        due = self._due
        if due.pop(key, None) is not None and not due:
            self._arm(_INF)  # no timed waits left: disarm

    def close(self) -> None:
        self._due.clear()
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
        nxt = _INF
        for key, deadline in list(self._due.items()):
            if deadline <= when:
                del self._due[key]
                self._expire(key)
            elif deadline < nxt:
                nxt = deadline
        if nxt != _INF:
            self._arm(nxt)
