"""The pool's options: the argument checks its constructor and methods share (errors at
the call), and :class:`Options`, the base of :class:`Pool` that checks and holds them."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from .. import _validate
from .._redact import pool_label, redact
from .._validate import check_name
from ..abc import Manager
from ._backoff import Backoff

__all__ = ["Options", "check_bounds"]

T = TypeVar("T")


def check_bounds(min_size: object, max_size: object) -> tuple[int, int]:
    """``(min_size, max_size)``, checked (the constructor's and :meth:`Pool.resize`'s)."""
    low = _validate.integer("min_size", min_size, 0)
    high = _validate.integer("max_size", max_size, 1)
    if low > high:
        raise ValueError(f"min_size ({low}) must be <= max_size ({high})")
    return low, high


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
        if isinstance(manager, type):
            # Its create() is a function too, and would fail at the first acquire
            # ("missing 1 required positional argument: 'self'").
            raise TypeError(
                f"manager must be a Manager instance, got the class {manager.__name__}: "
                f"pass {manager.__name__}()"
            )
        if not callable(getattr(manager, "create", None)):
            raise TypeError(
                "manager must implement async create() (an aiolease.abc.Manager), got "
                + redact(repr(manager))
            )
        self._manager = manager
        self._min_size, self._max_size = check_bounds(options["min_size"], options["max_size"])
        self._acquire_timeout = _validate.timeout("acquire_timeout", options["acquire_timeout"])
        max_waiting = options["max_waiting"]
        self._max_waiting = (
            None if max_waiting is None else _validate.integer("max_waiting", max_waiting, 0)
        )
        self._max_lifetime = _validate.optional_seconds("max_lifetime", options["max_lifetime"])
        self._idle_timeout = _validate.optional_seconds("idle_timeout", options["idle_timeout"])
        self._leak_timeout = _validate.optional_seconds("leak_timeout", options["leak_timeout"])
        self._close_timeout = _validate.seconds(
            f"{type(manager).__name__}.close_timeout", getattr(manager, "close_timeout", 10.0)
        )
        self._name: str | None = check_name(options["name"])
        self._label = pool_label(self._name, manager)  # repr, logs: see docs/logging.md
        # Without idle_timeout, idle resources go out least recently used first, so use
        # spreads over all of them and none sits unused long enough for a firewall or the
        # server to drop it; with it, most recently used first, so the surplus is trimmed.
        self._lru = self._idle_timeout is None
        return Backoff(
            _validate.seconds("backoff_base", options["backoff_base"]),
            _validate.seconds("backoff_max", options["backoff_max"]),
        )
