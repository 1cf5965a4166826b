"""No import cycle between the parts of the package (its subpackages and top-level modules): every `import`
statement of every module, those inside functions included, read with ast, so that the layers stay layers
(docs/ARCHITECTURE.md, "Layers"). (The benchmark lives outside the package, in benchmarks/.)"""
from __future__ import annotations

import ast
from pathlib import Path

import bucketserve

PACKAGE = Path(bucketserve.__file__).resolve().parent
LEFT_OUT: tuple[str, ...] = ()  # parts of the package the walk leaves out: none
ROOT = "bucketserve (the package root)"


def _module_name(path: Path) -> str:
    parts = ("bucketserve",) + path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _part(module: str) -> str:
    """The part a module belongs to: its subpackage or top-level module (bucketserve.runtime.step -> runtime)."""
    names = module.split(".")
    if len(names) == 1:
        return ROOT
    top = names[1]
    return top if (PACKAGE / top).is_dir() or (PACKAGE / f"{top}.py").is_file() else ROOT


def _imported_modules(path: Path) -> set[str]:
    """Every bucketserve module that path's import statements name, relative imports resolved."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            found.add(source)
            found.update(f"{source}.{alias.name}" for alias in node.names)  # `from . import x` names module x
    return {name for name in found if name == "bucketserve" or name.startswith("bucketserve.")}


def part_imports() -> dict[str, dict[str, set[str]]]:
    """{part: {part it imports: the modules that do}}, parts importing themselves left out."""
    edges: dict[str, dict[str, set[str]]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.relative_to(PACKAGE).parts[0] in LEFT_OUT:
            continue
        module = _module_name(path)
        here = _part(module)
        for imported in _imported_modules(path):
            there = _part(imported)
            if there != here and there not in LEFT_OUT:
                edges.setdefault(here, {}).setdefault(there, set()).add(module)
    return edges


def cycles(edges: dict[str, dict[str, set[str]]]) -> list[list[str]]:
    """The strongly connected groups of more than one part (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups = []

    def visit(part: str) -> None:
        index[part] = low[part] = len(index)
        stack.append(part)
        for other in edges.get(part, {}):
            if other not in index:
                visit(other)
                low[part] = min(low[part], low[other])
            elif other in stack:
                low[part] = min(low[part], index[other])
        if low[part] == index[part]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == part:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for part in sorted(edges):
        if part not in index:
            visit(part)
    return groups


def test_the_walk_sees_relative_and_deferred_imports():
    edges = part_imports()
    assert "bucketserve.runtime.model_runner" in edges["runtime"]["compiler"]  # from ..compiler import aoti
    assert "bucketserve.entrypoints.cli" in edges["entrypoints"]["modeling"]  # inside a function
    assert cycles({"a": {"b": set()}, "b": {"c": set()}, "c": {"a": set()}, "d": {"a": set()}}) == [["a", "b", "c"]]


def test_no_import_cycle_between_the_parts_of_the_package():
    edges = part_imports()
    found = cycles(edges)
    detail = [{a: {b: sorted(edges[a][b]) for b in group if b in edges.get(a, {})} for a in group} for group in found]
    assert not found, f"import cycles between parts of bucketserve: {detail}"
