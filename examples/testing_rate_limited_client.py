"""A rate-limited client tested over an hour of virtual time, in milliseconds of real time.

Run it: ``pytest examples/testing_rate_limited_client.py``.
"""

from __future__ import annotations

import asyncio

import pytest

import aiolease


# -- the code under test -------------------------------------------------------------------
class ReportClient:
    """Calls a partner API that allows 10 requests a minute, with bursts of 5."""

    def __init__(self) -> None:
        self.limiter = aiolease.RateLimiter(10, per=60.0, burst=5)
        self.sent: list[float] = []  # when each request went out (loop time)

    async def send(self, report: str) -> None:
        async with self.limiter:
            self.sent.append(asyncio.get_running_loop().time())


# -- the test ------------------------------------------------------------------------------
@pytest.mark.aiolease_virtual_time
async def test_an_hour_of_reports_respects_the_partner_limit() -> None:
    client = ReportClient()

    async def producer(n: int) -> None:
        for i in range(30):
            await client.send(f"report {n}.{i}")

    await asyncio.gather(*(producer(n) for n in range(20)))  # 600 reports

    sent = client.sent
    assert len(sent) == 600
    assert sent[:6] == [0.0, 0.0, 0.0, 0.0, 0.0, 6.0]  # the burst, then one every 6 s
    assert sent[-1] == 595 * 6.0  # a virtual hour, exact
    # In any 60 s window: at most burst + rate = 15 requests.
    for i, start in enumerate(sent):
        in_window = sum(1 for t in sent[i:] if t < start + 60.0)
        assert in_window <= 15
