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

* a job started with ``loop.run_in_executor`` / ``asyncio.to_thread`` (or the
  default executor shutting down) that has not delivered its result;
* a child process (``asyncio.create_subprocess_exec``) that has not exited;
* the body of :meth:`VirtualTimeLoop.external_work` (for threads the loop
  cannot see, e.g. aiosqlite's per-connection thread);
* a watched file descriptor other than the loop's own wake-up pipe (a socket
  to a real server): the loop gives it ``io_grace`` real seconds to answer
  before jumping.

When no timer is scheduled, no task is ready and nothing outside can answer
(or it stayed silent for ``stall_timeout`` real seconds), a real loop would
hang forever; this one raises :class:`NoProgressError` naming the blocked
tasks and where they wait.

Why not ``looptime``: see ``docs/testing.md`` ("Why not looptime").
"""

from __future__ import annotations

import asyncio
import contextlib
import selectors
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

__all__ = ["NoProgressError", "VirtualTimeLoop"]

_T = TypeVar("_T")


class NoProgressError(RuntimeError):
    """Every task of a :class:`VirtualTimeLoop` is blocked and nothing can ever wake one.

    Raised out of the loop (so out of ``asyncio.Runner.run`` / the test) instead
    of hanging: there is no timer to jump to, no executor job or watched
    socket that could answer (or it stayed silent for ``stall_timeout``).
    """


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
        try:
            start, io_grace, stall_timeout = _validate(start, io_grace, stall_timeout)
        except (TypeError, ValueError):
            self._closed = True  # nothing was opened; BaseEventLoop.__del__ checks this
            raise
        self._vt_now = start
        self._vt_io_grace = io_grace
        self._vt_stall_timeout = stall_timeout
        self._vt_jobs: set[asyncio.Future[Any]] = set()
        self._vt_external = 0
        self._vt_children: list[asyncio.SubprocessTransport] = []
        selector = _VirtualSelector(selectors.DefaultSelector())
        super().__init__(selector)
        selector._select = self._vt_select

    def time(self) -> float:
        """The virtual clock: moves only when the loop jumps to a timer."""
        return self._vt_now

    def run_in_executor(  # type: ignore[override]  # same signature; typeshed's is generic
        self, executor: Any, func: Callable[..., _T], *args: Any
    ) -> asyncio.Future[_T]:
        """As :meth:`asyncio.AbstractEventLoop.run_in_executor`; the clock waits for the job."""
        future = super().run_in_executor(executor, func, *args)
        self._vt_jobs.add(future)
        future.add_done_callback(self._vt_jobs.discard)
        return future

    async def _make_subprocess_transport(self, *args: Any, **kwargs: Any) -> Any:
        # A child's exit is reported by a watcher thread the loop cannot see:
        # count a running child as outside work until its return code is known.
        transport = await super()._make_subprocess_transport(*args, **kwargs)  # type: ignore[misc]
        self._vt_children.append(transport)
        return transport

    def _vt_outside_work(self) -> bool:
        if self._vt_children:
            self._vt_children = [t for t in self._vt_children if t.get_returncode() is None]
        return bool(self._vt_jobs or self._vt_external or self._vt_children or _aiosqlite_busy())

    def _vt_outside_description(self) -> str:
        parts = []
        if self._vt_jobs:
            parts.append(f"{len(self._vt_jobs)} executor job(s)")
        if self._vt_children:
            parts.append(f"{len(self._vt_children)} child process(es)")
        if self._vt_external:
            parts.append(f"{self._vt_external} external_work() block(s)")
        if _aiosqlite_busy():
            parts.append("an aiosqlite connection thread")
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
                rows = await aiosqlite_conn.execute_fetchall("SELECT 1")
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
        # BaseEventLoop._run_once passes timeout 0 while callbacks are ready (or a
        # timer is already due); otherwise the delay to the next timer, or None.
        if timeout is not None and timeout <= 0:
            return inner.select(0)
        events = inner.select(0)
        if events:
            return events
        if self._vt_outside_work():
            return self._vt_wait_real(inner, self._vt_outside_description())
        if self._ready:  # type: ignore[attr-defined]  # a thread's call_soon_threadsafe landed
            return []
        watched = self._vt_watched(inner)
        if timeout is None:
            if watched:
                return self._vt_wait_real(inner, f"watching {watched} file descriptor(s)")
            raise NoProgressError(self._vt_describe("no timer is scheduled"))
        if watched and self._vt_io_grace > 0:
            events = inner.select(self._vt_io_grace)
            if events:
                return events
        # _run_once has dropped cancelled timers from the head of the heap, so
        # the head is the timer that set `timeout` (which asyncio caps at 24 h).
        scheduled: list[asyncio.TimerHandle] = self._scheduled  # type: ignore[attr-defined]
        when = scheduled[0].when() if scheduled else self._vt_now + timeout
        if when > self._vt_now:
            self._vt_now = when
            self.jumps += 1
        return []

    def _vt_watched(self, inner: selectors.BaseSelector) -> int:
        own = self._ssock.fileno()  # type: ignore[attr-defined]  # the loop's wake-up pipe
        return sum(1 for key in inner.get_map().values() if key.fd != own)

    def _vt_wait_real(
        self, inner: selectors.BaseSelector, why: str
    ) -> list[tuple[selectors.SelectorKey, int]]:
        # The clock stays frozen: whatever answers first is seen at the same
        # virtual instant on every run.
        limit = self._vt_stall_timeout
        deadline = None if limit is None else time.monotonic() + limit
        while True:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            if _aiosqlite_busy():
                # A worker thread may finish without waking the loop (its last job answered
                # already): look again soon rather than sleep until the stall limit.
                wait = 0.005 if wait is None else min(wait, 0.005)
            events = inner.select(wait)
            if events:
                return events
            if self._ready:  # type: ignore[attr-defined]  # call_soon_threadsafe raced the wake-up
                return []
            if not (self._vt_outside_work() or self._vt_watched(inner)):
                return []  # the outside work ended without waking us: decide again
            if deadline is not None and time.monotonic() >= deadline:
                raise NoProgressError(
                    self._vt_describe(f"{why}, but nothing happened for {limit} s of real time")
                )

    def _vt_describe(self, why: str) -> str:
        lines = [
            f"VirtualTimeLoop: every task is blocked and nothing can wake one ({why}); "
            "a real event loop would hang here forever. Blocked tasks:"
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


# aiosqlite runs each connection in its own thread and answers through
# call_soon_threadsafe, which the loop cannot see coming. Its worker is one Python
# function looping on `future, function = tx.get()`: a worker whose frame is
# anywhere else, or whose queue holds jobs, is busy, and the clock must not jump
# while it is (aiolease.sqlite pools would see spurious timeouts otherwise).
_AIOSQLITE_IDLE_LINE: dict[object, int | None] = {}


def _aiosqlite_idle_line(code: Any) -> int | None:
    if code not in _AIOSQLITE_IDLE_LINE:
        line = None
        try:
            import inspect

            lines, first = inspect.getsourcelines(code)
            for offset, text in enumerate(lines):
                if "tx.get()" in text:
                    line = first + offset
                    break
        except (OSError, TypeError):
            pass
        _AIOSQLITE_IDLE_LINE[code] = line
    return _AIOSQLITE_IDLE_LINE[code]


def _aiosqlite_busy() -> bool:
    """Whether an aiosqlite connection thread is running or has work queued."""
    module = sys.modules.get("aiosqlite.core")
    worker = getattr(module, "_connection_worker_thread", None)
    code = getattr(worker, "__code__", None)
    if code is None:
        return False
    idle_line = _aiosqlite_idle_line(code)
    frames: dict[int, Any] | None = None
    for thread in threading.enumerate():
        if getattr(thread, "_target", None) is not worker:
            continue
        args = getattr(thread, "_args", ())
        if args and not args[0].empty():
            return True  # a job is queued: the thread is about to run it
        if frames is None:
            frames = sys._current_frames()
        # Only code and line numbers are read from another thread's frame (never its
        # locals, which is not safe while it runs).
        top = frames.get(thread.ident or -1)
        if top is None:
            continue
        if top.f_code is not code or idle_line is None or top.f_lineno != idle_line:
            return True  # running a job (or its completion callback)
    return False


def _validate(
    start: float, io_grace: float, stall_timeout: float | None
) -> tuple[float, float, float | None]:
    start = float(start)
    if start != start or start in (float("inf"), float("-inf")):
        raise ValueError(f"start must be a finite number of seconds, got {start!r}")
    io_grace = float(io_grace)
    if not 0.0 <= io_grace < float("inf"):
        raise ValueError(f"io_grace must be finite and >= 0 seconds, got {io_grace!r}")
    if stall_timeout is not None:
        stall_timeout = float(stall_timeout)
        if not 0.0 <= stall_timeout < float("inf"):
            raise ValueError(
                f"stall_timeout must be finite and >= 0 seconds or None, got {stall_timeout!r}"
            )
    return start, io_grace, stall_timeout


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
