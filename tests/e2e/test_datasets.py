"""Each example dataset config runs the whole loop on its small sample lake, by config alone.

For `retail` (entity churn, no customer table), `bank` (rows classification) and `bikes` (rows
regression): a temporary git + DVC repo with the project's conf/, stages/ and stage graph,
`evergreen params dataset=NAME`, `evergreen lake simulate --dataset NAME`, `evergreen ingest`,
`dvc repro` (the whole graph: predict, monitor and the insights report too), `evergreen gate`,
`evergreen publish` and `evergreen monitor` (realised performance of the published
predictions), then the real server answers one request over HTTP with what the exported model
predicts. No code knows about any of these datasets.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests

from stages.contract.feature_schema import load_schema
from stages.lib.model_io import load_model
from tests.e2e.helpers import both_runs, e2e_env, init_repo, ran_stages, run, sh
from tests.server_process import free_port, running_server

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@dataclass(frozen=True)
class Case:
    days: int
    # only config: what makes a small lake enough (shorter windows, fewer tuning trials)
    overrides: tuple[str, ...] = ()


CASES = {
    "retail": Case(
        days=110,
        overrides=("features.max_snapshots=4", "train.n_trials=2"),
    ),
    "bank": Case(days=420, overrides=("train.n_trials=2",)),
    # no model override: conf/dataset/bikes.yaml chooses its default model (hgb)
    "bikes": Case(days=63, overrides=("train.n_trials=2",)),
}


@pytest.fixture(scope="module", params=list(CASES))
def loop(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    name = request.param
    case = CASES[name]
    repo = init_repo(tmp_path_factory.mktemp(name))
    sh(repo, "evergreen", "params", f"dataset={name}", *case.overrides)
    lake = ["--lake", "lake", "--days", str(case.days), "--seed", "7"]
    sh(repo, "evergreen", "lake", "simulate", "--dataset", name, *lake)
    sh(repo, "evergreen", "ingest", "--lake", "lake")
    out = both_runs(repo)
    every = {"validate", "prepare", "features", "split", "train", "evaluate", "export", "card"}
    assert every | {"drift", "predict", "monitor", "report"} <= ran_stages(out)
    gate = run(repo, "evergreen", "gate")
    assert gate.returncode in (0, 1), gate.stdout + gate.stderr
    sh(repo, "evergreen", "publish", "--lake", "lake")
    sh(repo, "evergreen", "monitor")
    return name, repo, gate


def test_the_loop_trains_gates_and_describes_the_model(loop) -> None:
    name, repo, gate = loop
    schema = load_schema(repo / "artifacts/features/feature_schema.json")
    card = json.loads((repo / "models/model_card.json").read_text())
    metrics = json.loads((repo / "metrics/evaluate.json").read_text())
    verdict = json.loads((repo / "metrics/gate.json").read_text())
    # no champion on `main` yet: the model must beat the naive baseline of its kind, with
    # confidence (the absolute floors are off by default)
    assert verdict["champion"] is None and verdict["blessed"] == (gate.returncode == 0)
    checks = set(verdict["checks"])  # the headline: check -> passed
    assert card["features"]["task"] == schema.task
    if schema.regression:
        assert {"mae", "rmse", "r2"} <= set(metrics) and metrics["r2"] > 0.5, metrics
        assert checks == {"baseline_r2", "baseline_mae"}
        assert (repo / "plots/residuals.json").is_file()
    else:
        assert metrics["roc_auc"] > 0.6, metrics
        assert checks == {"baseline_roc_auc", "baseline_brier"}
    # the figures behind each check are the full verdict's (reports/gate.json)
    full = json.loads((repo / "reports/gate.json").read_text())
    assert {c["name"] for c in full["checks"]} == checks
    for check in full["checks"]:
        assert {"difference", "ci_low", "ci_high", "confidence"} <= set(check)
    # a sound model beats its baseline on every sample dataset
    assert verdict["blessed"] is True, verdict["checks"]
    if name == "retail":
        assert card["label"]["horizon_days"] == 28 and schema.entity_key == "customer_id"
    else:
        assert card["label"]["kind"].startswith("rows_") and schema.entity_key in (
            "row_key",
            "hour_start",
        )
    drift = json.loads((repo / "metrics/data_drift.json").read_text())
    assert isinstance(drift["drifted"], bool)


def test_predictions_monitoring_and_the_report_follow_the_kind(loop) -> None:
    name, repo, _ = loop
    schema = load_schema(repo / "artifacts/features/feature_schema.json")
    predictions = pd.read_parquet(repo / "artifacts/predict/predictions.parquet")
    published = list((repo / "lake/predictions").glob("date=*/predictions.parquet"))
    monitor = json.loads((repo / "artifacts/monitor/report.json").read_text())
    page = (repo / "reports/report.md").read_text()
    assert len(published) == 1 and len(predictions) > 0
    assert isinstance(monitor["retrain_recommended"], bool) and "reasons" in monitor
    assert monitor["prediction_drift"]["batch"]["value"] is not None
    live = monitor["performance"]["snapshots"]
    # right after training, every published row was in the model's test split (its target was
    # known when it was judged): realised performance has nothing to judge yet, on every kind
    # (the rows after the split are judged as they arrive: tests/e2e/test_monitor_datasets.py)
    assert live == {}, live
    assert monitor["published"]["matured"] == []
    if schema.regression:
        assert "prediction" in predictions and not {"score", "decision"} & set(predictions)
        for word in ("at risk", "churn", "decision threshold", "roc_auc"):
            assert word not in page.lower(), word
    else:
        assert {"score", "decision", "threshold"} <= set(predictions)
        assert "Realised performance" not in page or live
    if name == "bank":
        assert "Top 20 rows by score" in page and "Predicted y rate" in page
    if name == "retail":
        assert "revenue at risk" in page.lower()


def test_the_real_server_answers_what_the_model_predicts(loop, tmp_path: Path) -> None:
    name, repo, _ = loop
    schema = load_schema(repo / "artifacts/features/feature_schema.json")
    rows = pd.read_parquet(repo / "artifacts/split/test.parquet").head(3)
    frame = rows[[schema.entity_key, *schema.features]]
    records = json.loads(frame.to_json(orient="records", date_format="iso"))
    model = load_model(repo / "models/model.skops")
    features = frame[list(schema.features)].astype({c: "str" for c in schema.categorical})
    port = free_port()
    cmd = ["evergreen", "serve", "--port", str(port)]
    with running_server(cmd, port, tmp_path / "serve.log", cwd=repo, env=e2e_env()) as (url, _):
        response = requests.post(f"{url}/predict", json={"records": records}, timeout=30)
        bad = requests.post(f"{url}/predict", json={schema.entity_key: "k"}, timeout=30)
        # an integer-coded category (bikes' weather) is sent as the data has it, 2, never "2"
        coded = [c for c in schema.categorical if schema.category_type(c) == "int64"]
        as_text = [
            requests.post(f"{url}/predict", json={**records[0], c: str(records[0][c])}, timeout=30)
            for c in coded
        ]
        # a surrogate key (bank's row_key) is optional: the record's position answers for it
        keyless = {k: v for k, v in records[0].items() if k != schema.entity_key}
        without_key = requests.post(f"{url}/predict", json={"records": [keyless] * 2}, timeout=30)
    assert response.status_code == 200, response.text
    got = response.json()["predictions"]
    keys = [str(r[schema.entity_key]) for r in records]
    assert [str(p[schema.entity_key]) for p in got] == keys
    if schema.regression:
        expected = model.predict(features)
        np.testing.assert_allclose([p["prediction"] for p in got], expected, rtol=1e-5, atol=1e-6)
        assert all("score" not in p for p in got)
    else:
        expected = model.predict_proba(features)[:, 1]
        np.testing.assert_allclose([p["score"] for p in got], expected, rtol=0, atol=1e-6)
        assert [p[schema.label] for p in got] == [bool(s >= 0.5) for s in expected]
    assert bad.status_code == 422 and schema.features[0] in bad.text
    assert name != "bikes" or coded == ["weather"]
    for column, answer in zip(coded, as_text, strict=True):
        assert answer.status_code == 422, answer.text
        assert answer.json()["detail"][0]["loc"] == ["body", column], answer.text
    if schema.surrogate_key:
        assert without_key.status_code == 200, without_key.text
        answered = [p[schema.entity_key] for p in without_key.json()["predictions"]]
        assert answered == ["#0", "#1"]
    else:
        assert without_key.status_code == 422 and schema.entity_key in without_key.text
