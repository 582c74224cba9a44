"""asyncpg's private layout, fenced: what :mod:`aiolease.asyncpg` needs that asyncpg does not
publish.

asyncpg exposes ``is_closed()``, ``is_in_transaction()`` and ``reset()``, but not

* the connection's transport: the pool polls an idle connection's socket and counts what the
  server sent while it sat idle, so that a backend the server terminated is never handed out,
  with no round trip for a healthy connection (``Connection._transport``);
* whether a cancelled query is still in flight (``Connection._protocol._is_cancelling()``);
* its own record of a ``conn.transaction()`` still open (``Connection._top_xact``), which a
  plain ``ROLLBACK`` leaves behind;
* the socket, to turn on TCP keepalive and ``TCP_USER_TIMEOUT`` so that a silent peer is
  detected without configuration (asyncpg has no option for it: MagicStack/asyncpg#606);
* a way to send a cancel request again (``Connection._cancel_current_command``, the call asyncpg
  sends its own single request with), and to wait for the cancelled statement's end without
  sending anything (``Protocol._wait_for_cancellation()``): PostgreSQL drops a request that
  reaches the backend while it waits for a command, so one that overtook its query (it travels
  on a connection of its own) stops nothing, and the query would run on on the server after
  the connection is cut.

Each has a public fallback, taken when the probe below fails or ``AIOLEASE_COMPAT=public`` was
set: no transport (every checkout of an idle connection is verified with a ``SELECT 1`` round
trip), no in-flight view (a lease whose body was cancelled or timed out is discarded, and every
other release is verified with a ``SELECT 1`` round trip: a statement whose timeout its holder
caught may still run),
``reset()`` to end a transaction left open (which also resets the session), no keepalive
(:mod:`aiolease.asyncpg` then bounds every operation with a default ``command_timeout``), and
no second cancel request (a query whose only request the server dropped runs on to its end on
the server after the connection is cut; its own probe, so that an asyncpg without those
names keeps the rest).

The transport is kept because public mode is measurably worse without it: ``make
bench-compat`` (2026-12-05, 2-core shared VM, Python 3.11, asyncpg 0.32, PostgreSQL behind a
proxy adding 0.25 ms each way, which epoll's 1 ms timer resolution rounds up), acquire +
``SELECT 1`` + release by 1 task on a pool of 4 ran at 0.47, 0.54 and 0.59 of the default
mode's rate in three runs (the extra round trip per checkout from idle); 8 tasks, where
connections pass from task to task without a check, at 0.92-1.02 (noise). The in-flight view
(``cancelling``) costs an attribute read per release in the default mode; since 2026-12-07 its
public fallback verifies every release with a round trip, and the whole public mode ran at 0.33
of the default rate with 1 task and 0.50 with 8 tasks (one run, same set-up). The transaction
record costs nothing measurable either way; it is kept for behaviour: ``SET`` survives a
transaction rolled back at release.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import asyncpg

from .._liveness import CANCEL_GRACE, CANCEL_RESEND_FIRST
from .._tasks import start_task
from . import PUBLIC

__all__ = [
    "HAVE_SOCKET",
    "PRIVATE",
    "RESENDS_CANCEL",
    "SEES_CANCELLING",
    "cancelling",
    "connection_socket",
    "end_cancelled",
    "end_transaction",
    "transaction_pending",
    "transport_of",
]


def _probe() -> bool:
    slots = set(getattr(asyncpg.connection.Connection, "__slots__", ()))
    protocol = getattr(getattr(asyncpg, "protocol", None), "Protocol", None)
    return {"_transport", "_protocol", "_top_xact"} <= slots and callable(
        getattr(protocol, "_is_cancelling", None)
    )


def _probe_cancel() -> bool:
    # Connection._cancel_current_command(waiter, cancel_waiter=None): starts a task (kept in
    # the connection's _cancellations, which terminate() and close() cancel) that sends a
    # cancel request and then completes ``waiter``; Protocol._wait_for_cancellation(): waits
    # for the answer to asyncpg's request and the cancelled statement's end.
    connection = asyncpg.connection.Connection
    protocol = getattr(getattr(asyncpg, "protocol", None), "Protocol", None)
    method = getattr(connection, "_cancel_current_command", None)
    if (
        not callable(method)
        or "_cancellations" not in getattr(connection, "__slots__", ())
        or not callable(getattr(protocol, "_wait_for_cancellation", None))
    ):
        return False
    try:
        parameters = list(inspect.signature(method).parameters.values())
    except (TypeError, ValueError):
        return False
    return [p.name for p in parameters[:2]] == ["self", "waiter"] and all(
        p.default is not inspect.Parameter.empty for p in parameters[2:]
    )


#: Whether the private layout is in use (the probe passed and ``AIOLEASE_COMPAT`` is not public).
PRIVATE: bool = not PUBLIC and _probe()
#: Whether :func:`end_cancelled` sends the cancel request again (False in public mode, or where
#: asyncpg has no ``Connection._cancel_current_command`` of the expected shape or no
#: ``Protocol._wait_for_cancellation``).
RESENDS_CANCEL: bool = PRIVATE and _probe_cancel()


def _transport_private(conn: Any) -> Any:
    # asyncio's transports and uvloop's (which do not derive from asyncio.Transport):
    # anything with the public transport methods the watch uses.
    transport = getattr(conn, "_transport", None)
    return transport if hasattr(transport, "set_protocol") else None


def _transport_public(conn: Any) -> Any:
    return None


# The probe found these slots on asyncpg's Connection, which sets them in __init__: read
# directly (each runs on every release).
def _cancelling_private(conn: Any) -> bool:
    protocol = conn._protocol  # None once the connection is aborted
    return protocol is not None and bool(protocol._is_cancelling())


def _cancelling_public(conn: Any) -> bool:
    return False


def _pending_private(conn: Any) -> bool:
    return conn._top_xact is not None


def _pending_public(conn: Any) -> bool:
    return False


async def _end_private(conn: Any, timeout: float) -> None:
    conn._top_xact = None  # as asyncpg's own reset() does, without the session reset
    await conn.execute("ROLLBACK", timeout=timeout)


async def _end_public(conn: Any, timeout: float) -> None:
    await conn.reset(timeout=timeout)  # rolls back and clears asyncpg's transaction record


async def _end_cancelled_private(conn: Any) -> None:
    protocol = conn._protocol  # None once the connection is aborted
    if protocol is None or not protocol._is_cancelling():
        return
    loop = asyncio.get_running_loop()
    # asyncpg's own wait for its cancel request's answer and the statement's end (what its
    # next operation or close() awaits first): it sends nothing.
    ended = start_task(protocol._wait_for_cancellation(), loop)
    pause = CANCEL_GRACE * CANCEL_RESEND_FIRST
    try:
        while True:
            await asyncio.wait((ended,), timeout=pause)
            if ended.done():
                break
            # As asyncpg sends its own request: in a task of the connection's (its close or
            # terminate() cancels it; a request that fails terminates the connection), which
            # completes `answered` once the server has answered.
            answered = loop.create_future()
            conn._cancel_current_command(answered)
            await answered
            pause *= 2
    finally:
        if not ended.done():
            ended.cancel()  # a cancellation of this wait goes on unchanged
    ended.result()


async def _end_cancelled_public(conn: Any) -> None:
    return None


#: ``transport_of(conn)``: the connection's transport, or None (public: always None).
transport_of = _transport_private if PRIVATE else _transport_public
#: ``cancelling(conn)``: whether a cancelled query is still in flight (public: never known).
cancelling = _cancelling_private if PRIVATE else _cancelling_public
#: ``transaction_pending(conn)``: whether asyncpg still records a ``conn.transaction()`` as open
#: (public: not known; ``conn.is_in_transaction()`` covers every open one after its BEGIN).
transaction_pending = _pending_private if PRIVATE else _pending_public
#: ``await end_cancelled(conn)``: when a cancelled statement is in flight on ``conn``, wait for
#: asyncpg to read its end, sending the cancel request again after a tenth of ``CANCEL_GRACE``,
#: then after waits that double, until it has ended (unbounded: the caller bounds it, and cuts
#: the connection past its bound). PostgreSQL drops a request that reaches the backend while it
#: waits for a command, and asyncpg sends one only; it travels on a connection of its own, so
#: it can overtake its statement, which would then run on to its end on the server after the
#: connection is cut (PostgreSQL does not notice a closed client socket meanwhile). A repeated
#: request can only stop this statement or be dropped, never a later one: nothing is sent on the
#: connection until the statement's end is read (asyncpg queues every operation, and its close,
#: behind it), and this returns only once each request it sent was answered, which the server
#: does after it signalled the backend. Public: returns at once (asyncpg's next operation or
#: close waits for the end behind its single request).
end_cancelled = _end_cancelled_private if RESENDS_CANCEL else _end_cancelled_public
#: ``await end_transaction(conn, timeout)``: roll back a transaction left open at release
#: (public: ``conn.reset()``, which also resets the session).
end_transaction = _end_private if PRIVATE else _end_public


#: Whether :func:`connection_socket` can answer (False in public mode).
HAVE_SOCKET = PRIVATE
#: Whether :func:`cancelling` can answer (False in public mode: it then always says False, and
#: a caller that must not wait behind an unseen cancel bounds the wait instead).
SEES_CANCELLING = PRIVATE


def connection_socket(conn: Any) -> Any:
    """The socket object of an asyncpg connection's transport (asyncio's
    ``TransportSocket``, uvloop's ``PseudoSocket``; both have ``setsockopt``), or
    None when it cannot be reached (public mode, a closed or exotic transport)."""
    transport = transport_of(conn)
    if transport is None:
        return None
    try:
        return transport.get_extra_info("socket")
    except Exception:  # a closed or exotic transport
        return None
