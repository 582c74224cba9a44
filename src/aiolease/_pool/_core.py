"""The pool's core: public API, lifecycle, acquire, release and the one hand-off.

Invariants every method keeps:

* State changes happen in synchronous critical sections; awaits happen
  outside them. Work that must finish even when its caller is cancelled
  (creating, resetting, closing a resource) runs in a pool-owned task, so a
  cancelled caller only stops *waiting* for it.
* ``_size`` counts every slot in use: idle + in use + creations, checks and
  resets in flight + closes in flight (``_closing`` of them), and ``_size <= max_size`` at every
  instant. What is above a bound (``max_size`` after a resize down, ``min_size``
  for idle_timeout) is ``_size - _closing``: a close in flight already frees its slot.
* One acquire path: the non-blocking lease (:meth:`Pool.acquire_nowait`) is
  the fast path of :meth:`Pool.acquire`; an acquire that cannot be served on
  the spot queues a future and is handed an entry by :meth:`Pool._hand_off`
  (a released or created resource) or :meth:`Pool._dispatch` (idle ones, new
  capacity). One release path: :meth:`Pool._release` ends the lease and goes
  through the same hand-off. Waiters are served strictly first-in first-out.
* A creation is bound to the waiter it was started for (its error goes to
  that waiter): see :mod:`._creations` for orphans and what ``max_waiting`` counts.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
from collections import deque
from collections.abc import Awaitable, Callable
from types import EllipsisType, TracebackType
from typing import Any, TypeVar

from .. import _metrics, _tracking, _validate
from .._errors import PoolClosed, PoolTimeout, WouldBlock
from .._pool_atomic import PoolAtomic
from .._tasks import start_task
from ..abc import Manager
from ._acquire import Acquire, needs_check, run_check, self_wait_error, waiting_on_itself
from ._args import Options
from ._closing import (
    Drain,
    close_broken,
    close_resource,
    detach,
    note_discard,
    reset_then_hand_off,
    retire,
)
from ._creations import Creations
from ._entries import CallableManager, Entry, Hooks
from ._housekeeping import Housekeeper, idle_deadline, leak_report, warn_unclosed
from ._queue import Waiter, WaitQueue
from ._stats import Counters, PoolStatistics, describe, snapshot
from ._where import user_location

__all__ = ["Pool"]

T = TypeVar("T")
_INF = float("inf")


class _State(enum.Enum):
    """The pool's lifecycle (shown by repr)."""

    NEW = "new"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


# Module names for the members: acquire and release test the state several times,
# and a member read as a class attribute goes through the Enum's metaclass.
_NEW, _OPEN, _CLOSING, _CLOSED = _State.NEW, _State.OPEN, _State.CLOSING, _State.CLOSED


class Pool(Options[T]):
    """An async pool of resources made by a :class:`~aiolease.abc.Manager`.

    Nothing happens in the constructor: the pool binds to the running loop and
    prefills ``min_size`` when opened (``async with pool``, :meth:`open`, or the
    first :meth:`acquire`). It hands out what the manager makes (or its
    :meth:`~aiolease.abc.Manager.wrap` of it), so it cannot guard a plain resource
    kept after its lease; the driver pools hand out proxies that raise
    :class:`~aiolease.ResourceReleased` then. See docs/pool.md for each option.

    Args:
        manager: creates, checks, resets and closes the resources; each close is
            bounded by its ``close_timeout`` (default 10 s), then abandoned.
        min_size: resources kept open, refilled in the background.
        max_size: resources open at most, counting creations in flight.
        acquire_timeout: default seconds :meth:`acquire` may wait (None: forever).
        max_waiting: tasks allowed to queue (None: unbounded).
        max_lifetime: seconds after creation a resource is retired (up to 5% less).
        idle_timeout: seconds an idle resource above ``min_size`` is kept; with it
            idle resources go out most recently used first (else least recently).
        leak_timeout: seconds a lease may last before it is reported.
        name: shown in ``repr``, logs and leak reports.
        backoff_base: first delay after a failed creation, doubling (jittered) per
            consecutive failure up to ``backoff_max``.
        backoff_max: cap of that delay.

    Raises:
        TypeError: an argument of the wrong type.
        ValueError: an argument out of range.
    """

    __slots__ = (
        "__weakref__",
        "_clock",
        "_closing",
        "_counters",
        "_created_at",
        "_creations",
        "_done",
        "_drain",
        "_generation",
        "_hooks",
        "_housekeeper",
        "_idle",
        "_in_hook",
        "_in_use",
        "_loop",
        "_observer",
        "_queue",
        "_size",
        "_state",
        "_tasks",
        "_waiters",
    )

    def __init__(
        self,
        manager: Manager[T],
        *,
        min_size: int = 0,
        max_size: int = 10,
        acquire_timeout: float | None = 30.0,
        max_waiting: int | None = None,
        max_lifetime: float | None = None,
        idle_timeout: float | None = None,
        leak_timeout: float | None = None,
        name: str | None = None,
        backoff_base: float = 0.1,
        backoff_max: float = 10.0,
    ) -> None:
        backoff = self._check_options(
            manager,
            min_size=min_size,
            max_size=max_size,
            acquire_timeout=acquire_timeout,
            max_waiting=max_waiting,
            max_lifetime=max_lifetime,
            idle_timeout=idle_timeout,
            leak_timeout=leak_timeout,
            name=name,
            backoff_base=backoff_base,
            backoff_max=backoff_max,
        )
        self._creations: Creations[T] = Creations(self, backoff)
        self._hooks = Hooks(manager)
        self._state: _State = _NEW
        self._loop: asyncio.AbstractEventLoop | None = None
        self._clock: Callable[[], float] = _unbound_clock
        self._done: asyncio.Future[None] | None = None  # a completed future, set in open()
        self._idle: deque[Entry[T]] = deque()  # the oldest release at the left
        self._in_use: dict[int, Entry[T]] = {}  # id(handle) -> entry
        self._waiters: deque[Waiter] = deque()
        # Entries in the manager's check or reset, each with the timeout scope around the
        # hook: aclose() waits for them as for leases, and fires the scope when it stops.
        self._in_hook: dict[Entry[T], asyncio.Timeout] = {}
        self._size = 0
        self._closing = 0  # closes in flight (counted in _size until each ends)
        self._generation = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._queue: WaitQueue[T] = WaitQueue(self, self._waiters)
        self._housekeeper = Housekeeper(self)
        self._counters = Counters()
        self._drain: Drain | None = None  # the close, once aclose() began
        self._created_at = user_location()
        # None unless metrics are on (aiolease.otel, aiolease.prometheus): see _metrics.
        self._observer = _metrics.register_pool(self, self._label)
        _tracking.track(self)

    @classmethod
    def from_callables(
        cls,
        create: Callable[[], Awaitable[T]],
        close: Callable[[T], object] | None = None,
        **options: Any,
    ) -> Pool[T]:
        """Make a pool from a creation coroutine function and an optional close function.

        Args:
            create: ``async def create() -> T``.
            close: ``close(resource)``, sync or async (None: nothing to close).
            **options: the :class:`Pool` keyword arguments.

        Raises:
            TypeError: ``create`` is not an async callable (a plain ``def`` is
                refused here, not at the first acquire), or ``close`` is not callable.
        """
        return cls(CallableManager(create, close), **options)

    # ------------------------------------------------------------------ lifecycle

    async def open(self, *, wait: bool = True) -> None:
        """Bind to the running loop and fill ``min_size`` resources.

        Args:
            wait: wait for the first ``min_size`` resources; if one of those
                creations fails, the pool is closed and the error raised.
                With ``wait=False`` the pool fills in the background.

        Raises:
            PoolClosed: the pool was closed.
            TypeError: ``wait`` is not True or False.
            RuntimeError: the pool was opened on another event loop.
        """
        _validate.check_flag("wait", wait)
        if self._state is _OPEN:
            self._check_loop()
            return
        if self._state is not _NEW:
            raise PoolClosed(f"{self!r} is closed; make a new pool")
        self._loop = loop = asyncio.get_running_loop()
        # Every timeout, lifetime and backoff reads the loop's own clock, asked of the loop
        # object (a loop that overrides time, or a time set on the object, is the clock).
        self._clock = loop.time
        self._done = loop.create_future()
        self._done.set_result(None)
        self._queue.bind(loop)
        self._state = _OPEN
        if not wait or self._min_size == 0:
            self._dispatch()
            return
        error = await self._creations.prefill(self._min_size)
        if error is not None:
            await self.aclose()
            raise error

    async def __aenter__(self) -> Pool[T]:
        try:
            await self.open()
        except asyncio.CancelledError:
            # `async with` runs no __aexit__ when entering fails: cancelled while it fills,
            # the pool would stay open, and filled, with nobody left to close it.
            await self.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self, timeout: float | None = None) -> None:
        """Close the pool: wake waiters with :class:`PoolClosed`, close idle resources,
        wait for checked-out ones and for checks and resets in flight (up to ``timeout``,
        then close them in their holders' hands and interrupt the hooks, as a later
        ``aclose(timeout=t)`` or cancelling the closer does sooner), and return when
        every resource is closed. While it waits it logs a WARNING
        on ``aiolease.pool`` naming each lease, soon and at growing intervals.

        Args:
            timeout: seconds to wait for checked-out resources (None: as long as it takes).

        Raises:
            TypeError: ``timeout`` is not a number.
            ValueError: ``timeout`` is negative or NaN.
        """
        wait_for = _validate.timeout("timeout", timeout)
        self._check_loop()
        if self._state is _NEW:
            self._state = _CLOSED
        if self._state is _CLOSED:
            return
        if self._drain is None:
            self._state = _CLOSING
            self._drain = Drain(self)
        await self._drain.wait(wait_for)

    def _closed(self) -> None:
        self._state = _CLOSED

    def _check_loop(self) -> None:
        """Refuse a call from an event loop other than the one the pool opened on: its
        timers and tasks run there, and its resources (connections) belong to it.

        Raises:
            RuntimeError: the running loop is not the pool's (or none runs).
        """
        loop = self._loop
        if loop is not None and loop is not asyncio.get_running_loop():
            raise RuntimeError(
                f"{self!r} was opened on another event loop ({loop!r}), not the running one; "
                "a pool serves the loop it was opened on: make one pool per event loop"
            )

    def __del__(self) -> None:
        if getattr(self, "_state", None) is _OPEN:
            warn_unclosed(self)

    # ------------------------------------------------------------------ acquire

    def acquire(self, *, timeout: float | EllipsisType | None = ...) -> Acquire[T]:
        """Check a resource out: ``async with pool.acquire() as r`` or ``r = await pool.acquire()``.

        Entering (or awaiting) blocks until a resource is available and can be
        cancelled at any point without losing one. Leaving ``async with``
        releases the resource (shielded from cancellation). With ``await``,
        give it back with :meth:`release`. The object can be entered again
        after it was left, but not while it is entered (``RuntimeError``).

        Args:
            timeout: seconds to wait, overriding ``acquire_timeout``; None
                waits forever.

        Raises:
            PoolTimeout: no resource within the timeout (the last creation
                error, if any, is its ``__cause__``), or at once when the task
                already holds every lease the pool can give (it would wait on itself).
            PoolClosed: the pool is closed or closes while waiting.
            TooManyWaiters: ``max_waiting`` tasks are already queued.
            RuntimeError: the pool was opened on another event loop.
            Exception: the error of the creation attempt made for this call.
        """
        if timeout is ...:
            return Acquire(self, self._acquire_timeout)
        return Acquire(self, _validate.timeout("timeout", timeout))

    def acquire_nowait(self) -> T:
        """Check out an idle resource without waiting (and without ``check``).

        Raises:
            WouldBlock: no resource is idle, or the pool is not open.
            RuntimeError: the pool was opened on another event loop.
        """
        self._check_loop()
        entry = self._take_idle()
        if entry is None:
            state = "has no idle resource" if self._state is _OPEN else "is not open"
            raise WouldBlock(f"{self!r} {state}")
        entry.scoped = False
        return self._lease(entry)

    def _take_idle(self) -> Entry[T] | None:
        """The non-blocking lease: an idle entry to hand out now, or None when the
        caller must wait (pool not open, others queued ahead, nothing idle)."""
        if self._state is not _OPEN or self._waiters or not self._idle:
            return None
        return self._pop_idle()

    def _pop_idle(self) -> Entry[T] | None:
        """The idle entry to hand out next, closing those past their lifetime on the way
        (idle_timeout trimming above min_size is housekeeping's job)."""
        idle = self._idle
        while idle:
            entry = idle.popleft() if self._lru else idle.pop()
            expires = entry.info.expires_at
            if expires != _INF and expires <= self._clock():
                retire(self, entry)
                continue
            return entry
        return None

    def _unpop_idle(self, entry: Entry[T]) -> None:
        """Put back an entry :meth:`_pop_idle` gave, where it was: the next to go out."""
        if self._lru:
            self._idle.appendleft(entry)
        else:
            self._idle.append(entry)

    async def _acquire_blocking(self, into: Acquire[T], *, fresh: bool) -> T:
        """Every acquire not served on the spot: one that waits, or whose idle entry
        needs its check.

        ``fresh``: whether an idle entry may be there to take (at first: the caller put
        back one whose check is due; later: our entry just failed its check). Otherwise
        the caller has just found none to take, and the wait queue's admit hands this
        waiter any that turned up since (its dispatch serves idle entries to waiters).
        """
        # Whether the wait (in the queue, or for the check of an idle entry: what wait_time
        # counts) began.
        retry, waited, checked = False, False, False
        try:
            if self._state is _NEW:
                await self.open(wait=False)
            start = self._clock()
            deadline = _INF if into._timeout is None else start + into._timeout
            while True:
                if self._state is not _OPEN:
                    raise PoolClosed(f"{self!r} is closed")
                entry = self._take_idle() if fresh else None
                if entry is None:
                    waited = True
                    fut = self._queue.admit(retry, deadline)
                    try:
                        entry = await fut
                    except BaseException as exc:
                        self._queue.abandon(fut)
                        if isinstance(exc, PoolTimeout) and waiting_on_itself(
                            self, scoped_only=False
                        ):
                            raise self_wait_error(self) from exc.__cause__
                        raise
                # `entry` is ours now; until it is leased, every exit must give it back.
                if self._state is not _OPEN:  # aclose() began while it was on its way
                    self._close_soon(entry)
                    raise PoolClosed(f"{self!r} is closed")
                if entry.check_due and needs_check(self, entry):
                    checked = True
                    if not await run_check(self, entry, deadline):
                        retry = fresh = True  # keep our place, ahead of later tasks
                        continue
                    if self._state is not _OPEN:  # aclose() began during its check
                        self._close_soon(entry)
                        raise PoolClosed(f"{self!r} is closed")
                break
        except BaseException as exc:
            into._entered = False
            # A wait that failed after it began: in the queue, or in the check of an idle
            # entry (timed out, cancelled, the pool closed meanwhile).
            if (waited or checked) and self._observer is not None:
                self._observer.wait_failed(self._clock() - start, exc)
            raise
        into._entry = entry
        entry.scoped = into._scoped
        return self._lease(entry, start, waited)

    def _lease(self, entry: Entry[T], start: float | None = None, waited: bool = False) -> T:
        """The lease bookkeeping (one copy): ``entry`` goes to the current task, which
        asked for it at ``start`` (None: just now, served on the spot), after a wait
        in the queue if ``waited``."""
        info = entry.info
        info.uses += 1
        entry.holder = asyncio.current_task(self._loop)
        entry.lease_start = now = self._clock()
        observer = self._observer
        if observer is not None:
            observer.leased(0.0 if start is None else now - start)
        if self._leak_timeout is not None or _tracking.active:
            self._housekeeper.watch(entry, inspect.currentframe())
        else:
            entry.lease_stack = None
        hooks = self._hooks
        if hooks.wrap is not None:  # a new handle per lease (its key and ready future with it)
            entry.handle = handle = hooks.wrap(entry.resource)
            entry.key = id(handle)
            entry.ready = None
        self._in_use[entry.key] = entry
        self._counters.acquired += 1
        if waited:  # the wait statistics: up to the lease's start
            assert start is not None
            counters, wait = self._counters, now - start
            counters.wait_total += wait
            if wait > counters.wait_max:
                counters.wait_max = wait
        if hooks.on_acquire is not None:
            hooks.on_acquire(entry.resource, info)
        return entry.handle

    # ------------------------------------------------------------------ release

    async def release(self, resource: T, *, discard: bool = False) -> None:
        """Give a resource back; with ``discard=True`` it is closed instead of reused.

        Shielded: returns after the reset (or the close it causes) has completed,
        and if the caller is cancelled meanwhile, that work still completes. A
        resource marked broken by a transaction is closed in a pool-owned task
        that this call does not wait for.

        Raises:
            ValueError: the resource is not checked out from this pool.
            TypeError: ``discard`` is not True or False.
            RuntimeError: the pool was opened on another event loop.
        """
        self._check_loop()
        pending = self._release(resource, _validate.check_flag("discard", discard))
        if pending is not None:
            await asyncio.shield(pending)

    def _release(self, handle: T, discard: bool) -> asyncio.Future[Any] | None:
        """The release (one copy): ends the lease, returns the reset or close to await."""
        key = id(handle)
        entry = self._in_use.pop(key, None)
        if entry is None or entry.handle is not handle:
            if entry is not None:
                self._in_use[key] = entry
            elif self._drain is not None and self._drain.given_back(key, handle):
                return None  # aclose has closed it already
            raise ValueError(
                f"{handle!r} is not checked out from {self!r} (released twice, or another pool's)"
            )
        if self._drain is not None:
            self._drain.wake.set()
        info = entry.info
        info.last_used_at = self._clock()
        observer = self._observer
        if observer is not None:
            observer.released(info.last_used_at - entry.lease_start)
        hooks = self._hooks
        resource = entry.resource
        if hooks.detach is not None:  # the lease's handle refuses use from now on
            detach(self, entry)
        if hooks.on_release is not None:
            hooks.on_release(resource, info)
        if _tracking._broken and _tracking.is_broken(resource):
            close_broken(self, entry)  # not awaited (see close_broken)
            return None
        if discard:
            note_discard(self, entry, None)  # (the holder's choice: no log line)
            return self._close_soon(entry)
        if hooks.reset is not None and (
            hooks.reset_needed is None or hooks.reset_needed(resource, info)
        ):
            return self._spawn(reset_then_hand_off(self, entry))
        return self._hand_off(entry)

    # ------------------------------------------------------------------ hand-off

    def _hand_off(self, entry: Entry[T]) -> asyncio.Future[Any] | None:
        """Where a free entry goes (released, created, or passed on by a waiter that
        left): closed if retired, else to the oldest waiter (also when the creation was
        made for a later one: that one then takes over the oldest's creation, see
        :meth:`WaitQueue.next`), else idle. A new entry (never leased) is not retired for
        its lifetime here: one shorter than the moments since its creation ended would
        throw every new resource away, and never serve the waiters it was made for."""
        info = entry.info
        if (
            self._state is not _OPEN
            or entry.generation != self._generation
            or self._size - self._closing > self._max_size
            or (info.uses and info.expires_at != _INF and info.expires_at <= self._clock())
        ):
            return retire(self, entry)
        fut = self._queue.next() if self._waiters else None
        if fut is not None:
            entry.check_due = False
            fut.set_result(entry)
            return None
        hooks = self._hooks
        entry.check_due = hooks.check is not None
        self._idle.append(entry)
        if hooks.on_idle is not None:
            hooks.on_idle(entry.resource, info)
        if self._max_lifetime is not None or self._idle_timeout is not None:
            self._housekeeper.schedule(idle_deadline(entry, self._idle_timeout))
        return None

    def _dispatch(self) -> None:
        """After any change: idle entries to the oldest waiters, then (an open pool) the
        creations it owes (:meth:`Creations.replenish`)."""
        creations = self._creations
        if not self._idle and self._size >= self._max_size and not creations.orphans:
            return  # nothing to hand out and no room to create (the pool under load)
        waiters = self._waiters
        while waiters and self._idle:
            entry = self._pop_idle()
            if entry is None:
                break
            fut = self._queue.next()
            if fut is None:  # every queued waiter had left: the entry stays idle
                self._unpop_idle(entry)
                break
            fut.set_result(entry)  # from idle: its receiver runs the check
        if self._state is _OPEN:
            creations.replenish()

    # ------------------------------------------------------------------ create / close

    def _is_open(self) -> bool:
        return self._state is _OPEN

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        assert self._loop is not None
        task: asyncio.Task[Any] = start_task(coro, self._loop)  # never eagerly: see _tasks
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _close_soon(self, entry: Entry[T]) -> asyncio.Future[Any]:
        """Close ``entry`` in a pool-owned task (once, however often asked)."""
        if entry.closing is None:
            self._closing += 1
            entry.closing = self._spawn(close_resource(self, entry))
        return entry.closing

    # ------------------------------------------------------------------ admin

    async def resize(self, min_size: int | None = None, max_size: int | None = None) -> None:
        """Change the bounds. Surplus idle resources are closed now (returns after they
        are), surplus in-use ones when released; new capacity serves waiters at once.

        Raises:
            TypeError: a bound is not an int.
            ValueError: ``min_size > max_size`` or out of range.
            RuntimeError: the pool was opened on another event loop.
        """
        self._check_loop()
        await self._housekeeper.resize(min_size, max_size)

    async def expire(self) -> None:
        """Retire every current resource: idle ones are closed now (returns after they are),
        checked-out ones when released. New resources replace them on demand.

        Raises:
            RuntimeError: the pool was opened on another event loop.
        """
        self._check_loop()
        await self._housekeeper.expire()

    def atomic(
        self,
        *,
        isolation: str | None = None,
        readonly: bool = False,
        savepoint: bool = True,
        durable: bool = False,
        cleanup_timeout: float | None = None,
    ) -> PoolAtomic[T]:
        """``async with pool.atomic(...) as tx``: acquire a connection and run a transaction
        on it (see :func:`aiolease.atomic` for the options); ``tx.connection`` is what
        the pool handed out. ``cleanup_timeout`` None takes the manager's
        ``cleanup_timeout`` attribute when it has one, else the dialect's default.

        Raises:
            TypeError, ValueError: a bad option (as for :func:`aiolease.atomic`), at the
                call; an isolation level the database does not accept, at entry.
        """
        return PoolAtomic(
            self,
            isolation=isolation,
            readonly=readonly,
            savepoint=savepoint,
            durable=durable,
            cleanup_timeout=cleanup_timeout,
        )

    def statistics(self) -> PoolStatistics:
        """A frozen snapshot of sizes and counters."""
        return snapshot(self)

    @property
    def name(self) -> str | None:
        return self._name

    @property
    def manager(self) -> Manager[T]:
        return self._manager

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` was called."""
        return self._state in (_CLOSING, _CLOSED)

    @property
    def min_size(self) -> int:
        return self._min_size

    @property
    def max_size(self) -> int:
        """The configured maximum (the last :meth:`resize`); ``statistics().max_size`` is
        the one in force, which is higher while a resize down waits for surplus."""
        return self._max_size

    def __repr__(self) -> str:
        return describe(self, self._state.value)

    def _aiolease_leaks(self) -> list[str]:
        return leak_report(self, self._state is _CLOSED)


def _unbound_clock() -> float:
    return asyncio.get_running_loop().time()
