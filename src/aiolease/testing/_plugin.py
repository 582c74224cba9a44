"""pytest plugin of aiolease.testing (registered through the ``pytest11`` entry point "aiolease").

Provides:

* the fixture ``aiolease_leaks`` (a :class:`~aiolease.testing.LeakCheck`
  active for the whole test, fixtures included, checked after their teardown);
* the ini option ``aiolease_leak_check = true`` applying it to every test, and
  the marker ``aiolease_leak_check(False)`` to opt one test out (or
  ``aiolease_leak_check`` to opt one in);
* the marker ``aiolease_virtual_time(**loop_kwargs)`` running an async test on
  :class:`~aiolease.testing.VirtualTimeLoop` (through pytest-asyncio's
  ``pytest_asyncio_loop_factories`` hook, pytest-asyncio >= 1.4), and the ini
  option ``aiolease_virtual_time = true`` doing it for every async test
  (``aiolease_virtual_time(False)`` opts one out).

The module imports nothing beyond pytest and the standard library, so having
aiolease installed never breaks a test session that does not use it.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest

from ._leaks import LeakCheck, leak_check
from ._virtual_time import VirtualTimeLoop

_LEAK_INI = "aiolease_leak_check"
_VT_INI = "aiolease_virtual_time"
_LEAK_MARK = "aiolease_leak_check"
_VT_MARK = "aiolease_virtual_time"
_VT_FACTORY_NAME = "aiolease_virtual_time"
_HOOK = "pytest_asyncio_loop_factories"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        _LEAK_INI,
        type="bool",
        default=False,
        help="aiolease: run every test inside aiolease.testing.leak_check() "
        "(fixture aiolease_leaks); opt out with @pytest.mark.aiolease_leak_check(False)",
    )
    parser.addini(
        _VT_INI,
        type="bool",
        default=False,
        help="aiolease: run every async test on aiolease.testing.VirtualTimeLoop "
        "(needs pytest-asyncio >= 1.4); opt out with @pytest.mark.aiolease_virtual_time(False)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{_VT_MARK}(enabled=True, **loop_kwargs): run this async test on "
        "aiolease.testing.VirtualTimeLoop(**loop_kwargs) (clock jumps to the next timer)",
    )
    config.addinivalue_line(
        "markers",
        f"{_LEAK_MARK}(enabled=True): fail this test if it leaves aiolease pools open, "
        "resources checked out, transactions open or limiter waiters behind",
    )


def _enabled(node: pytest.Item, mark: str, ini: str) -> tuple[bool, dict[str, Any]]:
    """Whether the marker (or else the ini option) enables the feature, and the marker's kwargs."""
    marker = node.get_closest_marker(mark)
    if marker is None:
        return bool(node.config.getini(ini)), {}
    enabled = marker.kwargs.get("enabled", marker.args[0] if marker.args else True)
    if not isinstance(enabled, bool):
        raise pytest.UsageError(
            f"{node.nodeid}: @pytest.mark.{mark} takes True or False as its first argument; "
            f"got {enabled!r}"
        )
    kwargs = {k: v for k, v in marker.kwargs.items() if k != "enabled"}
    return enabled, kwargs


# -- leak check ---------------------------------------------------------------


@pytest.fixture
def aiolease_leaks() -> Iterator[LeakCheck]:
    """A :class:`~aiolease.testing.LeakCheck` spanning the test and the fixtures set up after it.

    Fails the test at teardown (after the other function-scoped fixtures
    were torn down) with ``AssertionError`` naming every pool created during
    the test that is still open or has resources checked out, every
    transaction left open and every limiter with waiters. Call
    ``aiolease_leaks.check()`` to check earlier.
    """
    with leak_check() as check:
        yield check


@pytest.fixture(autouse=True)
def _aiolease_auto_leak_check(request: pytest.FixtureRequest) -> None:
    # Autouse fixtures are set up before the test's other fixtures, so a leak
    # check requested here also covers them and is torn down after them.
    node = request.node
    if not isinstance(node, pytest.Item):
        return
    enabled, _ = _enabled(node, _LEAK_MARK, _LEAK_INI)
    if enabled:
        request.getfixturevalue("aiolease_leaks")


# -- virtual time (pytest-asyncio) ----------------------------------------------


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]] | None:
    """Give tests marked ``aiolease_virtual_time`` (or all, per the ini) a VirtualTimeLoop."""
    enabled, kwargs = _enabled(item, _VT_MARK, _VT_INI)
    if enabled and kwargs:
        try:
            inspect.signature(VirtualTimeLoop).bind(**kwargs)
        except TypeError as exc:
            # Refused here, naming the test: a loop whose construction fails on its
            # signature also leaves an "Exception ignored in __del__" behind.
            raise pytest.UsageError(
                f"{item.nodeid}: @pytest.mark.{_VT_MARK}: {exc}; VirtualTimeLoop takes "
                f"{', '.join(inspect.signature(VirtualTimeLoop).parameters)}"
            ) from None
    if enabled:
        factory: Callable[[], asyncio.AbstractEventLoop] = (
            functools.partial(VirtualTimeLoop, **kwargs) if kwargs else VirtualTimeLoop
        )
        return {_VT_FACTORY_NAME: factory}
    # item.ihook sees exactly the conftests that apply to this item.
    if len(item.ihook.pytest_asyncio_loop_factories.get_hookimpls()) > 1:
        return None  # another plugin or conftest decides for unmarked tests
    # pytest-asyncio rejects a None answer once any implementation exists:
    # answer with the loop it would have made anyway.
    return {"asyncio": asyncio.new_event_loop}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if hasattr(config.hook, _HOOK):
        return
    for item in items:
        marked = item.get_closest_marker(_VT_MARK) is not None
        if marked or config.getini(_VT_INI):
            raise pytest.UsageError(
                f"{item.nodeid}: aiolease virtual time needs pytest-asyncio >= 1.4 (its "
                f"{_HOOK} hook); install it or use asyncio.Runner(loop_factory=VirtualTimeLoop)"
            )
