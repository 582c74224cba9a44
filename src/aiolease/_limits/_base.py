"""The waiting machinery shared by every local limiter.

Data structure (per limiter, per key) — a :class:`State`:

* ``queue``: a FIFO deque of :class:`Waiter` objects in arrival order. Only the
  waiter at the head of a queue can be admitted; newcomers never barge ahead.
* ``timer``: at most ONE loop timer per state, armed for the instant the head
  can be admitted. Waiters further back have no timer: each simply awaits its
  own future, which is resolved exactly once, when it is admitted (or fails).
  So a waiter sleeps once, there is no polling, and nothing is ordered by size.
* the committed limit state (a GCRA theoretical arrival time, a sliding log, or
  a slot count) holds admitted acquisitions only. Waiting reservations are a
  separate running sum (``pending``), so the slot a newcomer will get is known
  on arrival (for ``timeout`` fail-fast) without charging anything yet.

Giving a reservation back is therefore O(1): a cancelled waiter is marked
``gone`` and its cost is subtracted from ``pending``; nothing committed has to
be undone, and the waiters behind it are *not* individually re-timed, because
only the head has a timer — the head's slot is recomputed from the committed
state when it becomes the head. (Marked waiters are dropped lazily when they
reach the head.)

A waiter may belong to several states at once (``LimitGroup``: several rate
limits, or a rate and a concurrency limit). It is admitted at one instant by
all of them or by none, and only once it is the head of every queue it is in.
Arrival order is one total order, so the oldest waiter is at the head of all
its queues and there is no deadlock.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Iterable
from typing import Any

from .._metrics import LimiterObserver

__all__ = [
    "EPS",
    "INF",
    "SWEEP_FLOOR",
    "LimiterBase",
    "State",
    "Waiter",
    "admission",
    "fail",
    "pump",
    "reclaim_here",
    "withdraw",
]

#: Tolerance (seconds) when comparing the loop clock with a computed instant:
#: a timer may fire a clock-resolution early, and float arithmetic on the TAT
#: may leave the slot an ulp past the timer's deadline.
EPS = 1e-9
INF = float("inf")


#: Below this many key states no full sweep is attempted.
SWEEP_FLOOR = 1024


class Waiter:
    """One task waiting for admission by one or more states."""

    __slots__ = (
        "admitted_at",
        "arrived",
        "cost",
        "deadline",
        "fut",
        "give_back",
        "gone",
        "states",
        "task",
        "timer",
        "tokens",
    )

    def __init__(
        self,
        fut: asyncio.Future[None],
        cost: float,
        states: tuple[State, ...],
        arrived: float,
        deadline: float | None,
    ) -> None:
        self.fut = fut
        self.cost = cost
        self.states = states
        self.arrived = arrived
        self.deadline = deadline
        #: True once the waiter is no longer counted in its states (admitted,
        #: withdrawn or failed); its queue entries are then dropped lazily.
        self.gone = False
        #: deadline timer; only group waiters and concurrency waiters have one.
        self.timer: asyncio.TimerHandle | None = None
        #: what each state's commit returned (aligned with ``states``).
        self.tokens: list[Any] = []
        self.admitted_at = 0.0
        self.task = asyncio.current_task()
        #: what undoes its admission, given a running loop (set by :func:`admission`).
        self.give_back: Callable[[asyncio.AbstractEventLoop], None] | None = None


class LimiterBase:
    """Counters for ``statistics()`` and the map of key states every limiter keeps."""

    __slots__ = (
        "__weakref__",
        "_admitted",
        "_cancelled",
        "_default",
        "_observer",
        "_rejected",
        "_states",
        "_sweep_mark",
        "_wait_max",
        "_wait_total",
        "_waiting",
    )

    _default: Any

    def __init__(self) -> None:
        self._admitted = 0
        self._rejected = 0
        self._cancelled = 0
        self._waiting = 0
        self._wait_total = 0.0
        self._wait_max = 0.0
        # The default key (None) lives outside the map and is never evicted.
        self._states: OrderedDict[Hashable, Any] = OrderedDict()
        self._sweep_mark = SWEEP_FLOOR
        self._observer: LimiterObserver | None = None  # set by _metrics.register_limiter

    def _new_state(self, key: Hashable) -> Any:
        raise NotImplementedError

    def _state(self, key: Hashable, now: float) -> Any:
        if key is None:
            return self._default
        states = self._states
        st = states.get(key)
        if st is None:
            st = states[key] = self._new_state(key)
            self._sweep(st, now)
        return st

    def _sweep(self, new: State, now: float) -> None:
        """Forget idle keys: two of the oldest per new key, and all when the map doubles.

        Amortised O(1) per new key; the map holds at most about twice the keys
        that are not idle (waiting, in debt, paused or holding slots).
        """
        states = self._states
        if len(states) >= self._sweep_mark:
            for k in [k for k, s in states.items() if s is not new and s.idle(now)]:
                states.pop(k).evicted = True
            self._sweep_mark = max(SWEEP_FLOOR, 2 * len(states))
            return
        for _ in range(2):
            if len(states) < 2:
                return
            k = next(iter(states))
            old = states[k]
            if old is new:
                return
            if old.idle(now):
                del states[k]
                old.evicted = True
            else:
                states.move_to_end(k)

    def _on_admit_waiter(self, waited: float) -> None:
        """Count a waiter's admission, once its caller has it (see :func:`admission`)."""
        self._admitted += 1
        self._wait_total += waited
        if waited > self._wait_max:
            self._wait_max = waited
        if self._observer is not None:
            self._observer.queued(waited)

    def _describe(self) -> str:
        return repr(self)

    def _waiter_leaks(self) -> list[str]:
        problems: list[str] = []
        for st in [self._default, *self._states.values()]:
            for w in st.waiters():
                where = f"key {st.key!r}" if st.key is not None else "the default key"
                problems.append(f"{self._describe()}: task {w.task!r} still waiting on {where}")
        return problems


class State:
    """The per-key queue and timer; subclasses hold the committed limit state."""

    __slots__ = (
        "evicted",
        "fired",
        "key",
        "nwait",
        "owner",
        "pending",
        "queue",
        "resuming",
        "timer",
        "timer_when",
    )

    def __init__(self, owner: LimiterBase, key: Hashable) -> None:
        self.owner = owner
        self.key = key
        # Created on the first waiter: most keys never have one, and an empty
        # deque costs ~600 bytes (memory is bounded per key, 100 000s of keys).
        self.queue: deque[Waiter] | None = None
        self.nwait = 0  # live waiters
        self.pending = 0.0  # summed cost of live waiters
        self.timer: asyncio.TimerHandle | None = None
        self.timer_when = 0.0
        self.fired: float | None = None  # timer_when while its timer's callback runs
        self.evicted = False
        # Waiters admitted whose task has not resumed yet (None while there are none).
        self.resuming: set[Waiter] | None = None

    # -- to implement -------------------------------------------------------
    def ready_at(self, cost: float, now: float) -> float:
        """Earliest instant (>= now, or INF) a head asking ``cost`` can be admitted."""
        raise NotImplementedError

    def commit(self, cost: float, now: float, fired: float | None = None) -> Any:
        """Record an admission at ``now``; the result is kept in the permit.

        ``fired``: the instant this state's timer was armed for, when the
        admission comes from that timer (which may fire a little late).
        """
        raise NotImplementedError

    def idle(self, now: float) -> bool:
        """No waiter and no pending debt: the state can be forgotten."""
        raise NotImplementedError

    # -- queue --------------------------------------------------------------
    def head(self) -> Waiter | None:
        q = self.queue
        while q:
            w = q[0]
            if not w.gone:
                if w.fut.get_loop().is_closed():
                    # Left on an event loop closed since: its task never runs again, so
                    # nothing else would ever take it out.
                    _forget(w, cancelled=True)
                    for st in w.states:
                        st.disarm()  # (a timer of that loop; the next pump arms a live one)
                elif not w.fut.done():
                    return w
                # A waiter whose future is done was cancelled (or failed) and will
                # withdraw itself when its task runs; it must not be admitted.
            q.popleft()
        return None

    def waiting(self) -> int:
        """The live waiters (``nwait``), once the ones left on a closed event loop are dropped."""
        if self.nwait:
            self.head()
        return self.nwait

    def waiters(self) -> list[Waiter]:
        """The live waiters, oldest first."""
        return [w for w in self.queue or () if not (w.gone or w.fut.done())]

    def enqueue(self, w: Waiter) -> None:
        if self.queue is None:
            self.queue = deque()
        self.queue.append(w)
        self.nwait += 1
        self.pending += w.cost
        self.owner._waiting += 1

    def arm(self, when: float, loop: asyncio.AbstractEventLoop) -> None:
        if self.timer is not None:
            if self.timer_when == when:
                return
            self.timer.cancel()
        self.timer_when = when
        self.timer = loop.call_at(when, self._fire, loop)

    def disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        self.timer = None
        self.fired = self.timer_when
        try:
            pump((self,), loop)
        finally:
            self.fired = None

    def reclaim(self, loop: asyncio.AbstractEventLoop) -> None:
        """Undo the admissions of waiters whose event loop closed before their task
        resumed (``loop``: the running one, where what is given back goes on).

        Such a task never runs again, so its caller never gets the admission: counted
        cancelled, as a waiter left queued on a closed loop is (:meth:`head`), and given
        back (the slot passed on, the cost refunded). The loop-side paths call this
        (:func:`pump`, a concurrency limiter's admission); a reader of the statistics on
        another thread sees it at their next turn.
        """
        if not self.resuming:
            return
        for w in [w for w in self.resuming if w.fut.get_loop().is_closed()]:
            _resumed(w)
            for st in w.states:
                st.owner._cancelled += 1
            assert w.give_back is not None
            w.give_back(loop)


def _try_admit(w: Waiter, now: float, loop: asyncio.AbstractEventLoop) -> bool:
    states = w.states
    for st in states:
        if st.head() is not w:
            return False
    ready = True
    for st in states:
        at = st.ready_at(w.cost, now)
        if at > now + EPS:
            ready = False
            if at == INF:
                st.disarm()
            else:
                st.arm(at, loop)
        else:
            st.disarm()
    if not ready:
        return False
    w.gone = True
    w.admitted_at = now
    for st in states:
        assert st.queue is not None
        st.queue.popleft()
        st.nwait -= 1
        st.pending -= w.cost
        w.tokens.append(st.commit(w.cost, now, st.fired))
        st.owner._waiting -= 1
    if w.timer is not None:
        w.timer.cancel()
        w.timer = None
    # Known until its task resumes (State.reclaim); the task itself is let go (only leak
    # reports of queued waiters name it): one dropped on a closed loop is still collected,
    # which closes its coroutine and so undoes the admission (see admission()).
    w.task = None
    for st in states:
        if st.resuming is None:
            st.resuming = set()
        st.resuming.add(w)
    w.fut.set_result(None)
    return True


def pump(states: Iterable[State], loop: asyncio.AbstractEventLoop) -> None:
    """Admit every head that can go now; arm timers for the heads that cannot."""
    now = loop.time()
    work = list(states)
    for st in work:  # once per call: those admitted below are on open loops (see head)
        if st.resuming:
            st.reclaim(loop)
    while work:
        st = work.pop()
        w = st.head()
        if w is None:
            st.disarm()
            st.pending = 0.0 if st.nwait == 0 else st.pending  # wipe float residue
            continue
        if _try_admit(w, now, loop):
            work.extend(w.states)


async def admission(
    w: Waiter,
    loop: asyncio.AbstractEventLoop,
    give_back: Callable[[asyncio.AbstractEventLoop], None],
) -> None:
    """Wait for ``w``'s admission, and count its outcome where its caller learns it.

    THE place a queued acquisition is counted in ``statistics()`` (and so in the
    metrics): admitted when its task resumes with the admission, cancelled when it
    is cancelled while queued, or admitted by :func:`pump` and cancelled before it
    resumed — its caller then gets ``CancelledError``, so the admission is undone by
    ``give_back(loop)`` (the slot passed on, the cost refunded) and counted as
    cancelled, not admitted. An admission whose loop closed before its task resumed is
    undone and counted the same way by :meth:`State.reclaim`, once. A failure set by
    :func:`fail` is counted by whoever set it.
    """
    fut = w.fut
    w.give_back = give_back
    try:
        await fut
    except BaseException:
        if not w.gone:
            withdraw(w, loop, cancelled=True)
        elif _resumed(w):
            for st in w.states:
                st.owner._cancelled += 1
            give_back(loop)
        raise
    _resumed(w)  # (a loop closed never resumes a task: its admission stands)
    waited = w.admitted_at - w.arrived
    for st in w.states:
        st.owner._on_admit_waiter(waited)


def _resumed(w: Waiter) -> bool:
    """Take an admitted ``w`` out of its states' ``resuming``; False: it was not there
    (not admitted, or its admission already undone by :meth:`State.reclaim`)."""
    found = False
    for st in w.states:
        if st.resuming is not None and w in st.resuming:
            st.resuming.discard(w)
            found = True
    return found


def reclaim_here(st: State) -> bool:
    """In an admission's failure path: undo the admissions on ``st`` stranded by a
    closed loop (:meth:`State.reclaim`), if any and a loop runs here; True when one was,
    so the admission is worth trying again."""
    if not st.resuming:
        return False
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return False
    before = len(st.resuming)
    st.reclaim(loop)
    return len(st.resuming) < before


def withdraw(w: Waiter, loop: asyncio.AbstractEventLoop, *, cancelled: bool) -> None:
    """Take a waiter that was not admitted out of its states (its reservation is given back)."""
    if w.gone:
        return
    _forget(w, cancelled=cancelled)
    pump(w.states, loop)


def _forget(w: Waiter, *, cancelled: bool) -> None:
    """Stop counting a waiter in its states (its queue entries are dropped lazily)."""
    w.gone = True
    if w.timer is not None:
        w.timer.cancel()
        w.timer = None
    for st in w.states:
        st.nwait -= 1
        st.pending -= w.cost
        st.owner._waiting -= 1
        if cancelled:
            st.owner._cancelled += 1


def fail(w: Waiter, exc: BaseException, loop: asyncio.AbstractEventLoop) -> None:
    """Fail a waiter with ``exc`` (deadline passed, or a pause pushed it past its timeout).

    The caller counts the failure in the statistics.
    """
    if w.gone or w.fut.done():
        return
    withdraw(w, loop, cancelled=False)
    w.fut.set_exception(exc)
