"""``VirtualTimeLoop``: an event loop whose clock jumps to the next timer when every task waits.

The clock (``loop.time()``) stands still while callbacks run, so every
timestamp a test sees is exact and identical from run to run. When no callback
is ready and the selector would block until the next timer, the loop first
polls for I/O (timeout 0); if nothing arrived and nothing outside the loop
may still answer, it sets the clock straight to that timer instead of
sleeping. ``asyncio.sleep``, ``asyncio.timeout``, ``loop.call_later`` and
aiolease's own timers therefore run instantly.

"Something outside may still answer" means, and the loop then waits in real
time with the clock frozen:

* work running in a thread the loop started: a job of ``loop.run_in_executor``
  / ``asyncio.to_thread`` (the default executor or any other) that has not
  delivered its result (also when its caller stopped waiting: the thread goes
  on), or the default executor shutting down;
* a call of ``anyio.to_thread.run_sync`` (Starlette's and FastAPI's ``def``
  endpoints and dependencies, anyio's file I/O) whose worker thread has not
  answered, except while it waits for a coroutine on the loop
  (``anyio.from_thread.run``): while a ``VirtualTimeLoop`` runs, those public
  functions are wrapped so that each call counts (see ``_AnyioThreads``);
* a future made by aiosqlite (``loop.create_future()`` called from aiosqlite's
  code) that its connection thread has not answered yet;
* a child process (``asyncio.create_subprocess_exec``) that has not exited;
* the body of :meth:`VirtualTimeLoop.external_work` (for other threads the
  loop cannot see);
* a watched file descriptor other than the loop's own wake-up pipe (a socket
  to a real server): the loop gives it ``io_grace`` real seconds to answer
  before jumping.

When no timer is scheduled, no task is ready and nothing outside can answer
(or it stayed silent for ``stall_timeout`` real seconds), a real loop would
hang forever; this one raises :class:`NoProgressError` naming the blocked
tasks and where they wait.

Only public asyncio API: the loop overrides public methods (``call_at``,
``create_future``, ``call_soon_threadsafe``, ``run_in_executor``,
``run_forever``, ``subprocess_exec``/``subprocess_shell``) and wraps the
selector it passes to ``SelectorEventLoop``; of anyio it uses
``anyio.to_thread.run_sync`` and ``anyio.from_thread.run`` only.

Why not ``looptime``: see ``docs/testing.md`` ("Why not looptime").
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import heapq
import inspect
import itertools
import math
import selectors
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, TypeVar

from .._validate import number

__all__ = ["NoProgressError", "VirtualTimeLoop"]

_T = TypeVar("_T")

# Libraries that answer loop futures from threads of their own, found by the module that
# calls ``loop.create_future()``: aiosqlite runs one thread per connection and answers each
# call with ``call_soon_threadsafe(set_result, future, ...)``.
_THREAD_BACKED = ("aiosqlite",)
# The clock's resolution as asyncio's loop reads it: a timer due within it of now is run.
_RESOLUTION = time.get_clock_info("monotonic").resolution


class NoProgressError(RuntimeError):
    """Every task of a :class:`VirtualTimeLoop` is blocked and nothing can ever wake one.

    Raised out of the loop (so out of ``asyncio.Runner.run`` / the test) instead
    of hanging: there is no timer to jump to, no executor job or watched
    socket that could answer (or it stayed silent for ``stall_timeout``).
    """


# The life of a call handed to a thread the loop does not own (see _HandOff); _WAITING:
# the thread waits for a coroutine of the loop (``anyio.from_thread.run``).
_QUEUED, _RUNNING, _WAITING, _RETURNED, _SETTLED = range(5)
# The hand-off a worker thread is running, if any.
_IN_THREAD = threading.local()


class _HandOff:
    """One call handed to a worker thread: pending work until the thread answers.

    anyio (or an executor of ``run_in_executor``) runs ``hand_off(*args)`` in a worker
    thread and then, from that same thread, answers with ``loop.call_soon_threadsafe``.
    The hand-off sits in one of the loop's pending sets (``pending``) from when it is
    made until that answer has woken the loop (the
    thread notes it in ``_vt_returned`` just before answering; see
    :meth:`VirtualTimeLoop.call_soon_threadsafe`), or until the caller stopped waiting
    before the thread started it (:meth:`settle`). A caller cancelled while the thread
    works leaves it pending: the thread still runs and will still wake the loop. While
    the thread waits for a coroutine on the loop (``anyio.from_thread.run``) it does no
    work, and the coroutine may need the clock to move: it is not pending then.
    """

    __slots__ = ("_func", "_loop", "_pending", "_state")

    def __init__(
        self, loop: VirtualTimeLoop, func: Callable[..., Any], pending: set[_HandOff]
    ) -> None:
        self._loop = loop
        self._func = func
        self._pending = pending
        self._state = _QUEUED
        with loop._vt_lock:
            pending.add(self)

    def __call__(self, *args: Any) -> Any:
        """Run the call, in the worker thread."""
        loop = self._loop
        with loop._vt_lock:
            if self._state == _SETTLED:  # the caller gave up, yet the thread runs it
                self._pending.add(self)
            self._state = _RUNNING
        outer, _IN_THREAD.hand_off = getattr(_IN_THREAD, "hand_off", None), self
        try:
            return self._func(*args)
        finally:
            _IN_THREAD.hand_off = outer
            with loop._vt_lock:
                self._state = _RETURNED
                loop._vt_returned[threading.get_ident()] = self

    def settle(self) -> None:
        """The caller's await ended (answer, error or cancellation), in the loop's thread."""
        loop = self._loop
        with loop._vt_lock:
            if self._state not in (_RUNNING, _WAITING):  # else the thread still runs
                self._state = _SETTLED
                self._pending.discard(self)

    async def wait_for(self, coroutine: Awaitable[_T]) -> _T:
        """Run, on the loop, a coroutine the thread blocks on: the thread is not pending
        meanwhile. Pending again before the coroutine's result can wake the thread."""
        loop = self._loop
        with loop._vt_lock:
            self._state = _WAITING
            self._pending.discard(self)
        try:
            return await coroutine
        finally:
            with loop._vt_lock:
                self._state = _RUNNING
                self._pending.add(self)


def _counting_run_sync(original: Callable[..., Awaitable[_T]]) -> Callable[..., Awaitable[_T]]:
    """``anyio.to_thread.run_sync`` that, on a VirtualTimeLoop, counts the call as pending."""

    @functools.wraps(original)
    async def run_sync(func: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:  # anyio on another backend (trio)
            loop = None
        # A hand-off is already counted (a second wrapper around this one).
        if not isinstance(loop, VirtualTimeLoop) or isinstance(func, _HandOff):
            return await original(func, *args, **kwargs)
        hand_off = _HandOff(loop, func, loop._vt_hand_offs)
        try:
            return await original(hand_off, *args, **kwargs)
        finally:
            hand_off.settle()

    return run_sync


def _waiting_from_thread_run(original: Callable[..., _T]) -> Callable[..., _T]:
    """``anyio.from_thread.run`` that, from a counted worker thread, stops counting it while
    the coroutine runs on the loop (see :meth:`_HandOff.wait_for`)."""

    @functools.wraps(original)
    def run(func: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> _T:
        hand_off: _HandOff | None = getattr(_IN_THREAD, "hand_off", None)
        if hand_off is None or kwargs.get("token") is not None:  # not back to that loop
            return original(func, *args, **kwargs)

        async def on_the_loop() -> Any:
            return await hand_off.wait_for(func(*args))

        return original(on_the_loop, **kwargs)

    return run


class _AnyioThreads:
    """Wraps two public anyio functions (when anyio is installed) while a VirtualTimeLoop runs.

    anyio runs ``to_thread.run_sync`` (which Starlette and FastAPI use for ``def``
    endpoints and dependencies) in worker threads of its own, not through
    ``loop.run_in_executor``, and has no hook to observe them; so its public function
    is replaced by a wrapper that counts each call made on a VirtualTimeLoop, and
    ``from_thread.run`` by one that lets such a thread wait for the loop uncounted.
    Both pass every other call straight through. The originals come back when the last
    running VirtualTimeLoop stops, unless something replaced a wrapper meanwhile (that
    keeps calling through the harmless wrapper). Code that bound the functions before a
    loop ran (``from anyio.to_thread import run_sync``) calls the originals: invisible.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running = 0  # VirtualTimeLoops running, in any thread
        # (module, attribute, original, wrapper) of each function replaced
        self._replaced: list[tuple[Any, str, Any, Any]] = []

    def acquire(self) -> None:
        with self._lock:
            if not self._running:
                self._install()
            self._running += 1

    def _install(self) -> None:
        try:
            import anyio.from_thread
            import anyio.to_thread
        except ImportError:  # anyio is not installed: nothing to wrap
            return
        for module, name, wrap in (
            (anyio.to_thread, "run_sync", _counting_run_sync),
            (anyio.from_thread, "run", _waiting_from_thread_run),
        ):
            original = getattr(module, name)
            wrapper = wrap(original)
            setattr(module, name, wrapper)
            self._replaced.append((module, name, original, wrapper))

    def release(self) -> None:
        with self._lock:
            self._running -= 1
            if self._running:
                return
            for module, name, original, wrapper in self._replaced:
                if getattr(module, name) is wrapper:
                    setattr(module, name, original)
            self._replaced.clear()


_ANYIO_THREADS = _AnyioThreads()


class _VirtualSelector(selectors.BaseSelector):
    """Delegates to a real selector; ``select`` asks the loop whether to wait or jump."""

    def __init__(self, inner: selectors.BaseSelector) -> None:
        self._inner = inner
        self._select: Callable[
            [selectors.BaseSelector, float | None], list[tuple[selectors.SelectorKey, int]]
        ] = _unbound_select

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._inner.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._inner.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._inner.modify(fileobj, events, data)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        return self._select(self._inner, timeout)

    def close(self) -> None:
        self._inner.close()

    def get_key(self, fileobj: Any) -> selectors.SelectorKey:
        return self._inner.get_key(fileobj)

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._inner.get_map()


def _unbound_select(
    inner: selectors.BaseSelector, timeout: float | None
) -> list[tuple[selectors.SelectorKey, int]]:
    return inner.select(timeout)


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop on virtual time: the clock jumps to the next timer whenever every task waits.

    Use it as ``asyncio.Runner(loop_factory=VirtualTimeLoop)``, with
    ``asyncio.run(main(), loop_factory=VirtualTimeLoop)`` on Python 3.12+, or
    in pytest with ``@pytest.mark.aiolease_virtual_time`` (see
    ``docs/testing.md``). Keyword arguments can be bound with
    ``functools.partial``.

    Work in threads the loop started (``run_in_executor``, ``asyncio.to_thread``,
    the default executor, ``anyio.to_thread.run_sync``) counts as pending: while
    it runs the clock does not jump and no :class:`NoProgressError` is raised, so
    blocking ``def`` code handed to a thread (a FastAPI or Starlette app's ``def``
    endpoints and dependencies) runs on this loop. So do aiosqlite's calls.

    Args:
        start: the clock's initial value (``loop.time()``), in seconds.
        io_grace: real seconds to wait for a watched file descriptor (other
            than the loop's own) to become ready before jumping the clock.
            Only spent when such descriptors exist; ``0`` jumps at once.
        stall_timeout: real seconds to wait, with the clock frozen, for an
            executor job, a child process, :meth:`external_work` or a watched
            descriptor to wake the loop before raising
            :class:`NoProgressError`; ``None`` waits forever.

    Raises:
        ValueError: a negative or non-finite ``io_grace``/``stall_timeout``,
            or a non-finite ``start``.

    Attributes:
        jumps: how many times the clock jumped to a timer.
    """

    def __init__(
        self,
        *,
        start: float = 0.0,
        io_grace: float = 0.05,
        stall_timeout: float | None = 10.0,
    ) -> None:
        self._vt_now = 0.0
        self.jumps = 0
        # Every timer scheduled, as (when, order, handle): a min-heap that keeps cancelled
        # and already-run timers until they reach its head (see _vt_next_timer).
        self._vt_timers: list[tuple[float, int, asyncio.TimerHandle]] = []
        self._vt_order = itertools.count()
        self._vt_compact_at = 1024
        self._vt_thread_futures: set[asyncio.Future[Any]] = set()
        self._vt_external = 0
        # Calls in flight in worker threads (see _HandOff): anyio's, and executor jobs; and
        # by answering thread the one whose function returned; all shared with the worker
        # threads under the lock.
        self._vt_lock = threading.Lock()
        self._vt_hand_offs: set[_HandOff] = set()
        self._vt_jobs: set[_HandOff] = set()
        # Executor jobs run elsewhere (another process, an executor of another kind).
        self._vt_other_jobs: set[asyncio.Future[Any]] = set()
        self._vt_returned: dict[int, _HandOff] = {}
        self._vt_children: list[asyncio.SubprocessTransport] = []
        selector = _VirtualSelector(selectors.DefaultSelector())
        super().__init__(selector)
        # The descriptors registered by now are the loop's own (its wake-up pipe).
        self._vt_own_fds = frozenset(key.fd for key in selector.get_map().values())
        try:
            start, io_grace, stall_timeout = _validate(start, io_grace, stall_timeout)
        except (TypeError, ValueError):
            self.close()
            raise
        self._vt_now = start
        self._vt_io_grace = io_grace
        self._vt_stall_timeout = stall_timeout
        selector._select = self._vt_select

    def time(self) -> float:
        """The virtual clock: moves only when the loop jumps to a timer."""
        return self._vt_now

    def call_at(  # type: ignore[override]  # same signature; typeshed's is generic
        self, when: float, callback: Callable[..., object], *args: Any, context: Any = None
    ) -> asyncio.TimerHandle:
        """As :meth:`asyncio.AbstractEventLoop.call_at`; the loop notes the timer to jump to."""
        handle = super().call_at(when, callback, *args, context=context)
        if math.isnan(handle.when()):
            return handle  # asyncio runs it at once; unordered, it would corrupt the heap
        timers = self._vt_timers
        if len(timers) >= self._vt_compact_at:  # drop cancelled and past timers, amortised
            horizon = self._vt_now + _RESOLUTION
            timers[:] = [t for t in timers if t[0] >= horizon and not t[2].cancelled()]
            heapq.heapify(timers)
            self._vt_compact_at = max(1024, 2 * len(timers))
        heapq.heappush(timers, (handle.when(), next(self._vt_order), handle))
        return handle

    def create_future(self) -> asyncio.Future[Any]:
        """As :meth:`asyncio.AbstractEventLoop.create_future`; a future made by a library
        that answers from a thread of its own (aiosqlite) counts as work in flight."""
        future = super().create_future()
        frame = inspect.currentframe()
        caller = None
        try:
            caller = frame.f_back if frame is not None else None
            module = caller.f_globals.get("__name__", "") if caller is not None else ""
        finally:
            del frame, caller  # a frame held in its own locals keeps its callers alive
        if module.partition(".")[0] in _THREAD_BACKED:
            self._vt_thread_futures.add(future)
            future.add_done_callback(self._vt_future_done)
        return future

    def _vt_future_done(self, future: asyncio.Future[Any]) -> None:
        # A cancelled one stays in flight until its thread answers (call_soon_threadsafe).
        if not future.cancelled():
            self._vt_thread_futures.discard(future)

    def call_soon_threadsafe(  # type: ignore[override]  # as call_at
        self, callback: Callable[..., object], *args: Any, context: Any = None
    ) -> asyncio.Handle:
        """As :meth:`asyncio.AbstractEventLoop.call_soon_threadsafe`; a thread answering
        work counted in flight (an aiosqlite future, see :meth:`create_future`; an anyio
        call, see ``_HandOff``) ends that work."""
        handle = super().call_soon_threadsafe(callback, *args, context=context)
        # After the callback is queued and the loop woken, so that the loop never sees
        # neither the work nor its answer.
        if args and self._vt_thread_futures:
            self._vt_thread_futures.discard(args[0])
        if self._vt_returned:
            with self._vt_lock:
                hand_off = self._vt_returned.pop(threading.get_ident(), None)
                if hand_off is not None:
                    hand_off._pending.discard(hand_off)
        return handle

    def run_forever(self) -> None:
        """As :meth:`asyncio.AbstractEventLoop.run_forever`; while it runs, calls of
        ``anyio.to_thread.run_sync`` made on this loop count as work in flight."""
        _ANYIO_THREADS.acquire()
        try:
            super().run_forever()
        finally:
            _ANYIO_THREADS.release()

    def run_in_executor(  # type: ignore[override]  # same signature; typeshed's is generic
        self, executor: Any, func: Callable[..., _T], *args: Any
    ) -> asyncio.Future[_T]:
        """As :meth:`asyncio.AbstractEventLoop.run_in_executor`; the clock waits for the job,
        also after its caller stopped waiting, until its thread answers (cancelling the
        future does not stop a job already running; one that never started stops counting)."""
        if not _in_process_threads(executor) or inspect.iscoroutinefunction(func):
            # Another process (or interpreter, or an executor of unknown kind) runs the
            # job: the function goes there as it is (it may have to pickle), and the job
            # counts until its future is done. (A coroutine function
            # goes as it is, for asyncio's debug mode to refuse it.)
            future = super().run_in_executor(executor, func, *args)
            self._vt_other_jobs.add(future)
            future.add_done_callback(self._vt_other_jobs.discard)
            return future
        hand_off = _HandOff(self, func, self._vt_jobs)
        try:
            future = super().run_in_executor(executor, hand_off, *args)
        except BaseException:
            hand_off.settle()
            raise
        future.add_done_callback(lambda _: hand_off.settle())
        return future

    async def subprocess_exec(self, *args: Any, **kwargs: Any) -> Any:
        """As :meth:`asyncio.AbstractEventLoop.subprocess_exec`; the clock waits for the child."""
        transport, protocol = await super().subprocess_exec(*args, **kwargs)
        self._vt_children.append(transport)
        return transport, protocol

    async def subprocess_shell(self, *args: Any, **kwargs: Any) -> Any:
        """As :meth:`asyncio.AbstractEventLoop.subprocess_shell`; the clock waits for the child."""
        transport, protocol = await super().subprocess_shell(*args, **kwargs)
        self._vt_children.append(transport)
        return transport, protocol

    def _vt_outside_work(self) -> bool:
        # A child's exit is reported by a watcher the loop cannot see coming.
        if self._vt_children:
            self._vt_children = [t for t in self._vt_children if t.get_returncode() is None]
        return bool(
            self._vt_jobs
            or self._vt_other_jobs
            or self._vt_hand_offs
            or self._vt_thread_futures
            or self._vt_external
            or self._vt_children
        )

    def _vt_outside_description(self) -> str:
        parts = []
        if self._vt_jobs or self._vt_other_jobs:
            parts.append(f"{len(self._vt_jobs) + len(self._vt_other_jobs)} executor job(s)")
        if self._vt_hand_offs:
            parts.append(f"{len(self._vt_hand_offs)} anyio worker thread call(s)")
        if self._vt_thread_futures:
            parts.append(f"{len(self._vt_thread_futures)} aiosqlite call(s)")
        if self._vt_children:
            parts.append(f"{len(self._vt_children)} child process(es)")
        if self._vt_external:
            parts.append(f"{self._vt_external} external_work() block(s)")
        return "waiting for " + ", ".join(parts)

    async def shutdown_default_executor(self, *args: Any, **kwargs: Any) -> None:
        # The shutdown joins the executor in a helper thread the loop cannot
        # see; without this the clock would jump over the join timeout.
        with self.external_work():
            await super().shutdown_default_executor(*args, **kwargs)

    @contextlib.contextmanager
    def external_work(self) -> Iterator[None]:
        """While inside, treat work as in flight outside the loop: never jump, wait in real time.

        Wrap awaits on threads the loop cannot see (anything that answers with
        ``call_soon_threadsafe`` rather than through ``run_in_executor``)::

            with loop.external_work():
                answer = await future_set_by_my_thread
        """
        self._vt_external += 1
        try:
            yield
        finally:
            self._vt_external -= 1

    # -- the scheduling decision ---------------------------------------------

    def _vt_select(
        self, inner: selectors.BaseSelector, timeout: float | None
    ) -> list[tuple[selectors.SelectorKey, int]]:
        # The loop passes timeout 0 while callbacks are ready (or a timer is already
        # due); otherwise the delay to the next timer, or None. A thread's
        # call_soon_threadsafe always writes to the wake-up pipe, so it shows as an event.
        if timeout is not None and timeout <= 0:
            events = inner.select(0)
            if not events and self._vt_now + _RESOLUTION == self._vt_now:
                self._vt_step_past_due_timer()
            return events
        events = inner.select(0)
        if events:
            return events
        if self._vt_outside_work():
            return self._vt_wait_real(inner, self._vt_outside_description())
        # A thread may have answered between the poll above and that look: it wakes the
        # loop before it stops counting as work (see call_soon_threadsafe), so poll again.
        events = inner.select(0)
        if events:
            return events
        watched = self._vt_watched(inner)
        when = None
        if timeout is not None:
            when = self._vt_next_timer()
            if when is None:  # (not reached: a timeout comes from a timer)
                when = self._vt_now + timeout
        # A timer at infinity (``asyncio.sleep(math.inf)``) never fires: no timer at all.
        if when is None or when == math.inf:
            if watched:
                return self._vt_wait_real(inner, f"watching {watched} file descriptor(s)")
            why = "no timer is scheduled" if when is None else "no timer before infinity"
            raise NoProgressError(self._vt_describe(why))
        if watched and self._vt_io_grace > 0:
            events = inner.select(self._vt_io_grace)
            if events:
                return events
        if when > self._vt_now:
            self._vt_now = when
            self.jumps += 1
        return []

    def _vt_step_past_due_timer(self) -> None:
        """Move the clock one float step when a timer due now cannot run.

        asyncio runs the timers due before ``time() + resolution``. Once float spacing
        at the clock's value exceeds twice the resolution (from 2**24 s with a 1 ns
        resolution), that sum rounds back to ``time()`` and a timer due exactly now (one
        jumped to, or ``call_later(0)``) would never run while the clock stands still:
        the loop would spin forever. The next representable time lets it run, the
        earliest that can.
        """
        when = self._vt_next_timer()
        if when is not None and when <= self._vt_now:
            self._vt_now = math.nextafter(self._vt_now, math.inf)

    def _vt_next_timer(self) -> float | None:
        """When the next pending timer is due: the one that set the selector's timeout.

        The loop has run every timer due within the clock's resolution of now (the clock
        has not moved since), and no callback is ready; so the earliest timer that is not
        cancelled and lies beyond that is the next one. Read from the heap of
        :meth:`call_at`, exactly as scheduled (``now + timeout`` could round off).
        """
        timers = self._vt_timers
        horizon = self._vt_now + _RESOLUTION
        while timers and (timers[0][2].cancelled() or timers[0][0] < horizon):
            heapq.heappop(timers)
        return timers[0][0] if timers else None

    def _vt_watched(self, inner: selectors.BaseSelector) -> int:
        own = self._vt_own_fds
        return sum(1 for key in inner.get_map().values() if key.fd not in own)

    def _vt_wait_real(
        self, inner: selectors.BaseSelector, why: str
    ) -> list[tuple[selectors.SelectorKey, int]]:
        # The clock stays frozen: whatever answers first is seen at the same
        # virtual instant on every run.
        limit = self._vt_stall_timeout
        deadline = None if limit is None else time.monotonic() + limit
        while True:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            events = inner.select(wait)
            if events:
                return events
            if not (self._vt_outside_work() or self._vt_watched(inner)):
                return []  # the outside work ended without waking us: decide again
            if deadline is not None and time.monotonic() >= deadline:
                raise NoProgressError(
                    self._vt_describe(
                        f"{why}, but nothing happened for {limit} s of real time; if that "
                        "work is only slow, pass VirtualTimeLoop(stall_timeout=...) a longer "
                        "limit, or None for none"
                    )
                )

    def _vt_describe(self, why: str) -> str:
        lines = [
            f"VirtualTimeLoop: every task is blocked and nothing can wake one ({why}); "
            "a real event loop would hang here forever, unless a thread the loop did not "
            "start answers through call_soon_threadsafe: wrap such an await in "
            "loop.external_work(). Blocked tasks:"
        ]
        tasks = [t for t in asyncio.all_tasks(self) if not t.done()]
        for task in sorted(tasks, key=lambda t: t.get_name()):
            lines.append(f"  - {task.get_name()}: {_where(task)}")
        if not tasks:
            lines.append("  (none)")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"<VirtualTimeLoop time={self._vt_now!r} jumps={self.jumps} "
            f"running={self.is_running()} closed={self.is_closed()}>"
        )


def _in_process_threads(executor: object) -> bool:
    """Whether ``executor`` runs jobs in threads of this process (the default one does)."""
    if executor is None:
        return True
    interpreters = getattr(concurrent.futures, "InterpreterPoolExecutor", ())  # Python 3.14
    return isinstance(executor, concurrent.futures.ThreadPoolExecutor) and not isinstance(
        executor, interpreters
    )


def _validate(
    start: float, io_grace: float, stall_timeout: float | None
) -> tuple[float, float, float | None]:
    return (
        number("start", start, minimum=-math.inf),
        number("io_grace", io_grace, inclusive=True, unit=" of seconds"),
        None
        if stall_timeout is None
        else number("stall_timeout (or None)", stall_timeout, inclusive=True, unit=" of seconds"),
    )


def _where(task: asyncio.Task[Any]) -> str:
    """The await chain of a suspended task, outermost first, with the innermost location."""
    names: list[str] = []
    last = None
    obj: Any = task.get_coro()
    while obj is not None:
        frame = getattr(obj, "cr_frame", None) or getattr(obj, "gi_frame", None)
        if frame is None:
            break
        names.append(frame.f_code.co_name)
        last = frame
        obj = getattr(obj, "cr_await", None) or getattr(obj, "gi_yieldfrom", None)
    if last is None:
        return "not started"
    return f"{' -> '.join(names)} (at {last.f_code.co_filename}:{last.f_lineno})"
