"""RedisRateLimiter: GCRA shared through Redis, one Lua script call per acquire."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Coroutine, Generator, Hashable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal

from redis import exceptions as _rexc

from .. import _metrics, _tracking, _validate
from .._errors import RateLimitExceeded
from .._limits import RateLimiter, RateLimiterStatistics, RatePermit
from .._shield import shielded
from .._validate import LONGEST_WAIT, check_cost
from ._background import Background, closing
from ._chain import _Chain, _Entry
from ._health import UNAVAILABLE, Health, unavailable
from ._keys import check_name, check_prefix, key_base
from ._pipe import (
    Caller,
    b,
    check_client,
    detached,
    pack,
    text,
)
from ._scripts import RATE_ACQUIRE, RATE_CANCEL, RATE_PAUSE, RATE_SETTLE, RATE_SHIFT, Script

if TYPE_CHECKING:
    from ._pipe import Client

__all__ = ["RedisRateLimiter", "RedisRateLimiterStatistics", "RedisRatePermit"]


OnError = Literal["raise", "allow", "deny"]
Clock = Literal["server", "client"]

#: How far past ``timeout`` an ``acquire(timeout=...)`` may end: the time to wrap up a Redis call
#: that did not answer in time (the contract allows 0.1 s).
DEADLINE_GRACE: Final = 0.05


@dataclass(frozen=True, slots=True)
class RedisRateLimiterStatistics(RateLimiterStatistics):
    """Counters of one :class:`RedisRateLimiter` object (this process only).

    The fields of :class:`aiolease.RateLimiterStatistics` (``waiting`` and ``keys`` count this
    process's waiters and the keys they wait on: the limit state itself lives in Redis), plus:

    ``rejected`` includes the acquisitions that raised ``LimiterUnavailable``, and the
    counts include the answers of the ``fallback`` limiter (which counts them too).

    Attributes:
        errors: Redis calls that failed because Redis was unavailable.
        degraded: acquisitions answered without Redis (by ``on_error`` or ``fallback``).
    """

    errors: int = 0
    degraded: int = 0


class RedisRatePermit:
    """An admitted acquisition of a :class:`RedisRateLimiter`.

    Attributes:
        cost: the cost charged (updated by :meth:`settle`).
        key: the limiter key.
        degraded: True when Redis was unavailable and the acquisition was admitted without it
            (by ``on_error="allow"``, or by the ``fallback`` limiter).
    """

    __slots__ = ("_epoch", "_limiter", "_local", "_rkey", "cost", "degraded", "key")

    def __init__(
        self,
        limiter: RedisRateLimiter,
        rkey: str,
        key: Hashable,
        cost: float,
        epoch: str,
        degraded: bool = False,
        local: RatePermit | None = None,
    ) -> None:
        self._limiter = limiter
        self._local = local
        self._rkey = rkey
        self._epoch = epoch
        self.key = key
        self.cost = cost
        self.degraded = degraded

    def settle(self, actual_cost: float) -> asyncio.Task[float]:
        """Charge or refund the difference between ``actual_cost`` and the cost reserved.

        The Redis call runs in the background (the returned task; await it, or use
        :meth:`asettle`, to know it was applied). A refund only returns what later admissions have
        not already been scheduled against, so the window bound always holds.

        Raises:
            ValueError: ``actual_cost`` is negative, not finite, or more than the limiter
                regains in 2**31 s (``2**31 * rate / per``: a longer debt is not a state
                Redis can hold), at the call.
        """
        actual = self._limiter._check_actual(actual_cost)
        return detached(self._limiter._bg.spawn(self._apply(actual)))

    async def asettle(self, actual_cost: float) -> float:
        """Like :meth:`settle`, awaiting the Redis call; returns the cost units actually applied.

        Raises:
            ValueError: ``actual_cost`` is negative, not finite, or more than the limiter
                regains in 2**31 s.
        """
        # The same background call as settle(): a caller cancelled while it waits (for the
        # pipe's reconnection, or a script reload) stops waiting, and the call still runs.
        return await self.settle(actual_cost)

    async def _apply(self, actual: float) -> float:
        delta = actual - self.cost
        self.cost = actual
        if self.degraded:  # admitted without Redis: settle with whoever admitted it
            if self._local is not None:
                self._local.settle(actual)
            return 0.0
        if delta == 0:
            return 0.0
        return await self._limiter._settle(self._rkey, delta, self._epoch)

    def __repr__(self) -> str:
        flag = " degraded" if self.degraded else ""
        return f"<RedisRatePermit key={self.key!r} cost={self.cost:g}{flag}>"


class _RedisRateAcquire:
    """``limiter.acquire(...)``: awaitable (-> permit) and an async context manager."""

    __slots__ = ("_args", "_limiter")

    def __init__(
        self, limiter: RedisRateLimiter, args: tuple[float, Hashable, float | None, str]
    ) -> None:
        self._limiter = limiter
        self._args = args

    def __await__(self) -> Generator[Any, None, RedisRatePermit]:
        return self._limiter._acquire(*self._args).__await__()

    async def __aenter__(self) -> RedisRatePermit:
        return await self._limiter._acquire(*self._args)

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None


_PAUSED: Final = object()


class RedisRateLimiter:
    """GCRA rate limit shared through Redis: ``rate`` per ``per`` seconds, bursts of ``burst``.

    In any window of length W at most ``burst + rate * W / per`` acquisitions (weighted by cost)
    are admitted across every process using the same Redis and ``name`` (measured on the Redis
    server's clock). Each acquire is ONE Lua script call that reserves the slot; a waiter then
    sleeps once, until that slot. All processes sharing a name must use the same rate/per/burst.

    Args:
        client: a ``redis.asyncio.Redis`` (or ``RedisCluster``) client; not closed by the limiter.
        name: the limiter's name in Redis (keys are ``{prefix}:rate:{name|key}``).
        rate: admissions per ``per`` seconds, > 0.
        per: the period in seconds, > 0.
        burst: the most cost admitted at once (>= 1).
        on_error: when Redis is unavailable (connection refused/lost, no answer within
            ``call_timeout``, read-only replica, cluster down): ``"raise"``
            ``aiolease.LimiterUnavailable`` (redis-py's error as ``__cause__``), ``"allow"``
            the acquisition (permit.degraded is True) or ``"deny"`` it with
            ``RateLimitExceeded``, whose ``retry_after`` is the time until this limiter will
            contact Redis again (the cool-down, 0.1 s doubling to 1 s per consecutive failure).
        clock: ``"server"`` (Redis ``TIME``, default) or ``"client"`` (this host's wall clock,
            for servers that forbid ``TIME`` in scripts; every host then needs NTP).
        call_timeout: seconds one Redis call may take, connecting included (finite, > 0);
            enforced on the event loop's clock, whatever the client's socket timeouts say.
        prefix: first component of every Redis key (no braces).
        fallback: a local :class:`aiolease.RateLimiter` that admits instead of Redis while Redis
            is unavailable (then ``on_error`` must stay ``"raise"``). Its budget is per process:
            N processes falling back together admit up to N times its rate. Permits it admits
            have ``degraded=True``. Redis is tried again after the cool-down (one call at a
            time) and takes over at its first answer.

    Raises:
        ValueError: an argument is out of range.
        TypeError: an argument has the wrong type.
    """

    __slots__ = (
        "__weakref__",
        "_admitted",
        "_base",
        "_bg",
        "_burst",
        "_call",
        "_cancelled",
        "_clock",
        "_clock_b",
        "_closed",
        "_closing",
        "_degraded",
        "_fallback",
        "_head",
        "_health",
        "_max_cost",
        "_name",
        "_observer",
        "_on_error",
        "_pause_seq",
        "_pauses",
        "_per",
        "_prefix",
        "_rate",
        "_rejected",
        "_shape",
        "_sleepers",
        "_t_us",
        "_wait_max",
        "_wait_total",
        "_waiting",
    )

    def __init__(
        self,
        client: Client,
        name: str,
        rate: float,
        per: float = 1.0,
        *,
        burst: float = 1,
        on_error: OnError = "raise",
        clock: Clock = "server",
        call_timeout: float = 0.5,
        prefix: str = "aiolease",
        fallback: RateLimiter | None = None,
    ) -> None:
        check_client(client, "RedisRateLimiter")
        check_name(name)
        check_prefix(prefix)
        self._rate = _validate.number("rate", rate)
        self._per = _validate.seconds("per", per)
        self._burst = _validate.number("burst", burst, minimum=1.0, inclusive=True)
        # One call makes a key's state last at most LONGEST_WAIT (a longer pause is held
        # that long): far beyond it the script's expiry (PX) and its waits (integer
        # microseconds) are no longer numbers Redis takes, and the call would fail.
        if self._burst * (self._per / self._rate) > LONGEST_WAIT:
            raise ValueError(
                f"burst * per / rate must be at most 2**31 s (the time a full burst takes to be "
                f"regained), got {burst!r} * {per!r} / {rate!r}"
            )
        if on_error not in ("raise", "allow", "deny"):
            raise ValueError(f"on_error must be 'raise', 'allow' or 'deny', got {on_error!r}")
        if fallback is not None:
            if not isinstance(fallback, RateLimiter):
                raise TypeError(
                    "fallback must be None or a local aiolease.RateLimiter, got "
                    f"{type(fallback).__name__} {fallback!r}"
                )
            if on_error != "raise":
                raise ValueError(
                    f"on_error={on_error!r} and fallback= both say what to do while Redis is "
                    "unavailable: give one of them"
                )
            if fallback._max_cost < self._burst:
                raise ValueError(
                    f"fallback={fallback!r} admits at most {fallback._max_cost:g} at once, less "
                    f"than burst={self._burst:g}: an acquisition this limiter accepts could "
                    "never be admitted by it; give the fallback a burst >= burst"
                )
        self._fallback = fallback
        if clock not in ("server", "client"):
            raise ValueError(f"clock must be 'server' or 'client', got {clock!r}")
        self._name = name
        self._prefix = prefix
        self._on_error: OnError = on_error
        self._clock = "s" if clock == "server" else "c"
        self._call = Caller(client, _validate.seconds("call_timeout", call_timeout))
        self._t_us = self._per / self._rate * 1e6
        self._clock_b = self._clock.encode()
        self._shape = (repr(self._t_us).encode(), repr(self._burst).encode())
        self._base = key_base(prefix, "rate", name)
        # RESP of RATE_ACQUIRE on the default key without its last two arguments (cost, max_wait).
        self._head = pack(
            (
                b"EVALSHA",
                RATE_ACQUIRE.sha_b,
                b"1",
                self._base.encode(),
                self._clock_b,
                b"0",
                *self._shape,
                b"",
                b"",
            )
        )[: -len(b"$0\r\n\r\n$0\r\n\r\n")]
        self._max_cost = self._burst
        #: key -> this object's sleeping waiters there (pause() wakes them early; a give-back
        #: moves the later ones up).
        self._sleepers: dict[str, _Chain] = {}
        self._health = Health(
            f"rate limiter {self._name!r}",
            "; answering by the fallback limiter meanwhile"
            if self._fallback is not None
            else f"; answering by on_error={self._on_error!r} meanwhile",
        )
        self._bg = Background(self._health)
        self._closed = False
        self._closing: asyncio.Task[None] | None = None
        self._pause_seq = 0
        #: key -> (sequence number, task) of the latest pause() of this object on that key.
        self._pauses: dict[str, tuple[int, asyncio.Task[Any]]] = {}
        self._admitted = self._rejected = self._cancelled = self._waiting = 0
        self._degraded = 0
        self._wait_total = self._wait_max = 0.0
        self._observer = _metrics.register_limiter(self, name)
        _tracking.track(self)

    # -- public -------------------------------------------------------------------------------
    def acquire(
        self, cost: float = 1, key: Hashable = None, timeout: float | None = None
    ) -> _RedisRateAcquire:
        """Wait until ``cost`` is admitted for ``key``; awaitable and an async context manager.

        The reservation is made by one script call; when the slot is in the future the task sleeps
        once until it. Cancelled (or timed out by the caller) while sleeping, the reservation is
        given back: this object's later waiters on the key move up, and newcomers get it too
        unless another process wrote on the key in between (docs/redis.md, "Cancellation").
        Only ``__aenter__`` blocks and can be cancelled; ``__aexit__`` does nothing.

        Args:
            cost: units to admit, in (0, burst].
            key: None, or a str, int, float, bytes or tuple of those; each key is an independent
                limit.
            timeout: None to wait as needed, or the longest wait accepted (seconds).

        Raises:
            RateLimitExceeded: the slot is more than ``timeout`` away (raised at once, nothing
                reserved; or, when Redis's reply comes so late that the slot, counted from it,
                lies past the deadline, then, the reservation given back), or Redis is
                unavailable with ``on_error="deny"``.
            LimiterUnavailable: Redis is unreachable or failing (``on_error="raise"``, no
                ``fallback``), or gave no answer before ``timeout`` (plus 0.05 s) passed.
            ValueError: bad cost, key or timeout.
            TypeError: bad key type.
        """
        cost_ = check_cost(cost, self._max_cost, f"burst={self._burst:g}")
        return _RedisRateAcquire(
            self, (cost_, key, _validate.timeout("timeout", timeout), self._rkey(key))
        )

    async def acquire_nowait(self, cost: float = 1, key: Hashable = None) -> RedisRatePermit:
        """Admit ``cost`` now or raise ``RateLimitExceeded`` (a coroutine: one round trip).

        Raises:
            RateLimitExceeded: not admissible now; ``retry_after`` says when it would be.
            LimiterUnavailable: Redis did not answer within ``call_timeout`` (``on_error``
                "raise", no ``fallback``).
        """
        cost_ = check_cost(cost, self._max_cost, f"burst={self._burst:g}")
        return await self._acquire(cost_, key, 0.0, self._rkey(key), bounded=False)

    def pause(self, seconds: float, key: Hashable = None) -> asyncio.Task[None]:
        """Admit nothing on ``key`` before ``seconds`` from now, in every process (Retry-After).

        Extends a pause, never shortens it (one longer than 2**31 s is held for 2**31 s). Waiters
        of this limiter object that are sleeping on a slot are woken and queue again behind the
        pause (their timeout still applies); the same script gives their reservations back when
        nothing wrote on the key after them (another process, or an acquisition of this object
        whose reply had not come yet), so the schedule resumes from the pause instead of after
        their old slots (otherwise those slots are left unused once).
        Reservations already made by other processes keep their slots. The Redis call runs in
        the returned task; await it to be sure the pause is in force.

        Raises:
            ValueError: ``seconds`` is negative or not finite.
        """
        s = min(_validate.number("seconds", seconds, inclusive=True), LONGEST_WAIT)
        if self._closed:
            raise self._closed_error()
        rkey = self._rkey(key)
        if self._fallback is not None:  # so that it holds off too if Redis fails meanwhile
            self._fallback.pause(s, key)
        chain = self._sleepers.get(rkey)
        # The waiters woken below queue again: the same script gives their reservations back
        # when they are still the tail of the key's schedule (see _Chain.pause_give_back).
        expected, restored = chain.pause_give_back() if chain is not None else ("", "")
        task = self._bg.spawn(self._run(RATE_PAUSE, rkey, (s * 1e6, expected, restored)))
        # Acquisitions in flight now (sent before this pause) requeue too if they got a slot.
        self._pause_seq += 1
        if len(self._pauses) > 256:
            self._pauses = {k: v for k, v in self._pauses.items() if not v[1].done()}
        self._pauses[rkey] = (self._pause_seq, task)
        if chain is not None:
            chain.wake_all((_PAUSED, task))
        return detached(task)

    def statistics(self) -> RedisRateLimiterStatistics:
        """Counters of this limiter object (this process)."""
        return RedisRateLimiterStatistics(
            rate=self._rate,
            per=self._per,
            burst=self._burst,
            strict=False,
            admitted=self._admitted,
            rejected=self._rejected,
            cancelled=self._cancelled,
            waiting=self._waiting,
            wait_time_total=self._wait_total,
            wait_time_max=self._wait_max,
            keys=len(self._sleepers),
            errors=self._health.errors,
            degraded=self._degraded,
        )

    @property
    def name(self) -> str:
        return self._name

    async def __aenter__(self) -> RedisRatePermit:
        return await self._acquire(1.0, None, None)

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    def __repr__(self) -> str:
        return (
            f"<RedisRateLimiter {self._name!r} rate={self._rate:g}/{self._per:g}s "
            f"burst={self._burst:g} on_error={self._on_error} waiting={self._waiting}>"
        )

    async def aclose(self) -> None:
        """End this limiter's background work: calls in flight get ``call_timeout`` to finish.

        Its pipelined connection goes back to the client's pool (the client stays open). Later
        acquisitions raise ``RuntimeError``. Idempotent. (``async with limiter:`` acquires, so
        the limiter's lifetime is ended by ``aclose()`` alone.) A cancelled caller stops
        waiting; the close goes on to its end (see :func:`closing`).
        """
        self._closing = closing(self._closing, self._close)
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        self._closed = True
        await self._bg.aclose(self._call.timeout)
        await self._call.aclose()

    def _aiolease_leaks(self) -> list[str]:
        problems = []
        if not self._closed and (self._call.used or self._bg.tasks):
            problems.append(f"{self!r} left open: call `await limiter.aclose()`")
        if self._waiting:
            problems.append(f"{self!r}: {self._waiting} task(s) still waiting")
        pending = [t for t in self._bg.tasks if not t.done()]
        if pending:
            problems.append(f"{self!r}: {len(pending)} Redis call(s) still in flight")
        return problems

    # -- internals ----------------------------------------------------------------------------
    def _closed_error(self) -> RuntimeError:
        return RuntimeError(f"{self!r} is closed (aclose() was called)")

    def _rkey(self, key: Hashable) -> str:
        return self._base if key is None else key_base(self._prefix, "rate", self._name, key)

    def _acquire_call(self, rkey: str, cost: float, max_wait: bytes) -> Awaitable[Any]:
        """RATE_ACQUIRE: the command is pre-packed up to its two variable arguments."""
        cost_b = b(cost)
        now = b"0" if self._clock == "s" else repr(time.time() * 1e6).encode()
        args = (self._clock_b, now, *self._shape, cost_b, max_wait)
        packed = None
        if rkey is self._base and self._clock == "s":
            packed = b"%s$%d\r\n%s\r\n$%d\r\n%s\r\n" % (
                self._head,
                len(cost_b),
                cost_b,
                len(max_wait),
                max_wait,
            )

        def abandoned(reply: Any) -> None:
            # The caller was cancelled after the script ran: give its reservation back.
            if type(reply) is int:
                if reply >= 0:  # admitted at once: refund through settle (epoch-checked)
                    self._bg.spawn(self._settle(rkey, -cost, str(reply)))
            else:
                old = "" if reply[1] is None else text(reply[1])
                self._bg.spawn(self._call(RATE_CANCEL, (rkey,), (old, text(reply[2]))))

        return self._call(RATE_ACQUIRE, (rkey,), args, packed, abandoned)

    def _run(self, script: Script, rkey: str, extra: tuple[Any, ...]) -> Coroutine[Any, Any, Any]:
        # The client's clock is read (and sent) only when the server's is not used.
        now = b"0" if self._clock == "s" else repr(time.time() * 1e6).encode()
        return self._call(script, (rkey,), (self._clock_b, now, *self._shape, *extra))

    def _check_actual(self, actual_cost: object) -> float:
        """The ``actual_cost`` of a settle: a finite number >= 0 whose charge lasts at most
        LONGEST_WAIT (as a full burst does: see the constructor)."""
        actual = _validate.number("actual_cost", actual_cost, inclusive=True)
        if actual * (self._per / self._rate) > LONGEST_WAIT:
            raise ValueError(
                f"actual_cost must be at most {LONGEST_WAIT * self._rate / self._per:g} (what "
                f"this limiter regains in 2**31 s), got {actual_cost!r}"
            )
        return actual

    async def _settle(self, rkey: str, delta: float, epoch: str) -> float:
        return float(text(await self._run(RATE_SETTLE, rkey, (repr(delta), epoch))))

    async def _degrade(
        self,
        loop: asyncio.AbstractEventLoop,
        rkey: str,
        key: Hashable,
        cost: float,
        timeout: float | None,
        exc: BaseException | None,
    ) -> RedisRatePermit:
        """Answer without Redis: by ``fallback`` or ``on_error`` (``exc``: why Redis failed)."""
        health = self._health
        exc = exc or health.last_error
        if self._fallback is not None:
            self._degraded += 1
            try:
                local = await self._fallback.acquire(cost, key, timeout)
            except RateLimitExceeded:  # the fallback's answer is this limiter's: counted here too
                self._rejected += 1
                raise
            self._admitted += 1
            return RedisRatePermit(self, rkey, key, cost, "", degraded=True, local=local)
        if self._on_error == "raise":
            # Not admitted: counted as rejected, as on_error="deny" counts its refusal
            # (docs/observability.md), so a Redis outage shows in the request counts.
            self._rejected += 1
            raise unavailable(f"rate limiter {self._name!r}", exc)
        self._degraded += 1
        if self._on_error == "allow":
            self._admitted += 1
            return RedisRatePermit(self, rkey, key, cost, "", degraded=True)
        self._rejected += 1
        retry = health.retry_after(loop.time())
        err = RateLimitExceeded(
            retry,
            f"Redis unavailable for rate limiter {self._name!r} (on_error='deny'); "
            f"retry after {retry:.3f}s",
        )
        raise err from exc

    async def _reserve(
        self,
        loop: asyncio.AbstractEventLoop,
        rkey: str,
        cost: float,
        max_wait: bytes,
        end: float | None,
    ) -> Any:
        """One RATE_ACQUIRE, answered by ``end`` (loop time) when given; Redis errors pass."""
        if self._closed:  # (a waiter re-queued by a pause after aclose())
            raise self._closed_error()
        health = self._health
        sent = loop.time()
        probe = health.admit(sent)
        if probe is None:
            raise _CoolingDown
        try:
            if end is None:
                res = await self._acquire_call(rkey, cost, max_wait)
            else:
                try:
                    async with asyncio.timeout_at(end):
                        res = await self._acquire_call(rkey, cost, max_wait)
                except TimeoutError as exc:
                    # The caller's own deadline, not call_timeout: Redis is not judged down.
                    raise _Late("no reply from Redis before the acquire timeout") from exc
        except UNAVAILABLE as exc:
            if self._closed:  # aclose() dropped the pipe under this call: Redis did not fail
                raise self._closed_error() from exc
            if not isinstance(exc, _Late):
                health.failed(exc, loop.time(), sent)
            raise
        finally:
            if probe:
                health.end_probe()
        health.ok(loop.time())
        return res

    async def _acquire(
        self,
        cost: float,
        key: Hashable,
        timeout: float | None,
        rkey: str | None = None,
        bounded: bool = True,
    ) -> RedisRatePermit:
        if self._closed:
            raise self._closed_error()
        loop = asyncio.get_running_loop()
        if rkey is None:
            rkey = self._rkey(key)
        arrived = loop.time()
        # acquire(timeout=T) ends by T (+ the grace to wrap up) whatever Redis does.
        end = None if timeout is None or not bounded else arrived + timeout + DEADLINE_GRACE
        requeued = False
        self._waiting += 1  # from the call on: a round trip is part of the wait
        try:
            while True:
                left = None if timeout is None else max(0.0, timeout - (loop.time() - arrived))
                max_wait = b"-1" if left is None else b"%d" % (left * 1e6)
                seq = self._pause_seq
                try:
                    res = await self._reserve(loop, rkey, cost, max_wait, end)
                except (*UNAVAILABLE, _CoolingDown) as exc:
                    left = None if timeout is None else max(0.0, arrived + timeout - loop.time())
                    why = None if isinstance(exc, _CoolingDown) else exc
                    return await self._degrade(loop, rkey, key, cost, left, why)
                if type(res) is int:
                    if res < 0:  # -(wait_us + 1): slot beyond the timeout; nothing reserved
                        self._rejected += 1
                        raise RateLimitExceeded((-res - 1) / 1e6)
                    # admitted now; the reply is the epoch (see _scripts)
                    if self._sleepers and (chain := self._sleepers.get(rkey)) is not None:
                        chain.last = None  # we wrote a state we do not know
                    self._admitted += 1
                    if requeued:  # woken by a pause, then admitted at once
                        self._note_wait(loop.time() - arrived)
                    return RedisRatePermit(self, rkey, key, cost, str(res))
                new = text(res[2])
                # the state's epoch field: "slot tat hold epoch paused_until" (_scripts)
                permit = RedisRatePermit(self, rkey, key, cost, new.split(" ")[3])
                paused = self._pauses.get(rkey)
                if paused is not None and paused[0] > seq:
                    # pause() was called while our call was in flight: queue behind it.
                    outcome: asyncio.Task[None] | None = paused[1]
                else:
                    outcome = await self._sleep(loop, rkey, res[0] / 1e6, res[1], new, cost, end)
                    if outcome is None:
                        self._admitted += 1
                        self._note_wait(loop.time() - arrived)
                        return permit
                # Woken by pause(): queue again once the pause is in force in Redis. The pause
                # gave the abandoned reservation back if it was in this object's unbroken tail
                # of the schedule; otherwise (or in flight) it is left unused once.
                requeued = True
                if outcome is not None:
                    wait_for = None if end is None else max(0.0, end - loop.time())
                    await asyncio.wait((outcome,), timeout=wait_for)
        except asyncio.CancelledError:
            self._cancelled += 1
            raise
        finally:
            self._waiting -= 1

    async def _sleep(
        self,
        loop: asyncio.AbstractEventLoop,
        rkey: str,
        wait: float,
        old: Any,
        new: str,
        cost: float,
        end: float | None,
    ) -> asyncio.Task[None] | None:
        """Sleep once until the reserved slot; returns the pause task if pause() woke us.

        Raises:
            RateLimitExceeded: the slot, counted from the reply, lies past ``end`` (loop time):
                the reservation is given back.
        """
        chain = self._sleepers.get(rkey)
        if chain is None or chain.orphaned():
            chain = self._sleepers[rkey] = _Chain()
        old_t = None if old is None else text(old)
        entry = chain.note(old_t, new, cost, loop.time() + wait)
        if end is not None and entry.deadline0 > end:
            # The script kept the slot within the timeout, but its reply came so late that
            # the slot, counted from the reply (never earlier: the window bound holds on the
            # server's clock), lies past the acquisition's deadline. Refused as the script
            # refuses a slot beyond the timeout, and given back (in the background: the
            # caller's deadline does not wait for another round trip).
            if not chain.entries and self._sleepers.get(rkey) is chain:
                del self._sleepers[rkey]
            self._bg.spawn(self._give_back(rkey, chain, entry, old_t, False))
            self._rejected += 1
            raise RateLimitExceeded(wait)
        fut: asyncio.Future[object] = loop.create_future()
        chain.add(fut, entry)  # woken at entry.deadline by the chain's timer
        try:
            result = await fut
        except GeneratorExit:
            raise  # its loop was closed with it asleep: nothing can run for it any more
        except BaseException:
            chain.discard(fut)
            # Give the reservation back; shielded so a second cancellation cannot stop it half way
            # (nor an anyio scope's, which anyio delivers again at each await: the caller leaves
            # once the slot is back, as after a Task.cancel()).
            due = fut.done() and not fut.cancelled()  # its timer fired (or pause() woke it)
            refund = self._bg.spawn(self._give_back(rkey, chain, entry, old_t, due))
            with contextlib.suppress(BaseException), shielded():
                await asyncio.shield(refund)
            raise
        finally:
            chain.discard(fut)
            if not chain.entries and self._sleepers.get(rkey) is chain:
                del self._sleepers[rkey]
        if isinstance(result, tuple):
            task: asyncio.Task[None] = result[1]
            return task
        chain.used = max(chain.used, entry.seq)  # admitted: a pause cannot give it back
        return None

    async def _give_back(
        self, rkey: str, chain: _Chain, entry: _Entry, old: str | None, due: bool
    ) -> None:
        """Give a cancelled waiter's reservation back (docs/redis.md, "Cancellation").

        The last write on the key (``chain.last`` is this reservation): restore the state from
        before it (RATE_CANCEL, exact compare-and-swap). Otherwise, when every reservation made
        after it is this object's own (no break in the chain), it was scheduled by plain GCRA and
        its slot has not come (``due`` is False), the later waiters of this object are moved up
        by its cost at once - the schedule in which it had been made after them and left unused,
        which keeps the window bound whatever Redis answers - and RATE_SHIFT lowers the key's
        debt too if nobody else wrote since this object's last write (compare-and-swap);
        otherwise its capacity is lost once for newcomers.
        """
        last = chain.last
        if not chain.can_move_up(entry, due):
            done = await self._call(RATE_CANCEL, (rkey,), ("" if old is None else old, entry.new))
            if done == 1 and chain.last == entry.new:
                chain.last = old
            return
        chain.move_up(entry, self._t_us)
        if last is None:
            return
        before = entry.tat - entry.cost * self._t_us  # the debt it was chained on
        res = await self._run(RATE_SHIFT, rkey, (last, repr(entry.cost), repr(before)))
        if res is not None and chain.last == last:
            chain.last = text(res)

    def _note_wait(self, waited: float) -> None:
        self._wait_total += waited
        if waited > self._wait_max:
            self._wait_max = waited
        if self._observer is not None:
            self._observer.queued(waited)


class _CoolingDown(Exception):
    """Redis failed lately and the cool-down has not passed (or another call probes it)."""


class _Late(_rexc.TimeoutError):
    """A call cut short by the acquisition's own deadline (Redis not judged down for it).

    A redis-py error: ``LimiterUnavailable`` has redis-py's error as its cause (contract), and
    is never caused by a bare ``TimeoutError``."""
