"""A FastAPI app with plain ``def`` endpoints and dependencies on VirtualTimeLoop.

FastAPI and Starlette run ``def`` endpoints and dependencies (``yield`` ones
too) in anyio's worker threads. The loop holds its clock while those threads
work and raises no NoProgressError meanwhile, with nothing asked of the test;
an ``async`` endpoint's hour-long sleep still passes in no time, so does a
coroutine a ``def`` endpoint runs with ``anyio.from_thread.run``, and a real
deadlock is still reported.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations, which
# name dependencies local to make_app().
import asyncio
import functools
import threading
import time
from collections.abc import Iterator
from typing import Annotated, Any

import anyio.from_thread
import httpx
import pytest
from fastapi import Depends, FastAPI

from aiolease.testing import NoProgressError, VirtualTimeLoop


def make_app(log: list[str], release: threading.Event) -> FastAPI:
    app = FastAPI()

    def settings() -> dict[str, int]:  # a blocking `def` dependency (reads a file, say)
        time.sleep(0.05)
        return {"factor": 2}

    def session() -> Iterator[str]:  # a `def` yield dependency: set-up and tear-down in threads
        time.sleep(0.02)
        yield "session"
        time.sleep(0.02)
        log.append("session closed")

    @app.get("/double/{n}")
    def double(
        n: int,
        conf: Annotated[dict[str, int], Depends(settings)],
        sess: Annotated[str, Depends(session)],
    ) -> dict[str, Any]:
        time.sleep(0.05)  # real blocking work in the endpoint itself
        return {"value": n * conf["factor"], "session": sess}

    @app.get("/remind")
    def remind() -> dict[str, str]:  # a `def` endpoint awaiting async code on the loop
        time.sleep(0.02)
        answer = anyio.from_thread.run(asyncio.sleep, 60.0, "a minute later")
        time.sleep(0.02)
        return {"answer": answer}

    @app.get("/hour")
    async def hour() -> dict[str, float]:
        await asyncio.sleep(3600)
        return {"time": asyncio.get_running_loop().time()}

    @app.get("/stuck")
    async def stuck() -> None:
        await asyncio.Event().wait()  # nothing ever sets it

    @app.get("/blocked")
    def blocked() -> None:
        release.wait()  # a thread that never answers

    return app


def client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app")


@pytest.mark.aiolease_virtual_time
async def test_def_endpoints_and_dependencies_run_with_the_clock_held() -> None:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, VirtualTimeLoop)
    log: list[str] = []
    async with client(make_app(log, threading.Event())) as http:
        loop.call_later(0.001, log.append, "timer")  # fires first if the clock jumps
        async with asyncio.timeout(0.002):  # would fire if the clock jumped meanwhile
            responses = await asyncio.gather(*(http.get(f"/double/{n}") for n in range(5)))
        assert [r.json() for r in responses] == [
            {"value": 2 * n, "session": "session"} for n in range(5)
        ]
        assert log == ["session closed"] * 5
        assert loop.time() == 0.0

        hour = await http.get("/hour")  # an async endpoint: an hour of virtual time
        assert hour.json() == {"time": 3600.0}
        assert log[-1] == "timer"

        # The endpoint's thread waits for a coroutine's virtual minute, uncounted meanwhile.
        assert (await http.get("/remind")).json() == {"answer": "a minute later"}
        assert loop.time() == 3660.0


def test_async_deadlock_behind_def_dependencies_is_still_no_progress() -> None:
    async def main() -> None:
        async with client(make_app([], threading.Event())) as http:
            assert (await http.get("/double/3")).json()["value"] == 6
            await http.get("/stuck")

    # Raised at once ("no timer is scheduled"), not after waiting for threads.
    with (
        asyncio.Runner(loop_factory=VirtualTimeLoop) as runner,
        pytest.raises(NoProgressError, match="no timer is scheduled") as caught,
    ):
        runner.run(main())
    assert "stuck" in str(caught.value)


def test_def_endpoint_that_never_returns_is_no_progress_after_stall_timeout() -> None:
    release = threading.Event()

    async def main() -> None:
        async with client(make_app([], release)) as http:
            await http.get("/blocked")

    factory = functools.partial(VirtualTimeLoop, stall_timeout=0.2)
    runner = asyncio.Runner(loop_factory=factory)
    try:
        stalled = r"waiting for 1 anyio worker thread call\(s\), but nothing happened for 0.2 s"
        with pytest.raises(NoProgressError, match=stalled):
            runner.run(main())
    finally:
        release.set()  # the worker thread ends with the runner's main task
        runner.close()
