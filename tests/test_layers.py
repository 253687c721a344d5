"""Layering: schemas ← pipeline ← jobs, checked over every module in the tree (not a hand-kept list):

* importing every ``pipeline`` and ``schemas`` module (in a fresh interpreter) never imports Ray;
* ``schemas`` imports only pyarrow (numpy may come with it);
* statically (every ``import`` statement, also inside functions): ``schemas`` imports neither ``pipeline`` nor
  ``jobs``, ``pipeline`` never imports ``jobs`` or ``ray``; no module imports a private (``_``) name of
  another project module; the project's imports have no cycle.
"""
from __future__ import annotations

import ast
import pathlib
import subprocess
import sys
from typing import Dict, List, Set, Tuple

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("schemas", "pipeline", "jobs")


def _modules(package: str) -> Dict[str, pathlib.Path]:
    out = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


ALL = {name: path for pkg in PACKAGES for name, path in _modules(pkg).items()}


def _imports(name: str, path: pathlib.Path) -> List[Tuple[str, List[str], bool]]:
    """(imported module, imported names, at module level) for every import statement of a module."""
    tree = ast.parse(path.read_text(), str(path))
    top = set(map(id, tree.body))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, [], id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            out.append((base, [a.name for a in node.names], id(node) in top))
    return out


def _fresh_interpreter(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=ROOT).stdout.strip()


def test_the_tree_is_found():
    assert {"pipeline.segmenter", "pipeline.kernels.native", "schemas.layout", "jobs.dispatch"} <= set(ALL)


def test_pipeline_and_schemas_never_import_ray():
    names = sorted(n for n in ALL if n.split(".")[0] in ("pipeline", "schemas"))
    code = f"import importlib, sys\nfor m in {names!r}:\n    importlib.import_module(m)\nprint('ray' in sys.modules)"
    assert _fresh_interpreter(code) == "False"


def test_schemas_import_only_pyarrow():
    names = sorted(n for n in ALL if n.split(".")[0] == "schemas")
    code = (f"import importlib, sys\nfor m in {names!r}:\n    importlib.import_module(m)\n"
            "print(sorted(m for m in ('torch', 'ray', 'numpy', 'PIL', 'pipeline', 'jobs') if m in sys.modules))")
    assert _fresh_interpreter(code) in ("[]", "['numpy']")  # pyarrow may pull numpy in


def test_imports_point_one_way_and_no_private_names_cross_modules():
    forbidden = {"schemas": ("pipeline", "jobs", "ray", "torch"), "pipeline": ("jobs", "ray")}
    problems = []
    for name, path in ALL.items():
        layer = name.split(".")[0]
        for target, names, _ in _imports(name, path):
            root = target.split(".")[0]
            if root in forbidden.get(layer, ()):
                problems.append(f"{name} imports {target}")
            if root in PACKAGES and target != name:
                problems += [f"{name} imports the private name {target}.{n}" for n in names
                             if n.startswith("_") and not n.startswith("__") and f"{target}.{n}" not in ALL]
    assert not problems, "\n".join(problems)


def test_no_import_cycles():
    """Over every import statement, also the deferred ones inside functions (a cycle there still ties two
    modules into one)."""
    graph: Dict[str, Set[str]] = {}
    for name, path in ALL.items():
        deps = set()
        for target, names, _ in _imports(name, path):
            submodules = {f"{target}.{n}" for n in names} & set(ALL)
            deps |= (submodules or ({target} & set(ALL))) - {name}
        graph[name] = deps
    cycles, state = [], {}

    def visit(n: str, stack: List[str]) -> None:
        state[n] = 1
        for d in sorted(graph[n]):
            if state.get(d) == 1:
                cycles.append(" -> ".join(stack[stack.index(d):] + [d]))
            elif d not in state:
                visit(d, stack + [d])
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [n])
    assert not cycles, "\n".join(cycles)


# pipeline's subpackages follow the data path (ARCHITECTURE.md): which others each may import
SUBPACKAGE_DEPS = {
    "io": set(),
    "model": {"config", "io"},
    "kernels": {"config"},
    "method": {"config", "model", "kernels"},
    "labels": {"io"},
    "evaluation": {"io", "labels"},
}


def test_pipeline_subpackages_import_forward_only():
    assert set(SUBPACKAGE_DEPS) == {n.split(".")[1] for n in ALL if n.count(".") >= 2 and n.startswith("pipeline.")}
    problems = []
    for name, path in ALL.items():
        parts = name.split(".")
        if parts[0] != "pipeline" or len(parts) < 2 or parts[1] not in SUBPACKAGE_DEPS:
            continue
        own = parts[1]
        for target, names, _ in _imports(name, path):
            t = target.split(".")
            if t[0] != "pipeline":
                continue
            used = {t[1]} if len(t) > 1 else {n for n in names if f"pipeline.{n}" in ALL}
            bad = used - SUBPACKAGE_DEPS[own] - {own}
            problems += [f"{name} imports pipeline.{b}" for b in sorted(bad)]
    assert not problems, "\n".join(problems)
