"""The monitor on each sample dataset, as a team runs it: a model trained on stable data gets
"no retrain"; the champion kept while the dataset's regime change arrives gets "retrain"
within 14 days, for the right reason (the shop's own loop is tests/e2e/test_monitor_loop.py).

- retail (entity churn): a new price list raises every price: the unit prices the line
  amounts are computed from, inputs of every spending feature, drift (covariate drift);
- bank (rows classification, 1 to 60 calls a weekday): a new year, a new economy: the euribor
  rate the model reads falls, and the share of clients who say yes rises (prior shift);
- bikes (rows regression): a metro line takes commuters: no input moves, only the errors do
  (concept drift), seen on the rows that arrived after the model was judged (prequential).

Every verdict is the real `dvc repro` of the data stages, predict and monitor in a temporary
git + DVC repository; between the two, the model files are never rebuilt.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from stages.sim.samples import bank, bikes, retail
from tests.e2e.helpers import both_runs, init_repo, ran_stages, sh

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SINGLE = ("validate", "profiles", "prepare", "predict_set", "predict", "monitor")


@dataclass(frozen=True)
class Case:
    trained_days: int  # the lake the model is trained on: days 0..trained_days-1
    after: tuple[int, ...]  # days added, then monitored, while the champion serves
    reasons: frozenset[tuple[str, str]]  # (kind, column): at least one must be given
    overrides: tuple[str, ...] = ("train.n_trials=0",)


CASES = {
    "retail": Case(
        trained_days=retail.REGIME_DAY,
        after=(14,),
        # the unit price, which the amount is computed from, moves most
        reasons=frozenset(
            {("input_drift", "invoices.unit_price"), ("input_drift", "invoices.amount")}
        ),
        overrides=("train.n_trials=0", "features.max_snapshots=4"),
    ),
    "bank": Case(
        trained_days=365,
        after=(14,),
        reasons=frozenset({("input_drift", "calls.euribor3m"), ("label_shift", "calls.y")}),
    ),
    "bikes": Case(
        trained_days=bikes.REGIME_DAY,
        after=(7, 7),
        reasons=frozenset({("performance", "prediction"), ("residual_drift", "residual")}),
    ),
}
assert bank.REGIMES[0] != bank.REGIMES[1]  # the bank's regime changes with the year


def _verdict(repo: Path) -> dict:
    return json.loads((repo / "artifacts/monitor/report.json").read_text())


@pytest.fixture(scope="module", params=list(CASES))
def verdicts(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    name, case = request.param, CASES[request.param]
    repo = init_repo(tmp_path_factory.mktemp(name))
    sh(repo, "evergreen", "params", f"dataset={name}", *case.overrides)
    lake = ("--lake", "lake", "--dataset", name, "--seed", "7")
    sh(repo, "evergreen", "lake", "simulate", *lake, "--days", str(case.trained_days))
    sh(repo, "evergreen", "ingest", "--lake", "lake")
    assert "train" in ran_stages(both_runs(repo))
    model = (repo / "models/model.onnx").read_bytes()
    trained = _verdict(repo)
    sh(repo, "evergreen", "publish", "--lake", "lake")
    later = []
    for days in case.after:
        # on a lake it holds, the sample appends `--days` days
        sh(repo, "evergreen", "lake", "simulate", *lake, "--days", str(days))
        sh(repo, "evergreen", "ingest", "--lake", "lake")
        out = sh(repo, "dvc", "repro", "--single-item", *SINGLE)
        assert "train" not in ran_stages(out) and "monitor" in ran_stages(out)
        sh(repo, "evergreen", "publish", "--lake", "lake")
        later.append(_verdict(repo))
    assert (repo / "models/model.onnx").read_bytes() == model  # the champion was kept
    return name, case, trained, later


def test_a_model_trained_on_stable_data_gets_no_retrain(verdicts) -> None:
    name, _, trained, later = verdicts
    assert trained["retrain_recommended"] is False, (name, trained["reasons"])
    # right after its training the model's own days are never the current window
    periods = trained["inputs"]["periods"].values()
    assert all(p["current"]["days"] == 0 for p in periods), name
    # once new days land, ids, free text and columns the model does not read are compared and
    # listed apart, and never a reason
    assert "input" in {c["role"] for c in later[0]["inputs"]["columns"].values()}, name
    columns = later[-1]["inputs"]["columns"]
    for reason in later[-1]["reasons"]:
        if reason["kind"] == "input_drift":
            assert columns[reason["column"]]["role"] == "input", (name, reason)


def test_the_regime_change_is_flagged_within_14_days_for_its_reason(verdicts) -> None:
    name, case, _, later = verdicts
    final = later[-1]
    assert final["retrain_recommended"] is True, name
    given = {(r["kind"], r["column"]) for r in final["reasons"]}
    assert given & case.reasons, (name, final["reasons"])
    for r in final["reasons"]:
        assert {"kind", "column", "statistic", "value", "threshold", "n_reference",
                "n_current"} <= set(r)  # fmt: skip
        assert r["kind"] in ("input_drift", "label_shift", "prediction_drift",
                             "estimated_performance", "performance", "calibration",
                             "residual_drift"), r  # fmt: skip
