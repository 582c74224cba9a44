"""Bounds on silent peers for the driver pools: TCP keepalive, ``TCP_USER_TIMEOUT``,
connect timeouts, and expiring a pool on a failover error.

A peer that dies without a FIN or RST (a host that lost power, a network that
drops everything) leaves a socket that looks open for hours: the kernel's
keepalive starts after two hours by default. The driver pools turn keepalive on
for every connection with the values below, so the kernel declares such a peer
dead within :data:`SILENT_PEER_BOUND` seconds: an idle connection's socket then
reports an error (the pool discards it at checkout) and an operation waiting on
it fails with a connection error (the pool discards the connection).
"""

from __future__ import annotations

import asyncio
import functools
import socket
import weakref
from typing import Any

from ._logs import get_logger

logger = get_logger("aiolease.pool")

#: Seconds of silence before the first keepalive probe.
KEEPALIVE_IDLE = 5
#: Seconds between probes.
KEEPALIVE_INTERVAL = 2
#: Unanswered probes before the connection is declared dead.
KEEPALIVE_COUNT = 3
#: Seconds within which a silent peer is detected: while waiting for an answer
#: (keepalive: idle + interval x count) and while sent data goes unacknowledged
#: (``TCP_USER_TIMEOUT``, set to the same bound).
SILENT_PEER_BOUND = KEEPALIVE_IDLE + KEEPALIVE_INTERVAL * KEEPALIVE_COUNT
#: Default seconds a driver pool waits for a new connection (TCP, TLS, authentication).
DEFAULT_CONNECT_TIMEOUT = 10.0
#: Seconds the clean-up of a cancelled statement (atomic's ROLLBACK, the close of a
#: connection released mid-statement) waits for the server to answer the driver's cancel
#: request before the connection is cut: a live server answers within a round trip or
#: two, a silent peer never does, and meanwhile the connection's pool slot stays taken.
CANCEL_GRACE = 0.5
#: Within that grace, the first wait for a cancelled statement's end before the cancel request
#: is sent again, as a share of the grace; each later wait doubles. PostgreSQL drops a request
#: that overtook its statement (it travels on a connection of its own).
CANCEL_RESEND_FIRST = 0.1

#: libpq conninfo parameters with the same meaning (``tcp_user_timeout`` in milliseconds).
LIBPQ_KEEPALIVE: dict[str, str] = {
    "keepalives": "1",
    "keepalives_idle": str(KEEPALIVE_IDLE),
    "keepalives_interval": str(KEEPALIVE_INTERVAL),
    "keepalives_count": str(KEEPALIVE_COUNT),
    "tcp_user_timeout": str(SILENT_PEER_BOUND * 1000),
}


def set_keepalive(sock: Any) -> bool:
    """Turn on keepalive (and ``TCP_USER_TIMEOUT``) on a TCP socket with the values above,
    each option where the platform has it. Returns False when ``sock`` is not a TCP
    socket (a Unix socket has no use for them) or refuses the options."""
    if sock is None or getattr(sock, "family", None) not in (socket.AF_INET, socket.AF_INET6):
        return False
    options = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    for name, value in (
        ("TCP_KEEPIDLE", KEEPALIVE_IDLE),
        ("TCP_KEEPALIVE", KEEPALIVE_IDLE),  # macOS's name for TCP_KEEPIDLE
        ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
        ("TCP_KEEPCNT", KEEPALIVE_COUNT),
        ("TCP_USER_TIMEOUT", SILENT_PEER_BOUND * 1000),  # milliseconds
    ):
        if hasattr(socket, name):
            options.append((socket.IPPROTO_TCP, getattr(socket, name), value))
    try:
        for level, option, value in options:
            sock.setsockopt(level, option, value)
    except (OSError, AttributeError, NotImplementedError) as exc:
        logger.debug("cannot set keepalive options on %r: %r", sock, exc)
        return False
    return True


def connect_timed_out(pool_name: str, bounds: str) -> TimeoutError:
    """The error of a connect that outlasted its bounds (``bounds``: which, in seconds),
    in place of the bare ``TimeoutError()`` the drivers and ``asyncio.timeout`` raise:
    an acquirer that gets it sees which server and which timeout."""
    return TimeoutError(f"connecting to {pool_name} timed out ({bounds})")


class PoolExpirer:
    """Expires the pool a manager serves (``pool.expire()``) when a connection reports
    a failover: the server became read-only or is shutting down. Every connection of
    the pool points at the old server then; fresh ones go where the DSN's host list
    and ``target_session_attrs`` point now. At most one expiry runs at a time.

    Not every such error is news about the server. Each expiry starts an *epoch*; the
    manager stamps each connection with the epoch its creation began in and whether
    the server called the session read-only when it connected (:meth:`connected`).
    The error only discards its own connection (:meth:`report` says it is fatal, no
    expiry) when:

    - the connection predates the latest expiry, which has retired it already (the
      old server's connections fail one by one after the first expired the pool);
    - the write was refused on a session that was writable when it connected: the
      session was turned read-only since (a holder's ``SET
      default_transaction_read_only``, or the server's configuration reloaded);
      replacing that one connection is enough;
    - the latest expiry came from a refused write and this connection, made since,
      found the server read-only too: reconnecting did not help (a database or role
      read-only by configuration, written to by mistake), so expiring every connection
      again on each such write would only churn them.
    """

    __slots__ = ("_born", "_epoch", "_epoch_by_refusal", "_pool", "_task")

    def __init__(self) -> None:
        self._pool: weakref.ref[Any] | None = None
        self._task: asyncio.Task[None] | None = None
        self._epoch = 0
        self._epoch_by_refusal = False  # the latest expiry came from a refused write
        # Each live connection's (epoch its creation began in, read-only when it connected).
        self._born: weakref.WeakKeyDictionary[Any, tuple[int, bool]] = weakref.WeakKeyDictionary()

    def bind(self, pool: Any) -> None:
        """The pool to expire (called by the driver's ``create_pool``)."""
        self._pool = weakref.ref(pool)

    @property
    def epoch(self) -> int:
        """The current epoch: a manager reads it when a creation begins."""
        return self._epoch

    def connected(self, conn: Any, epoch: int, *, read_only: bool) -> None:
        """Stamp a new connection: the epoch its creation began in, and whether the
        server called its session read-only (or did not say) when it connected."""
        self._born[conn] = (epoch, read_only)

    def report(self, conn: Any, exc: BaseException, *, refused_write: bool) -> None:
        """A failover error on ``conn``: a shutdown error (``refused_write`` False) or
        a write refused by a server that calls the session read-only. Expires the pool
        unless the error is only about ``conn`` (see the class docstring); the caller
        discards ``conn`` either way."""
        epoch, born_read_only = self._born.get(conn, (self._epoch, True))
        if epoch < self._epoch:
            return
        if refused_write and (not born_read_only or self._epoch_by_refusal):
            return
        pool = None if self._pool is None else self._pool()
        if pool is None or (self._task is not None and not self._task.done()):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # pragma: no cover - is_fatal runs on the pool's loop
            return
        self._epoch += 1
        self._epoch_by_refusal = refused_write
        logger.warning("%r: the server failed over (%r): expiring every connection", pool, exc)
        self._task = loop.create_task(pool.expire())
        self._task.add_done_callback(functools.partial(_log_failure, pool))


def _log_failure(pool: Any, task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.warning("%r: expiring the pool after a failover failed: %r", pool, task.exception())
