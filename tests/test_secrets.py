"""No password in any log line, repr or exception aiolease makes (docs/logging.md).

Each test drives failures (a closed port, an unknown host, a malformed DSN), leaks
and discards with a secret in the DSN, the conninfo or the keywords, captures
every record of the aiolease loggers at DEBUG, and asserts that the secret
appears nowhere: not in the records (their tracebacks included), the reprs, nor
any exception raised (``str``, ``repr``, notes, and the whole chain as a
traceback prints it).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import socket
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aiolease import Pool

SECRET = "Zq7s3cr3tPW"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Seen:
    """Everything a person could read: log records, reprs, exceptions."""

    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        self.caplog = caplog
        self.texts: list[str] = []
        caplog.set_level(logging.DEBUG, logger="aiolease")

    def repr(self, *objects: object) -> None:
        self.texts += [repr(o) for o in objects] + [str(o) for o in objects]

    def error(self, exc: BaseException) -> None:
        self.texts.append("".join(traceback.format_exception(exc)))
        for e in chain(exc):
            self.texts += [str(e), repr(e), *getattr(e, "__notes__", ())]

    async def raised(self, awaitable: Any) -> BaseException:
        try:
            await awaitable
        except Exception as exc:
            self.error(exc)
            return exc
        raise AssertionError("expected an error")

    def logs(self) -> str:
        formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
        return "\n".join(formatter.format(r) for r in self.caplog.records)

    def assert_hidden(self) -> None:
        everything = "\n".join([*self.texts, self.logs()])
        assert SECRET not in everything, everything
        assert self.texts, "nothing was looked at"


def chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [e.__cause__, e.__context__, *getattr(e, "exceptions", ())]


async def fail_to_connect(seen: Seen, pool: Pool[Any]) -> None:
    """Two failed creations (one raised to the acquirer, one behind a PoolTimeout)."""
    async with pool:
        await seen.raised(pool.acquire())
        await seen.raised(pool.acquire(timeout=0.001))  # in backoff: PoolTimeout from the error
        seen.repr(pool, pool.manager, pool.statistics())
    failures = [r for r in seen.caplog.records if "creating a resource failed" in r.getMessage()]
    assert failures, seen.logs()
    assert all(repr(pool).split("'")[1] in r.getMessage() for r in failures)  # its name


async def use_and_leak(seen: Seen, pool: Pool[Any]) -> None:
    """A leak report, a discard=True, a fatal error in the body, a retirement."""
    async with pool:
        conn = await pool.acquire()
        await asyncio.sleep(0.3)  # past leak_timeout
        seen.repr(pool, pool.manager, conn)
        await pool.release(conn, discard=True)
        with pytest.raises(OSError):
            async with pool.acquire():
                raise OSError("the socket broke")
        async with pool.acquire():
            pass
        await pool.expire()
    messages = seen.logs()
    assert "lasted longer than leak_timeout" in messages
    assert "expire() retired it" in messages


# ------------------------------------------------------------------- asyncpg, psycopg


def driver_pool(driver: str, *args: Any, **kwargs: Any) -> Pool[Any]:
    create_pool = importlib.import_module(f"aiolease.{driver}").create_pool
    pool: Pool[Any] = create_pool(
        *args, max_size=1, backoff_base=0.05, connect_timeout=2.0, **kwargs
    )
    return pool


FAILING: dict[str, tuple[str, str | None, dict[str, Any]]] = {
    "asyncpg-url": ("asyncpg", f"postgresql://bob:{SECRET}@127.0.0.1:{{port}}/db", {}),
    "asyncpg-query": ("asyncpg", f"postgresql://bob@127.0.0.1:{{port}}/db?password={SECRET}", {}),
    "asyncpg-unknown-host": ("asyncpg", f"postgresql://bob:{SECRET}@nonexistent.invalid/db", {}),
    "asyncpg-keyword": ("asyncpg", None, {"host": "127.0.0.1", "password": SECRET}),
    "psycopg-url": ("psycopg", f"postgresql://bob:{SECRET}@127.0.0.1:{{port}}/db", {}),
    "psycopg-conninfo": ("psycopg", f"host=127.0.0.1 port={{port}} password='{SECRET}'", {}),
    "psycopg-keyword": ("psycopg", "host=127.0.0.1 port={port}", {"password": SECRET}),
}


@pytest.mark.parametrize("case", list(FAILING))
async def test_failing_to_connect(caplog: pytest.LogCaptureFixture, case: str) -> None:
    driver, dsn, keywords = FAILING[case]
    port = closed_port()
    if driver == "asyncpg" and dsn is None:
        keywords = {**keywords, "port": port}
    seen = Seen(caplog)
    await fail_to_connect(seen, driver_pool(driver, dsn and dsn.format(port=port), **keywords))
    seen.assert_hidden()


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_leaks_and_discards(
    caplog: pytest.LogCaptureFixture, driver: str, pg_dsn: str
) -> None:
    """PostgreSQL here trusts local connections: the password is taken and not checked."""
    dsn = pg_dsn.replace("://postgres@", f"://postgres:{SECRET}@")
    assert SECRET in dsn
    seen = Seen(caplog)
    await use_and_leak(seen, driver_pool(driver, dsn, leak_timeout=0.1))
    seen.assert_hidden()


@pytest.mark.parametrize(
    "conninfo",
    [f"postgresql://bob:{SECRET}@[bad/db", f"host=h password={SECRET} port"],
    ids=["url", "conninfo"],
)
def test_psycopg_malformed_conninfo(caplog: pytest.LogCaptureFixture, conninfo: str) -> None:
    """libpq quotes a malformed conninfo whole: the error raised instead does not, and it
    carries no chain back to libpq's."""
    from aiolease.psycopg import create_pool

    seen = Seen(caplog)
    with pytest.raises(ValueError, match="malformed conninfo") as info:
        create_pool(conninfo)
    seen.error(info.value)
    assert info.value.__context__ is None
    assert info.value.__cause__ is None
    seen.assert_hidden()


async def test_a_driver_error_showing_the_secret_is_replaced() -> None:
    from aiolease._redact import scrubbed

    async def connect() -> None:
        raise RuntimeError(f"cannot use password {SECRET!r}")

    with pytest.raises(ConnectionError) as info:
        await scrubbed(connect(), [SECRET])
    assert str(info.value) == "RuntimeError: cannot use password '***'"
    assert info.value.__context__ is None
    assert info.value.__cause__ is None

    other = OSError("connection refused")

    async def refused() -> None:
        raise other

    with pytest.raises(OSError) as refused_info:
        await scrubbed(refused(), [SECRET])
    assert refused_info.value is other  # any other error passes as it is, its type kept


# ----------------------------------------------------------------------------- SQLite


async def test_sqlite(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    from aiolease.sqlite import create_pool

    seen = Seen(caplog)
    uri = f"file:{tmp_path}/db.sqlite?mode=rwc&password={SECRET}"
    pool = create_pool(uri, uri=True, max_size=1, leak_timeout=0.1)
    assert repr(pool).startswith(f"<aiolease.Pool 'file:{tmp_path}/db.sqlite' ")  # no query
    await use_and_leak(seen, pool)
    missing = f"file:{tmp_path}/missing/db.sqlite?mode=ro&password={SECRET}"
    await fail_to_connect(seen, create_pool(missing, uri=True, max_size=1, backoff_base=0.05))
    seen.assert_hidden()


# ----------------------------------------------------------------------------- Redis


@pytest.mark.parametrize("url", [f"redis://:{SECRET}@127.0.0.1", f"redis://u:{SECRET}@127.0.0.1"])
async def test_redis_limiters(caplog: pytest.LogCaptureFixture, url: str) -> None:
    import redis.asyncio as aredis

    from aiolease.redis import RedisConcurrencyLimiter, RedisRateLimiter

    seen = Seen(caplog)
    client = aredis.Redis.from_url(f"{url}:{closed_port()}/0")
    rate = RedisRateLimiter(client, "api", 10, call_timeout=0.5)
    conc = RedisConcurrencyLimiter(client, "jobs", 2, call_timeout=0.5)
    try:
        await seen.raised(rate.acquire())
        await seen.raised(conc.acquire())
        seen.repr(rate, conc, rate.statistics(), conc.statistics())
    finally:
        await rate.aclose()
        await conc.aclose()
        await client.aclose()
    assert "Redis unavailable for rate limiter 'api'" in seen.logs()
    assert "Redis unavailable for concurrency limiter 'jobs'" in seen.logs()
    # One WARNING per outage and limiter: the background calls that fail during it are DEBUG.
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 2, seen.logs()
    with pytest.raises(TypeError) as info:
        RedisRateLimiter(f"{url}:6379/0", "api", 10)  # type: ignore[arg-type]
    seen.error(info.value)
    seen.assert_hidden()


# ----------------------------------------------------------------------------- Pool


def test_a_dsn_passed_as_the_manager(caplog: pytest.LogCaptureFixture) -> None:
    seen = Seen(caplog)
    with pytest.raises(TypeError) as info:
        Pool(f"postgresql://bob:{SECRET}@h/db")  # type: ignore[arg-type]
    seen.error(info.value)
    seen.assert_hidden()


# ----------------------------------------------------------------------------- transactions


async def test_a_failed_on_rollback_hook_names_the_pool_and_hides_the_secret(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """docs/logging.md: lines of aiolease.transaction name the pool the connection came from;
    an error quoted in a note is redacted. The line for a failed on_rollback hook named
    neither, and its note on the propagating error quoted the hook's error as it was."""
    from aiolease.testing import FakeConnection

    async def create() -> FakeConnection:
        return FakeConnection()

    def hook() -> None:
        raise RuntimeError(f"cannot reach postgresql://bob:{SECRET}@h/db")

    seen = Seen(caplog)
    async with Pool.from_callables(create, max_size=1, name="ledger") as pool:
        with pytest.raises(ZeroDivisionError) as info:  # noqa: PT012 - the block under test
            async with pool.atomic() as tx:
                tx.on_rollback(hook)
                1 / 0  # noqa: B018
    seen.error(info.value)
    (record,) = [r for r in caplog.records if "on_rollback hook failed" in r.getMessage()]
    assert record.name == "aiolease.transaction"
    assert "'ledger'" in record.getMessage()
    assert any("on_rollback hook also failed" in note for note in info.value.__notes__)
    seen.assert_hidden()
