"""psycopg's private layout, fenced: a cancelled query on a pooled connection ends within
:data:`~aiolease._liveness.CANCEL_GRACE`.

When the task running a query is cancelled, psycopg's ``AsyncConnection.wait`` (the coroutine
every operation of the connection goes through, not part of psycopg's documented API) catches
the cancellation while the query is active and, before re-raising it, sends a cancel request
over a new connection with a hard-coded 5 s timeout, then waits up to 5 s more for the query to
end. On a silent peer (a dropped network, a half-open connection) neither is ever answered: the
cancelled task, and the connection's pool slot, wait 5 to 10 s, and nothing of aiolease runs
meanwhile.

:class:`BoundedCancelConnection` is the connection class :mod:`aiolease.psycopg` opens. Its
``wait`` is psycopg's, with the same private helper (``psycopg.waiting.wait_async``) on the
path of every query, so a query that is not cancelled runs exactly as before. On a cancellation
it sends the cancel request with psycopg's public ``cancel_safe(timeout=...)`` and waits for the
query to end, both within ``cancel_grace`` seconds in all, sending the request again while the
query has not ended (the server drops one that overtook its query): a live server answers a
cancel request within a round trip or two and the connection is kept (also when the query
ended on an error of its own first, e.g. an earlier statement's in a pipeline: the connection is
then between statements, as after any failed query); past the grace, or on any other outcome,
the connection is closed (``pgconn.finish()``, as psycopg does when its own bound expires or a
second interruption arrives) and the pool discards it at release. The cancellation itself is
always re-raised unchanged; a second one that arrives during the grace closes the connection and
propagates at once (an anyio cancel scope's cancellation, which anyio delivers again at every
await until the scope exits, is not a second one: the grace runs shielded from it).

The probe checks that ``AsyncConnection.wait`` and ``psycopg.waiting.wait_async`` have the
signatures the override copies, and that libpq can bound a cancel request (libpq 17 or later,
which ``psycopg[binary]`` bundles; with an older one ``cancel_safe`` runs libpq's blocking
cancel in a thread, which no timeout reaches). When it fails, or ``AIOLEASE_COMPAT=public`` was
set, :data:`CONNECTION_CLASS` is psycopg's own ``AsyncConnection`` and psycopg's bounds apply.
The override costs nothing measurable on the hot path (``make bench-compat``, bench/README.md).
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any, ClassVar

import psycopg
from psycopg import pq, waiting

from .._liveness import CANCEL_GRACE, CANCEL_RESEND_FIRST
from .._logs import get_logger
from .._shield import shielded
from . import PUBLIC

__all__ = ["CONNECTION_CLASS", "PRIVATE", "BoundedCancelConnection"]

logger = get_logger("aiolease.pool.psycopg")

_ACTIVE = pq.TransactionStatus.ACTIVE
_OK = pq.ConnStatus.OK
# The states a connection is in between statements.
_SETTLED = (pq.TransactionStatus.IDLE, pq.TransactionStatus.INTRANS, pq.TransactionStatus.INERROR)
# What psycopg's wait treats as an interruption of the query (its _INTERRUPTED, async flavour).
_INTERRUPTED = (asyncio.CancelledError, KeyboardInterrupt, SystemExit)


def _parameters(function: Any) -> list[inspect.Parameter]:
    try:
        return list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):  # not introspectable: not the layout we know
        return []


def _probe() -> float | None:
    """psycopg's default polling interval of ``wait`` when the layout is the expected one,
    else None."""
    wait = psycopg.AsyncConnection.__dict__.get("wait")
    params = _parameters(wait)
    helper = getattr(waiting, "wait_async", None)
    helper_params = [p.name for p in _parameters(helper)]
    if (
        not inspect.iscoroutinefunction(wait)
        or [p.name for p in params] != ["self", "gen", "interval", "timeout"]
        or not isinstance(params[2].default, float)
        or not inspect.iscoroutinefunction(helper)
        or helper_params[:4] != ["gen", "fileno", "interval", "timeout"]
        or not psycopg.capabilities.has_cancel_safe()
    ):
        return None
    return float(params[2].default)


_INTERVAL = None if PUBLIC else _probe()
#: Whether the bounded cancellation is in use (the probe passed and ``AIOLEASE_COMPAT`` is
#: not public).
PRIVATE: bool = _INTERVAL is not None


class BoundedCancelConnection(psycopg.AsyncConnection[Any]):
    """psycopg's ``AsyncConnection`` whose cancelled queries end within :attr:`cancel_grace`
    (see the module's docstring). Everything else is psycopg's."""

    #: Seconds a cancelled query gets to end (cancel request and the query's end together)
    #: before the connection is closed.
    cancel_grace: ClassVar[float] = CANCEL_GRACE

    async def wait(
        self,
        gen: Any,
        interval: float = _INTERVAL or 0.1,
        timeout: float | None = None,
    ) -> Any:
        try:
            return await waiting.wait_async(
                gen, self.pgconn.socket, interval=interval, timeout=timeout
            )
        except _INTERRUPTED:
            if self.pgconn.transaction_status == _ACTIVE:
                await self._end_cancelled(gen, interval)
            raise

    async def _end_cancelled(self, gen: Any, interval: float) -> None:
        """Cancel the interrupted query and read its end, within ``cancel_grace`` in all;
        otherwise close the connection. Re-raises only a new interruption.

        A cancel request is sent again while the query has not ended: PostgreSQL drops one
        that reaches the backend while it waits for a command, so a request that overtook
        its query (it travels on a connection of its own; the query may still be on its
        way, or unread by a backend the machine has not scheduled yet) stops nothing, and
        the query would run on to its end on the server after the connection is closed.
        Each request is answered only once the server has signalled the backend, and
        nothing else is sent on the connection until the query's end is read, so a
        request can only stop this query or be dropped: never a later statement."""
        loop = asyncio.get_running_loop()
        grace = self.cancel_grace
        deadline = loop.time() + grace
        pause = grace * CANCEL_RESEND_FIRST
        try:
            # An anyio scope's cancellation, delivered again at each await, is not a
            # second interruption: it would close a connection the server can keep.
            with shielded():
                remaining = grace
                while True:
                    await self.cancel_safe(timeout=remaining)
                    remaining = deadline - loop.time()
                    scope = asyncio.timeout(min(pause, max(remaining, 0.0)))
                    try:
                        async with scope:
                            await waiting.wait_async(gen, self.pgconn.socket, interval=interval)
                        break  # the query ended (on its own first, or stopped: see below)
                    except TimeoutError:
                        remaining = deadline - loop.time()
                        if not scope.expired() or remaining <= 0:
                            raise  # the grace is over: the connection is closed below
                    pause *= 2
        except psycopg.errors.QueryCanceled:
            return  # the server stopped the query: the connection is usable
        except BaseException as exc:
            pgconn = self.pgconn
            if (
                isinstance(exc, psycopg.Error)
                and pgconn.status == _OK
                and pgconn.transaction_status in _SETTLED
            ):
                # It ended on an error of its own before the cancel took effect (in a
                # pipeline, an earlier statement's): usable, as after any failed query.
                return
            # No answer within the grace (a silent peer), a lost connection, or another
            # interruption: the connection's state is unknown.
            if pgconn.status == _OK and pgconn.transaction_status == _ACTIVE:
                what = f"did not end cleanly within {grace:.1f} s"
            else:
                what = "ended with the connection lost or in an unknown state"
            logger.warning(
                "the cancelled query on %r %s (%s): closing the connection",
                self,
                what,
                type(exc).__name__,
            )
            pgconn.finish()
            if not isinstance(exc, Exception):
                raise  # a new interruption goes on; an error must not replace the first


#: The class :mod:`aiolease.psycopg` opens connections with (public mode, or a psycopg whose
#: layout the probe does not know: psycopg's own).
CONNECTION_CLASS: type[psycopg.AsyncConnection[Any]] = (
    BoundedCancelConnection if PRIVATE else psycopg.AsyncConnection
)
