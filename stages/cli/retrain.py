"""`evergreen retrain`: the scheduled retraining job, from the lake's new days to a pushed branch.

    evergreen retrain [--lake URL] [--overrides-env OVERRIDES] [--remote origin] [--base main]
                      [--date YYYY-MM-DD] [--report review/report.md]

In order: config overrides (read from an environment variable, validated against conf/, written
into conf/) and `evergreen params`; the DVC locks a killed earlier run left cleared
(stages/cli/repro.py); `dvc pull --allow-missing` (the persisted validate/prepare state, so the
stages do only the increment); `evergreen ingest`; the training run's stages (`dvc repro card
drift`); `evergreen gate --ref REMOTE/BASE` (the verdict is committed with the challenger:
promotion checks it); a blessed model becomes the champion (`evergreen champion
--blessed-only`: the branch carries the new `models/champion.dvc`, so merging promotes) and the
prediction stages rerun on it (`dvc repro report`: the pull request's lock is complete and its
insights report is the new champion's); `dvc push`; `evergreen report pr`; then a commit on
`retrain/<date>` pushed (forced: a rerun the same day replaces it) to REMOTE. A gate that does
not bless still pushes the branch, the champion unchanged: the pull request shows why, and its
failing check blocks the merge. Nothing changed: nothing is pushed.

Opening the pull request is left to the workflow (`gh pr create`), the one step that needs
GitHub itself. When run in GitHub Actions, `branch`, `changed` and `blessed` are step outputs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from stages.cli.repro import clear_stale_locks
from stages.cli.run import PREDICTION_TARGETS, TRAINING_TARGETS
from stages.lib.io import github_output

# what a retrain may change; everything else in the tree stays out of the commit
COMMITTED = ("conf", "params.yaml", "data.dvc", "dvc.lock", "metrics", "plots", "models")


class StepFailed(RuntimeError):
    """A step exited non-zero; the message names the step."""


def _run(cmd: Sequence[str], repo: Path, ok: Sequence[int] = (0,)) -> int:
    print("+ " + " ".join(cmd), flush=True)
    code = subprocess.run(list(cmd), cwd=repo, check=False).returncode
    if code not in ok:
        raise StepFailed(f"`{' '.join(cmd)}` exited {code}")
    return code


def _evergreen(repo: Path, *args: str, ok: Sequence[int] = (0,)) -> int:
    # the same interpreter, so the stages and the venv are the ones running this command
    return _run([sys.executable, "-m", "stages.cli", *args], repo, ok)


def retrain(args: argparse.Namespace) -> dict[str, str]:
    repo = args.repo
    _evergreen(repo, "overrides", "apply", "--from-env", args.overrides_env)
    _evergreen(repo, "params")
    for line in clear_stale_locks(repo):  # a killed earlier run's locks (stages/cli/repro.py)
        print(f"retrain: {line}", flush=True)
    _run(["dvc", "pull", "--allow-missing"], repo)
    _evergreen(repo, "ingest", *(["--lake", args.lake] if args.lake else []))
    _run(["dvc", "repro", *TRAINING_TARGETS], repo)
    base = f"{args.remote}/{args.base}" if args.remote else args.base
    if args.remote:
        # the champion is what the remote's base holds now, not a stale local copy
        _run(["git", "fetch", "--quiet", args.remote, args.base], repo)
    blessed = _evergreen(repo, "gate", "--ref", base, ok=(0, 1)) == 0
    if blessed:
        _evergreen(repo, "champion", "--blessed-only")
    _run(["dvc", "repro", *PREDICTION_TARGETS], repo)
    _run(["dvc", "push"], repo)
    _evergreen(repo, "report", "pr", "--base", base, "--out", args.report)

    branch = f"retrain/{args.date}"
    _run(["git", "switch", "--quiet", "-C", branch], repo)
    paths = [p for p in (*COMMITTED, args.report) if (repo / p).exists()]
    _run(["git", "add", "--all", "--", *paths], repo)
    if _run(["git", "diff", "--cached", "--quiet"], repo, ok=(0, 1)) == 0:
        print(f"retrain: nothing changed since {base}; nothing pushed")
        return {"branch": branch, "changed": "false", "blessed": str(blessed).lower()}
    overrides = os.environ.get(args.overrides_env, "").strip()
    message = f"retrain: {args.date}" + (f" ({overrides})" if overrides else "")
    message += f"\n\ngate: {'blessed' if blessed else 'NOT blessed'} against {base}"
    _run(["git", "commit", "--quiet", "-m", message], repo)
    if args.remote:
        _run(["git", "push", "--quiet", "--force", args.remote, f"HEAD:refs/heads/{branch}"], repo)
    print(f"retrain: {branch} {'pushed' if args.remote else 'committed'}; gate "
          f"{'blessed' if blessed else 'NOT blessed'}")  # fmt: skip
    return {"branch": branch, "changed": "true", "blessed": str(blessed).lower()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="evergreen retrain",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--lake",
        default=os.environ.get("EVERGREEN_LAKE") or None,
        help="lake folder or s3:// URL (default: $EVERGREEN_LAKE, else params lake.path)",
    )
    parser.add_argument(
        "--overrides-env",
        default="OVERRIDES",
        help="environment variable holding config overrides (default OVERRIDES)",
    )
    parser.add_argument("--remote", default="origin", help="git remote ('' : commit only)")
    parser.add_argument("--base", default="main", help="the champion's branch on the remote")
    parser.add_argument(
        "--date",
        default=dt.datetime.now(dt.UTC).date().isoformat(),
        type=lambda s: dt.date.fromisoformat(s).isoformat(),
        help="names the branch retrain/<date> (default: today, UTC)",
    )
    parser.add_argument("--report", default="review/report.md", help="report file to commit")
    parser.add_argument("--repo", type=Path, default=Path("."), help="git + DVC repo root")
    args = parser.parse_args(argv)
    try:
        outputs = retrain(args)
    except StepFailed as exc:
        print(f"retrain: {exc}", file=sys.stderr)
        return 1
    github_output(outputs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
