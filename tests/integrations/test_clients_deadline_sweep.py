"""aiolease.httpx.LimitedTransport under an ``asyncio.timeout()`` whose deadline fires after
each number of event-loop steps (cancelling.deadline_at_each_step), against a local aiohttp
server (bench/_throttled.py), its ConcurrencyLimiter free or held by another task for a few
steps: the caller gets TimeoutError or the response, never a swallowed or replaced
cancellation, ``cancelling()`` is back to 0, an enclosing timeout still works, and the
request's slot is given back.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import httpx
import pytest

import aiolease
import aiolease.httpx
from cancelling import Deadline, deadline_at_each_step

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def _load_throttled() -> ModuleType:
    name = "aiolease_bench_throttled"  # the name test_integ_clients loads it under, too
    if name in sys.modules:
        return sys.modules[name]
    path = Path(__file__).resolve().parents[2] / "bench" / "_throttled.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


async def release_after_steps(permit: aiolease.ConcurrencyPermit, steps: int) -> None:
    for _ in range(steps):
        await asyncio.sleep(0)
    permit.release()


@pytest.mark.parametrize("contended", [False, True], ids=["free", "contended"])
async def test_httpx_limited_transport_under_a_deadline_at_each_step(contended: bool) -> None:
    sem = aiolease.ConcurrencyLimiter(1)
    releases: list[asyncio.Task[None]] = []
    transport = aiolease.httpx.LimitedTransport(sem)
    async with (
        _load_throttled().ThrottledServer() as server,
        httpx.AsyncClient(transport=transport) as client,
    ):

        async def scenario() -> int:
            if contended:
                holder = sem.acquire_nowait()
                releases.append(asyncio.create_task(release_after_steps(holder, 3)))
            return (await client.get(server.url + "/a")).status_code

        async def check(run: Deadline) -> None:
            await asyncio.gather(*releases)
            releases.clear()
            s = sem.statistics()
            assert (s.in_use, s.waiting) == (0, 0), (run, s)
            if not run.timed_out:
                assert run.result == 200, run

        covered = await deadline_at_each_step(scenario, check, max_steps=3000)
        assert len(covered) > 1
