"""Tests of aiolease.testing.FakeManager driven directly (no pool), as a pool would call it."""

from __future__ import annotations

import asyncio

import pytest

import aiolease
from aiolease.abc import Manager, ResourceInfo
from aiolease.testing import (
    Call,
    FakeManager,
    FakeResource,
    InjectedFault,
    LifecycleEvent,
    Op,
    ResourceKilled,
    ResourceMisuse,
)

# Delays are asyncio.sleep calls: run them on virtual time (instant, exact).
pytestmark = pytest.mark.aiolease_virtual_time


def _info() -> ResourceInfo:
    return ResourceInfo(created_at=0.0, last_used_at=0.0)


async def _lease(fm: FakeManager, r: FakeResource) -> None:
    """One lease as a pool performs it: hand out, use, give back, reset."""
    info = _info()
    fm.on_acquire(r, info)
    await r.use()
    fm.on_release(r, info)
    await fm.reset(r, info)


def test_constructible_without_arguments_and_is_a_manager() -> None:
    fm = FakeManager()
    assert isinstance(fm, Manager)
    assert fm.events == []
    assert fm.created == 0
    assert repr(fm).startswith("<FakeManager")


async def test_records_full_lifecycle_with_lease_numbers() -> None:
    fm = FakeManager()
    r1 = await fm.create()
    r2 = await fm.create()
    await _lease(fm, r1)
    await fm.check(r1, _info())
    await _lease(fm, r1)
    await _lease(fm, r2)
    await fm.close(r1)
    await fm.close(r2)
    assert [str(e) for e in fm.events] == [
        "created r1",
        "created r2",
        "acquired r1 lease 1",
        "released r1 lease 1",
        "reset r1 lease 1",
        "checked r1",
        "acquired r1 lease 2",
        "released r1 lease 2",
        "reset r1 lease 2",
        "acquired r2 lease 3",
        "released r2 lease 3",
        "reset r2 lease 3",
        "closed r1",
        "closed r2",
    ]
    assert fm.events[0] == LifecycleEvent("created", 1, None, 1)
    assert (fm.created, fm.closed, fm.open_resources, fm.leases) == (2, 2, [], 3)
    assert (r1.leases, r1.uses, r2.leases) == (2, 2, 1)
    assert fm.calls == {"create": 2, "check": 1, "reset": 3, "close": 2, "use": 3}
    fm.assert_all_closed()


async def test_fail_by_call_number() -> None:
    fm = FakeManager()
    rule = fm.fail("create", calls=[1, 2])
    with pytest.raises(InjectedFault, match=r"create failure \(call #1\)"):
        await fm.create()
    with pytest.raises(InjectedFault, match=r"call #2"):
        await fm.create()
    r = await fm.create()
    assert r.id == 1  # ids count successful creations only
    assert rule.applied == 2
    assert [(e.call, e.ok) for e in fm.events_of("created")] == [(1, False), (2, False), (3, True)]
    assert len(fm.events_of("created", ok=False)) == 2
    assert str(fm.events[0]).startswith("created FAILED InjectedFault(")


async def test_fail_by_predicate_with_error_class_instance_and_factory() -> None:
    fm = FakeManager()
    r1, r2 = await fm.create(), await fm.create()
    fm.fail("check", ConnectionError, when=lambda c: c.resource is r2)
    boom = OSError("boom")
    fm.fail("reset", boom, calls=1)
    fm.fail("close", lambda c: ValueError(f"close {c.number} of r{c.resource and c.resource.id}"))
    await fm.check(r1, _info())
    with pytest.raises(ConnectionError, match="injected check failure"):
        await fm.check(r2, _info())
    with pytest.raises(OSError) as exc_info:
        await fm.reset(r1, _info())
    assert exc_info.value is boom
    await fm.reset(r1, _info())  # only call 1 fails
    with pytest.raises(ValueError, match="close 1 of r2"):
        await fm.close(r2)
    assert r2.closed  # a close that raised still counts as the close
    assert [str(e) for e in fm.events_of("checked")][1].startswith("checked r2 FAILED")


async def test_predicate_sees_call_number_and_info() -> None:
    fm = FakeManager()
    seen: list[Call] = []

    def pred(call: Call) -> bool:
        seen.append(call)
        return call.number % 2 == 0

    fm.fail("check", when=pred)
    r = await fm.create()
    info = _info()
    await fm.check(r, info)
    with pytest.raises(InjectedFault):
        await fm.check(r, info)
    assert [(c.op, c.number, c.resource, c.info) for c in seen] == [
        ("check", 1, r, info),
        ("check", 2, r, info),
    ]


async def test_calls_and_when_must_both_hold_and_rules_can_be_removed() -> None:
    fm = FakeManager()
    rule = fm.fail("create", calls=[1, 2], when=lambda c: c.number == 2)
    await fm.create()
    with pytest.raises(InjectedFault):
        await fm.create()
    rule2 = fm.fail("create")
    assert fm.rules == [rule, rule2]
    rule2.remove()
    rule2.remove()  # idempotent
    await fm.create()
    fm.fail("create")
    fm.clear_rules()
    await fm.create()


async def test_delay_uses_the_loop_clock() -> None:
    fm = FakeManager()
    fm.delay("create", 2.5, calls=1)
    fm.delay("create", 1.0, calls=1)
    loop = asyncio.get_running_loop()
    start = loop.time()
    fm.delay("use", 0.0)
    r = await fm.create()
    assert loop.time() - start == 3.5  # delays of one call add up
    assert fm.events[-1].time == start + 3.5
    assert r.id == 1


async def test_delay_then_fail_order() -> None:
    fm = FakeManager()
    fm.fail("create", calls=1)
    fm.delay("create", 0.01, calls=1)
    loop = asyncio.get_running_loop()
    with pytest.raises(InjectedFault):
        await fm.create()
    assert loop.time() == 0.01  # the delay came before the failure
    assert fm.events[0].time == 0.01


async def test_block_gate_lets_cancel_land_at_the_await() -> None:
    fm = FakeManager()
    gate = fm.block("create", calls=1)
    task = asyncio.create_task(fm.create())
    call = await gate.wait_arrived()
    assert (call.op, call.number) == ("create", 1)
    assert gate.blocked == 1
    assert fm.creating == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert gate.blocked == 0
    assert fm.creating == 0
    [event] = fm.events
    assert event.kind == "created"
    assert isinstance(event.error, asyncio.CancelledError)
    assert fm.created == 0
    # call 2 does not match the gate
    assert (await fm.create()).id == 1


@pytest.mark.parametrize(
    ("op", "kind"), [("check", "checked"), ("reset", "reset"), ("close", "closed")]
)
async def test_cancellation_at_each_operation_is_recorded(op: Op, kind: str) -> None:
    fm = FakeManager()
    r = await fm.create()
    gate = fm.block(op)
    calls = {
        "check": lambda: fm.check(r, _info()),
        "reset": lambda: fm.reset(r, _info()),
        "close": lambda: fm.close(r),
    }
    task = asyncio.create_task(calls[op]())
    await gate.wait_arrived()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    [event] = fm.events_of(kind)
    assert isinstance(event.error, asyncio.CancelledError)
    assert (event.resource, event.call) == (1, 1)
    assert gate.blocked == 0


async def test_gate_open_releases_waiters_and_later_calls_until_closed() -> None:
    fm = FakeManager()
    gate = fm.block("create")
    t1 = asyncio.create_task(fm.create())
    t2 = asyncio.create_task(fm.create())
    second = await gate.wait_arrived(2)
    assert second.number == 2
    assert gate.blocked == 2
    assert "blocked=2" in repr(gate)
    gate.open()
    assert gate.is_open
    r1, r2 = await t1, await t2
    assert {r1.id, r2.id} == {1, 2}
    assert (await fm.create()).id == 3  # open gate does not block
    gate.close()
    t4 = asyncio.create_task(fm.create())
    await gate.wait_arrived(4)
    assert gate.blocked == 1
    gate.open()
    await t4
    assert [c.number for c in gate.arrived] == [1, 2, 3, 4]


async def test_gate_open_then_close_lets_the_blocked_calls_through() -> None:
    """open() lets every call blocked now through, even when close() follows before they
    run: "one call through, then block again". Before, the woken calls saw the gate closed
    again and went on waiting, forever."""
    fm = FakeManager()
    gate = fm.block("create")
    t1 = asyncio.create_task(fm.create())
    await gate.wait_arrived()
    gate.open()
    gate.close()
    t2 = asyncio.create_task(fm.create())
    await gate.wait_arrived(2)
    assert (await t1).id == 1
    assert gate.blocked == 1  # the call that came after close() waits
    assert not t2.done()
    gate.open()
    assert (await t2).id == 2


async def test_gate_wait_arrived_rejects_bad_count() -> None:
    gate = FakeManager().block("check")
    with pytest.raises(ValueError, match="count must be an int >= 1, got 0"):
        await gate.wait_arrived(0)


async def test_use_after_release_after_close_and_never_leased_raise() -> None:
    fm = FakeManager()
    r = await fm.create()
    with pytest.raises(ResourceMisuse, match="never handed out"):
        await r.use()
    fm.on_acquire(r, _info())
    assert await r.use() == 1
    fm.on_release(r, _info())
    with pytest.raises(ResourceMisuse, match="after its lease 1 ended"):
        await r.use()
    await fm.close(r)
    with pytest.raises(ResourceMisuse, match="after it was closed"):
        await r.use()
    with pytest.raises(ResourceMisuse):
        r.ensure_usable()


async def test_lease_ending_during_use_is_detected() -> None:
    fm = FakeManager()
    gate = fm.block("use")
    r = await fm.create()
    fm.on_acquire(r, _info())
    task = asyncio.create_task(r.use())
    await gate.wait_arrived()
    fm.on_release(r, _info())
    gate.open()
    with pytest.raises(ResourceMisuse, match="lease 1 ended"):
        await task


async def test_close_while_leased_ends_the_lease() -> None:
    fm = FakeManager()
    r = await fm.create()
    fm.on_acquire(r, _info())
    await fm.close(r)
    assert r.lease is None
    assert fm.leased == []
    with pytest.raises(ResourceMisuse, match="closed"):
        await r.use()


async def test_kill_breaks_use_check_reset_and_is_fatal() -> None:
    fm = FakeManager(fatal=(TimeoutError,))
    r = await fm.create()
    ok = await fm.create()
    assert not fm.is_fatal(ok, ValueError())
    assert fm.is_fatal(ok, TimeoutError())
    fm.on_acquire(r, _info())
    r.kill()
    assert "killed" not in repr(r)  # still shows its lease
    with pytest.raises(ResourceKilled):
        await r.use()
    assert fm.is_fatal(r, ValueError())
    fm.on_release(r, _info())
    assert "killed" in repr(r)
    with pytest.raises(ResourceKilled):
        await fm.reset(r, _info())
    with pytest.raises(ResourceKilled):
        await fm.check(r, _info())
    assert isinstance(ResourceKilled("x"), ConnectionError)


async def test_counters_and_peaks() -> None:
    fm = FakeManager()
    gate = fm.block("create")
    tasks = [asyncio.create_task(fm.create()) for _ in range(3)]
    await gate.wait_arrived(3)
    assert fm.creating == 3
    gate.open()
    r1, r2, r3 = await asyncio.gather(*tasks)
    assert fm.max_alive == 3
    fm.on_acquire(r1, _info())
    fm.on_acquire(r2, _info())
    assert fm.max_leased == 2
    assert fm.leased == [r1, r2]
    fm.on_release(r1, _info())
    assert fm.leased == [r2]
    await fm.close(r3)
    assert fm.open_resources == [r1, r2]
    assert (fm.created, fm.closed) == (3, 1)


async def test_assert_all_closed_names_open_and_double_closed_resources() -> None:
    fm = FakeManager()
    r1, r2 = await fm.create(), await fm.create()
    with pytest.raises(AssertionError, match=r"r1 idle> closed 0 times.*r2 idle> closed 0 times"):
        fm.assert_all_closed()
    await fm.close(r1)
    await fm.close(r1)
    await fm.close(r2)
    with pytest.raises(AssertionError, match=r"r1 closed> closed 2 times.*closed again"):
        fm.assert_all_closed()


async def test_violations_are_recorded() -> None:
    fm = FakeManager()
    r = await fm.create()
    fm.on_release(r, _info())
    fm.on_acquire(r, _info())
    fm.on_acquire(r, _info())
    await fm.close(r)
    fm.on_acquire(r, _info())
    with pytest.raises(ResourceMisuse):
        await fm.check(r, _info())
    with pytest.raises(ResourceMisuse):
        await fm.reset(r, _info())
    assert len(fm.violations) == 5
    assert "released but it was not handed out" in fm.violations[0]
    assert "already in lease 1" in fm.violations[1]
    assert "closed <FakeResource r1" in fm.violations[2]
    with pytest.raises(AssertionError, match="violations"):
        fm.assert_no_violations()
    FakeManager().assert_no_violations()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"op": "open"},
            "op must be one of 'create', 'check', 'reset', 'close', 'use'; got 'open'",
        ),
        ({"op": "create", "calls": 0}, "calls must be call numbers >= 1"),
        ({"op": "create", "calls": []}, "calls must be call numbers >= 1"),
    ],
)
def test_bad_rule_arguments(kwargs: dict[str, object], message: str) -> None:
    fm = FakeManager()
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        fm.fail(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        fm.block(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("calls", [True, [True, 2], [1, "2"], 1.5, object()])
def test_calls_must_be_ints_not_bools(calls: object) -> None:
    # True == 1: calls=True would quietly target the first call
    with pytest.raises(ValueError, match="calls must be call numbers >= 1"):
        FakeManager().fail("create", calls=calls)  # type: ignore[arg-type]


def test_events_of_refuses_a_kind_that_is_not_one() -> None:
    # Found by a new user's probe: events_of("close") (the op, not the event "closed")
    # returned [], so `assert not fm.events_of("close")` passed whatever happened.
    fm = FakeManager()
    with pytest.raises(
        ValueError,
        match="kinds must be among 'created', 'checked', 'reset', 'closed', 'acquired', "
        "'released'; got 'close'",
    ):
        fm.events_of("closed", "close")
    assert fm.events_of("closed") == []


@pytest.mark.parametrize("error", ["boom", int, 5, None])
def test_fail_refuses_an_error_that_is_not_one_when_armed(error: object) -> None:
    # Before, "boom" failed at the call with "'str' object is not callable" and int
    # with "invalid literal for int()", inside the pool.
    with pytest.raises(TypeError, match="error must be an exception class, an exception "):
        FakeManager().fail("create", error)  # type: ignore[arg-type]


@pytest.mark.parametrize("method", ["fail", "delay", "block"])
def test_when_must_be_callable(method: str) -> None:
    fm = FakeManager()
    args = ("create", 1.0) if method == "delay" else ("create",)
    with pytest.raises(TypeError, match="when must be a callable taking the Call, or None; got 5"):
        getattr(fm, method)(*args, when=5)


async def test_an_error_factory_returning_no_exception_is_named() -> None:
    fm = FakeManager()
    fm.fail("create", lambda call: "not an exception")  # type: ignore[arg-type,return-value]
    with pytest.raises(TypeError, match=r"error factory of <Rule fail create .* returned 'not an"):
        await fm.create()


@pytest.mark.parametrize("fatal", [[ConnectionError], (ConnectionError, "x"), "ConnectionError"])
def test_fatal_must_be_exception_classes(fatal: object) -> None:
    # Before, a list was taken and is_fatal raised TypeError inside the pool, which then
    # discarded every resource that met any error.
    with pytest.raises(TypeError, match="fatal must be a tuple of exception classes"):
        FakeManager(fatal=fatal)  # type: ignore[arg-type]


def test_fatal_takes_one_exception_class_as_isinstance_does() -> None:
    fm = FakeManager(fatal=ConnectionError)  # type: ignore[arg-type]
    assert fm.fatal == (ConnectionError,)


@pytest.mark.parametrize("seconds", [-1.0, float("inf"), float("nan"), 10**400])
def test_bad_delay(seconds: float) -> None:
    with pytest.raises(ValueError, match="seconds must be a finite number >= 0"):
        FakeManager().delay("create", seconds)


def test_rule_repr() -> None:
    fm = FakeManager()
    assert repr(fm.fail("create", calls=[2, 1])) == "<Rule fail create calls=[1, 2] applied=0>"
    assert repr(fm.delay("check", 1)) == "<Rule delay check calls=[] applied=0>"


# -- with the real Pool ------------------------------------------------------------------------


async def test_pool_lease_hooks_number_leases_and_use_after_release_raises() -> None:
    fm = FakeManager()
    async with aiolease.Pool(fm, max_size=1) as pool:
        async with pool.acquire() as resource:
            assert resource.lease == 1
            await resource.use()
        with pytest.raises(ResourceMisuse, match="after its lease 1 ended"):
            await resource.use()
        async with pool.acquire() as again:
            assert again is resource
            assert resource.lease == 2
    with pytest.raises(ResourceMisuse, match="after it was closed"):
        await resource.use()
    assert [str(e) for e in fm.events_of("acquired", "released")] == [
        "acquired r1 lease 1",
        "released r1 lease 1",
        "acquired r1 lease 2",
        "released r1 lease 2",
    ]
    fm.assert_all_closed()


async def test_without_lease_hooks_only_use_after_close_raises() -> None:
    fm = FakeManager(lease_hooks=False)
    assert type(fm).on_acquire is Manager.on_acquire  # the pool sees a manager without hooks
    async with aiolease.Pool(fm, max_size=1) as pool:
        async with pool.acquire() as resource:
            assert await resource.use() == 1
        assert await resource.use() == 2  # after its lease: not detected without the hooks
    with pytest.raises(ResourceMisuse, match="after it was closed"):
        await resource.use()
    assert fm.events_of("acquired", "released") == []
    assert (fm.leased, fm.leases) == ([], 0)
    fm.assert_all_closed()


async def test_pool_discards_a_resource_whose_check_fails_by_predicate() -> None:
    fm = FakeManager()
    fm.fail("check", ConnectionError, when=lambda call: call.resource is fm.resources[0])
    async with aiolease.Pool(fm, max_size=1) as pool:
        async with pool.acquire() as first:
            pass
        async with pool.acquire() as second:
            assert second is not first
    assert [r.id for r in fm.resources] == [1, 2]
    assert fm.resources[0].close_calls == 1
    fm.assert_all_closed()


async def test_pool_create_failure_by_call_number_reaches_the_caller() -> None:
    fm = FakeManager()
    fm.fail("create", OSError, calls=1)
    async with aiolease.Pool(fm, max_size=1) as pool:
        with pytest.raises(OSError, match=r"call #1"):
            await pool.acquire()
        async with pool.acquire() as resource:
            assert resource.id == 1
    fm.assert_all_closed()
