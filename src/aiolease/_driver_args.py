"""Checks the driver pools make at the call (connect keywords, timeouts, SQLite pragmas,
the ``configure`` hook), and the run of that hook on each new connection."""

from __future__ import annotations

import asyncio
import inspect
import math
import re
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any

from ._redact import redact

__all__ = [
    "check_configure",
    "check_connect_kwargs",
    "check_connection_string",
    "check_pragmas",
    "keywords_of",
    "run_configure",
]

POOL_OPTIONS = (
    "min_size",
    "max_size",
    "acquire_timeout",
    "max_waiting",
    "max_lifetime",
    "idle_timeout",
    "leak_timeout",
    "name",
    "backoff_base",
    "backoff_max",
)


def keywords_of(func: Callable[..., Any], fallback: Collection[str] = ()) -> frozenset[str] | None:
    """The keyword names ``func`` accepts, or None when it takes ``**kwargs`` (anything goes).

    ``fallback``: the names to use when the signature cannot be read (some builtins).
    """
    try:
        parameters = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return frozenset(fallback)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return frozenset(
        p.name
        for p in parameters
        if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    )


def check_connect_kwargs(
    kwargs: Mapping[str, Any], accepted: Collection[str], target: str, own: Collection[str] = ()
) -> None:
    """Raise TypeError naming the first keyword that neither ``target`` nor the pool takes.

    Args:
        kwargs: the keywords that would go to ``target``.
        accepted: the names ``target`` accepts.
        target: the driver function, for the message (``"asyncpg.connect()"``).
        own: the manager's own options, for the message.
    """
    for key in kwargs:
        if key not in accepted:
            raise TypeError(
                f"unexpected keyword argument {key!r}: not a Pool option "
                f"({', '.join(POOL_OPTIONS)}), nor an option of the driver pool "
                f"({', '.join(own)}), nor a keyword {target} takes ({', '.join(sorted(accepted))})"
            )


def check_connection_string(name: str, value: object, *, allow_none: bool) -> None:
    """A driver pool's connection string (``dsn``, ``conninfo``): a str (or None where the
    driver takes it), checked here rather than met by a parser's AttributeError."""
    if isinstance(value, str) or (allow_none and value is None):
        return
    accepted = "a str or None" if allow_none else "a str"
    raise TypeError(f"{name} must be {accepted}, got {type(value).__name__} {redact(repr(value))}")


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def check_pragmas(pragmas: Mapping[str, object]) -> dict[str, str | int | float]:
    """SQLite pragmas that are safe to put in a ``PRAGMA name=value`` statement: names
    are identifiers, values ints, floats or simple identifiers (``WAL``, ``NORMAL``, ``ON``)."""
    if not isinstance(pragmas, Mapping):
        raise TypeError(
            "pragmas must be a mapping of pragma names to values, such as "
            f"{{'journal_mode': 'WAL'}}, or None, got {type(pragmas).__name__} {pragmas!r}"
        )
    checked: dict[str, str | int | float] = {}
    for name, value in pragmas.items():
        if not isinstance(name, str) or not _IDENTIFIER.match(name):
            raise ValueError(f"pragma names are identifiers, got {name!r}")
        if isinstance(value, bool) or not (
            isinstance(value, int)
            or (isinstance(value, float) and math.isfinite(value))
            or (isinstance(value, str) and _IDENTIFIER.match(value))
        ):
            raise ValueError(
                f"pragma {name}: the value must be an int, a finite float or a simple identifier "
                f"(such as WAL, NORMAL, ON), got {value!r}"
            )
        checked[name] = value
    return checked


def check_configure(configure: object) -> None:
    """A driver pool's ``configure``: None, or an async function (a coroutine function, or
    an object whose ``__call__`` is one) that takes the new connection.

    Raises:
        TypeError: anything else, a plain (sync) function included: its result would
            never be awaited, or would be a value the pool cannot wait for.
    """
    if configure is None:
        return
    if not callable(configure):
        raise TypeError(
            "configure must be an async function taking the new connection "
            f"(async def configure(conn): ...), or None, got {type(configure).__name__} "
            f"{configure!r}"
        )
    call = getattr(configure, "__call__", None)  # noqa: B004 - an object's async __call__
    if not (inspect.iscoroutinefunction(configure) or inspect.iscoroutinefunction(call)):
        raise TypeError(
            f"configure must be an async function (async def configure(conn): ...), got "
            f"{configure!r}, which is not one: a plain function's result is not awaited"
        )


async def run_configure(
    configure: Callable[[Any], Awaitable[object]],
    conn: Any,
    timeout: float,
    pool_name: str,
) -> None:
    """Run ``configure(conn)`` on a new connection, bounded by ``timeout`` seconds (the
    manager's ``configure_timeout``). The caller closes the connection if this raises.

    Raises:
        TimeoutError: ``configure`` outlasted ``timeout`` (the message names the pool and
            the bound; a ``TimeoutError`` of ``configure``'s own goes through as it is).
        Exception: whatever ``configure`` raised.
    """
    scope = asyncio.timeout(timeout)
    try:
        async with scope:
            await configure(conn)
    except TimeoutError as exc:
        if scope.expired():
            raise TimeoutError(
                f"configure() of a new connection to {pool_name} did not finish within "
                f"configure_timeout={timeout:g} s: connection closed"
            ) from exc
        raise
