"""The metrics layer: what pools, limiters and transactions report, and to whom.

Dependency-free. ``aiolease.otel`` and ``aiolease.prometheus`` are its
consumers (*sinks*); nothing here knows either. Two kinds of data:

* **State** (connections idle and used, pending requests, bounds, cumulative
  counts such as timeouts): read from the live objects when a consumer
  collects (:func:`pools`, :func:`limiters`), never pushed from a hot path, so
  it is exact for objects that existed before instrumentation and costs the
  hot paths nothing.
* **Events** with a value of their own (a wait, a use, a creation, a queued
  limiter request, a transaction's outcome): each object holds an observer
  that is None while no sink is attached, so an uninstrumented hot path pays
  one ``is None`` test; attached, the observer hands the value to one bound
  recorder per sink (attributes prepared once per object, not per call).

Every pool and limiter registers itself here when made (a weak registry:
registration keeps nothing alive), which is how instrumentation reaches the
objects made before it. It is also what bounds the series a sink exports: a name
has series while a live pool or limiter has it (:func:`pool_names`,
:func:`limiter_names`), so pools or limiters made and dropped under generated
names do not grow the exposition without bound.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "LimiterObserver",
    "LimiterState",
    "PoolObserver",
    "PoolState",
    "Sink",
    "attach",
    "detach",
    "limiter_names",
    "limiters",
    "pool_names",
    "pools",
    "register_limiter",
    "register_pool",
    "set_tracer",
    "tracer",
    "transaction_ended",
    "transaction_retried",
    "unused_name",
]

#: The outcomes ``aiolease.transaction.count`` takes.
TX_OUTCOMES = ("commit", "rollback", "retry", "unknown")


class PoolRecorder(Protocol):
    """A sink's recorder bound to one pool (its attributes prepared once)."""

    def wait(self, seconds: float) -> None: ...
    def wait_failed(self, seconds: float, error: BaseException) -> None: ...
    def use(self, seconds: float) -> None: ...
    def create(self, seconds: float, error_type: str | None) -> None: ...
    def reset_done(self) -> None: ...


class LimiterRecorder(Protocol):
    """A sink's recorder bound to one limiter."""

    def queued(self, seconds: float) -> None: ...


class Sink(Protocol):
    """A consumer of the metrics (``aiolease.otel``, ``aiolease.prometheus``)."""

    def pool_recorder(self, name: str) -> PoolRecorder: ...
    def limiter_recorder(self, name: str) -> LimiterRecorder: ...
    def transaction(self, outcome: str) -> None: ...


class PoolObserver:
    """A pool's events, fanned out to the recorder each sink bound to it."""

    __slots__ = ("_recorders",)

    def __init__(self, recorders: tuple[PoolRecorder, ...]) -> None:
        self._recorders = recorders

    def leased(self, waited: float) -> None:
        """A lease began after ``waited`` seconds (0 when served on the spot)."""
        for recorder in self._recorders:
            recorder.wait(waited)

    def wait_failed(self, waited: float, error: BaseException) -> None:
        """A waiting acquire gave up after ``waited`` seconds with ``error`` (a timeout,
        a cancellation, the pool closing)."""
        for recorder in self._recorders:
            recorder.wait_failed(waited, error)

    def released(self, used: float) -> None:
        """A lease of ``used`` seconds ended."""
        for recorder in self._recorders:
            recorder.use(used)

    def reset_done(self) -> None:
        """A released connection's reset is over: it went idle or to a waiter (a release
        without a reset reports only :meth:`released`)."""
        for recorder in self._recorders:
            recorder.reset_done()

    def created(self, seconds: float, error: BaseException | None) -> None:
        """A creation attempt took ``seconds``; ``error``: what it raised, if it failed."""
        error_type = None if error is None else error_type_of(error)
        for recorder in self._recorders:
            recorder.create(seconds, error_type)


class LimiterObserver:
    """A limiter's events, fanned out to the recorder each sink bound to it."""

    __slots__ = ("_recorders",)

    def __init__(self, recorders: tuple[LimiterRecorder, ...]) -> None:
        self._recorders = recorders

    def queued(self, seconds: float) -> None:
        """A request that waited ``seconds`` in the queue was admitted."""
        for recorder in self._recorders:
            recorder.queued(seconds)


def error_type_of(error: BaseException) -> str:
    """``error.type`` as the semantic conventions spell it: the fully qualified class name
    (the bare name for builtins)."""
    cls = type(error)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


# ---------------------------------------------------------------------------- registry

_sinks: list[Sink] = []
#: live pool -> its metric name; live limiter -> its name (weak: nothing is kept alive).
_pools: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
_limiters: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
_limiter_numbers = itertools.count(1)
# The sinks' transaction callbacks (a tuple: the transaction path reads it without a lock).
_tx_sinks: tuple[Sink, ...] = ()


def register_pool(pool: Any, name: str) -> PoolObserver | None:
    """Record a new pool under ``name`` (its label: ``name=``, else a driver pool's
    ``server.address:server.port/db.namespace``, else ``pool-<n>``; see
    ``aiolease._redact.pool_label``); returns its observer (None while no sink is attached).
    """
    _pools[pool] = name
    return _pool_observer(name)


def register_limiter(limiter: Any, name: str | None) -> LimiterObserver | None:
    """Record a new limiter (metric name: ``name``, else ``<class>-<n>``; an empty name is
    no name, as for a pool); returns its observer (None while no sink is attached)."""
    if not name:
        name = unused_name(type(limiter).__name__, _limiter_numbers, limiter_names())
    _limiters[limiter] = name
    return _limiter_observer(name)


def _pool_observer(name: str) -> PoolObserver | None:
    if not _sinks:
        return None
    return PoolObserver(tuple(sink.pool_recorder(name) for sink in _sinks))


def _limiter_observer(name: str) -> LimiterObserver | None:
    if not _sinks:
        return None
    return LimiterObserver(tuple(sink.limiter_recorder(name) for sink in _sinks))


def _live(registry: weakref.WeakKeyDictionary[Any, str]) -> list[tuple[Any, str]]:
    """A copy of ``registry``'s entries (live object, name).

    Consumers collect on threads of their own (the OpenTelemetry SDK's periodic
    reader, prometheus_client's HTTP server) while the event loop's thread makes and
    drops pools and limiters: copying a weak dictionary fails ("dictionary changed size
    during iteration") when an entry comes or goes meanwhile, so it is copied again.
    """
    while True:
        try:
            return list(registry.items())
        except RuntimeError:
            continue


def _rebind() -> None:
    """Give every live pool and limiter the observer of the current sinks."""
    global _tx_sinks
    _tx_sinks = tuple(_sinks)
    for pool, name in _live(_pools):
        pool._observer = _pool_observer(name)
    for limiter, name in _live(_limiters):
        limiter._observer = _limiter_observer(name)


def attach(sink: Sink) -> None:
    """Start reporting to ``sink`` (every pool and limiter, existing and later)."""
    if sink not in _sinks:
        _sinks.append(sink)
        _rebind()


def detach(sink: Sink) -> None:
    """Stop reporting to ``sink``."""
    if sink in _sinks:
        _sinks.remove(sink)
        _rebind()


def transaction_ended(outcome: str) -> None:
    """An outermost transaction ended with ``outcome`` (see :data:`TX_OUTCOMES`)."""
    for sink in _tx_sinks:
        sink.transaction(outcome)


def transaction_retried(attempt: int, error: BaseException, delay: float) -> None:
    """Attempt ``attempt`` failed with the retryable ``error``; the next one starts after
    ``delay`` seconds."""
    transaction_ended("retry")
    if tracer is not None:
        tracer.retried(attempt, error, delay)


# ---------------------------------------------------------------------------- tracing


class Span(Protocol):
    """A span a :class:`Tracer` opened and made current; ended exactly once."""

    def end(self, outcome: str | None, error: BaseException | None) -> None:
        """End it: ``outcome`` one of :data:`TX_OUTCOMES` (None: none was reached),
        ``error`` what propagates, if anything."""


class Tracer(Protocol):
    """Where spans go (``aiolease.otel`` with tracing on)."""

    def transaction(self, dialect: str) -> Span:
        """Open a span around an outermost transaction on a ``dialect`` connection
        ("asyncpg", "psycopg", "sqlite", ...), current until it ends."""

    def retry_loop(self) -> Span:
        """Open a span around ``run_transaction``'s attempts, current until it ends."""

    def retried(self, attempt: int, error: BaseException, delay: float) -> None:
        """Note a retry on the current span."""


#: The tracer, or None while nothing traces (read once per outermost transaction).
tracer: Tracer | None = None


def set_tracer(new: Tracer | None) -> None:
    """Send spans to ``new`` (None: stop tracing)."""
    global tracer
    tracer = new


# ---------------------------------------------------------------------------- state


@dataclass(frozen=True, slots=True)
class PoolState:
    """What a consumer reads from a live pool when it collects."""

    name: str
    idle: int
    used: int  # checked out, or being checked or reset
    pending: int
    min_size: int
    max_size: int
    timeouts: int


@dataclass(frozen=True, slots=True)
class LimiterState:
    """What a consumer reads from a live limiter when it collects.

    ``active_leases`` is None for a rate limiter (an admission holds nothing).
    ``timeouts`` is 0 for a rate limiter: a wait it cannot finish in time raises
    ``RateLimitExceeded`` at once and is counted as ``rejected``.
    """

    name: str
    acquired: int
    rejected: int
    timeouts: int
    canceled: int
    queued: int
    active_leases: int | None


def unused_name(prefix: str, numbers: Iterator[int], taken: set[str]) -> str:
    """``<prefix>-<n>`` for the next ``n`` of ``numbers`` whose name is not in ``taken``: a
    generated name never equals one a user gave a live pool or limiter (the two would be
    one series)."""
    while True:
        name = f"{prefix}-{next(numbers)}"
        if name not in taken:
            return name


def pool_names() -> set[str]:
    """The names of the live pools (closed ones included, until garbage-collected): a
    sink keeps the series of a name while one of them has it. Safe on any thread."""
    return {name for _, name in _live(_pools)}


def limiter_names() -> set[str]:
    """The names of the live limiters (see :func:`pool_names`)."""
    return {name for _, name in _live(_limiters)}


def pools() -> list[PoolState]:
    """The state of every live pool (closed ones included: they report zeros); pools
    that share a name are summed, as one series. Safe on any thread."""
    by_name: dict[str, list[int]] = {}
    for pool, name in _live(_pools):
        s = pool.statistics()
        # A closed pool's bounds are those of no pool: a pool made again under its name
        # must not count twice. Its timeouts stay (a counter does not go down).
        gone = pool.closed and s.size == 0
        bounds = (0, 0) if gone else (s.min_size, s.max_size)
        # "used" is every open connection that is not idle: checked out, or in the check
        # before a lease or the reset after one (the pool's _in_hook), so that the count's
        # states add up to the open connections as the conventions mean them to.
        used = s.in_use + len(getattr(pool, "_in_hook", ()))
        now = (s.idle, used, s.waiting, *bounds, s.timeouts)
        known = by_name.get(name)
        by_name[name] = (
            list(now) if known is None else [a + b for a, b in zip(known, now, strict=True)]
        )
    return [PoolState(name, *values) for name, values in by_name.items()]


def limiters() -> list[LimiterState]:
    """The state of every live limiter; limiters that share a name are summed. Safe on
    any thread."""
    by_name: dict[str, LimiterState] = {}
    for limiter, name in _live(_limiters):
        s = limiter.statistics()
        leases = getattr(s, "in_use", None)
        state = LimiterState(
            name, s.admitted, s.rejected, getattr(s, "timeouts", 0), s.cancelled, s.waiting, leases
        )
        known = by_name.get(name)
        if known is not None:
            state = LimiterState(
                name,
                known.acquired + state.acquired,
                known.rejected + state.rejected,
                known.timeouts + state.timeouts,
                known.canceled + state.canceled,
                known.queued + state.queued,
                None
                if leases is None and known.active_leases is None
                else (leases or 0) + (known.active_leases or 0),
            )
        by_name[name] = state
    return list(by_name.values())
