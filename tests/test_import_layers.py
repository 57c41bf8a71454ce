"""The import layers of the model code: config <- models (+ registry) <- parallel <- model_loader.

Each model module owns its parameter layout; jaxllm.parallel shards and the loaders fill what the
model declares, reading it through `jaxllm.models.layout`, so nothing below may import upwards.
The imports are read from the source with `ast`, those inside functions included: a lazy import
does not make a dependency go away, it only hides a cycle until the call runs.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERED = ("jaxllm.models", "jaxllm.parallel", "jaxllm.model_loader")

# Modules of jaxllm.models that import jaxllm.parallel, and why.
MODELS_IMPORTING_PARALLEL = {
    "jaxllm.models.step": (
        "the jitted step takes the params and the KV cache in the mesh shardings that "
        "jaxllm.parallel derives from the model's layout; step.py runs models, parallel never "
        "imports it, and it keeps its public path jaxllm.models.step"
    ),
}
# The one module that imports others by a computed name: its edges come from its table.
REGISTRY = "jaxllm.models.registry"


def _module_files() -> dict[str, Path]:
    """Every module of the jaxllm package: dotted name -> source file."""
    out = {}
    for path in sorted((ROOT / "jaxllm").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _module_files()


def _in(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _dynamic_imports(tree: ast.AST) -> list[int]:
    """Line numbers of `importlib.import_module(...)` and `__import__(...)` calls."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            if (isinstance(f, ast.Attribute) and f.attr == "import_module") or (
                isinstance(f, ast.Name) and f.id in ("import_module", "__import__")
            ):
                lines.append(node.lineno)
    return lines


def _imports(name: str, tree: ast.AST) -> set[str]:
    """The jaxllm modules `name` imports anywhere in its source.

    `from P import x` is an edge to P.x when that is a module, else to P. The parent packages
    Python runs first are not edges: a package that re-exports its submodules (jaxllm.parallel,
    jaxllm.model_loader) would otherwise form a cycle with each of them.
    """
    is_package = MODULES[name].name == "__init__.py"
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the package of `name`
                base_parts = name.split(".")[: len(name.split(".")) - node.level + is_package]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.add(sub if sub in MODULES else base)
    return {m for m in out if m in MODULES}


def _graph() -> dict[str, set[str]]:
    graph = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        graph[name] = _imports(name, tree)
        if any(_in(name, p) for p in LAYERED) and name != REGISTRY:
            assert not _dynamic_imports(tree), (
                f"{name} imports by a computed name (lines {_dynamic_imports(tree)}); only "
                f"{REGISTRY} may, so that this test sees every edge"
            )
    from jaxllm.models.registry import model_module_names

    graph[REGISTRY] |= set(model_module_names())
    return graph


GRAPH = _graph()


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with a cycle (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:  # recursion depth is bounded by the module count (~200)
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1 or v in graph[v]:
                found.append(sorted(scc))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _cycle_path(graph: dict[str, set[str]], scc: list[str]) -> list[str]:
    """One concrete cycle through the first module of `scc` (breadth-first, inside the SCC)."""
    start, members = scc[0], set(scc)
    parent: dict[str, str] = {}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph[v] & members):
            if w == start:
                back = [v]  # v, its parent, ..., start
                while back[-1] != start:
                    back.append(parent[back[-1]])
                return [*reversed(back), start]
            if w not in parent:
                parent[w] = v
                queue.append(w)
    return scc


def _violations(package: str, forbidden: str, allowed: dict[str, str]) -> list[str]:
    return [
        f"{name} imports {target}"
        for name in sorted(GRAPH)
        if _in(name, package) and name not in allowed
        for target in sorted(GRAPH[name])
        if _in(target, forbidden)
    ]


@pytest.mark.parametrize("package", ["jaxllm.models", "jaxllm.parallel"])
def test_models_and_parallel_do_not_import_the_loaders(package):
    assert not _violations(package, "jaxllm.model_loader", {})


def test_models_do_not_import_parallel_except_where_documented():
    assert not _violations("jaxllm.models", "jaxllm.parallel", MODELS_IMPORTING_PARALLEL)
    for name in MODELS_IMPORTING_PARALLEL:  # an exception that is no longer needed goes
        assert any(_in(t, "jaxllm.parallel") for t in GRAPH[name]), f"{name}: stale exception"


def test_no_import_cycle_among_models_parallel_and_loaders():
    # cycles are searched in the whole jaxllm graph: one may pass through another package
    # (e.g. models -> layers -> models); those touching the three packages fail
    bad = [
        " -> ".join(_cycle_path(GRAPH, scc)) + f"  (in a cycle together: {', '.join(scc)})"
        for scc in _cycles(GRAPH)
        if any(_in(m, p) for m in scc for p in LAYERED)
    ]
    assert not bad, "import cycles:\n" + "\n".join(bad)


def test_the_checker_sees_lazy_imports_and_cycles():
    tree = ast.parse("def f():\n    from jaxllm.parallel import make_mesh\n")
    assert _imports("jaxllm.models.step", tree) == {"jaxllm.parallel"}
    tree = ast.parse("from jaxllm.models import registry\nfrom jaxllm.models import nope\n")
    assert _imports("jaxllm.models.step", tree) == {"jaxllm.models.registry", "jaxllm.models"}
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycle_path({"a": {"b", "d"}, "b": {"c"}, "c": {"a"}, "d": set()}, ["a", "b", "c"]) == [
        "a",
        "b",
        "c",
        "a",
    ]
    assert "jaxllm.models.llama" in GRAPH[REGISTRY]  # the registry's computed imports
