"""Registry that lets ``aiolease.testing.leak_check`` find the objects created inside it.

Pools, transactions and limiters call :func:`track` when they are created. The
call costs one truth test while no leak check is active. Each active
``leak_check`` owns a :class:`Tracker`; a tracked object is recorded (weakly)
in every active tracker, and on exit the tracker asks each one still alive for
its :meth:`Trackable._aiolease_leaks` report.
"""

from __future__ import annotations

import weakref
from typing import Protocol

__all__ = ["Trackable", "Tracker", "active", "is_broken", "mark_broken", "track"]


class Trackable(Protocol):
    def _aiolease_leaks(self) -> list[str]:
        """Describe what this object still holds (empty when it is clean)."""
        ...


class Tracker:
    """Collects weak references to the trackable objects created while it is active."""

    __slots__ = ("_objects",)

    def __init__(self) -> None:
        self._objects: list[weakref.ref[Trackable]] = []

    def add(self, obj: Trackable) -> None:
        self._objects.append(weakref.ref(obj))

    def objects(self) -> list[Trackable]:
        return [o for o in (r() for r in self._objects) if o is not None]

    def leaks(self) -> list[str]:
        problems: list[str] = []
        for obj in self.objects():
            problems.extend(obj._aiolease_leaks())
        return problems


#: Trackers of the leak checks now active (a list: checks may nest).
active: list[Tracker] = []


def track(obj: Trackable) -> None:
    """Record ``obj`` in every active tracker (a no-op when none is active)."""
    if active:
        for tracker in active:
            tracker.add(obj)


# Resources known to be broken (e.g. a connection lost during COMMIT): a pool
# discards such a resource when it comes back instead of reusing it. Keyed by id()
# with a weak reference (dropped when the resource dies), so marking never keeps a
# connection alive and the test on every release is one dict lookup.
_broken: dict[int, weakref.ref[object]] = {}


def mark_broken(resource: object) -> None:
    """Mark ``resource`` so that any aiolease pool closes it on release instead of reusing it."""
    key = id(resource)

    def forget(_: object, key: int = key) -> None:
        _broken.pop(key, None)

    _broken[key] = weakref.ref(resource, forget)


def is_broken(resource: object) -> bool:
    """Whether :func:`mark_broken` was called on ``resource``."""
    ref = _broken.get(id(resource))
    return ref is not None and ref() is resource
