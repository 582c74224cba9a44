"""Demo: SQLite transactions — a transfer, a failed one, a savepoint, a hook, a retry."""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import atomic, run_transaction, sqlite, transaction_attempts


async def _balances(conn: Any) -> str:
    async with conn.execute("SELECT name, balance FROM accounts ORDER BY name") as cur:
        rows = await cur.fetchall()
    return ", ".join(f"{name}={balance}" for name, balance in rows)


async def _count(conn: Any, table: str) -> int:
    async with conn.execute(f"SELECT count(*) FROM {table}") as cur:
        row = await cur.fetchone()
    return int(row[0])


async def _transfer(conn: Any, src: str, dst: str, amount: int) -> None:
    async with conn.execute("SELECT balance FROM accounts WHERE name = ?", (src,)) as cur:
        row = await cur.fetchone()
    if row[0] < amount:
        raise ValueError(f"{src} has {row[0]}, cannot send {amount}")
    await conn.execute("UPDATE accounts SET balance = balance - ? WHERE name = ?", (amount, src))
    await conn.execute("UPDATE accounts SET balance = balance + ? WHERE name = ?", (amount, dst))
    await conn.execute("INSERT INTO ledger (src, dst, amount) VALUES (?, ?, ?)", (src, dst, amount))


async def run(out: Callable[[str], None]) -> None:
    with tempfile.TemporaryDirectory(prefix="aiolease-demo-") as tmp:
        path = Path(tmp) / "bank.db"
        async with sqlite.create_pool(path, max_size=4, name="bank") as pool:
            async with pool.acquire() as conn:
                await conn.execute("CREATE TABLE accounts (name TEXT PRIMARY KEY, balance INT)")
                await conn.execute("CREATE TABLE ledger (src TEXT, dst TEXT, amount INT)")
                await conn.execute("INSERT INTO accounts VALUES ('alice', 100), ('bob', 20)")
                out(f"start:                     {await _balances(conn)}")

                out("\n1. A transfer that commits (pool.atomic: acquire, BEGIN IMMEDIATE, COMMIT)")
            async with pool.atomic() as tx:
                await _transfer(tx.connection, "alice", "bob", 30)
            async with pool.acquire() as conn:
                out(f"   committed:              {await _balances(conn)}")
                out(f"   ledger rows:            {await _count(conn, 'ledger')}")

                out("\n2. A transfer that fails half-way rolls back as a whole")
                try:
                    async with atomic(conn):
                        await conn.execute(
                            "UPDATE accounts SET balance = balance - 500 WHERE name = 'bob'"
                        )
                        out(f"   inside, bob debited:    {await _balances(conn)}")
                        await _transfer(conn, "alice", "bob", 1000)  # raises ValueError
                except ValueError as exc:
                    out(f"   failed: {exc}")
                out(f"   rolled back:            {await _balances(conn)}")
                out(f"   ledger rows:            {await _count(conn, 'ledger')}")

                out("\n3. A nested block is a SAVEPOINT: its failure keeps the outer work")
                async with atomic(conn):
                    await _transfer(conn, "bob", "alice", 10)
                    try:
                        async with atomic(conn):
                            await _transfer(conn, "bob", "alice", 999)
                    except ValueError as exc:
                        out(f"   inner block rolled back to its savepoint: {exc}")
                out(f"   outer committed:        {await _balances(conn)}")
                out(f"   ledger rows:            {await _count(conn, 'ledger')}")

                out("\n4. on_commit hooks run after the outermost COMMIT, never on rollback")
                sent: list[str] = []
                async with atomic(conn) as tx:
                    await _transfer(conn, "alice", "bob", 5)
                    tx.on_commit(lambda: sent.append("receipt: alice -> bob 5"))
                    out(f"   before COMMIT, hooks run: {sent}")
                out(f"   after COMMIT, hooks run:  {sent}")
                async with atomic(conn) as tx:
                    tx.on_commit(lambda: sent.append("never sent"))
                    tx.set_rollback(True)
                out(f"   after a rollback:         {sent}")

            out("\n5. A conflict is retried: 8 tasks read-modify-write one balance at once")
            attempts: list[int] = []

            async def add_interest(conn: Any) -> None:
                attempts.append(1)
                async with conn.execute("SELECT balance FROM accounts WHERE name='bob'") as cur:
                    (balance,) = await cur.fetchone()
                await asyncio.sleep(0)  # let the others in: they queue on the write lock
                await conn.execute(
                    "UPDATE accounts SET balance = ? WHERE name='bob'", (balance + 1,)
                )

            await asyncio.gather(*(run_transaction(pool, add_interest) for _ in range(8)))
            out(f"   8 increments, {len(attempts)} attempts; BEGIN IMMEDIATE queued the writers")

            # A busy database forces a real retry: another connection holds the write lock
            # for a moment. (The attempt fails at its BEGIN IMMEDIATE, retried inside
            # `async with attempt`, or, where BEGIN rides along with the first statement, at
            # the UPDATE below.)
            async with pool.acquire() as holder:
                await holder.execute("BEGIN IMMEDIATE")
                await holder.execute("PRAGMA busy_timeout = 0")

                async def finish_other_writer() -> None:
                    await asyncio.sleep(0.05)
                    await holder.execute("COMMIT")

                other = asyncio.create_task(finish_other_writer())
                async with pool.acquire() as conn:
                    await conn.execute("PRAGMA busy_timeout = 0")
                    retrying = transaction_attempts(
                        conn, attempts=50, backoff=0.01, max_backoff=0.02
                    )
                    async for attempt in retrying:
                        async with attempt as tx:
                            n = attempt.number

                            def committed(n: int = n) -> None:
                                out(f"   attempt {n}: committed")

                            tx.on_commit(committed)
                            try:
                                await tx.connection.execute(
                                    "UPDATE accounts SET balance = balance + 1 WHERE name='bob'"
                                )
                            except sqlite3.OperationalError as exc:
                                out(f"   attempt {n}: {exc} -> rolled back, retried")
                                raise
                    await conn.execute("PRAGMA busy_timeout = 5000")
                await other
                await holder.execute("PRAGMA busy_timeout = 5000")
            async with pool.acquire() as conn:
                out(f"   final:                  {await _balances(conn)}")
