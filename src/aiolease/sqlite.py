"""SQLite integration over aiosqlite: ``create_pool(path, ...)`` → ``Pool[aiosqlite.Connection]``.

Install with ``pip install aiolease[sqlite]``. Every connection runs in its own
thread (aiosqlite's design) and is opened with WAL journaling, a busy timeout
and the pragmas below, so readers do not block the writer and a writer waits
for the lock instead of failing at once.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import weakref
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from . import _validate
from ._compat import aiosqlite as _compat_aiosqlite
from ._dialects.sqlite import enable_loop_commit
from ._driver_args import (
    check_configure,
    check_connect_kwargs,
    check_pragmas,
    keywords_of,
    run_configure,
)
from ._lease import LeaseProxies
from ._liveness import DEFAULT_CONNECT_TIMEOUT
from ._logs import get_logger
from ._pool import Pool
from ._redact import redact
from .abc import Manager, ResourceInfo

try:
    import aiosqlite
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "aiolease.sqlite needs the aiosqlite driver: pip install 'aiolease[sqlite]'"
    ) from exc

__all__ = ["DEFAULT_PRAGMAS", "SqliteManager", "create_pool"]

#: Applied to every new connection, in order (override any with ``pragmas=``).
DEFAULT_PRAGMAS: Mapping[str, str | int] = {
    "journal_mode": "WAL",  # readers and one writer at once
    "synchronous": "NORMAL",  # durable at checkpoints; safe with WAL
    "foreign_keys": "ON",
    "busy_timeout": 5000,  # ms a writer waits for the lock before SQLITE_BUSY
}

logger = get_logger("aiolease.pool")

#: The type of ``configure``: an async function called with each new connection.
Configure = Callable[[aiosqlite.Connection], Awaitable[object]]


# SQLITE_READONLY: a write to a database opened read-only (mode=ro, read-only media, no
# write permission), changing the journal mode included.
_SQLITE_READONLY = 8


def _is_memory(path: str) -> bool:
    return path == ":memory:" or path.startswith("file::memory:") or "mode=memory" in path


# aiosqlite.connect() passes its **kwargs to sqlite3.connect(), whose signature Python
# 3.11 cannot read: these are the keywords they take.
_SQLITE3_KEYWORDS = (
    "timeout",
    "detect_types",
    "isolation_level",
    "check_same_thread",
    "factory",
    "cached_statements",
    "uri",
    "autocommit",
)
_CONNECT_KEYWORDS = (
    (keywords_of(aiosqlite.connect) or frozenset())
    | (keywords_of(sqlite3.connect, _SQLITE3_KEYWORDS) or frozenset())
) - {"database"}


def _check_path(given: object) -> str:
    """The database path as a str. A database file must be creatable: its directory must
    exist (checked here, at the call, rather than at the first connect)."""
    path = os.fspath(given) if isinstance(given, str | os.PathLike) else None
    if not isinstance(path, str):  # (bytes: a PathLike may give them too)
        raise TypeError(
            f"path must be a str or an os.PathLike of str, got {type(given).__name__} {given!r}"
        )
    if _is_memory(path) or path.startswith("file:") or path == "":
        return path
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ValueError(
            f"path {path!r}: the directory {directory!r} does not exist (create it first)"
        )
    return path


async def _finish(task: asyncio.Future[Any]) -> bool:
    """Wait until ``task`` is done, whatever its outcome, even if we are cancelled meanwhile;
    returns whether we were (the caller raises that cancellation once its clean-up is over)."""
    me = asyncio.current_task()
    before = 0 if me is None else me.cancelling()
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = cancelled or not task.cancelled()  # ours, not the task's own end
        except BaseException:
            pass  # the task's outcome: retrieved below
    if not task.cancelled():
        task.exception()  # retrieved: the caller decides what the outcome means
    return cancelled or (me is not None and me.cancelling() > before)


#: Seconds between the interrupts of a connection being closed (see
#: :meth:`SqliteManager.close`).
_REINTERRUPT = 0.05
#: Seconds that discarding such a connection waits for its thread at most (the pool's
#: default ``close_timeout``).
_DISCARD_BOUND = 10.0


async def _set_journal_mode(conn: aiosqlite.Connection, mode: str | int | float) -> None:
    """Set the journal mode, retrying while another connection holds the lock.

    Switching a new database to WAL needs an exclusive lock and SQLite reports
    a conflict at once instead of waiting for the busy timeout, so connections
    opened together (a pool's prefill) would otherwise fail with "database is locked".
    A database opened read-only keeps the journal mode of its file: SQLite refuses the
    switch (it writes the file's header), and a connection that cannot write needs none.
    """
    delay = 0.005
    for _ in range(40):
        try:
            await conn.execute(f"PRAGMA journal_mode={mode}")
            return
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF == _SQLITE_READONLY:  # or an extended code of it
                return
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.1)
    await conn.execute(f"PRAGMA journal_mode={mode}")


def _interrupt(conn: aiosqlite.Connection) -> None:
    """Stop the statement running in ``conn``'s thread, if any, at once.

    sqlite3's ``interrupt()`` is the one call it allows from any thread, and the only
    way to end a statement whose caller stopped awaiting it (cancelling the task does
    not stop the thread). aiosqlite's ``interrupt()`` calls it directly, without a
    thread hop, in a coroutine that never suspends: it is run to its end here.
    Statements queued behind the running one still run; a closed connection has
    nothing to interrupt. SQLite's wait for a lock ignores the interrupt: an ``atomic``
    block's BEGIN waiting for the write lock is told to stop waiting instead (see
    :func:`aiolease._compat.aiosqlite.stop_waiting`).
    """
    _compat_aiosqlite.stop_waiting(conn)
    step = conn.interrupt()
    try:
        step.send(None)
    except StopIteration:
        return
    except (ValueError, sqlite3.ProgrammingError):
        return  # closed (aiosqlite's ValueError, sqlite3's ProgrammingError)
    step.close()  # pragma: no cover - an aiosqlite whose interrupt() waits for the thread


async def _pragma(conn: aiosqlite.Connection, name: str) -> Any:
    async with conn.execute(f"PRAGMA {name}") as cursor:
        row = await cursor.fetchone()
    return None if row is None else row[0]


class SqliteManager(LeaseProxies[aiosqlite.Connection], Manager[aiosqlite.Connection]):
    """Creates, resets and closes aiosqlite connections for a :class:`~aiolease.Pool`.

    Args:
        path: the database file (``":memory:"`` gives every connection its own database).
        pragmas: pragmas set on each new connection (default :data:`DEFAULT_PRAGMAS`;
            pass a mapping to replace them).
        commit_on_loop: opt in to let :func:`aiolease.atomic` commit small
            transactions on the event loop instead of in the connection's thread,
            which saves a thread hop per transaction (default False; it takes effect
            in WAL mode with ``check_same_thread=False``, the defaults here, and not
            with ``AIOLEASE_COMPAT=public``: it relies on aiosqlite internals).
            Hazard: the COMMIT then blocks the event loop while it runs; in WAL mode
            with ``synchronous=NORMAL`` it only appends a few pages to the WAL file,
            but with ``synchronous=FULL`` or a slow disk it stalls every task of the
            loop. SQLite's automatic checkpoint is moved to the connection's thread
            (see :mod:`aiolease._compat.aiosqlite`).
        reset_timeout: seconds the rollback of a transaction left open at release may
            wait (default 5): it waits in the connection's thread behind any statement
            still running there, and past this bound the connection is discarded.
        configure: an async function called once with each new connection (the
            ``aiosqlite.Connection`` itself, not a lease), after the pragmas and before
            it is first handed out: ``create_function``, ``create_collation``, more
            pragmas, ``row_factory``. Its failure fails the creation (the connection is
            closed, the acquirer gets the error); a configure that leaves a transaction
            open or closes the connection fails it too. All of it survives the reset at
            release: the connection-object settings it leaves (``row_factory``,
            ``text_factory``, ``isolation_level``) are what a reset restores.
        configure_timeout: seconds ``configure`` may take (default 10); past it the
            connection is closed (a statement still running in its thread interrupted)
            and the creation fails with a ``TimeoutError``.
        **connect_kwargs: passed to :func:`aiosqlite.connect` (and :func:`sqlite3.connect`);
            ``isolation_level`` defaults to None (autocommit: transactions are explicit,
            see :func:`aiolease.atomic`) and ``check_same_thread`` to False (only
            ``atomic``'s COMMIT ever runs outside the connection's thread).
    """

    # What a lease makes that can run statements later (see aiolease._lease.Guarded).
    _making = frozenset({"cursor", "execute", "executemany", "executescript", "iterdump"})
    _guarded = (aiosqlite.Cursor,)
    # Takes a connection (the backup's target): a lease is passed on as its connection.
    _taking = frozenset({"backup"})

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        pragmas: Mapping[str, str | int | float] | None = None,
        commit_on_loop: bool = False,
        reset_timeout: float = 5.0,
        configure: Configure | None = None,
        configure_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        **connect_kwargs: Any,
    ) -> None:
        check_configure(configure)
        self.configure = configure
        self.configure_timeout = _validate.seconds("configure_timeout", configure_timeout)
        if not isinstance(commit_on_loop, bool):
            raise TypeError(f"commit_on_loop must be a bool, got {commit_on_loop!r}")
        self.path = _check_path(path)
        # What an unnamed pool goes by: the path (a ``file:`` URI without its query).
        self._pool_name = redact(self.path.partition("?")[0])
        self.commit_on_loop = commit_on_loop
        self.reset_timeout = _validate.seconds("reset_timeout", reset_timeout)
        self.pragmas = check_pragmas(DEFAULT_PRAGMAS if pragmas is None else pragmas)
        check_connect_kwargs(
            connect_kwargs,
            _CONNECT_KEYWORDS,
            "aiosqlite.connect() (nor sqlite3.connect())",
            ("pragmas", "commit_on_loop", "reset_timeout", "configure", "configure_timeout"),
        )
        connect_kwargs.setdefault("isolation_level", None)
        connect_kwargs.setdefault("check_same_thread", False)
        self.connect_kwargs = connect_kwargs
        # The settings of a new connection (see _session), taken from each new one.
        self._session: _Session | None = None
        # Connections being closed: their thread's answer to stop() (see _stop).
        self._stopping: weakref.WeakKeyDictionary[aiosqlite.Connection, asyncio.Future[Any]] = (
            weakref.WeakKeyDictionary()
        )

    def __repr__(self) -> str:
        return f"<SqliteManager {self._pool_name!r}>"

    def _aiolease_pool_name(self) -> str:
        """What an unnamed pool of this manager goes by in its repr, logs and metrics:
        the database's path (a ``file:`` URI without its query, which may hold more)."""
        return self._pool_name

    async def create(self) -> aiosqlite.Connection:
        # Connecting runs in aiosqlite's own thread and cannot be interrupted. If we are
        # cancelled meanwhile, let it finish and close what it opened before re-raising,
        # so that no connection thread outlives the pool that made it.
        task = asyncio.ensure_future(self._connect())
        try:
            conn = await asyncio.shield(task)
        except asyncio.CancelledError:
            await _finish(task)
            if not task.cancelled() and task.exception() is None:
                await _finish(asyncio.ensure_future(task.result().close()))
            raise
        if self.configure is not None:
            await self._configure(conn, self.configure)
        # Every connection starts the same (as configure left it): what a reset restores.
        self._session = _session(conn)
        return conn

    async def _configure(self, conn: aiosqlite.Connection, configure: Configure) -> None:
        """Run ``configure(conn)`` on a new connection (bounded by ``configure_timeout``;
        cancellable, unlike the connect); on any failure, cancellation included, close
        the connection (:meth:`_discard`: a statement of configure's still running in the
        thread is interrupted) and re-raise.

        Raises:
            ConnectionError: ``configure`` closed the connection.
            RuntimeError: ``configure`` left a transaction open.
        """
        try:
            await run_configure(configure, conn, self.configure_timeout, self._pool_name)
            in_transaction = _in_transaction(conn)
            if in_transaction is None:
                raise ConnectionError(f"configure {configure!r} closed the new connection")
            if in_transaction:
                raise RuntimeError(
                    f"configure {configure!r} left a transaction open on the new connection "
                    "(end what it begins): connection closed"
                )
        except BaseException as exc:
            if await _finish(asyncio.ensure_future(self._discard(conn))) and not isinstance(
                exc, asyncio.CancelledError
            ):
                raise asyncio.CancelledError from exc  # configure's error stays in its chain
            raise

    async def _discard(self, conn: aiosqlite.Connection) -> None:
        """Close a new connection whose ``configure`` failed, as the pool closes one
        (:meth:`close`), within :data:`_DISCARD_BOUND` seconds (a thread that never
        stops is abandoned, with a WARNING)."""
        try:
            async with asyncio.timeout(_DISCARD_BOUND):
                await self.close(conn)
        except TimeoutError:
            logger.warning(
                "%s: a new connection whose configure failed did not stop within %g s; "
                "its thread is abandoned",
                self._pool_name,
                _DISCARD_BOUND,
            )
        except Exception:  # stop() failed: the thread is gone either way
            pass

    async def _connect(self) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(self.path, **self.connect_kwargs)
        try:
            # busy_timeout first, so that the pragmas after it wait for locks too.
            for key, value in sorted(self.pragmas.items(), key=lambda kv: kv[0] != "busy_timeout"):
                if key == "journal_mode":
                    if not _is_memory(self.path):
                        await _set_journal_mode(conn, value)
                    continue
                await conn.execute(f"PRAGMA {key}={value}")
            if (
                self.commit_on_loop
                and _compat_aiosqlite.ENABLED
                and not self.connect_kwargs["check_same_thread"]
            ):
                journal = await _pragma(conn, "journal_mode")
                if str(journal).lower() == "wal":
                    enable_loop_commit(conn, int(await _pragma(conn, "wal_autocheckpoint")))
        except BaseException as exc:
            if await _finish(asyncio.ensure_future(conn.close())) and not isinstance(
                exc, asyncio.CancelledError
            ):
                raise asyncio.CancelledError from exc
            raise
        return conn

    def check_needed(self, resource: aiosqlite.Connection, info: ResourceInfo) -> bool:
        """Only a closed connection goes through :meth:`check` (no await, no timeout
        scope for an open one: the check has nothing else to vet)."""
        return _in_transaction(resource) is None

    async def check(self, resource: aiosqlite.Connection, info: ResourceInfo) -> None:
        if _in_transaction(resource) is None:
            raise ConnectionError("connection is closed")

    def reset_needed(self, resource: aiosqlite.Connection, info: ResourceInfo) -> bool:
        return _in_transaction(resource) is not False or (
            self._session is not None and _session(resource) != self._session
        )

    async def reset(self, resource: aiosqlite.Connection, info: ResourceInfo) -> None:
        """Roll back a transaction left open, then set back what the holder changed on
        the connection object (``isolation_level``, ``row_factory``, ``text_factory``)
        to its value on a new connection of the pool.

        Raises:
            ConnectionError: the connection is closed, or its ``isolation_level``
                cannot be set back from the event loop's thread (opened with
                ``check_same_thread=True``): the pool discards it.
        """
        in_transaction = _in_transaction(resource)
        if in_transaction is None:
            raise ConnectionError("connection is closed")
        if in_transaction:
            try:
                # Queued behind whatever still runs in the thread (a statement whose
                # caller stopped awaiting it): bounded, then the connection is discarded.
                async with asyncio.timeout(self.reset_timeout):
                    await resource.rollback()
            except TimeoutError as exc:
                raise ConnectionError(
                    f"the rollback at release got no answer within reset_timeout="
                    f"{self.reset_timeout}s (a statement of the lease still running in "
                    "the connection's thread?): connection discarded"
                ) from exc
        if self._session is not None:
            # After the rollback: sqlite3 commits an open transaction when isolation_level
            # becomes None.
            _restore_session(resource, self._session)

    def is_fatal(self, resource: aiosqlite.Connection, exc: BaseException) -> bool:
        """A body that was cancelled or timed out: its statement may still be running in
        the connection's thread (cancelling a task does not stop it), and the next
        holder's statements would queue behind it. The pool discards the connection,
        whose close interrupts that statement."""
        return isinstance(exc, asyncio.CancelledError | TimeoutError)

    def abort(self, resource: aiosqlite.Connection) -> None:
        """Interrupt the statement running in the connection's thread and have the thread
        close the database and stop (the pool calls this when :meth:`close` outlasted
        ``close_timeout``, and before closing a connection discarded as broken)."""
        self._stop(resource)

    async def close(self, resource: aiosqlite.Connection) -> None:
        """Interrupt the statement running in the connection's thread, if any (nobody
        awaits it any more: a closing connection serves no one), then close the database
        and end the thread, after the operations queued there.

        Not aiosqlite's ``close()``: cancelled, it goes on waiting for the thread to stop
        (in a ``finally``), which a statement that never ends makes forever, past the
        pool's ``close_timeout``. Waiting for the answer to ``stop()`` is cancellable.
        The statement is interrupted again every :data:`_REINTERRUPT` seconds until the
        thread stops: one sent just before the first interrupt (a lease cancelled right
        after it sent its statement) is still queued then, and starts after it."""
        stopping = self._stop(resource)
        if stopping is None:
            return
        while not stopping.done():
            await asyncio.wait([stopping], timeout=_REINTERRUPT)
            _interrupt(resource)
        await stopping

    def _stop(self, resource: aiosqlite.Connection) -> asyncio.Future[Any] | None:
        """Interrupt the running statement and ask the thread, once, to close the
        database and stop (aiosqlite's ``stop()``); the future of its answer, or None
        when the connection was closed already (that close stopped its thread)."""
        _interrupt(resource)
        stopping = self._stopping.get(resource)
        if stopping is None and _in_transaction(resource) is not None:
            stopping = resource.stop()
            if stopping is not None:
                self._stopping[resource] = stopping
        return stopping


def _public_in_transaction(conn: aiosqlite.Connection) -> bool | None:
    """Whether a transaction is open; None when the connection is closed (aiosqlite's
    ``in_transaction`` raises ``ValueError`` then)."""
    try:
        return bool(conn.in_transaction)
    except ValueError:
        return None


_Session = tuple[Any, Any, Any]


def _session(conn: aiosqlite.Connection) -> _Session:
    """The settings of the connection object that a holder may change and the next
    holder would inherit (read on the loop: plain attributes of the sqlite3 connection)."""
    return (conn.isolation_level, conn.row_factory, conn.text_factory)


def _restore_session(conn: aiosqlite.Connection, session: _Session) -> None:
    """Set back what differs from ``session``.

    A holder's ``isolation_level = "DEFERRED"`` left in place would open an implicit
    transaction around the next holder's writes, rolled back at its release.

    Raises:
        ConnectionError: ``isolation_level`` must go back to None on a connection opened
            with ``check_same_thread=True``, which sqlite3 allows only in the connection's
            own thread (aiosqlite's): the connection is discarded.
    """
    isolation_level, row_factory, text_factory = session
    if conn.row_factory is not row_factory:
        conn.row_factory = row_factory
    if conn.text_factory is not text_factory:
        conn.text_factory = text_factory
    if conn.isolation_level != isolation_level:
        try:
            conn.isolation_level = isolation_level
        except sqlite3.ProgrammingError as exc:
            raise ConnectionError(
                f"cannot set isolation_level back to {isolation_level!r} outside the "
                "connection's thread (check_same_thread=True): connection discarded"
            ) from exc


# The same answer read without aiosqlite's property calls, when its internals are in use.
_in_transaction = (
    _compat_aiosqlite.transaction_state if _compat_aiosqlite.ENABLED else _public_in_transaction
)


def create_pool(
    path: str | os.PathLike[str],
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
    pragmas: Mapping[str, str | int | float] | None = None,
    commit_on_loop: bool = False,
    configure: Configure | None = None,
    **connect_kwargs: Any,
) -> Pool[aiosqlite.Connection]:
    """An unopened :class:`~aiolease.Pool` of aiosqlite connections to ``path``.

    Open it with ``async with`` or ``await pool.open()``. See :class:`SqliteManager`
    for ``pragmas``, ``configure`` and the connection options.

    Raises:
        TypeError: an unknown keyword (neither a Pool option nor one aiosqlite's
            or sqlite3's ``connect()`` takes), or an option of the wrong type.
        ValueError: a bad option value, a pragma that is not ``identifier=value``
            with an int, float or identifier value, or a path in a missing directory.
    """
    return Pool(
        SqliteManager(
            path,
            pragmas=pragmas,
            commit_on_loop=commit_on_loop,
            configure=configure,
            **connect_kwargs,
        ),
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
