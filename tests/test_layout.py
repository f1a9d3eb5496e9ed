"""The package's layout: no import cycle among edlae_dask's modules; config and jobspec need neither click nor the CLI.

The import graph is read from the source with ``ast``: every ``import`` and ``from ... import``
of an ``edlae_dask`` module, at module level and inside functions alike (a lazy import still
closes a cycle when it runs).
"""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "edlae_dask"
# the modules of the configuration layer, kept out of every cycle (the CLI sits on top of them)
LAYER = ("edlae_dask.config", "edlae_dask.jobspec", "edlae_dask.cli")


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name; a package is named by its ``__init__``."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()


def _owner(dotted: str) -> str:
    """The module a dotted name lives in: itself if it is a module, else its longest module prefix."""
    while dotted not in MODULES and "." in dotted:
        dotted = dotted.rpartition(".")[0]
    return dotted


def _imports(name: str, path: Path) -> set[str]:
    """The edlae_dask modules that module ``name`` imports, anywhere in it."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, up level - 1 packages
                parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            # `from x import y` loads the module x.y where there is one (also from inside x: a child
            # importing a sibling through its package), else x itself
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        found |= {_owner(t) for t in targets if t == "edlae_dask" or t.startswith("edlae_dask.")}
    return found - {name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _components(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components: each of more than one module holds a cycle."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def _a_cycle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """One cycle through the first module of a component, as the path a -> ... -> a (breadth first: a short one)."""
    start, members = component[0], set(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle through {start}")


def _describe(cycles) -> str:
    return "; ".join(" -> ".join(_a_cycle(GRAPH, c)) + f" (modules: {', '.join(c)})" for c in cycles)


def test_the_graph_holds_module_level_and_function_level_imports():
    assert "edlae_dask.config" in GRAPH["edlae_dask.jobspec"]  # module level
    assert "edlae_dask.cluster" in GRAPH["edlae_dask.jobspec"]  # inside a function
    assert "edlae_dask.io._fs" in GRAPH["edlae_dask.cli"]  # inside a method
    assert "edlae_dask.config" in GRAPH["edlae_dask.model"]


def test_cycles_are_found_and_named():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _components(graph) == [["a", "b", "c"]]
    assert _a_cycle(graph, ["a", "b", "c"]) == ["a", "b", "c", "a"]
    assert _components({"a": {"b"}, "b": set()}) == []


def test_the_configuration_layer_is_in_no_import_cycle():
    cycles = [c for c in _components(GRAPH) if set(c) & set(LAYER)]
    assert not cycles, f"import cycles: {_describe(cycles)}"


def test_no_import_cycle_among_the_modules():
    cycles = _components(GRAPH)
    assert not cycles, f"import cycles: {_describe(cycles)}"


@pytest.mark.parametrize("name", ["edlae_dask.config", "edlae_dask.jobspec"])
def test_config_and_jobspec_import_neither_click_nor_the_cli(name):
    imported = GRAPH[name]
    assert "edlae_dask.cli" not in imported
    tree = ast.parse(MODULES[name].read_text())
    roots = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
             for alias in node.names}
    roots |= {node.module.split(".")[0] for node in ast.walk(tree)
              if isinstance(node, ast.ImportFrom) and node.module and not node.level}
    assert "click" not in roots
    if name == "edlae_dask.config":
        assert not roots & {"dask", "distributed"}


def test_importing_jobspec_loads_no_click_and_no_dask():
    # this repository's code, whatever edlae_dask the interpreter has installed
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    code = ("import sys, edlae_dask.jobspec, edlae_dask.config; "
            "print(sorted(m for m in ('click', 'dask', 'distributed', 'edlae_dask.cli') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
