"""``pool.atomic()``: a transaction on a connection acquired from a pool.

The connection is acquired, an outermost :class:`~aiolease.Transaction` is entered on it, and
the connection is released once the block has ended; a COMMIT whose outcome is unknown stays
in the chain of whatever the release raises. :mod:`aiolease._retry` begins each attempt on a
pool the same way (:func:`_begin_on_pool`).
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Any, Generic, TypeVar

from ._errors import TransactionError
from ._transaction import Transaction, _attach
from ._tx_options import check_options

__all__ = ["PoolAtomic", "pool_atomic"]

C = TypeVar("C")


class PoolAtomic(Generic[C]):
    """``pool.atomic()``: acquire a connection, run an atomic block on it, release it.

    ``__aenter__`` blocks while acquiring and while BEGIN runs; ``__aexit__``
    while COMMIT/ROLLBACK runs and the connection is released (shielded by the
    pool). A connection whose COMMIT outcome is unknown is marked broken, so
    the pool closes it instead of reusing it.
    """

    __slots__ = ("_acquire", "_options", "_pool", "_tx")

    def __init__(self, pool: Any, **options: Any) -> None:
        check_options(options)
        self._pool = pool
        self._options = options
        self._acquire: Any = None
        self._tx: Transaction[C] | None = None

    async def __aenter__(self) -> Transaction[C]:
        if self._acquire is not None:
            raise TransactionError("a pool.atomic() block can be entered only once")
        self._acquire, tx = await _begin_on_pool(self._pool, self._options)
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
            await _release_keeping_outcome(acquire, err)
            raise
        if suppress:
            await acquire.__aexit__(None, None, None)
        else:
            await acquire.__aexit__(exc_type, exc, tb)
        return suppress


async def _begin_on_pool(
    pool: Any,
    options: dict[str, Any],
    created: Callable[[Transaction[Any]], None] | None = None,
) -> tuple[Any, Transaction[Any]]:
    """Acquire a connection from ``pool`` and enter an outermost block on it.

    ``created`` sees the block before it is entered. Returns the pool's
    entered ``acquire()`` context and the open block; on failure the
    connection goes back to the pool and the error propagates.
    """
    acquire = pool.acquire()
    conn = await acquire.__aenter__()
    try:
        tx: Transaction[Any] = Transaction(conn, **_with_pool_defaults(pool, options))
        tx._pool = pool
        if created is not None:
            created(tx)
        await tx.__aenter__()
    except BaseException as exc:
        await acquire.__aexit__(type(exc), exc, exc.__traceback__)
        raise
    return acquire, tx


def _with_pool_defaults(pool: Any, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` plus the pool's default ``cleanup_timeout`` (an attribute of
    its manager, when it has one) unless the call gave one."""
    if options.get("cleanup_timeout") is None:
        default = getattr(getattr(pool, "manager", None), "cleanup_timeout", None)
        if default is not None:
            return {**options, "cleanup_timeout": default}
    return options


async def _release_keeping_outcome(acquire: Any, err: BaseException) -> None:
    """Leave the pool's ``acquire()`` context after the block raised ``err``.

    Once COMMIT was sent, no later exception hides the unknown outcome: one
    that the release raises instead (a timeout of the caller firing meanwhile,
    a cancellation) gets ``err`` in its chain.
    """
    try:
        await acquire.__aexit__(type(err), err, err.__traceback__)
    except BaseException as later:
        if later is not err:
            _attach(later, err)
        raise


def pool_atomic(pool: Any, **options: Any) -> PoolAtomic[Any]:
    """What :meth:`aiolease.Pool.atomic` returns (the options are :func:`atomic`'s)."""
    return PoolAtomic(pool, **options)
