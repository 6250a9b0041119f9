"""The import graph: search -> objectives -> quant; the optimizer never imports optuna or the
CLI; nothing imports the CLI; no circular imports between modules."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parents[1]
PACKAGES = ("quant", "objectives", "search")


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Modules imported anywhere in the file (also inside functions), resolved to full names."""
    mod = _module(path)
    package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names}
    return out


def _graph() -> dict[str, set[str]]:
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    mods = {_module(p): p for p in files}
    return {m: {i for i in _imports(p) if i in mods and i != m} for m, p in mods.items()}


def test_the_optimizer_imports_neither_optuna_nor_the_cli():
    for path in (ROOT / "search" / "_optimize").rglob("*.py"):
        bad = {i for i in _imports(path) if i.split(".")[0] == "optuna" or "_cli" in i}
        assert not bad, f"{path.name} imports {bad}"


def test_nothing_imports_the_cli():
    for m, deps in _graph().items():
        if not m.startswith("search._cli") and m != "search.__main__":  # the entry point
            assert not {d for d in deps if d.startswith("search._cli")}, m


def test_imports_flow_one_way():
    order = {"quant": 0, "objectives": 1, "search": 2}
    for m, deps in _graph().items():
        for d in deps:
            assert order[d.split(".")[0]] <= order[m.split(".")[0]], f"{m} imports {d}"


def test_optuna_is_imported_only_by_the_study_glue_and_the_pipeline():
    allowed = ("search._study", "search._pipeline", "search._cli")
    for path in (ROOT / "search").rglob("*.py"):
        m = _module(path)
        if any(i.split(".")[0] == "optuna" for i in _imports(path)):
            assert m.startswith(allowed), m


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                return stack + [m, d]
            if not state.get(d):
                found = visit(d, stack + [m])
                if found:
                    return found
        state[m] = 2
        return None

    for m in sorted(graph):
        if not state.get(m):
            found = visit(m, [])
            if found:
                return found
    return None


def test_no_circular_imports():
    """Between modules; importing a package means importing what its __init__ re-exports
    (except from inside the package itself, which imports its siblings directly)."""
    graph = _graph()
    inits = {m for m in graph if (ROOT / Path(*m.split(".")) / "__init__.py").is_file()}

    def expand(m: str, d: str, seen=()) -> set[str]:
        if d not in inits:
            return {d}
        if m.startswith(d + ".") or d in seen:
            return set()
        return set().union(*(expand(m, x, (*seen, d)) for x in graph[d])) if graph[d] else set()

    flat = {m: set().union(*(expand(m, d) for d in deps)) if deps else set()
            for m, deps in graph.items() if m not in inits}
    assert _cycle(flat) is None, _cycle(flat)
