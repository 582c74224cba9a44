"""What the metrics cost, by instrumentation and SDK configuration, in instructions.

``aiolease.otel`` records two histogram measurements per pool lease (wait time,
use time) and one per limiter request admitted after queueing (time in queue);
the state instruments are observed when the SDK collects. This script measures,
per configuration a user can choose (public APIs only):

* ``--subject record``: one histogram measurement as a lease makes it (through
  the pool's observer), or with ``direct*`` configurations by calling the SDK's
  ``Histogram.record`` itself (what aiolease's own frames add, and what the
  attributes and a passed context change);
* ``--subject pg``: one acquire + ``SELECT 1`` + release of an asyncpg pool, 100
  tasks over 10 connections (as in ``make bench-pool``);
* ``--subject limiter``: one ``async with`` of a ``ConcurrencyLimiter(10)`` shared
  by 100 tasks around ``asyncio.sleep(0)`` (nearly every acquisition queues).

Usage::

    python bench/metrics_cost.py --subject pg --configs none,sdk   # callgrind table
    python bench/metrics_cost.py --subject pg --config sdk --n 5000  # one plain run

The table runs each configuration under ``valgrind --tool=callgrind`` with
``--n`` operations and with none (the same set-up and warm-up) and divides the
difference in instructions by ``--n``: start-up, imports and set-up cancel out.
Only this process is counted (not PostgreSQL). Instruction counts hardly move
with the load of a shared machine, unlike timings. Figures: bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

POOL = "db.client.connection.pool.name"
VALUE = 0.002  # seconds: one bucket of otel.BUCKETS like any other
DSN = os.environ.get("AIOLEASE_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
TASKS, SIZE = 100, 10

#: name -> what it is (the table's order).
CONFIGS = {
    "none": "not instrumented",
    "prometheus": "aiolease.prometheus.Collector",
    "api": "aiolease.otel, opentelemetry-api alone (the no-op meter)",
    "sdk": "aiolease.otel, SDK defaults (exemplar filter trace_based, no span)",
    "sdk-span": "aiolease.otel, SDK defaults inside a sampled span",
    "exemplars-off": "aiolease.otel, SDK, exemplar filter always_off",
    "exemplars-on": "aiolease.otel, SDK, exemplar filter always_on",
    "view-keys": "aiolease.otel, SDK, a View keeping the pool name attribute only",
    "view-no-keys": "aiolease.otel, SDK, a View dropping every attribute",
    "expo": "aiolease.otel, SDK, a View: base-2 exponential histogram",
    "two-readers": "aiolease.otel, SDK, two metric readers",
    "drop": "aiolease.otel, SDK, a View with DropAggregation",
    "direct": "Histogram.record called directly (SDK defaults)",
    "direct-ctx": "Histogram.record called directly, given the current context",
    "direct-no-attrs": "Histogram.record called directly, no attributes",
}
DIRECT = ("direct", "direct-ctx", "direct-no-attrs")


def _provider(config: str) -> Any:
    if config == "api":
        from opentelemetry.metrics import NoOpMeterProvider

        return NoOpMeterProvider()
    from opentelemetry.sdk.metrics import (
        AlwaysOffExemplarFilter,
        AlwaysOnExemplarFilter,
        MeterProvider,
    )
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.metrics.view import (
        DropAggregation,
        ExponentialBucketHistogramAggregation,
        View,
    )

    views = {
        "view-keys": View(instrument_name="*", attribute_keys={POOL}),
        "view-no-keys": View(instrument_name="*", attribute_keys=set()),
        "expo": View(instrument_name="*", aggregation=ExponentialBucketHistogramAggregation()),
        "drop": View(instrument_name="*", aggregation=DropAggregation()),
    }
    filters = {"exemplars-off": AlwaysOffExemplarFilter, "exemplars-on": AlwaysOnExemplarFilter}
    kwargs: dict[str, Any] = {}
    if config in views:
        kwargs["views"] = [views[config]]
    if config in filters:
        kwargs["exemplar_filter"] = filters[config]()
    readers = [InMemoryMetricReader() for _ in range(2 if config == "two-readers" else 1)]
    return MeterProvider(metric_readers=readers, **kwargs)


async def _instrument(config: str, stack: AsyncExitStack) -> Any:
    """Instrument aiolease as ``config`` says until ``stack`` closes; the provider."""
    if config == "none":
        return None
    if config == "prometheus":
        from aiolease import prometheus

        stack.callback(prometheus.Collector().close)
        return None
    from aiolease import otel

    provider = _provider(config)
    if hasattr(provider, "shutdown"):
        stack.callback(provider.shutdown)
    otel.instrument(meter_provider=provider)
    stack.callback(otel.uninstrument)
    if config == "sdk-span":
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider

        span = TracerProvider().get_tracer("bench").start_span("bench")
        stack.enter_context(trace.use_span(span, end_on_exit=True))
    return provider


async def _record_ops(config: str, stack: AsyncExitStack) -> Callable[[int], Awaitable[None]]:
    from aiolease import _metrics, otel

    provider = await _instrument(config, stack)
    if config in DIRECT:
        from opentelemetry.context import get_current

        histogram = provider.get_meter("bench").create_histogram(
            "h", "s", explicit_bucket_boundaries_advisory=otel.BUCKETS
        )
        record, attrs, ctx = histogram.record, {POOL: "bench"}, get_current()

        async def direct(n: int) -> None:
            if config == "direct-ctx":
                for _ in range(n):
                    record(VALUE, attrs, ctx)
            elif config == "direct-no-attrs":
                for _ in range(n):
                    record(VALUE)
            else:
                for _ in range(n):
                    record(VALUE, attrs)

        return direct

    class Subject:  # stands for a pool in the (weak) registry while it is alive
        pass

    subject = Subject()
    stack.callback(id, subject)  # holds it (and so its registration) until the end
    observer = _metrics.register_pool(subject, "bench")
    if observer is None:
        raise SystemExit(f"--subject record measures an instrumented path, not {config!r}")
    leased = observer.leased

    async def through_observer(n: int) -> None:
        for _ in range(n):
            leased(VALUE)

    return through_observer


def _crowd(op: Callable[[], Awaitable[None]]) -> Callable[[int], Awaitable[None]]:
    """``ops(n)``: TASKS tasks make ``n`` calls of ``op`` between them."""

    async def ops(n: int) -> None:
        left = n

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await op()

        await asyncio.gather(*(worker() for _ in range(TASKS)))

    return ops


async def _pg_ops(config: str, stack: AsyncExitStack) -> Callable[[int], Awaitable[None]]:
    from aiolease.asyncpg import create_pool

    await _instrument(config, stack)
    pool = await stack.enter_async_context(create_pool(DSN, min_size=SIZE, max_size=SIZE))

    async def lease() -> None:
        async with pool.acquire() as conn:
            await conn.fetchval("SELECT 1")

    return _crowd(lease)


async def _limiter_ops(config: str, stack: AsyncExitStack) -> Callable[[int], Awaitable[None]]:
    import aiolease

    await _instrument(config, stack)
    limiter = aiolease.ConcurrencyLimiter(SIZE)

    async def hold() -> None:
        async with limiter:
            await asyncio.sleep(0)

    return _crowd(hold)


SUBJECTS = {"record": _record_ops, "pg": _pg_ops, "limiter": _limiter_ops}
WARMUP = {"record": 1000, "pg": 500, "limiter": 1000}


async def run(subject: str, config: str, n: int) -> None:
    """Set up, warm up, then make ``n`` operations of ``subject`` as ``config`` says."""
    async with AsyncExitStack() as stack:
        ops = await SUBJECTS[subject](config, stack)
        await ops(WARMUP[subject])
        await ops(n)


def _callgrind_total(subject: str, config: str, n: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        command = [sys.executable, __file__, "--subject", subject, "--config", config]
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                *command,
                "--n",
                str(n),
            ],
            check=True,
            env={**os.environ, "PYTHONHASHSEED": "0"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        with open(out) as f:
            found = re.search(r"^(?:summary|totals): (\d+)", f.read(), re.M)
    if found is None:
        raise SystemExit("no instruction total in the callgrind output")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--subject", choices=sorted(SUBJECTS), default="record")
    parser.add_argument("--config", choices=sorted(CONFIGS), help="one plain run of this config")
    parser.add_argument("--configs", help="comma-separated configs for the callgrind table")
    parser.add_argument("--n", type=int, help="operations per run (default: 20000; pg: 5000)")
    args = parser.parse_args()
    n = args.n if args.n is not None else 5000 if args.subject == "pg" else 20_000
    if args.config:
        asyncio.run(run(args.subject, args.config, n))
        return
    default = [c for c in CONFIGS if c not in ("none", "prometheus")]
    if args.subject != "record":
        default = ["none", "prometheus", *(c for c in default if c not in DIRECT)]
    configs = args.configs.split(",") if args.configs else default
    width = max(len(CONFIGS[c]) for c in configs) + 2
    print(f"{args.subject}: instructions per operation (callgrind, (N - 0 operations) / N, N={n})")
    for config in configs:
        per = (
            _callgrind_total(args.subject, config, n) - _callgrind_total(args.subject, config, 0)
        ) / n
        print(f"{CONFIGS[config]:<{width}}{per / 1000:>8.1f}k", flush=True)


if __name__ == "__main__":
    main()
