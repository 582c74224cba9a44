"""Rate limiter benchmark (``make bench-limits``): aiolease against the anchors, in one process.

(a) Overhead of a never-limited acquire (the rate is far above what one task
    can ask for), ops/s with 1 task. One operation is the library's idiomatic
    "wait for permission" call: ``async with limiter:`` for aiolease and
    aiolimiter, ``await limiter.try_acquire_async(key)`` for pyrate-limiter,
    ``await throttled.limit(key)`` for throttled-py, and
    ``await MovingWindowRateLimiter.hit(item, key)`` for limits (async API,
    memory storage). Target: aiolease >= 1.5 x aiolimiter.

(b) Accuracy: 200/s, 20 greedy tasks, 3 s of real time. Achieved rate, the
    largest count in any 1-s window (sliding over every admission), and CPU
    seconds (``time.process_time``) of the run. aiolease ``RateLimiter(200)``
    (GCRA, burst=1: bound 201 per second; and strict=True: bound 200);
    aiolimiter ``AsyncLimiter(200, 1)``; limits moving window 200/second,
    which cannot wait, polled every 10 ms (``asyncio.sleep(0.01)`` after a
    refused hit). Target: within 1% of the configured bound, CPU <= aiolimiter.
    The CPU ratio is the median over rounds of the per-round ratio. Most of
    that CPU is the cost of waking the process from its timer sleeps, once
    per admission (or per burst), which the kernel charges to the process;
    the limiters' own Python work is a small part of it.

(c) Redis (H3's ``bench/limits_redis.py``, run when present): see there.

(d) Metrics overhead: the limiters instrumented by ``aiolease.otel`` (the
    OpenTelemetry SDK, a reader collecting every second into an exporter that
    drops everything) and by ``aiolease.prometheus``, against the same limiter
    not instrumented, ops per CPU second (``time.process_time``: the shared
    machine's load moves it far less than wall time). Two operations: the
    never-limited ``async with RateLimiter(...)`` of (a), 1 task (it records
    nothing: the counts are read when the SDK collects); and ``async with``
    a ``ConcurrencyLimiter(10)`` around ``asyncio.sleep(0)``, 100 tasks, where
    nearly every acquisition waits in the queue and records its time there
    (``aiolease.limiter.request.time_in_queue``). Ratios: instrumented / not,
    the median of per-round ratios.

Each measurement is repeated (``--repeats``) and the tables show medians;
ratios are ours / the anchor. These are measurements, not tests.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import gc
import importlib
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

# This file is called limits.py: keep its directory off sys.path while the
# `limits` library is imported, then put it back for _common / limits_redis.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
aiolimiter = importlib.import_module("aiolimiter")
limits = importlib.import_module("limits")
limits_storage = importlib.import_module("limits.aio.storage")
limits_strategies = importlib.import_module("limits.aio.strategies")
pyrate_limiter = importlib.import_module("pyrate_limiter")
throttled_asyncio = importlib.import_module("throttled.asyncio")
sys.path.insert(0, _HERE)
from _common import (  # noqa: E402
    Column,
    Contender,
    Stop,
    Worker,
    environment,
    fmt_ops,
    run_rounds,
    with_metrics,
)

import aiolease  # noqa: E402

HUGE = 1_000_000_000  # a rate no single task can reach: never limited


# -- (a) never-limited overhead ----------------------------------------------------
#
# A never-limited acquire does not yield to the event loop (in any of these
# libraries), so a loop timer cannot stop the run: each worker runs batches of
# BATCH operations and reads the clock between batches.

BATCH = 1000
#: ``make() -> batch``: a fresh subject; ``batch()`` makes BATCH "wait for permission"
#: calls in a plain loop (no per-call wrapper, so only the library's cost is measured).
Op = Callable[[], Awaitable[Any]]


def _ours_async_with() -> Op:
    lim = aiolease.RateLimiter(HUGE)

    async def op() -> None:
        for _ in range(BATCH):
            async with lim:
                pass

    return op


def _ours_acquire_key() -> Op:
    lim = aiolease.RateLimiter(HUGE)

    async def op() -> None:
        for _ in range(BATCH):
            async with lim.acquire(key="user"):
                pass

    return op


def _aiolimiter() -> Op:
    lim = aiolimiter.AsyncLimiter(HUGE, 1)

    async def op() -> None:
        for _ in range(BATCH):
            async with lim:
                pass

    return op


def _limits() -> Op:
    storage = limits_storage.MemoryStorage()
    _CLOSERS.append(lambda: _close_memory_storage(storage))
    strategy = limits_strategies.MovingWindowRateLimiter(storage)
    item = limits.RateLimitItemPerSecond(HUGE)

    async def op() -> None:
        for _ in range(BATCH):
            if not await strategy.hit(item, "user"):
                raise AssertionError("limits refused a never-limited hit")

    return op


#: Cleanups of the subjects, run after each measurement, so that none keeps working
#: while the next one is measured: pyrate-limiter's limiter keeps a thread that leaks
#: its in-memory bucket every 10 s, and limits' MemoryStorage a task on our loop that
#: sorts out expired events (slicing lists of millions of them after (a)). Left
#: running they stole CPU, the GIL and loop time from whatever ran next (section (b)
#: once measured ours at 1.5x aiolimiter's CPU, and 196/s instead of 199/s, that way).
_CLOSERS: list[Callable[[], object]] = []


def _close_memory_storage(storage: Any) -> None:
    timer = getattr(storage, "timer", None)
    if timer is not None:
        timer.cancel()
    for name in ("events", "storage", "expirations"):
        table = getattr(storage, name, None)
        if isinstance(table, dict):
            table.clear()


def _run_closers() -> None:
    while _CLOSERS:
        _CLOSERS.pop()()


def _pyrate() -> Op:
    lim = pyrate_limiter.Limiter(pyrate_limiter.Rate(HUGE, pyrate_limiter.Duration.SECOND))
    _CLOSERS.append(lim.close)

    async def op() -> None:
        for _ in range(BATCH):
            if not await lim.try_acquire_async("user"):
                raise AssertionError("pyrate-limiter refused a never-limited acquire")

    return op


def _throttled() -> Op:
    lim = throttled_asyncio.Throttled(
        using="gcra", quota=throttled_asyncio.rate_limiter.per_sec(HUGE)
    )

    async def op() -> None:
        for _ in range(BATCH):
            if (await lim.limit("user")).limited:
                raise AssertionError("throttled-py limited a never-limited call")

    return op


async def _ops_per_second(op: Op, duration: float) -> tuple[float, float]:
    """(ops per wall second, ops per CPU second) over about ``duration`` seconds.

    The CPU figure (``time.process_time``) is what the limiter itself costs and
    is not skewed by other processes competing for a busy machine's cores.
    """
    gc.collect()
    n = 0
    start = time.perf_counter()
    cpu0 = time.process_time()
    deadline = start + duration
    while True:
        await op()
        n += BATCH
        now = time.perf_counter()
        if now >= deadline:
            return n / (now - start), n / max(time.process_time() - cpu0, 1e-9)


async def section_a(repeats: int, duration: float) -> list[str]:
    contenders: list[tuple[str, Callable[[], Op]]] = [
        ("aiolease: async with limiter", _ours_async_with),
        ("aiolease: acquire(key=...)", _ours_acquire_key),
        ("aiolimiter", _aiolimiter),
        ("limits (async moving window)", _limits),
        ("pyrate-limiter", _pyrate),
        ("throttled-py (gcra)", _throttled),
    ]
    wall: dict[str, list[float]] = {name: [] for name, _ in contenders}
    cpu: dict[str, list[float]] = {name: [] for name, _ in contenders}
    for rnd in range(repeats):
        # Rotate the order so slow drifts of a noisy machine hit everyone alike.
        k = rnd % len(contenders)
        for name, make in contenders[k:] + contenders[:k]:
            op = make()
            await _ops_per_second(op, 0.1)  # warm-up
            w, c = await _ops_per_second(op, duration)
            wall[name].append(w)
            cpu[name].append(c)
            del op
            _run_closers()
    med = {name: statistics.median(v) for name, v in wall.items()}
    med_cpu = {name: statistics.median(v) for name, v in cpu.items()}
    anchor, anchor_cpu = med["aiolimiter"], med_cpu["aiolimiter"]
    lines = [
        f"(a) never-limited acquire, 1 task (median of {repeats} x {duration:g} s; "
        "spread = (max-min)/median of the wall figure)",
        f"    {'contender':32} {'ops/s wall':>12} {'spread':>7} {'x aiolimiter':>13} "
        f"{'ops/CPU-s':>12} {'x aiolimiter':>13}",
    ]
    for name, _ in contenders:
        v = wall[name]
        spread = (max(v) - min(v)) / med[name]
        lines.append(
            f"    {name:32} {fmt_ops(med[name]):>12} {spread:>6.0%} {med[name] / anchor:>12.2f}x "
            f"{fmt_ops(med_cpu[name]):>12} {med_cpu[name] / anchor_cpu:>12.2f}x"
        )
    ours = med["aiolease: async with limiter"] / anchor
    ours_cpu = med_cpu["aiolease: async with limiter"] / anchor_cpu
    lines.append(f"    ours / aiolimiter = {ours:.2f} wall, {ours_cpu:.2f} CPU (target >= 1.5)")
    return lines


# -- (b) accuracy ------------------------------------------------------------------

RATE = 200
TASKS = 20
SECONDS = 3.0


def _max_in_window(times: list[float], window: float = 1.0) -> int:
    """The most admissions within any half-open window (t - window, t]."""
    best = 0
    for i, t in enumerate(times):
        j = bisect.bisect_right(times, t - window)
        best = max(best, i - j + 1)
    return best


async def _greedy(acquire: Callable[[], Awaitable[Any]]) -> tuple[float, int, float]:
    """20 tasks acquire in a loop for SECONDS; returns (rate/s, max in 1 s, CPU s)."""
    loop = asyncio.get_running_loop()
    times: list[float] = []
    # What earlier measurements left on the heap (section (a) makes millions of objects)
    # must not be traversed by garbage collections that happen to fall in this run; and
    # the collection itself happens before the clock starts.
    gc.collect()
    gc.freeze()
    start = loop.time()
    end = start + SECONDS

    async def task() -> None:
        while True:
            await acquire()
            t = loop.time()
            if t >= end:
                return
            times.append(t)

    cpu0 = time.process_time()
    await asyncio.gather(*(task() for _ in range(TASKS)))
    cpu = time.process_time() - cpu0
    gc.unfreeze()
    times.sort()
    return len(times) / SECONDS, _max_in_window(times), cpu


def _acc_ours(strict: bool) -> Callable[[], Awaitable[Any]]:
    lim = aiolease.RateLimiter(RATE, strict=strict)

    async def acquire() -> None:
        async with lim:
            pass

    return acquire


def _acc_aiolimiter() -> Callable[[], Awaitable[Any]]:
    lim = aiolimiter.AsyncLimiter(RATE, 1)

    async def acquire() -> None:
        async with lim:
            pass

    return acquire


def _acc_limits() -> Callable[[], Awaitable[Any]]:
    storage = limits_storage.MemoryStorage()
    _CLOSERS.append(lambda: _close_memory_storage(storage))
    strategy = limits_strategies.MovingWindowRateLimiter(storage)
    item = limits.RateLimitItemPerSecond(RATE)

    async def acquire() -> None:
        while not await strategy.hit(item, "user"):  # noqa: ASYNC110 - limits cannot wait: poll
            await asyncio.sleep(0.01)

    return acquire


async def section_b(repeats: int) -> list[str]:
    subjects: list[tuple[str, Callable[[], Callable[[], Awaitable[Any]]], int]] = [
        ("aiolease RateLimiter(200)", lambda: _acc_ours(False), RATE + 1),
        ("aiolease RateLimiter(200, strict)", lambda: _acc_ours(True), RATE),
        ("aiolimiter AsyncLimiter(200, 1)", _acc_aiolimiter, RATE),
        ("limits moving window (poll 10ms)", _acc_limits, RATE),
    ]
    rows: dict[str, list[tuple[float, int, float]]] = {name: [] for name, _, _ in subjects}
    for rnd in range(repeats):
        for name, make, _ in subjects[rnd % len(subjects) :] + subjects[: rnd % len(subjects)]:
            rows[name].append(await _greedy(make()))
            _run_closers()
            await asyncio.sleep(0)  # let cancelled background tasks finish
    med = {
        name: tuple(statistics.median(r[k] for r in rows[name]) for k in range(3))
        for name, _, _ in subjects
    }
    anchor = "aiolimiter AsyncLimiter(200, 1)"

    def cpu_ratio(name: str) -> float:
        # The median of per-round ratios: each round runs every contender back to back.
        return statistics.median(
            r[2] / a[2] for r, a in zip(rows[name], rows[anchor], strict=True) if a[2] > 0
        )

    lines = [
        f"(b) accuracy: {RATE}/s configured, {TASKS} greedy tasks, {SECONDS:g} s real time "
        f"(median of {repeats})",
        f"    {'contender':34} {'rate/s':>7} {'max in 1s':>9} {'bound':>5} "
        f"{'over bound':>10} {'CPU s':>6} {'CPU x aiolimiter':>16}",
    ]
    for name, _, bound in subjects:
        rate, peak, cpu = med[name]
        over = (peak - bound) / bound
        lines.append(
            f"    {name:34} {rate:>7.1f} {peak:>9.0f} {bound:>5} {over:>+10.1%} {cpu:>6.3f} "
            f"{cpu_ratio(name):>15.2f}x"
        )
    return lines


# -- (c) Redis: H3's bench/limits_redis.py -----------------------------------------


async def section_c(repeats: int, duration: float) -> list[str]:
    """The Redis section, from ``bench/limits_redis.py`` when it exists.

    Hook for the Redis limiters: that module defines
    ``async def section(repeats: int, duration: float) -> list[str]`` returning
    the table lines (same style as the other sections).
    """
    try:
        module = importlib.import_module("limits_redis")
    except ModuleNotFoundError as exc:
        if exc.name != "limits_redis":
            raise
        return ["(c) Redis: bench/limits_redis.py not present, skipped"]
    lines: list[str] = await module.section(repeats, duration)
    return lines


# -- (d) metrics overhead ----------------------------------------------------------

SLOTS, CROWD = 10, 100
PLAIN = "not instrumented"


def _never_limited() -> Any:
    """A contender's setup: the never-limited ``async with`` of (a), in batches (it never
    yields, so the loop timer that ends a run is let in between batches)."""

    @asynccontextmanager
    async def setup() -> AsyncIterator[Worker]:
        lim = aiolease.RateLimiter(HUGE)

        async def worker(stop: Stop) -> int:
            n = 0
            while not stop.flag:
                for _ in range(BATCH):
                    async with lim:
                        pass
                n += BATCH
                await asyncio.sleep(0)
            return n

        yield worker

    return setup


def _queued() -> Any:
    """A contender's setup: ``async with`` a ConcurrencyLimiter(SLOTS) around sleep(0)."""

    @asynccontextmanager
    async def setup() -> AsyncIterator[Worker]:
        lim = aiolease.ConcurrencyLimiter(SLOTS)

        async def worker(stop: Stop) -> int:
            n = 0
            sleep = asyncio.sleep
            while not stop.flag:
                async with lim:
                    await sleep(0)
                n += 1
            return n

        yield worker

    return setup


async def section_d(repeats: int, duration: float) -> list[str]:
    parts = [
        (Column("never limited, 1 task", 1), _never_limited()),
        (Column(f"ConcurrencyLimiter({SLOTS}), {CROWD} tasks", CROWD), _queued()),
    ]
    names = {
        "otel": "aiolease.otel (SDK, exporter dropping all)",
        "prometheus": "aiolease.prometheus.Collector",
    }
    lines = [
        f"(d) metrics overhead: ops per CPU second, median of {repeats} interleaved rounds "
        f"x {duration:g} s (ratio: median of per-round ratios, instrumented / not)",
        f"    {'operation':36} {'contender':44} {'ops/CPU-s':>12} {'ratio':>6}",
    ]
    for column, setup in parts:
        for how, name in names.items():
            contenders = [Contender(PLAIN, setup), Contender(name, with_metrics(how, setup))]
            results = await run_rounds(
                contenders,
                [column],
                repeats=repeats,
                duration=duration,
                warmup=0.2,
                clock=time.process_time,
                pair=(name, PLAIN),
            )
            for c in contenders:
                ratio = (
                    "" if c.name == PLAIN else f"{results.ratio(c.name, PLAIN, column.title):.2f}"
                )
                lines.append(
                    f"    {column.title:36} {c.name:44} "
                    f"{fmt_ops(results.median(c.name, column.title)):>12} {ratio:>6}"
                )
    return lines


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="rounds per measurement")
    parser.add_argument("--duration", type=float, default=1.0, help="seconds per (a) sample")
    parser.add_argument(
        "--sections", default="abcd", help="which sections to run, e.g. 'a' or 'ad'"
    )
    args = parser.parse_args(argv)
    print(environment(), flush=True)
    if "a" in args.sections:
        print("\n".join(await section_a(args.repeats, args.duration)), flush=True)
    if "b" in args.sections:
        print("\n".join(await section_b(args.repeats)), flush=True)
    if "c" in args.sections:
        print("\n".join(await section_c(args.repeats, args.duration)), flush=True)
    if "d" in args.sections:
        print("\n".join(await section_d(args.repeats, args.duration)), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
