"""Argument checks shared by the pool's constructor and methods (errors at the call)."""

from __future__ import annotations

import math
from typing import Any

from .._redact import redact
from ._backoff import Backoff

__all__ = ["check_backoff", "check_int", "check_options", "check_seconds", "check_timeout"]


def _float(value: int | float) -> float:
    try:
        return float(value)
    except OverflowError:  # an int beyond any float: as large as inf (rejected where inf is)
        return math.inf if value > 0 else -math.inf


def check_seconds(name: str, value: object, *, allow_none: bool = True) -> float | None:
    """A duration that must be a finite number > 0 (or None when allowed)."""
    if value is None:
        if allow_none:
            return None
        raise TypeError(f"{name} must be a number of seconds, not None")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(
            f"{name} must be a number of seconds{' or None' if allow_none else ''}, got {value!r}"
        )
    seconds = _float(value)
    if not 0 < seconds < math.inf:  # also rejects NaN
        accepted = "> 0 seconds or None" if allow_none else "> 0 seconds"
        raise ValueError(f"{name} must be {accepted} (finite), got {value!r}")
    return seconds


def check_timeout(name: str, value: object) -> float | None:
    """A timeout: a number >= 0 (``inf`` waits forever, as None does), or None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds or None, got {value!r}")
    if not value >= 0:  # also rejects NaN
        raise ValueError(f"{name} must be >= 0 seconds or None, got {value!r}")
    seconds = _float(value)
    return None if seconds == math.inf else seconds


def check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return value


def check_backoff(name: str, value: object) -> float:
    seconds = check_seconds(name, value, allow_none=False)
    assert seconds is not None
    return seconds


def check_options(
    manager: object, **options: Any
) -> tuple[
    int,
    int,
    float | None,
    int | None,
    float | None,
    float | None,
    float | None,
    float,
    str | None,
    Backoff,
]:
    """The Pool constructor's options, checked: ``(min_size, max_size, acquire_timeout,
    max_waiting, max_lifetime, idle_timeout, leak_timeout, close_timeout, name, backoff)``."""
    if not callable(getattr(manager, "create", None)):
        raise TypeError(
            "manager must implement async create() (an aiolease.abc.Manager), got "
            + redact(repr(manager))
        )
    min_size = check_int("min_size", options["min_size"], 0)
    max_size = check_int("max_size", options["max_size"], 1)
    if min_size > max_size:
        raise ValueError(f"min_size ({min_size}) must be <= max_size ({max_size})")
    max_waiting = options["max_waiting"]
    name = options["name"]
    if name is not None and not isinstance(name, str):
        raise TypeError(f"name must be a str or None, got {name!r}")
    return (
        min_size,
        max_size,
        check_timeout("acquire_timeout", options["acquire_timeout"]),
        None if max_waiting is None else check_int("max_waiting", max_waiting, 0),
        check_seconds("max_lifetime", options["max_lifetime"]),
        check_seconds("idle_timeout", options["idle_timeout"]),
        check_seconds("leak_timeout", options["leak_timeout"]),
        check_backoff(
            f"{type(manager).__name__}.close_timeout", getattr(manager, "close_timeout", 10.0)
        ),
        name,
        Backoff(
            check_backoff("backoff_base", options["backoff_base"]),
            check_backoff("backoff_max", options["backoff_max"]),
        ),
    )
