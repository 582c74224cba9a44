"""docs/testing.md: its examples are the files in examples/, verbatim, and they run here as tests.

Each ``examples/testing_*.py`` is a pytest module a user can run on its own.
Its test functions are imported into this module (with the module's
``pytestmark``) so this session collects them under this project's strict
settings.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "testing.md"
EXAMPLES = sorted((ROOT / "examples").glob("testing_*.py"))
_EXAMPLE_BLOCK = re.compile(r"<!-- example: (?P<path>\S+) -->\n```python\n(?P<code>.*?)```", re.S)
_PY_BLOCK = re.compile(r"```python\n(?P<code>.*?)```", re.S)


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"aiolease_example_{path.stem}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _collect_examples() -> dict[str, Any]:
    found: dict[str, Any] = {}
    for path in EXAMPLES:
        module = _load(path)
        marks = getattr(module, "pytestmark", [])
        for name, obj in vars(module).items():
            if name.startswith("test_") and callable(obj):
                for mark in marks if isinstance(marks, list) else [marks]:
                    obj = mark(obj)
                found[f"test_{path.stem}__{name[5:]}"] = obj
    return found


globals().update(_collect_examples())


def test_there_are_examples() -> None:
    names = {p.name for p in EXAMPLES}
    assert {
        "testing_flaky_backend.py",
        "testing_slow_create.py",
        "testing_rate_limited_client.py",
        "testing_leaked_connection.py",
    } <= names
    assert sum(1 for name in globals() if name.startswith("test_testing_")) >= 8


def test_doc_shows_every_example_verbatim() -> None:
    text = DOC.read_text()
    shown = {m["path"]: m["code"] for m in _EXAMPLE_BLOCK.finditer(text)}
    assert sorted(shown) == sorted(f"examples/{p.name}" for p in EXAMPLES)
    for path in EXAMPLES:
        assert shown[f"examples/{path.name}"] == path.read_text(), (
            f"docs/testing.md shows an outdated copy of examples/{path.name}"
        )


def test_every_python_block_in_the_doc_parses() -> None:
    for match in _PY_BLOCK.finditer(DOC.read_text()):
        ast.parse(match["code"])


def test_doc_names_the_public_api() -> None:
    import aiolease.testing

    text = DOC.read_text()
    for name in ("FakeManager", "VirtualTimeLoop", "leak_check", "NoProgressError", "LeakCheck"):
        assert name in aiolease.testing.__all__
        assert name in text


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_are_importable_modules(path: Path) -> None:
    assert _load(path).__doc__
