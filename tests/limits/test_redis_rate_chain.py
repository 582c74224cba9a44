"""RedisRateLimiter's chain of sleeping waiters (``_Chain``) against a straightforward reference.

The reference keeps what the chain did before it had a tree: one loop timer per waiter, and a
give-back that walks every later waiter, moves it up by the cost (its slot not below the
``paused_until`` it was made under) and re-arms its timer. Random sequences of reservations
(under a pause or not, after another writer or not), give-backs that move the later waiters up,
plain cancellations, pauses, late timers and the passing of time run against both on a virtual
clock; every waiter's slot, tat and deadline must match at every step, and so must the loop time
each one is woken at. The numbers are multiples of 1/64 s (15625 µs), so that both compute
exactly and are compared with ``==``. No Redis is involved.
"""

from __future__ import annotations

import asyncio
import functools
import os
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from aiolease.redis._chain import _Chain, _Entry
from aiolease.redis._pipe import wake
from aiolease.testing import VirtualTimeLoop

_EXAMPLES = int(os.environ.get("AIOLEASE_HYPOTHESIS_EXAMPLES", "150"))
_Q = 15625.0  # µs: 1/64 s
_T = 16 * _Q  # µs per unit of cost
_SERVER0 = 1_700_000_000_000_000.0  # the server's clock (µs) at loop time _START
_START = 1024.0


class _Ref:
    """A waiter as the chain kept it before: its own values and its own timer."""

    def __init__(self, entry: _Entry, fut: asyncio.Future[Any]) -> None:
        self.seq = entry.seq
        self.slot = entry.slot0
        self.tat = entry.tat0
        self.pu = entry.pu
        self.deadline = entry.deadline0
        self.fut = fut
        loop = asyncio.get_running_loop()
        self.handle: asyncio.TimerHandle | None = loop.call_at(self.deadline, wake, fut)


def _ref_move_up(refs: dict[int, _Ref], seq: int, shift: float) -> None:
    loop = asyncio.get_running_loop()
    for e in refs.values():
        if e.seq > seq:
            e.tat -= shift
            slot = max(e.slot - shift, e.pu)
            e.deadline -= (e.slot - slot) / 1e6
            e.slot = slot
            if e.handle is not None and not e.fut.done():
                e.handle.cancel()
                e.handle = loop.call_at(e.deadline, wake, e.fut)


# cost, wait (in 1/64 s), how paused_until relates to the slot, another writer before it
_RESERVE = st.tuples(
    st.just("reserve"),
    st.sampled_from([0.5, 1.0, 2.0, 3.0]),
    st.integers(1, 400),
    st.integers(0, 3),
    st.booleans(),
)

_OPS = st.lists(
    st.one_of(
        _RESERVE,
        _RESERVE,  # (twice: reservations weigh double among the operations)
        st.tuples(st.just("cancel"), st.integers(0, 10**6), st.booleans()),
        st.tuples(st.just("cancel"), st.integers(0, 10**6), st.just(True)),
        st.tuples(st.just("sleep"), st.integers(0, 40)),
        st.tuples(st.just("pause")),
        st.tuples(st.just("late"), st.integers(0, 10**6), st.integers(0, 100)),
    ),
    max_size=150,
)


async def _run(ops: list[tuple[Any, ...]]) -> None:
    loop = asyncio.get_running_loop()
    chain = _Chain()
    refs: dict[int, _Ref] = {}
    futs: dict[int, asyncio.Future[Any]] = {}  # seq -> the chain's future
    woke: dict[tuple[str, int], float] = {}
    pu = 0.0

    def record(tag: str, seq: int, fut: asyncio.Future[Any]) -> None:
        woke[(tag, seq)] = loop.time()

    def check() -> None:
        assert [e.seq for e in chain.entries.values()] == list(refs)
        for fut, e in chain.entries.items():
            r = refs[e.seq]
            assert (e.slot, e.tat, e.deadline) == (r.slot, r.tat, r.deadline), e.seq
            assert fut.done() == r.fut.done(), e.seq

    for op in ops:
        if op[0] == "reserve":
            _, cost, wait, mode, broken = op
            server = _SERVER0 + (loop.time() - _START) * 1e6
            slot = server + wait * _Q
            if mode == 1:
                pu = slot  # under a pause: the first move leaves it in place
            elif mode == 2:
                pu = slot - (wait // 2) * _Q  # a move may take it part of the way
            elif mode == 0:
                pu = 0.0
            new = f"{slot!r} {slot + cost * _T!r} 0 7 {pu!r}"
            old = "0 0 0 5 0" if broken or chain.last is None else chain.last
            entry = chain.note(old, new, cost, loop.time() + wait / 64)
            fut = loop.create_future()
            fut.add_done_callback(functools.partial(record, "chain", entry.seq))
            chain.add(fut, entry)
            ref_fut = loop.create_future()
            ref_fut.add_done_callback(functools.partial(record, "ref", entry.seq))
            refs[entry.seq] = _Ref(entry, ref_fut)
            futs[entry.seq] = fut
        elif op[0] == "cancel" and refs:
            _, index, move = op
            seq = list(refs)[index % len(refs)]
            r = refs.pop(seq)
            if r.handle is not None:
                r.handle.cancel()
            gone = chain.discard(futs[seq])
            assert gone is not None
            assert (gone.slot, gone.tat, gone.deadline) == (r.slot, r.tat, r.deadline)
            if move and not r.fut.done():  # a give-back that moves the later waiters up
                _ref_move_up(refs, seq, gone.cost * _T)
                chain.move_up(gone, _T)
        elif op[0] == "sleep":
            await asyncio.sleep(op[1] / 64)
            for seq in [s for s, r in refs.items() if r.fut.done()]:  # their tasks resume
                del refs[seq]
                chain.discard(futs[seq])
        elif op[0] == "pause":
            for r in refs.values():
                if r.handle is not None:
                    r.handle.cancel()
                if not r.fut.done():
                    r.fut.set_result(None)
            chain.wake_all(None)
        elif op[0] == "late" and refs:
            _, index, late = op
            seq = list(refs)[index % len(refs)]
            r = refs[seq]
            if r.handle is not None and not r.fut.done():
                # A timer that fires late: neither the timer nor a move wakes it any more.
                r.handle.cancel()
                r.handle = None
                loop.call_at(r.deadline + late / 64, wake, r.fut)
                entry = chain.entries[futs[seq]]
                chain.unschedule(entry)
                loop.call_at(entry.deadline + late / 64, wake, futs[seq])
        check()
    await asyncio.sleep(400 / 64 + 200 / 64 + 1)  # every waiter left is woken
    check()
    assert {s for t, s in woke if t == "chain"} == {s for t, s in woke if t == "ref"}
    for (tag, seq), at in woke.items():
        if tag == "chain":
            assert at == woke[("ref", seq)], seq
    for fut in futs.values():
        chain.discard(fut)
    assert chain._timer is None


@settings(max_examples=_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=_OPS)
# A move leaves a waiter at its paused_until, and a waiter after it made under no pause now
# sleeps less than it: the one timer must be armed for the later one.
@example(
    ops=[
        ("reserve", 0.5, 5, 0, True),
        ("reserve", 0.5, 10, 1, False),
        ("reserve", 0.5, 12, 0, False),
        ("cancel", 0, True),
        ("sleep", 200),
    ]
)
# Moves, then enough reservations for the tree to be rebuilt (moves counted in each waiter).
@example(
    ops=[("reserve", 1.0, 50, 0, False)] * 3
    + [("cancel", 0, True)]
    + [("reserve", 1.0, 60, 0, False)] * 12
    + [("sleep", 200)]
)
def test_the_chain_moves_and_wakes_its_waiters_as_the_reference_does(
    ops: list[tuple[Any, ...]],
) -> None:
    with asyncio.Runner(loop_factory=functools.partial(VirtualTimeLoop, start=_START)) as runner:
        runner.run(_run(ops))


def test_a_long_chain_is_moved_in_one_update() -> None:
    # 3000 waiters: cancelling each second one from the front moves the rest up each time; the
    # tree is rebuilt as it fills, and every waiter is woken at its moved slot.
    async def body() -> None:
        loop = asyncio.get_running_loop()
        chain = _Chain()
        futs = []
        extra: list[asyncio.Future[Any]] = []
        for i in range(3000):
            slot = _SERVER0 + (i + 1) * _T
            new = f"{slot!r} {slot + _T!r} 0 7 0"
            entry = chain.note(chain.last or "0 0 0 7 0", new, 1.0, loop.time() + (i + 1) * 0.25)
            fut = loop.create_future()
            chain.add(fut, entry)
            futs.append(fut)
        for fut in futs[:1000:2]:
            gone = chain.discard(fut)
            assert gone is not None
            chain.move_up(gone, _T)
            for _ in range(12):  # later reservations (under no move yet): the tree grows
                last = chain.last
                assert last is not None
                entry = chain.note(last, last, 1.0, loop.time() + 3600.0)
                fut = loop.create_future()
                chain.add(fut, entry)
                extra.append(fut)
        e = chain.entries[futs[1]]
        assert e.slot == _SERVER0 + 1 * _T  # moved up by the one cancelled before it
        e = chain.entries[futs[-1]]
        assert e.slot == _SERVER0 + 2500 * _T
        assert e.deadline == _START + 2500 * 0.25
        await asyncio.sleep(2500 * 0.25)
        assert all(f.done() for f in futs[1000:])
        assert not any(f.done() for f in extra)
        for fut in extra:
            chain.discard(fut)
        assert chain._timer is None

    with asyncio.Runner(loop_factory=functools.partial(VirtualTimeLoop, start=_START)) as runner:
        runner.run(body())
