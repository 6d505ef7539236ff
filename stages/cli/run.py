"""`evergreen run prediction|training|daily`: the two pipelines, and the policy between them.

    evergreen run prediction [--lake DIR|s3://...]       (after `evergreen ingest`)
    evergreen run training [--ref REF] [--promote]
    evergreen run daily [--lake ...] [--train] [--ref REF]

- **prediction**: `dvc repro report` (validate, profiles, prepare, predict_set, predict,
  monitor, report: the champion in models/champion/ scores the latest day), then `evergreen
  publish`. No stage of it depends on a training output, so it never trains; it prints the
  stages that ran, and fails in one line when there is no champion.
- **training**: `dvc repro card drift` (features, split, train, evaluate, export, card and the
  data drift report), then `evergreen gate` against the champion on REF; with `--promote`, a
  blessed model becomes the champion (`evergreen champion`). Exit 0 blessed, 1 not.
- **daily**: the prediction run, then the production retrain policy (`retrain.policy`,
  stages/lib/policy.py) decides from the monitor's `retrain_recommended` and the days since the
  last training run whether the training run follows: printed with its reason, and a step
  output `train` in GitHub Actions (the daily workflow dispatches the training run); `--train`
  runs it here, promoting a blessed model. The last training run is the later of the champion's
  training (its `trained_through`) and the last attempt, which a TRAIN decision records in
  `reports/retrain.json` (committed by the daily workflow): a challenger the gate refuses (or
  whose PR waits for review) leaves the champion as it was, and without the record the next day,
  the monitor still recommending, would start another training run on one more day of data,
  every day until one is blessed.

Each first clears the DVC locks a killed earlier run left (stages/cli/repro.py).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from stages.cli.champion import ChampionError, champion_record, promote, require_champion
from stages.cli.repro import clear_stale_locks
from stages.lib.io import github_output, write_json

# `dvc repro` targets: each run reproduces these and what they depend on, nothing else
PREDICTION_TARGETS = ("report",)
TRAINING_TARGETS = ("card", "drift")
TRAINING_STAGES = ("features", "split", "drift", "train", "evaluate", "export", "card")
# the last training run a TRAIN decision started (the champion's record says when the model in
# production was trained; this, when a later attempt did not replace it)
ATTEMPT = Path("reports/retrain.json")


def repro(targets: Sequence[str]) -> tuple[int, list[str]]:
    """`dvc repro TARGETS` after clearing stale locks, its output passed through; (exit code,
    the stages that ran, in order)."""
    for line in clear_stale_locks(Path(".")):
        print(line, flush=True)
    ran = []
    with subprocess.Popen(
        ["dvc", "repro", *targets], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            print(line, end="", flush=True)
            if line.startswith("Running stage '"):
                ran.append(line.split("'")[1])
    return proc.returncode, ran


def _evergreen(*args: str) -> int:
    # the same interpreter, so the stages and the venv are the ones running this command
    return subprocess.run([sys.executable, "-m", "stages.cli", *args], check=False).returncode


def prediction(lake: str | None) -> int:
    try:
        require_champion()
    except ChampionError as exc:
        print(f"evergreen run prediction: {exc}", file=sys.stderr)
        return 2
    code, ran = repro(PREDICTION_TARGETS)
    if code != 0:
        print(f"evergreen run prediction: `dvc repro report` exited {code}", file=sys.stderr)
        return 1
    trained = [s for s in ran if s in TRAINING_STAGES]
    if trained:  # the graph forbids it; a dvc.yaml edit that breaks that must not go unseen
        print(f"evergreen run prediction: training stages ran: {trained}", file=sys.stderr)
        return 1
    stages = ", ".join(ran) if ran else "none (up to date)"
    print(f"prediction run: stages run: {stages}", flush=True)
    # in this process: a daily run pays one interpreter start and one pandas import fewer
    from stages.cli import publish

    return publish.main(["--lake", lake] if lake else [])


def training(ref: str | None, *, promote_blessed: bool) -> int:
    code, ran = repro(TRAINING_TARGETS)
    if code != 0:
        print(f"evergreen run training: `dvc repro card drift` exited {code}", file=sys.stderr)
        return 1
    print(f"training run: stages run: {', '.join(ran) if ran else 'none (up to date)'}")
    verdict = _evergreen("gate", *(["--ref", ref] if ref else []))
    if verdict not in (0, 1):
        print(f"evergreen run training: `evergreen gate` exited {verdict}", file=sys.stderr)
        return 2
    if promote_blessed:
        if verdict != 0:
            print("training run: not promoted: the gate did not bless the model")
            return 1
        try:
            record = promote(Path("."), blessed_only=True)
        except ChampionError as exc:
            print(f"evergreen run training: {exc}", file=sys.stderr)
            return 2
        print(f"training run: promoted {record['onnx_md5']} to models/champion")
    return verdict


def _attempt(dataset: str | None, path: Path = ATTEMPT) -> tuple[dt.date | None, bool]:
    """The last TRAIN decision for `dataset` (None: none recorded, or one of another dataset,
    which `evergreen new` left behind), and whether its training run ran here (`--train`) or
    was only requested (the daily workflow dispatches it)."""
    if not path.is_file():
        return None, False
    try:
        record = json.loads(path.read_text())
        if record.get("dataset") != dataset:
            return None, False
        return dt.date.fromisoformat(record["date"]), bool(record.get("ran_here", True))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path}: expected {{dataset, date: YYYY-MM-DD, ...}} ({exc})") from None


def last_attempt(dataset: str | None, path: Path = ATTEMPT) -> dt.date | None:
    """The date of the last training run a TRAIN decision started for `dataset`."""
    return _attempt(dataset, path)[0]


@dataclass(frozen=True)
class DailyDecision:
    train: bool
    reason: str
    policy: str
    dataset: str | None
    today: dt.date


def decide(params_path: Path = Path("params.yaml"), *, train_here: bool = False) -> DailyDecision:
    """The production policy's decision, from metrics/monitor.json, the champion's record and
    the last attempt (`reports/retrain.json`). With `train_here`, a training run only requested
    today (`run daily` without `--train`: nothing ran) is no attempt: it runs now."""
    from stages.lib.params import load_params
    from stages.lib.policy import last_training, production_policy

    params = load_params(params_path)
    policy = production_policy(params)
    dataset = (params.get("dataset") or {}).get("name")
    record = champion_record()
    monitor_path = Path("metrics/monitor.json")
    monitor = json.loads(monitor_path.read_text()) if monitor_path.is_file() else {}
    today = dt.date.fromisoformat(monitor["date"]) if monitor.get("date") else dt.date.today()
    through = record and record.get("trained_through")
    trained = dt.date.fromisoformat(through) if through else None
    # no champion: train, whatever ran before (the record is not even read)
    attempt, ran_here = _attempt(dataset) if trained else (None, False)
    if train_here and attempt == today and not ran_here:
        attempt = None
    clock = last_training(trained, attempt)
    decision = policy.decide(today, clock, bool(monitor.get("retrain_recommended")))
    reason = decision.reason
    if clock != trained:
        what = "the last training run" if ran_here else "the training run requested"
        reason += f"; {what}, {attempt}, did not replace the champion"
    return DailyDecision(decision.train, reason, policy.name, dataset, today)


def record_attempt(decision: DailyDecision, path: Path = ATTEMPT, *, ran_here: bool) -> None:
    """Record that a training run starts today, here or requested (read back by `_attempt`)."""
    record = {"dataset": decision.dataset, "date": decision.today.isoformat(),
              "policy": decision.policy, "reason": decision.reason,
              "ran_here": ran_here}  # fmt: skip
    write_json(record, path)


def daily(lake: str | None, ref: str | None, *, train_here: bool) -> int:
    if champion_record() is None:
        print("daily: prediction run skipped: no model in production")
    else:
        code = prediction(lake)
        if code != 0:
            return code
    try:
        decision = decide(train_here=train_here)
    except (ValueError, KeyError) as exc:  # a PolicyError names retrain.<key>
        print(f"evergreen run daily: {exc}", file=sys.stderr)
        return 2
    train = decision.train
    verdict = "TRAIN" if train else "no training"
    print(f"daily: policy '{decision.policy}': {verdict} ({decision.reason})")
    if train:
        record_attempt(decision, ran_here=train_here)
    github_output({"train": str(train).lower()})
    if train and train_here:
        blessed = training(ref, promote_blessed=True)
        if blessed == 0:
            return prediction(lake)  # the new champion scores the day
        return 0 if blessed == 1 else blessed
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="evergreen run",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("pipeline", choices=("prediction", "training", "daily"))
    parser.add_argument("--lake", help="where predictions are published (default: lake.path)")
    parser.add_argument("--ref", help="the champion's git ref for the gate (gate.champion_ref)")
    parser.add_argument(
        "--promote", action="store_true", help="training: make a blessed model the champion"
    )
    parser.add_argument(
        "--train", action="store_true", help="daily: run the training run here when it is due"
    )
    args = parser.parse_args(argv)
    if args.pipeline == "prediction":
        return prediction(args.lake)
    if args.pipeline == "training":
        return training(args.ref, promote_blessed=args.promote)
    return daily(args.lake, args.ref, train_here=args.train)


if __name__ == "__main__":
    raise SystemExit(main())
