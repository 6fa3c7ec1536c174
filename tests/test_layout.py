"""The package's shape: no import circle, no private name imported across modules, and imports run one way
(the kernel and the reference never import the planner or the public API). Read statically with ``ast``; every
module is also imported alone in a fresh interpreter."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "attnlab"


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _imports(name: str, path: Path):
    """(imported module, imported names, at module level?) of every attnlab import in one module."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    top_level = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "attnlab":
                continue
            names = [a.name for a in node.names]
            for n in names:                       # "from . import planner" imports a module
                if f"{target}.{n}" in MODULES:
                    yield f"{target}.{n}", [], id(node) in top_level
            yield target, [n for n in names if f"{target}.{n}" not in MODULES], id(node) in top_level
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "attnlab":
                    yield a.name, [], id(node) in top_level


GRAPH = {name: list(_imports(name, path)) for name, path in MODULES.items()}


def test_no_private_name_is_imported_from_another_module():
    crossing = [f"{mod}: from {target} import {n}" for mod, edges in GRAPH.items() for target, names, _ in edges
                for n in names if n.startswith("_") and n != "__version__"]
    assert not crossing, "\n".join(crossing)


def _descends(target: str, prefix: str) -> bool:
    return target == prefix or target.startswith(prefix + ".")


@pytest.mark.parametrize("low, high", [("attnlab.kernel", "attnlab.api"), ("attnlab.kernel", "attnlab.planner"),
                                       ("attnlab.kernel", "attnlab.layers"), ("attnlab.reference", "attnlab.api"),
                                       ("attnlab.reference", "attnlab.planner"),
                                       ("attnlab.reference", "attnlab.kernel"), ("attnlab._inputs", "attnlab.api"),
                                       ("attnlab._inputs", "attnlab.planner"), ("attnlab._inputs", "attnlab.kernel"),
                                       ("attnlab.planner", "attnlab.api")])
def test_imports_run_one_way(low, high):
    upward = [f"{mod} imports {target}" for mod, edges in GRAPH.items() if _descends(mod, low)
              for target, _, _ in edges if _descends(target, high)]
    assert not upward, "\n".join(upward)


def _resolve(target: str) -> str | None:
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


def test_no_import_circle_among_module_level_imports():
    """A cycle of imports executed at import time (function-level imports are not followed), a package's own
    __init__ re-exporting its submodules excepted."""
    edges = {mod: {t for t in (_resolve(target) for target, _, top in es if top) if t and t != mod}
             for mod, es in GRAPH.items()}
    # a submodule importing its parent package's __init__ is fine only when that __init__ does not import it back
    state, stack, cycles = {}, [], []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in edges.get(node, ()):
            if _descends(nxt, node) or _descends(node, nxt):
                continue                           # a package and its own submodules
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for mod in edges:
        if mod not in state:
            visit(mod)
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_the_core_has_no_import_circle_even_inside_functions():
    core = ("attnlab._inputs", "attnlab.reference", "attnlab.api", "attnlab.planner", "attnlab.kernel",
            "attnlab.checks", "attnlab.masks", "attnlab.scores", "attnlab.softmax", "attnlab.merge", "attnlab._array",
            "attnlab.layers", "attnlab.attention", "attnlab.flash")          # (the last two: the old layout)
    inside = lambda m: any(_descends(m, c) for c in core)
    edges = {mod: {t for t in (_resolve(target) for target, _, _ in es) if t and t != mod and inside(t)}
             for mod, es in GRAPH.items() if inside(mod)}
    closure = {}

    def reach(mod, seen):
        for nxt in edges.get(mod, ()):
            if nxt not in seen and not _descends(nxt, mod):
                seen.add(nxt)
                reach(nxt, seen)
        return seen
    circles = [f"{a} <-> {b}" for a in edges for b in reach(a, set())
               if a in reach(b, set()) and not (_descends(a, b) or _descends(b, a))]
    assert not circles, "\n".join(sorted(set(circles)))


def test_the_core_modules_import_alone_in_a_fresh_interpreter():
    names = [m for m in MODULES if m.split(".")[1:2] and m.split(".")[1] in
             ("_inputs", "checks", "reference", "api", "planner", "kernel", "layers", "cost", "record")]
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    for name in names:
        subprocess.run([sys.executable, "-c", code, name], check=True, env={"PYTHONPATH": str(SRC)})


def test_every_attnlab_import_names_a_module_that_exists():
    missing = [f"{mod}: {target}" for mod, edges in GRAPH.items() for target, _, _ in edges if target not in MODULES]
    assert not missing, "\n".join(missing)


BENCHMARKS = SRC.parent / "benchmarks"


def _private_uses(path: Path, local: set[str], package: str = ""):
    """``from M import _x`` and ``m._x`` where M / m is an attnlab module or a sibling script in ``local``
    (``package``: the package a module of attnlab lives in, for its relative imports)."""
    tree = ast.parse(path.read_text(), str(path))
    ours = lambda mod: mod.split(".")[0] == "attnlab" or mod in local
    bound = set()                                   # names bound to one of our modules: import x / from x import m
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if ours(a.name):
                    bound.add(a.asname or a.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")
                module = ".".join(base[:len(base) - node.level + 1] + ([node.module] if node.module else []))
            if not ours(module):
                continue
            node.module = module
            for a in node.names:
                if f"{node.module}.{a.name}" in MODULES:
                    bound.add(a.asname or a.name)
                elif a.name.startswith("_") and a.name != "__version__":
                    yield f"from {node.module} import {a.name}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            base = node.value
            while isinstance(base, ast.Attribute):
                base = base.value
            if isinstance(base, ast.Name) and base.id in bound:
                yield f"{ast.unparse(node)}"


def test_benchmarks_use_no_private_name_of_another_module():
    """The benchmark scripts call attnlab (and each other) through public names only, attribute access included."""
    scripts = sorted(BENCHMARKS.glob("*.py"))
    assert scripts
    local = {p.stem for p in scripts}
    crossing = [f"benchmarks/{p.name}: {use}" for p in scripts for use in _private_uses(p, local)]
    assert not crossing, "\n".join(crossing)


def test_the_private_name_check_sees_attribute_access(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text("from attnlab import bench\nimport helper\nbench._row(1)\nhelper._x\n"
                      "from attnlab.bench import _row\nbench.run\n")
    assert sorted(_private_uses(script, {"helper"})) == ["bench._row", "from attnlab.bench import _row",
                                                         "helper._x"]
    script.write_text("from .. import bench\nfrom ..kernel import forward as f\nbench._row\nf._x.y\n")
    assert sorted(_private_uses(script, set(), "attnlab.commands")) == ["bench._row", "f._x"]


def test_no_private_name_is_reached_through_another_module():
    """``from . import bench`` then ``bench._row``: the attribute-access form of a private import."""
    crossing = [f"{name}: {use}" for name, path in MODULES.items()
                for use in _private_uses(path, set(), name if path.name == "__init__.py" else name.rpartition(".")[0])
                if not use.startswith("from ")]             # (the from-import form: the test above)
    assert not crossing, "\n".join(crossing)


def test_no_private_method_of_another_module_s_class_is_called():
    """``layer._heads(...)`` from outside layers.py: a private method of a class, reached through an instance.
    Calls on ``self``/``cls`` (a subclass using its base's hooks) are the class's own business."""
    trees = {name: ast.parse(path.read_text(), str(path)) for name, path in MODULES.items()}
    defined: dict[str, set[str]] = {}
    for name, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and item.name.startswith("_") \
                            and not item.name.startswith("__"):
                        defined.setdefault(item.name, set()).add(name)
    assert "layers" in str(defined.get("_keys_values"))                # the check sees MultiHeadAttention's
    crossing = []
    for name, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in defined and name not in defined[node.attr]:
                base = node.value
                if isinstance(base, ast.Name) and base.id in ("self", "cls"):
                    continue
                if isinstance(base, ast.Call) and getattr(base.func, "id", "") == "super":
                    continue
                crossing.append(f"{name}: {ast.unparse(node)} (defined in {sorted(defined[node.attr])})")
    assert not crossing, "\n".join(crossing)
