"""`python -m aiolease demo` runs every scenario on the embedded default, with no server."""

from __future__ import annotations

import subprocess
import sys

from aiolease._demo import SCENARIOS


def test_demo_runs_every_scenario_without_a_server() -> None:
    result = subprocess.run(
        [sys.executable, "-W", "error", "-m", "aiolease", "demo"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for name, _ in SCENARIOS:
        assert f"=== {name} ===" in result.stdout
    assert "Traceback" not in result.stderr


def test_pool_scenario_leaves_the_pool_whole() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "aiolease", "demo", "pool"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    out = result.stdout
    assert "cancelled the waiter -> <aiolease.Pool 'demo' open size=3/3 idle=0 in_use=3" in out
    assert "caught RuntimeError('boom')" in out
    assert "in_use=0" in out.split("caught RuntimeError('boom')")[1]
    assert "Closed: <aiolease.Pool 'demo' closed size=0/3" in out


def test_demo_without_aiosqlite_names_the_extra_instead_of_a_traceback() -> None:
    """On a core install (`pip install aiolease`, no aiosqlite) `python -m aiolease demo` says
    which extra it needs, as `--metrics` does for prometheus_client; `--help` still works."""
    no_aiosqlite = (
        "import runpy, sys; sys.modules['aiosqlite'] = None; sys.argv[0] = 'aiolease'; "
        "runpy.run_module('aiolease', run_name='__main__', alter_sys=True)"
    )

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", no_aiosqlite, *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    demo = run("demo")
    assert demo.returncode == 2, demo.stderr
    assert "Traceback" not in demo.stderr, demo.stderr
    assert "pip install 'aiolease[sqlite]'" in demo.stderr
    helped = run("--help")
    assert helped.returncode == 0, helped.stderr
    assert "demo" in helped.stdout
