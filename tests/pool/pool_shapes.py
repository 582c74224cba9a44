"""The manager and configuration shapes that pick different code paths in the pool.

The contract suites (cancellation, fairness, housekeeping, stateful) run once per
shape: ``tests/pool/conftest.py`` replaces ``Pool`` in those modules by
:func:`shaped_pool`, which builds the pool the test asked for in the shape under
test. A test that exercises one shape's path on purpose narrows the shapes with
``@pytest.mark.pool_shapes("all-hooks", ...)``.
"""

from __future__ import annotations

from typing import Any

from aiolease import Pool
from aiolease.abc import Manager, ResourceInfo
from aiolease.testing import FakeManager, FakeResource

#: Every shape, by name:
#: hook-free: ``Pool.from_callables`` (no check, reset, lease hooks, is_fatal);
#: check-needed: the asyncpg manager's shape (check_needed/reset_needed say no
#: for a healthy resource, so the awaits are skipped);
#: all-hooks: FakeManager itself;
#: max-lifetime / leak-timeout: those options set (far off, so they change the
#: path, not the outcome); leak-check: a leak check active (stacks captured).
SHAPES = ("hook-free", "check-needed", "all-hooks", "max-lifetime", "leak-timeout", "leak-check")

_FAR = 1e7  # seconds: a lifetime or leak timeout no test reaches


class CheckNeededShape(Manager[FakeResource]):
    """Delegates to a FakeManager, adding the synchronous fast paths asyncpg's manager
    has: a healthy idle resource is handed out without ``check``, a clean one put back
    without ``reset`` (the manager still records everything it is asked to do)."""

    def __init__(self, fm: FakeManager) -> None:
        self.fm = fm
        self.close_timeout = fm.close_timeout

    async def create(self) -> FakeResource:
        return await self.fm.create()

    def check_needed(self, resource: FakeResource, info: ResourceInfo) -> bool:
        return resource.killed or bool(self.fm.rules)

    async def check(self, resource: FakeResource, info: ResourceInfo) -> None:
        await self.fm.check(resource, info)

    def reset_needed(self, resource: FakeResource, info: ResourceInfo) -> bool:
        return resource.killed or bool(self.fm.rules)

    async def reset(self, resource: FakeResource, info: ResourceInfo) -> None:
        await self.fm.reset(resource, info)

    async def close(self, resource: FakeResource) -> None:
        await self.fm.close(resource)

    def on_acquire(self, resource: FakeResource, info: ResourceInfo) -> None:
        self.fm.on_acquire(resource, info)

    def on_release(self, resource: FakeResource, info: ResourceInfo) -> None:
        self.fm.on_release(resource, info)

    def is_fatal(self, resource: FakeResource, exc: BaseException) -> bool:
        return self.fm.is_fatal(resource, exc)


def shaped_pool(shape: str, manager: Any, **options: Any) -> Pool[Any]:
    """``Pool(manager, **options)`` in ``shape`` (see :data:`SHAPES`)."""
    if isinstance(manager, FakeManager):
        if shape == "hook-free":
            manager.lease_hooks = False  # its lease hooks are not called: it cannot know
            return Pool.from_callables(manager.create, manager.close, **options)
        if shape == "check-needed":
            return Pool(CheckNeededShape(manager), **options)
    if shape == "max-lifetime":
        options.setdefault("max_lifetime", _FAR)
    elif shape == "leak-timeout":
        options.setdefault("leak_timeout", _FAR)
    return Pool(manager, **options)


def tracks_leases(pool: Pool[Any], fm: FakeManager) -> bool:
    """Whether ``fm`` sees the pool's leases (its lease hooks are called)."""
    manager = pool.manager
    if isinstance(manager, CheckNeededShape):
        manager = manager.fm
    return manager is fm and fm.lease_hooks


#: The shapes whose manager has check and reset (a test of those hooks runs in these).
WITH_HOOKS = tuple(s for s in SHAPES if s != "hook-free")
#: The shapes that set no deadline of their own (a test counting timers runs in these).
NO_DEADLINES = tuple(s for s in SHAPES if s not in ("max-lifetime", "leak-timeout"))


class ShapedPool:
    """What ``Pool`` is in a shaped suite's module: the constructor builds the pool in
    the shape; ``from_callables`` is the plain one (it is the hook-free shape already)."""

    from_callables = Pool.from_callables

    def __init__(self, shape: str) -> None:
        self.shape = shape

    def __call__(self, manager: Any, **options: Any) -> Pool[Any]:
        return shaped_pool(self.shape, manager, **options)
