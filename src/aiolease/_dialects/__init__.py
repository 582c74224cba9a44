"""Transaction dialects: how :func:`aiolease.atomic` speaks to each driver's connections.

The registry maps connection classes to :class:`~aiolease.abc.Dialect` objects.
Built-in dialects are registered by the *name* of the class they serve
(``module``, ``qualname``), so finding them needs nothing more than
``import aiolease``: a driver module is imported only when a connection of its
type is first seen (by then the driver is necessarily loaded).
"""

from __future__ import annotations

import importlib
from typing import Any

from ._base import Dialect

__all__ = ["Dialect", "dialect_for", "register_dialect"]

# (module, qualname) of a connection class -> "module:attribute" of its dialect factory.
_LAZY: dict[tuple[str, str], str] = {
    ("asyncpg.connection", "Connection"): "aiolease._dialects.asyncpg:AsyncpgDialect",
    ("asyncpg.pool", "PoolConnectionProxy"): "aiolease._dialects.asyncpg:AsyncpgDialect",
    # psycopg sets __module__ = "psycopg" on its public classes.
    ("psycopg", "AsyncConnection"): "aiolease._dialects.psycopg:PsycopgDialect",
    ("psycopg.connection_async", "AsyncConnection"): "aiolease._dialects.psycopg:PsycopgDialect",
    ("aiosqlite.core", "Connection"): "aiolease._dialects.sqlite:aiosqlite_dialect",
    ("aiosqlite", "Connection"): "aiolease._dialects.sqlite:aiosqlite_dialect",
    (
        "aiolease.testing._fake_connection",
        "FakeConnection",
    ): "aiolease.testing._fake_connection:FakeDialect",
}

# Explicit registrations (register_dialect), consulted before the lazy names.
_EXPLICIT: dict[type, Dialect[Any]] = {}
_BY_NAME: dict[str, Dialect[Any]] = {}
# Resolved lookups: the exact connection type -> its dialect (None: unsupported).
_CACHE: dict[type, Dialect[Any] | None] = {}
# One instance per built-in dialect factory.
_BUILTIN: dict[str, Dialect[Any]] = {}

SUPPORTED = "asyncpg, psycopg (AsyncConnection), aiosqlite and aiolease.testing.FakeConnection"


def register_dialect(connection_type: type | str, dialect: Dialect[Any]) -> None:
    """Teach :func:`aiolease.atomic` to drive connections of ``connection_type``.

    Args:
        connection_type: the connection class (subclasses match too), or its
            dotted name ``"package.module.ClassName"`` so that registering does
            not import the driver.
        dialect: the :class:`~aiolease.abc.Dialect` that issues the transaction
            control statements for those connections.

    Raises:
        TypeError: ``dialect`` is not a Dialect, or ``connection_type`` is
            neither a class nor a dotted name.
    """
    if not isinstance(dialect, Dialect):
        raise TypeError(
            f"dialect must be an aiolease.abc.Dialect instance, got {type(dialect).__name__}"
        )
    if isinstance(connection_type, type):
        _EXPLICIT[connection_type] = dialect
    elif isinstance(connection_type, str) and "." in connection_type:
        _BY_NAME[connection_type] = dialect
    else:
        raise TypeError(
            "connection_type must be a class or a dotted name like 'package.module.Class', "
            f"got {connection_type!r}"
        )
    _CACHE.clear()


def _builtin(path: str) -> Dialect[Any]:
    dialect = _BUILTIN.get(path)
    if dialect is None:
        module, _, attr = path.partition(":")
        dialect = _BUILTIN[path] = getattr(importlib.import_module(module), attr)()
    return dialect


def _resolve(cls: type) -> Dialect[Any] | None:
    for klass in cls.__mro__:
        found = _EXPLICIT.get(klass)
        if found is not None:
            return found
        found = _BY_NAME.get(f"{klass.__module__}.{klass.__qualname__}")
        if found is not None:
            return found
        path = _LAZY.get((klass.__module__, klass.__qualname__))
        if path is not None:
            return _builtin(path)
    return None


def dialect_for(conn: object) -> Dialect[Any]:
    """The dialect serving ``conn``.

    Raises:
        TypeError: no dialect is registered for the connection's type.
    """
    cls = type(conn)
    try:
        dialect = _CACHE[cls]
    except KeyError:
        dialect = _CACHE[cls] = _resolve(cls)
    if dialect is None:
        raise TypeError(
            f"aiolease.atomic() does not know how to drive a {cls.__module__}.{cls.__qualname__}: "
            f"the supported connections are {SUPPORTED}; "
            "teach it others with aiolease.register_dialect(ConnectionType, dialect)"
        )
    return dialect


def find_dialect(obj: object) -> Dialect[Any] | None:
    """Like :func:`dialect_for` but returns None for an unsupported object."""
    cls = type(obj)
    try:
        return _CACHE[cls]
    except KeyError:
        dialect = _CACHE[cls] = _resolve(cls)
        return dialect
