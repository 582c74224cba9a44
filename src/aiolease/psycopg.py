"""psycopg 3 integration: ``create_pool(conninfo, ...)`` → ``Pool[psycopg.AsyncConnection]``.

Install with ``pip install aiolease[psycopg]``. Connections are opened in
autocommit mode by default: transactions are explicit (``aiolease.atomic`` or
``conn.transaction()``), so a released connection is idle unless a block was
left open, and the reset costs no round trip.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ._pool import Pool
from .abc import Manager, ResourceInfo

try:
    import psycopg
    from psycopg import pq
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "aiolease.psycopg needs the psycopg driver: pip install 'aiolease[psycopg]'"
    ) from exc

__all__ = ["PsycopgManager", "create_pool"]

logger = logging.getLogger("aiolease.psycopg")

_TS = pq.TransactionStatus
AsyncConnection = psycopg.AsyncConnection[Any]


class PsycopgManager(Manager[AsyncConnection]):
    """Creates, vets, resets and closes psycopg ``AsyncConnection`` objects for a Pool.

    ``check`` discards a connection that was closed or broken while idle.
    ``reset`` rolls back a transaction left open (``INTRANS``/``INERROR``) and
    discards a connection released with a query still running (``ACTIVE``) or
    in an unknown state.

    Args:
        conninfo: the connection string, passed to ``AsyncConnection.connect``.
        reset_timeout: seconds the rollback at release may take before the
            connection is discarded.
        **connect_kwargs: passed to ``AsyncConnection.connect``;
            ``autocommit`` defaults to True.
    """

    def __init__(self, conninfo: str = "", *, reset_timeout: float = 5.0, **connect_kwargs: Any):
        if isinstance(reset_timeout, bool) or not isinstance(reset_timeout, int | float):
            raise TypeError(f"reset_timeout must be a number of seconds, got {reset_timeout!r}")
        if reset_timeout <= 0:
            raise ValueError(f"reset_timeout must be > 0 seconds, got {reset_timeout!r}")
        self.conninfo = conninfo
        self.reset_timeout = float(reset_timeout)
        connect_kwargs.setdefault("autocommit", True)
        self.connect_kwargs = connect_kwargs

    async def create(self) -> AsyncConnection:
        return await psycopg.AsyncConnection.connect(self.conninfo, **self.connect_kwargs)

    async def check(self, resource: AsyncConnection, info: ResourceInfo) -> None:
        if resource.closed or resource.broken:
            raise ConnectionError("connection was closed while idle (server restart or kill?)")

    def reset_needed(self, resource: AsyncConnection, info: ResourceInfo) -> bool:
        return resource.closed or resource.pgconn.transaction_status != _TS.IDLE

    async def reset(self, resource: AsyncConnection, info: ResourceInfo) -> None:
        if resource.closed or resource.broken:
            raise ConnectionError("connection is closed or broken")
        status = resource.pgconn.transaction_status
        if status == _TS.IDLE:
            return
        if status in (_TS.INTRANS, _TS.INERROR):
            logger.warning("rolling back a transaction left open on %r at release", resource)
            async with asyncio.timeout(self.reset_timeout):
                await resource.rollback()
            return
        raise ConnectionError(
            f"connection released in state {_TS(status).name} (a query still running, or unknown)"
        )

    async def close(self, resource: AsyncConnection) -> None:
        if not resource.closed:
            await resource.close()

    def is_fatal(self, resource: AsyncConnection, exc: BaseException) -> bool:
        return resource.closed or resource.broken


def create_pool(
    conninfo: str = "",
    *,
    min_size: int = 0,
    max_size: int = 10,
    acquire_timeout: float | None = 30.0,
    max_waiting: int | None = None,
    max_lifetime: float | None = None,
    idle_timeout: float | None = None,
    leak_timeout: float | None = None,
    name: str | None = None,
    **connect_kwargs: Any,
) -> Pool[AsyncConnection]:
    """An unopened :class:`~aiolease.Pool` of psycopg ``AsyncConnection`` objects.

    Open it with ``async with`` or ``await pool.open()``. Pool options are as
    for :class:`~aiolease.Pool`; everything else goes to
    ``psycopg.AsyncConnection.connect`` (``autocommit`` defaults to True).

    Raises:
        ValueError: a bad option.
    """
    manager = PsycopgManager(conninfo, **connect_kwargs)
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
