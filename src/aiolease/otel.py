"""OpenTelemetry metrics: pools, limiters and transactions by the standard names.

Install with ``pip install 'aiolease[otel]'`` (``opentelemetry-api`` only; the
application brings the SDK and an exporter). For example:

```python
from aiolease import otel
otel.instrument()              # the global MeterProvider; or instrument(meter_provider=...)
...
otel.uninstrument()
```

Pools emit the database-client connection metrics of the OpenTelemetry
semantic conventions as of :data:`SCHEMA_URL` (the meter carries that schema
URL). The state instruments (``db.client.connection.count``, ``.idle.min``,
``.max``, ``.pending_requests``, ``.timeouts``, and the limiters' counts) are
*asynchronous* (observable) instruments of the kind the conventions name: they
read each live pool and limiter when the SDK collects, so their values are
exact for pools made before :func:`instrument` and cost the hot paths nothing.
The histograms are recorded as things happen. See docs/observability.md.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterable
from typing import Any

from . import _metrics
from ._redact import redact

try:
    from opentelemetry import context, metrics, trace
    from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation
    from opentelemetry.trace import SpanKind, Status, StatusCode, TracerProvider
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "aiolease.otel needs opentelemetry-api: pip install 'aiolease[otel]'"
    ) from exc

__all__ = ["BUCKETS", "SCHEMA_URL", "instrument", "uninstrument"]

#: The semantic conventions these metrics follow (the db.client.connection.* names,
#: units in seconds); the meter is created with this schema URL.
SCHEMA_URL = "https://opentelemetry.io/schemas/1.26.0"

#: Histogram bucket boundaries (seconds) advised to the SDK: those the conventions
#: advise for database operation durations, apt for waits and connects too.
BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0)

_POOL = "db.client.connection.pool.name"
_STATE = "db.client.connection.state"
_LIMITER = "aiolease.limiter.name"
_RESULT = "aiolease.limiter.result"
_OUTCOME = "aiolease.transaction.outcome"
_ERROR_TYPE = "error.type"
_DB_SYSTEM = "db.system"
_ATTEMPT = "aiolease.transaction.attempt"
_BACKOFF = "aiolease.transaction.backoff"
#: ``db.system`` by transaction dialect (other dialects: their own name).
_SYSTEMS = {"asyncpg": "postgresql", "psycopg": "postgresql", "sqlite": "sqlite"}


class _PoolRecorder:
    __slots__ = ("_attrs", "_create", "_errors", "_use", "_wait")

    def __init__(self, sink: _Sink, name: str) -> None:
        self._attrs = {_POOL: name}
        self._wait = sink.wait_time.record
        self._use = sink.use_time.record
        self._create = sink.create_time.record
        self._errors: dict[str, dict[str, str]] = {}  # error.type -> attributes

    def wait(self, seconds: float) -> None:
        self._wait(seconds, self._attrs)

    def use(self, seconds: float) -> None:
        self._use(seconds, self._attrs)

    def reset_done(self) -> None:
        pass  # the count is observed when the SDK collects

    def create(self, seconds: float, error_type: str | None) -> None:
        if error_type is None:
            self._create(seconds, self._attrs)
            return
        attrs = self._errors.get(error_type)
        if attrs is None:
            attrs = self._errors[error_type] = {**self._attrs, _ERROR_TYPE: error_type}
        self._create(seconds, attrs)

    def wait_failed(self, seconds: float, error: BaseException) -> None:
        pass  # timeouts are state, observed when the SDK collects


class _TracingPoolRecorder(_PoolRecorder):
    """A pool recorder that also makes a span of every acquire that waited."""

    __slots__ = ("_tracer",)

    def __init__(self, sink: _Sink, name: str, tracer: trace.Tracer) -> None:
        super().__init__(sink, name)
        self._tracer = tracer

    def wait(self, seconds: float) -> None:
        super().wait(seconds)
        if seconds > 0.0:  # served on the spot: no span
            self._span(seconds, None)

    def wait_failed(self, seconds: float, error: BaseException) -> None:
        self._span(seconds, error)

    def _span(self, seconds: float, error: BaseException | None) -> None:
        # The wait is over when we hear of it: the span is made with its start in the past.
        end = time.time_ns()
        span = self._tracer.start_span(
            "aiolease.pool.acquire",
            kind=SpanKind.INTERNAL,
            attributes=self._attrs,
            start_time=end - int(seconds * 1e9),
        )
        if error is not None:
            _failed(span, error)
        span.end(end_time=end)


def _failed(span: trace.Span, error: BaseException) -> None:
    span.set_attribute(_ERROR_TYPE, _metrics.error_type_of(error))
    span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {redact(str(error))}"))


class _Span:
    """A span made current until it ends (``_metrics.Span``)."""

    __slots__ = ("_span", "_token")

    def __init__(self, tracer: trace.Tracer, name: str, attributes: dict[str, str]) -> None:
        self._span = span = tracer.start_span(name, kind=SpanKind.INTERNAL, attributes=attributes)
        self._token = context.attach(trace.set_span_in_context(span))

    def end(self, outcome: str | None, error: BaseException | None) -> None:
        span = self._span
        context.detach(self._token)
        if outcome is not None:
            span.set_attribute(_OUTCOME, outcome)
        if error is not None:
            _failed(span, error)
        span.end()


class _Tracing:
    """``_metrics.Tracer`` over an OpenTelemetry ``TracerProvider``."""

    def __init__(self, provider: TracerProvider | None) -> None:
        from . import __version__

        self.tracer = trace.get_tracer(
            "aiolease", __version__, tracer_provider=provider, schema_url=SCHEMA_URL
        )

    def transaction(self, dialect: str) -> _Span:
        return _Span(
            self.tracer, "aiolease.transaction", {_DB_SYSTEM: _SYSTEMS.get(dialect, dialect)}
        )

    def retry_loop(self) -> _Span:
        return _Span(self.tracer, "aiolease.run_transaction", {})

    def retried(self, attempt: int, error: BaseException, delay: float) -> None:
        span = trace.get_current_span()
        if span.is_recording():
            span.add_event(
                "aiolease.transaction.retry",
                {
                    _ATTEMPT: attempt,
                    _ERROR_TYPE: _metrics.error_type_of(error),
                    _BACKOFF: delay,
                },
            )


class _LimiterRecorder:
    __slots__ = ("_attrs", "_record")

    def __init__(self, sink: _Sink, name: str) -> None:
        self._attrs = {_LIMITER: name}
        self._record = sink.time_in_queue.record

    def queued(self, seconds: float) -> None:
        self._record(seconds, self._attrs)


class _Sink:
    """The instruments of one MeterProvider. Made once per provider (an SDK keeps an
    observable instrument's callbacks for good): :func:`uninstrument` only silences it."""

    def __init__(self, provider: MeterProvider | None) -> None:
        from . import __version__

        self.active = False
        self.tracing: _Tracing | None = None  # set by instrument(tracing=True)
        meter = metrics.get_meter(
            "aiolease", __version__, meter_provider=provider, schema_url=SCHEMA_URL
        )
        connection = "{connection}"
        meter.create_observable_up_down_counter(
            "db.client.connection.count",
            [self._count],
            connection,
            "The number of connections that are currently in state described by the "
            "state attribute.",
        )
        meter.create_observable_up_down_counter(
            "db.client.connection.idle.min",
            [self._idle_min],
            connection,
            "The minimum number of idle open connections allowed (aiolease: min_size, "
            "which counts every open connection).",
        )
        meter.create_observable_up_down_counter(
            "db.client.connection.max",
            [self._max],
            connection,
            "The maximum number of open connections allowed.",
        )
        meter.create_observable_up_down_counter(
            "db.client.connection.pending_requests",
            [self._pending],
            "{request}",
            "The number of current pending requests for an open connection.",
        )
        meter.create_observable_counter(
            "db.client.connection.timeouts",
            [self._timeouts],
            "{timeout}",
            "The number of connection timeouts that have occurred trying to obtain a "
            "connection from the pool.",
        )
        self.create_time = meter.create_histogram(
            "db.client.connection.create_time",
            "s",
            "The time it took to create a new connection.",
            explicit_bucket_boundaries_advisory=BUCKETS,
        )
        self.wait_time = meter.create_histogram(
            "db.client.connection.wait_time",
            "s",
            "The time it took to obtain an open connection from the pool.",
            explicit_bucket_boundaries_advisory=BUCKETS,
        )
        self.use_time = meter.create_histogram(
            "db.client.connection.use_time",
            "s",
            "The time between borrowing a connection and returning it to the pool.",
            explicit_bucket_boundaries_advisory=BUCKETS,
        )
        meter.create_observable_counter(
            "aiolease.limiter.requests",
            [self._limiter_requests],
            "{request}",
            "Requests to a limiter by result.",
        )
        self.time_in_queue = meter.create_histogram(
            "aiolease.limiter.request.time_in_queue",
            "s",
            "The time a request admitted after waiting spent in the limiter's queue.",
            explicit_bucket_boundaries_advisory=BUCKETS,
        )
        meter.create_observable_up_down_counter(
            "aiolease.limiter.queued_requests",
            [self._limiter_queued],
            "{request}",
            "Requests waiting in a limiter's queue.",
        )
        meter.create_observable_up_down_counter(
            "aiolease.limiter.active_leases",
            [self._limiter_leases],
            "{request}",
            "Slots held of a concurrency limiter.",
        )
        counter = meter.create_counter(
            "aiolease.transaction.count",
            "{transaction}",
            "Outermost transactions by outcome (and retries of them).",
        )
        self._tx_add = counter.add
        self._tx_attrs = {o: {_OUTCOME: o} for o in _metrics.TX_OUTCOMES}

    # -- _metrics.Sink
    def pool_recorder(self, name: str) -> _PoolRecorder:
        if self.tracing is not None:
            return _TracingPoolRecorder(self, name, self.tracing.tracer)
        return _PoolRecorder(self, name)

    def limiter_recorder(self, name: str) -> _LimiterRecorder:
        return _LimiterRecorder(self, name)

    def transaction(self, outcome: str) -> None:
        self._tx_add(1, self._tx_attrs[outcome])

    # -- the observable instruments' callbacks
    def _pools(self) -> Iterable[_metrics.PoolState]:
        return _metrics.pools() if self.active else ()

    def _limiters(self) -> Iterable[_metrics.LimiterState]:
        return _metrics.limiters() if self.active else ()

    def _count(self, options: CallbackOptions) -> Iterable[Observation]:
        for p in self._pools():
            yield Observation(p.idle, {_POOL: p.name, _STATE: "idle"})
            yield Observation(p.used, {_POOL: p.name, _STATE: "used"})

    def _idle_min(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(p.min_size, {_POOL: p.name}) for p in self._pools()]

    def _max(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(p.max_size, {_POOL: p.name}) for p in self._pools()]

    def _pending(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(p.pending, {_POOL: p.name}) for p in self._pools()]

    def _timeouts(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(p.timeouts, {_POOL: p.name}) for p in self._pools()]

    def _limiter_requests(self, options: CallbackOptions) -> Iterable[Observation]:
        for s in self._limiters():
            for result, value in (
                ("acquired", s.acquired),
                ("rejected", s.rejected),
                ("timeout", s.timeouts),
                ("canceled", s.canceled),
            ):
                yield Observation(value, {_LIMITER: s.name, _RESULT: result})

    def _limiter_queued(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(s.queued, {_LIMITER: s.name}) for s in self._limiters()]

    def _limiter_leases(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(s.active_leases, {_LIMITER: s.name})
            for s in self._limiters()
            if s.active_leases is not None
        ]


# One sink per provider, while the provider lives: instrumenting it again reuses its
# instruments. Weak: a provider the application dropped must not be kept alive, with its
# readers and every point recorded (the sink refers to its instruments, not to the
# provider). A provider that takes no weak reference is kept, by id.
_by_provider: weakref.WeakKeyDictionary[Any, _Sink] = weakref.WeakKeyDictionary()
_by_id: dict[int, tuple[object, _Sink]] = {}
_current: _Sink | None = None


def _sink_of(provider: Any) -> _Sink:
    """The sink of ``provider``, made on its first instrumentation."""
    try:
        sink = _by_provider.get(provider)
    except TypeError:  # no weak reference to it (or not hashable)
        known = _by_id.get(id(provider))
        if known is None or known[0] is not provider:
            known = _by_id[id(provider)] = (provider, _Sink(provider))
        return known[1]
    if sink is None:
        sink = _by_provider[provider] = _Sink(provider)
    return sink


def instrument(
    meter_provider: MeterProvider | None = None,
    *,
    tracing: bool = False,
    tracer_provider: TracerProvider | None = None,
) -> None:
    """Emit the metrics of every pool and limiter, existing and later ones, and of
    transactions, to ``meter_provider`` (None: the global one); with ``tracing``, spans
    too. Calling it again switches to the new providers and settings.

    Spans (``tracing=True``; all of kind INTERNAL): ``aiolease.transaction`` around each
    outermost transaction, current while it runs (so the driver's own spans nest in it),
    with ``db.system`` and ``aiolease.transaction.outcome``; ``aiolease.run_transaction``
    around :func:`aiolease.run_transaction`'s attempts, each retry an event
    ``aiolease.transaction.retry`` on it; ``aiolease.pool.acquire`` for every acquire
    that waited (one served on the spot makes none), with an error status when the
    wait failed. A failure sets ``error.type`` and the span's status to ERROR.

    Args:
        meter_provider: an OpenTelemetry ``MeterProvider``.
        tracing: whether to make spans as well (off by default: metrics only).
        tracer_provider: an OpenTelemetry ``TracerProvider`` for the spans (None: the
            global one); only with ``tracing=True``.

    Raises:
        TypeError: ``tracing`` is not a bool, or a provider is not one.
        ValueError: ``tracer_provider`` given without ``tracing=True``.
    """
    global _current
    if not isinstance(tracing, bool):
        raise TypeError(f"tracing must be a bool, got {tracing!r}")
    if tracer_provider is not None and not tracing:
        raise ValueError(
            f"tracer_provider={tracer_provider!r} is only used with tracing=True; "
            "pass tracing=True to make spans"
        )
    # Checked before the current instrumentation is switched off.
    _check_provider("meter_provider", meter_provider, "get_meter", "MeterProvider")
    _check_provider("tracer_provider", tracer_provider, "get_tracer", "TracerProvider")
    uninstrument()
    provider: Any = metrics.get_meter_provider() if meter_provider is None else meter_provider
    sink = _sink_of(provider)
    sink.active = True
    sink.tracing = _Tracing(tracer_provider) if tracing else None
    _metrics.set_tracer(sink.tracing)
    _metrics.attach(sink)
    _current = sink


def _check_provider(name: str, provider: object, method: str, kind: str) -> None:
    if provider is not None and not callable(getattr(provider, method, None)):
        raise TypeError(
            f"{name} must be an OpenTelemetry {kind} (with {method}()), or None for the "
            f"global one, got {type(provider).__name__} {provider!r}"
        )


def uninstrument() -> None:
    """Stop emitting (the observable instruments report nothing from now on) and
    tracing."""
    global _current
    if _current is not None:
        _current.active = False
        _current.tracing = None
        _metrics.set_tracer(None)
        _metrics.detach(_current)
        _current = None
