"""Closing a pool: wake waiters, close idle resources, wait for leases to come back.

The wait for outstanding leases is never silent and never unbounded against
the caller's wishes: it logs a WARNING naming every outstanding lease soon
after it starts and again at growing intervals, and a later
``aclose(timeout=t)`` or a cancelled closer shortens it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .. import _tracking
from .._errors import PoolClosed
from .._logs import get_logger
from .._tasks import start_task

if TYPE_CHECKING:
    from ._core import Pool
    from ._entries import Entry

__all__ = [
    "Drain",
    "close_all",
    "close_broken",
    "close_resource",
    "detach",
    "error_text",
    "in_hook",
    "leaked_cancel",
    "note_discard",
    "reset_then_hand_off",
    "retire",
]

logger = get_logger("aiolease.pool")
_INF = float("inf")
# First report of outstanding leases, in seconds after the wait began; each next one
# comes twice as long after, up to the cap.
FIRST_REPORT = 2.0
REPORT_CAP = 300.0
# Seconds past the manager's close_timeout that aclose() waits for its own tasks (a close
# abandoned at close_timeout ends a step later) before it leaves them running.
STUCK_GRACE = 1.0


class Drain:
    """A pool's close: the task running it, its wait for the leases to end (a
    deadline that can only come closer), and the leases it closed in their
    holders' hands."""

    __slots__ = ("closed_out", "deadline", "done", "task", "wake")

    def __init__(self, pool: Pool[Any]) -> None:
        self.deadline = _INF
        self.wake = asyncio.Event()  # set when a lease ends or the deadline moves
        self.done = asyncio.Event()
        # Leases closed in their holders' hands: id(handle) -> entry, until given back.
        self.closed_out: dict[int, Entry[Any]] = {}
        # Never eagerly (see aiolease._tasks): its first step cancels the creations in
        # flight, which must have begun (a task cancelled before its first step never runs
        # the code that frees its slot).
        self.task = start_task(self._run(pool), asyncio.get_running_loop())

    async def wait(self, timeout: float | None) -> None:
        """Wait for the close to end (each ``aclose()`` call): ``timeout`` seconds at most
        for the leases, and a cancelled caller stops that wait at once."""
        loop = asyncio.get_running_loop()
        if timeout is not None:
            self.shorten(loop.time() + timeout)
        try:
            await asyncio.shield(self.done.wait())
        except asyncio.CancelledError:
            self.shorten(loop.time())  # a cancelled closer stops waiting for leases
            raise

    def given_back(self, key: int, handle: object) -> bool:
        """Whether ``handle`` (``key`` is its id) is a lease this close closed in its
        holder's hands; it is forgotten then (a second release is an error)."""
        entry = self.closed_out.get(key)
        if entry is None or entry.handle is not handle:
            return False
        del self.closed_out[key]
        return True

    async def _run(self, pool: Pool[Any]) -> None:
        try:
            await close_all(pool, self)
        finally:
            pool._closed()
            self.done.set()

    def shorten(self, deadline: float) -> None:
        if deadline < self.deadline:
            self.deadline = deadline
            self.wake.set()


async def close_all(pool: Pool[Any], drain: Drain) -> None:
    """The body of :meth:`Pool.aclose` (a pool-owned task): returns when every resource
    the pool made is closed or abandoned."""
    loop = asyncio.get_running_loop()
    pool._housekeeper.cancel()
    pool._queue.disarm()
    closed = PoolClosed(f"{pool!r} was closed while waiting")
    while (fut := pool._queue.next()) is not None:
        fut.set_exception(closed)
    pool._creations.close()
    while pool._idle:
        retire(pool, pool._idle.pop())
    start = loop.time()
    report_at = start + FIRST_REPORT
    interval = FIRST_REPORT
    # Past the deadline (leases closed, checks and resets interrupted), the wait goes on
    # only for the interrupted hooks, which end at their next step: one that ignores its
    # interruption is left running (with a WARNING) once `give_up` has come.
    give_up = _INF
    while pool._in_use or pool._in_hook:
        now = loop.time()
        if give_up == _INF and now >= drain.deadline:
            _close_outstanding(pool, drain, now)
            give_up = now + pool._close_timeout + STUCK_GRACE
            continue
        if now >= give_up:
            logger.warning(
                "%r: aclose() stops waiting for %d check(s) or reset(s) that ignored their "
                "interruption; each resource is closed when its hook ends",
                pool,
                len(pool._in_hook),
            )
            break
        if now >= report_at:
            _report_outstanding(pool, now, now - start)
            interval = min(interval * 2, REPORT_CAP)
            report_at = now + interval
        drain.wake.clear()
        try:
            async with asyncio.timeout_at(
                min(report_at, drain.deadline if give_up == _INF else give_up)
            ):
                await drain.wake.wait()
        except TimeoutError:
            pass
    # The pool's tasks left: closes (each bounded by close_timeout) and cancelled
    # creations. One still running a round later ignored its cancellation (a driver that
    # lost it): it is left running, with a WARNING, not waited for forever. What it may
    # still make is closed then (the pool is closed) and frees its slot.
    left: set[asyncio.Task[Any]] = set()
    while tasks := [t for t in pool._tasks if t not in left]:
        done, pending = await asyncio.wait(tasks, timeout=pool._close_timeout + STUCK_GRACE)
        # Their done callbacks (which discard them) may not have run yet, and a wait on
        # finished tasks need not yield: forget them here, or this loop spins.
        pool._tasks.difference_update(done)
        if pending:
            logger.warning(
                "%r: aclose() stops waiting for %d task(s) still running %.1fs after the "
                "close began; each ignored its cancellation (or its close_timeout): %s",
                pool,
                len(pending),
                loop.time() - start,
                ", ".join(sorted(repr(t.get_coro()) for t in pending)),
            )
            left.update(pending)


def _report_outstanding(pool: Pool[Any], now: float, waited: float) -> None:
    leases = [*pool._in_use.values(), *pool._in_hook]
    logger.warning(
        "%r: aclose() has waited %.1fs for %d lease(s) to end (pass aclose(timeout=...) to "
        "close them in their holders' hands):\n%s",
        pool,
        waited,
        len(leases),
        "\n".join(f"- {entry.describe(now)}" for entry in leases),
    )


def _close_outstanding(pool: Pool[Any], drain: Drain, now: float) -> None:
    # A check or reset still running is interrupted (its scope fires); its own failure
    # path closes the resource once the hook has ended, so the two never overlap.
    for entry, scope in pool._in_hook.items():
        logger.warning(
            "%r: interrupting the check or reset of %r as the pool closes", pool, entry.handle
        )
        if not scope.expired():
            scope.reschedule(now)
    # No longer in use (statistics count them out), but their holders may still give
    # them back: the release finds them in closed_out.
    for entry in pool._in_use.values():
        logger.warning(
            "%r: closing a resource still checked out as the pool closes: %s",
            pool,
            entry.describe(now),
        )
        detach(pool, entry)
        pool._close_soon(entry)
    drain.closed_out.update(pool._in_use)
    pool._in_use.clear()


async def close_resource(pool: Pool[Any], entry: Entry[Any]) -> None:
    """Close a resource within the manager's ``close_timeout`` (past it, or cancelled:
    abandon it) and free its slot. Runs in a pool-owned task; its caller counted it in
    ``pool._closing`` (when it decided to close, so no slot is taken for surplus twice).

    A resource discarded as unusable (a fatal error in the body, marked broken by a
    transaction, a failed or interrupted check) is cut first (the manager's ``abort``):
    a graceful close of a connection to a silent peer would hold the slot, and the
    caller's release, until ``close_timeout``. Its close then has nothing to wait for.
    """
    resource = entry.resource
    if entry.broken or (_tracking._broken and _tracking.is_broken(resource)):
        _cut(pool, resource)
    try:
        async with asyncio.timeout(pool._close_timeout) as scope:
            await pool._manager.close(resource)
    except Exception as exc:
        if scope.expired():
            _abandon(pool, entry, "its close took longer than close_timeout")
        else:
            logger.warning("%r: closing %r failed: %r", pool, resource, exc)
    except BaseException as exc:
        if leaked_cancel(exc):  # a failed close; whoever awaits this task goes on
            logger.warning("%r: closing %r failed: %r", pool, resource, exc)
        else:
            _abandon(pool, entry, "its close was cancelled")
            raise
    finally:
        pool._creations.live.discard(id(resource))
        pool._counters.closed += 1
        pool._closing -= 1
        pool._size -= 1
        pool._dispatch()


def leaked_cancel(exc: BaseException) -> bool:
    """Whether ``exc`` is a CancelledError though nobody cancelled the running pool task:
    an inner timeout of a manager hook that leaked. That is the hook's failure (as for
    create(), see Creations._failed), not a cancellation: the caller awaiting the task was
    not cancelled and must not end as if it were."""
    task = asyncio.current_task()
    return isinstance(exc, asyncio.CancelledError) and task is not None and not task.cancelling()


def _abandon(pool: Pool[Any], entry: Entry[Any], why: str) -> None:
    note_discard(pool, entry, None)  # (counted once, if it was not already)
    logger.warning(
        "%r: abandoned %r: %s (%ss); its transport is aborted where the driver allows",
        pool,
        entry.resource,
        why,
        pool._close_timeout,
    )
    _cut(pool, entry.resource)


def _cut(pool: Pool[Any], resource: object) -> None:
    """The manager's ``abort`` (cut the transport at once), if it has one; errors logged."""
    abort = pool._hooks.abort
    if abort is not None:
        try:
            abort(resource)
        except Exception as exc:
            logger.warning("%r: aborting %r failed: %r", pool, resource, exc)


@contextlib.contextmanager
def in_hook(pool: Pool[Any], entry: Entry[Any], scope: asyncio.Timeout) -> Iterator[None]:
    """The manager's check or reset of ``entry`` runs, inside ``scope``: aclose() waits for
    it as for a lease, and fires ``scope`` when it stops waiting (see close_all)."""
    pool._in_hook[entry] = scope
    try:
        yield
    finally:
        del pool._in_hook[entry]
        if pool._drain is not None:
            pool._drain.wake.set()


async def reset_then_hand_off(pool: Pool[Any], entry: Entry[Any]) -> None:
    """The manager's reset of a released resource (a pool task), then the hand-off;
    a failed reset closes the resource instead."""
    reset = pool._hooks.reset
    assert reset is not None
    try:
        async with asyncio.timeout(None) as scope:  # fired by aclose() when it stops waiting
            with in_hook(pool, entry, scope):
                await reset(entry.resource, entry.info)
    except BaseException as exc:
        # This task is cancelled only when the loop shuts down; otherwise a
        # CancelledError is a failed reset (see leaked_cancel).
        cancelled = isinstance(exc, asyncio.CancelledError) and not leaked_cancel(exc)
        if cancelled:
            note_discard(pool, entry, "its reset was cancelled", logging.DEBUG)
        elif scope.expired():
            note_discard(pool, entry, "its reset was interrupted: the pool closed")
        else:
            note_discard(pool, entry, f"its reset failed: {error_text(exc)}")
        pool._closing += 1
        await close_resource(pool, entry)
        if cancelled or not isinstance(exc, Exception | asyncio.CancelledError):
            raise
        return
    pending = pool._hand_off(entry)
    if pool._observer is not None:
        pool._observer.reset_done()
    if pending is not None:
        await pending


def detach(pool: Pool[Any], entry: Entry[Any]) -> None:
    """End a wrapping manager's per-lease object (it refuses use from now on)."""
    hook = pool._hooks.detach
    if hook is not None and entry.handle is not entry.resource:
        hook(entry.handle)


def error_text(exc: BaseException) -> str:
    """An error for a log line: its type and message (``TimeoutError`` alone when empty)."""
    message = str(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def close_broken(pool: Pool[Any], entry: Entry[Any]) -> None:
    """Close a released resource a transaction marked broken, in a pool-owned task the
    release does not wait for: the caller's exit never waits on a connection that may
    be dead."""
    note_discard(
        pool,
        entry,
        "a transaction marked it broken (unknown COMMIT outcome, or an abandoned cleanup)",
    )
    pool._close_soon(entry)


def note_discard(
    pool: Pool[Any], entry: Entry[Any], why: str | None, level: int = logging.INFO
) -> None:
    """Count a resource the pool closes because it failed or was given back with
    ``discard=True`` (``statistics().discarded``, once per resource), and log one line
    saying why (``why`` None: no line)."""
    if not entry.discarded:
        entry.discarded = True
        pool._counters.discarded += 1
    if why is not None:
        logger.log(level, "%r: discarding %r: %s", pool, entry.resource, why)


def retire(pool: Pool[Any], entry: Entry[Any], now: float | None = None) -> asyncio.Future[Any]:
    """Close a resource the pool no longer wants though nothing failed (its lifetime or
    idle timeout is over, ``resize()``, ``expire()``, the pool closes); DEBUG says why.
    ``now``: the time the caller judged it by (None: the clock's)."""
    if logger.isEnabledFor(logging.DEBUG):
        why = _retired_because(pool, entry, pool._clock() if now is None else now)
        logger.debug("%r: closing %r: %s", pool, entry.resource, why)
    return pool._close_soon(entry)


def _retired_because(pool: Pool[Any], entry: Entry[Any], now: float) -> str:
    info = entry.info
    if not pool._is_open():
        return "the pool closes"
    if entry.generation != pool._generation:
        return "expire() retired it (called, or after a failover)"
    if info.expires_at <= now:
        return f"past max_lifetime={pool._max_lifetime}s"
    if pool._size - pool._closing > pool._max_size:
        return f"above max_size={pool._max_size}"
    return f"idle longer than idle_timeout={pool._idle_timeout}s"
