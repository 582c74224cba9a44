"""Implementations the limiter contract suites run over, and the harness that runs them.

(The fixtures ``rate_impl`` / ``concurrency_impl`` are defined, with :func:`resolve`,
in ``test_rate_contract.py`` / ``test_concurrency_contract.py``.)

A contract test takes the ``rate_impl`` (or ``concurrency_impl``) fixture and
calls ``impl.run(body)``: ``body`` is an ``async def`` run on the
implementation's loop (``VirtualTimeLoop`` for the local limiters; a real
loop for Redis). Inside, ``impl.make(...)`` is an async context manager
yielding a fresh limiter, and ``impl.tol`` the slack a timing assertion
allows (0 on virtual time).

Adding implementations (H3, Redis): create ``tests/limits/_redis_factories.py``
(importing ``from limits_helpers import Impl``)
defining ``REDIS_RATE_IMPLS`` and/or ``REDIS_CONCURRENCY_IMPLS``: lists of
``pytest.param(Impl(...), id="redis", marks=[pytest.mark.redis, pytest.mark.slow])``.
They are picked up here when the module exists; this file need not change.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, TypeVar

import pytest

import aiolease
from aiolease.testing import VirtualTimeLoop

T = TypeVar("T")

#: ``make(rate, per=1.0, *, burst=1)`` for rate limiters, ``make(limit)`` for
#: concurrency limiters: an async context manager yielding a fresh limiter
#: (and cleaning it up on exit).
Maker = Callable[..., contextlib.AbstractAsyncContextManager[Any]]


@dataclass(frozen=True)
class Impl:
    """One implementation of a limiter interface, as the contract suites see it.

    Attributes:
        name: the test id.
        make: see :data:`Maker`.
        loop_factory: the loop to run on; ``None`` is asyncio's default (real time).
        tol: seconds of slack for timing assertions (0 on virtual time).
        requires: fixture names requested before running (e.g. ``("redis_url",)``,
            so the project's skip/fail policy for unreachable services applies).
        supports: optional features this implementation has, checked by
            ``impl.need("...")``: "strict", "settle_exact_refund", "keys_memory", "group",
            "refund_any_waiter" (a cancelled waiter in the middle of the queue moves the later
            ones up; on Redis, one limiter object's own later waiters), "settle_moves_waiters"
            (a settle refund moves sleeping waiters up; local only, see docs/redis.md).
    """

    name: str
    make: Maker
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None
    tol: float = 0.0
    requires: tuple[str, ...] = ()
    supports: frozenset[str] = field(default_factory=frozenset)

    @property
    def virtual(self) -> bool:
        return self.loop_factory is not None and self.tol == 0.0

    def run(self, body: Callable[[], Awaitable[T]], *, timeout: float = 30.0) -> T:
        async def main() -> T:
            async with asyncio.timeout(timeout):
                return await body()

        with asyncio.Runner(loop_factory=self.loop_factory) as runner:
            return runner.run(main())

    def need(self, feature: str) -> None:
        if feature not in self.supports:
            pytest.skip(f"{self.name} does not implement {feature!r}")


@contextlib.asynccontextmanager
async def _local_rate(rate: float, per: float = 1.0, **kw: Any) -> AsyncIterator[Any]:
    limiter = aiolease.RateLimiter(rate, per, **kw)
    yield limiter
    assert limiter._aiolease_leaks() == [], limiter._aiolease_leaks()


@contextlib.asynccontextmanager
async def _local_concurrency(limit: int, **kw: Any) -> AsyncIterator[Any]:
    limiter = aiolease.ConcurrencyLimiter(limit, **kw)
    yield limiter
    assert limiter._aiolease_leaks() == [], limiter._aiolease_leaks()


_LOCAL = frozenset(
    {
        "strict",
        "settle_exact_refund",
        "keys_memory",
        "group",
        "refund_any_waiter",
        "settle_moves_waiters",
    }
)

RATE_IMPLS: list[Any] = [
    pytest.param(Impl("local", _local_rate, VirtualTimeLoop, supports=_LOCAL), id="local"),
]
CONCURRENCY_IMPLS: list[Any] = [
    pytest.param(Impl("local", _local_concurrency, VirtualTimeLoop, supports=_LOCAL), id="local"),
]


async def nowait(lim: Any, *args: Any, **kwargs: Any) -> Any:
    """``lim.acquire_nowait(...)``: plain on the local limiters, a coroutine on Redis."""
    result = lim.acquire_nowait(*args, **kwargs)
    return await result if inspect.isawaitable(result) else result


async def applied(result: object) -> None:
    """Wait for ``pause``/``settle``/``release`` to take effect (a task on Redis, None locally)."""
    if inspect.isawaitable(result):
        await result


def resolve(request: pytest.FixtureRequest) -> Impl:
    """The ``Impl`` a parametrised fixture got, after requesting its ``requires`` fixtures.

    (The ``rate_impl`` / ``concurrency_impl`` fixtures live in the contract test
    modules: a ``tests/limits/conftest.py`` would clash with ``tests/conftest.py``
    under mypy.)
    """
    impl: Impl = request.param
    for name in impl.requires:
        request.getfixturevalue(name)
    return impl


def vrun(body: Callable[[], Awaitable[T]], *, timeout: float = 30.0) -> T:
    """Run ``body()`` on a fresh ``VirtualTimeLoop`` (for local-only tests)."""
    return Impl("local", _local_rate, VirtualTimeLoop).run(body, timeout=timeout)


def max_in_window(times: Sequence[float], costs: Sequence[float], window: float) -> float:
    """The largest summed cost of admissions within any closed window of length ``window``."""
    best = 0.0
    j = 0
    total = 0.0
    for i, t in enumerate(times):
        total += costs[i]
        while times[j] < t - window - 1e-12:
            total -= costs[j]
            j += 1
        best = max(best, total)
    return best


# Implementations living in other files (``from limits_helpers import Impl`` works there:
# Impl is defined above this import).
_redis: ModuleType | None
try:
    _redis = importlib.import_module("_redis_factories")
except ModuleNotFoundError as exc:
    if exc.name != "_redis_factories":
        raise
    _redis = None
if _redis is not None:
    RATE_IMPLS += list(getattr(_redis, "REDIS_RATE_IMPLS", []))
    CONCURRENCY_IMPLS += list(getattr(_redis, "REDIS_CONCURRENCY_IMPLS", []))


def run_then_close(body: Callable[[], Awaitable[T]]) -> T:
    """Run ``body()`` on a fresh event loop, then close it with the tasks it left still pending
    (no cancellation: they never run again). Their "Task was destroyed but it is pending" report,
    when they are collected, is expected and not printed."""
    loop = asyncio.new_event_loop()
    loop.set_exception_handler(lambda loop, context: None)
    try:
        return loop.run_until_complete(body())
    finally:
        loop.close()
