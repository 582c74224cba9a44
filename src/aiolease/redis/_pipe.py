"""The limiters' Redis calls: one pipelined connection, bounded calls.

:class:`Caller` runs a Lua script in one round trip, bounded by ``call_timeout`` (connecting
included) on the event loop's clock, judged by :func:`recheck`. (The limiters' background
calls and closing are in :mod:`aiolease.redis._background`.)
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import deque
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import redis.asyncio as _redis_asyncio
from redis import exceptions as _rexc

from .._compat import redis as _compat
from .._redact import redact
from ._background import cancel_late
from ._health import describe
from ._scripts import Script

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster

    Client = Redis | RedisCluster

__all__ = [
    "Bound",
    "Caller",
    "check_client",
    "detached",
    "recheck",
    "wake",
]

T = TypeVar("T")


class ServerBusy(_rexc.BusyLoadingError):
    """``BUSY``: Redis runs another client's script (or function) past its
    ``busy-reply-threshold`` and refuses every other command meanwhile. The call did not run;
    Redis cannot answer until that script ends (or is killed): an outage, as ``LOADING`` is."""


def _busy(exc: _rexc.ResponseError) -> BaseException:
    """An error reply as the limiters take it: ``BUSY`` (redis-py has no class for it) as
    :class:`ServerBusy`, any other as it is."""
    if str(exc).startswith("BUSY "):
        err = ServerBusy(str(exc))
        err.__cause__ = exc
        return err
    return exc


_READER_LINGER = 0.25


def check_client(client: object, cls: str) -> None:
    """A limiter needs a redis-py asyncio client object, not a URL, None or the class."""
    if isinstance(client, type):
        # Its evalsha is a function too, and every call would fail (no connection pool).
        raise TypeError(
            f"{cls}: client must be a redis.asyncio.Redis (or RedisCluster) client, got the "
            f"class {client.__name__}; create one with redis.asyncio.Redis.from_url(url)"
        )
    if isinstance(client, (str, bytes)) or client is None or not hasattr(client, "evalsha"):
        raise TypeError(
            f"{cls}: client must be a redis.asyncio.Redis (or RedisCluster) client, got "
            f"{type(client).__name__} {redact(repr(client)):.80}; create one with "
            "redis.asyncio.Redis.from_url(url) and pass it (the limiter never closes it)"
        )


def wake(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_result(None)


def detached(task: asyncio.Task[T]) -> asyncio.Task[T]:
    """What a caller is given to await of a background call: it ends as ``task`` does, but
    cancelling it (a caller that stops waiting, or a caller cancelled while awaiting it) leaves
    ``task`` running to its end - a pause, charge or refund is not dropped half sent."""
    handle = asyncio.ensure_future(_outcome(task))
    handle.add_done_callback(_seen)
    return handle


async def _outcome(task: asyncio.Task[T]) -> T:
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        me = asyncio.current_task()
        if not task.cancelled() or (me is not None and me.cancelling()):
            raise  # the wait was cancelled
        # aclose() cancelled the call, still unanswered after call_timeout: whoever awaits it
        # was not cancelled, and gets an error instead (a CancelledError would read as its own).
        raise RuntimeError(
            "the limiter was closed (aclose()) before this background Redis call ended: "
            "its outcome is unknown"
        ) from None


def _seen(handle: asyncio.Future[Any]) -> None:
    # The background task's own callback logs its error: an unawaited handle is no news.
    if not handle.cancelled():
        handle.exception()


def recheck(stage: int, now: float, due: float, timeout: float) -> float | None:
    """When to look again at a call still unanswered at its deadline, or None: it has expired.

    ``stage`` counts the looks taken since the deadline (0: the timer due at ``due`` itself).
    A timer can run after a reply has arrived but before the task that reads it: a loop pass
    polls the sockets, then runs the callbacks due (the timer among them), and only the next
    pass runs the reader the poll woke up. After the loop was blocked past the deadline (a
    synchronous call, a long GC pause, SIGSTOP) that is the usual order, with every reply that
    came meanwhile waiting to be read. So the deadline is not the end: stage 0 gives back the
    time the loop was late for it (at most ``timeout``: a call still queued behind others then
    gets its round trip too), stage 1 waits one more loop pass, and only stage 2 fails the call,
    once whatever had arrived has been polled and read. Bounded: while the loop runs on time a
    silent Redis fails a call two loop passes after its deadline.
    """
    if stage == 0:
        return now + min(max(now - due, 0.0), timeout)
    if stage == 1:
        return now
    return None


class Bound:
    """``async with Bound(timeout):`` is ``asyncio.timeout(timeout)`` expiring by
    :func:`recheck` (the public path's calls and the pipe's connect are bounded by it)."""

    __slots__ = ("_cm", "_handle", "_stage", "_timeout")

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._cm = asyncio.timeout(None)
        self._handle: asyncio.TimerHandle | None = None
        self._stage = 0

    async def __aenter__(self) -> None:
        await self._cm.__aenter__()
        loop = asyncio.get_running_loop()
        due = loop.time() + self._timeout
        self._handle = loop.call_at(due, self._check, due)

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        await self._cm.__aexit__(et, e, tb)  # TimeoutError if it expired

    def _check(self, due: float) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        later = recheck(self._stage, now, due, self._timeout)
        self._stage += 1
        if later is None:
            self._handle = None
            self._cm.reschedule(now)  # expired: asyncio.timeout cancels the task
        else:
            self._handle = loop.call_at(later, self._check, later)


def b(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return repr(value).encode()


def pack(parts: tuple[bytes, ...]) -> bytes:
    """One command in RESP (what redis-py's pack_command does, without its per-argument cost)."""
    return b"*%d\r\n" % len(parts) + b"".join([b"$%d\r\n%s\r\n" % (len(p), p) for p in parts])


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Caller:
    """Runs a :class:`Script` with EVALSHA in one round trip, bounded by ``timeout``.

    On a plain ``redis.asyncio.Redis`` every call of one limiter is written, in call order, to ONE
    connection taken from the client's pool and kept (a pipe, see :mod:`aiolease._compat.redis`):
    Redis executes the scripts in the order they were called in this process (FIFO per key),
    concurrent calls share the socket, and a caller that is cancelled or times out just abandons
    its reply - the connection stays usable.

    The client's retry policy is bypassed on purpose: redis-py would resend a command after a
    timeout or a dropped connection, and a reservation resent after such an *indeterminate*
    failure (the script may have run) would be charged twice. A timeout breaks the pipe (its
    pending calls fail as unavailable); NOSCRIPT (the server lost its script cache: restart,
    failover, SCRIPT FLUSH) is determinate - the script did not run - and is answered by one
    SCRIPT LOAD and one more EVALSHA.

    Without the pipe (``AIOLEASE_COMPAT=public``, or a redis-py connection without the private
    writer) a plain client's calls still bypass its retry policy: each takes a connection of the
    client's pool and sends EVALSHA on it through redis-py's public connection API. Cluster and
    single-connection clients go through the client's ``evalsha`` (they route, or share their
    one connection, by their own rules): there the client's retry policy applies.
    """

    __slots__ = (
        "_calls",
        "_client",
        "_connecting",
        "_cut_half_connected",
        "_direct",
        "_drops",
        "_late",
        "_link",
        "_loaded",
        "_loop",
        "_more",
        "_order",
        "_pending",
        "_pooled",
        "_reader",
        "_watch",
        "closed",
        "sent",
        "timeout",
    )

    def __init__(self, client: Client, timeout: float) -> None:
        self._client = client
        self.timeout = timeout
        #: a plain client: its pool's connections are ours to use, one call on one at a time
        self._pooled = isinstance(client, _redis_asyncio.Redis) and not getattr(
            client, "single_connection_client", False
        )
        #: the pipe: one connection taken from that pool, written to synchronously
        self._direct = _compat.PIPE and self._pooled
        self._cut_half_connected = _compat.half_connected_cutter()
        self._loaded = 0  # SCRIPT LOAD count (observable in tests)
        self.sent = 0  # calls sent: written to the pipe, or handed to the public path
        self._link: Any = None
        #: while a caller takes the pipe's connection: the callers that came meanwhile, in
        #: order, each waiting for it on a future of its own (see _connect_send).
        self._connecting: deque[asyncio.Future[None]] | None = None
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
        #: (the oldest pending call, the looks taken at it since its deadline: see recheck).
        self._late: tuple[asyncio.Future[Any], int] | None = None
        #: closes of dropped connections still running.
        self._drops: set[asyncio.Task[None]] = set()
        #: Without the pipe, calls go one at a time in call order (FIFO per key, as with it),
        #: each in a task of its own (see _via_client).
        self._order: asyncio.Lock | None = None
        self._calls: set[asyncio.Task[Any]] = set()
        #: the loop of the calls so far (see _adopt).
        self._loop: asyncio.AbstractEventLoop | None = None
        self.closed = False

    @property
    def used(self) -> bool:
        """Whether a limiter using this caller must be closed: it has sent a call, or holds a
        connection or runs a task. (The pipe keeps its connection from the first call until
        ``aclose()``; the public path takes one per call. Counting sent calls makes "left
        open" mean the same in both modes.)"""
        return (
            self.sent > 0
            or self._link is not None
            or self._reader is not None
            or bool(self._drops)
            or bool(self._calls)
        )

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
        if self.closed:  # a late release or settle after aclose(): logged by its caller
            raise _rexc.ConnectionError("the limiter was closed (aclose())")
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._adopt(loop)
        if not self._direct:
            (reply,) = await self._via_client(script, [(keys, args)], on_abandon)
            if isinstance(reply, Exception):
                raise reply
            return reply
        if packed is None:
            packed = pack(
                (b"EVALSHA", script.sha_b, b"%d" % len(keys), *map(b, keys), *map(b, args))
            )
        conn = self._link
        if conn is not None and conn.is_connected and not _compat.closed_by_peer(conn):
            fut = self._send(packed, on_abandon)
        else:
            if conn is not None:  # closed under us: the client disconnected its pool, or the
                # server closed it while idle (its `timeout`); nothing was sent on it since
                self._break(_rexc.ConnectionError("connection closed"))
            try:
                async with Bound(self.timeout):
                    fut = await self._connect_send(packed, on_abandon)
            except TimeoutError as exc:  # the loop's bound, not redis-py's socket timeout
                raise _rexc.TimeoutError(
                    f"could not connect to Redis within call_timeout={self.timeout}s"
                ) from exc
        try:
            return await fut
        except _rexc.NoScriptError:
            pass
        except asyncio.CancelledError:
            _late_abandon(fut, on_abandon)
            raise
        self._loaded += 1
        load = self._send(pack((b"SCRIPT", b"LOAD", script.source.encode())))
        load.add_done_callback(_seen)  # its error is raised below, or nobody waits any more
        fut = self._send(packed, on_abandon)
        try:
            return await fut
        except _rexc.NoScriptError:
            # Not loaded: the reason is SCRIPT LOAD's error (an ACL refusing it), if it failed
            # (its reply came first: replies come in order).
            if load.done() and not load.cancelled() and (why := load.exception()) is not None:
                raise why from None
            raise
        except asyncio.CancelledError:
            _late_abandon(fut, on_abandon)
            raise

    async def many(
        self, script: Script, calls: list[tuple[tuple[str, ...], tuple[Any, ...]]]
    ) -> list[Any]:
        """``script`` once for each ``(keys, args)`` of ``calls``, all sent together: the reply
        of each, or the exception it failed with, in order.

        On the pipe they are written together; on the public path of a plain client they go
        down one pooled connection together (Redis pipelining), as one call in call order.
        Either way they cost about one round trip, not one each. A cluster client's go one at
        a time, as its single calls do.
        """
        if self._direct or not self._pooled:
            return await asyncio.gather(
                *(self(script, keys, args) for keys, args in calls), return_exceptions=True
            )
        try:
            if self.closed:
                raise _rexc.ConnectionError("the limiter was closed (aclose())")
            loop = asyncio.get_running_loop()
            if loop is not self._loop:
                self._adopt(loop)
            return await self._via_client(script, calls)
        except Exception as exc:  # the batch failed as a whole: so did each of its calls
            return [exc] * len(calls)

    def _adopt(self, loop: asyncio.AbstractEventLoop) -> None:
        """Make ``loop`` the loop of the calls; forget what a closed previous one left behind.

        A loop closed without cancelling its tasks (``asyncio.run`` cancels them) leaves this
        pipe's reader, timer and locks pending on it for good: a call on the next loop would
        wait for a reply nothing reads. Nothing of that loop can run again, so its connection
        is abandoned (its transport belonged to that loop) and the pipe starts afresh.
        """
        old, self._loop = self._loop, loop
        if old is None or not old.is_closed():
            return
        self._link = self._reader = self._more = self._watch = self._late = None
        self._pending.clear()
        self._connecting = self._order = None
        self._drops.clear()
        self._calls.clear()

    def _send(
        self, packed: bytes, on_abandon: Callable[[Any], None] | None = None
    ) -> asyncio.Future[Any]:
        """Write one command now (synchronously: call order is wire order) and return its reply."""
        conn = self._link
        if conn is None:
            raise _rexc.ConnectionError("connection to Redis lost")
        loop = asyncio.get_running_loop()
        try:
            _compat.write(conn, packed)
        except _rexc.ConnectionError as exc:
            # redis-py disconnected it while this call waited (for the pipe's connect, or for a
            # reply before a SCRIPT LOAD): the calls written before fail as lost, and the next
            # call connects afresh.
            self._break(exc)
            raise
        fut: asyncio.Future[Any] = loop.create_future()
        self.sent += 1
        deadline = loop.time() + self.timeout
        self._pending.append((fut, on_abandon, deadline))
        if self._reader is None:
            self._reader = loop.create_task(self._read(conn))
        elif self._more is not None and not self._more.done():
            self._more.set_result(None)
        if self._watch is None:
            self._watch = loop.call_at(deadline, self._watchdog, deadline)
        return fut

    def _watchdog(self, due: float) -> None:
        self._watch = None
        if not self._pending:
            return
        fut, _, deadline = self._pending[0]
        loop = asyncio.get_running_loop()
        now = loop.time()
        if now < deadline:
            self._watch = loop.call_at(deadline, self._watchdog, deadline)
            return
        late = self._late
        stage = late[1] if late is not None and late[0] is fut else 0
        later = recheck(stage, now, max(due, deadline), self.timeout)
        if later is None:
            # No reply in time: the server or the path to it is in trouble. What was sent is
            # indeterminate (never resent); the pipe is dropped so later calls start afresh.
            self._break(_rexc.TimeoutError(f"no reply from Redis within {self.timeout}s"))
        else:
            self._late = (fut, stage + 1)
            self._watch = loop.call_at(later, self._watchdog, later)

    async def _connect_send(
        self, packed: bytes, on_abandon: Callable[[Any], None] | None
    ) -> asyncio.Future[Any]:
        """Write once the pipe has a connection, taking it if no caller is taking it already.

        The callers that come while one takes it wait in order and are all woken when it is
        done, so they write in the order they came, in one loop pass (a burst of thousands
        is not let through one per pass); if it failed, the oldest of them tries next.
        """
        loop = asyncio.get_running_loop()
        while self._link is None:
            if self.closed:  # aclose() came while this call waited
                raise _rexc.ConnectionError("the limiter was closed (aclose())")
            queue = self._connecting
            if queue is None:
                await self._connect()
            else:
                turn = loop.create_future()
                queue.append(turn)
                await turn
        return self._send(packed, on_abandon)

    async def _connect(self) -> None:
        queue = self._connecting = deque()
        try:
            pool = self._client.connection_pool  # type: ignore[union-attr]
            conn = await self._take_shielded(pool)
            if not _compat.can_write(conn):  # pragma: no cover - redis-py changed
                await pool.release(conn)
                self._direct = False
                raise _rexc.ConnectionError("redis-py connection cannot be pipelined")
            self._link = conn
        finally:
            if self._connecting is queue:
                self._connecting = None
            for turn in queue:
                if not turn.done():
                    turn.set_result(None)

    async def _take_shielded(self, pool: Any) -> Any:
        """A connection of ``pool`` (the pipe's, or a public-path call's).

        Taken in a task of its own, awaited through a shield: redis-py's get_connection() can
        return a connection although its caller was cancelled while it connected (on Python
        3.11 the handshake's ``asyncio.wait_for`` around a send loses a cancellation that lands
        as the send completes, when the client has a ``socket_timeout``). The caller always
        gets its CancelledError - a call cancelled by its bound (:class:`Bound`) or by
        ``aclose()`` ends then, without going on to send - and a connection that comes anyway
        goes back to the pool (aclose() ends a late one). (redis-py gives a connection back
        itself if connecting fails.)
        """
        taking = asyncio.get_running_loop().create_task(_take(pool, self._cut_half_connected))
        self._calls.add(taking)
        taking.add_done_callback(self._calls.discard)
        try:
            return await asyncio.shield(taking)
        except asyncio.CancelledError:
            taking.cancel()
            taking.add_done_callback(functools.partial(self._give_back, pool))
            raise

    def _give_back(self, pool: Any, taking: asyncio.Task[Any]) -> None:
        """A connection taken for a caller that was cancelled meanwhile goes back to the pool."""
        if taking.cancelled() or taking.exception() is not None:
            return
        task = asyncio.get_running_loop().create_task(pool.release(taking.result()))
        self._drops.add(task)
        task.add_done_callback(self._drops.discard)

    async def _read(self, conn: Any) -> None:
        """Read replies while any is pending; each goes to the oldest pending future."""
        pending = self._pending
        loop = asyncio.get_running_loop()
        try:
            while self._link is conn:
                while pending and self._link is conn:
                    try:
                        reply = await conn.read_response(disconnect_on_error=False)
                    except _rexc.ResponseError as exc:  # an error reply: the connection is fine
                        reply = _busy(exc)
                    if self._link is not conn:
                        break
                    fut, on_abandon, _ = pending.popleft()
                    if isinstance(reply, _rexc.ReadOnlyError):
                        # A replica: the primary this connection reached was demoted (failover).
                        # Connections made from now on may reach the new one (a DNS name or a
                        # VIP moved to it): drop this one, the next call connects afresh.
                        if not fut.done():
                            fut.set_exception(reply)
                        self._break(reply)
                        return
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
                timer = loop.call_later(_READER_LINGER, wake, more)
                try:
                    await more
                finally:
                    timer.cancel()
                    self._more = None
                if not pending:
                    break
        except BaseException as exc:
            if self._link is conn:
                # Cancelled from outside (the loop is shutting down: aclose() drops the pipe
                # before it cancels the reader): fail the pending calls but start no task; the
                # connection is closed with its client.
                self._break(exc, drop=isinstance(exc, Exception))
            if not isinstance(exc, Exception):
                raise
        finally:
            with contextlib.suppress(RuntimeError):  # closed by GC after its loop was closed
                if self._reader is asyncio.current_task():
                    self._reader = None

    def _break(self, exc: BaseException, *, drop: bool = True) -> None:
        """Drop the connection: every pending call fails as unavailable (its outcome unknown)."""
        conn, self._link = self._link, None
        pending = list(self._pending)
        self._pending.clear()
        reader, self._reader = self._reader, None
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        self._late = None
        for fut, _, _ in pending:
            if not fut.done():
                err = _rexc.ConnectionError(f"connection to Redis lost: {describe(exc)}")
                err.__cause__ = exc
                fut.set_exception(err)
        if conn is not None and drop:
            pool = self._client.connection_pool  # type: ignore[union-attr]

            async def close_and_release() -> None:
                try:
                    await conn.disconnect(nowait=True)
                finally:
                    await pool.release(conn)

            task = asyncio.get_running_loop().create_task(close_and_release())
            self._drops.add(task)
            task.add_done_callback(self._drops.discard)

    async def aclose(self) -> None:
        """Drop the pipe's connection (back to the client's pool) and end the reader; calls
        through the client still running get ``timeout`` to finish, then are cancelled."""
        self.closed = True
        reader = self._reader
        if self._link is not None or reader is not None:
            self._break(_rexc.ConnectionError("limiter closed"))
        tasks = [t for t in (reader, *self._drops, *self._calls) if t is not None]
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=self.timeout)
            late &= self._calls  # the reader and the drops end by themselves
            await cancel_late(late, self.timeout, "closing a limiter's pipe")

    async def _via_client(
        self,
        script: Script,
        calls: list[tuple[tuple[str, ...], tuple[Any, ...]]],
        on_abandon: Callable[[Any], None] | None = None,
    ) -> list[Any]:
        # Each call runs in a task of its own, which the caller awaits without cancelling it:
        # a caller that is cancelled or whose deadline passes abandons the reply, as on the pipe
        # (on_abandon gets it), at once. Cancelling redis-py mid-call instead would close the
        # connection (the next call pays a reconnect) and keep the caller until redis-py has
        # cleaned up. The call itself stays bounded by call_timeout, and aclose() ends it.
        call = asyncio.get_running_loop().create_task(self._client_call(script, calls))
        self.sent += 1
        self._calls.add(call)
        call.add_done_callback(self._calls.discard)
        try:
            return await asyncio.shield(call)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if call.cancelled() and (task is None or not task.cancelling()):
                # aclose() ended the call; the caller was not cancelled.
                raise _rexc.ConnectionError("the limiter was closed (aclose())") from None
            # (also read when there is no on_abandon: an abandoned call's failure is expected,
            # not a "Task exception was never retrieved" for asyncio to log)
            call.add_done_callback(functools.partial(_hand_back, on_abandon))
            raise

    async def _client_call(
        self, script: Script, calls: list[tuple[tuple[str, ...], tuple[Any, ...]]]
    ) -> list[Any]:
        """Each of ``calls`` through the client: the reply of each, or its error reply (an
        exception); a failure of the whole (no connection, a timeout) is raised."""
        # One call at a time, in call order: the tasks start in the order they were created
        # and asyncio.Lock is FIFO, so Redis runs this process's scripts in the order they were
        # called, as on the pipe.
        if self._order is None:
            self._order = asyncio.Lock()
        try:
            async with Bound(self.timeout), self._order:
                if self._pooled:
                    replies = await self._pool_call(script, calls)
                else:
                    # Cluster (or single-connection) clients route and retry by their own
                    # policy; configure their retries off to keep "never replay an
                    # indeterminate call" (docs/redis.md).
                    replies = [await self._client_evalsha(script, *call) for call in calls]
        except _rexc.AuthenticationError as exc:
            raise refused(exc) from exc
        except TimeoutError as exc:
            raise _rexc.TimeoutError(f"no reply from Redis within {self.timeout}s") from exc
        except _rexc.ResponseError as exc:  # SCRIPT LOAD's error reply
            if (err := self._error_reply(exc)) is not exc:
                raise err  # noqa: B904 (its cause is set)
            raise
        return [self._error_reply(r) if isinstance(r, _rexc.ResponseError) else r for r in replies]

    async def _client_evalsha(
        self, script: Script, keys: tuple[str, ...], args: tuple[Any, ...]
    ) -> Any:
        """EVALSHA through a cluster (or single-connection) client: its reply, or its error
        reply (an exception); NOSCRIPT answered by SCRIPT LOAD and one more EVALSHA."""
        client: Any = self._client
        try:
            try:
                return await client.evalsha(script.sha, len(keys), *keys, *args)
            except _rexc.NoScriptError:
                self._loaded += 1
                await client.script_load(script.source)
                return await client.evalsha(script.sha, len(keys), *keys, *args)
        except _rexc.ResponseError as exc:
            return exc

    def _error_reply(self, exc: _rexc.ResponseError) -> BaseException:
        """An error reply of the public path as the limiters take it (:func:`_busy`)."""
        if isinstance(exc, _rexc.ReadOnlyError):
            # A demoted primary (failover): redis-py keeps its pooled connections to it. The
            # idle ones are dropped, so that the next call connects afresh (the address may
            # lead to the new primary by now), as the pipe does.
            pool = getattr(self._client, "connection_pool", None)
            if pool is not None:
                drop = asyncio.get_running_loop().create_task(
                    pool.disconnect(inuse_connections=False)
                )
                self._drops.add(drop)
                drop.add_done_callback(self._drops.discard)
            return exc
        return _busy(exc)

    async def _pool_call(
        self, script: Script, calls: list[tuple[tuple[str, ...], tuple[Any, ...]]]
    ) -> list[Any]:
        """EVALSHA for each of ``calls``, all written at once on a connection of the client's
        pool by redis-py's public connection API, then their replies read in order: each reply,
        or its error reply as an exception.

        Not ``client.evalsha``: the client runs every command under its retry policy, which
        after a dropped connection or a timeout (the script may have run) connects again and
        sends the script again. Here a call is sent once; only NOSCRIPT (the script did not
        run) is answered by SCRIPT LOAD and one more EVALSHA. The replies are read by the
        connection as the client reads them (``decode_responses`` included).
        """
        pool: Any = self._client.connection_pool  # type: ignore[union-attr]
        conn = await self._take_shielded(pool)
        try:
            replies = await _evalsha_all(conn, script, calls)
            again = [i for i, reply in enumerate(replies) if isinstance(reply, _rexc.NoScriptError)]
            if again:
                self._loaded += 1
                await _send_packed(conn, conn.pack_command("SCRIPT", "LOAD", script.source))
                await conn.read_response()
                retried = await _evalsha_all(conn, script, [calls[i] for i in again])
                for i, reply in zip(again, retried, strict=True):
                    replies[i] = reply
            if any(isinstance(reply, _rexc.ReadOnlyError) for reply in replies):
                await conn.disconnect(nowait=True)  # a demoted primary's: see _error_reply
            return replies
        except BaseException as exc:
            if not isinstance(exc, _rexc.ResponseError) or isinstance(exc, _rexc.ReadOnlyError):
                # A reply may still be on its way (a timeout, a cancellation, a lost
                # connection): the connection is out of step with its replies and is closed
                # before it goes back, as redis-py does. (An error reply leaves it in step;
                # READONLY: it reached a demoted primary, see _error_reply.)
                await conn.disconnect(nowait=True)
            raise
        finally:
            await pool.release(conn)


async def _evalsha_all(
    conn: Any, script: Script, calls: list[tuple[tuple[str, ...], tuple[Any, ...]]]
) -> list[Any]:
    """Write EVALSHA for each of ``calls`` on ``conn`` at once, then read their replies: each
    reply, or its error reply (a ``ResponseError``, which leaves the connection in step)."""
    await _send_packed(
        conn,
        conn.pack_commands(
            [("EVALSHA", script.sha, len(keys), *keys, *args) for keys, args in calls]
        ),
    )
    replies: list[Any] = []
    for _ in calls:
        try:
            replies.append(await conn.read_response())
        except _rexc.ResponseError as exc:
            replies.append(exc)
    return replies


def _late_abandon(fut: asyncio.Future[Any], on_abandon: Callable[[Any], None] | None) -> None:
    """A caller cancelled while it awaited its reply abandons it: the reader hands a reply still
    to come to ``on_abandon`` (the future is cancelled); one that had come already (the reader
    set it, and the cancellation reached the caller before the caller ran) is handed here."""
    if on_abandon is not None and fut.done() and not fut.cancelled() and fut.exception() is None:
        on_abandon(fut.result())


async def _send_packed(conn: Any, packed: Any) -> None:
    """``conn.send_packed_command(packed)``, raising the cancellation redis-py may lose meanwhile.

    With a ``socket_timeout``, redis-py sends through ``asyncio.wait_for``, which on Python
    3.11 returns normally when the cancellation lands as the send completes: the call would
    go on to wait for its reply (up to ``socket_timeout``) past its bound. The request is still
    counted by the task (``cancelling()``), so it is raised here: the command was written, and
    the call ends as any call cancelled after its send (its outcome unknown)."""
    task = asyncio.current_task()
    before = task.cancelling() if task is not None else 0
    try:
        await conn.send_packed_command(packed)
    except RuntimeError as exc:
        # uvloop refuses a write on a transport closed meanwhile (the client disconnected its
        # pool while the connection was being taken; redis-py < 8 still counts it connected
        # while it closes): the connection was lost.
        raise _rexc.ConnectionError(f"connection to Redis lost: {describe(exc)}") from exc
    if task is not None and task.cancelling() > before:
        raise asyncio.CancelledError


async def _take(
    pool: Any, cut_half_connected: Callable[[Any, BaseException], Awaitable[None]] | None
) -> Any:
    try:
        return await pool.get_connection()
    except _rexc.AuthenticationError as exc:
        raise refused(exc) from exc
    except asyncio.CancelledError as exc:
        # Cancelled while the connection's handshake awaited something else than Redis (the
        # client's credential provider), redis-py < 8.2 gave it back to the pool connected,
        # without its AUTH and SELECT: it is cut here, so that its next use connects again.
        if cut_half_connected is not None:
            with contextlib.suppress(Exception):  # (the cancellation goes on)
                await cut_half_connected(pool, exc)
        raise


def refused(exc: _rexc.AuthenticationError) -> _rexc.ResponseError:
    """Redis refused the client's credentials. redis-py's error for it is a ConnectionError,
    but Redis did answer: a wrong password is a configuration error, never an outage for
    ``on_error`` or a ``fallback`` to answer (they would admit every caller unchecked for as
    long as the configuration stays wrong)."""
    return _rexc.ResponseError(
        f"Redis refused the credentials of the limiter's client ({describe(exc)}):"
        " check its username and password"
    )


def _hand_back(on_abandon: Callable[[Any], None] | None, call: asyncio.Task[list[Any]]) -> None:
    """The reply of a call its caller abandoned goes to ``on_abandon`` (when it came)."""
    if not call.cancelled() and call.exception() is None and on_abandon is not None:
        (reply,) = call.result()
        if not isinstance(reply, Exception):
            on_abandon(reply)
