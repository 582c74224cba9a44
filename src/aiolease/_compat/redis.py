"""redis-py's private stream writer, used by the limiters' pipelined calls.

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
"""

from __future__ import annotations

from typing import Any

from redis.exceptions import ConnectionError as _ConnectionError

from . import PUBLIC

__all__ = ["PIPE", "can_write", "closed_by_peer", "write"]

#: Whether the private pipe may be used at all (chosen once, at import).
PIPE = not PUBLIC


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
