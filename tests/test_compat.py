"""``aiolease._compat``: the fences around other projects' private names (see docs/compat.md).

Both modes run: the default one here and in the whole suite, the public one in a child
process here and in ``make test-matrix`` (the whole suite with ``AIOLEASE_COMPAT=public``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

import aiolease._compat
import aiolease._compat.asyncpg
import aiolease._compat.psycopg

_MODULES = ("asyncpg", "psycopg")


def _in_child(code: str, compat: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "AIOLEASE_COMPAT"}
    if compat is not None:
        env["AIOLEASE_COMPAT"] = compat
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


_REPORT = (
    "import aiolease._compat as c, aiolease._compat.asyncpg, aiolease._compat.psycopg\n"
    f"print(c.PUBLIC, *(getattr(c, m).PRIVATE for m in {_MODULES!r}))"
)


@pytest.mark.parametrize("value", ["public", "PUBLIC", " public "])
def test_public_env_forces_every_fallback(value: str) -> None:
    assert _in_child(_REPORT, value) == "True False False"


@pytest.mark.parametrize("value", [None, "", "private", "default"])
def test_without_public_env_the_probes_decide(value: str | None) -> None:
    # On the driver and Python versions pyproject.toml allows, every probe passes.
    assert _in_child(_REPORT, value) == "False True True"


def test_the_flag_is_the_environment_at_import() -> None:
    expected = os.environ.get("AIOLEASE_COMPAT", "").strip().lower() == "public"
    assert aiolease._compat.PUBLIC is expected
    assert aiolease._compat.asyncpg.PRIVATE is (not expected)
    assert aiolease._compat.asyncpg.RESENDS_CANCEL is (not expected)
    assert aiolease._compat.psycopg.PRIVATE is (not expected)


def test_public_fallbacks_know_nothing_private() -> None:
    # What the public mode binds: no transport, no in-flight view, no transaction record.
    from aiolease._compat import asyncpg as pg

    class Conn:
        _transport = object()
        _top_xact = object()

    assert pg._transport_public(Conn()) is None
    assert pg._cancelling_public(Conn()) is False
    assert pg._pending_public(Conn()) is False


async def test_asyncpg_public_end_cancelled_waits_for_nothing_and_sends_nothing() -> None:
    from aiolease._compat import asyncpg as pg

    class Protocol:
        def _is_cancelling(self) -> bool:
            return True

        async def _wait_for_cancellation(self) -> None:
            raise AssertionError("the public fallback waited")

    class Conn:
        _protocol = Protocol()

        def _cancel_current_command(self, waiter: Any, cancel_waiter: Any = None) -> None:
            raise AssertionError("the public fallback sent a cancel request")

    await pg._end_cancelled_public(Conn())  # (the fake raises if it is called)


def test_asyncpg_cancel_probe_refuses_a_layout_it_does_not_know(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import asyncpg

    from aiolease._compat import asyncpg as fence

    assert fence._probe_cancel() is True  # on the asyncpg versions pyproject.toml allows

    def other(self: Any, task: Any) -> None:
        raise AssertionError("never called")

    connection = asyncpg.connection.Connection
    with monkeypatch.context() as m:
        m.setattr(connection, "_cancel_current_command", other)
        assert fence._probe_cancel() is False
    with monkeypatch.context() as m:
        m.delattr(connection, "_cancel_current_command")
        assert fence._probe_cancel() is False
    with monkeypatch.context() as m:
        m.setattr(asyncpg.protocol, "Protocol", object)
        assert fence._probe_cancel() is False
    assert fence._probe_cancel() is True


def test_asyncpg_public_mode_verifies_each_checkout_and_discards_cancelled_bodies() -> None:
    code = """
import asyncio
from aiolease.asyncpg import AsyncpgManager
from aiolease.abc import ResourceInfo

class Conn:
    def is_closed(self):
        return False

m = AsyncpgManager()
info = ResourceInfo(0.0, 0.0)
print(m.check_needed(Conn(), info), m.is_fatal(Conn(), asyncio.CancelledError()),
      m.is_fatal(Conn(), TimeoutError()), m.is_fatal(Conn(), ValueError()))
"""
    assert _in_child(code, "public") == "True True True False"
    # (TimeoutError is an OSError, fatal in both modes; a fake has no transport: verified)
    assert _in_child(code, None) == "True False True False"


def test_psycopg_pools_open_the_bounded_class_unless_public() -> None:
    # The class the manager connects with (aiolease.psycopg binds it at import).
    code = "import aiolease.psycopg as p\nprint(p.CONNECTION_CLASS.__name__)"
    assert _in_child(code, "public") == "AsyncConnection"
    assert _in_child(code, None) == "BoundedCancelConnection"


def test_psycopg_probe_refuses_a_layout_it_does_not_know(monkeypatch: pytest.MonkeyPatch) -> None:
    import psycopg

    from aiolease._compat import psycopg as fence

    assert isinstance(fence._probe(), float)  # psycopg's polling interval, kept by the override

    async def wait(self: Any, gen: Any, timeout: float | None = None) -> Any:
        raise AssertionError("never called")

    with monkeypatch.context() as m:
        m.setattr(psycopg.AsyncConnection, "wait", wait)
        assert fence._probe() is None
    with monkeypatch.context() as m:
        m.setattr(psycopg.waiting, "wait_async", lambda gen, fileno: None)
        assert fence._probe() is None
    with monkeypatch.context() as m:
        # libpq before 17: cancel_safe runs libpq's blocking cancel in a thread, unbounded
        m.setattr(psycopg.capabilities, "has_cancel_safe", lambda: False)
        assert fence._probe() is None
    assert isinstance(fence._probe(), float)


def test_the_fence_table_of_compat_md_names_every_compat_module() -> None:
    """docs/compat.md's table of fences is where a user learns what AIOLEASE_COMPAT=public
    changes: every `_compat` module has a row."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    page = (root / "docs" / "compat.md").read_text()
    table = page.split("## The fences")[1].split("\n\n")[1]
    rows = table.splitlines()[2:]
    fenced = {row.split("`_compat.")[1].split(".")[0].split("`")[0] for row in rows}
    modules = {p.stem for p in (root / "src" / "aiolease" / "_compat").glob("*.py")} - {"__init__"}
    assert fenced == modules


def test_the_lowest_run_pins_every_lower_bound_a_user_installs() -> None:
    """docs/compat.md: pyproject.toml declares only lower bounds that pass. The lowest run of
    `make test-matrix` (.ci/matrix.py) must therefore pin every package an extra installs to
    its `>=` bound (opentelemetry-api 1.27 lacked the histograms' bucket advice aiolease.otel
    passes, and 1.27-1.29 made instrument() raise TypeError)."""
    import ast
    import re
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    installed = {
        re.split(r"[\[>=<;]", spec)[0]
        for group, specs in extras.items()
        if group not in ("test", "bench", "all")
        for spec in specs
    }
    tree = ast.parse((root / ".ci" / "matrix.py").read_text())
    (pinned_node,) = [
        node.value
        for node in tree.body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "PINNED"
    ]
    pinned = {c.value for c in ast.walk(pinned_node) if isinstance(c, ast.Constant)}
    assert installed <= pinned, sorted(installed - pinned)
