"""The pool's options: the argument checks its constructor and methods share (errors at
the call), and :class:`Options`, the base of :class:`Pool` that checks and holds them."""

from __future__ import annotations

import math
from typing import Any, Generic, TypeVar

from .._limits._validate import check_name
from .._redact import pool_label, redact
from ..abc import Manager
from ._backoff import Backoff

__all__ = [
    "Options",
    "check_backoff",
    "check_bounds",
    "check_int",
    "check_seconds",
    "check_timeout",
]

T = TypeVar("T")


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


def check_bounds(min_size: object, max_size: object) -> tuple[int, int]:
    """``(min_size, max_size)``, checked (the constructor's and :meth:`Pool.resize`'s)."""
    low = check_int("min_size", min_size, 0)
    high = check_int("max_size", max_size, 1)
    if low > high:
        raise ValueError(f"min_size ({low}) must be <= max_size ({high})")
    return low, high


def check_backoff(name: str, value: object) -> float:
    seconds = check_seconds(name, value, allow_none=False)
    assert seconds is not None
    return seconds


class Options(Generic[T]):
    """The pool's options, checked once (errors at the constructor call) and held as
    plain attributes: :class:`Pool` derives from it, so its hot paths read them
    directly. :meth:`Pool.resize` changes the bounds afterwards."""

    __slots__ = (
        "_acquire_timeout",
        "_close_timeout",
        "_idle_timeout",
        "_label",
        "_leak_timeout",
        "_lru",
        "_manager",
        "_max_lifetime",
        "_max_size",
        "_max_waiting",
        "_min_size",
        "_name",
    )

    def _check_options(self, manager: Manager[T], **options: Any) -> Backoff:
        """Check and keep the manager, its ``close_timeout`` and the :class:`Pool`
        keyword arguments; returns the creation backoff they configure."""
        if not callable(getattr(manager, "create", None)):
            raise TypeError(
                "manager must implement async create() (an aiolease.abc.Manager), got "
                + redact(repr(manager))
            )
        self._manager = manager
        self._min_size, self._max_size = check_bounds(options["min_size"], options["max_size"])
        self._acquire_timeout = check_timeout("acquire_timeout", options["acquire_timeout"])
        max_waiting = options["max_waiting"]
        self._max_waiting = (
            None if max_waiting is None else check_int("max_waiting", max_waiting, 0)
        )
        self._max_lifetime = check_seconds("max_lifetime", options["max_lifetime"])
        self._idle_timeout = check_seconds("idle_timeout", options["idle_timeout"])
        self._leak_timeout = check_seconds("leak_timeout", options["leak_timeout"])
        self._close_timeout = check_backoff(
            f"{type(manager).__name__}.close_timeout", getattr(manager, "close_timeout", 10.0)
        )
        self._name: str | None = check_name(options["name"])
        self._label = pool_label(self._name, manager)  # repr, logs: see docs/logging.md
        # Without idle_timeout, idle resources go out least recently used first, so use
        # spreads over all of them and none sits unused long enough for a firewall or the
        # server to drop it; with it, most recently used first, so the surplus is trimmed.
        self._lru = self._idle_timeout is None
        return Backoff(
            check_backoff("backoff_base", options["backoff_base"]),
            check_backoff("backoff_max", options["backoff_max"]),
        )
