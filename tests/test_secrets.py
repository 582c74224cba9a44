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

from aiolease import Pool, PoolTimeout
from aiolease._redact import redact

SECRET = "Zq7s3cr3tPW"
# A password in two pieces around a character that URL and conninfo parsers read in more
# than one way ("/", "@", "#", "?", ";", a space, quotes): neither piece may show anywhere.
A, B = "Zq7s3cr3t", "Wx9kPq2m"


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
    [
        f"postgresql://bob:{SECRET}@[bad/db",
        f"host=h password={SECRET} port",
        f"postgresql://bob:{A} {B}@h/db",  # libpq: unexpected spaces found in "..."
        f"postgresql://bob:{A}%zz{B}@h/db",  # libpq: invalid percent-encoded token: "..."
        f"postgresql://h/db?password={A} {B}",
        f"postgresql://bob:{A}/{B}@h/db?x",
        f"host=h password={A} {B}",  # libpq takes B for a key: missing "=" after "..."
        f"host=h password='{A} {B}",
    ],
    ids=["url", "conninfo", "space", "percent", "query", "slash", "unquoted", "unterminated"],
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
    assert_no_piece(seen)


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


@pytest.mark.parametrize(
    "url",
    [
        f"redis://:{SECRET}@127.0.0.1:{{port}}/0",
        f"redis://u:{SECRET}@127.0.0.1:{{port}}/0",
        f"rediss://u:{SECRET}@127.0.0.1:{{port}}/0",
        f"redis://127.0.0.1:{{port}}/0?password={SECRET}",
        f"unix://:{SECRET}@/nonexistent/redis-{{port}}.sock?db=0",
        f"unix://u:{SECRET}@/nonexistent/redis-{{port}}.sock?db=0",
    ],
)
async def test_redis_limiters(caplog: pytest.LogCaptureFixture, url: str) -> None:
    import redis.asyncio as aredis

    from aiolease.redis import RedisConcurrencyLimiter, RedisRateLimiter

    seen = Seen(caplog)
    url = url.format(port=closed_port())
    client = aredis.Redis.from_url(url)
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
        RedisRateLimiter(url, "api", 10)  # type: ignore[arg-type]
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


# ------------------------------------------------------------------ every form, every place


#: (text, what must still show): every password form redact() knows.
FORMS: dict[str, tuple[str, str]] = {
    "url": (f"postgresql://bob:{A}{B}@db:5432/shop", "postgresql://bob:***@db:5432/shop"),
    "url-percent": (f"postgresql://bob:{A}%2F%40%23{B}@db/shop", "@db/shop"),
    "url-raw-slash": (f"postgresql://bob:{A}/{B}@db/shop", "postgresql://bob:***@db/shop"),
    "url-raw-at": (f"postgresql://bob:{A}@{B}@db/shop", "postgresql://bob:***@db/shop"),
    "url-raw-hash": (f"postgresql://bob:{A}#{B}@db/shop", "postgresql://bob:***@db/shop"),
    "url-raw-question": (f"postgresql://bob:{A}?{B}@db/shop", "@db/shop"),
    "url-raw-colon": (f"postgres://bob:{A}:{B}@db/shop", "@db/shop"),
    "url-no-user": (f"postgresql://:{A}{B}@db/shop", "postgresql://:***@db/shop"),
    "url-ipv6": (f"postgresql://bob:{A}{B}@[::1]:5432/shop", "@[::1]:5432/shop"),
    "url-query": (f"postgresql://db/shop?password={A}{B}&sslmode=require", "&sslmode=require"),
    "url-query-sslpassword": (f"postgresql://db/shop?sslpassword={A}{B}", "postgresql://db/"),
    "url-query-raw-semicolon": (f"postgresql://db/shop?password={A};{B}", "postgresql://db/"),
    "redis": (f"redis://:{A}{B}@cache:6379/0", "redis://:***@cache:6379/0"),
    "rediss-user": (f"rediss://app:{A}/{B}@cache:6380/1", "rediss://app:***@cache:6380/1"),
    "redis-unix": (f"unix://:{A}{B}@/run/redis.sock?db=2", "@/run/redis.sock?db=2"),
    "redis-unix-query": (f"unix:///run/redis.sock?db=2&password={A}{B}", "unix:///run/redis"),
    "redis-query": (f"redis://cache:6379/0?password={A}{B}", "redis://cache:6379/0?password="),
    "conninfo": (f"host=db password={A}{B} dbname=shop", "dbname=shop"),
    "conninfo-spaces": (f"host=db password = {A}{B} port=5433", "port=5433"),
    "conninfo-quoted": (f"host=db password='{A} {B}' port=5433", "port=5433"),
    "conninfo-escaped-quote": (f"host=db password='{A}\\' {B}' port=5433", "port=5433"),
    "conninfo-escaped-backslash": (f"password='{A}\\\\{B}' port=5433", "port=5433"),
    "conninfo-unterminated": (f"host=db password='{A} {B}", "host=db"),
    "conninfo-semicolon": (f"host=db password={A};{B} port=5433", "port=5433"),
    "conninfo-comma": (f"host=db password={A},{B} port=5433", "port=5433"),
    "conninfo-quote-inside": (f"host=db password={A}'{B} port=5433", "port=5433"),
    "conninfo-ampersand": (f"host=db password={A}&{B} port=5433", "port=5433"),
    "conninfo-upper": (f"host=db PASSWORD={A}{B}", "host=db"),
    "pwd": (f"Server=db;Uid=bob;Pwd={A}{B}", "Server=db;Uid=bob;"),
    "passwd": (f"passwd: {A}{B}", "passwd: ***"),
    "pgpassword": (f"PGPASSWORD={A}{B} psql -h db", "psql -h db"),
    "pgpassword-quoted": (f"export PGPASSWORD='{A} {B}'; psql", "export PGPASSWORD="),
    "oauth-client-secret": (f"host=db oauth_client_secret={A}{B} user=bob", "user=bob"),
    "prefixed-keyword": (f"connect(db_password={A}{B})", "connect(db_password="),
    "keyword-repr": (f"connect(password='{A}\\'{B}', host='db')", "host='db'"),
    "keyword-bytes": (f"connect(password=b'{A}{B}', host='db')", "host='db'"),
    "dict-repr": (f"{{'password': \"{A}'{B}\", 'host': 'db'}}", "'host': 'db'"),
    "json": (f'{{"password": "{A}\\"{B}", "host": "db"}}', '"host": "db"'),
    "pair-repr": (f"[('password', '{A}{B}'), ('host', 'db')]", "('host', 'db')"),
    "hash-rocket": (f'{{password => "{A}{B}", host => "db"}}', 'host => "db"'),
    "hash-rocket-bare": (f"password => {A}{B} host => db", "host => db"),
    "http-path-at": (
        f"http://u:{A}{B}@api/users/me@example.com http://api:8080/users/me@example.com",
        "http://api:8080/users/me@example.com",
    ),
}


@pytest.mark.parametrize("form", list(FORMS))
def test_redact_every_form(form: str) -> None:
    text, kept = FORMS[form]
    shown = redact(text)
    for piece in (A, B):
        assert piece not in shown, shown
    assert kept in shown, shown
    assert redact(shown) == shown  # nothing more to hide


@pytest.mark.parametrize("form", list(FORMS))
def test_a_form_inside_a_message_log_or_traceback(
    caplog: pytest.LogCaptureFixture, form: str
) -> None:
    """The same forms quoted in a log line (its message, its arguments, its traceback)."""
    from aiolease._logs import get_logger

    text, _ = FORMS[form]
    seen = Seen(caplog)
    log = get_logger("aiolease.pool")
    log.warning(f"cannot connect with {text}")
    log.warning("cannot connect with %s (%r)", text, {"dsn": text})
    try:
        raise ConnectionError(f"cannot connect with {text}")
    except ConnectionError:
        log.exception("failed")
    seen.texts.append(redact(text))
    everything = "\n".join([*seen.texts, seen.logs(), *(r.exc_text or "" for r in caplog.records)])
    for piece in (A, B):
        assert piece not in everything, everything


#: (driver, DSN, keywords) with the password in its pieces; {port} is a closed port.
DRIVER_FORMS: dict[str, tuple[str, str | None, dict[str, Any]]] = {
    **{
        f"{driver}-{form}": (driver, dsn, {})
        for driver in ("asyncpg", "psycopg")
        for form, dsn in {
            "url-percent": f"postgresql://bob:{A}%2F%40%23%3F{B}@127.0.0.1:{{port}}/db",
            "url-raw-slash": f"postgresql://bob:{A}/{B}@127.0.0.1:{{port}}/db",
            "url-raw-at": f"postgresql://bob:{A}@{B}@127.0.0.1:{{port}}/db",
            "url-raw-hash": f"postgresql://bob:{A}#{B}@127.0.0.1:{{port}}/db",
            "url-raw-question": f"postgresql://bob:{A}?{B}@127.0.0.1:{{port}}/db",
            "url-query": f"postgresql://bob@127.0.0.1:{{port}}/db?password={A}%26{B}",
        }.items()
    },
    "psycopg-conninfo-semicolon": ("psycopg", f"host=127.0.0.1 port={{port}} password={A};{B}", {}),
    "psycopg-conninfo-quoted": (
        "psycopg",
        f"host=127.0.0.1 port={{port}} password='{A}\\' {B}'",
        {},
    ),
    "psycopg-keyword": ("psycopg", "host=127.0.0.1 port={port}", {"password": f"{A}' {B}"}),
    "asyncpg-keyword": ("asyncpg", None, {"host": "127.0.0.1", "password": f"{A}' {B}"}),
}


def assert_no_piece(seen: Seen) -> None:
    everything = "\n".join([*seen.texts, seen.logs()])
    for piece in (A, B):
        at = everything.find(piece)
        assert at < 0, everything[max(0, at - 200) : at + 100]


@pytest.mark.parametrize("case", list(DRIVER_FORMS))
async def test_every_form_in_every_place(caplog: pytest.LogCaptureFixture, case: str) -> None:
    """A driver pool failing to connect with each form: the reprs of the pool and its
    manager, its statistics, its metrics labels and span statuses (OpenTelemetry), the
    log records and every error raised (or the ValueError a malformed DSN gets)."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from aiolease import otel

    driver, dsn, keywords = DRIVER_FORMS[case]
    port = closed_port()
    if dsn is None:
        keywords = {**keywords, "port": port}
    seen = Seen(caplog)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    otel.instrument(tracing=True, tracer_provider=provider)
    try:
        try:
            pool = driver_pool(driver, dsn and dsn.format(port=port), **keywords)
        except ValueError as exc:  # psycopg: a conninfo libpq cannot read
            seen.error(exc)
        else:
            await fail_to_connect(seen, pool)
    finally:
        otel.uninstrument()
        provider.shutdown()
    for span in exporter.get_finished_spans():
        seen.texts += [str(span.status.description), repr(dict(span.attributes or {}))]
    assert_no_piece(seen)


async def test_span_statuses(caplog: pytest.LogCaptureFixture) -> None:
    """An error span's status quotes the error: a transaction's and a failed acquire's
    (from a manager of your own, whose error aiolease cannot replace) are redacted."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from aiolease import otel
    from aiolease.testing import FakeConnection

    async def failing() -> FakeConnection:
        raise ConnectionError(f"cannot reach postgresql://bob:{A}/{B}@h/db")

    async def create() -> FakeConnection:
        return FakeConnection()

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    otel.instrument(tracing=True, tracer_provider=provider)
    try:
        async with Pool.from_callables(failing, max_size=1) as pool:
            with pytest.raises(ConnectionError):
                await pool.acquire()
        async with Pool.from_callables(create, max_size=1) as pool:
            with pytest.raises(RuntimeError):
                async with pool.atomic():
                    raise RuntimeError(f"bad password={A}{B} in PGPASSWORD={A}{B}")
    finally:
        otel.uninstrument()
        provider.shutdown()
    seen = Seen(caplog)
    spans = exporter.get_finished_spans()
    assert {s.name for s in spans} >= {"aiolease.pool.acquire", "aiolease.transaction"}
    seen.texts += [str(s.status.description) for s in spans]
    assert_no_piece(seen)


async def test_a_pool_timeout_quotes_the_last_creation_error_redacted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A manager of your own whose error shows a DSN: the PoolTimeout's message quotes it
    redacted (the error itself stays its ``__cause__``, as it is)."""

    async def create() -> object:
        raise ConnectionError(f"cannot reach postgresql://bob:{A}/{B}@h/db")

    seen = Seen(caplog)
    async with Pool.from_callables(create, max_size=1, backoff_base=1.0) as pool:
        with pytest.raises(ConnectionError):
            await pool.acquire()
        with pytest.raises(PoolTimeout) as info:
            await pool.acquire(timeout=0.01)  # in backoff
    assert "last creation error: ConnectionError('cannot reach postgresql://bob:***@h/db')" in (
        str(info.value)
    )
    seen.texts.append(str(info.value))
    assert_no_piece(seen)
