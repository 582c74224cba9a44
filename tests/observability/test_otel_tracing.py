"""aiolease.otel with tracing=True: the spans, read from the SDK's in-memory exporter."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from metrics_helpers import traced
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind, StatusCode

import aiolease
from aiolease import Pool, PoolTimeout, otel
from aiolease.testing import FakeConnection, FakeManager

pytestmark = pytest.mark.timeout(30)

POOL = "db.client.connection.pool.name"
OUTCOME = "aiolease.transaction.outcome"


@pytest.mark.aiolease_virtual_time
async def test_a_waited_acquire_is_a_span_one_served_on_the_spot_is_not() -> None:
    with traced() as t:
        async with Pool(FakeManager(), max_size=1, name="orders") as pool:
            held = await pool.acquire()  # served on the spot
            waiter = asyncio.ensure_future(pool.acquire())
            await asyncio.sleep(0.25)
            await pool.release(held)
            await pool.release(await waiter)  # waited 0.25 s (virtual)
    span = t.one("aiolease.pool.acquire")
    assert span.kind is SpanKind.INTERNAL
    assert dict(span.attributes or {}) == {POOL: "orders"}
    assert span.status.status_code is StatusCode.UNSET
    assert span.start_time is not None
    assert span.end_time is not None
    assert span.end_time - span.start_time == pytest.approx(0.25e9, rel=1e-6)


@pytest.mark.aiolease_virtual_time
async def test_a_failed_wait_is_an_error_span() -> None:
    with traced() as t:
        pool = Pool(FakeManager(), max_size=1, name="orders")
        async with pool, pool.acquire():  # held by this task; other tasks wait
            with pytest.raises(PoolTimeout):
                await asyncio.ensure_future(pool.acquire(timeout=0.5))
            waiter = asyncio.ensure_future(pool.acquire())
            await asyncio.sleep(0.1)
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
    timed_out, cancelled = t.spans("aiolease.pool.acquire")
    assert timed_out.status.status_code is StatusCode.ERROR
    assert (timed_out.attributes or {})["error.type"] == "aiolease._errors.PoolTimeout"
    assert timed_out.end_time is not None
    assert timed_out.start_time is not None
    assert timed_out.end_time - timed_out.start_time == pytest.approx(0.5e9, rel=1e-6)
    assert cancelled.status.status_code is StatusCode.ERROR
    assert (cancelled.attributes or {})["error.type"] == "asyncio.exceptions.CancelledError"


@pytest.mark.aiolease_virtual_time
async def test_the_check_of_an_idle_connection_counts_as_the_acquires_wait() -> None:
    """docs/observability.md: an acquire served on the spot makes no span; one that waited for
    a creation, or for the check of an idle connection, makes one spanning that wait."""
    fm = FakeManager()
    with traced() as t:
        async with Pool(fm, max_size=1, name="checked") as pool:
            async with pool.acquire():  # created on the spot: no time passes
                pass
            fm.delay("check", 2.0)
            async with pool.acquire():  # the idle connection's check takes 2 s
                pass
    (checked,) = t.spans("aiolease.pool.acquire")
    assert checked.end_time is not None
    assert checked.start_time is not None
    assert checked.end_time - checked.start_time == pytest.approx(2.0e9, rel=1e-6)
    assert checked.status.status_code is StatusCode.UNSET


@pytest.mark.aiolease_virtual_time
@pytest.mark.parametrize("how", ["timeout", "cancel", "close"])
async def test_a_wait_that_fails_in_the_check_of_an_idle_connection_is_an_error_span(
    how: str,
) -> None:
    """docs/observability.md: the check of an idle connection counts as the acquire's wait,
    and a timed-out or cancelled wait has the error status; a wait that failed during the
    check (it outlasted the acquire timeout, its task was cancelled, the pool closed) made
    no span at all."""
    fm = FakeManager()
    with traced() as t:
        pool = Pool(fm, max_size=1, name="checked")
        async with pool:
            async with pool.acquire():  # created on the spot: no time passes, no span
                pass
            fm.delay("check", 2.0)
            acquire = asyncio.ensure_future(pool.acquire(timeout=0.5 if how == "timeout" else None))
            await asyncio.sleep(0.25)  # in the idle connection's check
            if how == "cancel":
                acquire.cancel()
            elif how == "close":
                await pool.aclose(timeout=0)  # interrupts the check
            with pytest.raises(BaseException) as info:
                await acquire
            expected = {"timeout": PoolTimeout, "cancel": asyncio.CancelledError}
            assert isinstance(info.value, expected.get(how, aiolease.PoolClosed)), info.value
    span = t.one("aiolease.pool.acquire")
    assert span.status.status_code is StatusCode.ERROR
    assert span.end_time is not None
    assert span.start_time is not None
    waited = 0.5 if how == "timeout" else 0.25
    assert span.end_time - span.start_time == pytest.approx(waited * 1e9, rel=1e-6)


async def test_transaction_span_is_current_and_carries_the_outcome() -> None:
    conn = FakeConnection()
    with traced() as t:
        async with aiolease.atomic(conn):
            with t.tracer.start_as_current_span("inside"):
                await conn.execute("INSERT 1")
            async with aiolease.atomic(conn):  # a savepoint: no span of its own
                pass
        with pytest.raises(ZeroDivisionError):
            async with aiolease.atomic(conn):
                1 / 0  # noqa: B018
        async with aiolease.atomic(conn) as tx:
            tx.set_rollback(True)
    committed, failed, rolled_back = t.spans("aiolease.transaction")
    inside = t.one("inside")
    assert inside.parent is not None
    assert inside.parent.span_id == committed.context.span_id
    assert dict(committed.attributes or {}) == {"db.system": "fake", OUTCOME: "commit"}
    assert committed.status.status_code is StatusCode.UNSET
    attrs = dict(failed.attributes or {})
    assert attrs[OUTCOME] == "rollback"
    assert attrs["error.type"] == "ZeroDivisionError"
    assert failed.status.status_code is StatusCode.ERROR
    assert dict(rolled_back.attributes or {})[OUTCOME] == "rollback"
    assert rolled_back.status.status_code is StatusCode.UNSET
    # Every span ended and none stays current after the blocks.
    assert not trace.get_current_span().get_span_context().is_valid


async def test_unknown_commit_and_failed_begin() -> None:
    conn = FakeConnection()
    conn.drop_on_commit(1)
    with traced() as t:
        with pytest.raises(aiolease.CommitUnknown):
            async with aiolease.atomic(conn):
                pass
        other = FakeConnection()
        other.script("BEGIN", error=ConnectionResetError("gone"))
        with pytest.raises(ConnectionResetError):
            async with aiolease.atomic(other):
                pass  # pragma: no cover - BEGIN fails
    unknown, no_begin = t.spans("aiolease.transaction")
    assert dict(unknown.attributes or {})[OUTCOME] == "unknown"
    assert (unknown.attributes or {})["error.type"] == "aiolease._errors.CommitUnknown"
    assert OUTCOME not in (no_begin.attributes or {})
    assert (no_begin.attributes or {})["error.type"] == "ConnectionResetError"
    assert not trace.get_current_span().get_span_context().is_valid


async def test_run_transaction_span_has_a_retry_event_and_one_child_per_attempt() -> None:
    conn = FakeConnection()
    conn.fail_commit(1)  # a serialization failure at the first COMMIT: retried

    async def work(c: FakeConnection) -> int:
        await c.execute("UPDATE")
        return 7

    with traced() as t:
        assert await aiolease.run_transaction(conn, work, backoff=0.001) == 7
    run = t.one("aiolease.run_transaction")
    assert dict(run.attributes or {}) == {OUTCOME: "commit"}
    (event,) = run.events
    assert event.name == "aiolease.transaction.retry"
    attrs: dict[str, Any] = dict(event.attributes or {})
    assert attrs["aiolease.transaction.attempt"] == 1
    assert attrs["error.type"] == "aiolease.testing._fake_connection.FakeDatabaseError"
    assert 0.0 <= attrs["aiolease.transaction.backoff"] <= 0.001
    attempts = t.spans("aiolease.transaction")
    assert [dict(s.attributes or {})[OUTCOME] for s in attempts] == ["rollback", "commit"]
    assert all(s.parent is not None and s.parent.span_id == run.context.span_id for s in attempts)


async def test_sqlite_pool_atomic_span(tmp_path: Path) -> None:
    from aiolease import sqlite

    with traced() as t:
        pool = sqlite.create_pool(str(tmp_path / "t.db"), max_size=1)
        async with pool, pool.atomic() as tx:
            await tx.connection.execute("CREATE TABLE t (x)")
    span = t.one("aiolease.transaction")
    assert dict(span.attributes or {}) == {"db.system": "sqlite", OUTCOME: "commit"}


async def test_metrics_only_makes_no_span_and_uninstrument_stops_tracing() -> None:
    conn = FakeConnection()
    with traced(tracing=False) as t:
        async with aiolease.atomic(conn):
            pass
    assert t.spans() == []
    with traced() as t:
        pass
    async with aiolease.atomic(conn):  # after uninstrument()
        pass
    assert t.spans() == []


def test_bad_tracing_arguments_are_refused_at_the_call() -> None:
    with pytest.raises(TypeError, match="tracing must be a bool, got 'yes'"):
        otel.instrument(tracing="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="only used with tracing=True"):
        otel.instrument(tracer_provider=TracerProvider())


@pytest.mark.parametrize("kwargs", [{"tracing": True, "tracer_provider": "x"}, {}])
def test_a_provider_that_is_not_one_is_refused_and_instrumentation_stays(
    kwargs: dict[str, Any],
) -> None:
    # Found by a new user's probe: instrument("x") (or a Meter passed for its provider)
    # raised AttributeError "'str' object has no attribute 'get_meter'", after it had
    # already switched the current instrumentation off.
    meter_provider: Any = MeterProvider(metric_readers=[InMemoryMetricReader()]) if kwargs else "x"
    words = "tracer_provider must be" if kwargs else "meter_provider must be"
    with traced() as t:
        with pytest.raises(TypeError, match=words + r" .*, got str 'x'"):
            otel.instrument(meter_provider, **kwargs)
        async_conn = FakeConnection()

        async def body() -> None:
            async with aiolease.atomic(async_conn):
                pass

        asyncio.run(body())
        assert [s.name for s in t.spans()] == ["aiolease.transaction"]  # still instrumented


def test_the_docs_tracing_snippet_runs() -> None:
    import re

    page = Path(__file__).resolve().parents[2] / "docs" / "observability.md"
    (block,) = [
        b for b in re.findall(r"```python\n(.*?)```", page.read_text(), re.S) if "tracing=" in b
    ]
    try:
        exec(compile(block, "observability.md", "exec"), {})
        from aiolease import _metrics

        assert _metrics.tracer is not None
    finally:
        otel.uninstrument()
    assert _metrics.tracer is None
