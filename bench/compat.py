"""What each fence in ``aiolease._compat`` buys: its private path against its public fallback,
in one process, interleaved rounds (see docs/compat.md).

One operation is ``pool.acquire()`` + ``SELECT 1`` + release on an ``aiolease.asyncpg`` pool
of 4 connections, through a proxy that delays every chunk by ``--latency-ms`` each way
(default 0.25: a round trip costs 0.5 ms more, a network between client and server).
Contenders:

* ``default``: what aiolease runs (private fast paths where kept);
* ``public``: every asyncpg fallback (no transport to watch: each checkout of an idle
  connection is verified with a round trip; nor a statement still running to see: so is
  each release), as ``AIOLEASE_COMPAT=public``.

Then the same operation (``conn.execute("SELECT 1")``) on an ``aiolease.psycopg`` pool of 4,
straight to the server (the psycopg fence adds no I/O, only its ``wait`` on every query, which
added latency would hide):

* ``psycopg``: the connection class aiolease opens (``_compat.psycopg``: a cancelled query
  ends within the cancel grace);
* ``psycopg public``: psycopg's own ``AsyncConnection``, as ``AIOLEASE_COMPAT=public``.

    python bench/compat.py [--latency-ms 0.25] [--duration 0.8] [--repeats 7]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import psycopg
from _common import Column, Contender, Stop, Worker, environment, run_rounds

import aiolease.asyncpg
import aiolease.psycopg
from aiolease._compat import asyncpg as compat_asyncpg
from transactions import LatencyProxy, proxied

DSN = os.environ.get("AIOLEASE_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
COLUMNS = [Column("1 task", 1), Column("8 tasks", 8)]


@contextlib.contextmanager
def asyncpg_public() -> Iterator[None]:
    """aiolease.asyncpg with the public fallbacks bound, as AIOLEASE_COMPAT=public binds them."""
    names = {
        "transport_of": compat_asyncpg._transport_public,
        "cancelling": compat_asyncpg._cancelling_public,
        "transaction_pending": compat_asyncpg._pending_public,
        "end_transaction": compat_asyncpg._end_public,
        "COMPAT_PRIVATE": False,
        "SEES_CANCELLING": False,
    }
    saved = {name: getattr(aiolease.asyncpg, name) for name in names}
    for name, value in names.items():
        setattr(aiolease.asyncpg, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(aiolease.asyncpg, name, value)


@contextlib.contextmanager
def psycopg_public() -> Iterator[None]:
    """aiolease.psycopg opening psycopg's own AsyncConnection, as AIOLEASE_COMPAT=public does."""
    saved = aiolease.psycopg.CONNECTION_CLASS
    aiolease.psycopg.CONNECTION_CLASS = psycopg.AsyncConnection
    try:
        yield
    finally:
        aiolease.psycopg.CONNECTION_CLASS = saved


#: driver -> (its create_pool, what binds its public fallbacks, the method running the query)
DRIVERS: dict[str, tuple[Callable[..., Any], Callable[[], Any], str]] = {
    "asyncpg": (aiolease.asyncpg.create_pool, asyncpg_public, "fetchval"),
    "psycopg": (aiolease.psycopg.create_pool, psycopg_public, "execute"),
}


def contender(name: str, driver: str, dsn: str, public: bool = False) -> Contender:
    """acquire + ``SELECT 1`` + release on a pool of 4 of ``driver``, in the default mode or
    with the driver's public fallbacks bound."""
    create_pool, public_mode, method = DRIVERS[driver]

    @contextlib.asynccontextmanager
    async def setup() -> AsyncIterator[Worker]:
        with public_mode() if public else contextlib.nullcontext():
            async with create_pool(dsn, max_size=4) as pool:

                async def worker(stop: Stop) -> int:
                    done = 0
                    while not stop.flag:
                        async with pool.acquire() as conn:
                            await getattr(conn, method)("SELECT 1")
                        done += 1
                    return done

                yield worker

    return Contender(name, setup)


async def main(args: argparse.Namespace) -> None:
    print(f"aiolease _compat fences — {environment()}")
    print(
        f"{args.repeats} rounds x {args.duration}s per cell; latency {args.latency_ms} ms each way"
    )
    parts = urlsplit(DSN)
    proxy = LatencyProxy(parts.hostname or "127.0.0.1", parts.port or 5432, args.latency_ms / 1000)
    proxy.start()
    proxy.ready.wait(5)
    dsn = proxied(DSN, proxy.port)
    try:
        await compare(
            args,
            [contender("default", "asyncpg", dsn), contender("public", "asyncpg", dsn, True)],
        )
    finally:
        proxy.stop()
    print("\npsycopg, straight to the server")
    await compare(
        args,
        [contender("psycopg", "psycopg", DSN), contender("psycopg public", "psycopg", DSN, True)],
    )


async def compare(args: argparse.Namespace, pair: list[Contender]) -> None:
    """Interleaved rounds of a fence's private path and its fallback; prints both rates and
    the ratio of the fallback to the private path."""
    ours, public = pair
    results = await run_rounds(
        pair,
        COLUMNS,
        repeats=args.repeats,
        duration=args.duration,
        warmup=0.2,
        progress=lambda msg: print(msg, file=sys.stderr, flush=True),
        pair=(ours.name, public.name),
    )
    titles = [c.title for c in COLUMNS]
    print(f"\n{'ops/s (median)':<28}" + "".join(f"{t:>14}" for t in titles))
    for c in pair:
        print(f"{c.name:<28}" + "".join(f"{results.median(c.name, t):>14,.0f}" for t in titles))
    print(f"\n{'ratio (median per round)':<28}" + "".join(f"{t:>14}" for t in titles))
    label = f"{public.name} / {ours.name}"
    print(
        f"{label:<28}"
        + "".join(f"{results.ratio(public.name, ours.name, t):>14.2f}" for t in titles)
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--latency-ms", type=float, default=0.25)
    ap.add_argument("--duration", type=float, default=0.8)
    ap.add_argument("--repeats", type=int, default=7)
    started = time.perf_counter()
    asyncio.run(main(ap.parse_args()))
    print(f"\ntotal {time.perf_counter() - started:.0f}s")
