"""docs/pool.md: every ```python block is a complete program; each runs here in a fresh
interpreter (warnings are errors), in a temporary directory. The asyncpg ones need the
live PostgreSQL server (the ``pg_dsn`` fixture: skipped loudly, or failed under CI)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "pool.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)


def _params() -> list[object]:
    params: list[object] = []
    for i, code in enumerate(BLOCKS):
        needs_pg = "aiolease.asyncpg" in code or "aiolease.psycopg" in code
        marks = [pytest.mark.postgres] if needs_pg else []
        params.append(pytest.param(code, needs_pg, id=f"block{i}", marks=marks))
    return params


def test_the_guide_has_runnable_examples() -> None:
    assert len(BLOCKS) >= 8
    assert all("asyncio.run(main())" in code for code in BLOCKS)


@pytest.mark.parametrize(("code", "needs_pg"), _params())
def test_example_runs(
    code: str, needs_pg: bool, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    env = dict(os.environ)
    if needs_pg:
        env["AIOLEASE_PG_DSN"] = request.getfixturevalue("pg_dsn")
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
