"""What the pool keeps per resource, and the manager behind ``Pool.from_callables``."""

from __future__ import annotations

import asyncio
import inspect
import os
import traceback
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Any, Generic, TypeVar

from ..abc import Manager, ResourceInfo

__all__ = ["CallableManager", "Entry", "Hooks", "caller_stack", "safe_repr"]

T = TypeVar("T")


class Entry(Generic[T]):
    """One resource the pool owns, with its bookkeeping.

    ``handle`` is what the current (or last) lease handed out: the resource
    itself, or the per-lease object of a manager that wraps its resources
    (:meth:`~aiolease.abc.Manager.wrap`; :meth:`Pool._lease` sets it with its
    ``key`` and ``ready``). ``key`` is ``id(handle)``, the entry's key among the
    pool's leases. ``ready`` is a done future holding ``handle``, what
    ``async with pool.acquire()`` awaits when it is served on the spot (made on
    first use, once per handle: see :meth:`Acquire.__aenter__`).
    """

    __slots__ = (
        "broken",
        "check_due",
        "closing",
        "discarded",
        "generation",
        "handle",
        "holder",
        "info",
        "key",
        "leak_reported",
        "lease_stack",
        "lease_start",
        "ready",
        "resource",
        "scoped",
    )

    def __init__(self, resource: T, info: ResourceInfo, generation: int) -> None:
        self.resource = resource
        self.info = info
        self.generation = generation
        self.handle: T = resource
        self.key = id(resource)
        self.ready: asyncio.Future[T] | None = None  # see the class docstring
        # True while it sits (or sat) idle in a pool whose manager has a check: its next
        # holder runs that check (unless the manager's check_needed says no).
        self.check_due = False
        self.closing: asyncio.Future[Any] | None = None  # the close task, once started
        # Discarded as unusable (a fatal error, a failed check): cut before its close.
        self.broken = False
        # Counted in statistics().discarded (at most once, see note_discard).
        self.discarded = False
        self.holder: asyncio.Task[Any] | None = None  # the task that leased it
        self.scoped = False  # leased by `async with` (its holder's own exit releases it)
        self.lease_start = 0.0
        self.lease_stack: traceback.StackSummary | None = None
        self.leak_reported = False

    def describe(self, now: float) -> str:
        """The lease for a log line: what, held by whom, for how long, acquired where."""
        holder = "?" if self.holder is None else repr(self.holder.get_name())
        where = "".join(self.lease_stack.format()) if self.lease_stack else "  (unknown)\n"
        return (
            f"{safe_repr(self.handle)} held by task {holder} for {now - self.lease_start:.1f}s; "
            f"acquired at:\n{where}"
        )


def safe_repr(obj: object) -> str:
    """``repr(obj)``, or a stand-in when it raises: the pool's own reports (leaks, aclose's
    wait) run in its timer and close task, which a user's ``__repr__`` must not stop."""
    try:
        return repr(obj)
    except Exception as exc:
        return f"<{type(obj).__qualname__} object at {id(obj):#x} (repr raised {exc!r})>"


class CallableManager(Manager[T]):
    """The manager behind :meth:`Pool.from_callables`."""

    __slots__ = ("_close", "_create")

    def __init__(
        self,
        create: Callable[[], Awaitable[T]],
        close: Callable[[T], object] | None,
    ) -> None:
        if not callable(create):
            raise TypeError(f"create must be an async callable, got {create!r}")
        if (inspect.isfunction(create) or inspect.ismethod(create)) and not (
            inspect.iscoroutinefunction(create)
        ):
            raise TypeError(
                f"create must be an async function (async def), got the plain function "
                f"{create!r}; wrap a function that returns an awaitable in an async def"
            )
        if close is not None and not callable(close):
            raise TypeError(f"close must be a callable or None, got {close!r}")
        self._create = create
        self._close = close

    async def create(self) -> T:
        return await self._create()

    async def close(self, resource: T) -> None:
        if self._close is not None:
            result = self._close(resource)
            if inspect.isawaitable(result):
                await result


_INTERNAL = (
    os.sep + "aiolease" + os.sep + "_pool" + os.sep,
    os.sep + "aiolease" + os.sep + "_transaction.py",
    os.sep + "asyncio" + os.sep,
    os.sep + "pluggy" + os.sep,
    os.sep + "_pytest" + os.sep,
)


def caller_stack(frame: FrameType | None, limit: int = 8) -> traceback.StackSummary:
    """The acquiring code's stack, without aiolease's, asyncio's and the test runner's frames."""
    frames = [
        f
        for f in traceback.extract_stack(frame, limit=40)
        if not any(part in f.filename for part in _INTERNAL)
    ]
    return traceback.StackSummary.from_list(frames[-limit:])


def _hook(manager: object, name: str) -> Callable[..., Any] | None:
    """The manager's method ``name``, or None when it is the Manager ABC's no-op default."""
    if getattr(type(manager), name, None) is getattr(Manager, name, None):
        return None
    method = getattr(manager, name, None)
    return method if callable(method) else None


class Hooks:
    """The manager's optional hooks, each None when the manager keeps the no-op default
    (so the pool skips the call)."""

    __slots__ = (
        "abort",
        "check",
        "check_needed",
        "detach",
        "is_fatal",
        "on_acquire",
        "on_idle",
        "on_release",
        "reset",
        "reset_needed",
        "wrap",
    )

    def __init__(self, manager: object) -> None:
        self.check = _hook(manager, "check")
        self.check_needed = _hook(manager, "check_needed")
        self.reset = _hook(manager, "reset")
        self.reset_needed = _hook(manager, "reset_needed")
        self.on_acquire = _hook(manager, "on_acquire")
        self.on_release = _hook(manager, "on_release")
        self.on_idle = _hook(manager, "on_idle")
        self.wrap = _hook(manager, "wrap")
        self.detach = _hook(manager, "detach")
        self.abort = _hook(manager, "abort")
        self.is_fatal = _hook(manager, "is_fatal")
