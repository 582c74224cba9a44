"""What the two HTTP client test files share: the client kinds and a bounded wait."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

__all__ = ["KINDS", "kind", "until"]

KINDS = ["httpx", "aiohttp"]


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def until(condition: Callable[[], bool], within: float = 10.0) -> None:
    """Wait (bounded) for a condition another task brings about."""
    async with asyncio.timeout(within):
        for _ in iter(int, 1):
            if condition():
                return
            await asyncio.sleep(0.005)
