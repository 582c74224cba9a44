"""Transaction dialect for aiosqlite connections.

Every aiosqlite operation is one *thread hop*: the call is queued to the
connection's worker thread and the event loop is woken with the result. Hops,
not SQLite, dominate the cost of a small transaction, so this dialect spends as
few as it can:

* **BEGIN rides along with the first operation of the block.** ``begin()``
  issues nothing; it installs a one-shot wrapper over the connection's
  ``_execute`` (the single funnel of every aiosqlite operation, cursors
  included) that runs ``BEGIN IMMEDIATE`` in the worker thread right before
  the first operation of the block, in the same hop. Unlike sqlite3's legacy
  implicit BEGIN (which only precedes INSERT/UPDATE/DELETE) this also covers a
  block that *reads first*: the read runs inside the transaction, so a
  read-modify-write cannot lose an update.
* A block that ran no statement costs no hop at all.
* COMMIT (or ROLLBACK), and resetting ``query_only`` after a read-only block,
  share one hop; a failed COMMIT is rolled back in the same hop.
* **COMMIT on the loop, no hop at all**, for connections made by
  :mod:`aiolease.sqlite` pools (opened with ``check_same_thread=False`` in WAL
  mode, and marked by :func:`enable_loop_commit`). In WAL mode the COMMIT of a
  small transaction only appends its last pages to the WAL file (no fsync with
  ``synchronous=NORMAL``, no lock to wait for: the write lock is already held),
  which costs less than waking the worker thread. Everything that could block
  stays in the thread: the COMMIT goes through the worker after all when the
  block changed many rows, when an operation of the block is still running or
  queued (a statement the body stopped awaiting), and the WAL checkpoint that
  SQLite would otherwise run inside such a COMMIT is switched off when a block
  begins, run in the worker thread instead when due (at the start of a later
  block), and switched back on by the next operation outside a block.

Writes start with ``BEGIN IMMEDIATE`` so the busy timeout applies when the
write lock is taken, instead of a deferred transaction failing with "database
is locked" when it first writes.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from ._base import Dialect

__all__ = ["LOOP_COMMIT_MAX_CHANGES", "AiosqliteDialect", "enable_loop_commit"]

# sqlite3 primary result codes that mean "another connection holds the lock".
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
# Marker on a connection whose block began read-only (query_only must be reset).
_READONLY = "_aiolease_readonly"


#: A transaction that changed more rows than this commits through the worker thread.
LOOP_COMMIT_MAX_CHANGES = 1000
_LOOP = "_aiolease_loop_commit"  # instance attribute: the connection's _LoopCommit


class _LoopCommit:
    """Per-connection state of COMMIT-on-the-loop (see the module doc).

    ``submitted`` is written by the event loop thread only and ``finished`` by
    the worker thread only, so their difference (operations of the block still
    in the worker) needs no lock.
    """

    __slots__ = (
        "autocheckpoint",
        "begin_fn",
        "begun",
        "changes_at_begin",
        "checkpointed_at",
        "finished",
        "submitted",
        "suspended",
    )

    def __init__(self, autocheckpoint: int) -> None:
        self.autocheckpoint = autocheckpoint  # the connection's wal_autocheckpoint (pages)
        self.begin_fn: Any = None  # while a block is open: how it begins
        self.begun = False  # the block's first operation has run (BEGIN was sent)
        self.changes_at_begin = 0  # sqlite3 total_changes when the block began
        self.checkpointed_at = 0  # total_changes at our last checkpoint
        self.submitted = 0
        self.finished = 0
        self.suspended = False  # wal_autocheckpoint is off (see _prepare_block)


def enable_loop_commit(conn: Any, autocheckpoint: int = 1000) -> None:
    """Let :func:`aiolease.atomic` commit ``conn``'s transactions on the event loop.

    Only for an aiosqlite connection opened with ``check_same_thread=False``
    whose database is in WAL mode (:mod:`aiolease.sqlite` pools call this for
    their connections). ``autocheckpoint`` is the connection's
    ``wal_autocheckpoint`` setting, in pages (0: the application checkpoints).

    It installs a dispatcher over the connection's ``_execute`` (the funnel of
    every aiosqlite operation, cursors included) that runs in the same thread
    hop as the operation: BEGIN before a block's first operation, the count of
    the block's operations, and restoring ``wal_autocheckpoint`` before the
    first operation outside a block.
    """
    loop = _LoopCommit(autocheckpoint)
    state = conn.__dict__
    state[_LOOP] = loop
    original = type(conn)._execute

    async def execute(fn: Any, *args: Any, **kwargs: Any) -> Any:
        begin_fn = loop.begin_fn
        if begin_fn is not None:
            loop.submitted += 1
            return await original(conn, _in_block, conn, loop, begin_fn, fn, args, kwargs)
        if loop.suspended:
            return await original(conn, _outside_block, conn, loop, fn, args, kwargs)
        return await original(conn, fn, *args, **kwargs)

    state["_execute"] = execute


def _prepare_block(db: sqlite3.Connection, loop: _LoopCommit) -> None:
    """In the worker thread, before BEGIN: checkpoint if due, and hold off SQLite's own
    checkpoints, which would run inside a COMMIT on the loop. They stay off until an
    operation outside a block (see :func:`_outside_block`)."""
    changes = db.total_changes
    loop.changes_at_begin = changes
    if loop.autocheckpoint <= 0:
        return  # the application checkpoints
    # Changed rows since our last checkpoint stand in for WAL pages: each change
    # writes at least one page, so this checkpoints no later than SQLite would.
    if changes - loop.checkpointed_at >= loop.autocheckpoint:
        db.execute("PRAGMA wal_checkpoint(PASSIVE)").close()
        loop.checkpointed_at = changes
    if not loop.suspended:
        db.execute("PRAGMA wal_autocheckpoint=0").close()
        loop.suspended = True


def _in_block(conn: Any, loop: _LoopCommit, begin_fn: Any, fn: Any, args: Any, kwargs: Any) -> Any:
    """Worker thread: an operation of a block (the first one begins it)."""
    try:
        if not loop.begun:
            db = conn._conn
            _prepare_block(db, loop)
            loop.begun = True  # before BEGIN: a failed BEGIN still ends through the thread
            begin_fn(db)
        return fn(*args, **kwargs)
    finally:
        loop.finished += 1


def _outside_block(conn: Any, loop: _LoopCommit, fn: Any, args: Any, kwargs: Any) -> Any:
    """Worker thread: an operation outside any block; SQLite checkpoints as configured."""
    db = conn._connection
    if loop.suspended and db is not None:
        db.execute(f"PRAGMA wal_autocheckpoint={loop.autocheckpoint}").close()
        loop.suspended = False
    return fn(*args, **kwargs)


def _begin_immediate(db: sqlite3.Connection) -> None:
    db.execute("BEGIN IMMEDIATE")


def _begin_readonly(db: sqlite3.Connection) -> None:
    db.execute("PRAGMA query_only = 1")
    try:
        db.execute("BEGIN DEFERRED")
    except BaseException:
        db.execute("PRAGMA query_only = 0")
        raise


def _commit(db: sqlite3.Connection, readonly: bool) -> bool:
    try:
        if not db.in_transaction:
            # SQLite ended the transaction itself (some errors roll back
            # automatically) or a statement of the block did.
            return False
        try:
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return True
    finally:
        if readonly:
            db.execute("PRAGMA query_only = 0")


def _rollback(db: sqlite3.Connection, readonly: bool) -> None:
    try:
        if db.in_transaction:
            db.execute("ROLLBACK")
    finally:
        if readonly:
            db.execute("PRAGMA query_only = 0")


def _begin_then(conn: Any, begin_fn: Any, fn: Any, args: Any, kwargs: Any) -> Any:
    begin_fn(conn._connection)
    return fn(*args, **kwargs)


def _make_first(conn: Any, begin_fn: Any) -> Any:
    """The one-shot ``_execute`` of an armed connection.

    Made per block: kept on the connection only while armed, so the reference
    cycle it forms (connection -> wrapper -> connection) ends with the block.
    """
    original = type(conn)._execute

    async def first_execute(fn: Any, *args: Any, **kwargs: Any) -> Any:
        # One shot: from now on operations go straight to the thread.
        conn.__dict__.pop("_execute", None)
        return await original(conn, _begin_then, conn, begin_fn, fn, args, kwargs)

    return first_execute


def _run(db: sqlite3.Connection, sql: str) -> None:
    db.execute(sql).close()


class AiosqliteDialect(Dialect[Any]):
    """aiosqlite: lazy ``BEGIN IMMEDIATE`` in the first operation's thread hop (see module doc)."""

    name = "sqlite"
    isolation_levels = frozenset({"serializable"})

    async def begin(self, conn: Any, isolation: str | None, readonly: bool) -> None:
        state = conn.__dict__
        begin_fn = _begin_readonly if readonly else _begin_immediate
        if readonly:
            state[_READONLY] = True
        loop: _LoopCommit | None = state.get(_LOOP)
        if loop is not None:
            loop.begun = False
            loop.submitted = loop.finished = 0
            loop.begin_fn = begin_fn  # the dispatcher sends BEGIN with the first operation
            return
        # An instance attribute shadows the method for this block only.
        state["_execute"] = _make_first(conn, begin_fn)

    async def commit(self, conn: Any) -> bool:
        state = conn.__dict__
        readonly = state.pop(_READONLY, False)
        loop: _LoopCommit | None = state.get(_LOOP)
        if loop is None:
            if state.pop("_execute", None) is not None:
                return True  # the block ran no statement: nothing began, nothing to commit
            return bool(await conn._execute(_commit, conn._conn, readonly))
        loop.begin_fn = None
        if loop.submitted == 0:
            return True  # the block ran no statement: nothing began, nothing to commit
        db = conn._conn
        if (
            loop.begun
            and loop.submitted == loop.finished
            and conn._tx.empty()
            and db.total_changes - loop.changes_at_begin <= LOOP_COMMIT_MAX_CHANGES
        ):
            return _commit(db, readonly)  # on the loop: no hop (see the module doc)
        # Through the worker, behind whatever of the block is still running or queued.
        return bool(await conn._execute(_commit, db, readonly))

    async def rollback(self, conn: Any) -> None:
        state = conn.__dict__
        readonly = bool(state.pop(_READONLY, False))
        loop: _LoopCommit | None = state.get(_LOOP)
        if loop is not None:
            loop.begin_fn = None
            if loop.submitted == 0:
                return  # nothing began
        elif state.pop("_execute", None) is not None:
            return  # nothing began
        # Through the worker thread: a statement the block stopped awaiting may still run.
        await conn._execute(_rollback, conn._conn, readonly)

    async def savepoint(self, conn: Any, name: str) -> None:
        # Through the (possibly still armed) wrapper: BEGIN + SAVEPOINT in one hop.
        await conn._execute(_run, conn._conn, f"SAVEPOINT {name}")

    async def release_savepoint(self, conn: Any, name: str) -> None:
        await conn._execute(_run, conn._conn, f"RELEASE SAVEPOINT {name}")

    async def rollback_to_savepoint(self, conn: Any, name: str) -> None:
        await conn._execute(_rollback_to, conn._conn, name)

    def in_transaction(self, conn: Any) -> bool:
        try:
            return bool(conn.in_transaction)
        except ValueError:  # closed: not in a transaction
            return False

    def is_retryable(self, exc: BaseException) -> bool:
        if not isinstance(exc, sqlite3.OperationalError):
            return False
        code = getattr(exc, "sqlite_errorcode", None)
        if isinstance(code, int):
            return code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)
        message = str(exc)
        return (
            "database is locked" in message or "is busy" in message or "table is locked" in message
        )

    def is_aborted_error(self, exc: BaseException) -> bool:
        return False  # SQLite has no aborted-transaction state

    def is_connection_error(self, exc: BaseException, conn: Any) -> bool:
        # A local file: a failed COMMIT is a definite failure (SQLite rolls
        # back what it could not commit), never an unknown outcome.
        return False


def _rollback_to(db: sqlite3.Connection, name: str) -> None:
    db.execute(f"ROLLBACK TO SAVEPOINT {name}")
    db.execute(f"RELEASE SAVEPOINT {name}")
