"""``FaultProxy``: a TCP proxy on 127.0.0.1 that drops, delays, resets or refuses
connections on demand, for testing code against a database or Redis that misbehaves.

Only public asyncio APIs: protocols and transports, ``loop.create_server`` on a
socket bound here, ``loop.create_connection``, ``transport.get_extra_info("socket")``
(for ``SO_LINGER``). It runs on asyncio's own loops and on uvloop.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections import deque
from types import TracebackType
from typing import Any, cast

from .. import _validate
from .._logs import get_logger

__all__ = ["FaultProxy"]

logger = get_logger("aiolease.testing")

_LINGER_ZERO = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends an RST


def _abort_with_rst(transport: asyncio.Transport | None) -> None:
    """Close ``transport`` at once with a TCP RST (``SO_LINGER`` 0), dropping unsent data."""
    if transport is None:
        return
    if not transport.is_closing():
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
            except (OSError, AttributeError, NotImplementedError):  # pragma: no cover - exotic
                pass
    transport.abort()


class _Side(asyncio.Protocol):
    """One end of a proxied connection: what it receives goes to the other end."""

    __slots__ = ("_pair", "_upstream", "transport")

    def __init__(self, pair: _Pair, upstream: bool) -> None:
        self._pair = pair
        self._upstream = upstream
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not asyncio.Transport subclasses, but behave as ones)
        self.transport = cast(asyncio.Transport, transport)
        if not self._upstream:
            self._pair.client_made(self.transport)

    def data_received(self, data: bytes) -> None:
        self._pair.forward(data, to_upstream=not self._upstream)

    def eof_received(self) -> bool:
        self._pair.eof(from_upstream=self._upstream)
        return True  # keep our write half open until the other side finishes

    def connection_lost(self, exc: Exception | None) -> None:
        self._pair.lost(from_upstream=self._upstream)

    def pause_writing(self) -> None:
        self._pair.pause_reading(upstream=not self._upstream)

    def resume_writing(self) -> None:
        self._pair.resume_reading(upstream=not self._upstream)


class _Pipe:
    """One direction of a connection: chunks in arrival order, each held back until due.

    A deque of ``(due, data)`` (``data`` None stands for the EOF) and at most one timer.
    """

    __slots__ = ("_loop", "_queue", "_timer", "_write", "_write_eof")

    def __init__(self, loop: asyncio.AbstractEventLoop, write: Any, write_eof: Any) -> None:
        self._loop = loop
        self._queue: deque[tuple[float, bytes | None]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._write = write
        self._write_eof = write_eof

    def push(self, data: bytes | None, delay: float) -> None:
        if delay <= 0 and not self._queue:
            self._deliver(data)
            return
        self._queue.append((self._loop.time() + delay, data))
        if self._timer is None:
            self._schedule()

    def push_all(self, chunks: list[bytes | None], delay: float) -> None:
        for data in chunks:
            self.push(data, delay)

    def _schedule(self) -> None:
        self._timer = self._loop.call_at(self._queue[0][0], self._run)

    def _run(self) -> None:
        self._timer = None
        now = self._loop.time()
        while self._queue and self._queue[0][0] <= now:
            self._deliver(self._queue.popleft()[1])
        if self._queue:
            self._schedule()

    def _deliver(self, data: bytes | None) -> None:
        if data is None:
            self._write_eof()
        else:
            self._write(data)

    def take(self) -> list[bytes | None]:
        """Stop: return what is still in flight, in order, and deliver nothing more."""
        taken = [data for _, data in self._queue]
        self.cancel()
        return taken

    def cancel(self) -> None:
        self._queue.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class _Pair:
    """A client connection and its upstream connection."""

    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy
        self.loop = proxy._loop
        self.client: asyncio.Transport | None = None
        self.upstream: asyncio.Transport | None = None
        # From the client, waiting for the upstream connection or for the end of a blackhole.
        self.pending: list[bytes | None] = []
        # From the server, waiting for the end of a blackhole.
        self.held_for_client: list[bytes | None] = []
        # Blackholed: what either side sends waits (as a partitioned network's
        # retransmissions do) and goes through, in order, when the proxy heals.
        self.held = False
        self.dead = False  # half-open: the server's side is gone
        self.closed = False
        self.to_upstream = _Pipe(self.loop, self._write_upstream, self._eof_upstream)
        self.to_client = _Pipe(self.loop, self._write_client, self._eof_client)
        self.connect_task: asyncio.Task[None] | None = None
        # A half-close forwarded to each side (the other direction goes on), and whether
        # the server's side is gone (lost, not just half-closed).
        self.eof_to_client = False
        self.eof_to_upstream = False
        self.upstream_lost = False

    # -- set-up ---------------------------------------------------------------------------
    def client_made(self, transport: asyncio.Transport) -> None:
        self.client = transport
        self.proxy._pairs.add(self)
        if self.proxy._mode == "blackhole":
            self.held = True  # accepted, then silence: connects upstream when healed
            return
        self._start_connect()

    def _start_connect(self) -> None:
        self.connect_task = self.loop.create_task(self._connect())
        self.proxy._connecting.add(self.connect_task)
        self.connect_task.add_done_callback(self.proxy._connecting.discard)

    async def _connect(self) -> None:
        try:
            transport, _ = await self.loop.create_connection(
                lambda: _Side(self, upstream=True), self.proxy._host, self.proxy._port
            )
        except OSError as exc:
            logger.debug("FaultProxy: upstream %s:%s: %r", self.proxy._host, self.proxy._port, exc)
            self.close()
            return
        if self.closed:
            transport.abort()
            return
        self.upstream = transport
        if not self.held:
            self._flush_pending()

    def _flush_pending(self) -> None:
        pending, self.pending = self.pending, []
        self.to_upstream.push_all(pending, self.proxy._latency)

    # -- data -----------------------------------------------------------------------------
    def forward(self, data: bytes, to_upstream: bool) -> None:
        if self.dead:
            if to_upstream and not self.held:
                # Healed, the client's data reaches a server that has closed this
                # connection: TCP answers with an RST.
                self.reset()
            return  # while blackholed: lost, as to a peer that vanished without a FIN
        self._send(data, to_upstream)

    def _send(self, data: bytes | None, to_upstream: bool) -> None:
        if to_upstream:
            if self.upstream is None or self.held:
                self.pending.append(data)
            else:
                self.to_upstream.push(data, self.proxy._latency)
        elif self.held:
            self.held_for_client.append(data)
        else:
            self.to_client.push(data, self.proxy._latency)

    def eof(self, from_upstream: bool) -> None:
        if not from_upstream and (self.dead or self.held):
            # The client gave up on a silent connection: the server hears it end at once
            # (not when the network heals), so no server connection outlives the test.
            self.close()
        elif not self.dead:
            self._send(None, to_upstream=not from_upstream)

    def lost(self, from_upstream: bool) -> None:
        if from_upstream:
            self.upstream_lost = True
            if not self.dead:
                self._send(None, to_upstream=False)  # then close, see _eof_client
        else:
            self.close()  # the client is gone: nothing left to forward to

    def _write_upstream(self, data: bytes) -> None:
        if self.upstream is not None and not self.upstream.is_closing():
            self.upstream.write(data)

    def _write_client(self, data: bytes) -> None:
        if self.client is not None and not self.client.is_closing():
            self.client.write(data)

    def _eof_upstream(self) -> None:
        # The client ended its side: a half-close, the server may still answer; once the
        # server's side has ended too, the connection is over.
        if self.eof_to_client:
            self.close()
        elif self.upstream is not None and not self.upstream.is_closing():
            if self.upstream.can_write_eof():
                self.upstream.write_eof()
                self.eof_to_upstream = True
            else:  # pragma: no cover - TCP transports can
                self.upstream.close()

    def _eof_client(self) -> None:
        # The server ended its side: a half-close (FIN) is passed on and the client may
        # still send, as on a direct connection; once the client's side has ended too,
        # or the server's side is gone, the connection is over.
        client = self.client
        if self.eof_to_upstream or self.upstream_lost or client is None:
            self.close()
        elif not client.is_closing():
            if client.can_write_eof():
                client.write_eof()
                self.eof_to_client = True
            else:  # pragma: no cover - TCP transports can
                self.close()

    def pause_reading(self, upstream: bool) -> None:
        transport = self.upstream if upstream else self.client
        if transport is not None and not transport.is_closing():
            transport.pause_reading()

    def resume_reading(self, upstream: bool) -> None:
        transport = self.upstream if upstream else self.client
        if transport is not None and not transport.is_closing():
            transport.resume_reading()

    # -- faults and shutdown --------------------------------------------------------------
    def blackhole(self) -> None:
        """Hold what each side sends, what is in flight (delayed) included."""
        if self.held:
            return
        self.held = True
        self.pending[:0] = self.to_upstream.take()
        self.held_for_client[:0] = self.to_client.take()

    def heal(self) -> None:
        """Forward again: first what was held, in order, then the rest."""
        if not self.held:
            return
        self.held = False
        if self.dead:
            return  # half-open: the client's next data gets an RST (see forward)
        if self.upstream is not None:
            self._flush_pending()
        elif self.connect_task is None:
            self._start_connect()  # accepted during the blackhole
        held, self.held_for_client = self.held_for_client, []
        self.to_client.push_all(held, self.proxy._latency)

    def half_open(self) -> None:
        """The server's side goes away (FIN to the server); the client hears nothing
        until the proxy heals, then an RST when it sends."""
        self.held = self.dead = True
        self.pending.clear()
        self.held_for_client.clear()
        self.to_upstream.cancel()
        self.to_client.cancel()
        self._close_upstream()

    def reset(self) -> None:
        self.closed = True
        self.to_upstream.cancel()
        self.to_client.cancel()
        _abort_with_rst(self.client)
        _abort_with_rst(self.upstream)
        self._forget()

    def _close_upstream(self) -> None:
        if self.upstream is not None and not self.upstream.is_closing():
            self.upstream.close()
        if self.connect_task is not None and not self.connect_task.done():
            self.closed = True  # _connect aborts what it gets

    def close(self) -> None:
        self.closed = True
        self.to_upstream.cancel()
        self.to_client.cancel()
        if self.client is not None and not self.client.is_closing():
            self.client.close()
        self._close_upstream()
        self._forget()

    def _forget(self) -> None:
        self.proxy._pairs.discard(self)


class FaultProxy:
    """A TCP proxy between your code and a server, with faults on demand.

    ``async with FaultProxy(host, port) as proxy`` listens on 127.0.0.1 (a free
    port) and forwards every connection to ``host:port``. Point the code under
    test at ``proxy.address`` instead of the server, then break the network
    while it runs:

    * :meth:`set_latency` delays every forwarded chunk (both directions);
    * :meth:`blackhole` keeps connections open but forwards nothing in either
      direction, as a network partition does (no FIN, no RST). Nothing is lost:
      what either side sends meanwhile is held, as TCP retransmits it, and
      delivered in order when the proxy heals; connections accepted during it
      reach the server then. A client that closes a silent connection is heard
      by the server at once;
    * :meth:`half_open` closes the server's side of every open connection
      (the server sees the client leave) while the client hears nothing; after
      :meth:`heal`, the client's next data on it gets a TCP RST, as from a
      server that has forgotten the connection;
    * :meth:`reset` aborts every open connection with a TCP RST (``SO_LINGER`` 0);
    * :meth:`refuse` stops listening: new connections are refused
      (``ECONNREFUSED``), open ones go on;
    * :meth:`heal` restores normal forwarding (what was held first), listens
      again on the same port, and ends any latency.

    A half-close from either side is forwarded as one (the other direction goes on).
    Leaving the ``async with`` block aborts every connection still open.
    Nothing blocks: each method takes effect at once.

    Args:
        host: the server's host.
        port: the server's port.

    Raises:
        TypeError: ``host`` is not a str, or ``port`` not an int.
        ValueError: ``host`` is empty, or ``port`` outside 1..65535.
    """

    def __init__(self, host: str, port: int) -> None:
        if not isinstance(host, str):
            raise TypeError(f"host must be a non-empty str, got {type(host).__name__} {host!r}")
        if not host:
            raise ValueError(f"host must be a non-empty str, got {host!r}")
        if isinstance(port, bool) or not isinstance(port, int):
            raise TypeError(f"port must be an int in 1..65535, got {type(port).__name__} {port!r}")
        if not 0 < port < 65536:
            raise ValueError(f"port must be an int in 1..65535, got {port!r}")
        self._host = host
        self._port = port
        self._latency = 0.0
        self._mode = "normal"  # "normal" | "blackhole" | "refuse"
        self._pairs: set[_Pair] = set()
        self._server: asyncio.AbstractServer | None = None
        self._listen_port: int | None = None
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self._starting: set[asyncio.Task[Any]] = set()
        # Connections to the server under way, also those of connections already closed.
        self._connecting: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        where = "not started" if self._listen_port is None else f"127.0.0.1:{self._listen_port}"
        return (
            f"<FaultProxy {where} -> {self._host}:{self._port} {self._mode}"
            f" latency={self._latency} connections={len(self._pairs)}>"
        )

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` to connect to instead of the server.

        Raises:
            RuntimeError: the proxy is not running.
        """
        if self._listen_port is None:
            raise RuntimeError("FaultProxy.address: the proxy is not running (use async with)")
        return ("127.0.0.1", self._listen_port)

    @property
    def connections(self) -> int:
        """Connections open through the proxy now (dead ones included)."""
        return len(self._pairs)

    async def __aenter__(self) -> FaultProxy:
        if self._listen_port is not None:
            raise RuntimeError("FaultProxy is already running")
        self._loop = asyncio.get_running_loop()
        await self._listen(0)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop_listening()
        self._listen_port = None
        for pair in list(self._pairs):
            pair.reset()
        # A connection to the server may hang (an unanswering server): cancelled, its
        # socket closes. A heal()'s listening starts on a socket already bound (nothing to
        # wait for); left to finish, it closes the server it makes, the proxy having stopped
        # (cancelled before it started, it would leave the socket open).
        for task in self._connecting:
            task.cancel()
        pending = self._starting | self._connecting
        if pending:
            await asyncio.wait(pending)
        await asyncio.sleep(0)  # let the aborted transports run their connection_lost

    def _socket(self, port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
            sock.listen(128)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    async def _listen(self, port: int) -> None:
        sock = self._socket(port)
        self._listen_port = sock.getsockname()[1]
        self._server = await self._loop.create_server(lambda: _Side(_Pair(self), False), sock=sock)

    def _stop_listening(self) -> None:
        if self._server is not None:
            self._server.close()  # stops accepting; open connections go on
            self._server = None

    def _check_running(self, what: str) -> None:
        if self._listen_port is None:
            raise RuntimeError(f"FaultProxy.{what}(): the proxy is not running (use async with)")

    def set_latency(self, seconds: float) -> None:
        """Delay every chunk forwarded from now on by ``seconds`` (0 for none), in order.

        Raises:
            ValueError: ``seconds`` is negative or not finite.
            TypeError: ``seconds`` is not a number.
        """
        self._latency = _validate.number("seconds", seconds, inclusive=True)

    def blackhole(self) -> None:
        """Forward nothing from now on, in either direction; keep every connection open.

        What is sent meanwhile is held until :meth:`heal` (see the class docstring)."""
        self._check_running("blackhole")
        self._mode = "blackhole"
        for pair in list(self._pairs):
            pair.blackhole()

    def half_open(self) -> None:
        """Close the server's side of every open connection; the clients hear nothing."""
        self._check_running("half_open")
        for pair in list(self._pairs):
            pair.half_open()

    def reset(self) -> None:
        """Abort every open connection with a TCP RST, on both sides."""
        self._check_running("reset")
        for pair in list(self._pairs):
            pair.reset()

    def refuse(self) -> None:
        """Stop listening: new connections are refused; open ones go on."""
        self._check_running("refuse")
        self._mode = "refuse"
        self._stop_listening()

    def heal(self) -> None:
        """Normal forwarding again, what was held first; no latency; listening again."""
        self._check_running("heal")
        self._latency = 0.0
        self._mode = "normal"
        for pair in list(self._pairs):
            pair.heal()
        if self._server is None and not self._starting:
            # Listening starts now (the kernel queues connections until the server
            # serves them), so heal() need not await.
            sock = self._socket(self.address[1])
            task = self._loop.create_task(self._serve(sock))
            self._starting.add(task)
            task.add_done_callback(self._starting.discard)

    async def _serve(self, sock: socket.socket) -> None:
        try:
            server = await self._loop.create_server(lambda: _Side(_Pair(self), False), sock=sock)
        except BaseException:
            sock.close()
            raise
        if self._mode == "refuse" or self._listen_port is None:
            server.close()
        else:
            self._server = server
