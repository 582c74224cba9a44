"""RedisRateLimiter beyond the shared contract: scripts, clocks, errors, Cluster keys, expiry.

The contract itself (accuracy, FIFO, fail-fast, cancel give-back, keys, pause, settle) runs
over the Redis implementation in test_rate_contract.py (see _redis_factories.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import math
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis.asyncio as redis_asyncio
from _redis_factories import (
    TOL,
    compat_public,
    delete_keys,
    disconnected_under_calls,
    eventually,
    redis_client,
    through_proxy,
    unique_name,
)
from _redis_server import OwnRedis, own_redis
from redis.crc import key_slot
from redis.credentials import CredentialProvider
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from aiolease import LimiterUnavailable, RateLimitExceeded
from aiolease.redis import RedisConcurrencyLimiter, RedisRateLimiter, redis_key
from aiolease.redis._pipe import text, wake
from aiolease.redis._scripts import CONC_ACQUIRE, RATE_ACQUIRE
from aiolease.testing import VirtualTimeLoop
from cancelling import cancel_after_steps

__all__ = ["own_redis"]  # the fixture, imported for pytest

pytestmark = pytest.mark.redis

UNREACHABLE = "redis://127.0.0.1:1/0"  # nothing listens on port 1: connection refused at once


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[redis_asyncio.Redis]:
    async with redis_client(redis_url) as c:
        yield c


@pytest.fixture
async def name(client: redis_asyncio.Redis) -> AsyncIterator[str]:
    n = unique_name("rate")
    yield n
    await delete_keys(client, n)


def now() -> float:
    return asyncio.get_running_loop().time()


# -- one round trip, scripts ---------------------------------------------------------------------


async def test_each_acquire_is_one_round_trip_even_when_it_waits(
    client: redis_asyncio.Redis, name: str
) -> None:
    lim = RedisRateLimiter(client, name, 20, burst=1)  # T = 50 ms
    await lim.acquire()  # connects (and loads the script if the server lacks it)
    sent = lim._call.sent
    t0 = now()
    for _ in range(4):
        await lim.acquire()  # each waits ~50 ms: one script call, then one sleep
    assert now() - t0 >= 0.15 - TOL
    assert lim._call.sent == sent + 4  # no polling, no second call per acquire
    s = lim.statistics()
    assert s.admitted == 5
    assert s.wait_time_max > 0


async def test_noscript_after_script_flush_reloads_once(own_redis: OwnRedis) -> None:
    # On a server of its own: SCRIPT FLUSH is server-wide (another run's EVALSHA would fail).
    async with redis_client(own_redis.url) as client:
        lim = RedisRateLimiter(client, unique_name("rate"), 1000, burst=10)
        await lim.acquire()
        loads = lim._call._loaded
        await client.script_flush()
        permit = await lim.acquire()  # NOSCRIPT -> one SCRIPT LOAD -> EVALSHA again
        assert permit.cost == 1
        assert lim._call._loaded == loads + 1
        assert (await client.script_exists(RATE_ACQUIRE.sha)) == [True]
        await lim.acquire()
        assert lim._call._loaded == loads + 1  # cached again: no further load
        assert lim.statistics().admitted == 3


async def test_the_server_clock_is_used_not_the_clients(
    client: redis_asyncio.Redis, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A client clock an hour off changes nothing with clock="server" (the default)...
    import time

    lim = RedisRateLimiter(client, name, 1, burst=1)
    await lim.acquire()
    monkeypatch.setattr(time, "time", lambda: 1e9)  # 2001: far in the past
    with pytest.raises(RateLimitExceeded) as info:
        await lim.acquire_nowait()
    assert 0.5 < info.value.retry_after <= 1.0


async def test_client_clock_fallback(client: redis_asyncio.Redis, name: str) -> None:
    # ...while clock="client" (for servers that forbid TIME in scripts) uses the wall clock.
    lim = RedisRateLimiter(client, name, 2, burst=1, clock="client")
    t0 = now()
    await lim.acquire()
    with pytest.raises(RateLimitExceeded) as info:
        await lim.acquire_nowait()
    assert 0.4 < info.value.retry_after <= 0.5
    await lim.acquire()
    assert 0.5 - TOL <= now() - t0 <= 0.5 + 1.0  # never early; late only on a loaded machine


# -- keys: Cluster slots, escaping, expiry --------------------------------------------------------


@pytest.mark.parametrize(
    ("lname", "key"),
    [
        ("api", None),
        ("api", "tenant-1"),
        ("a{b}c", "x}y{z"),  # braces in names/keys cannot move the hash tag
        ("}", "{"),
        ("n|1", 7),
        ("n", ("tenant", 7)),
        ("n", b"\xff\x00"),
    ],
)
def test_keys_of_one_call_share_a_cluster_slot(lname: str, key: object) -> None:
    rate_key = redis_key("aiolease", "rate", lname, key)
    assert rate_key.count("{") == 1, rate_key
    assert rate_key.count("}") == 1, rate_key
    lim = RedisConcurrencyLimiter.__new__(RedisConcurrencyLimiter)
    lim._prefix, lim._name = "aiolease", lname
    conc_keys = lim._keys(key)
    assert len(conc_keys) == 5
    assert len({key_slot(k.encode("latin-1")) for k in conc_keys}) == 1, conc_keys


def test_different_keys_and_names_do_not_collide() -> None:
    made = {
        redis_key("aiolease", "rate", n, k)
        for n, k in [
            ("a", None),
            ("a", "b"),
            ("a|b", None),
            ("a", "#5"),
            ("a", 5),
            ("a", "5"),
            ("a", ("5",)),
            ("a", b"5"),
        ]
    }
    assert len(made) == 8


def test_unsupported_key_types_are_refused() -> None:
    with pytest.raises(TypeError, match="key must be"):
        redis_key("aiolease", "rate", "n", object())
    with pytest.raises(TypeError, match="key must be"):
        redis_key("aiolease", "rate", "n", ("ok", frozenset()))


async def test_state_key_expires_when_its_debt_runs_out(
    client: redis_asyncio.Redis, name: str
) -> None:
    lim = RedisRateLimiter(client, name, 10, burst=5)  # T = 100 ms
    await lim.acquire(cost=3, key="k")
    rkey = redis_key("aiolease", "rate", name, "k")
    ttl = await client.pttl(rkey)
    assert 0 < ttl <= 300 + 2  # exactly the debt: 3 x 100 ms
    await asyncio.sleep(0.35)
    assert await client.exists(rkey) == 0


async def test_pause_keeps_the_key_until_the_pause_ends(
    client: redis_asyncio.Redis, name: str
) -> None:
    lim = RedisRateLimiter(client, name, 100)
    await lim.pause(0.3)
    ttl = await client.pttl(redis_key("aiolease", "rate", name))
    assert 250 < ttl <= 302


# -- across limiter objects (what other processes see) -------------------------------------------


async def test_two_clients_share_one_limit(redis_url: str, name: str) -> None:
    async with redis_client(redis_url) as c1, redis_client(redis_url) as c2:
        a = RedisRateLimiter(c1, name, 2, burst=2)
        b = RedisRateLimiter(c2, name, 2, burst=2)
        await a.acquire()
        await b.acquire()
        with pytest.raises(RateLimitExceeded):
            await a.acquire_nowait()
        with pytest.raises(RateLimitExceeded):
            await b.acquire_nowait()


async def test_pause_from_one_client_holds_newcomers_of_another(redis_url: str, name: str) -> None:
    async with redis_client(redis_url) as c1, redis_client(redis_url) as c2:
        a = RedisRateLimiter(c1, name, 100)
        b = RedisRateLimiter(c2, name, 100)
        await a.pause(0.3)
        with pytest.raises(RateLimitExceeded) as info:
            await b.acquire_nowait()
        assert 0.2 < info.value.retry_after <= 0.3
        t0 = now()
        await b.acquire()
        assert now() - t0 >= 0.2


# -- cancellation ----------------------------------------------------------------------------------


@pytest.mark.parametrize("public", [False, True], ids=["pipe", "public"])
@pytest.mark.parametrize("kind", ["rate", "concurrency"])
async def test_a_caller_cancelled_while_the_limiter_connects_is_cancelled(
    redis_url: str, name: str, kind: str, public: bool
) -> None:
    # The first call of a limiter takes a connection from the client's pool; redis-py can hand
    # one back even though its caller was cancelled while it connected. Whatever instant the
    # cancellation lands on (counted in loop iterations after the call started), the caller ends
    # cancelled, never admitted.
    admitted = []
    for steps in range(16):
        async with redis_client(redis_url) as fresh:  # no connection in its pool yet
            with compat_public(public):
                lim: Any = (
                    RedisRateLimiter(fresh, name, 1000, burst=100)
                    if kind == "rate"
                    else RedisConcurrencyLimiter(fresh, name, 100)
                )

            async def acquire(lim: Any = lim) -> Any:
                return await lim.acquire()

            task = asyncio.ensure_future(acquire())
            for _ in range(steps):
                await asyncio.sleep(0)
            if task.cancel():
                with contextlib.suppress(asyncio.CancelledError):
                    permit = await task
                    admitted.append(steps)
                    if kind == "concurrency":
                        await permit.arelease()
            await lim.aclose()
    assert admitted == [], f"cancelled after these many loop iterations, yet admitted: {admitted}"


class _HeldCredentials(CredentialProvider):
    """Credentials fetched by an await (a token from an identity service); the first fetch
    waits until ``go`` is set. The server's default user accepts any password."""

    def __init__(self) -> None:
        self.fetches = 0
        self.arrived = asyncio.Event()
        self.go = asyncio.Event()

    def get_credentials(self) -> tuple[str, str]:
        return ("default", "any")

    async def get_credentials_async(self) -> tuple[str, str]:
        self.fetches += 1
        if self.fetches == 1:
            self.arrived.set()
            await self.go.wait()
        return ("default", "any")


@pytest.mark.parametrize("how", ["cancel", "bound"])
@pytest.mark.parametrize("public", [False, True], ids=["pipe", "public"])
async def test_a_call_cancelled_in_the_handshake_leaves_no_half_connected_connection(
    redis_url: str, name: str, public: bool, how: str
) -> None:
    # Cancelled while redis-py's handshake awaited the client's credential provider, a call's
    # connection went back to the client's pool connected but without its AUTH and SELECT
    # (redis-py < 8 closes it only on a Redis error): the next call ran on it, unauthenticated,
    # in database 0. It is made again, all of its handshake.
    creds = _HeldCredentials()
    async with redis_client(redis_url, credential_provider=creds) as fresh:
        with compat_public(public):
            lim = RedisRateLimiter(fresh, name, 1, 60, burst=100, call_timeout=0.2)
        if how == "cancel" and not lim._call._direct:
            pytest.skip("public path: a cancelled caller's call goes on, under its bound")
        task = asyncio.ensure_future(lim.acquire())
        await asyncio.wait_for(creds.arrived.wait(), 5)
        if how == "cancel":
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        else:  # the call's own bound (call_timeout) ends it
            with pytest.raises(LimiterUnavailable):
                await task
            await asyncio.sleep(0.15)  # the cool-down after one failure
        await lim.acquire()
        assert creds.fetches == 2  # the second call connected again
        db = fresh.connection_pool.connection_kwargs.get("db", 0)
        found = [k async for k in fresh.scan_iter(match=f"aiolease:*{{{name}*")]
        assert found, f"the limiter's key is not in database {db}"
        await lim.aclose()


@pytest.mark.parametrize("kind", ["rate", "concurrency"])
async def test_a_public_path_call_cancelled_by_its_bound_or_aclose_ends_without_a_reply(
    redis_url: str, name: str, kind: str
) -> None:
    # Without the pipe each call runs in a task of its own, which its bound (Bound) and
    # aclose() end by cancelling it. With a socket_timeout, redis-py on Python 3.11 sends
    # through asyncio.wait_for, which loses a cancellation that lands as a send completes
    # (in get_connection()'s handshake, or the call's own EVALSHA): the call went on (up to
    # socket_timeout for a silent server) and its caller was admitted past the bound.
    # Whatever loop iteration the cancellation lands on, the call ends and nobody is admitted.
    admitted = []
    for steps in range(48):
        async with redis_client(redis_url, socket_timeout=5.0) as fresh:
            with compat_public(True):
                lim: Any = (
                    RedisRateLimiter(fresh, name, 1000, burst=100)
                    if kind == "rate"
                    else RedisConcurrencyLimiter(fresh, name, 100)
                )
            assert not lim._call._direct
            task = asyncio.ensure_future(lim.acquire())
            await asyncio.sleep(0)
            (call,) = lim._call._calls  # the call's task, as Bound and aclose() cancel it
            for _ in range(steps):
                await asyncio.sleep(0)
            if call.cancel():
                with contextlib.suppress(LimiterUnavailable):  # (its on_error: raise)
                    async with asyncio.timeout(5):
                        permit = await task
                    admitted.append(steps)
                    if kind == "concurrency":
                        await permit.arelease()
            else:
                permit = await task
                if kind == "concurrency":
                    await permit.arelease()
            await lim.aclose()
    assert admitted == [], f"its call cancelled after these many loop iterations: {admitted}"


async def test_cancel_during_the_round_trip_gives_the_reservation_back(
    client: redis_asyncio.Redis, name: str, redis_url: str
) -> None:
    # Through a proxy that delays every chunk, the script reaches Redis (and reserves the next
    # slot) well before its reply is back: the task is cancelled in between.
    async with through_proxy(redis_url) as (proxy, slow):
        lim = RedisRateLimiter(slow, name, 1, 10, burst=1, call_timeout=5.0)
        await lim.acquire()  # the next slot is 10 s away
        state = await client.get(lim._rkey(None))
        proxy.set_latency(0.25)
        task = asyncio.ensure_future(lim.acquire())

        async def changed() -> bool:
            return await client.get(lim._rkey(None)) != state

        await eventually(changed)  # reserved...
        assert not task.done()  # ...and the reply has not come yet
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

        async def settled() -> bool:  # the refund is sent when the abandoned reply arrives
            return not (lim._call._pending or lim._call._calls or lim._bg.tasks)

        await eventually(settled)
        proxy.set_latency(0)
        with pytest.raises(RateLimitExceeded) as info:
            await lim.acquire_nowait()
        # had the cancelled reservation stayed, the next slot would be ~20 s away
        assert info.value.retry_after <= 10.0
        assert lim.statistics().cancelled == 1
        assert any("left open" in p for p in lim._aiolease_leaks())
        await lim.aclose()
        assert lim._aiolease_leaks() == []


async def idle(lim: RedisRateLimiter) -> None:
    """Wait until the limiter's background calls and replies still to come are done (on the
    pipe, replies pending; through the client, with AIOLEASE_COMPAT=public, calls in flight)."""
    for _ in range(1000):
        if not (lim._bg.tasks or lim._call._pending or lim._call._calls):
            return
        await asyncio.sleep(0.002)
    raise AssertionError("background calls did not finish")


async def test_cancelled_at_any_step_the_reservation_is_given_back(
    client: redis_asyncio.Redis, name: str
) -> None:
    # Cancelled after `steps` loop steps: in the round trip, in the step between the reply being
    # handed over and the caller running (the reply used to be dropped there, and the
    # reservation with it), or while sleeping. Each time the key's state is what it was before.
    lim = RedisRateLimiter(client, name, 20, burst=1)

    async def acquire(key: str) -> object:
        return await lim.acquire(key=key)

    try:
        for steps in range(60):
            key = f"k{steps}"
            await lim.acquire(key=key)  # the burst is used: the next acquisition must wait
            before = await client.get(lim._rkey(key))
            cancelled, _ = await cancel_after_steps(acquire(key), steps)
            await idle(lim)
            if cancelled:
                assert await client.get(lim._rkey(key)) == before, steps
    finally:
        await lim.aclose()


async def test_admitted_at_once_then_cancelled_at_any_step_is_refunded(
    client: redis_asyncio.Redis, name: str
) -> None:
    # The same for an acquisition admitted at once: a caller cancelled before it saw its permit
    # is refunded (through settle), whichever step the cancellation came at.
    lim = RedisRateLimiter(client, name, 0.01, burst=1)  # no regain within the test

    async def acquire(key: str) -> object:
        return await lim.acquire(key=key)

    try:
        for steps in range(40):
            key = f"k{steps}"
            cancelled, _ = await cancel_after_steps(acquire(key), steps)
            await idle(lim)
            if cancelled:  # the burst is free again
                await lim.acquire_nowait(key=key)
    finally:
        await lim.aclose()


async def test_cancel_in_the_middle_moves_later_waiters_up(
    client: redis_asyncio.Redis, name: str
) -> None:
    lim = RedisRateLimiter(client, name, 5, burst=1)  # T = 200 ms
    await lim.acquire()
    t0 = now()
    first = asyncio.ensure_future(lim.acquire())  # slot 0.2
    await asyncio.sleep(0.05)
    second = asyncio.ensure_future(lim.acquire())  # slot 0.4
    await asyncio.sleep(0.05)
    first.cancel()  # in the middle: second moves up into its slot
    with pytest.raises(asyncio.CancelledError):
        await first
    # Nobody else wrote on the key: its debt moved back too (a newcomer gets slot 0.4, not 0.6).
    with pytest.raises(RateLimitExceeded) as info:
        await lim.acquire_nowait()
    assert info.value.retry_after <= 0.4 - 0.05
    await second
    assert now() - t0 <= 0.2 + TOL
    assert lim.statistics().cancelled == 1


async def _sleeping(limiter: RedisRateLimiter, n: int) -> bool:
    """Whether ``n`` waiters of ``limiter`` (on its default key) have reserved and sleep."""
    chain = limiter._sleepers.get(limiter._rkey(None))
    return (0 if chain is None else sum(not f.done() for f in chain.entries)) == n


async def _admission_times(
    lim: RedisRateLimiter, other: RedisRateLimiter, order: str
) -> tuple[dict[str, float], float]:
    """``order`` names who reserves, in turn: "l" = lim, "o" = other (another process).

    The first of lim's waiters is cancelled; returns the others' admission times (seconds
    after the start) and the retry_after a newcomer was told right after the cancel.
    """
    await lim.acquire()
    t0 = now()
    times: dict[str, float] = {}

    async def take(limiter: RedisRateLimiter, tag: str) -> None:
        await limiter.acquire()
        times[tag] = now() - t0

    tasks = {}
    for i, who in enumerate(order):
        limiter = lim if who == "l" else other
        tasks[f"{who}{i}"] = asyncio.ensure_future(take(limiter, f"{who}{i}"))
        # Each reserves before the next starts (a fixed sleep is too short for a slow reply).
        await eventually(functools.partial(_sleeping, limiter, order[: i + 1].count(who)))
    victim = tasks.pop(f"l{order.index('l')}")
    victim.cancel()
    with pytest.raises(asyncio.CancelledError):
        await victim
    with pytest.raises(RateLimitExceeded) as info:
        await other.acquire_nowait()
    retry = info.value.retry_after + (now() - t0)  # the newcomer's slot, after t0
    await asyncio.gather(*tasks.values())
    slots = sorted(times.values())
    assert all(b - a >= 0.2 - TOL for a, b in itertools.pairwise(slots)), times  # the bound holds
    return times, retry


async def test_no_move_up_past_another_process_reservation(
    client: redis_asyncio.Redis, redis_url: str, name: str
) -> None:
    async with redis_client(redis_url) as c2:
        lim = RedisRateLimiter(client, name, 5, burst=1)  # T = 200 ms
        other = RedisRateLimiter(c2, name, 5, burst=1)
        # l0 slot 0.2, o1 0.4 (another process, in between), l2 0.6; l0 is cancelled.
        times, retry = await _admission_times(lim, other, "lol")
    assert times["o1"] >= 0.4 - TOL
    assert times["l2"] >= 0.6 - TOL  # not moved: o1 was scheduled after l0's slot
    assert retry >= 0.8 - TOL  # the debt is not lowered either: l0's slot is lost once


async def test_cas_failure_moves_own_waiters_up_but_keeps_the_debt(
    client: redis_asyncio.Redis, redis_url: str, name: str
) -> None:
    async with redis_client(redis_url) as c2:
        lim = RedisRateLimiter(client, name, 5, burst=1)  # T = 200 ms
        other = RedisRateLimiter(c2, name, 5, burst=1)
        # l0 slot 0.2, l1 0.4, o2 0.6 (another process reserved after lim's last write);
        # cancelling l0 moves l1 up (l0's reservation counts as made after l1, unused), but the
        # compare-and-swap fails, so the debt stays: o2 and newcomers keep their slots.
        times, retry = await _admission_times(lim, other, "llo")
    assert times["l1"] <= 0.2 + TOL
    assert times["o2"] >= 0.6 - TOL
    assert retry >= 0.8 - TOL


# -- pause: the re-queued waiters give their reservations back ----------------------------------


async def _paused_schedule(
    lim: RedisRateLimiter, other: RedisRateLimiter, order: str
) -> tuple[float, list[asyncio.Task[Any]]]:
    """``order`` names who reserves, in turn ("l" = lim, "o" = other, another process), after
    lim's admission at t0; then lim pauses 0.1 s and its sleeping waiters queue again.

    Returns the slot (seconds after t0) a newcomer is told once they have all reserved again,
    and the waiting tasks (the caller cancels them).
    """
    await lim.acquire()
    t0 = now()
    tasks = []
    for i, who in enumerate(order):
        limiter = lim if who == "l" else other
        tasks.append(asyncio.ensure_future(limiter.acquire()))
        # Each reserves before the next starts, and before the pause: a reply still in flight
        # when pause() is called (a slow round trip) is not in lim's schedule yet, and its write
        # makes the pause's compare-and-swap give nothing back (docs/redis.md, "Pause").
        await eventually(functools.partial(_sleeping, limiter, order[: i + 1].count(who)))
    await lim.pause(0.1)
    await eventually(functools.partial(_sleeping, lim, order.count("l")))  # all queued again
    with pytest.raises(RateLimitExceeded) as info:
        await other.acquire_nowait()
    return info.value.retry_after + (now() - t0), tasks


async def _cancel_all(tasks: list[asyncio.Task[Any]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        # l0..l3 slots 0.5..2.0, then the pause: their reservations are the tail of the
        # schedule, so they are given back and the four queue again from 0.5 (the pause ends
        # before): a newcomer gets 2.5. Left in place, they would queue after 2.5 (newcomer 4.5).
        ("llll", 2.5),
        # l0 0.5, o1 1.0 (another process), l2 1.5, l3 2.0: only l2 and l3 are given back
        # (o1 keeps its slot, and l0's is left unused once); l0, l2, l3 queue again from 1.5.
        ("loll", 3.0),
        # l0 0.5, l1 1.0, o2 1.5: the key does not hold lim's last write, so nothing is given
        # back (compare-and-swap); l0 and l1 queue again after o2: 2.0, 2.5; a newcomer 3.0.
        ("llo", 3.0),
    ],
    ids=["all-given-back", "tail-after-another-process", "another-process-reserved-last"],
)
async def test_pause_gives_back_this_objects_unbroken_tail(
    client: redis_asyncio.Redis, redis_url: str, name: str, schedule: str, expected: float
) -> None:
    async with redis_client(redis_url) as c2:
        lim = RedisRateLimiter(client, name, 2, burst=1)  # T = 500 ms
        other = RedisRateLimiter(c2, name, 2, burst=1)
        retry, tasks = await _paused_schedule(lim, other, schedule)
        await _cancel_all(tasks)
    assert expected - TOL <= retry <= expected + TOL


@pytest.mark.parametrize("resumed", [True, False], ids=["admitted", "timer-fired"])
async def test_pause_never_gives_back_a_waiter_before_an_admitted_one(
    client: redis_asyncio.Redis, redis_url: str, name: str, resumed: bool
) -> None:
    # A busy loop can fire timers out of slot order: w1's timer is late, so w2 is admitted
    # first, at its slot (0.4). The pause may give back w3 only: the state from before w1 does
    # not count w2, and w1 would be scheduled on top of it. "timer-fired": the pause comes
    # after w2's timer fired, before its task resumed.
    async with redis_client(redis_url) as c2:
        lim = RedisRateLimiter(client, name, 5, burst=1)  # T = 200 ms
        other = RedisRateLimiter(c2, name, 5, burst=1)
        loop = asyncio.get_running_loop()
        await lim.acquire()
        t0 = now()
        times: dict[str, float] = {}

        async def take(tag: str) -> None:
            await lim.acquire()
            times[tag] = now() - t0

        tasks = {}
        for tag in ("w1", "w2", "w3"):  # slots 0.2, 0.4, 0.6
            tasks[tag] = asyncio.ensure_future(take(tag))
            await asyncio.sleep(0.02)
        chain = lim._sleepers[lim._rkey(None)]
        (f1, e1), (f2, e2), _ = chain.entries.items()
        assert not f1.done()
        assert not f2.done()
        chain.unschedule(e1)  # the chain's timer no longer wakes w1: a late timer does
        loop.call_at(e1.deadline + 2.0, wake, f1)
        if resumed:
            await tasks["w2"]
        else:
            chain.unschedule(e2)
            await asyncio.sleep(e2.deadline - loop.time())
            wake(f2)  # what its timer does; the task resumes after the pause below
        await lim.pause(0)

        async def requeued() -> bool:
            # w1 and w3 have reserved again: sleeping on their new slots, or admitted at once
            # (a pause that gave back too much).
            return await _sleeping(lim, 2 - tasks["w1"].done() - tasks["w3"].done())

        # Each re-queued waiter reserves by a call of its own, and nothing orders another
        # process's call after them: the public path sends lim's calls one at a time (the next
        # once the previous one's reply came), so a newcomer asking at once may be told the
        # slot between w1's and w3's. The newcomer asks once both have reserved again.
        await eventually(requeued)
        with pytest.raises(RateLimitExceeded) as info:
            await other.acquire_nowait()
        retry = info.value.retry_after + (now() - t0)
        await asyncio.gather(*tasks.values())
    assert times["w2"] <= 0.4 + TOL
    assert min(times["w1"], times["w3"]) >= 0.6 - TOL  # after w2 (the bound), w3's slot reused
    assert 1.0 - TOL <= retry <= 1.0 + TOL


async def _background_done(lim: RedisRateLimiter) -> None:
    while lim._bg.tasks:
        await asyncio.wait(set(lim._bg.tasks))


@pytest.mark.parametrize("connected", [False, True], ids=["connecting", "connected"])
async def test_a_caller_that_stops_waiting_for_a_pause_leaves_it_in_force(
    client: redis_asyncio.Redis, redis_url: str, name: str, connected: bool
) -> None:
    # pause() returns the task of its Redis call; a caller cancelled while awaiting it (a
    # request cancelled while the HTTP adapter records a 429's pause) stops waiting: the pause
    # still goes to Redis and holds every process, and the sleeping waiter it woke queues behind.
    async with redis_client(redis_url) as c2:
        lim = RedisRateLimiter(client, name, 10, burst=1)
        other = RedisRateLimiter(c2, name, 10, burst=1)
        if connected:
            await lim.acquire()
            waiter = asyncio.ensure_future(lim.acquire())
            await asyncio.sleep(0.02)  # sleeps on its slot

        async def pausing() -> None:
            await lim.pause(2.0)

        caller = asyncio.ensure_future(pausing())
        await asyncio.sleep(0)
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        t0 = now()
        await _background_done(lim)
        with pytest.raises(RateLimitExceeded) as info:
            await other.acquire_nowait()
        assert info.value.retry_after >= 1.5
        if connected:
            await waiter
            assert now() - t0 >= 1.5
        await lim.aclose()
        await other.aclose()


SETTLES = [
    pytest.mark.parametrize("public", [False, True], ids=["pipe", "public"]),
    pytest.mark.parametrize("waits", [False, True], ids=["settle", "asettle"]),
    pytest.mark.parametrize("delta", [0.5, -0.5], ids=["charge", "refund"]),
]


@SETTLES[0]
@SETTLES[1]
@SETTLES[2]
@pytest.mark.parametrize("link", ["connected", "dropped"])
async def test_a_caller_that_stops_waiting_for_a_settle_leaves_it_applied(
    client: redis_asyncio.Redis, name: str, delta: float, waits: bool, public: bool, link: str
) -> None:
    # Cancelled while waiting for Redis, asettle too leaves the call running: the permit's cost
    # is already the new one, so a dropped call would never be charged (or refunded) again.
    # Also when the call cannot be sent at once: the limiter's connection was dropped (it
    # reconnects first).
    await _settle_cancelled(client, name, delta, waits, public, link)


@SETTLES[0]
@SETTLES[1]
@SETTLES[2]
async def test_a_settle_whose_script_is_reloaded_leaves_it_applied_when_its_caller_leaves(
    own_redis: OwnRedis, delta: float, waits: bool, public: bool
) -> None:
    # The same when the script is no longer in Redis's cache (SCRIPT FLUSH, a restart without
    # persistence): it is loaded again. On a server of its own: SCRIPT FLUSH is server-wide.
    async with redis_client(own_redis.url) as client:
        await _settle_cancelled(client, unique_name("rate"), delta, waits, public, "flushed")


async def _settle_cancelled(
    client: redis_asyncio.Redis, name: str, delta: float, waits: bool, public: bool, link: str
) -> None:
    """Settle a permit by ``delta`` (of a cost of 1) from a caller cancelled in its first step,
    ``link`` saying what the limiter meets; the charge or refund must be applied all the same.
    (One request a minute: the state stays ahead of the clock however slow the machine, so
    the change is the whole charge or refund.)"""
    with compat_public(public):
        lim = RedisRateLimiter(client, name, 1, per=60, burst=2)
    permit = await lim.acquire()
    before = text(await client.get(lim._rkey(None))).split(" ")[1]
    if link == "dropped":
        await client.connection_pool.disconnect()
    elif link == "flushed":
        await client.script_flush()

    async def settling() -> None:
        if waits:
            await permit.asettle(1 + delta)
        else:
            await permit.settle(1 + delta)

    caller = asyncio.ensure_future(settling())
    await asyncio.sleep(0)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    await _background_done(lim)
    after = text(await client.get(lim._rkey(None))).split(" ")[1]
    assert float(after) - float(before) == pytest.approx(delta * 60e6)
    await lim.aclose()
    await delete_keys(client, name)


# -- on_error: Redis unreachable ------------------------------------------------------------


@pytest.mark.parametrize("policy", ["raise", "allow", "deny"])
async def test_on_error_answers_quickly_when_redis_is_unreachable(policy: str) -> None:
    async with redis_client(UNREACHABLE) as bad:
        lim = RedisRateLimiter(bad, "down", 10, on_error=policy)  # type: ignore[arg-type]
        t0 = now()
        for _ in range(3):  # the first call fails, the next ones answer from the cool-down
            if policy == "raise":
                with pytest.raises(LimiterUnavailable) as raised:
                    await lim.acquire()
                assert isinstance(raised.value.__cause__, RedisConnectionError)
            elif policy == "deny":
                with pytest.raises(RateLimitExceeded) as info:
                    await lim.acquire()
                assert 0 < info.value.retry_after <= 1.0
            else:
                permit = await lim.acquire()
                assert permit.degraded
        assert now() - t0 < 0.9  # well under a second for all three
        s = lim.statistics()
        assert s.errors == 1  # one failed attempt: no retry storm
        assert s.degraded == (0 if policy == "raise" else 3)


async def _silent_server() -> tuple[asyncio.Server, list[bytes]]:
    """A TCP server that completes the connection handshake but never answers a script."""
    received: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while data := await reader.read(65536):
                received.append(data)
                if b"EVALSHA" not in data:
                    # one +OK per command of the handshake (CLIENT SETINFO ...)
                    writer.write(b"+OK\r\n" * data.count(b"*"))
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, received


async def test_a_hung_server_is_bounded_by_call_timeout_and_never_replayed() -> None:
    server, received = await _silent_server()
    port = server.sockets[0].getsockname()[1]
    # protocol=2: no HELLO handshake
    async with server, redis_client(f"redis://127.0.0.1:{port}/0", protocol=2) as hung:
        lim = RedisRateLimiter(hung, "hung", 10, on_error="allow", call_timeout=0.2)
        t0 = now()
        permit = await lim.acquire()
        elapsed = now() - t0
        assert permit.degraded
        assert 0.15 <= elapsed < 0.9  # bounded by call_timeout, well under a second
        await asyncio.sleep(0.3)  # the cool-down passed: the next call may try again
        blob = b"".join(received)
        assert blob.count(b"EVALSHA") == 1  # the indeterminate call was not resent
        assert lim.statistics().errors == 1


async def test_on_error_recovers_when_redis_answers_again(
    client: redis_asyncio.Redis, name: str
) -> None:
    lim = RedisRateLimiter(client, name, 100, on_error="deny", call_timeout=0.3)
    await lim.acquire()
    lim._call._break(RedisConnectionError("simulated"))
    lim._health.failed(RedisConnectionError("simulated"), asyncio.get_running_loop().time())
    with pytest.raises(RateLimitExceeded):
        await lim.acquire()  # within the cool-down: denied without a call
    await asyncio.sleep(0.15)
    permit = await lim.acquire()  # reconnects
    assert not permit.degraded


# -- arguments, statistics, leaks --------------------------------------------------------------


async def test_bad_arguments(client: redis_asyncio.Redis) -> None:
    with pytest.raises(ValueError, match="rate"):
        RedisRateLimiter(client, "n", 0)
    with pytest.raises(ValueError, match="burst"):
        RedisRateLimiter(client, "n", 1, burst=0.5)
    with pytest.raises(ValueError, match="on_error"):
        RedisRateLimiter(client, "n", 1, on_error="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="clock"):
        RedisRateLimiter(client, "n", 1, clock="gps")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="call_timeout"):
        RedisRateLimiter(client, "n", 1, call_timeout=0)
    with pytest.raises(TypeError, match="name"):
        RedisRateLimiter(client, "", 1)
    # A state that would have to last longer than Redis can count (its key's expiry, the waits
    # its script answers in integer microseconds) is refused, naming the arguments.
    for rate, per, burst in ((1e-300, 1.0, 1.0), (1.0, 1e300, 1.0), (1.0, 1.0, 1e300)):
        with pytest.raises(ValueError, match=r"burst \* per / rate"):
            RedisRateLimiter(client, "n", rate, per, burst=burst)
    RedisRateLimiter(client, "n", 1, per=3600.0, burst=1000)  # 1000 h: fine
    lim = RedisRateLimiter(client, "n", 1, burst=2)
    with pytest.raises(ValueError, match="cost"):
        lim.acquire(cost=3)
    with pytest.raises(ValueError, match="timeout"):
        lim.acquire(timeout=-1)
    with pytest.raises(ValueError, match="seconds"):
        lim.pause(-1)


async def test_settle_charges_and_refunds(client: redis_asyncio.Redis, name: str) -> None:
    lim = RedisRateLimiter(client, name, 10, burst=10)
    permit = await lim.acquire(cost=8)
    assert await permit.asettle(2) == pytest.approx(-6)
    assert permit.cost == 2
    await lim.acquire_nowait(cost=8)  # the refund made room
    with pytest.raises(RateLimitExceeded):
        await lim.acquire_nowait(cost=1)
    with pytest.raises(ValueError, match="actual_cost"):
        await permit.asettle(-1)


async def test_settle_refuses_a_cost_redis_cannot_hold_at_the_call(
    client: redis_asyncio.Redis, name: str
) -> None:
    """asettle(1e300) failed with redis-py's raw ResponseError from the script (the key's
    expiry no longer a number Redis takes), and settle() raised nothing at the call: its
    ValueError (a negative cost too) came out of the background task."""
    lim = RedisRateLimiter(client, name, 10, burst=10)
    permit = await lim.acquire(cost=1)
    with pytest.raises(ValueError, match=r"actual_cost must be at most 2\.14748e\+10 \(what"):
        await permit.asettle(1e300)
    for bad in (1e300, 10**400, 2.0**31 * 10 * 1.01):
        with pytest.raises(ValueError, match="actual_cost must be"):
            await permit.asettle(bad)
        with pytest.raises(ValueError, match="actual_cost"):
            permit.settle(bad)
    for bad_type in (True, "2", None):
        with pytest.raises(TypeError, match="actual_cost must be a finite number >= 0"):
            permit.settle(bad_type)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="actual_cost must be a finite number >= 0, got -1"):
        permit.settle(-1)
    with pytest.raises(ValueError, match="actual_cost must be a finite number >= 0, got nan"):
        permit.settle(float("nan"))
    assert permit.cost == 1  # nothing settled
    assert await permit.asettle(2.0**31 * 10) == pytest.approx(2.0**31 * 10 - 1)  # the bound
    assert await permit.asettle(-0.0) == pytest.approx(-(2.0**31) * 10)
    assert permit.cost == 0.0


async def test_works_with_decoded_responses(redis_url: str, name: str) -> None:
    async with redis_client(redis_url, decode_responses=True) as c:
        lim = RedisRateLimiter(c, name, 5, burst=1)
        permit = await lim.acquire()
        waiter = asyncio.ensure_future(lim.acquire())
        await asyncio.sleep(0.05)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert await permit.asettle(0.5) == pytest.approx(-0.5)
        await delete_keys(c, name)


async def test_leaks_report_waiting_tasks(client: redis_asyncio.Redis, name: str) -> None:
    lim = RedisRateLimiter(client, name, 1)
    await lim.acquire()
    waiter = asyncio.ensure_future(lim.acquire())
    await asyncio.sleep(0.05)
    assert any("waiting" in p for p in lim._aiolease_leaks())
    assert "RedisRateLimiter" in repr(lim)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await asyncio.sleep(0.05)
    assert any("left open" in p for p in lim._aiolease_leaks())
    await lim.aclose()
    assert lim._aiolease_leaks() == []


def test_conc_script_touches_only_its_keys() -> None:
    # Every KEYS[i] the script uses is passed in (Cluster routing needs all keys declared).
    assert "KEYS[5]" in CONC_ACQUIRE.source
    assert "KEYS[6]" not in CONC_ACQUIRE.source
    assert "KEYS[2]" not in RATE_ACQUIRE.source


async def test_a_single_connection_client_goes_through_its_own_calls(own_redis: OwnRedis) -> None:
    # (RedisCluster clients take this path too: routing is theirs.) On a server of its own:
    # SCRIPT FLUSH is server-wide.
    name = unique_name("rate")
    async with redis_client(own_redis.url, single_connection_client=True) as c:
        lim = RedisRateLimiter(c, name, 2, burst=1)
        assert not lim._call._direct
        await lim.acquire()
        loads = lim._call._loaded
        await c.script_flush()
        with pytest.raises(RateLimitExceeded):
            await lim.acquire_nowait()
        assert lim._call._loaded == loads + 1
        sem = RedisConcurrencyLimiter(c, name, 1)
        async with sem.acquire():
            assert await sem.in_use() == 1
        await delete_keys(c, name)


async def test_leak_check_reports_a_waiting_redis_limiter(
    client: redis_asyncio.Redis, name: str
) -> None:
    from aiolease.testing import leak_check

    waiter: asyncio.Future[Any] | None = None
    check = leak_check()
    await check.__aenter__()
    lim = RedisRateLimiter(client, name, 1)
    await lim.acquire()
    waiter = asyncio.ensure_future(lim.acquire())
    await asyncio.sleep(0.05)
    with pytest.raises(AssertionError, match="still waiting"):
        await check.__aexit__(None, None, None)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter


def test_missing_redis_py_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['redis'] = None\n"
        "try:\n"
        "    import aiolease.redis\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert "pip install 'aiolease[redis]'" in out  # quoted: zsh globs the brackets
    # and the package itself does not need redis-py
    plain = subprocess.run(
        [sys.executable, "-c", "import sys; sys.modules['redis'] = None; import aiolease"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert plain.returncode == 0, plain.stderr


async def test_a_connection_killed_under_the_limiter_fails_one_call_then_recovers(
    client: redis_asyncio.Redis, name: str, redis_url: str
) -> None:
    async with redis_client(redis_url, client_name=name) as own:
        lim = RedisRateLimiter(own, name, 1000, burst=10, on_error="raise")
        await lim.acquire()
        # the pipe's connection, or the pooled one the public path used
        killed = await client_ids(client, name)
        assert killed
        for cid in killed:
            assert await client.client_kill_filter(_id=cid) == 1
        await asyncio.sleep(0.05)
        outcomes = []
        for _ in range(2):
            try:
                await lim.acquire()
                outcomes.append("ok")
            except LimiterUnavailable:
                outcomes.append("error")  # the call in flight is lost, not replayed
            await asyncio.sleep(0.15)  # past the cool-down
        assert outcomes in (["error", "ok"], ["ok", "ok"])
        assert not set(await client_ids(client, name)) & set(killed)  # on a new socket
        assert lim.statistics().errors == outcomes.count("error")
        await lim.aclose()


async def client_ids(client: redis_asyncio.Redis, name: str) -> list[str]:
    """The ids of the connections to Redis named ``name``."""
    return [str(c["id"]) for c in await client.client_list() if c.get("name") == name]


async def test_asettle_cancelled_behind_other_calls_still_charges(
    client: redis_asyncio.Redis, name: str
) -> None:
    # The public path sends one call at a time: asettle's call waits its turn. Cancelled then,
    # the permit already counts the new cost, so the charge must still reach Redis.
    with compat_public(True):  # (one request a minute: the state stays ahead of the clock)
        lim = RedisRateLimiter(client, name, 1, per=60, burst=10)
    permit = await lim.acquire()
    key = lim._rkey(None)
    before = float(text(await client.get(key)).split(" ")[1])
    ahead = [asyncio.ensure_future(lim.acquire_nowait(key="other")) for _ in range(3)]
    await asyncio.sleep(0)  # they hold and queue on the one-call-at-a-time lock
    caller = asyncio.ensure_future(permit.asettle(3))
    await asyncio.sleep(0)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    await asyncio.gather(*ahead)
    await _background_done(lim)
    while lim._call._calls:  # the settle's call, its caller gone (it takes its connection
        await asyncio.wait(set(lim._call._calls))  # in a task of its own: a step or two more)
    after = float(text(await client.get(key)).split(" ")[1])
    assert after - before == pytest.approx(120e6)  # 2 units at T = 60 s
    await lim.aclose()


# -- a connection redis-py disconnected under the pipe -------------------------------------------


async def _has(items: list[Any], n: int) -> bool:
    return len(items) == n


@contextlib.contextmanager
def held_connections(
    client: redis_asyncio.Redis, monkeypatch: pytest.MonkeyPatch, gate: asyncio.Event
) -> Iterator[list[Any]]:
    """The client's pool hands out its connections only once ``gate`` is set; yields them."""
    pool = client.connection_pool
    real: Any = pool.get_connection
    taken: list[Any] = []

    async def get_connection(*args: Any, **kwargs: Any) -> Any:
        conn = await real(*args, **kwargs)
        taken.append(conn)
        await gate.wait()
        return conn

    monkeypatch.setattr(pool, "get_connection", get_connection)
    yield taken


@contextlib.asynccontextmanager
async def _piped_limiter(
    redis_url: str, name: str
) -> AsyncIterator[tuple[redis_asyncio.Redis, RedisRateLimiter]]:
    """A limiter on a client of its own (both yielded), through the pipe (skips in public
    mode); on a clean exit, checks that it has recovered: past the cool-down it admits, still
    through the pipe."""
    async with redis_client(redis_url) as own:
        lim = RedisRateLimiter(own, name, 1000, burst=10, on_error="raise")
        if not lim._call._direct:
            pytest.skip("the pipe only (AIOLEASE_COMPAT=public: no pipe)")
        yield own, lim
        await asyncio.sleep(0.15)  # past the cool-down
        assert not (await lim.acquire()).degraded
        assert lim._call._direct  # still through the pipe
        assert lim._call._link is not None
        await lim.aclose()


async def test_a_connection_disconnected_while_a_call_waited_to_send_fails_it_as_unavailable(
    redis_url: str, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The pipe connects for its first caller while the next ones wait for the connection.
    # redis-py disconnects it (client.aclose(), connection_pool.disconnect()) after the first
    # caller wrote, before the next one writes: that caller meets a connection with no socket,
    # which nothing was reading to notice. It fails as Redis unavailable (redis-py's
    # ConnectionError, not an AttributeError), as does the first (its reply is lost with the
    # connection), and the next call reconnects through the pipe.
    async with _piped_limiter(redis_url, name) as (own, lim):
        gate = asyncio.Event()
        with held_connections(own, monkeypatch, gate) as taken:
            first = asyncio.ensure_future(lim.acquire())
            await eventually(functools.partial(_has, taken, 1))  # it takes the connection

            async def disconnect_in_between() -> None:  # next in line for the connection
                queue = lim._call._connecting
                assert queue is not None
                turn = asyncio.get_running_loop().create_future()
                queue.append(turn)
                await turn
                assert lim._call.sent == 1  # the first caller wrote
                await taken[0].disconnect()

            between = asyncio.ensure_future(disconnect_in_between())
            second = asyncio.ensure_future(lim.acquire())
            for _ in range(10):  # both wait behind the first (no I/O on their way there)
                await asyncio.sleep(0)
            gate.set()
            outcomes = await asyncio.gather(first, between, second, return_exceptions=True)
        assert isinstance(outcomes[0], LimiterUnavailable), outcomes
        assert outcomes[1] is None
        assert isinstance(outcomes[2], LimiterUnavailable), outcomes
        assert isinstance(outcomes[2].__cause__, RedisConnectionError), outcomes


async def test_callers_that_came_while_the_pipe_connected_all_write_once_it_is_there(
    redis_url: str, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A burst on a limiter with no connection yet: the first caller takes the pipe's
    # connection and the others wait for it. Once it is there they all write, in the order
    # they came, in the next loop pass - not one per loop pass, each behind the one before
    # (20,000 such callers outlasted call_timeout and failed as Redis unavailable).
    async with _piped_limiter(redis_url, name) as (own, lim):
        gate = asyncio.Event()
        with held_connections(own, monkeypatch, gate) as taken:
            calls = [asyncio.ensure_future(lim.acquire(key=i)) for i in range(50)]
            await eventually(functools.partial(_has, taken, 1))
            assert lim._call.sent == 0
            gate.set()
            for _ in range(1000):  # until the first caller has the connection (and wrote)
                if lim._call._link is not None:
                    break
                await asyncio.sleep(0)
            for _ in range(3):
                await asyncio.sleep(0)
            assert lim._call.sent == 50
            permits = await asyncio.gather(*calls)
        assert [p.key for p in permits] == list(range(50))
        assert len(taken) == 1  # one connection: the pipe's


async def test_a_connection_disconnected_before_the_pipe_wrote_to_it_keeps_the_pipe(
    redis_url: str, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # redis-py disconnects the connection the pipe has just taken, before the pipe writes to
    # it: the caller fails as Redis unavailable, and the limiter keeps the pipe (a closed
    # connection is no sign that redis-py's connections cannot be pipelined).
    async with _piped_limiter(redis_url, name) as (own, lim):
        gate = asyncio.Event()
        with held_connections(own, monkeypatch, gate) as taken:
            call = asyncio.ensure_future(lim.acquire())
            await eventually(functools.partial(_has, taken, 1))
            await own.connection_pool.disconnect()
            gate.set()
            with pytest.raises(LimiterUnavailable) as info:
                await call
        assert isinstance(info.value.__cause__, RedisConnectionError)


async def _recovered(lim: RedisRateLimiter, steps: int) -> None:
    """Past the cool-down, ``lim`` is answered by Redis again: the call made once
    ``retry_after`` has passed is the probe. (On uvloop it could wake a hair before the
    cool-down's end and be answered from it, by the disconnect's error, without contacting
    Redis: see test_a_call_after_retry_after_probes_redis_on_a_millisecond_clock.)"""
    await asyncio.sleep(lim._health.retry_after(now()))  # past the cool-down, if any
    permit = await lim.acquire()
    assert not permit.degraded, steps


class _Refusing:
    """A client whose every call fails as redis-py's does when Redis refuses the connection
    (not a ``redis.asyncio.Redis``: each call goes to its ``evalsha``)."""

    def __init__(self) -> None:
        self.calls = 0

    async def evalsha(self, *args: Any) -> Any:
        self.calls += 1
        raise RedisConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused.")


async def _denied(lim: RedisRateLimiter) -> float:
    """An acquisition answered without Redis (``on_error="deny"``): its ``retry_after``, the
    time until the limiter contacts Redis again."""
    with pytest.raises(RateLimitExceeded) as info:
        await lim.acquire()
    return info.value.retry_after


class _MillisecondLoop(VirtualTimeLoop):
    """Virtual time kept as uvloop keeps its clock: ``time()`` is a whole number of
    milliseconds (``ms / 1000``), and a timer is due a whole number of them (its delay rounded
    to the nearest) after the millisecond it was armed in."""

    def call_at(  # type: ignore[override]  # same signature; typeshed's is generic
        self, when: float, callback: Any, *args: Any, context: Any = None
    ) -> asyncio.TimerHandle:
        if math.isfinite(when):
            now_ms = round(self.time() * 1000)
            when = (now_ms + round((when - self.time()) * 1000)) / 1000
        return super().call_at(when, callback, *args, context=context)


def test_a_call_after_retry_after_probes_redis_on_a_millisecond_clock() -> None:
    # uvloop's clock: a failure at k ms starts a cool-down ending at k / 1000 + 0.1, for some k
    # a float above (k + 100) / 1000, the time the 100 ms timer of a caller that waited
    # retry_after wakes at. That caller was answered from the cool-down again (by the failure
    # that started it) instead of probing Redis, as retry_after promises.
    k = next(k for k in itertools.count(1) if (k + 100) / 1000 < k / 1000 + 0.1)

    async def body() -> None:
        await asyncio.sleep(k / 1000)
        assert now() == k / 1000
        client = _Refusing()
        lim = RedisRateLimiter(client, unique_name("ms"), 10, on_error="deny")  # type: ignore[arg-type]
        await asyncio.sleep(await _denied(lim))
        assert client.calls == 1
        assert now() < lim._health.until  # (the case at hand: the clock reads a hair short)
        await _denied(lim)
        assert client.calls == 2, "answered from the cool-down, not by a probe"
        await lim.aclose()

    with asyncio.Runner(loop_factory=_MillisecondLoop) as runner:
        runner.run(body())


async def test_a_call_after_retry_after_probes_redis_cool_down_after_cool_down() -> None:
    # The same on the running loop (asyncio's and uvloop), over growing cool-downs: each call
    # made after waiting the retry_after given is a probe (here: refused again).
    client = _Refusing()
    lim = RedisRateLimiter(client, unique_name("probe"), 10, on_error="deny")  # type: ignore[arg-type]
    wait = await _denied(lim)  # refused: a cool-down of 0.1 s starts
    for n in (2, 3):
        await asyncio.sleep(wait)
        wait = await _denied(lim)
        assert client.calls == n  # the probe (refused again: the cool-down doubles)
    await lim.aclose()


@pytest.mark.parametrize("public", [False, True], ids=["pipe", "public"])
@pytest.mark.parametrize("how", ["pool-disconnect", "client-aclose"])
async def test_a_client_disconnected_under_calls_at_any_step_is_an_outage_then_recovers(
    redis_url: str, name: str, public: bool, how: str
) -> None:
    # redis-py disconnects the client's connections (its pool's disconnect(), or the client's
    # aclose(), which the client survives: it reconnects on its next call) at every loop step
    # of three concurrent calls of a fresh limiter: connecting, writing, awaiting the replies.
    # Each call is admitted or fails as Redis unavailable, never with another error, and the
    # next call after the cool-down is answered by Redis.
    async with redis_client(redis_url) as own:
        for steps in range(30):
            with compat_public(public):
                lim = RedisRateLimiter(
                    own, name, 10000, burst=100, on_error="raise", call_timeout=0.2
                )
            direct = lim._call._direct  # (the pipe unless AIOLEASE_COMPAT=public or public)
            outcomes = await disconnected_under_calls(own, lim.acquire, steps, how)
            for outcome in outcomes:  # (a connect redis-py retries may reach call_timeout)
                assert not isinstance(outcome, BaseException) or (
                    isinstance(outcome, LimiterUnavailable)
                    and isinstance(outcome.__cause__, (RedisConnectionError, RedisTimeoutError))
                ), (steps, outcomes)
            await _recovered(lim, steps)
            assert lim._call._direct is direct  # the pipe kept
            await lim.aclose()


async def test_a_settle_that_aclose_cuts_short_does_not_cancel_its_caller(
    client: redis_asyncio.Redis, name: str
) -> None:
    # aclose() cancels a settle still in flight after call_timeout (Redis never answers it): the
    # task awaiting asettle() was not cancelled, so it gets an error, not a CancelledError.
    lim = RedisRateLimiter(client, name, 10, burst=5, call_timeout=0.2)
    permit = await lim.acquire(cost=2)
    caller = lim._call
    settling = asyncio.Event()

    async def never(*args: object, **kwargs: object) -> None:
        settling.set()
        await asyncio.sleep(3600)

    lim._call = never  # type: ignore[assignment]
    task = asyncio.ensure_future(permit.asettle(1))
    await asyncio.wait_for(settling.wait(), 5)
    lim._call = caller
    await lim.aclose()
    done, _ = await asyncio.wait({task}, timeout=5)
    assert done
    assert not task.cancelled(), "the caller of the settle ended cancelled"
    with pytest.raises(RuntimeError, match="aclose"):
        task.result()
