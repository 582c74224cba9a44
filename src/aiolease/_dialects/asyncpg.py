"""Transaction dialect for asyncpg connections (and asyncpg pool proxies)."""

from __future__ import annotations

from typing import Any

import asyncpg

from .._compat.asyncpg import SEES_CANCELLING, cancelling, end_cancelled
from ._base import Dialect
from ._pg import begin_sql, ended_idle

__all__ = ["AsyncpgDialect"]


class AsyncpgDialect(Dialect[Any]):
    """Plain SQL over asyncpg's simple-query path: one round trip per statement.

    The same statements ``asyncpg.Connection.transaction()`` sends, so the cost
    is the same; the status string of COMMIT tells whether PostgreSQL committed
    or (for an aborted transaction) rolled back.
    """

    name = "asyncpg"

    async def begin(self, conn: Any, isolation: str | None, readonly: bool) -> None:
        await conn.execute(begin_sql(isolation, readonly))

    async def commit(self, conn: Any) -> bool | None:
        if _ended(conn):
            # A statement of the block ended the transaction (a COMMIT or ROLLBACK
            # sent by hand): a COMMIT now would only draw a warning and report
            # success for work that may have been rolled back.
            return None
        status: str = await conn.execute("COMMIT")
        return status == "COMMIT"

    async def rollback(self, conn: Any) -> bool:
        # Read before: ROLLBACK goes out anyway (harmless outside a transaction), as
        # a BEGIN whose caller was cancelled may still be on its way.
        ended = _ended(conn)
        # Behind a cancelled statement: its end first, the cancel request sent again while
        # it runs (the server drops one that overtook it; atomic bounds the wait).
        await end_cancelled(conn)
        await conn.execute("ROLLBACK")
        return not ended

    async def savepoint(self, conn: Any, name: str) -> None:
        await conn.execute(f"SAVEPOINT {name}")

    async def release_savepoint(self, conn: Any, name: str) -> None:
        await conn.execute(f"RELEASE SAVEPOINT {name}")

    async def rollback_to_savepoint(self, conn: Any, name: str) -> None:
        await end_cancelled(conn)  # (as in rollback)
        # Simple query protocol: both statements in one round trip.
        await conn.execute(f"ROLLBACK TO SAVEPOINT {name}; RELEASE SAVEPOINT {name}")

    def abort(self, conn: Any) -> None:
        # Closes the socket at once; a statement still waiting fails with
        # ConnectionDoesNotExistError.
        conn.terminate()

    def cancel_pending(self, conn: Any) -> bool | None:
        # asyncpg queues the next statement behind its cancel request of the cancelled
        # one; public mode cannot see that request (None: atomic bounds a clean-up after
        # a cancellation or a timeout as if one were pending).
        return cancelling(conn) if SEES_CANCELLING else None

    def in_transaction(self, conn: Any) -> bool:
        # A closed connection keeps the status of its last statement: in no transaction
        # (BEGIN then raises asyncpg's own "connection is closed").
        return bool(conn.is_in_transaction()) and not conn.is_closed()

    def rolls_back_by_itself(self, exc: BaseException) -> bool:
        return ended_idle(exc)

    def is_closed(self, conn: Any) -> bool:
        # asyncpg refuses an operation on a closed connection before sending anything.
        return bool(conn.is_closed())

    def is_connection_error(self, exc: BaseException, conn: Any) -> bool:
        if isinstance(exc, asyncpg.exceptions.ConnectionDoesNotExistError):
            return True
        if super().is_connection_error(exc, conn):
            return True
        try:
            return bool(conn.is_closed())
        except Exception:  # a released pool proxy raises
            return True


def _ended(conn: Any) -> bool:
    """Whether the transaction is over although the connection is open (a statement
    of the block ended it); read from the status of the last statement, no I/O. A cut
    connection first: asyncpg's ``is_in_transaction()`` fails on one (no protocol left)."""
    return not conn.is_closed() and not conn.is_in_transaction()
