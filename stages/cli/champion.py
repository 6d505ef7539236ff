"""`evergreen champion`: make the workspace's trained model the model in production.

    evergreen champion [--blessed-only]

The champion is `models/champion/`, a folder DVC tracks (`models/champion.dvc`, in git): what
the prediction run needs of the model in production, copied from the training run's outputs:

    model.onnx, model_card.json      the graph the prediction run scores with, and its card
    feature_schema.json              the features it reads (the predict_set stage computes them)
    train.parquet, test.parquet      its splits: the test scores are prediction drift's
                                     reference, the train rows the serving skew's and a
                                     regression's target range
    champion.json                    the data it was trained through (the retrain policy's
                                     clock), its md5s and dataset

then `dvc add models/champion` records the new champion in `models/champion.dvc`. The
prediction stages depend on these files only, so `dvc repro report` never reaches a training
stage and reruns once the champion changes. In the GitHub loop, the training pull request
carries the new `models/champion.dvc`: merging it promotes. `--blessed-only` refuses unless
`metrics/gate.json` blesses this very model.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from stages.contract.card import file_md5
from stages.contract.storage import write_bytes_atomic

CHAMPION = Path("models/champion")
RECORD = "champion.json"
# file of the champion <- the training output it is copied from
BUNDLE = {
    "model.onnx": "models/model.onnx",
    "model_card.json": "models/model_card.json",
    "feature_schema.json": "artifacts/features/feature_schema.json",
    "train.parquet": "artifacts/split/train.parquet",
    "test.parquet": "artifacts/split/test.parquet",
}
FEATURES_SUMMARY = "artifacts/features/summary.json"
NO_CHAMPION = "no model in production: run `evergreen run training` then promote"


class ChampionError(ValueError):
    """The champion cannot be promoted or read; the message is one line naming the file."""


def champion_record(repo: Path = Path(".")) -> dict[str, Any] | None:
    """The champion's `champion.json`, or None when there is no champion in the workspace."""
    path = repo / CHAMPION / RECORD
    if not (repo / CHAMPION / "model.onnx").is_file() or not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise ChampionError(f"{path}: not JSON ({exc})") from None


def require_champion(repo: Path = Path(".")) -> dict[str, Any]:
    """The champion's record; ChampionError (NO_CHAMPION, or what to pull) when it is absent."""
    record = champion_record(repo)
    if record is not None:
        return record
    if (repo / "models/champion.dvc").is_file():
        raise ChampionError(
            f"{CHAMPION}: recorded in models/champion.dvc but not in the workspace: "
            "`dvc pull models/champion.dvc` (or `dvc checkout`)"
        )
    raise ChampionError(NO_CHAMPION)


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ChampionError(f"{path}: {what} not found (run `evergreen run training`)") from None
    except ValueError as exc:
        raise ChampionError(f"{path}: {what} is not JSON ({exc})") from None


def check_trained(repo: Path, *, blessed_only: bool) -> dict[str, Any]:
    """What `promote` records, once the training outputs are complete, agree with dvc.lock
    and, with `blessed_only`, are what the gate blessed; ChampionError otherwise."""
    for source in BUNDLE.values():
        if not (repo / source).is_file():
            raise ChampionError(f"{source}: not found: run `evergreen run training` first")
    lock = yaml.safe_load((repo / "dvc.lock").read_text()) if (repo / "dvc.lock").is_file() else {}
    from stages.cli.gate import recorded_md5

    onnx_md5 = file_md5(repo / BUNDLE["model.onnx"])
    if recorded_md5(lock or {}, BUNDLE["model.onnx"]) != onnx_md5:
        raise ChampionError(
            f"{BUNDLE['model.onnx']}: not the model dvc.lock records (a stale or hand-made "
            "file): run `evergreen run training`"
        )
    card = _read_json(repo / BUNDLE["model_card.json"], "model card")
    if (card.get("onnx") or {}).get("md5") != onnx_md5:
        raise ChampionError(
            f"{BUNDLE['model_card.json']}: describes another model.onnx (onnx.md5 "
            f"{(card.get('onnx') or {}).get('md5')}, file {onnx_md5})"
        )
    model_md5 = (card.get("model") or {}).get("md5")
    if blessed_only:
        gate = _read_json(repo / "metrics/gate.json", "the gate's verdict")
        judged = (gate.get("challenger") or {}).get("model_md5")
        if judged != model_md5:
            raise ChampionError(
                f"metrics/gate.json: judged model {judged}, not this one ({model_md5}): "
                "run `evergreen gate`"
            )
        if gate.get("blessed") is not True:
            raise ChampionError("metrics/gate.json: the gate did not bless this model")
    summary = _read_json(repo / FEATURES_SUMMARY, "the features summary")
    last_day = (summary.get("predict") or {}).get("date")
    params = yaml.safe_load((repo / "params.yaml").read_text()) or {}
    return {
        "dataset": (params.get("dataset") or {}).get("name"),
        "model_md5": model_md5,
        "onnx_md5": onnx_md5,
        # the last day of data the training run read: the retrain policy counts from it
        "trained_through": None if last_day is None else str(last_day),
    }


def promote(repo: Path = Path("."), *, blessed_only: bool = False) -> dict[str, Any]:
    """Copy the training outputs into models/champion/ and record models/champion.dvc."""
    record = check_trained(repo, blessed_only=blessed_only)
    target = repo / CHAMPION
    staging = target.with_name(".champion.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name, source in BUNDLE.items():
        shutil.copyfile(repo / source, staging / name)
    text = json.dumps(record, indent=2, sort_keys=True) + "\n"
    write_bytes_atomic(text.encode(), staging / RECORD)
    # the folder is swapped whole: a crash leaves the old champion or the new one
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    done = subprocess.run(
        ["dvc", "add", "--quiet", CHAMPION.as_posix()], cwd=repo, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise ChampionError(f"`dvc add {CHAMPION}` exited {done.returncode}: {done.stderr.strip()}")
    return record


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="evergreen champion",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--blessed-only",
        action="store_true",
        help="refuse unless metrics/gate.json blesses this model",
    )
    args = parser.parse_args(argv)
    try:
        record = promote(Path("."), blessed_only=args.blessed_only)
    except ChampionError as exc:
        print(f"evergreen champion: {exc}", file=sys.stderr)
        return 2
    print(
        f"champion: model {record['onnx_md5']} (trained through {record['trained_through']}) "
        f"-> {CHAMPION}/, recorded in models/champion.dvc"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
