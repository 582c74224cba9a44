"""Retries: ``run_transaction`` and ``transaction_attempts``.

Each attempt is a fresh outermost :class:`~aiolease.Transaction`; an attempt
that fails with a retryable error (the dialect decides: PostgreSQL
40001/40P01, SQLite busy/locked) while attempts remain rolls back, runs no
hooks, and the loop sleeps a jittered, capped exponential backoff (on the
loop's clock) before the next one. A cancellation is never retried. A body
that runs its statements in a ``TaskGroup`` raises the retryable error inside an
``ExceptionGroup``: a group of retryable errors only is retried too.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import random
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from . import _metrics, _pool_atomic, _tracking, _validate
from ._dialects import SUPPORTED, find_dialect
from ._errors import Rollback
from ._lease import unwrap
from ._transaction import Transaction, logger
from ._tx_options import check_options

if TYPE_CHECKING:
    from ._pool import Pool

__all__ = ["TransactionAttempt", "TransactionAttempts", "run_transaction", "transaction_attempts"]

C = TypeVar("C")
R = TypeVar("R")


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
        tx = self._tx
        if self.number >= loop._attempts or tx is None:
            return False
        if loop._is_connection and _tracking.is_broken(tx._raw):
            # The attempt's clean-up failed on the connection it was given: the next
            # attempt could only fail on it too (or wait on a dead peer), hiding this error.
            return False
        # An unknown outcome (a COMMIT sent by hand, a connection lost during COMMIT)
        # may have committed the attempt's work: running it again could do it twice.
        return tx._outcome != "unknown" and _retryable(tx._dialect, exc)

    async def __aenter__(self) -> Transaction[C]:
        loop = self._loop
        while True:
            try:
                return await self._enter()
            except Exception as exc:
                # BEGIN itself met a retryable error (SQLite busy at BEGIN
                # IMMEDIATE): the body has not run, so this attempt starts over.
                if not self._will_retry(exc):
                    raise
                await loop._pause(exc)
                self.number = loop._number

    async def _enter(self) -> Transaction[C]:
        loop = self._loop
        self._pool_cm = None
        if loop._is_connection:
            tx: Transaction[C] = Transaction(loop._target, **loop._options)
            self._adopt(tx)
            await tx.__aenter__()
            return tx
        self._pool_cm, pooled = await _pool_atomic._begin_on_pool(
            loop._target, loop._options, self._adopt
        )
        return pooled

    def _adopt(self, tx: Transaction[Any]) -> None:
        tx._retrying = self._will_retry
        self._tx = tx

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
                pool_cm, self._pool_cm = self._pool_cm, None
                await _pool_atomic._release_keeping_outcome(pool_cm, err)
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


def _retryable(dialect: Any, exc: BaseException) -> bool:
    """Whether running the transaction again may cure ``exc``: a retryable error, or a group
    of them only (a body running its statements in a ``TaskGroup`` gets the server's error
    inside an ``ExceptionGroup``). A group holding any other error is not retried: a retry
    would hide that error, or repeat what caused it."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_retryable(dialect, e) for e in exc.exceptions)
    return bool(dialect.is_retryable(exc))


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
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            raise ValueError(f"attempts must be an int >= 1, got {attempts!r}")
        backoff = _validate.seconds("backoff", backoff)
        max_backoff = _validate.seconds("max_backoff", max_backoff)
        self._is_connection = find_dialect(unwrap(target)) is not None
        if not self._is_connection and not hasattr(target, "acquire"):
            raise TypeError(
                "run_transaction()/transaction_attempts() need a pool (with acquire()) or a "
                f"connection with a transaction dialect, got {type(target).__name__}: the "
                f"supported connections are {SUPPORTED}; teach it others with "
                "aiolease.register_dialect(ConnectionType, dialect)"
            )
        # Validate the options now rather than at the first attempt (for a pool,
        # after waiting for a connection).
        if self._is_connection:
            Transaction(target, **options)
        else:
            check_options(options)
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
            assert self._last_error is not None
            await self._pause(self._last_error)
        else:
            self._number = 1
        return TransactionAttempt(self, self._number)

    async def _pause(self, error: BaseException) -> None:
        """Sleep the jittered backoff after attempt ``_number`` failed with ``error``,
        then count the next attempt."""
        try:
            # ldexp: backoff * 2**(n - 1) as a float, raising OverflowError (not inf)
            # past the largest float, which a long run of retries reaches.
            cap = min(self._max_backoff, math.ldexp(self._backoff, self._number - 1))
        except OverflowError:
            cap = self._max_backoff
        delay = random.uniform(0, cap)
        _metrics.transaction_retried(self._number, error, delay)
        logger.debug(
            "retrying transaction (attempt %d of %d) in %.3fs after %r",
            self._number + 1,
            self._attempts,
            delay,
            error,
        )
        await asyncio.sleep(delay)
        self._number += 1


@overload
def transaction_attempts(
    target: Pool[C],
    *,
    attempts: int = ...,
    isolation: str | None = ...,
    readonly: bool = ...,
    backoff: float = ...,
    max_backoff: float = ...,
    cleanup_timeout: float | None = ...,
) -> TransactionAttempts[C]: ...


@overload
def transaction_attempts(
    target: Any,
    *,
    attempts: int = ...,
    isolation: str | None = ...,
    readonly: bool = ...,
    backoff: float = ...,
    max_backoff: float = ...,
    cleanup_timeout: float | None = ...,
) -> TransactionAttempts[Any]: ...


def transaction_attempts(
    target: Any,
    *,
    attempts: int = 5,
    isolation: str | None = None,
    readonly: bool = False,
    backoff: float = 0.05,
    max_backoff: float = 1.0,
    cleanup_timeout: float | None = None,
) -> TransactionAttempts[Any]:
    """Retry loop for transaction code that does not fit a callback.

    ::

        async for attempt in aiolease.transaction_attempts(pool, isolation="serializable"):
            async with attempt as tx:
                await tx.connection.execute(...)

    Each attempt acquires a connection from ``target`` (a pool) or reuses
    ``target`` (a connection) and runs a fresh outermost transaction. An attempt
    that fails with a retryable error (PostgreSQL 40001/40P01, SQLite busy or
    locked; or an ``ExceptionGroup`` of such errors only, as a ``TaskGroup`` in
    the body raises) while attempts remain rolls back, runs no hooks, and the loop
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
        backoff: first backoff cap in seconds (doubles per retry); finite, > 0.
        max_backoff: the largest backoff in seconds (finite, > 0), so
            ``attempts`` bounds the total wait by ``(attempts - 1) * max_backoff``.
        cleanup_timeout: as for :func:`atomic`.

    A cancellation is never retried: it propagates (during COMMIT with a
    :class:`~aiolease.CommitUnknown` in its ``__context__``).

    Raises:
        ValueError: bad ``attempts``/``backoff``/``max_backoff``/``isolation``/
            ``cleanup_timeout`` (the message names the argument).
        TypeError: ``target`` is neither a pool nor a supported connection.
    """
    return TransactionAttempts(
        target,
        attempts=attempts,
        backoff=backoff,
        max_backoff=max_backoff,
        # durable: each attempt is a fresh outermost transaction, never a savepoint
        # of one already open on the connection.
        options={
            "isolation": isolation,
            "readonly": readonly,
            "cleanup_timeout": cleanup_timeout,
            "durable": True,
        },
    )


@overload
async def run_transaction(
    target: Pool[C],
    fn: Callable[[C], Awaitable[R]],
    *,
    attempts: int = ...,
    isolation: str | None = ...,
    readonly: bool = ...,
    backoff: float = ...,
    max_backoff: float = ...,
    cleanup_timeout: float | None = ...,
) -> R: ...


@overload
async def run_transaction(
    target: Any,
    fn: Callable[[Any], Awaitable[R]],
    *,
    attempts: int = ...,
    isolation: str | None = ...,
    readonly: bool = ...,
    backoff: float = ...,
    max_backoff: float = ...,
    cleanup_timeout: float | None = ...,
) -> R: ...


async def run_transaction(
    target: Any,
    fn: Callable[[Any], Awaitable[R]],
    *,
    attempts: int = 5,
    isolation: str | None = None,
    readonly: bool = False,
    backoff: float = 0.05,
    max_backoff: float = 1.0,
    cleanup_timeout: float | None = None,
) -> R:
    """Run ``await fn(conn)`` in a transaction, retrying on serialization failures.

    Each attempt gets a connection from ``target`` (a pool; or ``target``
    itself when it is a connection) inside a fresh :func:`atomic` block and
    returns ``fn``'s result once committed. Retryable errors and the backoff
    are as for :func:`transaction_attempts`. ``fn`` registers hooks with a
    nested ``async with aiolease.atomic(conn, savepoint=False) as tx:``
    (free: no SQL); they run only for the attempt that commits.

    ``fn`` raising :class:`~aiolease.Rollback` rolls the transaction back
    (no retry; its ``on_rollback`` hooks run) and, as there is no result to
    return, ``run_transaction`` raises that ``Rollback`` again. To roll back
    and still return a value, call ``tx.set_rollback(True)`` instead.

    Raises:
        ValueError: bad ``attempts``/``backoff``/``max_backoff`` (finite and
            > 0), ``isolation`` or ``cleanup_timeout``, at the call.
        TypeError: ``fn`` is not callable, at the call; or ``fn(connection)``
            returned no awaitable (its attempt is rolled back).
        Rollback: ``fn`` raised it (the transaction rolled back).
        Exception: whatever the last attempt raised.
    """
    if not callable(fn):
        raise TypeError(f"fn must be an async function of the connection, got {fn!r}")
    attempts_loop = transaction_attempts(
        target,
        attempts=attempts,
        isolation=isolation,
        readonly=readonly,
        backoff=backoff,
        max_backoff=max_backoff,
        cleanup_timeout=cleanup_timeout,
    )
    tracer = _metrics.tracer
    span = None if tracer is None else tracer.retry_loop()  # retries are its events
    result: R
    rolled_back: Rollback | None = None
    try:
        async for attempt in attempts_loop:
            async with attempt as tx:
                try:
                    result = await _awaitable(fn(tx.connection))
                except Rollback as exc:
                    rolled_back = exc
                    raise
        if rolled_back is not None:
            # The attempt's block swallowed it and rolled back: there is no
            # result to return, so the caller gets the Rollback back.
            raise rolled_back
    except BaseException as error:
        if span is not None:
            span.end(None, error)
        raise
    if span is not None:
        span.end("commit", None)
    return result


def _awaitable(value: Awaitable[R]) -> Awaitable[R]:
    """What ``fn`` returned, which ``run_transaction`` awaits: a plain function (a lambda
    that forgot to call the async function) is known only once it has run."""
    if not inspect.isawaitable(value):
        raise TypeError(
            "fn must be an async function of the connection: fn(connection) returned "
            f"{type(value).__name__} {value!r}, not an awaitable"
        )
    return value
