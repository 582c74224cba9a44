"""A RedisRateLimiter object's sleeping waiters on one key, and the one timer that wakes them.

Giving a waiter's reservation back moves every later waiter up by its cost. Doing that entry by
entry (and re-arming a timer per entry) costs the event loop time in proportion to the number of
sleepers at each cancellation; here a move is one range update of a segment tree, and the key
has one timer, armed for its earliest sleeper.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from bisect import bisect_right
from typing import Any, Final

from ._pipe import wake

#: A timer due within this much of the loop's time runs in the current pass (asyncio's rule).
RESOLUTION: Final = time.get_clock_info("monotonic").resolution
_INF: Final = float("inf")


class _Entry:
    """A sleeping waiter: its reservation, and where it is in its chain's tree.

    ``slot``, ``tat`` and ``deadline`` are read through the moves made since the reservation:
    each move by ``d`` (µs) makes the slot ``max(slot - d, pu)``, and since ``d > 0`` a sequence
    of moves composes into one: ``max(slot0 - (d1 + d2 + ...), pu)``. ``tat`` moves by the full
    sum, ``deadline`` (loop time) by what the slot moved.
    """

    __slots__ = (
        "base",
        "chain",
        "cost",
        "deadline0",
        "fut",
        "new",
        "old",
        "pos",
        "pu",
        "pure",
        "seq",
        "shift",
        "slot0",
        "tat0",
        "timed",
    )

    def __init__(
        self,
        seq: int,
        cost: float,
        old: str | None,
        new: str,
        fields: list[str],
        pure: bool,
        deadline: float,
    ) -> None:
        self.seq = seq
        self.cost = cost
        self.old = "" if old is None else old  # the state before the reservation ('' = none)
        self.new = new  # the state the reservation wrote
        self.slot0 = float(fields[0])  # its slot, server microseconds, as reserved
        self.tat0 = float(fields[1])  # tat right after it, as reserved
        self.pu = float(fields[4])  # paused_until when it was made
        self.pure = pure  # scheduled by plain GCRA: same epoch before and after (no pause jump)
        self.deadline0 = deadline  # loop time it sleeps until, as reserved
        self.chain: _Chain | None = None  # while it is in one (moves still reach it)
        self.fut: asyncio.Future[Any] | None = None
        self.pos = -1  # its leaf in the chain's tree
        self.base = 0.0  # the tree's moves over its leaf when it got it
        self.shift = 0.0  # moves counted before that (µs)
        self.timed = 0  # 1: the tree's timer wakes it; 2: the fixed heap's; 0: nothing does

    @property
    def moved(self) -> float:
        """How far (µs) later waiters' give-backs moved it up since its reservation."""
        chain = self.chain
        if chain is None:
            return self.shift
        return self.shift + chain._above(self.pos) - self.base

    @property
    def slot(self) -> float:
        moved = self.moved
        return self.slot0 if moved == 0 else max(self.slot0 - moved, self.pu)

    @property
    def tat(self) -> float:  # tat right after it (moved back by later give-backs)
        return self.tat0 - self.moved

    @property
    def deadline(self) -> float:  # the loop time it sleeps until
        return self.deadline0 - (self.slot0 - self.slot) / 1e6


class _Chain:
    """This object's view of one key while it has sleeping waiters there.

    ``last`` is the state this object last wrote or saw written right after its own previous
    write (None: unknown); ``brk`` the sequence number of the latest reservation whose previous
    state was not ``last`` - someone else wrote on the key just before it. A waiter with no break
    after it has only this object's reservations behind it, so giving its reservation back can
    move them up (see RedisRateLimiter._give_back). ``used`` is the sequence number of the
    latest reservation admitted after sleeping. ``entries`` are in reservation order (add and
    discard them by :meth:`add` and :meth:`discard`).

    The waiters' moves and wake-up times live in a segment tree over leaf positions (given in
    reservation order): a node's ``_tag`` is the move (µs) applied to its whole range, its
    ``_mn`` the earliest unclamped deadline (µs of loop time) below it, moves of the node
    included, those of its ancestors not. A waiter whose slot reached ``pu`` (clamped) no
    longer moves: it goes to ``_fixed``, a min-heap of (deadline, seq, entry). One loop timer
    is armed for the earliest of the two.
    """

    __slots__ = (
        "_armed",
        "_cap",
        "_fixed",
        "_leaves",
        "_loop",
        "_mn",
        "_n",
        "_seqs",
        "_tag",
        "_timer",
        "brk",
        "entries",
        "last",
        "seq",
        "used",
    )

    def __init__(self) -> None:
        self.last: str | None = None
        self.brk = 0
        self.seq = 0
        self.used = 0
        self.entries: dict[asyncio.Future[Any], _Entry] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._armed = 0.0
        self._fixed: list[tuple[float, int, _Entry]] = []
        self._cap = 0
        self._n = 0  # leaves given so far
        self._mn: list[float] = []
        self._tag: list[float] = []
        self._leaves: list[_Entry | None] = []
        self._seqs: list[int] = []  # the seq of each leaf given (sorted)

    def note(self, old: str | None, new: str, cost: float, deadline: float) -> _Entry:
        """Record a reservation of this object (in reply order: see _Caller) and return it."""
        fields = new.split(" ")
        self.seq += 1
        # "slot tat hold epoch paused_until": an unchanged epoch means plain GCRA scheduled it.
        pure = old is not None and old.split(" ")[3] == fields[3]
        entry = _Entry(self.seq, cost, old, new, fields, pure, deadline)
        if old is None or old != self.last:
            self.brk = entry.seq  # someone else wrote on the key just before this reservation
        self.last = new
        return entry

    def orphaned(self) -> bool:
        """Whether the loop its waiters slept on was closed with them asleep: they never run
        again, and its timer cannot be armed (a new chain takes over the key)."""
        return self._loop is not None and self._loop.is_closed()

    def add(self, fut: asyncio.Future[Any], entry: _Entry) -> None:
        """Put ``entry`` (the latest noted) to sleep: ``fut`` is woken at its deadline."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        if self._n == self._cap:
            self._rebuild()
        self.entries[fut] = entry
        entry.fut = fut
        entry.chain = self
        entry.pos = pos = self._n
        self._n += 1
        self._leaves[pos] = entry
        self._seqs.append(entry.seq)
        entry.base = self._above(pos)  # (0: no move reached a leaf not given yet)
        entry.timed = 1
        self._set(pos, entry.deadline0 * 1e6 + entry.base)
        self._arm()

    def discard(self, fut: asyncio.Future[Any]) -> _Entry | None:
        """Take the waiter of ``fut`` out (its slot, tat and deadline stay as they are now)."""
        entry = self.entries.pop(fut, None)
        if entry is not None and entry.chain is self:
            self.unschedule(entry)
            entry.shift = entry.moved
            entry.chain = None
            self._leaves[entry.pos] = None
        return entry

    def unschedule(self, entry: _Entry) -> None:
        """Nothing is to wake ``entry`` any more (it is woken, or a pause wakes it)."""
        if entry.timed == 0:
            return
        if entry.timed == 1:
            self._set(entry.pos, _INF)
        entry.timed = 0
        self._arm()

    def wake_all(self, result: object) -> None:
        """Wake every sleeping waiter with ``result`` (a pause); the timer is stopped."""
        for fut, entry in self.entries.items():
            if entry.timed == 1:
                self._set(entry.pos, _INF)
            entry.timed = 0
            if not fut.done():
                fut.set_result(result)
        self._fixed.clear()
        self._arm()

    def can_move_up(self, entry: _Entry, due: bool) -> bool:
        """Whether giving ``entry`` back may move this object's later waiters up.

        It must not be the last write (that is restored exactly), its slot must not have come,
        plain GCRA must have scheduled it (no pause jump or restart) and every reservation made
        after it must be this object's own (no break after it).
        """
        return self.last != entry.new and not due and entry.pure and self.brk <= entry.seq

    def pause_give_back(self) -> tuple[str, str]:
        """What a pause that re-queues the sleeping waiters may give back: (expected, restored).

        The unbroken tail of this object's schedule, taken newest first: reservations of waiters
        still sleeping (their timer has not fired), with no admitted reservation after them and
        no other writer between them (only the oldest may follow someone else's write).
        Restoring the state from before the oldest of them undoes exactly these reservations
        (as RATE_CANCEL does one) provided the key still holds the state this object last wrote
        (compare-and-swap in RATE_PAUSE); ('', '') when there is nothing to give back.
        """
        if self.last is None:
            return "", ""
        first = None
        for fut, e in reversed(self.entries.items()):
            # Admitted (or about to be), or someone else wrote after it: the tail ends here.
            if fut.done() or e.seq <= self.used or e.seq < self.brk:
                break
            first = e
        if first is None:
            return "", ""
        return self.last, first.old

    def move_up(self, entry: _Entry, t_us: float) -> None:
        """Move this object's waiters after ``entry`` up by its cost (and wake them earlier).

        The result is the schedule in which ``entry`` had been made right after them and left
        unused, so it keeps the window bound whether or not Redis also lowers the key's debt.
        """
        shift = entry.cost * t_us
        lo = bisect_right(self._seqs, entry.seq) + self._cap
        hi = self._n + self._cap
        if lo >= hi:
            return
        mn, tag = self._mn, self._tag
        a, b = lo, hi
        while a < b:
            if a & 1:
                tag[a] += shift
                mn[a] -= shift
                a += 1
            if b & 1:
                b -= 1
                tag[b] += shift
                mn[b] -= shift
            a >>= 1
            b >>= 1
        self._pull(lo)
        self._pull(hi - 1)
        self._arm()

    # -- the tree and the timer ---------------------------------------------------------------
    def _above(self, pos: int) -> float:
        """The moves (µs) applied over leaf ``pos``: its own and its ancestors'."""
        i = pos + self._cap
        tag = self._tag
        total = 0.0
        while i:
            total += tag[i]
            i >>= 1
        return total

    def _set(self, pos: int, value: float) -> None:
        """Leaf ``pos`` holds ``value`` (µs of loop time, before its ancestors' moves)."""
        i = pos + self._cap
        self._mn[i] = value - self._tag[i]
        self._pull(i)

    def _pull(self, i: int) -> None:
        mn, tag = self._mn, self._tag
        i >>= 1
        while i:
            left, right = mn[2 * i], mn[2 * i + 1]
            mn[i] = (left if left < right else right) - tag[i]
            i >>= 1

    def _rebuild(self) -> None:
        """New leaves for the waiters left (their moves so far counted in ``shift``)."""
        live = [e for e in self._leaves[: self._n] if e is not None]
        cap = 8  # at least twice the waiters left: a rebuild per as many additions
        while cap < 2 * len(live) + 4:
            cap *= 2
        for e in live:
            e.shift = e.moved
            e.base = 0.0
        self._cap, self._n = cap, len(live)
        self._mn = [_INF] * (2 * cap)
        self._tag = [0.0] * (2 * cap)
        self._leaves = [None] * cap
        self._seqs = []
        for pos, e in enumerate(live):
            e.pos = pos
            self._leaves[pos] = e
            self._seqs.append(e.seq)
            if e.timed == 1:
                self._mn[pos + cap] = e.deadline0 * 1e6 - e.shift
        mn = self._mn
        for i in range(cap - 1, 0, -1):
            mn[i] = min(mn[2 * i], mn[2 * i + 1])
        self._fixed = [item for item in self._fixed if item[2].timed == 2]
        heapq.heapify(self._fixed)

    def _earliest(self) -> _Entry | None:
        """The sleeping waiter with the earliest deadline (None: none sleeps)."""
        mn, cap = self._mn, self._cap
        while cap and mn[1] < _INF:
            i = 1
            while i < cap:
                i = 2 * i if mn[2 * i] <= mn[2 * i + 1] else 2 * i + 1
            e = self._leaves[i - cap]
            assert e is not None
            moved = e.moved
            if moved == 0 or e.slot0 - moved >= e.pu:
                break
            # Its slot reached pu: later moves leave it there, its deadline is fixed.
            self._set(e.pos, _INF)
            e.timed = 2
            heapq.heappush(self._fixed, (e.deadline, e.seq, e))
        else:
            e = None
        fixed = self._fixed
        while fixed and fixed[0][2].timed != 2:
            heapq.heappop(fixed)
        if fixed and (e is None or (fixed[0][0], fixed[0][1]) < (e.deadline, e.seq)):
            return fixed[0][2]
        return e

    def _arm(self) -> None:
        if self.orphaned():  # (its sleepers let go as their coroutines are collected)
            self._timer = None
            return
        first = self._earliest()
        timer = self._timer
        if first is None:
            if timer is not None:
                timer.cancel()
                self._timer = None
            return
        when = first.deadline
        if timer is not None:
            if self._armed == when:
                return
            timer.cancel()
        assert self._loop is not None
        self._armed = when
        self._timer = self._loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._timer = None
        assert self._loop is not None
        end = self._loop.time() + RESOLUTION
        while (first := self._earliest()) is not None and first.deadline < end:
            if first.timed == 1:
                self._set(first.pos, _INF)
            first.timed = 0
            assert first.fut is not None
            wake(first.fut)
        self._arm()
