"""Per-request overhead of server-side rate-limit middlewares on a FastAPI app.

``make bench-asgi``. Each contender is the same FastAPI app (one ``async def``
JSON endpoint) with one limiter in front, set so that it never refuses; the
app is called in process through ASGI (no network, no server), one request
after another, in interleaved rounds. Printed: the median time per request and
the overhead over the bare app, in microseconds. Not a test: nothing here
asserts timings.

The first two rows isolate our middleware around a bare ASGI callable.
Contenders on FastAPI: aiolease.asgi.RateLimitMiddleware with a RateLimiter and with a
ConcurrencyLimiter; slowapi (its pure-ASGI middleware and its
BaseHTTPMiddleware one, each with an in-memory default limit); fastapi-limiter
0.2 (a dependency over pyrate-limiter's in-memory bucket).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

# bench/limits.py would shadow the `limits` library slowapi imports: keep this
# directory off sys.path (nothing here imports a sibling module).
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

from fastapi import Depends, FastAPI, Request  # noqa: E402

import aiolease  # noqa: E402
from aiolease.asgi import RateLimitMiddleware  # noqa: E402

HUGE = 10**9


def bare() -> FastAPI:
    app = FastAPI()

    @app.get("/item")
    async def item() -> dict[str, bool]:
        return {"ok": True}

    return app


def ours_rate() -> Any:
    app = bare()
    app.add_middleware(RateLimitMiddleware, limiter=aiolease.RateLimiter(HUGE, burst=HUGE))
    return app


def ours_concurrency() -> Any:
    app = bare()
    app.add_middleware(RateLimitMiddleware, limiter=aiolease.ConcurrencyLimiter(HUGE))
    return app


def _slowapi(middleware: str) -> Any:
    from slowapi import Limiter, _rate_limit_exceeded_handler
    from slowapi.errors import RateLimitExceeded
    from slowapi.middleware import SlowAPIASGIMiddleware, SlowAPIMiddleware
    from slowapi.util import get_remote_address

    app = bare()
    app.state.limiter = Limiter(key_func=get_remote_address, default_limits=[f"{HUGE}/second"])
    app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)  # type: ignore[arg-type]
    app.add_middleware(SlowAPIASGIMiddleware if middleware == "asgi" else SlowAPIMiddleware)
    return app


def fastapi_limiter() -> Any:
    from fastapi_limiter.depends import RateLimiter
    from pyrate_limiter import Duration, Limiter, Rate

    limiter = RateLimiter(limiter=Limiter(Rate(HUGE, Duration.SECOND)))
    app = FastAPI()

    @app.get("/item", dependencies=[Depends(limiter)])
    async def item(request: Request) -> dict[str, bool]:
        return {"ok": True}

    return app


async def _plain(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def plain() -> Any:
    return _plain


def ours_around_plain() -> Any:
    return RateLimitMiddleware(_plain, limiter=aiolease.RateLimiter(HUGE, burst=HUGE))


CONTENDERS: dict[str, Callable[[], Any]] = {
    "bare ASGI callable": plain,
    "aiolease.asgi around it (RateLimiter)": ours_around_plain,
    "bare FastAPI app": bare,
    "aiolease.asgi + RateLimiter": ours_rate,
    "aiolease.asgi + ConcurrencyLimiter": ours_concurrency,
    "slowapi SlowAPIASGIMiddleware": lambda: _slowapi("asgi"),
    "slowapi SlowAPIMiddleware": lambda: _slowapi("base"),
    "fastapi-limiter 0.2 dependency": fastapi_limiter,
}


async def one_round(app: Any, n: int) -> float:
    """Seconds per request over ``n`` sequential in-process GETs."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/item",
        "raw_path": b"/item",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"bench")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    status: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    t0 = time.perf_counter()
    for _ in range(n):
        await app(dict(scope), receive, send)
    elapsed = time.perf_counter() - t0
    if set(status) != {200}:
        raise RuntimeError(f"a limiter refused or failed: statuses {set(status)}")
    return elapsed / n


async def main(args: argparse.Namespace) -> None:
    apps: dict[str, Any] = {}
    for name, make in CONTENDERS.items():
        try:
            apps[name] = make()
            await one_round(apps[name], 200)  # warm up
        except ImportError as exc:
            print(f"{name}: not installed ({exc})")
            apps.pop(name, None)
    times: dict[str, list[float]] = {name: [] for name in apps}
    for r in range(args.rounds):
        order = list(apps) if r % 2 == 0 else list(reversed(apps))
        for name in order:
            times[name].append(await one_round(apps[name], args.requests))
    print(f"{args.rounds} rounds x {args.requests} sequential requests, in process (medians)")
    print(f"{'contender':38} {'us/request':>10} {'overhead us':>11} {'x bare':>7}")
    base = statistics.median(times["bare ASGI callable"])
    for name, ts in times.items():
        if name == "bare FastAPI app":
            base = statistics.median(ts)
        med = statistics.median(ts)
        print(f"{name:38} {med * 1e6:10.1f} {(med - base) * 1e6:11.1f} {med / base:7.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    asyncio.run(main(parser.parse_args()))
