"""aiolease.prometheus needs prometheus_client only: no OpenTelemetry package at all."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

POOL = "db_client_connection_pool_name"

_WITHOUT_OTEL = textwrap.dedent(
    """
    import asyncio, sys

    class NoOpenTelemetry:
        # As if no opentelemetry distribution (API or SDK) were installed.
        def find_spec(self, name, path=None, target=None):
            if name == "opentelemetry" or name.startswith("opentelemetry."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, NoOpenTelemetry())

    from prometheus_client import CollectorRegistry, generate_latest

    import aiolease
    from aiolease import Pool, prometheus
    from aiolease.testing import FakeConnection, FakeManager

    async def main():
        registry = CollectorRegistry()
        registry.register(prometheus.Collector())
        async with Pool(FakeManager(), max_size=2, name="no-otel") as pool:
            async with pool.acquire():
                pass
            async with aiolease.ConcurrencyLimiter(1, name="no-otel").acquire():
                pass
            async with aiolease.atomic(FakeConnection()):
                pass
            text = generate_latest(registry).decode()
        assert not [m for m in sys.modules if m.startswith("opentelemetry")]
        print(text)

    asyncio.run(main())
    """
)


def test_the_collector_works_without_any_opentelemetry_package() -> None:
    env = {**os.environ}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", _WITHOUT_OTEL],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    pool = 'db_client_connection_pool_name="no-otel"'
    for line in (
        f"db_client_connection_max{{{pool}}} 2.0",
        f'db_client_connection_count{{{pool},db_client_connection_state="idle"}} 1.0',
        f"db_client_connection_wait_time_seconds_count{{{pool}}} 1.0",
        f"db_client_connection_use_time_seconds_count{{{pool}}} 1.0",
        f'db_client_connection_create_time_seconds_count{{{pool},error_type=""}} 1.0',
        f"db_client_connection_timeouts_total{{{pool}}} 0.0",
        'aiolease_limiter_requests_total{aiolease_limiter_name="no-otel",'
        'aiolease_limiter_result="acquired"} 1.0',
        'aiolease_transaction_count_total{aiolease_transaction_outcome="commit"} 1.0',
    ):
        assert line in done.stdout.splitlines(), (line, done.stdout)


_ZERO_WORKER = textwrap.dedent(
    """
    import asyncio
    import aiolease
    from aiolease import Pool, prometheus
    from aiolease.testing import FakeManager

    async def main():
        collector = prometheus.Collector()
        async with Pool(FakeManager(), name="zeros") as pool:
            async with pool.acquire():
                pass
            async with aiolease.ConcurrencyLimiter(1, name="zeros").acquire():
                pass
            await asyncio.sleep(0)  # the state is written once per turn of the loop
        collector.close()

    asyncio.run(main())
    """
)


def test_multiprocess_counters_at_zero_are_exposed_as_in_one_process(tmp_path: Path) -> None:
    """One process exposes db_client_connection_timeouts_total and every
    aiolease_limiter_requests_total result from 0; in multiprocess mode a counter series
    was written only by its first increment, so a pool that never timed out had no
    timeouts series at all (and a rate() over it nothing to start from)."""
    from prometheus_client import CollectorRegistry, multiprocess

    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    subprocess.run(
        [sys.executable, "-W", "ignore", "-c", _ZERO_WORKER], env=env, timeout=60, check=True
    )
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(tmp_path))  # type: ignore[no-untyped-call]
    value = registry.get_sample_value
    assert value("db_client_connection_timeouts_total", {POOL: "zeros"}) == 0
    for result, expected in (("acquired", 1), ("rejected", 0), ("timeout", 0), ("canceled", 0)):
        labels = {"aiolease_limiter_name": "zeros", "aiolease_limiter_result": result}
        assert value("aiolease_limiter_requests_total", labels) == expected, result


async def test_otel_and_prometheus_together_and_each_stops_alone() -> None:
    """Both sinks see every lease; uninstrument() stops OpenTelemetry only, close() the
    collector only; with both gone a pool holds no observer (the hot path's one test)."""
    from metrics_helpers import Collected, instrumented
    from prometheus_client import CollectorRegistry

    from aiolease import Pool, otel, prometheus
    from aiolease.testing import FakeManager

    registry = CollectorRegistry()
    collector = prometheus.Collector()
    registry.register(collector)
    wait_count = "db_client_connection_wait_time_seconds_count"
    labels = {POOL: "both"}
    try:
        async with Pool(FakeManager(), name="both") as pool:
            with instrumented() as reader:
                async with pool.acquire():
                    pass
                otel_wait = Collected(reader)["db.client.connection.wait_time"]
                assert otel_wait.value(**{"db.client.connection.pool.name": "both"}).count == 1
            assert registry.get_sample_value(wait_count, labels) == 1
            async with pool.acquire():  # OpenTelemetry uninstrumented: Prometheus goes on
                pass
            assert registry.get_sample_value(wait_count, labels) == 2
            collector.close()
            assert pool._observer is None
            otel.uninstrument()  # harmless when not instrumented
            async with pool.acquire():
                pass
            assert registry.get_sample_value(wait_count, labels) == 2
    finally:
        collector.close()
