"""RedisConcurrencyLimiter: leases, renewal, hand-off wake-ups, cancellation, expiry."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as redis_asyncio
from _redis_factories import (
    compat_public,
    delete_keys,
    disconnected_under_calls,
    eventually,
    redis_client,
    through_proxy,
    unique_name,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from aiolease import ConcurrencyLimiter, LimiterUnavailable, LimitTimeout, WouldBlock
from aiolease.redis import RedisConcurrencyLimiter
from aiolease.testing import FaultProxy
from eager import NEEDS_EAGER, eager_tasks

pytestmark = pytest.mark.redis


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[redis_asyncio.Redis]:
    async with redis_client(redis_url) as c:
        yield c


@pytest.fixture
async def name(client: redis_asyncio.Redis) -> AsyncIterator[str]:
    n = unique_name("conc")
    yield n
    await delete_keys(client, n)


def now() -> float:
    return asyncio.get_running_loop().time()


async def wait_until(cond: Callable[[], bool]) -> None:
    for _ in range(1000):
        if cond():
            return
        await asyncio.sleep(0.002)
    raise AssertionError("condition not reached")


def queued(sem: RedisConcurrencyLimiter, n: int) -> bool:
    """``n`` waiters, and no call in flight: the pipe's (``_pending``) or the public path's
    (``_calls``). A waiter counts from its call on, before its round trip has queued it."""
    return sem.statistics().waiting == n and not (sem._call._pending or sem._call._calls)


async def queue_ids(client: redis_asyncio.Redis, queue: str) -> list[str]:
    """The ids queued in Redis, oldest first."""
    return [
        m.decode() if isinstance(m, bytes) else str(m) for m in await client.zrange(queue, 0, -1)
    ]


async def settle_down(*limiters: RedisConcurrencyLimiter) -> None:
    """Wait until every background Redis call of the limiters is done."""
    for _ in range(400):
        if not any(lim._bg.tasks or lim._call._pending or lim._call._calls for lim in limiters):
            return
        await asyncio.sleep(0.005)
    raise AssertionError("background calls did not finish")


async def test_never_more_than_limit_holders(client: redis_asyncio.Redis, name: str) -> None:
    sem = RedisConcurrencyLimiter(client, name, 3)
    active = peak = 0

    async def work() -> None:
        nonlocal active, peak
        async with sem.acquire():
            active += 1
            peak = max(peak, active)
            await asyncio.sleep(0.01)
            active -= 1

    await asyncio.gather(*(work() for _ in range(20)))
    assert peak == 3
    assert await sem.in_use() == 0
    s = sem.statistics()
    assert (s.admitted, s.in_use, s.waiting, s.limit) == (20, 0, 0, 3)
    assert any("left open" in p for p in sem._aiolease_leaks())
    await sem.aclose()
    assert sem._aiolease_leaks() == []


async def test_waiters_are_handed_slots_in_arrival_order(
    client: redis_asyncio.Redis, name: str
) -> None:
    sem = RedisConcurrencyLimiter(client, name, 1)
    holder = await sem.acquire()
    order: list[int] = []

    async def one(i: int) -> None:
        async with sem.acquire():
            order.append(i)
            await asyncio.sleep(0.005)

    tasks = []
    for i in range(5):
        tasks.append(asyncio.ensure_future(one(i)))
        # each is queued in Redis before the next arrives
        await wait_until(functools.partial(queued, sem, i + 1))
    await holder.arelease()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4]


async def test_a_waiter_holds_its_place_while_its_listener_subscribes(
    client: redis_asyncio.Redis, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first waiter's place is its first round trip, not the end of its subscription: a
    # waiter arriving while the first one still subscribes queues behind it.
    sem = RedisConcurrencyLimiter(client, name, 1)
    holder = await sem.acquire()
    gate = asyncio.Event()
    subscribing = asyncio.Event()
    original = RedisConcurrencyLimiter._ensure_listener

    async def slow_subscribe(self: RedisConcurrencyLimiter, end: float | None) -> None:
        if not gate.is_set():
            subscribing.set()
            await gate.wait()
        await original(self, end)

    monkeypatch.setattr(RedisConcurrencyLimiter, "_ensure_listener", slow_subscribe)
    first = asyncio.ensure_future(sem.acquire())
    await subscribing.wait()
    queue = sem._keys(None)[1]
    members = await queue_ids(client, queue)
    assert len(members) == 1  # queued by its first round trip
    first_id = members[0]
    gate.set()
    second = asyncio.ensure_future(sem.acquire())
    await wait_until(functools.partial(queued, sem, 2))
    members = await queue_ids(client, queue)
    assert len(members) == 2
    assert members[0] == first_id  # the second waiter queued behind the first
    await holder.arelease()
    got = await asyncio.wait_for(first, 5)
    assert got.lease_id == first_id
    assert not second.done()
    await got.arelease()
    await (await asyncio.wait_for(second, 5)).arelease()
    assert await sem.in_use() == 0


async def test_timeout_zero_and_nowait_never_queue(client: redis_asyncio.Redis, name: str) -> None:
    sem = RedisConcurrencyLimiter(client, name, 1)
    holder = await sem.acquire()
    with pytest.raises(WouldBlock):
        await sem.acquire_nowait()
    with pytest.raises(LimitTimeout):
        await sem.acquire(timeout=0)
    await settle_down(sem)
    assert await client.zcard(sem._keys(None)[1]) == 0
    await holder.arelease()


async def test_a_release_in_another_process_wakes_the_waiter_at_once(
    redis_url: str, name: str
) -> None:
    # Two clients stand for two processes; the wake-up must come from the hand-off message,
    # not from the lease-expiry re-check (lease_ttl is 30 s here).
    async with redis_client(redis_url) as c1, redis_client(redis_url) as c2:
        a = RedisConcurrencyLimiter(c1, name, 1)
        b = RedisConcurrencyLimiter(c2, name, 1)
        held = await a.acquire()
        waiter = asyncio.ensure_future(b.acquire())
        await asyncio.sleep(0.1)
        assert not waiter.done()
        t0 = now()
        await held.arelease()
        permit = await asyncio.wait_for(waiter, 5)
        assert now() - t0 < 1.0
        await permit.arelease()
        await settle_down(a, b)


async def test_timeout_raises_limit_timeout_and_leaves_the_queue(
    client: redis_asyncio.Redis, name: str
) -> None:
    sem = RedisConcurrencyLimiter(client, name, 1)
    held = await sem.acquire()
    t0 = now()
    with pytest.raises(LimitTimeout):
        await sem.acquire(timeout=0.2)
    assert 0.15 <= now() - t0 < 1.0
    assert isinstance(LimitTimeout(), TimeoutError)
    keys = sem._keys(None)
    await settle_down(sem)  # the withdrawal is a background call of the limiter
    assert await client.zcard(keys[1]) == 0  # not queued any more
    with pytest.raises(LimitTimeout):
        await sem.acquire(timeout=0)
    s = sem.statistics()
    assert (s.timeouts, s.waiting, s.in_use) == (2, 0, 1)
    await held.arelease()


async def test_cancelled_waiter_leaves_the_queue(client: redis_asyncio.Redis, name: str) -> None:
    sem = RedisConcurrencyLimiter(client, name, 1)
    held = await sem.acquire()
    waiter = asyncio.ensure_future(sem.acquire())
    await asyncio.sleep(0.1)
    keys = sem._keys(None)
    assert await client.zcard(keys[1]) == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await settle_down(sem)  # the withdrawal is a background call of the limiter
    assert await client.zcard(keys[1]) == 0
    assert sem.statistics().cancelled == 1
    await held.arelease()
    assert await sem.in_use() == 0


async def test_cancelled_in_its_first_round_trip_counts_as_cancelled(
    client: redis_asyncio.Redis, name: str
) -> None:
    """A request is waiting from the call on (its round trips are part of the wait), so one
    cancelled before Redis answered its first call ends as cancelled, as a local or Redis
    rate limiter's does; it was counted in no result (aiolease.limiter.requests lost it)."""
    sem = RedisConcurrencyLimiter(client, name, 1)
    request = asyncio.ensure_future(sem.acquire())
    await asyncio.sleep(0)  # its first call sent, not yet answered
    assert sem.statistics().waiting == 1
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request
    await settle_down(sem)  # the withdrawal is a background call of the limiter
    s = sem.statistics()
    assert (s.waiting, s.in_use, s.admitted, s.cancelled) == (0, 0, 0, 1)
    assert await sem.in_use() == 0
    await sem.aclose()


async def test_a_slot_handed_to_a_waiter_cancelled_meanwhile_is_passed_on(
    client: redis_asyncio.Redis, name: str
) -> None:
    sem = RedisConcurrencyLimiter(client, name, 1)
    held = await sem.acquire()
    first = asyncio.ensure_future(sem.acquire())
    await asyncio.sleep(0.05)
    second = asyncio.ensure_future(sem.acquire())
    await asyncio.sleep(0.05)
    release = held.release()  # the release script will hand the slot to `first` in Redis...
    first.cancel()  # ...which gives up (in the same tick) before it could run
    assert release is not None
    await release
    with pytest.raises(asyncio.CancelledError):
        await first
    permit = await asyncio.wait_for(second, 5)  # the slot was passed on, not lost
    assert await sem.in_use() == 1
    await permit.arelease()
    assert await sem.in_use() == 0


async def test_acquire_nowait(client: redis_asyncio.Redis, name: str) -> None:
    sem = RedisConcurrencyLimiter(client, name, 1)
    permit = await sem.acquire_nowait()
    with pytest.raises(WouldBlock):
        await sem.acquire_nowait()
    waiter = asyncio.ensure_future(sem.acquire())
    await asyncio.sleep(0.05)
    await permit.arelease()
    got = await asyncio.wait_for(waiter, 5)
    await got.arelease()
    assert sem.statistics().rejected == 1


async def test_nowait_does_not_barge_ahead_of_queued_waiters(
    client: redis_asyncio.Redis, name: str
) -> None:
    sem = RedisConcurrencyLimiter(client, name, 2)
    a = await sem.acquire()
    b = await sem.acquire()
    waiter = asyncio.ensure_future(sem.acquire())
    await asyncio.sleep(0.05)
    await b.arelease()  # handed to the waiter, not left free
    with pytest.raises(WouldBlock):
        await sem.acquire_nowait()
    got = await asyncio.wait_for(waiter, 5)
    await got.arelease()
    await a.arelease()


async def test_keys_have_their_own_slots(client: redis_asyncio.Redis, name: str) -> None:
    sem = RedisConcurrencyLimiter(client, name, 1)
    async with sem.acquire(key="a"), sem.acquire(key="b"), sem.acquire(key=("t", 1)):
        with pytest.raises(WouldBlock):
            await sem.acquire_nowait(key="a")
        assert await sem.in_use("a") == 1
        assert sem.statistics().keys == 3


@pytest.mark.slow
async def test_held_leases_are_renewed(client: redis_asyncio.Redis, name: str) -> None:
    sem = RedisConcurrencyLimiter(client, name, 1, lease_ttl=0.3)
    permit = await sem.acquire()
    await asyncio.sleep(1.2)  # four lease lifetimes
    assert not permit.lost
    with pytest.raises(WouldBlock):
        await sem.acquire_nowait()
    await permit.arelease()
    assert sem._renewer is None  # the renewer stops with the last lease
    assert sem.statistics().lost == 0


async def test_a_lease_that_is_not_renewed_expires(redis_url: str, name: str) -> None:
    # A holder that stops renewing (a crashed process) frees its slot after lease_ttl; the
    # waiter re-checks when the earliest lease is due to expire - no release message needed.
    async with redis_client(redis_url) as c1, redis_client(redis_url) as c2:
        crashed = RedisConcurrencyLimiter(c1, name, 1, lease_ttl=0.4)
        await crashed.acquire()
        assert crashed._renewer is not None
        crashed._renewer.cancel()  # the "process" dies: no renewal, no release
        crashed._held.clear()
        other = RedisConcurrencyLimiter(c2, name, 1, lease_ttl=0.4)
        t0 = now()
        permit = await asyncio.wait_for(other.acquire(), 5)
        assert 0.2 <= now() - t0 < 2.0
        await permit.arelease()


async def test_renewal_reports_a_lost_lease(client: redis_asyncio.Redis, name: str) -> None:
    sem = RedisConcurrencyLimiter(client, name, 1, lease_ttl=0.3)
    permit = await sem.acquire()
    await client.delete(sem._keys(None)[0])  # as if the lease had expired during a stall
    for _ in range(100):
        if permit.lost:
            break
        await asyncio.sleep(0.02)
    assert permit.lost
    assert sem.statistics().lost == 1
    await permit.arelease()


async def test_sync_release_is_idempotent_and_applied_in_the_background(
    client: redis_asyncio.Redis, name: str
) -> None:
    sem = RedisConcurrencyLimiter(client, name, 1)
    permit = await sem.acquire()
    task = permit.release()
    assert task is not None
    assert permit.release() is None
    assert permit.released
    await task
    assert await sem.in_use() == 0
    async with sem:  # the `async with limiter` form
        assert await sem.in_use() == 1
    assert await sem.in_use() == 0


async def test_keys_expire_when_idle(client: redis_asyncio.Redis, name: str) -> None:
    sem = RedisConcurrencyLimiter(client, name, 1, lease_ttl=1.0)
    async with sem.acquire():
        pass
    for key in sem._keys(None)[:1] + sem._keys(None)[3:]:
        ttl = await client.pttl(key)
        assert ttl == -2 or 0 < ttl <= 3000, (key, ttl)


async def test_bad_arguments(client: redis_asyncio.Redis) -> None:
    with pytest.raises(ValueError, match="limit"):
        RedisConcurrencyLimiter(client, "n", 0)
    with pytest.raises(TypeError, match="limit"):
        RedisConcurrencyLimiter(client, "n", 1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lease_ttl"):
        RedisConcurrencyLimiter(client, "n", 1, lease_ttl=0.01)
    with pytest.raises(ValueError, match="clock"):
        RedisConcurrencyLimiter(client, "n", 1, clock="x")  # type: ignore[arg-type]
    sem = RedisConcurrencyLimiter(client, "n", 1)
    with pytest.raises(ValueError, match="timeout"):
        sem.acquire(timeout=-1)
    with pytest.raises(TypeError, match="key"):
        sem.acquire(key=object())


async def test_leaks_name_held_leases_and_waiters(client: redis_asyncio.Redis, name: str) -> None:
    sem = RedisConcurrencyLimiter(client, name, 1)
    permit = await sem.acquire(key="k")
    waiter = asyncio.ensure_future(sem.acquire(key="k"))
    await asyncio.sleep(0.05)
    leaks = sem._aiolease_leaks()
    assert any("still held" in p for p in leaks)
    assert any("waiting" in p for p in leaks)
    assert "RedisConcurrencyLimiter" in repr(sem)
    assert "held" in repr(permit)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await permit.arelease()
    assert any("left open" in p for p in sem._aiolease_leaks())
    await sem.aclose()
    assert sem._aiolease_leaks() == []
    await settle_down(sem)


async def test_cancel_during_the_first_round_trip_leaves_no_slot_held(
    client: redis_asyncio.Redis, name: str, redis_url: str
) -> None:
    # Through a proxy that delays every chunk, the script reaches Redis (and takes the free
    # slot) well before its reply is back: the task is cancelled in between.
    async with through_proxy(redis_url) as (proxy, slow):
        sem = RedisConcurrencyLimiter(slow, name, 1, call_timeout=5.0)
        await sem.in_use()  # connect first
        holders = sem._keys(None)[0]
        proxy.set_latency(0.25)
        task = asyncio.ensure_future(sem.acquire())

        async def taken() -> bool:
            return bool(await client.zcard(holders))

        await eventually(taken)  # the slot is taken for the task...
        assert not task.done()  # ...whose reply has not come yet
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await settle_down(sem)
        assert await client.zcard(holders) == 0  # the slot was given back
        assert sem.statistics().in_use == 0
        assert any("left open" in p for p in sem._aiolease_leaks())
        await sem.aclose()
        assert sem._aiolease_leaks() == []


@contextlib.asynccontextmanager
async def slow_limiter(
    redis_url: str, name: str, public: bool, call_timeout: float
) -> AsyncIterator[tuple[FaultProxy, RedisConcurrencyLimiter]]:
    """A limit-1 limiter (lease_ttl 5 s) reaching Redis through a FaultProxy; closed at exit."""
    async with through_proxy(redis_url) as (proxy, slow):
        with compat_public(public):
            sem = RedisConcurrencyLimiter(slow, name, 1, lease_ttl=5.0, call_timeout=call_timeout)
        try:
            yield proxy, sem
        finally:
            await sem.aclose()


@pytest.mark.parametrize("public", [False, True], ids=["pipe", "public"])
async def test_a_script_overtaken_by_its_withdrawal_takes_no_slot(
    client: redis_asyncio.Redis, name: str, redis_url: str, public: bool
) -> None:
    # The first script is slow on its way (a slow network); its call times out, so its
    # connection is dropped (the pipe; in public mode redis-py's own) and the withdrawal goes on a
    # fresh connection, which reaches Redis first. The late script must take nothing: it used to
    # take the free slot for lease_ttl although its caller had failed.
    async with slow_limiter(redis_url, name, public, call_timeout=0.1) as (proxy, sem):
        await sem.in_use()  # connect first
        holders, queue, _, _, withdrawn = sem._keys(None)
        proxy.set_latency(0.3)
        task = asyncio.ensure_future(sem.acquire())
        await asyncio.sleep(0.02)  # the script is on its way...
        proxy.set_latency(0)  # ...and what is sent from now on (the withdrawal) arrives at once
        with pytest.raises(LimiterUnavailable):
            await task
        await settle_down(sem)
        await asyncio.sleep(0.6)  # the late script has come (0.3 s after it was sent)
        assert await client.zrange(holders, 0, -1) == []
        assert await client.zrange(queue, 0, -1) == []
        assert await client.zcard(withdrawn) == 1
        permit = await sem.acquire_nowait()  # the slot is free now, not after lease_ttl
        await permit.arelease()


@pytest.mark.parametrize("public", [False, True], ids=["pipe", "public"])
async def test_a_release_lost_with_its_connection_is_sent_again(
    client: redis_asyncio.Redis, name: str, redis_url: str, public: bool
) -> None:
    # The release goes into a network that went silent: what it sent is lost, its call times out
    # and its connection is dropped. The network is back by then, so the release is sent once
    # more on a fresh connection: the slot is free now, not after lease_ttl.
    async with slow_limiter(redis_url, name, public, call_timeout=0.2) as (proxy, sem):
        permit = await sem.acquire()
        holders = sem._keys(None)[0]
        assert await client.zcard(holders) == 1
        proxy.blackhole()
        released = permit.release()
        assert released is not None
        await asyncio.sleep(0.05)
        proxy.heal()
        assert await released == 1  # the second call found the slot held and freed it
        assert await client.zcard(holders) == 0
        await (await sem.acquire_nowait()).arelease()


@pytest.mark.parametrize("eager", [False, pytest.param(True, marks=NEEDS_EAGER)])
async def test_a_release_that_cannot_reach_redis_does_not_replace_the_error(
    client: redis_asyncio.Redis, name: str, caplog: pytest.LogCaptureFixture, eager: bool
) -> None:
    """Also with an eager task factory, where the release's call fails before the task
    that runs it is returned (its failure must still be logged as the outage's start)."""
    caplog.set_level(logging.DEBUG, logger="aiolease.redis")
    sem = RedisConcurrencyLimiter(client, name, 1, lease_ttl=0.5)

    async def down(*args: object, **kwargs: object) -> None:
        raise RedisConnectionError("Redis went away")

    caller = sem._call

    async def body() -> None:
        async with sem.acquire():
            sem._call = down  # type: ignore[assignment]
            raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError), eager_tasks(eager):  # the body's, not the release's
        await body()
    sem._call = caller
    assert "the lease expires after lease_ttl" in caplog.text
    # the failure began an outage: its one WARNING (the release's own line is then DEBUG)
    (warning,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert warning.getMessage().startswith("Redis unavailable for concurrency limiter")
    assert any("left open" in p for p in sem._aiolease_leaks())
    await sem.aclose()
    assert sem._aiolease_leaks() == []


async def test_a_release_after_aclose_logs_no_outage(
    client: redis_asyncio.Redis, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A lease released after aclose() expires after lease_ttl (as documented): Redis did
    not fail, so no outage is logged (before: a WARNING "Redis unavailable ... the limiter
    was closed")."""
    caplog.set_level(logging.DEBUG, logger="aiolease.redis")
    sem = RedisConcurrencyLimiter(client, name, 1, lease_ttl=0.5)
    async with sem.acquire() as permit:
        await sem.aclose()
    assert permit.released
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert sem._aiolease_leaks() == []


async def test_a_waiter_does_not_poll(client: redis_asyncio.Redis, name: str) -> None:
    sem = RedisConcurrencyLimiter(client, name, 1)  # lease_ttl 30 s
    held = await sem.acquire()
    sent = sem._call.sent
    waiter = asyncio.ensure_future(sem.acquire())
    await asyncio.sleep(0.5)
    # the free-slot check and the queue entry; then it sleeps until woken
    assert sem._call.sent - sent == 2
    await held.arelease()
    permit = await asyncio.wait_for(waiter, 5)
    await permit.arelease()


async def test_client_clock_and_key_prefix(client: redis_asyncio.Redis, name: str) -> None:
    sem = RedisConcurrencyLimiter(client, name, 1, clock="client", prefix="myapp")
    async with sem.acquire(key="k"):
        holders = sem._keys("k")[0]
        assert holders.startswith("myapp:conc:{")
        assert await client.zcard(holders) == 1
        with pytest.raises(WouldBlock):
            await sem.acquire_nowait(key="k")
    assert await client.zcard(holders) == 0
    await client.delete(*sem._keys("k"))


async def test_a_caller_that_stops_waiting_for_a_release_leaves_the_slot_free(
    client: redis_asyncio.Redis, name: str
) -> None:
    # release() returns the task of its Redis call; a caller cancelled while awaiting it stops
    # waiting, and the slot is still freed (not held until lease_ttl).
    sem = RedisConcurrencyLimiter(client, name, 1, lease_ttl=30)
    permit = await sem.acquire()

    async def releasing() -> None:
        task = permit.release()
        assert task is not None
        await task

    caller = asyncio.ensure_future(releasing())
    await asyncio.sleep(0)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    await settle_down(sem)
    assert await sem.in_use() == 0
    await sem.aclose()


async def _recovered(sem: RedisConcurrencyLimiter, steps: int) -> None:
    """Past the cool-down, ``sem`` is answered by Redis again: the call made once
    ``retry_after`` has passed is the probe (as for the rate limiter's sweep in
    test_redis_rate.py)."""
    await asyncio.sleep(sem._health.retry_after(now()))  # past the cool-down, if any
    permit = await sem.acquire_nowait()
    await permit.arelease()
    assert not permit.degraded, steps


@pytest.mark.parametrize("public", [False, True], ids=["pipe", "public"])
@pytest.mark.parametrize("how", ["pool-disconnect", "client-aclose"])
@pytest.mark.parametrize("fallback", [False, True], ids=["raise", "fallback"])
async def test_a_client_disconnected_under_calls_at_any_step_is_an_outage_then_recovers(
    redis_url: str, name: str, public: bool, how: str, fallback: bool
) -> None:
    # As the rate limiter's sweep (test_redis_rate.py): redis-py disconnects the client's
    # connections (its pool's disconnect(), or the client's aclose(), which the client
    # survives) at every loop step of three concurrent acquisitions of a fresh limiter:
    # connecting, writing, awaiting the replies. Each is granted by Redis or, as Redis is
    # unavailable, fails with LimiterUnavailable (no fallback) or is granted by the fallback,
    # never with another error; the next call after the cool-down is answered by Redis.
    # (A limit no sweep reaches: a release lost with its connection leaves a lease held until
    # lease_ttl, and no acquisition waits for a hand-off.)
    async with redis_client(redis_url) as own:
        for steps in range(30):
            local = ConcurrencyLimiter(1000) if fallback else None
            with compat_public(public):
                sem = RedisConcurrencyLimiter(
                    own, name, 1000, lease_ttl=5.0, call_timeout=0.2, fallback=local
                )
            direct = sem._call._direct  # (the pipe unless AIOLEASE_COMPAT=public or public)
            outcomes = await disconnected_under_calls(own, sem.acquire, steps, how)
            for outcome in outcomes:  # (a connect redis-py retries may reach call_timeout)
                assert not isinstance(outcome, BaseException) or (
                    not fallback
                    and isinstance(outcome, LimiterUnavailable)
                    and isinstance(outcome.__cause__, (RedisConnectionError, RedisTimeoutError))
                ), (steps, outcomes)
            for outcome in outcomes:
                if not isinstance(outcome, BaseException):
                    assert fallback or not outcome.degraded
                    await outcome.arelease()  # (a release that fails is logged, not raised)
            await _recovered(sem, steps)
            assert sem._call._direct is direct  # the pipe kept
            await sem.aclose()


@pytest.mark.slow
@pytest.mark.parametrize("public", [False, True], ids=["pipe", "public"])
async def test_the_leases_of_many_keys_are_renewed_within_one_round_trip(
    client: redis_asyncio.Redis, name: str, redis_url: str, public: bool
) -> None:
    # Each held key is renewed by a call of its own. Sent one after another, 30 keys behind a
    # round trip of about 0.1 s take about 3 s a round, and the leases of the keys late in the
    # round lapse while still held: another process takes their slot (the limit is exceeded).
    # The pipe writes them all at once; the public path pipelines them on one pooled connection.
    async with through_proxy(redis_url) as (proxy, slow):
        with compat_public(public):
            sem = RedisConcurrencyLimiter(slow, name, 1, lease_ttl=0.6, call_timeout=10.0)
        other = RedisConcurrencyLimiter(client, name, 1, lease_ttl=0.6)
        keys = [f"k{i}" for i in range(30)]
        try:
            # (taken before the network slows: on the public path the acquisitions themselves
            # go one at a time too)
            permits = await asyncio.gather(*(sem.acquire(key=k) for k in keys))
            proxy.set_latency(0.05)  # each way
            taken: list[str] = []
            for _ in range(20):  # ten renewal rounds are due
                await asyncio.sleep(0.1)
                for k in keys:
                    with contextlib.suppress(WouldBlock):
                        await (await other.acquire_nowait(key=k)).arelease()
                        taken.append(k)
            assert taken == []
            assert [p.key for p in permits if p.lost] == []
            assert sem.statistics().lost == 0
            proxy.set_latency(0)
            await asyncio.gather(*(p.arelease() for p in permits))
        finally:
            await sem.aclose()
            await other.aclose()


async def test_a_release_that_aclose_cuts_short_does_not_cancel_its_caller(
    client: redis_asyncio.Redis, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """aclose() cancels a release still in flight after call_timeout (Redis never answers it):
    the task awaiting that release was not cancelled, so it must not end with CancelledError
    (a TaskGroup would take it for a cancellation, and its block's outcome would be lost)."""
    caplog.set_level(logging.DEBUG, logger="aiolease.redis")
    sem = RedisConcurrencyLimiter(client, name, 1, lease_ttl=5.0, call_timeout=0.2)
    caller = sem._call
    releasing = asyncio.Event()

    async def never(*args: object, **kwargs: object) -> None:
        releasing.set()
        await asyncio.sleep(3600)

    async def body() -> str:
        async with sem.acquire():
            sem._call = never  # type: ignore[assignment]
        return "done"

    task = asyncio.ensure_future(body())
    await asyncio.wait_for(releasing.wait(), 5)
    sem._call = caller
    await sem.aclose()
    done, _ = await asyncio.wait({task}, timeout=5)
    assert done
    assert not task.cancelled(), "the caller of the release ended cancelled"
    assert task.result() == "done"
    assert "the lease expires after lease_ttl" in caplog.text
