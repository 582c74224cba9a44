"""asyncio's private layout, fenced.

asyncio's selector transports allocate a fresh buffer of ``max_size`` bytes (256 KiB) for every
read of a socket, a class attribute with no public setter. :func:`set_read_size` lowers it per
transport (see ``read_size`` at :class:`aiolease.asyncpg.AsyncpgManager`). Public fallback
(the attribute is not where it is expected, or ``AIOLEASE_COMPAT=public``): leave the
transport alone. Kept because it is worth it: measured (``make bench-pool``, 2026-12-05, 2-core
shared VM), see ``bench/README.md`` ("Public ground") for the figure at 0.25 ms of network
latency.
"""

from __future__ import annotations

import asyncio
from typing import Any

from . import PUBLIC

__all__ = ["PRIVATE", "set_read_size"]


def _probe() -> bool:
    selector_events: Any = getattr(asyncio, "selector_events", None)
    transport_type = getattr(selector_events, "_SelectorSocketTransport", None)
    return isinstance(getattr(transport_type, "max_size", None), int)


#: Whether the private layout is in use (the probe passed and ``AIOLEASE_COMPAT`` is not public).
PRIVATE: bool = not PUBLIC and _probe()


def _set_read_size_private(transport: Any, size: int) -> bool:
    # Only where the transport's class reads a buffer of that size each time (asyncio's
    # selector transports); others (uvloop's, SSL) read into a buffer they keep.
    if isinstance(getattr(type(transport), "max_size", None), int):
        transport.max_size = size
        return True
    return False


def _set_read_size_public(transport: Any, size: int) -> bool:
    return False


#: ``set_read_size(transport, size) -> bool``: make the transport read at most ``size`` bytes
#: at a time; whether it did.
set_read_size = _set_read_size_private if PRIVATE else _set_read_size_public
