"""ConcurrencyLimiter behaviour specific to the local implementation (virtual time)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from limits_helpers import run_then_close, vrun

from aiolease import ConcurrencyLimiter, ConcurrencyPermit, LimitTimeout, WouldBlock
from aiolease.testing import leak_check


def test_slot_granted_to_a_task_cancelled_in_the_same_instant_is_passed_on() -> None:
    async def body() -> None:
        sem = ConcurrencyLimiter(1)
        held = await sem.acquire()
        a = asyncio.ensure_future(sem.acquire())
        await asyncio.sleep(0)
        b = asyncio.ensure_future(sem.acquire())
        await asyncio.sleep(0)
        held.release()  # a's future resolves now...
        a.cancel()  # ...and a is cancelled before it runs
        with pytest.raises(asyncio.CancelledError):
            await a
        permit = await b  # the slot went on to b
        assert sem.statistics().in_use == 1
        permit.release()
        assert sem.statistics().in_use == 0

    vrun(body)


def test_timeout_of_a_middle_waiter_keeps_order() -> None:
    async def body() -> list[str]:
        sem = ConcurrencyLimiter(1)
        held = await sem.acquire()
        got: list[str] = []

        async def one(name: str, timeout: float | None) -> None:
            try:
                async with sem.acquire(timeout=timeout):
                    got.append(name)
            except LimitTimeout:
                got.append(name + ":timeout")

        tasks = [asyncio.ensure_future(one(n, t)) for n, t in (("a", None), ("b", 1.0), ("c", 5.0))]
        await asyncio.sleep(2.0)
        held.release()
        await asyncio.gather(*tasks)
        return got

    assert vrun(body) == ["b:timeout", "a", "c"]


def test_timeout_zero_fails_at_once() -> None:
    async def body() -> None:
        sem = ConcurrencyLimiter(1)
        async with sem:
            with pytest.raises(LimitTimeout):
                await sem.acquire(timeout=0)
        async with sem.acquire(timeout=0):
            pass

    vrun(body)


def test_async_with_sem_releases_even_on_error_and_cancel() -> None:
    async def body() -> None:
        sem = ConcurrencyLimiter(2)
        with pytest.raises(RuntimeError):
            async with sem:
                raise RuntimeError("boom")

        async def holder() -> None:
            async with sem:
                await asyncio.sleep(10)

        t = asyncio.ensure_future(holder())
        await asyncio.sleep(1)
        assert sem.statistics().in_use == 1
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        assert sem.statistics().in_use == 0

    vrun(body)


def test_cancel_at_every_await_leaves_the_limiter_consistent() -> None:
    """Cancel a waiter at each instant of its life; the limiter stays consistent."""

    async def body() -> None:
        for cancel_after in (0.0, 0.5, 1.0, 1.5, 2.0):
            sem = ConcurrencyLimiter(1)
            held = await sem.acquire()

            async def user(sem: ConcurrencyLimiter) -> None:
                async with sem.acquire():
                    await asyncio.sleep(1.0)

            t = asyncio.ensure_future(user(sem))
            asyncio.get_running_loop().call_later(1.0, held.release)
            await asyncio.sleep(cancel_after)
            t.cancel()
            await asyncio.gather(t, return_exceptions=True)
            await asyncio.sleep(1.0)
            s = sem.statistics()
            assert (s.in_use, s.waiting) == (0, 0), (cancel_after, s)
            sem.acquire_nowait().release()

    vrun(body)


def test_keys_are_forgotten_when_free() -> None:
    async def body() -> None:
        sem = ConcurrencyLimiter(1)
        for i in range(100_000):
            async with sem.acquire(key=i):
                pass
        assert sem.statistics().keys == 0
        p = sem.acquire_nowait(key="x")
        assert sem.statistics().keys == 1
        p.release()
        assert sem.statistics().keys == 0

    vrun(body, timeout=120)


def test_leaks_report_held_slots_and_waiters() -> None:
    async def body() -> None:
        check = leak_check()
        async with check:
            sem = ConcurrencyLimiter(1, name="db")
            p = sem.acquire_nowait(key="k")
            with pytest.raises(AssertionError, match="still held"):
                check.check()
            assert "'db'" in sem._aiolease_leaks()[0]
            w = asyncio.ensure_future(sem.acquire(key="k"))
            await asyncio.sleep(0)
            assert any("still waiting" in x for x in sem._aiolease_leaks())
            p.release()
            (await w).release()
            assert sem._aiolease_leaks() == []

    vrun(body)


def test_name_must_be_utf8_text() -> None:
    # A lone surrogate cannot be logged to a UTF-8 file nor exported to Prometheus or OTLP.
    with pytest.raises(ValueError, match=r"name must be encodable as UTF-8 .*got 'a\\ud800'"):
        ConcurrencyLimiter(1, name="a\ud800")


def test_release_without_acquire_is_an_error_and_repr() -> None:
    async def body() -> None:
        sem = ConcurrencyLimiter(2, name="db")
        with pytest.raises(RuntimeError, match="without a matching acquire"):
            await sem.__aexit__(None, None, None)
        p = sem.acquire_nowait()
        assert repr(sem) == "<ConcurrencyLimiter 'db' limit=2 in_use=1 waiting=0 keys=0>"
        assert repr(p) == "<ConcurrencyPermit key=None held>"
        p.release()
        assert p.released

    vrun(body)


def test_nowait_does_not_barge_ahead_of_waiters() -> None:
    async def body() -> None:
        sem = ConcurrencyLimiter(1)
        held = sem.acquire_nowait()
        w = asyncio.ensure_future(sem.acquire())
        await asyncio.sleep(0)
        held.release()  # handed straight to w
        with pytest.raises(WouldBlock):
            sem.acquire_nowait()
        (await w).release()

    vrun(body)


def test_release_off_the_loop_with_waiters_fails_before_changing_anything() -> None:
    """A release from a thread (no running loop) while tasks wait used to count the slot
    free and then fail, leaving the oldest waiter (and every later one) waiting forever."""

    async def body() -> None:
        sem = ConcurrencyLimiter(1)
        p = await sem.acquire()
        waiter = asyncio.ensure_future(sem.acquire())
        await asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="event loop"):
            await asyncio.to_thread(p.release)
        assert not p.released
        assert sem.statistics().in_use == 1
        p.release()  # on the loop: the slot goes to the waiter
        async with asyncio.timeout(5):
            q = await waiter
        q.release()
        assert sem.statistics().in_use == 0

    vrun(body)


def test_release_off_the_loop_without_waiters_still_works() -> None:
    async def body() -> None:
        sem = ConcurrencyLimiter(1)
        p = await sem.acquire()
        await asyncio.to_thread(p.release)
        assert p.released
        assert sem.statistics().in_use == 0

    vrun(body)


def _strand(sem: ConcurrencyLimiter) -> tuple[ConcurrencyPermit, asyncio.Task[Any]]:
    """Hold the one slot of key "k" and leave a waiter for it on an event loop then closed."""

    async def body() -> tuple[ConcurrencyPermit, asyncio.Task[Any]]:
        held = await sem.acquire(key="k")
        left = asyncio.ensure_future(sem.acquire(key="k"))
        await asyncio.sleep(0)
        return held, left

    return run_then_close(body)


@pytest.mark.parametrize("where", ["off the loop", "on the next loop"])
def test_a_waiter_left_on_a_closed_loop_does_not_hold_up_the_key(where: str) -> None:
    """Its future can never be resolved: the slot went to it (and was lost), or the release
    failed, and every later user of the key waited behind it forever."""
    sem = ConcurrencyLimiter(1)
    held, left = _strand(sem)
    if where == "off the loop":
        held.release()

    async def later() -> None:
        async with asyncio.timeout(5):
            nxt = asyncio.ensure_future(sem.acquire(key="k"))
            await asyncio.sleep(0)
            held.release()
            (await nxt).release()
            sem.acquire_nowait(key="k").release()
        stats = sem.statistics()
        assert (stats.in_use, stats.waiting, stats.keys) == (0, 0, 0)

    asyncio.run(later())
    left.get_coro().close()
