"""Transactions: ``atomic()`` blocks with savepoints, commit hooks and retries.

State lives in two places. Each :class:`Transaction` is one ``atomic`` block;
the innermost open block of every connection is kept in :data:`_open` (keyed
by ``id(conn)``: the open block holds the connection, so the id cannot be
reused while the entry exists). Blocks form a stack through ``_parent``; the
outermost one (``_parent is None``) owns BEGIN/COMMIT, inner ones own a
SAVEPOINT. The driver-specific statements are issued by a dialect
(:mod:`aiolease._dialects`).

Every synchronous bookkeeping step (pushing and popping the stack, moving
hooks) happens before the awaits that follow it, so a cancellation at any
await leaves the stack consistent.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Generic, TypeVar

from . import _tracking
from ._dialects import dialect_for, find_dialect
from ._dialects._base import ISOLATION_LEVELS, Dialect
from ._errors import CommitUnknown, Rollback, TransactionError
from ._lease import unwrap

__all__ = [
    "HookError",
    "Transaction",
    "TransactionAttempt",
    "atomic",
    "run_transaction",
    "transaction_attempts",
]

logger = logging.getLogger("aiolease.transaction")

C = TypeVar("C")
R = TypeVar("R")
Hook = Callable[[], object]

# id(conn) -> the innermost open aiolease transaction on that connection.
_open: dict[int, Transaction[Any]] = {}

_NEW, _ACTIVE, _DONE = 0, 1, 2


class HookError(TransactionError):
    """One or more ``on_commit``/``on_rollback`` hooks raised.

    The other hooks still ran. The outcome of the transaction is known and is
    in :attr:`committed`.

    Attributes:
        committed: True when the data *was* committed (an ``on_commit`` hook
            failed), False when the transaction was rolled back.
        errors: the exceptions the hooks raised, in hook order.
    """

    def __init__(self, message: str, *, committed: bool, errors: list[Exception]) -> None:
        super().__init__(message)
        self.committed = committed
        self.errors = errors


def _normalize_isolation(isolation: str | None, dialect: Dialect[Any]) -> str | None:
    if isolation is None:
        return None
    if not isinstance(isolation, str):
        raise TypeError(f"isolation must be a string or None, got {isolation!r}")
    level = " ".join(isolation.lower().replace("_", " ").split())
    if level not in ISOLATION_LEVELS:
        raise ValueError(
            f"isolation={isolation!r} is not an isolation level: use 'read committed', "
            "'repeatable read' or 'serializable' (case-insensitive), or None for the default"
        )
    if level not in dialect.isolation_levels:
        accepted = ", ".join(repr(x) for x in sorted(dialect.isolation_levels))
        raise ValueError(
            f"isolation={isolation!r} is not supported by {dialect.name}: it accepts {accepted}"
        )
    return level


async def _call_hooks(hooks: list[Hook]) -> list[Exception]:
    """Run every hook in order (awaiting async ones); collect what they raise."""
    errors: list[Exception] = []
    for hook in hooks:
        try:
            result = hook()
            if inspect.isawaitable(result):
                await result
        except Exception as exc:
            errors.append(exc)
    return errors


async def _wait_shielded(task: asyncio.Future[None]) -> None:
    """Wait for ``task`` to finish even if this task is cancelled meanwhile.

    A cancellation that arrives while waiting is re-raised once the task is done.
    """
    cancelled: asyncio.CancelledError | None = None
    while not task.done():
        try:
            await asyncio.wait((task,))
        except asyncio.CancelledError as exc:
            cancelled = exc
    if cancelled is not None:
        raise cancelled


class Transaction(Generic[C]):
    """One ``atomic`` block on a connection; see :func:`atomic`.

    Use it as an async context manager (once). ``__aenter__`` blocks while
    BEGIN (or SAVEPOINT) runs; ``__aexit__`` blocks while COMMIT, RELEASE or the
    rollback runs and while the hooks are awaited. Either half may be cancelled:
    a rollback is shielded and completes first; a cancelled COMMIT raises
    :class:`~aiolease.CommitUnknown`.
    """

    __slots__ = (
        "__weakref__",
        "_conn",
        "_dialect",
        "_doomed",
        "_durable",
        "_handle",
        "_isolation",
        "_on_commit",
        "_on_rollback",
        "_parent",
        "_readonly",
        "_retrying",
        "_rollback_only",
        "_savepoint",
        "_sp_name",
        "_state",
        "_task",
    )

    def __init__(
        self,
        conn: C,
        *,
        isolation: str | None = None,
        readonly: bool = False,
        savepoint: bool = True,
        durable: bool = False,
    ) -> None:
        # A driver pool's lease proxy: the dialect and the nesting work on the connection
        # itself; tx.connection stays what was passed in.
        self._handle = conn
        conn = unwrap(conn)
        dialect = dialect_for(conn)
        self._conn = conn
        self._dialect: Dialect[C] = dialect
        self._isolation = None if isolation is None else _normalize_isolation(isolation, dialect)
        self._readonly = bool(readonly)
        self._savepoint = bool(savepoint)
        self._durable = bool(durable)
        self._parent: Transaction[C] | None = None
        self._sp_name: str | None = None
        self._state = _NEW
        self._task: asyncio.Task[Any] | None = None
        self._rollback_only = False
        # An inner savepoint=False block failed and the error was caught: the
        # transaction cannot commit what the caller believes it did.
        self._doomed = False
        self._on_commit: list[Hook] | None = None
        self._on_rollback: list[Hook] | None = None
        # Set by transaction_attempts: when it says an error will be retried,
        # the rolled-back attempt runs no hooks.
        self._retrying: Callable[[BaseException], bool] | None = None
        if _tracking.active:
            _tracking.track(self)

    # -- public surface ---------------------------------------------------------

    @property
    def connection(self) -> C:
        """The connection the block was opened on (as passed to ``atomic``)."""
        return self._handle

    @property
    def is_outermost(self) -> bool:
        """Whether this block owns BEGIN/COMMIT (False for a nested block)."""
        return self._parent is None

    def on_commit(self, fn: Hook) -> Hook:
        """Run ``fn()`` (sync, or async and awaited) after the outermost COMMIT succeeds.

        Hooks run in registration order before the outermost block exits. A
        hook registered in a savepoint that rolls back is dropped. A failing
        hook does not stop the others; the block then raises
        :class:`HookError` with ``committed=True``. Returns ``fn`` (usable as a
        decorator).

        Raises:
            TypeError: ``fn`` is not callable.
            TransactionError: the block is not open.
        """
        self._check_hook(fn)
        if self._on_commit is None:
            self._on_commit = [fn]
        else:
            self._on_commit.append(fn)
        return fn

    def on_rollback(self, fn: Hook) -> Hook:
        """Run ``fn()`` after the outermost transaction rolls back (or fails to commit).

        Not run when the outcome is unknown (:class:`~aiolease.CommitUnknown`)
        nor for an attempt that :func:`run_transaction` retries. A hook
        registered in a savepoint that rolls back is dropped. Returns ``fn``.

        Raises:
            TypeError: ``fn`` is not callable.
            TransactionError: the block is not open.
        """
        self._check_hook(fn)
        if self._on_rollback is None:
            self._on_rollback = [fn]
        else:
            self._on_rollback.append(fn)
        return fn

    def set_rollback(self, rollback: bool) -> None:
        """Roll this block back on exit without raising (``False`` undoes the request).

        In a nested block only its savepoint rolls back; with
        ``savepoint=False`` the whole enclosing transaction does.
        """
        if self._state != _ACTIVE:
            raise TransactionError("set_rollback() needs an open atomic block")
        self._rollback_only = bool(rollback)

    def __repr__(self) -> str:
        state = ("new", "open", "done")[self._state]
        kind = "outermost" if self._parent is None else f"savepoint {self._sp_name}"
        if self._state == _NEW:
            kind = "unentered"
        return f"<aiolease.Transaction {kind} {state} on {self._dialect.name} {self._conn!r}>"

    def _aiolease_leaks(self) -> list[str]:
        if self._state == _ACTIVE:
            return [f"transaction left open: {self!r} (entered in task {self._task!r})"]
        return []

    def _check_hook(self, fn: Hook) -> None:
        if not callable(fn):
            raise TypeError(f"a transaction hook must be callable, got {fn!r}")
        if self._state != _ACTIVE:
            raise TransactionError("hooks can only be registered on an open atomic block")

    # -- entering ---------------------------------------------------------------

    async def __aenter__(self) -> Transaction[C]:
        if self._state != _NEW:
            raise TransactionError("an atomic block can be entered only once; call atomic() again")
        conn = self._conn
        key = id(conn)
        task = asyncio.current_task()
        parent = _open.get(key)
        if parent is None:
            if self._dialect.in_transaction(conn):
                raise TransactionError(
                    f"{conn!r} is already inside a transaction that aiolease did not start; "
                    "commit or roll it back first, or start it with aiolease.atomic() and nest"
                )
            self._task = task
            self._state = _ACTIVE
            _open[key] = self
            try:
                await self._dialect.begin(conn, self._isolation, self._readonly)
            except BaseException as exc:
                self._state = _DONE
                if _open.get(key) is self:
                    del _open[key]
                # BEGIN may have run before the failure/cancellation reached us.
                await self._rollback_quietly(exc, outermost=True)
                raise
            return self

        if parent._task is not task:
            raise TransactionError(
                f"{conn!r} is in a transaction owned by task {_task_name(parent._task)}; "
                f"task {_task_name(task)} cannot use it at the same time. "
                "Give each task its own connection (e.g. pool.atomic())"
            )
        if self._durable:
            raise TransactionError(
                "atomic(durable=True) must be the outermost block, but it is nested in "
                f"{parent!r}; a durable block's commit must not be undone by an outer rollback"
            )
        if self._isolation is not None or self._readonly:
            raise TransactionError(
                "isolation and readonly can only be set on the outermost atomic block, "
                f"not on a block nested in {parent!r}"
            )
        self._parent = parent
        self._task = task
        self._state = _ACTIVE
        _open[key] = self
        if self._savepoint:
            depth = 1
            p: Transaction[C] | None = parent
            while p is not None:
                depth += 1
                p = p._parent
            self._sp_name = name = f"aiolease_sp_{depth}"
            try:
                await self._dialect.savepoint(conn, name)
            except BaseException:
                # The enclosing block is told through the exception propagating.
                self._state = _DONE
                _open[key] = parent
                raise
        return self

    # -- leaving ----------------------------------------------------------------

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if self._state != _ACTIVE:
            raise TransactionError(f"{self!r} is not open")
        key = id(self._conn)
        if _open.get(key) is not self:
            raise TransactionError(
                f"atomic blocks on {self._conn!r} were exited out of order: "
                f"{self!r} is not the innermost open block"
            )
        self._state = _DONE
        parent = self._parent
        if parent is None:
            del _open[key]
            return await self._exit_outermost(exc)
        _open[key] = parent
        if self._sp_name is None:
            return self._exit_without_savepoint(parent, exc)
        return await self._exit_savepoint(parent, exc)

    async def _exit_outermost(self, exc: BaseException | None) -> bool:
        conn, dialect = self._conn, self._dialect
        if exc is None and not self._rollback_only and not self._doomed:
            try:
                committed = await dialect.commit(conn)
            except asyncio.CancelledError as err:
                _tracking.mark_broken(conn)
                raise CommitUnknown(
                    "cancelled during COMMIT: the transaction may or may not have been "
                    f"committed; {conn!r} was marked broken (a pool discards it)"
                ) from err
            except Exception as err:
                if dialect.is_connection_error(err, conn):
                    _tracking.mark_broken(conn)
                    raise CommitUnknown(
                        f"the connection was lost during COMMIT ({type(err).__name__}: {err}): "
                        "the transaction may or may not have been committed; "
                        f"{conn!r} was marked broken (a pool discards it)"
                    ) from err
                # The database refused the commit (serialization failure,
                # deferred constraint...): the transaction is over, nothing was
                # committed, and the error propagates unchanged.
                await self._after_rollback(err)
                raise
            if committed:
                if self._on_commit:
                    errors = await _call_hooks(self._on_commit)
                    if errors:
                        raise _hook_error(errors, len(self._on_commit), committed=True)
                return False
            error = TransactionError(
                "the transaction was rolled back, not committed: the database had aborted "
                "it after an error inside the block that was caught (in PostgreSQL every "
                "later statement fails and COMMIT turns into ROLLBACK). Let the error "
                "propagate, or wrap the statement that may fail in a nested atomic() block"
            )
            await self._after_rollback(error)
            raise error

        failed = await self._rollback_quietly(exc, outermost=True)
        if exc is None:
            if failed is not None:
                raise TransactionError(f"ROLLBACK failed on {conn!r}") from failed
            if self._doomed:
                error = TransactionError(
                    "the transaction was rolled back, not committed: a nested "
                    "atomic(savepoint=False) block failed and its error was caught"
                )
                await self._after_rollback(error)
                raise error
            await self._after_rollback(None)
            return False
        if failed is not None and isinstance(exc, Rollback):
            raise TransactionError(f"ROLLBACK failed on {conn!r}") from failed
        await self._after_rollback(exc)
        return isinstance(exc, Rollback)

    async def _exit_savepoint(self, parent: Transaction[C], exc: BaseException | None) -> bool:
        conn, dialect = self._conn, self._dialect
        name = self._sp_name
        assert name is not None
        if exc is None and not self._rollback_only and not self._doomed:
            try:
                await dialect.release_savepoint(conn, name)
            except Exception as err:
                if not dialect.is_aborted_error(err):
                    raise
                # An error inside this block was caught, which aborted the
                # transaction: undo this block so the enclosing one can go on.
                failed = await self._rollback_quietly(err, outermost=False)
                if failed is not None:
                    raise failed from err
                raise TransactionError(
                    f"the work of the nested atomic block (savepoint {name}) was rolled back: "
                    "an error inside it was caught after the database had aborted the "
                    "transaction. Let the error propagate out of the nested block instead"
                ) from err
            _merge_hooks(self, parent)
            return False
        failed = await self._rollback_quietly(exc, outermost=False)
        if failed is not None and (exc is None or isinstance(exc, Rollback)):
            raise TransactionError(f"ROLLBACK TO SAVEPOINT {name} failed") from failed
        if exc is None and self._doomed:
            raise TransactionError(
                f"the nested atomic block (savepoint {name}) was rolled back: a nested "
                "atomic(savepoint=False) block inside it failed and its error was caught"
            )
        return isinstance(exc, Rollback)

    def _exit_without_savepoint(self, parent: Transaction[C], exc: BaseException | None) -> bool:
        # Without a savepoint this block cannot roll back alone: its fate is
        # the enclosing block's, so everything is handed over to it.
        _merge_hooks(self, parent)
        if self._rollback_only or isinstance(exc, Rollback):
            parent._rollback_only = True
        elif exc is not None or self._doomed:
            parent._doomed = True
        return isinstance(exc, Rollback)

    async def _rollback_quietly(
        self, exc: BaseException | None, *, outermost: bool
    ) -> BaseException | None:
        """Roll back (to the savepoint) shielded from cancellation.

        A rollback error never replaces ``exc``: it is attached to ``exc`` as a
        note and logged, the connection is marked broken, and it is returned.
        """
        if outermost:
            op = self._dialect.rollback(self._conn)
        else:
            assert self._sp_name is not None
            op = self._dialect.rollback_to_savepoint(self._conn, self._sp_name)
        task = asyncio.ensure_future(op)
        await _wait_shielded(task)
        err = None if task.cancelled() else task.exception()
        if task.cancelled():
            err = asyncio.CancelledError("the rollback was cancelled")
        if err is not None:
            _tracking.mark_broken(self._conn)
            what = "ROLLBACK" if outermost else f"ROLLBACK TO SAVEPOINT {self._sp_name}"
            logger.warning("%s failed on %r: %r", what, self._conn, err)
            if exc is not None:
                exc.add_note(f"aiolease: {what} also failed ({type(err).__name__}: {err})")
        return err

    async def _after_rollback(self, exc: BaseException | None) -> None:
        """Run the on_rollback hooks of a transaction that rolled back."""
        hooks = self._on_rollback
        if not hooks:
            return
        if exc is not None and self._retrying is not None and self._retrying(exc):
            return
        errors = await _call_hooks(hooks)
        if not errors:
            return
        if exc is None or isinstance(exc, Rollback):
            raise _hook_error(errors, len(hooks), committed=False)
        for err in errors:
            logger.warning("on_rollback hook failed: %r", err)
            exc.add_note(f"aiolease: an on_rollback hook also failed ({type(err).__name__}: {err})")


def _merge_hooks(child: Transaction[Any], parent: Transaction[Any]) -> None:
    if child._on_commit:
        if parent._on_commit is None:
            parent._on_commit = child._on_commit
        else:
            parent._on_commit.extend(child._on_commit)
    if child._on_rollback:
        if parent._on_rollback is None:
            parent._on_rollback = child._on_rollback
        else:
            parent._on_rollback.extend(child._on_rollback)


def _hook_error(errors: list[Exception], total: int, *, committed: bool) -> HookError:
    kind = "on_commit" if committed else "on_rollback"
    outcome = "WAS committed" if committed else "was rolled back"
    first = errors[0]
    error = HookError(
        f"the transaction {outcome}, but {len(errors)} of {total} {kind} hooks failed "
        f"(the others ran); first: {type(first).__name__}: {first}",
        committed=committed,
        errors=errors,
    )
    error.__cause__ = first if len(errors) == 1 else ExceptionGroup(f"{kind} hooks failed", errors)
    return error


def _task_name(task: asyncio.Task[Any] | None) -> str:
    return "<no task>" if task is None else repr(task.get_name())


def atomic(
    conn: C,
    *,
    isolation: str | None = None,
    readonly: bool = False,
    savepoint: bool = True,
    durable: bool = False,
) -> Transaction[C]:
    """A transaction block on ``conn``: commit on success, roll back on error.

    ``async with aiolease.atomic(conn) as tx:`` starts a transaction (or, when
    nested in another block on the same connection, a SAVEPOINT). Leaving the
    block normally commits (releases the savepoint); an exception rolls back
    (to the savepoint) and propagates unchanged; :class:`~aiolease.Rollback`
    rolls back silently.

    ``__aenter__`` blocks while BEGIN/SAVEPOINT runs; ``__aexit__`` blocks while
    COMMIT or the rollback runs and the hooks are awaited. A cancellation in
    the body rolls back (shielded); a cancellation or connection loss during
    COMMIT raises :class:`~aiolease.CommitUnknown` and marks the connection
    broken so that a pool discards it.

    Args:
        conn: an asyncpg, psycopg ``AsyncConnection`` or aiosqlite connection, a
            :class:`aiolease.testing.FakeConnection`, or any connection with a
            registered dialect (:func:`aiolease.register_dialect`).
        isolation: "read committed", "repeatable read" or "serializable"
            (case-insensitive; SQLite accepts only "serializable"); None keeps
            the database default. Outermost block only.
        readonly: start a read-only transaction (SQLite: a deferred
            transaction with ``PRAGMA query_only``). Outermost block only.
        savepoint: when nested, protect the block with a SAVEPOINT. With
            False a failing nested block dooms the whole transaction.
        durable: require this block to be the outermost one, so that its
            commit is final.

    Raises:
        TypeError: no dialect is registered for ``conn``.
        ValueError: ``isolation`` is not an accepted level.
        TransactionError: (on enter) ``durable`` or ``isolation``/``readonly``
            on a nested block; the connection's transaction is in use by
            another task; the connection is in a transaction aiolease did not
            start. (On exit) the database had aborted the transaction, so it
            was rolled back instead of committed.
        CommitUnknown: the connection was lost or the task cancelled during COMMIT.
        HookError: a hook failed (the outcome is in ``committed``).
    """
    return Transaction(
        conn, isolation=isolation, readonly=readonly, savepoint=savepoint, durable=durable
    )


# -- pools ----------------------------------------------------------------------


class PoolAtomic(Generic[C]):
    """``pool.atomic()``: acquire a connection, run an atomic block on it, release it.

    ``__aenter__`` blocks while acquiring and while BEGIN runs; ``__aexit__``
    while COMMIT/ROLLBACK runs and the connection is released (shielded by the
    pool). A connection whose COMMIT outcome is unknown is marked broken, so
    the pool closes it instead of reusing it.
    """

    __slots__ = ("_acquire", "_options", "_pool", "_tx")

    def __init__(self, pool: Any, **options: Any) -> None:
        self._pool = pool
        self._options = options
        self._acquire: Any = None
        self._tx: Transaction[C] | None = None

    async def __aenter__(self) -> Transaction[C]:
        if self._acquire is not None:
            raise TransactionError("a pool.atomic() block can be entered only once")
        acquire = self._acquire = self._pool.acquire()
        conn = await acquire.__aenter__()
        try:
            tx: Transaction[C] = Transaction(conn, **self._options)
            await tx.__aenter__()
        except BaseException as exc:
            await acquire.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        self._tx = tx
        return tx

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        tx, acquire = self._tx, self._acquire
        assert tx is not None
        try:
            suppress = await tx.__aexit__(exc_type, exc, tb)
        except BaseException as err:
            await acquire.__aexit__(type(err), err, err.__traceback__)
            raise
        if suppress:
            await acquire.__aexit__(None, None, None)
        else:
            await acquire.__aexit__(exc_type, exc, tb)
        return suppress


def pool_atomic(pool: Any, **options: Any) -> PoolAtomic[Any]:
    """What :meth:`aiolease.Pool.atomic` returns (the options are :func:`atomic`'s)."""
    return PoolAtomic(pool, **options)


# -- retries --------------------------------------------------------------------


class TransactionAttempt(Generic[C]):
    """One attempt of :func:`transaction_attempts`: ``async with attempt as tx:``.

    Leaving the block with a retryable error (serialization failure, deadlock,
    SQLite busy/locked) while attempts remain swallows the error and lets the
    loop run the next attempt; any other outcome ends the loop.
    """

    __slots__ = ("_loop", "_pool_cm", "_tx", "number")

    def __init__(self, loop: TransactionAttempts[C], number: int) -> None:
        self._loop = loop
        self.number = number
        self._pool_cm: Any = None
        self._tx: Transaction[C] | None = None

    def _will_retry(self, exc: BaseException) -> bool:
        loop = self._loop
        if self.number >= loop._attempts or self._tx is None:
            return False
        return self._tx._dialect.is_retryable(exc)

    async def __aenter__(self) -> Transaction[C]:
        loop = self._loop
        target = loop._target
        if loop._is_connection:
            conn = target
        else:
            self._pool_cm = target.acquire()
            conn = await self._pool_cm.__aenter__()
        try:
            tx: Transaction[C] = Transaction(conn, **loop._options)
            tx._retrying = self._will_retry
            self._tx = tx
            await tx.__aenter__()
        except BaseException as exc:
            if self._pool_cm is not None:
                await self._pool_cm.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return tx

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        tx = self._tx
        assert tx is not None
        loop = self._loop
        outcome: BaseException | None = None
        try:
            suppress = await tx.__aexit__(exc_type, exc, tb)
            if not suppress:
                outcome = exc
        except BaseException as err:
            outcome = err
            if self._pool_cm is not None:
                await self._pool_cm.__aexit__(type(err), err, err.__traceback__)
                self._pool_cm = None
            if isinstance(err, Exception) and self._will_retry(err):
                loop._retry_pending = True
                loop._last_error = err
                return True
            raise
        if self._pool_cm is not None:
            if outcome is None:
                await self._pool_cm.__aexit__(None, None, None)
            else:
                await self._pool_cm.__aexit__(type(outcome), outcome, outcome.__traceback__)
        if outcome is None:
            loop._done = True
            return suppress
        if isinstance(outcome, Exception) and self._will_retry(outcome):
            loop._retry_pending = True
            loop._last_error = outcome
            return True
        return False


class TransactionAttempts(Generic[C]):
    """The async iterator returned by :func:`transaction_attempts`."""

    __slots__ = (
        "_attempts",
        "_backoff",
        "_done",
        "_is_connection",
        "_last_error",
        "_max_backoff",
        "_number",
        "_options",
        "_retry_pending",
        "_target",
    )

    def __init__(
        self,
        target: Any,
        *,
        attempts: int,
        backoff: float,
        max_backoff: float,
        options: dict[str, Any],
    ) -> None:
        if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 1:
            raise ValueError(f"attempts must be an int >= 1, got {attempts!r}")
        if not backoff >= 0:
            raise ValueError(f"backoff must be >= 0 seconds, got {backoff!r}")
        if not max_backoff >= 0:
            raise ValueError(f"max_backoff must be >= 0 seconds, got {max_backoff!r}")
        self._is_connection = find_dialect(unwrap(target)) is not None
        if not self._is_connection and not hasattr(target, "acquire"):
            raise TypeError(
                "run_transaction()/transaction_attempts() need a pool (with acquire()) or a "
                f"connection with a transaction dialect, got {type(target).__name__}"
            )
        if self._is_connection:
            # Validate the options now rather than at the first attempt.
            Transaction(target, **options)
        self._target = target
        self._attempts = attempts
        self._backoff = float(backoff)
        self._max_backoff = float(max_backoff)
        self._options = options
        self._number = 0
        self._done = False
        self._retry_pending = False
        self._last_error: BaseException | None = None

    def __aiter__(self) -> TransactionAttempts[C]:
        return self

    async def __anext__(self) -> TransactionAttempt[C]:
        if self._done:
            raise StopAsyncIteration
        if self._number:
            if not self._retry_pending:
                # The previous attempt ended without a retryable error (or was
                # never entered): stop.
                self._done = True
                raise StopAsyncIteration
            self._retry_pending = False
            cap = min(self._max_backoff, self._backoff * 2 ** (self._number - 1))
            delay = random.uniform(0, cap)
            logger.debug(
                "retrying transaction (attempt %d of %d) in %.3fs after %r",
                self._number + 1,
                self._attempts,
                delay,
                self._last_error,
            )
            await asyncio.sleep(delay)
        self._number += 1
        return TransactionAttempt(self, self._number)


def transaction_attempts(
    target: Any,
    *,
    attempts: int = 5,
    isolation: str | None = None,
    readonly: bool = False,
    backoff: float = 0.05,
    max_backoff: float = 1.0,
) -> TransactionAttempts[Any]:
    """Retry loop for transaction code that does not fit a callback.

    ::

        async for attempt in aiolease.transaction_attempts(pool, isolation="serializable"):
            async with attempt as tx:
                await tx.connection.execute(...)

    Each attempt acquires a connection from ``target`` (a pool) or reuses
    ``target`` (a connection) and runs a fresh outermost transaction. An attempt
    that fails with a retryable error (PostgreSQL 40001/40P01, SQLite busy or
    locked) while attempts remain rolls back, runs no hooks, and the loop
    sleeps a jittered exponential backoff (uniform in ``[0, min(max_backoff,
    backoff * 2**n)]``, read from the loop's clock) before the next one. The
    last attempt's error propagates. The loop ends after the first attempt
    that commits.

    Args:
        target: an aiolease ``Pool`` (or any pool whose ``acquire()`` is an
            async context manager), or a connection.
        attempts: the most attempts to make (>= 1).
        isolation: as for :func:`atomic`.
        readonly: as for :func:`atomic`.
        backoff: first backoff cap in seconds (doubles per retry).
        max_backoff: the largest backoff in seconds, so ``attempts`` bounds the
            total wait by ``(attempts - 1) * max_backoff``.

    Raises:
        ValueError: bad ``attempts``/``backoff``/``max_backoff``/``isolation``.
        TypeError: ``target`` is neither a pool nor a supported connection.
    """
    return TransactionAttempts(
        target,
        attempts=attempts,
        backoff=backoff,
        max_backoff=max_backoff,
        options={"isolation": isolation, "readonly": readonly},
    )


async def run_transaction(
    target: Any,
    fn: Callable[[Any], Awaitable[R]],
    *,
    attempts: int = 5,
    isolation: str | None = None,
    readonly: bool = False,
    backoff: float = 0.05,
    max_backoff: float = 1.0,
) -> R:
    """Run ``await fn(conn)`` in a transaction, retrying on serialization failures.

    Each attempt gets a connection from ``target`` (a pool; or ``target``
    itself when it is a connection) inside a fresh :func:`atomic` block and
    returns ``fn``'s result once committed. Retryable errors and the backoff
    are as for :func:`transaction_attempts`. ``fn`` registers hooks with a
    nested ``async with aiolease.atomic(conn, savepoint=False) as tx:``
    (free: no SQL); they run only for the attempt that commits.

    Raises:
        Exception: whatever the last attempt raised.
    """
    result: R
    async for attempt in transaction_attempts(
        target,
        attempts=attempts,
        isolation=isolation,
        readonly=readonly,
        backoff=backoff,
        max_backoff=max_backoff,
    ):
        async with attempt as tx:
            result = await fn(tx.connection)
    return result
