"""Housekeeping: retire idle resources past their lifetime or idle timeout, report leaks,
change the bounds (:meth:`Pool.resize`) and the generation (:meth:`Pool.expire`) and
close the idle resources they make surplus.

One loop timer, armed for the next deadline: no polling.
"""

from __future__ import annotations

import asyncio
from collections import deque
from types import FrameType
from typing import TYPE_CHECKING, Any

from .._logs import get_logger
from ._args import check_bounds
from ._closing import retire
from ._entries import caller_stack, safe_repr
from ._where import warn_at_user

if TYPE_CHECKING:
    from ._core import Pool
    from ._entries import Entry

__all__ = ["Housekeeper", "idle_deadline", "leak_report", "warn_unclosed"]

logger = get_logger("aiolease.pool")
_INF = float("inf")


class Housekeeper:
    """Runs the pool's deadlines: idle expiry (``max_lifetime``, ``idle_timeout``) and
    leak reports (``leak_timeout``)."""

    __slots__ = ("_pool", "_timer")

    def __init__(self, pool: Pool[Any]) -> None:
        self._pool = pool
        self._timer: asyncio.TimerHandle | None = None

    def schedule(self, when: float) -> None:
        """Make sure a run happens at ``when`` (or earlier)."""
        pool = self._pool
        if when == _INF or pool._loop is None or not pool._is_open():
            return
        timer = self._timer
        if timer is not None:
            if timer.when() <= when:
                return
            timer.cancel()
        self._timer = pool._loop.call_at(when, self.run, when)

    def watch(self, entry: Entry[Any], frame: FrameType | None) -> None:
        """A lease begins (leak_timeout set, or leak_check active): keep where it was
        acquired (``frame``: the pool's leasing method's; its caller acquired) and arm
        its leak report."""
        entry.lease_stack = caller_stack(None if frame is None else frame.f_back)
        leak_timeout = self._pool._leak_timeout
        if leak_timeout is not None:  # (leak_reported is read only then)
            entry.leak_reported = False
            self.schedule(entry.lease_start + leak_timeout)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def resize(self, min_size: int | None, max_size: int | None) -> None:
        """:meth:`Pool.resize`: change the bounds (None keeps one), close surplus idle
        resources (returns after they are closed), serve waiters from new capacity."""
        pool = self._pool
        pool._min_size, pool._max_size = check_bounds(
            pool._min_size if min_size is None else min_size,
            pool._max_size if max_size is None else max_size,
        )
        if not pool._is_open():
            return
        closes: list[asyncio.Future[Any]] = []
        # (a close in flight, counted in _closing, already frees its slot)
        while pool._size - pool._closing > pool._max_size and pool._idle:
            closes.append(retire(pool, pool._idle.popleft()))
        pool._dispatch()
        if pool._idle_timeout is not None and pool._idle:
            # Idle resources kept for the old min_size may now be surplus past their deadline.
            self.schedule(pool._clock())
        await _all_closed(closes)

    async def expire(self) -> None:
        """:meth:`Pool.expire`: retire every resource of the current generation, closing
        the idle ones now (returns after they are)."""
        pool = self._pool
        pool._generation += 1
        if not pool._is_open():
            return
        closes = [retire(pool, entry) for entry in pool._idle]
        pool._idle.clear()
        pool._dispatch()  # min_size refilled now, not once the closes end
        await _all_closed(closes)

    def run(self, when: float) -> None:
        """Retire idle entries past their deadline, report leaks, re-arm for the next.

        ``when``: the deadline the timer was armed for. It has come even if the clock
        reads a little less (uvloop's timers tick in milliseconds): taking the clock
        alone would re-arm for that same deadline, again and again until it passes."""
        self._timer = None
        pool = self._pool
        if not pool._is_open():
            return
        now = max(pool._clock(), when)
        closing = pool._closing
        nxt = min(self._retire_idle(now), self._report_leaks(now))
        if pool._closing != closing:  # min_size refilled now, not once the closes end
            pool._dispatch()
        self.schedule(nxt)

    def _retire_idle(self, now: float) -> float:
        pool = self._pool
        idle_timeout = pool._idle_timeout
        nxt = _INF
        keep: deque[Entry[Any]] = deque()
        # Oldest first, so idle_timeout trims the least recently used above min_size.
        # (a close in flight, counted in _closing, is not a live resource)
        surplus = pool._size - pool._closing - pool._min_size
        for entry in pool._idle:
            info = entry.info
            if info.expires_at <= now or (
                idle_timeout is not None and info.last_used_at + idle_timeout <= now and surplus > 0
            ):
                retire(pool, entry, now)
                surplus -= 1
                continue
            keep.append(entry)
            # Kept past its idle deadline only because of min_size: its next deadline is
            # its lifetime (re-arming at a past time would spin). A later release or
            # resize re-arms the timer if it becomes surplus.
            due = idle_deadline(entry, idle_timeout)
            nxt = min(nxt, due if due > now else info.expires_at)
        pool._idle = keep
        return nxt

    def _report_leaks(self, now: float) -> float:
        pool = self._pool
        leak_timeout = pool._leak_timeout
        nxt = _INF
        if leak_timeout is None:
            return nxt
        for entry in pool._in_use.values():
            if entry.leak_reported:
                continue
            due = entry.lease_start + leak_timeout
            if due <= now:
                entry.leak_reported = True
                pool._counters.leaks += 1
                logger.warning(
                    "%r: a lease has lasted longer than leak_timeout=%ss: %s",
                    pool,
                    leak_timeout,
                    entry.describe(now),
                )
            else:
                nxt = min(nxt, due)
        return nxt


async def _all_closed(closes: list[asyncio.Future[Any]]) -> None:
    """Wait for these closes (they go on if the caller is cancelled)."""
    if closes:
        await asyncio.shield(asyncio.gather(*closes))


def idle_deadline(entry: Entry[Any], idle_timeout: float | None) -> float:
    """When an idle entry must go: the end of its lifetime, or its idle timeout."""
    info = entry.info
    if idle_timeout is None:
        return info.expires_at
    return min(info.expires_at, info.last_used_at + idle_timeout)


def warn_unclosed(pool: Pool[Any]) -> None:
    """The ResourceWarning of a pool collected while open."""
    warn_at_user(
        f"unclosed {pool!r} (created at {pool._created_at}); "
        "use `async with pool:` or `await pool.aclose()`",
        ResourceWarning,
        source=pool,
    )


def leak_report(pool: Pool[Any], closed: bool) -> list[str]:
    """What ``aiolease.testing.leak_check`` reports about ``pool``: left open, slots never
    freed, leases still out."""
    problems = []
    if not closed and pool._loop is not None:
        problems.append(f"{pool!r} (created at {pool._created_at}) was left open")
    elif closed and pool._size - len(pool._in_use) > 0:
        problems.append(
            f"{pool!r} (created at {pool._created_at}) is closed but "
            f"{pool._size - len(pool._in_use)} resource slot(s) were never freed"
        )
    closed_out = () if pool._drain is None else pool._drain.closed_out.values()
    for entry in (*pool._in_use.values(), *closed_out):
        where = "".join(entry.lease_stack.format()) if entry.lease_stack else "  (unknown)\n"
        problems.append(
            f"{safe_repr(entry.handle)} is still checked out from {pool!r}; acquired at:\n{where}"
        )
    return problems
