"""What a git ref holds: the commit it names (the one `git rev-parse` call the gate, the PR
report, the card stamp and promotion share; each says in its own words what a missing ref means
to it), the text of a file committed there (a champion's params, to tell its dataset), and the
last commit that changed a file (the champion's promotion)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def _git(repo: Path, *args: str) -> str | None:
    """`git <args>`'s output in `repo`, or None when it fails."""
    done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=False)
    return done.stdout if done.returncode == 0 else None


def commit_of(ref: str, repo: Path) -> str | None:
    """The full sha of the commit `ref` names in `repo`, or None when it names none."""
    out = _git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    return None if out is None else out.strip()


def file_at(commit: str, path: str, repo: Path) -> str | None:
    """The text of `path` (relative to the repo root, '/'-separated) as `commit` records it in
    git, or None when the commit does not hold it (a DVC output is not in git: use dvc.api)."""
    return _git(repo, "show", f"{commit}:{path}")


def last_change(commit: str, path: str, repo: Path) -> str | None:
    """The full sha of the latest commit up to `commit` that changed `path`, or None when none
    did (or `commit` is not one)."""
    out = _git(repo, "log", "-1", "--format=%H", commit, "--", path)
    return (out or "").strip() or None
