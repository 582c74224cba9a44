"""RedisConcurrencyLimiter: at most ``limit`` leases per key across processes, FIFO hand-off."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
import uuid
from collections.abc import Generator, Hashable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal, TypeGuard

from redis import exceptions as _rexc

from .. import _metrics, _tracking, _validate
from .._errors import LimiterUnavailable, LimitTimeout, WouldBlock
from .._limits import ConcurrencyLimiter, ConcurrencyLimiterStatistics, ConcurrencyPermit
from .._logs import get_logger
from .._shield import shielded
from .._validate import LONGEST_WAIT, check_entry
from ._background import Background, cancel_late, closing
from ._health import UNAVAILABLE, Health, describe, unavailable
from ._keys import check_name, check_prefix, key_base, key_text
from ._pipe import (
    Caller,
    check_client,
    detached,
    refused,
    text,
)
from ._scripts import CONC_ACQUIRE, CONC_CANCEL, CONC_COUNT, CONC_RENEW

if TYPE_CHECKING:
    from ._pipe import Client

__all__ = [
    "RedisConcurrencyLimiter",
    "RedisConcurrencyLimiterStatistics",
    "RedisConcurrencyPermit",
]

logger = get_logger("aiolease.redis")

Clock = Literal["server", "client"]


@dataclass(frozen=True, slots=True)
class RedisConcurrencyLimiterStatistics(ConcurrencyLimiterStatistics):
    """Counters of one :class:`RedisConcurrencyLimiter` object (this process only).

    The fields of :class:`aiolease.ConcurrencyLimiterStatistics` (``in_use``, ``waiting`` and
    ``keys`` count this process's leases and waiters; :meth:`RedisConcurrencyLimiter.in_use` asks
    Redis for the total). ``rejected`` includes the acquisitions that raised
    ``LimiterUnavailable``, and the counts include the answers of the ``fallback`` limiter
    (which counts them too). Plus:

    Attributes:
        lost: leases found expired by a renewal (the process stalled longer than ``lease_ttl``).
    """

    lost: int = 0


class RedisConcurrencyPermit:
    """A lease on one slot of a :class:`RedisConcurrencyLimiter`.

    Attributes:
        key: the limiter key.
        lease_id: the holder id stored in Redis.
        lost: True once a renewal found the lease gone (it expired: the process stalled longer
            than ``lease_ttl``); the slot may then be used by someone else.
        degraded: True when Redis was unavailable and the ``fallback`` limiter gave the slot.
    """

    __slots__ = ("_keys", "_limiter", "_local", "_released", "degraded", "key", "lease_id", "lost")

    def __init__(
        self,
        limiter: RedisConcurrencyLimiter,
        keys: tuple[str, ...],
        key: Hashable,
        lease_id: str,
        local: ConcurrencyPermit | None = None,
    ) -> None:
        self._limiter = limiter
        self._keys = keys
        self._released = False
        self._local = local
        self.degraded = local is not None
        self.key = key
        self.lease_id = lease_id
        self.lost = False

    @property
    def released(self) -> bool:
        return self._released

    def release(self) -> asyncio.Task[Any] | None:
        """Give the slot back (idempotent). The Redis call runs in the returned background task
        (cancelling a wait for it leaves the call running: the slot is freed all the same)."""
        task = self._end()
        return None if task is None else detached(task)

    def _end(self) -> asyncio.Task[Any] | None:
        if self._released:
            return None
        self._released = True
        if self._local is not None:
            self._local.release()
            return None
        return self._limiter._release(self)

    async def arelease(self) -> None:
        """Give the slot back and wait for Redis to record it (idempotent, shielded).

        When Redis cannot be reached, or refuses the call (an ACL changed meanwhile), the failure
        is logged, not raised (it must not replace an exception leaving an ``async with``
        block): the lease then expires after ``lease_ttl``.
        """
        task = self._end()
        if task is not None:
            try:
                # The release is bounded (call_timeout); an anyio scope's cancellation,
                # delivered again at each await, must not end this wait before Redis has it.
                with shielded():
                    await asyncio.shield(task)
            except asyncio.CancelledError:
                me = asyncio.current_task()
                if not task.cancelled() or (me is not None and me.cancelling()):
                    raise  # this task was cancelled
                # aclose() cancelled the release, still unanswered after call_timeout: a
                # failed release, not a cancellation of this task, which goes on.
                self._release_failed("cut short by aclose()")
            except Exception as exc:  # logged: see above
                self._release_failed(describe(exc))

    def _release_failed(self, why: str) -> None:
        logger.log(  # the task's own line began the outage, if it was not known
            logging.DEBUG if self._limiter._health.down_since is not None else logging.WARNING,
            "releasing %s of %r failed (%s); the lease expires after lease_ttl",
            self.lease_id,
            self._limiter.name,
            why,
        )

    def __repr__(self) -> str:
        state = "released" if self._released else ("lost" if self.lost else "held")
        flag = " degraded" if self.degraded else ""
        return f"<RedisConcurrencyPermit key={self.key!r} {self.lease_id} {state}{flag}>"


class _RedisConcAcquire:
    __slots__ = ("_args", "_entered", "_limiter", "_permit")

    def __init__(
        self, limiter: RedisConcurrencyLimiter, args: tuple[Hashable, float | None]
    ) -> None:
        self._limiter = limiter
        self._args = args
        self._permit: RedisConcurrencyPermit | None = None
        self._entered = False

    def __await__(self) -> Generator[Any, None, RedisConcurrencyPermit]:
        return self._limiter._acquire(*self._args).__await__()

    async def __aenter__(self) -> RedisConcurrencyPermit:
        check_entry(self._entered, self._limiter)
        self._entered = True
        try:
            self._permit = await self._limiter._acquire(*self._args)
        except BaseException:
            self._entered = False
            raise
        return self._permit

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        permit, self._permit, self._entered = self._permit, None, False
        if permit is not None:
            await permit.arelease()


_GRANTED: Final = "granted"
_RECHECK: Final = "recheck"
#: Renewal calls a renewer has in flight at once (one per key with leases or waiters).
_RENEW_WINDOW: Final = 512

#: How far past ``timeout`` an ``acquire(timeout=...)`` may end: the time to wrap up a Redis call
#: that did not answer in time (the contract allows 0.1 s).
DEADLINE_GRACE: Final = 0.05


class RedisConcurrencyLimiter:
    """At most ``limit`` holders at once per key, across every process sharing Redis and ``name``.

    Each slot is a lease (a sorted set of holder ids scored by expiry) renewed in the background
    every ``lease_ttl / 3`` while held, so the slot of a crashed or killed holder frees itself
    within ``lease_ttl``. Waiters queue in Redis in arrival order, each with a heartbeat renewed
    the same way: a waiter whose process died leaves the queue within ``lease_ttl``, and a slot
    handed to it expires when its heartbeat would have. A released slot is handed to the oldest
    waiter inside the release script and its process is woken by PUBLISH (no polling; a
    waiter re-checks on its own only when the earliest lease could have expired).

    Args:
        client: a ``redis.asyncio.Redis`` client; not closed by the limiter.
        name: the limiter's name in Redis.
        limit: slots per key, an int >= 1. Every process sharing a name must use the same limit.
        lease_ttl: seconds a lease survives without renewal (>= 0.1, at most 2**31).
        clock: ``"server"`` (Redis ``TIME``) or ``"client"`` (this host's wall clock).
        call_timeout: seconds one Redis call may take, connecting included (finite, > 0),
            enforced on the event loop's clock.
        prefix: first component of every Redis key (no braces).
        fallback: a local :class:`aiolease.ConcurrencyLimiter` that gives slots while Redis is
            unavailable (a per-process budget: N processes may hold N times its limit). Its
            permits have ``degraded=True``. Redis is tried again after the cool-down (one call
            at a time) and takes over at its first answer.

    Raises:
        ValueError: an argument is out of range.
        TypeError: an argument has the wrong type.
    """

    __slots__ = (
        "__weakref__",
        "_admitted",
        "_bg",
        "_call",
        "_cancelled",
        "_channel",
        "_client",
        "_clock",
        "_closed",
        "_closing",
        "_ctx",
        "_fallback",
        "_health",
        "_held",
        "_limit",
        "_listener",
        "_listener_error",
        "_listener_ready",
        "_lost",
        "_name",
        "_observer",
        "_prefix",
        "_rejected",
        "_renewer",
        "_seq",
        "_timeouts",
        "_ttl",
        "_uid",
        "_wait_max",
        "_wait_total",
        "_waiters",
        "_waiting",
    )

    def __init__(
        self,
        client: Client,
        name: str,
        limit: int,
        *,
        lease_ttl: float = 30.0,
        clock: Clock = "server",
        call_timeout: float = 0.5,
        prefix: str = "aiolease",
        fallback: ConcurrencyLimiter | None = None,
    ) -> None:
        check_client(client, "RedisConcurrencyLimiter")
        check_name(name)
        check_prefix(prefix)
        _validate.integer("limit", limit, 1)
        self._ttl = _validate.number(
            "lease_ttl", lease_ttl, minimum=0.1, inclusive=True, unit=" of seconds"
        )
        if self._ttl > LONGEST_WAIT:
            # Far beyond it the keys' expiry (PEXPIRE, integer milliseconds) is no longer a
            # number Redis takes, and every script call would fail.
            raise ValueError(
                f"lease_ttl must be a finite number >= 0.1 and <= 2**31 s, got {lease_ttl!r}"
            )
        if clock not in ("server", "client"):
            raise ValueError(f"clock must be 'server' or 'client', got {clock!r}")
        if fallback is not None and not isinstance(fallback, ConcurrencyLimiter):
            raise TypeError(
                "fallback must be None or a local aiolease.ConcurrencyLimiter, got "
                f"{type(fallback).__name__} {fallback!r}"
            )
        self._fallback = fallback
        self._client = client
        self._name = name
        self._limit = limit
        self._prefix = prefix
        self._clock = "s" if clock == "server" else "c"
        self._call = Caller(client, _validate.seconds("call_timeout", call_timeout))
        self._health = Health(
            f"concurrency limiter {name!r}",
            "" if fallback is None else "; answering by the fallback limiter meanwhile",
        )
        self._closed = False
        self._closing: asyncio.Task[None] | None = None
        self._channel = f"{key_base(prefix, 'conc', name)}:wake"
        self._uid = f"{uuid.uuid4().hex[:12]}-{os.getpid()}"
        self._seq = itertools.count(1)
        self._bg = Background(self._health)
        #: lease id -> permit, for the renewer.
        self._held: dict[str, RedisConcurrencyPermit] = {}
        #: lease id -> (redis keys, future resolved by a hand-off message or the renewer).
        self._waiters: dict[str, tuple[tuple[str, ...], asyncio.Future[str]]] = {}
        self._renewer: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._listener_ready: asyncio.Event | None = None
        self._listener_error: BaseException | None = None
        self._ctx: dict[asyncio.Task[Any] | None, list[RedisConcurrencyPermit]] = {}
        self._admitted = self._rejected = self._timeouts = self._cancelled = self._lost = 0
        self._waiting = 0
        self._wait_total = self._wait_max = 0.0
        self._observer = _metrics.register_limiter(self, name)
        _tracking.track(self)

    # -- public -------------------------------------------------------------------------------
    def acquire(self, key: Hashable = None, timeout: float | None = None) -> _RedisConcAcquire:
        """Wait for a slot of ``key``; awaitable (-> permit) and an async context manager.

        ``__aenter__`` blocks and can be cancelled (the place in the queue is given back, and a
        slot handed over meanwhile is passed on); ``__aexit__`` releases the slot, shielded.
        With a ``timeout`` the call ends within ``timeout`` + 0.05 s whatever Redis does.

        Args:
            key: None, or a str, int, float, bytes or tuple of those; each key has its own
                ``limit`` slots.
            timeout: None to wait as needed, or seconds.

        Raises:
            LimitTimeout: no slot within ``timeout``.
            LimiterUnavailable: Redis is unreachable or failing, or did not answer a call before
                ``timeout`` passed (no ``fallback``).
            ValueError: bad timeout or key.
            TypeError: bad key type.
        """
        if key is not None:
            key_text(key)
        return _RedisConcAcquire(self, (key, _validate.timeout("timeout", timeout)))

    async def acquire_nowait(self, key: Hashable = None) -> RedisConcurrencyPermit:
        """Take a free slot now or raise ``WouldBlock`` (a coroutine: one round trip).

        Raises:
            WouldBlock: every slot is held, or others are already waiting.
            LimiterUnavailable: Redis did not answer within ``call_timeout`` (no ``fallback``).
        """
        if key is not None:
            key_text(key)
        return await self._acquire(key, 0.0, nowait=True)

    async def in_use(self, key: Hashable = None) -> int:
        """Slots of ``key`` held now across all processes (one Redis call).

        Raises:
            LimiterUnavailable: Redis did not answer within ``call_timeout``.
        """
        keys = self._keys(key)
        return int(await self._run(CONC_COUNT, keys, self._argv(), None))

    def statistics(self) -> RedisConcurrencyLimiterStatistics:
        """Counters of this limiter object (this process). Safe on any thread (metrics
        exporters read it on theirs)."""
        # Copies first (a C-level copy, which another thread cannot interleave with): the
        # loop's thread may take or release a lease while the keys are gathered.
        held, waiters = list(self._held.values()), list(self._waiters.values())
        keys = {p._keys for p in held} | {k for k, _ in waiters}
        return RedisConcurrencyLimiterStatistics(
            limit=self._limit,
            in_use=len(held),
            waiting=self._waiting,
            admitted=self._admitted,
            rejected=self._rejected,
            timeouts=self._timeouts,
            cancelled=self._cancelled,
            wait_time_total=self._wait_total,
            wait_time_max=self._wait_max,
            keys=len(keys),
            lost=self._lost,
        )

    @property
    def name(self) -> str:
        return self._name

    async def __aenter__(self) -> RedisConcurrencyPermit:
        permit = await self._acquire(None, None)
        # `async with sem:` keeps the permit per task: concurrent tasks share the limiter object.
        self._ctx.setdefault(asyncio.current_task(), []).append(permit)
        return permit

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        task = asyncio.current_task()
        stack = self._ctx[task]
        permit = stack.pop()
        if not stack:
            del self._ctx[task]
        await permit.arelease()

    async def aclose(self) -> None:
        """End this limiter's background work: renewals, hand-off listener, pipe, calls in flight.

        Calls in flight get ``call_timeout`` to finish; the pipelined connection goes back to the
        client's pool (the client stays open). Leases still held are no longer renewed (they
        expire after ``lease_ttl``; ``leak_check`` reports them). Waiters still queued and later
        acquisitions raise ``RuntimeError``. Idempotent. A cancelled caller stops waiting;
        the close goes on to its end (see :func:`closing`).
        (``async with limiter:`` takes a slot, so the limiter's lifetime is ended by
        ``aclose()`` alone.)
        """
        self._closing = closing(self._closing, self._close)
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        for lid, (keys, fut) in self._waiters.items():
            self._withdraw(keys, lid)  # leave the queue in Redis too, not after lease_ttl
            if not fut.done():
                fut.set_result(_RECHECK)
        self._closed = True
        tasks = {t for t in (self._renewer, self._listener) if _live(t)}
        self._renewer = self._listener = None
        await cancel_late(tasks, self._call.timeout, f"closing {self!r}")
        await self._bg.aclose(self._call.timeout)
        await self._call.aclose()

    def __repr__(self) -> str:
        return (
            f"<RedisConcurrencyLimiter {self._name!r} limit={self._limit} lease_ttl={self._ttl:g}s "
            f"held={len(self._held)} waiting={len(self._waiters)}>"
        )

    def _aiolease_leaks(self) -> list[str]:
        problems = [
            f"{self!r}: lease {p.lease_id} (key {p.key!r}) still held" for p in self._held.values()
        ]
        if self._waiting:
            problems.append(f"{self!r}: {self._waiting} task(s) still waiting")
        running = [t for t in (self._renewer, self._listener) if _live(t)]
        if not self._closed and (running or self._call.used or self._bg.tasks):
            problems.append(f"{self!r} left open: call `await limiter.aclose()`")
        return problems

    # -- internals ----------------------------------------------------------------------------
    def _keys(self, key: Hashable) -> tuple[str, ...]:
        base = key_base(self._prefix, "conc", self._name, key)
        return (
            f"{base}:holders",
            f"{base}:queue",
            f"{base}:beats",
            f"{base}:seq",
            f"{base}:withdrawn",
        )

    def _argv(self) -> tuple[Any, ...]:
        return (
            self._clock,
            repr(time.time() * 1e6),
            self._limit,
            max(1, round(self._ttl * 1000)),
            self._channel,
        )

    async def _run(
        self, script: Any, keys: tuple[str, ...], args: tuple[Any, ...], end: float | None
    ) -> Any:
        """One script call answered by ``end`` (loop time) too; failures as LimiterUnavailable."""
        if self._closed:
            raise self._closed_error()
        loop = asyncio.get_running_loop()
        health = self._health
        what = f"concurrency limiter {self._name!r}"
        sent = loop.time()
        probe = health.admit(sent)
        if probe is None:
            err = unavailable(
                what, health.last_error, f" (next try in {health.retry_after(sent):.2f}s)"
            )
            raise _NotSent(str(err)) from health.last_error
        try:
            if end is None:
                res = await self._call(script, keys, args)
            else:
                async with asyncio.timeout_at(end):
                    res = await self._call(script, keys, args)
        except TimeoutError as exc:  # the acquisition's own deadline (Redis not judged down)
            late = _rexc.TimeoutError("no reply from Redis before the acquire timeout")
            late.__cause__ = exc
            raise unavailable(what, late) from late
        except UNAVAILABLE as exc:
            if self._closed:  # aclose() dropped the pipe under this call: Redis did not fail
                raise self._closed_error() from exc
            health.failed(exc, loop.time(), sent)
            raise unavailable(what, exc) from exc
        finally:
            if probe:
                health.end_probe()
        health.ok(loop.time())
        return res

    def _closed_error(self) -> RuntimeError:
        return RuntimeError(f"{self!r} is closed (aclose() was called)")

    async def _acquire(
        self, key: Hashable, timeout: float | None, *, nowait: bool = False
    ) -> RedisConcurrencyPermit:
        self._waiting += 1  # from the call on: the round trips are part of the wait
        loop = asyncio.get_running_loop()
        arrived = loop.time()
        try:
            try:
                return await self._acquire_slot(key, timeout, nowait, arrived)
            except LimiterUnavailable:
                fallback = self._fallback
                if fallback is None or self._closed:
                    # Not granted: counted as rejected (docs/observability.md), so a Redis
                    # outage shows in the request counts instead of emptying them.
                    self._rejected += 1
                    raise
            left = None if timeout is None else max(0.0, arrived + timeout - loop.time())
            try:
                if nowait:
                    local = fallback.acquire_nowait(key)
                else:
                    local = await fallback.acquire(key, timeout=left)
            except WouldBlock:  # the fallback's answer is this limiter's: counted here too
                self._rejected += 1
                raise
            except LimitTimeout:
                self._timeouts += 1
                raise
            except asyncio.CancelledError:
                self._cancelled += 1
                raise
            self._admitted += 1
            return RedisConcurrencyPermit(self, (), key, f"{self._uid}:local", local)
        finally:
            self._waiting -= 1

    async def _acquire_slot(
        self, key: Hashable, timeout: float | None, nowait: bool, arrived: float
    ) -> RedisConcurrencyPermit:
        loop = asyncio.get_running_loop()
        keys = self._keys(key)
        lid = f"{self._uid}:{next(self._seq)}"
        # acquire(timeout=T) ends by T (+ the grace to wrap up) whatever Redis does.
        deadline = None if timeout is None or nowait else arrived + timeout
        end = None if deadline is None else deadline + DEADLINE_GRACE
        # Fast path: a free slot and nobody queued -> one round trip, no queue entry. A caller
        # that will wait takes its place in the queue in this same call, so its place is its
        # arrival here and not the later moment its hand-off listener is subscribed (a waiter
        # arriving meanwhile must not get ahead of it). The loop below re-checks once
        # subscribed, so a hand-off published before that is not missed.
        mode = "n" if nowait or timeout == 0 else "w"
        try:
            granted, _ = await self._run(CONC_ACQUIRE, keys, (*self._argv(), lid, mode), end)
        except _NotSent:
            raise
        except BaseException as exc:
            # Cancelled (or failed) with the outcome unknown: a slot taken for us must not stay
            # held until it expires. Withdrawing an id that holds nothing is harmless.
            if not isinstance(exc, (LimitTimeout, LimiterUnavailable)):  # as a queued wait
                self._cancelled += 1
            self._withdraw(keys, lid)
            raise
        if granted:
            return self._grant(keys, key, lid)
        if nowait or timeout == 0:
            if nowait:
                self._rejected += 1
                raise WouldBlock(f"{self!r}: every slot of key {key!r} is held or waited for")
            self._timeouts += 1
            raise LimitTimeout(f"{self!r}: no slot of key {key!r} free (timeout=0)")
        fut: asyncio.Future[str] = loop.create_future()
        self._waiters[lid] = (keys, fut)
        try:
            self._ensure_renewer()  # keeps our place in the queue alive from now on
            while True:
                # Subscribed before each check: the listener may have stopped (its connection
                # was cut), and a hand-off published before it subscribes again is seen by the
                # check that follows.
                await self._ensure_listener(end)
                granted, hint_ms = await self._run(
                    CONC_ACQUIRE, keys, (*self._argv(), lid, "w"), end
                )
                if granted or (fut.done() and fut.result() == _GRANTED):
                    break
                if self._closed:  # aclose() came during the call: nobody would wake us
                    raise self._closed_error()
                if fut.done():  # _RECHECK: re-run the script with a fresh future
                    fut = loop.create_future()
                    self._waiters[lid] = (keys, fut)
                # Sleep until woken by a hand-off, or until the earliest lease could have expired
                # (a crashed holder); the renewer also refreshes our place every lease_ttl / 3.
                # A sleep that ends at the deadline ends the wait: no further round trip.
                delay = max(hint_ms, 0) / 1000 + 0.005
                last = False
                if deadline is not None:
                    remaining = max(0.0, deadline - loop.time())
                    last = remaining <= delay
                    delay = min(delay, remaining)
                await asyncio.wait((fut,), timeout=delay)
                if fut.done() and fut.result() == _GRANTED:
                    break
                if last and not fut.done():
                    self._timeouts += 1
                    raise LimitTimeout(
                        f"{self!r}: no slot of key {key!r} within timeout={timeout!r}s"
                    )
        except BaseException as exc:
            if not isinstance(exc, (LimitTimeout, LimiterUnavailable)):
                self._cancelled += 1
            if not self._closed:  # (aclose() withdrew it)
                # Leave the queue, passing on a slot handed to us meanwhile: a background call
                # the limiter owns (aclose() waits for it). Not waited for here: the caller's
                # timeout or cancellation takes effect now, not after the calls queued ahead.
                self._withdraw(keys, lid)
            raise
        finally:
            del self._waiters[lid]
        waited = loop.time() - arrived
        self._wait_total += waited
        if waited > self._wait_max:
            self._wait_max = waited
        if self._observer is not None:
            self._observer.queued(waited)
        return self._grant(keys, key, lid)

    def _withdraw(self, keys: tuple[str, ...], lid: str) -> None:
        # "w": a script of this acquisition may still reach Redis after this call (it was sent
        # on a connection dropped since, after a timeout); Redis then keeps it from taking a
        # slot or a place in the queue.
        if not self._call.closed:  # (after aclose() it expires after lease_ttl, as a lease)
            self._bg.spawn(self._cancel(keys, (lid, "w")))

    def _grant(self, keys: tuple[str, ...], key: Hashable, lid: str) -> RedisConcurrencyPermit:
        if self._closed:  # aclose() came while the call that took the slot was in flight
            self._withdraw(keys, lid)
            raise self._closed_error()
        permit = RedisConcurrencyPermit(self, keys, key, lid)
        self._held[lid] = permit
        self._admitted += 1
        self._ensure_renewer()
        return permit

    def _release(self, permit: RedisConcurrencyPermit) -> asyncio.Task[Any] | None:
        del self._held[permit.lease_id]
        if not self._held and not self._waiters and self._renewer is not None:
            if _live(self._renewer):
                self._renewer.cancel()
            self._renewer = None
        if self._closed and self._call.closed:  # after aclose(): it expires after lease_ttl
            logger.debug(
                "%r: lease %s released after aclose(); it expires after lease_ttl",
                self,
                permit.lease_id,
            )
            return None
        return self._bg.spawn(self._cancel(permit._keys, (permit.lease_id,)))

    async def _cancel(self, keys: tuple[str, ...], args: tuple[str, ...]) -> Any:
        """Release or withdraw an id; sent once more when the first call's outcome is unknown.

        Its connection may have been dropped with the call still on its way (a timeout of any
        call breaks the pipe), and the call then lost: the slot would stay taken until lease_ttl
        although Redis answers. Unlike an acquisition, this call may be repeated: releasing or
        withdrawing an id twice frees it once.
        """
        try:
            return await self._call(CONC_CANCEL, keys, (*self._argv(), *args))
        except UNAVAILABLE:  # (after aclose() the second call fails at once too)
            pass
        return await self._call(CONC_CANCEL, keys, (*self._argv(), *args))

    def _ensure_renewer(self) -> None:
        if self._closed:
            raise self._closed_error()
        if not _live(self._renewer):
            self._renewer = asyncio.get_running_loop().create_task(
                self._renew_loop(), name=f"aiolease-redis-renew-{self._name}"
            )

    async def _renew_loop(self) -> None:
        interval = self._ttl / 3
        while self._held or self._waiters:
            await asyncio.sleep(interval)
            groups: dict[tuple[str, ...], tuple[list[str], list[str]]] = {}
            for lid, permit in self._held.items():
                groups.setdefault(permit._keys, ([], []))[0].append(lid)
            for lid, (keys, _) in self._waiters.items():
                groups.setdefault(keys, ([], []))[1].append(lid)
            batch = list(groups.items())
            # Each key's renewal is a call of its own (its keys hash to a slot of their own),
            # sent a window at a time, so that a round costs about one round trip, not one per
            # key: held one after another behind a slow network, the last keys' leases would
            # expire before their turn.
            for at in range(0, len(batch), _RENEW_WINDOW):
                window = batch[at : at + _RENEW_WINDOW]
                replies = await self._call.many(
                    CONC_RENEW,
                    [
                        (keys, (*self._argv(), len(held), *held, *waiting))
                        for keys, (held, waiting) in window
                    ],
                )
                failed = None
                for reply in replies:
                    if isinstance(reply, Exception):
                        failed = failed or reply
                    elif isinstance(reply, BaseException):
                        raise reply  # (a call cancelled by aclose(): this task ends too)
                    else:
                        self._renewed(*reply)
                if failed is not None:
                    # The other windows' renewals would most likely fail too: try again next
                    # round rather than spend call_timeout on each of them now. Whatever the
                    # error (an error reply too: BUSY, NOPERM), ending here would let every
                    # lease expire unseen while held, and permit.lost never say so.
                    logger.log(  # Health logs the outage's start once, at WARNING
                        self._health.background_failed(failed),
                        "renewing the leases of concurrency limiter %r failed (%s: %s)",
                        self._name,
                        type(failed).__name__,
                        failed,
                    )
                    break

    def _renewed(self, lost: list[Any], granted: list[Any], dropped: list[Any]) -> None:
        """Apply what a renewal found: leases gone, and waiters granted or to re-check."""
        for lid in map(text, lost):
            gone = self._held.get(lid)
            if gone is not None and not gone.lost:
                gone.lost = True
                self._lost += 1
                logger.warning("%r: lease %s expired before it was renewed", self, lid)
        for lid, outcome in itertools.chain(
            zip(map(text, granted), itertools.repeat(_GRANTED)),
            zip(map(text, dropped), itertools.repeat(_RECHECK)),
        ):
            w = self._waiters.get(lid)
            if w is not None and not w[1].done():
                w[1].set_result(outcome)

    async def _ensure_listener(self, end: float | None) -> None:
        if self._closed:
            raise self._closed_error()
        ready_ev = self._listener_ready
        if _live(self._listener):
            if ready_ev is not None and ready_ev.is_set():
                return  # subscribed
        else:
            self._listener_error = None
            ready = self._listener_ready = asyncio.Event()
            self._listener = asyncio.get_running_loop().create_task(
                self._listen(ready), name=f"aiolease-redis-listen-{self._name}"
            )
        task, ready_ev = self._listener, self._listener_ready
        assert ready_ev is not None
        loop = asyncio.get_running_loop()
        limit = loop.time() + self._call.timeout
        if end is not None:
            limit = min(limit, end)
        waiter = asyncio.ensure_future(ready_ev.wait())
        try:
            await asyncio.wait(
                (waiter, task),
                timeout=max(0.0, limit - loop.time()),
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            waiter.cancel()
        if self._closed:  # aclose() ended the listener
            raise self._closed_error()
        if not ready_ev.is_set():
            cause = self._listener_error or _rexc.TimeoutError("no SUBSCRIBE reply in time")
            if isinstance(cause, _rexc.AuthenticationError):
                raise refused(cause) from cause
            if isinstance(cause, _rexc.NoPermissionError):
                # Redis answered and refused (an ACL without the channel: Redis 7 gives a new
                # user none): a configuration error, never an outage for the fallback to answer.
                raise type(cause)(
                    f"Redis refused to subscribe the client of concurrency limiter "
                    f"{self._name!r} to its hand-off channel {self._channel!r} "
                    f"({describe(cause)}): allow the client's ACL user that channel "
                    f"(e.g. '&{self._channel}')"
                ) from cause
            raise unavailable(
                f"concurrency limiter {self._name!r}",
                cause,
                f" (could not subscribe to {self._channel!r})",
            )

    async def _listen(self, ready: asyncio.Event) -> None:
        """Wake local waiters on hand-off messages; lingers 1 s after the last waiter left."""
        client: Any = self._client
        ps = client.pubsub()
        me = asyncio.current_task()
        try:
            await ps.subscribe(self._channel)
            # (redis-py can lose a cancellation while it connects: aclose() must not wait for
            # the next get_message() timeout to end this task)
            while not self._closed:
                msg = await ps.get_message(timeout=1.0)
                if msg is None:
                    if not self._waiters:
                        return
                    continue
                if msg["type"] == "subscribe":
                    ready.set()
                elif msg["type"] == "message":
                    w = self._waiters.get(text(msg["data"]))
                    if w is not None and not w[1].done():
                        w[1].set_result(_GRANTED)
        except Exception as exc:
            # Waiters re-check (and start a new listener); a waiter whose listener never
            # subscribed gets this error from _ensure_listener.
            logger.warning("hand-off listener of %r stopped (%s)", self._name, describe(exc))
            self._listener_error = exc
            for _, fut in self._waiters.values():
                if not fut.done():
                    fut.set_result(_RECHECK)
        finally:
            if self._listener is me:
                self._listener = None
            with contextlib.suppress(Exception):
                await ps.aclose()


def _live(task: asyncio.Task[Any] | None) -> TypeGuard[asyncio.Task[Any]]:
    """Whether ``task`` may still run: it has not ended, and its loop was not closed with it
    pending (a loop closed without cancelling its tasks, as ``asyncio.run`` does)."""
    return task is not None and not task.done() and not task.get_loop().is_closed()


class _NotSent(LimiterUnavailable):
    """Redis failed lately and the cool-down has not passed: this call was not sent."""
