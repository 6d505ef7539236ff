"""`evergreen gate`: bless the workspace model (the challenger) only if it holds up against the
champion, the model in production on a git ref (`gate.champion_ref`, `main` by default: the
model the ref's last promotion recorded, `promoted_commit`), or, with no champion, against a
naive baseline.

    evergreen gate [--ref main] [--out metrics/gate.json] [--report-out reports/gate.json]
        [--params params.yaml]

Both models are scored on the *same* current test set (`artifacts/split/test.parquet`) with the
evaluate stage's code, slices included; the champion is read at the ref with DVC's Python API
(from the local cache or the DVC remote) and scored on its own feature schema. The settings are
the `gate` params section (`conf/gate/default.yaml`) merged with the dataset's own `gate:` block
(`conf/dataset/<name>.yaml`, which wins). The verdict is written to `metrics/gate.json` (the
headline: blessed, the champion, each check's pass; a DVC metrics file) and the whole report,
every check's numbers and every slice compared, to `reports/gate.json` (both committed: the
verdict depends on another ref, so DVC cannot rebuild them); the exit status is 0 when
blessed, 1 when not, 2 on a usage or input error.

How it decides (README: The gate). The key metric is ROC AUC for a classification and R² for a
regression (scale-free, so one tolerance suits every target). A paired bootstrap
(`stages/lib/bootstrap.py`: `gate.bootstrap` resamples of the test rows, seeded by params
`seed`, a classification resampled within each class) gives the interval of the challenger's
difference at `gate.confidence`, positive = the challenger is better:

- `max_regression` (non-inferiority): ci_low >= -max_regression;
- `min_improvement` (when set): ci_low >= min_improvement;
- `max_slice_regression` (a harm test per slice with >= `min_slice_rows` rows and, for a
  classification, >= `min_slice_class_rows` of each class): the gate fails when a slice's
  ci_high < -max_slice_regression, i.e. when the slice is confidently worse beyond the
  tolerance; a small slice's wide interval never refuses a model on its own;
- with no champion (`gate.baseline`), against a constant at the test set's base rate (ROC AUC
  0.5, Brier p(1 - p)) or, for a regression, at its target mean (R² 0, the mean's MAE): the key
  metric must beat it (ci_low > 0), the error must not be worse (ci_high >= 0);
- absolute floors (`min_roc_auc`, ..., null by default): the point estimate on the test set.

A champion that answers another question is "no comparable champion", judged as with none (the
report says why): one of another dataset (the params.yaml committed on the ref names another
`dataset.name`; its model is not even fetched), of another task, or one reading features the
test set lacks. A champion of this dataset that cannot be loaded or scored (an md5 that is not
the one dvc.lock records, say) fails the gate: `champion_comparable`.

Each comparison reports `detectable`: (z_{1-alpha/2} + z_{0.8}) x the bootstrap standard error of
the difference, the smallest true difference this test set finds with 80% power.

Why a command and not a dvc.yaml stage: the verdict depends on what another git ref points to.
DVC tracks the files, params and code of the workspace, not the state of `main`; as a stage, the
gate would be cached, and after a new champion is merged `dvc repro` would call it up to date
and replay a stale verdict. A command is judged afresh each time it runs.
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

import numpy as np
import pandas as pd
import yaml

from stages.contract.card import file_md5
from stages.contract.feature_schema import FeatureSchema, load_schema
from stages.lib.bootstrap import METRICS, POWER, Interval, paired_bootstrap
from stages.lib.dataset import settings_for
from stages.lib.evaluation import (
    EvaluateConfig,
    regression_slice_metrics,
    score_metrics,
    slice_labels,
    slice_metrics,
)
from stages.lib.gitref import commit_of, file_at, last_change
from stages.lib.io import read_frame, round_floats, write_metrics
from stages.lib.model_io import load_model
from stages.lib.params import PARAMS_FILE, load_params, section
from stages.lib.regression import regression_metrics
from stages.lib.training import check_frame, predictions

SliceTable = Mapping[str, Mapping[str, Mapping[str, Any]]]
DIGITS = 6
_UNIT_BOUNDS = ("min_roc_auc", "min_pr_auc", "max_brier")
_TOLERANCES = ("max_regression", "min_improvement", "max_slice_regression")
_INTS = ("bootstrap", "min_slice_rows", "min_slice_class_rows", "min_test_class_rows")


@dataclass(frozen=True)
class GateConfig:
    """The `gate` params section (with the dataset's `gate:` block); a threshold set to None
    turns its check off."""

    champion_ref: str = "main"
    # the intervals: two-sided confidence, and bootstrap resamples of the test rows
    confidence: float = 0.95
    bootstrap: int = 1000
    # absolute floors on the challenger's point estimates (off by default)
    min_roc_auc: float | None = None
    min_pr_auc: float | None = None
    max_brier: float | None = None
    # a regression's floors (R², and errors in the target's unit)
    min_r2: float | None = None
    max_mae: float | None = None
    max_rmse: float | None = None
    # with no champion: the challenger must beat a constant (base rate, target mean)
    baseline: bool = True
    # tolerances, in the key metric's unit (ROC AUC, or a regression's R²)
    # non-inferiority: the interval's low end may be at most this far below 0
    max_regression: float | None = 0.01
    # superiority: when set, the interval's low end must be at least this
    min_improvement: float | None = None
    # harm, per slice: a slice fails when its interval's high end is below -this
    max_slice_regression: float | None = 0.05
    min_slice_rows: int = 100
    min_slice_class_rows: int = 10
    # a classification's whole test split: fewer rows of a class and nothing is judged (the
    # gate refuses: no interval on 4 positives tells a model from another)
    min_test_class_rows: int = 10

    def __post_init__(self) -> None:
        if not self.champion_ref:
            raise ValueError("gate.champion_ref: must name a git ref (e.g. main)")
        if not 0.5 <= self.confidence < 1.0:
            raise ValueError(f"gate.confidence: {self.confidence} is not in [0.5, 1)")
        if self.bootstrap < 100:
            raise ValueError(f"gate.bootstrap: {self.bootstrap} resamples is not >= 100")
        for name in (*_UNIT_BOUNDS, *_TOLERANCES):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"gate.{name}: {value} is not in [0, 1]")
        for name in ("max_mae", "max_rmse"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"gate.{name}: {value} is not >= 0")
        if self.min_r2 is not None and self.min_r2 > 1.0:
            raise ValueError(f"gate.min_r2: {self.min_r2} is not <= 1")
        if not isinstance(self.baseline, bool):
            raise ValueError(f"gate.baseline: {self.baseline!r} is not true or false")
        for name in ("min_slice_rows", "min_slice_class_rows", "min_test_class_rows"):
            if getattr(self, name) < 1:
                raise ValueError(f"gate.{name}: {getattr(self, name)} is not >= 1")

    @classmethod
    def from_params(cls, raw: Mapping[str, Any]) -> GateConfig:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"gate: unknown key(s) {unknown} (known: {', '.join(sorted(known))})")
        values: dict[str, Any] = {}
        for key, value in raw.items():
            if key == "champion_ref":
                values[key] = str(value)
            elif key == "baseline":
                values[key] = value
            elif key in _INTS:
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ValueError(f"gate.{key}: {value!r} is not a whole number")
                values[key] = int(value)
            else:
                values[key] = None if value is None else float(value)
        return cls(**values)


@dataclass(frozen=True, eq=False)
class Rows:
    """One model's per-row test data, what the bootstrap resamples: targets, predictions
    (scores or regression predictions) and each slicing's value per row."""

    y: np.ndarray
    predictions: np.ndarray
    slices: Mapping[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class Scores:
    """One model's test metrics (`metrics/evaluate.json` keys), per-slice metrics and rows."""

    metrics: Mapping[str, Any]
    slices: SliceTable = field(default_factory=dict)
    regression: bool = False
    rows: Rows | None = field(default=None, compare=False)

    @property
    def key_metric(self) -> str:
        """What the comparisons compare: roc_auc, or a regression's r2."""
        return "r2" if self.regression else "roc_auc"


@dataclass(frozen=True)
class Check:
    """One check. A comparison (with the champion or the baseline) also has the difference
    (positive = the challenger is better), its interval at `confidence` and the smallest
    difference the test set can detect; floors leave them None."""

    name: str
    passed: bool
    challenger: float | None
    champion: float | None
    threshold: float | None
    detail: str
    difference: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    confidence: float | None = None
    detectable: float | None = None
    baseline: float | None = None


@dataclass(frozen=True)
class Verdict:
    checks: tuple[Check, ...]
    # every slice compared with the champion (judged or too small), for gate.json
    slices: tuple[Mapping[str, Any], ...] = ()

    @property
    def blessed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failed(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if not c.passed)


def _r(value: float) -> float:
    # numbers are judged as written in gate.json: rounded to 6 digits (+ 0.0: no -0.0)
    return round(float(value), DIGITS) + 0.0


def _pct(confidence: float) -> str:
    return f"{confidence * 100:g}%"


@dataclass(frozen=True)
class Compared:
    """A paired bootstrap, oriented and rounded: `difference` > 0 when the challenger is
    better, whether the metric is higher- or lower-is-better."""

    metric: str
    challenger: float
    reference: float
    difference: float
    low: float
    high: float
    detectable: float
    confidence: float
    n: int

    def reading(self, what: str) -> str:
        at = _pct(self.confidence)
        if self.low == self.high == 0.0:
            return f"identical to {what} on every resample"
        if self.low > 0:
            return f"better than {what} at {at}"
        if self.high < 0:
            return f"worse than {what} at {at}"
        return f"not distinguishable from {what} at {at} (the interval covers 0)"

    def interval(self) -> str:
        return (
            f"difference {self.difference:+} ({_pct(self.confidence)} CI {self.low:+} to "
            f"{self.high:+}, n={self.n})"
        )

    def fields(self) -> dict[str, Any]:
        return {
            "difference": self.difference,
            "ci_low": self.low,
            "ci_high": self.high,
            "confidence": self.confidence,
            "detectable": self.detectable,
        }


def compare(
    y: np.ndarray,
    challenger: np.ndarray,
    reference: np.ndarray,
    metric: str,
    cfg: GateConfig,
    *,
    seed: int,
    regression: bool,
) -> Compared:
    """The challenger's difference in `metric` from `reference` on the same rows, with its
    paired bootstrap interval (a classification resampled within each class)."""
    spec = METRICS[metric]
    a, b = (challenger, reference) if spec.higher_is_better else (reference, challenger)
    found: Interval = paired_bootstrap(
        y,
        a,
        b,
        spec.fn,
        resamples=cfg.bootstrap,
        seed=seed,
        confidence=cfg.confidence,
        strata=None if regression else y,
    )
    new, old = found.values if spec.higher_is_better else found.values[::-1]
    return Compared(
        metric=metric,
        challenger=_r(new),
        reference=_r(old),
        difference=_r(found.estimate),
        low=_r(found.low),
        high=_r(found.high),
        detectable=_r(found.detectable),
        confidence=cfg.confidence,
        n=len(y),
    )


def judge(
    challenger: Scores,
    champion: Scores | None,
    cfg: GateConfig,
    *,
    champion_problem: str | None = None,
    seed: int = 0,
) -> Verdict:
    """Every check of the gate, in a fixed order: the absolute floors that are set; then, with
    a champion, the non-inferiority, improvement and per-slice harm checks; with none (or one
    that cannot be scored: `champion_problem`, which fails the gate since the challenger cannot
    be compared), the baseline checks. Comparisons need `rows` on both Scores."""
    m = challenger.metrics
    checks: list[Check] = []
    too_few = _too_few_to_judge(challenger, cfg)
    if too_few is not None:
        return Verdict((too_few,), ())
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
    slices: list[Mapping[str, Any]] = []
    if champion_problem is not None:
        checks.append(Check("champion_comparable", False, None, None, None, champion_problem))
    elif champion is not None:
        relative, slices = _relative_checks(challenger, champion, cfg, seed)
        checks.extend(relative)
    if (champion is None or champion_problem is not None) and cfg.baseline:
        checks.extend(_baseline_checks(challenger, cfg, seed))
    return Verdict(tuple(checks), tuple(slices))


def _too_few_to_judge(challenger: Scores, cfg: GateConfig) -> Check | None:
    """A classification whose test split holds fewer than `min_test_class_rows` rows of a class:
    one failed check, `test_class_rows`, and no other (a bootstrap of 4 positives gives an
    interval that looks sure and is not: a fraud lake's model was blessed at "detectable
    difference 0.0086" with F1 0)."""
    if challenger.regression or challenger.rows is None:
        return None
    positives = int(np.sum(challenger.rows.y))
    negatives = len(challenger.rows.y) - positives
    fewest = min(positives, negatives)
    if fewest >= cfg.min_test_class_rows:
        return None
    return Check(
        "test_class_rows",
        False,
        float(fewest),
        None,
        cfg.min_test_class_rows,
        f"the test split holds {positives} positive and {negatives} negative rows, fewer than "
        f"gate.min_test_class_rows ({cfg.min_test_class_rows}) of a class: too few to judge any "
        "model; a longer test window (split.test_snapshots, or the task's period_days) gives "
        "the gate rows to decide on",
    )


def _rows(scores: Scores, who: str) -> Rows:
    if scores.rows is None:
        raise ValueError(
            f"gate: the {who}'s per-row scores are missing: a comparison resamples the test "
            "rows (score() gives them)"
        )
    return scores.rows


def _relative_checks(
    challenger: Scores, champion: Scores, cfg: GateConfig, seed: int
) -> tuple[list[Check], list[Mapping[str, Any]]]:
    new, old = _rows(challenger, "challenger"), _rows(champion, "champion")
    if not np.array_equal(new.y, old.y):
        raise ValueError("gate: the challenger and the champion were not scored on the same rows")
    metric = challenger.key_metric
    regression = challenger.regression
    checks: list[Check] = []
    if cfg.max_regression is None and cfg.min_improvement is None:
        overall = None
    else:
        overall = compare(
            new.y, new.predictions, old.predictions, metric, cfg, seed=seed, regression=regression
        )
    if overall is not None and cfg.max_regression is not None:
        tol = cfg.max_regression
        passed = overall.low >= -tol
        checks.append(
            Check(
                "max_regression",
                passed,
                overall.challenger,
                overall.reference,
                tol,
                f"{metric} {overall.challenger} vs champion {overall.reference}: "
                f"{overall.interval()}, {overall.reading('the champion')}; may be at most "
                f"{tol} worse: ci_low {overall.low:+} {'>=' if passed else '<'} {-tol + 0.0:+}; "
                f"detectable difference {overall.detectable}"
                + (
                    f" (inconclusive: not shown worse than {-tol + 0.0:+} either; more test "
                    "rows or a wider tolerance would decide)"
                    if not passed and overall.high >= -tol
                    else ""
                ),
                **overall.fields(),
            )
        )
    if overall is not None and cfg.min_improvement is not None:
        delta = cfg.min_improvement
        passed = overall.low >= delta
        checks.append(
            Check(
                "min_improvement",
                passed,
                overall.challenger,
                overall.reference,
                delta,
                f"{metric} {overall.challenger} vs champion {overall.reference}: "
                f"{overall.interval()}, {overall.reading('the champion')}; must be at least "
                f"{delta} better: ci_low {overall.low:+} {'>=' if passed else '<'} {delta:+}; "
                f"detectable difference {overall.detectable}",
                **overall.fields(),
            )
        )
    slices: list[Mapping[str, Any]] = []
    if cfg.max_slice_regression is not None:
        check, slices = _slice_check(new, old, cfg, metric, regression, seed)
        checks.append(check)
    return checks, slices


def _judgeable(y: np.ndarray, cfg: GateConfig, regression: bool) -> str | None:
    """Why a slice is not judged (too few rows, too few of a class, a constant target), or
    None when it is."""
    if len(y) < cfg.min_slice_rows:
        return f"fewer than {cfg.min_slice_rows} rows"
    if regression:
        return "a constant target" if np.ptp(y) == 0 else None
    positives = int((y == 1).sum())
    if min(positives, len(y) - positives) < cfg.min_slice_class_rows:
        return f"fewer than {cfg.min_slice_class_rows} rows of a class"
    return None


def _slice_check(
    new: Rows, old: Rows, cfg: GateConfig, metric: str, regression: bool, seed: int
) -> tuple[Check, list[Mapping[str, Any]]]:
    """The harm test of every slice big enough to judge: a slice fails when its interval's
    high end is below -max_slice_regression (confidently worse beyond the tolerance)."""
    tol = float(cfg.max_slice_regression or 0.0)
    results: list[Mapping[str, Any]] = []
    judged: list[tuple[Compared, str]] = []
    for name in sorted(new.slices):
        labels = np.asarray(new.slices[name])
        for value in sorted(set(labels.tolist())):
            mask = labels == value
            y = new.y[mask]
            entry: dict[str, Any] = {"slice": name, "value": str(value), "n": int(mask.sum())}
            why = _judgeable(y, cfg, regression)
            if why is not None:
                results.append({**entry, "judged": False, "note": why, "harmful": False})
                continue
            found = compare(
                y,
                new.predictions[mask],
                old.predictions[mask],
                metric,
                cfg,
                seed=seed,
                regression=regression,
            )
            harmful = found.high < -tol
            judged.append((found, f"{name}={value}"))
            results.append(
                {
                    **entry,
                    "judged": True,
                    "challenger": found.challenger,
                    "champion": found.reference,
                    **found.fields(),
                    "harmful": harmful,
                }
            )
    skipped = sum(1 for r in results if not r["judged"])
    if not judged:
        detail = (
            f"no slice with >= {cfg.min_slice_rows} rows"
            + ("" if regression else f" and >= {cfg.min_slice_class_rows} of each class")
            + " to compare"
        )
        return Check("max_slice_regression", True, None, None, tol, detail), results
    order = sorted(judged, key=lambda j: (j[0].high, j[0].difference, j[1]))
    worst, label = order[0]
    harmful = [(c, lab) for c, lab in order if c.high < -tol]

    def one(c: Compared, lab: str) -> str:
        return f"{lab} {metric} {c.challenger} vs {c.reference}, {c.interval()}"

    if harmful:
        detail = (
            f"{len(harmful)} of {len(judged)} slice(s) worse than the champion beyond {tol} at "
            f"{_pct(cfg.confidence)} (ci_high < {-tol + 0.0:+}): "
            + "; ".join(one(c, lab) for c, lab in harmful)
        )
    else:
        detail = (
            f"none of {len(judged)} slice(s) is worse than the champion beyond {tol} at "
            f"{_pct(cfg.confidence)}; least favourable: {one(worst, label)}, "
            f"{worst.reading('the champion')}, detectable difference {worst.detectable}"
        )
    if skipped:
        detail += f"; {skipped} slice(s) too small to judge"
    check = Check(
        "max_slice_regression",
        not harmful,
        worst.challenger,
        worst.reference,
        tol,
        detail,
        **worst.fields(),
    )
    return check, results


def _baseline_checks(challenger: Scores, cfg: GateConfig, seed: int) -> list[Check]:
    """With no champion, against a constant prediction: a classification's test base rate p
    (ROC AUC 0.5, Brier p(1 - p)), a regression's test target mean (R² 0 on the whole test
    set, and that mean's MAE). The key metric must beat it with confidence (ci_low > 0: the
    model has learnt something); the error must not be worse than it with confidence (ci_high
    >= 0: its probabilities or predictions do no harm). The error test is a harm test because
    a sound model's gain in Brier over the base rate is small (about the variance of its
    scores) and would need far more rows than its gain in ROC AUC to show."""
    rows = _rows(challenger, "challenger")
    y = np.asarray(rows.y, dtype="float64")
    centre = float(y.mean())
    constant = np.full(len(y), centre)
    if challenger.regression:
        metrics, what = ("r2", "mae"), f"the constant target mean {_r(centre)}"
    else:
        metrics, what = ("roc_auc", "brier"), f"a constant score at the base rate {_r(centre)}"
    checks = []
    for metric in metrics:
        found = compare(
            y,
            rows.predictions,
            constant,
            metric,
            cfg,
            seed=seed,
            regression=challenger.regression,
        )
        if metric == challenger.key_metric:
            passed = found.low > 0
            rule = f"must beat it: ci_low {found.low:+} {'>' if passed else '<='} 0"
        else:
            passed = found.high >= 0
            rule = f"must not be worse than it: ci_high {found.high:+} {'>=' if passed else '<'} 0"
        checks.append(
            Check(
                f"baseline_{metric}",
                passed,
                found.challenger,
                None,
                0.0,
                f"{metric} {found.challenger} vs {found.reference} for {what}: "
                f"{found.interval()}, {found.reading('the baseline')}; {rule}; detectable "
                f"difference {found.detectable}",
                **found.fields(),
                baseline=found.reference,
            )
        )
    return checks


def score(
    model: Any,
    test: pd.DataFrame,
    schema: FeatureSchema,
    label: str,
    cfg: EvaluateConfig,
    *,
    source: str,
) -> Scores:
    """A model's metrics and slice metrics on `test`, as the evaluate stage computes them, and
    its per-row predictions with the slice labels, for the bootstrap."""
    scores = predictions(model, test, schema)
    labels = {s.name: slice_labels(test, s, source=source).to_numpy() for s in cfg.slices}
    if schema.regression:
        y = test[label].to_numpy(dtype="float64")
        return Scores(
            metrics=regression_metrics(y, scores),
            slices=regression_slice_metrics(test, y, scores, cfg.slices, source),
            regression=True,
            rows=Rows(y, np.asarray(scores, dtype="float64"), labels),
        )
    y = test[label].to_numpy()
    return Scores(
        metrics=score_metrics(y, scores, cfg.threshold),
        slices=slice_metrics(test, y, scores, cfg.slices, cfg.threshold, source=source),
        rows=Rows(np.asarray(y, dtype="float64"), np.asarray(scores, dtype="float64"), labels),
    )


class NoChampion(Exception):
    """The ref has no champion to compare with; the message says why."""


class NotComparable(ValueError):
    """The ref holds a sound champion that answers another question (another dataset, task or
    feature set): the challenger is judged as with no champion. The message says why."""


# features named in a "features differ" message, before "(+N more)"
SHOWN_FEATURES = 5


@dataclass(frozen=True)
class Champion:
    ref: str
    commit: str
    model_md5: str | None
    model: Any
    schema: FeatureSchema


def dataset_at(commit: str, params_path: str, repo: Path) -> str | None:
    """The dataset name the params file committed at `commit` records, or None when that file
    is not there or names none (nothing to tell the champion's dataset by)."""
    text = file_at(commit, params_path, repo)
    try:
        params = yaml.safe_load(text) if text is not None else None
    except yaml.YAMLError:
        return None
    dataset = params.get("dataset") if isinstance(params, Mapping) else None
    name = dataset.get("name") if isinstance(dataset, Mapping) else None
    return str(name) if name is not None else None


def check_same_dataset(
    ref: str, commit: str, champion_dataset: str | None, dataset: str | None
) -> None:
    """NotComparable when the champion on `ref` was trained on another dataset than this
    workspace's (a project started from a clone of another one's main, say)."""
    if champion_dataset is not None and dataset is not None and champion_dataset != dataset:
        raise NotComparable(
            f"champion '{ref}' ({commit[:12]}) is a model of dataset '{champion_dataset}', "
            f"this workspace's dataset is '{dataset}'"
        )


def resolve_commit(ref: str, repo: Path) -> str:
    """The commit sha `ref` points to, or NoChampion naming the ref."""
    commit = commit_of(ref, repo)
    if commit is None:
        raise NoChampion(f"git ref '{ref}' not found in {repo.resolve()}")
    return commit


# git tracks it; promotion rewrites it (stages/cli/champion.py's CHAMPION, which imports this
# module: the path is spelt here, and tests/stages/test_gate.py holds the two to one another)
CHAMPION_DVC = "models/champion.dvc"


def promoted_commit(commit: str, repo: Path) -> str:
    """The commit up to `commit` that promoted the model in production: the latest one that
    changed models/champion.dvc, whose dvc.lock records the model the champion was copied from.
    A later commit may record a challenger the gate refused (`run daily --train` then a commit),
    which is not the model in production. No promotion recorded: `commit` itself."""
    return last_change(commit, CHAMPION_DVC, repo) or commit


def fetch_champion(
    ref: str,
    repo: Path,
    model_path: str,
    schema_path: str,
    lock_path: str,
    commit: str | None = None,
) -> Champion:
    """The model, feature schema and model md5 recorded on `ref` (at `commit`, default the one
    `ref` names), read with DVC's API (local cache first, then the DVC remote). Raises
    NoChampion when any of them is not there, and ValueError when they are there but cannot be
    loaded."""
    import dvc.api
    from dvc.exceptions import DvcException
    from dvc_data.index.index import DataIndexError
    from scmrepo.exceptions import SCMError

    commit = commit or resolve_commit(ref, repo)
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
    # the bytes the cache or remote gave must be the ones the commit records, before a byte of
    # them is read as a model (whoever can write the remote must not choose what CI loads)
    md5 = recorded_md5(yaml.safe_load(raw_lock) or {}, model_path)
    with tempfile.TemporaryDirectory(prefix="evergreen-champion-") as tmp:
        local = Path(tmp) / Path(model_path).name
        local.write_bytes(raw_model)
        try:
            model = load_model(local, expected_md5=md5)
        except ValueError as exc:
            # name the file at the ref, not the temporary copy, so gate.json stays deterministic
            raise ValueError(str(exc).replace(str(local), f"{model_path} on {where}")) from exc
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
    """Score the champion on its own features: NotComparable when it predicts another kind
    of target or reads features the test set does not have; ValueError when it should score
    but cannot."""
    who = f"champion '{champion.ref}' ({champion.commit[:12]})"
    if task is not None and champion.schema.task != task:
        raise NotComparable(
            f"{who} is a {champion.schema.task} model and the challenger a {task} one: "
            "they cannot be judged on the same metrics"
        )
    missing = [f for f in champion.schema.features if f not in test.columns]
    if missing:
        shown = missing[:SHOWN_FEATURES]
        more = f" (+{len(missing) - len(shown)} more)" if len(missing) > len(shown) else ""
        raise NotComparable(
            f"{who} reads feature(s) {shown}{more} absent from {source}: the features differ, "
            "so it cannot be scored on the same test set (to compare with it, keep those "
            "columns in the features stage; features.exclude only narrows the schema)"
        )
    schema = replace(champion.schema, label=label)
    check_frame(test, schema, source=source)
    try:
        return score(champion.model, test, schema, label, cfg, source=source)
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{who} failed to score {source}: {exc}") from exc


def bootstrap_settings(cfg: GateConfig, seed: int, challenger: Scores) -> dict[str, Any]:
    """How the intervals were drawn (gate.json's `bootstrap`)."""
    rows = challenger.rows
    return {
        "resamples": cfg.bootstrap,
        "confidence": cfg.confidence,
        "seed": seed,
        "rows": None if rows is None else len(rows.y),
        "resampled": "rows" if challenger.regression else "rows within each class",
        "key_metric": challenger.key_metric,
        "detectable": f"(z_{{1-alpha/2}} + z_{{{POWER:g}}}) x the bootstrap standard error of "
        "the difference",
    }


def report(
    verdict: Verdict,
    challenger_md5: str,
    champion: Champion | None,
    champion_missing: str | None,
    bootstrap: Mapping[str, Any] | None = None,
    *,
    dataset: str | None = None,
    not_comparable: str | None = None,
) -> dict[str, Any]:
    """The content of `metrics/gate.json`: `champion` is the model compared with (None when
    there was none: `champion_missing` says why; or none comparable: `champion_not_comparable`
    says why), `dataset` the dataset the verdict is about."""
    return round_floats(
        {
            "blessed": verdict.blessed,
            "dataset": dataset,
            "checks": [asdict(c) for c in verdict.checks],
            "slices": [dict(s) for s in verdict.slices],
            "bootstrap": None if bootstrap is None else dict(bootstrap),
            "champion": None
            if champion is None
            else {"ref": champion.ref, "commit": champion.commit, "model_md5": champion.model_md5},
            "champion_missing": champion_missing,
            "champion_not_comparable": not_comparable,
            "challenger": {"model_md5": challenger_md5},
        }
    )


def headline(report: Mapping[str, Any]) -> dict[str, Any]:
    """metrics/gate.json: the verdict a person compares across runs (`dvc metrics show`) and
    what `evergreen promote` and `card stamp` check (blessed, the judged model's md5); each
    check's numbers and the slices stay in the report."""
    champion = report.get("champion")
    return {
        "blessed": report["blessed"],
        "checks": {c["name"]: c["passed"] for c in report.get("checks") or ()},
        "champion": None if champion is None else {k: champion.get(k) for k in ("ref", "commit")},
        "champion_missing": report.get("champion_missing"),
        "champion_not_comparable": report.get("champion_not_comparable"),
        "dataset": report.get("dataset"),
        "challenger": dict(report["challenger"]),
    }


def _relative(path: Path, repo: Path) -> str:
    """`path` as DVC names it at another revision: relative to the repo root, with '/'."""
    return Path(os.path.relpath(path.resolve(), repo.resolve())).as_posix()


def run_gate(args: argparse.Namespace) -> tuple[dict[str, Any], Verdict]:
    """Load, score and judge; ValueError/KeyError/FileNotFoundError for bad inputs."""
    params = load_params(args.params)
    cfg = GateConfig.from_params(settings_for(params, "gate"))
    eval_cfg = EvaluateConfig.from_params(section(params, "evaluate"))
    seed = int(section(params, "seed"))
    ref = args.ref or cfg.champion_ref
    schema = load_schema(args.schema)
    test = read_frame(args.test)
    check_frame(test, schema, source=str(args.test))
    challenger = score(
        load_model(args.model), test, schema, schema.label, eval_cfg, source=str(args.test)
    )

    dataset = params.get("dataset") or {}
    dataset_name = dataset.get("name") if isinstance(dataset, Mapping) else None
    champion: Champion | None = None
    champion_scores: Scores | None = None
    missing: str | None = None
    problem: str | None = None
    not_comparable: str | None = None
    try:
        # the champion's dataset first: another dataset's model is not even fetched (a clone
        # of another project need not reach its DVC remote)
        commit = promoted_commit(resolve_commit(ref, args.repo), args.repo)
        champion_dataset = dataset_at(commit, _relative(args.params, args.repo), args.repo)
        check_same_dataset(ref, commit, champion_dataset, dataset_name)
        champion = fetch_champion(
            ref,
            args.repo,
            _relative(args.model, args.repo),
            _relative(args.schema, args.repo),
            _relative(args.lock, args.repo),
            commit,
        )
    except NoChampion as exc:
        missing = str(exc)
    except NotComparable as exc:
        not_comparable = str(exc)
    except ValueError as exc:  # the champion's files exist but will not load
        problem = f"the champion cannot be loaded: {exc}"
    if champion is not None:
        try:
            champion_scores = score_champion(
                champion, test, schema.label, eval_cfg, source=str(args.test), task=schema.task
            )
        except NotComparable as exc:
            champion, not_comparable = None, str(exc)
        except ValueError as exc:
            problem = str(exc)
    verdict = judge(challenger, champion_scores, cfg, champion_problem=problem, seed=seed)
    settings = bootstrap_settings(cfg, seed, challenger)
    payload = report(
        verdict,
        file_md5(args.model),
        champion,
        missing,
        settings,
        dataset=None if dataset_name is None else str(dataset_name),
        not_comparable=not_comparable,
    )
    return payload, verdict


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
    parser.add_argument(
        "--out", type=Path, default=Path("metrics/gate.json"), help="the verdict (metrics)"
    )
    parser.add_argument(
        "--report-out",
        type=Path,
        default=Path("reports/gate.json"),
        help="the whole report: every check's numbers, every slice compared",
    )
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
    write_metrics(args.report_out, payload)
    write_metrics(args.out, headline(payload))
    champion = payload["champion"]
    if champion:
        against = f"champion {champion['ref']} @ {champion['commit'][:12]}"
    elif payload["champion_not_comparable"]:
        against = (
            f"no comparable champion ({payload['champion_not_comparable']}): judged as with no "
            "champion"
        )
    else:
        against = f"no champion ({payload['champion_missing']})"
    print(f"gate: {'BLESSED' if verdict.blessed else 'NOT BLESSED'} vs {against}")
    boot = payload["bootstrap"]
    print(
        f"  paired bootstrap: {boot['resamples']} resamples of {boot['rows']} test rows "
        f"({boot['resampled']}), seed {boot['seed']}, {_pct(boot['confidence'])} intervals of "
        f"each difference (positive: the challenger is better); detectable difference = "
        f"{boot['detectable']}"
    )
    for check in verdict.checks:
        print(f"  {'pass' if check.passed else 'FAIL'} {check.name}: {check.detail}")
    return 0 if verdict.blessed else 1


if __name__ == "__main__":
    raise SystemExit(main())
