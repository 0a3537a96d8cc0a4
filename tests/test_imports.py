"""The packages' import structure: no cycle, and no lower layer importing a higher one.

Every ``import`` / ``from ... import`` of ``llmc`` and ``llmc_slm`` modules is read from the source (module
level and inside functions alike: a lazy import is still a dependency), and each module gets the rank of
its layer below. An import may only go to the same or a lower rank, and the graph must have no cycle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("llmc", "llmc_slm")

# Layers, lowest first: a module's rank is that of the longest prefix listed.
LAYERS = [
    ["llmc.errors", "llmc.registry"],   # (the packages' own __init__ files hold docstrings only)
    ["llmc.methods", "llmc.models.layout", "llmc.models.families", "llmc.paths", "llmc.utils", "llmc.progress",
     "llmc.rss", "llmc.library_logs", "llmc.data.sources", "llmc.data.wikitext2", "llmc_slm.tasks"],
    ["llmc.catalog"],
    ["llmc.config"],
    ["llmc.quant", "llmc.data", "llmc.profiling", "llmc.results", "llmc.eval", "llmc.estimate", "llmc.resume"],
    ["llmc.models"],
    ["llmc.algos", "llmc.export", "llmc.deploy", "llmc.evaluators"],
    ["llmc.pipeline"],
    ["llmc.__main__"],
    ["llmc_slm.scoring", "llmc_slm.paired", "llmc_slm.zoo", "llmc_slm.segmented_attention"],
    ["llmc_slm.backend"],
    ["llmc_slm.harness", "llmc_slm.tracks"],
    ["llmc_slm.executors"],             # where a sweep's runs run (local processes, Ray); only llmc.errors below
    ["llmc_slm.reports", "llmc_slm.sweep"],
    ["llmc_slm.extension"],
]


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def rank(module: str) -> int:
    if module in PACKAGES:
        return 0
    best, best_len = None, -1
    for i, layer in enumerate(LAYERS):
        for prefix in layer:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = i, len(prefix)
    assert best is not None, f"{module} is in no layer of tests/test_imports.py: add it"
    return best


def imports_of(path: Path, module: str, modules: set) -> set:
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [f"{target}.{a.name}" if f"{target}.{a.name}" in modules else target for a in node.names]
        else:
            continue
        for name in names:
            # the deepest module of ours that the name refers to
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def graph() -> dict:
    files = {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    modules = set(files)
    return {m: imports_of(p, m, modules) for m, p in files.items()}


def test_no_lower_layer_imports_a_higher_one():
    bad = [f"{m} (layer {rank(m)}) imports {d} (layer {rank(d)})"
           for m, deps in graph().items() for d in deps
           if rank(d) > rank(m) and not m.startswith(d + ".")]   # a module may import its own package
    assert not bad, "\n".join(sorted(bad))


def test_no_import_cycle():
    g = graph()
    # a package's __init__ and its own submodules form no cycle worth reporting when the package only
    # documents them; any other loop is reported
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for d in sorted(g.get(m, ())):
            if m.startswith(d + "."):
                continue
            if state.get(d) == "open":
                cycles.append(" -> ".join(stack[stack.index(d):] + [d]))
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = "done"

    for m in sorted(g):
        if m not in state:
            visit(m)
    assert not cycles, "\n".join(cycles)


def test_llmc_does_not_import_the_benchmark():
    bad = [f"{m} imports {d}" for m, deps in graph().items() if m.startswith("llmc.") or m == "llmc"
           for d in deps if d.startswith("llmc_slm")]
    assert not bad, "\n".join(bad)


def test_print_config_does_not_import_torch():
    code = ("import sys; from llmc.__main__ import main; "
            "rc = main(['--config', 'configs/smollm/spin_w4a8.yml', '--profile', 'cpu', '--print-config']); "
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', rc)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("NO-TORCH 0"), out.stdout[-500:]
    assert "method: SpinQuant" in out.stdout and "steps: 20" in out.stdout   # validated and resolved
