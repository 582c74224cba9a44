"""The acquirers waiting for an entry: a FIFO of futures, their deadlines on one timer.

A waiter is a future in the queue; :meth:`Pool._hand_off` and
:meth:`Pool._dispatch` resolve it with an entry (taking it off the queue with
:meth:`WaitQueue.next`). A waiter that gives up after the hand-off passes its
entry on (:meth:`WaitQueue.abandon`).
"""

from __future__ import annotations

import asyncio
import heapq
from collections import deque
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .._errors import PoolTimeout, TooManyWaiters
from .._redact import redact
from ._acquire import self_wait_error, waiting_on_itself
from ._entries import Entry

if TYPE_CHECKING:
    from ._core import Pool

__all__ = ["WaitQueue"]

T = TypeVar("T")
_INF = float("inf")


Waiter = asyncio.Future[Entry[Any]]


class WaitQueue(Generic[T]):
    """The pool's waiters (``futures``, oldest at the left) and the deadlines of the
    timed ones (``_heap``: a min-heap of ``(deadline, id, future)``). Every change to
    ``futures`` goes through this class.

    A waiter taken off anywhere but the front (it gave up, timed out, or its creation
    failed) leaves ``queued``, the set of the waiters in the queue, at once; its place in
    ``futures`` is dropped when it comes to the front, or when such places are most of
    ``futures``. So leaving costs the same wherever a waiter stands, ``len(queued)`` is
    the exact count, and ``futures`` is empty exactly when nobody is queued (the pool
    tests it as "anyone waiting?").

    Every timed wait shares one loop timer, armed for the earliest deadline: a
    waiter admitted with an earlier one re-arms it; when it fires, the waits
    whose deadline has come time out and it is re-armed for the earliest one
    left; it is disarmed when the queue empties. A wait that ends costs nothing
    here: its heap entry is dropped when it comes to the top, or when such
    entries are most of the heap (so a timer firing costs the waits it ends,
    however many wait, and the heap stays within twice the queue).

    A waiter is waiting while its future is not done: every way off the queue
    resolves or cancels it.
    """

    __slots__ = ("_heap", "_loop", "_pool", "_timer", "_when", "futures", "queued")

    def __init__(self, pool: Pool[T], futures: deque[Waiter]) -> None:
        self._pool = pool
        self.futures = futures
        self.queued: set[Waiter] = set()
        self._heap: list[tuple[float, int, Waiter]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._when = _INF  # when _timer fires

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The pool opened on ``loop``: the deadline timer runs there."""
        self._loop = loop

    def admit(self, front: bool, deadline: float) -> Waiter:
        """Queue a new waiter of the running loop that times out at ``deadline`` (at the
        front for a task whose resource failed its check, which keeps its turn), unless
        the queue is full or the task would wait on itself.

        Raises:
            TooManyWaiters: ``max_waiting`` tasks are queued already.
            PoolTimeout: every lease is the task's own ``async with``: none can end
                while it waits.
        """
        pool, futures = self._pool, self.futures
        fut: Waiter = asyncio.Future()  # of the running loop
        if deadline < self._when:
            self._arm(deadline)
        first = not futures  # nobody queued ahead (see the self-wait check below)
        if front:
            futures.appendleft(fut)
        else:
            futures.append(fut)
        queued = self.queued
        queued.add(fut)
        if deadline != _INF:
            heap = self._heap
            if len(heap) > 2 * len(queued) + 64:  # mostly waits that ended: keep the live
                heap[:] = [item for item in heap if not item[2].done()]
                heapq.heapify(heap)
            heapq.heappush(heap, (deadline, id(fut), fut))
        pool._dispatch()  # a creation for it, if capacity allows
        creations = pool._creations
        bound = creations.bound
        if fut in bound or front:
            return fut
        if pool._max_waiting is not None and len(queued) - len(bound) > pool._max_waiting:
            self.remove(fut)
            fut.cancel()  # never waited on: its deadline is void
            raise TooManyWaiters(
                f"{pool!r}: {len(queued) - len(bound)} tasks already waiting "
                f"(max_waiting={pool._max_waiting})"
            )
        # Checked at once only for a task that queues first: a task queued behind others
        # is told at its timeout (see Pool._acquire_blocking), and the check stays off
        # the path of a pool under steady contention.
        if first and waiting_on_itself(pool, scoped_only=True):
            self.remove(fut)
            fut.cancel()
            pool._counters.timeouts += 1
            raise self_wait_error(pool)
        if creations.backoff.failures:
            creations.schedule_backoff(pool._clock())
        return fut

    def next(self) -> Waiter | None:
        """Take the oldest waiter still waiting off the queue (its creation, if any,
        becomes an orphan for the next one to adopt)."""
        futures, queued = self.futures, self.queued
        creations = self._pool._creations
        while futures:
            fut = futures.popleft()
            if fut not in queued:
                continue  # a place its waiter left (see remove)
            queued.discard(fut)
            if creations.bound:
                creations.unbind(fut)
            if not fut.done():
                break
        else:
            fut = None
        if not queued:
            self._emptied()
        return fut

    def remove(self, fut: Waiter) -> None:
        """Take ``fut`` off the queue, wherever it is (its place is dropped later). The
        caller resolves or cancels it."""
        queued = self.queued
        if fut in queued:
            queued.discard(fut)
            if not queued:
                self._emptied()
            elif len(self.futures) > 2 * len(queued) + 64:  # mostly places left: keep the live
                live = [f for f in self.futures if f in queued]
                self.futures.clear()
                self.futures.extend(live)
        self._pool._creations.unbind(fut)

    def _emptied(self) -> None:
        """Nobody is queued: no place is kept, no wait is left to time out."""
        self.futures.clear()
        if self._timer is not None:
            self.disarm()

    def abandon(self, fut: Waiter) -> None:
        """A waiter leaves early (cancelled, timed out, pool closed): if it was already
        handed an entry, pass that on; otherwise withdraw it from the queue."""
        pool = self._pool
        if fut.done() and not fut.cancelled():
            if fut.exception() is None:
                pool._hand_off(fut.result())
            # else the pool failed it (timed out, creation failed, closed), taking it off
            # the queue first: no search for it
            return
        self.remove(fut)
        if not fut.done():
            fut.cancel()
        pool._dispatch()

    def disarm(self) -> None:
        """No wait left to time out (or the pool closes): the timer stops."""
        self._heap.clear()
        self._arm(_INF)

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._when = when
        if when != _INF:
            assert self._loop is not None, "a timed wait before the pool opened"
            self._timer = self._loop.call_at(when, self._expire, when)

    def _expire(self, now: float) -> None:
        """The shared deadline timer fired at ``now``: time out the waits whose deadline
        has come, then re-arm it for the earliest deadline left."""
        self._timer = None
        self._when = _INF
        heap = self._heap
        while heap and heap[0][0] <= now:
            self._time_out(heapq.heappop(heap)[2])
        while heap and heap[0][2].done():  # waits that ended before their deadline
            heapq.heappop(heap)
        if heap:
            self._arm(heap[0][0])

    def _time_out(self, fut: Waiter) -> None:
        """``fut``'s wait is over."""
        if fut.done():
            return
        pool = self._pool
        self.remove(fut)
        pool._counters.timeouts += 1
        error = pool._creations.backoff.last_error
        exc = PoolTimeout(
            f"{pool!r}: no resource within the acquire timeout"
            + (f" (last creation error: {redact(repr(error))})" if error else "")
        )
        exc.__cause__ = error
        fut.set_exception(exc)
        pool._dispatch()
