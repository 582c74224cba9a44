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

import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import redis.asyncio as redis_asyncio
from _redis_factories import delete_keys, redis_client, unique_name

from aiolease._redis_scripts import RATE_ACQUIRE, RATE_CANCEL, RATE_PAUSE, RATE_SETTLE
from aiolease.redis import RedisRateLimiter, _text

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
                await lim._call(RATE_PAUSE, (rkey,), (b"c", t, *shape, repr(float(pause))))
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
