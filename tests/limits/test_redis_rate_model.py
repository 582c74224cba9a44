"""The rate scripts against the window bound, on a clock the test drives (clock="client").

Each case runs a random sequence of acquisitions (waiting, fail-fast, nowait), cancellations of
pending reservations, settles (refunds and charges) and pauses straight through the Lua scripts,
at instants the test chooses, and records every admission at the slot the script gave it with
the cost the limiter counts for it (a settle refund lowers it by what the script applied). Then
no window of any length may hold more than ``burst + rate * W`` of that cost - the contract,
checked exactly, without real sleeping. Charges (settling above the reservation) cannot be
refused - the work is done - so they are not counted as admissions; they only make later
admissions wait (their effect is exercised, the bound is about what the limiter admits).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import redis.asyncio as redis_asyncio
from _redis_factories import delete_keys, redis_client, unique_name

from aiolease.redis import RedisRateLimiter
from aiolease.redis._chain import _Chain, _Entry
from aiolease.redis._pipe import text as _text
from aiolease.redis._scripts import RATE_ACQUIRE, RATE_CANCEL, RATE_PAUSE, RATE_SETTLE, RATE_SHIFT

pytestmark = pytest.mark.redis


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[redis_asyncio.Redis]:
    async with redis_client(redis_url) as c:
        yield c


@dataclass
class Admission:
    slot: float  # microseconds
    cost: float  # what the limiter counts at `slot`: reserved, minus the refunds it applied
    epoch: str
    old: str  # state before the reservation ('' = none), for a cancel
    new: str  # state after it
    actual: float = -1.0  # the permit's cost as the caller sees it (after settles)
    charged: float = 0.0  # applied charges not refunded since


def worst_excess(adm: list[Admission], rate_per_us: float, burst: float) -> float:
    """max over windows [a.slot, b.slot] of cost inside - (burst + rate * length)."""
    pts = sorted(adm, key=lambda a: a.slot)
    worst = -burst
    for i, first in enumerate(pts):
        total = 0.0
        for last in pts[i:]:
            total += last.cost
            allowed = burst + rate_per_us * (last.slot - first.slot)
            worst = max(worst, total - allowed)
    return worst


async def run_model(
    client: redis_asyncio.Redis, seed: int, log: list[str] | None = None
) -> tuple[float, list[Admission]]:
    """Run one random case; returns (worst excess over the bound, the admissions)."""
    rnd = random.Random(seed)
    rate, burst = 1.0, 3.0  # T = 1 s: state keys live long in real time (see below)
    name = unique_name("model")
    lim = RedisRateLimiter(client, name, rate, burst=burst, clock="client")
    rkey = lim._rkey(None)
    shape = lim._shape
    # Times start at the real wall clock so that the keys' real-time expiry (PX, computed from
    # the debt) never fires before the test's clock reaches it: the test's clock runs faster.
    now = start = time.time() * 1e6
    admitted: list[Admission] = []  # slot <= now
    pending: list[Admission] = []  # reserved, slot in the future

    def note(text: str) -> None:
        if log is not None:
            log.append(f"t={(now - start) / 1e6:6.2f} {text}")

    try:
        for _ in range(80):
            now += rnd.choice([0, 0, 50_000, 200_000, 700_000])
            for a in [p for p in pending if p.slot <= now]:
                pending.remove(a)
                admitted.append(a)
            op = rnd.random()
            t = repr(now).encode()
            if op < 0.5:
                cost = rnd.choice([1.0, 1.0, 2.0, 3.0, 0.5])
                max_wait = rnd.choice([b"-1", b"-1", b"0", b"1500000"])
                res = await lim._call(
                    RATE_ACQUIRE, (rkey,), (b"c", t, *shape, repr(cost), max_wait)
                )
                if type(res) is int and res >= 0:
                    admitted.append(Admission(now, cost, str(res), "", ""))
                    note(f"acquire {cost} now")
                elif type(res) is not int:
                    new = _text(res[2])
                    old = "" if res[1] is None else _text(res[1])
                    pending.append(Admission(now + res[0], cost, new.split(" ")[3], old, new))
                    note(f"acquire {cost} slot {(now + res[0] - start) / 1e6:.2f}")
                else:
                    note(f"acquire {cost} refused")
            elif op < 0.65 and pending:
                victim = rnd.choice(pending)
                r = await lim._call(RATE_CANCEL, (rkey,), (victim.old, victim.new))
                pending.remove(victim)  # refunded or not, it is never admitted
                note(f"cancel (slot {(victim.slot - start) / 1e6:.2f}) refunded={r}")
            elif op < 0.9 and admitted:
                a = rnd.choice(admitted)
                if a.actual < 0:
                    a.actual = a.cost
                actual = rnd.choice([0.0, 0.5, 1.0, a.actual + 1, a.actual + 2])
                delta = actual - a.actual
                a.actual = actual
                if delta:
                    applied = float(
                        _text(
                            await lim._call(
                                RATE_SETTLE, (rkey,), (b"c", t, *shape, repr(delta), a.epoch)
                            )
                        )
                    )
                    note(f"settle (slot {(a.slot - start) / 1e6:.2f}) {delta:+} applied {applied}")
                    if delta > 0:
                        assert applied == pytest.approx(delta)  # a charge always applies
                        a.charged += applied
                    else:
                        assert delta - 1e-9 <= applied <= 0
                        # a refund gives back the (uncounted) charges first, then reserved cost
                        back = min(a.charged, -applied)
                        a.charged -= back
                        a.cost = max(0.0, a.cost + applied + back)
            else:
                pause = rnd.choice([100_000, 800_000])
                await lim._call(
                    RATE_PAUSE, (rkey,), (b"c", t, *shape, repr(float(pause)), b"", b"")
                )
                note(f"pause {pause / 1e6}")
        admitted.extend(pending)  # reservations still pending will be admitted at their slots
        for a in admitted:
            a.slot = (a.slot - start) / 1e6 * 1e6  # relative, for readable failures
        return worst_excess(admitted, rate / 1e6, burst), admitted
    finally:
        await delete_keys(client, name)


@pytest.mark.parametrize("seed", range(40))
async def test_random_operations_never_exceed_the_window_bound(
    client: redis_asyncio.Redis, seed: int
) -> None:
    excess, _ = await run_model(client, seed)
    assert excess <= 1e-6, (seed, excess)


async def test_a_stale_refund_is_not_applied(client: redis_asyncio.Redis) -> None:
    # A's debt ran out (t=10 s) before A settled: its refund must not lower the debt B just
    # made, or C could be admitted on top of B (6 units at one instant, burst 3).
    name = unique_name("model")
    lim = RedisRateLimiter(client, name, 1, burst=3, clock="client")
    rkey, shape = lim._rkey(None), lim._shape
    t0 = time.time() * 1e6

    async def acquire(at: float, cost: float) -> object:
        now = repr(t0 + at * 1e6).encode()
        return await lim._call(RATE_ACQUIRE, (rkey,), (b"c", now, *shape, repr(cost), b"0"))

    try:
        epoch_a = await acquire(0, 3)
        assert isinstance(epoch_a, int)
        assert await acquire(10, 3) != epoch_a  # B: admitted, a new chain of debts
        now = repr(t0 + 10e6).encode()
        applied = await lim._call(RATE_SETTLE, (rkey,), (b"c", now, *shape, b"-3.0", str(epoch_a)))
        assert float(_text(applied)) == 0.0
        refused = await acquire(10, 3)  # C must wait for B's debt
        assert isinstance(refused, int)
        assert refused < 0
    finally:
        await delete_keys(client, name)


# -- giving back a waiter in the middle of the queue (RedisRateLimiter._give_back) --------------


@dataclass
class GiveBackStats:
    moved: int = 0  # give-backs that moved later waiters up
    shifted: int = 0  # ... of which Redis also lowered the key's debt (RATE_SHIFT applied)
    exact: int = 0  # give-backs of the last write (RATE_CANCEL applied)
    kept: int = 0  # give-backs that moved nothing (slot left unused)
    unwound: int = 0  # pauses of A or B that gave their sleeping waiters' reservations back
    unwind_refused: int = 0  # ... that asked to, but the key had changed (compare-and-swap)


async def run_give_back_model(
    client: redis_asyncio.Redis, seed: int, stats: GiveBackStats
) -> float:
    """Two limiter objects (A, B) and a third party share one key; A and B cancel random waiters.

    A and B keep their waiters exactly as RedisRateLimiter does (``_Chain.note`` on each
    reservation, ``can_move_up`` / ``move_up`` / RATE_SHIFT or RATE_CANCEL on a cancel), on a
    clock the test drives; the third party reserves and pauses in between. Some RATE_SHIFT calls
    are dropped before reaching Redis, or their reply is lost (an indeterminate error). A or B
    pauses too, as ``RedisRateLimiter.pause`` does: its sleeping waiters give their reservations
    back (``_Chain.pause_give_back``) and queue again, reserving later among the others'
    reservations. Returns the worst excess over the window bound of every admission at its
    (possibly moved) slot.
    """
    rnd = random.Random(seed)
    rate, burst = 1.0, rnd.choice([1.0, 2.0, 3.0])
    name = unique_name("model")
    lim = RedisRateLimiter(client, name, rate, burst=burst, clock="client")
    rkey, shape, t_us = lim._rkey(None), lim._shape, lim._t_us
    loop = asyncio.get_running_loop()
    now = time.time() * 1e6
    chains = {"A": _Chain(), "B": _Chain()}
    olds: dict[int, str | None] = {}
    admitted: list[Admission] = []
    third: list[Admission] = []  # the third party's pending reservations
    requeued: dict[str, list[float]] = {"A": [], "B": []}  # costs of waiters woken by a pause
    # A waiter moved up into the past is admitted when moved (its timer fires at once), and the
    # moves after it leave it there: id(entry) -> the time of the latest such move.
    floor: dict[int, float] = {}

    def at(e: _Entry) -> float:  # when a waiter is admitted (at its slot when it is to come)
        return max(e.slot, floor.get(id(e), e.slot))

    def clock() -> tuple[bytes, bytes]:
        return b"c", repr(now).encode()

    try:
        for _ in range(120):
            now += rnd.choice([0, 0, 30_000, 200_000, 600_000])
            for who, chain in chains.items():
                for fut, e in list(chain.entries.items()):
                    # Now and then a timer fires late (a busy loop): a waiter whose slot has
                    # come sleeps on after later ones were admitted (still admitted at its slot).
                    if at(e) <= now and rnd.random() > 0.15:
                        chain.discard(fut)
                        chain.used = max(chain.used, e.seq)
                        admitted.append(Admission(at(e), e.cost, "", "", ""))
                if not chain.entries:
                    chains[who] = _Chain()
            for a in [p for p in third if p.slot <= now]:
                third.remove(a)
                admitted.append(a)
            op = rnd.random()
            if op < 0.45:
                who = rnd.choice(["A", "B", "C"])
                cost = rnd.choice([1.0, 1.0, 0.5, burst])
                if who != "C" and requeued[who] and rnd.random() < 0.8:
                    cost = requeued[who].pop(0)  # a waiter woken by a pause reserves again
                res = await lim._call(RATE_ACQUIRE, (rkey,), (*clock(), *shape, repr(cost), b"-1"))
                if type(res) is int:
                    admitted.append(Admission(now, cost, "", "", ""))
                    if who != "C":
                        chains[who].last = None
                    continue
                new = _text(res[2])
                old = None if res[1] is None else _text(res[1])
                if who == "C":
                    third.append(Admission(now + res[0], cost, "", "", ""))
                    continue
                chain = chains[who]
                entry = chain.note(old, new, cost, loop.time() + 86400)  # (never fires here)
                olds[id(entry)] = old
                chain.add(loop.create_future(), entry)
            elif op < 0.8:
                who = rnd.choice(["A", "B"])
                chain = chains[who]
                pending = [(f, e) for f, e in chain.entries.items() if at(e) > now]
                if not pending:
                    continue
                fut, entry = rnd.choice(pending)
                chain.discard(fut)
                old = olds[id(entry)]
                last = chain.last
                if chain.can_move_up(entry, False):
                    chain.move_up(entry, t_us)
                    stats.moved += 1
                    for e in chain.entries.values():
                        if at(e) <= now:  # a timer moved into the past fires now
                            floor[id(e)] = now
                    fate = rnd.random()
                    if last is not None and fate > 0.1:  # < 0.1: the call never reached Redis
                        before = entry.tat - entry.cost * t_us
                        res = await lim._call(
                            RATE_SHIFT,
                            (rkey,),
                            (*clock(), *shape, last, repr(entry.cost), repr(before)),
                        )
                        if res is not None:
                            stats.shifted += 1
                            if fate > 0.2 and chain.last == last:  # else: the reply was lost
                                chain.last = _text(res)
                else:
                    done = await lim._call(RATE_CANCEL, (rkey,), (old or "", entry.new))
                    if done == 1:
                        stats.exact += 1
                        if chain.last == entry.new:
                            chain.last = old
                    else:
                        stats.kept += 1
                if not chain.entries:
                    chains[who] = _Chain()
            else:
                pause = rnd.choice([0, 100_000, 800_000])
                who = rnd.choice(["A", "B", "C"])
                expected, restored = "", ""
                if who != "C":
                    chain = chains[who]
                    expected, restored = chain.pause_give_back()
                    # every sleeping waiter is woken and queues again (never admitted on its slot)
                    requeued[who].extend(e.cost for e in chain.entries.values())
                    chain.wake_all(None)
                    chains[who] = _Chain()
                res = await lim._call(
                    RATE_PAUSE,
                    (rkey,),
                    (*clock(), *shape, repr(float(pause)), expected, restored),
                )
                if res == 2:
                    stats.unwound += 1
                elif expected:
                    stats.unwind_refused += 1
        for chain in chains.values():
            admitted.extend(Admission(at(e), e.cost, "", "", "") for e in chain.entries.values())
        admitted.extend(third)
        return worst_excess(admitted, rate / 1e6, burst)
    finally:
        await delete_keys(client, name)
        for chain in chains.values():
            chain.wake_all(None)


@pytest.mark.parametrize("seed", range(40))
async def test_giving_back_middle_waiters_never_exceeds_the_window_bound(
    client: redis_asyncio.Redis, seed: int
) -> None:
    excess = await run_give_back_model(client, seed, GiveBackStats())
    assert excess <= 1e-6, (seed, excess)


async def test_the_give_back_model_exercises_every_path(client: redis_asyncio.Redis) -> None:
    stats = GiveBackStats()
    for seed in range(40):
        await run_give_back_model(client, seed, stats)
    assert stats.moved > 0
    assert 0 < stats.shifted < stats.moved  # CAS failures (another writer) happen too
    assert stats.exact > 0
    assert stats.kept > 0
    assert stats.unwound > 0
    assert stats.unwind_refused > 0  # another writer came after the pausing object's last write
