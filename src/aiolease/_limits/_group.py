"""LimitGroup: several limits (rate and concurrency) acquired atomically in one ``async with``."""

from __future__ import annotations

from asyncio import AbstractEventLoop, get_running_loop
from collections.abc import Generator, Hashable
from types import TracebackType
from typing import Any

from .. import _validate
from .._errors import LimitTimeout, RateLimitExceeded, WouldBlock
from .._validate import check_cost, check_entry, check_key
from ._base import EPS, INF, State, Waiter, admission, fail, pump
from ._concurrency import ConcurrencyLimiter, ConcurrencyPermit, _SlotState
from ._rate import RateLimiter, RatePermit

__all__ = ["GroupPermit", "LimitGroup"]

_Member = RateLimiter | ConcurrencyLimiter


class GroupPermit:
    """An acquisition admitted by every member of a :class:`LimitGroup`.

    Attributes:
        rate_permits: one :class:`RatePermit` per rate member, in group order.
        slots: one :class:`ConcurrencyPermit` per concurrency member, in group order.
    """

    __slots__ = ("key", "rate_permits", "slots")

    def __init__(self, key: Hashable, rate: list[RatePermit], slots: list[ConcurrencyPermit]):
        self.key = key
        self.rate_permits = rate
        self.slots = slots

    @property
    def cost(self) -> float:
        """The cost charged to the rate members (0 when there is none)."""
        return self.rate_permits[0].cost if self.rate_permits else 0.0

    def settle(self, actual_cost: float) -> None:
        """Settle the cost on every rate member (see :meth:`RatePermit.settle`)."""
        _validate.number("actual_cost", actual_cost, inclusive=True)
        for p in self.rate_permits:  # every member accepts it, or none is settled
            p._limiter._check_actual(actual_cost)
        for p in self.rate_permits:
            p.settle(actual_cost)

    def release(self) -> None:
        """Give back the concurrency slots (done on leaving ``async with``). Idempotent."""
        for s in self.slots:
            s.release()

    def __repr__(self) -> str:
        return f"<GroupPermit cost={self.cost:g} key={self.key!r} slots={len(self.slots)}>"


class _GroupAcquire:
    __slots__ = ("_cost", "_entered", "_group", "_key", "_permit", "_timeout")

    def __init__(self, group: LimitGroup, cost: float, key: Hashable, timeout: float | None):
        self._group = group
        self._cost = cost
        self._key = key
        self._timeout = timeout
        self._permit: GroupPermit | None = None
        self._entered = False

    def __await__(self) -> Generator[Any, None, GroupPermit]:
        return self._group._acquire(self._cost, self._key, self._timeout).__await__()

    async def __aenter__(self) -> GroupPermit:
        check_entry(self._entered, self._group)
        self._entered = True
        try:
            self._permit = await self._group._acquire(self._cost, self._key, self._timeout)
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


class LimitGroup:
    """Several limits that must all hold, acquired atomically.

    For example 10 per second *and* 500 per minute *and* at most 4 at once::

        api = LimitGroup(RateLimiter(10), RateLimiter(500, per=60), ConcurrencyLimiter(4))
        async with api.acquire(key=user) as permit:
            ...

    An acquisition is admitted by every member at the same instant or by
    none (a waiter never holds one member's capacity while it waits for
    another's); it is first-in first-out in each member. ``cost`` is charged
    to the rate members; a concurrency member gives one slot, released when
    the ``async with`` block is left (or by ``permit.release()``). The members
    stay usable on their own, and their statistics count the group's traffic.

    Args:
        *limiters: local :class:`RateLimiter` and :class:`ConcurrencyLimiter` objects,
            each at most once.
        shared: members that ignore the ``key`` of an acquisition and always use
            their default key, e.g. a global cap of calls in flight over
            per-user rate limits: ``LimitGroup(per_user, cap, shared=(cap,))``.

    Raises:
        TypeError: a member is not a local limiter, or ``shared`` is not a collection.
        ValueError: no member, one given twice, or a ``shared`` one not among them.
    """

    __slots__ = ("_keyed", "_max_cost", "_members", "_rates", "_sems")

    def __init__(self, *limiters: _Member, shared: tuple[_Member, ...] = ()) -> None:
        if not limiters:
            raise ValueError("LimitGroup needs at least one limiter")
        for m in limiters:
            if not isinstance(m, (RateLimiter, ConcurrencyLimiter)):
                raise TypeError(
                    "LimitGroup takes aiolease.RateLimiter and aiolease.ConcurrencyLimiter "
                    f"objects, got {type(m).__name__}"
                )
        if len({id(m) for m in limiters}) != len(limiters):
            raise ValueError("LimitGroup got the same limiter twice")
        try:
            shared = tuple(shared)
        except TypeError:
            raise TypeError(
                "shared must be a tuple of some of the group's limiters, e.g. shared=(cap,), "
                f"got {type(shared).__name__} {shared!r}"
            ) from None
        for m in shared:
            if not any(m is x for x in limiters):
                raise ValueError(f"shared member {m!r} is not one of the group's limiters")
        self._members: tuple[_Member, ...] = tuple(limiters)
        # Members in `shared` always use their default key, whatever key is acquired.
        self._keyed = tuple(not any(m is x for x in shared) for m in limiters)
        self._rates = tuple(m for m in limiters if isinstance(m, RateLimiter))
        self._sems = tuple(m for m in limiters if isinstance(m, ConcurrencyLimiter))
        self._max_cost = min((r._max_cost for r in self._rates), default=INF)
        for r in self._rates:
            r._grouped = True

    @property
    def members(self) -> tuple[RateLimiter | ConcurrencyLimiter, ...]:
        """The limiters of the group, in the order given."""
        return self._members

    def acquire(
        self, cost: float = 1, key: Hashable = None, timeout: float | None = None
    ) -> _GroupAcquire:
        """Wait until every member admits ``cost`` on ``key``.

        Use as ``async with group.acquire(...) as permit:`` or ``permit = await
        group.acquire(...)`` (then call ``permit.release()``). Only the wait
        blocks and can be cancelled; cancelling gives every reservation back.

        Args:
            cost: charged to each rate member; must fit the smallest of their bursts.
            key: any hashable; ``None`` is the default key of every member.
            timeout: the longest wait, seconds.

        Raises:
            ValueError: ``cost`` can never be admitted, or ``timeout`` is negative.
            TypeError: ``key`` is not hashable.
            RateLimitExceeded: (when awaited) the rate members alone cannot admit
                within ``timeout`` (raised at once); or, with no concurrency member,
                the deadline passed.
            LimitTimeout: (when awaited) the deadline passed while waiting and the
                group has a concurrency member.
        """
        c = check_cost(cost, self._max_cost, f"smallest member limit={self._max_cost:g}")
        return _GroupAcquire(self, c, check_key(key), _validate.timeout("timeout", timeout))

    def acquire_nowait(self, cost: float = 1, key: Hashable = None) -> GroupPermit:
        """Admit on every member now, or raise.

        Raises:
            RateLimitExceeded: a rate member does not admit now.
            WouldBlock: a concurrency member has no free slot.
        """
        c = check_cost(cost, self._max_cost, f"smallest member limit={self._max_cost:g}")
        loop = get_running_loop()
        now = loop.time()
        states = self._states(check_key(key), now)
        for st in states:
            if st.resuming:  # admissions stranded by a closed loop (State.reclaim)
                st.reclaim(loop)
        slot = now
        for st in states:
            if st.waiting():
                slot = max(slot, INF if isinstance(st, _SlotState) else _estimate(st, c, now))
            else:
                slot = max(slot, st.ready_at(c, now))
        if slot <= now + EPS:
            return self._commit_now(states, c, key, now)
        blocked = [m for m, st in zip(self._members, states, strict=True) if _blocks(st, c, now)]
        for m in blocked:
            m._rejected += 1
        # When the rate members admit, at the earliest (None: they admit now).
        rate_slot = max(
            (_estimate(st, c, now) for st in states if not isinstance(st, _SlotState)),
            default=now,
        )
        wait = rate_slot - now if rate_slot > now + EPS else None
        if any(isinstance(m, ConcurrencyLimiter) for m in blocked):
            raise WouldBlock(
                f"{self!r}: a concurrency member has no free slot for key {key!r}",
                retry_after=wait,
            )
        raise RateLimitExceeded(rate_slot - now)

    def pause(self, seconds: float, key: Hashable = None) -> None:
        """Pause every rate member on ``key`` (see :meth:`RateLimiter.pause`).

        Raises:
            ValueError: ``seconds`` is negative or not finite (also for a group with no
                rate member, where the pause does nothing).
            TypeError: ``key`` is not hashable.
        """
        seconds = _validate.number("seconds", seconds, inclusive=True)
        check_key(key)
        for r in self._rates:
            r.pause(seconds, key)

    async def __aenter__(self) -> None:
        await self.acquire()  # checks the cost: 1 may exceed a strict member's rate

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for s in self._sems:
            s._release(s._default)

    def __repr__(self) -> str:
        return f"<LimitGroup {' & '.join(repr(m) for m in self._members)}>"

    # -- internals ----------------------------------------------------------
    def _states(self, key: Hashable, now: float) -> tuple[State, ...]:
        return tuple(
            m._state(key if keyed else None, now)
            for m, keyed in zip(self._members, self._keyed, strict=True)
        )

    def _commit_now(
        self, states: tuple[State, ...], cost: float, key: Hashable, now: float
    ) -> GroupPermit:
        tokens = [st.commit(cost, now) for st in states]
        for m in self._members:
            m._admitted += 1
        return self._permit(states, tokens, cost, key)

    def _permit(
        self, states: tuple[State, ...], tokens: list[Any], cost: float, key: Hashable
    ) -> GroupPermit:
        rate: list[RatePermit] = []
        slots: list[ConcurrencyPermit] = []
        for m, st, tok in zip(self._members, states, tokens, strict=True):
            if isinstance(m, RateLimiter):
                rate.append(RatePermit(m, st, cost, tok))
            else:
                assert isinstance(st, _SlotState)
                slots.append(ConcurrencyPermit(m, st))
        return GroupPermit(key, rate, slots)

    def _expire(self, w: Waiter, loop: AbstractEventLoop) -> None:
        w.timer = None
        if w.gone or w.fut.done():
            return
        pump(w.states, loop)  # it may be admissible exactly now
        if w.fut.done():  # admitted
            return
        now = loop.time()
        exc: BaseException
        if self._sems:
            exc = LimitTimeout(f"{self!r}: not admitted within the timeout")
            for s in self._sems:
                s._timeouts += 1
        else:
            slot = max(st.ready_at(w.cost, now) for st in w.states)
            exc = RateLimitExceeded(max(0.0, slot - now))
        for r in self._rates:
            r._rejected += 1
        fail(w, exc, loop)

    def _give_back(
        self, states: tuple[State, ...], tokens: list[Any], cost: float, loop: Any
    ) -> None:
        for m, st, tok in zip(self._members, states, tokens, strict=True):
            if isinstance(m, RateLimiter):
                m._give_back(st, tok, cost, loop)
            else:
                assert isinstance(st, _SlotState)
                m._release(st)

    async def _acquire(self, cost: float, key: Hashable, timeout: float | None) -> GroupPermit:
        loop = get_running_loop()
        now = loop.time()
        states = self._states(key, now)
        for st in states:
            if st.resuming:  # admissions stranded by a closed loop (State.reclaim)
                st.reclaim(loop)
        if all(st.waiting() == 0 for st in states) and all(
            st.ready_at(cost, now) <= now + EPS for st in states
        ):
            return self._commit_now(states, cost, key, now)
        if timeout is not None:
            rate_slot = max(
                (_estimate(st, cost, now) for st in states if not isinstance(st, _SlotState)),
                default=now,
            )
            if rate_slot > now + timeout + EPS:
                for r in self._rates:
                    r._rejected += 1
                raise RateLimitExceeded(rate_slot - now)
        fut: Any = loop.create_future()
        w = Waiter(fut, cost, states, now, None if timeout is None else now + timeout)
        for st in states:
            st.enqueue(w)
        if timeout is not None:
            w.timer = loop.call_at(now + timeout, self._expire, w, loop)
        pump(states, loop)
        # Admitted, but cancelled before it could run: every member's admission is undone.
        await admission(w, loop, lambda lp: self._give_back(states, w.tokens, cost, lp))
        return self._permit(states, w.tokens, cost, key)


def _estimate(st: State, cost: float, now: float) -> float:
    est = getattr(st, "estimate", None)
    if est is None:
        return now
    result: float = est(cost, now)
    return result


def _blocks(st: State, cost: float, now: float) -> bool:
    if st.waiting():
        return True
    return st.ready_at(cost, now) > now + EPS
