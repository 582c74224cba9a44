"""aiolease.otel: names, kinds, units, attributes and values after a scripted workload."""

from __future__ import annotations

import asyncio
import gc

import pytest
from metrics_helpers import Collected, instrumented

import aiolease
from aiolease import Pool, PoolTimeout, otel
from aiolease.testing import FakeConnection, FakeManager

POOL = "db.client.connection.pool.name"

pytestmark = pytest.mark.timeout(30)

# name -> (kind, unit) as the semantic conventions (v1.26) and the contract give them.
POOL_INSTRUMENTS = {
    "db.client.connection.count": ("updowncounter", "{connection}"),
    "db.client.connection.idle.min": ("updowncounter", "{connection}"),
    "db.client.connection.max": ("updowncounter", "{connection}"),
    "db.client.connection.pending_requests": ("updowncounter", "{request}"),
    "db.client.connection.timeouts": ("counter", "{timeout}"),
    "db.client.connection.create_time": ("histogram", "s"),
    "db.client.connection.wait_time": ("histogram", "s"),
    "db.client.connection.use_time": ("histogram", "s"),
}


@pytest.mark.aiolease_virtual_time
async def test_pool_workload_acquire_timeout_failed_create_release() -> None:
    fm = FakeManager()
    fm.delay("create", 0.25)
    fm.fail("create", ConnectionError, calls=1)
    with instrumented() as reader:
        async with Pool(fm, max_size=1, acquire_timeout=5.0, name="orders") as pool:
            with pytest.raises(ConnectionError):  # create #1 fails after 0.25 s
                await pool.acquire()
            loop = asyncio.get_running_loop()
            began = loop.time()
            held = await pool.acquire()  # create #2 after the backoff: 0.25 s
            waited = loop.time() - began
            waiter = asyncio.ensure_future(pool.acquire(timeout=1.0))
            await asyncio.sleep(0.5)

            mid = Collected(reader)
            count = mid["db.client.connection.count"]
            assert count.value(**{POOL: "orders", "db.client.connection.state": "used"}) == 1
            assert count.value(**{POOL: "orders", "db.client.connection.state": "idle"}) == 0
            assert mid["db.client.connection.pending_requests"].value(**{POOL: "orders"}) == 1

            with pytest.raises(PoolTimeout):
                await waiter  # times out 1 s after it began
            await asyncio.sleep(1.0)  # held for 2 s in all
            await pool.release(held)
            async with pool.acquire():  # served on the spot: waits 0 s
                pass

            got = Collected(reader)

    for name, (kind, unit) in POOL_INSTRUMENTS.items():
        metric = got[name]
        assert (metric.kind, metric.unit) == (kind, unit), name
        assert metric.schema_url == otel.SCHEMA_URL
        assert all(POOL in p.attributes for p in metric.points), name
    assert "db.client.connection.idle.max" not in got.metrics  # aiolease has no such bound

    count = got["db.client.connection.count"]
    assert count.value(**{POOL: "orders", "db.client.connection.state": "idle"}) == 1
    assert count.value(**{POOL: "orders", "db.client.connection.state": "used"}) == 0
    assert got["db.client.connection.idle.min"].value(**{POOL: "orders"}) == 0
    assert got["db.client.connection.max"].value(**{POOL: "orders"}) == 1
    assert got["db.client.connection.pending_requests"].value(**{POOL: "orders"}) == 0
    assert got["db.client.connection.timeouts"].value(**{POOL: "orders"}) == 1

    create = got["db.client.connection.create_time"]
    ok = create.value(**{POOL: "orders"})
    assert (ok.count, ok.sum) == (1, pytest.approx(0.25))
    failed = create.value(**{POOL: "orders", "error.type": "ConnectionError"})
    assert (failed.count, failed.sum) == (1, pytest.approx(0.25))

    wait = got["db.client.connection.wait_time"].value(**{POOL: "orders"})
    assert wait.count == 2  # the timed-out request obtained nothing: not a wait time
    assert waited > 0.25
    assert wait.sum == pytest.approx(waited)
    assert list(wait.explicit_bounds) == list(otel.BUCKETS)
    assert wait.bucket_counts[0] == 1  # the 0 s wait; the other in (0.1, 0.5]
    assert wait.bucket_counts[list(otel.BUCKETS).index(0.5)] == 1

    use = got["db.client.connection.use_time"].value(**{POOL: "orders"})
    assert use.count == 2
    assert use.sum == pytest.approx(2.0)
    assert use.max == pytest.approx(2.0)


@pytest.mark.aiolease_virtual_time
async def test_pools_made_before_instrument_report_their_state_exactly() -> None:
    fm = FakeManager()
    async with Pool(fm, min_size=2, max_size=4, name="early") as pool:
        leased = await pool.acquire()
        with instrumented() as reader:
            got = Collected(reader)
            count = got["db.client.connection.count"]
            assert count.value(**{POOL: "early", "db.client.connection.state": "idle"}) == 1
            assert count.value(**{POOL: "early", "db.client.connection.state": "used"}) == 1
            assert got["db.client.connection.idle.min"].value(**{POOL: "early"}) == 2
            assert got["db.client.connection.max"].value(**{POOL: "early"}) == 4
            await pool.release(leased)  # recorded: the pool got its observer at instrument()
            use = Collected(reader)["db.client.connection.use_time"].value(**{POOL: "early"})
            assert use.count == 1


@pytest.mark.aiolease_virtual_time
async def test_uninstrument_stops_reporting() -> None:
    fm = FakeManager()
    async with Pool(fm, max_size=1, name="stopped") as pool:
        with instrumented() as reader:
            async with pool.acquire():
                pass
            otel.uninstrument()
            assert pool._observer is None
            async with pool.acquire():
                pass
            got = Collected(reader)
        assert "db.client.connection.count" not in got.metrics or not got[
            "db.client.connection.count"
        ].has(**{POOL: "stopped", "db.client.connection.state": "idle"})
        wait = got["db.client.connection.wait_time"].value(**{POOL: "stopped"})
        assert wait.count == 1  # the acquire before uninstrument() only


async def test_pool_without_name_gets_a_unique_generated_one() -> None:
    with instrumented() as reader:
        a = Pool(FakeManager())
        b = Pool(FakeManager())
        names = {
            p.attributes[POOL]
            for p in Collected(reader)["db.client.connection.max"].points
            if str(p.attributes[POOL]).startswith("pool-")
        }
        assert len(names) >= 2
        await a.aclose()
        await b.aclose()


async def test_a_pool_gone_is_forgotten() -> None:
    with instrumented() as reader:
        pool = Pool(FakeManager(), name="ephemeral")
        assert Collected(reader)["db.client.connection.max"].has(**{POOL: "ephemeral"})
        await pool.aclose()
        del pool
        gc.collect()
        got = Collected(reader)
        assert not got["db.client.connection.max"].has(**{POOL: "ephemeral"})


def test_a_pool_or_limiter_never_used_records_no_histogram_point() -> None:
    """docs/observability.md: a histogram series is made by its first measurement (the
    SDK keeps each one it is given: a series per pool made and never used would stay)."""
    with instrumented() as reader:
        pool = Pool(FakeManager(), name="never-used")
        limiter = aiolease.ConcurrencyLimiter(1, name="never-used")
        got = Collected(reader)
        assert got["db.client.connection.max"].has(**{POOL: "never-used"})
        for histogram in ("create_time", "wait_time", "use_time"):
            assert not got[f"db.client.connection.{histogram}"].points, histogram
        assert not got["aiolease.limiter.request.time_in_queue"].points
        del pool, limiter


@pytest.mark.aiolease_virtual_time
async def test_limiter_requests_queue_time_and_leases() -> None:
    gc.collect()  # a limiter of the same name from the other event loop's run: gone
    with instrumented() as reader:
        lim = aiolease.ConcurrencyLimiter(1, name="api")
        permit = await lim.acquire()  # acquired at once
        with pytest.raises(aiolease.WouldBlock):
            lim.acquire_nowait()  # rejected
        with pytest.raises(aiolease.LimitTimeout):
            await lim.acquire(timeout=0.5)  # timeout
        cancelled = asyncio.create_task(lim.acquire().__aenter__())
        await asyncio.sleep(0.1)
        cancelled.cancel()  # canceled
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        queued = asyncio.create_task(lim.acquire(key="tenant-7").__aenter__())
        other = asyncio.create_task(lim.acquire().__aenter__())
        await asyncio.sleep(0.75)
        mid = Collected(reader)
        assert (
            mid["aiolease.limiter.queued_requests"].value(**{"aiolease.limiter.name": "api"}) == 1
        )
        assert mid["aiolease.limiter.active_leases"].value(**{"aiolease.limiter.name": "api"}) == 2
        permit.release()  # the waiter on the default key is admitted after 0.75 s
        (await other).release()
        (await queued).release()
        got = Collected(reader)

    name = {"aiolease.limiter.name": "api"}
    requests = got["aiolease.limiter.requests"]
    assert (requests.kind, requests.unit) == ("counter", "{request}")
    for result, value in (("acquired", 3), ("rejected", 1), ("timeout", 1), ("canceled", 1)):
        assert requests.value(**name, **{"aiolease.limiter.result": result}) == value, result
    queue = got["aiolease.limiter.request.time_in_queue"]
    assert (queue.kind, queue.unit) == ("histogram", "s")
    point = queue.value(**name)
    assert (point.count, point.sum) == (1, pytest.approx(0.75))
    for metric in ("aiolease.limiter.queued_requests", "aiolease.limiter.active_leases"):
        assert (got[metric].kind, got[metric].unit) == ("updowncounter", "{request}")
        assert got[metric].value(**name) == 0
    # never the per-call key
    assert all(
        set(p.attributes) <= {"aiolease.limiter.name", "aiolease.limiter.result"}
        for m in got.metrics.values()
        if m.name.startswith("aiolease.limiter")
        for p in m.points
    )


async def test_rate_limiter_reports_no_leases() -> None:
    gc.collect()  # a limiter of the same name from the other event loop's run: gone
    with instrumented() as reader:
        lim = aiolease.RateLimiter(1, per=60.0, name="per-minute")
        await lim.acquire()
        with pytest.raises(aiolease.RateLimitExceeded):
            lim.acquire_nowait()
        got = Collected(reader)
    requests = got["aiolease.limiter.requests"]
    name = {"aiolease.limiter.name": "per-minute"}
    assert requests.value(**name, **{"aiolease.limiter.result": "acquired"}) == 1
    assert requests.value(**name, **{"aiolease.limiter.result": "rejected"}) == 1
    assert not got["aiolease.limiter.active_leases"].has(**name)


async def test_transaction_outcomes() -> None:
    outcome = "aiolease.transaction.outcome"
    with instrumented() as reader:
        conn = FakeConnection()
        async with aiolease.atomic(conn):
            await conn.execute("INSERT 1")
        with pytest.raises(ZeroDivisionError):
            async with aiolease.atomic(conn):
                1 / 0  # noqa: B018
        conn.fail_commit(1)  # a serialization failure at the first COMMIT: retried

        async def work(c: FakeConnection) -> None:
            await c.execute("UPDATE")

        await aiolease.run_transaction(conn, work, backoff=0.001)
        conn.drop_on_commit(1)
        with pytest.raises(aiolease.CommitUnknown):
            async with aiolease.atomic(conn):
                pass
        got = Collected(reader)
    tx = got["aiolease.transaction.count"]
    assert (tx.kind, tx.unit) == ("counter", "{transaction}")
    assert tx.value(**{outcome: "commit"}) == 2
    assert tx.value(**{outcome: "rollback"}) == 2  # the ZeroDivisionError, the refused COMMIT
    assert tx.value(**{outcome: "retry"}) == 1
    assert tx.value(**{outcome: "unknown"}) == 1


def test_instrument_twice_with_one_provider_reuses_its_instruments() -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    pool = Pool(FakeManager(), name="twice")
    try:
        otel.instrument(meter_provider=provider)
        otel.instrument(meter_provider=provider)
        points = Collected(reader)["db.client.connection.max"].points
        assert sum(p.attributes[POOL] == "twice" for p in points) == 1
    finally:
        otel.uninstrument()
        provider.shutdown()
        del pool


async def test_a_closed_pool_reports_zeros_so_its_successor_of_the_same_name_counts_alone() -> None:
    """docs/observability.md: a closed pool reports zeros until it is garbage-collected, and
    pools sharing a name are summed; its bounds (idle.min, max) were still reported, so a pool
    made again under the same name showed twice its bounds until the old one was collected."""
    with instrumented() as reader:
        old = Pool(FakeManager(), min_size=1, max_size=3, name="remade")
        await old.open()
        await old.aclose()
        got = Collected(reader)
        for metric in ("db.client.connection.max", "db.client.connection.idle.min"):
            assert got[metric].value(**{POOL: "remade"}) == 0, metric
        async with Pool(FakeManager(), min_size=1, max_size=3, name="remade"):
            got = Collected(reader)
            assert got["db.client.connection.max"].value(**{POOL: "remade"}) == 3
            assert got["db.client.connection.idle.min"].value(**{POOL: "remade"}) == 1
            state = "db.client.connection.state"
            count = got["db.client.connection.count"]
            assert count.value(**{POOL: "remade", state: "idle"}) == 1
        del old


def test_a_provider_instrumented_once_is_not_kept_alive() -> None:
    """instrument() kept every MeterProvider it was given for good (its readers, their
    exporters and every point recorded), though nothing reports to it after
    uninstrument(): a MeterProvider per test or per tenant grew the process for ever."""
    import weakref

    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    def instrument_once() -> weakref.ref[MeterProvider]:
        provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
        otel.instrument(meter_provider=provider)
        otel.uninstrument()
        provider.shutdown()
        return weakref.ref(provider)

    gone = [instrument_once() for _ in range(3)]
    gc.collect()
    assert [ref() for ref in gone] == [None, None, None]


def test_a_provider_instrumented_again_after_uninstrument_reports_once() -> None:
    """The instruments of a provider are made once (the SDK keeps an observable
    instrument's callbacks): instrument(), uninstrument(), instrument() again with the
    same provider reports each series once, from the pools of both periods."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    before = Pool(FakeManager(), name="again-before")
    try:
        otel.instrument(meter_provider=provider)
        otel.uninstrument()
        gc.collect()  # nothing else keeps the provider's instruments
        after = Pool(FakeManager(), name="again-after")
        otel.instrument(meter_provider=provider)
        points = Collected(reader)["db.client.connection.max"].points
        names = [p.attributes[POOL] for p in points]
        assert names.count("again-before") == 1, names
        assert names.count("again-after") == 1, names
    finally:
        otel.uninstrument()
        provider.shutdown()
        del before, after
