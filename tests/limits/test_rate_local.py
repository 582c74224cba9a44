"""RateLimiter properties of the local implementation (virtual time; white-box where said)."""

from __future__ import annotations

import asyncio
import gc
import os
import tracemalloc
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from limits_helpers import max_in_window, run_then_close, vrun

import aiolease
from aiolease import RateLimiter, RateLimitExceeded
from aiolease.testing import VirtualTimeLoop, leak_check

#: More examples for a soak run: AIOLEASE_HYPOTHESIS_EXAMPLES=5000 pytest ...
_EXAMPLES = int(os.environ.get("AIOLEASE_HYPOTHESIS_EXAMPLES", "150"))


def now() -> float:
    return asyncio.get_running_loop().time()


# -- property: the window bound, FIFO, under cancellation/timeouts/settle/pause --


@dataclass(frozen=True)
class Op:
    start: float  # when the task calls acquire (from t0)
    cost: float
    timeout: float | None
    cancel_at: float | None  # cancel the task at this time (from t0), if still waiting
    settle_after: float | None  # settle this long after admission...
    actual: float  # ...to this cost


_times = st.sampled_from([0.0, 0.05, 0.1, 0.25, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0])
_costs = st.sampled_from([0.5, 1.0, 1.0, 1.0, 2.0, 3.0])


@st.composite
def _ops(draw: Any) -> Op:
    cost = draw(_costs)
    return Op(
        start=draw(_times),
        cost=cost,
        timeout=draw(st.none() | st.sampled_from([0.0, 0.2, 1.0, 2.5])),
        cancel_at=draw(st.none() | _times),
        settle_after=draw(st.none() | st.sampled_from([0.0, 0.1, 1.0, 4.0])),
        actual=draw(st.sampled_from([0.0, 0.5, 1.0, 2.0, 5.0])),
    )


@dataclass
class Outcome:
    #: chronological: ["a", t, cost] admission; ["c", t, cost] a charge counted from its
    #: own time; ["m", t, index, delta] a change of admission ``index``'s cost.
    events: list[list[Any]]
    arrivals: list[int]
    admissions: list[int]
    admission_times: list[float]


def _simulate(
    lim: RateLimiter, ops: list[Op], pauses: list[tuple[float, float]], strict_per: float | None
) -> Outcome:
    async def body() -> Outcome:
        t0 = now()
        out = Outcome([], [], [], [])
        admitted: set[int] = set()

        async def run(i: int, op: Op) -> None:
            await asyncio.sleep(op.start)
            out.arrivals.append(i)
            try:
                permit = await lim.acquire(cost=op.cost, timeout=op.timeout)
            except RateLimitExceeded:
                out.arrivals.remove(i)
                return
            except asyncio.CancelledError:
                out.arrivals.remove(i)
                raise
            t = now() - t0
            out.admissions.append(i)
            out.admission_times.append(t)
            admitted.add(i)
            index = len(out.events)
            out.events.append(["a", t, op.cost])
            if op.settle_after is None:
                return
            await asyncio.sleep(op.settle_after)
            permit.settle(op.actual)
            t_s = now() - t0
            delta = op.actual - op.cost
            # What the limiter promises to count: a refund lowers the admission
            # itself (GCRA: only as far as it is safe, so counting it in full is
            # the strongest check); a charge counts from when it is made, except
            # that a strict limiter adds it to the admission while that is still
            # inside its window (and refunds only then).
            in_window = strict_per is not None and t_s < t + strict_per - 1e-9
            if strict_per is None:
                if delta < 0:
                    out.events[index][2] += delta
                elif delta > 0:
                    out.events.append(["c", t_s, delta])
            elif in_window:
                out.events.append(["m", t_s, index, delta])
            elif delta > 0:
                out.events.append(["c", t_s, delta])

        async def canceller(task: asyncio.Task[None], at: float, i: int) -> None:
            await asyncio.sleep(at)
            if i not in admitted:
                task.cancel()

        async def pauser(at: float, seconds: float) -> None:
            await asyncio.sleep(at)
            lim.pause(seconds)

        tasks = []
        for i, op in enumerate(ops):
            task = asyncio.ensure_future(run(i, op))
            tasks.append(task)
            if op.cancel_at is not None:
                tasks.append(asyncio.ensure_future(canceller(task, op.cancel_at, i)))
        tasks += [asyncio.ensure_future(pauser(a, s)) for a, s in pauses]
        await asyncio.gather(*tasks, return_exceptions=True)
        assert lim._aiolease_leaks() == []
        return out

    return vrun(body, timeout=10_000)  # virtual seconds: charges can push waits far out


def _check_fifo(out: Outcome) -> None:
    """Admitted in arrival order: admission times never decrease along the arrivals.

    (Times, not the order tasks resumed in: a task admitted on the fast path
    runs before one whose future was resolved in the same instant.)
    """
    at = dict(zip(out.admissions, out.admission_times, strict=True))
    times = [at[i] for i in out.arrivals if i in at]
    assert times == sorted(times), (out.arrivals, at)


@settings(max_examples=_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rate=st.sampled_from([1.0, 2.0, 5.0]),
    per=st.sampled_from([1.0, 2.0]),
    burst=st.sampled_from([3.0, 4.0]),
    ops=st.lists(_ops(), min_size=1, max_size=25),
    pauses=st.lists(st.tuples(_times, st.sampled_from([0.1, 0.5, 1.0])), max_size=2),
)
def test_gcra_never_exceeds_the_window_bound(
    rate: float, per: float, burst: float, ops: list[Op], pauses: list[tuple[float, float]]
) -> None:
    """Any run of events ending in an admission fits ``burst + rate * span / per``."""
    lim = RateLimiter(rate, per, burst=burst)
    out = _simulate(lim, ops, pauses, None)
    _check_fifo(out)
    ev = out.events
    for j in range(len(ev)):
        if ev[j][0] != "a":
            continue
        total = 0.0
        for i in range(j, -1, -1):
            if ev[i][0] == "c" and ev[i][1] == ev[j][1]:
                # A charge at the same instant may have come after the admission:
                # tasks record events when they resume, not when admitted.
                continue
            total += ev[i][2]
            bound = burst + rate * (ev[j][1] - ev[i][1]) / per
            assert total <= bound + 1e-6, (i, j, total, bound, ev)


@settings(max_examples=_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rate=st.sampled_from([3.0, 4.0]),
    per=st.sampled_from([0.5, 1.0, 2.0]),
    ops=st.lists(_ops(), min_size=1, max_size=25),
    pauses=st.lists(st.tuples(_times, st.sampled_from([0.1, 0.5, 1.0])), max_size=2),
)
def test_strict_never_exceeds_rate_in_any_window(
    rate: float, per: float, ops: list[Op], pauses: list[tuple[float, float]]
) -> None:
    """Replaying the log: after each admission, the window (t - per, t] holds <= rate."""
    lim = RateLimiter(rate, per, strict=True)
    out = _simulate(lim, ops, pauses, per)
    _check_fifo(out)
    entries: list[list[float]] = []
    by_event: dict[int, list[float]] = {}
    # Tasks record events when they resume, so a settle recorded before an
    # admission of the same instant may really have come after it: undo those.
    same_instant: list[tuple[float, float]] = []  # (time, cost to take off)
    for k, e in enumerate(out.events):
        if e[0] == "m":
            by_event[e[2]][1] += e[3]
            if e[3] > 0:  # (a refund of the same instant counts: it may have come first)
                same_instant.append((e[1], e[3]))
            continue
        entry = [e[1], e[2]]
        entries.append(entry)
        by_event[k] = entry
        if e[0] == "c":
            same_instant.append((e[1], e[2]))
        else:
            total = sum(c for t, c in entries if t > e[1] - per + 1e-9)
            total -= sum(c for t, c in same_instant if t == e[1])
            assert total <= rate + 1e-6, (e, total, out.events)


# -- strict mode -----------------------------------------------------------------


def test_strict_admits_rate_per_window_not_twice_it() -> None:
    async def body() -> list[float]:
        lim = RateLimiter(3, per=1.0, strict=True)
        t0 = now()

        async def one() -> float:
            await lim.acquire()
            return now() - t0

        return sorted(await asyncio.gather(*(one() for _ in range(8))))

    times = vrun(body)
    assert times == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 2.0, 2.0]
    assert max_in_window(times, [1.0] * 8, 0.999) == 3
    # GCRA with the same average and burst=3 would admit 6 within one second:
    gcra = RateLimiter(3, per=1.0, burst=3)

    async def greedy() -> list[float]:
        t0 = now()
        out = []
        for _ in range(6):
            await gcra.acquire()
            out.append(now() - t0)
        return out

    assert max_in_window(vrun(greedy), [1.0] * 6, 0.999) > 3


def test_strict_costs_and_arguments() -> None:
    with pytest.raises(ValueError, match="burst"):
        RateLimiter(10, per=60, burst=2, strict=True)

    async def body() -> None:
        lim = RateLimiter(5, per=10, strict=True)
        t0 = now()
        with pytest.raises(ValueError, match="rate=5"):
            lim.acquire(cost=6)
        await lim.acquire(cost=4)
        await asyncio.sleep(3)
        with pytest.raises(RateLimitExceeded) as info:
            lim.acquire_nowait(cost=2)
        assert info.value.retry_after == pytest.approx(7.0)  # the cost-4 entry leaves at 10
        await lim.acquire(cost=2)
        assert now() - t0 == pytest.approx(10.0)
        assert lim.statistics().strict

    vrun(body)


def test_strict_settle_inside_the_window_is_exact() -> None:
    async def body() -> None:
        lim = RateLimiter(5, per=10, strict=True)
        p = await lim.acquire(cost=5)
        await asyncio.sleep(1)
        p.settle(2)  # refund 3 within the window
        lim.acquire_nowait(cost=3)
        with pytest.raises(RateLimitExceeded):
            lim.acquire_nowait(cost=1)
        p.settle(3)  # charge 1 back onto the same (still in-window) entry
        assert lim._default.used == pytest.approx(6)
        await asyncio.sleep(9)  # the first entry leaves the window at 10
        lim.acquire_nowait(cost=2)

    vrun(body)


def test_strict_timeout_fail_fast_counts_waiters() -> None:
    async def body() -> None:
        lim = RateLimiter(2, per=1.0, strict=True)
        await lim.acquire()
        await lim.acquire()
        t0 = now()
        waiters = [asyncio.ensure_future(lim.acquire()) for _ in range(2)]  # both at 1.0
        await asyncio.sleep(0)
        with pytest.raises(RateLimitExceeded) as info:
            await lim.acquire(timeout=1.5)
        assert info.value.retry_after == pytest.approx(2.0)
        await asyncio.gather(*waiters)
        assert now() - t0 == 1.0

    vrun(body)


def test_strict_waiter_without_timeout_does_not_schedule_the_queue(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """White-box: the slot behind every waiter (a walk over the whole queue in strict mode)
    is worked out only for a timeout to check. Worked out for each arrival, N waiters
    arriving made N walks of up to N waiters: 10,000 took 90 s of loop time."""
    from aiolease._limits._rate import _WindowState

    walks = 0
    simulate = _WindowState._simulate

    def counted(self: Any, now: float, extra: float | None) -> Any:
        nonlocal walks
        walks += 1
        return simulate(self, now, extra)

    monkeypatch.setattr(_WindowState, "_simulate", counted)

    async def body() -> list[float]:
        lim = RateLimiter(2, per=1.0, strict=True)
        t0 = now()

        async def one() -> float:
            await lim.acquire()
            return now() - t0

        tasks = [asyncio.ensure_future(one()) for _ in range(6)]
        await asyncio.sleep(0)  # two admitted, four queued (slots 1, 1, 2, 2)
        assert walks == 0
        # a timeout still fails fast behind the queue: its slot (3) is past it
        with pytest.raises(RateLimitExceeded) as info:
            await lim.acquire(timeout=2.5)
        assert info.value.retry_after == pytest.approx(3.0)
        assert walks == 1
        return await asyncio.gather(*tasks)

    assert vrun(body) == [0.0, 0.0, 1.0, 1.0, 2.0, 2.0]


# -- refunds never break the bound --------------------------------------------------


def test_refund_already_absorbed_by_later_admissions_is_not_given() -> None:
    async def body() -> None:
        lim = RateLimiter(1, burst=5)
        p = await lim.acquire(cost=5)  # tat = 5
        await asyncio.sleep(10)  # the debt is long paid
        await lim.acquire(cost=1)  # tat = 11
        await asyncio.sleep(0.5)
        p.settle(0)  # a naive refund of 5 would allow 5.5 now
        lim.acquire_nowait(cost=4.5)
        with pytest.raises(RateLimitExceeded):
            lim.acquire_nowait(cost=0.5)  # 1 + 4.5 + 0.5 > 5 + 0.5 within [10, 10.5]

    vrun(body)


def test_refund_limited_to_the_debt_at_later_admissions() -> None:
    async def body() -> None:
        lim = RateLimiter(1, burst=4)
        p = await lim.acquire(cost=2)  # tat = 2
        await asyncio.sleep(1.5)
        await lim.acquire(cost=1)  # debt there 0.5 -> tat = 3
        p.settle(0)  # refund at most 0.5 -> tat = 2.5
        lim.acquire_nowait(cost=3)  # 2.5 + 3 - 4 = 1.5 <= 1.5
        with pytest.raises(RateLimitExceeded):
            lim.acquire_nowait(cost=0.1)

    vrun(body)


def test_task_cancelled_as_it_is_admitted_refunds_its_cost() -> None:
    async def body() -> None:
        lim = RateLimiter(1, burst=1)
        await lim.acquire()
        t0 = now()
        waiter = asyncio.ensure_future(lim.acquire())
        await asyncio.sleep(0)
        later = asyncio.ensure_future(lim.acquire())
        await asyncio.sleep(0)
        # Admission of `waiter` at 1.0 and its cancellation in the same instant.
        loop = asyncio.get_running_loop()
        loop.call_at(t0 + 1.0, waiter.cancel)
        with pytest.raises(asyncio.CancelledError):
            await waiter
        await later
        assert now() - t0 == 1.0  # got the slot waiter gave back
        assert lim.statistics().waiting == 0

    vrun(body)


# -- memory, keys, fast path, leaks ---------------------------------------------------


def test_memory_is_bounded_with_100_000_keys() -> None:
    async def body() -> None:
        # Bytes per key, on a sample (tracemalloc slows every allocation ~10x).
        sample = RateLimiter(10)
        tracemalloc.start()
        try:
            before, _ = tracemalloc.get_traced_memory()
            for i in range(10_000):
                sample.acquire_nowait(key=i)
            gc.collect()
            after, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        per_key = (after - before) / 10_000
        assert per_key < 600, f"{per_key:.0f} bytes per key"

        lim = RateLimiter(10)  # each key is in debt for 0.1 s after an acquire
        for i in range(100_000):
            lim.acquire_nowait(key=i)
        assert lim.statistics().keys == 100_000  # all in debt: all kept
        await asyncio.sleep(1)  # every key is idle now
        for round_ in range(1, 4):
            for i in range(100_000):
                lim.acquire_nowait(key=(round_, i))
                # New keys push idle ones out as fast as they come in.
            assert lim.statistics().keys <= 100_000 + 2
            await asyncio.sleep(1)
        # The states of the first 100 000 keys are gone, not just unlisted.
        assert all(isinstance(k, tuple) and k[0] == 3 for k in lim._states)
        # Keys with a waiter or a pause are never evicted.
        lim.pause(100, key="paused")
        waiter = asyncio.ensure_future(lim.acquire(key="paused"))
        await asyncio.sleep(1)
        for i in range(10_000):
            lim.acquire_nowait(key=("more", i))
        assert "paused" in lim._states
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter

    vrun(body, timeout=120)


def test_settle_after_the_key_was_evicted_still_charges() -> None:
    async def body() -> None:
        lim = RateLimiter(1, burst=3)
        p = lim.acquire_nowait(key="k")
        await asyncio.sleep(5)
        for i in range(2000):  # pushes the idle "k" out
            lim.acquire_nowait(key=i)
        assert "k" not in lim._states
        p.settle(0)  # nothing to refund: the debt was paid long ago
        p.settle(4)  # charged from now on the key's new state
        with pytest.raises(RateLimitExceeded) as info:
            lim.acquire_nowait(key="k")
        assert info.value.retry_after == pytest.approx(2.0)

    vrun(body)


def test_never_limited_fast_path_creates_no_future() -> None:
    async def body() -> None:
        lim = RateLimiter(1e9, burst=1000)
        loop = asyncio.get_running_loop()

        def forbidden() -> Any:
            raise AssertionError("the fast path created a future")

        loop.create_future = forbidden  # type: ignore[method-assign]
        try:
            for _ in range(100):
                async with lim:
                    pass
                async with lim.acquire(key="k"):
                    pass
                lim.acquire_nowait()
        finally:
            del loop.create_future
        assert lim.statistics().admitted == 300

    vrun(body)


def test_leak_check_reports_waiting_tasks() -> None:
    async def body() -> None:
        check = leak_check()
        async with check:
            lim = RateLimiter(1, name="api")
            await lim.acquire(key="user-1")
            waiter = asyncio.ensure_future(lim.acquire(key="user-1"))
            await asyncio.sleep(0)
            assert "'user-1'" in lim._aiolease_leaks()[0]
            with pytest.raises(AssertionError, match="still waiting"):
                check.check()
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
            assert lim._aiolease_leaks() == []

    vrun(body)


def test_name_must_be_utf8_text() -> None:
    # A lone surrogate cannot be logged to a UTF-8 file nor exported to Prometheus or OTLP.
    with pytest.raises(ValueError, match=r"name must be encodable as UTF-8 .*got 'a\\ud800'"):
        RateLimiter(1, name="a\ud800")
    with pytest.raises(TypeError, match="name must be None or a str, got int 1"):
        RateLimiter(1, name=1)  # type: ignore[arg-type]


@pytest.mark.parametrize("strict", ["false", 1, 0, None])
def test_strict_must_be_a_bool(strict: object) -> None:
    # Found by a new user's probe: bool(strict) made strict="false" a strict limiter.
    with pytest.raises(TypeError, match=f"strict must be True or False, got {strict!r}"):
        RateLimiter(5, strict=strict)  # type: ignore[arg-type]


def test_repr_and_no_loop_binding_at_construction() -> None:
    lim = RateLimiter(10, per=2, burst=3, name="api")  # no running loop needed
    assert repr(lim) == "<RateLimiter 'api' 10/2s burst=3 waiting=0 keys=0>"
    assert "strict" in repr(RateLimiter(5, strict=True))

    async def body() -> None:
        async with lim:
            pass
        p = await lim.acquire(cost=2.5, key="k")
        assert repr(p) == "<RatePermit cost=2.5 key='k'>"

    vrun(body)
    vrun(body)  # a second loop: nothing was bound to the first


def test_acquire_object_is_awaitable_by_ensure_future() -> None:
    async def body() -> None:
        lim = RateLimiter(2)
        permit = await asyncio.ensure_future(lim.acquire())
        assert isinstance(permit, aiolease.RatePermit)

    vrun(body)


def test_huge_wait_queue_each_admitted_once_at_its_slot() -> None:
    async def body() -> None:
        lim = RateLimiter(1000)
        t0 = now()
        times: list[float] = []

        async def one() -> None:
            await lim.acquire()
            times.append(now() - t0)

        await asyncio.gather(*(one() for _ in range(5000)))
        assert times == pytest.approx([i / 1000 for i in range(5000)])
        # One loop timer per admission at most: the queue is not polled.
        assert asyncio.get_running_loop().jumps <= 5000  # type: ignore[attr-defined]

    vrun(body)


@pytest.mark.parametrize(("late", "shift"), [(0.0005, 0.0), (0.002, 0.0), (0.005, 0.0025)])
def test_a_late_timer_is_absorbed_up_to_the_grace(late: float, shift: float) -> None:
    """White-box: make the head's timer fire ``late``; the next slot moves by late - grace."""

    async def body() -> list[float]:
        lim = RateLimiter(100)  # T = 10 ms, grace = min(3 ms, T/4) = 2.5 ms
        loop = asyncio.get_running_loop()
        t0 = now()
        await lim.acquire()
        times: list[float] = []

        async def one() -> None:
            await lim.acquire()
            times.append(now() - t0)

        tasks = [asyncio.ensure_future(one()) for _ in range(2)]
        await asyncio.sleep(0)
        st = lim._default
        assert st.timer is not None
        when = st.timer_when
        st.timer.cancel()  # re-deliver the same timer callback, late
        st.timer = loop.call_at(when + late, st._fire, loop)
        await asyncio.gather(*tasks)
        return times

    first, second = vrun(body)
    assert first == pytest.approx(0.01 + late)
    assert second == pytest.approx(0.02 + shift)


class _LateTimerLoop(VirtualTimeLoop):
    """Virtual time whose every timer fires ``late`` seconds after its time.

    As on a real loop: CPython's epoll selector sleeps in whole milliseconds,
    rounded up, and for some durations one millisecond more (its seconds are
    rounded up to milliseconds twice), so an idle loop's timer fires up to
    about 2 ms late.
    """

    late = 0.0

    def call_at(  # type: ignore[override]  # same signature; typeshed's is generic
        self, when: float, callback: Any, *args: Any, context: Any = None
    ) -> asyncio.TimerHandle:
        return super().call_at(when + self.late, callback, *args, context=context)


def _saturated_on_late_timers(
    rate: float, late: float, burst: float = 1, n: int = 40
) -> list[float]:
    """Admission instants (from the first) of ``n`` tasks queued at once, timers ``late``."""

    class Loop(_LateTimerLoop):
        pass

    Loop.late = late

    async def body() -> list[float]:
        lim = RateLimiter(rate, burst=burst)
        t0 = now()
        times: list[float] = []

        async def one() -> None:
            await lim.acquire()
            times.append(now() - t0)

        await asyncio.gather(*(one() for _ in range(n)))
        return times

    with asyncio.Runner(loop_factory=Loop) as runner:
        return runner.run(body())


@pytest.mark.parametrize(
    ("rate", "late", "step"),
    [
        (100, 0.002, 0.01),  # an idle CPython loop's worst: absorbed (grace = T/4 = 2.5 ms)
        (10, 0.0025, 0.1),  # absorbed (grace = 3 ms)
        (10, 0.01, 0.107),  # a busy loop: 7 ms of the 10 are lost per admission
    ],
)
def test_late_timers_keep_the_saturated_rate_up_to_the_grace(
    rate: float, late: float, step: float
) -> None:
    """Timers that all fire late (a real loop): a saturated burst-1 limiter keeps its
    schedule when the lateness is within the grace, min(3 ms, T/4); the window bound
    holds to within a quarter of one unit."""
    times = _saturated_on_late_timers(rate, late)
    T = 1 / rate
    # The first is admitted at once; each later one `late` after its slot.
    assert times == pytest.approx(
        [0.0] + [T + late + (k - 1) * step for k in range(1, len(times))], abs=1e-9
    )
    for window in (T / 2, T, 2.5 * T, 10 * T):
        assert max_in_window(times, [1.0] * len(times), window) <= 1 + window / T + 0.25


def test_late_timers_cost_nothing_with_burst_2() -> None:
    """With burst >= 2 a waiter's slot comes from the TAT, not its (late) admission: even
    lateness far past the grace leaves the saturated rate exact (what docs/integrations.md
    advises for busy loops)."""
    times = _saturated_on_late_timers(10, 0.03, burst=2)
    assert times == pytest.approx(
        [0.0, 0.0] + [(k - 1) * 0.1 + 0.03 for k in range(2, len(times))], abs=1e-9
    )


def test_strict_rate_below_one_refuses_the_default_cost_at_every_way_in() -> None:
    """``RateLimiter(0.5, strict=True)``: a cost of 1 can never be admitted, whichever way in."""

    async def body() -> None:
        lim = RateLimiter(0.5, per=1, strict=True)
        with pytest.raises(ValueError, match="never be admitted"):
            lim.acquire()
        with pytest.raises(ValueError, match="never be admitted"):
            async with lim:
                pass
        with pytest.raises(ValueError, match="never be admitted"):
            lim.acquire_nowait()
        await lim.acquire(cost=0.5)  # what fits is still admitted
        assert lim.statistics().admitted == 1
        assert lim._default.used == 0.5

    vrun(body)


def test_gcra_interval_beyond_any_float_is_refused() -> None:
    # per / rate overflows: each admission would be worth an infinite interval, and the
    # arithmetic (inf - inf) used to admit everything at once.
    with pytest.raises(ValueError, match=r"per / rate") as info:
        RateLimiter(1e-320)
    assert "rate=1e-320" in str(info.value)
    with pytest.raises(ValueError, match=r"per / rate"):
        RateLimiter(1e-10, per=1e300)
    RateLimiter(1e-320, strict=True)  # strict mode counts over a window: no interval
    lim = RateLimiter(1e-300)  # small but finite: one admission, then a very long wait

    async def body() -> None:
        lim.acquire_nowait()
        with pytest.raises(RateLimitExceeded):
            lim.acquire_nowait()

    vrun(body)


def test_settle_charge_beyond_any_clock_is_refused() -> None:
    async def body() -> None:
        lim = RateLimiter(1, per=2)
        p = await lim.acquire()
        # actual_cost * (per / rate) overflows: the TAT would become inf, and a later
        # refund inf - inf = nan, after which the key admitted everything.
        with pytest.raises(ValueError, match="actual_cost"):
            p.settle(1e308)
        assert p.cost == 1
        p.settle(0)  # an ordinary refund still works
        lim.acquire_nowait()
        with pytest.raises(RateLimitExceeded):
            lim.acquire_nowait()

    vrun(body)


def test_a_waiter_left_on_a_closed_loop_does_not_hold_up_the_key() -> None:
    """Its timer belonged to the closed loop: later waiters on the key queued behind it and
    were never admitted (or admitting it raised "Event loop is closed")."""
    limiter = RateLimiter(10)

    async def strand() -> asyncio.Task[Any]:
        await limiter.acquire(key="k")
        left = asyncio.ensure_future(limiter.acquire(key="k"))  # due 0.1 s later
        await asyncio.sleep(0)
        return left

    left = run_then_close(strand)

    async def later() -> None:
        async with asyncio.timeout(5):
            await limiter.acquire(key="k")
            await limiter.acquire(key="k")
        stats = limiter.statistics()
        assert (stats.waiting, stats.cancelled) == (0, 1)

    asyncio.run(later())
    left.get_coro().close()
