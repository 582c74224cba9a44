"""A throwaway PostgreSQL table for a test, on an asyncpg or psycopg connection."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any


@asynccontextmanager
async def temporary_table(conn: Any, prefix: str, columns: str) -> AsyncIterator[str]:
    """A fresh table ``<prefix><uuid>(<columns>)`` created on ``conn`` (anything with
    ``await conn.execute(sql)``: asyncpg or psycopg), dropped afterwards."""
    name = f"{prefix}{uuid.uuid4().hex[:12]}"
    await conn.execute(f"CREATE TABLE {name} ({columns})")
    try:
        yield name
    finally:
        await conn.execute(f"DROP TABLE IF EXISTS {name}")
