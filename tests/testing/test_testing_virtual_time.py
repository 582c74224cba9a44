"""Tests of aiolease.testing.VirtualTimeLoop (through asyncio.Runner and the pytest marker)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.from_thread
import anyio.to_thread
import pytest

import aiolease
from aiolease.testing import FakeManager, FakeResource, NoProgressError, VirtualTimeLoop

T = TypeVar("T")


def run(main: Callable[[], Awaitable[T]], **loop_kwargs: object) -> T:
    """Run ``main()`` on a fresh VirtualTimeLoop and close it."""
    factory = functools.partial(VirtualTimeLoop, **loop_kwargs)  # type: ignore[arg-type]
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main())  # type: ignore[arg-type]


async def _one_hour_scenario() -> list[tuple[str, float]]:
    """Workers with timeouts and periodic ticks over an hour of loop time."""
    loop = asyncio.get_running_loop()
    log: list[tuple[str, float]] = []

    async def ticker(name: str, period: float) -> None:
        for _ in range(int(3600 / period)):
            await asyncio.sleep(period)
        log.append((f"{name} done", loop.time()))

    async def slow_call(n: int) -> None:
        try:
            async with asyncio.timeout(7.5):
                await asyncio.sleep(5.0 + n)  # n >= 3 exceeds the timeout
            log.append((f"call {n} ok", loop.time()))
        except TimeoutError:
            log.append((f"call {n} timed out", loop.time()))

    async def caller() -> None:
        for n in range(6):
            await slow_call(n)
            await asyncio.sleep(60.0)

    async def limited(limiter: aiolease.RateLimiter) -> None:
        for n in range(360):
            async with limiter:
                if n % 60 == 0:
                    log.append((f"limited {n}", loop.time()))

    async def pooled(pool: aiolease.Pool[FakeResource]) -> None:
        for _ in range(100):
            async with pool.acquire(timeout=3.0) as conn:  # create takes 2 s, reset 1 s
                await conn.use()
            await asyncio.sleep(30.0)
        log.append(("pooled done", loop.time()))

    fm = FakeManager()
    fm.delay("create", 2.0)
    fm.delay("reset", 1.0)
    async with aiolease.Pool(fm, max_size=1) as pool:
        await asyncio.gather(
            ticker("1s", 1.0),
            ticker("0.25s", 0.25),
            ticker("7s", 7.0),
            caller(),
            limited(aiolease.RateLimiter(1, per=10.0)),
            pooled(pool),
        )
    log.append(("end", loop.time()))
    log.extend((str(event), event.time) for event in fm.events[:6])
    return log


def test_one_hour_runs_in_well_under_a_second_with_identical_timestamps() -> None:
    started = time.perf_counter()
    first = run(_one_hour_scenario)
    elapsed = time.perf_counter() - started
    second = run(_one_hour_scenario)
    assert first == second  # exact float equality: the clock is deterministic
    # On real time this takes an hour; measured ~0.2 s here. The bound is loose on
    # purpose: it catches a loop that stopped jumping, not a slow machine.
    assert elapsed < 10.0, f"one virtual hour took {elapsed:.3f}s of real time"
    assert ("1s done", 3600.0) in first
    assert ("0.25s done", 3600.0) in first
    assert ("7s done", 7.0 * 514) in first
    calls = [entry for entry in first if entry[0].startswith("call")]
    assert calls == [
        ("call 0 ok", 5.0),
        ("call 1 ok", 5.0 + 60 + 6.0),
        ("call 2 ok", 5.0 + 60 + 6.0 + 60 + 7.0),
        ("call 3 timed out", 5.0 + 60 + 6.0 + 60 + 7.0 + 60 + 7.5),
        ("call 4 timed out", 5.0 + 60 + 6.0 + 60 + 7.0 + 60 + 7.5 + 60 + 7.5),
        ("call 5 timed out", 5.0 + 60 + 6.0 + 60 + 7.0 + 60 + 7.5 + 60 + 7.5 + 60 + 7.5),
    ]
    assert ("limited 300", 3000.0) in first
    assert ("limited 0", 0.0) in first
    # Each round: 1 s of reset inside the release, then 30 s asleep; plus the first 2 s create.
    assert ("pooled done", 2.0 + 100 * (1.0 + 30.0)) in first
    assert ("end", 3600.0) in first
    assert first[-6:] == [
        ("created r1", 2.0),
        ("acquired r1 lease 1", 2.0),
        ("released r1 lease 1", 2.0),
        ("reset r1 lease 1", 3.0),
        ("checked r1", 33.0),
        ("acquired r1 lease 2", 33.0),
    ]


def test_clock_stands_still_while_callbacks_run() -> None:
    async def main() -> tuple[float, float, float]:
        loop = asyncio.get_running_loop()
        before = loop.time()
        deadline = time.perf_counter() + 0.02
        while time.perf_counter() < deadline:  # burn real time without awaiting
            pass
        after_cpu = loop.time()
        await asyncio.sleep(0)
        return before, after_cpu, loop.time()

    assert run(main) == (0.0, 0.0, 0.0)


def test_timers_fire_in_order_at_exact_times() -> None:
    async def main() -> list[tuple[str, float]]:
        loop = asyncio.get_running_loop()
        fired: list[tuple[str, float]] = []
        loop.call_later(2.5, lambda: fired.append(("call_later 2.5", loop.time())))
        loop.call_at(1.0, lambda: fired.append(("call_at 1", loop.time())))
        handle = loop.call_later(1.5, lambda: fired.append(("cancelled", loop.time())))
        handle.cancel()

        async def sleeper(delay: float) -> None:
            await asyncio.sleep(delay)
            fired.append((f"sleep {delay}", loop.time()))

        await asyncio.gather(sleeper(3.0), sleeper(0.5), sleeper(86400.0 * 3))
        return fired

    assert run(main) == [
        ("sleep 0.5", 0.5),
        ("call_at 1", 1.0),
        ("call_later 2.5", 2.5),
        ("sleep 3.0", 3.0),
        ("sleep 259200.0", 259200.0),  # longer than asyncio's 24 h select cap
    ]


def test_start_and_jump_count_and_repr() -> None:
    async def main() -> tuple[float, int, str]:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualTimeLoop)
        await asyncio.sleep(10)
        await asyncio.sleep(0)
        await asyncio.sleep(5)
        return loop.time(), loop.jumps, repr(loop)

    now, jumps, text = run(main, start=1000.0)
    assert (now, jumps) == (1015.0, 2)
    assert text.startswith("<VirtualTimeLoop time=1015.0 jumps=2 running=True")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"start": float("nan")}, "start must be a finite number, got nan"),
        ({"io_grace": -1}, "io_grace must be a finite number of seconds >= 0, got -1"),
        (
            {"stall_timeout": float("inf")},
            r"stall_timeout \(or None\) must be a finite number of seconds >= 0",
        ),
        # an int beyond any float is out of range, not an OverflowError
        ({"start": 10**400}, "start must be a finite number, got 1000"),
        ({"io_grace": 10**400}, "io_grace must be a finite number of seconds >= 0, got 1000"),
        (
            {"stall_timeout": 10**400},
            r"stall_timeout \(or None\) must be a finite number of seconds >= 0",
        ),
    ],
)
def test_bad_arguments(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        VirtualTimeLoop(**kwargs)


def test_cancellation_at_a_timer_wait_is_deterministic() -> None:
    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        log: list[str] = []

        async def victim() -> None:
            try:
                await asyncio.sleep(100)
            except asyncio.CancelledError:
                log.append(f"cancelled at {loop.time()}")
                raise

        task = asyncio.create_task(victim())
        await asyncio.sleep(42)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return log

    assert run(main) == ["cancelled at 42.0"]


# -- threads and I/O: the clock never jumps while they may still answer -------------------


def _slow_answer(seconds: float, answer: str) -> str:
    time.sleep(seconds)
    return answer


def test_executor_job_is_awaited_in_real_time_with_the_clock_frozen() -> None:
    async def main() -> list[tuple[str, float]]:
        loop = asyncio.get_running_loop()
        log: list[tuple[str, float]] = []
        loop.call_later(0.001, lambda: log.append(("timer", loop.time())))
        result = await loop.run_in_executor(None, _slow_answer, 0.05, "executor")
        log.append((result, loop.time()))
        value = await asyncio.to_thread(_slow_answer, 0.02, "thread")
        log.append((value, loop.time()))
        await asyncio.sleep(0.01)
        return log

    # A jump while the job runs would fire the timer first.
    assert run(main) == [("executor", 0.0), ("thread", 0.0), ("timer", 0.001)]


def test_timeout_around_a_thread_does_not_fire_while_the_thread_works() -> None:
    async def main() -> str:
        async with asyncio.timeout(0.001):
            return await asyncio.to_thread(_slow_answer, 0.05, "answered")

    assert run(main) == "answered"


def test_plain_def_dependencies_run_in_threads_without_jumps_or_no_progress() -> None:
    """A plain ``def`` dependency and endpoint, each handed to a thread with asyncio's own
    API, with a request timeout around them and no other timer: the clock holds while they
    block, and no NoProgressError although no task is ready meanwhile. (FastAPI itself goes
    through anyio: tests/integrations/test_integ_virtual_time_fastapi.py.)"""

    def get_settings() -> dict[str, float]:  # a blocking dependency (reads a file, say)
        time.sleep(0.03)
        return {"factor": 2.0}

    def endpoint(settings: dict[str, float], value: float) -> float:
        time.sleep(0.02)
        return settings["factor"] * value

    async def handle(value: float) -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(0.001):  # would fire if the clock jumped meanwhile
            settings = await asyncio.to_thread(get_settings)
            result = await loop.run_in_executor(None, endpoint, settings, value)
        return result, loop.time()

    async def main() -> list[tuple[float, float]]:
        return list(await asyncio.gather(handle(1.0), handle(2.0), handle(3.0)))

    assert run(main) == [(2.0, 0.0), (4.0, 0.0), (6.0, 0.0)]


def test_thread_work_without_any_timer_is_pending_not_no_progress() -> None:
    async def main() -> str:
        return await asyncio.to_thread(_slow_answer, 0.05, "answered")

    assert run(main, stall_timeout=5.0) == "answered"


@pytest.mark.parametrize("how", ["run_in_executor", "to_thread"])
def test_executor_job_whose_caller_is_cancelled_holds_the_clock_until_it_answers(
    how: str,
) -> None:
    """Cancelling the caller does not stop a job its thread already runs; the clock must
    not jump past it meanwhile. Before, the job stopped counting when its future was
    cancelled: ``sleep(10)`` jumped at once and the job had not finished "10 s later"."""
    started, finished = threading.Event(), threading.Event()

    def work() -> None:
        started.set()
        time.sleep(0.05)
        finished.set()

    async def main() -> tuple[bool, float]:
        loop = asyncio.get_running_loop()
        job = loop.run_in_executor(None, work) if how == "run_in_executor" else None
        caller = asyncio.ensure_future(job if job is not None else asyncio.to_thread(work))
        await asyncio.to_thread(started.wait)
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        await asyncio.sleep(10.0)  # the jump waits for the thread
        return finished.is_set(), loop.time()

    assert run(main) == (True, 10.0)


def test_executor_job_cancelled_before_its_thread_started_is_not_pending() -> None:
    """A job still queued behind a busy worker when its caller is cancelled never runs: it
    stops counting (else the loop would wait for it until NoProgressError)."""
    from concurrent.futures import ThreadPoolExecutor

    async def main() -> float:
        loop = asyncio.get_running_loop()
        release = threading.Event()
        with ThreadPoolExecutor(max_workers=1) as executor:
            holder = loop.run_in_executor(executor, release.wait)
            queued = loop.run_in_executor(executor, int)
            queued.cancel()
            release.set()
            assert await holder is True
            await asyncio.sleep(5.0)  # nothing pending any more: the clock jumps
            return loop.time()

    assert run(main, stall_timeout=2.0) == 5.0


def test_process_pool_job_runs_and_holds_the_clock() -> None:
    """A job of another process gets the function itself (it must pickle), and the clock
    waits for it as for a thread's."""
    from concurrent.futures import ProcessPoolExecutor

    async def main() -> tuple[str, float]:
        loop = asyncio.get_running_loop()
        with ProcessPoolExecutor(max_workers=1) as executor:
            async with asyncio.timeout(0.001):  # would fire if the clock jumped meanwhile
                answer = await loop.run_in_executor(executor, _slow_answer, 0.05, "process")
        return answer, loop.time()

    assert run(main) == ("process", 0.0)


def test_run_in_executor_in_debug_mode_still_refuses_a_coroutine_function() -> None:
    async def job() -> None:
        pass

    async def main() -> None:
        asyncio.get_running_loop().set_debug(True)  # asyncio checks only then
        with pytest.raises(TypeError, match="coroutines cannot be used with run_in_executor"):
            asyncio.get_running_loop().run_in_executor(None, job)

    run(main)


# -- anyio's worker threads (anyio.to_thread.run_sync, as Starlette and FastAPI use) ---------


def test_anyio_thread_calls_hold_the_clock_and_never_race_the_jump() -> None:

    async def main() -> tuple[list[str], float]:
        loop = asyncio.get_running_loop()
        log: list[str] = []
        loop.call_later(0.001, log.append, "timer")  # fires first if the clock jumps
        async with asyncio.timeout(0.002):
            log.append(await anyio.to_thread.run_sync(_slow_answer, 0.05, "slow"))
            # Many short calls: an answer landing between the loop's poll and its look at
            # pending work must not be jumped over.
            for _ in range(200):
                await anyio.to_thread.run_sync(int)
            log.append(await anyio.to_thread.run_sync(_slow_answer, 0.0, "fast"))
        return log, loop.time()

    assert run(main) == (["slow", "fast"], 0.0)


def test_anyio_call_abandoned_by_its_caller_holds_the_clock_until_the_thread_answers() -> None:
    """``abandon_on_cancel``: the caller is cancelled while the thread works; the thread still
    runs and will wake the loop, so the clock must not jump past it meanwhile."""
    started, finished = threading.Event(), threading.Event()

    def work() -> None:
        started.set()
        time.sleep(0.05)
        finished.set()

    async def main() -> tuple[bool, float]:
        loop = asyncio.get_running_loop()
        caller = asyncio.create_task(anyio.to_thread.run_sync(work, abandon_on_cancel=True))
        await asyncio.to_thread(started.wait)
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        await asyncio.sleep(10.0)  # the jump waits for the abandoned thread
        return finished.is_set(), loop.time()

    assert run(main) == (True, 10.0)


def test_anyio_call_cancelled_before_its_thread_started_is_not_pending() -> None:
    """A call still waiting for a limiter token when its caller is cancelled never runs: it
    stops counting (else the loop would wait for it until NoProgressError)."""

    async def main() -> float:
        loop = asyncio.get_running_loop()
        limiter = anyio.CapacityLimiter(1)
        release = threading.Event()
        holder = asyncio.create_task(anyio.to_thread.run_sync(release.wait, limiter=limiter))
        queued = asyncio.create_task(anyio.to_thread.run_sync(int, limiter=limiter))
        for _ in range(5):  # both tasks reach the limiter
            await asyncio.sleep(0)
        assert limiter.statistics().tasks_waiting == 1
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        release.set()
        assert await holder is True
        await asyncio.sleep(5.0)  # no call pending any more: the clock jumps
        return loop.time()

    assert run(main, stall_timeout=2.0) == 5.0


def test_anyio_thread_waiting_for_the_loop_lets_the_clock_move_then_holds_it_again() -> None:
    """A worker thread that runs a coroutine on the loop (``anyio.from_thread.run``) does no
    work while it waits: the coroutine's sleep jumps. Once the thread has its answer it works
    again, and the clock holds until it returns."""

    def work() -> str:
        answer = anyio.from_thread.run(asyncio.sleep, 30.0, "slept")
        time.sleep(0.05)
        return answer

    async def main() -> list[tuple[str, float]]:
        loop = asyncio.get_running_loop()
        log: list[tuple[str, float]] = []
        loop.call_later(30.001, lambda: log.append(("timer", loop.time())))
        log.append((await anyio.to_thread.run_sync(work), loop.time()))
        await asyncio.sleep(1.0)
        return log

    assert run(main, stall_timeout=5.0) == [("slept", 30.0), ("timer", 30.001)]


def test_anyio_run_sync_is_wrapped_only_while_a_virtual_time_loop_runs() -> None:
    originals = anyio.to_thread.run_sync, anyio.from_thread.run

    async def main() -> tuple[bool, int]:
        now = anyio.to_thread.run_sync, anyio.from_thread.run
        return now == originals, await anyio.to_thread.run_sync(int, "7")

    assert run(main) == (False, 7)
    assert (anyio.to_thread.run_sync, anyio.from_thread.run) == originals
    # On any other loop the call goes straight through.
    assert asyncio.run(main()) == (True, 7)


def test_aiosqlite_calls_hold_the_clock_while_its_thread_works(tmp_path: Path) -> None:
    aiosqlite = pytest.importorskip("aiosqlite")

    async def main() -> tuple[int, float]:
        loop = asyncio.get_running_loop()
        async with aiosqlite.connect(tmp_path / "vt.db") as db:

            def slow(x: int) -> int:
                time.sleep(0.05)
                return x

            await db.create_function("slow", 1, slow)
            async with asyncio.timeout(0.001):  # would fire if the clock jumped meanwhile
                async with db.execute("SELECT slow(7)") as cursor:
                    row = await cursor.fetchone()
        return row[0], loop.time()

    assert run(main) == (7, 0.0)


def test_aiosqlite_answers_never_race_the_jump(tmp_path: Path) -> None:
    """An answer landing between the loop's poll and its look at pending work must not be
    jumped over: a pool's connections made and closed back to back (each close in a task
    of its own), with the acquire timeout pending."""
    pytest.importorskip("aiosqlite")
    import aiolease.sqlite

    async def main(path: Path) -> float:
        pool = aiolease.sqlite.create_pool(path, max_size=1, acquire_timeout=5)
        async with pool:
            for _ in range(20):
                conn = await pool.acquire()  # PoolTimeout if the clock jumped over an answer
                await pool.release(conn, discard=True)
        return asyncio.get_running_loop().time()

    for i in range(10):
        assert run(functools.partial(main, tmp_path / f"race{i}.db")) < 5.0


def test_child_process_is_awaited_with_the_clock_frozen() -> None:
    async def main() -> tuple[int, bytes, float]:
        loop = asyncio.get_running_loop()
        code = "import time; time.sleep(0.05); print('child')"
        async with asyncio.timeout(0.001):  # would fire if the clock jumped meanwhile
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE
            )
            out, _ = await proc.communicate()
            quiet = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
            returncode = await quiet.wait()  # no pipe to watch: only the child's exit
        return returncode, out, loop.time()

    assert run(main) == (0, b"child\n", 0.0)


@pytest.mark.parametrize(
    ("to_thread", "what"),
    [
        (asyncio.to_thread, "executor job"),
        # Looked up at the call: the loop wraps anyio's function while it runs.
        (lambda func: anyio.to_thread.run_sync(func), "anyio worker thread call"),
    ],
    ids=["asyncio", "anyio"],
)
def test_stuck_thread_raises_no_progress_after_stall_timeout(
    to_thread: Callable[..., Awaitable[object]], what: str
) -> None:
    release = threading.Event()

    async def main() -> None:
        await to_thread(release.wait)

    runner = asyncio.Runner(loop_factory=functools.partial(VirtualTimeLoop, stall_timeout=0.1))
    try:
        stalled = (
            rf"waiting for 1 {what}\(s\), but nothing happened for 0.1 s of real time; "
            r"if that work is only slow, pass VirtualTimeLoop\(stall_timeout=\.\.\.\) a "
            r"longer limit, or None for none"
        )
        with pytest.raises(NoProgressError, match=stalled):
            runner.run(main())
    finally:
        release.set()  # let the thread end so the runner can close
        runner.close()


def test_external_work_holds_the_clock_for_threads_the_loop_cannot_see() -> None:
    async def race(use_external_work: bool) -> str:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualTimeLoop)
        fut: asyncio.Future[str] = loop.create_future()

        def answer() -> None:
            if not fut.done():
                fut.set_result("answered")

        def worker() -> None:
            # A thread of its own (like aiosqlite's), answering with call_soon_threadsafe.
            time.sleep(0.03)
            loop.call_soon_threadsafe(answer)

        thread = threading.Thread(target=worker)
        thread.start()
        try:
            async with asyncio.timeout(1.0):
                if use_external_work:
                    with loop.external_work():
                        return await fut
                return await fut
        except TimeoutError:
            return f"timed out at {loop.time()}"
        finally:
            thread.join()

    assert run(functools.partial(race, True)) == "answered"
    # Unseen, the thread loses the race: the clock jumps straight to the timeout.
    assert run(functools.partial(race, False)) == "timed out at 1.0"


@pytest.mark.parametrize(("io_grace", "expected"), [(1.0, "data"), (0.0, "timer")])
def test_watched_socket_gets_io_grace_before_the_clock_jumps(
    io_grace: float, expected: str
) -> None:
    async def main() -> str:
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        first: asyncio.Future[str] = loop.create_future()

        def settle(what: str) -> None:
            if not first.done():
                first.set_result(what)

        loop.add_reader(a.fileno(), settle, "data")
        loop.call_later(5.0, settle, "timer")
        sender = threading.Timer(0.02, b.send, args=(b"x",))
        sender.start()
        try:
            return await first
        finally:
            sender.join()
            loop.remove_reader(a.fileno())
            a.close()
            b.close()

    assert run(main, io_grace=io_grace) == expected


def test_real_socket_round_trip_under_virtual_time() -> None:
    async def main() -> tuple[bytes, float]:
        loop = asyncio.get_running_loop()

        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(await reader.readline())
            await writer.drain()
            writer.close()
            await writer.wait_closed()

        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            async with asyncio.timeout(30):
                writer.write(b"ping\n")
                line = await reader.readline()
            writer.close()
            await writer.wait_closed()
        return line, loop.time()

    line, now = run(main)
    assert line == b"ping\n"
    assert now == 0.0  # the timeout never fired and the clock never moved


def test_silent_watched_socket_without_timers_raises_after_stall_timeout() -> None:
    async def main() -> None:
        reader, writer = await asyncio.open_connection(sock=a)
        try:
            await reader.read(1)  # nobody ever writes to b
        finally:
            writer.close()

    a, b = socket.socketpair()
    try:
        with pytest.raises(NoProgressError, match=r"1 file descriptor\(s\), but nothing happened"):
            run(main, stall_timeout=0.05)
    finally:
        a.close()
        b.close()


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("start", "delay"),
    [(1.7e9, 1.0), (0.0, 1e9), (2.0**24, 0.0), (1.7e9, 0.0)],
    ids=["epoch-like-start", "thirty-years", "at-2**24-now", "epoch-like-now"],
)
def test_timers_fire_when_the_clock_is_too_large_for_its_resolution(
    start: float, delay: float
) -> None:
    # From a clock of 2**24 s on, now + the clock's resolution rounds back to now:
    # asyncio then never runs a timer due exactly now, and the clock must still move.
    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        fired: list[float] = []
        loop.call_later(delay, lambda: fired.append(loop.time()))
        await asyncio.sleep(delay + 1.0)
        async with asyncio.timeout(5.0):
            await asyncio.sleep(10.0)
        return fired

    with pytest.raises(TimeoutError):
        run(main, start=start)

    async def sleeps() -> list[float]:
        loop = asyncio.get_running_loop()
        fired: list[float] = []
        loop.call_later(delay, lambda: fired.append(loop.time()))
        await asyncio.sleep(delay + 1.0)
        return [*fired, loop.time()]

    fired, end = run(sleeps, start=start)
    # Each lands on its time or the next representable one after it, never before.
    assert start + delay <= fired <= math.nextafter(start + delay, math.inf)
    assert start + delay + 1.0 <= end <= math.nextafter(start + delay + 1.0, math.inf)


@pytest.mark.timeout(10)
def test_an_infinite_sleep_alone_is_no_progress_not_a_hang() -> None:
    async def forever() -> None:
        await asyncio.sleep(math.inf)

    async def main() -> float:
        loop = asyncio.get_running_loop()
        # An infinite timer beside finite ones: the finite ones still fire.
        loop.call_later(math.inf, lambda: None)
        await asyncio.sleep(3.0)
        assert loop.time() == 3.0
        await asyncio.create_task(forever(), name="sleeps-forever")
        return loop.time()

    with pytest.raises(NoProgressError) as exc_info:
        run(main)
    assert "sleeps-forever: forever -> sleep" in str(exc_info.value)


@pytest.mark.timeout(10)
def test_a_nan_timer_does_not_stop_the_clock() -> None:
    # asyncio runs a NaN timer once it reaches the head of its heap; the others still
    # fire at their times.
    async def main() -> tuple[list[tuple[str, float]], float]:
        loop = asyncio.get_running_loop()
        fired: list[tuple[str, float]] = []
        loop.call_later(2.0, lambda: fired.append(("2", loop.time())))
        loop.call_later(math.nan, lambda: fired.append(("nan", loop.time())))
        loop.call_later(1.0, lambda: fired.append(("1", loop.time())))
        await asyncio.sleep(5.0)
        return fired, loop.time()

    fired, end = run(main)
    assert [f for f in fired if f[0] != "nan"] == [("1", 1.0), ("2", 2.0)]
    assert [name for name, _ in fired].count("nan") == 1
    assert end == 5.0


def test_timers_due_at_one_instant_fire_together_in_the_same_order_on_every_run() -> None:
    """Documented limit: asyncio leaves the order of timers due at one instant undefined;
    on virtual time they tie often, and the order is at least the same on every run."""

    async def main() -> list[tuple[int, float]]:
        loop = asyncio.get_running_loop()
        woke: list[tuple[int, float]] = []

        async def sleeper(n: int) -> None:
            await asyncio.sleep(1.0)
            woke.append((n, loop.time()))

        await asyncio.gather(*(sleeper(n) for n in range(20)))
        return woke

    first = run(main)
    assert sorted(first) == [(n, 1.0) for n in range(20)]
    assert run(main) == first


def test_a_ticking_task_keeps_the_clock_moving_instead_of_no_progress() -> None:
    """Documented limit: with a timer always scheduled nothing is "no progress"; a timeout
    bounds the test, on virtual time."""

    async def main() -> tuple[int, float]:
        loop = asyncio.get_running_loop()
        ticks = 0

        async def heartbeat() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(3.0)  # never due at 1000 (no tie with the timeout)
                ticks += 1

        beat = asyncio.create_task(heartbeat())
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1000.0):
                await asyncio.Event().wait()  # stuck: no NoProgressError, the heartbeat ticks
        beat.cancel()
        return ticks, loop.time()

    assert run(main) == (333, 1000.0)


def test_a_thread_the_loop_did_not_start_is_invisible_without_external_work() -> None:
    """Documented limit: with no timer, a future only a foreign thread will answer is "no
    progress" at once (the message says what to do); inside external_work() it is awaited."""

    def answer_later(loop: asyncio.AbstractEventLoop, future: asyncio.Future[str]) -> None:
        time.sleep(0.05)
        with contextlib.suppress(RuntimeError):  # the loop may be closed by then
            loop.call_soon_threadsafe(future.set_result, "answered")

    async def main(external: bool) -> str:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualTimeLoop)
        future: asyncio.Future[str] = loop.create_future()
        thread = threading.Thread(target=answer_later, args=(loop, future))
        thread.start()
        try:
            if external:
                with loop.external_work():
                    return await future
            return await future
        finally:
            thread.join()

    with pytest.raises(NoProgressError, match=r"loop\.external_work\(\)"):
        run(functools.partial(main, False))
    assert run(functools.partial(main, True)) == "answered"


def test_deadlock_raises_no_progress_naming_the_blocked_tasks() -> None:
    async def waits_forever(event: asyncio.Event) -> None:
        await event.wait()

    async def main() -> None:
        event = asyncio.Event()
        helper = asyncio.create_task(waits_forever(event), name="helper-task")
        await helper

    started = time.perf_counter()
    with pytest.raises(NoProgressError) as exc_info:
        run(main)
    assert time.perf_counter() - started < 1.0
    message = str(exc_info.value)
    assert "no timer is scheduled" in message
    assert "a real event loop would hang here forever" in message
    # The one case where a real loop would not hang: say what to do about it.
    assert "unless a thread the loop did not start answers" in message
    assert "loop.external_work()" in message
    assert "helper-task: waits_forever -> wait (at " in message
    assert "locks.py" in message
    assert "main (at " in message
    assert __file__ in message


# -- pytest integration (pytest-asyncio loop factory hook) -------------------------------------


@pytest.mark.aiolease_virtual_time
async def test_marker_runs_the_test_on_virtual_time() -> None:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, VirtualTimeLoop)
    started = time.perf_counter()
    await asyncio.sleep(3600)
    assert loop.time() == 3600.0
    assert time.perf_counter() - started < 0.5


@pytest.mark.aiolease_virtual_time(start=50.0, io_grace=0)
async def test_marker_passes_loop_arguments() -> None:
    loop = asyncio.get_running_loop()
    assert loop.time() == 50.0


@pytest.mark.aiolease_virtual_time(False)
async def test_marker_false_keeps_the_normal_loop() -> None:
    assert not isinstance(asyncio.get_running_loop(), VirtualTimeLoop)


async def test_unmarked_tests_keep_the_normal_loop() -> None:
    assert not isinstance(asyncio.get_running_loop(), VirtualTimeLoop)
