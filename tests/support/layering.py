"""The import graph of the project's packages, read from the source (no import runs).

Every ``import``/``from ... import`` of every module counts, at any depth
(inside functions too), relative imports resolved; so do ``importlib``
strings: in a module that calls ``import_module``, every string constant
that names a module of the checked packages. ``from pkg import name``
counts as an import of ``pkg.name`` when that is a module, else of ``pkg``.

:func:`check` returns the violations of a layer order (a package imports
one above it) and the cycles between modules (strongly connected
components of more than one module; a package's ``__init__`` importing its
own submodules, which import each other only through their full names, is
not a cycle by itself).
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class Edge:
    source: str  # importing module (dotted)
    target: str  # imported module (dotted)
    line: int

    def __str__(self):
        return f"{self.source} (line {self.line}) imports {self.target}"


def modules(root: Path, packages) -> dict[str, Path]:
    """Dotted name -> file, for every module of ``packages`` under ``root``."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            rel = path.relative_to(root).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _resolve(name: str, known: dict) -> str | None:
    """The longest known module that ``name`` is or lies inside."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        candidate = ".".join(parts[:i])
        if candidate in known:
            return candidate
    return None


def imports(name: str, path: Path, known: dict) -> list[Edge]:
    """The edges from module ``name`` (file ``path``) to modules in ``known``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    edges = []

    def add(target, line):
        resolved = _resolve(target, known)
        if resolved is not None and resolved != name:
            edges.append(Edge(name, resolved, line))

    uses_importlib = False
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                full = f"{module}.{alias.name}"
                add(full if full in known else module, node.lineno)
        elif isinstance(node, ast.Attribute) and node.attr == "import_module":
            uses_importlib = True
        elif isinstance(node, ast.Name) and node.id == "import_module":
            uses_importlib = True
    if uses_importlib:
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in known:
                add(node.value, node.lineno)
    return edges


def graph(root: Path, packages) -> tuple[dict, list[Edge]]:
    known = modules(root, packages)
    edges = [e for name, path in known.items() for e in imports(name, path, known)]
    return known, list(dict.fromkeys(edges))  # one per (module, module, line)


def upward(edges, order) -> list[Edge]:
    """Edges from a package to one above it in ``order`` (bottom first)."""
    rank = {p: i for i, p in enumerate(order)}
    return [e for e in edges if rank[e.target.split(".")[0]] > rank[e.source.split(".")[0]]]


def cycles(known, edges) -> list[list[str]]:
    """Groups of modules that import each other, directly or through others.

    An edge from a package's ``__init__`` to its own submodule (a re-export)
    is left out: the submodules reach it only by their full names, and
    Python runs the ``__init__`` first either way.
    """
    succ = {m: set() for m in known}
    for e in edges:
        if e.target.startswith(e.source + "."):
            continue  # a package re-exporting its submodule
        succ[e.source].add(e.target)
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):  # Tarjan's algorithm, iterative enough for these sizes
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(succ[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(known):
        if v not in index:
            visit(v)
    return out


def check(root: Path, order) -> list[str]:
    """Every layering problem of the packages ``order`` (bottom first) under ``root``, as sentences."""
    known, edges = graph(root, order)
    problems = [f"upward import: {e} (the order, bottom first: {' <- '.join(order)})"
                for e in upward(edges, order)]
    for group in cycles(known, edges):
        inside = [str(e) for e in edges if e.source in group and e.target in group
                  and not e.target.startswith(e.source + ".")]
        problems.append(f"import cycle between {', '.join(group)}: " + "; ".join(inside))
    return problems
