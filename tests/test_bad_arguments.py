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


# -- callbacks of the HTTP integrations: each is called with one argument (the ASGI scope,
# the request), and one that cannot take it failed on every request instead of at the call.


def _no_arg() -> str:
    return "k"


def _two_args(a: object, b: object) -> str:
    return "k"


_BAD_CALLBACKS = [
    pytest.param(_no_arg, id="no argument"),
    pytest.param(_two_args, id="two arguments"),
    pytest.param(lambda *, scope: "k", id="keyword only"),
]


def _asgi_app() -> Callable[..., Awaitable[None]]:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        pass

    return app


@pytest.mark.parametrize("fn", _BAD_CALLBACKS)
def test_asgi_key_that_cannot_take_the_scope_is_refused(fn: Callable[..., object]) -> None:
    from aiolease.asgi import RateLimitMiddleware

    with pytest.raises(TypeError, match=r"key: a function of the ASGI scope is called with "):
        RateLimitMiddleware(_asgi_app(), limiter=aiolease.RateLimiter(1, per=1.0), key=fn)


@pytest.mark.parametrize("fn", _BAD_CALLBACKS)
def test_asgi_exempt_that_cannot_take_the_scope_is_refused(fn: Callable[..., object]) -> None:
    from aiolease.asgi import RateLimitMiddleware

    with pytest.raises(TypeError, match=r"exempt: a function of the ASGI scope is called with "):
        RateLimitMiddleware(
            _asgi_app(),
            limiter=aiolease.RateLimiter(1, per=1.0),
            exempt=fn,  # type: ignore[arg-type]
        )


@pytest.mark.parametrize("fn", _BAD_CALLBACKS)
def test_httpx_key_that_cannot_take_the_request_is_refused(fn: Callable[..., object]) -> None:
    httpx_mod = pytest.importorskip("aiolease.httpx")
    with pytest.raises(TypeError, match=r"key: a function of the request is called with "):
        httpx_mod.LimitedTransport(aiolease.RateLimiter(1, per=1.0), key=fn)


@pytest.mark.parametrize("fn", _BAD_CALLBACKS)
def test_aiohttp_key_that_cannot_take_the_request_is_refused(fn: Callable[..., object]) -> None:
    aiohttp_mod = pytest.importorskip("aiolease.aiohttp")
    with pytest.raises(TypeError, match=r"key: a function of the request is called with "):
        aiohttp_mod.limited(aiolease.RateLimiter(1, per=1.0), key=fn)


class _CallableKey:
    def __call__(self, scope_or_request: object) -> str:
        return "k"

    def method(self, scope_or_request: object, extra: int = 0) -> str:
        return "k"


def test_callbacks_taking_one_argument_are_still_accepted() -> None:
    import functools

    from aiolease.asgi import RateLimitMiddleware, client_ip

    httpx_mod = pytest.importorskip("aiolease.httpx")
    aiohttp_mod = pytest.importorskip("aiolease.aiohttp")
    limiter = aiolease.RateLimiter(1, per=1.0)
    fns: list[Callable[..., Any]] = [
        lambda x: "k",
        _CallableKey(),
        _CallableKey().method,
        functools.partial(_two_args, 1),
        lambda *args: "k",
        str,  # a builtin type
    ]
    for fn in fns:
        RateLimitMiddleware(_asgi_app(), limiter=limiter, key=fn, exempt=fn)
        httpx_mod.LimitedTransport(limiter, key=fn)
        aiohttp_mod.limited(limiter, key=fn)
    RateLimitMiddleware(_asgi_app(), limiter=limiter, key=client_ip, exempt={"/health"})
    httpx_mod.LimitedTransport(limiter)
    aiohttp_mod.limited(limiter)


# -- paused_for()/pace() of the HTTP clients: an unhashable key raised Python's
# "unhashable type: 'list'".


async def test_http_clients_paused_for_and_pace_refuse_an_unhashable_key() -> None:
    httpx_mod = pytest.importorskip("aiolease.httpx")
    aiohttp_mod = pytest.importorskip("aiolease.aiohttp")
    limiter = aiolease.RateLimiter(1, per=1.0)
    for client in (httpx_mod.LimitedTransport(limiter), aiohttp_mod.limited(limiter)):
        for method in (client.paused_for, client.pace):
            with pytest.raises(TypeError, match=r"key must be hashable .*got list \[\]"):
                method([])
        assert client.paused_for("api.example.com") == 0.0
        assert client.pace(("api", 1)) is None


# -- the test doubles


@pytest.mark.parametrize(
    ("sqlstate", "error", "pattern"),
    [
        (40001, TypeError, r"sqlstate must be a SQLSTATE str .*got int 40001"),
        (None, TypeError, r"sqlstate must be a SQLSTATE str .*got NoneType None"),
        (b"40001", TypeError, r"sqlstate must be a SQLSTATE str .*got bytes b'40001'"),
        ("4001", ValueError, r"sqlstate must be a SQLSTATE .*got '4001'"),
        ("40p01", ValueError, r"sqlstate must be a SQLSTATE .*got '40p01'"),
        ("400011", ValueError, r"sqlstate must be a SQLSTATE .*got '400011'"),
        ("40 01", ValueError, r"sqlstate must be a SQLSTATE .*got '40 01'"),
    ],
)
def test_fail_commit_refuses_a_bad_sqlstate(
    sqlstate: object, error: type[Exception], pattern: str
) -> None:
    with pytest.raises(error, match=pattern):
        FakeConnection().fail_commit(sqlstate=sqlstate)  # type: ignore[arg-type]


async def test_fail_commit_still_takes_a_sqlstate() -> None:
    from aiolease.testing import FakeDatabaseError

    conn = FakeConnection()
    conn.fail_commit(sqlstate="40P01")
    with pytest.raises(FakeDatabaseError) as info:
        async with aiolease.atomic(conn):
            pass
    assert info.value.sqlstate == "40P01"


# bytes are a sequence of ints: calls=b"1" meant call 49; a list holding a list raised
# "unhashable type: 'list'".
@pytest.mark.parametrize("calls", [b"1", bytearray(b"1"), "1", [[1]], [1, [2]]])
def test_fake_manager_calls_must_be_call_numbers(calls: object) -> None:
    for method in ("fail", "block"):
        with pytest.raises(ValueError, match=r"calls must be call numbers >= 1 .*got "):
            getattr(FakeManager(), method)("create", calls=calls)


@pytest.mark.parametrize("method", ["fail", "delay", "block"])
def test_fake_manager_when_that_cannot_take_the_call_is_refused(method: str) -> None:
    args = ("create", 1.0) if method == "delay" else ("create",)
    with pytest.raises(TypeError, match=r"when: a predicate is called with one argument"):
        getattr(FakeManager(), method)(*args, when=lambda: True)


def test_fake_manager_error_factory_that_cannot_take_the_call_is_refused() -> None:
    with pytest.raises(TypeError, match=r"error: a factory is called with one argument"):
        FakeManager().fail("create", lambda: ConnectionError("down"))  # type: ignore[arg-type,misc]


@pytest.mark.parametrize("ok", ["yes", 1, 0, "False"])
def test_events_of_ok_must_be_a_bool_or_none(ok: object) -> None:
    # ok="yes" matched no event: `assert not fm.events_of("created", ok="yes")` passed.
    with pytest.raises(TypeError, match=rf"ok must be True, False or None, got {ok!r}"):
        FakeManager().events_of("created", ok=ok)  # type: ignore[arg-type]


async def test_fake_manager_arguments_still_accepted() -> None:
    fm = FakeManager()
    fm.fail("create", lambda call: ConnectionError(str(call.number)), calls=range(1, 3))
    fm.fail("check", ConnectionError, calls=(1,), when=lambda call: True)
    fm.block("reset", calls=frozenset({2}))
    assert fm.events_of("created", ok=True) == fm.events_of("created", ok=None) == []


# A bytes pattern compiled, then failed on the first statement with "cannot use a bytes
# pattern on a string-like object"; a non-str one raised re's own message.
@pytest.mark.parametrize(
    ("pattern", "error", "message"),
    [
        (b"SELECT", TypeError, r"pattern must be a str or a compiled str re.Pattern, got bytes"),
        (__import__("re").compile(b"SELECT"), TypeError, r"pattern must be a str or a compiled"),
        (42, TypeError, r"pattern must be a str or a compiled str re.Pattern, got int 42"),
        ("(", ValueError, r"pattern='\(' is not a valid regular expression"),
    ],
)
@pytest.mark.parametrize("method", ["script", "gate", "hang"])
def test_fake_connection_pattern_must_be_a_str_regex(
    method: str, pattern: object, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        getattr(FakeConnection(), method)(pattern)


async def test_fake_connection_patterns_still_accepted() -> None:
    import re

    conn = FakeConnection()
    conn.script("select 1", rows=[(1,)])
    conn.script(re.compile("SELECT 2"), rows=[(2,)])
    assert await conn.fetchval("SELECT 1") == 1
    assert await conn.fetchval("SELECT 2") == 2
    conn.gate(re.compile("never")).open()
