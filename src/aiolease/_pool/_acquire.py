"""What :meth:`Pool.acquire` returns: an async context manager, and awaitable."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Generator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .._errors import PoolClosed, PoolTimeout
from .._logs import get_logger
from ._closing import error_text, in_hook, note_discard

if TYPE_CHECKING:
    from ._core import Pool
    from ._entries import Entry

__all__ = ["Acquire", "needs_check", "run_check", "self_wait_error", "waiting_on_itself"]

T = TypeVar("T")
logger = get_logger("aiolease.pool")
_INF = float("inf")


class Acquire(Generic[T]):
    """``async with pool.acquire() as r`` (released on exit) or ``r = await pool.acquire()``.

    ``__aenter__`` and ``__aexit__`` return awaitables rather than being
    coroutine functions: served on the spot, entering returns the entry's
    done future and leaving the pool's, with no coroutine made.
    """

    __slots__ = ("_entered", "_entry", "_pool", "_scoped", "_timeout")

    def __init__(self, pool: Pool[T], timeout: float | None) -> None:
        self._pool = pool
        self._timeout = timeout
        self._entry: Entry[T] | None = None
        self._entered = False
        self._scoped = True  # entered by `async with` (False: awaited)

    def __await__(self) -> Generator[Any, None, T]:
        # An awaited lease is ended by pool.release(), not by leaving this object: once
        # it is served, the object is free to be awaited (or entered) again.
        self._scoped = False
        try:
            handle = yield from self.__aenter__().__await__()
        finally:
            self._scoped = True
        self._entered = False
        self._entry = None
        return handle

    def __aenter__(self) -> Awaitable[T]:
        if self._entered:
            raise RuntimeError(
                f"this pool.acquire() of {self._pool!r} is already entered: leaving it "
                "releases one lease, so it cannot hold two; call pool.acquire() again "
                "for a second one"
            )
        pool = self._pool
        pool._check_loop()
        self._entered = True
        entry = pool._take_idle()
        if entry is not None:
            if not (entry.check_due and needs_check(pool, entry)):
                entry.scoped = self._scoped
                pool._lease(entry)
                self._entry = entry
                ready = entry.ready
                if ready is None:  # made once per handle: a future can be awaited many times
                    ready = entry.ready = asyncio.Future(loop=pool._loop)
                    ready.set_result(entry.handle)
                return ready
            # Its check awaits: the coroutine takes it again when it runs. A coroutine
            # that never runs (its task cancelled before its first step, as
            # wait_for(..., 0) does) must not hold a resource nobody would give back.
            pool._unpop_idle(entry)
        return pool._acquire_blocking(self, fresh=entry is not None)

    def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Awaitable[None]:
        pool = self._pool
        entry = self._entry
        if entry is None:
            raise RuntimeError(f"{pool!r}: leaving an acquire that was not entered, or twice")
        self._entry = None
        self._entered = False
        pending = pool._release(entry.handle, exc is not None and unusable_after(pool, entry, exc))
        if pending is None:
            done = pool._done
            assert done is not None
            return done
        return asyncio.shield(pending)  # the reset/close goes on if the caller is cancelled


def unusable_after(pool: Pool[T], entry: Entry[T], exc: BaseException) -> bool:
    """Whether the error ``exc`` that ended a lease's body leaves ``entry`` unusable (the
    manager's ``is_fatal`` says so), in which case the release discards it."""
    is_fatal = pool._hooks.is_fatal
    if is_fatal is None:
        return False
    try:
        fatal = bool(is_fatal(entry.resource, exc))
    except Exception as hook_error:
        # The lease must still end (else its slot is lost and aclose() waits for it),
        # and the body's exception must still propagate: the resource's state is
        # unknown, so it is discarded.
        logger.warning(
            "%r: the manager's is_fatal raised %s; the pool discards %r",
            pool,
            error_text(hook_error),
            entry.resource,
        )
        fatal = True
    if not fatal:
        return False
    logger.info(
        "%r: %r is unusable after its holder's error (%s); the pool discards it",
        pool,
        entry.resource,
        error_text(exc),
    )
    # Unusable, so cut before its close; unless the body was cancelled or timed
    # out: the driver may still be cancelling a statement, which its close lets end.
    if not isinstance(exc, asyncio.CancelledError | TimeoutError):
        entry.broken = True
    return True


def needs_check(pool: Pool[T], entry: Entry[T]) -> bool:
    """Whether an entry whose check is due (``entry.check_due``, which the callers test
    first) gets the manager's check before its lease: yes unless ``check_needed`` says no."""
    check_needed = pool._hooks.check_needed
    return check_needed is None or bool(check_needed(entry.resource, entry.info))


async def run_check(pool: Pool[T], entry: Entry[T], deadline: float) -> bool:
    """Run the manager's check on an idle entry; False (after discarding it) if it fails.

    The check counts against the acquire ``deadline``: when it passes mid-check,
    the check is cancelled, the resource closed and :class:`PoolTimeout` raised.
    """
    check = pool._hooks.check
    assert check is not None
    task = asyncio.current_task()
    cancels = 0 if task is None else task.cancelling()
    try:
        async with asyncio.timeout_at(None if deadline == _INF else deadline) as scope:
            with in_hook(pool, entry, scope):
                await check(entry.resource, entry.info)
    except Exception as exc:
        entry.broken = True
        pool._close_soon(entry)
        if task is not None and task.cancelling() > cancels:
            # The caller was cancelled mid-check and the check answered with an error of
            # its own (a driver's "query cancelled"): the acquire ends cancelled, as asked,
            # rather than trying the next resource.
            note_discard(pool, entry, "its check was cancelled", logging.DEBUG)
            raise asyncio.CancelledError from exc
        if scope.expired() and not pool._is_open():  # aclose() stopped waiting for it
            note_discard(pool, entry, "its check was interrupted: the pool closed")
            raise PoolClosed(f"{pool!r} was closed during the check") from None
        if scope.expired():
            note_discard(pool, entry, "its check outlasted the acquire timeout")
            pool._counters.timeouts += 1
            raise PoolTimeout(f"{pool!r}: no resource within the acquire timeout") from (
                pool._creations.backoff.last_error
            )
        note_discard(pool, entry, f"its check failed: {error_text(exc)}")
        return False
    except BaseException:
        # Interrupted mid-check: the resource's state is unknown, so close it.
        note_discard(pool, entry, "its check was cancelled", logging.DEBUG)
        entry.broken = True
        pool._close_soon(entry)
        raise
    return True


def waiting_on_itself(pool: Pool[Any], *, scoped_only: bool) -> bool:
    """Whether the current task holds every lease the pool can give (with
    ``scoped_only``: all through ``async with``, so none can end while it waits)."""
    in_use = pool._in_use
    if not pool._size == len(in_use) >= pool._max_size:
        return False
    me = asyncio.current_task(pool._loop)
    if next(iter(in_use.values())).holder is not me:
        return False  # the common case under contention, without a scan
    return all(e.holder is me and (e.scoped or not scoped_only) for e in in_use.values())


def self_wait_error(pool: Pool[Any]) -> PoolTimeout:
    return PoolTimeout(
        f"{pool!r}: this task is waiting on itself: it holds all {len(pool._in_use)} "
        f"leases the pool can give (max_size={pool._max_size}) and asks for another; "
        "release one first, or raise max_size"
    )
