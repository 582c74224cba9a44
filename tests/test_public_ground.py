"""Public ground: no module outside ``aiolease._compat`` names another project's private
attribute (docs/compat.md). Two static rules, each a lower bound (no types are inferred):
a private attribute of a name imported from another project (``sys._getframe``), and a
private attribute that aiolease itself defines nowhere (``conn._protocol``)."""

from __future__ import annotations

import ast
from pathlib import Path

import aiolease

_SRC = Path(aiolease.__file__).parent


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _own_names(trees: dict[Path, ast.Module]) -> set[str]:
    """Every private name aiolease defines: functions, classes, assigned attributes and
    variables, ``__slots__`` entries, imported module names."""
    own: set[str] = set()
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                own.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                own.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                own.add(node.id)
            elif isinstance(node, ast.arg):
                own.add(node.arg)
            elif isinstance(node, ast.alias):
                own.add((node.asname or node.name).split(".")[-1])
            elif isinstance(node, ast.Constant) and str(node.value).isidentifier():
                own.add(str(node.value))  # __slots__ entries, getattr names
    return {n for n in own if _private(n)}


def _ours(module: str | None) -> bool:
    return module is not None and module.split(".")[0] == "aiolease"


def _imported_foreign(tree: ast.Module) -> set[str]:
    """Names this module binds to another project's modules or objects."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not (node.level or _ours(node.module)):
            names.update(a.asname or a.name for a in node.names)
    return names - {"aiolease"}


def _foreign_reads(path: Path, tree: ast.Module, own: set[str]) -> list[str]:
    foreign = _imported_foreign(tree)
    hits = [
        (node.lineno, node.attr)
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and _private(node.attr)
        and (
            node.attr not in own or (isinstance(node.value, ast.Name) and node.value.id in foreign)
        )
    ]
    return [f"{path.relative_to(_SRC)}:{line}: .{attr}" for line, attr in sorted(hits)]


def test_no_private_foreign_name_outside_compat() -> None:
    trees = {p: ast.parse(p.read_text(encoding="utf-8")) for p in sorted(_SRC.rglob("*.py"))}
    own = _own_names({p: t for p, t in trees.items() if "_compat" not in p.parts})
    found = [
        hit
        for path, tree in trees.items()
        if "_compat" not in path.parts
        for hit in _foreign_reads(path, tree, own)
    ]
    assert found == [], "private names of other projects outside aiolease._compat"


def test_the_check_sees_a_foreign_private_read() -> None:
    tree = ast.parse("import sys\nframe = sys._getframe(1)\nconn._protocol\nself._name\n")
    hits = _foreign_reads(_SRC / "x.py", tree, {"_getframe", "_name"})
    assert hits == ["x.py:2: ._getframe", "x.py:3: ._protocol"]
