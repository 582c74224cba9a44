"""Count what one transaction costs in trips: thread hops (aiosqlite) and round trips
(PostgreSQL), for the contenders of ``bench/transactions.py``.

Load does not move these counts, so they explain its ratios: a contender cannot beat
another that makes fewer trips per transaction.

* aiosqlite: every operation is one request put on the connection's worker queue and
  one answer back to the loop. The count is the number of requests per transaction
  (the queue of each connection is wrapped, for this measurement only).
* PostgreSQL: each contender's connection goes through a counting TCP proxy; a round
  trip is one burst of client data followed by the server's answer (counted as the
  number of times the direction of traffic turns from server to client).

Usage::

    python bench/tx_trips.py            # the counts, both groups
    python bench/tx_trips.py --run NAME --n 2000   # N transactions of one contender
                                                   # (for callgrind, see bench/README.md)

``--run`` names: asyncpg, ours-asyncpg, psycopg, ours-psycopg, ours-psycopg-pool,
psycopg-pipe-tx, psycopg-pipe-atx (references: psycopg's pipeline mode around BEGIN and the
first statement), aiosqlite, ours-pool, ours-plain.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiolease
from aiolease._lease import unwrap

sys.path.insert(0, str(Path(__file__).parent))
from transactions import NO_FLUSH, close_all, proxied

DSN = os.environ.get("AIOLEASE_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")


class CountingQueue:
    """Stands in for an aiosqlite connection's request queue on the loop side."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.puts = 0

    def put_nowait(self, item: Any) -> None:
        self.puts += 1
        self.inner.put_nowait(item)

    def put(self, item: Any, *args: Any) -> None:
        self.puts += 1
        self.inner.put(item, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class TurnCounter:
    """A TCP proxy (in the caller's loop) counting server-to-client turns."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.turns = 0
        self._last = "c"
        self.server: Any = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)

        async def pipe(src: Any, dst: Any, side: str) -> None:
            while data := await src.read(65536):
                if side == "s" and self._last == "c":
                    self.turns += 1
                self._last = side
                dst.write(data)
            dst.close()

        await asyncio.gather(pipe(reader, up_writer, "c"), pipe(up_reader, writer, "s"))


Step = Callable[[int], Awaitable[None]]


async def sqlite_steps(folder: Path, closers: list[Any]) -> dict[str, tuple[Step, list[Any]]]:
    import aiosqlite

    import aiolease.sqlite

    pragmas = {"journal_mode": "WAL", "synchronous": "NORMAL"}

    async def aconn(name: str) -> Any:
        conn = await aiosqlite.connect(folder / name, isolation_level=None)
        for k, v in pragmas.items():
            await conn.execute(f"PRAGMA {k}={v}")
        await conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER)")
        closers.append(conn.close)
        return conn

    out: dict[str, tuple[Step, list[Any]]] = {}
    a1 = await aconn("manual.sqlite")

    async def manual(n: int) -> None:
        await a1.execute("BEGIN")
        await a1.execute("INSERT INTO t (v) VALUES (?)", (n,))
        await a1.execute("COMMIT")

    out["aiosqlite"] = (manual, [a1])

    pool = aiolease.sqlite.create_pool(folder / "pool.sqlite", max_size=1, pragmas=pragmas)
    await pool.open()
    closers.append(pool.aclose)
    async with pool.acquire() as conn:
        await conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER)")
        raw = unwrap(conn)

    async def ours_pool(n: int) -> None:
        async with pool.atomic() as tx:
            await tx.connection.execute("INSERT INTO t (v) VALUES (?)", (n,))

    out["ours-pool"] = (ours_pool, [raw])

    a3 = await aconn("plain.sqlite")

    async def ours_plain(n: int) -> None:
        async with aiolease.atomic(a3):
            await a3.execute("INSERT INTO t (v) VALUES (?)", (n,))

    out["ours-plain"] = (ours_plain, [a3])
    return out


async def pg_steps(dsn: str, closers: list[Any], tables: list[str]) -> dict[str, Step]:
    import asyncpg
    import psycopg

    async def table(conn: Any) -> str:
        name = f"aiolease_bench_{uuid.uuid4().hex[:10]}"
        await conn.execute(f"CREATE TABLE {name} (id BIGSERIAL PRIMARY KEY, v BIGINT)")
        tables.append(name)
        return name

    out: dict[str, Step] = {}
    c1 = await asyncpg.connect(dsn, server_settings=NO_FLUSH)
    closers.append(c1.close)
    i1 = f"INSERT INTO {await table(c1)} (v) VALUES ($1)"

    async def apg(n: int) -> None:
        async with c1.transaction():
            await c1.execute(i1, n)

    async def ours_apg(n: int) -> None:
        async with aiolease.atomic(c1):
            await c1.execute(i1, n)

    out["asyncpg"], out["ours-asyncpg"] = apg, ours_apg
    p1 = await psycopg.AsyncConnection.connect(
        dsn, autocommit=True, options="-c synchronous_commit=off"
    )
    closers.append(p1.close)
    ip = f"INSERT INTO {await table(p1)} (v) VALUES (%s)"

    async def pg(n: int) -> None:
        async with p1.transaction():
            await p1.execute(ip, (n,))

    async def ours_pg(n: int) -> None:
        async with aiolease.atomic(p1):
            await p1.execute(ip, (n,))

    out["psycopg"], out["ours-psycopg"] = pg, ours_pg

    from aiolease.psycopg import create_pool

    pool = create_pool(dsn, max_size=1, options="-c synchronous_commit=off")
    await pool.open()
    closers.append(pool.aclose)

    async def ours_pg_pool(n: int) -> None:
        async with pool.atomic() as tx:
            await tx.connection.execute(ip, (n,))

    out["ours-psycopg-pool"] = ours_pg_pool

    # References, not aiolease: psycopg's pipeline mode around BEGIN and the first
    # statement (synced inside the step). psycopg's own conn.transaction() syncs BEGIN
    # on its own inside a pipeline; only a bare AsyncTransaction object rides with the
    # statement (see docs/transactions.md, psycopg, for why atomic does neither).
    async def pipe_transaction(n: int) -> None:
        async with p1.pipeline(), p1.transaction():
            await p1.execute(ip, (n,))

    async def pipe_async_transaction(n: int) -> None:
        tx = psycopg.AsyncTransaction(p1)
        async with p1.pipeline():
            await tx.__aenter__()
            await p1.execute(ip, (n,))
        await tx.__aexit__(None, None, None)

    out["psycopg-pipe-tx"], out["psycopg-pipe-atx"] = pipe_transaction, pipe_async_transaction
    return out


async def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    ap.add_argument("--run", help="run N transactions of this contender and nothing else")
    ap.add_argument("--n", type=int, default=1000)
    args = ap.parse_args(argv)
    closers: list[Any] = []
    tables: list[str] = []
    with tempfile.TemporaryDirectory(prefix="aiolease-trips-") as tmp:
        try:
            parts = urlsplit(DSN)
            counter = TurnCounter(parts.hostname or "127.0.0.1", parts.port or 5432)
            port = await counter.start()
            sq = await sqlite_steps(Path(tmp), closers)
            pgs: dict[str, Step] = {}
            if args.run is None or args.run not in sq:
                dsn = DSN if args.run is not None else proxied(DSN, port)
                pgs = await pg_steps(dsn, closers, tables)
            if args.run is not None:
                step = sq[args.run][0] if args.run in sq else pgs[args.run]
                for i in range(20):  # warm up: caches, prepared statements
                    await step(i)
                for i in range(args.n):
                    await step(i)
                return 0
            print(f"AIOLEASE_COMPAT={os.environ.get('AIOLEASE_COMPAT', '')!r}")
            n = args.n
            for name, (step, conns) in sq.items():
                await step(-1)
                queues = []
                for c in conns:
                    c._tx = CountingQueue(c._tx)  # measurement only
                    queues.append(c._tx)
                for i in range(n):
                    await step(i)
                hops = sum(q.puts for q in queues) / n
                print(f"sqlite   {name:<18} thread hops per transaction: {hops:.2f}")
            for name, step in pgs.items():
                await step(-1)
                before = counter.turns
                for i in range(n):
                    await step(i)
                trips = (counter.turns - before) / n
                print(f"postgres {name:<18} round trips per transaction: {trips:.2f}")
        finally:
            await close_all(closers, tables)
            if counter.server is not None:
                counter.server.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
