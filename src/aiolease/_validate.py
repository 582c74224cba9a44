"""Argument checks, one function per kind, shared by every constructor and method that
takes one (errors at the call): numbers (:func:`number`, :func:`seconds`,
:func:`optional_seconds`, :func:`timeout`, :func:`integer`), a limiter's cost and key, a
pool's or limiter's name, a callback's arity, a SQLSTATE, a regex.

Each error names the argument, what it accepts and the value given (a ``TypeError`` its
type too): ``max_lifetime must be None or a finite number of seconds > 0, got -5``. A
bool is not a number here (``True`` is an int to Python, never a timeout to a caller);
an int too large for a float counts as infinite; ``-0.0`` is taken as ``0.0``.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable, Hashable
from typing import Final

__all__ = [
    "LONGEST_WAIT",
    "check_arity",
    "check_cost",
    "check_entry",
    "check_flag",
    "check_key",
    "check_name",
    "check_pattern",
    "check_sqlstate",
    "integer",
    "number",
    "optional_seconds",
    "seconds",
    "timeout",
    "utf8_size",
]


def _real(name: str, value: object, accepts: str) -> float:
    """``value`` as a float (NaN and infinities included), or TypeError."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be {accepts}, got {type(value).__name__} {value!r}")
    try:
        return float(value) + 0.0  # (+ 0.0: -0.0 is 0.0)
    except OverflowError:  # an int beyond any float: as large as inf (rejected where inf is)
        return math.inf if value > 0 else -math.inf


def number(
    name: str,
    value: object,
    *,
    minimum: float = 0.0,
    inclusive: bool = False,
    unit: str = "",
) -> float:
    """A finite number above ``minimum`` (or equal to it when ``inclusive``); ``unit``
    names what it counts in the message (``" of seconds"``)."""
    accepts = f"a finite number{unit}"
    if minimum > -math.inf:
        accepts += f" {'>=' if inclusive else '>'} {minimum:g}"
    v = _real(name, value, accepts)
    if not (math.isfinite(v) and (v >= minimum if inclusive else v > minimum)):
        raise ValueError(f"{name} must be {accepts}, got {value!r}")
    return v


def seconds(name: str, value: object) -> float:
    """A duration: a finite number of seconds > 0."""
    return number(name, value, unit=" of seconds")


def optional_seconds(name: str, value: object) -> float | None:
    """None (no limit), or a duration: a finite number of seconds > 0."""
    if value is None:
        return None
    accepts = "None or a finite number of seconds > 0"
    v = _real(name, value, accepts)
    if not 0 < v < math.inf:  # (NaN too)
        raise ValueError(f"{name} must be {accepts}, got {value!r}")
    return v


def timeout(name: str, value: object) -> float | None:
    """A timeout: None or a number of seconds >= 0 (``inf`` waits forever, as None does)."""
    if value is None:
        return None
    accepts = "None or a number of seconds >= 0"
    v = _real(name, value, accepts)
    if not v >= 0:  # (NaN too)
        raise ValueError(f"{name} must be {accepts}, got {value!r}")
    return None if v == math.inf else v


def integer(name: str, value: object, minimum: int) -> int:
    """An int >= ``minimum`` (not a bool, not a float that happens to be whole)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= {minimum}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def check_flag(name: str, value: object) -> bool:
    """A flag: True or False only (not ``bool(value)``: ``readonly="false"`` would be True)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def check_arity(what: str, fn: Callable[..., object], nargs: int, called: str) -> None:
    """A callback that can be called with ``nargs`` positional arguments, checked when it is
    given rather than met as a TypeError when it is called (after a COMMIT, on a request).
    A callable whose signature cannot be read (some builtins) is taken as it is.

    Args:
        what: the callback, for the message (``"on_commit(): a transaction hook"``).
        called: how it is called, for the message (``"no arguments"``).
    """
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(*range(nargs))
    except TypeError as exc:
        raise TypeError(f"{what} is called with {called}, got {fn!r}: {exc}") from None


def check_pattern(name: str, value: object) -> re.Pattern[str]:
    """A regular expression over str: a str (compiled case-insensitive) or a compiled str
    pattern. A bytes one compiles, then fails on the first str it is matched against."""
    if isinstance(value, re.Pattern) and isinstance(value.pattern, str):
        return value
    if not isinstance(value, str):
        raise TypeError(
            f"{name} must be a str or a compiled str re.Pattern, got {type(value).__name__} "
            f"{value!r}"
        )
    try:
        return re.compile(value, re.IGNORECASE)
    except re.error as exc:
        raise ValueError(f"{name}={value!r} is not a valid regular expression: {exc}") from None


#: A SQLSTATE: five characters of digits and upper-case ASCII letters (SQL standard).
_SQLSTATE: Final = frozenset("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def check_sqlstate(name: str, value: object) -> str:
    """A SQLSTATE (``"40001"``): five characters of [0-9A-Z]."""
    if not isinstance(value, str):
        raise TypeError(
            f"{name} must be a SQLSTATE str (5 characters of 0-9 and A-Z, e.g. '40001'), "
            f"got {type(value).__name__} {value!r}"
        )
    if len(value) != 5 or not _SQLSTATE.issuperset(value):
        raise ValueError(
            f"{name} must be a SQLSTATE (5 characters of 0-9 and A-Z, e.g. '40001'), got {value!r}"
        )
    return value


#: The longest wait one instruction is taken to ask for, in seconds (a server's
#: ``Retry-After``, a Redis limiter's pause): RFC 9111 (1.2.2) caps delta-seconds there.
LONGEST_WAIT: Final = 2.0**31


def check_cost(value: object, max_cost: float, what: str) -> float:
    v = number("cost", value)
    if v > max_cost:
        raise ValueError(
            f"cost={value!r} can never be admitted: this limiter admits at most "
            f"{max_cost:g} at once ({what}); raise it or split the acquisition"
        )
    return v


def check_key(key: object) -> Hashable:
    """A limiter key: any hashable (checked at the call, not when the acquisition is awaited)."""
    try:
        hash(key)
    except TypeError:
        raise TypeError(
            f"key must be hashable (None, a str, an int, a tuple...), got {type(key).__name__} "
            f"{key!r}"
        ) from None
    return key


def utf8_size(what: str, text: str, shown: object) -> int:
    """The length of ``text`` in UTF-8; ValueError naming ``what`` when it has none (a lone
    surrogate): names and keys go to logs, metrics exports and Redis as UTF-8 text."""
    try:
        return len(text.encode())
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"{what} must be encodable as UTF-8 (it is written to logs, metrics and Redis as "
            f"text), got {shown!r}: {exc.reason} at index {exc.start}"
        ) from None


def check_name(value: object) -> str | None:
    """The ``name`` of a pool or a local limiter: None, or a str encodable as UTF-8."""
    if value is not None and not isinstance(value, str):
        raise TypeError(f"name must be None or a str, got {type(value).__name__} {value!r}")
    if value is not None:
        utf8_size("name", value, value)
    return value


def check_entry(entered: bool, limiter: object) -> None:
    """An object returned by ``acquire()`` holds the permit of its one block: entered again
    before that block ended (by another task), the two exits would release one permit twice
    and never the other."""
    if entered:
        raise RuntimeError(
            f"this {limiter!r}.acquire() is already in an `async with` block (kept and entered "
            "by another task?): call acquire() for each block, e.g. "
            "`async with limiter.acquire(key=k):` in each task"
        )
