"""FaultProxy: forwarding and every fault, against an echo server, on asyncio's loop and uvloop."""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from aiolease.testing import FaultProxy

pytestmark = pytest.mark.timeout(30)

#: How long a test waits to conclude that nothing arrives.
SILENCE = 0.3


class Echo:
    """An upstream server that echoes, and records how each connection ended."""

    def __init__(self) -> None:
        self.ends: list[str] = []  # "eof" | "reset" | ...
        self.accepted = 0
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            self.ends.append("eof")
        except ConnectionResetError:
            self.ends.append("reset")
        finally:
            writer.close()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])


@pytest.fixture
async def echo() -> AsyncIterator[Echo]:
    e = Echo()
    e.server = await asyncio.start_server(e.handle, "127.0.0.1", 0)
    async with e.server:
        yield e


async def _connect(proxy: FaultProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(*proxy.address)


async def _roundtrip(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, msg: bytes
) -> bytes:
    writer.write(msg)
    await writer.drain()
    return await asyncio.wait_for(reader.readexactly(len(msg)), 5)


async def _silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    writer.write(b"ping")
    await writer.drain()
    try:
        await asyncio.wait_for(reader.read(10), SILENCE)
    except TimeoutError:
        return True
    return False


async def _until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - state of sockets the loop serves
            await asyncio.sleep(0.01)


async def test_forwards_both_ways(echo: Echo) -> None:
    async with FaultProxy("127.0.0.1", echo.port) as proxy:
        assert proxy.address[0] == "127.0.0.1"
        reader, writer = await _connect(proxy)
        assert await _roundtrip(reader, writer, b"hello") == b"hello"
        big = bytes(range(256)) * 4096  # 1 MiB: flow control on both sides
        assert await _roundtrip(reader, writer, big) == big
        assert proxy.connections == 1
        writer.close()
        await writer.wait_closed()
        await _until(lambda: echo.ends == ["eof"])
        await _until(lambda: proxy.connections == 0)


async def test_latency_delays_each_chunk(echo: Echo) -> None:
    loop = asyncio.get_running_loop()
    async with FaultProxy("127.0.0.1", echo.port) as proxy:
        reader, writer = await _connect(proxy)
        proxy.set_latency(0.2)
        start = loop.time()
        assert await _roundtrip(reader, writer, b"slow") == b"slow"
        assert loop.time() - start >= 0.4 - 0.01  # 0.2 s each way
        proxy.heal()
        start = loop.time()
        assert await _roundtrip(reader, writer, b"fast") == b"fast"
        assert loop.time() - start < 0.2
        writer.close()


async def test_blackhole_is_silent_and_heal_delivers_what_was_held(echo: Echo) -> None:
    # Before, a connection open during a blackhole stayed dead after heal() (what it sent
    # was dropped): a short partition killed even idle connections, which a real network
    # does not (TCP retransmits until the path is back).
    async with FaultProxy("127.0.0.1", echo.port) as proxy:
        reader, writer = await _connect(proxy)
        assert await _roundtrip(reader, writer, b"a") == b"a"
        proxy.blackhole()
        assert await _silent(reader, writer)  # sends b"ping", hears nothing
        assert not writer.is_closing()
        # A new connection is accepted, then silent: the server has not heard of it.
        r2, w2 = await _connect(proxy)
        assert await _silent(r2, w2)
        assert echo.accepted == 1
        proxy.heal()
        # What was held goes through, in order, then the connections work as before.
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"
        assert await asyncio.wait_for(r2.readexactly(4), 5) == b"ping"
        assert echo.accepted == 2
        assert await _roundtrip(reader, writer, b"back") == b"back"
        assert await _roundtrip(r2, w2, b"too") == b"too"
        r3, w3 = await _connect(proxy)
        assert await _roundtrip(r3, w3, b"new") == b"new"
        for w in (writer, w2, w3):
            w.close()
        await _until(lambda: len(echo.ends) == 3)
        await _until(lambda: proxy.connections == 0)


async def test_blackhole_holds_what_was_in_flight(echo: Echo) -> None:
    async with FaultProxy("127.0.0.1", echo.port) as proxy:
        reader, writer = await _connect(proxy)
        proxy.set_latency(0.2)
        writer.write(b"delayed")
        await writer.drain()
        await asyncio.sleep(0.05)
        proxy.blackhole()  # b"delayed" is still on its way to the server
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read(10), 0.5)
        assert echo.accepted == 1
        proxy.heal()
        assert await asyncio.wait_for(reader.readexactly(7), 5) == b"delayed"
        writer.close()


async def test_a_client_leaving_a_blackholed_connection_is_heard_at_once(echo: Echo) -> None:
    async with FaultProxy("127.0.0.1", echo.port) as proxy:
        reader, writer = await _connect(proxy)
        assert await _roundtrip(reader, writer, b"a") == b"a"
        proxy.blackhole()
        assert await _silent(reader, writer)
        writer.close()  # the client gives up on the silent connection
        await _until(lambda: echo.ends == ["eof"])
        await _until(lambda: proxy.connections == 0)
        proxy.heal()
        r2, w2 = await _connect(proxy)
        assert await _roundtrip(r2, w2, b"fresh") == b"fresh"
        w2.close()


async def test_reset_aborts_both_sides_with_rst(echo: Echo) -> None:
    async with FaultProxy("127.0.0.1", echo.port) as proxy:
        reader, writer = await _connect(proxy)
        assert await _roundtrip(reader, writer, b"x") == b"x"
        proxy.reset()
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(10), 5)
        await _until(lambda: echo.ends == ["reset"])
        assert proxy.connections == 0
        writer.close()
        reader, writer = await _connect(proxy)  # new connections work at once
        assert await _roundtrip(reader, writer, b"y") == b"y"
        writer.close()


async def test_refuse_then_heal_listens_again_on_the_same_port(echo: Echo) -> None:
    async with FaultProxy("127.0.0.1", echo.port) as proxy:
        address = proxy.address
        reader, writer = await _connect(proxy)
        proxy.refuse()
        with pytest.raises(ConnectionRefusedError):
            await _connect(proxy)
        assert await _roundtrip(reader, writer, b"open") == b"open"  # open ones go on
        proxy.heal()
        assert proxy.address == address
        r2, w2 = await _connect(proxy)
        assert await _roundtrip(r2, w2, b"again") == b"again"
        writer.close()
        w2.close()


async def test_half_open_closes_the_server_side_only(echo: Echo) -> None:
    async with FaultProxy("127.0.0.1", echo.port) as proxy:
        reader, writer = await _connect(proxy)
        assert await _roundtrip(reader, writer, b"x") == b"x"
        proxy.half_open()
        await _until(lambda: echo.ends == ["eof"])
        assert await _silent(reader, writer)
        assert not reader.at_eof()
        writer.close()


async def test_after_heal_a_half_open_connection_is_reset_when_the_client_sends(
    echo: Echo,
) -> None:
    async with FaultProxy("127.0.0.1", echo.port) as proxy:
        reader, writer = await _connect(proxy)
        assert await _roundtrip(reader, writer, b"x") == b"x"
        proxy.half_open()
        await _until(lambda: echo.ends == ["eof"])
        proxy.heal()
        writer.write(b"anyone?")
        await writer.drain()
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(10), 5)
        await _until(lambda: proxy.connections == 0)
        assert echo.accepted == 1
        writer.close()


@pytest.mark.parametrize("latency", [0.0, 0.05])
async def test_a_half_close_is_forwarded_and_the_other_direction_goes_on(latency: float) -> None:
    # Before, the server's half-close (FIN after "hello", still reading) closed the whole
    # connection: the client's later write failed and the server read EOF instead of it,
    # where a direct connection delivers it. Both directions end independently now.
    heard: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello")
        writer.write_eof()  # the server is done sending, not receiving
        heard.append(await reader.read())
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with server, FaultProxy("127.0.0.1", server.sockets[0].getsockname()[1]) as proxy:
        proxy.set_latency(latency)
        reader, writer = await _connect(proxy)
        assert await asyncio.wait_for(reader.read(), 5) == b"hello"  # then EOF
        writer.write(b"after the server's EOF")
        await writer.drain()
        writer.write_eof()
        await _until(lambda: heard == [b"after the server's EOF"])
        await _until(lambda: proxy.connections == 0)
        writer.close()


async def test_upstream_down_closes_the_client(echo: Echo) -> None:
    port = echo.port
    assert echo.server is not None
    echo.server.close()
    await echo.server.wait_closed()
    async with FaultProxy("127.0.0.1", port) as proxy:
        reader, writer = await _connect(proxy)
        assert await asyncio.wait_for(reader.read(10), 5) == b""
        writer.close()


async def test_leaving_aborts_every_connection(echo: Echo) -> None:
    async with FaultProxy("127.0.0.1", echo.port) as proxy:
        reader, writer = await _connect(proxy)
        assert await _roundtrip(reader, writer, b"x") == b"x"
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(reader.read(10), 5)
    writer.close()
    with pytest.raises(RuntimeError, match="not running"):
        _ = proxy.address
    with pytest.raises(RuntimeError, match="not running"):
        proxy.blackhole()


@contextlib.contextmanager
def _unanswering_port() -> Iterator[int]:
    """A listening port whose accept queue is full: a connection to it stays in progress."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = int(listener.getsockname()[1])
        for _ in range(3):
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            fillers.append(filler)
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


async def test_leaving_ends_upstream_connections_still_in_progress() -> None:
    # Before, the task connecting to the server went on after the block (until the
    # kernel gave up on the connection): a task and a socket left behind.
    current = asyncio.current_task()
    with _unanswering_port() as port:
        before = asyncio.all_tasks()
        async with FaultProxy("127.0.0.1", port) as proxy:
            _, writer = await _connect(proxy)
            await _until(lambda: proxy.connections == 1)
            assert asyncio.all_tasks() - before - {current}  # the upstream connect, under way
        assert asyncio.all_tasks() - before - {current} == set()
        writer.close()


async def test_leaving_right_after_heal_stops_listening(echo: Echo) -> None:
    # Before, the socket heal() listens on stayed open (refused no connection) until
    # garbage collection found it: a ResourceWarning.
    async with FaultProxy("127.0.0.1", echo.port) as proxy:
        proxy.refuse()
        proxy.heal()
        address = proxy.address
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(*address)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="port"):
        FaultProxy("127.0.0.1", 0)
    with pytest.raises(TypeError, match="host"):
        FaultProxy(b"127.0.0.1", 5432)  # type: ignore[arg-type]
    # As every other argument of aiolease.testing: TypeError for a value of the wrong type
    # (naming the type), ValueError for one of the right type out of range.
    with pytest.raises(ValueError, match="host must be a non-empty str, got ''"):
        FaultProxy("", 5432)
    for port in ("5432", 5432.0, True, None):
        with pytest.raises(
            TypeError, match=rf"port must be an int in 1\.\.65535, got {type(port).__name__} "
        ):
            FaultProxy("127.0.0.1", port)  # type: ignore[arg-type]
    for port in (0, -1, 65536):
        with pytest.raises(ValueError, match=rf"port must be an int in 1\.\.65535, got {port}$"):
            FaultProxy("127.0.0.1", port)
    proxy = FaultProxy("127.0.0.1", 5432)
    for seconds in (-1, math.inf, 10**400):  # an int beyond any float: not OverflowError
        with pytest.raises(ValueError, match="seconds must be a finite number >= 0"):
            proxy.set_latency(seconds)
    with pytest.raises(TypeError, match="seconds must be a finite number >= 0, got str '1'"):
        proxy.set_latency("1")  # type: ignore[arg-type]
    assert "not started" in repr(proxy)
