"""Shared helper of the driver pool tests (asyncpg, psycopg, SQLite) on a real loop.

White-box in one place: :func:`settle` reads ``pool._tasks`` (the pool-owned tasks:
creations, resets, closes) to know when background work has finished.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiolease import Pool


async def settle(pool: Pool[Any]) -> None:
    """Wait for the pool's background work (resets, closes) to finish."""
    for _ in range(100):
        tasks = [t for t in pool._tasks if not t.done()]
        if not tasks:
            return
        await asyncio.wait(tasks, timeout=10)
    raise AssertionError(f"{pool!r} never settled")
