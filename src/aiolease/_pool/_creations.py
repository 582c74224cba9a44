"""Creations in flight: which waiter each serves, the backoff between failures.

A creation is bound to the waiter it was started for, so its error goes to
that caller (fail fast). A waiter that leaves orphans its creation, which the
next waiter no creation serves adopts. Bound waiters are always queued, so
``len(queue) - len(bound)`` is the number of tasks ``max_waiting`` limits.
"""

from __future__ import annotations

import asyncio
import random
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .._errors import PoolClosed
from .._logs import get_logger
from ..abc import ResourceInfo
from ._backoff import Backoff
from ._closing import error_text, leaked_cancel
from ._entries import Entry

if TYPE_CHECKING:
    from ._core import Pool

__all__ = ["Creations"]

T = TypeVar("T")
logger = get_logger("aiolease.pool")
_INF = float("inf")
_LIFETIME_JITTER = 0.05  # max_lifetime is shortened by up to 5% so resources do not expire together

Waiter = asyncio.Future[Entry[Any]]


class _Creation:
    """A creation in flight, and the waiter it serves (None: an orphan or a min_size fill).

    ``report``: for a creation of an opening pool's prefill, the future that tells
    :meth:`Creations.prefill` how the attempt ended (None otherwise).
    """

    __slots__ = ("report", "waiter")

    def __init__(self, waiter: Waiter | None, report: asyncio.Future[None] | None) -> None:
        self.waiter = waiter
        self.report = report

    def tell(self, error: BaseException | None) -> None:
        """The attempt ended (``error`` None: it made a resource): tell the prefill, if any
        (the prefill's future is cancelled if open() was)."""
        report = self.report
        if report is not None and not report.done():
            if error is None:
                report.set_result(None)
            else:
                report.set_exception(error)


class Creations(Generic[T]):
    """The pool's creations in flight and its creation backoff."""

    __slots__ = ("_pool", "_timer", "backoff", "bound", "live", "orphans", "tasks")

    def __init__(self, pool: Pool[T], backoff: Backoff) -> None:
        self._pool = pool
        self.backoff = backoff
        # id() of every resource alive (until its close ends): a manager handing out the
        # same object twice would otherwise lose a slot.
        self.live: set[int] = set()
        self.bound: dict[Waiter, _Creation] = {}
        self.orphans: list[_Creation] = []
        self.tasks: set[asyncio.Task[Any]] = set()  # creations that may still be cancelled
        self._timer: asyncio.TimerHandle | None = None

    def unbind(self, fut: Waiter) -> None:
        """``fut`` stops waiting: its creation, if any, is orphaned."""
        creation = self.bound.pop(fut, None)
        if creation is not None:
            creation.waiter = None
            self.orphans.append(creation)

    def cover(self, waiters: Any, now: float) -> None:
        """Give each waiter no creation serves one, oldest first: an orphan, or a new
        creation while capacity and the backoff (at ``now``) allow."""
        bound = self.bound
        for fut in waiters:
            if fut in bound or fut.done():
                continue
            if self.orphans:
                creation = self.orphans.pop()
                creation.waiter = fut
                bound[fut] = creation
            elif self.can_start(now):
                self.start(fut)
            else:
                break

    def replenish(self) -> None:
        """After any change in an open pool (:meth:`Pool._dispatch`): creations for the
        waiters no creation serves yet (adopting orphans first), ``min_size`` kept
        filled, and while creations fail, a dispatch when the backoff ends.

        The clock is read once: a loop's clock can move on between two reads in one
        callback (uvloop's ticks in milliseconds), and a backoff found not over by the
        creations and then over by the timer would leave the waiters with neither."""
        pool = self._pool
        now = pool._clock()
        waiters = pool._waiters
        if waiters and (self.orphans or pool._size < pool._max_size):
            self.cover(waiters, now)
        # (a close in flight frees its slot: min_size counts the live resources)
        while pool._size - pool._closing < pool._min_size and self.can_start(now):
            self.start(None)
        if self.backoff.failures and (waiters or pool._size - pool._closing < pool._min_size):
            self.schedule_backoff(now)

    def can_start(self, now: float) -> bool:
        pool = self._pool
        return pool._size < pool._max_size and self.backoff.allows(now)

    def start(self, fut: Waiter | None, report: asyncio.Future[None] | None = None) -> None:
        """Start a creation serving ``fut`` (None: a fill, an orphan from the start; a
        prefill's fill with its ``report``)."""
        pool = self._pool
        pool._size += 1
        self.backoff.started()
        creation = _Creation(fut, report)
        if fut is None:
            self.orphans.append(creation)
        else:
            self.bound[fut] = creation
        task = pool._spawn(self._run(creation))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def prefill(self, count: int) -> BaseException | None:
        """Create ``count`` resources for an opening pool and wait until each attempt has
        ended; returns the first creation error (in the order they started).

        They are fills: each new resource goes, as soon as it is made, to the oldest
        waiter (a task that queued while the pool opens) or idle, and a waiter may adopt
        one still running as any orphan. Each also tells its outcome to this call. If
        this call is cancelled, they go on as plain fills."""
        pool = self._pool
        assert pool._loop is not None
        reports: list[asyncio.Future[None]] = [pool._loop.create_future() for _ in range(count)]
        for report in reports:
            assert self.can_start(pool._clock()), "an opening pool has room for min_size"
            self.start(None, report)
        results = await asyncio.gather(*reports, return_exceptions=True)
        return next((r for r in results if isinstance(r, BaseException)), None)

    def close(self) -> None:
        """The pool closes: cancel the creations still running, stop the backoff timer."""
        self.bound.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for task in list(self.tasks):
            task.cancel()

    def _forget(self, creation: _Creation) -> Waiter | None:
        """A creation ends: returns the waiter it was serving, if any."""
        waiter = creation.waiter
        if waiter is not None:
            self.bound.pop(waiter, None)
            creation.waiter = None
        else:
            self.orphans.remove(creation)
        return waiter

    async def _run(self, creation: _Creation) -> None:
        pool = self._pool
        started = pool._clock()
        # Read now: an expire() while it connects (a failover) retires what it makes.
        generation = pool._generation
        try:
            resource = await pool._manager.create()
            if id(resource) in self.live:
                raise ValueError(
                    f"{pool._manager!r}.create() returned {resource!r}, which {pool!r} already "
                    "holds; each resource must be a distinct object"
                )
        except BaseException as exc:
            self._failed(creation, exc, started)
            if isinstance(exc, Exception) or leaked_cancel(exc):
                return  # a failed attempt, told to the waiter it served
            raise  # this task was cancelled (the pool closes, or its loop shuts down)
        # The resource exists: aclose() must not cancel this task any more (a cancelled
        # close task that never started would leak the resource and its slot).
        self.tasks.discard(asyncio.current_task())  # type: ignore[arg-type,unused-ignore]
        # Its waiter, if still queued, is served in its turn like any other (FIFO): the
        # entry goes to the oldest waiter, whose own creation, if any, it then adopts.
        self._forget(creation)
        creation.tell(None)
        now = pool._clock()
        pool._counters.created += 1
        if pool._observer is not None:
            pool._observer.created(now - started, None)
        self.live.add(id(resource))
        if self.backoff.failures:
            logger.info(
                "%r: created a resource again, after %d failed attempt(s)",
                pool,
                self.backoff.failures,
            )
        self.backoff.succeeded()
        expires = _INF
        if pool._max_lifetime is not None:
            expires = now + pool._max_lifetime * (1.0 - _LIFETIME_JITTER * random.random())
        entry = Entry(resource, ResourceInfo(now, now, 0, expires), generation)
        pending = pool._hand_off(entry)
        pool._dispatch()
        if pending is not None:
            await asyncio.shield(pending)

    def _failed(self, creation: _Creation, exc: BaseException, started: float) -> None:
        pool = self._pool
        pool._size -= 1
        target = self._forget(creation)
        if isinstance(exc, asyncio.CancelledError) and not pool._is_open():
            self.backoff.abandoned()
            error: BaseException = PoolClosed(f"{pool!r} was closed while creating a resource")
            creation.tell(error)
        elif isinstance(exc, asyncio.CancelledError) and not leaked_cancel(exc):
            # This task was cancelled though the pool is open: its loop shuts down with the
            # pool left open (asyncio.run cancels every task). No verdict on the manager, and
            # no new creation (the loop would destroy it pending); a waiter still there is told.
            self.backoff.abandoned()
            error = RuntimeError(f"{pool!r}: the task creating a resource was cancelled")
            creation.tell(error)
            if target is not None and not target.done():
                pool._queue.remove(target)
                target.set_exception(error)
            return
        else:
            error = exc
            if isinstance(exc, asyncio.CancelledError):
                # The manager itself raised CancelledError (an inner timeout that leaked):
                # a failed attempt, reported as such, not as our caller being cancelled.
                error = ConnectionError(
                    f"{pool._manager!r}.create() raised CancelledError on an open pool"
                )
                error.__cause__ = exc
            creation.tell(error)
            pool._counters.create_errors += 1
            if pool._observer is not None:
                pool._observer.created(pool._clock() - started, error)
            wait = self.backoff.failed(pool._clock(), error)
            logger.warning(
                "%r: creating a resource failed (attempt %d in a row): %s; next attempt "
                "in %.3fs at the earliest",
                pool,
                self.backoff.failures,
                error_text(error),
                wait,
            )
            if target is None and pool._is_open():
                # A fill stood for the oldest waiter no creation serves: fail fast.
                target = next(
                    (f for f in pool._waiters if f not in self.bound and not f.done()), None
                )
        if target is not None and not target.done():
            pool._queue.remove(target)
            target.set_exception(error)
        pool._dispatch()

    def schedule_backoff(self, now: float) -> None:
        """During backoff, dispatch again when the next attempt may start (after ``now``,
        the time the caller found no attempt could start)."""
        backoff = self.backoff
        if backoff.probing or self._timer is not None:
            return
        pool = self._pool
        if backoff.until <= now or pool._loop is None:
            return  # over: whatever frees capacity (a close, a release) dispatches
        self._timer = pool._loop.call_at(backoff.until, self._on_backoff_end, backoff.until)

    def _on_backoff_end(self, when: float) -> None:
        """The backoff ending at ``when`` is over, even if the clock reads a little less
        (uvloop's timers tick in milliseconds): the dispatch would otherwise find it not
        over and re-arm for that same end, again and again until the clock passed it."""
        self._timer = None
        backoff = self.backoff
        if backoff.until <= when:  # (not a later backoff, after a failure since)
            backoff.until = min(backoff.until, self._pool._clock())
        self._pool._dispatch()
