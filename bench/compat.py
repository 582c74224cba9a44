"""What each fence in ``aiolease._compat`` buys: its private path against its public fallback,
in one process, interleaved rounds (see docs/compat.md).

One operation is ``pool.acquire()`` + ``SELECT 1`` + release on an ``aiolease.asyncpg`` pool
of 4 connections, through a proxy that delays every chunk by ``--latency-ms`` each way
(default 0.25: a round trip costs 0.5 ms more, a network between client and server).
Contenders:

* ``default``: what aiolease runs (private fast paths where kept);
* ``public``: every asyncpg fallback (no transport to watch: each checkout of an idle
  connection is verified with a round trip), as ``AIOLEASE_COMPAT=public``.

    python bench/compat.py [--latency-ms 0.25] [--duration 0.8] [--repeats 7]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlsplit

from _common import Column, Contender, Stop, Worker, environment, run_rounds

import aiolease.asyncpg
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
    }
    saved = {name: getattr(aiolease.asyncpg, name) for name in names}
    for name, value in names.items():
        setattr(aiolease.asyncpg, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(aiolease.asyncpg, name, value)


def contender(name: str, dsn: str, public: bool = False, **options: Any) -> Contender:
    @contextlib.asynccontextmanager
    async def setup() -> AsyncIterator[Worker]:
        with asyncpg_public() if public else contextlib.nullcontext():
            async with aiolease.asyncpg.create_pool(dsn, max_size=4, **options) as pool:

                async def worker(stop: Stop) -> int:
                    done = 0
                    while not stop.flag:
                        async with pool.acquire() as conn:
                            await conn.fetchval("SELECT 1")
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
        contenders = [
            contender("default", dsn),
            contender("public", dsn, public=True),
        ]
        results = await run_rounds(
            contenders,
            COLUMNS,
            repeats=args.repeats,
            duration=args.duration,
            warmup=0.2,
            progress=lambda msg: print(msg, file=sys.stderr, flush=True),
            pair=("default", "public"),
        )
    finally:
        proxy.stop()
    titles = [c.title for c in COLUMNS]
    print(f"\n{'ops/s (median)':<28}" + "".join(f"{t:>14}" for t in titles))
    for c in contenders:
        print(f"{c.name:<28}" + "".join(f"{results.median(c.name, t):>14,.0f}" for t in titles))
    print(f"\n{'ratio (median per round)':<28}" + "".join(f"{t:>14}" for t in titles))
    for other in ("public",):
        label = f"{other} / default"
        print(
            f"{label:<28}" + "".join(f"{results.ratio(other, 'default', t):>14.2f}" for t in titles)
        )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--latency-ms", type=float, default=0.25)
    ap.add_argument("--duration", type=float, default=0.8)
    ap.add_argument("--repeats", type=int, default=7)
    started = time.perf_counter()
    asyncio.run(main(ap.parse_args()))
    print(f"\ntotal {time.perf_counter() - started:.0f}s")
