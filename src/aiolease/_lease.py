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
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Generic, TypeVar, cast

from ._errors import ResourceReleased

__all__ = ["LeaseProxies", "LeaseProxy", "proxy_class", "unwrap"]

C = TypeVar("C")


class LeaseProxy:
    """One lease of a pooled driver connection (see the module docstring)."""

    # Made only by LeaseProxies.wrap, which sets both slots: _aiolease_conn (None once
    # the lease ended) and _aiolease_origin (for repr and identity checks).
    __slots__ = ("__weakref__", "_aiolease_conn", "_aiolease_origin")

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
        if not callable(value) or isinstance(value, type):
            return value

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


_proxy_classes: dict[type, type[LeaseProxy]] = {}


def proxy_class(cls: type) -> type[LeaseProxy]:
    """The LeaseProxy subclass for connections of class ``cls`` (made once): a forwarding
    method for each public method of ``cls``."""
    proxy = _proxy_classes.get(cls)
    if proxy is None:
        methods = {
            name: _forwarding(name)
            for name, value in inspect.getmembers(cls)
            if not name.startswith("_") and inspect.isfunction(value)
        }
        proxy = type(f"LeaseProxy[{cls.__name__}]", (LeaseProxy,), {"__slots__": (), **methods})
        _proxy_classes[cls] = proxy
    return proxy


def unwrap(conn: C) -> C:
    """The driver connection behind a lease proxy (``conn`` itself when it is none)."""
    unwrap_method = getattr(type(conn), "_aiolease_unwrap", None)
    return conn if unwrap_method is None else cast(C, unwrap_method(conn))


class LeaseProxies(Generic[C]):
    """Mixed into a driver manager (before ``Manager``): each lease hands out a
    :class:`LeaseProxy`, detached at release."""

    def wrap(self, resource: C) -> C:
        """A proxy for this lease that raises :class:`~aiolease.ResourceReleased` once it ended."""
        cls = type(resource)
        proxy = _new(_proxy_classes.get(cls) or proxy_class(cls))
        _set_conn(proxy, resource)
        _set_origin(proxy, resource)
        return proxy  # type: ignore[return-value]  # typed as the connection it stands for

    def detach(self, handle: C) -> None:
        """The lease ended: the proxy refuses every use from now on."""
        if isinstance(handle, LeaseProxy):
            _set_conn(handle, None)
