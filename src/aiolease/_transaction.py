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
import heapq
import inspect
import itertools
from collections.abc import Callable
from types import TracebackType
from typing import Any, Generic, TypeVar

from . import _metrics, _tracking, _validate
from ._dialects import dialect_for
from ._dialects._base import Dialect
from ._errors import CommitUnknown, Rollback, TransactionError
from ._lease import unwrap
from ._logs import get_logger
from ._redact import redact
from ._shield import shielded
from ._tx_options import check_flag, normalize_isolation

__all__ = [
    "HookError",
    "Transaction",
    "TransactionAttempt",
    "atomic",
    "run_transaction",
    "transaction_attempts",
]

logger = get_logger("aiolease.transaction")

C = TypeVar("C")
R = TypeVar("R")
Hook = Callable[[], object]
# A registered hook with its registration number: hooks a nested block hands over to
# the enclosing one are merged by it, so that registration order survives hooks added
# to the enclosing block while the nested one was open.
_Registered = tuple[int, Hook]
_registrations = itertools.count()

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


async def _call_hooks(hooks: list[_Registered]) -> list[Exception]:
    """Run every hook in order (awaiting async ones); collect what they raise."""
    errors: list[Exception] = []
    for _, hook in hooks:
        try:
            result = hook()
            if inspect.isawaitable(result):
                await result
        except Exception as exc:
            errors.append(exc)
    return errors


def _consume(task: asyncio.Future[Any]) -> None:
    """Done callback of an abandoned clean-up task: retrieve its outcome so that
    asyncio does not log "exception was never retrieved"."""
    if not task.cancelled():
        task.exception()


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and every exception reachable through ``__cause__``/``__context__``."""
    seen: list[BaseException] = []
    todo = [exc]
    while todo:
        e = todo.pop()
        if any(e is s for s in seen):
            continue
        seen.append(e)
        todo.extend(x for x in (e.__cause__, e.__context__) if x is not None)
    return seen


def _attach(exc: BaseException, err: BaseException, note: str | None = None) -> None:
    """Attach ``err`` to ``exc``: as ``exc.__context__`` (what ``exc`` already
    carried there moves behind ``err``), and as a note when one is given.
    Nothing changes when ``err`` is already in ``exc``'s chain."""
    if note is not None:
        exc.add_note(note)
    if any(e is err for e in _chain(exc)) or any(e is exc for e in _chain(err)):
        return
    previous = exc.__context__
    exc.__context__ = err
    if previous is not None and not any(e is previous for e in _chain(err)):
        tail = err
        while tail.__context__ is not None:
            tail = tail.__context__
        tail.__context__ = previous


class Transaction(Generic[C]):
    """One ``atomic`` block on a connection; see :func:`atomic`.

    Use it as an async context manager (once). ``__aenter__`` blocks while
    BEGIN (or SAVEPOINT) runs; ``__aexit__`` blocks while COMMIT, RELEASE or the
    rollback runs and while the hooks are awaited. Either half may be cancelled:
    a rollback is shielded and bounded by ``cleanup_timeout``, then the
    cancellation goes on; a cancellation during COMMIT propagates with
    :class:`~aiolease.CommitUnknown` in its ``__context__``.
    """

    __slots__ = (
        "__weakref__",
        "_cleanup_timeout",
        "_connection",
        "_dialect",
        "_doomed",
        "_durable",
        "_isolation",
        "_on_commit",
        "_on_rollback",
        "_outcome",
        "_parent",
        "_pool",
        "_raw",
        "_readonly",
        "_retrying",
        "_rollback_only",
        "_savepoint",
        "_sp_name",
        "_span",
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
        cleanup_timeout: float | None = None,
    ) -> None:
        raw = unwrap(conn)
        dialect = dialect_for(raw)
        self._connection = conn
        # The driver connection the dialect drives and nesting is keyed by
        # (``conn`` itself unless it is a pool's per-lease proxy).
        self._raw = raw
        self._dialect: Dialect[Any] = dialect
        self._cleanup_timeout = (
            dialect.cleanup_timeout
            if cleanup_timeout is None
            else _validate.seconds("cleanup_timeout", cleanup_timeout)
        )
        self._isolation = None if isolation is None else normalize_isolation(isolation, dialect)
        self._readonly = check_flag("readonly", readonly)
        self._savepoint = check_flag("savepoint", savepoint)
        self._durable = check_flag("durable", durable)
        self._parent: Transaction[C] | None = None
        self._pool: Any = None  # the pool it acquired its connection from, for log lines
        self._sp_name: str | None = None
        self._span: _metrics.Span | None = None  # while a tracer traces the outermost block
        self._outcome: str | None = None  # what it reported to the metrics, once over
        self._state = _NEW
        self._task: asyncio.Task[Any] | None = None
        self._rollback_only = False
        # Why the block cannot commit what the caller believes it did (an inner
        # savepoint=False block failed, or an inner block's RELEASE SAVEPOINT was
        # interrupted, and the error was caught), else None.
        self._doomed: str | None = None
        self._on_commit: list[_Registered] | None = None
        self._on_rollback: list[_Registered] | None = None
        # Set by transaction_attempts: when it says an error will be retried,
        # the rolled-back attempt runs no hooks.
        self._retrying: Callable[[BaseException], bool] | None = None
        if _tracking.active:
            _tracking.track(self)

    # -- public surface ---------------------------------------------------------

    @property
    def connection(self) -> C:
        """The raw driver connection."""
        return self._connection

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
            TypeError: ``fn`` is not callable, or cannot be called with no arguments.
            TransactionError: the block is not open.
        """
        self._check_hook("on_commit", fn)
        self._on_commit = _registered(self._on_commit, fn)
        return fn

    def on_rollback(self, fn: Hook) -> Hook:
        """Run ``fn()`` after the outermost transaction rolls back (or fails to commit).

        Not run when the outcome is unknown (:class:`~aiolease.CommitUnknown`, or
        a statement of the block ended the transaction: a ``COMMIT`` or
        ``ROLLBACK`` sent by hand) nor for an attempt that :func:`run_transaction`
        retries. A hook
        registered in a savepoint that rolls back is dropped. Returns ``fn``.

        Raises:
            TypeError: ``fn`` is not callable, or cannot be called with no arguments.
            TransactionError: the block is not open.
        """
        self._check_hook("on_rollback", fn)
        self._on_rollback = _registered(self._on_rollback, fn)
        return fn

    def set_rollback(self, rollback: bool) -> None:
        """Roll this block back on exit without raising (``False`` undoes the request).

        In a nested block only its savepoint rolls back; with
        ``savepoint=False`` the whole enclosing transaction does.

        Raises:
            TypeError: ``rollback`` is not True or False.
            TransactionError: the block is not open.
        """
        check_flag("rollback", rollback)
        if self._state != _ACTIVE:
            raise TransactionError("set_rollback() needs an open atomic block")
        self._rollback_only = rollback

    def __repr__(self) -> str:
        state = ("new", "open", "done")[self._state]
        kind = "outermost" if self._parent is None else f"savepoint {self._sp_name}"
        if self._state == _NEW:
            kind = "unentered"
        return f"<aiolease.Transaction {kind} {state} on {self._dialect.name} {self._connection!r}>"

    def _aiolease_leaks(self) -> list[str]:
        if self._state == _ACTIVE:
            return [f"transaction left open: {self!r} (entered in task {self._task!r})"]
        return []

    def _check_hook(self, method: str, fn: Hook) -> None:
        if not callable(fn):
            raise TypeError(f"a transaction hook must be callable, got {fn!r}")
        # Checked here: called with an argument, it would fail after the outcome (HookError).
        _validate.check_arity(f"{method}(): a transaction hook", fn, 0, "no arguments")
        if self._state != _ACTIVE:
            raise TransactionError("hooks can only be registered on an open atomic block")

    # -- entering ---------------------------------------------------------------

    async def __aenter__(self) -> Transaction[C]:
        if self._state != _NEW:
            raise TransactionError("an atomic block can be entered only once; call atomic() again")
        conn = self._raw
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
            tracer = _metrics.tracer
            if tracer is not None:  # BEGIN's own span, if the driver makes one, nests in it
                self._span = tracer.transaction(self._dialect.name)
            try:
                await self._dialect.begin(conn, self._isolation, self._readonly)
            except BaseException as exc:
                self._state = _DONE
                if _open.get(key) is self:
                    del _open[key]
                try:
                    # BEGIN may have run before the failure/cancellation reached us.
                    await self._rollback_quietly(exc, outermost=True)
                finally:
                    self._end_span(exc)
                raise
            return self

        if parent._task is not task:
            raise TransactionError(
                f"{conn!r} is in a transaction owned by task {_task_name(parent._task)}; "
                f"task {_task_name(task)} cannot use it at the same time. "
                "Give each task its own connection (e.g. pool.atomic())"
            )
        if self._durable:
            if self._retrying is not None:
                raise TransactionError(
                    "run_transaction()/transaction_attempts() must run outside any atomic "
                    f"block on the connection, but it is nested in {parent!r}: a retry runs "
                    "the whole transaction again, which a savepoint cannot (after a "
                    "serialization failure or a deadlock the enclosing transaction must be "
                    "retried as a whole)"
                )
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
        key = id(self._raw)
        if _open.get(key) is not self:
            raise TransactionError(
                f"atomic blocks on {self._connection!r} were exited out of order: "
                f"{self!r} is not the innermost open block"
            )
        self._state = _DONE
        parent = self._parent
        if parent is None:
            del _open[key]
            try:
                suppressed = await self._exit_outermost(exc)
            except BaseException as error:
                self._end_span(error)
                raise
            self._end_span(None if suppressed else exc)
            return suppressed
        _open[key] = parent
        if self._sp_name is None:
            return self._exit_without_savepoint(parent, exc)
        return await self._exit_savepoint(parent, exc)

    def _ended(self, outcome: str) -> None:
        """The outermost block's outcome is known: report it (once)."""
        self._outcome = outcome
        _metrics.transaction_ended(outcome)

    def _end_span(self, error: BaseException | None) -> None:
        """End the block's span, if a tracer opened one, with what propagates."""
        span = self._span
        if span is not None:
            self._span = None
            span.end(self._outcome, error)

    async def _exit_outermost(self, exc: BaseException | None) -> bool:
        conn, dialect = self._raw, self._dialect
        if exc is None and not self._rollback_only and not self._doomed:
            closed = dialect.is_closed(conn)  # then COMMIT cannot be sent
            try:
                committed = await dialect.commit(conn)
            except asyncio.CancelledError as err:
                # The cancellation goes on (asyncio.timeout(), TaskGroup and
                # Task.cancel() rely on it), carrying the unknown outcome.
                self._mark_broken()
                self._ended("unknown")
                logger.warning(
                    "cancelled during COMMIT on %s: the outcome is unknown (the transaction "
                    "may or may not have been committed); the connection was marked broken",
                    self._where(),
                )
                _attach(
                    err,
                    CommitUnknown(
                        "cancelled during COMMIT: the transaction may or may not have been "
                        f"committed; {self._connection!r} was marked broken (a pool discards it)"
                    ),
                )
                raise
            except Exception as err:
                if dialect.is_connection_error(err, conn) and (
                    closed or dialect.rolls_back_by_itself(err)
                ):
                    # The session ended before COMMIT was sent (or could run: the
                    # idle-in-transaction timeout), and the server rolled its transaction
                    # back: a known outcome, the driver's error propagates unchanged.
                    self._mark_broken()
                    self._ended("rollback")
                    await self._after_rollback(err)
                    raise
                if dialect.is_connection_error(err, conn):
                    self._mark_broken()
                    self._ended("unknown")
                    logger.warning(
                        "connection lost during COMMIT on %s (%s: %s): the outcome is unknown "
                        "(the transaction may or may not have been committed); the connection "
                        "was marked broken",
                        self._where(),
                        type(err).__name__,
                        err,
                    )
                    raise CommitUnknown(
                        "the connection was lost during COMMIT "
                        f"({type(err).__name__}: {redact(str(err))}): "
                        "the transaction may or may not have been committed; "
                        f"{conn!r} was marked broken (a pool discards it)"
                    ) from err
                # The database refused the commit (serialization failure,
                # deferred constraint...): the transaction is over, nothing was
                # committed, and the error propagates unchanged.
                self._ended("rollback")
                await self._after_rollback(err)
                raise
            if committed:
                self._ended("commit")
                if self._on_commit:
                    errors = await _call_hooks(self._on_commit)
                    if errors:
                        raise _hook_error(errors, len(self._on_commit), committed=True)
                return False
            if committed is None:
                raise self._ended_by_block(None)
            error = TransactionError(
                "the transaction was rolled back, not committed: the database had aborted "
                "it after an error inside the block that was caught (in PostgreSQL every "
                "later statement fails and COMMIT turns into ROLLBACK). Let the error "
                "propagate, or wrap the statement that may fail in a nested atomic() block"
            )
            self._ended("rollback")
            await self._after_rollback(error)
            raise error

        failed, ended = await self._rollback_quietly(exc, outermost=True)
        if ended and not (exc is not None and self._dialect.rolls_back_by_itself(exc)):
            error = self._ended_by_block(exc)
            if exc is None or isinstance(exc, Rollback):
                raise error from exc
            return False
        self._ended("rollback")
        if exc is None:
            if failed is not None:
                raise TransactionError(f"ROLLBACK failed on {conn!r}") from failed
            if self._doomed:
                error = TransactionError(
                    f"the transaction was rolled back, not committed: {self._doomed}"
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
        conn, dialect = self._raw, self._dialect
        name = self._sp_name
        assert name is not None
        if exc is None and not self._rollback_only and not self._doomed:
            try:
                await dialect.release_savepoint(conn, name)
            except asyncio.CancelledError:
                # Interrupted (Task.cancel(), a timeout's deadline): whether RELEASE ran is
                # unknown, and either way this block's work is still in the transaction. Its
                # caller is told the block failed, so the enclosing block must not commit
                # that work should the error be caught there: it rolls back instead.
                _merge_hooks(self, parent)
                parent._doomed = (
                    f"the RELEASE SAVEPOINT {name} of a nested block was interrupted and "
                    "the error was caught (whether that block's work is in the transaction "
                    "is unknown)"
                )
                raise
            except Exception as err:
                if not dialect.is_aborted_error(err):
                    raise
                # An error inside this block was caught, which aborted the
                # transaction: undo this block so the enclosing one can go on.
                failed, _ = await self._rollback_quietly(err, outermost=False)
                if failed is not None:
                    raise failed from err
                raise TransactionError(
                    f"the work of the nested atomic block (savepoint {name}) was rolled back: "
                    "an error inside it was caught after the database had aborted the "
                    "transaction. Let the error propagate out of the nested block instead"
                ) from err
            _merge_hooks(self, parent)
            return False
        failed, _ = await self._rollback_quietly(exc, outermost=False)
        if failed is not None and (exc is None or isinstance(exc, Rollback)):
            raise TransactionError(f"ROLLBACK TO SAVEPOINT {name} failed") from failed
        if exc is None and self._doomed:
            raise TransactionError(
                f"the nested atomic block (savepoint {name}) was rolled back: {self._doomed}"
            )
        return isinstance(exc, Rollback)

    def _exit_without_savepoint(self, parent: Transaction[C], exc: BaseException | None) -> bool:
        # Without a savepoint this block cannot roll back alone: its fate is
        # the enclosing block's, so everything is handed over to it.
        _merge_hooks(self, parent)
        if self._rollback_only or isinstance(exc, Rollback):
            parent._rollback_only = True
        elif exc is not None or self._doomed:
            parent._doomed = self._doomed or (
                "a nested atomic(savepoint=False) block failed and its error was caught"
            )
        return isinstance(exc, Rollback)

    async def _rollback_quietly(
        self, exc: BaseException | None, *, outermost: bool
    ) -> tuple[BaseException | None, bool]:
        """Roll back (to the savepoint), shielded from cancellation and bounded.

        Returns the rollback's failure (or None) and whether the dialect found
        no transaction open (a statement of the block had ended it).

        The rollback gets ``cleanup_timeout`` seconds (the dialect's ``cancel_grace``
        when it waits behind a statement the driver is still cancelling: on a silent
        peer that never ends, and the pool's slot waits); past them the connection
        is abandoned (marked broken so that its pool discards it, its transport
        aborted where the driver allows) and the wait ends. A rollback failure
        never replaces ``exc``: it is attached to ``exc`` (a note and
        ``__context__``), logged, the connection is marked broken, and it is
        returned. A cancellation that arrives meanwhile is re-raised once the
        rollback is over (or abandoned), with the failure attached to it too.
        """
        raw, dialect = self._raw, self._dialect
        if outermost:
            what = "ROLLBACK"
            op = dialect.rollback(raw)
        else:
            assert self._sp_name is not None
            what = f"ROLLBACK TO SAVEPOINT {self._sp_name}"
            op = dialect.rollback_to_savepoint(raw, self._sp_name)
        loop = asyncio.get_running_loop()
        budget = self._cleanup_timeout
        pending = dialect.cancel_pending(raw)
        if pending or (pending is None and isinstance(exc, (asyncio.CancelledError, TimeoutError))):
            budget = min(budget, dialect.cancel_grace)
            what += " (behind a statement still being cancelled)"
        task = asyncio.ensure_future(op)
        deadline = loop.time() + budget
        cancelled: asyncio.CancelledError | None = None
        # An anyio scope's cancellation, delivered again at each await, is not a new one.
        with shielded():
            while not task.done():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    await asyncio.wait((task,), timeout=remaining)
                except asyncio.CancelledError as second:
                    cancelled = second
        err: BaseException | None
        if not task.done():
            err = TimeoutError(
                f"{what} got no answer within {budget}s (cleanup_timeout="
                f"{self._cleanup_timeout}s); "
                f"{self._connection!r} was abandoned (a pool discards it)"
            )
            self._mark_broken()
            try:
                dialect.abort(raw)
            except Exception as abort_error:
                logger.warning("aborting %s failed: %r", self._where(), abort_error)
            task.cancel()
            task.add_done_callback(_consume)
        elif task.cancelled():
            err = asyncio.CancelledError(f"the {what} was cancelled")
        else:
            err = task.exception()
        if err is not None:
            self._mark_broken()
            logger.warning("%s failed on %s: %r", what, self._where(), err)
            note = f"aiolease: {what} also failed ({type(err).__name__}: {redact(str(err))})"
            if exc is not None:
                _attach(exc, err, note)
            if cancelled is not None and cancelled is not exc:
                _attach(cancelled, err, note)
        if cancelled is not None:
            if exc is not None and exc is not cancelled:
                _attach(cancelled, exc)
            raise cancelled
        return err, err is None and task.result() is False

    def _ended_by_block(self, exc: BaseException | None) -> TransactionError:
        """The outermost transaction was found over at the block's exit: a statement
        of the block ended it. Whether its work was committed is not known, so no
        hook runs (either kind would claim an outcome). Returns the error to raise
        when the block has no exception of its own; ``exc`` gets its message as a note."""
        self._ended("unknown")
        message = (
            "a statement of the block ended the transaction (a COMMIT or ROLLBACK sent "
            "by hand, or an error SQLite rolled back for that the block caught), so atomic() "
            "cannot tell whether its work was committed: no COMMIT was sent and no "
            "on_commit or on_rollback hook ran. End transactions through atomic() only"
        )
        if exc is not None:
            exc.add_note(f"aiolease: {message}")
        return TransactionError(f"the transaction was not committed by atomic(): {message}")

    def _where(self) -> str:
        """The connection for a log line, and its pool when known."""
        if self._pool is None:
            return repr(self._connection)
        return f"{self._connection!r} of {self._pool!r}"

    def _mark_broken(self) -> None:
        _tracking.mark_broken(self._raw)
        if self._connection is not self._raw:
            _tracking.mark_broken(self._connection)

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
            logger.warning("on_rollback hook failed on %s: %r", self._where(), err)
            exc.add_note(
                f"aiolease: an on_rollback hook also failed ({type(err).__name__}: "
                f"{redact(str(err))})"
            )


def _merge_hooks(child: Transaction[Any], parent: Transaction[Any]) -> None:
    """Hand the hooks of a nested block that did not roll back to the enclosing one, in
    registration order (the enclosing block may have got some while the nested one was
    open)."""
    parent._on_commit = _merged(parent._on_commit, child._on_commit)
    parent._on_rollback = _merged(parent._on_rollback, child._on_rollback)


def _merged(
    parent: list[_Registered] | None, child: list[_Registered] | None
) -> list[_Registered] | None:
    if not child:
        return parent
    if not parent:
        return child
    # Registration numbers are unique: the hooks themselves are never compared.
    return list(heapq.merge(parent, child))


def _registered(hooks: list[_Registered] | None, fn: Hook) -> list[_Registered]:
    """``hooks`` (None: none yet) with ``fn`` added, numbered in registration order."""
    hook = (next(_registrations), fn)
    if hooks is None:
        return [hook]
    hooks.append(hook)
    return hooks


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
    cleanup_timeout: float | None = None,
) -> Transaction[C]:
    """A transaction block on ``conn``: commit on success, roll back on error.

    ``async with aiolease.atomic(conn) as tx:`` starts a transaction (or, when
    nested in another block on the same connection, a SAVEPOINT). Leaving the
    block normally commits (releases the savepoint); an exception rolls back
    (to the savepoint) and propagates unchanged; :class:`~aiolease.Rollback`
    rolls back silently.

    ``__aenter__`` blocks while BEGIN/SAVEPOINT runs; ``__aexit__`` blocks while
    COMMIT or the rollback runs and the hooks are awaited. A cancellation in
    the body rolls back (shielded from the cancellation, bounded by
    ``cleanup_timeout``), then propagates. A rollback that gets no answer in
    time abandons the connection (its pool discards it) and the original
    exception propagates with the failure attached. Connection loss or a driver
    timeout during COMMIT raises :class:`~aiolease.CommitUnknown`; a
    cancellation during COMMIT propagates as ``CancelledError`` with a
    ``CommitUnknown`` in its ``__context__``. Either way the connection is
    marked broken so that a pool discards it.

    Statements run exactly as inside the driver's own transaction: aiolease
    only sends the transaction-control statements (for psycopg, through
    psycopg's own ``conn.transaction()`` objects).

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
        cleanup_timeout: seconds the ROLLBACK (or ROLLBACK TO SAVEPOINT) may
            take before the connection is abandoned; None takes the dialect's
            default (5 s).

    Raises:
        TypeError: no dialect is registered for ``conn``; ``readonly``,
            ``savepoint`` or ``durable`` is not a bool.
        ValueError: ``isolation`` is not an accepted level; ``cleanup_timeout``
            is not a finite number > 0.
        TransactionError: (on enter) ``durable`` or ``isolation``/``readonly``
            on a nested block; the connection's transaction is in use by
            another task; the connection is in a transaction aiolease did not
            start. (On exit) the database had aborted the transaction, so it
            was not committed; or a statement of the block ended it, so
            whether its work was committed is not known (no hook ran); or a
            nested block failed and its error was caught where its work cannot
            be undone alone (``savepoint=False``, or its RELEASE SAVEPOINT was
            interrupted): the block rolled back.
        CommitUnknown: the connection was lost (or the driver timed out) during
            COMMIT: the outcome is unknown.
        HookError: a hook failed (the outcome is in ``committed``).
    """
    return Transaction(
        conn,
        isolation=isolation,
        readonly=readonly,
        savepoint=savepoint,
        durable=durable,
        cleanup_timeout=cleanup_timeout,
    )


# Retries live in their own module; re-exported here (the public names' home).
from ._retry import (  # noqa: E402
    TransactionAttempt as TransactionAttempt,
)
from ._retry import (  # noqa: E402
    TransactionAttempts as TransactionAttempts,
)
from ._retry import run_transaction as run_transaction  # noqa: E402
from ._retry import transaction_attempts as transaction_attempts  # noqa: E402
