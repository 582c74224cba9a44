"""Driver pools (asyncpg, psycopg): what a lease made (a cursor, a prepared statement, a
transaction object) works during the lease and refuses every use after it."""

from __future__ import annotations

import asyncio
import gc
import uuid
import weakref
from typing import Any

import pytest

import aiolease.asyncpg
import aiolease.psycopg
from aiolease import ResourceReleased
from aiolease._lease import _relays, unwrap


def channel(prefix: str) -> str:
    """A NOTIFY channel of the test's own: a channel is database-wide, and another run's
    NOTIFY on a shared name would reach this test's listeners."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


async def test_asyncpg_objects_made_by_a_lease_work_during_it(pg_dsn: str) -> None:
    async with aiolease.asyncpg.create_pool(pg_dsn, max_size=1) as pool, pool.acquire() as conn:
        stmt = await conn.prepare("SELECT $1::int * 2")
        assert await stmt.fetchval(21) == 42
        assert [r[0] for r in await stmt.fetch(1)] == [2]
        async with conn.transaction():
            series = "SELECT generate_series(1, 5)"
            assert [r[0] async for r in conn.cursor(series)] == [1, 2, 3, 4, 5]
            cursor = await conn.cursor(series)
            assert [r[0] for r in await cursor.fetch(2)] == [1, 2]
            row = await cursor.fetchrow()
            assert row is not None
            assert row[0] == 3
            numbered = await conn.prepare("SELECT generate_series(1, $1::int)")
            assert [r[0] async for r in numbered.cursor(3)] == [1, 2, 3]
        tr = conn.transaction()
        await tr.start()
        await conn.execute("CREATE TEMP TABLE guarded_tmp (x int)")
        await tr.rollback()
        assert await conn.fetchval("SELECT to_regclass('pg_temp.guarded_tmp')") is None


async def test_asyncpg_objects_made_by_a_lease_refuse_use_after_it(pg_dsn: str) -> None:
    async with aiolease.asyncpg.create_pool(pg_dsn, max_size=1) as pool:
        async with pool.acquire() as kept:
            intrude = await kept.prepare("SELECT set_config('application_name', 'intruder', false)")
            tr = kept.transaction()
            factory = kept.cursor("SELECT 1")
            async with kept.transaction():
                cursor = await kept.cursor("SELECT generate_series(1, 3)")
        async with pool.acquire() as current:  # the same connection, another holder
            await current.execute("SET application_name = 'holder2'")
            with pytest.raises(ResourceReleased, match=r"PreparedStatement\.fetchval\(\)"):
                await intrude.fetchval()
            with pytest.raises(ResourceReleased, match=r"Transaction\.start\(\)"):
                await tr.start()
            with pytest.raises(ResourceReleased, match=r"CursorFactory \(await\)"):
                await factory
            with pytest.raises(ResourceReleased, match=r"CursorFactory \(async for\)"):
                async for _ in factory:
                    pass
            with pytest.raises(ResourceReleased, match=r"Cursor\.fetch\(\)"):
                await cursor.fetch(1)
            assert await current.fetchval("SHOW application_name") == "holder2"
            assert not current.is_in_transaction()


async def test_psycopg_objects_made_by_a_lease_work_during_it(pg_dsn: str) -> None:
    async with aiolease.psycopg.create_pool(pg_dsn, max_size=1) as pool, pool.acquire() as conn:
        cur = conn.cursor()
        assert await cur.execute("SELECT %s::int", (5,)) is cur
        assert await cur.fetchone() == (5,)
        assert cur.connection is conn  # the lease, not the driver's connection
        async with conn.cursor() as cur2:
            await cur2.execute("SELECT generate_series(1, 3)")
            assert [r[0] async for r in cur2] == [1, 2, 3]
        executed = await conn.execute("SELECT 'a' UNION ALL SELECT 'b'")
        assert await executed.fetchall() == [("a",), ("b",)]
        async with conn.transaction() as tx:
            assert tx.connection is conn
            async with conn.cursor("guarded_named") as named:
                await named.execute("SELECT generate_series(1, 4)")
                assert await named.fetchmany(3) == [(1,), (2,), (3,)]
            async with cur.copy("COPY (SELECT 7) TO STDOUT") as copy:
                assert [bytes(block) async for block in copy] == [b"7\n"]
            async with conn.transaction(force_rollback=True):
                await conn.execute("CREATE TEMP TABLE guarded_tmp (x int)")
        cur = await conn.execute("SELECT to_regclass('pg_temp.guarded_tmp')")
        assert await cur.fetchone() == (None,)
        async with conn.pipeline() as pipeline:
            piped = await conn.execute("SELECT 8")
            await pipeline.sync()
            assert await piped.fetchone() == (8,)
        assert [n async for n in conn.notifies(timeout=0.01)] == []
        streamed = conn.cursor().stream("SELECT generate_series(1, 3)")
        assert [r[0] async for r in streamed] == [1, 2, 3]


async def test_psycopg_objects_made_by_a_lease_refuse_use_after_it(pg_dsn: str) -> None:
    async with aiolease.psycopg.create_pool(pg_dsn, max_size=1) as pool:
        async with pool.acquire() as kept:
            made = kept.cursor()
            executed = await kept.execute("SELECT 1")
            transaction = kept.transaction()
            pending = kept.execute("SET application_name = 'intruder'")  # made, not awaited
            pipeline = kept.pipeline()
            notifies = kept.notifies(timeout=0.01)
            stream = kept.cursor().stream(
                "SELECT set_config('application_name', 'intruder', false)"
            )
        async with pool.acquire() as current:  # the same connection, another holder
            await current.execute("SET application_name = 'holder2'")
            intrude = "SET application_name = 'intruder'"
            with pytest.raises(ResourceReleased, match=r"^execute\(\) on"):
                await pending
            with pytest.raises(ResourceReleased, match=r"AsyncCursor\.execute\(\)"):
                await made.execute(intrude)
            with pytest.raises(ResourceReleased, match=r"AsyncCursor\.execute\(\)"):
                await executed.execute(intrude)
            with pytest.raises(ResourceReleased, match=r"AsyncCursor\.fetchone\(\)"):
                await executed.fetchone()
            with pytest.raises(ResourceReleased, match=r"\(async with\)"):
                async with transaction:
                    await current.execute(intrude)  # not reached
            with pytest.raises(ResourceReleased, match=r"AsyncCursor\.connection"):
                _ = made.connection
            with pytest.raises(ResourceReleased, match=r"\(async with\)"):
                async with pipeline:
                    pass  # not reached: the pipeline would be the next holder's
            with pytest.raises(ResourceReleased, match=r"\(async for\)"):
                async for _ in notifies:
                    pass  # not reached: waiting here would hold the connection's lock
            with pytest.raises(ResourceReleased, match=r"\(anext\)"):
                await anext(notifies)
            with pytest.raises(ResourceReleased, match=r"\(async for\)"):
                async for _ in stream:
                    pass  # not reached: the statement runs when the stream is iterated
            cur = await current.execute("SHOW application_name")
            assert await cur.fetchone() == ("holder2",)
            assert current.info.transaction_status.name == "IDLE"


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_a_block_the_lease_ended_inside_exits_without_running(
    pg_dsn: str, driver: str
) -> None:
    """The lease given back inside ``async with conn.transaction()``: the exit sends nothing
    (the release ended the transaction: asyncpg's rolled back, psycopg's connection
    discarded). The block's own error propagates unchanged; a block that ended without one
    gets ResourceReleased, never a silent success (nothing was committed)."""
    module = getattr(aiolease, driver)
    async with module.create_pool(pg_dsn, max_size=1) as pool:

        async def give_back_inside_the_block(error: Exception | None) -> None:
            conn = await pool.acquire()
            async with conn.transaction():
                await pool.release(conn)
                if error is not None:
                    raise error

        with pytest.raises(LookupError, match="the block's own"):
            await give_back_inside_the_block(LookupError("the block's own error"))
        with pytest.raises(ResourceReleased, match=r"\(end of async with\)"):
            await give_back_inside_the_block(None)
        async with pool.acquire() as current:
            if driver == "asyncpg":
                assert not current.is_in_transaction()
            else:
                assert current.info.transaction_status.name == "IDLE"


async def test_psycopg_connection_given_back_inside_a_pipeline_block_is_discarded(
    pg_dsn: str,
) -> None:
    """Still in pipeline mode at release (nothing sent yet, so it looks idle): the next
    holder must not get it in pipeline mode, and the block's exit sends nothing (it says
    the lease ended: a pipeline's outcome is known only at its exit)."""
    async with aiolease.psycopg.create_pool(pg_dsn, max_size=1) as pool:
        conn = await pool.acquire()

        async def give_back_inside_the_pipeline() -> None:
            async with conn.pipeline():
                await pool.release(conn)

        with pytest.raises(ResourceReleased, match=r"\(end of async with\)"):
            await give_back_inside_the_pipeline()
        async with pool.acquire() as current:
            assert current.pgconn.pipeline_status == 0
            cur = await current.execute("SELECT 1")
            assert await cur.fetchone() == (1,)
        assert pool.statistics().discarded == 1


async def test_asyncpg_listener_callbacks_get_the_lease_not_the_connection(pg_dsn: str) -> None:
    # Found by asyncpg's own test_listeners run on a lease: the callbacks got the driver's
    # connection, so one kept past the lease (reset="transaction" keeps listeners) ran
    # statements on the next holder's lease.
    got: list[Any] = []
    notified = asyncio.Event()

    async def on_notify(conn: Any, pid: int, channel: str, payload: object) -> None:
        got.append(conn)
        notified.set()

    def on_log(conn: Any, message: object) -> None:
        got.append(conn)

    relay = channel("aiolease_relay")
    async with aiolease.asyncpg.create_pool(pg_dsn, max_size=1) as pool:
        async with pool.acquire() as kept:
            await kept.add_listener(relay, on_notify)
            kept.add_log_listener(on_log)
            await kept.execute("DO $$ BEGIN RAISE NOTICE 'hello'; END $$")
            await kept.execute(f"NOTIFY {relay}")
            async with asyncio.timeout(10):
                await notified.wait()
            assert got == [kept, kept]
        async with pool.acquire() as current:  # the same connection, another holder
            notified.clear()
            await current.execute(f"NOTIFY {relay}")
            async with asyncio.timeout(10):
                await notified.wait()
            with pytest.raises(ResourceReleased, match=r"fetchval\(\)"):
                await got[-1].fetchval("SELECT 1")
            # Removing takes the callback that was added (in any later lease).
            await current.remove_listener(relay, on_notify)
            current.remove_log_listener(on_log)
            del got[:]
            await current.execute("DO $$ BEGIN RAISE NOTICE 'hello'; END $$")
            await current.execute(f"NOTIFY {relay}")
            await current.fetchval("SELECT 1")
            await asyncio.sleep(0.05)
            assert got == []


async def test_psycopg_attributes_that_are_callables_are_the_drivers_own(pg_dsn: str) -> None:
    # Found by psycopg's own test_cursor_common run on a lease: a row factory read back
    # from the lease or a cursor was a checking wrapper, not the function set, and a
    # guarded cursor could not be weakly referenced.
    from psycopg import rows

    async with aiolease.psycopg.create_pool(pg_dsn, max_size=1) as pool:
        async with pool.acquire() as conn:
            conn.row_factory = rows.dict_row
            assert conn.row_factory is rows.dict_row
            cur = conn.cursor(row_factory=rows.namedtuple_row)
            assert cur.row_factory is rows.namedtuple_row
            ref = weakref.ref(cur)
            assert ref() is cur
            await cur.execute("SELECT 1 AS a")
            row = await cur.fetchone()
            assert row is not None
            assert row._asdict() == {"a": 1}
        with pytest.raises(ResourceReleased, match=r"AsyncCursor\.row_factory"):
            cur.row_factory  # noqa: B018


async def test_asyncpg_a_connection_a_listener_was_added_to_is_freed_once_dropped(
    pg_dsn: str,
) -> None:
    # The relay of a listener callback must not keep its connection alive (a pooled
    # connection closed by the pool would otherwise stay in memory for good).
    async def on_notify(conn: Any, pid: int, channel: str, payload: object) -> None:
        pass

    async with aiolease.asyncpg.create_pool(pg_dsn, max_size=1) as pool, pool.acquire() as conn:
        await conn.add_listener(channel("aiolease_relay"), on_notify)
        conn.add_log_listener(lambda conn, message: None)
        ref = weakref.ref(unwrap(conn))
    del conn
    gc.collect()
    assert ref() is None


async def test_asyncpg_a_listener_added_again_is_called_once_with_the_latest_lease(
    pg_dsn: str,
) -> None:
    # asyncpg keeps one registration per callback: adding it again changes nothing, and
    # the lease that added it last is the one it gets.
    got: list[Any] = []
    notified = asyncio.Event()

    def on_notify(conn: Any, pid: int, channel: str, payload: object) -> None:
        got.append(conn)
        notified.set()

    again = channel("aiolease_again")
    async with aiolease.asyncpg.create_pool(pg_dsn, max_size=1) as pool:
        async with pool.acquire() as first:
            await first.add_listener(again, on_notify)
            await first.add_listener(again, on_notify)
        async with pool.acquire() as second:
            await second.add_listener(again, on_notify)
            await second.execute(f"NOTIFY {again}")
            async with asyncio.timeout(10):
                await notified.wait()
            await second.fetchval("SELECT 1")
            await asyncio.sleep(0.05)
            assert got == [second]
            await second.remove_listener(again, on_notify)


async def test_asyncpg_a_session_reset_forgets_the_relays_of_the_listeners_it_removed(
    pg_dsn: str,
) -> None:
    # asyncpg's reset removes every listener and log listener; their relays must go too, or
    # a connection whose leases each add a new callback (a closure per request) keeps one
    # more relay per lease for its whole life.
    reset = channel("aiolease_relay_reset")
    async with aiolease.asyncpg.create_pool(pg_dsn, max_size=1, reset="session") as pool:
        for _ in range(20):
            async with pool.acquire() as conn:
                await conn.add_listener(reset, lambda *args: None)
                conn.add_log_listener(lambda *args: None)
                conn.add_termination_listener(on_termination)
                raw = unwrap(conn)
        async with pool.acquire() as conn:
            assert unwrap(conn) is raw
            # The termination listener survives the reset (asyncpg keeps it): one relay.
            assert [key[0] for key in _relays.get(raw, {})] == ["termination_listener"]


def on_termination(conn: Any) -> None:
    pass
