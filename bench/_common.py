"""Shared helpers for the benchmarks in ``bench/``: timed workers, interleaved rounds, tables.

A benchmark is a list of :class:`Contender` objects. Each one opens its
subject once per round (``setup``, an async context manager yielding a
:data:`Worker`) and runs every column with it. Rounds rotate the order of the
contenders so slow drifts of a noisy machine hit each of them alike; the table
shows medians over the rounds. These are measurements, not tests: nothing here
asserts anything.
"""

from __future__ import annotations

import asyncio
import gc
import os
import platform
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CLOCKS",
    "Column",
    "Contender",
    "Stop",
    "Worker",
    "environment",
    "fmt_ops",
    "instrumented",
    "run_rounds",
    "timed",
    "with_metrics",
]


class Stop:
    """A flag the workers poll between operations; set when the run's time is up."""

    __slots__ = ("flag",)

    def __init__(self) -> None:
        self.flag = False


#: ``async def worker(stop) -> operations done``: loops until ``stop.flag``.
Worker = Callable[[Stop], Coroutine[Any, Any, int]]


@dataclass
class Contender:
    """One subject of a benchmark: a name and how to open it (yields a worker)."""

    name: str
    setup: Callable[[], AbstractAsyncContextManager[Worker]]
    role: str = ""  # "floor", "ours", "anchor" (how the table groups it)


@dataclass(frozen=True)
class Column:
    """One column of the table: how many tasks share the subject."""

    title: str
    tasks: int


@dataclass
class Results:
    """ops/s per (contender, column title), one value per round."""

    samples: dict[tuple[str, str], list[float]] = field(default_factory=dict)

    def add(self, contender: str, column: str, value: float) -> None:
        self.samples.setdefault((contender, column), []).append(value)

    def median(self, contender: str, column: str) -> float:
        values = self.samples.get((contender, column))
        return statistics.median(values) if values else float("nan")

    def ratio(self, contender: str, other: str, column: str) -> float:
        """The median over rounds of ``contender / other`` within each round.

        Both were measured in the same round, moments apart, so the slow drifts of
        a shared machine (the floor itself moved by 30% between rounds here) cancel
        out of each per-round ratio; the median then drops the odd disturbed round.
        """
        mine = self.samples.get((contender, column), [])
        theirs = self.samples.get((other, column), [])
        ratios = [a / b for a, b in zip(mine, theirs, strict=False) if b > 0]
        return statistics.median(ratios) if ratios else float("nan")

    def spread(self, contender: str, column: str) -> float:
        """(max - min) / median over the rounds: how noisy this cell was."""
        values = self.samples.get((contender, column))
        if not values or len(values) < 2:
            return 0.0
        med = statistics.median(values)
        return (max(values) - min(values)) / med if med else 0.0


#: The clocks a run can be measured with: wall time (what users see) or this
#: process's CPU time (steadier on a busy machine; it leaves out time spent
#: waiting for a server, so use it for in-process mechanics).
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


async def timed(
    worker: Worker, tasks: int, duration: float, clock: Callable[[], float] = time.perf_counter
) -> float:
    """Run ``tasks`` copies of ``worker`` for ``duration`` seconds; return operations per second.

    The stop flag is set by a loop timer, so the workers pay only an attribute
    read per operation for the bookkeeping. Operations in flight when time is
    up finish and are counted, and the elapsed time includes them. ``clock``
    measures the elapsed time (see :data:`CLOCKS`).
    """
    loop = asyncio.get_running_loop()
    stop = Stop()

    def done() -> None:
        stop.flag = True

    gc.collect()
    handle = loop.call_later(duration, done)
    start = clock()
    try:
        counts = await asyncio.gather(*(worker(stop) for _ in range(tasks)))
    finally:
        handle.cancel()
    elapsed = clock() - start
    return sum(counts) / elapsed


async def run_rounds(
    contenders: Sequence[Contender],
    columns: Sequence[Column],
    *,
    repeats: int,
    duration: float,
    warmup: float,
    progress: Callable[[str], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
    pair: tuple[str, str] | None = None,
) -> Results:
    """Interleave the contenders over ``repeats`` rounds, rotating their order each round.

    ``pair`` names two contenders whose ratio is the one that matters (ours and the
    floor): every round runs them back to back, first one then the other in turn, so
    that the least time, and so the least of the machine's drift, separates the two
    cells each per-round ratio divides. The other contenders rotate around them.
    """
    results = Results()
    units: list[list[Contender]] = [[c] for c in contenders]
    if pair is not None:
        first, second = (next(c for c in contenders if c.name == name) for name in pair)
        units = [[first, second]] + [[c] for c in contenders if c not in (first, second)]
    n = len(units)
    for rnd in range(repeats):
        order: list[Contender] = []
        for i in range(n):
            unit = units[(rnd + i) % n]
            order.extend(unit if rnd % 2 == 0 else reversed(unit))
        for contender in order:
            async with contender.setup() as worker:
                if warmup > 0:
                    await timed(worker, max(c.tasks for c in columns), warmup)
                for column in columns:
                    results.add(
                        contender.name,
                        column.title,
                        await timed(worker, column.tasks, duration, clock),
                    )
        if progress is not None:
            progress(f"  round {rnd + 1}/{repeats} done")
    return results


@contextmanager
def instrumented(how: str) -> Iterator[None]:
    """aiolease instrumented while in the block: ``"otel"``, the OpenTelemetry SDK with a
    reader collecting every second into an exporter that drops everything (what the SDK
    costs, not an export), or ``"prometheus"``, a ``Collector`` (not scraped)."""
    if how == "otel":
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import (
            MetricExporter,
            MetricExportResult,
            PeriodicExportingMetricReader,
        )

        from aiolease import otel

        class Drop(MetricExporter):
            def export(self, metrics_data: Any, timeout_millis: float = 0, **kw: Any) -> Any:
                return MetricExportResult.SUCCESS

            def force_flush(self, timeout_millis: float = 0) -> bool:
                return True

            def shutdown(self, timeout_millis: float = 0, **kw: Any) -> None:
                pass

        reader = PeriodicExportingMetricReader(Drop(), export_interval_millis=1000)
        provider = MeterProvider(metric_readers=[reader])
        otel.instrument(meter_provider=provider)
        try:
            yield
        finally:
            otel.uninstrument()
            provider.shutdown()
    elif how == "prometheus":
        from aiolease import prometheus

        collector = prometheus.Collector()
        try:
            yield
        finally:
            collector.close()
    else:
        raise ValueError(f"instrumented: {how!r} is neither 'otel' nor 'prometheus'")


def with_metrics(
    how: str, setup: Callable[[], AbstractAsyncContextManager[Worker]]
) -> Callable[[], AbstractAsyncContextManager[Worker]]:
    """``setup`` (a contender's) with aiolease :func:`instrumented` for as long as it is open."""

    @asynccontextmanager
    async def instrumented_setup() -> AsyncIterator[Worker]:
        with instrumented(how):
            async with setup() as worker:
                yield worker

    return instrumented_setup


def fmt_ops(value: float) -> str:
    """``12,345`` style, or ``-`` for a missing value."""
    if value != value:  # NaN
        return "-"
    return f"{value:,.0f}"


def environment() -> str:
    """One line describing where the numbers come from."""
    try:
        running = type(asyncio.get_running_loop())
        loop = f"{running.__module__}.{running.__qualname__}"
    except RuntimeError:  # outside a loop: what the policy would make
        loop = f"policy {type(asyncio.get_event_loop_policy()).__module__}"
    return (
        f"Python {platform.python_version()} ({sys.implementation.name}), "
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, loop {loop}"
    )
