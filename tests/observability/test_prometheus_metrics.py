"""aiolease.prometheus: the standard names, kinds and labels in a registry; multiprocess mode."""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import textwrap
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

import aiolease
from aiolease import Pool, PoolTimeout, prometheus
from aiolease.testing import FakeConnection, FakeManager

POOL = "db_client_connection_pool_name"

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def registry() -> Iterator[CollectorRegistry]:
    gc.collect()  # an unreachable pool of an earlier test would still be summed in
    registry = CollectorRegistry()
    collector = prometheus.Collector()
    registry.register(collector)
    try:
        yield registry
    finally:
        collector.close()


def _types(registry: CollectorRegistry) -> dict[str, str]:
    """metric family -> its # TYPE in the text exposition (a counter's family named
    without ``_total``, which prometheus_client releases print or not)."""
    text = generate_latest(registry).decode()
    types = {}
    for line in text.splitlines():
        if line.startswith("# TYPE"):
            _, _, name, kind = line.split()
            types[name.removesuffix("_total") if kind == "counter" else name] = kind
    return types


@pytest.mark.aiolease_virtual_time
async def test_pool_workload(registry: CollectorRegistry) -> None:
    fm = FakeManager()
    fm.delay("create", 0.25)
    fm.fail("create", ConnectionError, calls=1)
    value = registry.get_sample_value
    async with Pool(fm, max_size=1, acquire_timeout=5.0, name="orders") as pool:
        with pytest.raises(ConnectionError):
            await pool.acquire()
        held = await pool.acquire()
        waiter = asyncio.ensure_future(pool.acquire(timeout=1.0))
        await asyncio.sleep(0.5)
        used = {POOL: "orders", "db_client_connection_state": "used"}
        assert value("db_client_connection_count", used) == 1
        assert value("db_client_connection_pending_requests", {POOL: "orders"}) == 1
        with pytest.raises(PoolTimeout):
            await waiter
        await asyncio.sleep(1.0)
        await pool.release(held)

        types = _types(registry)
        for name, kind in {
            "db_client_connection_count": "gauge",
            "db_client_connection_idle_min": "gauge",
            "db_client_connection_max": "gauge",
            "db_client_connection_pending_requests": "gauge",
            "db_client_connection_timeouts": "counter",
            "db_client_connection_create_time_seconds": "histogram",
            "db_client_connection_wait_time_seconds": "histogram",
            "db_client_connection_use_time_seconds": "histogram",
        }.items():
            assert types[name] == kind, name

        pool_label = {POOL: "orders"}
        idle = {POOL: "orders", "db_client_connection_state": "idle"}
        assert value("db_client_connection_count", idle) == 1
        assert value("db_client_connection_count", used) == 0
        assert value("db_client_connection_max", pool_label) == 1
        assert value("db_client_connection_idle_min", pool_label) == 0
        assert value("db_client_connection_pending_requests", pool_label) == 0
        assert value("db_client_connection_timeouts_total", pool_label) == 1
        ok = {POOL: "orders", "error_type": ""}
        failed = {POOL: "orders", "error_type": "ConnectionError"}
        assert value("db_client_connection_create_time_seconds_count", ok) == 1
        assert value("db_client_connection_create_time_seconds_sum", ok) == pytest.approx(0.25)
        assert value("db_client_connection_create_time_seconds_count", failed) == 1
        assert value("db_client_connection_wait_time_seconds_count", pool_label) == 1
        assert value("db_client_connection_use_time_seconds_sum", pool_label) == pytest.approx(2.0)
        # the buckets: the 2 s use in (1, 5]
        bucket = {**pool_label, "le": "1.0"}
        assert value("db_client_connection_use_time_seconds_bucket", bucket) == 0
        bucket["le"] = "5.0"
        assert value("db_client_connection_use_time_seconds_bucket", bucket) == 1


@pytest.mark.aiolease_virtual_time
async def test_limiters_and_transactions(registry: CollectorRegistry) -> None:
    value = registry.get_sample_value
    lim = aiolease.ConcurrencyLimiter(1, name="api")
    permit = await lim.acquire()
    waiter = asyncio.create_task(lim.acquire(key="tenant-1").__aenter__())
    other = asyncio.create_task(lim.acquire().__aenter__())
    await asyncio.sleep(0.5)
    name = {"aiolease_limiter_name": "api"}
    assert value("aiolease_limiter_queued_requests", name) == 1
    assert value("aiolease_limiter_active_leases", name) == 2
    permit.release()
    (await other).release()
    (await waiter).release()
    with pytest.raises(aiolease.WouldBlock):
        async with lim.acquire():
            lim.acquire_nowait()
    acquired = {**name, "aiolease_limiter_result": "acquired"}
    assert value("aiolease_limiter_requests_total", acquired) == 4
    rejected = {**name, "aiolease_limiter_result": "rejected"}
    assert value("aiolease_limiter_requests_total", rejected) == 1
    assert value("aiolease_limiter_request_time_in_queue_seconds_sum", name) == pytest.approx(0.5)

    conn = FakeConnection()
    async with aiolease.atomic(conn):
        pass
    outcome = {"aiolease_transaction_outcome": "commit"}
    assert value("aiolease_transaction_count_total", outcome) == 1
    types = _types(registry)
    assert types["aiolease_limiter_requests"] == "counter"
    assert types["aiolease_limiter_request_time_in_queue_seconds"] == "histogram"
    assert types["aiolease_transaction_count"] == "counter"
    assert "tenant-1" not in generate_latest(registry).decode()  # never the per-call key


_WORKER = textwrap.dedent(
    """
    import asyncio, os, sys
    from aiolease import Pool, prometheus
    from aiolease.testing import FakeManager

    async def main():
        collector = prometheus.Collector()
        pool = Pool(FakeManager(), max_size=3, name="shared")
        await pool.open()
        held = await pool.acquire()
        async with pool.acquire():
            pass
        await asyncio.sleep(0)  # the state is written once per turn of the loop
        print(os.getpid(), flush=True)
        # exit holding a lease, as a worker serving a request would

    asyncio.run(main())
    """
)


def test_multiprocess_mode_sums_the_workers(tmp_path: Path) -> None:
    from prometheus_client import multiprocess

    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    pids = []
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, "-W", "ignore", "-c", _WORKER],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        pids.append(int(done.stdout.split()[0]))
    assert list(tmp_path.iterdir())

    def read() -> CollectorRegistry:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(tmp_path))  # type: ignore[no-untyped-call]
        return registry

    shared = {POOL: "shared"}
    used = {**shared, "db_client_connection_state": "used"}
    idle = {**shared, "db_client_connection_state": "idle"}
    registry = read()
    assert registry.get_sample_value("db_client_connection_count", used) == 2
    assert registry.get_sample_value("db_client_connection_count", idle) == 2
    assert registry.get_sample_value("db_client_connection_max", shared) == 6
    assert registry.get_sample_value("db_client_connection_wait_time_seconds_count", shared) == 4
    assert registry.get_sample_value("db_client_connection_use_time_seconds_count", shared) == 2
    assert (
        registry.get_sample_value(
            "db_client_connection_create_time_seconds_count", {**shared, "error_type": ""}
        )
        == 4
    )

    multiprocess.mark_process_dead(pids[0], path=str(tmp_path))  # type: ignore[no-untyped-call]  # livesum: a worker gone
    registry = read()
    assert registry.get_sample_value("db_client_connection_count", used) == 1
    assert registry.get_sample_value("db_client_connection_wait_time_seconds_count", shared) == 4


_REMADE = textwrap.dedent(
    """
    import asyncio
    from aiolease import Pool, PoolTimeout, RateLimiter, prometheus
    from aiolease.testing import FakeManager

    async def main():
        collector = prometheus.Collector()
        limiter = RateLimiter(1, per=60.0, name="remade")
        pool = Pool(FakeManager(), max_size=1, name="remade")
        async with pool, pool.acquire():
            limiter.acquire_nowait()
            for _ in range(2):
                try:
                    await pool.acquire(timeout=0)
                except PoolTimeout:
                    pass
            await asyncio.sleep(0)  # the state is written once per turn of the loop
            collector.close()
            collector = prometheus.Collector()  # made again in the same worker
            await asyncio.sleep(0)
            collector.close()

    asyncio.run(main())
    """
)


def test_a_collector_made_again_in_a_worker_counts_nothing_twice(tmp_path: Path) -> None:
    """Multiprocess mode: the counters read from the pools' and limiters' totals (pool
    timeouts, limiter requests) live in the worker's files, not in one collector; a
    collector closed and made again in the same worker adds only what happened since."""
    from prometheus_client import multiprocess

    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-W", "ignore", "-c", _REMADE], env=env, timeout=60, check=True)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(tmp_path))  # type: ignore[no-untyped-call]
    assert registry.get_sample_value("db_client_connection_timeouts_total", {POOL: "remade"}) == 2
    acquired = {"aiolease_limiter_name": "remade", "aiolease_limiter_result": "acquired"}
    assert registry.get_sample_value("aiolease_limiter_requests_total", acquired) == 1


_RECREATED = textwrap.dedent(
    """
    import asyncio, gc
    from aiolease import Pool, RateLimitExceeded, RateLimiter, prometheus
    from aiolease.testing import FakeManager

    async def use(requests):  # made and used in one step of the loop
        limiter = RateLimiter(1, per=60.0, name="tenant")
        for _ in range(requests):
            try:
                limiter.acquire_nowait()
            except RateLimitExceeded:
                pass
        await asyncio.sleep(0)  # the state is written once per turn of the loop

    async def main():
        collector = prometheus.Collector()
        await use(3)
        gc.collect()
        async with Pool(FakeManager(), name="other") as pool, pool.acquire():
            await asyncio.sleep(0)  # an event: the state is written, "tenant" gone
        await use(2)  # a limiter of the same name again
        collector.close()

    asyncio.run(main())
    """
)


def test_a_name_whose_limiters_are_gone_counts_the_next_one_of_that_name_in_full(
    tmp_path: Path,
) -> None:
    """Multiprocess mode: the totals last written for a name stayed the baseline after its
    limiters (or pools) were gone, so the counts of a new one of that name were swallowed
    until they passed the old one's totals."""
    from prometheus_client import multiprocess

    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    subprocess.run(
        [sys.executable, "-W", "ignore", "-c", _RECREATED], env=env, timeout=60, check=True
    )
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(tmp_path))  # type: ignore[no-untyped-call]
    labels = {"aiolease_limiter_name": "tenant"}
    value = registry.get_sample_value
    assert (
        value("aiolease_limiter_requests_total", {**labels, "aiolease_limiter_result": "acquired"})
        == 2
    )
    assert (
        value("aiolease_limiter_requests_total", {**labels, "aiolease_limiter_result": "rejected"})
        == 3
    )


_UNUSED = textwrap.dedent(
    """
    import asyncio
    from aiolease import ConcurrencyLimiter, Pool, prometheus
    from aiolease.testing import FakeManager

    async def main():
        collector = prometheus.Collector()
        pool = Pool(FakeManager(), name="never-used")
        limiter = ConcurrencyLimiter(1, name="never-used")
        await asyncio.sleep(0)  # the state is written
        collector.close()

    asyncio.run(main())
    """
)


def test_multiprocess_a_pool_or_limiter_never_used_writes_no_histogram_series(
    tmp_path: Path,
) -> None:
    """Multiprocess mode: a recorder made its histogram series at once, and a series once
    in the shared directory stays there: one per pool or limiter made, used or not."""
    from prometheus_client import multiprocess

    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-W", "ignore", "-c", _UNUSED], env=env, timeout=60, check=True)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(tmp_path))  # type: ignore[no-untyped-call]
    value = registry.get_sample_value
    assert value("db_client_connection_max", {POOL: "never-used"}) == 10  # its state: yes
    assert value("db_client_connection_wait_time_seconds_count", {POOL: "never-used"}) is None
    assert value("db_client_connection_use_time_seconds_count", {POOL: "never-used"}) is None
    created = {POOL: "never-used", "error_type": ""}
    assert value("db_client_connection_create_time_seconds_count", created) is None
    queued = {"aiolease_limiter_name": "never-used"}
    assert value("aiolease_limiter_request_time_in_queue_seconds_count", queued) is None


_LOOPS = textwrap.dedent(
    """
    import asyncio
    from prometheus_client import CollectorRegistry, multiprocess
    from aiolease import ConcurrencyLimiter, Pool, prometheus
    from aiolease.testing import FakeManager

    collector = prometheus.Collector(refresh_interval=0.05)

    async def start():  # a first loop, as a worker's start-up may run, with a pool of its own
        async with Pool(FakeManager(), name="start-up") as pool, pool.acquire():
            pass

    async def serve():  # the worker's loop from then on
        limiter = ConcurrencyLimiter(2, name="loops")  # made here: the state is written soon
        await asyncio.sleep(0)
        async with limiter.acquire():  # a slot taken at once is no event: the refresh writes it
            await asyncio.sleep(0.5)
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            labels = {"aiolease_limiter_name": "loops"}
            print(registry.get_sample_value("aiolease_limiter_active_leases", labels))

    asyncio.run(start())
    asyncio.run(serve())
    """
)


def test_the_periodic_refresh_follows_the_worker_to_its_next_loop(tmp_path: Path) -> None:
    """Multiprocess mode: the periodic refresh armed on a loop that ended was never armed
    again, so in the worker's next loop what changed without an event (a limiter slot
    taken at once) was never written."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", _LOOPS],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.split() == ["1.0"], done.stdout + done.stderr


def test_a_value_on_a_bound_counts_in_that_bucket() -> None:
    from aiolease.prometheus import _LocalHistogram

    histogram = _LocalHistogram("x_seconds", "x", ["p"])
    for value in (0.001, 0.0011, 10.0, 11.0):
        histogram.observe(("a",), value)
    (family,) = histogram.collect({"a"})
    buckets = {s.labels["le"]: s.value for s in family.samples if s.name == "x_seconds_bucket"}
    assert buckets["0.001"] == 1  # le: 0.001 <= 0.001
    assert buckets["0.005"] == 2
    assert buckets["10.0"] == 3
    assert buckets["+Inf"] == 4
    (total,) = (s.value for s in family.samples if s.name == "x_seconds_sum")
    assert total == pytest.approx(21.0021)


_APP = textwrap.dedent(
    """
    import asyncio, os
    from prometheus_client import CollectorRegistry, generate_latest, multiprocess
    from aiolease import Pool, prometheus
    from aiolease.testing import FakeManager

    state = {}

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    state["collector"] = prometheus.Collector()  # one per worker, unregistered
                    state["pool"] = Pool(FakeManager(), max_size=3, name="web")
                    await state["pool"].open()
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await state["pool"].aclose()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["path"] == "/metrics":
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            body = generate_latest(registry)
        else:
            async with state["pool"].acquire():
                await asyncio.sleep(0.001)
            body = str(os.getpid()).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})
    """
)


@pytest.mark.slow
def test_uvicorn_workers_share_their_series(tmp_path: Path) -> None:
    """Two uvicorn workers, each with its own pool and collector: whichever serves the
    scrape, the series add up both workers' pools (docs/observability.md's recipe)."""
    import socket
    import time

    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    (tmp_path / "app.py").write_text(_APP)
    shared = tmp_path / "multiproc"
    shared.mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(shared), "PYTHONWARNINGS": "ignore"}
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app:app", "--workers", "2", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}"

        def samples() -> dict[tuple[str, str], float]:
            # prometheus_client's multiprocess reader can fail while another worker is
            # creating its files (a scrape answered 500 under load); a scraper would retry.
            for _ in range(20):
                response = httpx.get(f"{url}/metrics", timeout=5)
                if response.status_code == 200:
                    break
                time.sleep(0.1)
            response.raise_for_status()
            text = response.text
            return {
                (s.name, s.labels.get("db_client_connection_state", "")): s.value
                for family in text_string_to_metric_families(text)
                for s in family.samples
                if s.labels.get(POOL) == "web"
            }

        with httpx.Client(timeout=5) as client:
            give_up = time.monotonic() + 30
            while True:  # until both workers have written their pool's state
                try:
                    if samples().get(("db_client_connection_max", "")) == 6:
                        break
                except httpx.TransportError:
                    pass  # not listening yet
                assert server.poll() is None, "uvicorn exited"
                assert time.monotonic() < give_up, "the two workers' pools never both counted"
                time.sleep(0.1)
            pids = {client.get(f"{url}/work").text for _ in range(40)}
        got = samples()
        assert got[("db_client_connection_wait_time_seconds_count", "")] == 40
        assert got[("db_client_connection_use_time_seconds_count", "")] == 40
        assert got[("db_client_connection_count", "used")] == 0
        assert got[("db_client_connection_idle_min", "")] == 0
        assert pids  # the kernel picks the serving worker; the sums hold either way
    finally:
        server.terminate()
        server.wait(timeout=30)
        if server.stderr is not None:
            server.stderr.close()


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), 10**400, "1", True])
def test_bad_refresh_interval_is_refused_naming_it(bad: object) -> None:
    # an int beyond any float (10**400) is out of range, not an OverflowError
    error = TypeError if isinstance(bad, str | bool) else ValueError
    with pytest.raises(error, match=r"refresh_interval must be a (finite|real) number"):
        prometheus.Collector(refresh_interval=bad)  # type: ignore[arg-type]


def test_a_pool_or_limiter_never_used_makes_no_histogram_series(
    registry: CollectorRegistry,
) -> None:
    """A recorder made the pool's and limiter's histogram series at once (count 0), so a
    service making pools or limiters with generated names exported series for every one,
    used or not."""
    value = registry.get_sample_value
    pool = Pool(FakeManager(), name="never-used")
    limiter = aiolease.ConcurrencyLimiter(1, name="never-used")
    assert value("db_client_connection_max", {POOL: "never-used"}) == 10  # its state: yes
    assert value("db_client_connection_wait_time_seconds_count", {POOL: "never-used"}) is None
    assert value("db_client_connection_use_time_seconds_count", {POOL: "never-used"}) is None
    created = {POOL: "never-used", "error_type": ""}
    assert value("db_client_connection_create_time_seconds_count", created) is None
    queued = {"aiolease_limiter_name": "never-used"}
    assert value("aiolease_limiter_request_time_in_queue_seconds_count", queued) is None
    del pool, limiter


async def _use_pool_and_limiter(name: str) -> None:
    """A pool leased once (one creation) and a limiter with one request admitted after
    queueing, both gone at the end."""
    async with Pool(FakeManager(), name=name) as pool, pool.acquire():
        pass
    limiter = aiolease.ConcurrencyLimiter(1, name=name)
    held = await limiter.acquire()
    waiter = asyncio.ensure_future(limiter.acquire())
    await asyncio.sleep(0)
    held.release()
    (await waiter).release()
    gone: list[weakref.ref[object]] = [weakref.ref(pool), weakref.ref(limiter)]
    del pool, limiter, held, waiter
    await asyncio.sleep(0)  # the waiter task's last callbacks
    gc.collect()
    assert [ref() for ref in gone] == [None, None]


async def test_the_histograms_of_a_name_no_pool_or_limiter_has_end_after_a_scrape_shows_them(
    registry: CollectorRegistry,
) -> None:
    """The histogram series of a pool or limiter stayed in the collector for good after the
    object was gone: one pool per tenant or per test grew the exposition without bound.
    Now the first scrape after the object is gone still shows its final counts; the next
    one (nothing new in them) no longer has them."""

    def scrape() -> dict[tuple[str, str], float]:
        """One scrape: (sample, pool or limiter name) -> value, for tenant-1's series."""
        return {
            (s.name, s.labels.get(POOL) or s.labels.get("aiolease_limiter_name", "")): s.value
            for family in registry.collect()
            for s in family.samples
            if "tenant-1" in s.labels.values() and "le" not in s.labels
        }

    await _use_pool_and_limiter("tenant-1")
    first = scrape()
    assert first[("db_client_connection_wait_time_seconds_count", "tenant-1")] == 1
    assert first[("db_client_connection_use_time_seconds_count", "tenant-1")] == 1
    assert first[("db_client_connection_create_time_seconds_count", "tenant-1")] == 1
    assert first[("aiolease_limiter_request_time_in_queue_seconds_count", "tenant-1")] == 1
    assert scrape() == {}
    assert "tenant-1" not in generate_latest(registry).decode()
    # the name used again: its series start again from the new objects
    await _use_pool_and_limiter("tenant-1")
    again = scrape()
    assert again[("db_client_connection_wait_time_seconds_count", "tenant-1")] == 1
    assert again[("aiolease_limiter_request_time_in_queue_seconds_count", "tenant-1")] == 1


async def test_a_name_shared_by_a_pool_made_again_keeps_its_histograms(
    registry: CollectorRegistry,
) -> None:
    """Pools that share a name are one series: while one of them lives, the histograms
    keep the counts of those gone (a counter that went down would read as a reset)."""
    value = registry.get_sample_value
    async with Pool(FakeManager(), name="remade") as old, old.acquire():
        pass
    successor = Pool(FakeManager(), name="remade")
    del old
    gc.collect()
    for _ in range(3):  # scrapes with nothing new: the live successor keeps the series
        assert value("db_client_connection_wait_time_seconds_count", {POOL: "remade"}) == 1
    async with successor, successor.acquire():
        pass
    assert value("db_client_connection_wait_time_seconds_count", {POOL: "remade"}) == 2
