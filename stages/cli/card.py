"""`evergreen card stamp`: a copy of the model card with the git commit and the gate verdict.

The card stage leaves both out on purpose (stages/lib/cards.py); promotion stamps them in.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from stages.contract.card import ModelCard
from stages.lib.gitref import commit_of
from stages.lib.io import read_json, write_metrics


def head_commit(repo: Path) -> str:
    commit = commit_of("HEAD", repo)
    if commit is None:
        raise ValueError(f"{repo.resolve()}: no git commit at HEAD")
    return commit


def stamp(args: argparse.Namespace) -> int:
    card = ModelCard.read(args.card)
    stamped = card.stamped(read_json(args.gate, "gate report"), head_commit(args.repo))
    write_metrics(args.out, stamped)
    verdict = "blessed" if stamped["gate"]["blessed"] else "NOT blessed"
    print(f"card: stamped {stamped['git_commit'][:12]} ({verdict}) -> {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    s = argparse.ArgumentParser(prog="evergreen card stamp", description=__doc__.splitlines()[0])
    s.add_argument("--card", type=Path, default=Path("models/model_card.json"))
    # the full verdict (figures behind each check); metrics/gate.json is its headline
    s.add_argument("--gate", type=Path, default=Path("reports/gate.json"))
    s.add_argument("--out", type=Path, required=True, help="stamped card to write")
    s.add_argument("--repo", type=Path, default=Path("."), help="git repository for HEAD")
    return s


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return stamp(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"card: {exc}", file=sys.stderr)
        return 2
