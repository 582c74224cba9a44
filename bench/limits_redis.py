"""(c) of ``make bench-limits``: Redis-backed rate limiters, never limited, against a plain PING.

Every contender makes ONE decision per operation against the live Redis
(AIOLEASE_REDIS_URL, default redis://127.0.0.1:6379/0) with a rate far above
what the run can reach, so nothing is ever limited and the numbers are pure
overhead: client CPU, round trips and server-side work.

* floor:   ``await client.ping()`` with redis-py's asyncio client - one round
  trip and no server work: no rate limiter on this client can beat one round
  trip per decision without batching decisions.
* ours:    ``async with RedisRateLimiter(...)`` (one EVALSHA per acquire).
* anchors: limits' async Redis storage (redis-py implementation; fixed window:
  INCR + EXPIRE, and moving window: a Lua script), pyrate-limiter's async
  ``RedisBucket`` and throttled-py's asyncio ``RedisStore`` (GCRA).

Columns: 1 task, and 50 tasks sharing one limiter (and one client). Each cell
is the median of ``repeats`` interleaved rounds; a ratio (x PING) is the median
over the rounds of the per-round ratio, so the drift of a shared machine between
rounds cancels out.
Target: aiolease >= 0.9 x PING with 1 task and >= 2 x PING with 50 tasks (its calls share
one pipelined connection; PING takes a pooled connection per call in flight). The row
"AIOLEASE_COMPAT=public" is the limiter on redis-py's public API only (one call at a time).

Run alone: ``python bench/limits_redis.py [--repeats N] [--duration S]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

_HERE = os.path.dirname(os.path.abspath(__file__))
# bench/limits.py would shadow the `limits` library: import the anchors without bench/ on the path.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
import limits.aio.storage  # noqa: E402
import limits.aio.strategies  # noqa: E402
import pyrate_limiter  # noqa: E402
import redis.asyncio as redis_asyncio  # noqa: E402
import throttled.asyncio as throttled_asyncio  # noqa: E402

import limits  # noqa: E402

sys.path.insert(0, _HERE)
from _common import Column, Contender, Stop, Worker, environment, fmt_ops, run_rounds  # noqa: E402

from aiolease._compat import redis as _compat_redis  # noqa: E402
from aiolease.redis import RedisRateLimiter  # noqa: E402

REDIS_URL = os.environ.get("AIOLEASE_REDIS_URL", "redis://127.0.0.1:6379/0")
HUGE = 1_000_000_000
COLUMNS = [Column("1 task", 1), Column("50 tasks", 50)]
PREFIX = f"aiolease-bench-{uuid.uuid4().hex[:8]}"


def _loop_worker(op: Callable[[], Awaitable[Any]]) -> Worker:
    async def worker(stop: Stop) -> int:
        n = 0
        while not stop.flag:
            await op()
            n += 1
        return n

    return worker


@contextlib.asynccontextmanager
async def _client() -> AsyncIterator[redis_asyncio.Redis]:
    # max_connections above the task count: the pool never makes a task wait for a connection.
    client = redis_asyncio.Redis.from_url(REDIS_URL, max_connections=128)
    try:
        yield client
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def _ping() -> AsyncIterator[Worker]:
    async with _client() as client:
        yield _loop_worker(client.ping)


def _ours_on(public: bool) -> Callable[[], contextlib.AbstractAsyncContextManager[Worker]]:
    """``async with RedisRateLimiter``: on the pipe, or as under ``AIOLEASE_COMPAT=public``."""

    @contextlib.asynccontextmanager
    async def setup() -> AsyncIterator[Worker]:
        async with _client() as client:
            saved = _compat_redis.PIPE
            _compat_redis.PIPE = saved and not public
            try:
                lim = RedisRateLimiter(client, f"{PREFIX}-ours", HUGE, burst=HUGE)
            finally:
                _compat_redis.PIPE = saved

            async def worker(stop: Stop) -> int:
                n = 0
                while not stop.flag:
                    async with lim:
                        pass
                    n += 1
                return n

            try:
                yield worker
            finally:
                await lim.aclose()

    return setup


def _limits_contender(
    strategy_cls: Any,
) -> Callable[[], contextlib.AbstractAsyncContextManager[Worker]]:
    @contextlib.asynccontextmanager
    async def setup() -> AsyncIterator[Worker]:
        storage = limits.aio.storage.RedisStorage(
            REDIS_URL.replace("redis://", "async+redis://", 1), implementation="redispy"
        )
        strategy = strategy_cls(storage)
        item = limits.RateLimitItemPerSecond(HUGE)
        key = f"{PREFIX}-{strategy_cls.__name__}"

        async def op() -> None:
            if not await strategy.hit(item, key):
                raise AssertionError("limits refused a never-limited hit")

        yield _loop_worker(op)

    return setup


@contextlib.asynccontextmanager
async def _pyrate() -> AsyncIterator[Worker]:
    async with _client() as client:
        rates = [pyrate_limiter.Rate(HUGE, pyrate_limiter.Duration.SECOND)]
        bucket = pyrate_limiter.RedisBucket.init(rates, client, f"{PREFIX}-pyrate")
        if asyncio.iscoroutine(bucket) or isinstance(bucket, asyncio.Future):
            bucket = await bucket
        lim = pyrate_limiter.Limiter(bucket)

        async def op() -> None:
            if not await lim.try_acquire_async("user"):
                raise AssertionError("pyrate-limiter refused a never-limited acquire")

        yield _loop_worker(op)


@contextlib.asynccontextmanager
async def _throttled() -> AsyncIterator[Worker]:
    store = throttled_asyncio.store.RedisStore(
        server=REDIS_URL, options={"CONNECTION_POOL_KWARGS": {"max_connections": 128}}
    )
    lim = throttled_asyncio.Throttled(
        using="gcra", quota=throttled_asyncio.rate_limiter.per_sec(HUGE), store=store
    )
    key = f"{PREFIX}-throttled"

    async def op() -> None:
        if (await lim.limit(key)).limited:
            raise AssertionError("throttled-py limited a never-limited call")

    yield _loop_worker(op)


async def _cleanup() -> None:
    async with _client() as client:
        found = [k async for k in client.scan_iter(match=f"*{PREFIX}*", count=1000)]
        if found:
            await client.delete(*found)


async def _usable(contender: Contender) -> str | None:
    """None when one operation works, else why not (the anchor is then left out)."""
    try:
        async with contender.setup() as worker:
            done = Stop()
            task = asyncio.ensure_future(worker(done))
            await asyncio.sleep(0.05)
            done.flag = True
            await asyncio.wait_for(task, 10)
    except Exception as exc:  # an anchor that cannot run here is reported, not fatal
        return f"{type(exc).__name__}: {exc}"
    return None


async def section(repeats: int, duration: float) -> list[str]:
    """The table lines of section (c)."""
    try:
        async with _client() as client:
            await client.ping()
    except Exception as exc:
        return [f"(c) Redis at {REDIS_URL} unreachable ({exc!r}): skipped"]
    candidates = [
        Contender("redis-py PING (floor)", _ping, "floor"),
        Contender("aiolease RedisRateLimiter", _ours_on(False), "ours"),
        Contender("aiolease, AIOLEASE_COMPAT=public", _ours_on(True), "variant"),
        Contender(
            "limits fixed window (redis-py)",
            _limits_contender(limits.aio.strategies.FixedWindowRateLimiter),
            "anchor",
        ),
        Contender(
            "limits moving window (redis-py)",
            _limits_contender(limits.aio.strategies.MovingWindowRateLimiter),
            "anchor",
        ),
        Contender("pyrate-limiter RedisBucket", _pyrate, "anchor"),
        Contender("throttled-py RedisStore (gcra)", _throttled, "anchor"),
    ]
    contenders, skipped = [], []
    for c in candidates:
        problem = await _usable(c)
        if problem is None:
            contenders.append(c)
        else:
            skipped.append(f"    {c.name}: not run ({problem})")
    try:
        results = await run_rounds(
            contenders, COLUMNS, repeats=repeats, duration=duration, warmup=0.2
        )
    finally:
        await _cleanup()
    head = "".join(f" {col.title + ' ops/s':>15} {'x PING':>7}" for col in COLUMNS)
    lines = [
        f"(c) Redis ({REDIS_URL}), never limited, ops/s (median of {repeats} rounds of "
        f"{duration:g} s; spread = (max-min)/median)",
        f"    {'contender':34}{head}",
    ]
    for c in contenders:
        cells = ""
        for col in COLUMNS:
            med = results.median(c.name, col.title)
            spread = results.spread(c.name, col.title)
            ratio = results.ratio(c.name, "redis-py PING (floor)", col.title)
            cells += f" {fmt_ops(med):>10} ±{spread:>3.0%} {ratio:>6.2f}x"
        lines.append(f"    {c.name:34}{cells}")
    lines.extend(skipped)
    anchors = [c.name for c in contenders if c.role == "anchor"]
    ours = "aiolease RedisRateLimiter"
    targets = {"1 task": 0.9, "50 tasks": 2.0}
    for col in COLUMNS:
        vs_ping = results.ratio(ours, "redis-py PING (floor)", col.title)
        vs_best = min((results.ratio(ours, a, col.title) for a in anchors), default=float("nan"))
        vs_public = results.ratio("aiolease, AIOLEASE_COMPAT=public", ours, col.title)
        lines.append(
            f"    {col.title}: ours / PING = {vs_ping:.2f} (target >= {targets[col.title]:g}); "
            f"ours / best anchor = {vs_best:.2f}; public path / ours = {vs_public:.2f}"
        )
    return lines


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="rounds per measurement")
    parser.add_argument("--duration", type=float, default=1.0, help="seconds per sample")
    args = parser.parse_args(argv)
    print(environment(), flush=True)
    print("\n".join(await section(args.repeats, args.duration)), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
