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

Writes start with ``BEGIN IMMEDIATE`` so the busy timeout applies when the
write lock is taken, instead of a deferred transaction failing with "database
is locked" when it first writes.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from ._base import Dialect

__all__ = ["AiosqliteDialect"]

# sqlite3 primary result codes that mean "another connection holds the lock".
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
# Marker on a connection whose block began read-only (query_only must be reset).
_READONLY = "_aiolease_readonly"


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
        if readonly:
            conn.__dict__[_READONLY] = True
            wrapper = _make_first(conn, _begin_readonly)
        else:
            wrapper = _make_first(conn, _begin_immediate)
        # An instance attribute shadows the method for this block only.
        conn.__dict__["_execute"] = wrapper

    async def commit(self, conn: Any) -> bool:
        state = conn.__dict__
        readonly = state.pop(_READONLY, False)
        if state.pop("_execute", None) is not None:
            return True  # the block ran no statement: nothing began, nothing to commit
        return bool(await conn._execute(_commit, conn._conn, readonly))

    async def rollback(self, conn: Any) -> None:
        readonly = bool(conn.__dict__.pop(_READONLY, False))
        if conn.__dict__.pop("_execute", None) is not None:
            return  # nothing began
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
