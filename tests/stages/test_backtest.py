"""`evergreen backtest` on a tiny simulated shop lake: the JSON contract, the same bytes twice,
labels never read before they mature (a lake poisoned after the last step changes nothing a
decision saw), the policies' counts, the bound with hindsight (its dynamic programme on
hand-made matrices, and no policy beating it), the page drawn in headless Chromium, one-line
errors."""

from __future__ import annotations

import datetime as dt
import io
import itertools
import json
import random
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from stages.cli.backtest import main
from stages.cli.simulate import main as simulate
from stages.lib.backtest import (
    BacktestConfig,
    BacktestError,
    GateResult,
    Settings,
    Trained,
    best_with_hindsight,
    comparison,
    replay,
    step_dates,
)
from stages.lib.params import compose_params
from stages.lib.snapshots import FeaturesConfig, snapshot_dates
from tests.conftest import ROOT, write_params
from tests.stages.test_report_page import rendered

START = dt.date(2026, 1, 1)
DAYS = 70
# the steps of the tiny lake: warm-up (a full window of 3 snapshots) 7 + 14 + 2 x 7 = 35 days,
# the last step 14 days (the label horizon) before the lake's last day
STEPS = ["2026-02-05", "2026-02-12", "2026-02-19"]
POISON_AFTER = "2026-02-19"


def tiny_params(shop_params: dict, tmp: Path) -> Path:
    params = json.loads(json.dumps(shop_params))
    params["dataset"]["label"].update(horizon_days=14, lookback_days=21)
    params["features"].update(min_history_days=7, max_snapshots=3, windows=[7, 14])
    params["train"]["n_trials"] = 0
    params["gate"]["bootstrap"] = 200
    params["simulate"]["drift_day"] = 40
    return write_params(params, tmp / "params.yaml")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, shop_params_file: Path) -> dict[str, Any]:

    tmp = tmp_path_factory.mktemp("backtest")
    params = tiny_params(yaml.safe_load(shop_params_file.read_text()), tmp)
    lake = tmp / "lake"
    args = ["--lake", str(lake), "--start", str(START), "--days", str(DAYS), "--seed", "3"]
    assert simulate([*args, "--customers", "150", "--params", str(params)]) == 0
    first = tmp / "first"
    assert run(lake, params, first) == 0
    return {"tmp": tmp, "params": params, "lake": lake, "out": first}


def run(lake: Path, params: Path, out: Path, *extra: str) -> int:
    return main(["--lake", str(lake), "--params", str(params), "--step-days", "7",
                 "--out", str(out), *extra])  # fmt: skip


def without_seconds(node: Any) -> Any:
    """The payload less every timing, the one thing that may differ run to run."""
    if isinstance(node, dict):
        return {k: without_seconds(v) for k, v in node.items() if not k.endswith("seconds")}
    if isinstance(node, list):
        return [without_seconds(v) for v in node]
    return node


def payload(out: Path) -> dict[str, Any]:
    return json.loads((out / "backtest.json").read_text())


def test_the_json_holds_the_contract(tiny: dict) -> None:
    found = payload(tiny["out"])
    assert found["metric"] == "roc_auc" and found["higher_is_better"] is True
    assert found["steps"] == STEPS
    assert {"never", "every_7_days", "monitor"} <= set(found["policies"])
    for name, p in found["policies"].items():
        assert isinstance(p["mean_metric"], float) and 0.5 < p["mean_metric"] <= 1, name
        assert isinstance(p["trainings"], int) and isinstance(p["promotions"], int), name
        assert p["promotions"] <= p["trainings"]
        assert isinstance(p["seconds"], float) and p["seconds"] > 0, name
        assert [r["date"] for r in p["series"]] == STEPS
        # the first step has no model to score with; every later one is scored and judged
        assert "roc_auc" not in p["series"][0]
        assert all(r["n"] > 0 and r["roc_auc"] is not None for r in p["series"][1:])
        assert p["steps_scored"] == len(STEPS) - 1
        # the scores as probabilities too: a step's Brier score is its rows' squared error
        assert 0 < p["mean_brier"] < 0.25 and all(0 <= r["brier"] <= 1 for r in p["series"][1:])
    assert found["metrics"] == ["roc_auc", "pr_auc", "brier"]


def test_the_policies_are_compared_with_a_paired_interval(tiny: dict) -> None:
    found = {(c["a"], c["b"]): c for c in payload(tiny["out"])["comparisons"]}
    assert set(found) == {("monitor", "every_7_days"), ("monitor", "never")}
    for c in found.values():
        assert c["steps"] == len(STEPS) - 1 and c["confidence"] == 0.95
        assert c["ci_low"] <= c["difference"] <= c["ci_high"]


def test_a_comparison_interval_is_the_paired_t_interval() -> None:
    """MAE (lower is better) on three steps: differences 1, 1, 2 in `a`'s favour; t(0.975, 2)
    = 4.303, so the interval is 1.3333 +- 4.303 * 0.5774 / sqrt(3). A step only one policy
    scored is not a pair."""

    def series(maes: list[float | None]) -> list[dict]:
        return [{"date": f"2026-01-0{i + 1}", "mae": m} for i, m in enumerate(maes)]

    policies = {
        "a": {"mean_metric": 12.0, "trainings": 2, "series": series([None, 10, 12, 14])},
        "b": {"mean_metric": 13.3333, "trainings": 4, "series": series([9, 11, 13, 16])},
    }
    found = comparison({"metric": "mae", "higher_is_better": False, "policies": policies}, "a", "b")
    assert found is not None
    assert found["difference"] == pytest.approx(1.3333) and found["steps"] == 3
    assert found["ci_low"] == pytest.approx(1.3333 - 1.4343, abs=1e-3)
    assert found["ci_high"] == pytest.approx(1.3333 + 1.4343, abs=1e-3)
    assert found["trainings"] == (2, 4)
    # one pair: a difference, no interval
    policies["a"]["series"] = series([None, 10, None, None])
    found = comparison({"metric": "mae", "higher_is_better": False, "policies": policies}, "a", "b")
    assert found is not None and found["steps"] == 1 and found["ci_low"] is None


def test_the_bound_with_hindsight_holds_every_policy(tiny: dict) -> None:
    """every_7_days trains at each step, so every model is judged on every later step: at each
    policy's number of trainings the bound is at least as good as the policy's own mean (a
    refused challenger equals not training), K=1 is never's path exactly, and more trainings
    never make the bound worse."""
    found = payload(tiny["out"])
    hindsight = found["hindsight"]
    assert set(hindsight) == {"available", "best_by_trainings", "seconds"}
    assert hindsight["available"] is True and isinstance(hindsight["seconds"], float)
    bound = hindsight["best_by_trainings"]
    assert list(bound) == [str(k) for k in range(1, len(STEPS) + 1)]
    assert all(isinstance(v, float) and 0.5 < v <= 1 for v in bound.values())
    assert all(a <= b for a, b in itertools.pairwise(bound.values()))  # ROC AUC: higher
    policies = found["policies"]
    assert bound["1"] == pytest.approx(policies["never"]["mean_metric"], abs=1e-9)
    for name, p in policies.items():
        assert p["hindsight_best"] == bound[str(p["trainings"])], name
        assert p["hindsight_best"] >= p["mean_metric"] - 1e-9, name


def test_hindsight_prefers_the_later_training_when_it_pays() -> None:
    """Step 1's model is poor, step 2's excellent: with two trainings the best is step 0 then
    step 2, not the earliest next one; at most K, so a third training (step 1's) that would
    only hurt is not forced on the bound; K=1 is never's path, step 0's model throughout."""
    x = None
    matrix = [
        [x, 5.0, 5.0, 5.0],
        [x, x, 9.0, 9.0],
        [x, x, x, 1.0],
        [x, x, x, x],
    ]
    bound = best_with_hindsight(matrix, higher_is_better=False)
    assert bound[1] == pytest.approx(5.0)
    assert bound[2] == pytest.approx((5 + 5 + 1) / 3)  # train at 2: the latest pays
    assert bound[3] == bound[4] == bound[2]  # every training: (5 + 9 + 1) / 3, worse
    # higher is better: the same matrix read as a score wants step 1's model instead
    higher = best_with_hindsight(matrix, higher_is_better=True)
    assert higher[1] == pytest.approx(5.0)
    assert higher[2] == pytest.approx((5 + 9 + 9) / 3)


def test_hindsight_leaves_out_what_was_not_judged() -> None:
    """A None metric is left out of the mean (as `_mean` does), even where it makes the number
    of judged steps depend on the choice; a failed training (row None) cannot be chosen; a
    first training that failed leaves the steps before the next one unjudged."""
    x = None
    # step 2 is judged by nobody (one class): means over steps 1 and 3
    column = [[x, 4.0, x, 4.0], [x, x, x, 2.0], [x, x, x, 0.0], [x, x, x, x]]
    bound = best_with_hindsight(column, higher_is_better=False)
    assert bound[1] == pytest.approx(4.0) and bound[2] == pytest.approx(2.0)
    # step 1's model is not judged on step 2: its choice judges one step (2.0), not two
    uneven = [[x, 2.0, 6.0], [x, x, None], [x, x, x]]
    assert best_with_hindsight(uneven, higher_is_better=False) == {1: 4.0, 2: 2.0, 3: 2.0}
    # a failed training at step 1: only step 2 remains to choose
    failed = [[x, 3.0, 3.0, 3.0], None, [x, x, x, 1.0], [x, x, x, x]]
    assert best_with_hindsight(failed, higher_is_better=False)[2] == pytest.approx(7 / 3)
    # the first training failed: no model until step 1's, nothing judged with one training
    first = [None, [x, x, 0.7], [x, x, x]]
    assert best_with_hindsight(first, higher_is_better=True) == {1: None, 2: 0.7, 3: 0.7}
    assert best_with_hindsight([[x]], higher_is_better=True) == {1: None}


def test_hindsight_is_the_best_of_every_choice() -> None:
    """The programme against every set of training steps on seeded random matrices, Nones and
    failed trainings included, both orientations."""
    rng = random.Random(11)
    for _ in range(60):
        n = rng.randint(1, 7)
        matrix = [
            None
            if i and rng.random() < 0.15
            else [None if rng.random() < 0.2 else rng.uniform(0, 100) for _ in range(n)]
            for i in range(n)
        ]
        for higher in (False, True):
            pick = max if higher else min
            usable = [u for u in range(1, n) if matrix[u] is not None]
            means: dict[int, list[float]] = {k: [] for k in range(1, n + 1)}
            for r in range(len(usable) + 1):
                for rest in itertools.combinations(usable, r):
                    chosen = (0, *rest)
                    values = []
                    for j in range(1, n):
                        row = matrix[max(i for i in chosen if i < j)]
                        if row is not None and row[j] is not None:
                            values.append(row[j])
                    if values:
                        for k in range(len(chosen), n + 1):  # at most k trainings
                            means[k].append(sum(values) / len(values))
            bound = best_with_hindsight(matrix, higher)
            assert list(bound) == list(range(1, n + 1))
            for k, found in means.items():
                expected = pick(found) if found else None
                assert bound[k] == pytest.approx(expected, abs=1e-9), (matrix, higher, k)


def test_policies_train_as_their_rule_says(tiny: dict) -> None:
    policies = payload(tiny["out"])["policies"]
    never, weekly = policies["never"], policies["every_7_days"]
    assert never["trainings"] == 1 and [t["date"] for t in never["training_dates"]] == STEPS[:1]
    assert [t["date"] for t in weekly["training_dates"]] == STEPS
    # the first step trains for every policy, the same model: the same first scores
    firsts = {p["series"][1]["model"] for p in policies.values()}
    assert firsts == {f"trained-{STEPS[0]}"}
    # the monitor's policy trains only when the monitor recommends it, min_gap_days apart
    monitor = policies["monitor"]
    for record in monitor["series"][1:]:
        assert record["train"] == (
            record["retrain_recommended"] and "min_gap_days" not in record["why"]
        ), record


def test_the_same_lake_gives_the_same_bytes_but_for_seconds(tiny: dict) -> None:
    again = tiny["tmp"] / "again"
    assert run(tiny["lake"], tiny["params"], again) == 0
    first, second = payload(tiny["out"]), payload(again)
    assert without_seconds(first) == without_seconds(second)
    assert json.dumps(without_seconds(first), sort_keys=True) == json.dumps(
        without_seconds(second), sort_keys=True
    )


def test_labels_after_a_step_never_reach_its_decisions(tiny: dict) -> None:
    """Every activity landed after the last step is removed (everyone churns then): what each
    step scored, monitored and decided is unchanged, and so is the realised metric of a step
    whose labels matured by then; a later step's realised metric moves (the poison did land)."""
    poisoned = tiny["tmp"] / "poisoned"
    shutil.copytree(tiny["lake"], poisoned)
    for folder in sorted((poisoned / "landing" / "events").glob("date=*")):
        if folder.name.removeprefix("date=") > POISON_AFTER:
            for path in folder.glob("*.parquet"):
                frame = pd.read_parquet(path)
                frame[~frame["event_type"].isin(["session", "order"])].to_parquet(path, index=False)
    out = tiny["tmp"] / "poisoned-out"
    assert run(poisoned, tiny["params"], out) == 0
    clean, dirty = payload(tiny["out"])["policies"], payload(out)["policies"]
    matured = dt.date.fromisoformat(POISON_AFTER) - dt.timedelta(days=14)
    moved = 0
    for name in clean:
        for a, b in zip(clean[name]["series"], dirty[name]["series"], strict=True):
            if "monitor_live" in a:  # the monitor judged only snapshots matured by the step
                seen_at = dt.date.fromisoformat(a["monitor_live"]["snapshot"])
                assert seen_at + dt.timedelta(days=14) <= dt.date.fromisoformat(a["date"])
            seen = ("model", "train", "why", "result", "retrain_recommended", "reasons",
                    "monitor_live", "promoted")  # fmt: skip
            assert {k: a.get(k) for k in seen} == {k: b.get(k) for k in seen}, (name, a["date"])
            if dt.date.fromisoformat(a["snapshot"]) <= matured:
                assert a.get("roc_auc") == b.get("roc_auc"), (name, a["date"])
            else:
                moved += a.get("roc_auc") != b.get("roc_auc")
    assert moved > 0


def test_a_refused_challenger_restarts_the_clock_as_in_production(tiny: dict) -> None:
    """Production's clock (`evergreen run daily`) is the later of the champion's training and
    the last training run started (reports/retrain.json): a challenger the gate refuses leaves
    the old model serving, and the schedule counts every_days from the refused training, not
    from the champion (which would train again at every step once due)."""
    params = yaml.safe_load(tiny["params"].read_text())
    params["retrain"]["policies"] = {"every_6_days": {"every_days": 6}}
    settings = Settings.from_params(params)

    def refuse_all(challenger: Trained, champion: Trained | None) -> GateResult:
        return GateResult(champion is None, "only the first model passes this gate")

    cfg = BacktestConfig(step_days=3, end=dt.date.fromisoformat(STEPS[0]) + dt.timedelta(days=12))
    found = replay(tiny["lake"] / "landing", tiny["tmp"] / "clock", settings, cfg, refuse_all,
                   log=io.StringIO())  # fmt: skip
    run = found["policies"]["every_6_days"]
    steps = found["steps"]  # 3 days apart: 0, 3, 6, 9, 12 days after the first
    assert len(steps) == 5
    # 6 days after the champion (refused), then 6 days after that attempt, not 9 days in
    assert [t["date"] for t in run["training_dates"]] == [steps[0], steps[2], steps[4]]
    assert "schedule: 3 days" not in str(run["series"]) and run["series"][3]["train"] is False
    assert run["promotions"] == 1
    assert {r["model"] for r in run["series"][1:]} == {f"trained-{steps[0]}"}
    # no model was trained at step 1: no bound with hindsight, and the JSON says why
    assert found["hindsight"]["available"] is False
    assert "no policy trained at every step (3 of 5" in found["hindsight"]["why"]
    assert found["hindsight"]["best_by_trainings"] == {} and run["hindsight_best"] is None


def test_the_page_draws_the_metric_and_the_table(tiny: dict) -> None:
    shown = rendered(tiny["out"] / "backtest.html")
    assert len(shown["figures"]) == 1
    for figure in shown["figures"]:
        assert figure["width"] > 0 and figure["colour"] > 0.003, figure
    policies = next(t for t in shown["tables"] if t["section"] == "policies")
    assert policies["rows"] == ["never", "every_7_days", "monitor"]
    assert "mean ROC AUC" in policies["head"] and "trainings" in policies["head"]
    assert "best with hindsight, same trainings" in policies["head"]
    assert "monitor vs every_7_days" in shown["text"]
    # how sure each comparison is: its interval, or that the two policies never differed
    for c in payload(tiny["out"])["comparisons"]:
        same = c["ci_low"] == c["ci_high"] == c["difference"] == 0
        said = "the same ROC AUC at every step" if same else "paired steps"
        assert f"{c['a']} vs {c['b']}" in shown["text"] and said in shown["text"]
    assert "is a bound, not a policy" in shown["text"]


def test_the_steps_follow_the_warm_up_the_step_and_the_horizon(shop_params: dict) -> None:
    settings = Settings.from_params(shop_params)
    first, last = dt.date(2026, 1, 1), dt.date(2026, 12, 31)
    # shop: the first model's window is full, max_snapshots 8 labelled snapshots: the first
    # 21 days after min_history_days 21, 7 x 7 days apart, the last one's horizon (21) matured
    steps = step_dates(first, last, settings, BacktestConfig(step_days=7))
    assert steps[0] == first + dt.timedelta(days=21 + 7 * 7 + 21)
    assert steps[-1] <= last - dt.timedelta(days=21) < steps[-1] + dt.timedelta(days=7)
    assert {(b - a).days for a, b in itertools.pairwise(steps)} == {7}
    with pytest.raises(BacktestError, match="leave no step"):
        step_dates(first, first + dt.timedelta(days=100), settings, BacktestConfig())


def test_the_first_model_is_trained_on_a_full_window(shop_params: dict, tmp_path: Path) -> None:
    """At the first step the features stage finds max_snapshots labelled snapshots (one fewer
    the day before): the first model is trained on as much history as every later one, not
    on the one train snapshot a training can run on."""
    settings = Settings.from_params(shop_params)
    first = dt.date(2026, 1, 1)
    start = step_dates(first, first + dt.timedelta(days=365), settings, BacktestConfig())[0]
    horizon = settings.dataset.label.horizon_days
    found = snapshot_dates(first, start, settings.features, horizon_days=horizon)
    before = snapshot_dates(
        first, start - dt.timedelta(days=1), settings.features, horizon_days=horizon
    )
    assert len(found) == settings.features.max_snapshots == 8
    assert len(before) == 7
    # a rows task: as many periods (bikes: 8 weeks of hours), never fewer than split needs
    bikes = yaml.safe_load(
        compose_params(ROOT / "conf", tmp_path / "p.yaml", ["dataset=bikes"]).read_text()
    )
    assert Settings.from_params(bikes).warmup_days() == 8 * 7
    bikes["features"]["max_snapshots"] = 2
    assert Settings.from_params(bikes).warmup_days() == 3 * 7  # train, valid, test: a period each
    # outcomes known 30 days after their rows: the first model waits for its periods' outcomes
    bikes["dataset"]["task"]["label_delay_days"] = 30
    assert Settings.from_params(bikes).warmup_days() == 3 * 7 + 30


def test_usage_errors_are_one_line(tiny: dict, capsys: pytest.CaptureFixture[str]) -> None:
    out = tiny["tmp"] / "errors"
    assert run(tiny["lake"], tiny["params"], out, "--policies", "monthly") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "'monthly' is not in retrain.policies" in err
    assert run(tiny["tmp"] / "nowhere", tiny["params"], out) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no landing/ folder" in err
    assert run(tiny["lake"], tiny["params"], out, "--warmup-days", "60") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "leave no step" in err and "--warmup-days" in err
    assert not (out / "backtest.json").exists()


def test_a_long_warm_up_and_thin_steps_are_warned_of() -> None:
    """A claims lake of 10 a day: the warm-up took 336 of its 417 days, and its steps' ROC AUC
    rested on 2 to 8 positives; the means read as if neither were so."""
    import datetime as dt
    from types import SimpleNamespace

    from stages.lib.backtest import warnings

    series = [{"n": 0}, {"n": 40, "positives": 3}, {"n": 60, "positives": 12}]
    payload = {
        "settings": {"start": "2023-12-03", "end": "2023-12-24"},
        "policies": {"never": {"series": series}},
    }
    days = (dt.date(2023, 1, 1), dt.date(2024, 2, 23))
    found = warnings(payload, days, SimpleNamespace(regression=False, rows=True))
    assert len(found) == 2 and "takes 336 of the lake's 418 days" in found[0]
    assert found[1].startswith("1 of 2 steps were scored on fewer than 10 positives")
    early = {**payload, "settings": {"start": "2023-03-01", "end": "2023-12-24"}}
    assert warnings(early, days, SimpleNamespace(regression=True, rows=True)) == []
    # an entity task whose first snapshot is 21 days in, its longest window 70 (a telco's
    # bills): the first model learnt counts over a third of their window
    telco = SimpleNamespace(
        regression=True, rows=False, features=FeaturesConfig(windows=(7, 35, 70))
    )
    [truncated] = warnings(early, days, telco)
    assert truncated.startswith("the first model: the first labelled snapshot 2023-01-22 is 21")
    whole = SimpleNamespace(regression=True, rows=False, features=FeaturesConfig(windows=(7, 21)))
    assert warnings(early, days, whole) == []
