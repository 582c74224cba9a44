"""Pool benchmark (``make bench-pool``): aiolease.Pool against the anchors, in one process.

(a) Mechanics, no I/O. A no-op resource; one operation is acquire +
    ``await asyncio.sleep(0)`` + release. 1 task, and 100 tasks over 10
    resources. Floor: ``asyncio.Queue`` get/put. Anchors: asyncio-connection-pool,
    generic-connection-pool. Target (issue 15): aiolease >= 0.7 x floor in both
    columns.

(b) PostgreSQL. One operation is acquire + ``SELECT 1`` + release. 1 task,
    and 100 tasks over 10 connections. Floor: 10 raw asyncpg connections in a
    bare ``asyncio.Queue``. Anchors: asyncpg.Pool, psycopg_pool (autocommit).
    Ours with the default ``reset="transaction"`` and with ``reset="session"``.
    Targets (issue 15): default reset >= 0.85 x floor in both columns, and
    >= 2.0 x asyncpg.Pool with 100 tasks.

Both parts also run a reference that is not a target: the same items handed
out by a bare FIFO hand-off (``FifoQueue``: the oldest waiter gets a released
item, as the pool's contract requires, and nothing else). ``asyncio.Queue``
lets the task that puts an item back take it again at once (barging), so under
contention its tasks never switch to hand an item over; the reference shows
what fairness alone costs against that floor.

Every pool is used with its default options except the sizes. Rounds
interleave the contenders (rotating their order) and the table shows medians
over the rounds, with the spread ``(max - min) / median`` so a noisy run is
visible. A ratio is the median over the rounds of the per-round ratio: two
contenders measured in the same round, moments apart, share that moment's
load, so the machine's drift cancels out of each ratio. The target's two
contenders (aiolease with its defaults and the floor) run back to back in every
round, each first in turn, so that their ratio pairs the closest cells.

(c) Metrics overhead (``--only metrics``, not part of ``all``): the mechanics
    and the PostgreSQL operation of (a) and (b) with aiolease instrumented, by
    ``aiolease.otel`` (the OpenTelemetry SDK, a reader collecting every second
    into an exporter that drops everything) and by ``aiolease.prometheus``,
    against the same pool not instrumented. Target: instrumented >= 0.95 x not
    instrumented for PostgreSQL with 100 tasks.

Usage::

    python bench/pool.py [--duration 0.8] [--repeats 11] [--warmup 0.2]
                         [--only all|mech|pg|metrics] [--dsn postgresql://...]
                         [--clock wall|cpu] [--loop asyncio|uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, Generic, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    CLOCKS,
    Column,
    Contender,
    Results,
    Stop,
    Worker,
    environment,
    fmt_ops,
    run_rounds,
    with_metrics,
)

import aiolease

SIZE = 10
COLUMNS = (Column("1 task", 1), Column(f"100 tasks / {SIZE}", 100))
ALL_COLUMNS = [c.title for c in COLUMNS]
OURS_PG = 'aiolease reset="transaction"'  # the PostgreSQL targets' contender
DEFAULT_DSN = os.environ.get("AIOLEASE_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")

R = TypeVar("R")

FLOOR, OURS, ANCHOR, REFERENCE = "floor", "ours", "anchor", "reference"


class FifoQueue(Generic[R]):
    """The least a fair pool does, as a reference beside the floor: a released item goes
    to the oldest waiter (no barging), as the contract asks of aiolease.Pool. Nothing
    else: no timeouts, statistics, checks, or safety when a waiter is cancelled. Free
    items go out in the floor's order (the one back longest first), so that fairness
    is the only difference between the two."""

    __slots__ = ("_free", "_waiters")

    def __init__(self, items: Iterable[R]) -> None:
        self._free: deque[R] = deque(items)
        self._waiters: deque[asyncio.Future[R]] = deque()

    async def get(self) -> R:
        if self._free and not self._waiters:
            return self._free.popleft()
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        return await fut

    def put(self, item: R) -> None:
        waiters = self._waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(item)
                return
        self._free.append(item)


# ---------------------------------------------------------------------------- (a) mechanics


class _Resource:
    __slots__ = ()


async def _make_resource() -> _Resource:
    return _Resource()


def bare_queue(items: list[R], *, fair: bool) -> tuple[Callable[[], Awaitable[R]], Any]:
    """``(get, put)`` of the floor (``asyncio.Queue``) or, with ``fair``, of the FIFO
    reference (:class:`FifoQueue`), holding ``items``."""
    if fair:
        fifo = FifoQueue(items)
        return fifo.get, fifo.put
    queue: asyncio.Queue[R] = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)
    return queue.get, queue.put_nowait


def mech_bare(*, fair: bool) -> Callable[[], AbstractAsyncContextManager[Worker]]:
    @asynccontextmanager
    async def setup() -> AsyncIterator[Worker]:
        get, put = bare_queue([_Resource() for _ in range(SIZE)], fair=fair)

        async def worker(stop: Stop) -> int:
            n = 0
            get_, put_, sleep = get, put, asyncio.sleep  # locals, as in the other workers
            while not stop.flag:
                r = await get_()
                await sleep(0)
                put_(r)
                n += 1
            return n

        yield worker

    return setup


@asynccontextmanager
async def mech_ours() -> AsyncIterator[Worker]:
    async with aiolease.Pool.from_callables(_make_resource, max_size=SIZE) as pool:

        async def worker(stop: Stop) -> int:
            n = 0
            acquire, sleep = pool.acquire, asyncio.sleep
            while not stop.flag:
                async with acquire():
                    await sleep(0)
                n += 1
            return n

        yield worker


@asynccontextmanager
async def mech_acp() -> AsyncIterator[Worker]:
    from asyncio_connection_pool import ConnectionPool, ConnectionStrategy

    class Strategy(ConnectionStrategy[_Resource]):
        async def make_connection(self) -> _Resource:
            return _Resource()

        def connection_is_closed(self, conn: _Resource) -> bool:
            return False

        async def close_connection(self, conn: _Resource) -> None:
            pass

    pool: Any = ConnectionPool(strategy=Strategy(), max_size=SIZE)

    async def worker(stop: Stop) -> int:
        n = 0
        get, sleep = pool.get_connection, asyncio.sleep
        while not stop.flag:
            async with get():
                await sleep(0)
            n += 1
        return n

    yield worker


@asynccontextmanager
async def mech_gcp() -> AsyncIterator[Worker]:
    from generic_connection_pool.asyncio import BaseConnectionManager, ConnectionPool

    class Manager(BaseConnectionManager[str, _Resource]):
        async def create(self, endpoint: str) -> _Resource:
            return _Resource()

        async def dispose(self, endpoint: str, conn: _Resource) -> None:
            pass

    pool: Any = ConnectionPool(Manager(), min_idle=SIZE, max_size=SIZE)
    try:

        async def worker(stop: Stop) -> int:
            n = 0
            connection, sleep = pool.connection, asyncio.sleep
            while not stop.flag:
                async with connection("bench"):
                    await sleep(0)
                n += 1
            return n

        yield worker
    finally:
        await pool.close()


MECHANICS = [
    Contender("asyncio.Queue (floor)", mech_bare(fair=False), FLOOR),
    Contender("FIFO hand-off (reference)", mech_bare(fair=True), REFERENCE),
    Contender("aiolease.Pool", mech_ours, OURS),
    Contender("asyncio-connection-pool", mech_acp, ANCHOR),
    Contender("generic-connection-pool", mech_gcp, ANCHOR),
]


# ---------------------------------------------------------------------------- (b) PostgreSQL


def pg_contenders(dsn: str) -> list[Contender]:
    import asyncpg

    def bare(*, fair: bool) -> Callable[[], AbstractAsyncContextManager[Worker]]:
        @asynccontextmanager
        async def setup() -> AsyncIterator[Worker]:
            conns = [await asyncpg.connect(dsn) for _ in range(SIZE)]
            get, put = bare_queue(conns, fair=fair)
            try:

                async def worker(stop: Stop) -> int:
                    n = 0
                    get_, put_ = get, put  # locals, as in the other workers
                    while not stop.flag:
                        conn = await get_()
                        await conn.fetchval("SELECT 1")
                        put_(conn)
                        n += 1
                    return n

                yield worker
            finally:
                for conn in conns:
                    await conn.close()

        return setup

    def ours(reset: Any) -> Any:
        @asynccontextmanager
        async def setup() -> AsyncIterator[Worker]:
            from aiolease.asyncpg import create_pool

            async with create_pool(dsn, min_size=SIZE, max_size=SIZE, reset=reset) as pool:

                async def worker(stop: Stop) -> int:
                    n = 0
                    acquire = pool.acquire
                    while not stop.flag:
                        async with acquire() as conn:
                            await conn.fetchval("SELECT 1")
                        n += 1
                    return n

                yield worker

        return setup

    @asynccontextmanager
    async def asyncpg_pool() -> AsyncIterator[Worker]:
        async with asyncpg.create_pool(dsn, min_size=SIZE, max_size=SIZE) as pool:

            async def worker(stop: Stop) -> int:
                n = 0
                acquire = pool.acquire
                while not stop.flag:
                    async with acquire() as conn:
                        await conn.fetchval("SELECT 1")
                    n += 1
                return n

            yield worker

    @asynccontextmanager
    async def psycopg_pool() -> AsyncIterator[Worker]:
        from psycopg_pool import AsyncConnectionPool

        pool: Any = AsyncConnectionPool(
            dsn, min_size=SIZE, max_size=SIZE, kwargs={"autocommit": True}, open=False
        )
        await pool.open(wait=True)
        try:

            async def worker(stop: Stop) -> int:
                n = 0
                connection = pool.connection
                while not stop.flag:
                    async with connection() as conn:
                        cur = await conn.execute("SELECT 1")
                        await cur.fetchone()
                    n += 1
                return n

            yield worker
        finally:
            await pool.close()

    return [
        Contender("raw asyncpg + Queue (floor)", bare(fair=False), FLOOR),
        Contender("raw asyncpg + FIFO hand-off (ref.)", bare(fair=True), REFERENCE),
        Contender('aiolease reset="transaction"', ours("transaction"), OURS),
        Contender('aiolease reset="session"', ours("session"), OURS),
        Contender("asyncpg.Pool", asyncpg_pool, ANCHOR),
        Contender("psycopg_pool (autocommit)", psycopg_pool, ANCHOR),
    ]


async def pg_reachable(dsn: str) -> str | None:
    """None if we can run SELECT 1 on ``dsn``, else why not."""
    try:
        import asyncpg
    except ImportError as exc:
        return f"asyncpg not installed ({exc})"
    try:
        conn = await asyncpg.connect(dsn, timeout=5)
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        return f"{dsn} unreachable: {exc!r}"
    await conn.close()
    return None


# ---------------------------------------------------------------------------- report


def print_table(
    title: str,
    contenders: Sequence[Contender],
    results: Results,
    *,
    targets: Sequence[tuple[str, str, float, Sequence[str]]],
) -> None:
    """Print the table, the ratios, and one verdict per target ``(ours, other, ratio,
    columns)``: ``ours >= ratio x other`` in each of those columns."""
    titles = [c.title for c in COLUMNS]
    width = max(len(c.name) for c in contenders) + 2
    print(f"\n{title}")
    head = f"{'':<{width}}" + "".join(f"{t + ' ops/s':>24}" for t in titles)
    print(head)
    print("-" * len(head))
    for c in contenders:
        cells = "".join(
            f"{fmt_ops(results.median(c.name, t)):>15} (±{results.spread(c.name, t) / 2:4.0%})"
            for t in titles
        )
        print(f"{c.name:<{width}}{cells}")
    floor = next(c for c in contenders if c.role == FLOOR)
    others = [c for c in contenders if c.role in (REFERENCE, ANCHOR)]
    pairs = [
        (ours, other) for ours in contenders if ours.role == OURS for other in [floor, *others]
    ]
    label_width = max(len(f"{a.name} / {b.name}") for a, b in pairs) + 2
    print(
        f"\n{'ratio (median of per-round ratios)':<{label_width}}"
        + "".join(f"{t:>20}" for t in titles)
    )
    for ours, other in pairs:
        ratios = "".join(f"{results.ratio(ours.name, other.name, t):>20.2f}" for t in titles)
        print(f"{ours.name + ' / ' + other.name:<{label_width}}{ratios}")
    print()
    for ours_name, other_name, target_ratio, columns in targets:
        ratios = [results.ratio(ours_name, other_name, t) for t in columns]
        met = all(r >= target_ratio for r in ratios)
        shown = " / ".join(f"{r:.2f}" for r in ratios)
        print(
            f"Target: {ours_name} >= {target_ratio} x {other_name} ({', '.join(columns)}): "
            f"{shown} -> " + ("MET" if met else "NOT MET")
        )


LOOPS = ("asyncio", "uvloop")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=0.8, help="seconds per measurement")
    parser.add_argument("--repeats", type=int, default=11, help="interleaved rounds (medians)")
    parser.add_argument("--warmup", type=float, default=0.2, help="seconds of warm-up per setup")
    parser.add_argument("--only", choices=("all", "mech", "pg", "metrics"), default="all")
    parser.add_argument("--dsn", default=DEFAULT_DSN, help="PostgreSQL DSN for part (b)")
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall time, or this process's CPU time (steadier on a busy machine; for (b) it "
        "measures client overhead per operation, not throughput)",
    )
    parser.add_argument(
        "--loop",
        choices=LOOPS,
        default="asyncio",
        help="the event loop every contender runs on",
    )
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.repeats < 1 or args.warmup < 0:
        parser.error("--duration must be > 0, --repeats >= 1, --warmup >= 0")
    return args


async def rounds(
    args: argparse.Namespace,
    contenders: Sequence[Contender],
    pair: tuple[str, str],
    clock: Callable[[], float],
    progress: Callable[[str], None],
) -> Results:
    """:func:`run_rounds` over :data:`COLUMNS` with the command line's settings."""
    return await run_rounds(
        contenders,
        COLUMNS,
        repeats=args.repeats,
        duration=args.duration,
        warmup=args.warmup,
        progress=progress,
        clock=clock,
        pair=pair,
    )


async def main(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    print(f"aiolease pool benchmark — {environment()}")
    print(
        f"{args.repeats} interleaved rounds x {args.duration}s per cell "
        f"(+{args.warmup}s warm-up per setup); medians, ±half the (max-min)/median spread; "
        f"ops per {args.clock} second; load average {os.getloadavg()[0]:.2f}"
    )
    clock = CLOCKS[args.clock]

    def progress(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    if args.only in ("all", "mech"):
        results = await rounds(
            args, MECHANICS, ("aiolease.Pool", "asyncio.Queue (floor)"), clock, progress
        )
        print_table(
            "(a) mechanics: acquire + asyncio.sleep(0) + release, no-op resource",
            MECHANICS,
            results,
            targets=[("aiolease.Pool", "asyncio.Queue (floor)", 0.7, ALL_COLUMNS)],
        )
    if args.only in ("all", "pg"):
        problem = await pg_reachable(args.dsn)
        if problem is not None:
            print(f"\n(b) PostgreSQL: SKIPPED — {problem}")
        else:
            contenders = pg_contenders(args.dsn)
            results = await rounds(
                args,
                contenders,
                (OURS_PG, "raw asyncpg + Queue (floor)"),
                clock,
                progress,
            )
            print_table(
                f"(b) PostgreSQL: acquire + SELECT 1 + release ({args.dsn})",
                contenders,
                results,
                targets=[
                    (OURS_PG, "raw asyncpg + Queue (floor)", 0.85, ALL_COLUMNS),
                    (OURS_PG, "asyncpg.Pool", 2.0, [COLUMNS[1].title]),
                ],
            )
    if args.only == "metrics":
        await metrics_overhead(args, clock, progress)
    print(f"\ntotal {time.perf_counter() - started:.0f}s")


# ---------------------------------------------------------------------------- (c) metrics


async def metrics_overhead(
    args: argparse.Namespace, clock: Callable[[], float], progress: Callable[[str], None]
) -> None:
    plain = "not instrumented"
    parts: list[tuple[str, Callable[[], AbstractAsyncContextManager[Worker]]]] = [
        ("mechanics: acquire + asyncio.sleep(0) + release", mech_ours)
    ]
    problem = await pg_reachable(args.dsn)
    if problem is None:
        ours = next(c for c in pg_contenders(args.dsn) if c.name == OURS_PG)
        parts.append((f"PostgreSQL: acquire + SELECT 1 + release ({args.dsn})", ours.setup))
    else:
        print(f"\n(c) PostgreSQL part SKIPPED — {problem}")
    for title, setup in parts:
        contenders = [
            Contender(plain, setup, FLOOR),
            Contender(
                "aiolease.otel (SDK, exporter dropping all)", with_metrics("otel", setup), OURS
            ),
            Contender("aiolease.prometheus.Collector", with_metrics("prometheus", setup), OURS),
        ]
        for instrumented in contenders[1:]:
            results = await rounds(
                args, [contenders[0], instrumented], (instrumented.name, plain), clock, progress
            )
            print_table(
                f"(c) metrics overhead, {title}",
                [contenders[0], instrumented],
                results,
                targets=[(instrumented.name, plain, 0.95, ALL_COLUMNS)],
            )


def _loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if name == "uvloop":
        import uvloop  # in the test extra; pip install uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop


if __name__ == "__main__":
    arguments = parse_args()
    with asyncio.Runner(loop_factory=_loop_factory(arguments.loop)) as runner:
        runner.run(main(arguments))
