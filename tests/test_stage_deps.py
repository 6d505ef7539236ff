"""Every stage lists the project code it runs as its dependencies in dvc.yaml.

A stage that imports a module it does not list is not rerun when that module changes, and DVC
then serves outputs computed by the old code as up to date. The rule is checked on the import
graph (function-level imports included): a stage's `stages/*.py` deps are exactly the modules
its command module reaches, except `stages/params.py`, which only reads params.yaml, whose
content every stage tracks under `params:`.
"""

from __future__ import annotations

import ast
import re

import yaml

from tests.conftest import ROOT

EXEMPT = {"stages/params.py"}


def local_imports(module: str) -> set[str]:
    tree = ast.parse((ROOT / f"{module.replace('.', '/')}.py").read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("stages"):
            if node.module == "stages":
                found |= {f"stages.{alias.name}" for alias in node.names}
            else:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("stages.")}
    return {m for m in found if (ROOT / f"{m.replace('.', '/')}.py").exists()}


def reachable(module: str) -> set[str]:
    seen: set[str] = set()
    todo = [module]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo.extend(local_imports(current))
    return {f"{m.replace('.', '/')}.py" for m in seen} - EXEMPT


def test_each_stage_depends_on_exactly_the_code_it_imports():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert stages
    for name, stage in stages.items():
        module = re.search(r"python -m (stages\.\w+)", stage["cmd"]).group(1)
        listed = {d for d in stage["deps"] if isinstance(d, str) and d.startswith("stages/")}
        assert listed == reachable(module), name


def test_the_import_walk_sees_function_level_imports():
    # monitor imports the dispatch module only inside --dispatch: still code it can run
    assert "stages/dispatch.py" in reachable("stages.monitor")
    assert "stages/params.py" not in reachable("stages.validate")
