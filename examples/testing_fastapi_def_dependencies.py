"""A FastAPI app with plain ``def`` endpoints and dependencies, tested on virtual time.

Run it: ``pytest examples/testing_fastapi_def_dependencies.py`` (needs fastapi and httpx).
"""

import asyncio
import time
from typing import Annotated

import httpx
import pytest
from fastapi import Depends, FastAPI

# -- the code under test -------------------------------------------------------------------

app = FastAPI()


def settings() -> dict[str, int]:  # blocking: FastAPI runs it in a worker thread
    time.sleep(0.05)
    return {"factor": 2}


@app.get("/double/{n}")
def double(n: int, conf: Annotated[dict[str, int], Depends(settings)]) -> dict[str, int]:
    time.sleep(0.05)  # blocking too: the endpoint runs in a worker thread as well
    return {"value": n * conf["factor"]}


@app.get("/later")
async def later() -> dict[str, float]:
    await asyncio.sleep(3600)
    return {"time": asyncio.get_running_loop().time()}


# -- the test ------------------------------------------------------------------------------


@pytest.mark.aiolease_virtual_time
async def test_def_dependencies_and_an_hour_on_virtual_time() -> None:
    loop = asyncio.get_running_loop()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        async with asyncio.timeout(1.0):  # would fire if the clock jumped while threads work
            assert (await client.get("/double/21")).json() == {"value": 42}
        assert loop.time() == 0.0  # the clock held while the threads worked

        # An hour of virtual time: instant, and exact.
        assert (await client.get("/later")).json() == {"time": 3600.0}
