"""Bad arguments: a clear ValueError/TypeError naming the argument, raised at once."""

from __future__ import annotations

from typing import Any

import pytest

from aiolease import Pool
from aiolease.testing import FakeManager

# The messages of every numeric argument (aiolease._validate): the argument, what it
# accepts, the value given (a TypeError its type too).
INT0 = "an int >= 0"
INT1 = "an int >= 1"
TIMEOUT = r"None or a number of seconds >= 0"
OPTIONAL = r"None or a finite number of seconds > 0"
SECONDS = r"a finite number of seconds > 0"


@pytest.mark.parametrize(
    ("options", "error", "pattern"),
    [
        ({"min_size": -1}, ValueError, rf"min_size must be {INT0}, got -1$"),
        ({"min_size": 1.0}, TypeError, rf"min_size must be {INT0}, got float 1\.0$"),
        ({"min_size": True}, TypeError, rf"min_size must be {INT0}, got bool True$"),
        ({"min_size": None}, TypeError, rf"min_size must be {INT0}, got NoneType None$"),
        ({"max_size": 0}, ValueError, rf"max_size must be {INT1}, got 0$"),
        ({"max_size": "10"}, TypeError, rf"max_size must be {INT1}, got str '10'$"),
        ({"max_size": None}, TypeError, rf"max_size must be {INT1}, got NoneType None$"),
        ({"min_size": 5, "max_size": 4}, ValueError, r"min_size \(5\) must be <= max_size \(4\)"),
        ({"acquire_timeout": -1}, ValueError, rf"acquire_timeout must be {TIMEOUT}, got -1$"),
        ({"acquire_timeout": "1"}, TypeError, rf"acquire_timeout must be {TIMEOUT}, got str '1'$"),
        ({"acquire_timeout": True}, TypeError, rf"acquire_timeout must be {TIMEOUT}, got bool"),
        ({"max_waiting": -1}, ValueError, rf"max_waiting must be {INT0}, got -1$"),
        ({"max_waiting": 2.5}, TypeError, rf"max_waiting must be {INT0}, got float 2\.5$"),
        ({"max_lifetime": 0}, ValueError, rf"max_lifetime must be {OPTIONAL}, got 0$"),
        ({"max_lifetime": -0.0}, ValueError, rf"max_lifetime must be {OPTIONAL}, got -0\.0$"),
        ({"max_lifetime": float("inf")}, ValueError, rf"max_lifetime must be {OPTIONAL}, got inf"),
        ({"leak_timeout": float("inf")}, ValueError, rf"leak_timeout must be {OPTIONAL}, got inf"),
        ({"max_lifetime": -5.0}, ValueError, rf"max_lifetime must be {OPTIONAL}, got -5\.0$"),
        ({"max_lifetime": "1h"}, TypeError, rf"max_lifetime must be {OPTIONAL}, got str '1h'$"),
        ({"idle_timeout": 0.0}, ValueError, rf"idle_timeout must be {OPTIONAL}, got 0\.0$"),
        ({"idle_timeout": []}, TypeError, rf"idle_timeout must be {OPTIONAL}, got list \[\]$"),
        ({"leak_timeout": -1}, ValueError, rf"leak_timeout must be {OPTIONAL}, got -1$"),
        ({"leak_timeout": False}, TypeError, rf"leak_timeout must be {OPTIONAL}, got bool False"),
        ({"name": 3}, TypeError, r"name must be None or a str, got int 3"),
        # a lone surrogate cannot be logged to a UTF-8 file nor exported to Prometheus
        ({"name": "a\ud800"}, ValueError, r"name must be encodable as UTF-8 .*got 'a\\ud800'"),
        ({"backoff_base": 0}, ValueError, rf"backoff_base must be {SECONDS}, got 0$"),
        ({"backoff_base": None}, TypeError, rf"backoff_base must be {SECONDS}, got NoneType None"),
        ({"backoff_max": -1.0}, ValueError, rf"backoff_max must be {SECONDS}, got -1\.0$"),
        ({"backoff_max": "x"}, TypeError, rf"backoff_max must be {SECONDS}, got str 'x'$"),
        ({"backoff_max": float("inf")}, ValueError, rf"backoff_max must be {SECONDS}, got inf$"),
        ({"backoff_max": True}, TypeError, rf"backoff_max must be {SECONDS}, got bool True$"),
        # an int beyond any float is out of range, not an OverflowError
        ({"max_lifetime": 10**400}, ValueError, rf"max_lifetime must be {OPTIONAL}, got 1000"),
        ({"backoff_base": 10**400}, ValueError, rf"backoff_base must be {SECONDS}, got 1000"),
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
    (-1, ValueError, rf"timeout must be {TIMEOUT}, got -1$"),
    (float("nan"), ValueError, rf"timeout must be {TIMEOUT}, got nan$"),
    (float("-inf"), ValueError, rf"timeout must be {TIMEOUT}, got -inf$"),
    ("5", TypeError, rf"timeout must be {TIMEOUT}, got str '5'$"),
    (True, TypeError, rf"timeout must be {TIMEOUT}, got bool True$"),
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


def test_huge_and_signed_zero_values_keep_their_meaning() -> None:
    """1e300 seconds is a valid (if endless) duration; -0.0 is 0.0 where 0 is accepted."""
    pool = Pool(FakeManager(), max_lifetime=1e300, idle_timeout=1e300, acquire_timeout=1e300)
    assert pool.acquire()._timeout == 1e300
    assert pool.acquire(timeout=-0.0)._timeout == 0.0
    assert str(pool.acquire(timeout=-0.0)._timeout) == "0.0"


def test_from_callables_refuses_a_sync_function_at_the_call() -> None:
    def create() -> object:  # not async: would fail only at the first acquire
        return object()

    with pytest.raises(TypeError, match=r"create must be an async function \(async def\)"):
        Pool.from_callables(create)  # type: ignore[arg-type]


@pytest.mark.parametrize("close_timeout", [0, -1.0, float("nan"), float("inf")])
def test_bad_manager_close_timeout(close_timeout: float) -> None:
    fm = FakeManager()
    fm.close_timeout = close_timeout
    with pytest.raises(
        ValueError, match=r"FakeManager.close_timeout must be a finite number of seconds > 0"
    ):
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
