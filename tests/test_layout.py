"""The rooms of the code and what each may import (README: Where things are).

    stages/*.py        the DVC stages (exactly `dvc.yaml`'s), each a thin main over the library
    stages/lib/        the library the stages share
    stages/contract/   what training and serving agree on: card, feature schema, ONNX predictor,
                       prediction log, the lake's names; it imports nothing else of the project
    stages/cli/        the `evergreen` commands
    stages/sim/        the lake simulator and the sample datasets
    serve/             the server: imports only the contract (what the image ships)

Imports are read from the source with `ast`, function-level ones included, so an import
hidden inside a function to break a circle is still an edge of the graph.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

ROOMS = {
    "contract": {"contract"},
    "lib": {"lib", "contract"},
    "stage": {"lib", "contract"},
    "sim": {"sim", "lib", "contract"},
    "cli": {"cli", "lib", "contract", "sim", "serve"},
    "serve": {"serve", "contract"},
}


def room_of(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "serve":
        return "serve"
    if len(parts) == 2:
        return "stage" if parts[1] != "__init__" else "package"
    return parts[1]


def modules(root: Path = ROOT) -> dict[str, Path]:
    found = {}
    for package in ("stages", "serve"):
        for path in sorted((root / package).rglob("*.py")):
            rel = path.relative_to(root).with_suffix("")
            found[".".join(rel.parts)] = path
    return found


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The project modules `path` imports, anywhere in the file (packages resolved to their
    modules where `from package import module` names one)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] in ("stages", "serve")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] not in ("stages", "serve"):
                continue
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in known else node.module)
    resolved = set()
    for name in found:
        resolved.add(name if name in known else f"{name}.__init__")
    return resolved & known


def graph(root: Path = ROOT) -> dict[str, set[str]]:
    mods = modules(root)
    known = set(mods)
    return {m: imports_of(p, known) - {m} for m, p in mods.items()}


def violations(edges: dict[str, set[str]], stage_modules: set[str]) -> list[str]:
    found = []
    for module, targets in sorted(edges.items()):
        room = room_of(module)
        for target in sorted(targets):
            if target.endswith("__init__") and target.count(".") == 1:
                continue  # a package's own (empty) __init__
            if module in stage_modules and target in stage_modules:
                found.append(f"{module} imports the stage {target}")
            elif room in ROOMS and room_of(target) not in ROOMS[room]:
                found.append(f"{module} ({room}) imports {target} ({room_of(target)})")
    return found


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def dvc_stage_modules() -> set[str]:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return {f"stages.{name}" for name in stages}


def test_stages_folder_holds_exactly_the_dvc_stages():
    on_disk = {f"stages.{p.stem}" for p in (ROOT / "stages").glob("*.py") if p.stem != "__init__"}
    assert on_disk == dvc_stage_modules()
    for name, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items():
        assert stage["cmd"].split()[:3] == ["python", "-m", f"stages.{name}"], name


def test_each_room_imports_only_what_it_may():
    assert violations(graph(), dvc_stage_modules()) == []


def test_no_import_circles():
    assert cycles(graph()) == []


def test_the_rules_catch_what_they_forbid(tmp_path: Path):
    # a small tree with one of each offence: the checks above must be able to fail
    files = {
        "stages/__init__.py": "",
        "stages/a.py": "from stages import b\n",
        "stages/b.py": "def f():\n    from stages.cli import c\n",
        "stages/cli/__init__.py": "",
        "stages/cli/c.py": "from stages.b import f\n",
        "stages/contract/__init__.py": "",
        "stages/contract/k.py": "from stages.lib import m\n",
        "stages/lib/__init__.py": "",
        "stages/lib/m.py": "",
        "serve/__init__.py": "",
        "serve/s.py": "import stages.lib.m\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    edges = graph(tmp_path)
    found = violations(edges, {"stages.a", "stages.b"})
    assert "stages.a imports the stage stages.b" in found
    assert "stages.b (stage) imports stages.cli.c (cli)" in found
    assert "stages.cli.c (cli) imports stages.b (stage)" in found
    assert "stages.contract.k (contract) imports stages.lib.m (lib)" in found
    assert "serve.s (serve) imports stages.lib.m (lib)" in found
    # b -> cli.c -> b, hidden behind a function-level import
    assert cycles(edges) == [["stages.b", "stages.cli.c"]]


@pytest.mark.slow
def test_the_wheel_holds_every_module(tmp_path: Path):
    # built from a copy: setuptools leaves build/ and *.egg-info in the folder it builds
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("stages", "serve"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copyfile(ROOT / name, src / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(src)],
        check=True,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("evergreen-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {p.relative_to(ROOT).as_posix() for p in modules().values()}
    assert expected - names == set()

    # installed (not editable) in a fresh venv, run outside any project: the sample datasets'
    # generators ship in the wheel, and no params.yaml is needed
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin/python"), "-m", "pip", "install", "-q", "--no-deps", str(wheel)]
    subprocess.run(pip, check=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # the dependencies come from this interpreter's site-packages (no network in tests); a
    # PYTHONPATH folder's .pth files are not read, so the editable checkout stays out of reach
    deps = next(p for p in sys.path if p.endswith("site-packages"))
    done = subprocess.run(
        [str(venv / "bin/evergreen"), "lake", "simulate", "--dataset", "retail", "--lake", "lake"],
        cwd=elsewhere,
        env={**os.environ, "PYTHONPATH": deps},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert (elsewhere / "lake/landing").is_dir()
    where = subprocess.run(
        [str(venv / "bin/python"), "-c", "import stages; print(stages.__file__)"],
        cwd=elsewhere,
        env={**os.environ, "PYTHONPATH": deps},
        capture_output=True,
        text=True,
    )
    assert where.stdout.startswith(str(venv)), where.stdout


def test_every_command_is_a_module_of_the_cli_room_with_a_main():
    import importlib

    from stages.cli import COMMANDS

    for words, (module_name, _) in COMMANDS.items():
        assert room_of(module_name) in ("cli", "serve"), words
        assert callable(importlib.import_module(module_name).main), words


def test_python_dash_m_stages_cli_is_the_evergreen_command():
    # `evergreen retrain` runs its steps as `python -m stages.cli ...`
    done = subprocess.run(
        [sys.executable, "-m", "stages.cli", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: evergreen <command>")
