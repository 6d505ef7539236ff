"""Backtest: replay a lake's history under each retrain policy (`evergreen backtest`).

Which cadence does a dataset need? The answer is in its own history: step through the days as
production would have lived them and, under each policy of `retrain.policies`
(stages/lib/policy.py), do what the two pipelines do, in one process with the stages' own code:

- the data: every landed partition validated once (stages/lib/validation.py) and profiled
  (stages/lib/profiling.py); at step date d, only the partitions dated <= d are merged into the
  history (stages/lib/merge.py, incrementally: each step upserts the partitions since the last
  one). The partition date is the landing date, so a late row counts from the day it landed,
  never from its event time;
- the prediction run at d: the prediction set (entity churn: the entities active at the latest
  day, stages/lib/snapshots.py; a rows task: the rows landed since the previous step,
  stages/lib/rows.py) scored by the policy's model in production (`score_frame`, the predict
  stage's code, through the native pipeline rather than its ONNX export: the export stage
  holds the two within 1e-4), then the monitor's verdict (stages/lib/monitoring.py: its core
  on in-memory frames, fed exactly what `run_monitor` reads from files: the profiles of the
  partitions landed by d, the champion's reference scores on its test split, the policy's own
  earlier predictions as the published ones, and labels only once they have matured by d);
- the training run, when the policy says so (`Policy.decide`): features, out-of-time split and
  tuning on the history at d (stages/lib/snapshots.py or rows.py, splitting.py, training.py),
  then the gate against the policy's champion on the challenger's test split (a callable the
  command passes in: `evergreen gate`'s bootstrap and checks); promoted when blessed. The
  first step has no model, so every policy trains there.

The realised metric of step d is the production model's score on d's prediction set judged
with the labels as they finally matured (the lake's whole history; entity churn: d + horizon
must lie within it, so the steps end there by default): ROC AUC and PR AUC, or a regression's
MAE and R². Its mean over the steps is the policy's `mean_metric`. What no decision ever reads
is kept out of the replay: labels reach the monitor only at maturity, and the truth reaches
nothing but the score card.

The bound with hindsight: when a model was trained at every step date (a policy that trains at
every step ran, every_7_days at a 7-day step), every one of them is scored on every later
step, and `best_with_hindsight` finds, for each number of trainings, the best mean any choice
of training days could have reached, knowing every realised metric in advance and promoting
every model (no gate). It is a bound, not a policy: how far a policy is from it at the same
number of trainings is what a better choice of days could still win.

Work the policies share is done once: the data, the prediction set and the labels of each
step; a training at a given date (same data, same seed: the same model) is cached by date, a
gate by (challenger, champion), scores by (model, step). Every result is a pure function of the
lake and the params, so the JSON is the same bytes run to run but for its `seconds`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import ibis
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from sklearn.metrics import average_precision_score, roc_auc_score

from stages.contract.feature_schema import FeatureSchema, load_schema
from stages.contract.prediction_log import PREDICTION, SCORE
from stages.lib.dataset import DatasetConfig, dataset_from_params, settings_for
from stages.lib.engine import EngineConfig, connect, read_parquet, write_parquet
from stages.lib.io import PARTITION_COL, read_frame, round_floats, validated_partitions
from stages.lib.merge import prepare_fingerprint, run_prepare
from stages.lib.monitoring import (
    MonitorConfig,
    arrived_targets,
    input_drift,
    judged_predictions,
    label_days,
    matured_labels,
    monitor,
    performance_by_kind,
)
from stages.lib.params import section
from stages.lib.policy import Policy, last_training, policies_from_params
from stages.lib.predictions import SNAPSHOT_COL, decision_threshold
from stages.lib.profiling import ProfileConfig, profile_partition
from stages.lib.regression import regression_metrics
from stages.lib.rows import build_rows, table_days, write_rows
from stages.lib.scoring import reference_scores, score_frame
from stages.lib.snapshots import (
    FeaturesConfig,
    build_features,
    event_dates,
    frame_schema,
    read_history,
    truncated_windows_note,
    write_snapshots,
)
from stages.lib.splitting import SplitConfig, split_snapshots
from stages.lib.training import ModelConfig, TrainConfig, predictions, tune_model
from stages.lib.validation import (
    ValidateConfig,
    check_thresholds,
    conservation_problems,
    results_of,
    run_validate,
    validate_fingerprint,
)

DIGITS = 6
JSON_FILE = "backtest.json"
HTML_FILE = "backtest.html"


class BacktestError(ValueError):
    """What stops a backtest before it runs (a lake too short, a policy unknown): one line."""


# --- settings ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class BacktestConfig:
    """How the history is replayed: a step every `step_days` days from `start` (default: the
    lake's first day + `warmup_days`, the history a full training window needs) to `end`
    (default: the last day whose labels have matured within the lake)."""

    step_days: int = 7
    warmup_days: int | None = None
    start: dt.date | None = None
    end: dt.date | None = None
    policies: tuple[str, ...] = ()  # empty: every policy of retrain.policies

    def __post_init__(self) -> None:
        if not isinstance(self.step_days, int) or self.step_days < 1:
            raise BacktestError(f"--step-days: expected a whole number >= 1, got {self.step_days}")
        if self.warmup_days is not None and self.warmup_days < 1:
            raise BacktestError(
                f"--warmup-days: expected a whole number >= 1, got {self.warmup_days}"
            )


@dataclass(frozen=True)
class Settings:
    """Every params section the replay reads, parsed once."""

    dataset: DatasetConfig
    features: FeaturesConfig
    split: SplitConfig
    model: ModelConfig
    train: TrainConfig
    monitor: MonitorConfig
    validate: ValidateConfig
    profile: ProfileConfig
    engine: EngineConfig
    policies: dict[str, Policy]
    threshold: float
    seed: int
    dataset_params: Mapping[str, Any]
    validate_params: Mapping[str, Any]

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Settings:
        dataset_params = section(params, "dataset")
        validate_params = section(params, "validate")
        return cls(
            dataset=dataset_from_params(dataset_params),
            features=FeaturesConfig.from_params(section(params, "features")),
            split=SplitConfig(**section(params, "split")),
            model=ModelConfig.from_params(section(params, "model")),
            train=TrainConfig.from_params(section(params, "train")),
            monitor=MonitorConfig.from_params(settings_for(params, "monitor")),
            validate=ValidateConfig(**validate_params),
            profile=ProfileConfig.from_params(params.get("profile") or {}),
            engine=EngineConfig.from_params(params.get("engine")),
            policies=policies_from_params(params),
            threshold=decision_threshold(params.get("evaluate") or {}),
            seed=int(section(params, "seed")),
            dataset_params=dataset_params,
            validate_params=validate_params,
        )

    @property
    def rows(self) -> bool:
        return self.dataset.task.rows

    @property
    def regression(self) -> bool:
        return self.dataset.task.regression

    @property
    def horizon(self) -> dt.timedelta:
        return dt.timedelta(days=self.dataset.label.horizon_days)

    def warmup_days(self) -> int:
        """The history the first model needs to be trained like every later one: a full window
        of `features.max_snapshots` labelled snapshots (entity churn: min_history_days + the
        label horizon + the snapshot intervals between them; a rows task: as many periods), and
        never less than split needs (a train snapshot besides the valid and test ones). A rows
        task's outcomes known `label_delay_days` after their rows wait as long: without it, a
        card lake's first model (30-day chargebacks) learnt 4 of its 8 periods.

        Not the least history a training can run on: a first model on one train snapshot is a
        model nobody would ship, and every policy keeps it until it retrains, so a short
        warm-up judges how soon a policy replaces a weak first model rather than how it follows
        the data (retail: one snapshot of ~170 customers, which the weekly schedule replaced
        and the monitor, seeing no drift, rightly did not)."""
        held_out = self.split.valid_snapshots + self.split.test_snapshots
        snapshots = max(self.features.max_snapshots, held_out + 1)
        if self.rows:
            task = self.dataset.task
            return snapshots * task.period_days + (task.label_delay_days or 0)
        f = self.features
        return (
            f.min_history_days
            + self.dataset.label.horizon_days
            + (snapshots - 1) * f.snapshot_every_days
        )


def step_dates(
    first: dt.date, last: dt.date, settings: Settings, cfg: BacktestConfig
) -> list[dt.date]:
    """Every `step_days` from the start to the end (see BacktestConfig)."""
    warmup = cfg.warmup_days if cfg.warmup_days is not None else settings.warmup_days()
    start = cfg.start or first + dt.timedelta(days=warmup)
    end = cfg.end or last - settings.horizon
    if start < first:
        raise BacktestError(f"--start {start}: before the lake's first day {first}")
    if end > last:
        raise BacktestError(f"--end {end}: after the lake's last day {last}")
    if start > end:
        raise BacktestError(
            f"the lake's days {first}..{last} leave no step: the first step {start} (first day + "
            f"{warmup} warm-up days) is after the last one {end} (last day - label horizon "
            f"{settings.dataset.label.horizon_days} days); land more days or pass --warmup-days"
        )
    steps = []
    day = start
    while day <= end:
        steps.append(day)
        day += dt.timedelta(days=cfg.step_days)
    return steps


# --- the lake as it was on each day -------------------------------------------------------------


class LakeReplay:
    """The lake's partitions validated and profiled once, and the history as merged on a day."""

    def __init__(self, landing: Path, work: Path, settings: Settings, log: TextIO) -> None:
        self.settings = settings
        self.validated = work / "validate"
        self.visible = work / "visible"
        self.history = work / "history"
        dataset = settings.dataset
        fp = validate_fingerprint(settings.dataset_params, settings.validate_params)
        run = run_validate(
            landing,
            self.validated,
            dataset,
            fp,
            settings.engine,
            settings.validate.extra_columns,
        )
        problems = conservation_problems(run.entries) + check_thresholds(
            results_of(run.entries), settings.validate, dataset.calendar
        )
        for problem in problems:  # production would stop that day; a replay reports and goes on
            print(f"backtest: validate: {problem}", file=log)
        self.partitions = {
            t.name: validated_partitions(self.validated, t.name) for t in dataset.tables
        }
        self.profiles: dict[str, dict[str, dict]] = {}
        for table in dataset.tables:
            self.profiles[table.name] = {
                day: profile_partition(
                    pq.read_table(path).to_pandas(),
                    table,
                    top_k=settings.profile.top_k,
                    day=day,
                    late_after_days=settings.profile.late_after_days,
                )
                for day, path in self.partitions[table.name].items()
            }
        self.fingerprint = prepare_fingerprint(settings.dataset_params["tables"], settings.dataset)
        self.merged_to: str | None = None

    def days(self) -> tuple[dt.date, dt.date]:
        """The first and last partition date of the table whose days date a run."""
        dates = list(self.partitions[self.main_table])
        if not dates:
            raise BacktestError(f"table '{self.main_table}': no valid partition in the lake")
        return dt.date.fromisoformat(dates[0]), dt.date.fromisoformat(dates[-1])

    @property
    def main_table(self) -> str:
        dataset = self.settings.dataset
        return dataset.task.table if dataset.task.rows else dataset.events.name

    def advance(self, day: dt.date) -> Path:
        """The history holding every partition dated <= `day` (prepare's upsert of the new ones)."""
        until = day.isoformat()
        for table, parts in self.partitions.items():
            folder = self.visible / table
            folder.mkdir(parents=True, exist_ok=True)
            for partition, path in parts.items():
                target = folder / path.name
                if partition <= until and not target.exists():
                    try:
                        os.link(path, target)
                    except OSError:  # another file system: a copy does as well
                        shutil.copyfile(path, target)
        if self.merged_to != until:
            run_prepare(self.visible, self.history, self.settings.dataset, self.fingerprint,
                        self.settings.engine)  # fmt: skip
            self.merged_to = until
        return self.history

    def profiles_until(self, day: dt.date) -> dict[str, dict[str, dict]]:
        until = day.isoformat()
        return {t: {d: p for d, p in by.items() if d <= until} for t, by in self.profiles.items()}


# --- models -----------------------------------------------------------------------------------


class NativePredictor:
    """The two calls `score_frame` and `reference_scores` make of an OnnxPredictor, answered by
    the trained pipeline itself (the export stage proves the ONNX graph answers the same)."""

    def __init__(self, model: Any, schema: FeatureSchema) -> None:
        self.model, self.schema = model, schema

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        return predictions(self.model, frame, self.schema)

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        return predictions(self.model, frame, self.schema)


@dataclass
class Trained:
    """A model trained at a step: the whole predictor and what the gate and monitor need."""

    date: dt.date
    model: Any
    schema: FeatureSchema
    test: pd.DataFrame  # its out-of-time test split (what the gate compares on)
    reference: pd.DataFrame  # its scores on that split, with the labels (the monitor's reference)
    evaluated: dt.date  # the test split's latest snapshot
    valid_score: float
    rows: int
    seconds: float

    @property
    def model_id(self) -> str:
        return f"trained-{self.date.isoformat()}"


@dataclass(frozen=True)
class GateResult:
    blessed: bool
    detail: str  # the checks that failed, or why nothing was compared
    seconds: float = 0.0


# the gate: challenger, champion (None: there is none) -> verdict. The command passes
# `evergreen gate`'s checks in (stages/cli/backtest.py): the library does not import commands.
Gate = Callable[[Trained, Trained | None], GateResult]


def train_at(history: Path, day: dt.date, work: Path, settings: Settings) -> Trained:
    """The training run on the history at `day`: features, split, tuning. ValueError says why
    it cannot train (too little history, one class)."""
    started = time.process_time()
    out = work / "train" / day.isoformat()
    dataset = settings.dataset
    with contextlib.redirect_stdout(io.StringIO()):  # the stages' one-line summaries
        try:
            if settings.rows:
                write_rows(history, out, dataset, settings.features, settings.engine)
            else:
                write_snapshots(history, out, dataset, settings.features, settings.engine)
        except SystemExit as exc:  # features' "history too short" is a stage exit
            raise ValueError(str(exc)) from None
    schema = load_schema(out / "feature_schema.json")
    parts = split_snapshots(read_frame(out / "snapshots.parquet"), settings.split)
    shutil.rmtree(out, ignore_errors=True)
    tuning = tune_model(
        parts["train"],
        parts["valid"],
        schema,
        settings.model,
        settings.seed,
        n_trials=settings.train.n_trials,
        n_jobs=settings.train.n_jobs,
        refit=settings.train.refit,
    )
    test = parts["test"]
    reference = reference_scores(test, NativePredictor(tuning.model, schema), schema)
    return Trained(
        date=day,
        model=tuning.model,
        schema=schema,
        test=test,
        reference=reference,
        evaluated=pd.Timestamp(reference[SNAPSHOT_COL].max()).date(),
        valid_score=tuning.best_score,
        rows=len(parts["train"]),
        seconds=time.process_time() - started,
    )


# --- what each step shares ---------------------------------------------------------------------


def prediction_set(
    con: ibis.BaseBackend,
    history: Path,
    previous: dt.date | None,
    day: dt.date,
    work: Path,
    settings: Settings,
) -> pd.DataFrame:
    """What the prediction run scores at `day`, written and read back as the features stage
    writes it. Entity churn: the entities active at the history's latest day. A rows task:
    the rows landed since the previous step (`previous`), dated `day`: the model in production
    has never seen them, and the monitor judges it on them once their targets are in."""
    dataset = settings.dataset
    path = work / "predict" / f"{day.isoformat()}.parquet"
    if settings.rows:
        table = read_parquet(con, history / f"{dataset.task.table}.parquet")
        if previous is not None:
            table = table.filter(table[PARTITION_COL] > ibis.literal(previous))
        days = table_days(con, table, dataset)
        labelled, pending = build_rows(table, dataset, settings.features, last=day, days=days)
        rows = labelled.drop(dataset.task.target).union(pending)
        rows = rows.mutate(**{SNAPSHOT_COL: ibis.literal(day)}).order_by(dataset.task.key)
        write_parquet(con, rows, path, frame_schema(rows))
    else:
        events, entities = read_history(con, history, dataset)
        _, last, span = event_dates(con, events, dataset)
        expr = build_features(
            events, entities, [last], dataset, settings.features, labelled=False, span=span
        )
        write_parquet(con, expr, path, frame_schema(expr))
    frame = read_frame(path)
    path.unlink()
    return frame


class Labels:
    """The labels the monitor may read at a step: an entity churn's, per snapshot date, once
    matured (computed from the history on the day they mature, with the features stage's label
    code); a rows task's targets, as arrived in the history by then."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.by_date: dict[dt.date, pd.DataFrame] = {}
        self.targets = pd.DataFrame()
        # a rows classification's label counts per row day, as the history holds them now
        self.by_row_day: dict[str, tuple[int, int]] | None = None

    def update(self, history: Path, matured: Sequence[dt.date], keys: pd.Series) -> None:
        s = self.settings
        if s.rows:
            self.targets = (
                arrived_targets(history, s.dataset, keys) if len(keys) else pd.DataFrame()
            )
            self.by_row_day = label_days(history, s.dataset)
            return
        new = sorted(d for d in matured if d not in self.by_date)
        if not new:
            return
        found = matured_labels(history, s.dataset, s.features, new)
        dates = pd.to_datetime(found[SNAPSHOT_COL]).dt.date
        for day in new:
            self.by_date[day] = found[dates == day]

    def churn(self, dates: Iterable[dt.date]) -> pd.DataFrame:
        frames = [self.by_date[d] for d in sorted(dates) if d in self.by_date]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


# --- one policy through the steps ---------------------------------------------------------------


@dataclass
class PolicyRun:
    policy: Policy
    champion: Trained | None = None
    last_attempt: dt.date | None = None  # the last step a training run started
    trainings: list[dict[str, Any]] = field(default_factory=list)
    # what the lake's predictions/ would hold: the latest predictions per snapshot date
    published: dict[dt.date, pd.DataFrame] = field(default_factory=dict)
    scored: list[pd.DataFrame | None] = field(default_factory=list)  # per step
    steps: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def monitor_verdict(
    run: PolicyRun,
    batch: pd.DataFrame,
    profiles: Mapping[str, Mapping[str, Mapping]],
    labels: Labels,
    settings: Settings,
) -> dict[str, Any]:
    """The monitor's report on the champion at this step: `run_monitor`'s reading of its files,
    here from memory (no server log: served scores are absent, as in a batch-only project)."""
    champion = run.champion
    assert champion is not None
    dataset, cfg = settings.dataset, settings.monitor
    cutoff = champion.evaluated + settings.horizon
    inputs = input_drift(
        profiles, dataset, champion.schema.features, cutoff, cfg, labels.by_row_day
    )
    main = dataset.task.table if dataset.task.rows else dataset.events.name
    last_day = dt.date.fromisoformat(max(profiles[main]))
    published, matured = judged_predictions(
        pd.concat(run.published.values(), ignore_index=True) if run.published else pd.DataFrame(),
        batch,
        champion.evaluated,
        last_day,
        dataset,
        champion.reference,
    )
    outcomes = labels.targets if dataset.task.rows else labels.churn(matured)
    performance = performance_by_kind(dataset, published, outcomes, champion.reference, cfg)
    output = PREDICTION if settings.regression else SCORE
    return monitor(
        inputs=inputs,
        reference=champion.reference,
        batch_scores=batch[output].to_numpy(dtype="float64"),
        served_scores=None,
        performance=performance,
        cfg=cfg,
        output=output,
        label_shift=not dataset.task.rows,
    )


# --- the replay -------------------------------------------------------------------------------


@dataclass
class Caches:
    trained: dict[dt.date, Trained | str] = field(default_factory=dict)  # str: why it failed
    gates: dict[tuple[dt.date, str | None], GateResult] = field(default_factory=dict)
    scores: dict[tuple[str, dt.date], tuple[pd.DataFrame, float]] = field(default_factory=dict)


def _score(
    champion: Trained, frame: pd.DataFrame, day: dt.date, caches: Caches, settings: Settings
) -> tuple[pd.DataFrame, float]:
    cache_key = (champion.model_id, day)
    if cache_key not in caches.scores:
        started = time.process_time()
        identity = {
            "model_name": "backtest",
            "model_version": champion.model_id,
            "data_version": day.isoformat(),
        }
        predictor = NativePredictor(champion.model, champion.schema)
        scored = score_frame(frame, predictor, champion.schema, settings.threshold, identity)
        caches.scores[cache_key] = (scored, time.process_time() - started)
    return caches.scores[cache_key]


def _train(
    history: Path,
    day: dt.date,
    run: PolicyRun,
    work: Path,
    settings: Settings,
    caches: Caches,
    gate: Gate,
) -> tuple[bool, str, float]:
    """Train at `day` (cached by date) and gate against the run's champion (cached by pair):
    (promoted, what happened, seconds it cost this policy)."""
    if day not in caches.trained:
        try:
            caches.trained[day] = train_at(history, day, work, settings)
        except ValueError as exc:
            caches.trained[day] = str(exc)
    trained = caches.trained[day]
    if isinstance(trained, str):
        return False, f"training failed: {trained}", 0.0
    champion_id = None if run.champion is None else run.champion.model_id
    pair = (day, champion_id)
    if pair not in caches.gates:
        started = time.process_time()
        verdict = gate(trained, run.champion)
        caches.gates[pair] = GateResult(
            verdict.blessed, verdict.detail, time.process_time() - started
        )
    verdict = caches.gates[pair]
    seconds = trained.seconds + verdict.seconds
    if verdict.blessed:
        run.champion = trained
        return True, f"promoted ({verdict.detail})", seconds
    return False, f"not blessed: {verdict.detail}", seconds


def _step_policy(
    run: PolicyRun,
    day: dt.date,
    frame: pd.DataFrame,
    history: Path,
    profiles: Mapping[str, Mapping[str, Mapping]],
    labels: Labels,
    work: Path,
    settings: Settings,
    caches: Caches,
    gate: Gate,
) -> dict[str, Any]:
    record: dict[str, Any] = {"date": day.isoformat()}
    recommends = False
    seconds = 0.0
    run.scored.append(None)
    if run.champion is not None and len(frame):
        scored, cost = _score(run.champion, frame, day, caches, settings)
        seconds += cost
        started = time.process_time()
        report = monitor_verdict(run, scored, profiles, labels, settings)
        seconds += time.process_time() - started
        # published after the monitor, as `evergreen publish` follows `dvc repro`
        run.published[_snapshot(scored, day)] = scored
        run.scored[-1] = scored
        recommends = bool(report["retrain_recommended"])
        record.update(
            model=run.champion.model_id,
            retrain_recommended=recommends,
            reasons=sorted({f"{r['kind']}:{r['column']}" for r in report["reasons"]}),
        )
        live = report["performance"]["snapshots"]
        if live:  # what the monitor saw of matured labels: the latest judged snapshot
            latest = max(live)
            seen = {k: live[latest][k] for k in ("n", "roc_auc", "mae") if k in live[latest]}
            record["monitor_live"] = {"snapshot": latest, **seen}
    # production's clock, as `evergreen run daily` keeps it (`last_training`)
    trained = run.champion.date if run.champion is not None else None
    decision = run.policy.decide(day, last_training(trained, run.last_attempt), recommends)
    record.update(train=decision.train, why=decision.reason)
    if decision.train:
        run.last_attempt = day
        promoted, what, cost = _train(history, day, run, work, settings, caches, gate)
        seconds += cost
        run.trainings.append({"date": day.isoformat(), "promoted": promoted, "result": what})
        record.update(promoted=promoted, result=what)
    run.seconds += seconds
    return record


def replay(
    landing: Path,
    work: Path,
    settings: Settings,
    cfg: BacktestConfig,
    gate: Gate,
    log: TextIO = sys.stderr,
) -> dict[str, Any]:
    """Replay the lake at `landing` under each policy; returns the backtest's JSON payload."""
    started = time.process_time()
    unknown = sorted(set(cfg.policies) - set(settings.policies))
    if unknown:
        raise BacktestError(
            f"--policies: {unknown[0]!r} is not in retrain.policies "
            f"({', '.join(settings.policies)})"
        )
    chosen = [
        p for name, p in settings.policies.items() if not cfg.policies or name in cfg.policies
    ]
    print(f"backtest: validating and profiling the partitions of {landing}", file=log)
    lake = LakeReplay(landing, work, settings, log)
    first, last = lake.days()
    steps = step_dates(first, last, settings, cfg)
    runs = [PolicyRun(p) for p in chosen]
    caches = Caches()
    labels = Labels(settings)
    con = connect(settings.engine)
    snapshots: list[dt.date] = []  # each step's prediction-set date
    frames: list[pd.DataFrame] = []
    print(
        f"backtest: {len(steps)} steps of {cfg.step_days} day(s), {steps[0]}..{steps[-1]} "
        f"(lake {first}..{last}), policies {', '.join(r.policy.name for r in runs)}",
        file=log,
    )
    key = settings.dataset.entity_key
    shared = time.process_time() - started
    for i, day in enumerate(steps):
        started = time.process_time()
        history = lake.advance(day)
        frame = prediction_set(con, history, steps[i - 1] if i else None, day, work, settings)
        snapshot = _snapshot(frame, day)
        keys = pd.concat([f[key] for f in [*frames, frame]]) if settings.rows else pd.Series()
        labels.update(history, [s for s in snapshots if s + settings.horizon <= day], keys)
        profiles = lake.profiles_until(day)
        shared += time.process_time() - started
        for run in runs:
            record = _step_policy(
                run, day, frame, history, profiles, labels, work, settings, caches, gate
            )
            record["snapshot"] = snapshot.isoformat()
            run.steps.append(record)
            print(
                f"backtest {i + 1}/{len(steps)} {day} {run.policy.name}: {_progress(record)}",
                file=log,
            )
        snapshots.append(snapshot)
        frames.append(frame)
    started = time.process_time()
    truth = _truth(lake, last, snapshots, frames, settings)
    shared += time.process_time() - started
    hindsight = _hindsight(steps, frames, truth, caches, settings, log)
    return _payload(
        runs, steps, snapshots, truth, lake, (first, last), settings, cfg, shared, hindsight
    )


def _snapshot(frame: pd.DataFrame, day: dt.date) -> dt.date:
    if len(frame) and SNAPSHOT_COL in frame:
        return pd.Timestamp(frame[SNAPSHOT_COL].max()).date()
    return day


def _progress(record: Mapping[str, Any]) -> str:
    seen = ""
    if "model" in record:
        verdict = "retrain recommended" if record["retrain_recommended"] else "no reason to retrain"
        seen = f"scored with {record['model']}, monitor: {verdict}; "
    if record["train"]:
        return f"{seen}train ({record['why']}): {record['result']}"
    return f"{seen}keep ({record['why']})"


# --- the score card ---------------------------------------------------------------------------


def _truth(
    lake: LakeReplay,
    last: dt.date,
    snapshots: Sequence[dt.date],
    frames: Sequence[pd.DataFrame],
    settings: Settings,
) -> pd.DataFrame:
    """The labels as they finally matured, from the whole lake: key, snapshot date, label.
    Read by the score card only, never by a decision."""
    history = lake.advance(last)
    dataset = settings.dataset
    key = dataset.entity_key
    if settings.rows:
        keys = pd.concat([f[key] for f in frames], ignore_index=True)
        targets = arrived_targets(history, dataset, keys).rename(columns={"target": "label"})
        dated = pd.concat(
            [f[[key, SNAPSHOT_COL]] for f in frames], ignore_index=True
        ).drop_duplicates(key)
        return dated.merge(targets, on=key, how="inner")
    matured = sorted({s for s in snapshots if s + settings.horizon <= last})
    if not matured:
        return pd.DataFrame(columns=[key, SNAPSHOT_COL, "label"])
    labels = matured_labels(history, dataset, settings.features, matured)
    return labels.rename(columns={dataset.label.name: "label"})


def realised(
    scored: pd.DataFrame, truth: pd.DataFrame, key: str, regression: bool
) -> dict[str, Any]:
    """The production model's realised metrics on one step's prediction set: ROC AUC and PR AUC
    (None with a single class) and the Brier score, or a regression's MAE and R²; n: the rows
    with a label."""
    left = scored.assign(**{SNAPSHOT_COL: pd.to_datetime(scored[SNAPSHOT_COL])})
    right = truth.assign(**{SNAPSHOT_COL: pd.to_datetime(truth[SNAPSHOT_COL])})
    joined = left.merge(right, on=[key, SNAPSHOT_COL], how="inner")
    if joined.empty:
        return {"n": 0}
    y = joined["label"].to_numpy(dtype="float64")
    if regression:
        m = regression_metrics(y, joined[PREDICTION].to_numpy(dtype="float64"))
        return {"n": len(y), "mae": m["mae"], "r2": m["r2"]}
    p = joined[SCORE].to_numpy(dtype="float64")
    both = 0 < y.sum() < len(y)
    return {
        "n": len(y),
        "positives": int(y.sum()),
        "roc_auc": float(roc_auc_score(y, p)) if both else None,
        "pr_auc": float(average_precision_score(y, p)) if both else None,
        # the scores as probabilities: what a label rate that doubled breaks while the ranking
        # (ROC AUC) holds, for a team that sums scores into expected counts
        "brier": float(np.mean((p - y) ** 2)),
    }


def headline_metric(settings: Settings) -> tuple[str, tuple[str, ...], bool]:
    """(the metric compared, every metric reported, whether higher is better)."""
    if settings.regression:
        return "mae", ("mae", "r2"), False
    return "roc_auc", ("roc_auc", "pr_auc", "brier"), True


def _mean(values: Iterable[Any]) -> float | None:
    found = [float(v) for v in values if v is not None]
    return float(np.mean(found)) if found else None


# --- the bound with hindsight -------------------------------------------------------------------


def best_with_hindsight(
    matrix: Sequence[Sequence[float | None] | None], higher_is_better: bool
) -> dict[int, float | None]:
    """For K = 1..n trainings, the best mean realised metric any choice of at most K training
    steps could reach, step 0 always among them (there is no model before it): `matrix[i][j]`
    is the metric at step j of the model trained at step i (read for j > i only; None: not
    judged there, left out of the mean as `_mean` leaves it out); `matrix[i]` None: no model at
    step i (the training failed), so that step cannot be chosen. A model trained at i serves
    steps i+1 up to the next training, every model promoted (no gate). None: no step judged.

    At most K, not exactly K: a training the gate refused, or one that failed, leaves the old
    model serving, as not training does, so each policy's own steps are one of the choices
    counted at its number of trainings and its mean can never beat the bound there (but for a
    policy whose first model the gate refused: it judged fewer steps, not the same ones).

    Exact: a dynamic programme over (latest training, trainings so far, steps judged so far),
    keeping the least oriented sum per state; the count is carried because a None can make
    the number of judged steps depend on the choice, and a mean is a sum over a count. Where
    every model is judged on the same steps (the usual case) a state holds one count."""
    n = len(matrix)
    sign = -1.0 if higher_is_better else 1.0  # minimise sign * metric
    served = [_served(row, i, n, sign) for i, row in enumerate(matrix)]
    # reach[t][k]: {steps judged: least oriented sum} over the choices of k trainings whose
    # latest is at step t, every step up to t served
    reach: list[list[dict[int, float]]] = [[{} for _ in range(n + 1)] for _ in range(n)]
    if n:
        reach[0][1] = {0: 0.0}
    exactly: list[float | None] = [None] * (n + 1)  # least oriented mean with k trainings
    for t in range(n):
        for k in range(1, n + 1):
            states = reach[t][k]
            if not states:
                continue
            exactly[k] = _least_mean(exactly[k], states, served[t][n - 1])  # no more trainings
            for u in range(t + 1, n):  # the next training at u: t's model serves t+1..u
                if matrix[u] is None:
                    continue
                add_sum, add_count = served[t][u]
                target = reach[u][k + 1]
                for count, total in states.items():
                    if total + add_sum < target.get(count + add_count, np.inf):
                        target[count + add_count] = total + add_sum
    bound: dict[int, float | None] = {}
    best: float | None = None
    for k in range(1, n + 1):  # at most k
        if exactly[k] is not None and (best is None or exactly[k] < best):
            best = exactly[k]
        bound[k] = None if best is None else sign * best
    return bound


def _served(
    row: Sequence[float | None] | None, i: int, n: int, sign: float
) -> list[tuple[float, int]]:
    """Per step t: (oriented sum, steps judged) of the model trained at step i over i+1..t."""
    total, count, sums = 0.0, 0, [(0.0, 0)] * n
    for t in range(i + 1, n):
        value = None if row is None else row[t]
        if value is not None:
            total, count = total + sign * float(value), count + 1
        sums[t] = (total, count)
    return sums


def _least_mean(
    least: float | None, states: Mapping[int, float], tail: tuple[float, int]
) -> float | None:
    for count, total in states.items():
        if count + tail[1]:
            mean = (total + tail[0]) / (count + tail[1])
            if least is None or mean < least:
                least = mean
    return least


def _hindsight(
    steps: Sequence[dt.date],
    frames: Sequence[pd.DataFrame],
    truth: pd.DataFrame,
    caches: Caches,
    settings: Settings,
    log: TextIO,
) -> dict[str, Any]:
    """The bound with hindsight (`best_with_hindsight`) when a model was trained at every step
    date: each scored on every later step's prediction set (the scores the policies already
    made are cached, so only the others are computed) and judged like a policy's step."""
    started = time.process_time()
    missing = [d for d in steps if d not in caches.trained]
    if missing:
        why = (
            f"no policy trained at every step ({len(steps) - len(missing)} of {len(steps)} step "
            f"dates trained, not {missing[0]}): run one that does, as every_7_days at "
            "--step-days 7"
        )
        # the command's summary says why (printed here too, it showed twice on a terminal)
        return {"available": False, "why": why, "best_by_trainings": {}, "seconds": 0.0}
    metric, _, higher = headline_metric(settings)
    key = settings.dataset.entity_key
    print(f"backtest: hindsight: {len(steps)} models judged on every later step", file=log)
    matrix: list[list[float | None] | None] = []
    for i, day in enumerate(steps):
        trained = caches.trained[day]
        if isinstance(trained, str):  # a failed training: no model to choose at that step
            matrix.append(None)
            continue
        row: list[float | None] = [None] * len(steps)
        for j in range(i + 1, len(steps)):
            if len(frames[j]):
                seen = (trained.model_id, steps[j]) in caches.scores
                scored, _ = _score(trained, frames[j], steps[j], caches, settings)
                row[j] = realised(scored, truth, key, settings.regression).get(metric)
                if not seen:  # n² scored frames kept would grow with the lake: read once
                    del caches.scores[trained.model_id, steps[j]]
        matrix.append(row)
    bound = best_with_hindsight(matrix, higher)
    return {
        "available": True,
        "best_by_trainings": {str(k): v for k, v in bound.items()},
        "seconds": round(time.process_time() - started, 2),
    }


def _payload(
    runs: Sequence[PolicyRun],
    steps: Sequence[dt.date],
    snapshots: Sequence[dt.date],
    truth: pd.DataFrame,
    lake: LakeReplay,
    days: tuple[dt.date, dt.date],
    settings: Settings,
    cfg: BacktestConfig,
    shared_seconds: float,
    hindsight: Mapping[str, Any],
) -> dict[str, Any]:
    metric, metrics, higher = headline_metric(settings)
    key = settings.dataset.entity_key
    policies: dict[str, Any] = {}
    for run in runs:
        for record, scored in zip(run.steps, run.scored, strict=True):
            if scored is not None:
                record.update(realised(scored, truth, key, settings.regression))
        p = run.policy
        policies[p.name] = {
            "every_days": p.every_days,
            "monitor": p.monitor,
            "min_gap_days": p.min_gap_days,
            "mean_metric": _mean(r.get(metric) for r in run.steps),
            **{f"mean_{m}": _mean(r.get(m) for r in run.steps) for m in metrics},
            "steps_scored": sum(1 for r in run.steps if r.get(metric) is not None),
            "trainings": len(run.trainings),
            "promotions": sum(1 for t in run.trainings if t["promoted"]),
            "seconds": round(run.seconds, 2),
            "training_dates": run.trainings,
            "series": run.steps,
            # the bound at this policy's trainings: what the best days would have given
            "hindsight_best": hindsight["best_by_trainings"].get(str(len(run.trainings))),
        }
    first, last = days
    payload = round_floats(
        {
            "dataset": settings.dataset.name,
            "task": settings.dataset.task.kind,
            "metric": metric,
            "metrics": list(metrics),
            "higher_is_better": higher,
            "lake": {
                "first_day": first.isoformat(),
                "last_day": last.isoformat(),
                "partitions": {t: len(p) for t, p in lake.partitions.items()},
            },
            "settings": {
                "step_days": cfg.step_days,
                "start": steps[0].isoformat(),
                "end": steps[-1].isoformat(),
                "steps": len(steps),
                "label_horizon_days": settings.dataset.label.horizon_days,
                "model": settings.model.name,
                "scored_with": "the trained pipeline (the ONNX export answers the same)",
            },
            "steps": [d.isoformat() for d in steps],
            "snapshots": [d.isoformat() for d in snapshots],
            "labelled_rows": len(truth),
            "policies": policies,
            "hindsight": dict(hindsight),
            "shared_seconds": round(shared_seconds, 2),
        },
        DIGITS,
    )
    payload["comparisons"] = [
        found for a, b in COMPARED if (found := comparison(payload, a, b)) is not None
    ]
    payload["warnings"] = warnings(payload, days, settings)
    return payload


# a step judged on fewer positives than this says little (the gate's min_test_class_rows)
THIN_STEP_POSITIVES = 10


def warnings(
    payload: Mapping[str, Any], days: tuple[dt.date, dt.date], settings: Settings
) -> list[str]:
    """What makes the means less telling than they look: a warm-up that leaves few days to
    judge, steps whose ROC AUC rests on a handful of positives."""
    out = []
    first, last = days
    start = dt.date.fromisoformat(payload["settings"]["start"])
    span, warm = (last - first).days, (start - first).days
    if span and warm / span > 0.5:
        out.append(
            f"the warm-up (the first model's full training window) takes {warm} of the lake's "
            f"{span} days: the steps judge {start}..{payload['settings']['end']} only (--start "
            "or --warmup-days judge more of it, with a first model trained on less)"
        )
    if not settings.rows:
        # the first model's earliest snapshot is min_history_days into the lake
        earliest = first + dt.timedelta(days=settings.features.min_history_days)
        note = truncated_windows_note(first, earliest, settings.features)
        if note:
            out.append(f"the first model: {note}")
    if not settings.regression and payload["policies"]:
        series = next(iter(payload["policies"].values()))["series"]
        scored = [r for r in series if r.get("n")]
        thin = [r for r in scored if r.get("positives", 0) < THIN_STEP_POSITIVES]
        if thin:
            out.append(
                f"{len(thin)} of {len(scored)} steps were scored on fewer than "
                f"{THIN_STEP_POSITIVES} positives (their ROC AUC is mostly noise, and counts "
                "as much in the means): a longer --step-days puts more rows in each"
            )
    return out


# the policies compared in the JSON, the page and the command's summary: (a, b), a judged against b
COMPARED = (("monitor", "every_7_days"), ("monitor", "never"))
COMPARISON_CONFIDENCE = 0.95


def comparison(payload: Mapping[str, Any], a: str, b: str) -> dict[str, Any] | None:
    """Policy `a` against `b`: the difference of their mean metrics (a - b, oriented so that
    positive means `a` is better), the ratio of their trainings, and how sure that difference
    is: a paired t interval over the steps both scored (the same prediction set, judged with
    the same labels, so each step's difference cancels what made that week easy or hard).
    Steps are not independent (one model serves several), so the interval is a guide, not a
    test: an interval across 0 says the backtest cannot tell the two apart. None if either
    policy is absent."""
    policies = payload["policies"]
    if a not in policies or b not in policies:
        return None
    ma, mb = policies[a]["mean_metric"], policies[b]["mean_metric"]
    if ma is None or mb is None:
        return None
    sign = 1.0 if payload["higher_is_better"] else -1.0
    better = sign * (ma - mb)
    metric = payload["metric"]
    by_date = {r["date"]: r.get(metric) for r in policies[b].get("series", [])}
    pairs = [
        sign * (r[metric] - by_date[r["date"]])
        for r in policies[a].get("series", [])
        if r.get(metric) is not None and by_date.get(r["date"]) is not None
    ]
    low = high = None
    if len(pairs) > 1:
        from scipy.stats import t  # the backtest's process has scipy loaded already (sklearn)

        diffs = np.asarray(pairs, dtype="float64")
        half = float(t.ppf(0.5 + COMPARISON_CONFIDENCE / 2, len(diffs) - 1)) * float(
            diffs.std(ddof=1) / np.sqrt(len(diffs))
        )
        low, high = float(diffs.mean()) - half, float(diffs.mean()) + half
    return {
        "a": a,
        "b": b,
        "difference": round(better, DIGITS),
        "relative": round(better / abs(mb), DIGITS) if mb else None,
        "trainings": (policies[a]["trainings"], policies[b]["trainings"]),
        "steps": len(pairs),
        "confidence": COMPARISON_CONFIDENCE,
        "ci_low": None if low is None else round(low, DIGITS),
        "ci_high": None if high is None else round(high, DIGITS),
    }
