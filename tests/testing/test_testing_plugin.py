"""The pytest plugin seen from outside: an inner pytest session (subprocess), ini options on."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

INI = """\
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
aiolease_leak_check = true
aiolease_virtual_time = true
addopts = -p no:looptime_plugin -p no:cacheprovider -p no:hypothesispytest
"""

INNER_TESTS = """
import asyncio

import pytest

import aiolease
from aiolease.testing import FakeManager, VirtualTimeLoop


async def test_clean() -> None:
    async with aiolease.Pool(FakeManager()) as pool, pool.acquire() as resource:
        await resource.use()


async def test_leaky() -> None:
    pool = aiolease.Pool(FakeManager(), name="leaky")
    await pool.open()
    held = await pool.acquire()  # LEAK-LINE
    assert held.lease == 1


@pytest.mark.aiolease_leak_check(False)
async def test_leaky_but_opted_out() -> None:
    pool = aiolease.Pool(FakeManager(), name="opted-out")
    await pool.open()
    await pool.acquire()


@pytest.fixture
async def pool():
    async with aiolease.Pool(FakeManager(), name="fixture") as p:
        yield p


async def test_pool_fixture_closed_at_teardown_is_clean(pool) -> None:
    # The pool is still open when the test returns; the check runs after the
    # fixture's teardown closed it, so this is clean.
    async with pool.acquire() as resource:
        await resource.use()


def test_sync_test_gets_the_check_too(aiolease_leaks) -> None:
    assert aiolease_leaks.leaks() == []


async def test_ini_puts_every_async_test_on_virtual_time() -> None:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, VirtualTimeLoop)
    await asyncio.sleep(7200)
    assert loop.time() == 7200.0


@pytest.mark.aiolease_virtual_time(False)
async def test_opt_out_of_virtual_time() -> None:
    assert not isinstance(asyncio.get_running_loop(), VirtualTimeLoop)


async def test_deadlock_fails_instead_of_hanging() -> None:
    await asyncio.Event().wait()
"""


SUB_CONFTEST = """
import asyncio


class CustomLoop(asyncio.SelectorEventLoop):
    pass


def pytest_asyncio_loop_factories(config, item):
    return {"custom": CustomLoop}
"""

SUB_TESTS = """
import asyncio

import pytest

from aiolease.testing import VirtualTimeLoop


@pytest.mark.aiolease_virtual_time(False)
async def test_another_hook_decides_for_unmarked_tests() -> None:
    assert type(asyncio.get_running_loop()).__name__ == "CustomLoop"


async def test_the_marker_or_ini_still_wins() -> None:
    assert isinstance(asyncio.get_running_loop(), VirtualTimeLoop)
"""


@pytest.fixture(scope="module")
def inner_session(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, set[str]]]:
    root = tmp_path_factory.mktemp("inner")
    (root / "pytest.ini").write_text(INI)
    (root / "test_inner.py").write_text(textwrap.dedent(INNER_TESTS))
    (root / "sub").mkdir()
    (root / "sub" / "conftest.py").write_text(SUB_CONFTEST)
    (root / "sub" / "test_sub.py").write_text(SUB_TESTS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-rA", "-W", "ignore::ResourceWarning", "."],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=50,
    )
    outcomes: dict[str, set[str]] = {}
    for line in proc.stdout.splitlines():
        word, _, rest = line.partition(" ")
        if word in {"PASSED", "FAILED", "ERROR"} and "::" in rest:
            name = rest.split("::", 1)[1].split(" ", 1)[0]
            outcomes.setdefault(name, set()).add(word)
    return proc.stdout + proc.stderr, outcomes


def _check(inner_session: tuple[str, dict[str, set[str]]], test: str, expected: set[str]) -> str:
    output, outcomes = inner_session
    assert outcomes.get(test) == expected, output
    return output


@pytest.mark.parametrize(
    "test",
    [
        "test_clean",
        "test_leaky_but_opted_out",
        "test_pool_fixture_closed_at_teardown_is_clean",
        "test_sync_test_gets_the_check_too",
        "test_ini_puts_every_async_test_on_virtual_time",
        "test_opt_out_of_virtual_time",
        "test_another_hook_decides_for_unmarked_tests",
        "test_the_marker_or_ini_still_wins",
    ],
)
def test_inner_passes(inner_session: tuple[str, dict[str, set[str]]], test: str) -> None:
    _check(inner_session, test, {"PASSED"})


def test_ini_leak_check_fails_a_leaky_test_naming_where(
    inner_session: tuple[str, dict[str, set[str]]],
) -> None:
    output = _check(inner_session, "test_leaky", {"PASSED", "ERROR"})
    assert "ERROR at teardown of test_leaky" in output
    assert "AssertionError: leak_check found 2 leaks:" in output
    assert "<aiolease.Pool 'leaky' open" in output
    assert "is still checked out from <aiolease.Pool 'leaky'" in output
    assert "held = await pool.acquire()  # LEAK-LINE" in output


def test_deadlocked_test_fails_with_no_progress_error(
    inner_session: tuple[str, dict[str, set[str]]],
) -> None:
    output = _check(inner_session, "test_deadlock_fails_instead_of_hanging", {"FAILED"})
    assert "NoProgressError: VirtualTimeLoop: every task is blocked" in output


def test_plugin_is_registered_under_the_entry_point_name(pytestconfig: pytest.Config) -> None:
    plugin = pytestconfig.pluginmanager.get_plugin("aiolease")
    assert plugin is not None
    assert Path(plugin.__file__).name == "_plugin.py"


def test_marker_with_an_argument_the_loop_does_not_take_is_a_usage_error(
    tmp_path: Path,
) -> None:
    # Before, each such test errored with a TypeError from the loop's constructor,
    # and the half-built loop's __del__ left "Exception ignored ... no attribute
    # '_closed'" behind.
    (tmp_path / "pytest.ini").write_text(INI)
    (tmp_path / "test_bad_marker.py").write_text(
        textwrap.dedent(
            """
            import pytest

            @pytest.mark.aiolease_virtual_time(stall_timout=1.0)
            async def test_typo() -> None:
                pass
            """
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-W", "error", "."],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=50,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert (
        "test_bad_marker.py::test_typo: @pytest.mark.aiolease_virtual_time: got an unexpected "
        "keyword argument 'stall_timout'; VirtualTimeLoop takes start, io_grace, stall_timeout"
    ) in output
    assert "_closed" not in output
