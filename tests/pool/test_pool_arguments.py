"""Bad arguments: a clear ValueError/TypeError naming the argument, raised at once."""

from __future__ import annotations

from typing import Any

import pytest

from aiolease import Pool
from aiolease.testing import FakeManager


@pytest.mark.parametrize(
    ("options", "error", "pattern"),
    [
        ({"min_size": -1}, ValueError, r"min_size must be >= 0, got -1"),
        ({"min_size": 1.0}, TypeError, r"min_size must be an int >= 0, got 1\.0"),
        ({"min_size": True}, TypeError, r"min_size must be an int"),
        ({"min_size": None}, TypeError, r"min_size must be an int"),
        ({"max_size": 0}, ValueError, r"max_size must be >= 1, got 0"),
        ({"max_size": "10"}, TypeError, r"max_size must be an int >= 1, got '10'"),
        ({"max_size": None}, TypeError, r"max_size must be an int"),
        ({"min_size": 5, "max_size": 4}, ValueError, r"min_size \(5\) must be <= max_size \(4\)"),
        ({"acquire_timeout": -1}, ValueError, r"acquire_timeout must be >= 0 seconds or None"),
        (
            {"acquire_timeout": "1"},
            TypeError,
            r"acquire_timeout must be a number of seconds or None",
        ),
        ({"acquire_timeout": True}, TypeError, r"acquire_timeout"),
        ({"max_waiting": -1}, ValueError, r"max_waiting must be >= 0, got -1"),
        ({"max_waiting": 2.5}, TypeError, r"max_waiting must be an int"),
        (
            {"max_lifetime": 0},
            ValueError,
            r"max_lifetime must be > 0 seconds or None \(finite\), got 0",
        ),
        ({"max_lifetime": float("inf")}, ValueError, r"max_lifetime must be > 0 seconds"),
        ({"leak_timeout": float("inf")}, ValueError, r"leak_timeout must be > 0 seconds"),
        ({"backoff_max": float("inf")}, ValueError, r"backoff_max must be > 0 seconds"),
        ({"max_lifetime": -5.0}, ValueError, r"max_lifetime must be > 0"),
        ({"max_lifetime": "1h"}, TypeError, r"max_lifetime must be a number of seconds or None"),
        ({"idle_timeout": 0.0}, ValueError, r"idle_timeout must be > 0 seconds or None"),
        ({"idle_timeout": []}, TypeError, r"idle_timeout must be a number of seconds"),
        ({"leak_timeout": -1}, ValueError, r"leak_timeout must be > 0 seconds or None"),
        ({"leak_timeout": False}, TypeError, r"leak_timeout must be a number of seconds"),
        ({"name": 3}, TypeError, r"name must be None or a str, got int 3"),
        # a lone surrogate cannot be logged to a UTF-8 file nor exported to Prometheus
        ({"name": "a\ud800"}, ValueError, r"name must be encodable as UTF-8 .*got 'a\\ud800'"),
        ({"backoff_base": 0}, ValueError, r"backoff_base must be > 0"),
        ({"backoff_base": None}, TypeError, r"backoff_base must be a number of seconds, not None"),
        ({"backoff_max": -1.0}, ValueError, r"backoff_max must be > 0"),
        ({"backoff_max": "x"}, TypeError, r"backoff_max must be a number of seconds"),
        # an int beyond any float is out of range, not an OverflowError
        ({"max_lifetime": 10**400}, ValueError, r"max_lifetime must be > 0 seconds"),
        ({"backoff_base": 10**400}, ValueError, r"backoff_base must be > 0 seconds"),
    ],
)
def test_bad_option(options: dict[str, Any], error: type[Exception], pattern: str) -> None:
    with pytest.raises(error, match=pattern):
        Pool(FakeManager(), **options)


def test_nan_durations_rejected() -> None:
    for name in ("acquire_timeout", "max_lifetime", "idle_timeout", "leak_timeout"):
        options: dict[str, Any] = {name: float("nan")}
        with pytest.raises(ValueError, match=name):
            Pool(FakeManager(), **options)


def test_unknown_option_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="max_sise"):
        Pool(FakeManager(), max_sise=3)  # type: ignore[call-arg]


def test_manager_must_have_create() -> None:
    with pytest.raises(TypeError, match=r"manager must implement async create\(\)"):
        Pool(object())  # type: ignore[arg-type]


def test_valid_edge_values_accepted() -> None:
    pool = Pool(
        FakeManager(),
        min_size=0,
        max_size=1,
        acquire_timeout=0,
        max_waiting=0,
        max_lifetime=0.001,
        idle_timeout=1,
        leak_timeout=1,
        name="x",
        backoff_base=0.001,
        backoff_max=1,
    )
    assert (pool.min_size, pool.max_size, pool.name) == (0, 1, "x")
    assert Pool(FakeManager(), acquire_timeout=None).statistics().max_size == 10


_BAD_TIMEOUTS = [
    (-1, ValueError, r"timeout must be >= 0 seconds or None, got -1"),
    (float("nan"), ValueError, r"timeout must be >= 0 seconds or None, got nan"),
    ("5", TypeError, r"timeout must be a number of seconds or None, got '5'"),
    (True, TypeError, r"timeout must be a number of seconds or None, got True"),
]


@pytest.mark.parametrize(("timeout", "error", "pattern"), _BAD_TIMEOUTS)
def test_bad_acquire_timeout_argument(timeout: Any, error: type[Exception], pattern: str) -> None:
    pool = Pool(FakeManager())
    with pytest.raises(error, match=pattern):
        pool.acquire(timeout=timeout)


@pytest.mark.parametrize(("timeout", "error", "pattern"), _BAD_TIMEOUTS)
async def test_bad_aclose_timeout_argument(
    timeout: Any, error: type[Exception], pattern: str
) -> None:
    # Wrong-typed timeouts raise TypeError everywhere, out-of-range ones ValueError.
    pool = Pool(FakeManager())
    with pytest.raises(error, match=pattern):
        await pool.aclose(timeout=timeout)
    await pool.aclose()


def test_infinite_timeouts_mean_no_timeout() -> None:
    pool = Pool(FakeManager(), acquire_timeout=float("inf"))
    assert pool.acquire()._timeout is None
    assert pool.acquire(timeout=float("inf"))._timeout is None
    assert pool.acquire(timeout=10**400)._timeout is None  # an int beyond any float
    assert Pool(FakeManager(), acquire_timeout=10**400).acquire()._timeout is None


def test_from_callables_refuses_a_sync_function_at_the_call() -> None:
    def create() -> object:  # not async: would fail only at the first acquire
        return object()

    with pytest.raises(TypeError, match=r"create must be an async function \(async def\)"):
        Pool.from_callables(create)  # type: ignore[arg-type]


@pytest.mark.parametrize("close_timeout", [0, -1.0, float("nan"), float("inf")])
def test_bad_manager_close_timeout(close_timeout: float) -> None:
    fm = FakeManager()
    fm.close_timeout = close_timeout
    with pytest.raises(ValueError, match=r"FakeManager.close_timeout must be > 0 seconds"):
        Pool(fm)


async def test_release_of_foreign_object() -> None:
    fm = FakeManager()
    async with Pool(fm, max_size=1) as pool, Pool(FakeManager(), max_size=1) as other:
        r = await other.acquire()
        with pytest.raises(ValueError, match="is not checked out from"):
            await pool.release(r)
        await other.release(r)
        with pytest.raises(ValueError, match="is not checked out from"):
            await pool.release(object())  # type: ignore[arg-type]
