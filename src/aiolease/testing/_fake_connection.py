"""FakeConnection: an in-memory SQL connection double with real transaction semantics.

It understands transaction control the way PostgreSQL does (BEGIN, COMMIT,
ROLLBACK, SAVEPOINT, RELEASE, ROLLBACK TO, AND CHAIN, SET TRANSACTION, quoted and
folded savepoint names, comments, the aborted state after an error or a malformed control
statement, writes refused in a read-only transaction, two-phase commit as a server with
prepared transactions disabled answers it), refuses a string of several statements with
transaction control among them or with parameters (NotImplementedError: it does not model
their implicit transaction; several of plain work are one statement) and treats every other
statement as opaque work: it is recorded, answered from a script, and
"committed" or thrown away with its transaction. Use it to test transaction code
without a database, deterministically.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .. import _validate
from .._dialects._base import Dialect
from .._dialects._pg import begin_sql
from ._fake_sql import (
    _DEFAULT_ISOLATION,
    _WRITES,
    _head,
    _is_control,
    _only_in_a_block,
    _plain_work,
    _refused_in_a_block,
    _statements,
    _takes_snapshot,
    _tokens,
    _transaction_modes,
    _transaction_setting,
    _two_phase,
    _unmodelled,
)

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
    error: BaseException | type[BaseException] | None
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


def _cursor_args(params: Any) -> tuple[Any, ...]:
    """A cursor's parameters (a sequence, a mapping for named placeholders, or None) as the
    connection's arguments; a mapping is one argument."""
    if params is None:
        return ()
    if isinstance(params, Mapping):
        return (params,)  # tuple() of it would keep only the names
    return tuple(params)


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
        """Run ``sql`` with ``params`` (a sequence, a mapping for named placeholders, or
        None; a mapping is recorded as one argument); returns the cursor."""
        if self.closed:
            raise FakeDatabaseError("the cursor is closed")
        self._rows = _as_rows(await self.connection.execute(sql, *_cursor_args(params)))
        self._pos = 0
        self.rowcount = len(self._rows)
        return self

    async def executemany(self, sql: str, params_seq: Any) -> None:
        """Run ``sql`` once per parameter set, all or nothing outside a transaction (see
        :meth:`FakeConnection.executemany`); ``rowcount`` is -1 after it."""
        if self.closed:
            raise FakeDatabaseError("the cursor is closed")
        await self.connection.executemany(sql, [_cursor_args(p) for p in params_seq])
        self._rows, self._pos, self.rowcount = [], 0, -1

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
    ROLLBACK TO SAVEPOINT), and COMMIT answers "ROLLBACK", as in PostgreSQL. In a
    read-only transaction a statement starting with a write command (INSERT,
    UPDATE, DELETE, CREATE, ...) fails with SQLSTATE 25006; in any transaction, one
    PostgreSQL runs only outside a transaction block (VACUUM, CREATE INDEX CONCURRENTLY,
    ...) fails with 25001. Two-phase commit behaves as on a server with prepared
    transactions disabled (PostgreSQL's default). Comments are read as PostgreSQL reads
    them; a string holding several statements with transaction control among them, or with
    parameters, raises :class:`NotImplementedError` (the fake does not model a simple
    query's implicit transaction); several of plain work are one statement of work. A
    statement cancelled
    while it runs aborts the transaction it ran in, as the server's cancel does.

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
        self.latency = _validate.number("latency", latency, inclusive=True, unit=" of seconds")
        if database is not None and not isinstance(database, FakeDatabase):
            raise TypeError(
                "database must be a FakeDatabase or None, got "
                f"{type(database).__name__} {database!r}"
            )
        self.database = database if database is not None else FakeDatabase()
        #: Every SQL string received, in order (transaction control included).
        self.statements: list[str] = []
        #: Arguments of each statement, parallel to :attr:`statements`.
        self.arguments: list[tuple[Any, ...]] = []
        self.closed = False
        self._status = _IDLE
        self._work: list[tuple[str, tuple[Any, ...]]] = []
        # (name, statements done when it was set, the read-only mode on entry)
        self._savepoints: list[tuple[str, int, bool]] = []
        # The open transaction's characteristics, and whether a statement ran in it
        # (after which PostgreSQL refuses to change them).
        self._isolation = _DEFAULT_ISOLATION
        self._read_only = False
        self._snapshot = False
        # The modes the transaction started with (the defaults, or those AND CHAIN carried).
        self._start_modes = (_DEFAULT_ISOLATION, False)
        self._scripts: list[_Script] = []
        self._gates: list[FakeGate] = []
        self._commits = 0
        self._commit_faults: dict[int, tuple[str, Any]] = {}
        self._busy = False
        # The autocommitted work of an executemany under way (see executemany), else None.
        self._batch: list[tuple[str, tuple[Any, ...]]] | None = None

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
        error: BaseException | type[BaseException] | None = None,
        times: int | None = None,
    ) -> None:
        """Answer statements matching ``pattern`` (``re.search``, case-insensitive) with ``rows``.

        With ``error`` (an exception, or its class) the statement raises it instead
        (inside a transaction that aborts the transaction, as a server error does). Transaction
        control statements (BEGIN, COMMIT, ROLLBACK, SAVEPOINT...) obey error
        rules only, and fail without changing the transaction state. ``times`` (an int
        >= 1, else ``TypeError``/``ValueError``) limits how many statements the rule
        serves (None: all). The first matching
        rule wins; statements no rule matches return ``"OK"``.
        """
        if rows is not None and error is not None:
            raise ValueError("script() takes rows or error, not both")
        ok = isinstance(error, BaseException | None) or (
            isinstance(error, type) and issubclass(error, BaseException)
        )
        if not ok:
            raise TypeError(f"error must be an exception (instance or class), got {error!r}")
        if times is not None and (isinstance(times, bool) or not isinstance(times, int)):
            raise TypeError(f"times must be an int >= 1 or None, got {times!r}")
        if times is not None and times < 1:
            raise ValueError(f"times must be an int >= 1 or None, got {times!r}")
        compiled = _validate.check_pattern("pattern", pattern)
        self._scripts.append(_Script(compiled, rows, error, times))

    def fail_commit(self, n: int = 1, *, sqlstate: str = "40001") -> None:
        """Make the ``n``-th transaction's COMMIT from now fail with ``sqlstate`` (default 40001).

        The transaction is rolled back, as PostgreSQL does when COMMIT fails.

        Raises:
            ValueError, TypeError: ``n`` is not an int >= 1, ``sqlstate`` not 5 of [0-9A-Z].
        """
        _validate.check_sqlstate("sqlstate", sqlstate)
        self._commit_faults[self._commits + _nth(n)] = ("fail", sqlstate)

    def drop_on_commit(self, n: int = 1, *, committed: bool = False) -> None:
        """Drop the connection during the ``n``-th transaction's COMMIT from now.

        As for :meth:`fail_commit`, a COMMIT outside a transaction and one ending an
        aborted transaction (answered ROLLBACK) commit nothing and are not counted.

        ``committed`` decides whether the database applied the commit before
        the connection was lost (the client cannot know). The COMMIT raises
        :class:`FakeConnectionLost` and the connection is closed.

        Raises:
            ValueError: ``n`` is not an int >= 1.
            TypeError: ``committed`` is not True or False.
        """
        _validate.check_flag("committed", committed)
        self._commit_faults[self._commits + _nth(n)] = ("drop", committed)

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
        compiled = _validate.check_pattern("pattern", pattern)
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
            NotImplementedError: ``sql`` holds several statements with parameters, or
                with transaction control among them (``"BEGIN; INSERT ...; COMMIT"``),
                or is transaction control the fake does not model (``SET TRANSACTION
                SNAPSHOT``, a ``U&"..."`` name); nothing is recorded. (Several
                statements of plain work are one statement of work.)
        """
        statements = _statements(sql)
        shown = sql if len(sql) <= 200 else sql[:200] + "..."
        unmodelled = _unmodelled(statements[0]) if len(statements) == 1 else None
        if unmodelled is not None:
            raise NotImplementedError(
                f"FakeConnection does not model {unmodelled} (in {shown!r}); test it "
                "against PostgreSQL"
            )
        # The statement with its comments blanked and its ";" dropped: what is read for
        # transaction control and leading words ("" for an empty query).
        text = statements[0] if statements else ""
        if len(statements) > 1:
            plain = None if args else _plain_work(statements)
            if plain is None:
                raise NotImplementedError(
                    f"FakeConnection does not model several statements in one string "
                    f"({len(statements)} in {shown!r}) with parameters or with transaction "
                    "control among them: PostgreSQL runs those of a simple query as one "
                    "implicit transaction, and refuses them with parameters; send one "
                    "statement per execute()"
                )
            text = plain
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
        except asyncio.CancelledError:
            self._cancelled(text)
            raise
        finally:
            self._busy = False
        if self.closed:  # closed (or dropped) while the statement was on its way
            raise FakeConnectionLost("the connection was closed while the statement ran")
        # Applied in one synchronous step after the wait: a statement whose
        # wait was cancelled had no effect (but see _cancelled).
        return self._apply(sql, args, text)

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
        """Run ``sql`` once per argument tuple in ``args`` (each one is recorded).

        Outside a transaction the batch is all or nothing, as asyncpg and psycopg run it
        in one implicit transaction: a failing statement leaves none of the batch
        committed. Inside one, its statements are the transaction's work.
        """
        if self._status != _IDLE or self._batch is not None:
            for one in args:
                await self.execute(sql, *one)
            return
        batch: list[tuple[str, tuple[Any, ...]]] = []
        self._batch = batch
        try:
            for one in args:
                await self.execute(sql, *one)
        finally:
            self._batch = None
        self.database.committed.extend(batch)

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
        self._snapshot = False

    def _abort(self) -> None:
        """A statement failed inside the transaction: it is aborted until ROLLBACK."""
        if self._savepoints:
            # PostgreSQL aborts the subtransaction: the read-only mode is the one it had on
            # entry.
            self._read_only = self._savepoints[-1][2]
        else:
            # PostgreSQL aborts the top-level transaction there and then: the modes set in
            # it are undone, back to those it started with, which AND CHAIN carries over.
            self._isolation, self._read_only = self._start_modes
        self._status = _INERROR

    def _cancelled(self, text: str) -> None:
        """The caller was cancelled while the statement ``text`` ran: the driver has the
        server cancel it (SQLSTATE 57014), which aborts the transaction it ran in, as any
        error does. Transaction control is left as it was (it had no effect)."""
        control = _is_control(text) or _two_phase(text) is not None
        if self._status == _INTRANS and not self.closed and text and not control:
            self._abort()
            self._snapshot = self._snapshot or _takes_snapshot(text)

    def _failed_transaction_error(self) -> FakeDatabaseError:
        return FakeDatabaseError(
            "current transaction is aborted, commands ignored until end of transaction block",
            sqlstate="25P02",
        )

    def _apply(self, sql: str, args: tuple[Any, ...], text: str) -> Any:
        if not text:
            return None  # an empty query (only comments or ";"): no effect, even when aborted
        head = _head(text)
        two_phase = _two_phase(text)
        if two_phase is None and not _is_control(text):
            return self._work_statement(sql, args, text)
        # Transaction control obeys only scripted errors (to inject faults).
        for rule in self._scripts:
            if rule.error is not None and rule.pattern.search(sql):
                self._use(rule)
                raise rule.error
        if two_phase is not None:
            return self._prepared(text, *two_phase)
        setting = _transaction_setting(text)
        if setting:  # as SET TRANSACTION, with its checks (PostgreSQL's are the same)
            return self._begin("SET", f"SET TRANSACTION {setting}")
        if head in ("BEGIN", "START", "SET"):
            return self._begin(head, text)
        tokens = _tokens(text)
        if tokens is None:
            raise self._syntax_error(text)
        rest = tokens[1:]
        if head == "SAVEPOINT":
            if len(rest) != 1 or not rest[0].is_name:
                raise self._syntax_error(text)
            self._require_transaction("SAVEPOINT")
            self._savepoints.append((rest[0].name, len(self._work), self._read_only))
            return "SAVEPOINT"
        if head == "RELEASE":
            if len(rest) == 2 and rest[0].is_("SAVEPOINT"):
                rest = rest[1:]
            if len(rest) != 1 or not rest[0].is_name:
                raise self._syntax_error(text)
            self._require_transaction("RELEASE SAVEPOINT")
            index = self._find_savepoint(rest[0].name)
            # Ending a subtransaction, committed or not, restores its read-only mode on entry.
            self._read_only = self._savepoints[index][2]
            del self._savepoints[index:]
            return "RELEASE"
        # COMMIT | END | ROLLBACK | ABORT  [WORK | TRANSACTION]  [AND [NO] CHAIN]
        # ROLLBACK [WORK | TRANSACTION] TO [SAVEPOINT] name
        if rest and rest[0].is_("WORK", "TRANSACTION"):
            rest = rest[1:]
        if head == "ROLLBACK" and rest and rest[0].is_("TO"):
            rest = rest[1:]
            if len(rest) == 2 and rest[0].is_("SAVEPOINT"):
                rest = rest[1:]
            if len(rest) != 1 or not rest[0].is_name:
                raise self._syntax_error(text)
            return self._rollback_to(rest[0].name)
        if not rest or (
            len(rest) == 3 and rest[0].is_("AND") and rest[1].is_("NO") and rest[2].is_("CHAIN")
        ):
            chain = False
        elif len(rest) == 2 and rest[0].is_("AND") and rest[1].is_("CHAIN"):
            chain = True
        else:
            raise self._syntax_error(text)
        if chain and self._status == _IDLE:
            what = "COMMIT" if head in ("COMMIT", "END") else "ROLLBACK"
            raise FakeDatabaseError(
                f"{what} AND CHAIN can only be used in transaction blocks", "25P01"
            )
        modes = (self._isolation, self._read_only)
        if head in ("COMMIT", "END"):
            status = self._commit()  # a failed COMMIT raises: no new transaction
        else:
            self._reset()
            status = "ROLLBACK"
        if chain:  # a new transaction starts at once, with the same characteristics
            self._status = _INTRANS
            self._isolation, self._read_only = self._start_modes = modes
        return status

    def _begin(self, head: str, text: str) -> str:
        # BEGIN [WORK | TRANSACTION] [mode [, ...]] | START TRANSACTION [mode [, ...]]
        # | SET TRANSACTION mode [, ...]
        tokens = _tokens(text)
        rest = [] if tokens is None else tokens[1:]
        if head in ("START", "SET") and not (rest and rest[0].is_("TRANSACTION")):
            tokens = None
        elif rest and rest[0].is_("WORK", "TRANSACTION"):
            rest = rest[1:]
        modes = None if tokens is None else _transaction_modes(rest)
        if modes is None or (head == "SET" and not modes):
            raise self._syntax_error(text)
        if self._status == _INERROR:
            raise self._failed_transaction_error()
        if head == "SET" and self._status == _IDLE:
            return "SET"  # PostgreSQL only warns: it applies to no transaction
        if self._status == _IDLE:
            self._status = _INTRANS
            self._isolation, self._read_only = self._start_modes = (_DEFAULT_ISOLATION, False)
        # Inside a transaction PostgreSQL only warns, then sets the modes as SET
        # TRANSACTION does, with its checks.
        for mode, value in modes:
            problem = None
            if mode == "isolation" and value != self._isolation:
                problem = (
                    "SET TRANSACTION ISOLATION LEVEL must be called before any query"
                    if self._snapshot
                    else "SET TRANSACTION ISOLATION LEVEL must not be called in a subtransaction"
                    if self._savepoints
                    else None
                )
                self._isolation = str(value)
            elif mode == "read only" and not value and self._read_only:
                problem = (
                    "cannot set transaction read-write mode inside a read-only transaction"
                    if self._savepoints
                    else "transaction read-write mode must be set before any query"
                    if self._snapshot
                    else None
                )
                self._read_only = False
            elif mode == "read only":
                self._read_only = bool(value)
            elif mode == "deferrable":
                problem = (
                    "SET TRANSACTION [NOT] DEFERRABLE cannot be called within a subtransaction"
                    if self._savepoints
                    else "SET TRANSACTION [NOT] DEFERRABLE must be called before any query"
                    if self._snapshot
                    else None
                )
            if problem is not None:
                self._abort()
                raise FakeDatabaseError(problem, "25001")
        return {"BEGIN": "BEGIN", "START": "START TRANSACTION"}.get(head, "SET")

    def _prepared(self, text: str, command: str, well_formed: bool) -> str:
        """Two-phase commit as on a server with prepared transactions disabled
        (``max_prepared_transactions = 0``, PostgreSQL's default): no transaction can be
        prepared, so none can be committed or rolled back by its identifier."""
        if not well_formed:
            raise self._syntax_error(text)
        if command == "PREPARE TRANSACTION":
            failed = self._status == _INTRANS
            # Outside a transaction PostgreSQL only warns; an aborted one is rolled back.
            self._reset()
            if failed:  # the transaction is rolled back, as a failed COMMIT's is
                raise FakeDatabaseError(
                    "prepared transactions are disabled (FakeConnection is a server with "
                    "max_prepared_transactions = 0, PostgreSQL's default)",
                    "55000",
                )
            return "ROLLBACK"
        if self._status == _INERROR:
            raise self._failed_transaction_error()
        if self._status == _INTRANS:
            self._abort()
            raise FakeDatabaseError(f"{command} cannot run inside a transaction block", "25001")
        raise FakeDatabaseError(
            "prepared transaction with that identifier does not exist (FakeConnection is a "
            "server with max_prepared_transactions = 0, PostgreSQL's default)",
            "42704",
        )

    def _syntax_error(self, text: str) -> FakeDatabaseError:
        # As in PostgreSQL, a statement that fails to parse aborts the transaction.
        if self._status == _INTRANS:
            self._abort()
        return FakeDatabaseError(f"syntax error in {text!r}", "42601")

    def _require_transaction(self, what: str) -> None:
        if self._status == _IDLE:
            raise FakeDatabaseError(f"{what} can only be used in transaction blocks", "25P01")
        if self._status == _INERROR:
            raise self._failed_transaction_error()

    def _find_savepoint(self, name: str) -> int:
        for index in range(len(self._savepoints) - 1, -1, -1):
            if self._savepoints[index][0] == name:
                return index
        self._abort()
        raise FakeDatabaseError(f"savepoint {name!r} does not exist", "3B001")

    def _rollback_to(self, name: str) -> str:
        if self._status == _IDLE:
            raise FakeDatabaseError(
                "ROLLBACK TO SAVEPOINT can only be used in transaction blocks", "25P01"
            )
        index = self._find_savepoint(name)
        _, mark, self._read_only = self._savepoints[index]
        del self._savepoints[index + 1 :]
        del self._work[mark:]
        self._status = _INTRANS
        return "ROLLBACK"

    def _commit(self) -> str:
        if self._status == _IDLE:
            return "COMMIT"  # PostgreSQL only warns: there is no transaction in progress
        if self._status == _INERROR:
            self._reset()
            return "ROLLBACK"
        # Only a COMMIT that can commit is counted for fail_commit and drop_on_commit: a
        # stray one and one ending an aborted transaction (answered ROLLBACK) are not.
        self._commits += 1
        fault = self._commit_faults.pop(self._commits, None)
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

    def _work_statement(self, sql: str, args: tuple[Any, ...], text: str) -> Any:
        if self._status == _INERROR:
            raise self._failed_transaction_error()
        only = _only_in_a_block(text) if self._status == _IDLE else None
        if only is not None:
            raise FakeDatabaseError(f"{only} can only be used in transaction blocks", "25P01")
        head = _head(text)
        # A command PostgreSQL runs only outside a transaction block: refused with 25001
        # inside one (ALTER SYSTEM also in a read-only one; the others that write, first
        # as writes).
        refused = _refused_in_a_block(text) if self._status == _INTRANS else None
        if (
            self._status == _INTRANS
            and self._read_only
            and head in _WRITES
            and refused != "ALTER SYSTEM"
        ):
            self._abort()
            self._snapshot = True  # PostgreSQL took the statement's snapshot before refusing
            raise FakeDatabaseError(f"cannot execute {head} in a read-only transaction", "25006")
        if refused is not None:
            self._abort()
            self._snapshot = True  # as above: it counts as a query
            raise FakeDatabaseError(f"{refused} cannot run inside a transaction block", "25001")
        for rule in self._scripts:
            if rule.pattern.search(sql):
                self._use(rule)
                if rule.error is not None:
                    if self._status == _INTRANS:
                        self._abort()
                        self._snapshot = self._snapshot or _takes_snapshot(text)  # it ran
                    raise rule.error
                result = rule.rows
                break
        else:
            result = "OK"
        if self._status == _IDLE:
            batch = self._batch if self._batch is not None else self.database.committed
            batch.append((sql, args))
        else:
            self._work.append((sql, args))
            # After a query the transaction's modes are fixed; LOCK, SET, SHOW and a few
            # others take no snapshot, so they do not count as one.
            self._snapshot = self._snapshot or _takes_snapshot(text)
        return result


def _nth(n: object) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1 (1 = the next COMMIT), got {n!r}")
    return n


def _ended(conn: FakeConnection) -> bool:
    """Whether the transaction is over although the connection is open."""
    return not conn.in_transaction and not conn.closed


class FakeDialect(Dialect[FakeConnection]):
    """PostgreSQL-style transaction control over :class:`FakeConnection`."""

    name = "fake"

    async def begin(self, conn: FakeConnection, isolation: str | None, readonly: bool) -> None:
        await conn.execute(begin_sql(isolation, readonly))

    async def commit(self, conn: FakeConnection) -> bool | None:
        if _ended(conn):
            # A statement of the block ended the transaction (a COMMIT or ROLLBACK
            # sent by hand): as on PostgreSQL, a COMMIT now would answer COMMIT.
            return None
        return bool(await conn.execute("COMMIT") == "COMMIT")

    async def rollback(self, conn: FakeConnection) -> bool:
        ended = _ended(conn)
        await conn.execute("ROLLBACK")
        return not ended

    async def savepoint(self, conn: FakeConnection, name: str) -> None:
        await conn.execute(f"SAVEPOINT {name}")

    async def release_savepoint(self, conn: FakeConnection, name: str) -> None:
        await conn.execute(f"RELEASE SAVEPOINT {name}")

    async def rollback_to_savepoint(self, conn: FakeConnection, name: str) -> None:
        await conn.execute(f"ROLLBACK TO SAVEPOINT {name}")
        await conn.execute(f"RELEASE SAVEPOINT {name}")

    def in_transaction(self, conn: FakeConnection) -> bool:
        return conn.in_transaction

    def is_closed(self, conn: FakeConnection) -> bool:
        # As the PostgreSQL drivers: a COMMIT on a connection closed already is never sent
        # (its transaction was rolled back when it closed), a known outcome.
        return conn.closed

    def is_connection_error(self, exc: BaseException, conn: FakeConnection) -> bool:
        return conn.closed or super().is_connection_error(exc, conn)
