"""No import cycles among the modules gpuwarden installs (every package in pyproject's
``package-dir``), counting every import: at module level, under ``TYPE_CHECKING`` and inside
functions (a cycle that happens to resolve at run time still ties the modules together). Static:
reads the sources, imports nothing. To break a cycle, move the shared piece into a module of its
own, or have the lower module declare what it needs as a ``typing.Protocol``."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _modules() -> dict[str, Path]:
    """Module name -> source file, for every package pyproject maps to a folder."""
    package_dir = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    mods: dict[str, Path] = {}
    for pkg, folder in package_dir.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            mods[".".join([pkg, *parts])] = path
    return mods


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The modules in ``known`` that ``name`` imports (``from pkg import mod`` counts as mod)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
            mod = ".".join(p for p in (base, node.module or "") if p)
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        else:
            continue
        out.update(t for t in targets if t in known and t != name)
    return out


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_checker_sees_a_type_only_cycle(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import B\n")
    (tmp_path / "b.py").write_text("def f():\n    from . import a\n")
    known = {"p.a", "p.b"}
    edges = {m: _imports(m, tmp_path / f"{m[2:]}.py", known) for m in known}
    assert _cycles(edges) == [["p.a", "p.b"]]


def test_no_import_cycles() -> None:
    mods = _modules()
    assert "gpuwarden.scheduler_agent.scheduler" in mods and "gpuwarden.exporter.sim.library" in mods
    edges = {name: _imports(name, path, set(mods)) for name, path in mods.items()}
    cycles = _cycles(edges)
    assert not cycles, "import cycles (each line: modules that import one another, directly or not):\n" + "\n".join(
        " <-> ".join(c) for c in cycles
    )
