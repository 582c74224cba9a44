"""asyncpg internals aiolease reaches for, each with a public fallback.

asyncpg has no public option for client-side TCP keepalive (MagicStack/asyncpg#606,
open): the socket is reachable only through the connection's private ``_transport``.
"""

from __future__ import annotations

from typing import Any

from . import PUBLIC

__all__ = ["HAVE_SOCKET", "connection_socket"]

#: Whether :func:`connection_socket` can answer (False in public mode).
HAVE_SOCKET = not PUBLIC


def connection_socket(conn: Any) -> Any:
    """The socket object of an asyncpg connection's transport (asyncio's
    ``TransportSocket``, uvloop's ``PseudoSocket``; both have ``setsockopt``), or
    None when it cannot be reached (public mode, a closed or exotic transport)."""
    if not HAVE_SOCKET:
        return None
    transport = getattr(conn, "_transport", None)
    if transport is None:
        return None
    try:
        return transport.get_extra_info("socket")
    except Exception:  # a closed or exotic transport
        return None
