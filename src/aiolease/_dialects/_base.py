"""The Dialect extension point (public as :class:`aiolease.abc.Dialect`)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Generic, TypeVar

from .._liveness import CANCEL_GRACE

__all__ = ["ISOLATION_LEVELS", "Dialect", "sqlstate_of"]

C = TypeVar("C")

#: Every isolation level aiolease knows, lower case; a dialect accepts a subset.
ISOLATION_LEVELS = frozenset({"read committed", "repeatable read", "serializable"})

# SQLSTATEs that mean "run the whole transaction again".
_RETRYABLE = frozenset({"40001", "40P01"})


def sqlstate_of(exc: BaseException) -> str | None:
    """The SQLSTATE of a database error (asyncpg and psycopg both expose ``.sqlstate``)."""
    state = getattr(exc, "sqlstate", None)
    return state if isinstance(state, str) else None


class Dialect(ABC, Generic[C]):
    """How :func:`aiolease.atomic` drives one kind of connection.

    A dialect is stateless and shared by every connection of its type; each
    method gets the connection. The transaction bookkeeping (nesting, hooks,
    ownership, retries) lives in aiolease; the dialect only issues the
    statements and classifies the driver's errors. Register one with
    :func:`aiolease.register_dialect`.

    The defaults of the classification methods follow PostgreSQL's SQLSTATEs
    read from ``exc.sqlstate``.
    """

    #: Short name used in messages ("asyncpg", "sqlite", ...).
    name: ClassVar[str] = "custom"
    #: The isolation levels the database accepts (lower case, a subset of ISOLATION_LEVELS).
    isolation_levels: ClassVar[frozenset[str]] = ISOLATION_LEVELS
    #: Seconds a clean-up statement (ROLLBACK, ROLLBACK TO SAVEPOINT) may take
    #: before ``atomic`` abandons the connection; ``atomic(cleanup_timeout=...)``
    #: overrides it per block.
    cleanup_timeout: ClassVar[float] = 5.0
    #: Seconds a clean-up statement may wait behind a statement the driver is still
    #: cancelling (see :meth:`cancel_pending`) before ``atomic`` abandons the connection
    #: (at most ``cleanup_timeout``; default 0.5): a live server answers a cancel request
    #: within a round trip or two, a silent peer never does, and meanwhile the
    #: connection's pool slot stays taken.
    cancel_grace: ClassVar[float] = CANCEL_GRACE

    @abstractmethod
    async def begin(self, conn: C, isolation: str | None, readonly: bool) -> None:
        """Start a transaction; ``isolation`` is None (the default level) or a lower-case level."""

    @abstractmethod
    async def commit(self, conn: C) -> bool | None:
        """Commit the transaction.

        Returns:
            True when it committed; False when the database ended it with a
            rollback instead (PostgreSQL does that to a transaction aborted by
            an earlier error); None when no transaction was open any more, so
            nothing was sent: a statement of the block ended it (a ``COMMIT``
            or ``ROLLBACK`` sent by hand; SQLite also rolls back by itself
            after some errors), and whether its work was committed is not
            known (``atomic`` then runs no hook).

        Raises:
            Exception: the commit failed; the transaction must be over when
                this raises (PostgreSQL ends it; a dialect whose database does
                not must roll back before raising).
        """

    @abstractmethod
    async def rollback(self, conn: C) -> bool | None:
        """Roll the transaction back.

        Returns:
            False when no transaction was open any more: a statement of the
            block had ended it (see :meth:`commit`), and whether its work was
            committed is not known (``atomic`` then runs no hook). True, or
            None for a dialect that cannot tell: it rolled back.
        """

    @abstractmethod
    async def savepoint(self, conn: C, name: str) -> None:
        """Create savepoint ``name`` inside the open transaction."""

    @abstractmethod
    async def release_savepoint(self, conn: C, name: str) -> None:
        """Release (keep the work of) savepoint ``name``."""

    @abstractmethod
    async def rollback_to_savepoint(self, conn: C, name: str) -> None:
        """Undo the work since savepoint ``name`` and release it."""

    def abort(self, conn: C) -> None:
        """Abort ``conn``'s transport at once, without waiting for the peer.

        Called (synchronously) when a clean-up statement got no answer within
        ``cleanup_timeout``: the connection has been marked broken and is being
        abandoned. Implement it only with the driver's public API; the default
        does nothing (the pool that owns the connection closes it).
        """

    def cancel_pending(self, conn: C) -> bool | None:
        """Whether a statement cancelled on ``conn`` is still being cancelled (the driver
        has not heard the server end it yet), answered without I/O. A clean-up statement
        queued behind it waits only ``cancel_grace`` seconds. None: the driver cannot
        tell, so a clean-up after a cancellation or a timeout (when a statement may have
        been cut short) waits only ``cancel_grace`` seconds too. The default answers False
        (no driver-side cancel to wait behind: the clean-up gets the whole
        ``cleanup_timeout``).
        """
        return False

    def in_transaction(self, conn: C) -> bool:
        """Whether ``conn`` is inside a transaction right now (answered without I/O).

        aiolease asks before its outermost BEGIN, to refuse to run inside a
        transaction it does not manage. The default answers False (unknown).
        """
        return False

    def rolls_back_by_itself(self, exc: BaseException) -> bool:
        """Whether the database ends the transaction with a rollback when a statement fails
        with ``exc`` (SQLite does after some errors; PostgreSQL ends an idle-in-transaction
        session, SQLSTATE 25P03, before the statement or the COMMIT that gets the error can
        run). A block ending with such an error whose transaction is found over was rolled
        back, and so was a transaction whose COMMIT failed with it; any other ended
        transaction was ended by a statement of the block (a ``COMMIT`` or ``ROLLBACK`` sent
        by hand), with an outcome ``atomic`` cannot know. The default answers False."""
        return False

    def is_closed(self, conn: C) -> bool:
        """Whether ``conn`` is known to be closed, answered without I/O. ``atomic`` asks
        just before its COMMIT: a COMMIT on a connection closed already is never sent, and
        the server ended the session's transaction with a rollback, so the outcome is
        known. The default answers False (then a COMMIT that fails with a connection error
        has an unknown outcome)."""
        return False

    def is_retryable(self, exc: BaseException) -> bool:
        """Whether running the transaction again may succeed (serialization failure, deadlock)."""
        return sqlstate_of(exc) in _RETRYABLE

    def is_aborted_error(self, exc: BaseException) -> bool:
        """Whether ``exc`` says the transaction was already aborted by an earlier error (25P02)."""
        return sqlstate_of(exc) == "25P02"

    def is_connection_error(self, exc: BaseException, conn: C) -> bool:
        """Whether ``exc`` means the connection is gone (so a COMMIT's outcome is unknown)."""
        if isinstance(exc, OSError):
            return True
        state = sqlstate_of(exc)
        return state is not None and (
            state.startswith("08") or state in ("57P01", "57P02", "57P03")
        )
