"""Shared helpers of the driver pool tests (asyncpg, psycopg, SQLite) on a real loop.

White-box in one place: :func:`settle` reads ``pool._tasks`` (the pool-owned tasks:
creations, resets, closes) to know when background work has finished, and
:meth:`Sessions.settled` reads ``pool._idle`` (the idle connections).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiolease import Pool


async def settle(pool: Pool[Any]) -> None:
    """Wait for the pool's background work (resets, closes) to finish."""
    for _ in range(100):
        tasks = [t for t in pool._tasks if not t.done()]
        if not tasks:
            return
        await asyncio.wait(tasks, timeout=10)
    raise AssertionError(f"{pool!r} never settled")


def tagged(kind: str, app: str) -> dict[str, Any]:
    """The keywords that make ``create_pool`` of driver ``kind`` ("asyncpg" or "psycopg")
    name its PostgreSQL sessions ``app`` (an application name no other pool uses), so that
    :class:`Sessions` can find every session of that pool on the server."""
    if kind == "asyncpg":
        return {"server_settings": {"application_name": app}}
    return {"application_name": app}


def _backend_pid(kind: str, conn: Any) -> int:
    return int(conn.get_server_pid() if kind == "asyncpg" else conn.info.backend_pid)


class Sessions:
    """One pool's PostgreSQL sessions (those named ``app``, see :func:`tagged`) as the
    server sees them (``pg_stat_activity``), asked through a connection of its own, open
    within ``async with``."""

    def __init__(self, dsn: str, app: str) -> None:
        self.dsn = dsn
        self.app = app
        self._observer: Any = None

    async def __aenter__(self) -> Sessions:
        import asyncpg

        self._observer = await asyncpg.connect(self.dsn)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._observer.close()

    async def view(self) -> list[dict[str, Any]]:
        """Each session: pid, state, xact_start and the start of its last query (what a
        failure message should show)."""
        rows = await self._observer.fetch(
            "select pid, state, xact_start, left(query, 60) as query from pg_stat_activity"
            " where application_name = $1 order by pid",
            self.app,
        )
        return [dict(row) for row in rows]

    async def settled(self, kind: str, pool: Pool[Any], what: Any = None) -> None:
        """Once the pool has settled (:func:`settle`): wait until the server has ended
        every session but the pool's idle connections, and check that those are idle
        outside any transaction, as the server sees it.

        A connection the pool discarded (its COMMIT cancelled in flight, a clean-up
        abandoned) is closed, gracefully within a bound and else cut; the server may still
        run what it was sent (a COMMIT it had not read yet, or one flushing its commit
        record, which ignores a cancel request), so that transaction's rows may become
        visible after the pool has settled. The outcome is known once that session has
        ended. Idle connections are asked of the server because the drivers' own flags
        follow the replies they have read. Fails with the server's view and the pool's
        statistics (and ``what``).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30.0
        while True:
            idle = {_backend_pid(kind, entry.resource) for entry in pool._idle}
            view = await self.view()
            busy = [
                s for s in view if s["pid"] in idle and (s["state"] != "idle" or s["xact_start"])
            ]
            assert not busy, (
                "an idle connection is in a transaction",
                what,
                view,
                pool.statistics(),
            )
            if all(s["pid"] in idle for s in view):
                return
            if loop.time() > deadline:
                raise AssertionError(
                    ("sessions the pool let go never ended", what, view, pool.statistics())
                )
            await asyncio.sleep(0.05)
