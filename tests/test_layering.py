"""Imports flow one way: halting math → networks → models/guides → training/evaluation → diagnostics → CLI."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = [  # a module may import from its own layer and the layers before it, never from a later one
    {"sites", "halting", "priors", "relaxed"},
    {"nn", "flops", "early_exit", "data", "tasks", "optim"},
    {"models", "guides", "objective", "threshold", "stream", "act_evaluate"},
    {"finetune", "checkpoint", "distributed", "trainer", "train", "train_seq", "evaluate"},
    {"diagnostics", "plots", "report"},
    {"cli"},
]


def _unit(path: Path) -> str:
    rel = path.relative_to(ROOT)
    if rel.parts[0] in ("models", "guides"):
        return rel.parts[0]
    return rel.parts[1] if rel.parts[1] != "nn" else "nn"


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:  # relative: inside pact_pyro (or its subpackage)
                names = (mod.split(".") if mod else []) or [a.name for a in node.names]
                out.add(names[0])
            elif mod.startswith("pact_pyro."):
                out.add(mod.split(".")[1])
            elif mod == "pact_pyro":
                out.update(a.name for a in node.names)
    return out


def test_imports_flow_one_way():
    layer = {name: i for i, names in enumerate(LAYERS) for name in names}
    files = [*ROOT.glob("pact_pyro/*.py"), *ROOT.glob("pact_pyro/nn/*.py"), *ROOT.glob("models/*.py"),
             *ROOT.glob("guides/*.py")]  # fmt: skip
    bad = []
    for f in files:
        unit = _unit(f)
        if unit == "__init__.py":
            continue
        unit = unit.removesuffix(".py")
        for dep in _imports(f):
            dep = dep.removesuffix(".py")
            if dep in layer and unit in layer and layer[dep] > layer[unit]:
                bad.append(f"{f.relative_to(ROOT)} imports {dep} (layer {layer[dep]} > {layer[unit]})")
    assert not bad, "\n".join(bad)
    assert layer["halting"] < layer["act_evaluate"]  # the ACT rule is halting math, its evaluator is not
