"""The package's architecture, checked from its source: layers point down, no import cycles (function-level
imports included), no module over 450 lines (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "nulltext"
MAX_LINES = 450

# lowest first; a module may import its own layer (without a cycle) and the layers below it
LAYERS = [
    ("base", ["nulltext.errors", "nulltext.settings", "nulltext.lazy", "nulltext.progress"]),
    ("core", ["nulltext.core", "nulltext.bundled.data", "nulltext.bundled.tokenizer", "nulltext.bundled"]),
    ("io", ["nulltext.io"]),
    ("model", ["nulltext.model", "nulltext.captioning"]),
    ("inversion", ["nulltext.inversion"]),
    ("editing", ["nulltext.editing"]),
    ("evaluation", ["nulltext.evaluation", "nulltext.bundled.evaluate", "nulltext.bundled.train"]),
    ("batch", ["nulltext.batch"]),
    ("faces", ["nulltext.cli", "nulltext.app", "nulltext.app_fields", "nulltext.app_uploads", "nulltext.demo"]),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def rank(module: str) -> int:
    best = max(((len(prefix), i) for i, (_, prefixes) in enumerate(LAYERS) for prefix in prefixes
                if module == prefix or module.startswith(prefix + ".")), default=None)
    assert best is not None, f"{module} belongs to no layer: add it to LAYERS"
    return best[1]


def imports(module: str) -> set[str]:
    """Every nulltext module `module` imports, at module level or inside functions (not under TYPE_CHECKING)."""
    tree = ast.parse(MODULES[module].read_text())
    type_checking = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                     and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING"
                     for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in type_checking:
            continue
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module
                     for a in node.names]
        found |= {n for n in names if n in MODULES and n != module}
    return found


GRAPH = {m: imports(m) for m in MODULES if m != "nulltext" and not m.endswith("__main__")}


def test_every_import_points_down_or_within_its_layer():
    upward = sorted(f"{m} ({LAYERS[rank(m)][0]}) imports {n} ({LAYERS[rank(n)][0]})"
                    for m, targets in GRAPH.items() for n in targets if n != "nulltext" and rank(n) > rank(m))
    assert upward == []


def test_no_import_cycles_function_level_imports_included():
    state: dict[str, int] = {}  # 1: on the path, 2: done
    cycles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(GRAPH.get(m, ())):
            if state.get(n) == 1:
                cycles.append(" → ".join(path[path.index(n):] + [n]))
            elif n not in state:
                visit(n, path + [n])
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m, [m])
    assert cycles == []


def test_no_module_is_longer_than_450_lines():
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_the_layers_are_found():  # the walk sees the package's imports (a broken walk would pass every test above)
    assert "nulltext.model" in GRAPH["nulltext.inversion.null_text"]
    assert "nulltext.io.outputs" in GRAPH["nulltext.io.images"] and len(GRAPH) > 30
