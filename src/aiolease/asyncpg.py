"""asyncpg integration: ``create_pool(dsn, ...)`` → ``Pool[asyncpg.Connection]``.

Install with ``pip install aiolease[asyncpg]``.
"""

from __future__ import annotations

import asyncio
import functools
import select
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal, cast

from . import _validate
from ._driver_args import (
    check_configure,
    check_connect_kwargs,
    check_connection_string,
    keywords_of,
    run_configure,
)
from ._lease import LeaseProxies, forget_relays
from ._liveness import (
    CANCEL_GRACE,
    DEFAULT_CONNECT_TIMEOUT,
    PoolExpirer,
    connect_timed_out,
    set_keepalive,
)
from ._logs import get_logger
from ._pool import Pool
from ._redact import dsn_label, dsn_secrets, redact, scrubbed
from .abc import Manager, ResourceInfo

try:
    import asyncpg
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "aiolease.asyncpg needs the asyncpg driver: pip install 'aiolease[asyncpg]'"
    ) from exc

from asyncpg.cursor import Cursor, CursorFactory
from asyncpg.prepared_stmt import PreparedStatement
from asyncpg.transaction import Transaction

# (after the driver: the fence imports asyncpg too, and the error above names the extra)
from ._compat.asyncpg import (
    HAVE_SOCKET,
    SEES_CANCELLING,
    cancelling,
    connection_socket,
    end_cancelled,
    end_transaction,
    transaction_pending,
    transport_of,
)
from ._compat.asyncpg import PRIVATE as COMPAT_PRIVATE

if TYPE_CHECKING:
    from asyncpg import Connection
else:
    Connection = asyncpg.Connection

__all__ = ["AsyncpgManager", "create_pool"]

# What asyncpg.connect() takes besides the DSN (it has no **kwargs): anything else is a
# typo, refused at the call rather than at the first connect.
_CONNECT_KEYWORDS = (keywords_of(asyncpg.connect) or frozenset()) - {"dsn"}

logger = get_logger("aiolease.pool.asyncpg")

Reset = Literal["transaction", "session"]

#: The type of ``configure``: an async function called with each new connection.
Configure = Callable[["Connection"], Awaitable[object]]


_HAVE_POLL = hasattr(select, "poll")

# Errors in the body that mean the connection itself is gone or unusable: the
# server went away (class 08, admin/crash shutdown), the socket failed, or the
# driver's protocol state is confused (e.g. after an unsolicited FATAL message).
_FATAL_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.InternalClientError,
)

# A statement asyncpg's statement cache names is not on the server (a holder ran
# DEALLOCATE ALL or DISCARD ALL, or a pooler moved the session): asyncpg keeps the stale
# entry, so every later run of that query on the connection fails the same way.
_STALE_STATEMENT = asyncpg.exceptions.InvalidSQLStatementNameError

# Errors that say the server stopped being the primary we want: it became read-only
# (25006, when the session's server reports itself read-only: see _read_only_server) or
# is shutting down or starting up (57P01 admin shutdown, 57P02 crash, 57P03 cannot
# connect now). The whole pool is expired then (see PoolExpirer).
_SHUTDOWN_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
)

# The callbacks asyncpg's ``Connection.reset()`` removes (by the kind of their add_ method).
_RESET_REMOVES = ("listener", "log_listener")

# Why a connection gets the verifying round trip (in the error when it fails).
_IDLE_DATA = "after unread data while idle"
_UNSEEN_STATEMENT = (
    "at release (whether a statement still runs cannot be seen with AIOLEASE_COMPAT=public)"
)

#: Seconds asyncpg's ``command_timeout`` defaults to in public mode
#: (``AIOLEASE_COMPAT=public``), where the socket is out of reach for keepalive.
PUBLIC_COMMAND_TIMEOUT = 60.0


def _read_only_server(conn: Connection) -> bool:
    """Whether the server says the session is read-only by default or a hot standby
    (PostgreSQL 14+ reports both parameters; unknown counts as yes: a 25006 from an
    older server is taken for a failover)."""
    settings = conn.get_settings()
    reported = [
        getattr(settings, n, None) for n in ("in_hot_standby", "default_transaction_read_only")
    ]
    return all(v is None for v in reported) or "on" in reported


def _socket_fd(conn: Connection) -> int | None:
    """The file descriptor of the connection's socket, or None where there is none to poll.

    Every transport asyncpg runs on exposes one: asyncio's as a ``TransportSocket``,
    uvloop's as a ``PseudoSocket`` (neither is a ``socket.socket``, both have ``fileno()``).
    """
    transport = transport_of(conn)
    if transport is None:
        return None
    try:
        fd = transport.get_extra_info("socket").fileno()
    except Exception:  # no socket (closed, or an exotic transport)
        return None
    return fd if isinstance(fd, int) and fd >= 0 else None


def _quiet(conn: Connection, watch: _Watch | None = None) -> bool:
    """Whether an idle connection's socket has nothing unread: no data, no EOF, no error.

    A server that terminates a backend (``pg_terminate_backend``, shutdown)
    sends a FATAL message and closes the socket; asyncpg notices only when the
    event loop next polls that socket, so until then ``is_closed()`` is still
    False. Polling the socket (one ``poll(0)``, or a non-blocking
    ``select`` where there is no ``poll``; no round trip) sees what the
    loop has not read yet. Unknowable (no socket): True. ``watch``: the connection's,
    which keeps the poll object from one call to the next.
    """
    poller = None if watch is None else watch.poller
    if poller is None:
        fd = _socket_fd(conn)
        if fd is None:
            return True
        if not _HAVE_POLL:  # (Windows) select() on the descriptor: readable means data or EOF
            return not select.select([fd], [], [], 0)[0]
        # A poll object registered once per connection (kept by its watch): poll(0) is one
        # cheap syscall, and it needs only the descriptor, which uvloop's transports
        # expose too (not a socket.socket).
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLPRI)
        if watch is not None:
            watch.poller = poller
    return not poller.poll(0)  # any event: data, EOF, hang-up, error


class _Watch:
    """Sits between an idle pooled connection's transport and asyncpg's protocol,
    counting the chunks of data that arrive.

    A server that drops a backend sends a FATAL message first and closes the
    socket a moment later. If the event loop runs in between, asyncpg reads
    the FATAL message (it is unexpected while idle, and asyncpg only records
    it) but still reports the connection open, and the socket has nothing
    left to peek at. The count tells the pool that an idle connection heard
    from the server, which a healthy idle connection never does (except for
    notifications, which the verifying round trip tells apart). The rest of
    the protocol interface a transport calls (``connection_made``,
    ``connection_lost``, ``eof_received``, ``pause_writing``,
    ``resume_writing``) is passed on untouched, method by method: a catch-all
    ``__getattr__`` would slow down every read of the watch's own fields, which
    each checkout and release makes.

    It is put in the data path once, when the connection is made, through the
    transport's public ``set_protocol()``, and stays there for the connection's life
    (a call per chunk received). The manager keeps it by connection from
    :meth:`AsyncpgManager.create` to :meth:`AsyncpgManager.close` (or ``abort``), so
    the hooks of each checkout and release find it with a dict lookup.
    """

    __slots__ = ("_inner", "poller", "received", "seen")

    def __init__(self, protocol: Any) -> None:
        self._inner = protocol
        self.received = 0  # chunks received so far
        self.seen = 0  # `received` when the connection last went idle
        self.poller: Any = None  # select.poll() on the socket, made on first use (see _quiet)

    def data_received(self, data: bytes) -> None:
        self.received += 1
        self._inner.data_received(data)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._inner.connection_lost(exc)

    def eof_received(self) -> bool | None:
        return cast("bool | None", self._inner.eof_received())

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


def _install_watch(conn: Connection) -> _Watch | None:
    """Make the connection's watch (see :class:`_Watch`) and put it in the data path;
    None where the transport cannot be watched."""
    transport = transport_of(conn)
    if transport is None:
        return None  # nothing to watch: every checkout of an idle connection is verified
    try:
        protocol = transport.get_protocol()
        if isinstance(protocol, _Watch):
            return protocol
        watch = _Watch(protocol)
        transport.set_protocol(cast(asyncio.BaseProtocol, watch))
    except Exception as exc:  # an exotic transport: fall back to polling the socket alone
        logger.debug("cannot watch %r for unsolicited messages: %r", conn, exc)
        return None
    return watch


# What RESET ALL leaves behind that a new session does not have: the role a holder switched
# to (``SET ROLE``, ``SET SESSION AUTHORIZATION``, which RESET ALL skips) and its temporary
# tables. Sent with asyncpg's own reset query, in its round trip (see _session_reset_class).
_RESET_AUTHORIZATION = "SET SESSION AUTHORIZATION DEFAULT;\nRESET ROLE;"
_RESET_TEMPORARY = "DISCARD TEMP;"


@functools.cache
def _session_reset_class(base: type[Connection]) -> type[Connection]:
    """``base`` (asyncpg's ``Connection`` or the user's ``connection_class``) whose session
    reset also restores the role and drops temporary tables: asyncpg's public hook,
    ``Connection.get_reset_query()``, which ``Connection.reset()`` sends. Extended only
    where asyncpg's query has ``RESET ALL`` (a server that supports it: PostgreSQL).

    Raises:
        TypeError: ``base`` is not a subclass of ``asyncpg.Connection``.
    """
    if not (isinstance(base, type) and issubclass(base, asyncpg.Connection)):
        raise TypeError(f"connection_class must be a subclass of asyncpg.Connection, got {base!r}")

    class SessionResetConnection(base):  # type: ignore[valid-type,misc]
        __slots__ = ()

        def get_reset_query(self) -> str:
            query: str = super().get_reset_query()
            if "RESET ALL" not in query:
                return query
            return f"{_RESET_AUTHORIZATION}\n{query}\n{_RESET_TEMPORARY}"

    SessionResetConnection.__qualname__ = f"SessionReset[{base.__qualname__}]"
    return SessionResetConnection


class AsyncpgManager(LeaseProxies["Connection"], Manager["Connection"]):
    """Creates, vets, resets and closes asyncpg connections for a :class:`~aiolease.Pool`.

    Checkout (:meth:`check_needed`, :meth:`check`) costs no round trip for a
    healthy idle connection. A connection whose backend the server terminated
    while it sat idle (``pg_terminate_backend``, a restart) is never handed
    out, even before asyncpg has noticed: the pool looks for anything the
    server sent while the connection was idle, both still unread in the
    socket (a non-blocking ``poll``) and already read by the event loop
    (a count kept by a thin wrapper around asyncpg's protocol); only then does
    a ``SELECT 1`` round trip decide. A connection killed while in use fails
    the body with a connection error, which :meth:`is_fatal` recognises, so it
    is closed rather than reused. A release polls the socket too (one ``poll(0)``):
    a connection with data the loop has not read yet gets the ``SELECT 1`` round
    trip before it goes to a waiting acquirer, which no checkout check precedes.

    Choosing ``reset`` (the trade-off):

    ========================  ===========================  ==============================
    left behind by a user     ``"transaction"`` (default)  ``"session"``
    ========================  ===========================  ==============================
    open / failed transaction rolled back                  rolled back
    query still running       connection discarded         connection discarded
    ``SET`` settings          **kept** for the next user   ``RESET ALL``
    ``SET ROLE``, ``SET       **kept**                     ``SET SESSION AUTHORIZATION
    SESSION AUTHORIZATION``                                DEFAULT``, ``RESET ROLE``
    temporary tables          **kept**                     ``DISCARD TEMP``
    advisory locks            **kept** (still held)        ``pg_advisory_unlock_all()``
    ``LISTEN``                **kept**                     ``UNLISTEN *``
    prepared/cursor state     kept                         ``CLOSE ALL`` (and listeners)
    cost per release          one ``poll(0)``; a round     one round trip, always
                              trip if a transaction was
                              left open
    ========================  ===========================  ==============================

    Use ``"transaction"`` when your code does not change session state (or
    scopes it with ``SET LOCAL`` / transaction-level advisory locks): it is
    the fast default. Use ``"session"`` when callers may ``SET``, lock or
    ``LISTEN`` at session level and the next user must not inherit that. With
    ``AIOLEASE_COMPAT=public`` every release costs a ``SELECT 1`` round trip in either mode
    (see :meth:`reset_needed`).

    Args:
        dsn: the connection string, passed to :func:`asyncpg.connect`.
        reset: ``"transaction"`` (default) rolls back a transaction left open
            and discards a connection that is busy or broken; session state
            (``SET``, temporary tables, advisory locks, ``LISTEN``) carries over
            to the next user, and a release costs no round trip when no
            transaction is open. ``"session"`` runs asyncpg's full session
            reset on every release (``RESET ALL``, ``UNLISTEN *``, unlock
            advisory locks, ``CLOSE ALL``) as asyncpg's own pool does, and in the
            same round trip restores the role (``SET SESSION AUTHORIZATION
            DEFAULT``, ``RESET ROLE``: ``RESET ALL`` leaves both) and drops
            temporary tables (``DISCARD TEMP``): isolated, but one extra round
            trip per release. It connects with a subclass of ``connection_class``
            (default ``asyncpg.Connection``) whose ``get_reset_query()`` adds those.
        reset_timeout: seconds a reset (or the verifying round trip of a
            suspicious idle connection, see :meth:`check`) may take before the
            connection is discarded.
        close_timeout: seconds a graceful close may take; the pool then abandons it
            and cuts the socket (:meth:`abort`).
        connect_timeout: seconds a new connection may take (TCP, TLS, startup,
            authentication; default 10), passed to :func:`asyncpg.connect` as
            ``timeout`` unless you give one, and enforced around it.
        pgbouncer: True when the DSN points at PgBouncer in transaction (or
            statement) pooling mode: asyncpg's statement cache is turned off
            (``statement_cache_size=0``: no named prepared statements, which another
            client's server connection would not have), and ``reset="session"`` is
            refused (a session there is not ours to reset).
        configure: an async function called once with each new connection (the
            ``asyncpg.Connection`` itself, not a lease), after it connects and before
            it is first handed out: register codecs (``set_type_codec``) there. Its
            failure fails the creation (the connection is closed, the acquirer gets
            the error); a configure that leaves a transaction open or closes the
            connection fails it too. Codecs it sets survive every reset at release; a
            ``SET`` it runs does not survive ``reset="session"`` (``RESET ALL``: give
            session settings as ``server_settings=`` instead, which it goes back to).
        configure_timeout: seconds ``configure`` may take (default 10); past it the
            connection is closed and the creation fails with a ``TimeoutError``.
        **connect_kwargs: passed to :func:`asyncpg.connect`.
    """

    # What a lease makes that can run statements later (see aiolease._lease.Guarded).
    _making = frozenset({"prepare", "cursor", "transaction"})
    _guarded = (PreparedStatement, CursorFactory, Cursor, Transaction)
    # Callbacks asyncpg calls with the connection: they get the lease that added them.
    _callbacks = frozenset(
        f"{verb}_{kind}"
        for verb in ("add", "remove")
        for kind in ("listener", "log_listener", "termination_listener")
    )

    def __init__(
        self,
        dsn: str | None = None,
        *,
        reset: Reset = "transaction",
        reset_timeout: float = 5.0,
        close_timeout: float = 5.0,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        pgbouncer: bool = False,
        configure: Configure | None = None,
        configure_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        **connect_kwargs: Any,
    ) -> None:
        check_connection_string("dsn", dsn, allow_none=True)
        check_configure(configure)
        if reset not in ("transaction", "session"):
            raise ValueError(f'reset must be "transaction" or "session", got {reset!r}')
        check_connect_kwargs(
            connect_kwargs,
            _CONNECT_KEYWORDS,
            "asyncpg.connect()",
            (
                "reset",
                "reset_timeout",
                "close_timeout",
                "connect_timeout",
                "pgbouncer",
                "configure",
                "configure_timeout",
            ),
        )
        self.connect_timeout = _validate.seconds("connect_timeout", connect_timeout)
        self.configure = configure
        self.configure_timeout = _validate.seconds("configure_timeout", configure_timeout)
        if not isinstance(pgbouncer, bool):
            raise TypeError(f"pgbouncer must be a bool, got {pgbouncer!r}")
        if pgbouncer:
            if reset == "session":
                raise ValueError(
                    'reset="session" cannot be used with pgbouncer=True: in transaction '
                    'pooling the session belongs to PgBouncer; use reset="transaction"'
                )
            if connect_kwargs.setdefault("statement_cache_size", 0) != 0:
                raise ValueError(
                    "statement_cache_size must be 0 with pgbouncer=True, got "
                    f"{connect_kwargs['statement_cache_size']!r}"
                )
        self.pgbouncer = pgbouncer
        if reset == "session":
            connect_kwargs["connection_class"] = _session_reset_class(
                connect_kwargs.get("connection_class", asyncpg.Connection)
            )
        connect_kwargs.setdefault("timeout", self.connect_timeout)
        if not HAVE_SOCKET:
            # Public mode: no socket for keepalive, so an operation waiting on a silent
            # peer is bounded by asyncpg's own per-operation timeout instead.
            connect_kwargs.setdefault("command_timeout", PUBLIC_COMMAND_TIMEOUT)
        #: Expires the pool on a failover error (see is_fatal); bound by create_pool.
        self.failover = PoolExpirer()
        self.dsn = dsn
        self._secrets = dsn_secrets(dsn, connect_kwargs)
        self._pool_name = dsn_label(dsn, connect_kwargs)
        self._session_reset = reset == "session"  # (read on every release)
        self.reset_timeout = _validate.seconds("reset_timeout", reset_timeout)
        self.close_timeout = _validate.seconds("close_timeout", close_timeout)
        self.connect_kwargs = connect_kwargs
        # Each open connection's watch (see _Watch): made by create(), forgotten by
        # close() and abort(). None where the transport cannot be watched.
        self._watches: dict[Connection, _Watch] = {}

    @property
    def reset_mode(self) -> Reset:
        """``"transaction"`` or ``"session"``: see the class docstring."""
        return "session" if self._session_reset else "transaction"

    def __repr__(self) -> str:
        return f"<AsyncpgManager {self._pool_name!r} reset={self.reset_mode!r}>"

    def _aiolease_pool_name(self) -> str:
        """What an unnamed pool of this manager goes by in its repr, logs and metrics:
        ``server.address:server.port/db.namespace`` (see aiolease._redact.pool_label)."""
        return self._pool_name

    async def create(self) -> Connection:
        # asyncpg applies ``timeout`` to each step of connecting; the scope bounds the
        # whole (a second's grace, so that asyncpg's own timeout normally reports it).
        epoch = self.failover.epoch
        try:
            async with asyncio.timeout(self.connect_timeout + 1.0):
                conn: Connection = await scrubbed(
                    asyncpg.connect(self.dsn, **self.connect_kwargs), self._secrets
                )
        except TimeoutError as exc:
            raise connect_timed_out(
                self._pool_name,
                f"asyncpg's timeout={self.connect_kwargs['timeout']} s per step, "
                f"connect_timeout={self.connect_timeout:g} s",
            ) from exc
        # Keepalive: a silent peer is detected within SILENT_PEER_BOUND seconds.
        set_keepalive(connection_socket(conn))
        self.failover.connected(conn, epoch, read_only=_read_only_server(conn))
        if self.configure is not None:
            await self._configure(conn, self.configure)
        # After configure: what it received is no idle traffic (see _Watch).
        watch = _install_watch(conn)
        if watch is not None:
            self._watches[conn] = watch
        return conn

    async def _configure(self, conn: Connection, configure: Configure) -> None:
        """Run ``configure(conn)`` on a new connection (bounded by ``configure_timeout``);
        on any failure, cancellation included, close the connection (:meth:`_discard`)
        and re-raise.

        Raises:
            ConnectionError: ``configure`` closed the connection.
            RuntimeError: ``configure`` left a transaction open.
        """
        try:
            await run_configure(configure, conn, self.configure_timeout, self._pool_name)
            if conn.is_closed():
                raise ConnectionError(f"configure {configure!r} closed the new connection")
            if conn.is_in_transaction():
                raise RuntimeError(
                    f"configure {configure!r} left a transaction open on the new connection "
                    "(end what it begins): connection closed"
                )
        except BaseException:
            await self._discard(conn)
            raise

    async def _discard(self, conn: Connection) -> None:
        """Close a new connection whose ``configure`` failed: as the pool closes one
        (:meth:`close`, within ``close_timeout``: a query of configure's that a timeout or
        a cancellation interrupted gets its cancel answered first, or the server would
        run it on after the socket is gone), else cut (:meth:`abort`).

        Raises:
            CancelledError: cancelled meanwhile (the connection is cut first).
        """
        try:
            async with asyncio.timeout(self.close_timeout):
                await self.close(conn)
        except Exception:
            self.abort(conn)
        except BaseException:
            self.abort(conn)
            raise

    def check_needed(self, resource: Connection, info: ResourceInfo) -> bool:
        """No round trip for a healthy idle connection. Only a closed one, or one that
        received data while idle (read by the loop, see :class:`_Watch`, or still
        unread in its socket, see :func:`_quiet`), goes through :meth:`check`; so does
        every one where the connection's transport cannot be watched
        (``AIOLEASE_COMPAT=public``).
        """
        watch = self._watches.get(resource)
        return (
            watch is None
            or watch.received != watch.seen
            or resource.is_closed()
            or not _quiet(resource, watch)
        )

    async def check(self, resource: Connection, info: ResourceInfo) -> None:
        """Discard a closed connection; verify a suspicious one with a round trip.

        Raises:
            ConnectionError: the connection is closed, or the round trip failed
                (e.g. the server terminated the backend while it was idle).
        """
        if resource.is_closed():
            raise ConnectionError("connection was closed while idle (server restart or kill?)")
        if self.check_needed(resource, info):
            # Data while idle: a FATAL from a server that dropped us (the close follows),
            # or a harmless notification. A round trip tells them apart. No watch: the
            # round trip is the only way to know.
            await self._verify(resource)

    async def _verify(self, resource: Connection, why: str = _IDLE_DATA) -> None:
        """One ``SELECT 1`` round trip, bounded by :attr:`reset_timeout`.

        Raises:
            ConnectionError: it failed (e.g. the server terminated the backend).
        """
        try:
            async with asyncio.timeout(self.reset_timeout):
                await resource.execute("SELECT 1")
        except Exception as exc:  # any failure (incl. the driver's InternalClientError)
            raise ConnectionError(
                f"connection failed its check {why}: " + redact(repr(exc), self._secrets)
            ) from exc

    def reset_needed(self, resource: Connection, info: ResourceInfo) -> bool:
        """Whether the connection needs :meth:`reset` (called on every release): also when
        something sits unread in its socket (see :func:`_quiet`), since a release may go
        straight to a waiting acquirer, without the checkout's :meth:`check`. Always where
        asyncpg's in-flight state cannot be read (``AIOLEASE_COMPAT=public``): a statement
        whose timeout the holder caught may still run (its cancel request can be dropped),
        and only a round trip bounded by :attr:`reset_timeout` rules that out."""
        return (
            not SEES_CANCELLING
            or self._session_reset
            or resource.is_closed()
            or resource.is_in_transaction()
            or transaction_pending(resource)
            or cancelling(resource)
            or not _quiet(resource, self._watches.get(resource))
        )

    def on_idle(self, resource: Connection, info: ResourceInfo) -> None:
        """The connection sits idle from now on: reset its watch's count (anything it
        hears from here on is suspicious, see :class:`_Watch`)."""
        watch = self._watches.get(resource)
        if watch is not None:
            watch.seen = watch.received

    async def reset(self, resource: Connection, info: ResourceInfo) -> None:
        if resource.is_closed():
            raise ConnectionError("connection is closed")
        if cancelling(resource):
            raise ConnectionError("connection was released with a query still in flight")
        # The timeout goes to asyncpg, which times the round trip with one timer (cheaper
        # than an asyncio.timeout scope around it) and asks the server to cancel on expiry.
        if self._session_reset:
            await resource.reset(timeout=self.reset_timeout)
            forget_relays(resource, _RESET_REMOVES)
        elif resource.is_in_transaction() or transaction_pending(resource):
            logger.warning(
                "%s: rolling back a transaction left open on %r at release",
                self._pool_name,
                resource,
            )
            await end_transaction(resource, self.reset_timeout)
        else:
            # Data arrived since the holder's last operation, not read by the loop yet: a
            # FATAL from a terminated backend, or a notification; or (public mode) nothing
            # tells whether a statement still runs. A round trip tells.
            await self._verify(resource, _IDLE_DATA if SEES_CANCELLING else _UNSEEN_STATEMENT)

    async def close(self, resource: Connection) -> None:
        """Close gracefully; the pool bounds this by :attr:`close_timeout` and then
        calls :meth:`abort`. A connection released with a statement still being cancelled
        gets :data:`~aiolease._liveness.CANCEL_GRACE` seconds (asyncpg's close waits for
        the server to answer the cancel, which a silent peer never does), then is cut. In
        public mode (``AIOLEASE_COMPAT=public``) that cannot be seen, so every close gets
        that bound (a connection being closed loses nothing by being cut). Within the same
        bound, the cancel request is sent again while the statement has not ended (see
        :func:`aiolease._compat.asyncpg.end_cancelled`: the server drops a request that
        overtook its statement)."""
        self._watches.pop(resource, None)
        if resource.is_closed():
            return
        if SEES_CANCELLING and not cancelling(resource):
            await resource.close()
            return
        try:
            async with asyncio.timeout(CANCEL_GRACE):
                await end_cancelled(resource)
                await resource.close()
        except TimeoutError:
            resource.terminate()

    def abort(self, resource: Connection) -> None:
        """Cut the connection at once (``Connection.terminate()``: the socket is closed
        without a goodbye to the server)."""
        self._watches.pop(resource, None)
        resource.terminate()

    def is_fatal(self, resource: Connection, exc: BaseException) -> bool:
        """A closed connection, a connection error (a socket error, a connection-class or
        shutdown error, asyncpg's protocol confused by an unsolicited FATAL message), a
        prepared statement the server does not have (SQLSTATE 26000: asyncpg's statement
        cache is stale, after a ``DEALLOCATE ALL`` or ``DISCARD ALL``), and,
        where asyncpg's in-flight state cannot be read (``AIOLEASE_COMPAT=public``), a body
        that was cancelled or timed out: its query may still be running. A failover error
        (the server is read-only, or shutting down) also expires the whole pool, unless
        it is news about this connection only (see :class:`PoolExpirer`)."""
        refused_write = isinstance(
            exc, asyncpg.exceptions.ReadOnlySQLTransactionError
        ) and _read_only_server(resource)
        if refused_write or isinstance(exc, _SHUTDOWN_ERRORS):
            self.failover.report(resource, exc, refused_write=refused_write)
            return True
        return (
            resource.is_closed()
            or isinstance(exc, (*_FATAL_ERRORS, _STALE_STATEMENT))
            or (not COMPAT_PRIVATE and isinstance(exc, asyncio.CancelledError | TimeoutError))
        )


def create_pool(
    dsn: str | None = None,
    *,
    min_size: int = 0,
    max_size: int = 10,
    acquire_timeout: float | None = 30.0,
    max_waiting: int | None = None,
    max_lifetime: float | None = None,
    idle_timeout: float | None = None,
    leak_timeout: float | None = None,
    name: str | None = None,
    backoff_base: float = 0.1,
    backoff_max: float = 10.0,
    reset: Reset = "transaction",
    configure: Configure | None = None,
    **connect_kwargs: Any,
) -> Pool[Connection]:
    """An unopened :class:`~aiolease.Pool` of asyncpg connections.

    Open it with ``async with`` or ``await pool.open()``. Pool options are as
    for :class:`~aiolease.Pool`; ``reset`` and ``configure`` (and ``reset_timeout``,
    ``close_timeout``, ``connect_timeout``, ``pgbouncer``, ``configure_timeout``, passed on
    as keywords) are explained at :class:`AsyncpgManager`; everything else goes to
    :func:`asyncpg.connect`.

    Raises:
        TypeError: an unknown keyword (neither a Pool option nor one
            :func:`asyncpg.connect` takes), or an option of the wrong type.
        ValueError: a bad option value.
    """
    manager = AsyncpgManager(dsn, reset=reset, configure=configure, **connect_kwargs)
    pool = Pool(
        manager,
        min_size=min_size,
        max_size=max_size,
        acquire_timeout=acquire_timeout,
        max_waiting=max_waiting,
        max_lifetime=max_lifetime,
        idle_timeout=idle_timeout,
        leak_timeout=leak_timeout,
        name=name,
        backoff_base=backoff_base,
        backoff_max=backoff_max,
    )
    manager.failover.bind(pool)
    return pool
