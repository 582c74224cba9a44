"""FakeConnection: an in-memory SQL connection double with real transaction semantics.

It understands transaction control the way PostgreSQL does (BEGIN, COMMIT,
ROLLBACK, SAVEPOINT, RELEASE, ROLLBACK TO, the aborted state after an error)
and treats every other statement as opaque work: it is recorded, answered
from a script, and "committed" or thrown away with its transaction. Use it to
test transaction code without a database, deterministically.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from typing import Any

from .._dialects._base import Dialect
from .._dialects._pg import begin_sql
from .._limits._validate import check_positive

__all__ = [
    "FakeConnection",
    "FakeConnectionLost",
    "FakeCursor",
    "FakeDatabase",
    "FakeDatabaseError",
    "FakeDialect",
    "FakeGate",
]

_IDLE, _INTRANS, _INERROR = "idle", "intrans", "inerror"
_CONTROL = frozenset(
    {"BEGIN", "START", "COMMIT", "END", "ROLLBACK", "ABORT", "SAVEPOINT", "RELEASE"}
)

_SAVEPOINT = re.compile(r"SAVEPOINT\s+(\w+)$", re.I)
_RELEASE = re.compile(r"RELEASE(?:\s+SAVEPOINT)?\s+(\w+)$", re.I)
_ROLLBACK_TO = re.compile(r"ROLLBACK\s+TO(?:\s+SAVEPOINT)?\s+(\w+)$", re.I)


class FakeDatabaseError(Exception):
    """A statement of a :class:`FakeConnection` failed (like a server-side error).

    Attributes:
        sqlstate: the PostgreSQL SQLSTATE it stands for ("40001" is a
            serialization failure, "25P02" an aborted transaction, ...).
    """

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class FakeConnectionLost(ConnectionError):
    """The :class:`FakeConnection` was dropped (see :meth:`FakeConnection.drop_on_commit`)."""


@dataclass(eq=False)
class FakeDatabase:
    """What the connections sharing it have committed: ``(sql, args)`` in commit order."""

    committed: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)


class FakeGate:
    """Holds the statements matching a pattern until :meth:`open` (see :meth:`FakeConnection.gate`).

    Attributes:
        reached: set when a matching statement starts waiting at the gate.
    """

    __slots__ = ("_open", "pattern", "reached")

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self.pattern = pattern
        self.reached = asyncio.Event()
        self._open = asyncio.Event()

    def open(self) -> None:
        """Let the held statement (and every later matching one) through."""
        self._open.set()


@dataclass(eq=False)
class _Script:
    pattern: re.Pattern[str]
    rows: Any
    error: BaseException | None
    times: int | None


def _as_rows(result: Any) -> list[Any]:
    """A statement's answer as a list of rows: scripted rows as given (a single
    row that is not a list becomes ``[row]``), a status string as no rows."""
    if result is None or isinstance(result, str):
        return []
    if isinstance(result, list):
        return result
    if isinstance(result, tuple | dict):
        return [result]
    return list(result)


def _first_column(row: Any, column: int) -> Any:
    if isinstance(row, dict):
        return list(row.values())[column]
    if isinstance(row, tuple | list):
        return row[column]
    return row


class FakeCursor:
    """Cursor-style access to a :class:`FakeConnection` (what ``conn.cursor()`` returns).

    Shaped like psycopg's and DB-API cursors: ``await cur.execute(sql, params)``
    then ``fetchone()``/``fetchmany()``/``fetchall()`` (awaitable), ``rowcount``,
    ``async with`` and ``async for``. Each ``execute`` goes through the
    connection, so it is recorded in :attr:`FakeConnection.statements`.
    """

    def __init__(self, connection: FakeConnection) -> None:
        self.connection = connection
        self.closed = False
        self._rows: list[Any] = []
        self._pos = 0
        #: Rows of the last ``execute`` (-1 before any).
        self.rowcount = -1

    async def execute(self, sql: str, params: Any = None) -> FakeCursor:
        """Run ``sql`` with ``params`` (a sequence, or None); returns the cursor."""
        if self.closed:
            raise FakeDatabaseError("the cursor is closed")
        args = () if params is None else tuple(params)
        self._rows = _as_rows(await self.connection.execute(sql, *args))
        self._pos = 0
        self.rowcount = len(self._rows)
        return self

    async def executemany(self, sql: str, params_seq: Any) -> None:
        for params in params_seq:
            await self.execute(sql, params)

    async def fetchone(self) -> Any:
        if self._pos >= len(self._rows):
            return None
        row = self._rows[self._pos]
        self._pos += 1
        return row

    async def fetchmany(self, size: int = 1) -> list[Any]:
        rows = self._rows[self._pos : self._pos + size]
        self._pos += len(rows)
        return rows

    async def fetchall(self) -> list[Any]:
        rows = self._rows[self._pos :]
        self._pos = len(self._rows)
        return rows

    async def close(self) -> None:
        self.closed = True

    async def __aenter__(self) -> FakeCursor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __aiter__(self) -> FakeCursor:
        return self

    async def __anext__(self) -> Any:
        if self._pos >= len(self._rows):
            raise StopAsyncIteration
        return await self.fetchone()


class FakeConnection:
    """An in-memory connection double driven with ``await conn.execute(sql, *args)``.

    Constructible with no arguments. Everything it receives is appended to
    :attr:`statements`, transaction control included.

    It speaks the shapes code is written against, so code written for a
    driver can be tested without an adapter: asyncpg-style
    (:meth:`execute`, :meth:`fetch`, :meth:`fetchrow`, :meth:`fetchval`,
    :meth:`executemany`) and cursor-style (:meth:`cursor`, then
    ``execute``/``fetchone``/``fetchall`` on the :class:`FakeCursor`). Rows
    come from :meth:`script`. Work done inside a
    transaction reaches :attr:`committed` only when the transaction commits
    (minus what savepoints rolled back). After a failing statement inside a
    transaction every statement fails with SQLSTATE 25P02 until ROLLBACK (or
    ROLLBACK TO SAVEPOINT), and COMMIT answers "ROLLBACK", as in PostgreSQL.

    Faults and results are injected with :meth:`script`, :meth:`fail_commit`,
    :meth:`drop_on_commit` and :meth:`gate`. ``aiolease.atomic()`` drives it
    through a registered dialect.

    Args:
        database: share committed data with other connections (by default each
            connection has its own :class:`FakeDatabase`).
        latency: seconds every statement takes (on the loop's clock). Zero
            still yields to the event loop once per statement.
    """

    def __init__(self, *, database: FakeDatabase | None = None, latency: float = 0.0) -> None:
        self.latency = check_positive("latency", latency, inclusive=True)
        self.database = database if database is not None else FakeDatabase()
        #: Every SQL string received, in order (transaction control included).
        self.statements: list[str] = []
        #: Arguments of each statement, parallel to :attr:`statements`.
        self.arguments: list[tuple[Any, ...]] = []
        self.closed = False
        self._status = _IDLE
        self._work: list[tuple[str, tuple[Any, ...]]] = []
        self._savepoints: list[tuple[str, int]] = []
        self._scripts: list[_Script] = []
        self._gates: list[FakeGate] = []
        self._commits = 0
        self._commit_faults: dict[int, tuple[str, Any]] = {}
        self._busy = False

    # -- inspection -------------------------------------------------------------

    @property
    def committed(self) -> list[tuple[str, tuple[Any, ...]]]:
        """The committed ``(sql, args)`` of the database this connection uses."""
        return self.database.committed

    @property
    def transaction_status(self) -> str:
        """``"idle"``, ``"intrans"`` or ``"inerror"`` (aborted, waiting for ROLLBACK)."""
        return self._status

    @property
    def in_transaction(self) -> bool:
        return self._status != _IDLE

    def __repr__(self) -> str:
        state = "closed" if self.closed else self._status
        return f"<FakeConnection {state} at 0x{id(self):x}>"

    # -- fault and result injection --------------------------------------------

    def script(
        self,
        pattern: str | re.Pattern[str],
        *,
        rows: Any = None,
        error: BaseException | None = None,
        times: int | None = None,
    ) -> None:
        """Answer statements matching ``pattern`` (``re.search``, case-insensitive) with ``rows``.

        With ``error`` the statement raises it instead (inside a transaction
        that aborts the transaction, as a server error does). Transaction
        control statements (BEGIN, COMMIT, ROLLBACK, SAVEPOINT...) obey error
        rules only, and fail without changing the transaction state. ``times`` limits
        how many statements the rule serves (None: all). The first matching
        rule wins; statements no rule matches return ``"OK"``.
        """
        if rows is not None and error is not None:
            raise ValueError("script() takes rows or error, not both")
        if times is not None and times < 1:
            raise ValueError(f"times must be >= 1 or None, got {times!r}")
        compiled = pattern if isinstance(pattern, re.Pattern) else re.compile(pattern, re.I)
        self._scripts.append(_Script(compiled, rows, error, times))

    def fail_commit(self, n: int = 1, *, sqlstate: str = "40001") -> None:
        """Make the ``n``-th COMMIT from now fail with ``sqlstate`` (default 40001).

        The transaction is rolled back, as PostgreSQL does when COMMIT fails.
        """
        self._commit_faults[self._commits + n] = ("fail", sqlstate)

    def drop_on_commit(self, n: int = 1, *, committed: bool = False) -> None:
        """Drop the connection during the ``n``-th COMMIT from now.

        ``committed`` decides whether the database applied the commit before
        the connection was lost (the client cannot know). The COMMIT raises
        :class:`FakeConnectionLost` and the connection is closed.
        """
        self._commit_faults[self._commits + n] = ("drop", committed)

    def hang(self, pattern: str | re.Pattern[str]) -> FakeGate:
        """Never answer the statements matching ``pattern``: a silent peer.

        The statement is recorded and then waits until the task is cancelled
        (or the returned gate is opened). Use it to test that clean-up is
        bounded (``atomic(cleanup_timeout=...)``) and that cancellation goes on.
        """
        return self.gate(pattern)

    def gate(self, pattern: str | re.Pattern[str]) -> FakeGate:
        """Hold every statement matching ``pattern`` until the returned gate is opened.

        The statement is recorded first; ``gate.reached`` is set while it
        waits, so a test can cancel the task exactly there.
        """
        compiled = pattern if isinstance(pattern, re.Pattern) else re.compile(pattern, re.I)
        gate = FakeGate(compiled)
        self._gates.append(gate)
        return gate

    # -- the connection API -------------------------------------------------------

    async def execute(self, sql: str, *args: Any) -> Any:
        """Run one statement.

        Returns:
            The scripted rows for a matching statement, else a status string
            ("BEGIN", "COMMIT", "ROLLBACK", ... or "OK").

        Raises:
            FakeConnectionLost: the connection is closed, or was dropped now.
            FakeDatabaseError: a scripted error, a transaction-control error,
                an injected commit failure, or 25P02 in an aborted transaction;
                "another operation is in progress" when two tasks use the
                connection at once.
        """
        if self.closed:
            raise FakeConnectionLost("the connection is closed")
        if self._busy:
            raise FakeDatabaseError(
                "cannot perform operation: another operation is in progress", sqlstate=None
            )
        self.statements.append(sql)
        self.arguments.append(args)
        self._busy = True
        try:
            for gate in self._gates:
                if gate.pattern.search(sql):
                    gate.reached.set()
                    await gate._open.wait()
            if self.latency:
                await asyncio.sleep(self.latency)
            else:
                await asyncio.sleep(0)
        finally:
            self._busy = False
        # Applied in one synchronous step after the wait: a statement whose
        # wait was cancelled had no effect.
        return self._apply(sql, args)

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        """Run ``sql`` (asyncpg-style) and return its rows (scripted; else ``[]``)."""
        return _as_rows(await self.execute(sql, *args))

    async def fetchrow(self, sql: str, *args: Any) -> Any:
        """Run ``sql`` and return its first row, or None."""
        rows = await self.fetch(sql, *args)
        return rows[0] if rows else None

    async def fetchval(self, sql: str, *args: Any, column: int = 0) -> Any:
        """Run ``sql`` and return ``column`` of its first row, or None."""
        row = await self.fetchrow(sql, *args)
        return None if row is None else _first_column(row, column)

    async def executemany(self, sql: str, args: Any) -> None:
        """Run ``sql`` once per argument tuple in ``args`` (each one is recorded)."""
        for one in args:
            await self.execute(sql, *one)

    def cursor(self) -> FakeCursor:
        """A cursor (psycopg/DB-API style) over this connection."""
        return FakeCursor(self)

    async def close(self) -> None:
        """Close the connection; an open transaction is rolled back."""
        self._reset()
        self.closed = True

    # -- the state machine ------------------------------------------------------

    def _reset(self) -> None:
        self._status = _IDLE
        self._work = []
        self._savepoints = []

    def _failed_transaction_error(self) -> FakeDatabaseError:
        return FakeDatabaseError(
            "current transaction is aborted, commands ignored until end of transaction block",
            sqlstate="25P02",
        )

    def _apply(self, sql: str, args: tuple[Any, ...]) -> Any:
        text = sql.strip().rstrip(";").strip()
        head = text.split(None, 1)[0].upper() if text else ""
        if head in _CONTROL:
            # Transaction control obeys only scripted errors (to inject faults).
            for rule in self._scripts:
                if rule.error is not None and rule.pattern.search(sql):
                    self._use(rule)
                    raise rule.error
        if head in ("BEGIN", "START"):
            if self._status == _IDLE:
                self._status = _INTRANS
            return "BEGIN"
        if head in ("COMMIT", "END"):
            return self._commit()
        if head == "ROLLBACK" or head == "ABORT":
            m = _ROLLBACK_TO.match(text)
            if m is None:
                self._reset()
                return "ROLLBACK"
            return self._rollback_to(m.group(1))
        if head == "SAVEPOINT":
            m = _SAVEPOINT.match(text)
            self._require_transaction("SAVEPOINT")
            assert m is not None
            self._savepoints.append((m.group(1).lower(), len(self._work)))
            return "SAVEPOINT"
        if head == "RELEASE":
            m = _RELEASE.match(text)
            self._require_transaction("RELEASE SAVEPOINT")
            assert m is not None
            index = self._find_savepoint(m.group(1))
            del self._savepoints[index:]
            return "RELEASE"
        return self._work_statement(sql, args)

    def _require_transaction(self, what: str) -> None:
        if self._status == _IDLE:
            raise FakeDatabaseError(f"{what} can only be used in transaction blocks", "25P01")
        if self._status == _INERROR:
            raise self._failed_transaction_error()

    def _find_savepoint(self, name: str) -> int:
        name = name.lower()
        for index in range(len(self._savepoints) - 1, -1, -1):
            if self._savepoints[index][0] == name:
                return index
        self._status = _INERROR
        raise FakeDatabaseError(f"savepoint {name!r} does not exist", "3B001")

    def _rollback_to(self, name: str) -> str:
        if self._status == _IDLE:
            raise FakeDatabaseError(
                "ROLLBACK TO SAVEPOINT can only be used in transaction blocks", "25P01"
            )
        index = self._find_savepoint(name)
        mark = self._savepoints[index][1]
        del self._savepoints[index + 1 :]
        del self._work[mark:]
        self._status = _INTRANS
        return "ROLLBACK"

    def _commit(self) -> str:
        self._commits += 1
        fault = self._commit_faults.pop(self._commits, None)
        if self._status == _IDLE:
            return "COMMIT"  # PostgreSQL only warns: there is no transaction in progress
        if self._status == _INERROR:
            self._reset()
            return "ROLLBACK"
        if fault is not None:
            kind, value = fault
            if kind == "drop":
                if value:
                    self.database.committed.extend(self._work)
                self._reset()
                self.closed = True
                raise FakeConnectionLost("server closed the connection unexpectedly during COMMIT")
            self._reset()
            raise FakeDatabaseError(
                "could not serialize access due to concurrent update (injected)", sqlstate=value
            )
        self.database.committed.extend(self._work)
        self._reset()
        return "COMMIT"

    def _use(self, rule: _Script) -> None:
        if rule.times is not None:
            rule.times -= 1
            if rule.times == 0:
                self._scripts.remove(rule)

    def _work_statement(self, sql: str, args: tuple[Any, ...]) -> Any:
        if self._status == _INERROR:
            raise self._failed_transaction_error()
        for rule in self._scripts:
            if rule.pattern.search(sql):
                self._use(rule)
                if rule.error is not None:
                    if self._status == _INTRANS:
                        self._status = _INERROR
                    raise rule.error
                result = rule.rows
                break
        else:
            result = "OK"
        if self._status == _IDLE:
            self.database.committed.append((sql, args))
        else:
            self._work.append((sql, args))
        return result


class FakeDialect(Dialect[FakeConnection]):
    """PostgreSQL-style transaction control over :class:`FakeConnection`."""

    name = "fake"

    async def begin(self, conn: FakeConnection, isolation: str | None, readonly: bool) -> None:
        await conn.execute(begin_sql(isolation, readonly))

    async def commit(self, conn: FakeConnection) -> bool:
        return bool(await conn.execute("COMMIT") == "COMMIT")

    async def rollback(self, conn: FakeConnection) -> None:
        await conn.execute("ROLLBACK")

    async def savepoint(self, conn: FakeConnection, name: str) -> None:
        await conn.execute(f"SAVEPOINT {name}")

    async def release_savepoint(self, conn: FakeConnection, name: str) -> None:
        await conn.execute(f"RELEASE SAVEPOINT {name}")

    async def rollback_to_savepoint(self, conn: FakeConnection, name: str) -> None:
        await conn.execute(f"ROLLBACK TO SAVEPOINT {name}")
        await conn.execute(f"RELEASE SAVEPOINT {name}")

    def in_transaction(self, conn: FakeConnection) -> bool:
        return conn.in_transaction

    def is_connection_error(self, exc: BaseException, conn: FakeConnection) -> bool:
        return conn.closed or super().is_connection_error(exc, conn)
