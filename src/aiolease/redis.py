"""Distributed rate and concurrency limits on Redis (extra: ``pip install aiolease[redis]``).

:class:`RedisRateLimiter` and :class:`RedisConcurrencyLimiter` have the interfaces of
:class:`aiolease.RateLimiter` and :class:`aiolease.ConcurrencyLimiter`, shared by every process that
uses the same Redis and limiter ``name``. Pass a ``redis.asyncio.Redis`` client (or a
``redis.asyncio.RedisCluster``); the limiters never close it.

Differences forced by the network (each is one round trip): ``acquire_nowait`` is a coroutine;
``pause`` returns a task (await it to be sure it is applied); ``permit.settle`` / ``permit.release``
schedule their Redis call (``await permit.asettle(...)`` / ``await permit.arelease()`` wait for it).
See docs/redis.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import os
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Generator, Hashable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal

try:
    import redis.asyncio as _redis_asyncio
    from redis import exceptions as _rexc
except ImportError as _exc:  # pragma: no cover - exercised without the extra installed
    raise ImportError(
        "aiolease.redis needs the redis-py client: pip install aiolease[redis]"
    ) from _exc

from . import _tracking
from ._errors import LimitTimeout, RateLimitExceeded, WouldBlock
from ._limits import ConcurrencyLimiterStatistics, RateLimiterStatistics
from ._limits._validate import check_cost, check_positive, check_timeout
from ._redis_scripts import (
    CONC_ACQUIRE,
    CONC_CANCEL,
    CONC_RENEW,
    RATE_ACQUIRE,
    RATE_CANCEL,
    RATE_PAUSE,
    RATE_SETTLE,
    RATE_SHIFT,
    Script,
)

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster

    Client = Redis | RedisCluster

__all__ = [
    "RedisConcurrencyLimiter",
    "RedisConcurrencyLimiterStatistics",
    "RedisConcurrencyPermit",
    "RedisRateLimiter",
    "RedisRateLimiterStatistics",
    "RedisRatePermit",
    "redis_key",
]

logger = logging.getLogger("aiolease.redis")

OnError = Literal["raise", "allow", "deny"]
Clock = Literal["server", "client"]

#: Errors meaning "Redis could not answer" (as opposed to "Redis answered no"): what ``on_error``
#: decides. A ``TimeoutError`` after the script was sent is *indeterminate* - the script may have
#: run - so it is never re-sent.
UNAVAILABLE: Final = (
    _rexc.ConnectionError,
    _rexc.TimeoutError,
    TimeoutError,
    OSError,
    _rexc.ReadOnlyError,
    _rexc.ClusterDownError,
    _rexc.TryAgainError,
)

#: After Redis was unavailable, calls within this cool-down (doubling per consecutive failure)
#: answer by ``on_error`` at once instead of contacting Redis again: no retry storm.
_COOLDOWN_MIN = 0.1
_COOLDOWN_MAX = 1.0


def _esc(text: str) -> str:
    # `{`/`}` would change which part of the key Redis Cluster hashes; `|` separates name and key.
    return text.replace("%", "%25").replace("{", "%7B").replace("}", "%7D").replace("|", "%7C")


_KEY_TYPES: Final = (str, int, float, bytes, tuple)


def _check_key(key: object) -> None:
    if isinstance(key, tuple):
        for part in key:
            _check_key(part)
    elif key is not None and not isinstance(key, _KEY_TYPES):
        raise TypeError(
            "key must be None, or a str, int, float, bytes or a tuple of those for a Redis "
            f"limiter (it is stored in Redis by its text), got {type(key).__name__} {key!r}"
        )


def _key_text(key: Hashable) -> str:
    """The text of a key in Redis: a str as itself, anything else as ``#`` + its repr."""
    if isinstance(key, str):
        return "#" + key if key.startswith("#") else key
    _check_key(key)
    return "#" + repr(key)


def redis_key(prefix: str, kind: str, name: str, key: Hashable = None) -> str:
    """The hash-tagged Redis key base of one limiter key.

    Everything a script touches for one (name, key) shares the ``{...}`` hash tag, so it lives in
    one Redis Cluster slot (no CROSSSLOT), while different keys spread over the cluster.
    """
    tag = _esc(name) if key is None else f"{_esc(name)}|{_esc(_key_text(key))}"
    return f"{prefix}:{kind}:{{{tag}}}"


class _Caller:
    """Runs a :class:`Script` with EVALSHA in one round trip, bounded by ``timeout``.

    On a plain ``redis.asyncio.Redis`` every call of one limiter is written, in call order, to ONE
    connection taken from the client's pool and kept (a pipe): Redis executes the scripts in the
    order they were called in this process (FIFO per key), concurrent calls share the socket
    (no connection per task, no pool round trip per call), and a caller that is cancelled or
    times out just abandons its reply - the connection stays usable.

    The client's retry policy is bypassed on purpose: redis-py would resend a command after a
    timeout or a dropped connection, and a reservation resent after such an *indeterminate*
    failure (the script may have run) would be charged twice. A timeout breaks the pipe (its
    pending calls fail as unavailable); NOSCRIPT (the server lost its script cache: restart,
    failover, SCRIPT FLUSH) is determinate - the script did not run - and is answered by one
    SCRIPT LOAD and one more EVALSHA.
    """

    __slots__ = (
        "_client",
        "_conn",
        "_connecting",
        "_direct",
        "_loaded",
        "_more",
        "_pending",
        "_reader",
        "_watch",
        "sent",
        "timeout",
    )

    def __init__(self, client: Client, timeout: float) -> None:
        self._client = client
        self.timeout = timeout
        self._direct = isinstance(client, _redis_asyncio.Redis) and not getattr(
            client, "single_connection_client", False
        )
        self._loaded = 0  # SCRIPT LOAD count (observable in tests)
        self.sent = 0  # commands written to the pipe
        self._conn: Any = None
        self._connecting: asyncio.Lock | None = None
        #: (future, on_abandon, deadline) of the replies still to read, in the order the commands
        #: were written; on_abandon gets the reply when the caller gave up before it came.
        self._pending: deque[tuple[asyncio.Future[Any], Callable[[Any], None] | None, float]] = (
            deque()
        )
        self._reader: asyncio.Task[None] | None = None
        #: set while the idle reader lingers: _send resolves it to hand it the next reply.
        self._more: asyncio.Future[None] | None = None
        #: ONE timer for the whole pipe, not one per call: replies come in order, so only the
        #: oldest pending call can be the first to be late (see _watchdog).
        self._watch: asyncio.TimerHandle | None = None

    async def __call__(
        self,
        script: Script,
        keys: tuple[str, ...],
        args: tuple[Any, ...],
        packed: bytes | None = None,
        on_abandon: Callable[[Any], None] | None = None,
    ) -> Any:
        """EVALSHA ``script`` with ``keys`` and ``args``.

        ``packed``, when given, is that command already in RESP (the hot path builds it from
        cached pieces). ``on_abandon`` is called with the reply if the caller is cancelled after
        the command was written and the reply still comes (so a reservation can be given back).
        """
        if not self._direct:
            return await self._via_client(script, keys, args)
        if packed is None:
            packed = _pack(
                (b"EVALSHA", script.sha_b, b"%d" % len(keys), *map(_b, keys), *map(_b, args))
            )
        conn = self._conn
        if conn is not None and conn._writer is not None:
            fut = self._send(packed, on_abandon)
        else:
            if conn is not None:  # closed under us (e.g. the client disconnected its pool)
                self._break(_rexc.ConnectionError("connection closed"))
            async with asyncio.timeout(self.timeout):
                fut = await self._connect_send(packed, on_abandon)
        try:
            return await fut
        except _rexc.NoScriptError:
            pass
        self._loaded += 1
        self._send(_pack((b"SCRIPT", b"LOAD", script.source.encode())))
        return await self._send(packed, on_abandon)

    def _send(
        self, packed: bytes, on_abandon: Callable[[Any], None] | None = None
    ) -> asyncio.Future[Any]:
        """Write one command now (synchronously: call order is wire order) and return its reply."""
        conn = self._conn
        if conn is None:
            raise _rexc.ConnectionError("connection to Redis lost")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        conn._writer.write(packed)
        self.sent += 1
        deadline = loop.time() + self.timeout
        self._pending.append((fut, on_abandon, deadline))
        if self._reader is None:
            self._reader = loop.create_task(self._read(conn))
        elif self._more is not None and not self._more.done():
            self._more.set_result(None)
        if self._watch is None:
            self._watch = loop.call_at(deadline, self._watchdog)
        return fut

    def _watchdog(self) -> None:
        self._watch = None
        if not self._pending:
            return
        deadline = self._pending[0][2]
        loop = asyncio.get_running_loop()
        if loop.time() >= deadline:
            # No reply in time: the server or the path to it is in trouble. What was sent is
            # indeterminate (never resent); the pipe is dropped so later calls start afresh.
            self._break(_rexc.TimeoutError(f"no reply from Redis within {self.timeout}s"))
        else:
            self._watch = loop.call_at(deadline, self._watchdog)

    async def _connect_send(
        self, packed: bytes, on_abandon: Callable[[Any], None] | None
    ) -> asyncio.Future[Any]:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:  # FIFO: callers keep their order while we connect
            if self._conn is None:
                pool = self._client.connection_pool  # type: ignore[union-attr]
                try:
                    conn = await pool.get_connection()
                except TypeError:  # redis-py < 5.3 requires a command name (later: deprecated)
                    conn = await pool.get_connection("EVALSHA")
                if getattr(conn, "_writer", None) is None:  # pragma: no cover - redis-py changed
                    await pool.release(conn)
                    raise RuntimeError("aiolease.redis: unsupported redis-py connection class")
                self._conn = conn
            return self._send(packed, on_abandon)

    async def _read(self, conn: Any) -> None:
        """Read replies while any is pending; each goes to the oldest pending future."""
        pending = self._pending
        loop = asyncio.get_running_loop()
        try:
            while self._conn is conn:
                while pending and self._conn is conn:
                    try:
                        reply = await conn.read_response(disconnect_on_error=False)
                    except _rexc.ResponseError as exc:  # an error reply: the connection is fine
                        reply = exc
                    if self._conn is not conn:
                        break
                    fut, on_abandon, _ = pending.popleft()
                    if fut.done():  # its caller gave up (cancelled / timed out)
                        if on_abandon is not None and not isinstance(reply, BaseException):
                            on_abandon(reply)
                        continue
                    if isinstance(reply, BaseException):
                        fut.set_exception(reply)
                    else:
                        fut.set_result(reply)
                # Idle: linger a moment for the next call (a sequential caller would otherwise
                # pay for a new task per call), then end - no task outlives the traffic by more.
                more = self._more = loop.create_future()
                timer = loop.call_later(_READER_LINGER, _wake, more)
                try:
                    await more
                finally:
                    timer.cancel()
                    self._more = None
                if not pending:
                    break
        except BaseException as exc:
            if self._conn is conn:
                # Cancelled from outside (the loop is shutting down): fail the pending calls but
                # start no task; the connection is closed with its client.
                self._break(exc, drop=isinstance(exc, Exception))
            if not isinstance(exc, Exception):
                raise
        finally:
            with contextlib.suppress(RuntimeError):  # closed by GC after its loop was closed
                if self._reader is asyncio.current_task():
                    self._reader = None

    def _break(self, exc: BaseException, *, drop: bool = True) -> None:
        """Drop the connection: every pending call fails as unavailable (its outcome unknown)."""
        conn, self._conn = self._conn, None
        pending = list(self._pending)
        self._pending.clear()
        reader, self._reader = self._reader, None
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        for fut, _, _ in pending:
            if not fut.done():
                err = _rexc.ConnectionError(f"connection to Redis lost: {exc!r}")
                err.__cause__ = exc
                fut.set_exception(err)
        if conn is not None and drop:
            pool = self._client.connection_pool  # type: ignore[union-attr]

            async def close_and_release() -> None:
                await conn.disconnect(nowait=True)
                await pool.release(conn)

            task = asyncio.get_running_loop().create_task(close_and_release())
            _DROPS.add(task)
            task.add_done_callback(_DROPS.discard)

    async def _via_client(
        self, script: Script, keys: tuple[str, ...], args: tuple[Any, ...]
    ) -> Any:
        # Cluster (or single-connection) clients route and retry by their own policy; configure
        # their retries off to keep "never replay an indeterminate call" (docs/redis.md).
        client: Any = self._client
        async with asyncio.timeout(self.timeout):
            try:
                return await client.evalsha(script.sha, len(keys), *keys, *args)
            except _rexc.NoScriptError:
                pass
            self._loaded += 1
            await client.script_load(script.source)
            return await client.evalsha(script.sha, len(keys), *keys, *args)


_DROPS: set[asyncio.Task[None]] = set()
_READER_LINGER = 0.25


def _b(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return repr(value).encode()


def _pack(parts: tuple[bytes, ...]) -> bytes:
    """One command in RESP (what redis-py's pack_command does, without its per-argument cost)."""
    return b"*%d\r\n" % len(parts) + b"".join([b"$%d\r\n%s\r\n" % (len(p), p) for p in parts])


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _log_task_error(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        logger.warning("aiolease.redis background call failed: %r", exc)


class _Background:
    """A limiter's background Redis calls (refunds, settles, releases); errors are logged."""

    __slots__ = ("tasks",)

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        task.add_done_callback(_log_task_error)
        return task


# --------------------------------------------------------------------------------------------
# Rate limiter
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RedisRateLimiterStatistics(RateLimiterStatistics):
    """Counters of one :class:`RedisRateLimiter` object (this process only).

    The fields of :class:`aiolease.RateLimiterStatistics` (``waiting`` and ``keys`` count this
    process's waiters and the keys they wait on: the limit state itself lives in Redis), plus:

    Attributes:
        errors: Redis calls that failed because Redis was unavailable.
        degraded: acquisitions answered by ``on_error`` instead of by Redis.
    """

    errors: int = 0
    degraded: int = 0


class RedisRatePermit:
    """An admitted acquisition of a :class:`RedisRateLimiter`.

    Attributes:
        cost: the cost charged (updated by :meth:`settle`).
        key: the limiter key.
        degraded: True when Redis was unavailable and ``on_error="allow"`` admitted it unchecked.
    """

    __slots__ = ("_epoch", "_limiter", "_rkey", "cost", "degraded", "key")

    def __init__(
        self,
        limiter: RedisRateLimiter,
        rkey: str,
        key: Hashable,
        cost: float,
        epoch: str,
        degraded: bool = False,
    ) -> None:
        self._limiter = limiter
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
            ValueError: ``actual_cost`` is negative or not finite.
        """
        return self._limiter._bg.spawn(self.asettle(actual_cost))

    async def asettle(self, actual_cost: float) -> float:
        """Like :meth:`settle`, awaiting the Redis call; returns the cost units actually applied.

        Raises:
            ValueError: ``actual_cost`` is negative or not finite.
        """
        actual = check_positive("actual_cost", actual_cost, inclusive=True)
        delta = actual - self.cost
        self.cost = actual
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
        self, limiter: RedisRateLimiter, args: tuple[float, Hashable, float | None]
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


class _Entry:
    """A sleeping waiter of this limiter object: its reservation and its one timer."""

    __slots__ = ("cost", "deadline", "handle", "new", "pu", "pure", "seq", "slot", "tat")

    def __init__(
        self, seq: int, cost: float, new: str, fields: list[str], pure: bool, deadline: float
    ) -> None:
        self.seq = seq
        self.cost = cost
        self.new = new  # the state the reservation wrote
        self.slot = float(fields[0])  # its slot, server microseconds
        self.tat = float(fields[1])  # tat right after it (moved back by later give-backs)
        self.pu = float(fields[4])  # paused_until when it was made
        self.pure = pure  # scheduled by plain GCRA: same epoch before and after (no pause jump)
        self.deadline = deadline  # loop time it sleeps until
        self.handle: asyncio.TimerHandle | None = None


class _Chain:
    """This object's view of one key while it has sleeping waiters there.

    ``last`` is the state this object last wrote or saw written right after its own previous
    write (None: unknown); ``brk`` the sequence number of the latest reservation whose previous
    state was not ``last`` - someone else wrote on the key just before it. A waiter with no break
    after it has only this object's reservations behind it, so giving its reservation back can
    move them up (see RedisRateLimiter._give_back). ``entries`` are in reservation order.
    """

    __slots__ = ("brk", "entries", "last", "seq")

    def __init__(self) -> None:
        self.last: str | None = None
        self.brk = 0
        self.seq = 0
        self.entries: dict[asyncio.Future[object], _Entry] = {}

    def note(self, old: str | None, new: str, cost: float, deadline: float) -> _Entry:
        """Record a reservation of this object (in reply order: see _Caller) and return it."""
        fields = new.split(" ")
        self.seq += 1
        # "slot tat hold epoch paused_until": an unchanged epoch means plain GCRA scheduled it.
        pure = old is not None and old.split(" ")[3] == fields[3]
        entry = _Entry(self.seq, cost, new, fields, pure, deadline)
        if old is None or old != self.last:
            self.brk = entry.seq  # someone else wrote on the key just before this reservation
        self.last = new
        return entry

    def can_move_up(self, entry: _Entry, due: bool) -> bool:
        """Whether giving ``entry`` back may move this object's later waiters up.

        It must not be the last write (that is restored exactly), its slot must not have come,
        plain GCRA must have scheduled it (no pause jump or restart) and every reservation made
        after it must be this object's own (no break after it).
        """
        return self.last != entry.new and not due and entry.pure and self.brk <= entry.seq

    def move_up(self, entry: _Entry, t_us: float) -> None:
        """Move this object's waiters after ``entry`` up by its cost (re-arming their timers).

        The result is the schedule in which ``entry`` had been made right after them and left
        unused, so it keeps the window bound whether or not Redis also lowers the key's debt.
        """
        shift = entry.cost * t_us
        for fut, e in self.entries.items():
            if e.seq > entry.seq:
                e.tat -= shift
                slot = max(e.slot - shift, e.pu)
                e.deadline -= (e.slot - slot) / 1e6
                e.slot = slot
                if e.handle is not None and not fut.done():
                    e.handle.cancel()
                    e.handle = asyncio.get_running_loop().call_at(e.deadline, _wake, fut)


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
            ``call_timeout``, read-only replica, cluster down): ``"raise"`` the error, ``"allow"``
            the acquisition (permit.degraded is True) or ``"deny"`` it with
            ``RateLimitExceeded``, whose ``retry_after`` is the time until this limiter will
            contact Redis again (the cool-down, 0.1 s doubling to 1 s per consecutive failure).
        clock: ``"server"`` (Redis ``TIME``, default) or ``"client"`` (this host's wall clock,
            for servers that forbid ``TIME`` in scripts; every host then needs NTP).
        call_timeout: seconds one Redis call may take, connecting included (> 0).
        prefix: first component of every Redis key.

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
        "_cooldown",
        "_cooldown_until",
        "_degraded",
        "_errors",
        "_head",
        "_last_error",
        "_max_cost",
        "_name",
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
    ) -> None:
        if not isinstance(name, str) or not name:
            raise TypeError(f"name must be a non-empty str, got {name!r}")
        self._rate = check_positive("rate", rate)
        self._per = check_positive("per", per)
        self._burst = check_positive("burst", burst, minimum=1.0, inclusive=True)
        if on_error not in ("raise", "allow", "deny"):
            raise ValueError(f"on_error must be 'raise', 'allow' or 'deny', got {on_error!r}")
        if clock not in ("server", "client"):
            raise ValueError(f"clock must be 'server' or 'client', got {clock!r}")
        self._name = name
        self._prefix = prefix
        self._on_error: OnError = on_error
        self._clock = "s" if clock == "server" else "c"
        self._call = _Caller(client, check_positive("call_timeout", call_timeout))
        self._t_us = self._per / self._rate * 1e6
        self._clock_b = self._clock.encode()
        self._shape = (repr(self._t_us).encode(), repr(self._burst).encode())
        self._base = redis_key(prefix, "rate", name)
        # RESP of RATE_ACQUIRE on the default key without its last two arguments (cost, max_wait).
        self._head = _pack(
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
        self._bg = _Background()
        #: key -> this object's sleeping waiters there (pause() wakes them early; a give-back
        #: moves the later ones up).
        self._sleepers: dict[str, _Chain] = {}
        self._cooldown = 0.0
        self._cooldown_until = -math.inf
        self._pause_seq = 0
        #: key -> (sequence number, task) of the latest pause() of this object on that key.
        self._pauses: dict[str, tuple[int, asyncio.Task[Any]]] = {}
        self._last_error: BaseException | None = None
        self._admitted = self._rejected = self._cancelled = self._waiting = 0
        self._errors = self._degraded = 0
        self._wait_total = self._wait_max = 0.0
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
                reserved), or Redis is unavailable with ``on_error="deny"``.
            ValueError: bad cost or timeout.
        """
        cost_ = check_cost(cost, self._max_cost, f"burst={self._burst:g}")
        return _RedisRateAcquire(self, (cost_, key, check_timeout(timeout)))

    async def acquire_nowait(self, cost: float = 1, key: Hashable = None) -> RedisRatePermit:
        """Admit ``cost`` now or raise ``RateLimitExceeded`` (a coroutine: one round trip).

        Raises:
            RateLimitExceeded: not admissible now; ``retry_after`` says when it would be.
        """
        return await self._acquire(
            check_cost(cost, self._max_cost, f"burst={self._burst:g}"), key, 0.0
        )

    def pause(self, seconds: float, key: Hashable = None) -> asyncio.Task[None]:
        """Admit nothing on ``key`` before ``seconds`` from now, in every process (Retry-After).

        Extends a pause, never shortens it. Waiters of this limiter object that are sleeping on a
        slot are woken and queue again behind the pause (their timeout still applies).
        Reservations already made by other processes keep their slots. The Redis call runs in the
        returned task; await it to be sure the pause is in force.

        Raises:
            ValueError: ``seconds`` is negative or not finite.
        """
        s = check_positive("seconds", seconds, inclusive=True)
        rkey = self._rkey(key)
        task = self._bg.spawn(self._run(RATE_PAUSE, rkey, (s * 1e6,)))
        # Acquisitions in flight now (sent before this pause) requeue too if they got a slot.
        self._pause_seq += 1
        if len(self._pauses) > 256:
            self._pauses = {k: v for k, v in self._pauses.items() if not v[1].done()}
        self._pauses[rkey] = (self._pause_seq, task)
        chain = self._sleepers.get(rkey)
        for fut, entry in list(chain.entries.items()) if chain is not None else ():
            if entry.handle is not None:
                entry.handle.cancel()
            if not fut.done():
                fut.set_result((_PAUSED, task))
        return task

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
            errors=self._errors,
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

    def _aiolease_leaks(self) -> list[str]:
        problems = []
        if self._waiting:
            problems.append(f"{self!r}: {self._waiting} task(s) still waiting")
        pending = [t for t in self._bg.tasks if not t.done()]
        if pending:
            problems.append(f"{self!r}: {len(pending)} Redis call(s) still in flight")
        return problems

    # -- internals ----------------------------------------------------------------------------
    def _rkey(self, key: Hashable) -> str:
        return self._base if key is None else redis_key(self._prefix, "rate", self._name, key)

    def _acquire_call(self, rkey: str, cost: float, max_wait: bytes) -> Awaitable[Any]:
        """RATE_ACQUIRE: the command is pre-packed up to its two variable arguments."""
        cost_b = _b(cost)
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
                old = "" if reply[1] is None else _text(reply[1])
                self._bg.spawn(self._call(RATE_CANCEL, (rkey,), (old, _text(reply[2]))))

        return self._call(RATE_ACQUIRE, (rkey,), args, packed, abandoned)

    def _run(self, script: Script, rkey: str, extra: tuple[Any, ...]) -> Awaitable[Any]:
        # The client's clock is read (and sent) only when the server's is not used.
        now = b"0" if self._clock == "s" else repr(time.time() * 1e6).encode()
        return self._call(script, (rkey,), (self._clock_b, now, *self._shape, *extra))

    async def _settle(self, rkey: str, delta: float, epoch: str) -> float:
        return float(_text(await self._run(RATE_SETTLE, rkey, (repr(delta), epoch))))

    def _unavailable(self, exc: BaseException, loop: asyncio.AbstractEventLoop) -> None:
        self._errors += 1
        self._last_error = exc
        self._cooldown = min(_COOLDOWN_MAX, max(_COOLDOWN_MIN, self._cooldown * 2))
        self._cooldown_until = loop.time() + self._cooldown
        logger.warning(
            "Redis unavailable for rate limiter %r (%r); answering %r for %.2fs",
            self._name,
            exc,
            self._on_error,
            self._cooldown,
        )

    def _degrade(
        self,
        loop: asyncio.AbstractEventLoop,
        rkey: str,
        key: Hashable,
        cost: float,
        fresh: BaseException | None = None,
    ) -> RedisRatePermit:
        """Answer by ``on_error`` (Redis is unavailable, or cooling down after it was)."""
        exc = fresh or self._last_error
        if self._on_error == "raise":
            if fresh is not None:
                raise fresh
            raise _rexc.ConnectionError(
                f"Redis unavailable for rate limiter {self._name!r}; not retrying for "
                f"{self._cooldown_until - loop.time():.2f}s after: {exc!r}"
            ) from exc
        self._degraded += 1
        if self._on_error == "allow":
            self._admitted += 1
            return RedisRatePermit(self, rkey, key, cost, "", degraded=True)
        self._rejected += 1
        retry = max(self._cooldown_until - loop.time(), 0.001)
        raise RateLimitExceeded(
            retry,
            f"Redis unavailable for rate limiter {self._name!r} (on_error='deny'); "
            f"retry after {retry:.3f}s",
        ) from exc

    async def _acquire(self, cost: float, key: Hashable, timeout: float | None) -> RedisRatePermit:
        loop = asyncio.get_running_loop()
        rkey = self._rkey(key)
        arrived = loop.time()
        requeued = False
        self._waiting += 1  # from the call on: a round trip is part of the wait
        try:
            while True:
                if loop.time() < self._cooldown_until:
                    return self._degrade(loop, rkey, key, cost)
                if timeout is None:
                    max_wait = b"-1"
                else:
                    max_wait = b"%d" % (max(0.0, timeout - (loop.time() - arrived)) * 1e6)
                seq = self._pause_seq
                try:
                    res = await self._acquire_call(rkey, cost, max_wait)
                except UNAVAILABLE as exc:
                    self._unavailable(exc, loop)
                    return self._degrade(loop, rkey, key, cost, exc)
                self._cooldown = 0.0
                if type(res) is int:
                    if res < 0:  # -(wait_us + 1): slot beyond the timeout; nothing reserved
                        self._rejected += 1
                        raise RateLimitExceeded((-res - 1) / 1e6)
                    # admitted now; the reply is the epoch (see _redis_scripts)
                    if self._sleepers and (chain := self._sleepers.get(rkey)) is not None:
                        chain.last = None  # we wrote a state we do not know
                    self._admitted += 1
                    if requeued:  # woken by a pause, then admitted at once
                        self._note_wait(loop.time() - arrived)
                    return RedisRatePermit(self, rkey, key, cost, str(res))
                new = _text(res[2])
                # the state's epoch field: "slot tat hold epoch paused_until" (_redis_scripts)
                permit = RedisRatePermit(self, rkey, key, cost, new.split(" ")[3])
                paused = self._pauses.get(rkey)
                if paused is not None and paused[0] > seq:
                    # pause() was called while our call was in flight: queue behind it.
                    outcome: asyncio.Task[None] | None = paused[1]
                else:
                    outcome = await self._sleep(loop, rkey, res[0] / 1e6, res[1], new, cost)
                    if outcome is None:
                        self._admitted += 1
                        self._note_wait(loop.time() - arrived)
                        return permit
                # Woken by pause(): queue again once the pause is in force in Redis. The
                # abandoned reservation is not refunded: the pause moved the schedule past it.
                requeued = True
                if outcome is not None:
                    with contextlib.suppress(Exception):
                        await outcome
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
    ) -> asyncio.Task[None] | None:
        """Sleep once until the reserved slot; returns the pause task if pause() woke us."""
        chain = self._sleepers.get(rkey)
        if chain is None:
            chain = self._sleepers[rkey] = _Chain()
        old_t = None if old is None else _text(old)
        entry = chain.note(old_t, new, cost, loop.time() + wait)
        fut: asyncio.Future[object] = loop.create_future()
        entry.handle = loop.call_at(entry.deadline, _wake, fut)
        chain.entries[fut] = entry
        try:
            result = await fut
        except BaseException:
            entry.handle.cancel()
            del chain.entries[fut]
            # Give the reservation back; shielded so a second cancellation cannot stop it half way.
            due = fut.done() and not fut.cancelled()  # its timer fired (or pause() woke it)
            refund = self._bg.spawn(self._give_back(rkey, chain, entry, old_t, due))
            with contextlib.suppress(BaseException):
                await asyncio.shield(refund)
            raise
        finally:
            chain.entries.pop(fut, None)
            if not chain.entries and self._sleepers.get(rkey) is chain:
                del self._sleepers[rkey]
        if isinstance(result, tuple):
            task: asyncio.Task[None] = result[1]
            return task
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
            chain.last = _text(res)

    def _note_wait(self, waited: float) -> None:
        self._wait_total += waited
        if waited > self._wait_max:
            self._wait_max = waited


def _wake(fut: asyncio.Future[object]) -> None:
    if not fut.done():
        fut.set_result(None)


# --------------------------------------------------------------------------------------------
# Concurrency limiter
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RedisConcurrencyLimiterStatistics(ConcurrencyLimiterStatistics):
    """Counters of one :class:`RedisConcurrencyLimiter` object (this process only).

    The fields of :class:`aiolease.ConcurrencyLimiterStatistics` (``in_use``, ``waiting`` and
    ``keys`` count this process's leases and waiters; :meth:`RedisConcurrencyLimiter.in_use` asks
    Redis for the total), plus:

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
    """

    __slots__ = ("_keys", "_limiter", "_released", "key", "lease_id", "lost")

    def __init__(
        self, limiter: RedisConcurrencyLimiter, keys: tuple[str, ...], key: Hashable, lease_id: str
    ) -> None:
        self._limiter = limiter
        self._keys = keys
        self._released = False
        self.key = key
        self.lease_id = lease_id
        self.lost = False

    @property
    def released(self) -> bool:
        return self._released

    def release(self) -> asyncio.Task[Any] | None:
        """Give the slot back (idempotent). The Redis call runs in the returned background task."""
        if self._released:
            return None
        self._released = True
        return self._limiter._release(self)

    async def arelease(self) -> None:
        """Give the slot back and wait for Redis to record it (idempotent, shielded).

        When Redis cannot be reached the failure is logged, not raised (it must not replace an
        exception leaving an ``async with`` block): the lease then expires after ``lease_ttl``.
        """
        task = self.release()
        if task is not None:
            try:
                await asyncio.shield(task)
            except UNAVAILABLE as exc:
                logger.warning(
                    "releasing %s of %r failed (%r); the lease expires after lease_ttl",
                    self.lease_id,
                    self._limiter.name,
                    exc,
                )

    def __repr__(self) -> str:
        state = "released" if self._released else ("lost" if self.lost else "held")
        return f"<RedisConcurrencyPermit key={self.key!r} {self.lease_id} {state}>"


class _RedisConcAcquire:
    __slots__ = ("_args", "_limiter", "_permit")

    def __init__(
        self, limiter: RedisConcurrencyLimiter, args: tuple[Hashable, float | None]
    ) -> None:
        self._limiter = limiter
        self._args = args
        self._permit: RedisConcurrencyPermit | None = None

    def __await__(self) -> Generator[Any, None, RedisConcurrencyPermit]:
        return self._limiter._acquire(*self._args).__await__()

    async def __aenter__(self) -> RedisConcurrencyPermit:
        self._permit = await self._limiter._acquire(*self._args)
        return self._permit

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._permit is not None:
            await self._permit.arelease()


_GRANTED: Final = "granted"
_RECHECK: Final = "recheck"


class RedisConcurrencyLimiter:
    """At most ``limit`` holders at once per key, across every process sharing Redis and ``name``.

    Each slot is a lease (a sorted set of holder ids scored by expiry) renewed in the background
    every ``lease_ttl / 3`` while held, so the slot of a crashed or killed holder frees itself
    after ``lease_ttl``. Waiters queue in Redis in arrival order; a released slot is handed to the
    oldest waiter inside the release script and its process is woken by PUBLISH (no polling; a
    waiter re-checks on its own only when the earliest lease could have expired).

    Args:
        client: a ``redis.asyncio.Redis`` client; not closed by the limiter.
        name: the limiter's name in Redis.
        limit: slots per key, an int >= 1. Every process sharing a name must use the same limit.
        lease_ttl: seconds a lease survives without renewal (>= 0.1).
        clock: ``"server"`` (Redis ``TIME``) or ``"client"`` (this host's wall clock).
        call_timeout: seconds one Redis call may take, connecting included.
        prefix: first component of every Redis key.

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
        "_ctx",
        "_held",
        "_limit",
        "_listener",
        "_listener_error",
        "_listener_ready",
        "_lost",
        "_name",
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
        call_timeout: float = 1.0,
        prefix: str = "aiolease",
    ) -> None:
        if not isinstance(name, str) or not name:
            raise TypeError(f"name must be a non-empty str, got {name!r}")
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise TypeError(f"limit must be an int >= 1, got {type(limit).__name__} {limit!r}")
        if limit < 1:
            raise ValueError(f"limit must be an int >= 1, got {limit!r}")
        self._ttl = check_positive("lease_ttl", lease_ttl, minimum=0.1, inclusive=True)
        if clock not in ("server", "client"):
            raise ValueError(f"clock must be 'server' or 'client', got {clock!r}")
        self._client = client
        self._name = name
        self._limit = limit
        self._prefix = prefix
        self._clock = "s" if clock == "server" else "c"
        self._call = _Caller(client, check_positive("call_timeout", call_timeout))
        self._channel = f"{redis_key(prefix, 'conc', name)}:wake"
        self._uid = f"{uuid.uuid4().hex[:12]}-{os.getpid()}"
        self._seq = itertools.count(1)
        self._bg = _Background()
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
        _tracking.track(self)

    # -- public -------------------------------------------------------------------------------
    def acquire(self, key: Hashable = None, timeout: float | None = None) -> _RedisConcAcquire:
        """Wait for a slot of ``key``; awaitable (-> permit) and an async context manager.

        ``__aenter__`` blocks and can be cancelled (the place in the queue is given back, and a
        slot handed over meanwhile is passed on); ``__aexit__`` releases the slot, shielded.

        Args:
            key: None, or a str, int, float, bytes or tuple of those; each key has its own
                ``limit`` slots.
            timeout: None to wait as needed, or seconds.

        Raises:
            LimitTimeout: no slot within ``timeout``.
            ValueError: bad timeout.
        """
        if key is not None:
            _key_text(key)
        return _RedisConcAcquire(self, (key, check_timeout(timeout)))

    async def acquire_nowait(self, key: Hashable = None) -> RedisConcurrencyPermit:
        """Take a free slot now or raise ``WouldBlock`` (a coroutine: one round trip).

        Raises:
            WouldBlock: every slot is held, or others are already waiting.
        """
        return await self._acquire(key, 0.0, nowait=True)

    async def in_use(self, key: Hashable = None) -> int:
        """Slots of ``key`` held now across all processes (one Redis call)."""
        keys = self._keys(key)
        res = await self._call(CONC_RENEW, keys, (*self._argv(), 0))
        del res
        client: Any = self._client
        return int(await client.zcard(keys[0]))

    def statistics(self) -> RedisConcurrencyLimiterStatistics:
        """Counters of this limiter object (this process)."""
        keys = {p._keys for p in self._held.values()} | {k for k, _ in self._waiters.values()}
        return RedisConcurrencyLimiterStatistics(
            limit=self._limit,
            in_use=len(self._held),
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
        return problems

    # -- internals ----------------------------------------------------------------------------
    def _keys(self, key: Hashable) -> tuple[str, ...]:
        base = redis_key(self._prefix, "conc", self._name, key)
        return (f"{base}:holders", f"{base}:queue", f"{base}:beats", f"{base}:seq")

    def _argv(self) -> tuple[Any, ...]:
        return (
            self._clock,
            repr(time.time() * 1e6),
            self._limit,
            max(1, round(self._ttl * 1000)),
            self._channel,
        )

    async def _acquire(
        self, key: Hashable, timeout: float | None, *, nowait: bool = False
    ) -> RedisConcurrencyPermit:
        self._waiting += 1  # from the call on: the round trips are part of the wait
        try:
            return await self._acquire_slot(key, timeout, nowait)
        finally:
            self._waiting -= 1

    async def _acquire_slot(
        self, key: Hashable, timeout: float | None, nowait: bool
    ) -> RedisConcurrencyPermit:
        loop = asyncio.get_running_loop()
        keys = self._keys(key)
        lid = f"{self._uid}:{next(self._seq)}"
        arrived = loop.time()
        # Fast path: a free slot and nobody queued -> one round trip, no queue entry. A caller
        # that will wait takes its place in the queue in this same call, so its place is its
        # arrival here and not the later moment its hand-off listener is subscribed (a waiter
        # arriving meanwhile must not get ahead of it). The loop below re-checks once
        # subscribed, so a hand-off published before that is not missed.
        mode = "n" if nowait or timeout == 0 else "w"
        try:
            granted, _ = await self._call(CONC_ACQUIRE, keys, (*self._argv(), lid, mode))
        except BaseException:
            # Cancelled (or failed) with the outcome unknown: a slot taken for us must not stay
            # held until it expires. Withdrawing an id that holds nothing is harmless.
            self._bg.spawn(self._call(CONC_CANCEL, keys, (*self._argv(), lid)))
            raise
        if granted:
            return self._grant(keys, key, lid)
        if nowait or timeout == 0:
            if nowait:
                self._rejected += 1
                raise WouldBlock(f"{self!r}: every slot of key {key!r} is held or waited for")
            self._timeouts += 1
            raise LimitTimeout(f"{self!r}: no slot of key {key!r} free (timeout=0)")
        deadline = None if timeout is None else arrived + timeout
        fut: asyncio.Future[str] = loop.create_future()
        self._waiters[lid] = (keys, fut)
        try:
            self._ensure_renewer()  # keeps our place in the queue alive from now on
            await self._ensure_listener()
            while True:
                granted, hint_ms = await self._call(CONC_ACQUIRE, keys, (*self._argv(), lid, "w"))
                if granted or (fut.done() and fut.result() == _GRANTED):
                    break
                if fut.done():  # _RECHECK: re-run the script with a fresh future
                    fut = loop.create_future()
                    self._waiters[lid] = (keys, fut)
                # Sleep until woken by a hand-off, or until the earliest lease could have expired
                # (a crashed holder); the renewer also refreshes our place every lease_ttl / 3.
                delay = max(hint_ms, 0) / 1000 + 0.005
                if deadline is not None:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        self._timeouts += 1
                        raise LimitTimeout(
                            f"{self!r}: no slot of key {key!r} within timeout={timeout!r}s"
                        )
                    delay = min(delay, remaining)
                await asyncio.wait((fut,), timeout=delay)
                if fut.done() and fut.result() == _GRANTED:
                    break
                if not fut.done() and deadline is not None and loop.time() >= deadline:
                    self._timeouts += 1
                    raise LimitTimeout(
                        f"{self!r}: no slot of key {key!r} within timeout={timeout!r}s"
                    )
        except BaseException as exc:
            if not isinstance(exc, LimitTimeout):
                self._cancelled += 1
            # Withdraw from the queue, passing on a slot handed to us meanwhile; shielded.
            withdraw = self._bg.spawn(self._call(CONC_CANCEL, keys, (*self._argv(), lid)))
            with contextlib.suppress(BaseException):
                await asyncio.shield(withdraw)
            raise
        finally:
            del self._waiters[lid]
        waited = loop.time() - arrived
        self._wait_total += waited
        if waited > self._wait_max:
            self._wait_max = waited
        return self._grant(keys, key, lid)

    def _grant(self, keys: tuple[str, ...], key: Hashable, lid: str) -> RedisConcurrencyPermit:
        permit = RedisConcurrencyPermit(self, keys, key, lid)
        self._held[lid] = permit
        self._admitted += 1
        self._ensure_renewer()
        return permit

    def _release(self, permit: RedisConcurrencyPermit) -> asyncio.Task[Any]:
        del self._held[permit.lease_id]
        if not self._held and not self._waiters and self._renewer is not None:
            self._renewer.cancel()
            self._renewer = None
        return self._bg.spawn(
            self._call(CONC_CANCEL, permit._keys, (*self._argv(), permit.lease_id))
        )

    def _ensure_renewer(self) -> None:
        if self._renewer is None or self._renewer.done():
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
            for keys, (held, waiting) in groups.items():
                try:
                    lost, granted, dropped = await self._call(
                        CONC_RENEW, keys, (*self._argv(), len(held), *held, *waiting)
                    )
                except UNAVAILABLE as exc:
                    logger.warning("renewing leases of %r failed: %r", self._name, exc)
                    continue
                for lid in map(_text, lost):
                    gone = self._held.get(lid)
                    if gone is not None and not gone.lost:
                        gone.lost = True
                        self._lost += 1
                        logger.warning("%r: lease %s expired before it was renewed", self, lid)
                for lid, outcome in itertools.chain(
                    zip(map(_text, granted), itertools.repeat(_GRANTED)),
                    zip(map(_text, dropped), itertools.repeat(_RECHECK)),
                ):
                    w = self._waiters.get(lid)
                    if w is not None and not w[1].done():
                        w[1].set_result(outcome)

    async def _ensure_listener(self) -> None:
        if self._listener is None or self._listener.done():
            ready = self._listener_ready = asyncio.Event()
            self._listener = asyncio.get_running_loop().create_task(
                self._listen(ready), name=f"aiolease-redis-listen-{self._name}"
            )
        task, ready_ev = self._listener, self._listener_ready
        assert ready_ev is not None
        async with asyncio.timeout(self._call.timeout):
            waiter = asyncio.ensure_future(ready_ev.wait())
            try:
                await asyncio.wait((waiter, task), return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
        if not ready_ev.is_set():
            raise _rexc.ConnectionError(
                f"{self!r}: could not subscribe to {self._channel!r}"
            ) from self._listener_error

    async def _listen(self, ready: asyncio.Event) -> None:
        """Wake local waiters on hand-off messages; lingers 1 s after the last waiter left."""
        client: Any = self._client
        ps = client.pubsub()
        me = asyncio.current_task()
        try:
            await ps.subscribe(self._channel)
            while True:
                msg = await ps.get_message(timeout=1.0)
                if msg is None:
                    if not self._waiters:
                        return
                    continue
                if msg["type"] == "subscribe":
                    ready.set()
                elif msg["type"] == "message":
                    w = self._waiters.get(_text(msg["data"]))
                    if w is not None and not w[1].done():
                        w[1].set_result(_GRANTED)
        except Exception as exc:
            # Waiters re-check (and start a new listener); a waiter whose listener never
            # subscribed gets this error from _ensure_listener.
            logger.warning("hand-off listener of %r stopped: %r", self._name, exc)
            self._listener_error = exc
            for _, fut in self._waiters.values():
                if not fut.done():
                    fut.set_result(_RECHECK)
        finally:
            if self._listener is me:
                self._listener = None
            with contextlib.suppress(Exception):
                await ps.aclose()
