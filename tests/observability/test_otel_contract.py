"""The Observability contract, promise by promise, checked against the semantic
conventions package itself and across instrument() / uninstrument()."""

from __future__ import annotations

import gc
from typing import Any

import pytest
from metrics_helpers import Collected, instrumented
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import aiolease
from aiolease import Pool, _metrics, otel
from aiolease.testing import FakeConnection, FakeManager

POOL = "db.client.connection.pool.name"
STATE = "db.client.connection.state"

pytestmark = pytest.mark.timeout(30)


class _RecordingMeter:
    """Stands for a Meter: notes the (kind, name, unit) each semconv factory asks for."""

    def __init__(self) -> None:
        self.made: dict[str, tuple[str, str]] = {}

    def _note(self, kind: str, name: str, unit: str = "", **_: Any) -> None:
        self.made[name] = (kind, unit)

    def create_counter(self, name: str, unit: str = "", **kw: Any) -> None:
        self._note("counter", name, unit)

    def create_up_down_counter(self, name: str, unit: str = "", **kw: Any) -> None:
        self._note("updowncounter", name, unit)

    def create_histogram(self, name: str, unit: str = "", **kw: Any) -> None:
        self._note("histogram", name, unit)


def _observer(obj: object) -> object:
    """An object's metrics observer (read through a function: mypy narrows attributes)."""
    return getattr(obj, "_observer")  # noqa: B009


def _tracer() -> object:
    return _metrics.tracer


async def test_pool_instruments_are_those_the_semantic_conventions_define() -> None:
    """Every db.client.connection.* instrument aiolease emits has the name, kind and unit
    the semconv package's own factory gives it, and the attribute names and state values
    are the package's constants."""
    db_metrics = pytest.importorskip("opentelemetry.semconv._incubating.metrics.db_metrics")
    db_attrs = pytest.importorskip("opentelemetry.semconv._incubating.attributes.db_attributes")
    meter = _RecordingMeter()
    for factory in (
        db_metrics.create_db_client_connection_count,
        db_metrics.create_db_client_connection_idle_min,
        db_metrics.create_db_client_connection_max,
        db_metrics.create_db_client_connection_pending_requests,
        db_metrics.create_db_client_connection_timeouts,
        db_metrics.create_db_client_connection_create_time,
        db_metrics.create_db_client_connection_wait_time,
        db_metrics.create_db_client_connection_use_time,
    ):
        factory(meter)
    assert db_attrs.DB_CLIENT_CONNECTION_POOL_NAME == POOL
    assert db_attrs.DB_CLIENT_CONNECTION_STATE == STATE
    states = {v.value for v in db_attrs.DbClientConnectionStateValues}
    assert states == {"idle", "used"}

    fm = FakeManager()
    fm.fail("create", ConnectionError, calls=1)
    with instrumented() as reader:
        async with Pool(fm, max_size=1, name="semconv") as pool:
            with pytest.raises(ConnectionError):  # a failed creation: create_time, error.type
                await pool.acquire()
            async with pool.acquire():
                pass
            got = Collected(reader)
    for name, (kind, unit) in meter.made.items():
        metric = got[name]
        assert (metric.kind, metric.unit) == (kind, unit), name
        assert metric.points, name
        for point in metric.points:
            attributes = set(point.attributes)
            allowed = {POOL, STATE} if name.endswith(".count") else {POOL, "error.type"}
            assert POOL in attributes, (name, attributes)
            assert attributes <= allowed, (name, attributes)
    assert {p.attributes[STATE] for p in got["db.client.connection.count"].points} == states


class _Refused(Exception):
    """A manager's own error: error.type is its fully qualified class name."""


@pytest.mark.aiolease_virtual_time
async def test_a_failed_creation_records_create_time_with_its_qualified_error_type() -> None:
    fm = FakeManager()
    fm.delay("create", 0.5)
    fm.fail("create", _Refused, calls=1)
    with instrumented() as reader:
        async with Pool(fm, max_size=1, name="refused") as pool:
            with pytest.raises(_Refused):
                await pool.acquire()
            got = Collected(reader)
    failed = got["db.client.connection.create_time"].value(
        **{POOL: "refused", "error.type": f"{__name__}._Refused"}
    )
    assert (failed.count, failed.sum) == (1, pytest.approx(0.5))
    assert not got["db.client.connection.create_time"].has(**{POOL: "refused"})


async def test_pools_and_limiters_made_before_and_after_instrument_report_together() -> None:
    gc.collect()
    before = Pool(FakeManager(), max_size=2, name="made-before")
    before_limiter = aiolease.ConcurrencyLimiter(1, name="limiter-before")
    with instrumented() as reader:
        after = Pool(FakeManager(), max_size=3, name="made-after")
        after_limiter = aiolease.RateLimiter(5, per=1.0, name="limiter-after")
        for pool in (before, after):
            async with pool.acquire():
                pass
        async with before_limiter.acquire():
            pass
        await after_limiter.acquire()
        got = Collected(reader)
    assert got["db.client.connection.max"].value(**{POOL: "made-before"}) == 2
    assert got["db.client.connection.max"].value(**{POOL: "made-after"}) == 3
    for name in ("made-before", "made-after"):
        assert got["db.client.connection.use_time"].value(**{POOL: name}).count == 1, name
        assert got["db.client.connection.wait_time"].value(**{POOL: name}).count == 1, name
    requests = got["aiolease.limiter.requests"]
    for name in ("limiter-before", "limiter-after"):
        acquired = {"aiolease.limiter.name": name, "aiolease.limiter.result": "acquired"}
        assert requests.value(**acquired) == 1, name
    await before.aclose()
    await after.aclose()


async def test_uninstrument_stops_everything_and_is_idempotent() -> None:
    """After uninstrument() no pool or limiter (made before or after it) holds an observer,
    no transaction is counted, nothing traces, and the provider's observable instruments
    report nothing; calling it again (or before any instrument()) is harmless."""
    otel.uninstrument()  # never instrumented (or already not): nothing to do
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    pool = Pool(FakeManager(), name="stopping")
    limiter = aiolease.ConcurrencyLimiter(1, name="stopping")
    try:
        otel.instrument(meter_provider=provider, tracing=True)
        otel.instrument(meter_provider=provider, tracing=True)  # again: the same, once
        assert _observer(pool) is not None
        assert _observer(limiter) is not None
        assert _tracer() is not None
        otel.uninstrument()
        otel.uninstrument()
        later = Pool(FakeManager(), name="stopping-later")
        assert _observer(pool) is None
        assert _observer(limiter) is None
        assert _observer(later) is None
        assert _tracer() is None
        assert _metrics._sinks == []
        assert _metrics._tx_sinks == ()
        async with pool.acquire():
            pass
        async with limiter.acquire():
            pass
        async with aiolease.atomic(FakeConnection()):
            pass
        got = Collected(reader)
        assert not any(m.points for m in got.metrics.values()), {
            name: [dict(p.attributes) for p in m.points] for name, m in got.metrics.items()
        }
        await later.aclose()
    finally:
        otel.uninstrument()
        provider.shutdown()
        await pool.aclose()


async def test_instrument_again_with_another_provider_switches_to_it() -> None:
    first, second = InMemoryMetricReader(), InMemoryMetricReader()
    providers = [MeterProvider(metric_readers=[r]) for r in (first, second)]
    pool = Pool(FakeManager(), name="switched")
    try:
        otel.instrument(meter_provider=providers[0])
        otel.instrument(meter_provider=providers[1])
        async with pool.acquire():
            pass
        old, new = Collected(first), Collected(second)
        assert not old["db.client.connection.max"].has(**{POOL: "switched"})
        assert not old["db.client.connection.use_time"].points
        assert new["db.client.connection.max"].value(**{POOL: "switched"}) == 10
        assert new["db.client.connection.use_time"].value(**{POOL: "switched"}).count == 1
    finally:
        otel.uninstrument()
        for provider in providers:
            provider.shutdown()
        await pool.aclose()


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


SECRET = "Zq7-s3cr@t/pw"

# driver -> (dsn, connect keywords): the password in each place a DSN can hold it.
_DRIVER_FORMS = {
    "asyncpg-url-encoded": ("asyncpg", "postgresql://bob:{q}@127.0.0.1:{port}/shop", {}),
    "asyncpg-query": ("asyncpg", "postgresql://bob@127.0.0.1:{port}/shop?password={q}", {}),
    "asyncpg-keyword": ("asyncpg", "postgresql://bob@127.0.0.1:{port}/shop", {"password": SECRET}),
    "psycopg-url-encoded": ("psycopg", "postgresql://bob:{q}@127.0.0.1:{port}/shop", {}),
    "psycopg-query": ("psycopg", "postgresql://bob@127.0.0.1:{port}/shop?password={q}", {}),
    "psycopg-keyword": ("psycopg", "host=127.0.0.1 port={port} dbname=shop", {"password": SECRET}),
}


@pytest.mark.parametrize("form", list(_DRIVER_FORMS))
async def test_a_driver_pool_failing_to_connect_is_named_by_address_and_hides_the_password(
    form: str,
) -> None:
    """create_time records the failed attempt with error.type; the pool's name is
    server.address:server.port/db.namespace; no attribute or span shows the password."""
    from urllib.parse import quote

    driver, template, keywords = _DRIVER_FORMS[form]
    module = pytest.importorskip(f"aiolease.{driver}")
    port = _closed_port()
    dsn = template.format(port=port, q=quote(SECRET, safe=""))
    with instrumented() as reader:
        async with module.create_pool(dsn, max_size=1, acquire_timeout=5.0, **keywords) as pool:
            with pytest.raises(Exception) as caught:
                await pool.acquire()
            got = Collected(reader)
    name = f"127.0.0.1:{port}/shop"
    assert pool.name is None
    assert name in repr(pool)
    shown = f"{caught.value!s} {caught.value!r} {pool!r}"
    create = got["db.client.connection.create_time"]
    failed = [p for p in create.points if "error.type" in p.attributes]
    assert failed, create.points
    assert all(p.attributes[POOL] == name for p in failed), create.points
    assert all(p.attributes["error.type"] for p in failed)
    for metric in got.metrics.values():
        for point in metric.points:
            shown += repr(dict(point.attributes))
    assert SECRET not in shown
    assert quote(SECRET, safe="") not in shown


def test_a_local_limiter_named_empty_gets_a_generated_name_as_a_pool_does() -> None:
    """name="" is no name: a pool so named got a generated one, but a limiter reported
    aiolease.limiter.name="" (a blank label, shared by every such limiter)."""
    gc.collect()
    with instrumented() as reader:
        pool = Pool(FakeManager(), name="")
        limiters = [aiolease.ConcurrencyLimiter(1, name=""), aiolease.RateLimiter(1, name="")]
        got = Collected(reader)
        pools = {p.attributes[POOL] for p in got["db.client.connection.max"].points}
        requests = got["aiolease.limiter.requests"].points
        names = {p.attributes["aiolease.limiter.name"] for p in requests}
        del pool, limiters
    assert "" not in pools
    assert "" not in names
    assert any(n.startswith("ConcurrencyLimiter-") for n in names), names
    assert any(n.startswith("RateLimiter-") for n in names), names


async def test_a_generated_pool_name_is_never_one_a_live_pool_was_given() -> None:
    """The generated name is unique: a pool given the name the next generated one would
    have had (``pool-<n>``) did not stop an unnamed pool from taking it too, and the two
    were reported as one series."""
    probe = Pool(FakeManager())
    number = int(repr(probe).split("'")[1].removeprefix("pool-"))
    await probe.aclose()
    taken = [Pool(FakeManager(), name=f"pool-{number + i}") for i in (1, 2)]
    unnamed = Pool(FakeManager())
    label = repr(unnamed).split("'")[1]
    assert label.startswith("pool-")
    assert label not in {f"pool-{number + 1}", f"pool-{number + 2}"}, label
    for pool in (*taken, unnamed):
        await pool.aclose()


@pytest.mark.aiolease_virtual_time
async def test_a_connection_being_checked_or_reset_counts_as_used() -> None:
    """db.client.connection.count by state adds up to the open connections: one whose
    release's reset (or whose check before a lease) is running is not idle, and counted
    neither idle nor used it was missing from the count altogether."""
    import asyncio

    fm = FakeManager()
    fm.delay("reset", 1.0)
    fm.delay("check", 1.0)
    with instrumented() as reader:
        async with Pool(fm, max_size=1, name="busy") as pool:
            held = await pool.acquire()
            releasing = asyncio.create_task(pool.release(held))
            await asyncio.sleep(0.5)  # the reset runs
            during_reset = Collected(reader)["db.client.connection.count"]
            await releasing
            await asyncio.sleep(1.0)
            acquiring = asyncio.ensure_future(pool.acquire())
            await asyncio.sleep(0.5)  # the check of the idle connection runs
            during_check = Collected(reader)["db.client.connection.count"]
            await pool.release(await acquiring)
    for count in (during_reset, during_check):
        assert count.value(**{POOL: "busy", STATE: "used"}) == 1
        assert count.value(**{POOL: "busy", STATE: "idle"}) == 0


def test_a_generated_limiter_name_is_never_one_a_live_limiter_was_given() -> None:
    """As for pools: a limiter given the name the next generated one would have had did
    not stop an unnamed limiter from taking it too (one series for the two)."""
    gc.collect()
    probe = aiolease.ConcurrencyLimiter(1)
    (number,) = [
        int(n.rsplit("-", 1)[1])
        for limiter, n in _metrics._live(_metrics._limiters)
        if limiter is probe
    ]
    taken = [aiolease.ConcurrencyLimiter(1, name=f"ConcurrencyLimiter-{number + 1}")]
    unnamed = aiolease.ConcurrencyLimiter(1)
    names = [n for limiter, n in _metrics._live(_metrics._limiters) if limiter is unnamed]
    assert names != [f"ConcurrencyLimiter-{number + 1}"], names
    del probe, taken, unnamed
