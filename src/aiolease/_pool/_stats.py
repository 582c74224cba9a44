"""The pool's counters, the frozen snapshot :meth:`Pool.statistics` returns, and the
pool's ``repr`` (its label, state and sizes)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._core import Pool

__all__ = ["Counters", "PoolStatistics", "describe", "snapshot"]


@dataclass(frozen=True, slots=True)
class PoolStatistics:
    """A snapshot of a pool's state and counters (see :meth:`Pool.statistics`).

    Attributes:
        size: slots in use: idle + in use + creations, checks, resets and closes
            in flight.
        idle: resources ready to hand out.
        in_use: resources checked out (not counting those that ``aclose(timeout)``
            closed in their holders' hands).
        waiting: tasks queued for a resource (or for the creation serving them).
        min_size: configured minimum.
        max_size: the maximum in force: the configured one, except while a
            resize down waits for checked-out surplus to come back, when it is
            the current size, falling to the configured one as the surplus is
            closed. So ``size <= max_size`` at every instant.
        acquired: leases handed out since the pool was made.
        created: resources created.
        closed: resources closed (or abandoned, see ``discarded``).
        timeouts: acquisitions that ended in :class:`~aiolease.PoolTimeout`.
        wait_time_total: seconds spent by acquirers that had to wait, summed.
        wait_time_max: the longest such wait.
        leaks: leases reported by ``leak_timeout``.
        create_errors: creation attempts that raised.
        discarded: resources closed because check/reset failed, ``discard=True``,
            a fatal error in the body or a broken mark, and resources abandoned
            because their close outlasted the manager's ``close_timeout`` (each
            resource counted once: one discarded, then abandoned, is one).
    """

    size: int
    idle: int
    in_use: int
    waiting: int
    min_size: int
    max_size: int
    acquired: int
    created: int
    closed: int
    timeouts: int
    wait_time_total: float
    wait_time_max: float
    leaks: int
    create_errors: int
    discarded: int


class Counters:
    """The pool's running counts (the cumulative part of :class:`PoolStatistics`)."""

    __slots__ = (
        "acquired",
        "closed",
        "create_errors",
        "created",
        "discarded",
        "leaks",
        "timeouts",
        "wait_max",
        "wait_total",
    )

    def __init__(self) -> None:
        self.acquired = 0
        self.created = 0
        self.closed = 0
        self.timeouts = 0
        self.leaks = 0
        self.create_errors = 0
        self.discarded = 0
        self.wait_total = 0.0
        self.wait_max = 0.0


def snapshot(pool: Pool[Any]) -> PoolStatistics:
    """``pool``'s counts with its current sizes."""
    counters = pool._counters
    return PoolStatistics(
        size=pool._size,
        idle=len(pool._idle),
        in_use=len(pool._in_use),
        waiting=len(pool._queue.queued),
        min_size=pool._min_size,
        max_size=max(pool._size, pool._max_size),  # see PoolStatistics.max_size
        acquired=counters.acquired,
        created=counters.created,
        closed=counters.closed,
        timeouts=counters.timeouts,
        wait_time_total=counters.wait_total,
        wait_time_max=counters.wait_max,
        leaks=counters.leaks,
        create_errors=counters.create_errors,
        discarded=counters.discarded,
    )


def describe(pool: Pool[Any], state: str) -> str:
    """``repr(pool)``: its label, lifecycle ``state`` and sizes."""
    s = snapshot(pool)
    return (
        f"<aiolease.Pool {pool._label!r} {state} size={s.size}/{s.max_size} idle={s.idle} "
        f"in_use={s.in_use} waiting={s.waiting}>"
    )
