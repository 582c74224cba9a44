"""``pgbouncer=True``: the asyncpg and psycopg pools behind a real PgBouncer in transaction
pooling mode, which these tests start on a free port with a generated configuration.

More client connections than server connections, so consecutive transactions of one
client connection run on different server sessions: a named prepared statement made
on one is missing on the next (asyncpg#121, #339, #1058).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest

import aiolease
import aiolease.asyncpg
import aiolease.psycopg

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(60)]

SERVER_CONNECTIONS = 2
CLIENTS = 6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def pg_dsn_module() -> str:
    """The test database's DSN (AIOLEASE_PG_DSN), for the module-scoped PgBouncer."""
    return os.environ.get("AIOLEASE_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="module")
def pgbouncer(pg_dsn_module: str) -> Iterator[str]:
    """A DSN through a private PgBouncer (transaction pooling) to the test database."""
    binary = shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if os.path.exists("/usr/sbin/pgbouncer") else None
    )
    if binary is None:
        message = "pgbouncer is not installed (apt-get install pgbouncer)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI=true and {message}", pytrace=False)
        pytest.skip(f"!!! SKIPPED: {message}")
    parts = urlsplit(pg_dsn_module)
    user = parts.username or "postgres"
    database = parts.path.lstrip("/") or "postgres"
    port = _free_port()
    workdir = Path(tempfile.mkdtemp(prefix="aiolease-pgbouncer-"))
    workdir.chmod(0o755)  # PgBouncer drops root for the user named below
    (workdir / "users.txt").write_text(f'"{user}" ""\n')
    (workdir / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"{database} = host={parts.hostname or '127.0.0.1'} port={parts.port or 5432}"
        f" dbname={database} user={user}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\n"
        f"auth_type = trust\nauth_file = {workdir / 'users.txt'}\n"
        f"pool_mode = transaction\ndefault_pool_size = {SERVER_CONNECTIONS}\n"
        "ignore_startup_parameters = extra_float_digits,application_name\n"
        "unix_socket_dir =\n"
    )
    for f in workdir.iterdir():
        f.chmod(0o644)
    command = [binary, str(workdir / "pgbouncer.ini")]
    if os.geteuid() == 0:
        command[1:1] = ["-u", "postgres"]  # PgBouncer will not run as root
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None:
                    assert proc.stderr is not None
                    log = proc.stderr.read().decode(errors="replace")
                    pytest.fail(f"pgbouncer exited: {log[-2000:]}")
                subprocess.run(["sleep", "0.05"], check=True)
        yield f"postgresql://{user}@127.0.0.1:{port}/{database}"
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
async def table(pg_dsn: str) -> AsyncIterator[str]:
    name = f"aiolease_pgb_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(pg_dsn)
    await conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, v text)")
    try:
        yield name
    finally:
        await conn.execute(f"DROP TABLE {name}")
        await conn.close()


def _pool(driver: str, dsn: str, pgbouncer: bool) -> aiolease.Pool[Any]:
    if driver == "asyncpg":
        return aiolease.asyncpg.create_pool(dsn, max_size=CLIENTS, pgbouncer=pgbouncer)
    return aiolease.psycopg.create_pool(dsn, max_size=CLIENTS, pgbouncer=pgbouncer)


async def _workload(driver: str, pool: aiolease.Pool[Any], table: str) -> int:
    """Concurrent parametrised statements in transactions, each statement many times;
    returns the number of rows committed."""
    ph = "$1" if driver == "asyncpg" else "%s"
    ph2 = "$2" if driver == "asyncpg" else "%s"

    async def execute(conn: Any, sql: str, *args: Any) -> Any:
        if driver == "asyncpg":
            return await conn.fetchval(sql, *args)
        row = await (await conn.execute(sql, args)).fetchone()
        return None if row is None else row[0]

    async def client(n: int) -> None:
        for i in range(20):
            tx_id = n * 1000 + i
            async with pool.acquire() as conn, aiolease.atomic(conn):
                await execute(
                    conn, f"INSERT INTO {table} VALUES ({ph}, {ph2}) RETURNING id", tx_id, "x"
                )
                assert await execute(conn, f"SELECT v FROM {table} WHERE id = {ph}", tx_id) == "x"
            # A transaction rolled back leaves nothing behind.
            async with pool.acquire() as conn, aiolease.atomic(conn) as tx:
                await execute(
                    conn, f"INSERT INTO {table} VALUES ({ph}, 'r') RETURNING id", -tx_id - 1
                )
                tx.set_rollback(True)

    async with asyncio.timeout(40):
        await asyncio.gather(*(client(n) for n in range(CLIENTS * 2)))
    async with pool.acquire() as conn:
        return int(await execute(conn, f"SELECT count(*) FROM {table}"))


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_pgbouncer_transaction_mode(driver: str, pgbouncer: str, table: str) -> None:
    async with _pool(driver, pgbouncer, pgbouncer=True) as pool:
        assert await _workload(driver, pool, table) == CLIENTS * 2 * 20


@pytest.mark.parametrize("driver", ["asyncpg"])
async def test_without_the_option_named_statements_break(
    driver: str, pgbouncer: str, table: str
) -> None:
    """The reason for the option: asyncpg's default statement cache prepares named
    statements. (psycopg prepares a statement only after ``prepare_threshold`` uses in
    one session; this workload does not reliably reach another server connection with it,
    so no psycopg counterpart is asserted here.)"""
    async with _pool(driver, pgbouncer, pgbouncer=False) as pool:
        with pytest.raises(Exception, match="prepared statement"):
            await _workload(driver, pool, table)


def test_pgbouncer_option_checks() -> None:
    with pytest.raises(ValueError, match="reset"):
        aiolease.asyncpg.create_pool("postgresql://x@h/db", pgbouncer=True, reset="session")
    with pytest.raises(ValueError, match="statement_cache_size"):
        aiolease.asyncpg.create_pool("postgresql://x@h/db", pgbouncer=True, statement_cache_size=5)
    with pytest.raises(ValueError, match="prepare_threshold"):
        aiolease.psycopg.create_pool("host=h", pgbouncer=True, prepare_threshold=5)
    with pytest.raises(TypeError, match="pgbouncer"):
        aiolease.psycopg.create_pool("host=h", pgbouncer="yes")
    manager: Any = aiolease.asyncpg.create_pool("postgresql://x@h/db", pgbouncer=True)._manager
    assert manager.connect_kwargs["statement_cache_size"] == 0
