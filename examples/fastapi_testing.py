"""Testing the FastAPI service of fastapi_app.py with aiolease.testing.

Run it: ``pytest fastapi_testing.py`` in this directory (needs fastapi and httpx).

The app is driven in process through ``httpx.ASGITransport`` with its lifespan
running, on fakes instead of a database: ``FakeConnection`` records every SQL
statement with real transaction semantics, ``FakeManager`` stalls connects on
demand, ``VirtualTimeLoop`` (the ``aiolease_virtual_time`` marker) makes the
rate limit's second and the pool's timeout pass instantly and exactly, and the
``aiolease_leaks`` fixture fails a test that leaves a pool open or a lease out.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi_app import create_app

import aiolease
from aiolease.testing import FakeConnection, FakeDatabase, FakeManager

pytestmark = pytest.mark.asyncio  # pytest-asyncio runs the async tests (also in strict mode)


@asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan running, and a client talking to it in process."""
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 40000))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
    ):
        yield client


def fake_pool(db: FakeDatabase) -> aiolease.Pool[FakeConnection]:
    async def connect() -> FakeConnection:
        return FakeConnection(database=db)

    return aiolease.Pool.from_callables(connect, max_size=2)


async def test_a_deposit_commits_in_one_transaction(aiolease_leaks: Any) -> None:
    db = FakeDatabase()
    async with serve(create_app(lambda: fake_pool(db))) as client:
        response = await client.post("/accounts/alice/deposit", params={"amount": 30})
    assert response.status_code == 200
    assert db.committed[-1] == ("INSERT INTO ledger VALUES (?, ?)", (("alice", 30),))


async def test_an_error_after_the_write_rolls_it_back(aiolease_leaks: Any) -> None:
    db = FakeDatabase()
    connections: list[FakeConnection] = []

    async def connect() -> FakeConnection:
        connections.append(FakeConnection(database=db))
        return connections[-1]

    app = create_app(lambda: aiolease.Pool.from_callables(connect, max_size=1))
    async with serve(app) as client:
        response = await client.post("/accounts/bob/deposit", params={"amount": 5000})
    assert response.status_code == 403
    (conn,) = connections
    assert [s.split()[0] for s in conn.statements[-3:]] == ["BEGIN", "INSERT", "ROLLBACK"]
    assert not any("INSERT" in sql for sql, _ in db.committed)


@pytest.mark.aiolease_virtual_time
async def test_the_rate_limit_answers_429_then_lets_the_client_back(aiolease_leaks: Any) -> None:
    app = create_app(lambda: fake_pool(FakeDatabase()), rate=5, burst=10)
    async with serve(app) as client:
        statuses = [
            (await client.post("/accounts/cy/deposit", params={"amount": 1})).status_code
            for _ in range(11)
        ]
        assert statuses == [200] * 10 + [429]
        refused = await client.post("/accounts/cy/deposit", params={"amount": 1})
        assert refused.headers["retry-after"] == "1"
        assert refused.headers["ratelimit-policy"] == '"default";q=5;w=1'
        assert (await client.get("/health")).status_code == 200  # exempt

        await asyncio.sleep(float(refused.headers["retry-after"]))  # virtual: instant
        again = await client.post("/accounts/cy/deposit", params={"amount": 1})
        assert again.status_code == 200
    assert asyncio.get_running_loop().time() == 1.0


@pytest.mark.aiolease_virtual_time
async def test_a_stalled_database_gives_503_after_the_pool_timeout(aiolease_leaks: Any) -> None:
    fm = FakeManager()
    fm.delay("create", 60.0)  # every connect hangs for a minute

    app = create_app(lambda: aiolease.Pool(fm, max_size=1, acquire_timeout=5.0), setup=None)
    async with serve(app) as client:
        loop = asyncio.get_running_loop()
        held, done = asyncio.Event(), asyncio.Event()

        async def hold_the_only_connection() -> None:
            # Another task holds it: a request from the task holding every lease would be
            # told at once that it waits on itself.
            async with app.state.pool.acquire(timeout=120):  # 60 s to connect
                held.set()
                await done.wait()

        holder = asyncio.create_task(hold_the_only_connection())
        await held.wait()
        assert loop.time() == 60.0
        response = await client.get("/accounts/dee")  # waits 5 s in vain
        assert loop.time() == 65.0
        done.set()
        await holder
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
