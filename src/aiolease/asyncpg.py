"""asyncpg integration: ``create_pool(dsn, ...)`` → ``Pool[asyncpg.Connection]``.

Install with ``pip install aiolease[asyncpg]``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Literal

from ._pool import Pool
from .abc import Manager, ResourceInfo

try:
    import asyncpg
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "aiolease.asyncpg needs the asyncpg driver: pip install 'aiolease[asyncpg]'"
    ) from exc

if TYPE_CHECKING:
    from asyncpg import Connection
else:
    Connection = asyncpg.Connection

__all__ = ["AsyncpgManager", "create_pool"]

logger = logging.getLogger("aiolease.asyncpg")

Reset = Literal["transaction", "session"]


def _busy(conn: Connection) -> bool:
    """Whether a query is still in flight (e.g. the body was cancelled mid-query)."""
    protocol = getattr(conn, "_protocol", None)
    is_cancelling = getattr(protocol, "_is_cancelling", None)
    return bool(is_cancelling is not None and is_cancelling())


class AsyncpgManager(Manager["Connection"]):
    """Creates, vets, resets and closes asyncpg connections for a :class:`~aiolease.Pool`.

    Args:
        dsn: the connection string, passed to :func:`asyncpg.connect`.
        reset: ``"transaction"`` (default) rolls back a transaction left open
            and discards a connection that is busy or broken; session state
            (``SET``, temporary tables, advisory locks, ``LISTEN``) carries over
            to the next user, and a release costs no round trip when no
            transaction is open. ``"session"`` runs asyncpg's full session
            reset on every release (``RESET ALL``, ``UNLISTEN *``, unlock
            advisory locks, ``CLOSE ALL``) as asyncpg's own pool does: isolated,
            but one extra round trip per release.
        reset_timeout: seconds a reset may take before the connection is discarded.
        close_timeout: seconds a graceful close may take before the socket is cut.
        **connect_kwargs: passed to :func:`asyncpg.connect`.
    """

    def __init__(
        self,
        dsn: str | None = None,
        *,
        reset: Reset = "transaction",
        reset_timeout: float = 5.0,
        close_timeout: float = 5.0,
        **connect_kwargs: Any,
    ) -> None:
        if reset not in ("transaction", "session"):
            raise ValueError(f'reset must be "transaction" or "session", got {reset!r}')
        for name, value in (("reset_timeout", reset_timeout), ("close_timeout", close_timeout)):
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"{name} must be > 0 seconds, got {value!r}")
        self.dsn = dsn
        self.reset_mode: Reset = reset
        self.reset_timeout = float(reset_timeout)
        self.close_timeout = float(close_timeout)
        self.connect_kwargs = connect_kwargs

    async def create(self) -> Connection:
        return await asyncpg.connect(self.dsn, **self.connect_kwargs)

    async def check(self, resource: Connection, info: ResourceInfo) -> None:
        if resource.is_closed():
            raise ConnectionError("connection was closed while idle (server restart or kill?)")

    def reset_needed(self, resource: Connection, info: ResourceInfo) -> bool:
        if self.reset_mode == "session":
            return True
        return (
            resource.is_closed()
            or resource.is_in_transaction()
            or getattr(resource, "_top_xact", None) is not None
            or _busy(resource)
        )

    async def reset(self, resource: Connection, info: ResourceInfo) -> None:
        if resource.is_closed():
            raise ConnectionError("connection is closed")
        if _busy(resource):
            raise ConnectionError("connection was released with a query still in flight")
        async with asyncio.timeout(self.reset_timeout):
            if self.reset_mode == "session":
                await resource.reset()
            elif resource.is_in_transaction() or getattr(resource, "_top_xact", None) is not None:
                logger.warning("rolling back a transaction left open on %r at release", resource)
                resource._top_xact = None  # type: ignore[attr-defined]  # asyncpg's own reset does this
                await resource.execute("ROLLBACK")

    async def close(self, resource: Connection) -> None:
        if resource.is_closed():
            return
        try:
            await resource.close(timeout=self.close_timeout)
        except BaseException:
            resource.terminate()
            raise

    def is_fatal(self, resource: Connection, exc: BaseException) -> bool:
        return resource.is_closed() or isinstance(
            exc, OSError | asyncpg.exceptions.ConnectionDoesNotExistError
        )


def create_pool(
    dsn: str | None = None,
    *,
    min_size: int = 0,
    max_size: int = 10,
    acquire_timeout: float | None = 30.0,
    max_waiting: int | None = None,
    max_lifetime: float | None = None,
    idle_timeout: float | None = None,
    leak_timeout: float | None = None,
    name: str | None = None,
    reset: Reset = "transaction",
    **connect_kwargs: Any,
) -> Pool[Connection]:
    """An unopened :class:`~aiolease.Pool` of asyncpg connections.

    Open it with ``async with`` or ``await pool.open()``. Pool options are as
    for :class:`~aiolease.Pool`; ``reset`` is explained at
    :class:`AsyncpgManager`; everything else goes to :func:`asyncpg.connect`.

    Raises:
        ValueError: a bad option.
    """
    manager = AsyncpgManager(dsn, reset=reset, **connect_kwargs)
    return Pool(
        manager,
        min_size=min_size,
        max_size=max_size,
        acquire_timeout=acquire_timeout,
        max_waiting=max_waiting,
        max_lifetime=max_lifetime,
        idle_timeout=idle_timeout,
        leak_timeout=leak_timeout,
        name=name,
    )
