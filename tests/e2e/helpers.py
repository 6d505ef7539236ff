"""Shared by the end-to-end tests: run commands in a temporary git + DVC repository."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def e2e_env() -> dict[str, str]:
    env = dict(os.environ)
    # the stages run as `python -m stages.X`: the interpreter running the tests must be first
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(
        DVC_NO_ANALYTICS="1",
        GIT_AUTHOR_NAME="e2e",
        GIT_AUTHOR_EMAIL="e2e@example.com",
        GIT_COMMITTER_NAME="e2e",
        GIT_COMMITTER_EMAIL="e2e@example.com",
    )
    return env


def run(cwd: Path, *cmd: str) -> subprocess.CompletedProcess[str]:
    """Run `cmd` in `cwd`, whatever its exit status."""
    return subprocess.run(cmd, cwd=cwd, env=e2e_env(), capture_output=True, text=True, check=False)


def sh(cwd: Path, *cmd: str) -> str:
    """Run `cmd` in `cwd`; fail the test, with its output, unless it exits 0."""
    done = run(cwd, *cmd)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {done.returncode}\n{done.stdout}\n{done.stderr}")
    return done.stdout + done.stderr


def ran_stages(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


def init_repo(base: Path) -> Path:
    """`base/repo`: the project's conf/, stages/ and stage graph in a fresh git + DVC repo on
    branch main, with Hydra composition on and a local DVC remote at `base/remote`."""
    repo = base / "repo"
    repo.mkdir()
    for tree in ("conf", "stages"):
        shutil.copytree(ROOT / tree, repo / tree, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", "params.yaml", ".gitignore"):
        shutil.copy(ROOT / name, repo / name)
    sh(repo, "git", "init", "-q", "-b", "main")
    sh(repo, "dvc", "init", "-q")
    sh(repo, "dvc", "config", "hydra.enabled", "true")
    sh(repo, "dvc", "remote", "add", "-d", "local", str(base / "remote"))
    return repo


def both_runs(repo: Path, *args: str) -> str:
    """The whole graph as a first `dvc repro` ran it before the two pipelines: the training
    stages, the model made the champion (whatever a gate would say), then the prediction
    stages on it; the output of all three (`args` go to both `dvc repro`s)."""
    out = sh(repo, "dvc", "repro", "card", "drift", *args)
    out += sh(repo, "evergreen", "champion")
    return out + sh(repo, "dvc", "repro", "report", *args)
