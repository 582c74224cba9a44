"""Redis limiters facing a server that answers, but not as usual: ACLs, maxmemory, replicas,
idle-connection timeouts. Each test runs on a redis-server of its own (``own_redis``).

Redis "cannot answer" (an outage: ``LimiterUnavailable``, ``on_error``, ``fallback``) must be
told apart from "Redis refuses this configuration" (a clear error, never answered by admitting
callers unchecked), and a connection the server closed while idle is no outage at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as redis_asyncio
from _redis_server import OwnRedis, SilentProxy, own_redis, running_redis
from redis.exceptions import NoPermissionError

import aiolease
from aiolease import LimiterUnavailable, LimitTimeout, RateLimitExceeded
from aiolease.redis import RedisConcurrencyLimiter, RedisRateLimiter

pytestmark = [pytest.mark.redis, pytest.mark.slow]

__all__ = ["own_redis"]  # the fixture, imported for pytest


@pytest.fixture(params=["rate", "concurrency"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def make_limiter(kind: str, client: redis_asyncio.Redis, **kw: Any) -> Any:
    if kind == "rate":
        return RedisRateLimiter(client, "server-faults", 100, burst=5, **kw)
    return RedisConcurrencyLimiter(client, "server-faults", 2, lease_ttl=2.0, **kw)


async def use(lim: Any, timeout: float | None = 1.0) -> Any:
    permit = await lim.acquire(timeout=timeout)
    if isinstance(lim, RedisConcurrencyLimiter):
        await permit.arelease()
    return permit


# -- a connection the server closed while it was idle ------------------------------------------


async def test_a_connection_the_server_closed_while_idle_is_no_outage(
    kind: str, own_redis: OwnRedis, caplog: pytest.LogCaptureFixture
) -> None:
    # `timeout 1` (or a load balancer's / NAT's idle timeout) closes a connection idle that
    # long. The limiter's call must go on a fresh connection, not be answered as an outage.
    async with redis_asyncio.Redis.from_url(own_redis.url) as client:
        lim = make_limiter(kind, client)
        await use(lim)
        await client.config_set("timeout", 1)
        await asyncio.sleep(2.5)  # the server has closed the limiter's idle connection
        for _ in range(3):
            permit = await use(lim)
            assert not permit.degraded
        assert not [r for r in caplog.records if "unavailable" in r.getMessage()]
        await lim.aclose()


# -- ACL: a user Redis refuses a command, a key or a channel -----------------------------------


async def acl_user(own_redis: OwnRedis, rules: str) -> str:
    """A URL of a new ACL user with ``rules`` (password ``pw``) on ``own_redis``."""
    async with redis_asyncio.Redis.from_url(own_redis.url) as admin:
        command = f"ACL SETUSER limited on >pw {rules}"
        await admin.execute_command(command)  # type: ignore[no-untyped-call]
    return f"redis://limited:pw@127.0.0.1:{own_redis.port}/0"


@pytest.mark.parametrize("with_fallback", [False, True])
async def test_a_hand_off_channel_the_acl_refuses_is_no_outage(
    own_redis: OwnRedis, with_fallback: bool, caplog: pytest.LogCaptureFixture
) -> None:
    # Redis 7 gives a new ACL user no pub/sub channel (acl-pubsub-default resetchannels): a
    # queued waiter cannot subscribe for its hand-off. That is the configuration refusing the
    # limiter, not Redis failing: a fallback must not hand out a slot on top of Redis's (the
    # limit would be exceeded), and the error must say what was refused.
    url = await acl_user(own_redis, "~* +@all resetchannels")
    local = aiolease.ConcurrencyLimiter(1)
    kw: dict[str, Any] = {"fallback": local} if with_fallback else {}
    async with (
        redis_asyncio.Redis.from_url(own_redis.url) as admin,
        redis_asyncio.Redis.from_url(url) as client,
    ):
        holder = RedisConcurrencyLimiter(admin, "acl", 1)
        lim = RedisConcurrencyLimiter(client, "acl", 1, **kw)
        permit = await holder.acquire()  # the one slot is taken: the next caller queues
        for _ in range(2):
            with pytest.raises(NoPermissionError, match="channel") as info:
                await lim.acquire(timeout=1.0)
            assert not isinstance(info.value, LimiterUnavailable)
            assert "aiolease:conc:{acl}:wake" in str(info.value)
        assert local.statistics().in_use == 0
        assert await holder.in_use() == 1  # the refused waiter left the queue
        assert not [r for r in caplog.records if "unavailable" in r.getMessage()]
        await permit.arelease()
        await lim.aclose()
        await holder.aclose()


async def test_an_acl_refusing_script_load_is_the_error_raised_not_noscript(
    kind: str, own_redis: OwnRedis, caplog: pytest.LogCaptureFixture
) -> None:
    # A user allowed EVALSHA but not SCRIPT LOAD, after the script cache was flushed: the
    # NOSCRIPT answer is followed by SCRIPT LOAD, which Redis refuses. That refusal is what the
    # caller must see (not NOSCRIPT, whose advice to use EVAL is misleading), and it is not an
    # outage for on_error to answer.
    url = await acl_user(own_redis, "~* +@all -script allchannels")
    kw: dict[str, Any] = {"on_error": "allow"} if kind == "rate" else {}
    async with redis_asyncio.Redis.from_url(url) as client:
        lim = make_limiter(kind, client, **kw)
        for _ in range(2):
            with pytest.raises(NoPermissionError, match="script"):
                await use(lim)
        await lim.aclose()
    gc.collect()
    await asyncio.sleep(0)
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


async def test_a_refused_release_does_not_replace_the_blocks_exception(
    own_redis: OwnRedis, caplog: pytest.LogCaptureFixture
) -> None:
    # The ACL changed while the slot was held: the release is refused (NOPERM). Leaving the
    # `async with` block must still raise the block's own exception (the failure is logged and
    # the lease expires after lease_ttl), as when Redis cannot be reached.
    url = await acl_user(own_redis, "~* +@all allchannels")
    async with (
        redis_asyncio.Redis.from_url(own_redis.url) as admin,
        redis_asyncio.Redis.from_url(url) as client,
    ):
        lim = RedisConcurrencyLimiter(client, "refused-release", 1, lease_ttl=0.5)

        async def block() -> None:
            async with lim.acquire(timeout=1.0):
                revoke = "ACL SETUSER limited -evalsha"
                await admin.execute_command(revoke)  # type: ignore[no-untyped-call]
                raise KeyError("the block's own")

        with pytest.raises(KeyError, match="the block's own"):
            await block()
        assert [r for r in caplog.records if "releasing" in r.getMessage()]
        await asyncio.sleep(0.7)  # the lease expired: the slot is free again
        assert await RedisConcurrencyLimiter(admin, "refused-release", 1).in_use() == 0
        await lim.aclose()


# -- replicas and failover ---------------------------------------------------------------------


@pytest.fixture
async def other_redis(own_redis: OwnRedis) -> AsyncIterator[OwnRedis]:
    """A second redis-server of the test's own (``own_redis`` checked the binary exists)."""
    binary = shutil.which("redis-server")
    assert binary is not None
    async with running_redis(binary) as server:
        yield server


async def test_a_failover_that_demotes_the_primary_is_followed(
    kind: str, own_redis: OwnRedis, other_redis: OwnRedis
) -> None:
    # The address the client uses moves to the new primary (a DNS name, a VIP: here a proxy
    # whose target changes) while the old primary lives on as a replica: connections made
    # before keep reaching the replica, which answers READONLY. A call that meets it fails as
    # unavailable; the limiter must then connect afresh, not stay on the replica for good.
    async with (
        SilentProxy(own_redis.port) as proxy,
        redis_asyncio.Redis.from_url(proxy.url) as client,
        redis_asyncio.Redis.from_url(own_redis.url) as old,
    ):
        lim = make_limiter(kind, client, call_timeout=0.5)
        await use(lim)
        await old.replicaof("127.0.0.1", other_redis.port)
        proxy.target_port = other_redis.port  # new connections reach the new primary
        with pytest.raises(LimiterUnavailable) as info:
            await use(lim)  # still on the demoted primary: READONLY
        assert "READONLY" in repr(info.value.__cause__) or "read only" in str(info.value)
        ok = None
        for _ in range(40):  # one cool-down (at most 1 s) later, Redis takes over again
            await asyncio.sleep(0.1)
            try:
                ok = await use(lim)
                break
            except LimiterUnavailable:
                continue
        assert ok is not None
        assert not ok.degraded
        await lim.aclose()


async def test_a_server_of_the_tests_own_writes_in_a_directory_of_its_own(
    own_redis: OwnRedis,
) -> None:
    # A replica saves the data its primary sends (dump.rdb) in the server's directory: with
    # the working directory there, the failover test left that file in the checkout.
    async with redis_asyncio.Redis.from_url(own_redis.url) as client:
        workdir = str((await client.config_get("dir"))["dir"])
    assert not _same_directory(workdir, os.getcwd())
    assert _same_directory(os.path.dirname(workdir), tempfile.gettempdir())


def _same_directory(a: str, b: str) -> bool:
    return os.path.samefile(a, b)


# -- maxmemory ---------------------------------------------------------------------------------


async def fill_memory(admin: redis_asyncio.Redis) -> None:
    """``maxmemory`` reached with ``noeviction``: every command that may grow memory is refused."""
    await admin.config_set("maxmemory-policy", "noeviction")
    await admin.config_set("maxmemory", 1)  # (far below what any server uses)
    with pytest.raises(redis_asyncio.ResponseError, match=r"OOM|maxmemory"):
        await admin.set("filler", "x")


@pytest.mark.parametrize("answer", ["raise", "allow", "deny", "fallback"])
async def test_a_full_redis_is_answered_as_unavailable_by_the_rate_limiter(
    answer: str, own_redis: OwnRedis
) -> None:
    # maxmemory reached with noeviction: the script's SET is refused (OOM), nothing was written.
    # Redis cannot keep the limit: that is for on_error / the fallback to answer, in the
    # documented error type - not redis-py's raw OutOfMemoryError whatever on_error says.
    kw: dict[str, Any] = {"on_error": answer}
    if answer == "fallback":
        kw = {"fallback": aiolease.RateLimiter(100, burst=5)}
    async with redis_asyncio.Redis.from_url(own_redis.url) as client:
        lim = make_limiter("rate", client, **kw)
        await use(lim)
        await fill_memory(client)
        if answer in ("raise", "deny"):
            expected = LimiterUnavailable if answer == "raise" else RateLimitExceeded
            with pytest.raises(expected) as info:
                await use(lim)
            assert "OutOfMemoryError" in repr(info.value.__cause__) or "memory" in str(
                info.value.__cause__
            )
        else:
            assert (await use(lim)).degraded
        assert lim.statistics().errors == 1
        await lim.aclose()


async def test_a_full_redis_keeps_the_concurrency_limit(own_redis: OwnRedis) -> None:
    # The concurrency scripts write (purge) before anything that could grow memory, and Redis
    # lets a script that has written finish: leases are still taken, renewed and released.
    async with redis_asyncio.Redis.from_url(own_redis.url) as client:
        lim = RedisConcurrencyLimiter(client, "full", 1, lease_ttl=0.6)
        await fill_memory(client)
        permit = await lim.acquire(timeout=1.0)
        with pytest.raises(LimitTimeout):
            await lim.acquire(timeout=0.3)
        await asyncio.sleep(0.9)  # past lease_ttl: renewed meanwhile
        assert not permit.lost
        assert await lim.in_use() == 1
        await permit.arelease()
        assert await lim.in_use() == 0
        await lim.aclose()


# -- leases that outlive their holder's renewals -----------------------------------------------


async def test_releasing_a_lost_lease_frees_no_one_elses_slot(own_redis: OwnRedis) -> None:
    # A holder stalled past lease_ttl (here: its lease removed, as its expiry would) has lost
    # its slot to the next caller; its late release must not free that caller's slot.
    async with redis_asyncio.Redis.from_url(own_redis.url) as client:
        a = RedisConcurrencyLimiter(client, "lost", 1, lease_ttl=0.6)
        b = RedisConcurrencyLimiter(client, "lost", 1, lease_ttl=0.6)
        stalled = await a.acquire()
        await client.zrem(a._keys(None)[0], stalled.lease_id)  # its lease expired meanwhile
        taker = await b.acquire(timeout=1.0)
        for _ in range(100):  # a's renewal finds out
            if stalled.lost:
                break
            await asyncio.sleep(0.02)
        assert stalled.lost
        await stalled.arelease()
        assert await b.in_use() == 1
        with pytest.raises(LimitTimeout):
            await a.acquire(timeout=0.2)
        await taker.arelease()
        await a.aclose()
        await b.aclose()


# -- BUSY: another client's script runs past busy-reply-threshold -------------------------------


@contextlib.asynccontextmanager
async def busy(own_redis: OwnRedis) -> Any:
    """While inside, a script of another client spins: Redis answers every call ``BUSY``."""
    async with (
        redis_asyncio.Redis.from_url(own_redis.url) as admin,
        redis_asyncio.Redis.from_url(own_redis.url) as spinner,
    ):
        await admin.config_set("lua-time-limit", 50)  # (busy-reply-threshold since 7.0)
        spin = asyncio.ensure_future(spinner.eval("while true do end", 0))
        await asyncio.sleep(0.2)  # past the threshold: BUSY from now on
        try:
            yield
        finally:
            await admin.script_kill()
            with pytest.raises(redis_asyncio.ResponseError):
                await spin


async def test_a_busy_redis_is_answered_as_unavailable(kind: str, own_redis: OwnRedis) -> None:
    # Redis refuses every command with BUSY while another client's script runs long: the call
    # did not run, and Redis cannot answer for now - an outage, not a raw ResponseError that
    # ignores on_error.
    kw: dict[str, Any] = {"on_error": "allow"} if kind == "rate" else {}
    async with redis_asyncio.Redis.from_url(own_redis.url) as client:
        lim = make_limiter(kind, client, **kw)
        await use(lim)
        async with busy(own_redis):
            if kind == "rate":
                assert (await use(lim)).degraded
            else:
                with pytest.raises(LimiterUnavailable, match="BUSY"):
                    await use(lim)
        await asyncio.sleep(1.1)  # past the longest cool-down
        assert not (await use(lim)).degraded
        await lim.aclose()


async def test_a_lease_is_renewed_again_after_renewals_failed_with_an_error_reply(
    own_redis: OwnRedis,
) -> None:
    # A renewal answered by an error reply (BUSY here) ended the renewer for good: the lease
    # then expired while its holder held it, and permit.lost never said so - the limit was
    # exceeded silently. The renewer must go on (and report a lease it finds gone).
    async with redis_asyncio.Redis.from_url(own_redis.url) as client:
        lim = RedisConcurrencyLimiter(client, "renew", 1, lease_ttl=0.6)
        permit = await lim.acquire()
        async with busy(own_redis):
            await asyncio.sleep(0.5)  # renewals every 0.2 s meet BUSY
        await asyncio.sleep(1.5)  # past lease_ttl: renewed again, or found gone and reported
        assert permit.lost is (await lim.in_use() == 0)
        await permit.arelease()
        await lim.aclose()


# -- clients and commands a user may bring along -----------------------------------------------


@pytest.mark.parametrize(
    "options",
    [{"protocol": 3}, {"decode_responses": True}, {"protocol": 3, "decode_responses": True}],
)
async def test_resp3_and_decoding_clients_work(
    own_redis: OwnRedis, options: dict[str, Any]
) -> None:
    # A client the user also uses for their own commands, with RESP3 and/or decoded replies.
    async with redis_asyncio.Redis.from_url(own_redis.url, **options) as client:
        rate = RedisRateLimiter(client, "resp", 10, burst=1)
        conc = RedisConcurrencyLimiter(client, "resp", 1)
        first = await rate.acquire()
        await first.asettle(0.5)
        second = await rate.acquire(timeout=1.0)  # reserved, slept, admitted
        assert not second.degraded
        await rate.pause(0.01)
        held = await conc.acquire()
        waiter = asyncio.ensure_future(conc.acquire(timeout=2.0))
        await asyncio.sleep(0.1)
        await client.set("resp:user", "mine")  # the user's own command on the same pool
        await held.arelease()
        handed = await waiter  # woken by the hand-off message
        assert await conc.in_use() == 1
        await handed.arelease()
        assert await client.get("resp:user") in (b"mine", "mine")
        await rate.aclose()
        await conc.aclose()


async def test_paused_writes_are_bounded_by_call_timeout(kind: str, own_redis: OwnRedis) -> None:
    # CLIENT PAUSE WRITE holds every script for its duration: each call still ends within
    # call_timeout (acquire(timeout=T) within T), as LimiterUnavailable.
    async with redis_asyncio.Redis.from_url(own_redis.url) as client:
        lim = make_limiter(kind, client, call_timeout=0.3)
        await use(lim)
        await client.execute_command("CLIENT PAUSE 1500 WRITE")  # type: ignore[no-untyped-call]
        loop = asyncio.get_running_loop()
        for timeout in (None, 0.2):
            t0 = loop.time()
            with pytest.raises(LimiterUnavailable):
                await use(lim, timeout=timeout)
            assert loop.time() - t0 < 0.3 + 0.5  # (slack for a loaded machine)
        await asyncio.sleep(2.0)  # the pause is over, and the cool-down
        assert not (await use(lim)).degraded
        await lim.aclose()


async def test_flushdb_under_held_leases_is_reported_and_releases_are_harmless(
    own_redis: OwnRedis,
) -> None:
    async with redis_asyncio.Redis.from_url(own_redis.url) as client:
        lim = RedisConcurrencyLimiter(client, "flushed", 2, lease_ttl=0.6)
        permits = [await lim.acquire(), await lim.acquire()]
        await client.flushdb()  # as a restart without persistence would
        newcomer = await lim.acquire(timeout=1.0)  # the slots are free again (documented)
        for _ in range(100):
            if all(p.lost for p in permits):
                break
            await asyncio.sleep(0.02)
        assert all(p.lost for p in permits)
        for p in permits:
            await p.arelease()
        assert await lim.in_use() == 1  # the newcomer's lease is untouched
        await newcomer.arelease()
        assert await lim.in_use() == 0
        await lim.aclose()
