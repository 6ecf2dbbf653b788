"""The direction of dependencies, read from the source with `ast`: medix <- afra <- afra_web,
and no import cycles between modules or between packages.

Every import counts, at module level or inside a function, under TYPE_CHECKING or not: a
function-level import is still a dependency, only a later one. A package's `__init__` is a
module of its own (`afra.health`); importing `afra.health.model` is not counted as importing
`afra.health` too (how grimp and import-linter count), and `from pkg import sub` is an import
of the module `pkg.sub` when there is one.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = {"medix": ROOT / "firmware", "afra": ROOT / "firmware", "afra_web": ROOT / "web-setup"}
# Which top-level package may import which: the layers, lowest first.
ALLOWED = {"medix": {"medix"}, "afra": {"medix", "afra"}, "afra_web": {"medix", "afra", "afra_web"}}


def modules(sources: dict[str, Path]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for top, base in sources.items():
        for path in sorted((base / top).rglob("*.py")):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _ours(name: str, known: dict[str, Path]) -> str | None:
    """The module `name` names, or the nearest enclosing one of ours (None: not ours)."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def edges(known: dict[str, Path]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for module, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        targets: set[str | None] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets.update(_ours(alias.name, known) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                stem = node.module or ""
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    stem = ".".join(base + ([node.module] if node.module else []))
                for alias in node.names:
                    sub = f"{stem}.{alias.name}"
                    targets.add(sub if sub in known else _ours(stem, known))
        out[module] = {t for t in targets if t is not None and t != module}
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan's algorithm), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = [stack.pop()]
            while component[-1] != v:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def packages(graph: dict[str, set[str]], known: dict[str, Path]) -> dict[str, set[str]]:
    """The same graph between packages: `afra.dicom.receive` counts as `afra.dicom`; a
    top-level module (`afra.app`) stands for itself. Edges inside one package are dropped."""

    def package_of(module: str) -> str:
        if known[module].name == "__init__.py" or module.count(".") < 2:
            return module
        return module.rpartition(".")[0]

    out: dict[str, set[str]] = {}
    for module, targets in graph.items():
        source = package_of(module)
        out.setdefault(source, set()).update(
            t for t in map(package_of, targets) if t != source and t.count(".") >= 1
        )
    return out


def wrong_way(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{module} imports {target}"
        for module, targets in graph.items()
        for target in targets
        if target.split(".")[0] not in ALLOWED[module.split(".")[0]]
    )


def test_layers_point_one_way() -> None:
    found = wrong_way(edges(modules(SOURCES)))
    assert found == [], "medix <- afra <- afra_web is broken:\n" + "\n".join(found)


def test_no_import_cycles_between_modules() -> None:
    found = cycles(edges(modules(SOURCES)))
    assert found == [], "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_no_import_cycles_between_packages() -> None:
    known = modules(SOURCES)
    found = cycles(packages(edges(known), known))
    assert found == [], "package cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_the_checks_find_a_cycle_and_a_wrong_way_import(tmp_path: Path) -> None:
    # The oracle itself, on a tree written here: each rule breaks once.
    files = {
        "afra/__init__.py": "",
        "afra/app.py": "from afra.node import diagnostics\n",
        "afra/node/__init__.py": "",
        "afra/node/diagnostics.py": "def f():\n    from afra.app import build\n",
        "afra/dicom/__init__.py": "",
        "afra/dicom/header.py": "from ..store.index import Index\n",
        "afra/store/__init__.py": "",
        "afra/store/index.py": "from afra.dicom.header import Header\nimport afra_web.state\n",
        "afra_web/__init__.py": "",
        "afra_web/state.py": "from afra import app\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    known = modules({"afra": tmp_path, "afra_web": tmp_path})
    graph = edges(known)
    assert cycles(graph) == [
        ["afra.app", "afra.node.diagnostics"],
        ["afra.dicom.header", "afra.store.index"],
    ]
    assert cycles(packages(graph, known)) == [
        ["afra.app", "afra.node"],
        ["afra.dicom", "afra.store"],
    ]
    assert wrong_way(graph) == ["afra.store.index imports afra_web.state"]
