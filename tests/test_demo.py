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
