"""Shared fixtures: live-service URLs with the project's skip/fail policy.

A test that needs PostgreSQL or Redis takes the ``pg_dsn`` / ``redis_url``
fixture. When the service is unreachable the test is skipped with a loud
reason, except under ``CI=true``, where it fails: CI must never pass by
skipping the integration suites.
"""

from __future__ import annotations

import asyncio
import os
import socket
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from aiolease import _tracking

PG_DSN = os.environ.get("AIOLEASE_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("AIOLEASE_REDIS_URL", "redis://127.0.0.1:6379/0")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

_reachable: dict[str, str | None] = {}


def _probe(url: str, default_port: int) -> str | None:
    """None when a TCP connection to the URL's host and port succeeds, else why not."""
    if url not in _reachable:
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or default_port
        try:
            with socket.create_connection((host, port), timeout=2.0):
                _reachable[url] = None
        except OSError as exc:
            _reachable[url] = f"{host}:{port} unreachable ({exc})"
    return _reachable[url]


def require_service(name: str, url: str, default_port: int, env: str) -> str:
    problem = _probe(url, default_port)
    if problem is not None:
        message = f"{name} at {url} is not reachable: {problem}. Set {env} or start the server."
        if IN_CI:
            pytest.fail(f"CI=true and {message}", pytrace=False)
        pytest.skip(f"!!! SKIPPED: {message}")
    return url


@pytest.fixture
def pg_dsn() -> str:
    """The live PostgreSQL DSN (AIOLEASE_PG_DSN); skips loudly (fails under CI) when down."""
    return require_service("PostgreSQL", PG_DSN, 5432, "AIOLEASE_PG_DSN")


@pytest.fixture
def redis_url() -> str:
    """The live Redis URL (AIOLEASE_REDIS_URL); skips loudly (fails under CI) when down."""
    return require_service("Redis", REDIS_URL, 6379, "AIOLEASE_REDIS_URL")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests in a ``postgres``/``redis`` folder or file get that marker automatically."""
    for item in items:
        path = str(item.path)
        if "postgres" in path or "asyncpg" in path or "psycopg" in path:
            item.add_marker(pytest.mark.postgres)
        if "redis" in path:
            item.add_marker(pytest.mark.redis)


# ---------------------------------------------------------------- event-loop backends

try:
    import uvloop
except ImportError:  # not on this platform (Windows): asyncio's own loop only
    uvloop = None  # type: ignore[assignment]

LoopFactory = Callable[[], asyncio.AbstractEventLoop]

#: Every async test that does not ask for virtual time runs on each of these loops.
LOOP_FACTORIES: dict[str, LoopFactory] = {"asyncio": asyncio.new_event_loop}

if uvloop is not None:

    class _UvloopLoop(uvloop.Loop):
        """uvloop's loop, whose ``close()`` cannot hang the run.

        uvloop's ``close()`` warns about each transport a test left open and then closes it.
        Under ``filterwarnings = error`` the warning is raised instead, inside a libuv callback
        that only prints it: the transport is never closed, and ``close()`` waits for it in
        libuv forever, where no Python signal handler runs (not pytest-timeout's, not Ctrl-C).
        Here the warnings are recorded while the loop closes and raised once it is closed: a
        test that leaks a transport fails in its teardown instead of hanging the whole run.
        """

        def close(self) -> None:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ResourceWarning)
                super().close()
            leaked = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
            if leaked:
                warnings.warn(
                    f"uvloop closed {len(leaked)} resource(s) left open: {'; '.join(leaked)}",
                    ResourceWarning,
                    stacklevel=2,
                )

        def call_exception_handler(self, context: dict[str, Any]) -> None:
            super().call_exception_handler(context)
            if isinstance(context.get("exception"), pytest.fail.Exception):
                # pytest-timeout's SIGALRM handler runs inside a libuv callback here, which
                # only logs what it raises: stop the loop, so that the timed-out test fails
                # ("Event loop stopped before Future completed") instead of waiting on.
                self.stop()

    LOOP_FACTORIES["uvloop"] = _UvloopLoop

#: AIOLEASE_TEST_LOOPS="asyncio" (names, comma-separated) runs the suite on those loops only:
#: a run of `make test-matrix` that covers a Python version, not the loops (see .ci/matrix.py).
if os.environ.get("AIOLEASE_TEST_LOOPS"):
    _wanted = {name.strip() for name in os.environ["AIOLEASE_TEST_LOOPS"].split(",")}
    if not _wanted <= set(LOOP_FACTORIES):
        raise pytest.UsageError(
            f"AIOLEASE_TEST_LOOPS: unknown loop(s) {sorted(_wanted - set(LOOP_FACTORIES))}; "
            f"known: {sorted(LOOP_FACTORIES)}"
        )
    LOOP_FACTORIES = {name: f for name, f in LOOP_FACTORIES.items() if name in _wanted}

#: The black-box contract suites run as a user's tests would, on asyncio's own loop.
_ASYNCIO_ONLY: dict[str, LoopFactory] = {"asyncio": asyncio.new_event_loop}
_ACCEPTANCE = Path(__file__).resolve().parent / "acceptance"
#: The chaos suite measures the pools, not the loops (FaultProxy's own tests cover uvloop).
_CHAOS = Path(__file__).resolve().parent / "chaos"


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, LoopFactory]:
    """Parametrise async tests over asyncio's loop and uvloop (``[asyncio]`` and
    ``[uvloop]`` in their names). The plugin of ``aiolease.testing`` answers first
    for tests that ask for virtual time."""
    if _ACCEPTANCE in item.path.resolve().parents or _CHAOS in item.path.resolve().parents:
        return _ASYNCIO_ONLY
    return LOOP_FACTORIES


# ---------------------------------------------------------------- pool shapes
# The pool contract suites run once per manager and configuration shape
# (tests/pool/pool_shapes.py, importable once a module of tests/pool is loaded).

#: The suites parametrised over every shape (see pool_shapes).
SHAPED_MODULES = ("test_pool_cancellation", "test_pool_fairness", "test_pool_housekeeping")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.module.__name__.rsplit(".", 1)[-1] not in SHAPED_MODULES:
        return
    from pool_shapes import SHAPES

    marker = metafunc.definition.get_closest_marker("pool_shapes")
    shapes = marker.args if marker is not None else SHAPES
    if "pool_shape" not in metafunc.fixturenames:
        metafunc.fixturenames.append("pool_shape")
    metafunc.parametrize("pool_shape", shapes)


@pytest.fixture(autouse=True)
def _in_shape(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A test of a shaped suite runs in its shape: ``Pool`` in its module builds pools
    in that shape, and the "leak-check" shape runs with a leak check active."""
    callspec = getattr(request.node, "callspec", None)
    shape = None if callspec is None else callspec.params.get("pool_shape")
    if shape is None:
        return
    from pool_shapes import ShapedPool

    monkeypatch.setattr(request.module, "Pool", ShapedPool(shape))
    if shape == "leak-check":
        monkeypatch.setattr(_tracking, "active", [_tracking.Tracker()])
