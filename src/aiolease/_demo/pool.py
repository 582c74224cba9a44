"""Demo: several tasks share a pool of 3 SQLite connections."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Callable
from pathlib import Path

from .. import sqlite


async def run(out: Callable[[str], None]) -> None:
    with tempfile.TemporaryDirectory(prefix="aiolease-demo-") as tmp:
        path = Path(tmp) / "demo.db"
        pool = sqlite.create_pool(path, max_size=3, acquire_timeout=5.0, name="demo")
        async with pool:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            labels: dict[int, str] = {}

            def label(conn: object) -> str:
                return labels.setdefault(id(conn), f"conn#{len(labels) + 1}")

            def stamp() -> str:
                return f"[{loop.time() - t0:5.2f}s]"

            async with pool.acquire() as conn:
                await conn.execute("CREATE TABLE visits (worker TEXT, conn TEXT)")

            async def worker(name: str, hold: float) -> None:
                async with pool.acquire() as conn:
                    out(f"{stamp()} {name} holds {label(conn)}")
                    await conn.execute("INSERT INTO visits VALUES (?, ?)", (name, label(conn)))
                    await asyncio.sleep(hold)
                out(f"{stamp()} {name} released {label(conn)}")

            out("Six workers share 3 connections; the rest queue, first come first served:")
            await asyncio.gather(*(worker(f"worker-{i}", 0.1 + 0.05 * i) for i in range(6)))

            out("")
            out("A task cancelled while it waits for a connection leaves the pool whole:")
            holders = [await pool.acquire() for _ in range(3)]
            waiter = asyncio.ensure_future(pool.acquire())
            await asyncio.sleep(0.05)
            out(f"  {pool!r}")
            waiter.cancel()
            await asyncio.gather(waiter, return_exceptions=True)
            out(f"  cancelled the waiter -> {pool!r}")
            for conn in holders:
                await pool.release(conn)

            out("A body that fails releases its connection too (the error still reaches you):")
            try:
                async with pool.acquire() as conn:
                    await conn.execute("INSERT INTO visits VALUES ('oops', ?)", (label(conn),))
                    raise RuntimeError("boom")
            except RuntimeError as exc:
                out(f"  caught {exc!r} -> {pool!r}")

            async with pool.acquire() as conn, conn.execute("SELECT count(*) FROM visits") as cur:
                row = await cur.fetchone()
            out(f"Rows written: {row[0] if row else 0}")
            stats = pool.statistics()
            out(
                f"Statistics: size={stats.size} idle={stats.idle} in_use={stats.in_use} "
                f"acquired={stats.acquired} created={stats.created} "
                f"max wait={stats.wait_time_max:.2f}s timeouts={stats.timeouts}"
            )
        out(f"Closed: {pool!r}")
