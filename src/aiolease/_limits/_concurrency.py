"""ConcurrencyLimiter: at most ``limit`` holders per key, FIFO, with timeouts."""

from __future__ import annotations

from asyncio import AbstractEventLoop, get_running_loop
from collections.abc import Generator, Hashable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from .. import _metrics, _tracking, _validate
from .._errors import LimitTimeout, WouldBlock
from .._validate import check_entry, check_key, check_name
from ._base import INF, LimiterBase, State, Waiter, admission, fail, pump, reclaim_here

__all__ = ["ConcurrencyLimiter", "ConcurrencyLimiterStatistics", "ConcurrencyPermit"]


@dataclass(frozen=True, slots=True)
class ConcurrencyLimiterStatistics:
    """A snapshot of a :class:`ConcurrencyLimiter`.

    Attributes:
        limit: the most holders per key.
        in_use: slots held now, over every key.
        waiting: tasks waiting now, over every key.
        admitted: acquisitions granted so far (whose caller got the permit).
        rejected: ``WouldBlock`` raised by ``acquire_nowait``.
        timeouts: ``LimitTimeout`` raised.
        cancelled: waiters cancelled before they resumed with a slot (one granted a slot in
            the step it was cancelled included: the slot went on to the next waiter).
        wait_time_total: seconds waited by the admitted waiters together.
        wait_time_max: the longest single wait, seconds.
        keys: per-key states held in memory (the default key not counted).
    """

    limit: int
    in_use: int
    waiting: int
    admitted: int
    rejected: int
    timeouts: int
    cancelled: int
    wait_time_total: float
    wait_time_max: float
    keys: int


class _SlotState(State):
    __slots__ = ("held",)

    owner: ConcurrencyLimiter

    def __init__(self, owner: ConcurrencyLimiter, key: Hashable) -> None:
        super().__init__(owner, key)
        self.held = 0

    def ready_at(self, cost: float, now: float) -> float:
        return now if self.held < self.owner._limit else INF

    def commit(self, cost: float, now: float, fired: float | None = None) -> None:
        self.held += 1
        self.owner._in_use += 1

    def idle(self, now: float) -> bool:
        return self.nwait == 0 and self.held == 0


class ConcurrencyPermit:
    """A held slot of a :class:`ConcurrencyLimiter`; :meth:`release` gives it back."""

    __slots__ = ("_limiter", "_released", "_state", "key")

    def __init__(self, limiter: ConcurrencyLimiter, state: _SlotState) -> None:
        self._limiter = limiter
        self._state = state
        self._released = False
        self.key = state.key

    @property
    def released(self) -> bool:
        """Whether the slot was given back."""
        return self._released

    def release(self) -> None:
        """Give the slot back (to the oldest waiter, if any). A second call does nothing.

        Synchronous, so it cannot be interrupted by cancellation. While tasks wait for the
        slot it must be called on the event loop's thread (it hands the slot over).

        Raises:
            RuntimeError: tasks wait for the slot and no event loop runs in this thread (the
                permit is then still held; ``loop.call_soon_threadsafe(permit.release)``).
        """
        if not self._released:
            self._limiter._release(self._state)
            self._released = True

    def __repr__(self) -> str:
        state = "released" if self._released else "held"
        return f"<ConcurrencyPermit key={self.key!r} {state}>"


class _ConcurrencyAcquire:
    """What :meth:`ConcurrencyLimiter.acquire` returns: awaitable, and an async context manager."""

    __slots__ = ("_entered", "_key", "_limiter", "_permit", "_timeout")

    def __init__(self, limiter: ConcurrencyLimiter, key: Hashable, timeout: float | None):
        self._limiter = limiter
        self._key = key
        self._timeout = timeout
        self._permit: ConcurrencyPermit | None = None
        self._entered = False

    def __await__(self) -> Generator[Any, None, ConcurrencyPermit]:
        return self._limiter._acquire(self._key, self._timeout).__await__()

    async def __aenter__(self) -> ConcurrencyPermit:
        check_entry(self._entered, self._limiter)
        self._entered = True
        try:
            self._permit = await self._limiter._acquire(self._key, self._timeout)
        except BaseException:
            self._entered = False
            raise
        return self._permit

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        permit, self._permit, self._entered = self._permit, None, False
        if permit is not None:
            permit.release()


class ConcurrencyLimiter(LimiterBase):
    """Let at most ``limit`` tasks per key hold a slot at once.

    Waiters are served first-in first-out per key; a released slot goes
    straight to the oldest waiter, so newcomers cannot barge ahead. A waiter
    that is cancelled or times out gives its place back; a slot handed to a
    waiter cancelled in the same instant is passed on. Keys with no holder and
    no waiter are forgotten. No event loop is bound at construction.

    ``async with sem:`` waits in ``__aenter__`` (the only half that blocks or
    can be cancelled) and releases in ``__aexit__``.

    Args:
        limit: the most holders per key, an int >= 1.
        name: shown in ``repr`` and leak reports.

    Raises:
        ValueError: ``limit`` < 1.
        TypeError: ``limit`` is not an int.
    """

    __slots__ = ("_in_use", "_limit", "_name", "_timeouts")

    def __init__(self, limit: int, *, name: str | None = None) -> None:
        super().__init__()
        _validate.integer("limit", limit, 1)
        self._limit = limit
        self._name = check_name(name)
        self._in_use = 0
        self._timeouts = 0
        self._default = _SlotState(self, None)
        self._observer = _metrics.register_limiter(self, self._name)
        _tracking.track(self)

    # -- public API ---------------------------------------------------------
    def acquire(self, key: Hashable = None, timeout: float | None = None) -> _ConcurrencyAcquire:
        """Wait for a slot on ``key``.

        Use as ``async with sem.acquire(...) as permit:`` (released on exit)
        or ``permit = await sem.acquire(...)`` (call ``permit.release()``).
        Only the wait blocks and can be cancelled.

        Args:
            key: any hashable; each key has its own ``limit`` slots. ``None`` is the default key.
            timeout: the longest wait, seconds (``None``: no limit).

        Raises:
            LimitTimeout: (when awaited) no slot came free within ``timeout``.
            ValueError: ``timeout`` is negative.
            TypeError: ``key`` is not hashable.
        """
        k = key if key is None else check_key(key)  # the default key needs no check
        return _ConcurrencyAcquire(self, k, _validate.timeout("timeout", timeout))

    def acquire_nowait(self, key: Hashable = None) -> ConcurrencyPermit:
        """Take a free slot on ``key`` now.

        Raises:
            WouldBlock: no slot is free, or other tasks are already waiting for one.
        """
        st = self._state(check_key(key), 0.0)
        if self._admit(st):
            return ConcurrencyPermit(self, st)
        self._rejected += 1
        raise WouldBlock(
            f"{self!r}: all {self._limit} slots of key {key!r} are held"
            + (f" and {st.nwait} task(s) are waiting" if st.nwait else "")
        )

    def statistics(self) -> ConcurrencyLimiterStatistics:
        """Return a snapshot of the counters (see :class:`ConcurrencyLimiterStatistics`)."""
        return ConcurrencyLimiterStatistics(
            limit=self._limit,
            in_use=self._in_use,
            waiting=self._waiting,
            admitted=self._admitted,
            rejected=self._rejected,
            timeouts=self._timeouts,
            cancelled=self._cancelled,
            wait_time_total=self._wait_total,
            wait_time_max=self._wait_max,
            keys=len(self._states),
        )

    async def __aenter__(self) -> None:
        if not self._admit(self._default):
            await self._acquire(None, None)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._release(self._default)

    def __repr__(self) -> str:
        name = f" {self._name!r}" if self._name else ""
        return (
            f"<ConcurrencyLimiter{name} limit={self._limit} in_use={self._in_use} "
            f"waiting={self._waiting} keys={len(self._states)}>"
        )

    # -- internals ----------------------------------------------------------
    def _new_state(self, key: Hashable) -> _SlotState:
        return _SlotState(self, key)

    def _admit(self, st: _SlotState) -> bool:
        """THE slot admission: take a slot of ``st`` now if one is free and nobody waits.

        Every way in (``async with``, ``acquire``, ``acquire_nowait``) tries this first and
        only queues (or raises ``WouldBlock``) when it returns False.
        """
        if not (st.nwait and st.waiting()) and st.held < self._limit:
            st.commit(1.0, 0.0)
            self._admitted += 1
            return True
        return reclaim_here(st) and self._admit(st)

    def _release(self, st: _SlotState) -> None:
        if st.held <= 0:
            raise RuntimeError(f"{self!r}: release of key {st.key!r} without a matching acquire")
        loop = None
        if st.nwait and st.waiting():
            # Found before anything changes: a release that counted the slot free and then
            # failed to hand it over would leave every waiter on the key waiting forever.
            try:
                loop = get_running_loop()
            except RuntimeError:
                raise RuntimeError(
                    f"{self!r}: a slot of key {st.key!r} released outside the event loop while "
                    f"{st.nwait} task(s) wait for it; release it on the loop's thread, e.g. "
                    "loop.call_soon_threadsafe(permit.release)"
                ) from None
        st.held -= 1
        self._in_use -= 1
        if loop is not None:
            pump((st,), loop)
        elif st.held == 0 and st is not self._default and not st.evicted:
            if self._states.get(st.key) is st:
                del self._states[st.key]
            st.evicted = True

    def _expire(self, w: Waiter, loop: AbstractEventLoop) -> None:
        w.timer = None
        if not w.gone and not w.fut.done():
            self._timeouts += 1
            fail(w, LimitTimeout(f"{self!r}: no slot came free within the timeout"), loop)

    async def _acquire(self, key: Hashable, timeout: float | None) -> ConcurrencyPermit:
        loop = get_running_loop()
        now = loop.time()
        st = self._state(key, now)
        if self._admit(st):
            return ConcurrencyPermit(self, st)
        if timeout == 0:
            self._timeouts += 1
            raise LimitTimeout(f"{self!r}: no slot is free and timeout=0")
        fut: Any = loop.create_future()
        w = Waiter(fut, 1.0, (st,), now, None if timeout is None else now + timeout)
        st.enqueue(w)
        if timeout is not None:
            w.timer = loop.call_at(now + timeout, self._expire, w, loop)
        # Granted, but cancelled before it ran: the slot is passed on.
        await admission(w, loop, lambda _: self._release(st))
        return ConcurrencyPermit(self, st)

    def _aiolease_leaks(self) -> list[str]:
        problems = self._waiter_leaks()
        for st in [self._default, *self._states.values()]:
            if st.held:
                where = f"key {st.key!r}" if st.key is not None else "the default key"
                problems.append(f"{self!r}: {st.held} slot(s) still held on {where}")
        return problems
