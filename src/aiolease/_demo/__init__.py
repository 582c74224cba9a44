"""Scenarios of ``python -m aiolease demo``.

Each scenario is ``async def run(out: Callable[[str], None]) -> None`` in its
own module, printing through ``out``; register it in :data:`SCENARIOS` (the
order is the order they run in).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from . import limits as _limits
from . import pool as _pool
from . import transactions as _transactions

Scenario = Callable[[Callable[[str], None]], Coroutine[Any, Any, None]]

SCENARIOS: list[tuple[str, Scenario]] = [
    ("pool", _pool.run),
    ("limits", _limits.run),
    ("transactions", _transactions.run),
]
