"""``__all__`` must not drift from the public names (as anyio's test suite checks).

A name added to a public module but not to its ``__all__`` (or listed in
``__all__`` but gone) fails here, as does a contract name (docs/architecture.md)
that disappeared.
"""

from __future__ import annotations

import importlib
import inspect
import types
from typing import Any

import pytest

import aiolease
import aiolease.abc
from aiolease import (
    AioleaseError,
    CommitUnknown,
    LimitTimeout,
    Pool,
    PoolClosed,
    PoolTimeout,
    RateLimitExceeded,
    Rollback,
    TooManyWaiters,
    TransactionError,
    WouldBlock,
)
from aiolease.testing import FakeManager

#: Modules whose whole job is re-exporting: every public attribute must be in ``__all__``.
REEXPORT_MODULES = ["aiolease", "aiolease.testing"]

#: Public modules that also define things: what they define must be in ``__all__``.
PUBLIC_MODULES = [
    *REEXPORT_MODULES,
    "aiolease.abc",
    "aiolease.asyncpg",
    "aiolease.sqlite",
    "aiolease.psycopg",
    "aiolease.redis",
    "aiolease.httpx",
    "aiolease.aiohttp",
    "aiolease.asgi",
    "aiolease.otel",
    "aiolease.prometheus",
]

#: Not API: ``from __future__ import annotations`` leaves this behind.
IGNORED = {"annotations"}

#: The contract names of docs/architecture.md (they may never disappear or be renamed).
CONTRACT = {
    "aiolease": {
        "AioleaseError",
        "CommitUnknown",
        "ConcurrencyLimiter",
        "LimitTimeout",
        "LimiterUnavailable",
        "Manager",
        "Pool",
        "PoolClosed",
        "PoolStatistics",
        "PoolTimeout",
        "RateLimitExceeded",
        "RateLimiter",
        "ResourceInfo",
        "Rollback",
        "TooManyWaiters",
        "Transaction",
        "TransactionError",
        "WouldBlock",
        "atomic",
        "register_dialect",
        "run_transaction",
    },
    "aiolease.abc": {"Manager", "ResourceInfo"},
    "aiolease.testing": {
        "FakeConnection",
        "FakeManager",
        "FaultProxy",
        "VirtualTimeLoop",
        "leak_check",
    },
    "aiolease.asyncpg": {"create_pool"},
    "aiolease.sqlite": {"create_pool"},
    "aiolease.psycopg": {"create_pool"},
    "aiolease.redis": {"RedisConcurrencyLimiter", "RedisRateLimiter"},
    "aiolease.httpx": {"LimitedTransport"},
    "aiolease.aiohttp": {"limited"},
    "aiolease.asgi": {"RateLimitMiddleware", "client_ip"},
    "aiolease.otel": {"instrument", "uninstrument"},
    "aiolease.prometheus": {"Collector"},
}


def _public(module: types.ModuleType) -> dict[str, object]:
    return {
        name: value
        for name, value in vars(module).items()
        if not name.startswith("_")
        and name not in IGNORED
        and not isinstance(value, types.ModuleType)
    }


def _defined_in(value: object, package: str) -> bool:
    """Whether ``value`` is a class or function of ``package`` (or one of its submodules)."""
    if not (inspect.isclass(value) or inspect.isfunction(value)):
        return False
    module = getattr(value, "__module__", None) or ""
    return module == package or module.startswith(package + ".")


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_all_is_sorted_unique_and_resolves(name: str) -> None:
    module = importlib.import_module(name)
    exported = list(module.__all__)
    assert exported == sorted(exported), f"{name}.__all__ is not sorted"
    assert len(set(exported)) == len(exported), f"{name}.__all__ has duplicates"
    missing = [n for n in exported if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ lists names that do not exist: {missing}"


@pytest.mark.parametrize("name", REEXPORT_MODULES)
def test_reexport_module_exports_every_public_name(name: str) -> None:
    module = importlib.import_module(name)
    public = set(_public(module))
    public.discard("__version__")
    assert public == set(module.__all__), (
        f"{name}: public names not in __all__: {sorted(public - set(module.__all__))}; "
        f"in __all__ but not public: {sorted(set(module.__all__) - public)}"
    )


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_everything_defined_in_the_package_is_exported(name: str) -> None:
    module = importlib.import_module(name)
    package = "aiolease" if name in REEXPORT_MODULES else name
    own = {n for n, v in _public(module).items() if _defined_in(v, package)}
    unexported = own - set(module.__all__)
    assert not unexported, f"{name}: public classes/functions missing from __all__: {unexported}"


@pytest.mark.parametrize("name", sorted(CONTRACT))
def test_contract_names_present(name: str) -> None:
    module = importlib.import_module(name)
    missing = CONTRACT[name] - set(module.__all__)
    assert not missing, f"{name}: contract names missing from __all__: {sorted(missing)}"


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_exported_classes_and_functions_are_documented(name: str) -> None:
    module = importlib.import_module(name)
    undocumented = [
        n
        for n in module.__all__
        if (inspect.isclass(getattr(module, n)) or inspect.isfunction(getattr(module, n)))
        and not inspect.getdoc(getattr(module, n))
    ]
    assert not undocumented, f"{name}: exported without a docstring: {undocumented}"


def test_errors_derive_from_aiolease_error() -> None:
    for n in aiolease.__all__:
        value = getattr(aiolease, n)
        if inspect.isclass(value) and issubclass(value, BaseException):
            assert issubclass(value, aiolease.AioleaseError), n
    assert issubclass(aiolease.PoolTimeout, TimeoutError)
    assert issubclass(aiolease.LimitTimeout, TimeoutError)
    assert issubclass(aiolease.LimiterUnavailable, ConnectionError)
    assert issubclass(aiolease.CommitUnknown, aiolease.TransactionError)


def test_reexports_are_the_implementations() -> None:
    from aiolease import _pool, abc

    assert aiolease.Pool is _pool.Pool
    assert aiolease.Manager is abc.Manager
    assert aiolease.ResourceInfo is abc.ResourceInfo


# -- merged from the former acceptance suite (tests/acceptance/test_contract_pools.py)


def test_error_hierarchy() -> None:
    for cls in (
        PoolTimeout,
        LimitTimeout,
        PoolClosed,
        TooManyWaiters,
        WouldBlock,
        RateLimitExceeded,
        TransactionError,
        CommitUnknown,
        Rollback,
    ):
        assert issubclass(cls, AioleaseError), cls
    assert issubclass(AioleaseError, Exception)
    assert issubclass(PoolTimeout, TimeoutError)
    assert issubclass(LimitTimeout, TimeoutError)
    assert issubclass(CommitUnknown, TransactionError)
    exc = RateLimitExceeded(1.5)
    assert isinstance(exc.retry_after, float)
    assert exc.retry_after == 1.5


@pytest.mark.parametrize(
    ("kwargs", "exc_type", "names"),
    [
        ({"min_size": -1}, ValueError, "min_size"),
        ({"max_size": 0}, ValueError, "max_size"),
        ({"min_size": 5, "max_size": 2}, ValueError, "min_size"),
        ({"min_size": "1"}, TypeError, "min_size"),
        ({"max_size": 2.5}, TypeError, "max_size"),
        ({"acquire_timeout": -1.0}, ValueError, "acquire_timeout"),
        ({"acquire_timeout": "soon"}, TypeError, "acquire_timeout"),
        ({"max_waiting": -1}, ValueError, "max_waiting"),
        ({"max_lifetime": 0}, ValueError, "max_lifetime"),
        ({"max_lifetime": -5.0}, ValueError, "max_lifetime"),
        ({"idle_timeout": -1}, ValueError, "idle_timeout"),
        ({"leak_timeout": 0}, ValueError, "leak_timeout"),
        ({"acquire_timeout": float("nan")}, ValueError, "acquire_timeout"),
    ],
)
def test_invalid_arguments_named_at_construction(
    kwargs: dict[str, Any], exc_type: type[Exception], names: str
) -> None:
    with pytest.raises(exc_type, match=names):
        Pool(FakeManager(), **kwargs)


def test_invalid_acquire_timeout_rejected() -> None:
    pool = Pool(FakeManager())
    with pytest.raises(ValueError, match="timeout"):
        pool.acquire(timeout=-1)


def test_from_callables_rejects_non_callable() -> None:
    with pytest.raises(TypeError, match="create"):
        Pool.from_callables(42)  # type: ignore[arg-type]
