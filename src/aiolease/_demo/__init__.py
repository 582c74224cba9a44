"""Scenarios of ``python -m aiolease demo``.

Each scenario is ``async def run(out: Callable[[str], None]) -> None`` in its
own module, printing through ``out``; register it in :data:`SCENARIOS` (the
order is the order they run in).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from . import pool as _pool

Scenario = Callable[[Callable[[str], None]], Awaitable[None]]

SCENARIOS: list[tuple[str, Scenario]] = [
    ("pool", _pool.run),
]
