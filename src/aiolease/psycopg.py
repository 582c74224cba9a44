"""psycopg 3 integration: ``create_pool(conninfo, ...)`` → ``Pool[psycopg.AsyncConnection]``.

Install with ``pip install aiolease[psycopg]``. Connections are opened in
autocommit mode by default: transactions are explicit (``aiolease.atomic`` or
``conn.transaction()``), so a released connection is idle unless a block was
left open, and the reset costs no round trip (after a lease that raised, it
re-synchronises psycopg's prepared statements with the server's). Checkout costs
no round trip either, yet never hands out a connection the server terminated
while it sat idle (see :class:`PsycopgManager`).
"""

from __future__ import annotations

import asyncio
import re
import select
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from . import _validate
from ._driver_args import (
    check_configure,
    check_connect_kwargs,
    check_connection_string,
    keywords_of,
    run_configure,
)
from ._lease import LeaseProxies
from ._liveness import DEFAULT_CONNECT_TIMEOUT, LIBPQ_KEEPALIVE, PoolExpirer, connect_timed_out
from ._logs import get_logger
from ._pool import Pool
from ._redact import dsn_label, dsn_secrets, redact, scrubbed
from .abc import Manager, ResourceInfo

try:
    import psycopg
    from psycopg import pq
    from psycopg.conninfo import make_conninfo
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "aiolease.psycopg needs the psycopg driver: pip install 'aiolease[psycopg]'"
    ) from exc

from ._compat.psycopg import CONNECTION_CLASS  # after the check above: it imports psycopg

__all__ = ["PsycopgManager", "create_pool"]

logger = get_logger("aiolease.pool.psycopg")

_TS = pq.TransactionStatus
_OK = pq.ConnStatus.OK
_PIPELINE_OFF = pq.PipelineStatus.OFF
_SEVERITY = pq.DiagnosticField.SEVERITY_NONLOCALIZED
AsyncConnection = psycopg.AsyncConnection[Any]
#: The type of ``configure``: an async function called with each new connection.
Configure = Callable[[AsyncConnection], Awaitable[object]]

# psycopg errors without a SQLSTATE that say nothing about the connection itself:
# every other OperationalError without one is the client library reporting a lost
# connection ("server closed the connection unexpectedly", "consuming input failed").
_NOT_FATAL = (psycopg.errors.PipelineAborted, psycopg.errors.CancellationTimeout)
# SQLSTATEs outside class 08 that the server only sends as FATAL, closing the session:
# admin/crash shutdown, cannot connect now, database dropped, idle (in transaction)
# session timeout. Listed so that an error whose diagnostics are missing still counts.
_FATAL_STATES = frozenset(("57P01", "57P02", "57P03", "57P04", "57P05", "25P03"))
# The server stopped being the primary we want: shutting down or starting up (the pool
# is expired then, see PoolExpirer), or read-only (25006: see _read_only_server).
_SHUTDOWN_STATES = frozenset(("57P01", "57P02", "57P03"))


def _read_only_server(conn: AsyncConnection) -> bool:
    """Whether the server says the session is read-only by default or a hot standby
    (PostgreSQL 14+ reports both; unknown counts as yes)."""
    try:
        reported = [
            conn.info.parameter_status(n)
            for n in ("in_hot_standby", "default_transaction_read_only")
        ]
    except psycopg.Error:  # the connection is gone: the error decides alone
        return True
    return all(v is None for v in reported) or "on" in reported


def _parse_conninfo(conninfo: str) -> dict[str, Any]:
    """The parameters of a conninfo string.

    Raises:
        ValueError: a malformed conninfo; the message never shows its password (libpq's
            own quotes the string whole).
    """
    try:
        return psycopg.conninfo.conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError as exc:
        # libpq quotes the piece it stumbled on ("unexpected spaces found in "a b"",
        # "invalid percent-encoded token: "..."", the whole URI): any but a parameter's
        # name may be (part of) the password.
        message = str(exc).strip()
        quoted = {q for q in re.findall(r'"([^"]*)"', message) if q not in _LIBPQ_KEYWORDS}
        error = f"malformed conninfo for psycopg: {redact(message, quoted)}"
    raise ValueError(error)  # outside the except clause: no __context__ with the string


# The names of libpq's connection parameters (never secret, shown in its errors).
_LIBPQ_KEYWORDS = frozenset(d.keyword.decode() for d in psycopg.pq.Conninfo.get_defaults())


def _conninfo_defaults(given: dict[str, Any], connect_kwargs: dict[str, Any]) -> None:
    """Add libpq's keepalive and TCP user timeout parameters to ``connect_kwargs``,
    each unless the conninfo string (``given``) or the keywords set it already."""
    for key, value in LIBPQ_KEEPALIVE.items():
        if key not in given:
            connect_kwargs.setdefault(key, value)


if hasattr(select, "poll"):
    _POLL_MASK = select.POLLIN | select.POLLPRI

    def _poller(fd: int) -> Any:
        """A ``select.poll`` object watching ``fd`` for input (and, always, errors)."""
        poller = select.poll()
        poller.register(fd, _POLL_MASK)
        return poller

    def _readable(fd: int) -> bool:
        """Whether the socket has anything to read (data, EOF) or an error, without blocking.

        One ``poll(2)`` with a zero timeout: no round trip, nothing consumed.
        POLLERR/POLLHUP/POLLNVAL are always reported, so a reset socket counts too.
        """
        return bool(_poller(fd).poll(0))

else:  # pragma: no cover - Windows: select() works on sockets there

    def _poller(fd: int) -> Any:
        return None

    def _readable(fd: int) -> bool:
        readable, _, broken = select.select([fd], [], [fd], 0)
        return bool(readable or broken)


class _Watch:
    """Wraps psycopg's notice handler on a pooled connection to spot a FATAL message,
    keeps the connection's poll object (registered once: each checkout then
    costs one ``poll(0)`` system call), and remembers that the last lease ended
    with an error (its reset then re-synchronises the prepared statements, see
    :func:`_resync_prepared`).

    A server that drops a backend (``pg_terminate_backend``, shutdown, idle
    session timeout) sends an ErrorResponse of severity FATAL, then closes the
    socket. When libpq parses that message while the connection is idle it has
    no query to fail, so it hands the message to the notice handler instead.
    If the socket's EOF has not arrived yet, the connection still reports
    itself open and its socket looks quiet, but it is dead: the flag remembers
    that. Only called for notices (rare), so it costs nothing on the hot path.
    """

    __slots__ = ("fatal", "handler", "poller", "resync")

    def __init__(self, handler: Any, poller: Any) -> None:
        self.handler = handler  # psycopg's own (holds the connection weakly)
        self.fatal: str | None = None  # the FATAL message, once one was seen
        self.poller = poller  # select.poll() on the socket (None without poll(2))
        self.resync = False  # the last lease ended with an error: resync at its reset

    def __call__(self, res: pq.abc.PGresult) -> None:
        if res.error_field(_SEVERITY) in (b"FATAL", b"PANIC"):
            message = res.error_message.decode("utf-8", "replace").strip()
            self.fatal = message or "FATAL"
        if self.handler is not None:
            self.handler(res)


def _install_watch(conn: AsyncConnection) -> None:
    pgconn = conn.pgconn
    if type(pgconn.notice_handler) is not _Watch:
        # libpq keeps one socket for the life of the connection (psycopg never resets it).
        pgconn.notice_handler = _Watch(pgconn.notice_handler, _poller(pgconn.socket))


_Session = tuple[Any, ...]


def _session(conn: AsyncConnection) -> _Session:
    """The settings of the connection object that a holder may change and the next one
    would inherit, in the order :func:`_restore_session` sets them back."""
    return (
        conn.autocommit,
        conn.isolation_level,
        conn.read_only,
        conn.deferrable,
        conn.row_factory,
        conn.cursor_factory,
        conn.prepare_threshold,
    )


async def _restore_session(conn: AsyncConnection, session: _Session) -> None:
    """Set back what differs from ``session``: no round trip (psycopg applies the
    transaction characteristics at the next BEGIN and only checks, under its lock,
    that no transaction is open)."""
    autocommit, isolation_level, read_only, deferrable, row_factory, cursor_factory, threshold = (
        session
    )
    if conn.autocommit is not autocommit:
        await conn.set_autocommit(autocommit)
    if conn.isolation_level != isolation_level:
        await conn.set_isolation_level(isolation_level)
    if conn.read_only is not read_only:
        await conn.set_read_only(read_only)
    if conn.deferrable is not deferrable:
        await conn.set_deferrable(deferrable)
    conn.row_factory = row_factory
    conn.cursor_factory = cursor_factory
    conn.prepare_threshold = threshold


def _unread(pgconn: Any) -> bool:
    """Whether the connection's socket has anything psycopg has not read (data, EOF, an
    error): one ``poll(0)``, no round trip. psycopg reads only while an operation runs, so
    whatever the server sent since (a FATAL message and EOF, a notification) is there."""
    watch = pgconn.notice_handler
    if type(watch) is _Watch and watch.poller is not None:
        return bool(watch.poller.poll(0))  # any event: data, EOF, hang-up, error
    try:
        return _readable(pgconn.socket)
    except (OSError, ValueError, psycopg.Error):  # no socket any more
        return True


def _fatal_notice(conn: AsyncConnection) -> str | None:
    watch = conn.pgconn.notice_handler
    return watch.fatal if type(watch) is _Watch else None


def _take_resync(conn: AsyncConnection) -> bool:
    """Whether the last lease of ``conn`` ended with an error (and forget it: once)."""
    watch = conn.pgconn.notice_handler
    if type(watch) is not _Watch or not watch.resync:
        return False
    watch.resync = False
    return True


_RESULT_OK = (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK)


async def _resync_prepared(conn: AsyncConnection) -> None:
    """Make psycopg's prepared-statement cache and the server's statements agree: both empty.

    A pipeline whose earlier statement failed or was cancelled makes the server skip the
    rest of it, the ``Parse`` of a statement psycopg prepares there included; psycopg
    (3.3.9) may still record that statement as prepared, and then every later run of it
    on the connection fails with ``InvalidSqlStatementName``. The other way round, a
    statement the server prepared but whose run failed stays on the server, unknown to
    psycopg (a leak, not an error: psycopg never reuses a name).

    Public API only: psycopg empties its cache at the end of every transaction block it
    rolls back, and ``DEALLOCATE ALL`` empties the server's (prepared statements are not
    transactional). A bare ``execute("DEALLOCATE ALL")`` is not enough: psycopg only
    looks at a statement's command tag the first time it counts that statement, so a
    second one can leave its cache full while the server's is empty.
    """
    async with conn.transaction(force_rollback=True):
        await conn.execute("DEALLOCATE ALL", prepare=False)


async def _wait_fd(fd: int, *, write: bool = False) -> None:
    """Until ``fd`` is readable (or writable): one selector registration, no polling."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    if write:
        loop.add_writer(fd, wake)
    else:
        loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        if write:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)


async def _round_trip(conn: AsyncConnection) -> None:
    """``SELECT 1`` straight through libpq, for :meth:`PsycopgManager.check`.

    Not ``conn.execute()``: that would send ``BEGIN`` first on a connection
    that is not in autocommit mode, and when cancelled (by the caller or the
    check's timeout) psycopg sends a cancel request and waits for the server
    to stop the query (up to the cancel grace, see aiolease._compat.psycopg).
    Here, cancellation abandons the round trip at once; the pool then closes
    the connection. Notifications that
    arrive meanwhile go to psycopg's handlers, as ``execute()`` would.

    Raises:
        psycopg.OperationalError: the server answered with an error (e.g. the
            FATAL message of a terminated backend) or the connection was lost.
    """
    pgconn = conn.pgconn
    fd = pgconn.socket
    pgconn.send_query(b"SELECT 1")
    while pgconn.flush():  # non-blocking mode: 1 while some of the query is unsent
        await _wait_fd(fd, write=True)
    error: str | None = None
    while True:
        while pgconn.is_busy():
            await _wait_fd(fd)
            pgconn.consume_input()
        res = pgconn.get_result()
        if res is None:
            break
        if res.status not in _RESULT_OK and error is None:
            error = res.error_message.decode("utf-8", "replace").strip() or str(res.status)
    while (notify := pgconn.notifies()) is not None:
        if pgconn.notify_handler is not None:
            try:
                pgconn.notify_handler(notify)
            except Exception:  # a user's notify handler: not the connection's fault
                logger.exception("error in a notify handler of %r", conn)
    if error is not None:
        raise psycopg.OperationalError(error)
    if pgconn.status != _OK or pgconn.transaction_status != _TS.IDLE:
        raise psycopg.OperationalError("connection not idle after SELECT 1")


# AsyncConnection.connect()'s own keywords; every other one is a libpq connection
# parameter, which libpq itself vets (psycopg.conninfo.make_conninfo parses them).
_CONNECT_KEYWORDS = (keywords_of(psycopg.AsyncConnection.connect) or frozenset()) | {
    "autocommit",
    "prepare_threshold",
    "context",
    "row_factory",
    "cursor_factory",
}


_OWN_OPTIONS = ("reset_timeout", "connect_timeout", "pgbouncer", "configure", "configure_timeout")


def _check_connect_kwargs(kwargs: dict[str, Any]) -> None:
    params = {k: v for k, v in kwargs.items() if k not in _CONNECT_KEYWORDS}
    try:
        make_conninfo("", **params)
    except psycopg.ProgrammingError as exc:
        for key in params:
            try:
                make_conninfo("", **{key: params[key]})
            except psycopg.ProgrammingError:
                check_connect_kwargs(
                    {key: params[key]},
                    _CONNECT_KEYWORDS,
                    "psycopg.AsyncConnection.connect() (nor a libpq connection parameter)",
                    _OWN_OPTIONS,
                )
        raise TypeError(f"bad connection parameters for psycopg: {redact(str(exc))}") from exc


class PsycopgManager(LeaseProxies[AsyncConnection], Manager[AsyncConnection]):
    """Creates, vets, resets and closes psycopg ``AsyncConnection`` objects for a Pool.

    Checkout (:meth:`check_needed`, :meth:`check`) costs no round trip for a
    healthy idle connection. psycopg reads a connection's socket only while an
    operation runs, so whatever the server sent while the connection sat in
    the pool is still unread: one non-blocking ``poll`` of the socket tells a
    quiet connection (handed out at once) from one that heard from the server.
    A connection the server terminated while idle (``pg_terminate_backend``, a
    restart, ``idle_session_timeout``) is never handed out: :meth:`check`
    reads what arrived without blocking, and a FATAL message or the socket's
    EOF condemns it. Anything else (a notification for a ``LISTEN`` left on
    the connection) costs one ``SELECT 1`` round trip, which keeps a live
    connection and delivers the notification to psycopg as usual.
    A connection killed while in use fails the body with a connection error,
    which :meth:`is_fatal` recognises, so it is closed rather than reused. One
    killed while held but not queried (its FATAL message and EOF unread) is
    found the same way at release (:meth:`reset_needed` polls the socket once),
    so a release never hands it straight to a waiting acquirer.

    Connections are opened with ``aiolease._compat.psycopg.CONNECTION_CLASS``,
    a subclass of psycopg's ``AsyncConnection`` whose cancelled queries end
    within :data:`~aiolease._liveness.CANCEL_GRACE` (psycopg's own bound is
    5 s for the cancel request and 5 s more for the query's end, which on a
    silent peer holds the cancelled task and its pool slot); past the grace
    the connection is closed and discarded. With ``AIOLEASE_COMPAT=public``,
    psycopg's own class.

    ``reset`` rolls back a transaction left open (``INTRANS``/``INERROR``),
    sets back what the holder changed on the connection object (``autocommit``,
    ``isolation_level``, ``read_only``, ``deferrable``, ``row_factory``,
    ``cursor_factory``, ``prepare_threshold``: to their values on a new
    connection of the pool; no round trip), and discards a connection released with
    a query still running (``ACTIVE``) or in an unknown state. After a lease whose body raised
    (a cancellation, a timeout, an error) on a connection that is kept, it also
    empties both psycopg's prepared-statement cache and the server's prepared
    statements (:func:`_resync_prepared`: ``BEGIN``, ``DEALLOCATE ALL``,
    ``ROLLBACK``), unless ``prepare_threshold`` is None: a failed or cancelled
    pipeline can leave psycopg holding the name of a statement the server never
    prepared, and the next holder would get ``InvalidSqlStatementName`` for it.
    A lease that ends normally pays nothing for this.

    Args:
        conninfo: the connection string, passed to ``AsyncConnection.connect``.
        reset_timeout: seconds the rollback at release (or the verifying round
            trip of a suspicious idle connection) may take before the
            connection is discarded.
        connect_timeout: seconds a new connection may take (default 10): libpq's
            ``connect_timeout`` (whole seconds, at least 2) unless the conninfo or
            the keywords set it, and a bound around the whole connect.
        pgbouncer: True when the conninfo points at PgBouncer in transaction (or
            statement) pooling mode: psycopg never prepares statements
            (``prepare_threshold=None``), whose names another client's server
            connection would not know.
        configure: an async function called once with each new connection (the
            psycopg ``AsyncConnection`` itself, not a lease), after it connects and
            before it is first handed out: register adapters and types there
            (``TypeInfo.fetch(conn)``, ``register_vector_async(conn)``). Its failure
            fails the creation (the connection is closed, the acquirer gets the error);
            a configure that leaves a transaction open (``INTRANS``, ``INERROR``) or
            closes the connection fails it too. The connection-object settings it
            leaves (``row_factory``, ``prepare_threshold``, ...) are what a reset
            restores; adapters it registers stay; a ``SET`` stays too (psycopg's reset
            does not touch server-side session state).
        configure_timeout: seconds ``configure`` may take (default 10); past it the
            connection is closed and the creation fails with a ``TimeoutError``.
        **connect_kwargs: passed to ``AsyncConnection.connect``;
            ``autocommit`` defaults to True; libpq's ``keepalives``,
            ``keepalives_idle``, ``keepalives_interval``, ``keepalives_count`` and
            ``tcp_user_timeout`` default to the values that detect a silent peer
            within ``aiolease._liveness.SILENT_PEER_BOUND`` seconds (see docs/pool.md).
    """

    # What a lease makes that can run statements or take the connection later (see
    # aiolease._lease.Guarded); an async context manager a cursor returns (``copy()``)
    # runs its statement on entry, an async generator (``stream()``) when iterated.
    _making = frozenset({"cursor", "execute", "transaction", "pipeline", "notifies"})
    _guarded = (
        psycopg.AsyncCursor,
        psycopg.AsyncTransaction,
        AbstractAsyncContextManager,
        AsyncGenerator,
    )

    def __init__(
        self,
        conninfo: str = "",
        *,
        reset_timeout: float = 5.0,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        pgbouncer: bool = False,
        configure: Configure | None = None,
        configure_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        **connect_kwargs: Any,
    ):
        check_connection_string("conninfo", conninfo, allow_none=False)
        check_configure(configure)
        self.configure = configure
        self.configure_timeout = _validate.seconds("configure_timeout", configure_timeout)
        self.reset_timeout = _validate.seconds("reset_timeout", reset_timeout)
        self.connect_timeout = _validate.seconds("connect_timeout", connect_timeout)
        if not isinstance(pgbouncer, bool):
            raise TypeError(f"pgbouncer must be a bool, got {pgbouncer!r}")
        if pgbouncer and connect_kwargs.setdefault("prepare_threshold", None) is not None:
            raise ValueError(
                "prepare_threshold must be None with pgbouncer=True, got "
                f"{connect_kwargs['prepare_threshold']!r}"
            )
        self.pgbouncer = pgbouncer
        _check_connect_kwargs(connect_kwargs)
        self.conninfo = conninfo
        given = _parse_conninfo(conninfo)
        #: The autocommit mode of the pool's connections; a reset restores it.
        self.autocommit = bool(connect_kwargs.setdefault("autocommit", True))
        # The client-side settings a new connection has (see _session), taken from
        # each new connection; a reset restores them.
        self._session: _Session | None = None
        _conninfo_defaults(given, connect_kwargs)
        if "connect_timeout" not in given:
            connect_kwargs.setdefault("connect_timeout", max(2, round(self.connect_timeout)))
        self.connect_kwargs = connect_kwargs
        self._secrets = dsn_secrets(conninfo, {**given, **connect_kwargs})
        self._pool_name = dsn_label(conninfo, {**given, **connect_kwargs})
        #: Expires the pool on a failover error (see is_fatal); bound by create_pool.
        self.failover = PoolExpirer()

    def __repr__(self) -> str:
        return f"<PsycopgManager {self._pool_name!r}>"

    def _aiolease_pool_name(self) -> str:
        """What an unnamed pool of this manager goes by in its repr, logs and metrics:
        ``server.address:server.port/db.namespace`` (see aiolease._redact.pool_label)."""
        return self._pool_name

    async def create(self) -> AsyncConnection:
        # libpq's connect_timeout is per host and attempt; the scope bounds the whole
        # (a second's grace, so that psycopg's own timeout normally reports it).
        epoch = self.failover.epoch
        try:
            async with asyncio.timeout(self.connect_timeout + 1.0):
                conn = await scrubbed(
                    CONNECTION_CLASS.connect(self.conninfo, **self.connect_kwargs),
                    self._secrets,
                )
        except TimeoutError as exc:
            raise connect_timed_out(
                self._pool_name,
                f"connect_timeout={self.connect_timeout:g} s, bounding the whole connect",
            ) from exc
        self.failover.connected(conn, epoch, read_only=_read_only_server(conn))
        if self.configure is not None:
            await self._configure(conn, self.configure)
        _install_watch(conn)
        # Every connection starts the same (as configure left it): what a reset restores.
        self._session = _session(conn)
        return conn

    async def _configure(self, conn: AsyncConnection, configure: Configure) -> None:
        """Run ``configure(conn)`` on a new connection (bounded by ``configure_timeout``);
        on any failure, cancellation included, close the connection at once (as
        :meth:`abort`) and re-raise.

        Raises:
            ConnectionError: ``configure`` closed the connection.
            RuntimeError: ``configure`` left a transaction open.
        """
        try:
            await run_configure(configure, conn, self.configure_timeout, self._pool_name)
            if conn.closed:
                raise ConnectionError(f"configure {configure!r} closed the new connection")
            status = conn.pgconn.transaction_status
            if status != _TS.IDLE:
                raise RuntimeError(
                    f"configure {configure!r} left the new connection in state "
                    f"{_TS(status).name}, not IDLE (end the transaction it begins, or "
                    "keep autocommit): connection closed"
                )
        except BaseException:
            self.abort(conn)
            raise

    def check_needed(self, resource: AsyncConnection, info: ResourceInfo) -> bool:
        """No round trip, no await for a healthy idle connection: only one that is
        closed, not idle, saw a FATAL message, or has something unread in its
        socket goes through :meth:`check`."""
        pgconn = resource.pgconn
        if pgconn.status != _OK or pgconn.transaction_status != _TS.IDLE:
            return True
        watch = pgconn.notice_handler
        if type(watch) is _Watch and watch.fatal is not None:
            return True
        return _unread(pgconn)

    async def check(self, resource: AsyncConnection, info: ResourceInfo) -> None:
        """Discard a dead idle connection; verify an ambiguous one with one round trip.

        Raises:
            ConnectionError: the connection is closed, the server terminated
                it while it was idle (FATAL message or EOF), or the verifying
                round trip failed.
        """
        if resource.closed:
            raise ConnectionError("connection was closed while idle (server restart or kill?)")
        if not self.check_needed(resource, info):
            return  # quiet: nothing to read, nothing to verify
        pgconn = resource.pgconn
        self._take_unread(resource)
        status = pgconn.transaction_status
        if status != _TS.IDLE:
            raise ConnectionError(f"idle connection in state {_TS(status).name}, expected IDLE")
        # Data that condemned nothing: a notification (harmless), or the first part
        # of a message still arriving. One round trip tells them apart.
        try:
            async with asyncio.timeout(self.reset_timeout):
                await _round_trip(resource)
        except Exception as exc:  # TimeoutError included
            raise ConnectionError(
                "connection failed its check after data arrived while idle: "
                + redact(repr(exc), self._secrets)
            ) from exc

    def _take_unread(self, resource: AsyncConnection) -> None:
        """Read what arrived while nothing was reading the connection (never blocks) and
        parse it: a FATAL message reaches the notice watch, an EOF or reset closes the
        pgconn, a notification waits for psycopg's next operation to deliver it.

        Raises:
            ConnectionError: the server terminated the connection, or it was lost.
        """
        try:
            resource.pgconn.consume_input()
            resource.pgconn.is_busy()
        except psycopg.Error as exc:
            raise ConnectionError(
                f"connection was lost while idle: {redact(str(exc), self._secrets)}"
            ) from exc
        fatal = _fatal_notice(resource)
        if fatal is not None:
            raise ConnectionError(f"the server terminated the connection while idle: {fatal}")
        if resource.closed:
            raise ConnectionError("connection was closed while idle (server restart or kill?)")

    def reset_needed(self, resource: AsyncConnection, info: ResourceInfo) -> bool:
        pgconn = resource.pgconn
        if pgconn.status != _OK or pgconn.transaction_status != _TS.IDLE:
            return True
        if pgconn.pipeline_status != _PIPELINE_OFF:
            return True
        if self._changed(resource):
            return True
        watch = pgconn.notice_handler
        if type(watch) is _Watch and (watch.fatal is not None or watch.resync):
            return True
        # Something arrived since the holder's last operation (a FATAL and EOF from a
        # terminated backend, a notification): a release may go straight to a waiter,
        # without the checkout's check, so the reset reads it.
        return _unread(pgconn)

    async def reset(self, resource: AsyncConnection, info: ResourceInfo) -> None:
        if resource.closed or resource.broken:
            raise ConnectionError("connection is closed or broken")
        fatal = _fatal_notice(resource)
        if fatal is not None:
            raise ConnectionError(f"the server terminated the connection: {fatal}")
        status = resource.pgconn.transaction_status
        if status not in (_TS.IDLE, _TS.INTRANS, _TS.INERROR):
            raise ConnectionError(
                f"connection released in state {_TS(status).name} "
                "(a query still running, or unknown)"
            )
        if resource.pgconn.pipeline_status != _PIPELINE_OFF:
            # Given back inside ``async with conn.pipeline()``: the block's exit would
            # run on the next holder's lease, so the pipeline is not ours to end.
            raise ConnectionError("connection released inside a pipeline block")
        if _unread(resource.pgconn):
            self._take_unread(resource)  # what arrived since the holder's last operation
        resync = _take_resync(resource)
        # A holder that changed a setting of the connection object (set_autocommit,
        # set_isolation_level, row_factory, ...): the next one gets it as opened.
        restore = self._changed(resource)
        if status == _TS.IDLE and not resync and not restore:
            return
        # One bound for all of it: past it (a silent peer) the timeout cancels the
        # statement in flight (its cancel bounded as usual) and the pool discards the
        # connection.
        async with asyncio.timeout(self.reset_timeout):
            if status != _TS.IDLE:
                logger.warning(
                    "%s: rolling back a transaction left open on %r at release",
                    self._pool_name,
                    resource,
                )
                await resource.rollback()
            if resync:
                await _resync_prepared(resource)
            if restore and self._session is not None:
                await _restore_session(resource, self._session)

    def _changed(self, resource: AsyncConnection) -> bool:
        """Whether the holder changed a setting of the connection object (see _session);
        never for a connection this manager did not open."""
        return self._session is not None and _session(resource) != self._session

    async def close(self, resource: AsyncConnection) -> None:
        if not resource.closed:
            await resource.close()

    def abort(self, resource: AsyncConnection) -> None:
        """Cut the connection at once: libpq's ``PQfinish`` closes the socket (the
        pool calls this when :meth:`close` outlasted ``close_timeout``)."""
        resource.pgconn.finish()

    def is_fatal(self, resource: AsyncConnection, exc: BaseException) -> bool:
        """Whether the body's error means the connection is gone: it is closed, or the
        error is a socket error, a connection-class SQLSTATE (08xxx, 57P01-57P05, 25P03),
        a FATAL/PANIC server error, or a client-side loss of the connection. A failover
        error (57P01-57P03, or 25006 from a server that reports itself read-only) also
        expires the whole pool, unless it is news about this connection only (see
        :class:`PoolExpirer`).

        On any other error (the connection is kept), the reset that follows the lease
        re-synchronises psycopg's prepared statements with the server's (see the class).
        """
        fatal = self._fatal(resource, exc)
        if not fatal and resource.prepare_threshold is not None:
            watch = resource.pgconn.notice_handler
            if type(watch) is _Watch:
                watch.resync = True
        return fatal

    def _fatal(self, resource: AsyncConnection, exc: BaseException) -> bool:
        if resource.closed or isinstance(exc, OSError):
            return True
        if not isinstance(exc, psycopg.Error):
            return False
        state = exc.sqlstate
        refused_write = state == "25006" and _read_only_server(resource)
        if refused_write or state in _SHUTDOWN_STATES:
            # A failover: the pool is expired unless the error is news about this
            # connection only (see PoolExpirer).
            self.failover.report(resource, exc, refused_write=refused_write)
            return True
        if state is None:
            return isinstance(exc, psycopg.OperationalError) and not isinstance(exc, _NOT_FATAL)
        if state.startswith("08") or state in _FATAL_STATES:
            return True
        return exc.diag.severity_nonlocalized in ("FATAL", "PANIC")


def create_pool(
    conninfo: str = "",
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
    configure: Configure | None = None,
    **connect_kwargs: Any,
) -> Pool[AsyncConnection]:
    """An unopened :class:`~aiolease.Pool` of psycopg ``AsyncConnection`` objects.

    Open it with ``async with`` or ``await pool.open()``. Pool options are as
    for :class:`~aiolease.Pool`; ``configure`` (and ``reset_timeout``,
    ``connect_timeout``, ``pgbouncer``, ``configure_timeout``, passed on as keywords) is
    explained at :class:`PsycopgManager`; everything else goes to
    ``psycopg.AsyncConnection.connect`` (``autocommit`` defaults to True).

    Raises:
        TypeError: an unknown keyword (neither a Pool option nor a keyword of
            ``AsyncConnection.connect`` or a libpq connection parameter), or an
            option of the wrong type.
        ValueError: a bad option value.
    """
    manager = PsycopgManager(conninfo, configure=configure, **connect_kwargs)
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
