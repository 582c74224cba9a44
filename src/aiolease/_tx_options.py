"""The options of :func:`aiolease.atomic` and the retry helpers: checked at the call.

What does not depend on the connection (:func:`check_options`) is checked where the
connection is not known yet too (``pool.atomic()``, ``run_transaction`` on a pool), so a
bad option raises at once instead of after waiting for a connection.
"""

from __future__ import annotations

from typing import Any

from . import _validate
from ._dialects._base import ISOLATION_LEVELS, Dialect
from ._validate import check_flag

__all__ = ["check_flag", "check_options", "normalize_isolation"]


def isolation_level(isolation: object) -> str:
    """``isolation`` as one of :data:`ISOLATION_LEVELS` (whatever the database)."""
    if not isinstance(isolation, str):
        raise TypeError(f"isolation must be a string or None, got {isolation!r}")
    level = " ".join(isolation.lower().replace("_", " ").split())
    if level not in ISOLATION_LEVELS:
        raise ValueError(
            f"isolation={isolation!r} is not an isolation level: use 'read committed', "
            "'repeatable read' or 'serializable' (case-insensitive), or None for the default"
        )
    return level


def check_options(options: dict[str, Any]) -> None:
    """Check the :func:`atomic` options that do not depend on the connection.

    Called where the connection is not known yet (``pool.atomic()``,
    :func:`run_transaction` on a pool), so that a bad option raises at the call
    instead of after waiting for a connection. What depends on the database
    (the isolation levels it accepts) is checked when the block is made.
    """
    if options.get("isolation") is not None:
        isolation_level(options["isolation"])
    for name in ("readonly", "savepoint", "durable"):
        if name in options:
            check_flag(name, options[name])
    if options.get("cleanup_timeout") is not None:
        _validate.seconds("cleanup_timeout", options["cleanup_timeout"])


def normalize_isolation(isolation: str | None, dialect: Dialect[Any]) -> str | None:
    if isolation is None:
        return None
    level = isolation_level(isolation)
    if level not in dialect.isolation_levels:
        accepted = ", ".join(repr(x) for x in sorted(dialect.isolation_levels))
        raise ValueError(
            f"isolation={isolation!r} is not supported by {dialect.name}: it accepts {accepted}"
        )
    return level
