"""`evergreen promote`: what the promote workflow does after a merge into main, up to the image.

    evergreen promote [--name churn] [--stage prod] [--remote origin] [--out build]

1. verify the gate verdict recorded for HEAD (the merge commit): `metrics/gate.json` committed
   there is blessed and judged the model `dvc.lock` records (`models/model.skops` md5), which is
   also the one the committed model card describes; the ONNX file pulled matches dvc.lock; and
   that model is the champion `models/champion.dvc` records (the training run's `evergreen
   champion --blessed-only` put it there): the image serves what the prediction run scores with;
2. register the version and assign the stage with GTO: git tags `churn@vX.Y.Z` (the first is
   v0.1.0, each promotion bumps the minor version) and `churn#prod#N`, pushed to `--remote`;
   a rerun on a commit already registered reuses its version;
3. stamp the card (commit + verdict) and write the image's build context to `OUT/serve`, and
   `OUT/release.json` (name, version, tags, commit, model version) for the image labels.

The workflow then builds the image from `OUT/serve`, checks it with `evergreen canary` and
pushes it. Nothing is tagged unless every check of step 1 passes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from serve.context import main as context_main
from stages.cli.card import main as stamp_main
from stages.cli.gate import recorded_md5
from stages.contract.card import ModelCard, file_md5
from stages.lib.gitref import commit_of
from stages.lib.io import github_output, write_json

GATE = "metrics/gate.json"
# the verdict in full (its figures), committed beside the headline: what the card cites
GATE_REPORT = "reports/gate.json"
CARD = "models/model_card.json"
LOCK = "dvc.lock"
MODEL = "models/model.skops"
ONNX = "models/model.onnx"
CHAMPION = "models/champion"
FIRST_VERSION = "v0.1.0"


class PromotionRefused(ValueError):
    """The commit's recorded verdict does not allow promotion; the message says why."""


def check_verdict(
    gate: Mapping[str, Any] | None, lock: Mapping[str, Any] | None, card: Mapping[str, Any] | None
) -> tuple[str, str]:
    """(model md5, ONNX md5) when the committed verdict blesses the committed model; else
    PromotionRefused naming the file and what did not match."""
    if gate is None:
        raise PromotionRefused(f"{GATE} is not committed: run `evergreen gate` on the branch")
    if lock is None:
        raise PromotionRefused(f"{LOCK} is not committed: nothing was reproduced")
    if card is None:
        raise PromotionRefused(f"{CARD} is not committed: run `dvc repro`")
    if gate.get("blessed") is not True:
        checks = gate.get("checks") or {}
        # the verdict's headline maps check -> passed (a report before it: a list of checks)
        failed = (
            [name for name, passed in checks.items() if not passed]
            if isinstance(checks, Mapping)
            else [c.get("name") for c in checks if not c.get("passed")]
        )
        raise PromotionRefused(f"{GATE}: the gate did not bless this model (failed: {failed})")
    judged = (gate.get("challenger") or {}).get("model_md5")
    model = recorded_md5(lock, MODEL)
    described = ModelCard(card, CARD)
    if not judged or judged != model:
        raise PromotionRefused(
            f"{GATE} judged model {judged} but {LOCK} records {MODEL} {model}: the verdict is "
            "stale; rerun `evergreen gate` on the branch and commit metrics/gate.json"
        )
    if described.model_md5 != model:
        raise PromotionRefused(
            f"{CARD} describes model {described.model_md5} but {LOCK} records {MODEL} {model}"
        )
    onnx = recorded_md5(lock, ONNX)
    if not onnx or described.onnx_md5 != onnx:
        raise PromotionRefused(
            f"{CARD} describes ONNX {described.onnx_md5} but {LOCK} records {ONNX} {onnx}"
        )
    return model, onnx


def _run(cmd: Sequence[str], cwd: Path) -> str:
    print("+ " + " ".join(cmd), flush=True)
    done = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} exited {done.returncode}: {(done.stderr or done.stdout).strip()}"
        )
    return done.stdout


def committed(repo: Path, path: str, *, as_json: bool) -> Any:
    """`path` as committed at HEAD (None when absent); refuses a workspace copy that differs,
    since the card stamp and the build context read the workspace."""
    done = subprocess.run(
        ["git", "show", f"HEAD:{path}"], cwd=repo, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        return None
    local = repo / path
    if local.is_file() and local.read_text() != done.stdout:
        raise PromotionRefused(
            f"{path}: the workspace copy differs from HEAD's; commit or reset it"
        )
    try:
        return json.loads(done.stdout) if as_json else yaml.safe_load(done.stdout)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise PromotionRefused(f"{path} at HEAD: unreadable ({exc})") from exc


@dataclass(frozen=True)
class Release:
    name: str
    version: str
    stage: str
    tags: tuple[str, ...]
    commit: str
    model_md5: str
    onnx_md5: str


def champion_model(repo: Path, onnx: str, *, pull: bool) -> Path:
    """The champion's ONNX graph, which must be the blessed model (`onnx`, its md5): a merge
    whose branch did not record its model as the champion would otherwise ship a model the
    daily prediction run never scores with."""
    record = f"{CHAMPION}.dvc"
    if committed(repo, record, as_json=False) is None:
        raise PromotionRefused(
            f"{record} is not committed: the training run's `evergreen champion --blessed-only` "
            "records the model production scores with"
        )
    if pull:
        _run(["dvc", "pull", record], repo)
    path = repo / CHAMPION / "model.onnx"
    found = file_md5(path) if path.is_file() else None
    if found != onnx:
        raise PromotionRefused(
            f"{CHAMPION}/model.onnx: {'missing' if found is None else f'holds {found}'}, not the "
            f"blessed model ({onnx}): run `evergreen champion --blessed-only` on the branch"
        )
    return path


def _tags_at(repo: Path, commit: str, pattern: str) -> list[str]:
    out = _run(["git", "tag", "--points-at", commit, "--list", pattern], repo)
    return sorted(out.split())


def register(repo: Path, name: str, stage: str, commit: str) -> tuple[str, list[str]]:
    """GTO: the version registered at `commit` (registering the next one if there is none) and
    the stage assigned to it; returns (version, tags at the commit for this artifact)."""
    import gto.api
    from gto.exceptions import ArtifactNotFound

    existing = _tags_at(repo, commit, f"{name}@v*")
    if existing:
        version = existing[-1].split("@", 1)[1]
    else:
        try:
            latest = gto.api.find_latest_version(str(repo), name)
        except ArtifactNotFound:  # not declared in dvc.yaml and never registered: a first
            latest = None
        registration = gto.api.register(
            str(repo),
            name,
            commit,
            version=None if latest else FIRST_VERSION,
            bump_minor=latest is not None,
        )
        version = registration.version
    in_stage = gto.api.find_versions_in_stage(str(repo), name, stage) or []
    current = in_stage[0] if isinstance(in_stage, list) and in_stage else in_stage
    if getattr(current, "version", None) != version:
        gto.api.assign(str(repo), name, stage, version=version)
    tags = [
        t
        for t in _tags_at(repo, commit, f"{name}*")
        if t == f"{name}@{version}" or t.startswith(f"{name}#{stage}#")
    ]
    return version, tags


def promote(args: argparse.Namespace) -> Release:
    repo = args.repo
    model, onnx = check_verdict(
        committed(repo, GATE, as_json=True),
        committed(repo, LOCK, as_json=False),
        committed(repo, CARD, as_json=True),
    )
    commit = commit_of("HEAD", repo)
    if commit is None:
        raise RuntimeError(f"{repo.resolve()}: no git commit at HEAD")
    if args.pull:
        _run(["dvc", "pull", ONNX], repo)
    pulled = repo / ONNX
    if not pulled.is_file() or file_md5(pulled) != onnx:
        raise PromotionRefused(f"{ONNX}: missing or not the file {LOCK} records ({onnx})")
    served = champion_model(repo, onnx, pull=args.pull)
    version, tags = register(repo, args.name, args.stage, commit)
    if args.remote:
        _run(["git", "push", args.remote, *(f"refs/tags/{t}" for t in tags)], repo)
    out = args.out
    stamped = out / "model_card.json"
    verdict = repo / GATE
    with contextlib.suppress(OSError, ValueError):  # the headline alone is still a verdict
        full = json.loads((repo / GATE_REPORT).read_text())
        # a report of another model (committed without its headline) is not this verdict
        if (full.get("challenger") or {}).get("model_md5") == model:
            verdict = repo / GATE_REPORT
    if stamp_main(["--card", str(repo / CARD), "--gate", str(verdict),
                  "--out", str(stamped), "--repo", str(repo)]) != 0:  # fmt: skip
        raise RuntimeError("card stamp failed (see above)")
    context = out / "serve"
    if context_main(["--out", str(context), "--card", str(stamped), "--model", str(served),
                     "--settings", str(repo / args.settings)]) != 0:  # fmt: skip
        raise RuntimeError("serve build-context failed (see above)")
    release = Release(args.name, version, args.stage, tuple(tags), commit, model, onnx)
    write_json(asdict(release), out / "release.json")
    return release


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="evergreen promote", description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="churn", help="GTO artifact name (dvc.yaml artifacts)")
    parser.add_argument("--stage", default="prod", help="GTO stage to assign")
    parser.add_argument("--remote", default="origin", help="git remote for the tags ('' : none)")
    parser.add_argument("--out", type=Path, default=Path("build"), help="folder for the outputs")
    parser.add_argument("--settings", default="params.yaml", help="serve settings file")
    parser.add_argument("--repo", type=Path, default=Path("."), help="git + DVC repo root")
    parser.add_argument("--no-pull", dest="pull", action="store_false", help="skip `dvc pull`")
    args = parser.parse_args(argv)
    try:
        release = promote(args)
    except PromotionRefused as exc:
        print(f"promote: refused: {exc}", file=sys.stderr)
        return 1
    except (RuntimeError, FileNotFoundError, ValueError) as exc:
        print(f"promote: {exc}", file=sys.stderr)
        return 2
    github_output(
        {"version": release.version, "context": str(args.out / "serve"), "commit": release.commit}
    )
    print(
        f"promote: {release.name} {release.version} -> {release.stage} at "
        f"{release.commit[:12]} (model {release.onnx_md5}); tags {', '.join(release.tags)}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
