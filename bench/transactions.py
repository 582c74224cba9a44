"""Transaction benchmark (``make bench-tx``): aiolease.atomic against each driver's own way.

One task; one transaction = one INSERT of one row. Transactions per second.

PostgreSQL (each contender on its own connection, its own table):
  asyncpg ``conn.transaction()``, the same with one nested savepoint,
  psycopg ``conn.transaction()`` (autocommit connection), SQLAlchemy
  ``AsyncConnection.begin()`` (asyncpg driver), and the whole transaction as
  ONE simple query (``BEGIN; INSERT ...; COMMIT``, asyncpg) — the round-trip
  floor. Ours: ``aiolease.atomic`` on asyncpg (plain and with a nested
  block) and on psycopg. All with ``synchronous_commit=off`` (see NO_FLUSH).

SQLite (a WAL file, ``synchronous=NORMAL``): aiosqlite with a manual
``BEGIN`` / ``INSERT`` / ``COMMIT``, sync ``sqlite3`` in one thread (the
ceiling), ``pool.atomic()`` on an ``aiolease.sqlite`` pool (defaults), the
same pool with the opt-in ``commit_on_loop=True``, and ``aiolease.atomic`` on
a plain aiosqlite connection. Whether BEGIN rides with the first statement's
thread hop depends on ``AIOLEASE_COMPAT`` (run the bench in both modes:
``AIOLEASE_COMPAT=public python bench/transactions.py``).

Targets: asyncpg within 5% of its native transaction (flat and with a
savepoint); psycopg >= 1.0 x its native ``transaction()`` on localhost and
>= 1.25 x at 0.25 ms each way; SQLite ``pool.atomic`` >= 1.2 x aiosqlite's
manual transaction.

Rounds interleave the contenders (rotating their order) and the table shows
the median over rounds, with the spread ``(max - min) / median``; a ratio is
the median over rounds of the per-round ratio of the two contenders.

Usage::

    python bench/transactions.py [--duration 0.25] [--repeats 21] [--only all|pg|sqlite]
                                 [--clock wall|cpu]

``--clock cpu`` counts transactions per second of the process's CPU time (all
its threads, user and system: aiosqlite's worker threads and their wake-ups
included; the PostgreSQL server's work not). On a machine shared with other
jobs it shows what each contender itself spends, which the load moves far
less than wall time; with it the latency group measures the in-process proxy
too, so read that group in wall time.

Short slices and many rounds: on a shared machine the load changes from
second to second, and interleaving keeps every contender under the same load.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiolease

DSN = os.environ.get("AIOLEASE_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")

Step = Callable[[int], Awaitable[None]]

# Every PostgreSQL contender runs with synchronous_commit=off: a COMMIT does not
# wait for the WAL flush, so the table compares round trips and client-side
# overhead (what the libraries differ in), not the disk's fsync latency.
NO_FLUSH = {"synchronous_commit": "off"}


class Contender:
    def __init__(self, name: str, group: str, step: Step | None = None, sync: Any = None) -> None:
        self.name = name
        self.group = group
        self.step = step
        self.sync = sync  # a plain function (n) -> None for the sync sqlite3 ceiling
        self.rates: list[float] = []

    async def run(self, duration: float, clock: Callable[[], float] = time.perf_counter) -> float:
        """Transactions per second of ``clock`` during a slice of ``duration`` wall seconds."""
        loop = asyncio.get_running_loop()
        done = 0
        start = loop.time()
        deadline = start + duration
        c0 = clock()
        if self.sync is not None:
            while loop.time() < deadline:
                for _ in range(100):
                    self.sync(done)
                    done += 1
            return done / (clock() - c0)
        step = self.step
        assert step is not None
        while loop.time() < deadline:
            for _ in range(20):
                await step(done)
                done += 1
        return done / (clock() - c0)


class LatencyProxy(threading.Thread):
    """A TCP proxy in its own thread and event loop that delays every chunk by ``delay`` s.

    Stands for a network between the client and PostgreSQL (localhost has
    almost no latency, so round trips cost only CPU there). Chunks keep their
    order; each is forwarded ``delay`` seconds after it arrived, in both
    directions, so a round trip costs ``2 * delay`` more.
    """

    def __init__(self, host: str, port: int, delay: float) -> None:
        super().__init__(daemon=True)
        self.target = (host, port)
        self.delay = delay
        self.port = 0
        self.ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None

    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self.ready.set()
        async with server:
            await self._stopping.wait()

    def stop(self) -> None:
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        self.join(5)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        loop = asyncio.get_running_loop()

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(65536):
                loop.call_later(self.delay, dst.write, data)
            loop.call_later(self.delay, dst.close)

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


def proxied(dsn: str, port: int) -> str:
    parts = urlsplit(dsn)
    netloc = parts.netloc.rsplit("@", 1)
    auth = netloc[0] + "@" if len(netloc) == 2 else ""
    return urlunsplit(parts._replace(netloc=f"{auth}127.0.0.1:{port}"))


async def pg_contenders(
    dsn: str, suffix: str, tables: list[str], closers: list[Any]
) -> list[Contender]:
    import asyncpg
    import psycopg
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    async def table(conn: Any) -> str:
        name = f"aiolease_bench_{uuid.uuid4().hex[:10]}"
        await conn.execute(f"CREATE TABLE {name} (id BIGSERIAL PRIMARY KEY, v BIGINT)")
        tables.append(name)
        return name

    async def apg() -> Any:
        conn = await asyncpg.connect(dsn, server_settings=NO_FLUSH)
        closers.append(conn.close)
        return conn

    out: list[Contender] = []

    c1 = await apg()
    t1 = await table(c1)
    ins1 = f"INSERT INTO {t1} (v) VALUES ($1)"

    async def asyncpg_native(n: int) -> None:
        async with c1.transaction():
            await c1.execute(ins1, n)

    out.append(Contender("asyncpg conn.transaction()" + suffix, "asyncpg", asyncpg_native))

    c2 = await apg()
    t2 = await table(c2)
    ins2 = f"INSERT INTO {t2} (v) VALUES ($1)"

    async def ours_asyncpg(n: int) -> None:
        async with aiolease.atomic(c2):
            await c2.execute(ins2, n)

    out.append(Contender("aiolease.atomic (asyncpg)" + suffix, "asyncpg", ours_asyncpg))

    c3 = await apg()
    t3 = await table(c3)
    ins3 = f"INSERT INTO {t3} (v) VALUES ($1)"

    async def asyncpg_sp(n: int) -> None:
        async with c3.transaction(), c3.transaction():
            await c3.execute(ins3, n)

    out.append(Contender("asyncpg + 1 savepoint" + suffix, "asyncpg+sp", asyncpg_sp))

    c4 = await apg()
    t4 = await table(c4)
    ins4 = f"INSERT INTO {t4} (v) VALUES ($1)"

    async def ours_sp(n: int) -> None:
        async with aiolease.atomic(c4), aiolease.atomic(c4):
            await c4.execute(ins4, n)

    out.append(Contender("aiolease.atomic + nested (asyncpg)" + suffix, "asyncpg+sp", ours_sp))

    c5 = await apg()
    t5 = await table(c5)

    async def one_trip(n: int) -> None:
        await c5.execute(f"BEGIN; INSERT INTO {t5} (v) VALUES ({n}); COMMIT")

    out.append(Contender("one simple query BEGIN;INSERT;COMMIT" + suffix, "floor", one_trip))

    p1 = await psycopg.AsyncConnection.connect(
        dsn, autocommit=True, options="-c synchronous_commit=off"
    )
    closers.append(p1.close)
    tp1 = await table(p1)
    insp1 = f"INSERT INTO {tp1} (v) VALUES (%s)"

    async def psycopg_native(n: int) -> None:
        async with p1.transaction():
            await p1.execute(insp1, (n,))

    out.append(Contender("psycopg conn.transaction()" + suffix, "psycopg", psycopg_native))

    p2 = await psycopg.AsyncConnection.connect(
        dsn, autocommit=True, options="-c synchronous_commit=off"
    )
    closers.append(p2.close)
    tp2 = await table(p2)
    insp2 = f"INSERT INTO {tp2} (v) VALUES (%s)"

    async def ours_psycopg(n: int) -> None:
        async with aiolease.atomic(p2):
            await p2.execute(insp2, (n,))

    out.append(Contender("aiolease.atomic (psycopg)" + suffix, "psycopg", ours_psycopg))

    engine = create_async_engine(
        dsn.replace("postgresql://", "postgresql+asyncpg://"),
        connect_args={"server_settings": NO_FLUSH},
    )
    sa = await engine.connect()

    async def close_sa() -> None:
        await sa.close()
        await engine.dispose()

    closers.append(close_sa)
    c6 = await apg()
    t6 = await table(c6)
    stmt = text(f"INSERT INTO {t6} (v) VALUES (:v)")

    async def sqlalchemy_begin(n: int) -> None:
        async with sa.begin():
            await sa.execute(stmt, {"v": n})

    out.append(Contender("SQLAlchemy begin() (asyncpg)" + suffix, "sqlalchemy", sqlalchemy_begin))
    return out


async def sqlite_contenders(folder: Path, closers: list[Any]) -> list[Contender]:
    import aiosqlite

    pragmas = ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL")

    async def aconn(name: str) -> Any:
        conn = await aiosqlite.connect(folder / name, isolation_level=None)
        for p in pragmas:
            await conn.execute(p)
        await conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER)")
        closers.append(conn.close)
        return conn

    out: list[Contender] = []
    a1 = await aconn("manual.sqlite")

    async def aiosqlite_manual(n: int) -> None:
        await a1.execute("BEGIN")
        await a1.execute("INSERT INTO t (v) VALUES (?)", (n,))
        await a1.execute("COMMIT")

    out.append(Contender("aiosqlite BEGIN/INSERT/COMMIT", "sqlite", aiosqlite_manual))

    # Ours: pool.atomic() on aiolease.sqlite pools (one connection), with the same pragmas.
    import aiolease.sqlite

    for label, loop_commit in (("", False), (" commit_on_loop", True)):
        pool = aiolease.sqlite.create_pool(
            folder / f"ours{int(loop_commit)}.sqlite",
            max_size=1,
            pragmas={"journal_mode": "WAL", "synchronous": "NORMAL"},
            commit_on_loop=loop_commit,
        )
        await pool.open()
        async with pool.acquire() as conn:
            await conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER)")
        closers.append(pool.aclose)

        def make(pool: Any) -> Step:
            async def ours_pool(n: int) -> None:
                async with pool.atomic() as tx:
                    await tx.connection.execute("INSERT INTO t (v) VALUES (?)", (n,))

            return ours_pool

        out.append(Contender(f"aiolease pool.atomic (aiosqlite){label}", "sqlite", make(pool)))

    # Ours on a plain aiosqlite connection (same-thread checks on): BEGIN rides with
    # the INSERT, COMMIT takes its own hop.
    a3 = await aconn("ours_plain.sqlite")

    async def ours_plain(n: int) -> None:
        async with aiolease.atomic(a3):
            await a3.execute("INSERT INTO t (v) VALUES (?)", (n,))

    out.append(Contender("aiolease.atomic (plain aiosqlite conn)", "sqlite", ours_plain))

    s = sqlite3.connect(folder / "sync.sqlite", isolation_level=None)
    for p in pragmas:
        s.execute(p)
    s.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER)")

    async def close_sync() -> None:
        s.close()

    closers.append(close_sync)

    def sync_sqlite(n: int) -> None:
        s.execute("BEGIN IMMEDIATE")
        s.execute("INSERT INTO t (v) VALUES (?)", (n,))
        s.execute("COMMIT")

    out.append(Contender("sqlite3 sync, one thread", "sqlite-sync", sync=sync_sqlite))
    return out


async def close_all(closers: list[Any], tables: list[str]) -> None:
    """Close what the contenders opened (last first) and drop their tables."""
    for close in reversed(closers):
        await close()
    if tables:
        import asyncpg

        conn = await asyncpg.connect(DSN)
        for t in tables:
            await conn.execute(f"DROP TABLE IF EXISTS {t}")
        await conn.close()


def _aiosqlite_fast() -> bool:
    from aiolease._compat import aiosqlite as compat

    return compat.ENABLED


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def spread(xs: list[float]) -> float:
    m = median(xs)
    return (max(xs) - min(xs)) / m if xs and m else float("nan")


async def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    ap.add_argument("--duration", type=float, default=0.25, help="seconds per contender per round")
    ap.add_argument("--repeats", type=int, default=21, help="rounds (the table shows medians)")
    ap.add_argument("--warmup", type=float, default=0.3, help="seconds of warm-up per contender")
    ap.add_argument("--only", choices=("all", "pg", "sqlite"), default="all")
    ap.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="divide by wall time (default) or by the process's CPU time",
    )
    ap.add_argument(
        "--latency-ms",
        type=float,
        default=0.25,
        help="one-way delay of the simulated network for the second PostgreSQL group (0: skip)",
    )
    args = ap.parse_args(argv)

    closers: list[Any] = []
    tables: list[str] = []
    contenders: list[Contender] = []
    with tempfile.TemporaryDirectory(prefix="aiolease-bench-") as tmp:
        try:
            if args.only in ("all", "pg"):
                try:
                    contenders += await pg_contenders(DSN, "", tables, closers)
                    if args.latency_ms > 0:
                        parts = urlsplit(DSN)
                        proxy = LatencyProxy(
                            parts.hostname or "127.0.0.1",
                            parts.port or 5432,
                            args.latency_ms / 1000,
                        )
                        proxy.start()
                        proxy.ready.wait(5)

                        async def stop_proxy() -> None:
                            proxy.stop()

                        closers.insert(0, stop_proxy)
                        suffix = f" @{args.latency_ms:g}ms"
                        contenders += await pg_contenders(
                            proxied(DSN, proxy.port), suffix, tables, closers
                        )
                except OSError as exc:
                    print(f"!!! PostgreSQL at {DSN} unreachable ({exc}): skipping its rows")
            if args.only in ("all", "sqlite"):
                contenders += await sqlite_contenders(Path(tmp), closers)

            print(
                f"AIOLEASE_COMPAT={os.environ.get('AIOLEASE_COMPAT', '')!r} "
                f"(aiosqlite fast path {'on' if _aiosqlite_fast() else 'off'}); "
                f"Python {platform.python_version()} on {platform.machine()}, "
                f"SQLite {sqlite3.sqlite_version}, aiolease {aiolease.__version__}; "
                f"{args.repeats} rounds x {args.duration}s per contender, one task; "
                f"transactions per {args.clock} second; "
                f"load average {os.getloadavg()[0]:.2f}\n"
            )
            clock = time.perf_counter if args.clock == "wall" else time.process_time
            for c in contenders:
                await c.run(args.warmup)
            for r in range(args.repeats):
                k = r % len(contenders)
                for c in contenders[k:] + contenders[:k]:
                    c.rates.append(await c.run(args.duration, clock))
                if (r + 1) % 5 == 0:
                    print(f"  round {r + 1}/{args.repeats} done", file=sys.stderr)
        finally:
            await close_all(closers, tables)

    by_name = {c.name: c for c in contenders}
    print(f"{'contender':<48} {'txn/s (median)':>15} {'spread':>8}")
    for c in contenders:
        print(f"{c.name:<48} {median(c.rates):>15,.0f} {spread(c.rates):>7.1%}")

    def ratio(a: str, b: str) -> float | None:
        # The median of per-round ratios: both ran in the same round, moments apart,
        # so the machine's drift between rounds cancels out of each ratio.
        if a in by_name and b in by_name:
            pairs = zip(by_name[a].rates, by_name[b].rates, strict=False)
            return median([x / y for x, y in pairs if y > 0])
        return None

    checks: list[tuple[str, str, float | None, str]] = []
    for sfx in ("", f" @{args.latency_ms:g}ms"):
        checks += [
            (f"aiolease.atomic (asyncpg){sfx}", f"asyncpg conn.transaction(){sfx}", 0.95, "<= 5%"),
            (
                f"aiolease.atomic + nested (asyncpg){sfx}",
                f"asyncpg + 1 savepoint{sfx}",
                0.95,
                "<= 5%",
            ),
            (
                f"aiolease.atomic (psycopg){sfx}",
                f"psycopg conn.transaction(){sfx}",
                1.25 if sfx else 1.0,
                ">= 1.25" if sfx else ">= 1.0",
            ),
            (f"aiolease.atomic (asyncpg){sfx}", f"SQLAlchemy begin() (asyncpg){sfx}", None, "ref"),
            (
                f"aiolease.atomic (asyncpg){sfx}",
                f"one simple query BEGIN;INSERT;COMMIT{sfx}",
                None,
                "vs floor",
            ),
        ]
    checks += [
        ("aiolease pool.atomic (aiosqlite)", "aiosqlite BEGIN/INSERT/COMMIT", 1.2, ">= 1.2"),
        (
            "aiolease pool.atomic (aiosqlite) commit_on_loop",
            "aiosqlite BEGIN/INSERT/COMMIT",
            None,
            "opt-in",
        ),
        ("aiolease pool.atomic (aiosqlite)", "sqlite3 sync, one thread", None, "vs sync"),
        (
            "aiolease.atomic (plain aiosqlite conn)",
            "aiosqlite BEGIN/INSERT/COMMIT",
            None,
            "(ref)",
        ),
    ]
    print(f"\n{'ratio':<86} {'value':>6}  target")
    failed = False
    for a, b, target, what in checks:
        value = ratio(a, b)
        if value is None:
            continue
        verdict = ""
        if target is not None:
            ok = value >= target
            failed |= not ok
            verdict = f"{'OK  ' if ok else 'MISS'} ({what})"
        else:
            verdict = f"     ({what})"
        print(f"{a + ' / ' + b:<86} {value:>6.2f}  {verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
