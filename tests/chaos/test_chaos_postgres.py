"""Chaos runs of the asyncpg and psycopg pools: faults through FaultProxy in front of the
live PostgreSQL, and backends terminated on the server, under a transactional load.

Each run asserts: every error is a documented one with a message, no acquire past its
timeout, the pool serves again after the fault, the pool's invariants hold afterwards
(size <= max_size, nothing in use, every idle connection alive, no server-side session
leaked per pg_stat_activity), and no lost or phantom commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import psycopg
import pytest

import aiolease
import aiolease.asyncpg
import aiolease.psycopg
from aiolease._compat.psycopg import PRIVATE as PSYCOPG_BOUNDED
from aiolease._liveness import DEFAULT_CONNECT_TIMEOUT
from aiolease.testing import FaultProxy

from .harness import REPORT, Outcomes, Report, check_commits, env_seconds, transaction

pytestmark = [pytest.mark.chaos, pytest.mark.postgres, pytest.mark.timeout(120)]

DRIVERS = ["asyncpg", "psycopg"]
FAULTS = ["terminate_backends", "blackhole", "rst_mid_query", "half_open", "latency_spike"]
FAULTS += ["refuse_and_drop"]  # the server going away and coming back, as the client sees it

WORKERS = 8
MAX_SIZE = 4
ACQUIRE_TIMEOUT = 3.0
OP_TIMEOUT = 2.0  # the application's own timeout per transaction
WARM = 0.5
FAULT_SECONDS = env_seconds("AIOLEASE_CHAOS_FAULT_SECONDS", 2.0)
#: After the fault: long enough for psycopg's own cancel bound (5 s + 5 s) on dead peers,
#: which applies in public mode (aiolease._compat.psycopg).
AFTER = {"blackhole": 12.0, "half_open": 12.0}
AFTER_DEFAULT = 3.0
#: Seconds from heal to the first success we accept (the goal: 1 s plus the backoff in
#: force; the bounds leave room for a loaded machine). Connection faults need one backoff
#: step (up to a few seconds after a streak of refused connects). Silent peers: the
#: operations in flight end at the application's timeout (as the fault ends); asyncpg's
#: clean-up of their cancelled statements waits CANCEL_GRACE (0.5 s), then the connections
#: are cut and replaced (a 5 s close_timeout or cleanup_timeout would fail the bound);
#: psycopg's cancelled operations get CANCEL_GRACE for the cancel request and the query's
#: end together, then their connections are closed. In public mode psycopg's own bounds
#: apply: 5 s for its cancel request, then 5 s for the query to end.
PSYCOPG_SILENT = 2.5 if PSYCOPG_BOUNDED else 12.0
RECOVERY_BOUND = {
    ("asyncpg", "blackhole"): 2.5,
    ("asyncpg", "half_open"): 2.5,
    ("psycopg", "blackhole"): PSYCOPG_SILENT,
    ("psycopg", "half_open"): PSYCOPG_SILENT,
    ("asyncpg", "refuse_and_drop"): 5.0,
    ("psycopg", "refuse_and_drop"): 5.0,
}
RECOVERY_DEFAULT = 3.0
#: A connection attempted inside a blackhole is accepted by FaultProxy and stays silent after
#: heal: it ends at the pool's connect_timeout. When every slot holds one at heal (slots freed
#: by operations cancelled well inside the fault, as on a loaded machine), the first success
#: waits for that bound too.
CONNECT_TIMEOUT = DEFAULT_CONNECT_TIMEOUT


def _via(dsn: str, address: tuple[str, int]) -> str:
    parts = urlsplit(dsn)
    netloc = parts.netloc.rsplit("@", 1)
    auth = netloc[0] + "@" if len(netloc) == 2 else ""
    return urlunsplit(parts._replace(netloc=f"{auth}{address[0]}:{address[1]}"))


def _make_pool(driver: str, dsn: str, app: str) -> aiolease.Pool[Any]:
    if driver == "asyncpg":
        return aiolease.asyncpg.create_pool(
            dsn,
            max_size=MAX_SIZE,
            acquire_timeout=ACQUIRE_TIMEOUT,
            server_settings={"application_name": app},
        )
    return aiolease.psycopg.create_pool(
        dsn, max_size=MAX_SIZE, acquire_timeout=ACQUIRE_TIMEOUT, application_name=app
    )


def _inserter(driver: str, table: str) -> Callable[[Any, int], Awaitable[None]]:
    if driver == "asyncpg":

        async def insert_asyncpg(conn: Any, tx_id: int) -> None:
            await conn.execute(f"INSERT INTO {table} VALUES ($1)", tx_id)

        return insert_asyncpg

    async def insert_psycopg(conn: Any, tx_id: int) -> None:
        await conn.execute(f"INSERT INTO {table} VALUES (%s)", (tx_id,))

    return insert_psycopg


#: Errors a caller may see under these faults: aiolease's, the application's timeout,
#: socket errors, and the drivers' documented errors.
ALLOWED: tuple[type[BaseException], ...] = (
    aiolease.AioleaseError,
    TimeoutError,
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,  # see tests/postgres/test_liveness.py
    psycopg.Error,
)


@pytest.fixture
async def admin(pg_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(pg_dsn)
    try:
        yield conn
    finally:
        await conn.close()


async def _sessions(admin: asyncpg.Connection, app: str) -> int:
    return int(
        await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", app
        )
    )


async def _eventually(predicate: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(0.1)
    return await predicate()


async def _inject(fault: str, proxy: FaultProxy, admin: asyncpg.Connection, app: str) -> None:
    """Apply the fault for FAULT_SECONDS (repeating it where it is a one-shot event)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + FAULT_SECONDS
    if fault == "blackhole":
        proxy.blackhole()
    elif fault == "latency_spike":
        proxy.set_latency(0.5)
    elif fault == "refuse_and_drop":
        proxy.refuse()
        proxy.reset()
    elif fault == "rst_mid_query":
        proxy.set_latency(0.01)  # so that queries are in flight when the RST comes
    while (now := loop.time()) < end:
        if fault == "terminate_backends":
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = $1",
                app,
            )
        elif fault == "rst_mid_query":
            proxy.reset()
        elif fault == "half_open":
            proxy.half_open()
        await asyncio.sleep(min(0.5, end - now))
    proxy.heal()


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("driver", DRIVERS)
async def test_chaos(driver: str, fault: str, pg_dsn: str, admin: asyncpg.Connection) -> None:
    loop = asyncio.get_running_loop()
    app = f"aiolease_chaos_{uuid.uuid4().hex[:12]}"
    table = app
    await admin.execute(f"CREATE TABLE {table} (id bigint PRIMARY KEY)")
    report = Report(driver, fault)
    REPORT.append(report)
    outcomes = Outcomes()
    insert = _inserter(driver, table)
    parts = urlsplit(pg_dsn)
    try:
        async with FaultProxy(parts.hostname or "127.0.0.1", parts.port or 5432) as proxy:
            pool = _make_pool(driver, _via(pg_dsn, proxy.address), app)
            async with pool:
                stop = asyncio.Event()

                async def worker() -> None:
                    while not stop.is_set():
                        await transaction(
                            pool,
                            insert,
                            outcomes,
                            report,
                            acquire_timeout=ACQUIRE_TIMEOUT,
                            op_timeout=OP_TIMEOUT,
                        )
                        await asyncio.sleep(0.005)

                workers = [asyncio.create_task(worker()) for _ in range(WORKERS)]
                await asyncio.sleep(WARM)
                await _inject(fault, proxy, admin, app)
                healed = loop.time()
                at_heal = pool.statistics()
                connecting = at_heal.size - at_heal.idle - at_heal.in_use
                await asyncio.sleep(AFTER.get(fault, AFTER_DEFAULT))
                stop.set()
                # Every operation is under OP_TIMEOUT; its clean-up is bounded by the
                # pool's and the drivers' bounds (close_timeout, the cancel grace).
                _, stuck = await asyncio.wait(workers, timeout=OP_TIMEOUT + 12)
                if stuck:
                    report.notes.append(f"{len(stuck)} workers stuck past their timeout")
                    proxy.reset()  # cut their connections, which frees them
                    await asyncio.wait(stuck, timeout=10)
                for task in workers:
                    if not task.done():
                        task.cancel()
                for result in await asyncio.gather(*workers, return_exceptions=True):
                    if isinstance(result, Exception):
                        raise result
                if stuck and driver == "asyncpg":
                    pytest.xfail(
                        "asyncpg: atomic's ROLLBACK after a cancelled statement waits for the"
                        " cancel request, unbounded on a silent peer (reproducer: tests/postgres/"
                        "test_liveness.py::test_asyncpg_atomic_cancelled_on_a_silent_peer_ends)"
                    )
                if connecting:
                    report.remarks.append(f"{connecting} connecting at heal")
                after = [t - healed for t in outcomes.ok_times if t >= healed]
                report.recovery = min(after) if after else None

                # Invariants afterwards.
                stats = pool.statistics()
                assert stats.size <= MAX_SIZE
                assert stats.in_use == 0

                async def alive() -> None:
                    async with pool.acquire(timeout=5) as conn:
                        if driver == "asyncpg":
                            assert await conn.fetchval("SELECT 1") == 1
                        else:
                            await conn.execute("SELECT 1")

                async with asyncio.timeout(10):
                    await asyncio.gather(*(alive() for _ in range(MAX_SIZE)))

                async def sessions_match() -> bool:
                    return await _sessions(admin, app) == pool.statistics().size

                if not await _eventually(sessions_match):
                    report.notes.append(
                        f"sessions {await _sessions(admin, app)} != size {pool.statistics().size}"
                    )
            assert await _eventually(lambda: _sessions_zero(admin, app)), (
                f"{await _sessions(admin, app)} server sessions left after the pool closed"
            )
        present = {r["id"] for r in await admin.fetch(f"SELECT id FROM {table}")}
        check_commits(outcomes, present, report)
    finally:
        with contextlib.suppress(Exception):
            await admin.execute(f"DROP TABLE IF EXISTS {table}")
        print("\n" + report.row())

    unexpected = [
        name for name in report.errors if not _allowed(name)
    ]  # by name: the classes were seen above
    assert not unexpected, f"undocumented errors: {unexpected}"
    assert report.lost == 0, f"{report.lost} lost commits"
    assert report.phantom == 0, f"{report.phantom} phantom commits"
    assert report.max_acquire <= ACQUIRE_TIMEOUT + 0.5
    assert report.ok > 0
    assert report.recovery is not None, "no success after the fault ended"
    bound = RECOVERY_BOUND.get((driver, fault), RECOVERY_DEFAULT)
    if fault in ("blackhole", "half_open") and connecting >= MAX_SIZE:
        bound += CONNECT_TIMEOUT + 1.0  # the connect's own bound (see CONNECT_TIMEOUT)
    assert report.recovery <= bound, report.row()
    assert not report.notes, report.notes


async def _sessions_zero(admin: asyncpg.Connection, app: str) -> bool:
    return await _sessions(admin, app) == 0


def _allowed(name: str) -> bool:
    """Whether an error class name is one of (a subclass of) ALLOWED."""
    classes: list[type[BaseException]] = []
    stack = list(ALLOWED)
    while stack:
        cls = stack.pop()
        classes.append(cls)
        stack += cls.__subclasses__()
    return any(cls.__name__ == name for cls in classes)
