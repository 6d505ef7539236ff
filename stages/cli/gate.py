"""`evergreen gate`: bless the workspace model (the challenger) only if it holds up against the
champion, the model recorded on a git ref (`gate.champion_ref`, `main` by default).

    evergreen gate [--ref main] [--out metrics/gate.json] [--params params.yaml]

Both models are scored on the *same* current test set (`artifacts/split/test.parquet`) with the
evaluate stage's metric code, slices included; the champion is read at the ref with DVC's Python
API (from the local cache or the DVC remote) and scored on its own feature schema. The thresholds
are the `gate` params section (`conf/gate/default.yaml`). The verdict is written to
`metrics/gate.json`; the exit status is 0 when blessed, 1 when not, 2 on a usage or input error.

Why a command and not a dvc.yaml stage: the verdict depends on what another git ref points to.
DVC tracks the files, params and code of the workspace, not the state of `main`; as a stage, the
gate would be cached, and after a new champion is merged `dvc repro` would call it up to date
and replay a stale verdict. A command is judged afresh each time it runs.

A regression (the feature schema's `task`) is judged on its own metrics: floors `min_r2`,
`max_mae`, `max_rmse` (the error floors are in the target's unit, so null by default: set them
per dataset), and the champion comparisons (max_regression, min_improvement, slices) on R²
instead of ROC AUC.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from stages.contract.card import file_md5
from stages.contract.feature_schema import FeatureSchema, load_schema
from stages.lib.evaluation import (
    EvaluateConfig,
    regression_slice_metrics,
    score_metrics,
    slice_metrics,
)
from stages.lib.gitref import commit_of
from stages.lib.io import read_frame, round_floats, write_metrics
from stages.lib.model_io import load_model
from stages.lib.params import PARAMS_FILE, load_params, section
from stages.lib.regression import regression_metrics
from stages.lib.training import check_frame, predictions

SliceTable = Mapping[str, Mapping[str, Mapping[str, Any]]]
DIGITS = 6


@dataclass(frozen=True)
class GateConfig:
    """The `gate` params section; a threshold set to None turns its check off."""

    champion_ref: str = "main"
    min_roc_auc: float | None = None
    min_pr_auc: float | None = None
    max_brier: float | None = None
    # a regression's floors (R², and errors in the target's unit)
    min_r2: float | None = None
    max_mae: float | None = None
    max_rmse: float | None = None
    # epsilon: how far below the champion's roc_auc the challenger's may be
    max_regression: float | None = 0.0
    # delta: how far above the champion's roc_auc the challenger's must be
    min_improvement: float | None = None
    max_slice_regression: float | None = None
    min_slice_rows: int = 100

    def __post_init__(self) -> None:
        if not self.champion_ref:
            raise ValueError("gate.champion_ref: must name a git ref (e.g. main)")
        for name in ("min_roc_auc", "min_pr_auc", "max_brier"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"gate.{name}: {value} is not in [0, 1]")
        for name in ("max_regression", "min_improvement", "max_slice_regression"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"gate.{name}: {value} is not in [0, 1]")
        for name in ("max_mae", "max_rmse"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"gate.{name}: {value} is not >= 0")
        if self.min_slice_rows < 1:
            raise ValueError(f"gate.min_slice_rows: {self.min_slice_rows} is not >= 1")

    @classmethod
    def from_params(cls, raw: Mapping[str, Any]) -> GateConfig:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"gate: unknown key(s) {unknown} (known: {', '.join(sorted(known))})")
        floats = {
            k: None if v is None else float(v)
            for k, v in raw.items()
            if k not in ("champion_ref", "min_slice_rows")
        }
        return cls(
            champion_ref=str(raw.get("champion_ref", "main")),
            min_slice_rows=int(raw.get("min_slice_rows", 100)),
            **floats,
        )


@dataclass(frozen=True)
class Scores:
    """One model's test metrics (`metrics/evaluate.json` keys) and per-slice metrics."""

    metrics: Mapping[str, Any]
    slices: SliceTable = field(default_factory=dict)
    regression: bool = False

    @property
    def key_metric(self) -> str:
        """What the champion comparisons compare: roc_auc, or a regression's r2."""
        return "r2" if self.regression else "roc_auc"


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    challenger: float | None
    champion: float | None
    threshold: float | None
    detail: str


@dataclass(frozen=True)
class Verdict:
    checks: tuple[Check, ...]

    @property
    def blessed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failed(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if not c.passed)


def _diff(a: float, b: float) -> float:
    # metrics are rounded to 6 digits; rounding the difference keeps 0.85 - 0.84 from reading
    # as 0.0100000001 and failing a 0.01 bound it meets
    return round(a - b, DIGITS) + 0.0


def judge(
    challenger: Scores,
    champion: Scores | None,
    cfg: GateConfig,
    *,
    champion_problem: str | None = None,
) -> Verdict:
    """Every check of the gate, in a fixed order.

    Absolute floors always; with a champion, the roc_auc regression bound (epsilon), the
    improvement bound (delta) and the per-slice regression bound. `champion_problem` says why a
    champion that exists could not be scored on the test set: that fails the gate, since the
    challenger cannot be compared.
    """
    m = challenger.metrics
    checks: list[Check] = []
    floors = (
        (("min_r2", "r2", True), ("max_mae", "mae", False), ("max_rmse", "rmse", False))
        if challenger.regression
        else (
            ("min_roc_auc", "roc_auc", True),
            ("min_pr_auc", "pr_auc", True),
            ("max_brier", "brier", False),
        )
    )
    for name, metric, higher_is_better in floors:
        bound = getattr(cfg, name)
        if bound is None:
            continue
        value = float(m[metric])
        passed = value >= bound if higher_is_better else value <= bound
        relation = (">=" if passed else "<") if higher_is_better else ("<=" if passed else ">")
        checks.append(
            Check(name, passed, value, None, bound, f"{metric} {value} {relation} {bound}")
        )
    if champion_problem is not None:
        checks.append(Check("champion_comparable", False, None, None, None, champion_problem))
    elif champion is not None:
        checks.extend(_relative_checks(challenger, champion, cfg))
    return Verdict(tuple(checks))


def _relative_checks(challenger: Scores, champion: Scores, cfg: GateConfig) -> list[Check]:
    metric = challenger.key_metric
    new, old = float(challenger.metrics[metric]), float(champion.metrics[metric])
    change = _diff(new, old)
    checks = []
    if cfg.max_regression is not None:
        passed = -change <= cfg.max_regression
        checks.append(
            Check(
                "max_regression",
                passed,
                new,
                old,
                cfg.max_regression,
                f"{metric} {new} vs champion {old}: change {change:+} "
                f"({'within' if passed else 'beyond'} the allowed drop {cfg.max_regression})",
            )
        )
    if cfg.min_improvement is not None:
        passed = change >= cfg.min_improvement
        checks.append(
            Check(
                "min_improvement",
                passed,
                new,
                old,
                cfg.min_improvement,
                f"{metric} {new} vs champion {old}: change {change:+} "
                f"({'meets' if passed else 'short of'} the required gain {cfg.min_improvement})",
            )
        )
    if cfg.max_slice_regression is not None:
        checks.append(_slice_check(challenger.slices, champion.slices, cfg, metric))
    return checks


def _slice_check(
    new: SliceTable, old: SliceTable, cfg: GateConfig, metric: str = "roc_auc"
) -> Check:
    """The worst per-slice drop of `metric` among slices big enough to judge."""
    bound = cfg.max_slice_regression
    drops: list[tuple[float, str, float, float]] = []
    for name in sorted(new):
        for value in sorted(new[name]):
            a, b = new[name][value], old.get(name, {}).get(value)
            if b is None or a["n"] < cfg.min_slice_rows:
                continue
            if a.get(metric) is None or b.get(metric) is None:
                continue
            drops.append((_diff(b[metric], a[metric]), f"{name}={value}", a[metric], b[metric]))
    if not drops:
        return Check(
            "max_slice_regression",
            True,
            None,
            None,
            bound,
            f"no slice with >= {cfg.min_slice_rows} rows and both classes to compare",
        )
    worst = min(drops, key=lambda d: (-d[0], d[1]))
    beyond = [d for d in sorted(drops, key=lambda d: (-d[0], d[1])) if d[0] > bound]
    if beyond:
        listed = ", ".join(f"{label} ({a} vs {b})" for _, label, a, b in beyond)
        detail = f"{metric} drops more than {bound} in {len(beyond)} slice(s): {listed}"
    else:
        detail = (
            f"worst of {len(drops)} slice(s): {worst[1]} {metric} {worst[2]} vs champion "
            f"{worst[3]} (drop {worst[0]})"
        )
    return Check("max_slice_regression", not beyond, worst[2], worst[3], bound, detail)


def score(
    model: Any,
    test: pd.DataFrame,
    schema: FeatureSchema,
    label: str,
    cfg: EvaluateConfig,
    *,
    source: str,
) -> Scores:
    """A model's metrics and slice metrics on `test`, as the evaluate stage computes them."""
    scores = predictions(model, test, schema)
    if schema.regression:
        y = test[label].to_numpy(dtype="float64")
        return Scores(
            metrics=regression_metrics(y, scores),
            slices=regression_slice_metrics(test, y, scores, cfg.slices, source),
            regression=True,
        )
    y = test[label].to_numpy()
    return Scores(
        metrics=score_metrics(y, scores, cfg.threshold),
        slices=slice_metrics(test, y, scores, cfg.slices, cfg.threshold, source=source),
    )


class NoChampion(Exception):
    """The ref has no champion to compare with; the message says why."""


@dataclass(frozen=True)
class Champion:
    ref: str
    commit: str
    model_md5: str | None
    model: Any
    schema: FeatureSchema


def resolve_commit(ref: str, repo: Path) -> str:
    """The commit sha `ref` points to, or NoChampion naming the ref."""
    commit = commit_of(ref, repo)
    if commit is None:
        raise NoChampion(f"git ref '{ref}' not found in {repo.resolve()}")
    return commit


def fetch_champion(
    ref: str, repo: Path, model_path: str, schema_path: str, lock_path: str
) -> Champion:
    """The model, feature schema and model md5 recorded on `ref`, read with DVC's API (local
    cache first, then the DVC remote). Raises NoChampion when any of them is not there, and
    ValueError when they are there but cannot be loaded."""
    import dvc.api
    from dvc.exceptions import DvcException
    from dvc_data.index.index import DataIndexError
    from scmrepo.exceptions import SCMError

    commit = resolve_commit(ref, repo)
    where = f"'{ref}' ({commit[:12]})"
    try:
        raw_model = _read(dvc.api, model_path, repo, commit, mode="rb")
        raw_schema = _read(dvc.api, schema_path, repo, commit, mode="r")
        raw_lock = _read(dvc.api, lock_path, repo, commit, mode="r")
    # DataIndexError: the ref records a directory output (the feature schema's) whose listing
    # is in neither the cache nor the remote; dvc-data raises it outside DvcException
    except (DvcException, DataIndexError, SCMError, OSError) as exc:
        raise NoChampion(
            f"no champion on {where}: its files are not recorded there, or are in neither the "
            f"DVC cache nor the remote ({type(exc).__name__}: {exc})"
        ) from exc
    try:
        schema = FeatureSchema.from_dict(yaml.safe_load(raw_schema))
    except (KeyError, TypeError, yaml.YAMLError) as exc:
        raise ValueError(f"{schema_path} on {where} is not a feature schema ({exc})") from exc
    with tempfile.TemporaryDirectory(prefix="evergreen-champion-") as tmp:
        local = Path(tmp) / Path(model_path).name
        local.write_bytes(raw_model)
        try:
            model = load_model(local)
        except ValueError as exc:
            # name the file at the ref, not the temporary copy, so gate.json stays deterministic
            raise ValueError(str(exc).replace(str(local), f"{model_path} on {where}")) from exc
    md5 = recorded_md5(yaml.safe_load(raw_lock) or {}, model_path)
    return Champion(ref, commit, md5 or hashlib.md5(raw_model).hexdigest(), model, schema)


def _read(api: Any, path: str, repo: Path, rev: str, *, mode: str) -> Any:
    with api.open(path, repo=str(repo), rev=rev, mode=mode) as f:
        return f.read()


def recorded_md5(lock: Mapping[str, Any], path: str) -> str | None:
    """The md5 dvc.lock records for the output `path` (the model version), or None."""
    for stage in (lock.get("stages") or {}).values():
        for out in stage.get("outs") or ():
            if out.get("path") == path:
                return out.get("md5")
    return None


def score_champion(
    champion: Champion,
    test: pd.DataFrame,
    label: str,
    cfg: EvaluateConfig,
    *,
    source: str,
    task: str | None = None,
) -> Scores:
    """Score the champion on its own features; ValueError says why it cannot be."""
    who = f"champion '{champion.ref}' ({champion.commit[:12]})"
    if task is not None and champion.schema.task != task:
        raise ValueError(
            f"{who} is a {champion.schema.task} model and the challenger a {task} one: "
            "they cannot be judged on the same metrics"
        )
    missing = [f for f in champion.schema.features if f not in test.columns]
    if missing:
        raise ValueError(
            f"{who} needs feature(s) {missing}, absent from {source}: it cannot be scored on "
            "the same test set (keep the columns in the features stage; features.exclude only "
            "narrows the schema)"
        )
    schema = replace(champion.schema, label=label)
    check_frame(test, schema, source=source)
    try:
        return score(champion.model, test, schema, label, cfg, source=source)
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{who} failed to score {source}: {exc}") from exc


def report(
    verdict: Verdict,
    challenger_md5: str,
    champion: Champion | None,
    champion_missing: str | None,
) -> dict[str, Any]:
    """The content of `metrics/gate.json`."""
    return round_floats(
        {
            "blessed": verdict.blessed,
            "checks": [asdict(c) for c in verdict.checks],
            "champion": None
            if champion is None
            else {"ref": champion.ref, "commit": champion.commit, "model_md5": champion.model_md5},
            "champion_missing": champion_missing,
            "challenger": {"model_md5": challenger_md5},
        }
    )


def _relative(path: Path, repo: Path) -> str:
    """`path` as DVC names it at another revision: relative to the repo root, with '/'."""
    return Path(os.path.relpath(path.resolve(), repo.resolve())).as_posix()


def run_gate(args: argparse.Namespace) -> tuple[dict[str, Any], Verdict]:
    """Load, score and judge; ValueError/KeyError/FileNotFoundError for bad inputs."""
    params = load_params(args.params)
    cfg = GateConfig.from_params(section(params, "gate"))
    eval_cfg = EvaluateConfig.from_params(section(params, "evaluate"))
    ref = args.ref or cfg.champion_ref
    schema = load_schema(args.schema)
    test = read_frame(args.test)
    check_frame(test, schema, source=str(args.test))
    challenger = score(
        load_model(args.model), test, schema, schema.label, eval_cfg, source=str(args.test)
    )

    champion: Champion | None = None
    champion_scores: Scores | None = None
    missing: str | None = None
    problem: str | None = None
    try:
        champion = fetch_champion(
            ref,
            args.repo,
            _relative(args.model, args.repo),
            _relative(args.schema, args.repo),
            _relative(args.lock, args.repo),
        )
    except NoChampion as exc:
        missing = str(exc)
    except ValueError as exc:  # the champion's files exist but will not load
        problem = f"the champion cannot be loaded: {exc}"
    if champion is not None:
        try:
            champion_scores = score_champion(
                champion, test, schema.label, eval_cfg, source=str(args.test), task=schema.task
            )
        except ValueError as exc:
            problem = str(exc)
    verdict = judge(challenger, champion_scores, cfg, champion_problem=problem)
    return report(verdict, file_md5(args.model), champion, missing), verdict


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="evergreen gate",
        description="Judge the workspace model against the champion on a git ref.",
    )
    parser.add_argument("--ref", help="git ref holding the champion (default: gate.champion_ref)")
    parser.add_argument("--model", type=Path, default=Path("models/model.skops"))
    parser.add_argument(
        "--schema", type=Path, default=Path("artifacts/features/feature_schema.json")
    )
    parser.add_argument("--test", type=Path, default=Path("artifacts/split/test.parquet"))
    parser.add_argument("--lock", type=Path, default=Path("dvc.lock"), help="dvc.lock path")
    parser.add_argument("--out", type=Path, default=Path("metrics/gate.json"))
    parser.add_argument("--params", type=Path, default=Path(PARAMS_FILE))
    parser.add_argument("--repo", type=Path, default=Path("."), help="git + DVC repo root")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        payload, verdict = run_gate(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"gate: {exc}", file=sys.stderr)
        return 2
    except KeyError as exc:
        print(f"gate: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    write_metrics(args.out, payload)
    champion = payload["champion"]
    against = (
        f"champion {champion['ref']} @ {champion['commit'][:12]}"
        if champion
        else f"no champion ({payload['champion_missing']}): absolute thresholds only"
    )
    print(f"gate: {'BLESSED' if verdict.blessed else 'NOT BLESSED'} vs {against}")
    for check in verdict.checks:
        print(f"  {'pass' if check.passed else 'FAIL'} {check.name}: {check.detail}")
    return 0 if verdict.blessed else 1


if __name__ == "__main__":
    raise SystemExit(main())
