"""``FakeManager``: a pool :class:`~aiolease.abc.Manager` double with recorded events and faults.

A test builds a ``FakeManager()``, arms it with rules (``fail``, ``delay``,
``block``) and hands it to a :class:`~aiolease.Pool`. Every operation the pool
performs is numbered per kind (the 1st ``create``, the 2nd ``create``, ...)
and appended to :attr:`FakeManager.events`, so a test can assert exactly what
the pool did, inject a failure on a precise call, or stop a call at its await
and cancel it there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final, Literal, TypeAlias, cast, get_args

from .. import _validate
from ..abc import Manager, ResourceInfo

__all__ = [
    "Call",
    "FakeManager",
    "FakeResource",
    "Gate",
    "InjectedFault",
    "LifecycleEvent",
    "Op",
    "ResourceKilled",
    "ResourceMisuse",
    "Rule",
]

#: The operations a rule can target. ``use`` is :meth:`FakeResource.use`.
Op: TypeAlias = Literal["create", "check", "reset", "close", "use"]
_OPS: Final = ("create", "check", "reset", "close", "use")
#: The kinds of :class:`LifecycleEvent`.
EventKind: TypeAlias = Literal["created", "checked", "reset", "closed", "acquired", "released"]
_KINDS: Final = get_args(EventKind)

#: What ``fail(error=...)`` accepts: an exception class (instantiated with a
#: message per call), an exception instance (raised as is on every matching
#: call), or a factory called with the :class:`Call`.
ErrorSpec: TypeAlias = "BaseException | type[BaseException] | Callable[[Call], BaseException]"


class InjectedFault(Exception):
    """The default error raised by :meth:`FakeManager.fail`."""


class ResourceMisuse(RuntimeError):
    """A :class:`FakeResource` was used outside a lease: after release or close, or never leased."""


class ResourceKilled(ConnectionError):
    """The resource was killed by :meth:`FakeResource.kill` (a dropped connection)."""


@dataclass(frozen=True, slots=True)
class Call:
    """One numbered call of a manager operation, passed to ``when=`` predicates and error factories.

    Attributes:
        op: ``"create"``, ``"check"``, ``"reset"``, ``"close"`` or ``"use"``.
        number: 1-based count of calls of ``op`` on this manager, this one included.
        resource: the resource operated on (``None`` for ``create``).
        info: the pool's :class:`~aiolease.abc.ResourceInfo` (``check``/``reset`` only).
    """

    op: Op
    number: int
    resource: FakeResource | None = None
    info: ResourceInfo | None = None


@dataclass(frozen=True, slots=True)
class LifecycleEvent:
    """One lifecycle event recorded by :class:`FakeManager`.

    Attributes:
        kind: ``"created"``, ``"checked"``, ``"reset"``, ``"closed"`` (the
            manager operations, recorded when the call ends, successfully or
            not), ``"acquired"`` or ``"released"`` (the pool's lease hooks).
        resource: id of the resource (``None`` for a ``create`` that failed).
        lease: the lease number for ``acquired``/``released``/``reset`` (a
            ``reset`` belongs to the lease that just ended), else ``None``.
        call: the operation's call number (``None`` for the lease hooks).
        error: the exception the call raised (``CancelledError`` when it was
            cancelled), ``None`` when it succeeded.
        time: ``loop.time()`` when the event was recorded.
    """

    kind: EventKind
    resource: int | None
    lease: int | None = None
    call: int | None = None
    error: BaseException | None = field(default=None, compare=False)
    time: float = field(default=0.0, compare=False)

    @property
    def ok(self) -> bool:
        """Whether the operation succeeded."""
        return self.error is None

    def __str__(self) -> str:
        what = f"{self.kind} r{self.resource}" if self.resource is not None else self.kind
        if self.lease is not None:
            what += f" lease {self.lease}"
        if self.error is not None:
            what += f" FAILED {self.error!r}"
        return what


class Gate:
    """Holds the matching calls at their await until :meth:`open` is called.

    Made by :meth:`FakeManager.block`. A blocked call can be cancelled (the
    cancellation then happens exactly at that await), or let through with
    :meth:`open`.
    """

    __slots__ = ("_arrived", "_blocked", "_changed", "_open", "_openings")

    def __init__(self) -> None:
        self._open = False
        # How many times open() was called: a call blocked before an opening is let
        # through by it, even if close() comes before the call runs again.
        self._openings = 0
        self._arrived: list[Call] = []
        self._blocked = 0
        # One asyncio.Event for both directions (arrival, opening); made lazily
        # so a Gate can be built before the loop runs.
        self._changed: asyncio.Event | None = None

    @property
    def arrived(self) -> list[Call]:
        """Every call that reached the gate so far, in order."""
        return list(self._arrived)

    @property
    def blocked(self) -> int:
        """How many calls are waiting at the gate right now."""
        return self._blocked

    @property
    def is_open(self) -> bool:
        return self._open

    def _event(self) -> asyncio.Event:
        if self._changed is None:
            self._changed = asyncio.Event()
        return self._changed

    def _notify(self) -> None:
        ev = self._event()
        ev.set()
        self._changed = None  # waiters hold the old, set event; the next wait gets a fresh one

    async def wait_arrived(self, count: int = 1) -> Call:
        """Wait until ``count`` calls in total have reached the gate; return the ``count``-th.

        Raises:
            ValueError: ``count`` is below 1.
            TypeError: ``count`` is not an int (a float such as ``inf`` would never be reached).
        """
        _validate.integer("count", count, 1)
        while len(self._arrived) < count:
            await self._event().wait()
        return self._arrived[count - 1]

    def open(self) -> None:
        """Let every blocked call, and every later matching call, through."""
        self._open = True
        self._openings += 1
        self._notify()

    def close(self) -> None:
        """Block later matching calls again (calls blocked when :meth:`open` was called are
        let through all the same)."""
        self._open = False

    async def _pass(self, call: Call) -> None:
        self._arrived.append(call)
        self._notify()
        if self._open:
            return
        self._blocked += 1
        openings = self._openings
        try:
            while not self._open and self._openings == openings:
                await self._event().wait()
        finally:
            self._blocked -= 1

    def __repr__(self) -> str:
        state = "open" if self._open else "closed"
        return f"<Gate {state} arrived={len(self._arrived)} blocked={self._blocked}>"


class Rule:
    """One armed behaviour of a :class:`FakeManager` (returned by ``fail``/``delay``/``block``).

    Attributes:
        op: the operation it targets.
        applied: how many calls it has matched so far.
        gate: the :class:`Gate` of a ``block`` rule, else ``None``.
    """

    __slots__ = ("_error", "_manager", "applied", "calls", "delay", "gate", "op", "when")

    def __init__(
        self,
        manager: FakeManager,
        op: Op,
        *,
        calls: frozenset[int] | None,
        when: Callable[[Call], bool] | None,
        error: ErrorSpec | None = None,
        delay: float = 0.0,
        gate: Gate | None = None,
    ) -> None:
        self._manager = manager
        self.op = op
        self.calls = calls
        self.when = when
        self._error = error
        self.delay = delay
        self.gate = gate
        self.applied = 0

    def matches(self, call: Call) -> bool:
        if call.op != self.op:
            return False
        if self.calls is not None and call.number not in self.calls:
            return False
        return self.when is None or bool(self.when(call))

    def make_error(self, call: Call) -> BaseException | None:
        spec = self._error
        if spec is None:
            return None
        if isinstance(spec, BaseException):
            return spec
        if isinstance(spec, type):
            exc: BaseException = spec(f"injected {call.op} failure (call #{call.number})")
            return exc
        made = spec(call)
        if not isinstance(made, BaseException):
            raise TypeError(
                f"the error factory of {self!r} returned {made!r}, not an exception instance"
            )
        return made

    def remove(self) -> None:
        """Disarm the rule (calls already past it are not affected)."""
        try:
            self._manager._rules.remove(self)
        except ValueError:
            pass

    def __repr__(self) -> str:
        kind = "block" if self.gate else "fail" if self._error is not None else "delay"
        return f"<Rule {kind} {self.op} calls={sorted(self.calls or ())} applied={self.applied}>"


class FakeResource:
    """The resource a :class:`FakeManager` creates: knows its lease and refuses use outside it.

    Attributes:
        id: 1-based creation number on its manager (``r1``, ``r2``, ...).
        lease: the current lease number, ``None`` while not handed out.
        last_lease: the most recent lease number (``None`` if never leased).
        leases: how many times it was handed out.
        uses: how many times :meth:`use` succeeded.
        closed: whether ``close`` was called on it (set when the call starts).
        close_calls: how many times ``close`` was called on it (1 after a clean life).
        killed: whether :meth:`kill` was called.
        data: a free dict for tests.
    """

    __slots__ = (
        "__weakref__",
        "close_calls",
        "closed",
        "data",
        "id",
        "killed",
        "last_lease",
        "lease",
        "leases",
        "manager",
        "uses",
    )

    def __init__(self, manager: FakeManager, id: int) -> None:
        self.manager = manager
        self.id = id
        self.lease: int | None = None
        self.last_lease: int | None = None
        self.leases = 0
        self.uses = 0
        self.closed = False
        self.close_calls = 0
        self.killed = False
        self.data: dict[str, object] = {}

    def ensure_usable(self) -> None:
        """Raise unless the resource is leased, open and alive.

        Raises:
            ResourceMisuse: it was closed, or released or never handed out (known
                only when its manager has lease hooks: ``FakeManager(lease_hooks=True)``).
            ResourceKilled: it was killed.
        """
        if self.closed:
            raise ResourceMisuse(f"{self!r} used after it was closed")
        if self.lease is None and self.manager.lease_hooks:
            if self.last_lease is None:
                raise ResourceMisuse(f"{self!r} used but it was never handed out by a pool")
            raise ResourceMisuse(
                f"{self!r} used after its lease {self.last_lease} ended (it was released to the "
                "pool); use a resource only while you hold it"
            )
        if self.killed:
            raise ResourceKilled(f"{self!r} was killed")

    async def use(self) -> int:
        """Simulate one round trip (``"use"`` rules apply); return this resource's use count.

        Raises:
            ResourceMisuse: not leased, or closed (checked before and after the await).
            ResourceKilled: the resource was killed.
        """
        self.ensure_usable()
        await self.manager._apply(self.manager._begin("use", self, None))
        self.ensure_usable()  # the lease may have ended while the call was in flight
        self.uses += 1
        return self.uses

    def kill(self) -> None:
        """Break it like a dropped connection: ``use``, ``check`` and ``reset`` then raise
        :class:`ResourceKilled`, and :meth:`FakeManager.is_fatal` says yes for any error."""
        self.killed = True

    def __repr__(self) -> str:
        state = (
            "closed"
            if self.closed
            else f"lease {self.lease}"
            if self.lease is not None
            else "killed"
            if self.killed
            else "idle"
        )
        return f"<FakeResource r{self.id} {state}>"


class FakeManager(Manager[FakeResource]):
    """A :class:`~aiolease.abc.Manager` that records everything and fails on demand.

    Example::

        fm = FakeManager()
        fm.fail("create", calls=[1, 2], error=ConnectionError)  # backend down twice
        gate = fm.block("reset", calls=1)                        # hold the 1st reset
        async with Pool(fm, max_size=2) as pool: ...
        fm.assert_all_closed()

    Rules for one call apply in this order: every matching gate (waits until
    opened), then the sum of matching delays (``asyncio.sleep``, so virtual
    time applies), then the first matching failure raises. A call matches a
    rule when its number is in ``calls`` (if given) and ``when(call)`` is true
    (if given); with neither, every call of that operation matches.

    Args:
        fatal: exception types that :meth:`is_fatal` reports as fatal (a pool
            then closes the resource instead of reusing it).
        lease_hooks: with False, the manager keeps the ``Manager`` defaults of
            the lease hooks (``on_acquire``, ``on_release``), so a pool takes the
            path it takes for a manager without them, as most do: test the path
            you ship. Leases are then not recorded (``leased``, ``leases``, the
            ``"acquired"``/``"released"`` events and the lease checks of
            :meth:`assert_no_violations` stay empty).

    Attributes:
        events: every :class:`LifecycleEvent`, in order.
        resources: every resource created, in order.
        calls: number of calls started per operation.
        violations: protocol breaches seen (a resource handed out twice,
            released while not leased, checked/reset/closed after close,
            closed twice). Should stay empty with a correct pool.
        creating: creates in flight now.
        max_leased: the most resources leased at once.
        max_alive: the most resources alive at once (creates in flight plus
            created resources whose ``close`` had not finished).
    """

    def __new__(
        cls, *, fatal: tuple[type[BaseException], ...] = (), lease_hooks: bool = True
    ) -> FakeManager:
        if not lease_hooks and cls is FakeManager:
            cls = _FakeManagerWithoutLeaseHooks
        return super().__new__(cls)

    def __init__(
        self, *, fatal: tuple[type[BaseException], ...] = (), lease_hooks: bool = True
    ) -> None:
        if not isinstance(lease_hooks, bool):
            raise TypeError(f"lease_hooks must be a bool, got {lease_hooks!r}")
        if _is_exception_class(fatal):  # one class, as isinstance() takes it
            fatal = (cast(type[BaseException], fatal),)
        if not isinstance(fatal, tuple) or not all(_is_exception_class(t) for t in fatal):
            raise TypeError(f"fatal must be a tuple of exception classes, got {fatal!r}")
        self.lease_hooks = lease_hooks
        self.fatal = fatal
        self.events: list[LifecycleEvent] = []
        self.resources: list[FakeResource] = []
        self.calls: dict[str, int] = dict.fromkeys(_OPS, 0)
        self.violations: list[str] = []
        self.creating = 0
        self.max_leased = 0
        self.max_alive = 0
        self._rules: list[Rule] = []
        self._lease_counter = 0
        self._leased: dict[int, FakeResource] = {}
        self._closing_done = 0

    # -- arming -------------------------------------------------------------

    def fail(
        self,
        op: Op,
        error: ErrorSpec = InjectedFault,
        *,
        calls: int | Iterable[int] | None = None,
        when: Callable[[Call], bool] | None = None,
    ) -> Rule:
        """Make matching calls of ``op`` raise ``error``.

        Args:
            op: ``"create"``, ``"check"``, ``"reset"``, ``"close"`` or ``"use"``.
            error: an exception class (instantiated per call with a message
                naming the call), an instance (raised as is), or a factory
                taking the :class:`Call`.
            calls: 1-based call numbers of ``op`` to fail (``calls=[1, 2]``:
                the first two).
            when: a predicate on the :class:`Call`.

        Raises:
            ValueError: unknown ``op`` or a call number below 1.
            TypeError: ``error`` is none of the three, or ``when`` (or the factory)
                cannot be called with the Call.
        """
        if not (
            isinstance(error, BaseException)
            or _is_exception_class(error)
            or (callable(error) and not isinstance(error, type))
        ):
            raise TypeError(
                "error must be an exception class, an exception instance or a factory "
                f"taking the Call; got {error!r}"
            )
        if not isinstance(error, BaseException | type):
            _validate.check_arity("error: a factory", error, 1, "one argument (the Call)")
        return self._add(
            Rule(self, _check_op(op), calls=_calls(calls), when=_when(when), error=error)
        )

    def delay(
        self,
        op: Op,
        seconds: float,
        *,
        calls: int | Iterable[int] | None = None,
        when: Callable[[Call], bool] | None = None,
    ) -> Rule:
        """Make matching calls of ``op`` take ``seconds`` (``asyncio.sleep``) before finishing.

        Raises:
            ValueError: unknown ``op``, a negative or non-finite ``seconds``,
                or a call number below 1.
            TypeError: ``seconds`` is not a number.
        """
        seconds = _validate.number("seconds", seconds, inclusive=True)
        return self._add(
            Rule(self, _check_op(op), calls=_calls(calls), when=_when(when), delay=seconds)
        )

    def block(
        self,
        op: Op,
        *,
        calls: int | Iterable[int] | None = None,
        when: Callable[[Call], bool] | None = None,
    ) -> Gate:
        """Hold matching calls of ``op`` at an await until the returned gate is opened.

        Use it to cancel deterministically at that await::

            gate = fm.block("create", calls=1)
            task = asyncio.create_task(pool.acquire())
            await gate.wait_arrived()   # the 1st create is now suspended
            task.cancel()

        Raises:
            ValueError: unknown ``op`` or a call number below 1.
        """
        gate = Gate()
        self._add(Rule(self, _check_op(op), calls=_calls(calls), when=_when(when), gate=gate))
        return gate

    def clear_rules(self) -> None:
        """Disarm every rule (gates already waiting stay closed until opened)."""
        self._rules.clear()

    @property
    def rules(self) -> list[Rule]:
        return list(self._rules)

    def _add(self, rule: Rule) -> Rule:
        self._rules.append(rule)
        return rule

    # -- counters -----------------------------------------------------------

    @property
    def created(self) -> int:
        """Resources created successfully."""
        return len(self.resources)

    @property
    def closed(self) -> int:
        """Resources on which ``close`` was called at least once."""
        return sum(1 for r in self.resources if r.closed)

    @property
    def open_resources(self) -> list[FakeResource]:
        """Resources created and not closed."""
        return [r for r in self.resources if not r.closed]

    @property
    def leased(self) -> list[FakeResource]:
        """Resources handed out right now."""
        return list(self._leased.values())

    @property
    def leases(self) -> int:
        """Leases started so far (the last lease number)."""
        return self._lease_counter

    def events_of(self, *kinds: str, ok: bool | None = None) -> list[LifecycleEvent]:
        """The events of the given kinds (all when none given), optionally filtered by success.

        Raises:
            ValueError: a kind that is not one (``"close"`` for ``"closed"``): it would
                match nothing, and an assertion that none happened would pass vacuously.
            TypeError: ``ok`` is not True, False or None (``ok="yes"`` matches nothing).
        """
        if ok is not None and not isinstance(ok, bool):
            raise TypeError(f"ok must be True, False or None, got {ok!r}")
        unknown = [k for k in kinds if k not in _KINDS]
        if unknown:
            raise ValueError(
                f"kinds must be among {', '.join(map(repr, _KINDS))}; got "
                f"{', '.join(map(repr, unknown))}"
            )
        return [
            e for e in self.events if (not kinds or e.kind in kinds) and (ok is None or e.ok is ok)
        ]

    def assert_all_closed(self) -> None:
        """Assert every created resource was closed exactly once and no violation was seen.

        Raises:
            AssertionError: naming each resource still open or closed more than
                once, and each violation.
        """
        problems = [
            f"{r!r} closed {r.close_calls} times (expected exactly once)"
            for r in self.resources
            if r.close_calls != 1
        ]
        problems += self.violations
        if problems:
            raise AssertionError("FakeManager: " + "; ".join(problems))

    def assert_no_violations(self) -> None:
        """Raise ``AssertionError`` listing the protocol violations seen, if any."""
        if self.violations:
            raise AssertionError("FakeManager violations: " + "; ".join(self.violations))

    # -- the Manager protocol ----------------------------------------------

    async def create(self) -> FakeResource:
        call = self._begin("create", None, None)
        self.creating += 1
        self._note_alive()
        try:
            await self._apply(call)
        except BaseException as exc:
            self.creating -= 1
            self._record("created", None, call=call.number, error=exc)
            raise
        self.creating -= 1
        resource = FakeResource(self, len(self.resources) + 1)
        self.resources.append(resource)
        self._record("created", resource.id, call=call.number)
        return resource

    async def check(self, resource: FakeResource, info: ResourceInfo) -> None:
        call = self._begin("check", resource, info)
        if resource.closed:
            self._violation(f"check on closed {resource!r}")
        try:
            await self._apply(call)
            if resource.killed:
                raise ResourceKilled(f"{resource!r} was killed")
            if resource.closed:
                raise ResourceMisuse(f"check on closed {resource!r}")
        except BaseException as exc:
            self._record("checked", resource.id, call=call.number, error=exc)
            raise
        self._record("checked", resource.id, call=call.number)

    async def reset(self, resource: FakeResource, info: ResourceInfo) -> None:
        call = self._begin("reset", resource, info)
        lease = resource.last_lease
        if resource.closed:
            self._violation(f"reset on closed {resource!r}")
        try:
            await self._apply(call)
            if resource.killed:
                raise ResourceKilled(f"{resource!r} was killed")
            if resource.closed:
                raise ResourceMisuse(f"reset on closed {resource!r}")
        except BaseException as exc:
            self._record("reset", resource.id, lease=lease, call=call.number, error=exc)
            raise
        self._record("reset", resource.id, lease=lease, call=call.number)

    async def close(self, resource: FakeResource) -> None:
        call = self._begin("close", resource, None)
        resource.close_calls += 1
        if resource.closed:
            self._violation(f"{resource!r} closed again (close call {resource.close_calls})")
        resource.closed = True
        if resource.lease is not None:
            # Closing a resource that is still handed out is legitimate (e.g.
            # aclose timed out), but the lease is over: uses must fail.
            self._leased.pop(resource.id, None)
            resource.lease = None
        try:
            await self._apply(call)
        except BaseException as exc:
            self._record("closed", resource.id, call=call.number, error=exc)
            raise
        finally:
            if resource.close_calls == 1:
                self._closing_done += 1
        self._record("closed", resource.id, call=call.number)

    def on_acquire(self, resource: FakeResource, info: ResourceInfo) -> None:
        if resource.closed:
            self._violation(f"closed {resource!r} handed out")
        if resource.lease is not None:
            self._violation(f"{resource!r} handed out while already in lease {resource.lease}")
        self._lease_counter += 1
        resource.lease = resource.last_lease = self._lease_counter
        resource.leases += 1
        self._leased[resource.id] = resource
        self.max_leased = max(self.max_leased, len(self._leased))
        self._record("acquired", resource.id, lease=resource.lease)

    def on_release(self, resource: FakeResource, info: ResourceInfo) -> None:
        lease = resource.lease
        if lease is None:
            self._violation(f"{resource!r} released but it was not handed out")
        self._leased.pop(resource.id, None)
        resource.lease = None
        self._record("released", resource.id, lease=lease)

    def is_fatal(self, resource: FakeResource, exc: BaseException) -> bool:
        return resource.killed or isinstance(exc, self.fatal)

    # -- internals ------------------------------------------------------------

    def _begin(self, op: Op, resource: FakeResource | None, info: ResourceInfo | None) -> Call:
        self.calls[op] += 1
        return Call(op, self.calls[op], resource, info)

    async def _apply(self, call: Call) -> None:
        # Decide which rules apply when the call starts, so a rule armed or
        # removed while this call waits does not change its fate.
        rules = [r for r in self._rules if r.matches(call)]
        for rule in rules:
            rule.applied += 1
        for rule in rules:
            if rule.gate is not None:
                await rule.gate._pass(call)
        total = sum(rule.delay for rule in rules)
        if total > 0:
            await asyncio.sleep(total)
        for rule in rules:
            error = rule.make_error(call)
            if error is not None:
                raise error

    def _note_alive(self) -> None:
        alive = self.creating + len(self.resources) - self._closing_done
        self.max_alive = max(self.max_alive, alive)

    def _violation(self, text: str) -> None:
        self.violations.append(text)

    def _record(
        self,
        kind: EventKind,
        resource: int | None,
        *,
        lease: int | None = None,
        call: int | None = None,
        error: BaseException | None = None,
    ) -> None:
        try:
            now = asyncio.get_running_loop().time()
        except RuntimeError:
            now = 0.0
        self.events.append(LifecycleEvent(kind, resource, lease, call, error, now))

    def __repr__(self) -> str:
        return (
            f"<FakeManager created={self.created} open={len(self.open_resources)} "
            f"leased={len(self._leased)} rules={len(self._rules)}>"
        )


def _check_op(op: str) -> Op:
    if op not in _OPS:
        raise ValueError(f"op must be one of {', '.join(map(repr, _OPS))}; got {op!r}")
    return cast(Op, op)


def _calls(calls: int | Iterable[int] | None) -> frozenset[int] | None:
    if calls is None:
        return None
    # (bytes iterate as ints: calls=b"1" would quietly mean call 49)
    if isinstance(calls, int | str | bytes | bytearray | memoryview):
        items: list[object] = [calls]
    else:
        try:
            items = list(calls)
        except TypeError:  # neither an int nor an iterable (calls=1.5)
            items = [calls]
    # (a bool is an int, and True == 1: calls=True would quietly mean the first call)
    bad = [n for n in items if isinstance(n, bool) or not isinstance(n, int) or n < 1]
    if bad or not items:
        raise ValueError(f"calls must be call numbers >= 1 (1 = the first call); got {calls!r}")
    return frozenset(cast(list[int], items))


def _when(when: Callable[[Call], bool] | None) -> Callable[[Call], bool] | None:
    if when is not None and not callable(when):
        raise TypeError(f"when must be a callable taking the Call, or None; got {when!r}")
    if when is not None:
        _validate.check_arity("when: a predicate", when, 1, "one argument (the Call)")
    return when


def _is_exception_class(obj: object) -> bool:
    return isinstance(obj, type) and issubclass(obj, BaseException)


class _FakeManagerWithoutLeaseHooks(FakeManager):
    """``FakeManager(lease_hooks=False)``: the lease hooks are the Manager's own
    defaults, which a pool skips (it only calls hooks a manager overrides)."""

    on_acquire = Manager.on_acquire
    on_release = Manager.on_release
