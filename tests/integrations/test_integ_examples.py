"""examples/fastapi_*.py: the FastAPI recipes run here, as a user would run them.

``fastapi_app.py`` is served by a real uvicorn server over real SQLite and
driven with httpx; ``fastapi_testing.py`` (the app tested with
aiolease.testing) runs in its own pytest process, from the examples directory.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import httpx
import pytest
from asgi_server import serve

from aiolease import sqlite

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def _load_app_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fastapi_app", EXAMPLES / "fastapi_app.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
async def test_the_app_over_sqlite_through_uvicorn(tmp_path: Path) -> None:
    app_module = _load_app_module()
    app = app_module.create_app(
        lambda: sqlite.create_pool(str(tmp_path / "ledger.db"), max_size=2), rate=5, burst=6
    )
    async with serve(app) as url, httpx.AsyncClient(base_url=url) as client:
        assert (await client.post("/accounts/ann/deposit", params={"amount": 30})).json() == {
            "name": "ann",
            "deposited": 30,
        }
        refused = await client.post("/accounts/ann/deposit", params={"amount": 5000})
        assert refused.status_code == 403  # written, then rolled back
        assert (await client.get("/accounts/ann")).json() == {"name": "ann", "balance": 30}
        answers = [await client.get("/accounts/ann") for _ in range(6)]
        refusals = [a for a in answers if a.status_code == 429]
        assert refusals
        # (headers of a refusal from the burst: a later request may find a token refilled)
        limited = refusals[0].headers
        assert limited["retry-after"] == "1"
        assert limited["ratelimit-policy"] == '"default";q=5;w=1'
        health = await client.get("/health")
        assert health.status_code == 200
        assert health.json()["in_use"] == 0


def test_the_module_level_app_is_ready_to_serve() -> None:
    # `uvicorn fastapi_app:app` serves this object.
    paths = {route.path for route in _load_app_module().app.routes}
    assert {"/health", "/accounts/{name}", "/accounts/{name}/deposit"} <= paths


def test_the_testing_example_passes_in_its_own_pytest_run() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "fastapi_testing.py", "-q", "-p", "no:cacheprovider"],
        cwd=EXAMPLES,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 passed" in result.stdout
