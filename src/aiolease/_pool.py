"""A generic async resource pool that never loses capacity to a cancellation.

Design (the invariants every method keeps):

* All state changes happen in synchronous critical sections; awaits happen
  outside them. Anything that must finish even when its caller is cancelled
  (creating, resetting, closing a resource) runs in a pool-owned task, so a
  cancelled caller only stops *waiting* for it.
* ``_size`` counts every slot in use: idle + in use + creations in flight +
  closes in flight. ``_size <= max_size`` at every instant.
* Waiters are futures in a FIFO deque. Whatever frees up (a released resource,
  a free slot) is handed to the oldest waiter directly (``_grant``), so a
  newcomer never overtakes a queued task. A waiter that gives up after the
  hand-off (the future already holds a result) passes the resource on.
* A creation is a task bound to the future of the acquirer it serves. If that
  acquirer has gone (timed out, cancelled), the new resource serves the next
  waiter or goes idle; a creation error is raised to the acquirer it served.
* Time comes from the loop's clock only; housekeeping is one timer set to the
  next deadline, never a polling loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import sys
import time
import traceback
import warnings
from collections import deque
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from types import EllipsisType, FrameType, TracebackType
from typing import Any, ClassVar, Generic, TypeVar, cast

from . import _tracking
from ._clock import clock_of
from ._errors import PoolClosed, PoolTimeout, TooManyWaiters, WouldBlock
from .abc import Manager, ResourceInfo

__all__ = ["Pool", "PoolStatistics"]

T = TypeVar("T")

logger = logging.getLogger("aiolease.pool")

_INF = float("inf")
# loop.create_future() is a Python-level call that returns this C type. Called with no
# argument it binds to the running loop (the pool's: it is called in the pool's tasks and
# acquiring ones), which 3.11 finds with a getpid() call; `_Future(loop=...)` builds a dict
# instead, as keyword arguments to a type do. Fewer instructions without, about the same
# time (158 and 144 ns here).
_Future = asyncio.Future
# fut.done() and fut.set_result() are not specialised by the interpreter (the C Future has
# a dict slot, empty): called as functions, they are.
_future_done = _Future.done
_future_set_result = _Future.set_result
_LIFETIME_JITTER = 0.05  # max_lifetime is shortened by up to 5% so resources do not expire together


class _State:
    """The pool's lifecycle state: ``_State.NEW``, ``OPEN``, ``CLOSING`` or ``CLOSED``.

    A plain class, not an ``enum.Enum``: reading an Enum member goes through the
    metaclass (~60 ns), and the acquire/release paths test the state several times.
    """

    __slots__ = ("value",)

    NEW: ClassVar[_State]
    OPEN: ClassVar[_State]
    CLOSING: ClassVar[_State]
    CLOSED: ClassVar[_State]

    def __init__(self, value: str) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"<_State.{self.value.upper()}>"


_State.NEW = _State("new")
_State.OPEN = _State("open")
_State.CLOSING = _State("closing")
_State.CLOSED = _State("closed")
_new_object = object.__new__
# The hot paths test for OPEN: a module global is one cached load, a class attribute two.
_OPEN = _State.OPEN


@dataclass(frozen=True, slots=True)
class PoolStatistics:
    """A snapshot of a pool's state and counters (see :meth:`Pool.statistics`).

    Attributes:
        size: slots in use: idle + in use + creations and closes in flight.
        idle: resources ready to hand out.
        in_use: resources checked out (not counting those that ``aclose(timeout)``
            closed in their holders' hands).
        waiting: tasks queued for a resource.
        min_size: configured minimum.
        max_size: the maximum in force: the configured one, except while a
            resize down waits for checked-out surplus to come back, when it is
            the current size, falling to the configured one as the surplus is
            closed. So ``size <= max_size`` at every instant.
        acquired: leases handed out since the pool was made.
        created: resources created.
        closed: resources closed.
        timeouts: acquisitions that ended in :class:`~aiolease.PoolTimeout`.
        wait_time_total: seconds spent by acquirers that had to wait, summed.
        wait_time_max: the longest such wait.
        leaks: leases reported by ``leak_timeout``.
        create_errors: creation attempts that raised.
        discarded: resources closed because check/reset failed, ``discard=True``
            or a fatal error in the body.
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


class _Entry(Generic[T]):
    """One resource the pool owns, with its bookkeeping."""

    __slots__ = (
        "closing",
        "from_idle",
        "generation",
        "info",
        "key",
        "leak_reported",
        "lease_stack",
        "lease_start",
        "ready",
        "resource",
    )

    def __init__(self, resource: T, info: ResourceInfo, generation: int) -> None:
        self.resource = resource
        # The entry's key in Pool._in_use, computed once: id() is a call (with an audit
        # hook check) and makes a new int, on every checkout and release otherwise.
        self.key = id(resource)
        # What an acquire served on the spot returns for `async with` to await: a done
        # future with the resource, made once (it can be awaited any number of times), is
        # cheaper than a coroutine per checkout. Entries are made in the pool's loop.
        self.ready: asyncio.Future[T] = _Future()
        self.ready.set_result(resource)
        self.info = info
        self.generation = generation
        self.from_idle = (
            False  # True while it sits (or sat) in the idle deque: needs check on hand-out
        )
        self.closing: asyncio.Future[Any] | None = None  # the close task, once started
        self.lease_start = 0.0
        self.lease_stack: traceback.StackSummary | None = None
        self.leak_reported = False

    def deadline(self, idle_timeout: float | None) -> float:
        """When this idle entry must go: lifetime end, or idle timeout."""
        if idle_timeout is None:
            return self.info.expires_at
        return min(self.info.expires_at, self.info.last_used_at + idle_timeout)


class _CallableManager(Manager[T]):
    """The manager behind :meth:`Pool.from_callables`."""

    __slots__ = ("_close", "_create")

    def __init__(
        self,
        create: Callable[[], Awaitable[T]],
        close: Callable[[T], object] | None,
    ) -> None:
        self._create = create
        self._close = close

    async def create(self) -> T:
        return await self._create()

    async def close(self, resource: T) -> None:
        if self._close is not None:
            result = self._close(resource)
            if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
                await result


def _overrides(manager: object, name: str) -> Callable[..., Any] | None:
    """The manager's method ``name``, or None when it is the Manager ABC's no-op default."""
    method = getattr(manager, name, None)
    if method is None:
        return None
    base = getattr(Manager, name)
    if getattr(type(manager), name, None) is base:
        return None
    return cast(Callable[..., Any], method)


_F = TypeVar("_F", bound=Callable[..., Any])


def _ignores_info(fn: _F) -> _F:
    """Mark a manager hook that never reads the ``ResourceInfo`` it is given (aiolease's
    own managers), so a pool whose hooks all ignore it does not stamp ``last_used_at``
    on the inlined release. A subclass that overrides the hook loses the mark."""
    fn._aiolease_ignores_info = True  # type: ignore[attr-defined]
    return fn


def _reads_info(hook: Callable[..., Any] | None) -> bool:
    return hook is not None and not getattr(hook, "_aiolease_ignores_info", False)


_INTERNAL = (os.sep + "asyncio" + os.sep, os.sep + "pluggy" + os.sep, os.sep + "_pytest" + os.sep)


def _caller_stack(frame: FrameType | None, limit: int = 8) -> traceback.StackSummary:
    """The acquiring code's stack, without aiolease's, asyncio's and the test runner's frames."""
    frames = [
        f
        for f in traceback.extract_stack(frame, limit=40)
        if f.filename != __file__ and not any(part in f.filename for part in _INTERNAL)
    ]
    return traceback.StackSummary.from_list(frames[-limit:])


def _check_positive(name: str, value: float | None, *, allow_none: bool = True) -> float | None:
    if value is None:
        if allow_none:
            return None
        raise TypeError(f"{name} must be a number of seconds, not None")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds or None, got {value!r}")
    if not value > 0:
        raise ValueError(f"{name} must be > 0 seconds or None, got {value!r}")
    return float(value)


def _check_int(name: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return value


class Pool(Generic[T]):
    """An async pool of resources made by a :class:`~aiolease.abc.Manager`.

    Nothing happens in the constructor: the pool binds to the running loop
    and prefills ``min_size`` resources when it is opened (``async with pool``,
    :meth:`open`, or the first :meth:`acquire`).

    Args:
        manager: creates, checks, resets and closes the resources.
        min_size: resources kept open, refilled in the background.
        max_size: resources open at most, counting creations in flight.
        acquire_timeout: default seconds :meth:`acquire` may wait (None: forever).
        max_waiting: tasks allowed to queue; one more raises
            :class:`~aiolease.TooManyWaiters` (None: unbounded).
        max_lifetime: seconds after creation a resource is retired (with up to
            5% negative jitter); an in-use one is retired when released.
        idle_timeout: seconds an idle resource above ``min_size`` is kept. Idle
            resources go out least recently used first, or, with an
            ``idle_timeout``, most recently used first (so the surplus can
            go unused long enough to be trimmed).
        leak_timeout: seconds a lease may last before it is reported (log
            warning with the acquiring stack, ``statistics().leaks``).
        name: shown in ``repr``, logs and leak reports.
        backoff_base: first delay after a failed creation; doubles per
            consecutive failure (jittered) up to ``backoff_max``.
        backoff_max: cap of that delay.

    Raises:
        TypeError: an argument of the wrong type.
        ValueError: an argument out of range.
    """

    # Slots: the hot paths read a dozen attributes per acquire and release, and a slot
    # is one indexed load (64 attributes are too many for a shared-key instance dict,
    # so without slots every read goes through the instance's own dict). Measured: -2.6%
    # client instructions per contended acquire + release. Declare new attributes here.
    __slots__ = (
        "__weakref__",
        "_acquire_timeout",
        "_backoff_base",
        "_backoff_max",
        "_backoff_timer",
        "_backoff_until",
        "_bound",
        "_check_fn",
        "_check_needed_fn",
        "_checking",
        "_clock",
        "_close_fn",
        "_closed_event",
        "_closed_out",
        "_create_fn",
        "_created_at",
        "_creating",
        "_deadline_of",
        "_deadline_timer",
        "_deadline_when",
        "_done",
        "_drained",
        "_expiring",
        "_failures",
        "_filling",
        "_generation",
        "_hk_timer",
        "_idle",
        "_idle_timeout",
        "_in_use",
        "_info_read",
        "_instant_lease",
        "_is_fatal_fn",
        "_last_error",
        "_leak_timeout",
        "_live",
        "_loop",
        "_lru",
        "_manager",
        "_max_lifetime",
        "_max_size",
        "_max_waiting",
        "_min_size",
        "_n_acquired",
        "_n_closed",
        "_n_create_errors",
        "_n_created",
        "_n_discarded",
        "_n_leaks",
        "_n_pending",
        "_n_timeouts",
        "_name",
        "_on_acquire_fn",
        "_on_idle_fn",
        "_on_release_fn",
        "_plain_lease",
        "_plain_release",
        "_probing",
        "_reset_fn",
        "_reset_needed_fn",
        "_size",
        "_state",
        "_tasks",
        "_under_check",
        "_wait_max",
        "_wait_total",
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
        if not callable(getattr(manager, "create", None)):
            raise TypeError(
                f"manager must implement async create() (an aiolease.abc.Manager), got {manager!r}"
            )
        self._min_size = _check_int("min_size", min_size, 0)
        self._max_size = _check_int("max_size", max_size, 1)
        if min_size > max_size:
            raise ValueError(f"min_size ({min_size}) must be <= max_size ({max_size})")
        if acquire_timeout is not None:
            if isinstance(acquire_timeout, bool) or not isinstance(acquire_timeout, int | float):
                raise TypeError(f"acquire_timeout must be seconds or None, got {acquire_timeout!r}")
            if not acquire_timeout >= 0:  # also rejects NaN
                raise ValueError(
                    f"acquire_timeout must be >= 0 seconds or None, got {acquire_timeout!r}"
                )
        self._acquire_timeout = None if acquire_timeout is None else float(acquire_timeout)
        self._max_waiting = (
            None if max_waiting is None else _check_int("max_waiting", max_waiting, 0)
        )
        self._max_lifetime = _check_positive("max_lifetime", max_lifetime)
        self._idle_timeout = _check_positive("idle_timeout", idle_timeout)
        self._leak_timeout = _check_positive("leak_timeout", leak_timeout)
        self._backoff_base = cast(
            float, _check_positive("backoff_base", backoff_base, allow_none=False)
        )
        self._backoff_max = cast(
            float, _check_positive("backoff_max", backoff_max, allow_none=False)
        )
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str or None, got {name!r}")
        self._name = name

        self._manager = manager
        self._create_fn: Callable[[], Awaitable[T]] = manager.create
        self._check_fn = _overrides(manager, "check")
        self._check_needed_fn = _overrides(manager, "check_needed")
        self._reset_fn = _overrides(manager, "reset")
        self._reset_needed_fn = _overrides(manager, "reset_needed")
        self._close_fn = getattr(manager, "close", None)
        self._on_acquire_fn = _overrides(manager, "on_acquire")
        self._on_release_fn = _overrides(manager, "on_release")
        self._on_idle_fn = _overrides(manager, "on_idle")
        self._is_fatal_fn = _overrides(manager, "is_fatal")

        self._state = _State.NEW
        self._loop: asyncio.AbstractEventLoop | None = None
        self._done: asyncio.Future[None]  # a completed future of the loop, set in open()
        self._clock: Callable[[], float] = time.monotonic  # set with the loop in open()
        # Idle entries in the order they came back: the oldest at the left. Handed out
        # from the left (least recently used first) or the right (most recently used
        # first): see _lru.
        self._idle: deque[_Entry[T]] = deque()
        self._in_use: dict[int, _Entry[T]] = {}  # id(resource) -> entry
        # Checked out when aclose(timeout) ran out, and closed by it: id(resource) -> entry,
        # until the holder gives the (closed) resource back.
        self._closed_out: dict[int, _Entry[T]] = {}
        self._waiters: deque[asyncio.Future[_Entry[T]]] = deque()
        self._size = 0
        self._generation = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._creating: set[asyncio.Task[Any]] = set()
        # Waiters' futures that a creation in flight will resolve (unless a release does first).
        self._bound: set[asyncio.Future[_Entry[T]]] = set()
        self._filling = 0  # creations in flight serving no one in particular (min_size fill)
        self._checking = 0  # acquirers running the manager's check on an entry
        self._under_check: set[_Entry[T]] = set()  # their entries (aclose closes them on timeout)
        # id() of every resource the pool holds (created, not yet closed): _in_use is keyed
        # by id(), so a manager handing out the same object twice would lose a slot.
        self._live: set[int] = set()
        self._drained: asyncio.Event | None = None
        self._closed_event: asyncio.Event | None = None
        # Creation failures: consecutive count, last error, and when the next attempt may start.
        self._failures = 0
        self._probing = False
        self._backoff_until = 0.0
        self._last_error: BaseException | None = None
        self._backoff_timer: asyncio.TimerHandle | None = None
        # Acquire deadlines: each timed wait registers its future here while it waits, and
        # one timer, armed for the earliest deadline, times them out. (A timer per wait
        # cost more than all the rest of a contended acquire.)
        self._deadline_of: dict[asyncio.Future[_Entry[T]], float] = {}
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._deadline_when = _INF  # when _deadline_timer fires
        self._hk_timer: asyncio.TimerHandle | None = None
        # Which idle entry is handed out next. Without idle_timeout, the least recently
        # used: use spreads over every resource, as with asyncpg's and psycopg's pools (a
        # client and a server on one host: 1-task asyncpg throughput +12% here, as the
        # kernel spreads the server processes over the cores), and none sits unused long
        # enough for a firewall or the server to drop it. With idle_timeout, the most
        # recently used: the surplus above min_size then goes unused and is trimmed.
        self._lru = self._idle_timeout is None
        # Whether idle entries can expire at all (lifetime or idle timeout set).
        self._expiring = self._max_lifetime is not None or self._idle_timeout is not None
        # Whether an idle entry can be leased with no hook, check, expiry or leak timer
        # (the leak-check registry, which can switch on at any time, is tested apart).
        self._plain_lease = self._leak_timeout is None and self._on_acquire_fn is None
        self._instant_lease = self._plain_lease and not self._expiring and self._check_fn is None
        # Whether a release can take the inlined path in _Acquire.__aexit__: no hook and
        # no expiry; a reset only where reset_needed() says whether it is needed.
        self._plain_release = (
            not self._expiring
            and self._on_release_fn is None
            and (self._reset_fn is None or self._reset_needed_fn is not None)
        )
        # Whether anything can read an entry's last_used_at: idle trimming, or a hook
        # that is given the ResourceInfo and may read it (not one marked with
        # _ignores_info). When nothing can, the inlined release does not read the clock
        # for it.
        self._info_read = self._expiring or any(
            _reads_info(hook)
            for hook in (
                self._check_fn,
                self._check_needed_fn,
                self._reset_fn,
                self._reset_needed_fn,
                self._on_acquire_fn,
                self._on_idle_fn,
                self._on_release_fn,
            )
        )

        self._n_acquired = 0
        # Acquirers blocked (queued, or waiting for their creation) with no timeout; those
        # with one are the keys of _deadline_of, so `waiting` is the sum (see _waiting).
        self._n_pending = 0
        self._n_created = 0
        self._n_closed = 0
        self._n_timeouts = 0
        self._n_leaks = 0
        self._n_create_errors = 0
        self._n_discarded = 0
        self._wait_total = 0.0
        self._wait_max = 0.0

        frame = sys._getframe(1)
        if frame.f_code.co_name == "from_callables" and frame.f_back is not None:
            frame = frame.f_back
        self._created_at = f"{frame.f_code.co_filename}:{frame.f_lineno}"
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
            TypeError: ``create`` or ``close`` is not callable.
        """
        if not callable(create):
            raise TypeError(f"create must be an async callable, got {create!r}")
        if close is not None and not callable(close):
            raise TypeError(f"close must be a callable or None, got {close!r}")
        return cls(_CallableManager(create, close), **options)

    # ------------------------------------------------------------------ lifecycle

    async def open(self, *, wait: bool = True) -> None:
        """Bind to the running loop and fill ``min_size`` resources.

        Args:
            wait: wait for the first ``min_size`` resources; if one of those
                creations fails, the pool is closed and the error raised.
                With ``wait=False`` the pool fills in the background.

        Raises:
            PoolClosed: the pool was closed.
        """
        if self._state is _OPEN:
            return
        if self._state is not _State.NEW:
            raise PoolClosed(f"{self!r} is closed; make a new pool")
        self._loop = loop = asyncio.get_running_loop()
        # The loop's clock, one call cheaper on asyncio's own loop (see _clock).
        self._clock = clock_of(loop)
        self._done = loop.create_future()
        self._done.set_result(None)
        self._state = _OPEN
        if not wait or self._min_size == 0:
            self._maybe_fill()
            return
        futures = []
        for _ in range(self._min_size):
            fut: asyncio.Future[_Entry[T]] = self._loop.create_future()
            self._size += 1
            self._start_create(fut)
            futures.append(fut)
        try:
            results = await asyncio.gather(*futures, return_exceptions=True)
        except BaseException:
            # Cancelled: resources already created go back to the pool; creations still
            # in flight find their future cancelled and put their resource back themselves.
            for fut in futures:
                self._abandon(fut)
            raise
        error: BaseException | None = None
        for result in results:
            if isinstance(result, BaseException):
                error = error or result
            elif result is not None:
                self._put_back(result)
        if error is not None:
            await self.aclose()
            raise error

    async def __aenter__(self) -> Pool[T]:
        await self.open()
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
        wait for checked-out ones to come back (up to ``timeout`` seconds, then close
        them), and return when every resource is closed.

        Shielded: if the caller is cancelled, closing goes on in the background.

        Args:
            timeout: seconds to wait for checked-out resources (None: as long as it takes).
        """
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout >= 0
        ):
            raise ValueError(f"timeout must be >= 0 seconds or None, got {timeout!r}")
        if self._state is _State.NEW:
            self._state = _State.CLOSED
            return
        if self._state is _State.CLOSED:
            return
        loop = self._loop
        assert loop is not None
        if self._state is _State.CLOSING:
            assert self._closed_event is not None
            await asyncio.shield(self._closed_event.wait())
            return
        self._state = _State.CLOSING
        self._closed_event = asyncio.Event()
        task = loop.create_task(self._close_all(timeout))
        await asyncio.shield(task)

    async def _close_all(self, timeout: float | None) -> None:
        assert self._closed_event is not None
        try:
            for timer in (self._hk_timer, self._backoff_timer, self._deadline_timer):
                if timer is not None:
                    timer.cancel()
            self._hk_timer = self._backoff_timer = self._deadline_timer = None
            self._deadline_when = _INF
            closed = PoolClosed(f"{self!r} was closed while waiting")
            while self._waiters:
                fut = self._waiters.popleft()
                if not fut.done():
                    fut.set_exception(closed)
            for task in list(self._creating):
                task.cancel()
            while self._idle:
                self._spawn_close(self._idle.pop())
            if self._in_use or self._checking:
                self._drained = asyncio.Event()
                try:
                    async with asyncio.timeout(timeout):
                        # Set by the release emptying _in_use and by each check ending.
                        while self._in_use or self._checking:
                            self._drained.clear()
                            await self._drained.wait()
                except TimeoutError:
                    for entry in list(self._under_check):
                        logger.warning(
                            "%r: closing %r, still under check after aclose(timeout=%s)",
                            self,
                            entry.resource,
                            timeout,
                        )
                        self._spawn_close(entry)
                    # No longer in use (statistics count them out), but their holders may
                    # still give them back: _release takes them from _closed_out.
                    self._closed_out.update(self._in_use)
                    self._in_use.clear()
                    for entry in self._closed_out.values():
                        logger.warning(
                            "%r: closing %r, still checked out after aclose(timeout=%s)",
                            self,
                            entry.resource,
                            timeout,
                        )
                        self._spawn_close(entry)
            while self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)
        finally:
            self._state = _State.CLOSED
            self._closed_event.set()

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        if getattr(self, "_state", None) is _OPEN:
            _warn(
                f"unclosed {self!r} (created at {self._created_at}); "
                "use `async with pool:` or `await pool.aclose()`",
                ResourceWarning,
                source=self,
            )

    # ------------------------------------------------------------------ acquire

    def acquire(self, *, timeout: float | EllipsisType | None = ...) -> _Acquire[T]:
        """Check a resource out: ``async with pool.acquire() as r`` or ``r = await pool.acquire()``.

        Entering (or awaiting) blocks until a resource is available and can be
        cancelled at any point without losing one. Leaving ``async with``
        releases the resource (shielded from cancellation). With ``await``,
        give it back with :meth:`release`.

        Args:
            timeout: seconds to wait, overriding ``acquire_timeout``; None
                waits forever.

        Raises:
            PoolTimeout: no resource within the timeout (the last creation
                error, if any, is its ``__cause__``).
            PoolClosed: the pool is closed or closes while waiting.
            TooManyWaiters: ``max_waiting`` tasks are already queued.
            Exception: the error of the creation attempt made for this call.
        """
        if timeout is ...:
            # _Acquire(self, self._acquire_timeout) without the __init__ frame: this is
            # the start of every acquire.
            acq: _Acquire[T] = _new_object(_Acquire)
            acq._pool = self
            acq._timeout = self._acquire_timeout
            acq._entry = None
            return acq
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout >= 0
        ):
            raise ValueError(f"timeout must be >= 0 seconds or None, got {timeout!r}")
        return _Acquire(self, timeout)

    def acquire_nowait(self) -> T:
        """Check out an idle resource without waiting (and without ``check``).

        Raises:
            WouldBlock: no resource is idle, or the pool is not open.
        """
        if self._state is not _OPEN:
            raise WouldBlock(f"{self!r} is not open")
        idle = self._idle
        while idle:
            entry = self._take_idle()
            # Only the lifetime: idle_timeout trimming (above min_size) is housekeeping's job.
            if self._expiring and entry.info.expires_at <= self._now():
                self._spawn_close(entry)
                continue
            return self._lease(entry)
        raise WouldBlock(f"{self!r} has no idle resource")

    async def _open_for_acquire(self) -> None:
        """An acquire found the pool not open: open it (a new pool), or raise."""
        if self._state is not _State.NEW:
            raise PoolClosed(f"{self!r} is closed")
        # Implicit open: fill in the background. A failed creation then goes through
        # the usual fail-fast/backoff path instead of closing the pool for good.
        await self.open(wait=False)

    async def _acquire_queued(self, into: _Acquire[T]) -> T:
        """The contended acquire: tasks are already queued and no creation can start (the
        pool is full), so queue behind them. What :meth:`_acquire_slow` does in that case,
        with its other cases left out; an entry that needs more (a check, the pool closing
        meanwhile, leak tracking) is finished there."""
        fut: asyncio.Future[_Entry[T]] = _Future()
        self._waiters.append(fut)
        timeout = into._timeout
        clock = self._clock  # (a call through a local: self._clock() is not specialised)
        start = clock()
        if timeout is not None:
            # _watch_deadline/_unwatch_deadline inlined: two calls cost 3% of a contended acquire.
            deadline = start + timeout
            self._deadline_of[fut] = deadline  # (also counts this wait: see _waiting)
            if deadline < self._deadline_when:
                self._arm_deadline_timer(deadline)
        else:
            self._n_pending += 1
        try:
            entry = await fut
        except BaseException:
            self._abandon(fut)
            raise
        finally:
            if timeout is not None:
                deadlines = self._deadline_of
                del deadlines[fut]
                if not deadlines and self._deadline_timer is not None:
                    self._arm_deadline_timer(_INF)  # no timed waits left: disarm
            else:
                self._n_pending -= 1
        if entry.from_idle or self._state is not _OPEN or not self._plain_lease or _tracking.active:
            return await self._acquire_slow(timeout, into, entry, start)
        waited_for = clock() - start
        self._wait_total += waited_for
        if waited_for > self._wait_max:
            self._wait_max = waited_for
        into._entry = entry  # (for its __aexit__)
        resource = entry.resource  # _lease inlined (see _Acquire.__aenter__)
        entry.info.uses += 1
        self._in_use[entry.key] = entry
        self._n_acquired += 1
        return resource

    async def _acquire_slow(
        self,
        timeout: float | None,
        into: _Acquire[T] | None = None,
        received: _Entry[T] | None = None,
        start: float | None = None,
    ) -> T:
        """Every acquire that is not served on the spot. ``received`` (with the ``start``
        of its wait) is an entry the waiting in :meth:`_acquire_queued` has already got."""
        loop = self._loop
        assert loop is not None
        clock = self._clock
        waited = start is not None
        if start is None:
            start = clock()
        deadline = _INF if timeout is None else start + timeout
        retry = False  # our idle resource failed its check: keep our place, ahead of later tasks
        while True:
            entry: _Entry[T]
            if received is not None:
                entry, received = received, None
            elif self._state is not _OPEN:
                raise PoolClosed(f"{self!r} is closed")
            elif not self._waiters and self._idle:
                entry = self._take_idle()
            else:
                fut: asyncio.Future[_Entry[T]] = _Future()
                if not self._waiters and not self._filling and self._can_create():
                    # A creation serves us, but we queue too: whatever frees up first (a
                    # release, or this creation) goes to the oldest waiter (FIFO).
                    self._size += 1
                    self._start_create(fut)
                    self._waiters.append(fut)
                else:
                    if retry:
                        # Whoever queued meanwhile arrived after us (FIFO).
                        self._waiters.appendleft(fut)
                    elif (
                        self._max_waiting is not None
                        and len(self._waiters) - len(self._bound) >= self._max_waiting
                    ):
                        raise TooManyWaiters(
                            f"{self!r}: {len(self._waiters)} tasks already waiting "
                            f"(max_waiting={self._max_waiting})"
                        )
                    else:
                        self._waiters.append(fut)
                    if self._size < self._max_size:
                        self._grant()  # capacity left: start creations for uncovered waiters
                    elif self._failures:
                        self._schedule_backoff_grant()
                waited = True
                # The wait for `fut` (an entry, or a creation bound to it), as in _acquire_queued.
                timed = deadline != _INF
                if timed:
                    self._watch_deadline(fut, deadline)
                else:
                    self._n_pending += 1
                try:
                    entry = await fut
                except BaseException:
                    self._abandon(fut)
                    raise
                finally:
                    if timed:
                        self._unwatch_deadline(fut)
                    else:
                        self._n_pending -= 1
            # `entry` is ours now; until it is leased, every exit must give it back.
            if entry.from_idle:
                # Only the lifetime: idle_timeout trimming (above min_size) is housekeeping's job.
                if self._expiring and entry.info.expires_at <= loop.time():
                    self._spawn_close(entry)
                    continue
                if (
                    self._check_fn is not None
                    and (
                        self._check_needed_fn is None
                        or self._check_needed_fn(entry.resource, entry.info)
                    )
                    and not await self._check(entry, deadline)
                ):
                    retry = True
                    continue
            if self._state is not _OPEN:
                # aclose() began while this entry was on its way to us (check, hand-off).
                self._spawn_close(entry)
                raise PoolClosed(f"{self!r} is closed")
            if waited:
                waited_for = clock() - start
                self._wait_total += waited_for
                if waited_for > self._wait_max:
                    self._wait_max = waited_for
            if self._plain_lease and not _tracking.active:
                resource = entry.resource  # _lease inlined (see _Acquire.__aenter__)
                entry.info.uses += 1
                self._in_use[entry.key] = entry
                self._n_acquired += 1
            else:
                resource = self._lease(entry)
            if into is not None:
                into._entry = entry  # for its __aexit__: set before any await can intervene
            return resource

    def _unqueue(self, fut: asyncio.Future[_Entry[T]]) -> None:
        """Withdraw ``fut`` from the queue if it is there (rare path: O(queue))."""
        try:
            self._waiters.remove(fut)
        except ValueError:
            pass

    def _abandon(self, fut: asyncio.Future[_Entry[T]]) -> None:
        """A waiter leaves early (cancelled, timed out, pool closed): if it was already
        handed an entry, pass that on; otherwise withdraw it from the queue."""
        if fut.done() and not fut.cancelled() and fut.exception() is None:
            entry = fut.result()
            if entry is not None:
                self._put_back(entry)
        else:
            try:
                self._waiters.remove(fut)
            except ValueError:
                pass
            if not fut.done():
                fut.cancel()

    def _watch_deadline(self, fut: asyncio.Future[_Entry[T]], deadline: float) -> None:
        """A timed wait for ``fut`` starts: the shared timer times it out at ``deadline``."""
        self._deadline_of[fut] = deadline
        if deadline < self._deadline_when:
            self._arm_deadline_timer(deadline)

    def _unwatch_deadline(self, fut: asyncio.Future[_Entry[T]]) -> None:
        """The timed wait for ``fut`` is over (served, timed out or abandoned)."""
        deadlines = self._deadline_of
        del deadlines[fut]
        if not deadlines and self._deadline_timer is not None:
            self._arm_deadline_timer(_INF)  # no timed waits left: disarm

    def _arm_deadline_timer(self, when: float) -> None:
        """(Re)arm the shared deadline timer for ``when``; ``inf`` disarms it."""
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        self._deadline_when = when
        if when != _INF:
            loop = self._loop
            assert loop is not None
            self._deadline_timer = loop.call_at(when, self._expire_waiters, when)

    def _expire_waiters(self, when: float) -> None:
        """The deadline timer fired at ``when``: time out the waits due by then, re-arm."""
        self._deadline_timer = None
        self._deadline_when = _INF
        nxt = _INF
        for fut, deadline in list(self._deadline_of.items()):
            if deadline <= when:
                self._expire_waiter(fut)
            elif deadline < nxt and not fut.done():
                nxt = deadline
        if nxt != _INF and self._state is _OPEN:
            self._arm_deadline_timer(nxt)

    def _expire_waiter(self, fut: asyncio.Future[_Entry[T]]) -> None:
        if fut.done():
            return
        try:
            self._waiters.remove(fut)
        except ValueError:
            pass  # bound to a creation in flight: that resource will serve someone else
        self._n_timeouts += 1
        exc = self._timeout_error()
        exc.__cause__ = self._last_error
        fut.set_exception(exc)

    def _timeout_error(self) -> PoolTimeout:
        return PoolTimeout(
            f"{self!r}: no resource within the acquire timeout"
            + (f" (last creation error: {self._last_error!r})" if self._last_error else "")
        )

    async def _check(self, entry: _Entry[T], deadline: float) -> bool:
        """Run the manager's check on an idle entry; False (after discarding it) if it fails.

        The check counts against the acquire ``deadline``: when it passes
        mid-check, the check is cancelled, the resource closed and
        :class:`PoolTimeout` raised.
        """
        assert self._check_fn is not None
        timeout = None if deadline == _INF else asyncio.timeout_at(deadline)
        self._checking += 1  # aclose() waits for resources under check
        self._under_check.add(entry)
        try:
            if timeout is None:
                await self._check_fn(entry.resource, entry.info)
            else:
                async with timeout:
                    await self._check_fn(entry.resource, entry.info)
        except asyncio.CancelledError:
            # Interrupted mid-check: the resource's state is unknown, so close it.
            self._n_discarded += 1
            self._spawn_close(entry)
            raise
        except Exception as exc:
            self._n_discarded += 1
            if timeout is not None and timeout.expired():
                # Same as a cancellation: the check was interrupted.
                self._spawn_close(entry)
                self._n_timeouts += 1
                raise self._timeout_error() from self._last_error
            logger.info("%r: check failed for %r (%r); discarding it", self, entry.resource, exc)
            # Not awaited: the caller queues (at the front) before the close frees the slot.
            self._spawn_close(entry)
            return False
        except BaseException:
            self._n_discarded += 1
            self._spawn_close(entry)
            raise
        finally:
            self._checking -= 1
            self._under_check.discard(entry)
            if self._drained is not None:
                self._drained.set()
        return True

    def _lease(self, entry: _Entry[T]) -> T:
        resource = entry.resource
        info = entry.info
        info.uses += 1
        self._in_use[entry.key] = entry
        self._n_acquired += 1
        if self._leak_timeout is not None or _tracking.active:
            now = self._now()
            entry.lease_start = now
            entry.leak_reported = False
            entry.lease_stack = _caller_stack(sys._getframe(1))
            if self._leak_timeout is not None:
                self._schedule_housekeeping(now + self._leak_timeout)
        if self._on_acquire_fn is not None:
            self._on_acquire_fn(resource, info)
        return resource

    # ------------------------------------------------------------------ release

    async def release(self, resource: T, *, discard: bool = False) -> None:
        """Give a resource back; with ``discard=True`` it is closed instead of reused.

        Shielded: returns after the reset (or the close it causes) has completed,
        and if the caller is cancelled meanwhile, that work still completes.

        Raises:
            ValueError: the resource is not checked out from this pool.
        """
        pending = self._release(resource, discard)
        if pending is not None:
            await asyncio.shield(pending)

    def _release(self, resource: T, discard: bool) -> asyncio.Future[Any] | None:
        """Synchronous part of release: returns work to await (reset or close), if any."""
        key = id(resource)
        entry = self._in_use.pop(key, None)
        if entry is None or entry.resource is not resource:
            if entry is not None:
                self._in_use[key] = entry
            else:
                closed = self._closed_out.get(key)
                if closed is not None and closed.resource is resource:
                    del self._closed_out[key]
                    return None  # aclose(timeout) has closed it already
            raise ValueError(
                f"{resource!r} is not checked out from {self!r} (released twice, or another pool's)"
            )
        if self._drained is not None and not self._in_use:
            self._drained.set()
        info = entry.info
        info.last_used_at = self._clock()
        if self._on_release_fn is not None:
            self._on_release_fn(resource, info)
        # `.data`: the WeakSet's plain set, whose truth test is C (bool(WeakSet) calls __len__)
        broken = _tracking._broken.data  # type: ignore[attr-defined]
        if discard or (broken and _tracking.is_broken(resource)):
            self._n_discarded += 1
            return self._spawn_close(entry)
        if self._reset_fn is not None and (
            self._reset_needed_fn is None or self._reset_needed_fn(resource, info)
        ):
            return self._spawn(self._reset_then_return(entry))
        # The common case of an `async with` is inlined in _Acquire.__aexit__; this is
        # the general route (pool.release(), exceptions, hooks).
        return self._put_back(entry)

    async def _reset_then_return(self, entry: _Entry[T]) -> None:
        assert self._reset_fn is not None
        try:
            await self._reset_fn(entry.resource, entry.info)
        except BaseException as exc:
            if not isinstance(exc, asyncio.CancelledError):
                logger.info(
                    "%r: reset failed for %r (%r); discarding it", self, entry.resource, exc
                )
            self._n_discarded += 1
            await self._close_entry(entry)
            if not isinstance(exc, Exception):
                raise
            return
        pending = self._put_back(entry)
        if pending is not None:
            await pending

    def _put_back(self, entry: _Entry[T]) -> asyncio.Future[Any] | None:
        """Route a resource that is free again: to the oldest waiter, to idle, or to close."""
        if (
            self._state is not _OPEN
            or entry.generation != self._generation
            or self._size > self._max_size
            or (self._max_lifetime is not None and entry.info.expires_at <= self._now())
        ):
            return self._spawn_close(entry)
        waiters = self._waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                entry.from_idle = False
                fut.set_result(entry)
                return None
        entry.from_idle = True
        self._idle.append(entry)
        if self._on_idle_fn is not None:
            self._on_idle_fn(entry.resource, entry.info)
        if self._expiring:
            self._schedule_housekeeping(entry.deadline(self._idle_timeout))
        return None

    # ------------------------------------------------------------------ create / close

    def _take_idle(self) -> _Entry[T]:
        """The idle entry to hand out next (see ``_lru``); the caller checks there is one."""
        return self._idle.popleft() if self._lru else self._idle.pop()

    def _now(self) -> float:
        loop = self._loop
        return loop.time() if loop is not None else asyncio.get_running_loop().time()

    def _can_create(self) -> bool:
        if self._size >= self._max_size:
            return False
        if self._failures:
            return not self._probing and self._now() >= self._backoff_until
        return True

    def _start_create(self, fut: asyncio.Future[_Entry[T]] | None) -> None:
        """Start a creation in a slot already counted in ``_size``, serving ``fut``."""
        if self._failures:
            self._probing = True
        if fut is not None:
            self._bound.add(fut)
        else:
            self._filling += 1
        task = self._spawn(self._create(fut))
        self._creating.add(task)
        task.add_done_callback(self._creating.discard)

    async def _create(self, fut: asyncio.Future[_Entry[T]] | None) -> None:
        loop = self._loop
        assert loop is not None
        try:
            resource = await self._create_fn()
            if id(resource) in self._live:
                raise ValueError(
                    f"{self._manager!r}.create() returned {resource!r}, which {self!r} already "
                    "holds; each resource must be a distinct object"
                )
        except BaseException as exc:
            self._size -= 1
            self._probing = False
            if fut is not None:
                self._bound.discard(fut)
            else:
                self._filling -= 1
            if isinstance(exc, asyncio.CancelledError) and self._state is not _OPEN:
                error: BaseException = PoolClosed(f"{self!r} was closed while creating a resource")
            else:
                if isinstance(exc, asyncio.CancelledError):
                    # The manager itself raised CancelledError (an inner timeout that leaked):
                    # a failed attempt, reported as such, not as our caller being cancelled.
                    error = ConnectionError(
                        f"{self._manager!r}.create() raised CancelledError on an open pool"
                    )
                    error.__cause__ = exc
                else:
                    error = exc
                self._n_create_errors += 1
                self._failures += 1
                self._last_error = error
                delay = min(self._backoff_max, self._backoff_base * 2 ** (self._failures - 1))
                self._backoff_until = loop.time() + delay * (0.5 + random.random() / 2)
                logger.warning(
                    "%r: creating a resource failed (%d in a row), next attempt in %.3fs: %r",
                    self,
                    self._failures,
                    self._backoff_until - loop.time(),
                    error,
                )
            if fut is None and self._state is _OPEN:
                # A fill creation stood for the oldest waiter no creation serves: fail fast.
                fut = next(
                    (f for f in self._waiters if not f.done() and f not in self._bound), None
                )
            if fut is not None and not fut.done():
                fut.set_exception(error)
                self._unqueue(fut)
            self._grant()
            if not isinstance(exc, Exception | asyncio.CancelledError):
                raise
            return
        # From here on the resource exists: aclose() must not cancel this task any more
        # (a cancelled close task that never started would leak the resource and its slot).
        current = asyncio.current_task()
        if current is not None:
            self._creating.discard(current)
        if fut is not None:
            self._bound.discard(fut)
        else:
            self._filling -= 1
        now = loop.time()
        self._n_created += 1
        self._live.add(id(resource))
        if self._failures:
            self._failures = 0
            self._last_error = None
        self._probing = False
        expires = _INF
        if self._max_lifetime is not None:
            expires = now + self._max_lifetime * (1.0 - _LIFETIME_JITTER * random.random())
        entry: _Entry[T] = _Entry(resource, ResourceInfo(now, now, 0, expires), self._generation)
        if fut is not None and not fut.done():
            self._unqueue(fut)
            if self._state is _OPEN:
                fut.set_result(entry)
                self._grant()
                return
            fut.set_exception(PoolClosed(f"{self!r} was closed while creating a resource"))
        pending = self._put_back(entry)
        self._grant()
        if pending is not None:
            await asyncio.shield(pending)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        loop = self._loop
        assert loop is not None
        task: asyncio.Task[Any] = loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _spawn_close(self, entry: _Entry[T]) -> asyncio.Future[Any]:
        if entry.closing is not None:  # already being closed (aclose timeout): once only
            return entry.closing
        task = entry.closing = self._spawn(self._close_entry(entry))
        return task

    async def _close_entry(self, entry: _Entry[T]) -> None:
        """Close a resource (errors logged) and free its slot. Always runs in a pool task."""
        try:
            if self._close_fn is not None:
                await self._close_fn(entry.resource)
        except Exception as exc:
            logger.warning("%r: closing %r failed: %r", self, entry.resource, exc)
        finally:
            self._live.discard(id(entry.resource))
            self._n_closed += 1
            self._size -= 1
            self._grant()

    def _grant(self) -> None:
        """Hand whatever is free to the oldest waiters; keep ``min_size`` filled.

        Idle resources go to the oldest waiters. Free capacity starts creations for the
        oldest waiters not yet served by one; such a waiter stays queued, so a resource
        released meanwhile still reaches the oldest waiter first.
        """
        waiters = self._waiters
        while waiters and self._idle:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(self._take_idle())
        if waiters and self._state is _OPEN and self._size < self._max_size:
            bound = self._bound
            spare = self._filling  # fill creations in flight will serve the first uncovered
            for fut in waiters:
                if fut.done() or fut in bound:
                    continue
                if spare:
                    spare -= 1
                    continue
                if not self._can_create():
                    break
                self._size += 1
                self._start_create(fut)  # the creation resolves `fut` unless a release does
        if waiters:
            self._schedule_backoff_grant()
        self._maybe_fill()

    def _schedule_backoff_grant(self) -> None:
        """During backoff, wake the queue when the next creation attempt is allowed."""
        # backoff_until only moves when a probe fails; that failure re-arms the timer via _grant.
        if (
            not self._failures
            or self._probing
            or self._backoff_timer is not None
            or self._state is not _OPEN
        ):
            return
        loop = self._loop
        assert loop is not None
        if self._backoff_until <= loop.time():
            # The backoff is over: the queue waits for capacity, and whatever frees it
            # (a close, a release) calls _grant. A timer at a past time would spin.
            return
        self._backoff_timer = loop.call_at(self._backoff_until, self._on_backoff_end)

    def _on_backoff_end(self) -> None:
        self._backoff_timer = None
        self._grant()

    def _maybe_fill(self) -> None:
        if self._state is not _OPEN:
            return
        while self._size < self._min_size and self._can_create():
            self._size += 1
            self._start_create(None)
        if self._size < self._min_size and self._failures:
            self._schedule_backoff_grant()

    # ------------------------------------------------------------------ housekeeping

    def _schedule_housekeeping(self, when: float) -> None:
        if when == _INF or self._state is not _OPEN:
            return
        timer = self._hk_timer
        if timer is not None:
            if timer.when() <= when:
                return
            timer.cancel()
        loop = self._loop
        assert loop is not None
        self._hk_timer = loop.call_at(when, self._housekeep)

    def _housekeep(self) -> None:
        """Retire idle resources past their deadline, report leaks, re-arm for the next deadline."""
        self._hk_timer = None
        if self._state is not _OPEN:
            return
        now = self._now()
        nxt = _INF
        if self._idle:
            keep: deque[_Entry[T]] = deque()
            # Oldest first, so idle_timeout trims the least recently used above min_size.
            surplus = self._size - self._min_size
            for entry in self._idle:
                if entry.info.expires_at <= now or (
                    self._idle_timeout is not None
                    and entry.info.last_used_at + self._idle_timeout <= now
                    and surplus > 0
                ):
                    self._spawn_close(entry)
                    surplus -= 1
                else:
                    keep.append(entry)
                    # Kept past its idle deadline only because of min_size: its next
                    # deadline is its lifetime (re-arming at a past time would spin).
                    # A later put-back or resize re-arms the timer if it becomes surplus.
                    due = entry.deadline(self._idle_timeout)
                    nxt = min(nxt, due if due > now else entry.info.expires_at)
            self._idle = keep
        if self._leak_timeout is not None:
            for entry in self._in_use.values():
                if entry.leak_reported:
                    continue
                due = entry.lease_start + self._leak_timeout
                if due <= now:
                    entry.leak_reported = True
                    self._n_leaks += 1
                    stack = "".join(entry.lease_stack.format()) if entry.lease_stack else "?"
                    logger.warning(
                        "%r: %r has been checked out for %.1fs (leak_timeout=%s); acquired at:\n%s",
                        self,
                        entry.resource,
                        now - entry.lease_start,
                        self._leak_timeout,
                        stack,
                    )
                else:
                    nxt = min(nxt, due)
        self._schedule_housekeeping(nxt)

    # ------------------------------------------------------------------ admin

    async def resize(self, min_size: int | None = None, max_size: int | None = None) -> None:
        """Change the bounds. Surplus idle resources are closed now (returns after they
        are), surplus in-use ones when released; new capacity serves waiters at once.

        Raises:
            ValueError: ``min_size > max_size`` or out of range.
        """
        new_min = self._min_size if min_size is None else _check_int("min_size", min_size, 0)
        new_max = self._max_size if max_size is None else _check_int("max_size", max_size, 1)
        if new_min > new_max:
            raise ValueError(f"min_size ({new_min}) must be <= max_size ({new_max})")
        self._min_size, self._max_size = new_min, new_max
        if self._state is not _OPEN:
            return
        closes: list[asyncio.Future[Any]] = []
        while self._size - len(closes) > self._max_size and self._idle:
            closes.append(self._spawn_close(self._idle.popleft()))
        self._grant()
        if self._idle_timeout is not None and self._idle:
            # Idle resources kept for the old min_size may now be surplus past their deadline.
            self._schedule_housekeeping(self._now())
        if closes:
            await asyncio.shield(asyncio.gather(*closes))

    async def expire(self) -> None:
        """Retire every current resource: idle ones are closed now (returns after they are),
        checked-out ones when released. New resources replace them on demand."""
        self._generation += 1
        if self._state is not _OPEN:
            return
        closes = [self._spawn_close(entry) for entry in self._idle]
        self._idle.clear()
        if closes:
            await asyncio.shield(asyncio.gather(*closes))

    def atomic(self, **options: Any) -> Any:
        """``async with pool.atomic(...) as tx``: acquire a connection and run a transaction
        on it (see :func:`aiolease.atomic` for the options)."""
        import importlib

        return importlib.import_module("aiolease._transaction").pool_atomic(self, **options)

    def _waiting(self) -> int:
        """Acquirers blocked now: untimed ones are counted, timed ones are the keys of
        the deadline registry for exactly as long as they wait (no counter to update on
        the hot path)."""
        return self._n_pending + len(self._deadline_of)

    def _max_in_force(self) -> int:
        """The ``max_size`` in force: the one set, or, while a resize down waits for
        checked-out surplus to come back (it is closed then), the current size, falling
        to the one set as the surplus is closed. So ``size <= max_size`` at every instant."""
        return max(self._size, self._max_size)

    def statistics(self) -> PoolStatistics:
        """A frozen snapshot of sizes and counters."""
        return PoolStatistics(
            size=self._size,
            idle=len(self._idle),
            in_use=len(self._in_use),
            waiting=self._waiting(),
            min_size=self._min_size,
            max_size=self._max_in_force(),
            acquired=self._n_acquired,
            created=self._n_created,
            closed=self._n_closed,
            timeouts=self._n_timeouts,
            wait_time_total=self._wait_total,
            wait_time_max=self._wait_max,
            leaks=self._n_leaks,
            create_errors=self._n_create_errors,
            discarded=self._n_discarded,
        )

    @property
    def name(self) -> str | None:
        return self._name

    @property
    def manager(self) -> Manager[T]:
        return self._manager

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` was called."""
        return self._state in (_State.CLOSING, _State.CLOSED)

    @property
    def min_size(self) -> int:
        return self._min_size

    @property
    def max_size(self) -> int:
        """The configured maximum (the last :meth:`resize`); ``statistics().max_size`` is
        the one in force, which is higher while a resize down waits for surplus."""
        return self._max_size

    def __repr__(self) -> str:
        name = f" {self._name!r}" if self._name else ""
        return (
            f"<aiolease.Pool{name} {self._state.value} size={self._size}/{self._max_in_force()} "
            f"idle={len(self._idle)} in_use={len(self._in_use)} waiting={self._waiting()}>"
        )

    def _aiolease_leaks(self) -> list[str]:
        problems = []
        if self._state is _OPEN or self._state is _State.CLOSING:
            problems.append(f"{self!r} (created at {self._created_at}) was left open")
        elif self._state is _State.CLOSED and self._size - len(self._in_use) > 0:
            problems.append(
                f"{self!r} (created at {self._created_at}) is closed but "
                f"{self._size - len(self._in_use)} resource slot(s) were never freed"
            )
        for entry in (*self._in_use.values(), *self._closed_out.values()):
            where = "".join(entry.lease_stack.format()) if entry.lease_stack else "  (unknown)\n"
            problems.append(
                f"{entry.resource!r} is still checked out from {self!r}; acquired at:\n{where}"
            )
        return problems


class _Acquire(Generic[T]):
    """What :meth:`Pool.acquire` returns: an async context manager, and awaitable."""

    # The entry leased, not just its resource: __aexit__ finds it in Pool._in_use by its
    # key, with no id() call.
    __slots__ = ("_entry", "_pool", "_timeout")

    def __init__(self, pool: Pool[T], timeout: float | None) -> None:
        self._pool = pool
        self._timeout = timeout
        self._entry: _Entry[T] | None = None

    def __await__(self) -> Generator[Any, None, T]:
        return self.__aenter__().__await__()  # the same paths as `async with`

    # __aenter__/__aexit__ are plain functions returning awaitables: `async with` awaits
    # whatever they return, and this saves a coroutine per call on the hot paths.

    def __aenter__(self) -> Awaitable[T]:
        pool = self._pool
        if pool._state is _OPEN:
            idle = pool._idle
            # Both fast paths need a pool without expiry, so without idle_timeout: the
            # least recently used entry goes first (Pool._lru), at the left.
            if idle and pool._instant_lease and not _tracking.active:
                # The fastest path: Pool._lease inlined, for a pool with nothing to run.
                entry = self._entry = idle.popleft()
                entry.info.uses += 1
                pool._in_use[entry.key] = entry
                pool._n_acquired += 1
                return entry.ready
            if idle and not pool._expiring:
                # The fast path: an idle resource that needs no check (none configured, or
                # the manager's synchronous check_needed() says it is fine): leased here.
                if pool._check_fn is None:
                    entry = self._entry = idle.popleft()
                    pool._lease(entry)
                    return entry.ready
                check_needed = pool._check_needed_fn
                if check_needed is not None:
                    entry = idle[0]
                    resource = entry.resource
                    if not check_needed(resource, entry.info):
                        self._entry = idle.popleft()
                        if pool._plain_lease and not _tracking.active:
                            entry.info.uses += 1  # Pool._lease inlined
                            pool._in_use[entry.key] = entry
                            pool._n_acquired += 1
                        else:
                            pool._lease(entry)
                        return entry.ready
            elif (
                pool._waiters
                and pool._size >= pool._max_size
                and pool._max_waiting is None
                and not pool._failures
            ):
                return pool._acquire_queued(self)  # contended: queue behind the others
            return pool._acquire_slow(self._timeout, self)
        return self._acquire_opening()

    async def _acquire_opening(self) -> T:
        await self._pool._open_for_acquire()
        return await self.__aenter__()  # the pool is open now

    def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Awaitable[None]:
        pool = self._pool
        leased = self._entry
        if leased is None:
            raise RuntimeError(f"{pool!r}: leaving an acquire that was not entered, or twice")
        self._entry = None
        resource = leased.resource
        if (
            exc is None
            and pool._plain_release
            and pool._state is _OPEN  # (so no aclose() is draining the pool)
            and not _tracking._broken.data  # type: ignore[attr-defined]  # WeakSet's plain set
        ):
            # The fastest path: Pool._release + Pool._put_back inlined, for a pool with
            # nothing to run on release. Anything unusual goes the general way.
            in_use = pool._in_use
            entry = in_use.pop(leased.key, None)
            # Found, the entry is this resource's (it holds the resource, so no other live
            # object has its id): what _release checks besides this.
            if (
                entry is not None
                and entry.generation == pool._generation
                and pool._size <= pool._max_size
            ):
                info = entry.info
                # The pool's functions are called through locals: a call written
                # pool._fn() is not specialised by the interpreter (an attribute, not a method).
                if pool._info_read:  # last_used_at: now, when anything can read it
                    clock = pool._clock
                    info.last_used_at = clock()
                if pool._reset_fn is not None:
                    reset_needed = pool._reset_needed_fn
                    if reset_needed(resource, info):  # type: ignore[misc]
                        return asyncio.shield(pool._spawn(pool._reset_then_return(entry)))
                waiters = pool._waiters
                while waiters:
                    fut = waiters.popleft()
                    if not _future_done(fut):
                        entry.from_idle = False
                        _future_set_result(fut, entry)
                        return pool._done
                entry.from_idle = True
                pool._idle.append(entry)
                on_idle = pool._on_idle_fn
                if on_idle is not None:
                    on_idle(resource, info)
                return pool._done
            if entry is not None:
                in_use[leased.key] = entry  # as it was: _release decides
        discard = (
            exc is not None
            and pool._is_fatal_fn is not None
            and bool(pool._is_fatal_fn(resource, exc))
        )
        pending = pool._release(resource, discard)
        if pending is None:
            return pool._done
        return asyncio.shield(pending)  # the reset/close goes on if the caller is cancelled
