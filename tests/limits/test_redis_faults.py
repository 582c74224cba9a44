"""Redis limiters when Redis is down, silent or restarting: bounded time, one clear error type.

Every test here runs against a redis-server of its own (``own_redis``), reached directly or
through a proxy that can go silent; the shared server is never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import math
import operator
import os
import subprocess
import sys
import warnings
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as redis_asyncio
from _redis_factories import compat_public
from _redis_server import OwnRedis, SilentProxy, own_redis
from limits_helpers import run_then_close
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

import aiolease
from aiolease import LimiterUnavailable, LimitTimeout, RateLimitExceeded
from aiolease.redis import RedisConcurrencyLimiter, RedisRateLimiter
from aiolease.redis._scripts import CONC_ACQUIRE, RATE_ACQUIRE
from aiolease.testing import leak_check

pytestmark = [pytest.mark.redis, pytest.mark.slow]

__all__ = ["own_redis"]  # the fixture, imported for pytest

#: Slack for a loaded 2-core machine on top of each bound under test.
SLACK = 0.1
UNREACHABLE = "redis://127.0.0.1:1/0"  # nothing listens on port 1: connection refused at once

Make = Callable[..., Any]


def now() -> float:
    return asyncio.get_running_loop().time()


async def until(cond: Callable[[], bool]) -> None:
    for _ in range(1000):
        if cond():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached")


@pytest.fixture
async def silent(own_redis: OwnRedis) -> AsyncIterator[SilentProxy]:
    async with SilentProxy(own_redis.port) as proxy:
        yield proxy


@pytest.fixture(params=["rate", "concurrency"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def make_limiter(kind: str, client: redis_asyncio.Redis, **kw: Any) -> Any:
    if kind == "rate":
        return RedisRateLimiter(client, "faults", 100, burst=5, **kw)
    return RedisConcurrencyLimiter(client, "faults", 2, lease_ttl=2.0, **kw)


async def acquire(lim: Any, timeout: float | None = None) -> Any:
    return await lim.acquire(timeout=timeout)


async def release(permit: Any) -> None:
    if isinstance(permit, aiolease.redis.RedisConcurrencyPermit):
        await permit.arelease()


# -- one error type, every time -----------------------------------------------------------------


async def test_unreachable_redis_raises_limiter_unavailable_every_time(kind: str) -> None:
    async with redis_asyncio.Redis.from_url(UNREACHABLE) as client:
        lim = make_limiter(kind, client)
        for _ in range(4):  # the first call fails; the next ones answer from the cool-down
            with pytest.raises(LimiterUnavailable) as info:
                await acquire(lim, timeout=1.0)
            assert isinstance(info.value, ConnectionError)
            assert isinstance(info.value.__cause__, RedisError | OSError)
            assert "Redis unavailable" in str(info.value)
            assert "'faults'" in str(info.value)
        await lim.aclose()


async def test_calls_that_fail_together_are_one_failure_of_the_cool_down(kind: str) -> None:
    # Five calls in flight when Redis fails are one failure: the cool-down is its first step
    # (it doubled per call: 0.1, 0.2, 0.4, 0.8, then 1 s, for one refused connection). The
    # probe after it, failing, doubles it (as a background call does not: the concurrency
    # limiter gives each failed acquisition's slot back in the background).
    from aiolease.redis._health import COOLDOWN_MIN

    async with redis_asyncio.Redis.from_url(UNREACHABLE) as client:
        lim = make_limiter(kind, client)
        outcomes = await asyncio.gather(
            *(acquire(lim, timeout=1.0) for _ in range(5)), return_exceptions=True
        )
        assert all(isinstance(o, LimiterUnavailable) for o in outcomes), outcomes
        health = lim._health
        assert health.cooldown == COOLDOWN_MIN
        # (t + 0.1) - t can round above 0.1 when the loop's clock reads the same t twice
        assert 0 < health.retry_after(now()) <= COOLDOWN_MIN + 1e-9
        await asyncio.sleep(health.retry_after(now()))
        with pytest.raises(LimiterUnavailable):
            await acquire(lim, timeout=1.0)  # the probe
        assert health.cooldown == 2 * COOLDOWN_MIN
        await lim.aclose()


class _Held:
    """A client (not a ``redis.asyncio.Redis``: each call goes to its ``evalsha``) whose
    acquisition calls wait until the test ends them (``held``, in call order); its other
    calls (a withdrawal in the background) are answered at once."""

    def __init__(self, sha: str) -> None:
        self.sha = sha
        self.held: list[asyncio.Future[Any]] = []

    async def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:
        if sha != self.sha:
            return 0
        fut = asyncio.get_running_loop().create_future()
        self.held.append(fut)
        return await fut


async def steps(n: int = 20) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


@pytest.mark.aiolease_virtual_time
async def test_a_call_sent_before_an_outage_ending_does_not_let_a_second_probe_through(
    kind: str,
) -> None:
    # Calls go one at a time: `early`, admitted before Redis failed, is still out when the
    # cool-down ends and `probe` is sent after it. `early` failing then (one failure with the
    # one that started the outage) ended "the probe" too: the next call probed Redis as well,
    # while the probe was still out.
    client = _Held(RATE_ACQUIRE.sha if kind == "rate" else CONC_ACQUIRE.sha)
    lim: Any
    answered: type[Exception]
    if kind == "rate":
        lim = RedisRateLimiter(client, "probe", 10, on_error="deny", call_timeout=10.0)  # type: ignore[arg-type]
        answered = RateLimitExceeded
    else:
        lim = RedisConcurrencyLimiter(client, "probe", 2, call_timeout=10.0)  # type: ignore[arg-type]
        answered = LimiterUnavailable
    first = asyncio.ensure_future(acquire(lim))
    early = asyncio.ensure_future(acquire(lim))
    await steps()
    client.held[0].set_exception(RedisConnectionError("Connection refused"))  # the outage
    with pytest.raises(answered):
        await first
    await steps()
    assert len(client.held) == 2  # early's call, sent
    await asyncio.sleep(lim._health.retry_after(now()))
    probe = asyncio.ensure_future(acquire(lim))  # the probe: queued behind early's call
    await steps()
    with pytest.raises(answered):
        await acquire(lim)  # while the probe is out: answered without Redis
    client.held[1].set_exception(RedisConnectionError("Connection reset by peer"))
    with pytest.raises(answered):
        await early
    await steps()
    assert len(client.held) == 3  # the probe's call, sent
    after = asyncio.ensure_future(acquire(lim))
    await steps()
    assert after.done(), "a second probe went to Redis while the first was still out"
    with pytest.raises(answered):
        await after
    assert len(client.held) == 3
    client.held[2].set_exception(RedisConnectionError("Connection refused"))
    with pytest.raises(answered):
        await probe
    await lim.aclose()


async def test_silent_redis_bounds_acquire_timeout(kind: str, silent: SilentProxy) -> None:
    # call_timeout longer than the acquire timeout: the acquire's own deadline bounds the call.
    async with redis_asyncio.Redis.from_url(silent.url) as client:
        lim = make_limiter(kind, client, call_timeout=5.0)
        await release(await acquire(lim))  # connected and working
        silent.silence()
        for timeout in (0.0, 0.3, 1.0):
            t0 = now()
            with pytest.raises(LimiterUnavailable) as info:
                await acquire(lim, timeout=timeout)
            assert now() - t0 <= timeout + 0.1 + SLACK
            assert not isinstance(info.value, TimeoutError)
        silent.heal()
        await lim.aclose()


async def test_silent_redis_answered_within_call_timeout(kind: str, silent: SilentProxy) -> None:
    async with redis_asyncio.Redis.from_url(silent.url) as client:
        lim = make_limiter(kind, client, call_timeout=0.3)
        silent.silence()  # silent from the first byte: the connect itself hangs
        for _ in range(2):
            t0 = now()
            with pytest.raises(LimiterUnavailable):
                await acquire(lim)  # no acquire timeout: call_timeout alone bounds it
            assert now() - t0 <= 0.3 + SLACK
        silent.heal()
        await lim.aclose()


@pytest.mark.parametrize("policy", ["allow", "deny"])
async def test_on_error_answers_within_call_timeout_when_redis_is_silent(
    policy: str, silent: SilentProxy
) -> None:
    async with redis_asyncio.Redis.from_url(silent.url) as client:
        lim = RedisRateLimiter(client, "faults", 10, on_error=policy, call_timeout=0.2)  # type: ignore[arg-type]
        await lim.acquire()
        silent.silence()
        t0 = now()
        for _ in range(5):
            if policy == "allow":
                assert (await lim.acquire()).degraded
            else:
                with pytest.raises(RateLimitExceeded) as info:
                    await lim.acquire()
                assert 0 < info.value.retry_after <= 1.0
                assert isinstance(info.value.__cause__, RedisError)
        assert now() - t0 <= 0.2 + SLACK  # one call waited; the cool-down answered the rest
        silent.heal()
        await lim.aclose()


async def test_no_retry_storm_while_redis_is_silent(silent: SilentProxy) -> None:
    # 150 acquisitions over ~1.5 s of silence: Redis is tried once per cool-down (0.1 s
    # doubling to 1 s), one call at a time, not once per acquisition.
    async with redis_asyncio.Redis.from_url(silent.url) as client:
        lim = RedisRateLimiter(client, "faults", 1000, on_error="allow", call_timeout=0.1)
        await lim.acquire()
        silent.silence()
        before = silent.connections
        degraded = 0
        for _ in range(150):
            degraded += (await lim.acquire()).degraded
            await asyncio.sleep(0.01)
        assert degraded == 150
        attempts = lim.statistics().errors
        assert 1 <= attempts <= 6
        assert silent.connections - before <= attempts
        silent.heal()
        await lim.aclose()


async def test_concurrency_waiter_bounded_when_redis_goes_silent(silent: SilentProxy) -> None:
    async with redis_asyncio.Redis.from_url(silent.url) as client:
        sem = RedisConcurrencyLimiter(client, "faults", 1, lease_ttl=3.0, call_timeout=1.0)
        held = await sem.acquire()
        waiter = asyncio.ensure_future(sem.acquire(timeout=2.0))
        await asyncio.sleep(0.2)  # queued and subscribed
        silent.silence()
        t0 = now()
        with pytest.raises((LimitTimeout, LimiterUnavailable)):
            await waiter
        assert now() - t0 <= 2.0 + 0.1 + SLACK
        silent.heal()
        held.release()
        await sem.aclose()


async def test_the_error_says_why_the_pipe_was_dropped(kind: str, silent: SilentProxy) -> None:
    # redis-py 8 shows its errors as "network:TimeoutError" in repr(): the reason must be said
    # by its text, or every silent-Redis error reads "connection to Redis lost: network:...".
    async with redis_asyncio.Redis.from_url(silent.url) as client:
        lim = make_limiter(kind, client, call_timeout=0.2)
        await release(await acquire(lim))  # connected
        silent.silence()
        with pytest.raises(LimiterUnavailable, match=r"no reply from Redis within 0\.2s"):
            await acquire(lim)
        silent.heal()
        await lim.aclose()


@pytest.mark.parametrize("path", ["pipe", "public"])
async def test_a_call_whose_reply_was_lost_is_never_sent_again(
    kind: str, path: str, silent: SilentProxy
) -> None:
    # The connection is lost after Redis ran the acquisition's script, before its reply came: the
    # outcome is unknown, and the call must not be sent again. On the public path the client's
    # evalsha, under its retry policy (redis-py's default here), reconnected and ran the script
    # a second time: a second charge of the rate limit's burst. (The client is made by the
    # constructor: its default retry policy retries; from_url()'s does not.)
    async with redis_asyncio.Redis(host="127.0.0.1", port=silent.port) as client:
        lim: Any
        with compat_public(path == "public"):
            if kind == "rate":
                lim = RedisRateLimiter(client, "replay", 1, per=3600, burst=5, call_timeout=5.0)
            else:
                lim = RedisConcurrencyLimiter(client, "replay", 2, call_timeout=5.0)
        await release(await acquire(lim))  # connected, the scripts loaded
        script = RATE_ACQUIRE if kind == "rate" else CONC_ACQUIRE
        before = silent.sent.count(script.sha_b)
        silent.cut_at_reply(b"EVALSHA")
        # (no acquire timeout, and a call_timeout past redis-py's backoff before its first
        # retry, up to 2 s in redis-py 7.2: a replay would happen within the call's bound)
        call = asyncio.ensure_future(acquire(lim))
        await asyncio.wait([call])
        runs = silent.sent.count(script.sha_b) - before
        assert runs == 1, f"the acquisition's script was sent {runs} times"
        with pytest.raises(LimiterUnavailable):
            await call
        if kind == "rate":
            # The call was charged once: 3 of the burst of 5 left (the first acquisition took
            # one; a second run would have left 2).
            await asyncio.sleep(lim._health.retry_after(now()))
            admitted = 0
            for _ in range(4):
                with contextlib.suppress(RateLimitExceeded):
                    await lim.acquire(timeout=0)
                    admitted += 1
            assert admitted == 3
        await lim.aclose()


async def test_a_waiter_is_still_woken_after_its_hand_off_listener_was_cut(
    own_redis: OwnRedis,
) -> None:
    # The pub/sub connection is cut while a task waits: the waiter must subscribe again, so that
    # a release still wakes it at once (not at the next renewal, lease_ttl / 3 later).
    async with (
        redis_asyncio.Redis.from_url(own_redis.url) as client,
        redis_asyncio.Redis.from_url(own_redis.url) as admin,
    ):
        sem = RedisConcurrencyLimiter(client, "faults", 1, lease_ttl=30.0)
        held = await sem.acquire()
        waiter = asyncio.ensure_future(sem.acquire(timeout=10.0))
        await until(lambda: sem._listener_ready is not None and sem._listener_ready.is_set())
        listener = sem._listener
        assert listener is not None
        assert await admin.client_kill_filter(_type="pubsub") == 1
        await until(listener.done)
        await asyncio.sleep(0.1)  # the waiter has re-checked its place
        await held.arelease()
        async with asyncio.timeout(2.0):
            permit = await waiter
        await permit.arelease()
        await sem.aclose()


async def test_a_waiter_ends_with_runtime_error_at_aclose_wherever_it_is(
    own_redis: OwnRedis,
) -> None:
    # aclose() after `steps` loop steps of a waiter: in its first round trip, while it
    # subscribes, or queued. Each time it must end at once with RuntimeError (not as if Redis had
    # failed, and not only once the earliest lease could expire: lease_ttl here).
    async with redis_asyncio.Redis.from_url(own_redis.url) as client:
        for steps in range(60):
            sem = RedisConcurrencyLimiter(client, f"faults-{steps}", 1, lease_ttl=30.0)
            held = await sem.acquire()
            waiter = asyncio.ensure_future(sem.acquire())
            for _ in range(steps):
                await asyncio.sleep(0)
            await sem.aclose()
            async with asyncio.timeout(2.0):
                with pytest.raises(RuntimeError, match="closed"):
                    await waiter
            assert sem._renewer is None, steps  # nothing started after aclose()
            assert sem._listener is None, steps
            assert sem._health.down_since is None, steps  # Redis was never judged down
            del held


async def test_an_acquisition_in_flight_at_aclose_is_not_taken_for_a_redis_failure(
    own_redis: OwnRedis,
) -> None:
    # aclose() drops the pipe under a call still in flight: that is the limiter closing, not
    # Redis failing - RuntimeError, not an admission by on_error="allow" nor a "Redis
    # unavailable" outage.
    async with redis_asyncio.Redis.from_url(own_redis.url) as client:
        for steps in range(40):
            lim = RedisRateLimiter(client, f"faults-{steps}", 1000, burst=5, on_error="allow")
            task = asyncio.ensure_future(lim.acquire())
            for _ in range(steps):
                await asyncio.sleep(0)
            await lim.aclose()
            (outcome,) = await asyncio.gather(task, return_exceptions=True)
            if isinstance(outcome, BaseException):
                assert isinstance(outcome, RuntimeError), (steps, outcome)
                assert "closed" in str(outcome)
            else:
                assert not outcome.degraded, steps
            assert lim._health.down_since is None, steps


# -- down, then back ----------------------------------------------------------------------------


async def test_rate_limiter_recovers_after_a_restart(
    own_redis: OwnRedis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="aiolease.redis")
    async with redis_asyncio.Redis.from_url(own_redis.url) as client:
        lim = RedisRateLimiter(client, "faults", 1000, burst=10, call_timeout=0.2)
        await lim.acquire()
        await own_redis.kill()
        for _ in range(3):
            with pytest.raises(LimiterUnavailable):
                await lim.acquire(timeout=1.0)
        await own_redis.start()  # no persistence: the limiter state is gone
        t0 = now()
        while True:
            try:
                permit = await lim.acquire(timeout=1.0)
                break
            except LimiterUnavailable:
                await asyncio.sleep(0.01)
            assert now() - t0 < 2.0, "the limiter did not use Redis again"
        assert not permit.degraded
        assert lim.statistics().errors >= 1
        await lim.aclose()
    # One line when the outage starts, one when it ends (docs/logging.md), naming the limiter.
    (down,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "Redis unavailable for rate limiter 'faults'" in down.getMessage()
    assert "answering by on_error='raise' meanwhile" in down.getMessage()
    (up,) = [r for r in caplog.records if r.levelno == logging.INFO]
    assert "Redis answers again for rate limiter 'faults', after " in up.getMessage()


async def test_fallback_admits_while_redis_is_down_and_redis_takes_over_again(
    own_redis: OwnRedis,
) -> None:
    local = aiolease.RateLimiter(5, burst=5)
    async with redis_asyncio.Redis.from_url(own_redis.url) as client:
        lim = RedisRateLimiter(client, "faults", 100, burst=5, fallback=local, call_timeout=0.2)
        assert not (await lim.acquire()).degraded
        await own_redis.kill()
        degraded = [(await lim.acquire(timeout=1.0)).degraded for _ in range(5)]
        assert degraded == [True] * 5  # the local budget (burst 5) admitted them
        with pytest.raises(RateLimitExceeded):  # the local limit holds: rate 5/s, burst used
            await lim.acquire(timeout=0)
        await own_redis.start()
        await asyncio.sleep(1.1)  # past the longest cool-down
        permit = await lim.acquire(timeout=1.0)
        assert not permit.degraded  # Redis decides again
        await lim.aclose()


async def test_concurrency_fallback_gives_local_slots_while_redis_is_down(
    own_redis: OwnRedis,
) -> None:
    local = aiolease.ConcurrencyLimiter(1)
    async with redis_asyncio.Redis.from_url(own_redis.url) as client:
        sem = RedisConcurrencyLimiter(client, "faults", 3, fallback=local, call_timeout=0.2)
        await own_redis.kill()
        permit = await sem.acquire(timeout=1.0)
        assert permit.degraded
        assert local.statistics().in_use == 1
        with pytest.raises(LimitTimeout):  # the local limit (1) holds
            await sem.acquire(timeout=0.1)
        await permit.arelease()
        assert local.statistics().in_use == 0
        await sem.aclose()


def test_fallback_must_be_a_local_limiter_of_the_same_kind() -> None:
    client = redis_asyncio.Redis.from_url(UNREACHABLE)
    with pytest.raises(TypeError, match=r"fallback must be None or a local aiolease\.RateLimiter"):
        RedisRateLimiter(client, "n", 1, fallback=aiolease.ConcurrencyLimiter(1))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="give one of them"):
        RedisRateLimiter(client, "n", 1, on_error="allow", fallback=aiolease.RateLimiter(1))
    with pytest.raises(TypeError, match=r"local aiolease\.ConcurrencyLimiter"):
        RedisConcurrencyLimiter(client, "n", 1, fallback=aiolease.RateLimiter(1))  # type: ignore[arg-type]


# -- background tasks -----------------------------------------------------------------------------


def _own_tasks() -> set[asyncio.Task[Any]]:
    me = asyncio.current_task()
    return {t for t in asyncio.all_tasks() if t is not me and not t.done()}


async def test_aclose_ends_every_background_task(own_redis: OwnRedis) -> None:
    async with redis_asyncio.Redis.from_url(own_redis.url) as client:
        before = _own_tasks()
        sem = RedisConcurrencyLimiter(client, "faults", 1, lease_ttl=1.0)
        rate = RedisRateLimiter(client, "faults", 1000)
        held = await sem.acquire()
        waiter = asyncio.ensure_future(sem.acquire())
        await rate.acquire()
        rate.pause(0.01)
        await asyncio.sleep(0.1)
        assert _own_tasks() - before - {waiter}  # renewer, listener, pipe readers
        await rate.aclose()
        await sem.aclose()
        with pytest.raises(RuntimeError, match="closed"):
            await waiter  # a waiter still queued at aclose
        assert _own_tasks() - before == set()
        with pytest.raises(RuntimeError, match="closed"):
            await rate.acquire()
        del held


async def test_a_cancelled_aclose_still_gives_the_connection_back(
    own_redis: OwnRedis, kind: str
) -> None:
    """aclose() cancelled at any await (after it began) stops the caller's wait only: the
    close goes on, so the pipelined connection still goes back to the client's pool (a second
    aclose() is not needed, and leak_check could not ask for one: the limiter is closed)."""
    for steps in range(1, 6):
        async with redis_asyncio.Redis.from_url(own_redis.url) as client:
            lim: RedisRateLimiter | RedisConcurrencyLimiter
            if kind == "rate":
                lim = RedisRateLimiter(client, "faults", 1000)
                await lim.acquire()
                lim.pause(0.01)  # a background call for aclose() to wait for
            else:
                # (a name per round: the slot held at aclose() stays taken in Redis)
                lim = RedisConcurrencyLimiter(client, f"faults-{steps}", 1)
                held = await lim.acquire()  # a renewer for aclose() to wait for
            closing = asyncio.ensure_future(lim.aclose())
            for _ in range(steps):
                await asyncio.sleep(0)
            closing.cancel()
            with pytest.raises(asyncio.CancelledError):
                await closing
            # (redis-py's pool has no public count of the connections it lent)
            lent = client.connection_pool._in_use_connections
            await until(functools.partial(operator.not_, lent))
            if kind == "concurrency":
                del held


async def test_leak_check_reports_a_redis_limiter_left_open(own_redis: OwnRedis) -> None:
    async with redis_asyncio.Redis.from_url(own_redis.url) as client:
        opened: list[RedisRateLimiter] = []

        async def leave_open() -> None:
            async with leak_check():
                opened.append(RedisRateLimiter(client, "faults", 1000))
                await opened[0].acquire()

        with pytest.raises(AssertionError, match="left open"):
            await leave_open()
        await opened[0].aclose()
        async with leak_check():
            lim = RedisRateLimiter(client, "faults", 1000)
            await lim.acquire()
            await lim.aclose()


# -- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [RedisRateLimiter, RedisConcurrencyLimiter])
@pytest.mark.parametrize("client", [None, "redis://localhost:6379/0", b"redis://x"])
def test_a_client_that_is_not_a_client_fails_at_construction(cls: type, client: object) -> None:
    with pytest.raises(TypeError, match=r"redis\.asyncio\.Redis.*Redis\.from_url\(url\)"):
        cls(client, "n", 1)


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"rate": math.nan}, ValueError, "rate"),
        ({"rate": math.inf}, ValueError, "rate"),
        ({"rate": -1}, ValueError, "rate"),
        ({"per": 0}, ValueError, "per"),
        ({"burst": math.nan}, ValueError, "burst"),
        ({"call_timeout": math.inf}, ValueError, "call_timeout"),
        ({"call_timeout": -0.1}, ValueError, "call_timeout"),
        ({"name": ""}, TypeError, "name"),
        ({"name": "bad\ud800"}, ValueError, "UTF-8"),
        ({"name": "x" * 2000}, ValueError, "1024 bytes"),
        ({"prefix": "a{b}"}, ValueError, "prefix"),
        ({"on_error": "ignore"}, ValueError, "on_error"),
    ],
)
def test_rate_limiter_arguments_checked_at_construction(
    kwargs: dict[str, Any], error: type[Exception], words: str
) -> None:
    client = redis_asyncio.Redis.from_url(UNREACHABLE)
    args: dict[str, Any] = {"name": "n", "rate": 1.0, **kwargs}
    with pytest.raises(error, match=words):
        RedisRateLimiter(client, **args)


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"lease_ttl": math.nan}, ValueError, "lease_ttl"),
        ({"lease_ttl": math.inf}, ValueError, "lease_ttl"),
        ({"lease_ttl": 0.01}, ValueError, "lease_ttl"),
        ({"lease_ttl": 1e15}, ValueError, r"lease_ttl must be .* <= 2\*\*31"),
        ({"limit": 0}, ValueError, "limit"),
        ({"limit": 2.5}, TypeError, "limit"),
        ({"call_timeout": math.nan}, ValueError, "call_timeout"),
        ({"name": "\udcff"}, ValueError, "name"),
    ],
)
def test_concurrency_limiter_arguments_checked_at_construction(
    kwargs: dict[str, Any], error: type[Exception], words: str
) -> None:
    client = redis_asyncio.Redis.from_url(UNREACHABLE)
    args: dict[str, Any] = {"name": "n", "limit": 1, **kwargs}
    with pytest.raises(error, match=words):
        RedisConcurrencyLimiter(client, **args)


@pytest.mark.parametrize(
    ("key", "error", "words"),
    [
        ("lone \ud800 surrogate", ValueError, "key must be encodable as UTF-8"),
        ("k" * 5000, ValueError, "key must be at most 1024 bytes"),
        (object(), TypeError, "key must be None, or a str"),
        (("a", ["list"]), TypeError, "key must be None"),
    ],
)
def test_bad_keys_fail_at_the_call(key: object, error: type[Exception], words: str) -> None:
    client = redis_asyncio.Redis.from_url(UNREACHABLE)
    rate = RedisRateLimiter(client, "n", 1)
    sem = RedisConcurrencyLimiter(client, "n", 1)
    with pytest.raises(error, match=words):
        rate.acquire(key=key)
    with pytest.raises(error, match=words):
        sem.acquire(key=key)
    for bad in (math.nan, -1.0):
        with pytest.raises(ValueError, match="timeout"):
            rate.acquire(timeout=bad)
        with pytest.raises(ValueError, match="timeout"):
            sem.acquire(timeout=bad)


async def test_binary_and_brace_keys_and_names_work(own_redis: OwnRedis) -> None:
    async with redis_asyncio.Redis.from_url(own_redis.url) as client:
        lim = RedisRateLimiter(client, "{tag}|name%", 1, per=100.0, burst=10)  # keys live 100 s
        for key in (b"\x00\xff{x}", "{}", ("t", b"\x01", 3), "}{"):
            await lim.acquire(key=key)
        found = await client.keys("aiolease:rate:*")
        keys = sorted(k.decode() if isinstance(k, bytes) else k for k in found)
        assert len(keys) == 4
        for k in keys:  # one hash tag per key, and the user's braces escaped inside it
            assert k.count("{") == 1
            assert k.count("}") == 1
            assert k.startswith("aiolease:rate:{%7Btag%7D%7Cname%25|")
        await lim.aclose()


def test_local_limiters_check_their_arguments_too() -> None:
    for bad in (math.nan, math.inf, -1, 0):
        with pytest.raises(ValueError, match="rate"):
            aiolease.RateLimiter(bad)
    with pytest.raises(TypeError, match="rate must be a finite number > 0, got str"):
        aiolease.RateLimiter("10")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="name must be None or a str"):
        aiolease.RateLimiter(1, name=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="name must be None or a str"):
        aiolease.ConcurrencyLimiter(1, name=b"x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout"):
        aiolease.ConcurrencyLimiter(1).acquire(timeout=math.nan)
    with pytest.raises(ValueError, match="timeout"):
        aiolease.RateLimiter(1).acquire(timeout=-1)


# -- public ground ---------------------------------------------------------------------------------


def test_aiolease_compat_public_takes_the_public_redis_path() -> None:
    code = (
        "import redis.asyncio as r\n"
        "from aiolease._compat import redis as c\n"
        "from aiolease.redis import RedisRateLimiter\n"
        "lim = RedisRateLimiter(r.Redis.from_url('redis://127.0.0.1:1/0'), 'n', 1)\n"
        "print(c.PIPE, lim._call._direct)\n"
    )
    for env, expected in (("public", "False False"), ("", "True True")):
        out = subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "AIOLEASE_COMPAT": env},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert out.strip() == expected


async def test_an_outage_only_background_calls_meet_is_one_warning(
    own_redis: OwnRedis, caplog: pytest.LogCaptureFixture
) -> None:
    """docs/logging.md: Redis unavailable is a WARNING once per outage, the background calls
    that fail during it DEBUG. Releases made while Redis was down each logged a WARNING of
    their own, and the outage none, when no acquisition met it first."""
    caplog.set_level(logging.DEBUG, logger="aiolease.redis")
    async with redis_asyncio.Redis.from_url(own_redis.url, socket_timeout=1.0) as client:
        lim = RedisConcurrencyLimiter(client, "outage", 3, call_timeout=0.5)
        permits = [await lim.acquire() for _ in range(3)]
        await own_redis.kill()
        for permit in permits[:2]:
            await permit.arelease()  # as `async with` does: each one's Redis call fails
        permits[2].release()  # its call fails in the background
        await lim.aclose()  # (waits for the background calls)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("Redis unavailable for concurrency limiter 'outage'")
    failed = [r for r in caplog.records if r.getMessage().startswith(("releasing", "concurrency"))]
    assert len(failed) >= 3, [r.getMessage() for r in caplog.records]
    assert all(r.levelno == logging.DEBUG for r in failed)
    assert lim.statistics().in_use == 0


async def test_closing_never_waits_forever_for_a_call_that_ignores_its_cancellation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # redis-py can lose a cancellation while it connects or reads (a blackholed peer, no
    # socket timeout): aclose() cancels such a call, waits call_timeout more, and leaves it.
    from aiolease.redis._background import Background
    from aiolease.redis._health import Health

    background = Background(Health("concurrency limiter 'stubborn'"))
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                pass  # the cancellation lost, as in redis-py's connect

    task = background.spawn(stubborn())
    await asyncio.sleep(0)
    loop = asyncio.get_running_loop()
    start = loop.time()
    try:
        with caplog.at_level(logging.WARNING, "aiolease.redis"):
            await asyncio.wait_for(background.aclose(0.05), 5)
        assert loop.time() - start < 1
        assert "did not end within 0.05s of being cancelled; left running" in caplog.text
    finally:
        release.set()  # (the stubborn call ends, so the test's loop can close)
        await task


# -- refused credentials: a configuration error, not an outage -----------------------------------


@pytest.mark.parametrize(
    ("kind", "answer"),
    [
        ("rate", "on_error"),
        ("rate", "fallback"),
        ("concurrency", None),
        ("concurrency", "fallback"),
    ],
)
async def test_refused_credentials_raise_and_are_not_answered_as_an_outage(
    kind: str, answer: str | None, own_redis: OwnRedis, caplog: pytest.LogCaptureFixture
) -> None:
    # A wrong password must not turn the limit off: on_error="allow" or a fallback would admit
    # every caller unchecked for as long as the configuration stays wrong.
    async with redis_asyncio.Redis.from_url(own_redis.url) as admin:
        await admin.config_set("requirepass", "right-secret")
    url = f"redis://:wrong-secret@127.0.0.1:{own_redis.port}/0"
    local: Any = (
        aiolease.RateLimiter(5, burst=5) if kind == "rate" else aiolease.ConcurrencyLimiter(1)
    )
    kw: dict[str, Any] = {}
    if answer == "fallback":
        kw["fallback"] = local
    elif answer == "on_error":
        kw["on_error"] = "allow"
    async with redis_asyncio.Redis.from_url(url) as client:
        lim = make_limiter(kind, client, **kw)
        for _ in range(3):  # every time, not only until a cool-down starts
            with pytest.raises(RedisError, match="refused the credentials") as info:
                await acquire(lim, timeout=1.0)
            assert not isinstance(info.value, ConnectionError)  # not LimiterUnavailable's kind
            assert "wrong-secret" not in str(info.value)
        if kind == "rate":
            assert lim.statistics().degraded == 0
        else:
            assert local.statistics().in_use == 0
        assert not [r for r in caplog.records if "unavailable" in r.getMessage()]
        await lim.aclose()


def test_a_limiter_whose_loop_was_closed_works_on_the_next_loop(redis_url: str, kind: str) -> None:
    """The first loop was closed with the limiter's tasks still pending (not cancelled, as
    asyncio.run does): on the next loop a call waited for a reply that loop's pipe reader
    would never read (forever without a timeout), and the leases were no longer renewed."""
    with warnings.catch_warnings():  # the first loop's connection, never closed by that loop
        warnings.simplefilter("ignore", ResourceWarning)
        _use_after_a_closed_loop(redis_url, kind)
        gc.collect()


def test_a_rate_limiter_whose_loop_closed_on_sleepers_sleeps_on_the_next_loop(
    redis_url: str,
) -> None:
    """The first loop was closed while tasks slept on a key (their reservations made): on the
    next loop an acquisition that must sleep on that key sleeps and is admitted (the sleepers
    left behind can never run again, and nothing of their loop may be used)."""
    with warnings.catch_warnings():  # the first loop's connection, never closed by that loop
        warnings.simplefilter("ignore", ResourceWarning)
        name = f"closed-loop-sleepers-{os.getpid()}"
        client = redis_asyncio.Redis.from_url(redis_url)
        lim = RedisRateLimiter(client, name, 20, burst=1)

        async def first() -> list[asyncio.Task[Any]]:
            await lim.acquire(key="k")
            # each sleeps 50 ms after the previous one
            sleepers = [asyncio.ensure_future(lim.acquire(key="k")) for _ in range(3)]
            await asyncio.sleep(0.01)  # their reservations are made: they sleep
            return sleepers

        left = run_then_close(first)
        assert not any(s.done() for s in left)
        client.connection_pool.reset()  # type: ignore[no-untyped-call]

        async def second() -> None:
            try:
                async with asyncio.timeout(10):
                    await lim.acquire(key="k")
                    await lim.acquire(key="k")  # sleeps
                    await lim.aclose()
            finally:
                with contextlib.suppress(Exception):
                    await client.delete(*[k async for k in client.scan_iter(f"*{name}*")])
                await client.aclose()

        asyncio.run(second())
        gc.collect()


def _use_after_a_closed_loop(redis_url: str, kind: str) -> None:
    name = f"closed-loop-{os.getpid()}"
    client = redis_asyncio.Redis.from_url(redis_url)
    lim: Any
    if kind == "rate":
        lim = RedisRateLimiter(client, name, 1000, burst=5)
    else:
        lim = RedisConcurrencyLimiter(client, name, 1, lease_ttl=0.5)

    async def first() -> Any:
        # (a concurrency permit stays held: the renewer of that loop is pending too)
        return await lim.acquire(key="a") if kind == "concurrency" else await lim.acquire()

    left = run_then_close(first)
    # redis-py's own pool keeps connections of that loop (its concern, not the limiter's):
    # forgotten, as a program reusing a client on a new loop must
    client.connection_pool.reset()  # type: ignore[no-untyped-call]

    async def second() -> None:
        try:
            async with asyncio.timeout(10):
                permit = await acquire(lim)
                if kind == "concurrency":
                    await asyncio.sleep(1.0)  # twice lease_ttl: renewed on this loop
                    assert not permit.lost
                    assert await lim.in_use() == 1
                    await left.arelease()
                await release(permit)
                await lim.aclose()
        finally:
            await client.aclose()

    asyncio.run(second())
