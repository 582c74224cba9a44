"""Prometheus metrics: the OpenTelemetry series under their standard Prometheus names.

Install with ``pip install 'aiolease[prometheus]'`` (``prometheus_client`` only,
no OpenTelemetry SDK). For example:

```python
import prometheus_client
from aiolease import prometheus
prometheus_client.REGISTRY.register(prometheus.Collector())
```

Names follow the OpenTelemetry-to-Prometheus rules: dots become underscores,
the unit ``s`` becomes the suffix ``_seconds``, counters end in ``_total``
(``db_client_connection_count``, ``db_client_connection_wait_time_seconds``,
``db_client_connection_timeouts_total``, ``aiolease_limiter_requests_total``...),
and so do the attribute names (``db_client_connection_pool_name``).

Single process: the state series (connections idle and used, pending
requests, bounds, timeouts, limiter counts) are read from the live pools and
limiters at each scrape. In prometheus_client's multiprocess mode
(``PROMETHEUS_MULTIPROC_DIR`` set before ``prometheus_client`` is imported,
gunicorn or uvicorn workers), each worker writes its values to the shared
directory instead: the histograms and counters as they happen, the state
gauges (``multiprocess_mode="livesum"``: summed over live workers) after each
event of a pool or limiter in that worker and every ``refresh_interval``
seconds while its event loop runs.

A pool's or limiter's series exist while a live one has its name: a histogram
series is made by its first measurement and, in one process, dropped by the first
scrape after its name's last object is gone that finds nothing new in it (the
multiprocess directory keeps what was written). See docs/observability.md, "How
long a series lives".
"""

from __future__ import annotations

import asyncio
import math
import os
import threading
from bisect import bisect_left
from collections.abc import Container, Iterable, Iterator
from typing import Any

from . import _metrics, _validate

try:
    from prometheus_client import Counter, Gauge, Histogram
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
    from prometheus_client.registry import Collector as _Collector
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "aiolease.prometheus needs prometheus_client: pip install 'aiolease[prometheus]'"
    ) from exc

__all__ = ["BUCKETS", "Collector"]

#: Histogram buckets (seconds), as ``aiolease.otel`` advises them.
BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0)

_POOL = "db_client_connection_pool_name"
_STATE = "db_client_connection_state"
_LIMITER = "aiolease_limiter_name"
_RESULT = "aiolease_limiter_result"

# name -> (help, the PoolState field) of the pool gauges besides the count.
_POOL_GAUGES = {
    "db_client_connection_idle_min": (
        "The minimum number of idle open connections allowed (aiolease: min_size).",
        "min_size",
    ),
    "db_client_connection_max": ("The maximum number of open connections allowed.", "max_size"),
    "db_client_connection_pending_requests": (
        "The number of current pending requests for an open connection.",
        "pending",
    ),
}
_COUNT_HELP = "The number of connections that are currently in state described by the state label."
_TIMEOUTS_HELP = "Connection timeouts trying to obtain a connection from the pool."
_REQUESTS_HELP = "Requests to a limiter by result."
_QUEUED_HELP = "Requests waiting in a limiter's queue."
_LEASES_HELP = "Slots held of a concurrency limiter."
_RESULTS = ("acquired", "rejected", "timeout", "canceled")


#: Multiprocess mode: per (process, counter series), the total written to the shared
#: directory. This process's files keep the counts whichever collector wrote them, so a
#: collector closed and made again in the same worker brings them up from there instead of
#: adding every total a second time. Keyed by pid: a forked worker's files start at zero.
_WRITTEN_TOTALS: dict[tuple[Any, ...], float] = {}


def _multiprocess() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class _Series:
    """One series of a histogram aggregated in this process: observations per bucket
    (the last one past every bound), their sum, and how many a scrape last showed."""

    __slots__ = ("counts", "seen", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0
        self.seen = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(BUCKETS, value)] += 1  # the first bound >= value: its `le`
        self.sum += value


class _LocalHistogram:
    """A histogram family aggregated in this process, turned into Prometheus's
    cumulative buckets when scraped. The first label is the name of a pool or limiter.

    A series is made by its first observation (a pool or limiter never used has none)
    and dropped by a scrape that finds its name on no live pool or limiter and nothing
    new in it since the previous scrape, which showed its final counts.
    """

    def __init__(self, name: str, documentation: str, labelnames: list[str]) -> None:
        self._name = name
        self._doc = documentation
        self._labelnames = labelnames
        self._series: dict[tuple[str, ...], _Series] = {}

    def observe(self, values: tuple[str, ...], amount: float) -> None:
        # Looked up at each observation, never kept: a series a scrape dropped is made
        # again by the next observation instead of taking it in unseen.
        series = self._series.get(values)
        if series is None:
            series = self._series[values] = _Series()
        series.observe(amount)

    def collect(self, live: Container[str]) -> list[Metric]:
        """The family, once the series of names not in ``live`` with nothing new since
        the previous scrape are dropped."""
        family = HistogramMetricFamily(self._name, self._doc, labels=self._labelnames)
        for values, series in list(self._series.items()):
            observed = sum(series.counts)
            if observed == series.seen and values[0] not in live:
                del self._series[values]
                continue
            series.seen = observed
            total = 0
            buckets = []
            for bound, count in zip((*BUCKETS, math.inf), series.counts, strict=True):
                total += count
                buckets.append(("+Inf" if bound == math.inf else repr(float(bound)), total))
            family.add_metric(list(values), buckets, series.sum)
        return [family]


class _SharedHistogram:
    """Multiprocess mode: prometheus_client's histogram, which writes each observation
    to the shared directory (a series made by its first observation, as above; the
    directory's series cannot be removed)."""

    def __init__(self, name: str, documentation: str, labelnames: list[str]) -> None:
        self._histogram = Histogram(name, documentation, labelnames, buckets=BUCKETS, registry=None)

    def observe(self, values: tuple[str, ...], amount: float) -> None:
        self._histogram.labels(*values).observe(amount)


class _PoolRecorder:
    __slots__ = ("_create_time", "_key", "_name", "_use_time", "_wait_time")

    def __init__(self, collector: Collector, name: str) -> None:
        self._name = name
        self._key = (name,)
        self._wait_time = collector._wait_time
        self._use_time = collector._use_time
        self._create_time = collector._create_time

    def wait(self, seconds: float) -> None:
        self._wait_time.observe(self._key, seconds)

    def wait_failed(self, seconds: float, error: BaseException) -> None:
        pass  # timeouts are state, read at the scrape

    def use(self, seconds: float) -> None:
        self._use_time.observe(self._key, seconds)

    def reset_done(self) -> None:
        pass  # the state is read at the scrape

    def create(self, seconds: float, error_type: str | None) -> None:
        self._create_time.observe((self._name, error_type or ""), seconds)


class _SharedPoolRecorder(_PoolRecorder):
    """Multiprocess mode: each event also has the worker's state written soon."""

    __slots__ = ("_touched",)

    def __init__(self, collector: Collector, name: str) -> None:
        super().__init__(collector, name)
        self._touched = collector._touched

    def wait(self, seconds: float) -> None:
        super().wait(seconds)
        self._touched()

    def wait_failed(self, seconds: float, error: BaseException) -> None:
        self._touched()

    def use(self, seconds: float) -> None:
        super().use(seconds)
        self._touched()

    def reset_done(self) -> None:
        self._touched()

    def create(self, seconds: float, error_type: str | None) -> None:
        super().create(seconds, error_type)
        self._touched()


class _LimiterRecorder:
    __slots__ = ("_key", "_time_in_queue")

    def __init__(self, collector: Collector, name: str) -> None:
        self._key = (name,)
        self._time_in_queue = collector._time_in_queue

    def queued(self, seconds: float) -> None:
        self._time_in_queue.observe(self._key, seconds)


class _SharedLimiterRecorder(_LimiterRecorder):
    """Multiprocess mode: each event also has the worker's state written soon."""

    __slots__ = ("_touched",)

    def __init__(self, collector: Collector, name: str) -> None:
        super().__init__(collector, name)
        self._touched = collector._touched

    def queued(self, seconds: float) -> None:
        super().queued(seconds)
        self._touched()


class Collector(_Collector):
    """Every pool's and limiter's metrics, existing and later ones, and transactions'.

    Making it starts the recording; register it with a registry to expose it
    (``prometheus_client.REGISTRY.register(Collector())``); :meth:`close` stops it.
    In multiprocess mode make one in each worker: it writes to
    ``PROMETHEUS_MULTIPROC_DIR``, and the ``/metrics`` handler exposes what every
    worker wrote with ``prometheus_client.multiprocess.MultiProcessCollector``
    (this collector itself then yields nothing, so the series never appear twice).

    Args:
        refresh_interval: in multiprocess mode, the longest a worker's state gauges
            lag behind its pools and limiters while nothing happens there (seconds,
            a finite number > 0).

    Raises:
        TypeError, ValueError: ``refresh_interval`` is not a finite number > 0.
    """

    def __init__(self, *, refresh_interval: float = 1.0) -> None:
        self._interval = _validate.seconds("refresh_interval", refresh_interval)
        self._multiprocess = _multiprocess()
        self._create_time = self._histogram(
            "db_client_connection_create_time_seconds",
            "The time it took to create a new connection.",
            [_POOL, "error_type"],
        )
        self._wait_time = self._histogram(
            "db_client_connection_wait_time_seconds",
            "The time it took to obtain an open connection from the pool.",
            [_POOL],
        )
        self._use_time = self._histogram(
            "db_client_connection_use_time_seconds",
            "The time between borrowing a connection and returning it to the pool.",
            [_POOL],
        )
        self._time_in_queue = self._histogram(
            "aiolease_limiter_request_time_in_queue_seconds",
            "The time a request admitted after waiting spent in the limiter's queue.",
            [_LIMITER],
        )
        self._transactions = Counter(
            "aiolease_transaction_count",
            "Outermost transactions by outcome (and retries of them).",
            ["aiolease_transaction_outcome"],
            registry=None,
        )
        self._tx = {o: self._transactions.labels(o) for o in _metrics.TX_OUTCOMES}
        # One process: the names given a recorder since the last scrape. A pool or
        # limiter registers, then gets its recorders, then records: a scrape that read
        # the live names just before a new one of a name registered still keeps that
        # name's series (taken under _lock with the drop, so neither misses the other).
        self._lock = threading.Lock()
        self._claimed_pools: set[str] = set()
        self._claimed_limiters: set[str] = set()
        # Multiprocess mode: the state written to the shared directory.
        self._timer: asyncio.TimerHandle | None = None
        self._soon = False
        # The loop _timer and the pending write (_soon) are on: a worker may run several
        # loops in turn, and callbacks left on one that ended never run.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._written: set[tuple[str, tuple[str, ...]]] = set()  # gauge series written
        if self._multiprocess:
            self._gauges = {
                "db_client_connection_count": Gauge(
                    "db_client_connection_count",
                    _COUNT_HELP,
                    [_POOL, _STATE],
                    registry=None,
                    multiprocess_mode="livesum",
                ),
                **{
                    name: Gauge(name, doc, [_POOL], registry=None, multiprocess_mode="livesum")
                    for name, (doc, _) in _POOL_GAUGES.items()
                },
                "aiolease_limiter_queued_requests": Gauge(
                    "aiolease_limiter_queued_requests",
                    _QUEUED_HELP,
                    [_LIMITER],
                    registry=None,
                    multiprocess_mode="livesum",
                ),
                "aiolease_limiter_active_leases": Gauge(
                    "aiolease_limiter_active_leases",
                    _LEASES_HELP,
                    [_LIMITER],
                    registry=None,
                    multiprocess_mode="livesum",
                ),
            }
            self._timeouts = Counter(
                "db_client_connection_timeouts", _TIMEOUTS_HELP, [_POOL], registry=None
            )
            self._requests = Counter(
                "aiolease_limiter_requests", _REQUESTS_HELP, [_LIMITER, _RESULT], registry=None
            )
        _metrics.attach(self)
        if self._multiprocess:
            self._refresh()

    def _histogram(self, name: str, documentation: str, labelnames: list[str]) -> Any:
        """One process: a histogram aggregated here and read at each scrape (an observation
        is a dict lookup, a bisect and two additions); multiprocess mode: prometheus_client's
        own, which writes each observation to the shared directory."""
        if self._multiprocess:
            return _SharedHistogram(name, documentation, labelnames)
        return _LocalHistogram(name, documentation, labelnames)

    def close(self) -> None:
        """Stop recording (what was recorded stays in the registry's output)."""
        _metrics.detach(self)
        self._disarm()
        self._loop = None

    # -- _metrics.Sink
    def pool_recorder(self, name: str) -> _PoolRecorder:
        if self._multiprocess:
            self._made()
            return _SharedPoolRecorder(self, name)
        with self._lock:
            self._claimed_pools.add(name)
        return _PoolRecorder(self, name)

    def limiter_recorder(self, name: str) -> _LimiterRecorder:
        if self._multiprocess:
            self._made()
            return _SharedLimiterRecorder(self, name)
        with self._lock:
            self._claimed_limiters.add(name)
        return _LimiterRecorder(self, name)

    def transaction(self, outcome: str) -> None:
        self._tx[outcome].inc()

    # -- prometheus_client.registry.Collector
    def collect(self) -> Iterable[Metric]:
        if self._multiprocess:
            return []  # MultiProcessCollector exposes what the workers wrote
        return [*self._state(), *self._histograms(), *self._transactions.collect()]

    def _histograms(self) -> list[Metric]:
        """The histograms, each keeping the series of the names a live pool or limiter
        has (or that got a recorder since the last scrape)."""
        with self._lock:
            pools = _metrics.pool_names() | self._claimed_pools
            limiters = _metrics.limiter_names() | self._claimed_limiters
            self._claimed_pools = set()
            self._claimed_limiters = set()
            return [
                *self._create_time.collect(pools),
                *self._wait_time.collect(pools),
                *self._use_time.collect(pools),
                *self._time_in_queue.collect(limiters),
            ]

    def _state(self) -> Iterator[Metric]:
        pools = _metrics.pools()
        count = GaugeMetricFamily("db_client_connection_count", _COUNT_HELP, labels=[_POOL, _STATE])
        for p in pools:
            count.add_metric([p.name, "idle"], p.idle)
            count.add_metric([p.name, "used"], p.used)
        yield count
        for name, (doc, field) in _POOL_GAUGES.items():
            gauge = GaugeMetricFamily(name, doc, labels=[_POOL])
            for p in pools:
                gauge.add_metric([p.name], getattr(p, field))
            yield gauge
        timeouts = CounterMetricFamily(
            "db_client_connection_timeouts", _TIMEOUTS_HELP, labels=[_POOL]
        )
        for p in pools:
            timeouts.add_metric([p.name], p.timeouts)
        yield timeouts
        limiters = _metrics.limiters()
        requests = CounterMetricFamily(
            "aiolease_limiter_requests", _REQUESTS_HELP, labels=[_LIMITER, _RESULT]
        )
        queued = GaugeMetricFamily(
            "aiolease_limiter_queued_requests", _QUEUED_HELP, labels=[_LIMITER]
        )
        leases = GaugeMetricFamily(
            "aiolease_limiter_active_leases", _LEASES_HELP, labels=[_LIMITER]
        )
        for s in limiters:
            for result in _RESULTS:
                requests.add_metric([s.name, result], _limiter_count(s, result))
            queued.add_metric([s.name], s.queued)
            if s.active_leases is not None:
                leases.add_metric([s.name], s.active_leases)
        yield from (requests, queued, leases)

    # -- multiprocess mode: writing the state to the shared directory
    def _touched(self) -> None:
        """Something happened to a pool or limiter: write the state soon (once per turn
        of the event loop, however many events), and keep a periodic refresh armed."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._refresh()
            return
        if loop is not self._loop:  # armed on a loop that has ended (or none): arm here
            self._disarm()
            self._loop = loop
        if self._soon:
            return
        self._soon = True
        loop.call_soon(self._refresh)
        if self._timer is None:
            self._timer = loop.call_later(self._interval, self._tick, loop)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._soon = False

    def _made(self) -> None:
        """A pool or limiter was made (or re-bound): have its state written at the next
        turn of the running loop, so a worker's pools count before their first event and
        the periodic refresh is armed; outside a running loop, its first event does it."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        self._touched()

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        self._refresh()
        if _metrics.pools() or _metrics.limiters():
            self._timer = loop.call_later(self._interval, self._tick, loop)

    def _refresh(self) -> None:
        self._soon = False
        written: set[tuple[str, tuple[str, ...]]] = set()
        counted: set[tuple[Any, ...]] = set()  # keys of _WRITTEN_TOTALS

        def set_gauge(name: str, labels: tuple[str, ...], value: float) -> None:
            self._gauges[name].labels(*labels).set(value)
            written.add((name, labels))

        for p in _metrics.pools():
            set_gauge("db_client_connection_count", (p.name, "idle"), p.idle)
            set_gauge("db_client_connection_count", (p.name, "used"), p.used)
            for name, (_, field) in _POOL_GAUGES.items():
                set_gauge(name, (p.name,), getattr(p, field))
            counted.add(self._count_up("timeouts", self._timeouts, (p.name,), p.timeouts))
        for s in _metrics.limiters():
            set_gauge("aiolease_limiter_queued_requests", (s.name,), s.queued)
            if s.active_leases is not None:
                set_gauge("aiolease_limiter_active_leases", (s.name,), s.active_leases)
            for result in _RESULTS:
                counted.add(
                    self._count_up(
                        "requests", self._requests, (s.name, result), _limiter_count(s, result)
                    )
                )
        # Pools and limiters gone: their gauges read 0 (prometheus_client cannot remove a
        # series from the shared directory), and a name none has any more is forgotten
        # as a counter baseline: the next pool or limiter of that name counts from 0.
        for name, labels in self._written - written:
            self._gauges[name].labels(*labels).set(0)
        self._written = written
        pid = os.getpid()
        for key in [k for k in _WRITTEN_TOTALS if k[0] == pid and k not in counted]:
            del _WRITTEN_TOTALS[key]

    def _count_up(
        self, family: str, counter: Any, labels: tuple[str, ...], total: int
    ) -> tuple[Any, ...]:
        """Bring a counter series to ``total`` (a smaller total, when an object of a
        shared name is gone, becomes the new baseline: counters never go down).
        ``family`` names the counter in the per-process record of what was written,
        under the key returned."""
        key = (os.getpid(), family, *labels)
        delta = total - _WRITTEN_TOTALS.get(key, 0)
        # Made even at 0 (prometheus_client writes a new series to the directory at 0), so
        # the series are exposed from 0 as in one process, not from their first increment.
        series = counter.labels(*labels)
        if delta > 0:
            series.inc(delta)
        _WRITTEN_TOTALS[key] = total
        return key


def _limiter_count(s: _metrics.LimiterState, result: str) -> int:
    if result == "acquired":
        return s.acquired
    if result == "rejected":
        return s.rejected
    if result == "timeout":
        return s.timeouts
    return s.canceled
