"""The per-lease connection proxy of the driver pools (asyncpg, psycopg, aiosqlite).

A driver pool's manager wraps each lease's connection in a :class:`LeaseProxy`
(:meth:`~aiolease.abc.Manager.wrap`) and detaches it at release
(:meth:`~aiolease.abc.Manager.detach`): from then on every use of the proxy
raises :class:`~aiolease.ResourceReleased` naming what was used, so a
connection kept past its lease never runs a statement on another holder's
lease. Like asyncpg's own ``PoolConnectionProxy``, it forwards attribute
reads to the connection, and, made once per connection class, has a forwarding
method for each public method of the connection's class (found by the normal
attribute lookup: no ``__getattr__`` miss on the path of a query). Methods are
checked when called, so a bound method taken during the lease refuses to run
after it.

What the lease makes that can run statements later (a cursor, a prepared
statement, a transaction object: the driver manager names the connection
methods that make them and the driver's classes of such objects) is handed out
behind a :class:`Guarded` proxy tied to the lease, which refuses every use once
the lease ended in the same way, ``async with``, ``await`` and ``async for``
included. A
guarded object's ``.connection`` is the lease's proxy, not the driver's
connection. Rows and values are never wrapped.

A callback the driver calls with the connection (asyncpg's listeners: the driver
manager names their ``add_``/``remove_`` methods) gets the lease that added it
instead, as asyncpg's own pool does: one kept past its lease is refused like any
other use. A lease passed to a connection method that takes a connection
(aiosqlite's ``backup()``) is passed on as the connection it stands for.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable, Collection, Coroutine
from typing import Any, ClassVar, Generic, TypeVar, cast

from ._errors import ResourceReleased

__all__ = ["Guarded", "LeaseProxies", "LeaseProxy", "proxy_class", "unwrap"]

C = TypeVar("C")


class LeaseProxy:
    """One lease of a pooled driver connection (see the module docstring)."""

    # Made only by LeaseProxies.wrap, which sets both slots: _aiolease_conn (None once
    # the lease ended) and _aiolease_origin (for repr and identity checks).
    __slots__ = ("__weakref__", "_aiolease_conn", "_aiolease_origin")

    # Set per connection class by proxy_class: the driver's classes of objects a lease
    # makes that can run statements later (handed out behind Guarded).
    _aiolease_guarded: ClassVar[tuple[type, ...]] = ()

    def _aiolease_unwrap(self) -> Any:
        """The driver connection (for aiolease's own use, e.g. ``atomic``).

        Raises:
            ResourceReleased: the lease has ended.
        """
        conn = self._aiolease_conn
        if conn is None:
            raise self._released("_aiolease_unwrap()")
        return conn

    def _aiolease_detach(self) -> None:
        _set_conn(self, None)

    def _released(self, what: str) -> ResourceReleased:
        return ResourceReleased(
            f"{what} on {self._aiolease_origin!r} after its lease from the pool ended: the "
            "connection may serve another holder now; acquire a new one"
        )

    def __getattr__(self, name: str) -> Any:
        conn = self._aiolease_conn
        if conn is None:
            raise self._released(f".{name}")
        value: Any = getattr(conn, name)
        if getattr(value, "__self__", None) is not conn:
            return value  # not a method of the connection (a row factory is the one set)

        def checked(*args: Any, **kwargs: Any) -> Any:
            if self._aiolease_conn is None:
                raise self._released(f"{name}()")
            return value(*args, **kwargs)

        return checked

    def __setattr__(self, name: str, value: Any) -> None:
        conn = self._aiolease_conn
        if conn is None:
            raise self._released(f"setting .{name}")
        setattr(conn, name, value)

    def __repr__(self) -> str:
        state = "" if self._aiolease_conn is not None else " (lease ended)"
        return f"<aiolease lease of {self._aiolease_origin!r}{state}>"


# The slots' own descriptors set them (__setattr__ forwards to the connection): a
# proxy is made and armed per lease without an __init__ call.
_new = object.__new__
_set_conn = LeaseProxy.__dict__["_aiolease_conn"].__set__
_set_origin = LeaseProxy.__dict__["_aiolease_origin"].__set__


def _forwarding(name: str) -> Callable[..., Any]:
    def method(self: LeaseProxy, *args: Any, **kwargs: Any) -> Any:
        conn = self._aiolease_conn
        if conn is None:
            raise self._released(f"{name}()")
        return getattr(conn, name)(*args, **kwargs)

    method.__name__ = method.__qualname__ = name
    return method


def _making(name: str) -> Callable[..., Any]:
    """A forwarding method for a connection method that makes a cursor, a prepared
    statement or a transaction object: what it makes is guarded by the lease."""

    def method(self: LeaseProxy, *args: Any, **kwargs: Any) -> Any:
        conn = self._aiolease_conn
        if conn is None:
            raise self._released(f"{name}()")
        made = getattr(conn, name)(*args, **kwargs)
        if inspect.iscoroutine(made):
            return _guard_result(self, made, None, f"{name}()")
        return _guard(self, made)

    method.__name__ = method.__qualname__ = name
    return method


def _taking(name: str) -> Callable[..., Any]:
    """A forwarding method for a connection method that takes a connection: a lease
    among its arguments is passed on as its driver connection."""

    def method(self: LeaseProxy, *args: Any, **kwargs: Any) -> Any:
        conn = self._aiolease_conn
        if conn is None:
            raise self._released(f"{name}()")
        args = tuple(_passed(arg, name) for arg in args)
        kwargs = {key: _passed(arg, name) for key, arg in kwargs.items()}
        return getattr(conn, name)(*args, **kwargs)

    method.__name__ = method.__qualname__ = name
    return method


def _passed(arg: Any, name: str) -> Any:
    """``arg`` as passed on to the connection method ``name``: a lease as its connection."""
    if not isinstance(arg, LeaseProxy):
        return arg
    conn = arg._aiolease_conn
    if conn is None:
        raise arg._released(f"passing it to {name}()")
    return conn


# Per driver connection: the relay made for each callback added to it, by
# (kind, the add method's other arguments, callback), with the cell holding the lease it
# passes, so that adding the callback again points the same relay at the new lease (the
# driver keeps one registration per callback) and its removal, in any later lease,
# removes its relay.
_relays: weakref.WeakKeyDictionary[
    Any, dict[tuple[Any, ...], tuple[Callable[..., Any], list[weakref.ref[LeaseProxy]]]]
] = weakref.WeakKeyDictionary()


def forget_relays(conn: Any, kinds: tuple[str, ...]) -> None:
    """Drop the relays of the callbacks of ``kinds`` (``"listener"`` for ``add_listener``)
    added to ``conn``: the driver removed them all (asyncpg's ``Connection.reset()``)."""
    relays = _relays.get(conn)
    if relays:
        for key in [key for key in relays if key[0] in kinds]:
            del relays[key]


def _relay(cell: list[weakref.ref[LeaseProxy]], callback: Any) -> Callable[..., Any]:
    """``callback``, called with the lease in ``cell`` in place of its driver connection
    (a coroutine function if ``callback`` is one: the driver tells them apart). The cell
    holds the lease weakly (the lease holds its connection, which holds the relay): once
    the lease is gone, the callback gets a lease that ended."""
    if inspect.iscoroutinefunction(callback):

        async def relay_async(conn: Any, *args: Any) -> Any:
            return await callback(_relayed(cell[0], conn), *args)

        return relay_async

    def relay(conn: Any, *args: Any) -> Any:
        return callback(_relayed(cell[0], conn), *args)

    return relay


def _relayed(ref: weakref.ref[LeaseProxy], conn: Any) -> Any:
    """What a relay passes for the driver's ``conn``: the lease that added the callback
    (a lease that ended in its place once it is gone)."""
    lease = ref()
    if lease is not None:
        return lease if conn is lease._aiolease_origin else conn
    ended = _new(_proxy_classes[type(conn)])
    _set_conn(ended, None)
    _set_origin(ended, conn)
    return ended


def _callback_method(name: str) -> Callable[..., Any]:
    """A forwarding method for ``add_<kind>``/``remove_<kind>`` of a callback the driver
    calls with the connection (the callback: the last argument, or ``callback=``)."""
    adding = name.startswith("add_")
    kind = name.partition("_")[2]

    def method(self: LeaseProxy, *args: Any, **kwargs: Any) -> Any:
        conn = self._aiolease_conn
        if conn is None:
            raise self._released(f"{name}()")
        if "callback" in kwargs:
            callback = kwargs.pop("callback")
        elif args:
            *rest, callback = args
            args = tuple(rest)
        else:
            return getattr(conn, name)(*args, **kwargs)  # the driver names what is missing
        key = (kind, args, tuple(sorted(kwargs.items())), callback)
        relays = _relays.setdefault(conn, {})
        if adding:
            made = relays.get(key)
            if made is None:
                cell = [weakref.ref(self)]
                made = relays[key] = (_relay(cell, callback), cell)
            else:
                made[1][0] = weakref.ref(self)
            relay = made[0]
        else:
            relay = relays.pop(key, (callback, []))[0]
        return getattr(conn, name)(*args, relay, **kwargs)

    method.__name__ = method.__qualname__ = name
    return method


_proxy_classes: dict[type, type[LeaseProxy]] = {}


def proxy_class(
    cls: type,
    making: Collection[str] = (),
    guarded: tuple[type, ...] = (),
    taking: Collection[str] = (),
    callbacks: Collection[str] = (),
) -> type[LeaseProxy]:
    """The LeaseProxy subclass for connections of class ``cls`` (made once): a forwarding
    method for each public method of ``cls``; those named in ``making`` hand out what
    they make behind :class:`Guarded`, as do the guarded objects' methods for what they
    return of the classes in ``guarded``; those in ``taking`` pass a lease argument on
    as its connection; those in ``callbacks`` (``add_``/``remove_`` methods) relay the
    callback with the lease in place of the connection."""
    proxy = _proxy_classes.get(cls)
    if proxy is None:
        kinds = (
            (making, _making),
            (taking, _taking),
            (callbacks, _callback_method),
        )
        methods = {
            name: next((make for names, make in kinds if name in names), _forwarding)(name)
            for name, value in inspect.getmembers(cls)
            if not name.startswith("_") and inspect.isfunction(value)
        }
        proxy = type(
            f"LeaseProxy[{cls.__name__}]",
            (LeaseProxy,),
            {"__slots__": (), "_aiolease_guarded": guarded, **methods},
        )
        _proxy_classes[cls] = proxy
    return proxy


class Guarded:
    """An object a lease made that can run statements later (a cursor, a prepared
    statement, a transaction object): it forwards to the object while the lease lasts
    and raises :class:`~aiolease.ResourceReleased` at any use after it (see the module
    docstring). Made per object by :func:`_guard`."""

    # _aiolease_obj: the driver's object; _aiolease_lease: the LeaseProxy of its lease.
    # Weakly referenceable, as the driver's cursors are.
    __slots__ = ("__weakref__", "_aiolease_lease", "_aiolease_obj")

    def _aiolease_check(self, what: str) -> Any:
        """The driver's object, if the lease still lasts."""
        lease = self._aiolease_lease
        if lease._aiolease_conn is None:
            raise lease._released(f"{type(self._aiolease_obj).__name__}{what}")
        return self._aiolease_obj

    def __getattr__(self, name: str) -> Any:
        obj = self._aiolease_check(f".{name}")
        value: Any = getattr(obj, name)
        if getattr(value, "__self__", None) is not obj:
            return _guard(self._aiolease_lease, value, self)  # not a method of the object

        def checked(*args: Any, **kwargs: Any) -> Any:
            self._aiolease_check(f".{name}()")
            return _guarded_result(self, name, value(*args, **kwargs))

        return checked

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._aiolease_check(f".{name}"), name, value)

    def __repr__(self) -> str:
        state = "" if self._aiolease_lease._aiolease_conn is not None else " (lease ended)"
        return f"<aiolease guarded {self._aiolease_obj!r}{state}>"


def _guarded_result(owner: Guarded, name: str, result: Any) -> Any:
    """What the method ``name`` of a guarded object returned, as the lease hands it out."""
    if inspect.iscoroutine(result):
        what = f"{type(owner._aiolease_obj).__name__}.{name}()"
        return _guard_result(owner._aiolease_lease, result, owner, what)
    return _guard(owner._aiolease_lease, result, owner)


def _guarded_method(name: str) -> Callable[..., Any]:
    def method(self: Guarded, *args: Any, **kwargs: Any) -> Any:
        obj = self._aiolease_check(f".{name}()")
        return _guarded_result(self, name, getattr(obj, name)(*args, **kwargs))

    method.__name__ = method.__qualname__ = name
    return method


async def _guarded_aenter(self: Guarded) -> Any:
    entered = await self._aiolease_check(" (async with)").__aenter__()
    return _guard(self._aiolease_lease, entered, self)


async def _guarded_aexit(self: Guarded, *exc_info: Any) -> Any:
    lease = self._aiolease_lease
    if lease._aiolease_conn is None:
        # The lease ended inside the block: the exit would run on the next holder's lease
        # (the release ended what the block left open, or discarded the connection), so it
        # does not run. The block's own exception propagates unchanged; without one, the
        # block's outcome is unknown (a pipeline reports its errors at its exit): say so.
        if exc_info[0] is None:
            raise lease._released(f"{type(self._aiolease_obj).__name__} (end of async with)")
        return None
    return await self._aiolease_obj.__aexit__(*exc_info)


def _guarded_await(self: Guarded) -> Any:
    obj = self._aiolease_obj
    what = f"{type(obj).__name__} (await)"
    return _guard_result(self._aiolease_lease, obj, self, what).__await__()


def _guarded_aiter(self: Guarded) -> Any:
    return _GuardedIterator(self, aiter(self._aiolease_check(" (async for)")))


async def _guarded_anext(self: Guarded) -> Any:
    return await anext(self._aiolease_check(" (anext)"))


class _GuardedIterator:
    """``async for`` over a guarded object: each step checked (each may run a FETCH);
    the rows are not wrapped."""

    __slots__ = ("_it", "_owner")

    def __init__(self, owner: Guarded, it: Any) -> None:
        self._owner = owner
        self._it = it

    def __aiter__(self) -> _GuardedIterator:
        return self

    async def __anext__(self) -> Any:
        self._owner._aiolease_check(" (async for)")
        return await anext(self._it)


_guarded_classes: dict[type, type[Guarded]] = {}


def _guarded_class(cls: type) -> type[Guarded]:
    """The Guarded subclass for objects of class ``cls`` (made once): a checked method
    for each public method of ``cls``, and the ``async with``/``await``/``async for``/
    ``anext`` protocol where ``cls`` has it."""
    guarded = _guarded_classes.get(cls)
    if guarded is None:
        methods: dict[str, Any] = {
            name: _guarded_method(name)
            for name, value in inspect.getmembers(cls)
            if not name.startswith("_") and inspect.isfunction(value)
        }
        if hasattr(cls, "__aexit__"):
            methods.update(__aenter__=_guarded_aenter, __aexit__=_guarded_aexit)
        if hasattr(cls, "__await__"):
            methods["__await__"] = _guarded_await
        if hasattr(cls, "__aiter__"):
            methods["__aiter__"] = _guarded_aiter
        if hasattr(cls, "__anext__"):
            methods["__anext__"] = _guarded_anext
        guarded = type(f"Guarded[{cls.__name__}]", (Guarded,), {"__slots__": (), **methods})
        _guarded_classes[cls] = guarded
    return guarded


_set_obj = Guarded.__dict__["_aiolease_obj"].__set__
_set_lease = Guarded.__dict__["_aiolease_lease"].__set__


def _guard(lease: LeaseProxy, value: Any, owner: Guarded | None = None) -> Any:
    """``value`` as the lease hands it out: the driver's connection as the lease's proxy, the
    object ``owner`` wraps as ``owner``, anything else a lease method or a guarded
    object returned behind Guarded when it can run statements later (a guarded class,
    or what a connection's making method returned: ``owner`` None), else unchanged."""
    if owner is not None:
        if value is owner._aiolease_obj:
            return owner
        if value is lease._aiolease_origin:
            return lease
        if not isinstance(value, type(lease)._aiolease_guarded):
            return value
    guarded = _new(_guarded_classes.get(type(value)) or _guarded_class(type(value)))
    _set_obj(guarded, value)
    _set_lease(guarded, lease)
    return guarded


async def _guard_result(lease: LeaseProxy, awaitable: Any, owner: Guarded | None, what: str) -> Any:
    """Await what a lease method or a guarded object's method (``what``, for the error)
    returned, and guard it (see _guard: with ``owner`` None only the classes the lease
    guards). Made during the lease and awaited after it, it is refused (and closed: it
    will never run)."""
    if lease._aiolease_conn is None:
        if isinstance(awaitable, Coroutine):
            awaitable.close()
        raise lease._released(what)
    value = await awaitable
    if owner is None and not isinstance(value, type(lease)._aiolease_guarded):
        return value
    return _guard(lease, value, owner)


def unwrap(conn: C) -> C:
    """The driver connection behind a lease proxy (``conn`` itself when it is none)."""
    unwrap_method = getattr(type(conn), "_aiolease_unwrap", None)
    return conn if unwrap_method is None else cast(C, unwrap_method(conn))


class LeaseProxies(Generic[C]):
    """Mixed into a driver manager (before ``Manager``): each lease hands out a
    :class:`LeaseProxy`, detached at release.

    A driver manager names the connection methods that make objects able to run
    statements later (``_making``: cursors, prepared statements, transactions) and the
    driver's classes of such objects (``_guarded``), handed out behind
    :class:`Guarded`; the methods that take a connection argument (``_taking``); and
    the ``add_``/``remove_`` methods of callbacks called with the connection
    (``_callbacks``)."""

    _making: ClassVar[frozenset[str]] = frozenset()
    _guarded: ClassVar[tuple[type, ...]] = ()
    _taking: ClassVar[frozenset[str]] = frozenset()
    _callbacks: ClassVar[frozenset[str]] = frozenset()

    def wrap(self, resource: C) -> C:
        """A proxy for this lease that raises :class:`~aiolease.ResourceReleased` once it ended."""
        cls = type(resource)
        proxy = _new(
            _proxy_classes.get(cls)
            or proxy_class(cls, self._making, self._guarded, self._taking, self._callbacks)
        )
        _set_conn(proxy, resource)
        _set_origin(proxy, resource)
        return proxy  # type: ignore[return-value]  # typed as the connection it stands for

    def detach(self, handle: C) -> None:
        """The lease ended: the proxy refuses every use from now on."""
        if isinstance(handle, LeaseProxy):
            _set_conn(handle, None)
