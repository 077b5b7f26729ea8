"""The package's architecture, read from its source: every import (at the top and inside functions), drawn as a graph
of modules and of packages. No circles, nothing imports a package above its own, and few layers below the command."""

from __future__ import annotations

import ast
import pathlib
from functools import cache

import pytest

SOURCE = pathlib.Path(__file__).parents[1] / "src" / "imgvec"
# Each package's rank: a module may import its own package and those ranked lower, never higher (ARCHITECTURE.md).
RANKS = {"base": 0, "kernels": 0, "inputs": 1, "dataset": 1, "spark": 1, "models": 2, "features": 3, "batch": 4,
         "answers": 4, "cli": 5, "": 6}  # "": imgvec's facade (its public names, and old module paths kept)
MOST_LAYERS = 6  # package layers below the command line


@cache
def imports() -> dict[str, set[str]]:
    """{module: the imgvec modules it imports}, every import statement of the source counted."""
    modules = {}
    for path in SOURCE.rglob("*.py"):
        parts = ("imgvec", *path.relative_to(SOURCE).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], *filter(None, [
                        node.module])])
                found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
        graph[name] = {m for m in found if m in modules and m != name and m != "imgvec"}
    return graph


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in RANKS) else ""


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one node (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def layers(graph: dict[str, set[str]], node: str) -> int:
    """The longest chain of imports below `node`."""
    return max((1 + layers(graph, other) for other in graph[node]), default=0)


def test_no_module_imports_another_in_a_circle():
    assert circles(imports()) == []


def test_packages_import_only_lower_ones_so_they_form_no_circle_either():
    upward = [(module, other) for module, targets in imports().items() for other in targets
              if package_of(other) != package_of(module) and RANKS[package_of(other)] >= RANKS[package_of(module)]]
    assert upward == []
    packages = {}
    for module, targets in imports().items():
        packages.setdefault(package_of(module), set()).update(package_of(t) for t in targets)
    packages = {p: targets - {p} for p, targets in packages.items()}
    assert circles(packages) == []
    assert layers(packages, "cli") <= MOST_LAYERS
    assert set(packages) == set(RANKS)  # a new package gets a rank here, and a line in ARCHITECTURE.md


@pytest.mark.parametrize("package", sorted(p for p in RANKS if p))
def test_each_package_says_its_one_job(package):
    docstring = ast.get_docstring(ast.parse((SOURCE / package / "__init__.py").read_text()))
    assert docstring and len(docstring.split()) >= 8


def test_the_graph_would_show_a_circle_and_an_upward_import():
    # the checks above on a graph made to fail them
    graph = {"imgvec.base.a": {"imgvec.answers.b"}, "imgvec.answers.b": {"imgvec.base.a"}}
    assert circles(graph) == [["imgvec.answers.b", "imgvec.base.a"]]
    assert RANKS[package_of("imgvec.answers.b")] > RANKS[package_of("imgvec.base.a")]
    assert layers({"a": {"b"}, "b": {"c"}, "c": set()}, "a") == 2
