"""Transaction dialect for aiosqlite connections.

Through aiosqlite's public API every statement is one thread hop to the
connection's worker thread: ``BEGIN IMMEDIATE`` (a read-only block: ``PRAGMA
query_only = 1`` and ``BEGIN DEFERRED``), the block's statements, then
``conn.commit()`` or ``conn.rollback()``. Writes start with ``BEGIN
IMMEDIATE`` so that the busy timeout applies when the write lock is taken,
instead of a deferred transaction failing with "database is locked" when it
first writes.

When :data:`aiolease._compat.aiosqlite.ENABLED` (aiosqlite's internals as
expected, ``AIOLEASE_COMPAT`` not ``public``), the same statements run in
fewer hops: BEGIN rides along with the block's first operation, and COMMIT
may run on the event loop for connections that opted in (see that module for
how and for the hazard). Which of the two is in force is chosen once, when
the dialect is made (:func:`aiosqlite_dialect`): its methods are then the
chosen path's functions, with no test per call.
"""

from __future__ import annotations

import sqlite3
import weakref
from typing import Any

from .._compat import aiosqlite as _fast
from .._compat.aiosqlite import LOOP_COMMIT_MAX_CHANGES, enable_loop_commit
from ._base import Dialect

__all__ = ["LOOP_COMMIT_MAX_CHANGES", "AiosqliteDialect", "aiosqlite_dialect", "enable_loop_commit"]

# sqlite3 primary result codes that mean "another connection holds the lock".
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
#: The primary result codes after which SQLite may roll the transaction back by itself:
#: BUSY, NOMEM, INTERRUPT, IOERR, FULL.
_AUTO_ROLLBACK = frozenset((5, 7, 9, 10, 13))


class AiosqliteDialect(Dialect[Any]):
    """aiosqlite through its public API: ``BEGIN IMMEDIATE``, statements, ``commit()``
    (see the module doc)."""

    name = "sqlite"
    isolation_levels = frozenset({"serializable"})

    def __init__(self) -> None:
        # Connections whose open block began read-only (query_only must be reset).
        self._readonly: weakref.WeakSet[Any] = weakref.WeakSet()
        # Connections whose open block found one of its savepoints gone: a statement of
        # the block ended the transaction atomic began (a COMMIT or ROLLBACK sent by
        # hand), and any transaction open now is not that one.
        self._lost: weakref.WeakSet[Any] = weakref.WeakSet()

    async def begin(self, conn: Any, isolation: str | None, readonly: bool) -> None:
        self._lost.discard(conn)
        if not readonly:
            await conn.execute("BEGIN IMMEDIATE")
            return
        self._readonly.add(conn)
        await conn.execute("PRAGMA query_only = 1")
        await conn.execute("BEGIN DEFERRED")

    async def commit(self, conn: Any) -> bool | None:
        if conn in self._lost:
            # Not the transaction the block began: never committed in its name.
            self._lost.discard(conn)
            await self.rollback(conn)
            return None
        if not conn.in_transaction:
            # SQLite ended the transaction itself (some errors roll back
            # automatically) or a statement of the block did.
            await self._end_readonly(conn)
            return None
        try:
            await conn.commit()
        except Exception:
            # The transaction must be over when commit() raises. (A cancelled
            # commit() is still queued in the worker thread: nothing to add.)
            if conn.in_transaction:
                await conn.rollback()
            await self._end_readonly(conn)
            raise
        except BaseException:
            # Cancelled: the COMMIT still runs in the worker thread, and the PRAGMA sent
            # now runs after it; else a read-only block would leave the connection
            # read-only (a pool discards it, but a connection of the caller's is kept).
            await self._end_readonly(conn)
            raise
        await self._end_readonly(conn)
        return True

    async def rollback(self, conn: Any) -> bool:
        # A statement of the block ended it.
        ended = not self.in_transaction(conn) or conn in self._lost
        self._lost.discard(conn)
        try:
            # Always sent (sqlite3 makes it a no-op outside a transaction): a
            # BEGIN or statement whose caller was cancelled may still be queued
            # in the worker thread, and this ROLLBACK runs after it.
            await conn.rollback()
        finally:
            await self._end_readonly(conn)
        return not ended

    async def _end_readonly(self, conn: Any) -> None:
        if conn in self._readonly:
            self._readonly.discard(conn)
            await conn.execute("PRAGMA query_only = 0")

    async def savepoint(self, conn: Any, name: str) -> None:
        await conn.execute(f"SAVEPOINT {name}")

    async def release_savepoint(self, conn: Any, name: str) -> None:
        try:
            await conn.execute(f"RELEASE SAVEPOINT {name}")
        except sqlite3.OperationalError as exc:
            self._check_lost(conn, exc)
            raise

    async def rollback_to_savepoint(self, conn: Any, name: str) -> None:
        try:
            await conn.execute(f"ROLLBACK TO SAVEPOINT {name}")
            await conn.execute(f"RELEASE SAVEPOINT {name}")
        except sqlite3.OperationalError as exc:
            self._check_lost(conn, exc)
            raise

    def _check_lost(self, conn: Any, exc: sqlite3.OperationalError) -> None:
        if "no such savepoint" in str(exc):
            self._lost.add(conn)

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

    def rolls_back_by_itself(self, exc: BaseException) -> bool:
        # sqlite.org/lang_transaction.html: SQLITE_FULL, IOERR, BUSY and NOMEM may roll the
        # transaction back; an interrupted INSERT, UPDATE or DELETE in a transaction does.
        code = getattr(exc, "sqlite_errorcode", None)
        return (
            isinstance(exc, sqlite3.Error)
            and isinstance(code, int)
            and code & 0xFF in _AUTO_ROLLBACK
        )

    def is_connection_error(self, exc: BaseException, conn: Any) -> bool:
        # A local file: a failed COMMIT is a definite failure (SQLite rolls
        # back what it could not commit), never an unknown outcome.
        return False


class _FencedAiosqliteDialect(AiosqliteDialect):
    """aiosqlite in fewer thread hops, through :mod:`aiolease._compat.aiosqlite`."""

    begin = staticmethod(_fast.begin)
    commit = staticmethod(_fast.commit)
    in_transaction = staticmethod(_fast.in_transaction)
    rollback = staticmethod(_fast.rollback)
    savepoint = staticmethod(_fast.savepoint)
    release_savepoint = staticmethod(_fast.release_savepoint)
    rollback_to_savepoint = staticmethod(_fast.rollback_to_savepoint)


def aiosqlite_dialect() -> AiosqliteDialect:
    """The dialect for aiosqlite connections: the fenced path when
    :data:`aiolease._compat.aiosqlite.ENABLED`, else the public API."""
    return _FencedAiosqliteDialect() if _fast.ENABLED else AiosqliteDialect()
