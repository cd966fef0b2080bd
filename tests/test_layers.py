"""The import graph of parity: one direction of dependency, no circles.

Layers, lowest first; a module may import its own layer's modules (of its own
package) and lower layers only::

    parity (version), parity.errors, parity.settings, parity.units
    parity.schemas.*                      the store format
    parity.hub                            the one Hugging Face Hub client
    parity.recorder.* | parity.differ.* | parity.goldens.*   (never each other)
    parity.workflows.*                    record-against-golden, bisect, demo, candidates
    parity.output                         the CLI's one output sink
    parity.cli                            the command line

Run ``python tests/test_layers.py`` to print the graph (every import, also the
ones inside functions) and any violation.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Where each installed package lives in the repository (pyproject's package-dir).
PACKAGE_DIRS = {"parity": "parity", "parity.schemas": "schemas", "parity.recorder": "recorder",
                "parity.differ": "differ", "parity.goldens": "goldens"}
LAYERS = [
    ("parity", "parity.errors", "parity.settings", "parity.units"),
    ("parity.schemas",),
    ("parity.hub",),
    ("parity.recorder", "parity.differ", "parity.goldens"),
    ("parity.workflows",),
    ("parity.output",),
    ("parity.cli",),
]


def modules() -> dict[str, Path]:
    found = {}
    for package, directory in PACKAGE_DIRS.items():
        root = REPO / directory
        for path in sorted(root.rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if package == "parity" and parts[0] in {d for p, d in PACKAGE_DIRS.items() if p != "parity"}:
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join((package, *parts))] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The parity modules ``name`` imports anywhere in its body (a package import counts as its __init__)."""
    is_package = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = name.split(".") if is_package else name.split(".")[:-1]
                here = here[: len(here) - (node.level - 1)]
                base = ".".join([*here, base] if base else here)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.add(sub if sub in known else base)
    return {m for m in out if m in known and m != name}


def layer_of(name: str) -> tuple[int, str]:
    """(layer index, the unit within the layer) of a module: its most specific listed prefix."""
    best = None
    for index, units in enumerate(LAYERS):
        for unit in units:
            if (name == unit or name.startswith(unit + ".")) and (best is None or len(unit) > len(best[1])):
                best = (index, unit)
    if best is None:
        raise AssertionError(f"{name} is in no layer: add it to LAYERS")
    return best


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def upward_edges(edges: dict[str, set[str]]) -> list[str]:
    bad = []
    for src, targets in edges.items():
        (ls, us) = layer_of(src)
        for dst in targets:
            (ld, ud) = layer_of(dst)
            if ld > ls or (ld == ls and ud != us):
                bad.append(f"{src} -> {dst}")
    return sorted(bad)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    sys.setrecursionlimit(10_000)

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_every_module_is_in_a_layer():
    for name in modules():
        layer_of(name)


def test_no_module_imports_a_higher_layer_or_a_sibling_package():
    assert upward_edges(graph()) == []


def test_the_import_graph_has_no_cycle():
    assert cycles(graph()) == []


def test_no_differ_module_imports_torch_vllm_or_typer_anywhere():
    # A diff must start fast: no differ module imports these, not even inside a function.
    for name, path in modules().items():
        if not name.startswith("parity.differ"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not [n for n in names if n.split(".")[0] in ("torch", "vllm", "typer")], (name, names)


if __name__ == "__main__":
    edges = graph()
    for src in sorted(edges):
        print(f"{src:38} -> {' '.join(sorted(edges[src])) or '-'}")
    up, circles = upward_edges(edges), cycles(edges)
    print(f"\n{len(edges)} modules, {sum(map(len, edges.values()))} edges; "
          f"upward edges: {len(up)}; cycles: {len(circles)}")
    for line in up:
        print("  upward:", line)
    for c in circles:
        print("  cycle:", " ".join(c))
    sys.exit(1 if up or circles else 0)
