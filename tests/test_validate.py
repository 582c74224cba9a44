"""aiolease._validate: one check per kind of argument, the same edges for each (a bool is not
a number, NaN and the infinities, -0.0, an int beyond any float, 1e300)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from aiolease import _validate

NAN, INF = float("nan"), float("inf")
HUGE = 10**400  # beyond any float

#: kind -> (check, what its messages say it accepts, [(value, result or error type)]).
CASES: dict[str, tuple[Any, str, list[tuple[object, object]]]] = {
    "seconds": (
        lambda v: _validate.seconds("arg", v),
        "a finite number of seconds > 0",
        [
            (1, 1.0),
            (0.5, 0.5),
            (1e300, 1e300),
            (0, ValueError),
            (-0.0, ValueError),
            (-1, ValueError),
            (NAN, ValueError),
            (INF, ValueError),
            (-INF, ValueError),
            (HUGE, ValueError),
            (-HUGE, ValueError),
            (True, TypeError),
            (None, TypeError),
            ("1", TypeError),
        ],
    ),
    "optional_seconds": (
        lambda v: _validate.optional_seconds("arg", v),
        "None or a finite number of seconds > 0",
        [
            (None, None),
            (2, 2.0),
            (1e300, 1e300),
            (0, ValueError),
            (-0.0, ValueError),
            (NAN, ValueError),
            (INF, ValueError),
            (HUGE, ValueError),
            (False, TypeError),
            ("x", TypeError),
        ],
    ),
    "timeout": (
        lambda v: _validate.timeout("arg", v),
        "None or a number of seconds >= 0",
        [
            (None, None),
            (0, 0.0),
            (-0.0, 0.0),
            (3, 3.0),
            (1e300, 1e300),
            (INF, None),
            (HUGE, None),
            (-1, ValueError),
            (NAN, ValueError),
            (-INF, ValueError),
            (-HUGE, ValueError),
            (True, TypeError),
            ([], TypeError),
        ],
    ),
    "number>=0": (
        lambda v: _validate.number("arg", v, inclusive=True),
        "a finite number >= 0",
        [
            (0, 0.0),
            (-0.0, 0.0),
            (1e300, 1e300),
            (-1e-300, ValueError),
            (NAN, ValueError),
            (INF, ValueError),
            (HUGE, ValueError),
            (True, TypeError),
            (b"1", TypeError),
        ],
    ),
    "integer": (
        lambda v: _validate.integer("arg", v, 1),
        "an int >= 1",
        [
            (1, 1),
            (HUGE, HUGE),
            (0, ValueError),
            (-HUGE, ValueError),
            (True, TypeError),
            (1.0, TypeError),
            (NAN, TypeError),
            (None, TypeError),
        ],
    ),
}


@pytest.mark.parametrize(
    ("kind", "value", "expected"),
    [(kind, value, expected) for kind, (_, _, rows) in CASES.items() for value, expected in rows],
)
def test_every_kind_at_its_edges(kind: str, value: object, expected: object) -> None:
    check, accepts, _ = CASES[kind]
    if isinstance(expected, type) and issubclass(expected, Exception):
        with pytest.raises(expected) as info:
            check(value)
        shown = f"{type(value).__name__} {value!r}" if expected is TypeError else repr(value)
        assert str(info.value) == f"arg must be {accepts}, got {shown}"
        return
    got = check(value)
    assert got == expected
    assert type(got) is type(expected)
    if isinstance(got, float) and got == 0:
        assert math.copysign(1.0, got) == 1.0  # -0.0 comes back as 0.0
