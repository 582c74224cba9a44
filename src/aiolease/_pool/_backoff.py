"""Pool-wide creation backoff: a pure state machine, time passed in."""

from __future__ import annotations

import random
from collections.abc import Callable

__all__ = ["Backoff"]

# 2.0 ** 1024 overflows a float: the exponent stops growing long before (any cap is
# reached by then), so the delay stays finite however many creations fail in a row.
_MAX_EXPONENT = 1000


class Backoff:
    """Spaces out creation attempts after failures, so a down backend is not hammered.

    After ``n`` consecutive failures the next attempt may start
    ``base * 2 ** (n - 1)`` seconds (capped at ``cap``, jittered down to half)
    after the last one failed, and only one attempt runs at a time (the probe).
    A success clears everything.

    Attributes:
        failures: consecutive failed attempts.
        probing: an attempt runs while ``failures`` is non-zero.
        until: when the next attempt may start (loop time).
        last_error: the last attempt's error (None after a success).
    """

    __slots__ = ("_random", "base", "cap", "failures", "last_error", "probing", "until")

    def __init__(
        self, base: float, cap: float, *, rand: Callable[[], float] = random.random
    ) -> None:
        self.base = base
        self.cap = cap
        self._random = rand
        self.failures = 0
        self.probing = False
        self.until = 0.0
        self.last_error: BaseException | None = None

    def allows(self, now: float) -> bool:
        """Whether an attempt may start at ``now``."""
        return not self.failures or (not self.probing and now >= self.until)

    def started(self) -> None:
        """An attempt starts (it is the probe while failures are being counted)."""
        if self.failures:
            self.probing = True

    def delay(self, failures: int) -> float:
        """The un-jittered delay after ``failures`` consecutive failures (finite, <= cap)."""
        exponent = min(max(failures - 1, 0), _MAX_EXPONENT)
        return min(self.cap, self.base * 2.0**exponent)

    def failed(self, now: float, error: BaseException) -> float:
        """An attempt failed at ``now``: returns the seconds until the next may start."""
        self.probing = False
        self.failures += 1
        self.last_error = error
        wait = self.delay(self.failures) * (0.5 + self._random() / 2)
        self.until = now + wait
        return wait

    def succeeded(self) -> None:
        """An attempt succeeded: no more backoff."""
        self.probing = False
        self.failures = 0
        self.last_error = None

    def abandoned(self) -> None:
        """An attempt ended with no verdict (cancelled by the pool closing)."""
        self.probing = False
