"""The local limiters against a reference model (virtual time, random workloads).

The window-bound and FIFO properties (test_rate_local.py) say what is never admitted too
early; these say what is never admitted too *late* either: every admission, rejection
and cancellation is compared with a plain event-driven model of the contract.

The model: FIFO per limiter; a waiter is admitted at the first instant it is the oldest
waiter of every limiter it waits on and each admits it (GCRA: ``max(tat, t) + c*T - t <=
burst*T``; a concurrency limiter: a free slot); ``timeout`` fails fast when the slot
reserved behind the waiters ahead is further away (rate), else at the deadline (group,
a concurrency limiter, a rate limiter in a group); a cancelled waiter is gone, as if it
never came, from the instant of the cancellation. Arrivals, cancellations, deadlines and
releases are offset from each other by distinct fractions of a millisecond, so that no
two of them fall in the same instant (which instant comes first is not part of the contract).
"""

from __future__ import annotations

import asyncio
import math
import os
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from limits_helpers import vrun

from aiolease import (
    ConcurrencyLimiter,
    ConcurrencyPermit,
    GroupPermit,
    LimitGroup,
    LimitTimeout,
    RateLimiter,
    RateLimitExceeded,
)

_EXAMPLES = int(os.environ.get("AIOLEASE_HYPOTHESIS_EXAMPLES", "150"))
_EPS = 1e-9

# Members of the workload: two rate limiters and one concurrency limiter; each request
# goes to one of them or to a group of several (groups share members).
_R1, _R2, _SEM = 0, 1, 2
_ROUTES: dict[str, tuple[int, ...]] = {
    "r1": (_R1,),
    "r2": (_R2,),
    "sem": (_SEM,),
    "r1+sem": (_R1, _SEM),
    "r1+r2": (_R1, _R2),
    "r2+sem": (_R2, _SEM),
    "all": (_R1, _R2, _SEM),
}


@dataclass(frozen=True)
class Req:
    route: str
    arrive: float
    cost: float
    timeout: float | None
    cancel_at: float | None  # cancelled then, if not admitted yet
    hold: float  # a slot is released this long after admission


@dataclass(frozen=True)
class Limits:
    rates: tuple[float, float]  # per second
    bursts: tuple[float, float]
    slots: int


#: An outcome: the admission time, or "rejected" (RateLimitExceeded), "timeout"
#: (LimitTimeout), "cancelled".
Outcome = float | str


def _model(limits: Limits, reqs: list[Req]) -> dict[int, Outcome]:
    T = [1.0 / r for r in limits.rates]
    tau = [b * t for b, t in zip(limits.bursts, T, strict=True)]
    tat = [-math.inf, -math.inf]
    held = 0
    queues: list[list[int]] = [[], [], []]
    out: dict[int, Outcome] = {}
    # (time, order, kind, request): releases before anything else in an instant.
    events: list[tuple[float, int, str, int]] = []
    for i, r in enumerate(reqs):
        events.append((r.arrive, 1, "arrive", i))
        if r.cancel_at is not None:
            events.append((r.cancel_at, 1, "cancel", i))

    def members(i: int) -> tuple[int, ...]:
        return _ROUTES[reqs[i].route]

    def fits_now(i: int, t: float) -> bool:
        for m in members(i):
            if m == _SEM:
                if held >= limits.slots:
                    return False
            elif tat[m] + reqs[i].cost * T[m] - tau[m] > t + _EPS:
                return False
        return True

    def ready_at(i: int, t: float) -> float:
        if any(queues[m][0] != i for m in members(i)):
            return math.inf
        at = t
        for m in members(i):
            if m == _SEM:
                if held >= limits.slots:
                    return math.inf
            else:
                at = max(at, tat[m] + reqs[i].cost * T[m] - tau[m])
        return at

    def admit(i: int, t: float) -> None:
        nonlocal held
        for m in members(i):
            if i in queues[m]:
                queues[m].remove(i)
            if m == _SEM:
                held += 1
            else:
                tat[m] = max(tat[m], t) + reqs[i].cost * T[m]
        out[i] = t
        if _SEM in members(i):
            events.append((t + reqs[i].hold, 0, "release", i))

    t = -math.inf
    while True:
        events.sort()
        due = min(((ready_at(q[0], t), q[0]) for q in queues if q), default=(math.inf, -1))
        if due[1] < 0 and not events:
            return out
        if due[0] <= (events[0][0] if events else math.inf):
            t = due[0]
            admit(due[1], t)
            continue
        t, _, kind, i = events.pop(0)
        r = reqs[i]
        ms = members(i)
        waiting = i in queues[ms[0]]
        if kind == "release":
            held -= 1
        elif kind == "cancel":
            if i not in out:
                out[i] = "cancelled"
                for m in ms:
                    if waiting:
                        queues[m].remove(i)
        elif kind == "deadline":
            if waiting:
                for m in ms:
                    queues[m].remove(i)
                out[i] = "timeout" if _SEM in ms else "rejected"
        elif i not in out:  # arrive (not cancelled before it)
            if all(not queues[m] for m in ms) and fits_now(i, t):
                admit(i, t)
                continue
            if r.timeout is not None:
                slot = t  # behind the waiters ahead, on the rate members alone
                for m in ms:
                    if m != _SEM:
                        pending = sum(reqs[j].cost for j in queues[m])
                        slot = max(slot, max(tat[m], t) + (pending + r.cost) * T[m] - tau[m])
                if slot > t + r.timeout + _EPS:
                    out[i] = "rejected"
                    continue
                if ms == (_SEM,) and r.timeout == 0:
                    out[i] = "timeout"
                    continue
                events.append((t + r.timeout, 2, "deadline", i))
            for m in ms:
                queues[m].append(i)


def _run(limits: Limits, reqs: list[Req]) -> dict[int, Outcome]:
    async def body() -> dict[int, Outcome]:
        loop = asyncio.get_running_loop()
        members: list[Any] = [
            RateLimiter(limits.rates[0], burst=limits.bursts[0]),
            RateLimiter(limits.rates[1], burst=limits.bursts[1]),
            ConcurrencyLimiter(limits.slots),
        ]
        groups = {
            name: LimitGroup(*(members[m] for m in ms))
            for name, ms in _ROUTES.items()
            if len(ms) > 1
        }
        out: dict[int, Outcome] = {}

        async def request(i: int, r: Req) -> None:
            try:
                await asyncio.sleep(r.arrive)
                ms = _ROUTES[r.route]
                try:
                    permit: Any
                    if r.route in groups:
                        permit = await groups[r.route].acquire(cost=r.cost, timeout=r.timeout)
                    elif ms == (_SEM,):
                        permit = await members[_SEM].acquire(timeout=r.timeout)
                    else:
                        permit = await members[ms[0]].acquire(cost=r.cost, timeout=r.timeout)
                except RateLimitExceeded:
                    out[i] = "rejected"
                    return
                except LimitTimeout:
                    out[i] = "timeout"
                    return
            except asyncio.CancelledError:
                out[i] = "cancelled"
                raise
            out[i] = loop.time()
            if isinstance(permit, (GroupPermit, ConcurrencyPermit)):
                await asyncio.sleep(r.hold)
                permit.release()

        async def cancel(task: asyncio.Task[None], at: float, i: int) -> None:
            await asyncio.sleep(at)
            if i not in out:
                task.cancel()

        tasks: list[asyncio.Task[None]] = []
        for i, r in enumerate(reqs):
            task = asyncio.ensure_future(request(i, r))
            tasks.append(task)
            if r.cancel_at is not None:
                tasks.append(asyncio.ensure_future(cancel(task, r.cancel_at, i)))
        await asyncio.gather(*tasks, return_exceptions=True)
        for m in members:  # nothing left waiting or held
            assert m._aiolease_leaks() == [], m._aiolease_leaks()
            assert m.statistics().waiting == 0
        return out

    return vrun(body, timeout=1_000)


def _same(got: dict[int, Outcome], want: dict[int, Outcome], n: int) -> None:
    for i in range(n):
        g, w = got.get(i), want.get(i)
        if isinstance(g, float) and isinstance(w, float):
            assert abs(g - w) < 1e-6, (i, g, w, got, want)
        else:
            assert g == w, (i, g, w, got, want)


@st.composite
def _workload(draw: Any, routes: list[str]) -> tuple[Limits, list[Req]]:
    limits = Limits(
        rates=(draw(st.sampled_from([1.0, 2.0, 4.0])), draw(st.sampled_from([0.5, 1.0, 2.0]))),
        bursts=(draw(st.sampled_from([1.0, 2.0, 3.0])), draw(st.sampled_from([1.0, 1.5, 3.0]))),
        slots=draw(st.integers(1, 3)),
    )
    smallest = min(limits.bursts)
    reqs = []
    for i in range(draw(st.integers(1, 14))):
        timeout = draw(st.none() | st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.0, 5.0]))
        cancel = draw(st.none() | st.integers(0, 60))
        reqs.append(
            Req(
                route=draw(st.sampled_from(routes)),
                # Offsets: arrivals 1, cancellations 2, holds 3 (x 1e-5, i-th request),
                # deadlines 1.7e-7 i: no two events in the same instant.
                arrive=draw(st.integers(0, 40)) / 8 + (3 * i + 1) * 1e-5,
                cost=draw(st.sampled_from([c for c in (0.5, 1.0, 1.5, 2.0, 3.0) if c <= smallest])),
                timeout=timeout if not timeout else timeout + 1.7e-7 * (i + 1),
                cancel_at=None if cancel is None else cancel / 8 + (3 * i + 2) * 1e-5,
                hold=draw(st.integers(0, 24)) / 8 + (3 * i + 3) * 1.3e-6,
            )
        )
    return limits, reqs


_settings = settings(
    max_examples=_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@_settings
@given(_workload(["r1"]))
def test_rate_limiter_admits_exactly_when_the_model_does(
    workload: tuple[Limits, list[Req]],
) -> None:
    """One GCRA limiter: random arrivals, costs up to the burst, timeouts, cancellations."""
    limits, reqs = workload
    _same(_run(limits, reqs), _model(limits, reqs), len(reqs))


@_settings
@given(_workload(sorted(_ROUTES)))
def test_groups_sharing_members_admit_exactly_when_the_model_does(
    workload: tuple[Limits, list[Req]],
) -> None:
    """Groups over shared members, with plain requests to the members: all or nothing, FIFO
    in every member, deadlines, cancellations; no member keeps anything a failed request got."""
    limits, reqs = workload
    _same(_run(limits, reqs), _model(limits, reqs), len(reqs))
