"""Every stage lists the project code it runs as its dependencies in dvc.yaml.

A stage that imports a module it does not list is not rerun when that module changes, and DVC
then serves outputs computed by the old code as up to date. The rule is checked on the import
graph (function-level imports included, tests/test_layout.py reads it): a stage's `stages/`
deps are exactly the modules its command module reaches, except `stages/lib/params.py`, which
only reads params.yaml, whose content every stage tracks under `params:`, and the packages'
`__init__.py` files, which hold docstrings only.
"""

from __future__ import annotations

import ast
import re

import yaml

from tests.conftest import ROOT
from tests.test_layout import graph

EXEMPT = {"stages/lib/params.py"}


def reachable(module: str) -> set[str]:
    edges = graph()
    seen: set[str] = set()
    todo = [module]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo.extend(edges.get(current, ()))
    files = {f"{m.replace('.', '/')}.py" for m in seen if not m.endswith("__init__")}
    return files - EXEMPT


def test_each_stage_depends_on_exactly_the_code_it_imports():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert stages
    for name, stage in stages.items():
        module = re.search(r"python -m (stages\.\w+)", stage["cmd"]).group(1)
        listed = {d for d in stage["deps"] if isinstance(d, str) and d.startswith("stages/")}
        assert listed == reachable(module), name


def test_the_library_package_inits_hold_no_code():
    # an __init__ runs with every module of its package, yet is no dep of any stage
    for init in ("stages/__init__.py", "stages/lib/__init__.py", "stages/contract/__init__.py"):
        body = ast.parse((ROOT / init).read_text()).body
        assert len(body) <= 1 and all(isinstance(n, ast.Expr) for n in body), init


def test_the_import_walk_sees_function_level_imports():
    assert "stages/lib/params.py" not in reachable("stages.validate")
    assert "stages/lib/validation.py" in reachable("stages.validate")


def test_each_config_class_a_stage_reads_is_in_its_params():
    """A key a stage's config class reads but dvc.yaml does not list under the stage's
    `params:` changes nothing when set: DVC calls the stage up to date (train.refit did)."""
    from dataclasses import fields

    from stages.lib.drift import DriftConfig
    from stages.lib.snapshots import FeaturesConfig
    from stages.lib.training import TrainConfig

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for stage, section, config in (
        ("train", "train", TrainConfig),
        ("drift", "drift", DriftConfig),
        ("features", "features", FeaturesConfig),
    ):
        listed = {p for p in stages[stage].get("params", []) if isinstance(p, str)}
        for field in fields(config):
            key = f"{section}.{field.name}"
            assert section in listed or key in listed, f"dvc.yaml {stage}: params lack {key}"
