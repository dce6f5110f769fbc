"""nn_core's imports: no cycles (a static check over the import graph: every ``import``
statement, including the ones inside functions), the layer order of
docs/architecture.md (nothing imports from a higher level), and each recurrent module
imported first, on its own, in a fresh interpreter."""
import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import nn_core

PACKAGE = Path(nn_core.__file__).resolve().parent
ROOT = PACKAGE.parent


def _modules():
    """``{dotted name: (path, is_package)}`` of every Python module of nn_core."""
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        is_pkg = parts[-1] == "__init__"
        mods[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return mods


def _targets(mod, is_pkg, node, mods):
    """The nn_core modules one import statement of ``mod`` loads."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level:
            base = mod.split(".") if is_pkg else mod.split(".")[:-1]
            base = base[:len(base) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module
        # "from pkg import sub" imports the submodule pkg.sub
        names = [f"{target}.{a.name}" if f"{target}.{a.name}" in mods else target
                 for a in node.names]
    out = set()
    for name in names:
        while name not in mods and "." in name:
            name = name.rpartition(".")[0]
        if name in mods and name != mod:
            out.add(name)
    return out


def import_graph():
    mods = _modules()
    graph = {}
    for mod, (path, is_pkg) in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        graph[mod] = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[mod] |= _targets(mod, is_pkg, node, mods)
    return graph


def find_cycle(graph):
    """One import cycle as a list of modules, or None."""
    state = {}                                   # 1: on the current path, 2: done
    path = []

    def visit(v):
        state[v] = 1
        path.append(v)
        for w in sorted(graph[v]):
            if state.get(w) == 1:
                return path[path.index(w):] + [w]
            if w not in state:
                found = visit(w)
                if found:
                    return found
        path.pop()
        state[v] = 2
        return None

    for v in sorted(graph):
        if v not in state:
            found = visit(v)
            if found:
                return found
    return None


def test_the_graph_sees_the_recurrent_imports():
    graph = import_graph()
    assert "nn_core.recurrent.base" in graph["nn_core.recurrent.stacked"]
    assert "nn_core.recurrent.bidirectional" in graph["nn_core.recurrent.rnn_cell"]
    assert "nn_core.recurrent" in graph["nn_core.interop._recurrent"]


def test_find_cycle_reports_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_recurrent_modules_import_first_in_a_fresh_interpreter():
    """Each recurrent (and interop) module imported before anything else of nn_core
    (one interpreter; the pure-Python nn_core modules are forgotten between imports,
    compiled kernels kept).  The static check above covers the whole package."""
    names = sorted(m for m in _modules()
                   if m.startswith(("nn_core.recurrent", "nn_core.interop")))
    script = f"""
import importlib, sys, traceback
failed = []
for name in {names!r}:
    for key in [k for k in sys.modules if k == "nn_core" or k.startswith("nn_core.")]:
        if not key.startswith("nn_core._kernels."):
            del sys.modules[key]
    try:
        importlib.import_module(name)
    except Exception:
        failed.append(name + ": " + traceback.format_exc(limit=3))
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=str(ROOT), env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ------------------------------------------------------------------ the layer order
ARCHITECTURE = ROOT / "docs" / "architecture.md"


def layer_table(text=None):
    """``{component: level}`` from the table "The layers, bottom to top" of
    docs/architecture.md: each row's ``nn_core/...`` paths, level 0 the first row that
    names any (a component is ``nn_core/NAME`` or ``nn_core/NAME.py``)."""
    text = ARCHITECTURE.read_text() if text is None else text
    section = text.split("## The layers, bottom to top", 1)[1].split("\n## ", 1)[0]
    levels, level = {}, 0
    for line in section.splitlines():
        if not line.startswith("|") or line.startswith("|---"):
            continue
        names = [p.split("/")[1].removesuffix(".py") for p in
                 re.findall(r"`(nn_core/[A-Za-z_][A-Za-z0-9_.]*/?)", line)]
        if not names:
            continue
        for name in names:
            assert name not in levels, f"{name} is in two rows of the layer table"
            levels[name] = level
        level += 1
    return levels


def component(module):
    """``nn_core.training.trainer`` -> ``training``; the package itself is ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def upward_imports(graph, levels):
    """``(importer, imported)`` pairs where a module imports from a higher level."""
    return sorted((a, b) for a, targets in graph.items() for b in targets
                  if levels[component(b)] > levels[component(a)])


def test_the_layer_table_covers_every_component():
    levels = layer_table()
    missing = sorted({component(m) for m in _modules()} - set(levels))
    assert not missing, f"components missing from the layer table: {missing}"
    assert levels["_kernels"] < levels["module"] < levels["models"] < levels["training"] \
        < levels["tasks"] == levels["cli"]


def test_upward_imports_are_found():
    levels = {"low": 0, "high": 1}
    assert upward_imports({"nn_core.low.a": {"nn_core.high.b"}, "nn_core.high.b": set()},
                          levels) == [("nn_core.low.a", "nn_core.high.b")]


def test_no_module_imports_from_a_higher_layer():
    """A module imports only from its own level of docs/architecture.md or below."""
    breaches = upward_imports(import_graph(), layer_table())
    assert not breaches, "imports against the layer order: " + ", ".join(
        f"{a} -> {b}" for a, b in breaches)
