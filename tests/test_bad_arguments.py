"""Bad arguments across the public API, as a new user passes them: each raises a clear
TypeError/ValueError at the call, naming the argument and the value, instead of being taken
and failing later (at the first acquire, at commit, in a test's wait) or meaning something
else (a truthy ``"no"`` read as True).

The per-kind edges of numbers are in tests/test_validate.py, the pool's options in
tests/pool/test_pool_arguments.py; this file holds the arguments an audit found unchecked.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import aiolease
from aiolease import Pool
from aiolease.testing import FakeConnection, FakeManager

redis_asyncio = pytest.importorskip("redis.asyncio")

from aiolease.redis import (  # noqa: E402 - after the importorskip
    RedisConcurrencyLimiter,
    RedisRateLimiter,
    redis_key,
)

# A client object that never connects here: the constructors check their arguments only.
_CLIENT = redis_asyncio.Redis.from_url("redis://127.0.0.1:6379/0")

SYNC_CASES: list[tuple[str, Callable[[], object], type[Exception], str]] = [
    # The class instead of an instance: create() would fail at the first acquire with
    # "missing 1 required positional argument: 'self'".
    (
        "Pool(manager class)",
        lambda: Pool(FakeManager),  # type: ignore[arg-type]
        TypeError,
        r"manager must be a Manager instance, got the class FakeManager: pass FakeManager\(\)",
    ),
    (
        "RedisRateLimiter(client class)",
        lambda: RedisRateLimiter(redis_asyncio.Redis, "n", 1),
        TypeError,
        r"client must be a redis.asyncio.Redis .*got the class Redis",
    ),
    (
        "RedisConcurrencyLimiter(client class)",
        lambda: RedisConcurrencyLimiter(redis_asyncio.Redis, "n", 1),
        TypeError,
        r"client must be a redis.asyncio.Redis .*got the class Redis",
    ),
    # redis_key is public (to find a limiter's keys in Redis): it took any prefix and kind,
    # and a name of None raised AttributeError from str.replace.
    (
        "redis_key(prefix=None)",
        lambda: redis_key(None, "rate", "n"),  # type: ignore[arg-type]
        TypeError,
        r"prefix must be a non-empty str, got NoneType None",
    ),
    (
        "redis_key(prefix='')",
        lambda: redis_key("", "rate", "n"),
        TypeError,
        r"prefix must be a non-empty str, got str ''",
    ),
    (
        "redis_key(kind='bogus')",
        lambda: redis_key("aiolease", "bogus", "n"),
        ValueError,
        r"kind must be 'rate' or 'conc', got 'bogus'",
    ),
    (
        "redis_key(kind=1)",
        lambda: redis_key("aiolease", 1, "n"),  # type: ignore[arg-type]
        ValueError,
        r"kind must be 'rate' or 'conc', got 1",
    ),
    (
        "redis_key(name=None)",
        lambda: redis_key("aiolease", "rate", None),  # type: ignore[arg-type]
        TypeError,
        r"name must be a non-empty str, got NoneType None",
    ),
    (
        "redis_key(name='')",
        lambda: redis_key("aiolease", "rate", ""),
        TypeError,
        r"name must be a non-empty str, got str ''",
    ),
    # The sqlite path: bytes failed with "startswith first arg must be bytes or a tuple of
    # bytes, not str"; None or an int with os.fspath's message, which names no argument.
    (
        "SqliteManager(path=bytes)",
        lambda: _sqlite().SqliteManager(b"/tmp/x.db"),
        TypeError,
        r"path must be a str or an os.PathLike of str, got bytes b'/tmp/x.db'",
    ),
    (
        "SqliteManager(path=None)",
        lambda: _sqlite().SqliteManager(None),
        TypeError,
        r"path must be a str or an os.PathLike of str, got NoneType None",
    ),
    (
        "sqlite.create_pool(path=3)",
        lambda: _sqlite().create_pool(3),
        TypeError,
        r"path must be a str or an os.PathLike of str, got int 3",
    ),
    # A flag given a truthy non-bool ("no") did the opposite of what it says.
    (
        "FakeConnection.drop_on_commit(committed='no')",
        lambda: FakeConnection().drop_on_commit(committed="no"),  # type: ignore[arg-type]
        TypeError,
        r"committed must be True or False, got 'no'",
    ),
]


def _sqlite() -> Any:
    return pytest.importorskip("aiolease.sqlite")


@pytest.mark.parametrize(
    ("call", "error", "pattern"),
    [pytest.param(call, error, pattern, id=name) for name, call, error, pattern in SYNC_CASES],
)
def test_a_bad_argument_raises_at_the_call(
    call: Callable[[], object], error: type[Exception], pattern: str
) -> None:
    with pytest.raises(error, match=pattern):
        call()


async def _release_discard(value: object) -> None:
    async with Pool(FakeManager(), max_size=1) as pool:
        resource = await pool.acquire()
        try:
            with pytest.raises(TypeError, match=rf"discard must be True or False, got {value!r}"):
                await pool.release(resource, discard=value)  # type: ignore[arg-type]
            assert pool.statistics().discarded == 0  # still checked out, not discarded
        finally:
            await pool.release(resource)


async def _open_wait(value: object) -> None:
    pool = Pool(FakeManager(), min_size=1, max_size=1)
    try:
        with pytest.raises(TypeError, match=rf"wait must be True or False, got {value!r}"):
            await pool.open(wait=value)  # type: ignore[arg-type]
    finally:
        await pool.aclose()


async def _set_rollback(value: object) -> None:
    conn = FakeConnection()
    async with aiolease.atomic(conn) as tx:
        with pytest.raises(TypeError, match=rf"rollback must be True or False, got {value!r}"):
            tx.set_rollback(value)  # type: ignore[arg-type]


async def _on_commit_arity(hook: Callable[..., object]) -> None:
    async with aiolease.atomic(FakeConnection()) as tx:
        with pytest.raises(TypeError, match=r"on_commit\(\): a transaction hook is called with "):
            tx.on_commit(hook)


async def _on_rollback_arity(hook: Callable[..., object]) -> None:
    async with aiolease.atomic(FakeConnection()) as tx:
        with pytest.raises(TypeError, match=r"on_rollback\(\): a transaction hook is called with"):
            tx.on_rollback(hook)


async def _wait_arrived(value: object, error: type[Exception]) -> None:
    gate = FakeManager().block("create")
    with pytest.raises(error, match=rf"count must be an int >= 1, got .*{value!r}"):
        await gate.wait_arrived(value)  # type: ignore[arg-type]


async def _no_args_hook() -> None:
    pass


ASYNC_CASES: list[tuple[str, Callable[[], Awaitable[None]]]] = [
    *[(f"Pool.release(discard={v!r})", lambda v=v: _release_discard(v)) for v in ("no", 0, None)],
    *[(f"Pool.open(wait={v!r})", lambda v=v: _open_wait(v)) for v in ("no", 0, None)],
    *[(f"set_rollback({v!r})", lambda v=v: _set_rollback(v)) for v in ("no", 1, None)],
    # A hook taking an argument failed after the COMMIT, as a HookError.
    ("on_commit(lambda x: ...)", lambda: _on_commit_arity(lambda x: x)),
    ("on_commit(async def f(x))", lambda: _on_commit_arity(_one_arg_async)),
    ("on_rollback(lambda x: ...)", lambda: _on_rollback_arity(lambda x: x)),
    # A float count waited forever (inf) or failed on a list index (2.5, nan).
    *[
        (f"Gate.wait_arrived({v!r})", lambda v=v, e=e: _wait_arrived(v, e))
        for v, e in [
            (float("inf"), TypeError),
            (2.5, TypeError),
            (float("nan"), TypeError),
            ("1", TypeError),
            (True, TypeError),
            (None, TypeError),
        ]
    ],
]


async def _one_arg_async(x: object) -> None:
    pass


@pytest.mark.parametrize("run", [pytest.param(run, id=name) for name, run in ASYNC_CASES])
async def test_a_bad_argument_raises_when_awaited_or_called(
    run: Callable[[], Awaitable[None]],
) -> None:
    async with asyncio.timeout(5):  # a bad argument taken may wait forever (count=inf)
        await run()


async def test_hooks_that_take_no_argument_are_still_accepted() -> None:
    import functools

    seen: list[str] = []

    def default_arg(x: int = 1) -> None:
        seen.append("default")

    def star(*args: object) -> None:
        seen.append("star")

    async with aiolease.atomic(FakeConnection()) as tx:
        tx.on_commit(lambda: seen.append("lambda"))
        tx.on_commit(_no_args_hook)
        tx.on_commit(default_arg)
        tx.on_commit(star)
        tx.on_commit(functools.partial(_one_arg_async, 1))
        tx.on_commit(dict)  # a builtin type, whose signature cannot be read
    assert seen == ["lambda", "default", "star"]


def test_redis_key_still_maps_a_limiter_key() -> None:
    name = f"n-{uuid.uuid4().hex}"
    assert redis_key("aiolease", "rate", name, "k") == f"aiolease:rate:{{{name}|k}}"
    assert redis_key("p", "conc", name) == f"p:conc:{{{name}}}"


def test_sqlite_path_as_pathlike_still_works(tmp_path: Path) -> None:
    manager = _sqlite().SqliteManager(tmp_path / "db.sqlite")
    assert manager.path == str(tmp_path / "db.sqlite")
