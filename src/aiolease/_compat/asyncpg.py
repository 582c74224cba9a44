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
  detected without configuration (asyncpg has no option for it: MagicStack/asyncpg#606).

Each has a public fallback, taken when the probe below fails or ``AIOLEASE_COMPAT=public`` was
set: no transport (every checkout of an idle connection is verified with a ``SELECT 1`` round
trip), no in-flight view (a lease whose body was cancelled or timed out is discarded),
``reset()`` to end a transaction left open (which also resets the session), and no keepalive
(:mod:`aiolease.asyncpg` then bounds every operation with a default ``command_timeout``).

The transport is kept because public mode is measurably worse without it: ``make
bench-compat`` (2026-12-05, 2-core shared VM, Python 3.11, asyncpg 0.32, PostgreSQL behind a
proxy adding 0.25 ms each way, which epoll's 1 ms timer resolution rounds up), acquire +
``SELECT 1`` + release by 1 task on a pool of 4 ran at 0.47, 0.54 and 0.59 of the default
mode's rate in three runs (the extra round trip per checkout from idle); 8 tasks, where
connections pass from task to task without a check, at 0.92-1.02 (noise). The other two cost
an attribute read per release in the default mode and nothing measurable either way; they are
kept for behaviour: a connection is discarded only when a query is really still in flight,
and ``SET`` survives a transaction rolled back at release.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from . import PUBLIC

__all__ = [
    "HAVE_SOCKET",
    "PRIVATE",
    "SEES_CANCELLING",
    "cancelling",
    "connection_socket",
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


#: Whether the private layout is in use (the probe passed and ``AIOLEASE_COMPAT`` is not public).
PRIVATE: bool = not PUBLIC and _probe()


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


#: ``transport_of(conn)``: the connection's transport, or None (public: always None).
transport_of = _transport_private if PRIVATE else _transport_public
#: ``cancelling(conn)``: whether a cancelled query is still in flight (public: never known).
cancelling = _cancelling_private if PRIVATE else _cancelling_public
#: ``transaction_pending(conn)``: whether asyncpg still records a ``conn.transaction()`` as open
#: (public: not known; ``conn.is_in_transaction()`` covers every open one after its BEGIN).
transaction_pending = _pending_private if PRIVATE else _pending_public
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
