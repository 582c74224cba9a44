"""Transaction dialect for psycopg 3 ``AsyncConnection``.

``atomic`` drives psycopg's own transaction objects through their public
async-context-manager protocol: the outermost block is ``conn.transaction()``
and a nested block with a savepoint is ``conn.transaction(savepoint_name=...)``.
So every statement inside ``atomic`` behaves exactly as inside psycopg's
``conn.transaction()``: psycopg binds the parameters, chooses the protocol,
keeps its prepared-statement cache (cleared on rollback, as psycopg does) and
raises its own errors. aiolease adds only what psycopg's objects do not do:

* ``isolation``/``readonly``: a ``SET TRANSACTION`` right after BEGIN (one
  more round trip, only when asked for);
* knowing whether COMMIT committed: a transaction psycopg reports aborted
  (``INERROR``) before COMMIT is rolled back by PostgreSQL;
* noticing a failed rollback: psycopg logs it and carries on, so the dialect
  checks the connection's state afterwards and raises.

BEGIN travels on its own (no statement is merged with it, no pipeline is
opened): one round trip more than a hand-merged BEGIN, and the only way that
leaves the driver's semantics untouched.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import pq, sql

from ._base import Dialect
from ._pg import ended_idle

__all__ = ["PsycopgDialect"]

_IDLE = pq.TransactionStatus.IDLE
_INTRANS = pq.TransactionStatus.INTRANS
_INERROR = pq.TransactionStatus.INERROR
_UNKNOWN = pq.TransactionStatus.UNKNOWN

_SET_TRANSACTION: dict[tuple[str | None, bool], sql.Composable] = {}


def _set_transaction(isolation: str | None, readonly: bool) -> sql.Composable:
    key = (isolation, readonly)
    statement = _SET_TRANSACTION.get(key)
    if statement is None:
        words = []
        if isolation is not None:
            words.append(f"ISOLATION LEVEL {isolation.upper()}")
        if readonly:
            words.append("READ ONLY")
        statement = _SET_TRANSACTION[key] = sql.SQL("SET TRANSACTION " + " ".join(words))
    return statement


def _state(conn: Any) -> str:
    if conn.closed:
        return "closed"
    if conn.broken:
        return "broken"
    return f"in transaction status {pq.TransactionStatus(conn.pgconn.transaction_status).name}"


class PsycopgDialect(Dialect[Any]):
    """psycopg 3 ``AsyncConnection``, through psycopg's own transaction objects."""

    name = "psycopg"

    def __init__(self) -> None:
        # id(conn) -> the connection's open blocks, outermost first: the context
        # manager ``conn.transaction()`` returned and the AsyncTransaction it
        # entered. Both hold the connection, so its id cannot be reused while
        # the entry exists; the entry goes with the outermost block.
        self._blocks: dict[int, list[tuple[Any, Any]]] = {}

    async def begin(self, conn: Any, isolation: str | None, readonly: bool) -> None:
        cm = conn.transaction()
        # psycopg undoes its own BEGIN when entering fails or is cancelled.
        tx = await cm.__aenter__()
        self._blocks[id(conn)] = [(cm, tx)]
        if isolation is not None or readonly:
            # Raising here makes atomic roll the transaction back (self.rollback).
            await conn.execute(_set_transaction(isolation, readonly), prepare=False)

    def _pop(self, conn: Any) -> tuple[Any, Any] | None:
        key = id(conn)
        blocks = self._blocks.get(key)
        if not blocks:
            return None
        block = blocks.pop()
        if not blocks:
            del self._blocks[key]
        return block

    async def commit(self, conn: Any) -> bool | None:
        block = self._pop(conn)
        if block is None:
            raise psycopg.OperationalError(f"no transaction to commit on {conn!r}")
        status = conn.pgconn.transaction_status
        if status == _IDLE:
            # A statement of the block ended the transaction (a COMMIT or ROLLBACK
            # sent by hand): nothing to commit. psycopg's block is still left,
            # rolling back as psycopg does (a no-op on the server).
            await self._roll_back(conn, block, "ROLLBACK", _IDLE)
            return None
        # PostgreSQL turns the COMMIT of an aborted transaction into a ROLLBACK.
        aborted = status == _INERROR
        await block[0].__aexit__(None, None, None)
        if conn.broken or conn.closed:
            # psycopg skips COMMIT on a connection it knows is gone: gone before this
            # COMMIT (which would have raised had it failed), so it was not sent.
            raise psycopg.OperationalError(f"the connection is {_state(conn)}: COMMIT was not sent")
        return not aborted

    async def rollback(self, conn: Any) -> bool:
        block = self._pop(conn)
        if block is None:
            return True  # BEGIN did not happen (psycopg undid it)
        ended = conn.pgconn.transaction_status == _IDLE  # a statement of the block ended it
        await self._roll_back(conn, block, "ROLLBACK", _IDLE)
        return not ended

    async def savepoint(self, conn: Any, name: str) -> None:
        cm = conn.transaction(savepoint_name=name)
        tx = await cm.__aenter__()
        self._blocks.setdefault(id(conn), []).append((cm, tx))

    async def release_savepoint(self, conn: Any, name: str) -> None:
        if conn.pgconn.transaction_status == _INERROR:
            # What RELEASE would answer, without the round trip; the savepoint
            # stays open so that atomic rolls back to it through psycopg.
            raise psycopg.errors.InFailedSqlTransaction(
                "current transaction is aborted, commands ignored until end of transaction block"
            )
        block = self._pop(conn)
        if block is None:
            raise psycopg.OperationalError(f"no savepoint {name} to release on {conn!r}")
        await block[0].__aexit__(None, None, None)

    async def rollback_to_savepoint(self, conn: Any, name: str) -> None:
        block = self._pop(conn)
        if block is None:
            raise psycopg.OperationalError(f"no savepoint {name} to roll back to on {conn!r}")
        await self._roll_back(conn, block, f"ROLLBACK TO SAVEPOINT {name}", _INTRANS)

    @staticmethod
    async def _roll_back(
        conn: Any, block: tuple[Any, Any], what: str, expected: pq.TransactionStatus
    ) -> None:
        cm, tx = block
        tx.force_rollback = True  # public: roll back on a clean exit
        await cm.__aexit__(None, None, None)
        # psycopg logs a failed rollback ("error ignored in rollback") and
        # returns: the connection's state tells whether it worked.
        if conn.closed or conn.broken or conn.pgconn.transaction_status != expected:
            raise psycopg.OperationalError(
                f"{what} failed: the connection is {_state(conn)} "
                "(psycopg logged the error on logger 'psycopg')"
            )

    def abort(self, conn: Any) -> None:
        # Nothing to add: atomic cancels the abandoned clean-up, and psycopg's
        # AsyncConnection.wait answers a cancellation by sending a cancel
        # request and, when the server does not answer within its bound (on
        # the connections of aiolease's psycopg pools, the cancel grace: see
        # aiolease._compat.psycopg), finishing the connection itself. Closing
        # the socket here instead would close it under psycopg's pending wait. The pool closes the
        # connection (marked broken) in a task of its own.
        return

    def rolls_back_by_itself(self, exc: BaseException) -> bool:
        return ended_idle(exc)

    def is_closed(self, conn: Any) -> bool:
        # psycopg skips COMMIT on a connection it knows is closed or broken.
        return bool(conn.closed or conn.broken)

    def in_transaction(self, conn: Any) -> bool:
        # UNKNOWN: a closed or broken connection, in no transaction; BEGIN then
        # fails with psycopg's own error ("the connection is closed").
        return bool(conn.pgconn.transaction_status not in (_IDLE, _UNKNOWN))

    def is_connection_error(self, exc: BaseException, conn: Any) -> bool:
        if super().is_connection_error(exc, conn):
            return True
        if conn.closed or conn.broken:
            return True
        return isinstance(exc, psycopg.OperationalError) and getattr(exc, "sqlstate", None) is None
