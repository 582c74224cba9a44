"""A minimal TCP proxy for silent-peer tests (to be replaced by aiolease.testing.FaultProxy).

``async with SilentProxy(host, port) as proxy:`` listens on 127.0.0.1 and
forwards to ``host:port``; after :meth:`blackhole` it keeps every connection
open but forwards nothing in either direction, as a peer behind a dropped
network does.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType


class SilentProxy:
    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._server: asyncio.Server | None = None
        self._silent = False
        self._closed = False
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.address: tuple[str, int] = ("127.0.0.1", 0)

    def _is_closed(self) -> bool:
        return self._closed

    def blackhole(self) -> None:
        """Forward nothing from now on (connections stay open)."""
        self._silent = True

    async def __aenter__(self) -> SilentProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.address = self._server.sockets[0].getsockname()[:2]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._closed = True
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in self._writers:
            writer.close()
        for writer in self._writers:
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._closed:
            writer.close()
            return
        self._writers.append(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.close()
            return
        self._writers.append(up_writer)
        if self._is_closed():  # closed while connecting
            up_writer.close()
            writer.close()
            return
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await src.read(65536):
                if self._silent:
                    continue  # swallowed: the peer never hears of it
                dst.write(data)
                await dst.drain()
        if not self._silent:
            dst.close()
