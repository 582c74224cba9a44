"""A FastAPI service on aiolease: a pool in the lifespan, connection and transaction
dependencies, and rate limiting in front.

Run it: ``pip install 'aiolease[sqlite]' fastapi uvicorn``, then ``python fastapi_app.py``
in this directory (http://127.0.0.1:8000/docs), or ``uvicorn fastapi_app:app``.
Its tests, on aiolease.testing: ``pytest fastapi_testing.py``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse

import aiolease
import aiolease.asgi
from aiolease import sqlite

PoolFactory = Callable[[], aiolease.Pool[Any]]
Setup = Callable[[aiolease.Pool[Any]], Awaitable[None]]


def sqlite_pool() -> aiolease.Pool[Any]:
    """The production pool: SQLite in WAL mode, four connections."""
    return sqlite.create_pool(os.environ.get("LEDGER_DB", "ledger.db"), max_size=4)


async def create_schema(pool: aiolease.Pool[Any]) -> None:
    async with pool.atomic() as tx:
        await tx.connection.execute(
            "CREATE TABLE IF NOT EXISTS ledger (name TEXT NOT NULL, amount INTEGER NOT NULL)"
        )


# -- dependencies --------------------------------------------------------------------------
async def connection(request: Request) -> AsyncIterator[Any]:
    """A pooled connection for one request, returned to the pool when the request is done."""
    async with request.app.state.pool.acquire() as conn:
        yield conn


async def transaction(request: Request) -> AsyncIterator[aiolease.Transaction[Any]]:
    """A transaction for one endpoint: committed when it returns, rolled back when it raises.

    Used with ``scope="function"`` (FastAPI >= 0.121) so that COMMIT happens before the
    response is sent: a client never sees 200 for a write that failed to commit.
    """
    async with request.app.state.pool.atomic() as tx:
        yield tx


Connection = Annotated[Any, Depends(connection)]
Tx = Annotated[aiolease.Transaction[Any], Depends(transaction, scope="function")]


# -- the application -----------------------------------------------------------------------
def create_app(
    pool_factory: PoolFactory = sqlite_pool,
    *,
    setup: Setup | None = create_schema,
    rate: float = 5.0,
    burst: float = 10,
) -> FastAPI:
    """The service, with its pool made by ``pool_factory`` (tests pass a fake one)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Opened at start-up; at shutdown aclose() waits for the leases still out.
        async with pool_factory() as pool:
            if setup is not None:
                await setup(pool)
            app.state.pool = pool
            yield

    app = FastAPI(lifespan=lifespan)
    # Every client IP gets `rate` requests per second (bursts of `burst`); over it: 429 with
    # Retry-After, RateLimit-Policy and RateLimit. The health check is never limited.
    app.add_middleware(
        aiolease.asgi.RateLimitMiddleware,
        limiter=aiolease.RateLimiter(rate, per=1.0, burst=burst),
        key=aiolease.asgi.client_ip,
        exempt={"/health"},
    )

    @app.exception_handler(aiolease.PoolTimeout)
    async def pool_timeout(request: Request, exc: aiolease.PoolTimeout) -> JSONResponse:
        # Every connection is busy (or the database is down): ask the client to come back.
        return JSONResponse(
            {"detail": "busy, retry"}, status_code=503, headers={"Retry-After": "1"}
        )

    @app.get("/health")
    async def health(request: Request) -> dict[str, int]:
        stats = request.app.state.pool.statistics()
        return {"size": stats.size, "idle": stats.idle, "in_use": stats.in_use}

    @app.get("/accounts/{name}")
    async def balance(name: str, conn: Connection) -> dict[str, Any]:
        sql = "SELECT coalesce(sum(amount), 0) FROM ledger WHERE name = ?"
        async with conn.execute(sql, (name,)) as cursor:
            (total,) = await cursor.fetchone()
        return {"name": name, "balance": total}

    @app.post("/accounts/{name}/deposit")
    async def deposit(name: str, amount: int, tx: Tx) -> dict[str, Any]:
        await tx.connection.execute("INSERT INTO ledger VALUES (?, ?)", (name, amount))
        if amount > 1000:
            # Raised after the write: the transaction rolls it back.
            raise HTTPException(403, "deposits over 1000 need a review")
        return {"name": name, "deposited": amount}

    return app


app = create_app()

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=8000)
