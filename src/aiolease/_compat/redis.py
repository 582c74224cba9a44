"""redis-py's private layout: its stream writer (the limiters' pipelined calls), and the frames
of its connection methods (a connection whose handshake a cancellation interrupted).

:data:`PIPE` is True when :mod:`aiolease.redis` may write a call to a pooled redis-py connection
synchronously (``conn._writer``, private to redis-py): every call of a limiter then goes, in call
order, onto ONE connection whose replies one reader task hands back, so concurrent calls share a
socket and Redis runs them in the order they were made. redis-py has no public synchronous write
(``send_packed_command`` is a coroutine, so two callers could interleave before writing).

The public fallback (``AIOLEASE_COMPAT=public``, or a redis-py connection without ``_writer``)
sends each call on a connection of the client's pool with redis-py's public connection API
(``get_connection``, ``send_command``, ``read_response``, ``release``: never resent, as on the
pipe), one call at a time in call order (so that Redis still runs one process's scripts in the
order they were made). The pipe is kept because the public path is far slower: on 2026-12-05
(bench/README.md, 2-core shared VM, never-limited ``async with RedisRateLimiter``, two runs)
the public path (then the client's ``evalsha``) reached 0.56-0.77x the pipe's acquisitions per
second with 1 task and 0.16-0.22x with 50 tasks; on 2026-12-06 the pooled-connection path
reached 0.58x and 0.19x in one run (spreads of 50-100%: a loaded machine).

:func:`half_connected_cutter` reads the frames of redis-py's connection methods in a
cancellation's traceback, for redis-py < 8.2 only, to find the one connection to cut. It is kept
because its public fallback, which cannot tell which connection it was, closes every idle
connection of the client's pool, and each connects again (a connect and a handshake) on its next
use.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import redis
from redis.asyncio.connection import AbstractConnection as _AbstractConnection
from redis.exceptions import ConnectionError as _ConnectionError

from . import PUBLIC

__all__ = [
    "HANDSHAKE_CLEANS_UP",
    "PIPE",
    "WALK",
    "can_write",
    "closed_by_peer",
    "half_connected_cutter",
    "write",
]

#: Whether the private pipe may be used at all (chosen once, at import).
PIPE = not PUBLIC


def _release(text: str) -> tuple[int, ...]:
    found = re.match(r"\d+(?:\.\d+)*", text)
    return tuple(int(part) for part in found.group().split(".")) if found else (0,)


#: Whether redis-py closes a connection whose handshake was interrupted (a cancellation, or an
#: error of the client's credential provider) itself: from 8.2. Before, the pool took it back
#: connected but without its AUTH and SELECT, and the next command on it ran unauthenticated,
#: in database 0.
HANDSHAKE_CLEANS_UP = _release(redis.__version__) >= (8, 2)

#: Whether the connection cut after an interrupted handshake may be found in the traceback.
WALK = not PUBLIC


async def _cut_connecting(pool: Any, exc: BaseException) -> None:
    """Cut the connection one of whose methods ``exc`` came out of (its frame in the
    traceback: redis-py's layout), if it is connected; its next use connects again."""
    conn = _connecting(exc)
    if conn is not None and conn.is_connected:
        await conn.disconnect(nowait=True)


async def _cut_idle(pool: Any, exc: BaseException) -> None:
    """The public fallback: which connection was connecting is not known, so every idle
    connection of ``pool`` is closed (each connects again on its next use)."""
    await pool.disconnect(inuse_connections=False)


def half_connected_cutter() -> Callable[[Any, BaseException], Awaitable[None]] | None:
    """What to run when a cancellation ``exc`` comes out of ``pool.get_connection()``, so
    that no connection went back to ``pool`` half connected (see
    :data:`HANDSHAKE_CLEANS_UP`): ``cut(pool, exc)``, or None when redis-py sees to it.
    Chosen once per caller, at its construction."""
    if HANDSHAKE_CLEANS_UP:
        return None
    return _cut_connecting if WALK else _cut_idle


def _connecting(exc: BaseException) -> Any:
    """The redis-py connection one of whose methods ``exc`` was raised out of, or None."""
    tb = exc.__traceback__
    while tb is not None:
        owner = tb.tb_frame.f_locals.get("self")
        if isinstance(owner, _AbstractConnection):
            return owner
        tb = tb.tb_next
    return None


def can_write(conn: Any) -> bool:
    """Whether ``conn`` is a connection :func:`write` works on (checked once per connection).

    Its layout is what counts, not whether it is connected now: redis-py may have disconnected
    it (``_writer`` None) between handing it out and this check, which :func:`write` reports.
    """
    return PIPE and hasattr(conn, "_writer")


def write(conn: Any, data: bytes) -> None:
    """Write ``data`` to ``conn``'s socket now, without awaiting (call order is wire order).

    Raises:
        redis.exceptions.ConnectionError: redis-py has disconnected ``conn`` (its
            ``disconnect()``: ``connection_pool.disconnect()``, the client's ``aclose()``, a
            failed health check), or is closing its stream: nothing was written.
    """
    writer = conn._writer
    if writer is None or writer.is_closing():
        # (a closing transport would drop the data silently: the call would wait for a reply
        # until its timeout)
        raise _ConnectionError("redis-py disconnected the connection: the call was not sent")
    writer.write(data)


def closed_by_peer(conn: Any) -> bool:
    """Whether the server closed ``conn`` (its stream has reached EOF, nothing left to read).

    An idle pipe connection is not read from: a server ``timeout`` (or a load balancer's idle
    timeout) closes it unseen, and ``conn.is_connected`` stays True. A command written to it
    then would fail as if Redis were down, although it never left this process.
    """
    reader = getattr(conn, "_reader", None)
    return reader is not None and reader.at_eof()
