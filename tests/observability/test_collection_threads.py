"""Collections on a thread of their own, as the exporters make them.

The OpenTelemetry SDK's periodic reader collects on its own thread, and
prometheus_client's ``start_http_server`` serves scrapes on another: the state
instruments read the pools and limiters from there while the event loop's thread
makes, uses and drops them.
"""

from __future__ import annotations

import gc
import logging
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from metrics_helpers import instrumented
from prometheus_client import CollectorRegistry, generate_latest

from aiolease import ConcurrencyLimiter, Pool, RateLimiter, prometheus
from aiolease.testing import FakeManager

pytestmark = pytest.mark.timeout(60)


@contextmanager
def frequent_thread_switches() -> Iterator[None]:
    """Threads switch at almost every bytecode, so a reader meets every window."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def test_a_collection_on_another_thread_while_pools_and_limiters_come_and_go(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A collection that met a pool or limiter being made (or dropped) on the loop's
    thread failed: the OpenTelemetry SDK logged "Callback failed" and left the state
    instruments out of that export; a Prometheus scrape failed whole."""
    caplog.set_level(logging.ERROR, logger="opentelemetry")
    gc.collect()
    # Many live objects (so a copy of the registries takes a while) under a few names (so a
    # collection has few series to export).
    kept = [Pool(FakeManager(), name=f"threads-kept-{i % 4}") for i in range(400)]
    kept_limiters = [ConcurrencyLimiter(2, name=f"threads-kept-{i % 4}") for i in range(400)]
    registry = CollectorRegistry()
    collector = prometheus.Collector()
    registry.register(collector)
    failures: list[BaseException] = []
    collections = 0
    stop = threading.Event()
    try:
        with instrumented() as reader, frequent_thread_switches():

            def collect() -> None:
                nonlocal collections
                while not stop.is_set():
                    try:
                        reader.get_metrics_data()
                        generate_latest(registry)
                    except BaseException as exc:  # reported by the test below
                        failures.append(exc)
                        return
                    collections += 1

            thread = threading.Thread(target=collect, daemon=True)
            thread.start()
            try:
                made = 0
                end = time.monotonic() + 1.0
                while (time.monotonic() < end or collections < 5) and not failures:
                    objects: list[Any] = [
                        Pool(FakeManager(), name="threads-churn"),
                        ConcurrencyLimiter(1, name="threads-churn"),
                        RateLimiter(1, name="threads-churn-rate"),
                    ]
                    made += 1
                    del objects  # dropped: the registries forget them
                    if time.monotonic() > end + 20:  # a thread that never collects
                        break
            finally:
                stop.set()
                thread.join(timeout=30)
        assert not thread.is_alive()
    finally:
        collector.close()
    del kept, kept_limiters
    assert not failures, failures
    callback_failures = [r for r in caplog.records if "Callback failed" in r.getMessage()]
    assert not callback_failures, [r.exc_text for r in callback_failures][:1]
    assert collections >= 5
    assert made > 0


def test_redis_concurrency_limiter_statistics_while_its_leases_change() -> None:
    """``RedisConcurrencyLimiter.statistics()`` (which the state instruments read on the
    exporter's thread) iterated the live lease and waiter maps: a lease taken or
    released on the loop's thread meanwhile made it raise RuntimeError."""
    redis = pytest.importorskip("redis.asyncio")
    from aiolease.redis import RedisConcurrencyLimiter

    limiter = RedisConcurrencyLimiter(redis.Redis(), "threads-stats", 3)
    held: dict[str, Any] = limiter._held  # lease id -> permit

    class Changing:
        """A held lease; reading its keys stands for the loop's thread taking a lease
        at that moment (on the other side of a thread switch)."""

        def __init__(self, n: int) -> None:
            self.n = n

        @property
        def _keys(self) -> tuple[str, ...]:
            held[f"lease-{self.n}-next"] = Changing(self.n + 100)  # (never read again)
            return ("k",)

    try:
        held["lease-1"] = Changing(1)
        held["lease-2"] = Changing(2)
        s = limiter.statistics()
        assert s.in_use == 2
        assert s.keys == 1
    finally:
        held.clear()
