"""The commit a git ref names: the one `git rev-parse` call the gate, the PR report, the card
stamp and promotion share (each says in its own words what a missing ref means to it)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def commit_of(ref: str, repo: Path) -> str | None:
    """The full sha of the commit `ref` names in `repo`, or None when it names none."""
    done = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() if done.returncode == 0 else None
