"""The limiters' public signatures, as the "Limits (contract)" section writes them.

Users' programs and the acceptance checks call these by name and position; a renamed
parameter, a lost default or a keyword-only argument turned positional breaks them. Extra
keyword-only options may follow the contract's ones.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as redis_asyncio

import aiolease
from aiolease.redis import RedisConcurrencyLimiter, RedisRateLimiter

P = inspect.Parameter
POS = P.POSITIONAL_OR_KEYWORD
KW = P.KEYWORD_ONLY
NONE = P.empty

#: (callable, [(name, kind, default)]): the contract's parameters, in order, after ``self``.
CONTRACT: list[tuple[Callable[..., Any], list[tuple[str, Any, Any]]]] = [
    (aiolease.RateLimiter, [("rate", POS, NONE), ("per", POS, 1.0), ("burst", KW, 1)]),
    (aiolease.RateLimiter.acquire, [("cost", POS, 1), ("key", POS, None), ("timeout", POS, None)]),
    (aiolease.RateLimiter.acquire_nowait, [("cost", POS, 1), ("key", POS, None)]),
    (aiolease.ConcurrencyLimiter, [("limit", POS, NONE)]),
    (aiolease.ConcurrencyLimiter.acquire, [("key", POS, None), ("timeout", POS, None)]),
    (
        RedisRateLimiter,
        [
            ("client", POS, NONE),
            ("name", POS, NONE),
            ("rate", POS, NONE),
            ("per", POS, 1.0),
            ("burst", KW, 1),
            ("on_error", KW, "raise"),
        ],
    ),
    (RedisRateLimiter.acquire, [("cost", POS, 1), ("key", POS, None), ("timeout", POS, None)]),
    (RedisRateLimiter.acquire_nowait, [("cost", POS, 1), ("key", POS, None)]),
    (
        RedisConcurrencyLimiter,
        [("client", POS, NONE), ("name", POS, NONE), ("limit", POS, NONE), ("lease_ttl", KW, 30.0)],
    ),
    (RedisConcurrencyLimiter.acquire, [("key", POS, None), ("timeout", POS, None)]),
]


def _params(target: Callable[..., Any]) -> list[inspect.Parameter]:
    params = list(inspect.signature(target).parameters.values())
    return params[1:] if params and params[0].name == "self" else params


@pytest.mark.parametrize(
    ("target", "expected"), CONTRACT, ids=[t.__qualname__ for t, _ in CONTRACT]
)
def test_contract_parameters(
    target: Callable[..., Any], expected: list[tuple[str, Any, Any]]
) -> None:
    params = _params(target)
    positional = [p for p in params if p.kind is POS]
    want_positional = [name for name, kind, _ in expected if kind is POS]
    # The contract's positional parameters, in its order, and no other.
    assert [p.name for p in positional] == want_positional
    by_name = {p.name: p for p in params}
    for name, kind, default in expected:
        assert name in by_name, f"{target.__qualname__}: no parameter {name!r}"
        got = by_name[name]
        assert got.kind is kind, f"{target.__qualname__}({name}): {got.kind} not {kind}"
        shown = f"{target.__qualname__}({name}): default {got.default!r}, contract {default!r}"
        assert got.default == default, shown
        assert type(got.default) is type(default), shown
    # Whatever the implementation adds has a default: the contract's calls stay complete.
    extra = [p for p in params if p.name not in {n for n, _, _ in expected}]
    assert all(p.kind is KW and p.default is not NONE for p in extra), extra


def test_contract_calls_construct_and_validate_without_a_loop() -> None:
    # The calls exactly as the contract writes them (construction binds no event loop).
    client = redis_asyncio.Redis.from_url("redis://127.0.0.1:1/0")  # never connected
    limiter = aiolease.RateLimiter(10, 1.0, burst=2)
    limiter.acquire(1, None, None)
    limiter.acquire(cost=2, key="k", timeout=0.5)
    sem = aiolease.ConcurrencyLimiter(3)
    sem.acquire(key="k", timeout=1.0)
    RedisRateLimiter(client, "sig", 10, 1.0, burst=2, on_error="deny")
    RedisConcurrencyLimiter(client, "sig", 3, lease_ttl=5.0)
