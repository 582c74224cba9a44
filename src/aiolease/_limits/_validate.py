"""Argument checks of the limiters (and the names of pools): each error names the argument,
the value and the range."""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import Final

__all__ = [
    "LONGEST_WAIT",
    "check_cost",
    "check_entry",
    "check_key",
    "check_name",
    "check_positive",
    "check_timeout",
    "utf8_size",
]

#: The longest wait one instruction is taken to ask for, in seconds (a server's
#: ``Retry-After``, a Redis limiter's pause): RFC 9111 (1.2.2) caps delta-seconds there.
LONGEST_WAIT: Final = 2.0**31


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    try:
        return float(value)
    except OverflowError:  # an int beyond any float: as large as inf (rejected where inf is)
        return math.inf if value > 0 else -math.inf


def check_positive(
    name: str, value: object, *, minimum: float = 0.0, inclusive: bool = False
) -> float:
    v = _number(name, value)
    ok = math.isfinite(v) and (v >= minimum if inclusive else v > minimum)
    if not ok:
        bound = f" >= {minimum:g}" if inclusive else f" > {minimum:g}"
        bound = "" if minimum == -math.inf else bound
        raise ValueError(f"{name} must be a finite number{bound}, got {value!r}")
    return v


def check_cost(value: object, max_cost: float, what: str) -> float:
    v = _number("cost", value)
    if not (math.isfinite(v) and 0 < v <= max_cost):
        raise ValueError(
            f"cost must be a finite number in (0, {max_cost:g}] ({what}), got {value!r}"
            if v <= max_cost or not math.isfinite(v)
            else f"cost={value!r} can never be admitted: this limiter admits at most "
            f"{max_cost:g} at once ({what}); raise it or split the acquisition"
        )
    return v


def check_timeout(value: object) -> float | None:
    if value is None:
        return None
    v = _number("timeout", value)
    if math.isnan(v) or v < 0:
        raise ValueError(f"timeout must be None or a number >= 0, got {value!r}")
    return None if v == math.inf else v


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
