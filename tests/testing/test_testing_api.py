"""The public surface of aiolease.testing: ``__all__`` matches what the package exposes."""

from __future__ import annotations

import asyncio
import types

import aiolease.testing
from aiolease.abc import Manager


def test_all_is_sorted_and_complete() -> None:
    exported = aiolease.testing.__all__
    assert exported == sorted(exported)
    public = {
        name
        for name, value in vars(aiolease.testing).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and name != "annotations"
    }
    assert public == set(exported)
    for name in exported:
        assert getattr(aiolease.testing, name) is not None


def test_contract_names_exist() -> None:
    assert issubclass(aiolease.testing.FakeManager, Manager)
    assert callable(aiolease.testing.leak_check)
    assert issubclass(aiolease.testing.VirtualTimeLoop, asyncio.AbstractEventLoop)
    assert issubclass(aiolease.testing.NoProgressError, RuntimeError)
