"""RateLimiter: GCRA (and a strict sliding-window mode), reservation based, FIFO per key."""

from __future__ import annotations

import bisect
import math
from asyncio import get_running_loop
from collections import deque
from collections.abc import Generator, Hashable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from .. import _metrics, _tracking, _validate
from .._errors import RateLimitExceeded
from .._tx_options import check_flag
from .._validate import check_cost, check_key, check_name
from ._base import (
    EPS,
    INF,
    LimiterBase,
    State,
    Waiter,
    admission,
    fail,
    pump,
    reclaim_here,
)

__all__ = ["RateLimiter", "RateLimiterStatistics", "RatePermit"]

#: Timer lateness a GCRA waiter's admission may absorb (see ``_GcraState.commit``):
#: an idle loop's timer resolution. CPython's epoll selector sleeps in whole
#: milliseconds rounded up, and for some durations one more (it rounds the seconds up
#: to milliseconds, converts them back to a float just above and ``epoll.poll`` rounds
#: up again), so a timer fires up to about 2 ms late; the rest covers the kernel's
#: wake-up and the callbacks that run before the timer's in its loop iteration.
_LATE_GRACE = 0.003

#: Most debt records kept per key for refunds (see ``_GcraState.debts``).
_MAX_DEBTS = 64


@dataclass(frozen=True, slots=True)
class RateLimiterStatistics:
    """A snapshot of a :class:`RateLimiter`.

    Attributes:
        rate: admissions (weighted by cost) per ``per`` seconds.
        per: the period of ``rate``, seconds.
        burst: the most cost admitted at once (GCRA); 1 in strict mode.
        strict: whether the limiter counts over a sliding window.
        admitted: acquisitions admitted so far (a count, not a cost).
        rejected: ``RateLimitExceeded`` raised (``acquire_nowait``, timeout fail-fast,
            a waiter pushed past its timeout by ``pause`` or ``settle``).
        cancelled: waiters cancelled before they resumed admitted (one admitted in the step
            it was cancelled included: its cost was given back).
        waiting: tasks waiting now, over every key.
        wait_time_total: seconds waited by the admitted waiters together.
        wait_time_max: the longest single wait, seconds.
        keys: per-key states held in memory (the default key not counted).
    """

    rate: float
    per: float
    burst: float
    strict: bool
    admitted: int
    rejected: int
    cancelled: int
    waiting: int
    wait_time_total: float
    wait_time_max: float
    keys: int


class _GcraState(State):
    """GCRA state of one key.

    ``tat`` is the theoretical arrival time of the admitted acquisitions only
    (waiting reservations are ``pending``). A cost ``c`` is admissible at ``t``
    iff ``t >= paused_until`` and ``max(tat, t) + c*T - t <= burst*T``.

    Refunds (``settle`` below the reserved cost, or a task cancelled right
    after admission) must not let the window bound be exceeded: a refund of
    ``d`` on an acquisition admitted at ``a`` is only worth what later
    admissions have not already absorbed, i.e. ``min(d, debt_k)`` over every
    admission ``k`` after ``a``, where ``debt_k = max(0, tat - t_k)`` just
    before it (GCRA's clamp is non-expansive, so the gap a refund could open
    shrinks to the debt at each later admission). ``clamp_at`` is the last
    admission with zero debt; ``debts`` a monotonic stack of ``(t_k, debt_k)``
    with increasing debt, whose first entry after ``a`` is that minimum.
    """

    __slots__ = ("clamp_at", "debts", "paused_until", "tat")

    owner: RateLimiter

    def __init__(self, owner: RateLimiter, key: Hashable) -> None:
        super().__init__(owner, key)
        self.tat = -INF
        self.paused_until = -INF
        self.clamp_at = -INF
        self.debts: list[tuple[float, float]] | None = None  # created when first needed

    def ready_at(self, cost: float, now: float) -> float:
        o = self.owner
        slot = self.tat + cost * o._T - o._tau
        pu = self.paused_until
        if pu > slot:
            slot = pu
        return slot if slot > now else now

    def admit(self, cost: float, now: float) -> float | None:
        """The one GCRA admission: commit ``cost`` now if nobody waits and it fits, else None.

        Every way in (``async with``, ``acquire``, ``acquire_nowait``) tries this first and
        only queues (or raises) when it returns None. Returns the commit token.
        """
        o = self.owner
        if (
            (self.nwait and self.waiting())
            or self.paused_until > now + EPS
            or self.tat + cost * o._T - o._tau > now + EPS
        ):
            return self.admit(cost, now) if reclaim_here(self) else None
        o._admitted += 1
        return self.commit(cost, now)

    def commit(self, cost: float, now: float, fired: float | None = None) -> float:
        tat = self.tat
        if tat <= now:
            self.clamp_at = now  # older ``debts`` entries no longer matter
            # The head's timer (armed for ``fired``, its exact slot) fires late
            # by the loop's timer resolution (see ``_LATE_GRACE``). With
            # burst=1 every admission would carry that lag into the next slot
            # and the saturated rate would sag; dating the admission back to
            # the slot, by at most ``_grace`` (min(_LATE_GRACE, T/4)), keeps the
            # schedule, at the price of the window bound holding to within
            # grace * rate / per (< 1/4 unit). Lateness past the grace (a busy
            # loop) is lost. Under a virtual clock timers are never late.
            tat = now if fired is None else max(tat, fired, now - self.owner._grace)
        else:
            self._push_debt(now, tat - now)
        self.tat = tat + cost * self.owner._T
        return now

    def _push_debt(self, now: float, debt: float) -> None:
        debts = self.debts
        if debts is None:
            debts = self.debts = []
        while debts and debts[-1][1] >= debt:
            debts.pop()
        debts.append((now, debt))
        if len(debts) > _MAX_DEBTS:
            # Forgetting the oldest record is safe: acquisitions older than it
            # simply get no refund.
            t, _ = debts.pop(0)
            self.clamp_at = max(self.clamp_at, t)

    def refundable(self, admitted_at: float, amount: float) -> float:
        """How much of a refund of ``amount`` seconds the TAT may take back."""
        if self.evicted or self.clamp_at > admitted_at:
            return 0.0
        debts = self.debts or []
        i = bisect.bisect_right(debts, admitted_at, key=lambda d: d[0])
        if i < len(debts):
            amount = min(amount, debts[i][1])
        return max(0.0, amount)

    def refund(self, admitted_at: float, amount: float) -> float:
        give = self.refundable(admitted_at, amount)
        if give > 0:
            self.tat -= give
            # The later admissions' debts shrank by (at most) ``give`` too.
            old = self.debts or []
            new: list[tuple[float, float]] = []
            self.debts = new
            for t, d in old:
                if t > admitted_at:
                    d -= give
                    if d <= 0:
                        self.clamp_at = max(self.clamp_at, t)
                        new.clear()
                        continue
                while new and new[-1][1] >= d:
                    new.pop()
                new.append((t, d))
        return give

    def estimate(self, cost: float, now: float) -> float:
        """Slot a newcomer asking ``cost`` gets behind every live waiter."""
        o = self.owner
        pu = self.paused_until
        start = max(self.tat, now, pu)
        return max(now, pu, start + (self.pending + cost) * o._T - o._tau)

    def overdue(self, now: float) -> list[tuple[Waiter, float]]:
        """Waiters with a timeout whose slot now lies past their deadline."""
        o = self.owner
        pu = self.paused_until
        start = max(self.tat, now, pu)
        cum = 0.0
        out: list[tuple[Waiter, float]] = []
        for w in self.waiters():
            cum += w.cost
            if w.deadline is not None and w.timer is None:
                slot = max(now, pu, start + cum * o._T - o._tau)
                if slot > w.deadline + EPS:
                    out.append((w, slot))
                    cum -= w.cost
        return out

    def idle(self, now: float) -> bool:
        return self.nwait == 0 and self.tat <= now and self.paused_until <= now


class _WindowState(State):
    """Sliding-log state of one key (strict mode).

    ``log`` holds ``[t, cost]`` of the admissions of the last ``per`` seconds,
    oldest first; ``used`` is their summed cost. An admission at ``t`` counts
    in every window ``(t' - per, t']`` with ``t <= t' < t + per``.
    """

    __slots__ = ("log", "paused_until", "used")

    owner: RateLimiter

    def __init__(self, owner: RateLimiter, key: Hashable) -> None:
        super().__init__(owner, key)
        self.log: deque[list[float]] = deque()
        self.used = 0.0
        self.paused_until = -INF

    def _expire(self, now: float) -> None:
        log = self.log
        per = self.owner._per
        while log and log[0][0] + per <= now + EPS:
            self.used -= log.popleft()[1]
        if not log:
            self.used = 0.0

    def ready_at(self, cost: float, now: float) -> float:
        self._expire(now)
        return _next_slot(
            self.log,
            self.used,
            cost,
            max(now, self.paused_until),
            self.owner._per,
            self.owner._rate,
        )

    def admit(self, cost: float, now: float) -> list[float] | None:
        """The one sliding-window admission (see :meth:`_GcraState.admit`)."""
        if (self.nwait and self.waiting()) or self.ready_at(cost, now) > now + EPS:
            return self.admit(cost, now) if reclaim_here(self) else None
        self.owner._admitted += 1
        return self.commit(cost, now)

    def commit(self, cost: float, now: float, fired: float | None = None) -> list[float]:
        self._expire(now)
        entry = [now, cost]
        self.log.append(entry)
        self.used += cost
        return entry

    def _simulate(self, now: float, extra: float | None) -> list[tuple[Waiter | None, float]]:
        self._expire(now)
        per = self.owner._per
        limit = self.owner._rate
        log: deque[list[float]] = deque([e[0], e[1]] for e in self.log)
        used = self.used
        t = max(now, self.paused_until)
        out: list[tuple[Waiter | None, float]] = []
        items: list[tuple[Waiter | None, float]] = [(w, w.cost) for w in self.waiters()]
        if extra is not None:
            items.append((None, extra))
        for w, cost in items:
            while log and log[0][0] + per <= t + EPS:
                used -= log.popleft()[1]
            t = _next_slot(log, used, cost, t, per, limit)
            while log and log[0][0] + per <= t + EPS:
                used -= log.popleft()[1]
            if (
                w is not None
                and w.deadline is not None
                and w.timer is None
                and t > w.deadline + EPS
            ):
                out.append((w, t))
                continue  # it will fail: it takes no room
            log.append([t, cost])
            used += cost
            out.append((w, t))
        return out

    def estimate(self, cost: float, now: float) -> float:
        return self._simulate(now, cost)[-1][1]

    def overdue(self, now: float) -> list[tuple[Waiter, float]]:
        return [(w, t) for w, t in self._simulate(now, None) if w is not None and _overdue(w, t)]

    def idle(self, now: float) -> bool:
        if self.nwait or self.paused_until > now:
            return False
        self._expire(now)
        return not self.log


def _overdue(w: Waiter, slot: float) -> bool:
    """A single-limiter waiter with a timeout whose slot lies past its deadline."""
    return w.deadline is not None and w.timer is None and slot > w.deadline + EPS


def _next_slot(
    log: deque[list[float]], used: float, cost: float, t: float, per: float, limit: float
) -> float:
    """Earliest instant >= t at which ``cost`` fits in the window (log already expired at t);
    INF when it can never fit (more than ``limit``)."""
    if cost > limit + EPS:
        return INF
    need = used + cost - limit
    if need <= EPS:
        return t
    acc = 0.0
    for e in log:
        acc += e[1]
        if acc >= need - EPS:
            return max(t, e[0] + per)
    return max(t, log[-1][0] + per) if log else t


class RatePermit:
    """An admitted rate-limited acquisition.

    Attributes:
        cost: the cost charged for it (changed by :meth:`settle`).
        key: the key it was charged to.
    """

    __slots__ = ("_limiter", "_state", "_token", "cost", "key")

    def __init__(self, limiter: RateLimiter, state: State, cost: float, token: Any) -> None:
        self._limiter = limiter
        self._state = state
        self._token = token
        self.cost = cost
        self.key = state.key

    def settle(self, actual_cost: float) -> None:
        """Charge or refund the difference between the reserved and the actual cost.

        For APIs metered after the call (e.g. LLM tokens): reserve an estimate,
        then settle with what the call really used. A charge pushes the key's
        next admissions later at once; a refund lets them in earlier, but never
        so that the window bound is exceeded (a refund that later admissions
        already made up for is not given). May be called again; each call
        settles against the cost the previous one left.

        Args:
            actual_cost: the real cost, a finite number >= 0 (it may exceed the burst).

        Raises:
            ValueError: ``actual_cost`` is negative or not finite, or (GCRA) so large that
                ``actual_cost * per / rate`` seconds is beyond any float.
            RuntimeError: called outside a running event loop.
        """
        actual = self._limiter._check_actual(actual_cost)
        diff = actual - self.cost
        if diff:
            self._limiter._settle(self, diff)
        self.cost = actual

    def __repr__(self) -> str:
        return f"<RatePermit cost={self.cost:g} key={self.key!r}>"


class _RateAcquire:
    """What :meth:`RateLimiter.acquire` returns: awaitable, and an async context manager."""

    __slots__ = ("_cost", "_key", "_limiter", "_timeout")

    def __init__(self, limiter: RateLimiter, cost: float, key: Hashable, timeout: float | None):
        self._limiter = limiter
        self._cost = cost
        self._key = key
        self._timeout = timeout

    def __await__(self) -> Generator[Any, None, RatePermit]:
        return self._limiter._acquire(self._cost, self._key, self._timeout).__await__()

    async def __aenter__(self) -> RatePermit:
        lim = self._limiter
        permit = lim._fast(self._cost, self._key)
        if permit is None:
            permit = await lim._acquire(self._cost, self._key, self._timeout)
        return permit

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


class RateLimiter(LimiterBase):
    """Admit at most ``rate`` acquisitions (weighted by cost) per ``per`` seconds.

    GCRA (the default): in any window of length ``W`` at most
    ``burst + rate * W / per`` is admitted, and exactly ``rate / per`` per
    second under saturation. ``strict=True`` instead admits at most ``rate``
    in *any* window of ``per`` seconds (a sliding log; memory grows with
    ``rate`` per busy key), for APIs that count that way.

    Each key (``key=`` of :meth:`acquire`; ``None`` is the default key) is an
    independent limit of the same shape. A waiter reserves its place on
    arrival and sleeps once, until exactly its slot; waiters are served
    first-in first-out per key; a waiter that is cancelled or times out gives
    its place back. Keys with nothing pending are forgotten, so memory stays
    bounded by the keys in use. No event loop is bound at construction; all
    time is the running loop's clock.

    Args:
        rate: admissions per ``per`` seconds, a finite number > 0.
        per: the period, seconds, a finite number > 0.
        burst: GCRA only: the most cost admitted at once (and the largest
            admissible ``cost``), a finite number >= 1.
        strict: count over a sliding window of ``per`` seconds instead.
        name: shown in ``repr`` and leak reports.

    Raises:
        ValueError: an argument is out of range, or ``burst`` is given with ``strict``.
        TypeError: an argument is not a number.
    """

    __slots__ = (
        "_T",
        "_burst",
        "_gcra",
        "_grace",
        "_grouped",
        "_max_cost",
        "_name",
        "_per",
        "_rate",
        "_strict",
        "_tau",
    )

    def __init__(
        self,
        rate: float,
        per: float = 1.0,
        *,
        burst: float = 1,
        strict: bool = False,
        name: str | None = None,
    ) -> None:
        super().__init__()
        self._rate = _validate.number("rate", rate)
        self._per = _validate.seconds("per", per)
        self._burst = _validate.number("burst", burst, minimum=1.0, inclusive=True)
        self._strict = check_flag("strict", strict)
        if self._strict and self._burst != 1:
            raise ValueError(
                f"burst={burst!r} has no meaning with strict=True: a strict limiter admits "
                f"at most rate={rate!r} in any window of per={per!r} seconds"
            )
        self._gcra = not self._strict
        self._T = self._per / self._rate
        if self._gcra and math.isinf(self._T):
            # inf - inf in the admission test would admit everything at once.
            raise ValueError(
                f"per / rate, the interval between admissions, must be a finite number, got "
                f"per={per!r} / rate={rate!r}"
            )
        self._tau = self._burst * self._T
        self._grace = min(_LATE_GRACE, self._T / 4)
        self._max_cost = self._rate if self._strict else self._burst
        self._name = check_name(name)
        # Set by LimitGroup: a group admitted late can push this limiter's
        # waiters past the slot estimated on arrival, so waiters with a
        # timeout then also get a deadline timer.
        self._grouped = False
        self._default = self._new_state(None)
        self._observer = _metrics.register_limiter(self, self._name)
        _tracking.track(self)

    # -- public API ---------------------------------------------------------
    def acquire(
        self, cost: float = 1, key: Hashable = None, timeout: float | None = None
    ) -> _RateAcquire:
        """Wait until ``cost`` is admitted on ``key``.

        Use as ``permit = await limiter.acquire(...)`` or
        ``async with limiter.acquire(...) as permit:``. Only the waiting (the
        ``await`` / ``__aenter__``) blocks and can be cancelled; cancelling it
        gives the reservation back. Leaving the block does nothing: an
        admitted acquisition is not returned (use ``permit.settle`` to adjust).

        Args:
            cost: how much of the rate this acquisition uses, in (0, burst]
                (in strict mode, (0, rate]).
            key: any hashable; each key is limited separately. ``None`` is the default key.
            timeout: the longest wait accepted, seconds. When the reserved slot is
                further away, ``RateLimitExceeded`` is raised at once, without waiting.

        Raises:
            ValueError: ``cost`` can never be admitted, or ``timeout`` is negative.
            TypeError: ``key`` is not hashable.
            RateLimitExceeded: (when awaited) the slot is more than ``timeout`` away;
                ``retry_after`` says when the same acquisition would be admitted.
        """
        c = (
            1.0
            if cost == 1 and type(cost) is int and self._max_cost >= 1
            else check_cost(cost, self._max_cost, self._what())
        )
        k = key if key is None else check_key(key)  # the default key needs no check
        return _RateAcquire(self, c, k, _validate.timeout("timeout", timeout))

    def acquire_nowait(self, cost: float = 1, key: Hashable = None) -> RatePermit:
        """Admit ``cost`` on ``key`` now, or raise.

        Raises:
            RateLimitExceeded: not admissible now (or other tasks are already
                waiting on this key); ``retry_after`` is when it would be.
            ValueError: ``cost`` can never be admitted.
            RuntimeError: no running event loop.
        """
        c = check_cost(cost, self._max_cost, self._what())
        now = get_running_loop().time()
        st = self._state(check_key(key), now)
        token = st.admit(c, now)
        if token is not None:
            return RatePermit(self, st, c, token)
        self._rejected += 1
        raise RateLimitExceeded(self._slot(st, c, now) - now)

    def pause(self, seconds: float, key: Hashable = None) -> None:
        """Admit nothing on ``key`` for ``seconds`` (feed a server's ``Retry-After`` back).

        Every waiter on the key holds off; a pause never shortens one already
        in force. Afterwards admissions resume at the configured rate (GCRA:
        up to ``burst`` at once). Waiters whose ``timeout`` the pause now
        exceeds fail at once with ``RateLimitExceeded``.

        Args:
            seconds: a finite number >= 0.
            key: the key to pause (``None``: the default key).

        Raises:
            ValueError: ``seconds`` is negative or not finite.
            RuntimeError: no running event loop.
        """
        s = _validate.number("seconds", seconds, inclusive=True)
        loop = get_running_loop()
        now = loop.time()
        st = self._state(check_key(key), now)
        until = now + s
        if until > st.paused_until:
            st.paused_until = until
            self._after_change(st, loop)

    def statistics(self) -> RateLimiterStatistics:
        """Return a snapshot of the counters (see :class:`RateLimiterStatistics`)."""
        return RateLimiterStatistics(
            rate=self._rate,
            per=self._per,
            burst=self._burst,
            strict=self._strict,
            admitted=self._admitted,
            rejected=self._rejected,
            cancelled=self._cancelled,
            waiting=self._waiting,
            wait_time_total=self._wait_total,
            wait_time_max=self._wait_max,
            keys=len(self._states),
        )

    async def __aenter__(self) -> None:
        # The never-limited fast path: the one admission, no task, future or permit.
        now = get_running_loop().time()
        if self._default.admit(1.0, now) is None:
            await self.acquire()  # checks the cost: 1 may exceed a strict limiter's rate

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def __repr__(self) -> str:
        name = f" {self._name!r}" if self._name else ""
        mode = "strict" if self._strict else f"burst={self._burst:g}"
        return (
            f"<RateLimiter{name} {self._rate:g}/{self._per:g}s {mode} "
            f"waiting={self._waiting} keys={len(self._states)}>"
        )

    # -- internals ----------------------------------------------------------
    def _check_actual(self, actual_cost: object) -> float:
        """The ``actual_cost`` of a settle: a finite number >= 0 whose interval is finite."""
        actual = _validate.number("actual_cost", actual_cost, inclusive=True)
        if self._gcra and math.isinf(actual * self._T):
            # The TAT would become inf, and a later refund make it inf - inf = nan.
            raise ValueError(
                f"actual_cost={actual_cost!r} is too large for {self!r}: it would charge "
                f"actual_cost * per / rate seconds, beyond any float"
            )
        return actual

    def _what(self) -> str:
        return f"rate={self._rate:g}" if self._strict else f"burst={self._burst:g}"

    def _describe(self) -> str:
        return repr(self)

    def _new_state(self, key: Hashable) -> _GcraState | _WindowState:
        return _WindowState(self, key) if self._strict else _GcraState(self, key)

    def _after_change(self, st: State, loop: Any) -> None:
        """The committed state or the pause moved: re-time the head, fail overdue waiters."""
        if st.nwait:
            now = loop.time()
            assert isinstance(st, (_GcraState, _WindowState))
            for w, slot in st.overdue(now):
                self._rejected += 1
                fail(w, RateLimitExceeded(slot - now), loop)
            pump((st,), loop)

    async def _acquire(self, cost: float, key: Hashable, timeout: float | None) -> RatePermit:
        loop = get_running_loop()
        now = loop.time()
        st = self._default if key is None else self._state(key, now)
        token = st.admit(cost, now)
        if token is not None:
            return RatePermit(self, st, cost, token)
        # The slot behind the queue only matters to a timeout (strict mode walks the queue).
        if timeout is not None and (slot := self._slot(st, cost, now)) > now + timeout + EPS:
            self._rejected += 1
            raise RateLimitExceeded(slot - now)
        fut: Any = loop.create_future()
        w = Waiter(fut, cost, (st,), now, None if timeout is None else now + timeout)
        st.enqueue(w)
        if timeout is not None and self._grouped:
            w.timer = loop.call_at(now + timeout, self._expire, w, loop)
        if st.nwait == 1:
            pump((st,), loop)  # it is the head: arm the timer for its slot
        # Admitted, but cancelled before it could run: the cost is given back.
        await admission(w, loop, lambda lp: self._give_back(st, w.tokens[0], cost, lp))
        return RatePermit(self, st, cost, w.tokens[0])

    def _fast(self, cost: float, key: Hashable) -> RatePermit | None:
        """The one admission on a key already known, without a coroutine; None: go the long way."""
        st = self._default if key is None else self._states.get(key)
        if st is None:
            return None
        now = get_running_loop().time()
        token = st.admit(cost, now)
        return None if token is None else RatePermit(self, st, cost, token)

    @staticmethod
    def _slot(st: _GcraState | _WindowState, cost: float, now: float) -> float:
        """When ``cost`` would be admitted on ``st``: behind its waiters, if any."""
        return st.ready_at(cost, now) if st.nwait == 0 else st.estimate(cost, now)

    def _expire(self, w: Waiter, loop: Any) -> None:
        w.timer = None
        if w.gone or w.fut.done():
            return
        pump(w.states, loop)  # its slot may be exactly now
        if not w.gone:
            now = loop.time()
            slot = max(st.ready_at(w.cost, now) for st in w.states)
            self._rejected += 1
            fail(w, RateLimitExceeded(max(0.0, slot - now)), loop)

    def _give_back(self, st: State, token: Any, cost: float, loop: Any) -> None:
        now = loop.time()
        if isinstance(st, _GcraState):
            if st.refund(token, cost * self._T) > 0:
                pump((st,), loop)
        elif isinstance(st, _WindowState) and not st.evicted and token[0] + self._per > now + EPS:
            # Still inside its window: the entry itself shrinks (exact).
            take = min(cost, token[1])
            token[1] -= take
            st.used -= take
            pump((st,), loop)

    def _settle(self, permit: RatePermit, diff: float) -> None:
        loop = get_running_loop()
        now = loop.time()
        st = permit._state
        if diff < 0:
            self._give_back(st, permit._token, -diff, loop)
            return
        if st.evicted:
            st = permit._state = self._state(permit.key, now)
            permit._token = st.commit(diff, now)
        elif isinstance(st, _WindowState) and permit._token[0] + self._per > now + EPS:
            permit._token[1] += diff
            st.used += diff
        else:
            # Charged as a further admission now (GCRA: the debt of the original
            # admission may already have been absorbed; charging from now is
            # never more permissive).
            token = st.commit(diff, now)
            if isinstance(st, _WindowState):
                permit._token = token
        self._after_change(st, loop)

    # -- leak tracking ------------------------------------------------------
    def _aiolease_leaks(self) -> list[str]:
        return self._waiter_leaks()
